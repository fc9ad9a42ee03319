//! The RPZ transfer port under hostile clients (issue 22). Before the fix 32 idle connections
//! from anyone allowed took every transfer slot and the accept loop waited for one: every AXFR
//! stalled, and peers outside the ACL were not even refused any more.
//!
//! On loopback every 127/8 address is local, so a client socket bound to 127.0.0.x before
//! `connect` is a distinct peer to the server.

use exfilguard_rpz::server::limits;
use exfilguard_rpz::{serve, RpzMetrics, RpzSettings, Zone};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const DOMAINS: [&str; 3] = ["evil.example", "tunnel.test", "c2.invalid"];

fn peer(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Outside the ACL below.
const OUTSIDER: u8 = 200;

async fn start() -> (SocketAddr, RpzMetrics, Arc<Zone>) {
    let settings = RpzSettings {
        listen: "127.0.0.1:0".into(),
        allow_transfer: vec!["127.0.0.0/27".parse().unwrap()],
        ..RpzSettings::default()
    };
    let zone = Arc::new(Zone::new(settings.clone()).unwrap());
    for d in DOMAINS {
        zone.add(d).unwrap();
    }
    let metrics = RpzMetrics::default();
    let addr = serve(zone.clone(), settings, metrics.clone())
        .await
        .unwrap();
    (addr, metrics, zone)
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    match tokio::time::timeout(Duration::from_secs(1), s.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A whole AXFR from `src`: the owner names between the two SOAs, or why there are none.
async fn axfr(src: Ipv4Addr, to: SocketAddr, zone: &Zone) -> Result<Vec<String>, String> {
    let work = async {
        let mut s = connect_from(src, to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut q = Message::new(0x2222, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(zone.origin().clone(), RecordType::AXFR));
        let q = q.to_vec().unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend(q);
        s.write_all(&framed)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let (mut names, mut soas) = (Vec::new(), 0);
        while soas < 2 {
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut msg)
                .await
                .map_err(|e| format!("read: {e}"))?;
            for r in Message::from_vec(&msg).unwrap().answers {
                match r.record_type() {
                    RecordType::SOA => soas += 1,
                    RecordType::CNAME => names.push(r.name.to_string()),
                    _ => {}
                }
            }
        }
        Ok(names)
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .unwrap_or_else(|_| Err("no whole transfer within 3 s".into()))
}

/// The transfer holds every blocked domain and the names under it.
fn check_transfer(names: &[String], zone: &Zone) {
    for d in DOMAINS {
        let owner = format!("{d}.{}", zone.origin());
        assert!(names.contains(&owner), "{owner} missing from {names:?}");
        assert!(
            names.contains(&format!("*.{owner}")),
            "*.{owner} missing from {names:?}"
        );
    }
}

/// Whether the server still holds the connection (nothing to read, no EOF, no reset).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn open_count(conns: &[TcpStream]) -> usize {
    conns.iter().filter(|s| still_open(s)).count()
}

/// Waits (bounded) until at most `n` of `conns` are open; returns how many are.
async fn settle(conns: &[TcpStream], n: usize, within: Duration) -> usize {
    let t = Instant::now();
    loop {
        let open = open_count(conns);
        if open <= n || t.elapsed() >= within {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections from `src` that send the first byte of a length prefix and nothing more.
async fn idle_flood(src: Ipv4Addr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect_from(src, to)
            .await
            .unwrap_or_else(|e| panic!("flood connect from {src}: {e}"));
        let _ = s.write_all(&[0]).await;
        out.push(s);
    }
    out
}

fn count(fam: &Family<Vec<(&'static str, String)>, Counter>, key: &'static str, v: &str) -> u64 {
    fam.get_or_create(&vec![(key, v.to_string())]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_axfr_works() {
    let (addr, metrics, zone) = start().await;
    for src in [peer(1), peer(2)] {
        let t = Instant::now();
        let names = axfr(src, addr, &zone).await.unwrap();
        check_transfer(&names, &zone);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    assert_eq!(count(&metrics.requests, "kind", "axfr"), 2);
    assert_eq!(count(&metrics.connections, "result", "busy"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_from_one_peer_is_capped_times_out_and_blocks_no_one_else() {
    let (addr, metrics, zone) = start().await;
    let flooder = peer(3);
    let flood_n = limits::MAX_TRANSFERS + 8;
    let t0 = Instant::now();
    let flood = idle_flood(flooder, addr, flood_n).await;
    // the peer keeps its cap, every connection above it is closed at once
    let held = settle(&flood, limits::MAX_PER_PEER, Duration::from_secs(2)).await;
    assert!(
        held <= limits::MAX_PER_PEER,
        "{held} of {flood_n} idle connections from one peer held"
    );
    // another allowed peer transfers at once, during the flood
    let t = Instant::now();
    let names = axfr(peer(2), addr, &zone)
        .await
        .unwrap_or_else(|e| panic!("AXFR during a {flood_n}-connection idle flood: {e}"));
    check_transfer(&names, &zone);
    let axfr_ms = t.elapsed().as_millis();
    assert!(axfr_ms < 1000, "{axfr_ms} ms");
    // the held ones are closed when the request timeout runs out
    let open = settle(
        &flood,
        0,
        (limits::REQUEST_TIMEOUT + Duration::from_millis(1500)).saturating_sub(t0.elapsed()),
    )
    .await;
    let closed_after = t0.elapsed().as_secs_f64();
    assert_eq!(
        open, 0,
        "idle connections still open after {closed_after:.1} s"
    );
    // and the flooder itself can transfer again
    check_transfer(&axfr(flooder, addr, &zone).await.unwrap(), &zone);
    let busy = count(&metrics.connections, "result", "busy");
    let timeout = count(&metrics.connections, "result", "timeout");
    assert_eq!(busy as usize, flood_n - limits::MAX_PER_PEER);
    assert_eq!(timeout as usize, limits::MAX_PER_PEER);
    eprintln!(
        "{flood_n} idle connections from one peer: {held} held, {busy} closed at once; AXFR from \
         another peer {axfr_ms} ms; held ones closed {closed_after:.1} s after the flood began"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_are_refused_at_once_and_a_full_server_rejects_instead_of_queueing() {
    let (addr, metrics, zone) = start().await;
    // peers outside the ACL: closed at once, however many, and they take no slot
    let outsiders = idle_flood(peer(OUTSIDER), addr, 300).await;
    let open = settle(&outsiders, 0, Duration::from_secs(2)).await;
    assert_eq!(
        open, 0,
        "{open} connections from outside the ACL still open"
    );
    assert_eq!(count(&metrics.requests, "kind", "refused"), 300);
    check_transfer(&axfr(peer(2), addr, &zone).await.unwrap(), &zone);
    // the server sees that transfer's connection close before the slots are counted below
    tokio::time::sleep(Duration::from_millis(100)).await;

    // every slot taken by idle peers, 4 each: one more connection is closed, not queued
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for last in 10..10 + (limits::MAX_TRANSFERS / limits::MAX_PER_PEER) as u8 {
        idle.extend(idle_flood(peer(last), addr, limits::MAX_PER_PEER).await);
    }
    assert_eq!(idle.len(), limits::MAX_TRANSFERS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open_count(&idle), limits::MAX_TRANSFERS);
    let t = Instant::now();
    let full = axfr(peer(2), addr, &zone).await;
    assert!(full.is_err(), "a transfer past the global cap: {full:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "rejected after {:?}: it waited",
        t.elapsed()
    );
    // while full, outsiders are still refused at once (the accept loop does not wait)
    let late = idle_flood(peer(OUTSIDER), addr, 10).await;
    assert_eq!(settle(&late, 0, Duration::from_secs(1)).await, 0);
    assert_eq!(count(&metrics.requests, "kind", "refused"), 310);
    // the slots come back after the request timeout
    let open = settle(
        &idle,
        0,
        (limits::REQUEST_TIMEOUT + Duration::from_millis(1500)).saturating_sub(t0.elapsed()),
    )
    .await;
    assert_eq!(open, 0);
    check_transfer(&axfr(peer(2), addr, &zone).await.unwrap(), &zone);
}
