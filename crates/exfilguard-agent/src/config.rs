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
    pub encrypted_dns: EncryptedDnsConfig,
}

/// The sanctioned-resolver policy for encrypted DNS (docs/dataplane.md#encrypted-dns): DNS
/// over TLS/QUIC (`ports`, any address) and DNS over HTTPS to the known public resolvers
/// (`doh_endpoints` on `doh_ports`) may go only to `sanctioned` resolvers; the rest is refused
/// at connect()/sendmsg() (`kernel.mode = "enforce"`) or reported (`"monitor"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptedDnsConfig {
    pub enabled: bool,
    /// Resolvers (addresses or CIDR networks) encrypted DNS may go to.
    #[serde(deserialize_with = "cidrs")]
    pub sanctioned: Vec<ipnet::IpNet>,
    /// DNS over TLS (TCP) and DNS over QUIC (UDP) ports: refused to any other address.
    pub ports: Vec<u16>,
    /// Ports refused towards `doh_endpoints` (DoH over HTTP/2 on TCP, HTTP/3 on UDP).
    pub doh_ports: Vec<u16>,
    /// Addresses of public DoH/DoT resolvers (shipped list).
    #[serde(deserialize_with = "cidrs")]
    pub doh_endpoints: Vec<ipnet::IpNet>,
    /// More of them, one address or network a line (`#` comments); re-read on SIGHUP.
    pub doh_endpoints_file: PathBuf,
}

/// Public DoH/DoT resolvers, from their operators' documentation (deploy/exfilguard.toml
/// names the pages). Plain DNS to them (port 53) is inspected like any other.
pub const DOH_ENDPOINTS: &[&str] = &[
    // Google Public DNS (dns.google)
    "8.8.8.8",
    "8.8.4.4",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
    "2001:4860:4860::6464",
    "2001:4860:4860::64",
    // Cloudflare 1.1.1.1 and 1.1.1.1 for Families (one.one.one.one, cloudflare-dns.com,
    // security./family.cloudflare-dns.com, chrome./mozilla.cloudflare-dns.com)
    "1.1.1.1",
    "1.0.0.1",
    "1.1.1.2",
    "1.0.0.2",
    "1.1.1.3",
    "1.0.0.3",
    "2606:4700:4700::1111",
    "2606:4700:4700::1001",
    "2606:4700:4700::1112",
    "2606:4700:4700::1002",
    "2606:4700:4700::1113",
    "2606:4700:4700::1003",
    "104.16.248.249",
    "104.16.249.249",
    "162.159.61.3",
    "162.159.61.4",
    "172.64.41.3",
    "172.64.41.4",
    // Quad9 (dns.quad9.net, dns10, dns11)
    "9.9.9.9",
    "149.112.112.112",
    "9.9.9.10",
    "149.112.112.10",
    "9.9.9.11",
    "149.112.112.11",
    "2620:fe::fe",
    "2620:fe::9",
    "2620:fe::10",
    "2620:fe::fe:10",
    "2620:fe::11",
    "2620:fe::fe:11",
    // Cisco OpenDNS (doh.opendns.com, FamilyShield)
    "208.67.222.222",
    "208.67.220.220",
    "208.67.222.123",
    "208.67.220.123",
    "146.112.41.2",
    "2620:119:35::35",
    "2620:119:53::53",
    "2620:119:fc::2",
    // AdGuard DNS (default, family, unfiltered)
    "94.140.14.14",
    "94.140.15.15",
    "94.140.14.15",
    "94.140.15.16",
    "94.140.14.140",
    "94.140.14.141",
    "2a10:50c0::ad1:ff",
    "2a10:50c0::ad2:ff",
    "2a10:50c0::bad1:ff",
    "2a10:50c0::bad2:ff",
    "2a10:50c0::1:ff",
    "2a10:50c0::2:ff",
    // NextDNS (anycast networks)
    "45.90.28.0/24",
    "45.90.30.0/24",
    "2a07:a8c0::/33",
    "2a07:a8c1::/33",
    // CleanBrowsing (family, adult, security)
    "185.228.168.168",
    "185.228.169.168",
    "185.228.168.10",
    "185.228.169.11",
    "185.228.168.9",
    "185.228.169.9",
    "2a0d:2a00:1::",
    "2a0d:2a00:2::",
    "2a0d:2a00:1::1",
    "2a0d:2a00:2::1",
    "2a0d:2a00:1::2",
    "2a0d:2a00:2::2",
    // Mullvad DNS (dns., adblock., base., extended., family., all.dns.mullvad.net)
    "194.242.2.2",
    "194.242.2.3",
    "194.242.2.4",
    "194.242.2.5",
    "194.242.2.6",
    "194.242.2.9",
    "2a07:e340::2",
    "2a07:e340::3",
    "2a07:e340::4",
    "2a07:e340::5",
    "2a07:e340::6",
    "2a07:e340::9",
];

impl Default for EncryptedDnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sanctioned: Vec::new(),
            ports: vec![853],
            doh_ports: vec![443],
            doh_endpoints: DOH_ENDPOINTS
                .iter()
                .map(|s| {
                    s.parse()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .expect("static")
                })
                .collect(),
            doh_endpoints_file: PathBuf::new(),
        }
    }
}

/// Most entries of the kernel's DoH-address and sanctioned-resolver tries.
pub const DOH_ENDPOINTS_MAX: usize = 16_384;
pub const SANCTIONED_MAX: usize = 4096;

impl EncryptedDnsConfig {
    /// `doh_endpoints` and the networks of `doh_endpoints_file`.
    pub fn doh_list(&self) -> Result<Vec<ipnet::IpNet>> {
        let mut out = self.doh_endpoints.clone();
        if self.doh_endpoints_file.as_os_str().is_empty() {
            return Ok(out);
        }
        let p = &self.doh_endpoints_file;
        let text = std::fs::read_to_string(p).map_err(|e| {
            anyhow::anyhow!(
                "encrypted_dns.doh_endpoints_file: reading {}: {e}",
                p.display()
            )
        })?;
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let net = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "encrypted_dns.doh_endpoints_file: {}:{}: {entry:?} is not an address or CIDR network",
                        p.display(),
                        i + 1
                    )
                })?;
            out.push(net);
        }
        Ok(out)
    }

    fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (key, list, max) in [
            (
                "encrypted_dns.ports",
                &self.ports,
                exfilguard_dataplane::config::ENCDNS_PORTS,
            ),
            (
                "encrypted_dns.doh_ports",
                &self.doh_ports,
                exfilguard_dataplane::config::DOH_PORTS,
            ),
        ] {
            if list.len() > max {
                errs.push(format!(
                    "{key}: {} ports, the kernel takes at most {max}",
                    list.len()
                ));
            }
            if list.contains(&0) {
                errs.push(format!("{key}: port 0 is not a port"));
            }
        }
        if self.sanctioned.len() > SANCTIONED_MAX {
            errs.push(format!(
                "encrypted_dns.sanctioned: {} entries, at most {SANCTIONED_MAX}",
                self.sanctioned.len()
            ));
        }
        if self.enabled {
            match self.doh_list() {
                Ok(l) if l.len() > DOH_ENDPOINTS_MAX => errs.push(format!(
                    "encrypted_dns: {} DoH endpoints (list and file), at most {DOH_ENDPOINTS_MAX}",
                    l.len()
                )),
                Ok(_) => {}
                Err(e) => errs.push(e.to_string()),
            }
        }
        errs
    }
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
    /// `ip:port` resolvers forwarded to, round robin; one that stops answering is skipped. A bare
    /// address means port 53 (853 with `upstream_tls`).
    pub upstreams: Vec<String>,
    /// Forward to the upstreams over DNS over TLS (RFC 7858), whatever the client spoke.
    pub upstream_tls: bool,
    /// The name in the upstreams' certificates ("": their IP addresses).
    pub upstream_tls_name: String,
    /// PEM bundle of the CAs trusted for the upstreams (empty path: the system's store).
    pub upstream_tls_ca: PathBuf,
    /// Answer NXDOMAIN for `use-application-dns.net`: browsers then leave their own DoH off.
    pub doh_canary: bool,
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
    /// `ip:port` addresses served with DNS over TLS (RFC 7858). Connections share the TCP
    /// caps, idle and lifetime limits above; the TCP idle limit also bounds the handshake.
    pub listen_tls: Vec<String>,
    /// `ip:port` addresses served with DNS over HTTPS (RFC 8484, HTTP/2 and HTTP/1.1).
    pub listen_https: Vec<String>,
    /// PEM certificate chain and private key of the DoT/DoH listeners.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Development: a self-signed certificate for `tls_names`, written to `tls_cert`/`tls_key`
    /// when they do not exist yet (reused when they do).
    pub tls_self_signed: bool,
    pub tls_names: Vec<String>,
    /// The DoH endpoint's path; every other path gets 404.
    pub doh_path: String,
    /// Queries in flight per DoT connection, and concurrent HTTP/2 streams per DoH connection.
    pub tls_max_streams: u32,
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
            upstream_tls: false,
            upstream_tls_name: String::new(),
            upstream_tls_ca: PathBuf::new(),
            doh_canary: true,
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
            listen_tls: Vec::new(),
            listen_https: Vec::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_self_signed: false,
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            doh_path: "/dns-query".into(),
            tls_max_streams: 32,
        }
    }
}

impl ResolveConfig {
    /// The upstreams' addresses: `ip:port`, or a bare address for the DNS port (53, or 853
    /// over TLS). The error names the bad entry.
    pub fn upstream_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        let port = if self.upstream_tls { 853 } else { 53 };
        self.upstreams
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, port)))
                    .map_err(|_| {
                        format!("resolve.upstreams: {a:?} is not an address (\"9.9.9.9\", \"9.9.9.9:53\", \"[2620:fe::fe]:53\")")
                    })
            })
            .collect()
    }

    /// Whether a DoT or DoH listener is configured.
    pub fn serves_tls(&self) -> bool {
        !self.listen_tls.is_empty() || !self.listen_https.is_empty()
    }

    /// What is wrong with the DoT/DoH settings (files are read at start-up).
    pub fn tls_problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !self.doh_path.starts_with('/') || self.doh_path.contains(['?', '#', ' ']) {
            errs.push(format!(
                "resolve.doh_path = {:?}: must be a path starting with / (no query)",
                self.doh_path
            ));
        }
        if !self.serves_tls() {
            return errs;
        }
        let (cert, key) = (
            self.tls_cert.as_os_str().is_empty(),
            self.tls_key.as_os_str().is_empty(),
        );
        if self.tls_self_signed {
            if self.tls_names.is_empty() {
                errs.push("resolve.tls_names is empty: the self-signed certificate needs at least one name".into());
            }
            if cert != key {
                errs.push("resolve.tls_cert and resolve.tls_key: give both (where the self-signed certificate and key are kept) or neither".into());
            }
        } else if cert || key {
            errs.push("resolve.listen_tls/listen_https need resolve.tls_cert and resolve.tls_key (PEM files), or resolve.tls_self_signed = true for development".into());
        } else {
            for (k, p) in [
                ("resolve.tls_cert", &self.tls_cert),
                ("resolve.tls_key", &self.tls_key),
            ] {
                if let Err(e) = std::fs::File::open(p) {
                    errs.push(format!("{k} = {:?}: {e}", p.display().to_string()));
                }
            }
        }
        errs
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
    /// then validation. Every problem is reported at once, each with its line and column in
    /// the file (or the environment variable it came from).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let mut checked = None;
        let mut problems = Vec::new();
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
            let c = crate::diagnose::check(&text);
            problems.extend(c.problems.iter().cloned());
            fig = fig.merge(Serialized::defaults(&c.good));
            checked = Some(c);
        }
        fig = fig.merge(Env::prefixed("EXFILGUARD__").split("__").lowercase(true));
        let cfg = match fig.extract::<Config>() {
            Ok(cfg) => Ok(cfg),
            Err(e) => {
                problems.extend(e.into_iter().map(|e| crate::diagnose::Problem {
                    at: None,
                    message: figment_problem(&e),
                }));
                // the environment is wrong: still validate what the file says
                let mut file_only = Figment::from(Serialized::defaults(Config::default()));
                if let Some(c) = &checked {
                    file_only = file_only.merge(Serialized::defaults(&c.good));
                }
                Err(file_only.extract::<Config>())
            }
        };
        let judged = match &cfg {
            Ok(c) | Err(Ok(c)) => Some(c),
            Err(Err(_)) => None,
        };
        if let Some(cfg) = judged {
            for m in cfg.problems() {
                problems.push(match &checked {
                    Some(c) => c.place(m),
                    None => crate::diagnose::Problem {
                        at: None,
                        message: m,
                    },
                });
            }
        }
        problems.sort_by_key(|p| (p.at.is_none(), p.at));
        match cfg {
            Ok(cfg) if problems.is_empty() => Ok(cfg),
            _ => {
                let from = path
                    .map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default();
                let n = problems.len();
                let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                bail!(
                    "invalid configuration{from}: {n} problem{}\n{}",
                    if n == 1 { "" } else { "s" },
                    list.join("\n")
                )
            }
        }
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let errs = self.problems();
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration: {}", errs.join("; "))
        }
    }

    /// What types cannot check: ranges and names. Each message starts with the key.
    pub fn problems(&self) -> Vec<String> {
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
        range("resolve.tls_max_streams", r.tls_max_streams as u64, 1, 1024);
        errs.extend(r.tls_problems());
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
            ("resolve.listen_tls", &self.resolve.listen_tls),
            ("resolve.listen_https", &self.resolve.listen_https),
        ] {
            for a in list {
                if a.parse::<SocketAddr>().is_err() {
                    errs.push(format!("{key}: {a:?} is not an ip:port address"));
                }
            }
        }
        if let Err(e) = self.resolve.upstream_addrs() {
            errs.push(e);
        }
        let n = &self.resolve.upstream_tls_name;
        if !n.is_empty() && exfilguard_dns::DnsName::parse(n).is_err() {
            errs.push(format!(
                "resolve.upstream_tls_name = {n:?}: not a DNS name (empty: the upstreams' addresses)"
            ));
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
        errs.extend(self.encrypted_dns.problems());
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
        errs
    }
}

/// A figment error without its profile (`default.kernel.mode`), naming the variable it came
/// from (`EXFILGUARD__KERNEL__MODE`).
fn figment_problem(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = match &e.metadata {
        Some(m) if m.name.contains("environment") => format!(
            " (from EXFILGUARD__{})",
            e.path.join("__").to_ascii_uppercase()
        ),
        _ => String::new(),
    };
    format!("{key}: {}{source}", e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_upstream_address_means_the_dns_port() {
        let mut r = ResolveConfig {
            upstreams: vec![
                "9.9.9.9".into(),
                "2620:fe::fe".into(),
                "127.0.0.1:5301".into(),
            ],
            ..Default::default()
        };
        let port = |r: &ResolveConfig| -> Vec<u16> {
            r.upstream_addrs()
                .unwrap()
                .iter()
                .map(|a| a.port())
                .collect()
        };
        assert_eq!(port(&r), [53, 53, 5301]);
        r.upstream_tls = true;
        assert_eq!(port(&r), [853, 853, 5301]);
        r.upstreams = vec!["dns.example:53".into()];
        let e = r.upstream_addrs().unwrap_err();
        assert!(e.contains("\"dns.example:53\" is not an address"), "{e}");
    }

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
    fn resolve_tls_settings_are_checked() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        let e = err("[resolve]\nlisten_tls = [\"127.0.0.1:853\"]\n");
        assert!(
            e.contains("need resolve.tls_cert and resolve.tls_key"),
            "{e}"
        );
        let e = err("[resolve]\nlisten_https = [\"nowhere\"]\ntls_self_signed = true\n");
        assert!(e.contains("resolve.listen_https: \"nowhere\""), "{e}");
        let e = err(
            "[resolve]\nlisten_tls = [\"127.0.0.1:853\"]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
        );
        assert!(
            e.contains("resolve.tls_cert = \"/nonexistent/c.pem\"")
                && e.contains("resolve.tls_key"),
            "{e}"
        );
        let e = err("[resolve]\ndoh_path = \"dns-query\"\n");
        assert!(e.contains("resolve.doh_path"), "{e}");
        let e = err(
            "[resolve]\nlisten_tls = [\"127.0.0.1:853\"]\ntls_self_signed = true\ntls_names = []\n",
        );
        assert!(e.contains("resolve.tls_names is empty"), "{e}");
        let c = Config::from_toml(
            "[resolve]\nlisten_tls = [\"127.0.0.1:853\"]\nlisten_https = [\"[::1]:443\"]\ntls_self_signed = true\n",
        )
        .unwrap();
        assert!(c.resolve.serves_tls());
    }

    #[test]
    fn encrypted_dns_lists_and_limits() {
        let d = EncryptedDnsConfig::default();
        assert!(d.enabled && d.sanctioned.is_empty());
        assert_eq!(
            (d.ports.as_slice(), d.doh_ports.as_slice()),
            (&[853][..], &[443][..])
        );
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "9.9.9.9",
            "2606:4700:4700::1111",
            "194.242.2.2",
        ] {
            let ip: std::net::IpAddr = a.parse().unwrap();
            assert!(d.doh_endpoints.iter().any(|n| n.contains(&ip)), "{a}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("doh.txt");
        std::fs::write(&f, "# more\n192.0.2.53\n\n2001:db8::/48 # a network\n").unwrap();
        let toml = format!(
            "[encrypted_dns]\nsanctioned = [\"10.0.0.53\"]\ndoh_endpoints = []\ndoh_endpoints_file = {:?}\n",
            f.display().to_string()
        );
        let c = Config::from_toml(&toml).unwrap();
        let l = c.encrypted_dns.doh_list().unwrap();
        assert_eq!(
            l.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["192.0.2.53/32", "2001:db8::/48"]
        );
        assert_eq!(c.encrypted_dns.sanctioned[0].to_string(), "10.0.0.53/32");
        std::fs::write(&f, "192.0.2.53\nnot-an-address\n").unwrap();
        let e = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(
            e.contains("doh_endpoints_file") && e.contains(":2:") && e.contains("not-an-address"),
            "{e}"
        );
        let e = Config::from_toml("[encrypted_dns]\nports = [853, 0]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted_dns.ports: port 0"), "{e}");
        let e = Config::from_toml("[encrypted_dns]\ndoh_ports = [1, 2, 3, 4, 5]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted_dns.doh_ports: 5 ports"), "{e}");
        let e = Config::from_toml("[encrypted_dns]\nsanctioned = [\"resolver\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sanctioned") && e.contains("resolver"), "{e}");
        let e = Config::from_toml("[encrypted_dns]\ndoh_endpoints_file = \"/nonexistent/doh\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/doh"), "{e}");
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
