//! The agent's one configuration file. Every key is documented in `deploy/exfilguard.toml`
//! (what `exfilguard config --default` prints); a test keeps that file equal to the defaults
//! here. Environment variables override the file: `EXFILGUARD__SECTION__KEY=value`
//! (e.g. `EXFILGUARD__KAFKA__BROKERS=10.0.0.5:9092`).

use anyhow::{bail, Result};
use exfilguard_dataplane::KernelPolicy;
use exfilguard_events::Format;
use exfilguard_kafka::KafkaSettings;
use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The commented example config, equal to the defaults.
pub const EXAMPLE: &str = include_str!("../../../deploy/exfilguard.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: HostConfig,
    pub dataplane: DataplaneConfig,
    pub kernel: KernelPolicy,
    pub detect: DetectConfig,
    pub pipeline: PipelineConfig,
    pub events: EventsConfig,
    pub kafka: KafkaSettings,
    pub metrics: MetricsConfig,
    pub resolve: ResolveConfig,
    pub rpz: exfilguard_rpz::RpzSettings,
    pub runtime: exfilguard_runtime::RuntimeSettings,
    pub behaviour: exfilguard_behaviour::Settings,
    pub convict: exfilguard_convict::Settings,
    pub hardening: HardeningConfig,
}

/// Lock-down after attach (docs/threat-model.md). Root is needed to load and attach; the
/// steady state keeps CAP_NET_ADMIN and CAP_NET_RAW only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardeningConfig {
    /// Drop every capability but CAP_NET_ADMIN and CAP_NET_RAW once the programs are attached.
    pub drop_caps: bool,
    /// seccomp allowlist for the steady state: enforce (EPERM), kill, log, off.
    pub seccomp: exfilguard_lockdown::SeccompMode,
    /// BPF LSM guard over the pinned maps and links: auto, required, off.
    pub guard: GuardMode,
}

/// Whether the agent puts its BPF LSM guard over its maps, links and pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Attach it when the kernel allows BPF LSM programs; otherwise log why not and go on.
    #[default]
    Auto,
    /// Refuse to start without it.
    Required,
    Off,
}

impl Default for HardeningConfig {
    fn default() -> Self {
        Self {
            drop_caps: true,
            seccomp: exfilguard_lockdown::SeccompMode::Enforce,
            guard: GuardMode::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Name this host reports in events and fleet entries; empty: the hostname.
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachPoint {
    /// tc egress (tcx on kernels ≥ 6.6, clsact before).
    Tc,
    /// netfilter LOCAL_OUT BPF links (locally generated traffic only).
    Netfilter,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Interfaces to protect; empty: every device of the namespace, lo included (tc egress,
    /// new devices within 2 s), with XDP on the default-route one.
    pub interfaces: Vec<String>,
    pub attach: AttachPoint,
    /// XDP response inspection (NXDOMAIN limiter, downlink report) on the same interfaces.
    pub xdp: bool,
    /// cgroup v2 directory for process attribution; empty: the cgroup2 mount root.
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// Leave programs attached when the agent exits; the next start takes them over.
    pub persist: bool,
    /// Ring buffer of held frames (MiB, a power of two); mapped twice by the agent.
    pub ringbuf_mib: u32,
    /// The socket layer (cgroup_skb egress at `cgroup`): every local send judged before any
    /// device, route, VPN or encapsulation. `all`: every network namespace (containers too);
    /// `netns`: the agent's own; `off`: not attached.
    pub socket_scope: exfilguard_dataplane::SocketScope,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach: AttachPoint::Tc,
            xdp: true,
            cgroup: PathBuf::new(),
            pin_dir: PathBuf::from(exfilguard_dataplane::DEFAULT_PIN_DIR),
            persist: false,
            ringbuf_mib: 4,
            socket_scope: exfilguard_dataplane::SocketScope::All,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// ONNX model file; empty: the embedded model.
    pub model: PathBuf,
    /// Decision threshold override (calibrated probability); 0: the model's own.
    pub threshold: f32,
    /// Never held for judgement or blocked: registered domains or suffixes (`=name`: exact).
    pub allow: Vec<String>,
    /// Always blocked (kernel blocklist at start, and judged malicious).
    pub block: Vec<String>,
    /// Quarantine a process (all its DNS denied) after this many convictions; 0: never.
    pub quarantine_after: u32,
    /// What a tunnel verdict does: `block` (refuse, convict) or `alert` (answer, report).
    pub tunnel_action: exfilguard_detect::Action,
    /// What a DGA verdict does: `block` or `alert`.
    pub dga_action: exfilguard_detect::Action,
    /// MEDIUM-risk threshold of the tunnel detector: names at or above it are suspect evidence
    /// against their domain (`convict.domain_names` of them convict it); 0: the built-in 0.95.
    pub tunnel_suspect: f32,
    /// MEDIUM-risk threshold of the DGA detector: such names are refused for a client a
    /// DGA-bot alarm marked; 0: the built-in 0.5.
    pub dga_suspect: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most held queries classified in one model call.
    pub batch_max: usize,
    /// A held query older than this when the agent reaches it gets the fail policy
    /// (`kernel.fail_open`): its client has retried or given up by then.
    pub max_hold_ms: u64,
    /// Bounded queue between the decision loop and the event sinks; when full, events are
    /// dropped and counted (enforcement never waits for a sink).
    pub sink_queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max: 1024,
            max_hold_ms: 2000,
            sink_queue: 16384,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSinkConfig {
    pub enabled: bool,
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` …).
    pub keep: u32,
    pub format: Format,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("/var/log/exfilguard/events.jsonl"),
            max_bytes: 64 << 20,
            keep: 5,
            format: Format::Ocsf,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StdoutSinkConfig {
    pub enabled: bool,
    pub format: Format,
}

impl Default for StdoutSinkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            format: Format::Native,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub file: FileSinkConfig,
    pub stdout: StdoutSinkConfig,
    /// Also emit plainly benign released queries (audit); by default only held-and-convicted,
    /// blocked, quarantined, dropped and reported queries are events.
    pub released: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// `/metrics`, `/healthz`, `/readyz`: `ip:port`.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9353".into(),
        }
    }
}

impl MetricsConfig {
    pub fn addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated")
    }
}

/// What `exfilguard resolve` answers to a query it refuses to forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    Refused,
    Nxdomain,
    /// A/AAAA answers pointing at `resolve.sinkhole_ipv4`/`sinkhole_ipv6`; other types NODATA.
    Sinkhole,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveConfig {
    /// `ip:port` addresses served over UDP and TCP.
    pub listen: Vec<String>,
    /// `ip:port` resolvers forwarded to, round robin; one that stops answering is skipped.
    pub upstreams: Vec<String>,
    pub action: BlockAction,
    pub sinkhole_ipv4: std::net::Ipv4Addr,
    pub sinkhole_ipv6: std::net::Ipv6Addr,
    /// Upstream answer deadline; past it the client gets SERVFAIL.
    pub timeout_ms: u64,
    /// Verdicts cached per name (entries, seconds).
    pub cache_entries: usize,
    pub cache_secs: u64,
    /// A model verdict's conviction lasts this long: the sending client's block from the zone
    /// and, with enough evidence (`[convict]`), the zone's block for everyone (0: a verdict
    /// refuses its name only).
    pub block_secs: u64,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Opcodes other than QUERY relayed unjudged to the upstreams (notify, update, iquery,
    /// status, dso, or a number 1..=15); every other one gets NOTIMP.
    pub forward_opcodes: Vec<String>,
    /// Client networks served; others get REFUSED over UDP and TCP connections closed.
    #[serde(deserialize_with = "cidrs")]
    pub allow_from: Vec<ipnet::IpNet>,
    /// Per-client query rate (token bucket; 0: off) and burst, UDP only.
    pub rate_limit_qps: u32,
    pub rate_limit_burst: u32,
    /// Clients the rate limit does not apply to.
    #[serde(deserialize_with = "cidrs")]
    pub rate_limit_exempt: Vec<ipnet::IpNet>,
    /// Clients tracked by the rate limit (least recently seen forgotten first).
    pub rate_limit_clients: usize,
    /// IPv6 clients share one bucket per prefix of this length.
    pub rate_limit_ipv6_prefix: u8,
    /// Every n-th query over the limit gets an empty TC=1 answer (0: none).
    pub rrl_slip: u32,
    /// TCP connections open at once, in total and per client.
    pub tcp_max_connections: usize,
    pub tcp_max_per_client: usize,
    /// TCP: longest wait for the next message, and longest life of a connection.
    pub tcp_idle_ms: u64,
    pub tcp_lifetime_secs: u64,
}

/// CIDR networks; a bare address is its own /32 or /128. The error names the bad entry (figment
/// adds the key).
fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a CIDR network (e.g. \"10.0.0.0/8\", \"fd00::/8\")"
                    ))
                })
        })
        .collect()
}

impl Default for ResolveConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:5353".into()],
            upstreams: Vec::new(),
            action: BlockAction::Refused,
            sinkhole_ipv4: std::net::Ipv4Addr::UNSPECIFIED,
            sinkhole_ipv6: std::net::Ipv6Addr::UNSPECIFIED,
            timeout_ms: 2000,
            cache_entries: 100_000,
            cache_secs: 300,
            block_secs: 3600,
            workers: 0,
            forward_opcodes: Vec::new(),
            allow_from: [
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "::1/128",
                "fc00::/7",
                "fe80::/10",
            ]
            .iter()
            .map(|n| n.parse().expect("static"))
            .collect(),
            rate_limit_qps: 200,
            rate_limit_burst: 400,
            rate_limit_exempt: vec![
                "127.0.0.0/8".parse().expect("static"),
                "::1/128".parse().expect("static"),
            ],
            rate_limit_clients: 100_000,
            rate_limit_ipv6_prefix: 56,
            rrl_slip: 2,
            tcp_max_connections: 512,
            tcp_max_per_client: 16,
            tcp_idle_ms: 10_000,
            tcp_lifetime_secs: 120,
        }
    }
}

/// The opcode a `resolve.forward_opcodes` entry names (QUERY, 0, is always judged).
pub fn opcode_number(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "iquery" => Some(1),
        "status" => Some(2),
        "notify" => Some(4),
        "update" => Some(5),
        "dso" => Some(6),
        n => n.parse().ok().filter(|o| (1..=15).contains(o)),
    }
}

impl Config {
    /// Defaults, then the file (when given), then `EXFILGUARD__…` environment variables;
    /// then validation. Errors name the key and the bad value.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                bail!("config file {} does not exist", p.display());
            }
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(Env::prefixed("EXFILGUARD__").split("__").lowercase(true));
        let cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types cannot: ranges and names.
    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        let rb = self.dataplane.ringbuf_mib;
        if !(1..=256).contains(&rb) || !rb.is_power_of_two() {
            errs.push(format!(
                "dataplane.ringbuf_mib = {rb}: must be a power of two in 1..=256"
            ));
        }
        let k = &self.kernel;
        let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                errs.push(format!("{key} = {v}: must be in {lo}..={hi}"));
            }
        };
        range("kernel.hold_name_len", k.hold_name_len as u64, 1, 255);
        range("kernel.hold_label_len", k.hold_label_len as u64, 1, 63);
        range("kernel.hold_labels", k.hold_labels as u64, 1, 127);
        range("kernel.hold_digits", k.hold_digits as u64, 1, 255);
        range(
            "pipeline.batch_max",
            self.pipeline.batch_max as u64,
            1,
            4096,
        );
        range("pipeline.max_hold_ms", self.pipeline.max_hold_ms, 1, 60_000);
        range(
            "pipeline.sink_queue",
            self.pipeline.sink_queue as u64,
            16,
            1 << 24,
        );
        range("events.file.keep", self.events.file.keep as u64, 0, 1000);
        range(
            "events.file.max_bytes",
            self.events.file.max_bytes,
            4096,
            1 << 40,
        );
        range(
            "kafka.spool_max_bytes",
            self.kafka.spool_max_bytes,
            1 << 20,
            1 << 40,
        );
        range(
            "kafka.partitions",
            self.kafka.partitions.max(0) as u64,
            1,
            10_000,
        );
        range("resolve.timeout_ms", self.resolve.timeout_ms, 10, 60_000);
        range(
            "resolve.cache_entries",
            self.resolve.cache_entries as u64,
            0,
            1 << 26,
        );
        range("resolve.workers", self.resolve.workers as u64, 0, 256);
        let r = &self.resolve;
        range(
            "resolve.rate_limit_qps",
            r.rate_limit_qps as u64,
            0,
            10_000_000,
        );
        if r.rate_limit_qps > 0 {
            range(
                "resolve.rate_limit_burst",
                r.rate_limit_burst as u64,
                1,
                100_000_000,
            );
        }
        range(
            "resolve.rate_limit_clients",
            r.rate_limit_clients as u64,
            16,
            1 << 24,
        );
        range(
            "resolve.rate_limit_ipv6_prefix",
            r.rate_limit_ipv6_prefix as u64,
            16,
            128,
        );
        range("resolve.rrl_slip", r.rrl_slip as u64, 0, 100);
        range(
            "resolve.tcp_max_connections",
            r.tcp_max_connections as u64,
            1,
            1_000_000,
        );
        range(
            "resolve.tcp_max_per_client",
            r.tcp_max_per_client as u64,
            1,
            r.tcp_max_connections.max(1) as u64,
        );
        range("resolve.tcp_idle_ms", r.tcp_idle_ms, 100, 3_600_000);
        range("resolve.tcp_lifetime_secs", r.tcp_lifetime_secs, 1, 86_400);
        if r.allow_from.is_empty() {
            errs.push(
                "resolve.allow_from is empty: no client could query (\"0.0.0.0/0\" and \"::/0\" allow everyone)"
                    .into(),
            );
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "metrics.listen = {:?}: not an ip:port address",
                self.metrics.listen
            ));
        }
        for (key, list) in [
            ("resolve.listen", &self.resolve.listen),
            ("resolve.upstreams", &self.resolve.upstreams),
        ] {
            for a in list {
                if a.parse::<SocketAddr>().is_err() {
                    errs.push(format!("{key}: {a:?} is not an ip:port address"));
                }
            }
        }
        for (key, p) in [
            ("detect.threshold", self.detect.threshold),
            ("detect.tunnel_suspect", self.detect.tunnel_suspect),
            ("detect.dga_suspect", self.detect.dga_suspect),
        ] {
            if !(0.0..=1.0).contains(&p) {
                errs.push(format!(
                    "{key} = {p}: must be a probability in 0..=1 (0: the built-in one)"
                ));
            }
        }
        for (key, list) in [
            ("detect.allow", &self.detect.allow),
            ("detect.block", &self.detect.block),
        ] {
            for d in list {
                let bare = d.strip_prefix('=').unwrap_or(d);
                if exfilguard_dns::DnsName::parse(bare).is_err() {
                    errs.push(format!("{key}: {d:?} is not a domain name"));
                }
            }
        }
        for i in &self.dataplane.interfaces {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                errs.push(format!(
                    "dataplane.interfaces: {i:?} is not an interface name"
                ));
            }
        }
        if self.events.file.enabled && self.events.file.path.as_os_str().is_empty() {
            errs.push("events.file.path is empty while events.file.enabled = true".into());
        }
        errs.extend(self.rpz.problems());
        errs.extend(self.runtime.problems());
        errs.extend(self.behaviour.problems());
        errs.extend(self.convict.problems());
        for o in &self.resolve.forward_opcodes {
            if opcode_number(o).is_none() {
                errs.push(format!(
                    "resolve.forward_opcodes: {o:?} is not notify, update, iquery, status, dso or 1..=15"
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration: {}", errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_defaults() {
        let parsed = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_default_key_is_documented() {
        // the example must mention every key the defaults serialise (commented or not)
        let v = toml::Value::try_from(Config::default()).unwrap();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    out.push(k.clone());
                    walk(&format!("{prefix}{k}."), v, out);
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &v, &mut keys);
        for k in keys {
            assert!(
                EXAMPLE.contains(&format!("{k} ="))
                    || EXAMPLE.contains(&format!("[{k}"))
                    || EXAMPLE.contains(&format!(".{k}]")),
                "key {k} is not documented in deploy/exfilguard.toml"
            );
        }
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = Config::from_toml("[kernel]\nhold_name_len = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel.hold_name_len = 0"), "{e}");
        let e = Config::from_toml("[kernel]\nhold_name_len = \"long\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hold_name_len") && e.contains("long"), "{e}");
        let e = Config::from_toml("[kernal]\nmode = \"enforce\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernal"), "{e}");
        let e = Config::from_toml("[detect]\nallow = [\"bad..name\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("detect.allow") && e.contains("bad..name"), "{e}");
        let e = Config::from_toml("[metrics]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains("nowhere"), "{e}");
        let e = Config::from_toml("[dataplane]\nringbuf_mib = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataplane.ringbuf_mib = 3"), "{e}");
    }

    #[test]
    fn resolve_limits_are_checked() {
        let e = Config::from_toml("[resolve]\nallow_from = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_from") && e.contains("10.0.0.0/33"), "{e}");
        let e = Config::from_toml("[resolve]\nrate_limit_exempt = [\"nowhere\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate_limit_exempt"), "{e}");
        let e = Config::from_toml("[resolve]\nallow_from = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolve.allow_from is empty"), "{e}");
        let e = Config::from_toml("[resolve]\ntcp_max_connections = 8\ntcp_max_per_client = 9\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolve.tcp_max_per_client = 9"), "{e}");
        let e = Config::from_toml("[resolve]\nrate_limit_ipv6_prefix = 129\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolve.rate_limit_ipv6_prefix = 129"), "{e}");
        let c = Config::from_toml(
            "[resolve]\nallow_from = [\"0.0.0.0/0\", \"::/0\"]\nrate_limit_qps = 0\n",
        )
        .unwrap();
        assert_eq!(c.resolve.allow_from.len(), 2);
        let c = Config::from_toml("[resolve]\nallow_from = [\"192.0.2.7\"]\n").unwrap();
        assert_eq!(c.resolve.allow_from[0].to_string(), "192.0.2.7/32");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[kafka]\nbrokers = \"file:9092\"\n[kernel]\nmode = \"monitor\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXFILGUARD__KAFKA__BROKERS", "env:9092");
            jail.set_env("EXFILGUARD__PIPELINE__BATCH_MAX", "77");
            let c = Config::load(Some(&p)).unwrap();
            assert_eq!(c.kafka.brokers, "env:9092");
            assert_eq!(c.pipeline.batch_max, 77);
            assert_eq!(c.kernel.mode, exfilguard_dataplane::Mode::Monitor);
            jail.set_env("EXFILGUARD__PIPELINE__BATCH_MAX", "lots");
            let e = Config::load(Some(&p)).unwrap_err().to_string();
            assert!(
                e.to_lowercase().contains("batch_max") && e.contains("lots"),
                "{e}"
            );
            Ok(())
        });
        assert!(Config::load(Some(Path::new("/nonexistent/x.toml"))).is_err());
    }
}
