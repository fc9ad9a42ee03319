//! Prometheus metrics (official `prometheus-client`) served by axum on `/metrics`, with
//! `/healthz` (process alive) and `/readyz` (data plane attached and model loaded). Labels are
//! bounded: hook, interface, decision, class, map, sink — never a domain or a pid.

use exfilguard_dataplane::Maps;
use exfilguard_kafka::sender::SenderStats;
use exfilguard_kafka::spool::Spool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, String)>;

/// Metrics the scrape-time collector adds (names as exposed, without `_total`).
pub const LIVE_METRICS: [&str; 6] = [
    "exfilguard_kernel_events",
    "exfilguard_map_entries",
    "exfilguard_kafka_delivered",
    "exfilguard_kafka_errors",
    "exfilguard_spool_pending_bytes",
    "exfilguard_spool_dropped",
];

/// What the decision loop and the sinks update.
#[derive(Clone)]
pub struct Metrics {
    pub decisions: Family<Labels, Counter>,
    pub verdicts: Family<Labels, Counter>,
    pub inference_seconds: Histogram,
    pub hold_release_seconds: Histogram,
    pub events_written: Family<Labels, Counter>,
    pub events_dropped: Counter,
    pub sink_queue_depth: Gauge,
    pub fleet_updates: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    /// Behaviour alarms; `kind`: info_rate, beacon, dga_bot.
    pub behaviour_alarms: Family<Labels, Counter>,
    pub behaviour_pairs: Gauge,
    /// `exfilguard_model_info{version, sha256}` = 1 for the model in use (swapped on reload).
    model: Family<Labels, Gauge>,
    pub ready: Arc<AtomicBool>,
}

/// Entries in (blocklist, allow cache, quarantine).
type Occupancy = (usize, usize, usize);

/// Read at scrape time: kernel counters, map occupancy, Kafka delivery and spool state.
#[derive(Default)]
pub struct Live {
    pub maps: Option<Maps>,
    pub senders: Vec<(&'static str, Arc<SenderStats>, Arc<Spool>)>,
    pub occupancy: Mutex<Option<(Instant, Occupancy)>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// Which hook a kernel counter belongs to.
fn hook_of(stat: &str) -> &'static str {
    if stat.starts_with("xdp_") {
        "xdp"
    } else if stat.starts_with("sock_") {
        "cgroup"
    } else if stat == "nf_packets" {
        "netfilter"
    } else {
        "egress"
    }
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(maps) = &self.maps {
            if let Ok(stats) = maps.stats() {
                let mut m = enc.encode_descriptor(
                    "exfilguard_kernel_events",
                    "Per-CPU counters of the eBPF programs, summed (hook: egress = tc/tcx or netfilter)",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (name, v) in stats {
                    let labels: Labels =
                        vec![("hook", hook_of(name).into()), ("event", name.into())];
                    ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
            // walking the maps costs a syscall per entry: at most every 10 s
            let occ = {
                let mut g = self.occupancy.lock().expect("lock");
                match *g {
                    Some((t, o)) if t.elapsed() < Duration::from_secs(10) => o,
                    _ => {
                        let o = maps.occupancy();
                        *g = Some((Instant::now(), o));
                        o
                    }
                }
            };
            let mut m = enc.encode_descriptor(
                "exfilguard_map_entries",
                "Entries in the pinned kernel maps",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (map, n) in [
                ("blocklist", occ.0),
                ("allow", occ.1),
                ("quarantine", occ.2),
            ] {
                let labels: Labels = vec![("map", map.into())];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        for (metric, help, kind) in [
            (
                "exfilguard_kafka_delivered",
                "Records the broker acknowledged",
                0,
            ),
            (
                "exfilguard_kafka_errors",
                "Failed delivery rounds (records stay spooled)",
                1,
            ),
            (
                "exfilguard_spool_pending_bytes",
                "Bytes spooled and not yet acknowledged",
                2,
            ),
            (
                "exfilguard_spool_dropped",
                "Records dropped because the spool hit its cap",
                3,
            ),
        ] {
            if self.senders.is_empty() {
                break;
            }
            let t = if kind == 2 {
                prometheus_client::metrics::MetricType::Gauge
            } else {
                prometheus_client::metrics::MetricType::Counter
            };
            let mut m = enc.encode_descriptor(metric, help, None, t)?;
            for (topic, stats, spool) in &self.senders {
                let labels: Labels = vec![("stream", (*topic).into())];
                let fam = m.encode_family(&labels)?;
                match kind {
                    0 => ConstCounter::new(stats.delivered.load(Ordering::Relaxed)).encode(fam)?,
                    1 => ConstCounter::new(stats.errors.load(Ordering::Relaxed)).encode(fam)?,
                    2 => ConstGauge::new(spool.pending_bytes() as i64).encode(fam)?,
                    _ => ConstCounter::new(spool.dropped()).encode(fam)?,
                }
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Points `exfilguard_model_info` at the model now in use (start and reload).
    pub fn set_model(&self, version: &str, sha256: &str) {
        self.model.clear();
        self.model
            .get_or_create(&vec![
                ("version", version.to_string()),
                ("sha256", sha256.to_string()),
            ])
            .set(1);
    }

    pub fn new(registry: &mut Registry, model_version: &str, model_sha: &str) -> Self {
        let m = Metrics {
            decisions: Family::default(),
            verdicts: Family::default(),
            inference_seconds: Histogram::new(exponential_buckets(10e-6, 2.0, 16)),
            hold_release_seconds: Histogram::new(exponential_buckets(10e-6, 2.0, 18)),
            events_written: Family::default(),
            events_dropped: Counter::default(),
            sink_queue_depth: Gauge::default(),
            fleet_updates: Family::default(),
            errors: Family::default(),
            behaviour_alarms: Family::default(),
            behaviour_pairs: Gauge::default(),
            model: Family::default(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        registry.register(
            "exfilguard_decisions",
            "Agent decisions on held, blocked and reported DNS messages, by interface",
            m.decisions.clone(),
        );
        registry.register(
            "exfilguard_verdicts",
            "Brain verdicts by class",
            m.verdicts.clone(),
        );
        registry.register(
            "exfilguard_inference_seconds",
            "Model call duration per batch",
            m.inference_seconds.clone(),
        );
        registry.register(
            "exfilguard_hold_release_seconds",
            "Kernel hold to agent decision (release or conviction)",
            m.hold_release_seconds.clone(),
        );
        registry.register(
            "exfilguard_events_written",
            "Events written per sink",
            m.events_written.clone(),
        );
        registry.register(
            "exfilguard_events_dropped",
            "Events dropped because the sink queue was full",
            m.events_dropped.clone(),
        );
        registry.register(
            "exfilguard_sink_queue_depth",
            "Events waiting for the sinks",
            m.sink_queue_depth.clone(),
        );
        registry.register(
            "exfilguard_fleet_updates",
            "Fleet blocklist entries applied to the kernel (op: block, unblock, skipped)",
            m.fleet_updates.clone(),
        );
        registry.register("exfilguard_errors", "Errors by component", m.errors.clone());
        registry.register(
            "exfilguard_behaviour_alarms",
            "Behaviour alarms by kind (info_rate, beacon, dga_bot)",
            m.behaviour_alarms.clone(),
        );
        registry.register(
            "exfilguard_behaviour_pairs",
            "(client, registered domain) pairs tracked by the behaviour analytics",
            m.behaviour_pairs.clone(),
        );
        registry.register(
            "exfilguard_model_info",
            "The model in use (1), by version and sha256",
            m.model.clone(),
        );
        m.set_model(model_version, model_sha);
        registry.register(
            "exfilguard_build",
            "The running exfilguard",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        m
    }

    pub fn behaviour_alarm(&self, kind: &'static str) {
        self.behaviour_alarms
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn error(&self, component: &'static str) {
        self.errors
            .get_or_create(&vec![("component", component.to_string())])
            .inc();
    }
}

/// Serves the registry until `stop`. Runs its own small runtime on the calling thread.
pub fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let reg = registry.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let reg = reg.clone();
                    async move {
                        let mut body = String::new();
                        let r = prometheus_client::encoding::text::encode(
                            &mut body,
                            &reg.lock().expect("registry lock"),
                        );
                        match r {
                            Ok(()) => (
                                StatusCode::OK,
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                body,
                            ),
                            Err(_) => (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                [(header::CONTENT_TYPE, "text/plain")],
                                "encoding failed".into(),
                            ),
                        }
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.load(Ordering::Relaxed);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                        }
                    }
                }),
            );
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_model_replaces_the_model_info_series() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry, "mlp-1", "aaaa");
        m.set_model("mlp-2", "bbbb");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("exfilguard_model_info{"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(
            series[0].contains("version=\"mlp-2\"") && series[0].contains("sha256=\"bbbb\""),
            "{}",
            series[0]
        );
        assert!(series[0].ends_with(" 1"), "{}", series[0]);
    }
}
