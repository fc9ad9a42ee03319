//! `exfilguard run`: one daemon that wires the kernel data plane, the brain, the event sinks
//! (rotating OCSF JSONL, Kafka through an on-disk spool, stdout), the fleet blocklist and the
//! Prometheus endpoint. SIGTERM/SIGINT stop it cleanly (programs detached unless `persist`);
//! SIGHUP reloads the config and the model without dropping enforcement.

pub mod analytics;
pub mod config;
pub mod diagnose;
pub mod floods;
pub mod host;
pub mod metrics;
pub mod pipeline;
pub mod reference;
pub mod services;

use anyhow::{Context, Result};
use config::{AttachPoint, Config};
use exfilguard_dataplane::{Dataplane, EgressAttach, Features, LoadOptions, Maps, SocketScope};
use exfilguard_detect::{Class, Detector, Model, NameList};
use exfilguard_dns::DnsName;
use exfilguard_kafka::fleet::FleetUpdate;
use pipeline::Pipeline;
use services::{FleetApply, Services};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a finished run reports (printed by `protect`, logged by `run`).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub released: u64,
    pub convicted: u64,
    pub expired: u64,
    pub holds: u64,
    pub hold_us_p50: f64,
    pub hold_us_p99: f64,
    pub events_dropped: u64,
    pub kernel: serde_json::Map<String, serde_json::Value>,
}

/// An allow/block list from config entries.
pub fn name_list(entries: &[String]) -> Result<NameList> {
    NameList::parse(&entries.join("\n")).context("domain list")
}

/// The brain described by `cfg.detect`.
pub fn detector(cfg: &Config) -> Result<Detector> {
    let d = &cfg.detect;
    let mut model = if d.model.as_os_str().is_empty() {
        Model::embedded().context("loading the embedded model")?
    } else {
        let bytes = std::fs::read(&d.model)
            .with_context(|| format!("detect.model: reading {}", d.model.display()))?;
        Model::from_bytes(&bytes)
            .with_context(|| format!("detect.model: loading {}", d.model.display()))?
    };
    if d.threshold > 0.0 {
        model.set_threshold(d.threshold);
    }
    let det = tune(
        Detector::new(model).with_lists(name_list(&d.allow)?, name_list(&d.block)?),
        cfg,
    );
    // first-call allocations happen now, not on the first held query
    det.classify(&DnsName::parse("warm-up.exfilguard.invalid")?)?;
    Ok(det)
}

/// The deployment's settings of a brain: lookup zones, MEDIUM thresholds, actions.
pub fn tune(det: Detector, cfg: &Config) -> Detector {
    let d = &cfg.detect;
    let suspect = |p: f32| (p > 0.0).then_some(p);
    det.with_lookup_zones(&cfg.behaviour.lookup_zones)
        .with_detector(Class::Tunnel, suspect(d.tunnel_suspect), d.tunnel_action)
        .with_detector(Class::Dga, suspect(d.dga_suspect), d.dga_action)
}

/// The host name events and fleet entries carry.
pub fn host_name(cfg: &Config) -> String {
    if cfg.host.name.is_empty() {
        host::hostname()
    } else {
        cfg.host.name.clone()
    }
}

/// Applies the fleet blocklist to the kernel through the conviction policy (shared with the
/// decision loop): entries block unless allowlisted here or protected, tombstones and
/// expiries unblock; the local static blocklist is never unblocked.
struct FleetApplier {
    maps: Maps,
    allow: NameList,
    pinned_block: std::collections::HashSet<String>,
    convictions: Arc<std::sync::Mutex<exfilguard_convict::Convictions>>,
    metrics: metrics::Metrics,
}

impl FleetApplier {
    fn count(&self, op: &str) {
        self.metrics
            .fleet_updates
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    fn apply(&mut self, u: Option<FleetUpdate>) {
        use exfilguard_convict::FleetAction;
        let Some(u) = u else { return };
        let now = exfilguard_kafka::fleet::now_ms();
        let action = self
            .convictions
            .lock()
            .expect("lock")
            .fleet(u, &self.allow, now);
        match action {
            FleetAction::Block { zone, evicted, .. } => {
                for d in &evicted {
                    self.unblock(d);
                }
                match self.maps.block_domain(&zone) {
                    Ok(_) => {
                        tracing::info!(domain = %zone, "fleet blocklist: blocked");
                        self.count("block");
                    }
                    Err(err) => {
                        tracing::warn!(domain = %zone, "fleet entry not applied: {err}");
                        self.count("skipped");
                    }
                }
            }
            FleetAction::Unblock { zone, .. } => self.unblock(&zone),
            FleetAction::Skipped { zone, why } => {
                tracing::warn!(domain = %zone, "fleet entry not applied: {why}");
                self.count("skipped");
            }
        }
    }

    fn unblock(&mut self, domain: &str) {
        if self.pinned_block.contains(domain) {
            return;
        }
        match self.maps.unblock_domain(domain) {
            Ok(()) => {
                tracing::info!(domain, "fleet blocklist: unblocked");
                self.count("unblock");
            }
            Err(e) => tracing::warn!(domain, "fleet unblock not applied: {e}"),
        }
    }
}

/// Devices that appear after start (a VPN's tun, a container's veth, a hot-plugged NIC) get
/// tc egress inspection within 2 s when the agent guards every device. Under the lock-down
/// (capabilities dropped, bpf(2) limited to map commands) the kernel refuses the attach: the
/// watch then says so once and stops; local sends on such devices are still judged by the
/// socket layer, and a restart attaches tc to them.
struct DeviceWatch {
    guarded: std::collections::HashSet<u32>,
    last: std::time::Instant,
    stopped: bool,
}

impl DeviceWatch {
    fn tick(&mut self, dp: &mut Dataplane) {
        if self.stopped || self.last.elapsed() < std::time::Duration::from_secs(2) {
            return;
        }
        self.last = std::time::Instant::now();
        for (name, idx) in host::egress_interfaces() {
            if !self.guarded.insert(idx) {
                continue;
            }
            match dp.attach_tc_egress(idx) {
                Ok(_) => {
                    tracing::info!(iface = %name, "new device: egress DNS inspection attached")
                }
                Err(e) => {
                    tracing::warn!(iface = %name, "new device: tc egress not attached ({e}); its local sends are judged at the socket layer, a restart attaches tc; no further attempts");
                    self.stopped = true;
                    return;
                }
            }
        }
    }
}

/// Options the `protect` front end sets beyond the config file.
#[derive(Default)]
pub struct RunOptions {
    pub config_path: Option<PathBuf>,
}

pub fn run(cfg: Config, opts: RunOptions) -> Result<Summary> {
    let host = host_name(&cfg);
    let detector = detector(&cfg)?;
    let info = detector.model().info().clone();
    tracing::info!(model = %info.version, sha256 = %&info.sha256[..12], host = %host, "brain loaded");

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::new(&mut registry, &info.version, &info.sha256);

    let features = Features::probe();
    for line in features.fallbacks() {
        tracing::warn!("{line}");
    }
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: Some(cfg.dataplane.pin_dir.clone()),
        persist: cfg.dataplane.persist,
        ringbuf_bytes: cfg.dataplane.ringbuf_mib << 20,
        observe_bytes: 0,
    })
    .context("loading the data plane (needs root)")?;
    // the address lists before the policy that turns them on
    apply_encrypted_dns(&dp, &cfg)?;
    dp.set_policy(&kernel_policy(&cfg))?;
    for d in &cfg.detect.block {
        dp.block_domain(d.trim_start_matches('='))
            .with_context(|| format!("detect.block: {d}"))?;
    }

    let cg_root = host::cgroup_root();
    let cg = if cfg.dataplane.cgroup.as_os_str().is_empty() {
        cg_root.clone()
    } else {
        Some(cfg.dataplane.cgroup.clone())
    };
    match &cg {
        Some(dir) if features.cgroup_sock_addr => {
            dp.attach_cgroup(dir)
                .with_context(|| format!("attaching to cgroup {}", dir.display()))?;
            if cfg.dataplane.socket_scope != SocketScope::Off {
                dp.attach_socket_layer(dir).with_context(|| {
                    format!("attaching the socket layer to cgroup {}", dir.display())
                })?;
                tracing::info!(scope = ?cfg.dataplane.socket_scope, "socket-layer DNS inspection (cgroup_skb egress) on every local send");
            }
        }
        _ => tracing::warn!(
            "no cgroup2 hierarchy: events carry no process, and sends are judged only at the interfaces"
        ),
    }
    // no list: every device of the namespace at tc egress (rescanned for new ones below),
    // XDP on the default-route one; a list: exactly those, with XDP
    let all_devices = cfg.dataplane.interfaces.is_empty();
    let default_if = host::default_route_interface();
    let ifaces: Vec<String> = if all_devices {
        host::egress_interfaces()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    } else {
        cfg.dataplane.interfaces.clone()
    };
    if ifaces.is_empty() {
        anyhow::bail!(
            "no interface to protect: dataplane.interfaces is empty and there is none but lo"
        );
    }
    if cfg.dataplane.attach == AttachPoint::Netfilter {
        dp.attach_netfilter()?;
        tracing::info!("inspecting at netfilter LOCAL_OUT");
    }
    let mut guarded = std::collections::HashSet::new();
    for name in &ifaces {
        let idx = host::ifindex(name).with_context(|| format!("dataplane.interfaces: {name}"))?;
        guarded.insert(idx);
        if cfg.dataplane.attach == AttachPoint::Tc {
            let how = match dp.attach_tc_egress(idx)? {
                EgressAttach::Tcx => "tcx",
                EgressAttach::TcxTakenOver => "tcx (taken over from a pinned link)",
                EgressAttach::Clsact => "clsact",
            };
            tracing::info!(iface = %name, "egress DNS inspection via {how}");
        }
        let xdp_here = !all_devices || default_if.as_deref() == Some(name.as_str());
        // never on loopback (ifindex 1 in every namespace): what arrives there was sent by a
        // local process, which could forge the server cookies XDP learns and echo its own
        // data in them for free
        if cfg.dataplane.xdp && xdp_here && idx == 1 {
            tracing::info!(iface = %name, "no XDP on loopback: local senders could forge responses there");
        }
        if cfg.dataplane.xdp && features.xdp && xdp_here && idx != 1 {
            // optional: egress enforcement does not depend on it
            match dp.attach_xdp(idx) {
                Ok(()) => tracing::info!(iface = %name, "ingress response inspection via XDP"),
                Err(e) => tracing::warn!(iface = %name, "no XDP response inspection: {e}"),
            }
        }
    }
    let mut rescan =
        (all_devices && cfg.dataplane.attach == AttachPoint::Tc).then(|| DeviceWatch {
            guarded,
            last: std::time::Instant::now(),
            stopped: false,
        });

    let pins = dp.restrict_pins().context("restricting pinned objects")?;
    tracing::debug!(
        count = pins.len(),
        "pinned objects restricted to root (0600/0700)"
    );
    let guard = attach_guard(cfg.hardening.guard, &dp, &features)?;
    // before any service thread exists: threads inherit the reduced capability sets
    if cfg.hardening.drop_caps {
        exfilguard_lockdown::drop_capabilities().context("dropping capabilities")?;
        tracing::info!("capabilities dropped to CAP_NET_ADMIN, CAP_NET_RAW (no_new_privs)");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("signal handler")?;

    let live = metrics::Live {
        maps: Some(dp.maps().try_clone()?),
        ..Default::default()
    };
    // one set of conviction tables for the decision loop and the fleet follower
    let convictions = Arc::new(std::sync::Mutex::new(pipeline::convictions_for(&cfg)));
    let fleet: Option<FleetApply> = if cfg.kafka.enabled() && cfg.kafka.follow_blocklist {
        let mut applier = FleetApplier {
            maps: dp.maps().try_clone()?,
            allow: name_list(&cfg.detect.allow)?,
            pinned_block: pipeline::pinned(&cfg.detect.block),
            convictions: convictions.clone(),
            metrics: metrics.clone(),
        };
        Some(Box::new(move |u| applier.apply(u)))
    } else {
        None
    };
    let services = Services::start(&cfg, &host, &metrics, registry, live, fleet)?;
    let (sink_tx, convictions_tx) = (services.sink.clone(), services.convictions.clone());

    let mut pipe = Pipeline::new(
        detector,
        metrics.clone(),
        host.clone(),
        &cfg,
        sink_tx,
        convictions_tx,
        cg_root,
    );
    pipe.convictions = convictions;
    lock_down(&cfg.hardening)?;
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        mode = ?cfg.kernel.mode,
        interfaces = ?ifaces,
        "protecting; SIGTERM stops, SIGHUP reloads"
    );

    let mut current = cfg;
    dp.run(&stop, |dp, batch, observed| {
        if reload.swap(false, Ordering::Relaxed) {
            reload_config(dp, &mut pipe, &mut current, opts.config_path.as_deref());
        }
        pipe.handle(dp, batch, observed);
        if let Some(w) = &mut rescan {
            w.tick(dp);
        }
    })?;

    // shutdown: decisions stopped; let the sinks and the spool drain, then detach
    metrics.ready.store(false, Ordering::Relaxed);
    let summary = Summary {
        released: pipe.released,
        convicted: pipe.convicted,
        expired: pipe.expired,
        holds: pipe.hold_latency.count(),
        hold_us_p50: pipe.hold_latency.percentile_us(0.50),
        hold_us_p99: pipe.hold_latency.percentile_us(0.99),
        events_dropped: metrics.events_dropped.get(),
        kernel: dp
            .stats()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    };
    drop(pipe); // closes the sink and conviction queues
    let persist = current.dataplane.persist;
    if let Some(g) = guard {
        let refused = g.refusal_summary();
        drop(g); // closing its links detaches it
        tracing::info!("BPF LSM guard detached; it refused {refused}");
    }
    dp.detach_all();
    services.shutdown();
    tracing::info!(
        released = summary.released,
        convicted = summary.convicted,
        "stopped; {}",
        if persist {
            "programs left attached (persist)"
        } else {
            "programs detached, maps stay pinned"
        }
    );
    Ok(summary)
}

/// The BPF LSM guard over the data plane's maps, links and pin directory (docs/threat-model.md).
fn attach_guard(
    mode: config::GuardMode,
    dp: &Dataplane,
    features: &Features,
) -> Result<Option<exfilguard_dataplane::guard::Guard>> {
    use config::GuardMode;
    if mode == GuardMode::Off {
        tracing::info!("BPF LSM guard off (hardening.guard)");
        return Ok(None);
    }
    // Tried even when the LSM list says no: it may just be unreadable (no securityfs in a
    // container); the kernel has the last word.
    let why_not = match dp.pin_dir() {
        None => "nothing is pinned".to_string(),
        Some(dir) => match exfilguard_dataplane::guard::Guard::attach(dir, &dp.object_ids()) {
            Ok(g) => {
                tracing::info!(
                    pin_dir = %dir.display(),
                    "BPF LSM guard attached: only this executable may open exfilguard's maps, \
                     links and pins or ptrace the agent"
                );
                return Ok(Some(g));
            }
            Err(e) if features.bpf_lsm => format!("the kernel refused it: {e}"),
            Err(e) => format!(
                "{e}; `bpf` is not in the active LSM list, or the list is unreadable \
                 (boot with lsm=...,bpf)"
            ),
        },
    };
    if mode == GuardMode::Required {
        anyhow::bail!(
            "hardening.guard = \"required\" but the BPF LSM guard cannot attach: {why_not}"
        );
    }
    tracing::warn!(
        "no BPF LSM guard ({why_not}): another root process can detach exfilguard's programs or \
         write its maps; pins are 0700/0600 root-only"
    );
    Ok(None)
}

/// The seccomp half of the lock-down, once every service thread runs (TSYNC covers them all),
/// and a check that no thread kept more capabilities than the steady state needs.
fn lock_down(h: &config::HardeningConfig) -> Result<()> {
    if h.drop_caps {
        let over = exfilguard_lockdown::threads_over().context("checking thread capabilities")?;
        if !over.is_empty() {
            anyhow::bail!("threads kept capabilities after the drop: {over:?}");
        }
    }
    exfilguard_lockdown::apply_seccomp(h.seccomp).context("seccomp")?;
    match h.seccomp {
        exfilguard_lockdown::SeccompMode::Off => {
            tracing::warn!("seccomp off (hardening.seccomp = \"off\")")
        }
        mode => tracing::info!(?mode, "seccomp allowlist installed on every thread"),
    }
    Ok(())
}

/// The kernel policy of `[kernel]`, observing passed names when the analytics want them.
fn kernel_policy(cfg: &Config) -> exfilguard_dataplane::KernelPolicy {
    static NETNS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let netns_cookie = *NETNS.get_or_init(|| {
        exfilguard_dataplane::netns_cookie().unwrap_or_else(|e| {
            tracing::warn!(
                "no network namespace cookie ({e}): the socket layer judges every namespace"
            );
            0
        })
    });
    let scope = match (cfg.dataplane.socket_scope, netns_cookie) {
        (SocketScope::Netns, 0) => SocketScope::All,
        (s, _) => s,
    };
    exfilguard_dataplane::KernelPolicy {
        observe: cfg.behaviour.enabled,
        agent_tgid: std::process::id(),
        socket_scope: scope,
        netns_cookie,
        encrypted_dns: cfg.encrypted_dns.enabled,
        encdns_ports: cfg.encrypted_dns.ports.clone(),
        doh_ports: cfg.encrypted_dns.doh_ports.clone(),
        ..cfg.kernel.clone()
    }
}

/// `[encrypted_dns]`'s address lists into the kernel (the known DoH resolvers, shipped and
/// from `doh_endpoints_file`, and the sanctioned ones).
fn apply_encrypted_dns(dp: &Dataplane, cfg: &Config) -> Result<()> {
    let e = &cfg.encrypted_dns;
    let nets = |l: &[ipnet::IpNet]| -> Vec<(std::net::IpAddr, u8)> {
        l.iter().map(|n| (n.network(), n.prefix_len())).collect()
    };
    let doh = if e.enabled { e.doh_list()? } else { Vec::new() };
    let (d, s) = dp
        .set_encrypted_dns_lists(&nets(&doh), &nets(&e.sanctioned))
        .context("writing the encrypted-DNS address lists")?;
    if e.enabled {
        tracing::info!(
            doh_endpoints = d,
            sanctioned = s,
            ports = ?e.ports,
            doh_ports = ?e.doh_ports,
            "encrypted DNS allowed only to sanctioned resolvers (connect/sendmsg)"
        );
    }
    Ok(())
}

/// SIGHUP: re-read the config and the model; on any error keep the running ones. Enforcement
/// never stops: the kernel policy is swapped in one map write.
fn reload_config(
    dp: &mut Dataplane,
    pipe: &mut Pipeline,
    current: &mut Config,
    path: Option<&Path>,
) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP without a config file: reloading the model only");
        match detector(current) {
            Ok(d) => {
                let info = d.model().info();
                pipe.metrics.set_model(&info.version, &info.sha256);
                pipe.detector = d;
            }
            Err(e) => tracing::error!("reload failed, keeping the running model: {e:#}"),
        }
        return;
    };
    let new = match Config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running config: {e:#}");
            pipe.metrics.error("reload");
            return;
        }
    };
    let det = match detector(&new) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("reload failed, keeping the running config and model: {e:#}");
            pipe.metrics.error("reload");
            return;
        }
    };
    if let Err(e) = apply_encrypted_dns(dp, &new) {
        tracing::error!("reload: {e:#}");
        pipe.metrics.error("reload");
        return;
    }
    if let Err(e) = dp.set_policy(&kernel_policy(&new)) {
        tracing::error!("reload: writing the kernel policy: {e}");
        pipe.metrics.error("reload");
        return;
    }
    for d in &new.detect.block {
        if let Err(e) = dp.block_domain(d.trim_start_matches('=')) {
            tracing::warn!("detect.block: {d}: {e}");
        }
    }
    if new.dataplane != current.dataplane
        || new.kafka != current.kafka
        || new.events != current.events
        || new.metrics != current.metrics
    {
        tracing::warn!("reload: [dataplane], [events], [kafka] and [metrics] changes take effect at the next restart");
    }
    let info = det.model().info();
    pipe.metrics.set_model(&info.version, &info.sha256);
    pipe.detector = det;
    pipe.max_hold_ns = new.pipeline.max_hold_ms * 1_000_000;
    pipe.fail_open = new.kernel.fail_open;
    pipe.monitor = new.kernel.mode == exfilguard_dataplane::Mode::Monitor;
    pipe.batch_max = new.pipeline.batch_max;
    pipe.quarantine_after = new.detect.quarantine_after;
    if new.behaviour != current.behaviour || new.detect.block != current.detect.block {
        // new thresholds start from empty tables; behaviour blocks in force still lapse
        match &mut pipe.analytics {
            Some(an) => an.reconfigure(&new.behaviour),
            None => pipe.analytics = Some(analytics::Analytics::new(&new.behaviour)),
        }
    }
    let info = pipe.detector.model().info();
    tracing::info!(model = %info.version, mode = ?new.kernel.mode, "configuration reloaded");
    *current = new;
}
