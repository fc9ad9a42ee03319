//! What the agent and the resolver front share: the event sinks (rotating OCSF JSONL, stdout,
//! Kafka through the on-disk spool), the conviction publisher, the fleet blocklist follower and
//! the Prometheus endpoint. Enforcement never waits on any of them: records go through bounded
//! queues with `try_send`.

use crate::config::Config;
use crate::metrics;
use crate::pipeline::Conviction;
use anyhow::{Context, Result};
use exfilguard_events::jsonl::JsonlFile;
use exfilguard_events::Detection;
use exfilguard_kafka::fleet::{BlockEntry, FleetUpdate};
use exfilguard_kafka::sender::{Sender, SenderStats};
use exfilguard_kafka::spool::Spool;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Applies one fleet blocklist update (`None`: a periodic tick for expiry sweeps).
pub type FleetApply = Box<dyn FnMut(Option<FleetUpdate>) + Send>;

/// The running background services; [`Services::shutdown`] drains and joins them.
pub struct Services {
    /// Detections for the sinks (bounded: `pipeline.sink_queue`).
    pub sink: SyncSender<Box<Detection>>,
    /// Convictions to publish on the fleet topic, when Kafka and `publish_convictions` are on.
    pub convictions: Option<SyncSender<Conviction>>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    kafka_stop: Arc<AtomicBool>,
    metrics_stop: Arc<AtomicBool>,
}

impl Services {
    /// Starts the sinks, the Kafka threads (when `kafka.brokers` is set) and the metrics
    /// endpoint (binding `metrics.listen` now, so a taken port is an error at start).
    pub fn start(
        cfg: &Config,
        host: &str,
        metrics: &metrics::Metrics,
        mut registry: prometheus_client::registry::Registry,
        live: metrics::Live,
        fleet: Option<FleetApply>,
    ) -> Result<Self> {
        let cfg = cfg.clone();
        let host = host.to_string();
        let metrics = metrics.clone();
        let mut live = live;
        let mut threads: Vec<(&str, JoinHandle<()>)> = Vec::new();

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
                let h = host.clone();
                let ttl = (cfg.kafka.conviction_ttl_secs, cfg.behaviour.block_secs);
                threads.push((
                    "convictions",
                    std::thread::spawn(move || conviction_loop(rx, bl_spool, h, ttl)),
                ));
            }
            if let Some(mut apply) = fleet {
                let (k, id, st) = (cfg.kafka.clone(), client_id.clone(), kafka_stop.clone());
                threads.push((
                    "fleet",
                    std::thread::spawn(move || {
                        if let Err(e) = exfilguard_kafka::fleet::follow(&k, &id, &st, &mut apply) {
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

        Ok(Self {
            sink: sink_tx,
            convictions: convictions_tx,
            threads,
            kafka_stop,
            metrics_stop,
        })
    }

    /// Closes the queues (callers must have dropped their clones), lets the sinks finish and
    /// the spool senders try for a few seconds, then stops the endpoint.
    pub fn shutdown(self) {
        let Self {
            sink,
            convictions,
            threads,
            kafka_stop,
            metrics_stop,
        } = self;
        drop(sink);
        drop(convictions);
        let (sinks, rest): (Vec<_>, Vec<_>) = threads
            .into_iter()
            .partition(|(n, _)| *n == "sinks" || *n == "convictions");
        for (name, t) in sinks {
            if t.join().is_err() {
                tracing::error!("{name} thread panicked");
            }
        }
        kafka_stop.store(true, Ordering::Relaxed);
        metrics_stop.store(true, Ordering::Relaxed);
        for (name, t) in rest {
            if t.join().is_err() {
                tracing::error!("{name} thread panicked");
            }
        }
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

/// Turns this host's convictions into fleet entries on the blocklist spool. `ttl` is (model
/// convictions, behaviour blocks): a behaviour block lasts as long on the fleet as it does here.
fn conviction_loop(rx: Receiver<Conviction>, spool: Arc<Spool>, host: String, ttl: (u64, u64)) {
    while let Ok(c) = rx.recv() {
        let now = exfilguard_kafka::fleet::now_ms();
        let ttl_secs = if c.verdict.source == exfilguard_detect::Source::Behaviour {
            ttl.1
        } else {
            ttl.0
        };
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
            reason: format!(
                "{}: {}; evidence: {}",
                c.name,
                c.verdict.reasons.join("; "),
                c.evidence
            ),
        };
        let v = serde_json::to_string(&entry).expect("entry serialises");
        if let Err(e) = spool.append([(c.domain.as_str(), Some(v.as_str()))]) {
            tracing::error!("blocklist spool: {e}");
        }
    }
}
