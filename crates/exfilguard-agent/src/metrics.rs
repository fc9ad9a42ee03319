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
    /// Records held back by the per-client / per-(client, domain) rate limit.
    pub events_suppressed: Counter,
    pub sink_queue_depth: Gauge,
    pub fleet_updates: Family<Labels, Counter>,
    pub errors: Family<Labels, Counter>,
    /// Behaviour alarms; `kind`: info_rate, beacon, dga_bot.
    pub behaviour_alarms: Family<Labels, Counter>,
    pub behaviour_pairs: Gauge,
    /// Encrypted DNS (DoT, DoQ, DoH) to resolvers not sanctioned; `decision`: blocked
    /// (enforce) or reported (monitor), `reason`: dot_port, doh_endpoint.
    pub encrypted_dns: Family<Labels, Counter>,
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
    } else if stat.starts_with("sock_") || stat.starts_with("encdns_") {
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
            events_suppressed: Counter::default(),
            sink_queue_depth: Gauge::default(),
            fleet_updates: Family::default(),
            errors: Family::default(),
            behaviour_alarms: Family::default(),
            behaviour_pairs: Gauge::default(),
            encrypted_dns: Family::default(),
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
            "exfilguard_events_suppressed",
            "Event records held back by the per-client and per-(client, domain) rate limit (the next record of the pair carries their count)",
            m.events_suppressed.clone(),
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
            "exfilguard_encrypted_dns",
            "Encrypted DNS (DoT, DoQ, DoH) to resolvers not sanctioned, by decision (blocked, reported) and reason (dot_port, doh_endpoint)",
            m.encrypted_dns.clone(),
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

/// Bounds of the HTTP endpoint. It answers whoever can reach `metrics.listen`, so a client that
/// opens connections and never finishes a request must not take the process's fds or the
/// scraper's turn (docs/threat-model.md, "Hostile clients of the metrics and RPZ endpoints").
pub mod limits {
    use std::time::Duration;
    /// Connections served at once; one over the cap is closed at once, not queued.
    pub const MAX_CONNECTIONS: usize = 64;
    /// Per client address, so one host cannot take the whole cap from the scraper.
    pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
    /// From accept (or the end of the previous response on a kept-alive connection) to the
    /// end of the request head: the slow-loris and the idle keep-alive bound.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    /// A connection's whole life, every request and response on it (a client that sends a
    /// request and never reads the answer); then it is asked to close, and cut after `GRACE`.
    pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
    pub const GRACE: Duration = Duration::from_secs(2);
    /// Request heads above this get 431: bounds the memory of a connection.
    pub const MAX_BUF: usize = 16 * 1024;
    /// Longest pause of the accept loop after an accept error (EMFILE, ENFILE, ENOBUFS).
    pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
}

/// Connections held, in total and per client address (IPv4-mapped IPv6 counted as IPv4).
#[derive(Default)]
struct Slots {
    held: Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// One held connection; gives its place back when the connection task ends.
struct Slot {
    slots: Arc<Slots>,
    ip: std::net::IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let mut g = self.held.lock().expect("slots lock");
        let (total, peers) = &mut *g;
        let mine = peers.entry(ip).or_default();
        if *total >= limits::MAX_CONNECTIONS || *mine >= limits::MAX_CONNECTIONS_PER_PEER {
            if *mine == 0 {
                peers.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }

    fn held(&self) -> usize {
        self.held.lock().expect("slots lock").0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.held.lock().expect("slots lock");
        let (total, peers) = &mut *g;
        *total -= 1;
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// The connection's socket, noting whether the last thing that happened on it was a response
/// written (true) or request bytes read (false).
struct Watched {
    inner: tokio::net::TcpStream,
    answered: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.answered.store(false, Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.answered.store(true, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.answered.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves the registry until `stop`. Runs its own small runtime on the calling thread.
///
/// hyper's HTTP/1 connection builder rather than `axum::serve`: the latter sets no timer, so a
/// connection that never completes its request head is kept for ever (1 030 of them took every
/// fd of the agent). Bounds: [`limits`]. Connections are counted in
/// `exfilguard_metrics_connections_total{result}`: `accepted`, `rejected` (over a cap, closed
/// at once), `timed_out` (header timeout or connection deadline), `accept_error`.
pub fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let conns: Family<Labels, Counter> = Family::default();
    registry.lock().expect("registry lock").register(
        "exfilguard_metrics_connections",
        "Connections to the metrics endpoint by result (accepted, rejected over a cap, timed_out, accept_error)",
        conns.clone(),
    );
    let count = move |result: &'static str| {
        conns
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    };
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
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits::HEADER_TIMEOUT)
            .max_buf_size(limits::MAX_BUF);
        let slots = Arc::new(Slots::default());
        // tells every connection to finish its response and close
        let (closing, _) = tokio::sync::watch::channel(false);
        let stop = &stop;
        let stopped = move || async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                _ = stopped() => break,
                r = listener.accept() => r,
            };
            let (sock, peer) = match accepted {
                Ok(a) => a,
                // the peer gave up while queued: nothing to back off from
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends leave the connection queued: retrying at once spins
                    if backoff.is_zero() {
                        tracing::warn!("metrics endpoint: accept failed ({e}); retrying with back-off up to {:?} until it succeeds", limits::MAX_ACCEPT_BACKOFF);
                    }
                    count("accept_error");
                    backoff = (backoff * 2).clamp(
                        Duration::from_millis(10),
                        limits::MAX_ACCEPT_BACKOFF,
                    );
                    tokio::select! {
                        _ = stopped() => break,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            if !backoff.is_zero() {
                tracing::info!("metrics endpoint: accepting again");
                backoff = Duration::ZERO;
            }
            let Some(slot) = slots.take(peer.ip()) else {
                count("rejected");
                drop(sock);
                continue;
            };
            count("accepted");
            let answered = Arc::new(AtomicBool::new(false));
            let io = TokioIo::new(Watched {
                inner: sock,
                answered: answered.clone(),
            });
            let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
            let mut closing = closing.subscribe();
            let count = count.clone();
            tokio::spawn(async move {
                let _slot = slot;
                tokio::pin!(conn);
                let cut = tokio::select! {
                    r = conn.as_mut() => {
                        // a header timeout right after a response is an idle keep-alive
                        // connection closed, not a client that never finished its request
                        if r.is_err_and(|e| e.is_timeout()) && !answered.load(Ordering::Relaxed) {
                            count("timed_out");
                        }
                        false
                    }
                    _ = tokio::time::sleep(limits::CONNECTION_DEADLINE) => {
                        count("timed_out");
                        true
                    }
                    _ = closing.wait_for(|c| *c) => true,
                };
                if cut {
                    // finishes a response in flight; a client that does not read it is cut
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits::GRACE, conn).await;
                }
            });
        }
        // stopping: open connections get `GRACE` to finish, then the runtime drops them
        closing.send_replace(true);
        let end = tokio::time::Instant::now() + limits::GRACE + Duration::from_millis(100);
        while slots.held() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
