//! The metrics endpoint under a slow-loris flood (issue 22): thousands of connections that send
//! part of a request line and then idle. Before the fix `axum::serve` kept every one of them
//! (no header timeout, no cap) until the process ran out of fds and stopped answering anyone.

use exfilguard_agent::metrics::{self, limits, Metrics};
use prometheus_client::registry::Registry;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections of the flood.
const FLOOD: usize = 2000;

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg, "test-model", "0000");
        m.ready.store(true, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, st) = (m.ready.clone(), stop.clone());
        let reg = Arc::new(Mutex::new(reg));
        let thread = Some(std::thread::spawn(move || {
            metrics::serve(listener, reg, ready, st)
        }));
        Server { addr, stop, thread }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // stopping must not wait for the clients: bounded by the grace period
            let t0 = Instant::now();
            let r = t.join().expect("metrics thread panicked");
            if !std::thread::panicking() {
                r.expect("metrics server failed");
                assert!(
                    t0.elapsed() < limits::GRACE + Duration::from_secs(2),
                    "stopping took {:?}",
                    t0.elapsed()
                );
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP connection from `src` (any 127/8 address is local on Linux).
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    match tokio::time::timeout(Duration::from_secs(1), s.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One GET on a fresh connection from `src`; the whole response, or why there is none.
async fn get(src: Ipv4Addr, to: SocketAddr, path: &str, wait: Duration) -> Result<String, String> {
    let work = async {
        let mut s = connect_from(src, to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: exfilguard\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(wait, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {wait:?}")))
}

/// Whether the server still holds the connection open (nothing to read, no EOF, no reset).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn open_count(flood: &[TcpStream]) -> usize {
    flood.iter().filter(|s| still_open(s)).count()
}

/// `exfilguard_metrics_connections_total{result="…"}` in a scrape.
fn connections(text: &str, result: &str) -> u64 {
    let key = format!("exfilguard_metrics_connections_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The flood and the server share this process's fds: leave room for about 600 more, so the
/// old endpoint (one fd per idle connection, never closed) runs out as the agent did at 1 030,
/// while a bounded one stays far below.
fn limit_fds() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let want = (FLOOD + 600) as libc::rlim_t;
        lim.rlim_cur = want.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let flood = (lim.rlim_cur as usize).saturating_sub(600).min(FLOOD);
    assert!(
        flood >= 500,
        "RLIMIT_NOFILE hard limit {} too low for the flood",
        lim.rlim_max
    );
    flood
}

#[test]
fn slowloris_flood_neither_stalls_the_endpoint_nor_keeps_its_connections() {
    let flood_n = limit_fds();
    let server = Server::start();
    let rt = runtime();
    rt.block_on(async {
        let attacker = Ipv4Addr::new(127, 0, 0, 1);
        let scraper = Ipv4Addr::new(127, 0, 0, 2);
        // the flood: part of a request line, then nothing (bounded in count and time)
        let t0 = Instant::now();
        let mut flood = Vec::with_capacity(flood_n);
        let mut failures = 0;
        while flood.len() < flood_n && failures < 3 && t0.elapsed() < Duration::from_secs(20) {
            match connect_from(attacker, server.addr).await {
                Ok(mut s) => {
                    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ex").await.is_ok() {
                        flood.push(s);
                    }
                    failures = 0;
                }
                Err(_) => failures += 1,
            }
        }
        let flood_secs = t0.elapsed().as_secs_f64();
        let flood_end = Instant::now();
        assert_eq!(
            flood.len(),
            flood_n,
            "the flood stalled the endpoint: only {} of {flood_n} connections got through in {flood_secs:.1} s",
            flood.len()
        );

        // a scrape from another address answers at once, in the middle of the flood
        let t = Instant::now();
        let text = get(scraper, server.addr, "/metrics", Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("scrape under a {flood_n}-connection flood: {e}"));
        let scrape_ms = t.elapsed().as_millis();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("exfilguard_build_info"), "{text}");

        // the endpoint holds at most its per-peer cap of the flood; it closed the rest at once
        let mut held = open_count(&flood);
        let t = Instant::now();
        while held > limits::MAX_CONNECTIONS_PER_PEER && t.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = open_count(&flood);
        }
        assert!(
            held <= limits::MAX_CONNECTIONS_PER_PEER,
            "{held} of {flood_n} idle partial requests still held after the flood"
        );

        // the ones it held are closed once the header timeout runs out
        let deadline = flood_end + limits::HEADER_TIMEOUT + Duration::from_millis(1500);
        while held > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = open_count(&flood);
        }
        let closed_after = flood_end.elapsed().as_secs_f64();
        assert_eq!(
            held, 0,
            "idle partial requests still open {closed_after:.1} s after the flood"
        );

        // the flooder's own address is served again; the counters saw it all
        let text = get(attacker, server.addr, "/metrics", Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("scrape from the flooding address afterwards: {e}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let rejected = connections(&text, "rejected");
        let timed_out = connections(&text, "timed_out");
        // every flood connection was closed at once or held until the header timeout (on a
        // slow machine a flood longer than the timeout sees a few more held, 8 at a time)
        assert!(
            (rejected + timed_out) as usize >= flood_n,
            "rejected = {rejected}, timed_out = {timed_out}\n{text}"
        );
        assert!(
            timed_out >= 1 && (timed_out as usize) < flood_n / 20,
            "timed_out = {timed_out}"
        );
        eprintln!(
            "{flood_n} partial requests in {flood_secs:.1} s; scrape under the flood {scrape_ms} ms; \
             held {} at most, all closed {closed_after:.1} s after the flood ended; \
             rejected {rejected}, timed out {timed_out}",
            limits::MAX_CONNECTIONS_PER_PEER
        );
    });
}

/// Benign control: scrapes, probes and a kept-alive connection work as before, and closing an
/// idle kept-alive connection is not counted as a timeout.
#[test]
fn normal_scrapes_and_probes_are_served() {
    let server = Server::start();
    let rt = runtime();
    rt.block_on(async {
        let me = Ipv4Addr::new(127, 0, 0, 1);
        for path in ["/metrics", "/healthz", "/readyz"] {
            let t = Instant::now();
            let text = get(me, server.addr, path, Duration::from_secs(3))
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{path}: {:?}",
                t.elapsed()
            );
        }
        // several scrapes on one kept-alive connection, as Prometheus does
        let mut s = connect_from(me, server.addr).await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        for _ in 0..3 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: exfilguard\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            // the answer has a Content-Length: read until the build info line is in
            while !String::from_utf8_lossy(&got).contains("# EOF") {
                let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                    .await
                    .expect("keep-alive scrape answered")
                    .unwrap();
                assert!(n > 0, "closed mid-answer");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        }
        // idle after an answer: closed after the header timeout, as a keep-alive idle timeout
        let t = Instant::now();
        let n = tokio::time::timeout(
            limits::HEADER_TIMEOUT + Duration::from_secs(2),
            s.read(&mut buf),
        )
        .await
        .expect("idle kept-alive connection closed")
        .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(t.elapsed() >= limits::HEADER_TIMEOUT - Duration::from_millis(500));
        let text = get(me, server.addr, "/metrics", Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(connections(&text, "timed_out"), 0, "{text}");
        assert_eq!(connections(&text, "rejected"), 0, "{text}");
        assert!(connections(&text, "accepted") >= 5, "{text}");
    });
}
