//! Issue 22: clients of `exfilguard resolve` who try to turn the blocklist against its owners.
//! Each attack has a benign control and fails on the code before the conviction policy
//! (exfilguard-convict): one tunnel-looking query used to block its whole registered domain
//! for every client, popular or not; any opcode but QUERY was relayed unjudged; the conviction
//! table and the event log had no bound. The upstream is a small recording DNS server on
//! loopback, so the test sees exactly what the front forwarded. Needs no root.

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Every message the upstream received: (opcode, question name).
type Seen = Arc<Mutex<Vec<(u8, String)>>>;

/// A recording upstream: answers every query with `A 10.9.9.9` (NODATA for other types).
struct Upstream {
    addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                let op = (buf[2] >> 3) & 0x0f;
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    s2.lock().unwrap().push((op, String::new()));
                    continue;
                };
                let name = q
                    .queries
                    .first()
                    .map(|q| q.name().to_ascii().to_lowercase())
                    .unwrap_or_default();
                s2.lock().unwrap().push((op, name));
                let mut a = Message::response(q.metadata.id, q.metadata.op_code);
                a.metadata.recursion_available = true;
                a.add_queries(q.queries.iter().cloned());
                if let Some(qq) = q.queries.first() {
                    if qq.query_type() == RecordType::A {
                        a.add_answer(Record::from_rdata(
                            qq.name().clone(),
                            60,
                            RData::A(A(Ipv4Addr::new(10, 9, 9, 9))),
                        ));
                    }
                }
                let _ = sock.send_to(&a.to_vec().unwrap(), peer);
            }
        });
        Self { addr, seen, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Front {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    events: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    /// `exfilguard resolve` on loopback in front of `up`, defaults plus `extra` (TOML).
    fn start(up: &Upstream, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, mport) = (free_port(), free_port());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let events = dir.path().join("events.jsonl");
        let cfg = dir.path().join("front.toml");
        std::fs::write(
            &cfg,
            format!(
                "[events.file]\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n\
                 [resolve]\nlisten = [\"{addr}\"]\nupstreams = [\"{}\"]\nworkers = 2\n{extra}",
                events.display(),
                up.addr
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
            .args(["resolve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("front.log")).unwrap())
            .spawn()
            .expect("starting exfilguard resolve");
        let f = Front {
            child,
            addr,
            metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
            events,
            _dir: dir,
        };
        let t = Instant::now();
        while ask(&f, "127.0.0.1", "ready.ok.example", RecordType::A).is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "exfilguard resolve did not start: {}",
                std::fs::read_to_string(f._dir.path().join("front.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        f
    }

    fn metric(&self, series: &str) -> f64 {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        read_events(&self.events)
    }
}

fn read_events(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One UDP query from source address `from` (any 127/8 address is local); the answer's rcode
/// and A records, None when unanswered.
fn ask(f: &Front, from: &str, name: &str, t: RecordType) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    s.send_to(&m.to_vec().unwrap(), f.addr).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    let a = Message::from_vec(&buf[..n]).unwrap();
    let ips = a
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    Some((a.metadata.response_code, ips))
}

fn tunnel(tag: &str, zone: &str) -> String {
    format!("mfzwizltoq2dknbvgy3tqojqgezdgnbv{tag}.nbswy3dpeb3w64tmmq.{zone}")
}

#[allow(non_snake_case)]
fn OK() -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    Some((ResponseCode::NoError, vec![Ipv4Addr::new(10, 9, 9, 9)]))
}

fn refused(r: Option<(ResponseCode, Vec<Ipv4Addr>)>) -> bool {
    matches!(r, Some((ResponseCode::Refused, _)))
}

#[test]
fn one_client_cannot_block_a_popular_domain_or_other_clients() {
    let up = Upstream::start();
    let f = Front::start(&up, "[behaviour]\nenabled = false\n");
    let (a, b, c) = ("127.0.0.1", "127.0.0.2", "127.0.0.3");

    // the attack: a tunnel-looking TXT query under google.com
    assert!(refused(ask(
        &f,
        a,
        &tunnel("a", "www.google.com"),
        RecordType::TXT
    )));
    assert_eq!(
        ask(&f, b, "www.google.com", RecordType::A),
        OK(),
        "another client lost google.com"
    );
    assert_eq!(
        ask(&f, a, "www.google.com", RecordType::A),
        OK(),
        "a popular domain is never blocked beyond the name"
    );

    // an unpopular zone: the sender is blocked from all of it, nobody else
    assert!(refused(ask(
        &f,
        a,
        &tunnel("b", "victim.example"),
        RecordType::TXT
    )));
    assert!(
        refused(ask(&f, a, "www.victim.example", RecordType::A)),
        "the sender keeps its block"
    );
    assert_eq!(
        ask(&f, b, "www.victim.example", RecordType::A),
        OK(),
        "one client blocked the zone for another"
    );
    assert_eq!(f.metric("exfilguard_resolve_convicted_domains"), 0.0);

    // a second client's evidence: everyone, as the operator's domain_clients = 2 says
    assert!(refused(ask(
        &f,
        b,
        &tunnel("c", "victim.example"),
        RecordType::TXT
    )));
    assert!(
        refused(ask(&f, c, "www.victim.example", RecordType::A)),
        "two clients' evidence did not block the zone"
    );
    let t = Instant::now();
    while f.metric("exfilguard_resolve_convicted_domains") != 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "gauge never showed the zone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // two clients' evidence under a popular domain: still open
    assert!(refused(ask(
        &f,
        b,
        &tunnel("d", "www.google.com"),
        RecordType::TXT
    )));
    assert_eq!(ask(&f, c, "www.google.com", RecordType::A), OK());

    // every block says what it rests on
    std::thread::sleep(Duration::from_millis(500));
    let reasons: Vec<String> = f.events().iter().map(|e| e.to_string()).collect();
    let all = reasons.join("\n");
    assert!(
        all.contains("blocks victim.example for client") && all.contains("1 of the 2"),
        "{all}"
    );
    assert!(all.contains("2 distinct clients"), "{all}");
    assert!(all.contains("google.com is a popular domain"), "{all}");
}

/// Every opcode but QUERY gets NOTIMP from the front and never reaches the upstream (the old
/// front relayed them unjudged, UPDATE from its own address past the upstream's ACLs).
#[test]
fn other_opcodes_are_refused_and_never_forwarded() {
    let up = Upstream::start();
    let f = Front::start(&up, "[behaviour]\nenabled = false\n");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut answered = Vec::new();
    for op in (1u8..16).filter(|&o| o != 0) {
        // raw header: the opcode in bits 11..14, one question; a tunnel name under the opcode's zone
        let mut q = vec![0x42, op, op << 3, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let name = tunnel(&format!("op{op}"), "c2.example");
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend(l.as_bytes());
        }
        q.extend([0, 0, 16, 0, 1]);
        sock.send_to(&q, f.addr).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .expect("no answer to a non-QUERY opcode");
        assert_eq!(&buf[..2], &[0x42, op], "opcode {op}: id");
        assert_eq!((buf[2] >> 3) & 0x0f, op, "opcode {op}: echoed");
        assert_eq!(buf[3] & 0x0f, 4, "opcode {op}: NOTIMP expected");
        answered.push(op);
        assert!(n >= 12);
    }
    assert_eq!(answered.len(), 15);
    // benign control: a plain QUERY is forwarded and answered
    assert_eq!(ask(&f, "127.0.0.1", "www.ok.example", RecordType::A), OK());
    std::thread::sleep(Duration::from_millis(200));
    let seen = up.seen.lock().unwrap().clone();
    let leaked: Vec<_> = seen.iter().filter(|(op, _)| *op != 0).collect();
    assert!(
        leaked.is_empty(),
        "non-QUERY messages reached the upstream: {leaked:?}"
    );
    assert!(seen.iter().any(|(_, n)| n.starts_with("www.ok.example")));
    assert!(!seen.iter().any(|(_, n)| n.contains("c2.example")));
    drop(f);

    // the operator relays NOTIFY (resolve.forward_opcodes); UPDATE stays refused
    let f = Front::start(
        &up,
        "forward_opcodes = [\"notify\"]\n[behaviour]\nenabled = false\n",
    );
    let raw = |op: u8, id: u8| {
        let mut q = vec![0x43, id, op << 3, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["zone", "ok", "example"] {
            q.push(l.len() as u8);
            q.extend(l.as_bytes());
        }
        q.extend([0, 0, 6, 0, 1]);
        q
    };
    for (op, rcode) in [(4u8, 0u8), (5, 4)] {
        sock.send_to(&raw(op, op), f.addr).unwrap();
        let mut buf = [0u8; 512];
        sock.recv(&mut buf).expect("answer");
        assert_eq!(buf[3] & 0x0f, rcode, "opcode {op}");
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(op, _)| *op == 4), "NOTIFY not relayed");
    assert!(!seen.iter().any(|(op, _)| *op == 5), "UPDATE relayed");
}

/// 300 000 tunnel-looking names under 300 000 domains from a few clients: the conviction
/// tables stay within their bounds (evictions counted), the front's memory stays bounded, and
/// the event log is not overwritten: the records are rate limited per client and per
/// (client, domain), with what was held back counted. The old front kept every conviction
/// (RSS 74 → 216 MB) and rotated its whole event log away in 16 s.
#[test]
fn a_conviction_flood_stays_bounded_and_keeps_the_audit_trail() {
    let up = Upstream::start();
    let f = Front::start(
        &up,
        "rate_limit_qps = 0\n[behaviour]\nenabled = false\n[convict]\nmax_zones = 20000\nmax_client_blocks = 20000\n",
    );
    // the first records: a benign control that must survive the flood in the log
    assert!(refused(ask(
        &f,
        "127.0.0.9",
        &tunnel("first", "marker.example"),
        RecordType::TXT
    )));
    let rss0 = f.rss_kib();
    let t0 = Instant::now();
    // two halves: the second must not grow memory (every table is full by then)
    let (s1, a1) = flood(&f, 0, 150_000);
    let rss_half = f.rss_kib();
    let (s2, a2) = flood(&f, 1, 150_000);
    let (sent, answered) = (s1 + s2, a1 + a2);
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let rss1 = f.rss_kib();
    let evicted = f.metric("exfilguard_convictions_evicted_total");
    let suppressed = f.metric("exfilguard_events_suppressed_total");
    let events = f.events();
    eprintln!(
        "conviction flood: {sent} queries sent, {answered} answered in {secs:.1} s; RSS {} -> {} (150 k) -> {} MiB (300 k); \
         {evicted} table evictions; {} event records written, {suppressed} held back",
        rss0 / 1024,
        rss_half / 1024,
        rss1 / 1024,
        events.len()
    );
    assert!(sent >= 270_000, "the flood did not run: {sent}");
    assert!(
        answered >= sent / 2,
        "the front stopped answering: {answered} of {sent}"
    );
    assert!(evicted > 0.0, "the tables did not reach their bound");
    // the verdict cache (resolve.cache_entries), the conviction tables and the throttle's
    // keys are full after the first half: the second half adds nothing that stays
    assert!(
        rss1 < rss_half + 16 * 1024,
        "RSS still growing: {rss_half} -> {rss1} KiB"
    );
    assert!(rss1 < rss0 + 160 * 1024, "RSS grew {rss0} -> {rss1} KiB");
    assert!(suppressed > 0.0, "no event was held back");
    assert!(
        events.len() < 30_000,
        "the flood wrote {} records: the audit trail would rotate away",
        events.len()
    );
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("marker.example")),
        "the record before the flood is gone"
    );
}

/// `n` tunnel-looking TXT queries, each under its own domain, from four client addresses with
/// 32 in flight each; (sent, answered).
fn flood(f: &Front, round: usize, n: usize) -> (usize, usize) {
    let clients = 4usize;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = f.addr;
            std::thread::spawn(move || {
                let s = UdpSocket::bind((format!("127.0.0.{}", 20 + c).as_str(), 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let (mut sent, mut answered) = (0usize, 0usize);
                let per = n / clients;
                let deadline = Instant::now() + Duration::from_secs(120);
                while sent < per && Instant::now() < deadline {
                    for _ in 0..32.min(per - sent) {
                        let mut m = Message::query();
                        m.metadata.id = sent as u16;
                        let tag = format!("{round}r{c}x{sent}");
                        let name = tunnel(&tag, &format!("d{tag}.example"));
                        m.add_query(Query::query(
                            Name::from_ascii(&name).unwrap(),
                            RecordType::TXT,
                        ));
                        s.send_to(&m.to_vec().unwrap(), addr).unwrap();
                        sent += 1;
                    }
                    for _ in 0..32 {
                        if s.recv(&mut buf).is_err() {
                            break;
                        }
                        answered += 1;
                    }
                }
                (sent, answered)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}
