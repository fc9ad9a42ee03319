//! `exfilguard run`: one daemon that wires the kernel data plane, the brain, the event sinks
//! (rotating OCSF JSONL, Kafka through an on-disk spool, stdout), the fleet blocklist and the
//! Prometheus endpoint. SIGTERM/SIGINT stop it cleanly (programs detached unless `persist`);
//! SIGHUP reloads the config and the model without dropping enforcement.

pub mod config;
pub mod host;
pub mod metrics;
pub mod pipeline;

use anyhow::{Context, Result};
use config::{AttachPoint, Config};
use exfilguard_dataplane::{Dataplane, EgressAttach, Features, LoadOptions, Maps};
use exfilguard_detect::{Detector, Model, NameList};
use exfilguard_dns::DnsName;
use exfilguard_events::jsonl::JsonlFile;
use exfilguard_events::Detection;
use exfilguard_kafka::fleet::{BlockEntry, FleetUpdate};
use exfilguard_kafka::sender::{Sender, SenderStats};
use exfilguard_kafka::spool::Spool;
use pipeline::{Conviction, Pipeline};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

fn name_list(entries: &[String]) -> Result<NameList> {
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
    let det = Detector::new(model).with_lists(name_list(&d.allow)?, name_list(&d.block)?);
    // first-call allocations happen now, not on the first held query
    det.classify(&DnsName::parse("warm-up.exfilguard.invalid")?)?;
    Ok(det)
}

fn host_name(cfg: &Config) -> String {
    if cfg.host.name.is_empty() {
        host::hostname()
    } else {
        cfg.host.name.clone()
    }
}

/// Writes records to the file and stdout sinks and appends them to the Kafka spool.
fn sink_loop(
    rx: Receiver<Box<Detection>>,
    cfg: Config,
    spool: Option<Arc<Spool>>,
    metrics: metrics::Metrics,
) {
    let mut file = if cfg.events.file.enabled {
        match JsonlFile::open(
            &cfg.events.file.path,
            cfg.events.file.max_bytes,
            cfg.events.file.keep,
        ) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(path = %cfg.events.file.path.display(), "event file sink disabled: {e}");
                metrics.error("file_sink");
                None
            }
        }
    } else {
        None
    };
    let stdout = std::io::stdout();
    let counter = |sink: &str| {
        metrics
            .events_written
            .get_or_create(&vec![("sink", sink.to_string())])
            .clone()
    };
    let (c_file, c_stdout, c_kafka) = (counter("file"), counter("stdout"), counter("kafka"));
    let mut kafka_batch: Vec<(String, String)> = Vec::new();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(d) => Some(d),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut out = stdout.lock();
        for det in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            metrics.sink_queue_depth.dec();
            if let Some(f) = &mut file {
                let line = det.to_json(cfg.events.file.format);
                if let Err(e) = f.write_line(&line) {
                    tracing::error!("event file: {e}");
                    metrics.error("file_sink");
                } else {
                    c_file.inc();
                }
            }
            if cfg.events.stdout.enabled {
                let _ = writeln!(out, "{}", det.to_json(cfg.events.stdout.format));
                c_stdout.inc();
            }
            if spool.is_some() {
                kafka_batch.push((
                    det.host.clone(),
                    det.to_json(exfilguard_events::Format::Ocsf),
                ));
            }
            if kafka_batch.len() >= 512 {
                break;
            }
        }
        let _ = out.flush();
        drop(out);
        if let Some(f) = &mut file {
            let _ = f.flush();
        }
        if let (Some(s), false) = (&spool, kafka_batch.is_empty()) {
            match s.append(
                kafka_batch
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            ) {
                Ok(()) => {
                    c_kafka.inc_by(kafka_batch.len() as u64);
                }
                Err(e) => {
                    tracing::error!("event spool: {e}");
                    metrics.error("spool");
                }
            }
            kafka_batch.clear();
        }
    }
}

/// Applies the fleet blocklist to the kernel: entries block, tombstones and expiries unblock.
/// The local allowlist wins over the fleet; the local static blocklist is never unblocked.
struct FleetApplier {
    maps: Maps,
    allow: NameList,
    pinned_block: Vec<String>,
    expiries: HashMap<String, u64>,
    metrics: metrics::Metrics,
    last_sweep: std::time::Instant,
}

impl FleetApplier {
    fn count(&self, op: &str) {
        self.metrics
            .fleet_updates
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    fn apply(&mut self, u: Option<FleetUpdate>) {
        let now = exfilguard_kafka::fleet::now_ms();
        match u {
            Some(FleetUpdate::Block(e)) if e.expired(now) => self.unblock(&e.domain),
            Some(FleetUpdate::Block(e)) => {
                let allowed = DnsName::parse(&e.domain)
                    .ok()
                    .and_then(|n| self.allow.lookup(&n))
                    .is_some();
                if allowed {
                    tracing::warn!(domain = %e.domain, from = %e.host, "fleet entry for an allowlisted domain not applied");
                    self.count("skipped");
                    return;
                }
                match self.maps.block_domain(&e.domain) {
                    Ok(_) => {
                        tracing::info!(domain = %e.domain, from = %e.host, source = %e.source, class = %e.class, "fleet blocklist: blocked");
                        if e.expires_ms != 0 {
                            self.expiries.insert(e.domain.clone(), e.expires_ms);
                        } else {
                            self.expiries.remove(&e.domain);
                        }
                        self.count("block");
                    }
                    Err(err) => {
                        tracing::warn!(domain = %e.domain, "fleet entry not applied: {err}");
                        self.count("skipped");
                    }
                }
            }
            Some(FleetUpdate::Unblock(d)) => self.unblock(&d),
            None => {}
        }
        if self.last_sweep.elapsed() > Duration::from_secs(5) {
            self.last_sweep = std::time::Instant::now();
            let due: Vec<String> = self
                .expiries
                .iter()
                .filter(|(_, &t)| t <= now)
                .map(|(d, _)| d.clone())
                .collect();
            for d in due {
                self.unblock(&d);
            }
        }
    }

    fn unblock(&mut self, domain: &str) {
        self.expiries.remove(domain);
        if self.pinned_block.iter().any(|d| d == domain) {
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

/// Turns this host's convictions into fleet entries on the blocklist spool.
fn conviction_loop(rx: Receiver<Conviction>, spool: Arc<Spool>, host: String, ttl_secs: u64) {
    while let Ok(c) = rx.recv() {
        let now = exfilguard_kafka::fleet::now_ms();
        let entry = BlockEntry {
            domain: c.domain.clone(),
            class: c.verdict.class.as_str().to_string(),
            score: c.verdict.score,
            host: host.clone(),
            source: "agent".into(),
            first_seen_ms: now,
            expires_ms: if ttl_secs == 0 {
                0
            } else {
                now + ttl_secs * 1000
            },
            reason: format!("{}: {}", c.name, c.verdict.reasons.join("; ")),
        };
        let v = serde_json::to_string(&entry).expect("entry serialises");
        if let Err(e) = spool.append([(c.domain.as_str(), Some(v.as_str()))]) {
            tracing::error!("blocklist spool: {e}");
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
    })
    .context("loading the data plane (needs root)")?;
    dp.set_policy(&cfg.kernel)?;
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
        Some(dir) if features.cgroup_sock_addr => dp
            .attach_cgroup(dir)
            .with_context(|| format!("attaching to cgroup {}", dir.display()))?,
        _ => tracing::warn!("no cgroup2 hierarchy: events carry no process"),
    }
    let ifaces = if cfg.dataplane.interfaces.is_empty() {
        vec![host::default_route_interface().context(
            "dataplane.interfaces is empty and there is no default route: name the interfaces",
        )?]
    } else {
        cfg.dataplane.interfaces.clone()
    };
    if cfg.dataplane.attach == AttachPoint::Netfilter {
        dp.attach_netfilter()?;
        tracing::info!("inspecting at netfilter LOCAL_OUT");
    }
    for name in &ifaces {
        let idx = host::ifindex(name).with_context(|| format!("dataplane.interfaces: {name}"))?;
        if cfg.dataplane.attach == AttachPoint::Tc {
            let how = match dp.attach_tc_egress(idx)? {
                EgressAttach::Tcx => "tcx",
                EgressAttach::TcxTakenOver => "tcx (taken over from a pinned link)",
                EgressAttach::Clsact => "clsact",
            };
            tracing::info!(iface = %name, "egress DNS inspection via {how}");
        }
        if cfg.dataplane.xdp && features.xdp {
            // optional: egress enforcement does not depend on it
            match dp.attach_xdp(idx) {
                Ok(()) => tracing::info!(iface = %name, "ingress response inspection via XDP"),
                Err(e) => tracing::warn!(iface = %name, "no XDP response inspection: {e}"),
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("signal handler")?;

    let mut threads: Vec<(&str, JoinHandle<()>)> = Vec::new();
    let mut live = metrics::Live {
        maps: Some(dp.maps().try_clone()?),
        ..Default::default()
    };

    // Kafka: spools, senders, fleet follower
    let kafka_stop = Arc::new(AtomicBool::new(false));
    let mut event_spool = None;
    let mut convictions_tx = None;
    if cfg.kafka.enabled() {
        let client_id = format!("exfilguard-{host}");
        let ev_spool = Arc::new(Spool::open(
            &cfg.kafka.spool_dir.join("events"),
            cfg.kafka.spool_max_bytes,
        )?);
        let bl_spool = Arc::new(Spool::open(
            &cfg.kafka.spool_dir.join("blocklist"),
            cfg.kafka.spool_max_bytes / 8,
        )?);
        {
            let (k, id) = (cfg.kafka.clone(), client_id.clone());
            let st = kafka_stop.clone();
            threads.push((
                "topics",
                std::thread::spawn(move || {
                    // the broker may be down at start: keep trying in the background
                    while !st.load(Ordering::Relaxed) {
                        match k.ensure_topics(&id) {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!("kafka topics not ensured yet: {e}");
                                std::thread::sleep(Duration::from_secs(5));
                            }
                        }
                    }
                }),
            ));
        }
        for (stream, spool, topic) in [
            ("events", ev_spool.clone(), cfg.kafka.events_topic.clone()),
            (
                "blocklist",
                bl_spool.clone(),
                cfg.kafka.blocklist_topic.clone(),
            ),
        ] {
            let stats = Arc::new(SenderStats::default());
            live.senders.push((stream, stats.clone(), spool.clone()));
            let sender = Sender {
                spool,
                topic,
                producer: exfilguard_kafka::sender::producer(&cfg.kafka, &client_id)?,
                settings: cfg.kafka.clone(),
                client_id: client_id.clone(),
                stats,
                batch: 1000,
            };
            let st = kafka_stop.clone();
            threads.push((
                stream,
                std::thread::spawn(move || sender.run(&st, Duration::from_secs(3))),
            ));
        }
        event_spool = Some(ev_spool);
        if cfg.kafka.publish_convictions {
            let (tx, rx) = sync_channel::<Conviction>(4096);
            convictions_tx = Some(tx);
            let (h, ttl) = (host.clone(), cfg.kafka.conviction_ttl_secs);
            threads.push((
                "convictions",
                std::thread::spawn(move || conviction_loop(rx, bl_spool, h, ttl)),
            ));
        }
        if cfg.kafka.follow_blocklist {
            let mut applier = FleetApplier {
                maps: dp.maps().try_clone()?,
                allow: name_list(&cfg.detect.allow)?,
                pinned_block: cfg.detect.block.clone(),
                expiries: HashMap::new(),
                metrics: metrics.clone(),
                last_sweep: std::time::Instant::now(),
            };
            let (k, id, st) = (cfg.kafka.clone(), client_id.clone(), kafka_stop.clone());
            threads.push((
                "fleet",
                std::thread::spawn(move || {
                    if let Err(e) =
                        exfilguard_kafka::fleet::follow(&k, &id, &st, |u| applier.apply(u))
                    {
                        tracing::error!("fleet blocklist follower stopped: {e}");
                    }
                }),
            ));
        }
    }

    // sinks
    let (sink_tx, sink_rx) = sync_channel::<Box<Detection>>(cfg.pipeline.sink_queue);
    {
        let (c, s, m) = (cfg.clone(), event_spool.clone(), metrics.clone());
        threads.push((
            "sinks",
            std::thread::spawn(move || sink_loop(sink_rx, c, s, m)),
        ));
    }

    // metrics endpoint
    registry.register_collector(Box::new(live));
    let metrics_stop = Arc::new(AtomicBool::new(false));
    if cfg.metrics.enabled {
        let listener = std::net::TcpListener::bind(cfg.metrics.addr())
            .with_context(|| format!("metrics.listen: binding {}", cfg.metrics.listen))?;
        tracing::info!(listen = %cfg.metrics.listen, "metrics on /metrics, /healthz, /readyz");
        let reg = Arc::new(Mutex::new(registry));
        let (ready, st) = (metrics.ready.clone(), metrics_stop.clone());
        threads.push((
            "metrics",
            std::thread::spawn(move || {
                if let Err(e) = metrics::serve(listener, reg, ready, st) {
                    tracing::error!("metrics server: {e}");
                }
            }),
        ));
    }

    let mut pipe = Pipeline::new(
        detector,
        metrics.clone(),
        host.clone(),
        &cfg,
        sink_tx,
        convictions_tx,
        cg_root,
    );
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        mode = ?cfg.kernel.mode,
        interfaces = ?ifaces,
        "protecting; SIGTERM stops, SIGHUP reloads"
    );

    let mut current = cfg;
    dp.run(&stop, |dp, batch| {
        if reload.swap(false, Ordering::Relaxed) {
            reload_config(dp, &mut pipe, &mut current, opts.config_path.as_deref());
        }
        pipe.handle(dp, batch);
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
    dp.detach_all();
    kafka_stop.store(true, Ordering::Relaxed);
    metrics_stop.store(true, Ordering::Relaxed);
    for (name, t) in threads {
        if t.join().is_err() {
            tracing::error!("{name} thread panicked");
        }
    }
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
            Ok(d) => pipe.detector = d,
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
    if let Err(e) = dp.set_policy(&new.kernel) {
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
    pipe.detector = det;
    pipe.max_hold_ns = new.pipeline.max_hold_ms * 1_000_000;
    pipe.fail_open = new.kernel.fail_open;
    pipe.batch_max = new.pipeline.batch_max;
    pipe.quarantine_after = new.detect.quarantine_after;
    let info = pipe.detector.model().info();
    tracing::info!(model = %info.version, mode = ?new.kernel.mode, "configuration reloaded");
    *current = new;
}
