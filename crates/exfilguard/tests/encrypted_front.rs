//! Issue 24: `exfilguard resolve` speaks DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484),
//! and judges those queries exactly like UDP and TCP ones. Real clients: `kdig +tls` and
//! `kdig +https` (knot-dnsutils, GnuTLS + nghttp2), `curl --http2` (OpenSSL + nghttp2) and, for
//! pipelining, Python's `ssl`. Each test starts the binary in front of a small recording
//! upstream on loopback with a self-signed development certificate, which the clients verify
//! (name and chain). Hostile clients each have a benign control. No root; loopback only; every
//! loop bounded.

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

/// A tool the test needs: its absence fails the test loudly, never skips it.
fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is not installed: this test needs it (apt-get install knot-dnsutils curl python3)"
    );
}

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

/// Question names the upstream received (lowercase, no trailing dot).
type Seen = Arc<Mutex<Vec<String>>>;

/// A recording upstream on UDP and TCP: `A 10.9.9.9` for A queries, NODATA otherwise; names
/// starting with `slow` are answered after 800 ms.
struct Upstream {
    addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
}

fn upstream_answer(q: &[u8], seen: &Seen) -> Option<Vec<u8>> {
    let q = Message::from_vec(q).ok()?;
    let qq = q.queries.first()?.clone();
    let name = qq.name().to_ascii().to_lowercase();
    let name = name.trim_end_matches('.').to_string();
    seen.lock().unwrap().push(name.clone());
    if name.starts_with("slow") {
        std::thread::sleep(Duration::from_millis(800));
    }
    let mut a = Message::response(q.metadata.id, q.metadata.op_code);
    a.metadata.recursion_available = true;
    a.metadata.recursion_desired = q.metadata.recursion_desired;
    a.add_query(qq.clone());
    if qq.query_type() == RecordType::A {
        a.add_answer(Record::from_rdata(
            qq.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(10, 9, 9, 9))),
        ));
    }
    a.to_vec().ok()
}

impl Upstream {
    fn start() -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (s2, st2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(a) = upstream_answer(&buf[..n], &s2) {
                    let _ = udp.send_to(&a, peer);
                }
            }
        });
        let tcp = std::net::TcpListener::bind(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (s2, st2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let seen = s2.clone();
                std::thread::spawn(move || {
                    s.set_nonblocking(false).ok();
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).is_ok() {
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut q).is_err() {
                            return;
                        }
                        let Some(a) = upstream_answer(&q, &seen) else {
                            return;
                        };
                        let _ = s.write_all(&(a.len() as u16).to_be_bytes());
                        let _ = s.write_all(&a);
                    }
                });
            }
        });
        Self { addr, seen, stop }
    }

    fn saw(&self, part: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|n| n.contains(part))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Front {
    child: Child,
    udp: SocketAddr,
    dot: SocketAddr,
    doh: SocketAddr,
    metrics: SocketAddr,
    cert: PathBuf,
    events: PathBuf,
    dir: tempfile::TempDir,
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

fn config(dir: &Path, up: SocketAddr, ports: [u16; 4], extra: &str) -> String {
    let [port, dot, doh, mport] = ports;
    format!(
        "[events.file]\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n\
         [resolve]\nlisten = [\"127.0.0.1:{port}\"]\nupstreams = [\"{up}\"]\nworkers = 2\n\
         listen_tls = [\"127.0.0.1:{dot}\"]\nlisten_https = [\"127.0.0.1:{doh}\"]\n\
         tls_self_signed = true\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
        dir.join("events.jsonl").display(),
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
    )
}

impl Front {
    /// `exfilguard resolve` on loopback in front of `up` with DoT and DoH listeners and a
    /// self-signed certificate; `extra`: more TOML after `[resolve]`'s keys.
    fn start(up: &Upstream, extra: &str) -> Self {
        Self::start_at(up.addr, extra)
    }

    fn start_at(up: SocketAddr, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let cfg = dir.path().join("front.toml");
        std::fs::write(&cfg, config(dir.path(), up, ports, extra)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
            .args(["resolve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("front.log")).unwrap())
            .spawn()
            .expect("starting exfilguard resolve");
        let at = |p: u16| format!("127.0.0.1:{p}").parse().unwrap();
        let f = Front {
            child,
            udp: at(ports[0]),
            dot: at(ports[1]),
            doh: at(ports[2]),
            metrics: at(ports[3]),
            cert: dir.path().join("cert.pem"),
            events: dir.path().join("events.jsonl"),
            dir,
        };
        let t = Instant::now();
        while TcpStream::connect(f.doh).is_err()
            || ask_udp(&f, "127.0.0.1", "ready.ok.example", RecordType::A).is_none()
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "exfilguard resolve did not start: {}",
                f.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        f
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("front.log")).unwrap_or_default()
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

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

type Answer = Option<(ResponseCode, Vec<Ipv4Addr>)>;

fn parse(a: &[u8]) -> Answer {
    let a = Message::from_vec(a).ok()?;
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

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// One UDP query from source address `from`.
fn ask_udp(f: &Front, from: &str, name: &str, t: RecordType) -> Answer {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.send_to(&query(name, t, rand::random()), f.udp).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    parse(&buf[..n])
}

/// What kdig printed: the rcode of each answer and the A records.
struct Kdig {
    rcodes: Vec<String>,
    ips: Vec<Ipv4Addr>,
    out: String,
}

impl Kdig {
    fn one(&self) -> Answer {
        let rc = match self.rcodes.first()?.as_str() {
            "NOERROR" => ResponseCode::NoError,
            "REFUSED" => ResponseCode::Refused,
            "NXDOMAIN" => ResponseCode::NXDomain,
            "SERVFAIL" => ResponseCode::ServFail,
            other => panic!("unexpected rcode {other}: {}", self.out),
        };
        Some((rc, self.ips.clone()))
    }
}

/// `kdig` against the front with the given transport options (`+tls…` or `+https…`), the
/// certificate verified against `f.cert` with the name `localhost`; `queries`: (name, type).
fn kdig(f: &Front, port: u16, transport: &[&str], queries: &[(&str, &str)]) -> Kdig {
    need("kdig");
    let mut c = Command::new("kdig");
    c.arg("@127.0.0.1")
        .args(["-p", &port.to_string()])
        .args(transport)
        .arg(format!("+tls-ca={}", f.cert.display()))
        .arg("+tls-hostname=localhost")
        .args(["+timeout=3", "+retry=0", "+noall", "+header", "+answer"]);
    for (n, t) in queries {
        c.args([*n, *t]);
    }
    let o = c.output().expect("running kdig");
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let rcodes = out
        .lines()
        .filter(|l| l.contains("->>HEADER<<-"))
        .filter_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(';').next().unwrap().trim().to_string())
        .collect();
    let ips = out
        .lines()
        .filter(|l| l.contains("\tA\t") || l.contains(" A "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    Kdig { rcodes, ips, out }
}

/// One DoH exchange with curl (HTTP/2 unless `http1`): POST, or GET with `?dns=`; the status
/// code and the body. `from`: the client's source address; an `extra` argument starting with
/// `/` replaces the path (and query).
fn curl_doh(f: &Front, from: &str, msg: &[u8], get: bool, extra: &[&str]) -> (u16, Vec<u8>) {
    need("curl");
    let dir = tempfile::tempdir().unwrap();
    let (qf, af) = (dir.path().join("q.bin"), dir.path().join("a.bin"));
    std::fs::write(&qf, msg).unwrap();
    let mut url = format!("https://localhost:{}/dns-query", f.doh.port());
    let mut c = Command::new("curl");
    c.args(["-sS", "--http2", "--max-time", "5", "--interface", from])
        .arg("--cacert")
        .arg(&f.cert)
        .arg("-o")
        .arg(&af)
        .args(["-w", "%{http_code} %{http_version}"]);
    if get {
        url += &format!("?dns={}", data_encoding::BASE64URL_NOPAD.encode(msg));
    } else {
        if !extra.iter().any(|e| e.starts_with("content-type:")) {
            c.args(["-H", "content-type: application/dns-message"]);
        }
        c.arg("--data-binary").arg(format!("@{}", qf.display()));
    }
    for e in extra {
        if e.starts_with('/') {
            url = format!("https://localhost:{}{e}", f.doh.port());
        } else {
            c.arg(e);
        }
    }
    c.arg(&url);
    let o = c.output().expect("running curl");
    let w = String::from_utf8_lossy(&o.stdout).to_string();
    let mut it = w.split_whitespace();
    let code: u16 = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or("").to_string();
    if code == 200 && !extra.contains(&"--http1.1") {
        assert_eq!(version, "2", "curl did not speak HTTP/2: {w}");
    }
    (code, std::fs::read(&af).unwrap_or_default())
}

fn doh(f: &Front, from: &str, name: &str, t: RecordType) -> Answer {
    let (code, body) = curl_doh(f, from, &query(name, t, 0), false, &[]);
    assert_eq!(code, 200, "DoH POST for {name}");
    parse(&body)
}

fn tunnel(tag: &str, zone: &str) -> String {
    format!("mfzwizltoq2dknbvgy3tqojqgezdgnbv{tag}.nbswy3dpeb3w64tmmq.{zone}")
}

const TUNNEL: &str =
    "mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojqgezdgnbv.nbswy3dpeb3w64tmmq.tun.test.com";

#[allow(non_snake_case)]
fn OK() -> Answer {
    Some((ResponseCode::NoError, vec![Ipv4Addr::new(10, 9, 9, 9)]))
}

fn refused(r: &Answer) -> bool {
    matches!(r, Some((ResponseCode::Refused, _)))
}

/// kdig over DoT (several queries on one connection) and over DoH (HTTP/2 POST and GET), curl
/// over HTTP/2 (POST, GET) and HTTP/1.1: benign names answered, the tunnel name REFUSED, the
/// certificate verified; events say how the query came (tcp + tls/https) and who sent it.
#[test]
fn dot_and_doh_clients_get_answers_and_tunnels_are_refused() {
    let up = Upstream::start();
    let f = Front::start(&up, "[behaviour]\nenabled = false\n");
    assert!(
        f.log().contains("self-signed development certificate"),
        "{}",
        f.log()
    );

    // DoT: two benign names and the tunnel on one TLS connection (+keepopen)
    let k = kdig(
        &f,
        f.dot.port(),
        &["+tls", "+keepopen"],
        &[
            ("www.example.com", "A"),
            (TUNNEL, "TXT"),
            ("mail.example.org", "A"),
        ],
    );
    assert!(k.out.contains("TLS"), "{}", k.out);
    assert_eq!(k.rcodes, ["NOERROR", "REFUSED", "NOERROR"], "{}", k.out);
    assert_eq!(k.ips, [Ipv4Addr::new(10, 9, 9, 9); 2], "{}", k.out);
    assert_eq!(
        f.metric("exfilguard_resolve_tls_handshakes_total{proto=\"dot\",result=\"ok\"}"),
        1.0,
        "several queries per connection"
    );
    // the certificate is checked: another name fails the handshake
    let o = Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &f.dot.port().to_string(),
            "+tls-hostname=wrong.example",
        ])
        .arg(format!("+tls-ca={}", f.cert.display()))
        .args(["+timeout=2", "+retry=0", "www.example.com"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains("NOERROR"), "a wrong name was accepted: {out}");

    // DoH with kdig (HTTP/2 POST, then GET)
    let k = kdig(
        &f,
        f.doh.port(),
        &["+https=/dns-query"],
        &[("www.example.net", "A")],
    );
    assert!(
        k.out.contains("HTTP/2-POST") || k.out.contains("status: NOERROR"),
        "{}",
        k.out
    );
    assert_eq!(k.one(), OK(), "{}", k.out);
    let k = kdig(&f, f.doh.port(), &["+https-get"], &[(TUNNEL, "TXT")]);
    assert!(refused(&k.one()), "{}", k.out);

    // DoH with curl: HTTP/2 POST and GET, HTTP/1.1 POST
    assert_eq!(doh(&f, "127.0.0.1", "www.example.com", RecordType::A), OK());
    assert!(refused(&doh(&f, "127.0.0.1", TUNNEL, RecordType::TXT)));
    let (code, body) = curl_doh(
        &f,
        "127.0.0.1",
        &query("get.example.com", RecordType::A, 0),
        true,
        &[],
    );
    assert_eq!((code, parse(&body)), (200, OK()), "GET ?dns=");
    let (code, body) = curl_doh(
        &f,
        "127.0.0.1",
        &query(TUNNEL, RecordType::TXT, 0),
        true,
        &[],
    );
    assert_eq!(code, 200);
    assert!(refused(&parse(&body)), "GET ?dns= with the tunnel name");
    let (code, body) = curl_doh(
        &f,
        "127.0.0.1",
        &query("h1.example.com", RecordType::A, 7),
        false,
        &["--http1.1"],
    );
    assert_eq!((code, parse(&body)), (200, OK()), "HTTP/1.1 POST");

    // the tunnel never reached the upstream; the benign names did
    assert!(up.saw("www.example.com") && up.saw("get.example.com") && up.saw("h1.example.com"));
    assert!(!up.saw("tun.test.com"), "a refused name was forwarded");

    // metrics and events: the same counters as UDP/TCP, by transport
    assert!(f.metric("exfilguard_resolve_queries_total{proto=\"dot\",result=\"refused\"}") >= 1.0);
    assert!(f.metric("exfilguard_resolve_queries_total{proto=\"doh\",result=\"refused\"}") >= 3.0);
    assert!(
        f.metric("exfilguard_resolve_queries_total{proto=\"doh\",result=\"forwarded\"}") >= 4.0
    );
    let t = Instant::now();
    let blocked = loop {
        let ev: Vec<_> = f
            .events()
            .into_iter()
            .filter(|e| e.to_string().contains("tun.test.com"))
            .collect();
        let encaps: Vec<String> = ev
            .iter()
            .map(|e| {
                e["unmapped"]["exfilguard"]["encap"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        if (encaps.iter().any(|e| e == "tls") && encaps.iter().any(|e| e == "https"))
            || t.elapsed() > Duration::from_secs(3)
        {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let encaps: Vec<&str> = blocked
        .iter()
        .map(|e| e["unmapped"]["exfilguard"]["encap"].as_str().unwrap_or(""))
        .collect();
    assert!(
        encaps.contains(&"tls") && encaps.contains(&"https"),
        "{blocked:?}"
    );
    for e in &blocked {
        assert_eq!(e["connection_info"]["protocol_name"], "tcp", "{e}");
        assert_eq!(e["src_endpoint"]["ip"], "127.0.0.1", "{e}");
    }
}

/// A tunnel tool's query sequence sent over DoH is judged like the same sequence over UDP: the
/// tunnel names are refused, the sender loses the zone after the first one, another client
/// keeps it. Outcomes compared one for one with a UDP run on a twin zone.
#[test]
fn a_tunnel_over_doh_is_judged_like_plain_dns() {
    let up = Upstream::start();
    let f = Front::start(&up, "[behaviour]\nenabled = false\n");
    // (client, name, type): a dnstt-like session: a benign lookup, then the tunnel's TXT
    // queries, then benign names of the same zone from the sender and from a bystander
    let seq = |zone: &str| -> Vec<(&'static str, String, RecordType)> {
        vec![
            ("127.0.0.1", format!("www.{zone}"), RecordType::A),
            ("127.0.0.1", tunnel("a", zone), RecordType::TXT),
            ("127.0.0.1", tunnel("b", zone), RecordType::TXT),
            ("127.0.0.1", format!("www.{zone}"), RecordType::A),
            ("127.0.0.1", format!("mail.{zone}"), RecordType::A),
            ("127.0.0.2", format!("www.{zone}"), RecordType::A),
            (
                "127.0.0.1",
                "www.unrelated.example".to_string(),
                RecordType::A,
            ),
        ]
    };
    let over_doh: Vec<Answer> = seq("victim-doh.example")
        .iter()
        .map(|(c, n, t)| doh(&f, c, n, *t))
        .collect();
    let over_udp: Vec<Answer> = seq("victim-udp.example")
        .iter()
        .map(|(c, n, t)| ask_udp(&f, c, n, *t))
        .collect();
    assert_eq!(over_doh[0], OK(), "benign before the tunnel");
    assert!(
        refused(&over_doh[1]) && refused(&over_doh[2]),
        "{over_doh:?}"
    );
    assert!(
        refused(&over_doh[3]) && refused(&over_doh[4]),
        "the sender kept the zone after its tunnel queries: {over_doh:?}"
    );
    assert_eq!(over_doh[5], OK(), "a bystander lost the zone");
    assert_eq!(over_doh[6], OK(), "an unrelated zone was blocked");
    assert_eq!(over_doh, over_udp, "DoH and UDP judged differently");
    assert!(!up.saw("victim-doh.example") || up.saw("www.victim-doh.example"));
    assert!(
        !up.saw("nbswy3dpeb3w64tmmq.victim-doh"),
        "a tunnel query was forwarded"
    );
    // the conviction is explained in the event log, for the DoH client
    std::thread::sleep(Duration::from_millis(500));
    let all: String = f
        .events()
        .iter()
        .filter(|e| e["unmapped"]["exfilguard"]["encap"] == "https")
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("blocks victim-doh.example for client"),
        "{all}"
    );
}

/// Python's ssl as a raw DoT client: every framed query written at once (pipelining), the
/// answers' ids in the order they arrived.
fn dot_pipeline(f: &Front, msgs: &[Vec<u8>]) -> Vec<u16> {
    need("python3");
    let script = r#"
import socket, ssl, struct, sys
ca, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
s.sendall(sys.stdin.buffer.read())
def exact(k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c:
            raise SystemExit("closed after %d bytes" % len(b))
        b += c
    return b
for _ in range(n):
    m = exact(struct.unpack(">H", exact(2))[0])
    print(struct.unpack(">H", m[:2])[0], m[3] & 15)
"#;
    let mut framed = Vec::new();
    for m in msgs {
        framed.extend((m.len() as u16).to_be_bytes());
        framed.extend(m);
    }
    let mut c = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&f.cert)
        .arg(f.dot.port().to_string())
        .arg(msgs.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(&framed).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// RFC 7858 pipelining: queries written back to back on one connection are all answered, and
/// a slow upstream answer does not hold up the ones behind it (answered out of order, by id).
#[test]
fn dot_pipelined_queries_are_answered_as_they_complete() {
    let up = Upstream::start();
    let f = Front::start(&up, "[behaviour]\nenabled = false\n");
    let msgs = vec![
        query("slow.example.com", RecordType::A, 1),
        query("fast1.example.com", RecordType::A, 2),
        query(TUNNEL, RecordType::TXT, 3),
        query("fast2.example.com", RecordType::A, 4),
    ];
    let t = Instant::now();
    let order = dot_pipeline(&f, &msgs);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(order.len(), 4, "{order:?}");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3, 4]);
    assert_eq!(
        order.last(),
        Some(&1),
        "the slow answer held up the others: {order:?}"
    );
    assert!(
        secs < 3.0,
        "pipelined queries were not concurrent: {secs:.2} s"
    );
}

/// One raw TCP connection from source address `src` (any 127/8 address), connected.
fn tcp_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let SocketAddr::V4(d) = dst else {
        unreachable!()
    };
    // SAFETY: a fresh descriptor owned by the TcpStream at once; the sockaddrs outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let a = sin(src, 0);
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let b = sin(*d.ip(), d.port());
        if libc::connect(fd, &b as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

/// Whether the server closed `s` within `wait` (EOF or reset), reading and discarding
/// whatever it sent (a TLS alert, an HTTP error).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t.elapsed() < wait {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// Hostile clients, each with a benign control beside it: plaintext DNS and plaintext HTTP on
/// the TLS ports, a client that never starts its handshake, DoH requests that are not DNS
/// (another path, method, content type; a bad `dns` parameter; an oversized body).
#[test]
fn hostile_clients_get_errors_and_do_not_disturb_others() {
    let up = Upstream::start();
    let f = Front::start(&up, "tcp_idle_ms = 1500\n[behaviour]\nenabled = false\n");
    let control = |what: &str| {
        let k = kdig(&f, f.dot.port(), &["+tls"], &[("control.example.com", "A")]);
        assert_eq!(k.one(), OK(), "DoT control after {what}: {}", k.out);
        assert_eq!(
            doh(&f, "127.0.0.1", "control.example.org", RecordType::A),
            OK(),
            "DoH control after {what}"
        );
    };

    // plaintext DNS over TCP on the DoT port: the handshake fails, the connection closes
    let mut s = TcpStream::connect(f.dot).unwrap();
    let q = query("plain.example.com", RecordType::A, 9);
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&q).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "plaintext DNS kept the connection open"
    );
    // plaintext HTTP on the DoH port
    let mut s = TcpStream::connect(f.doh).unwrap();
    s.write_all(b"GET /dns-query?dns=AAAB HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "plaintext HTTP kept the connection open"
    );
    assert!(
        !up.saw("plain.example.com"),
        "a plaintext query on the TLS port was forwarded"
    );
    assert!(
        f.metric("exfilguard_resolve_tls_handshakes_total{proto=\"dot\",result=\"failed\"}") >= 1.0
    );
    assert!(
        f.metric("exfilguard_resolve_tls_handshakes_total{proto=\"doh\",result=\"failed\"}") >= 1.0
    );
    control("plaintext clients");

    // a client that connects and says nothing is closed after tcp_idle_ms (1.5 s), while a
    // real client is served meanwhile
    let mut silent = TcpStream::connect(f.dot).unwrap();
    control("a silent client connected");
    assert!(
        closed_within(&mut silent, Duration::from_secs(4)),
        "a silent client held its connection"
    );
    assert!(
        f.metric("exfilguard_resolve_tls_handshakes_total{proto=\"dot\",result=\"timeout\"}")
            >= 1.0
    );

    // DoH requests that are not DNS: HTTP errors, nothing judged or forwarded
    let q = query("www.example.com", RecordType::A, 0);
    let code =
        |extra: &[&str], get: bool, body: &[u8]| curl_doh(&f, "127.0.0.1", body, get, extra).0;
    assert_eq!(code(&["/other-path"], false, &q), 404, "another path");
    assert_eq!(code(&["-X", "PUT"], false, &q), 405, "another method");
    assert_eq!(
        code(&["-H", "content-type: text/plain"], false, &q),
        415,
        "another content type"
    );
    let (c, _) = curl_doh(&f, "127.0.0.1", b"\xff\xfe", true, &[]);
    assert!(c == 400, "a 2-byte message in ?dns= is not DNS: {c}");
    assert_eq!(
        code(&["-X", "GET", "/dns-query?dns=%%%%"], false, &q),
        400,
        "bad base64url"
    );
    let big = vec![0u8; 100_000];
    assert_eq!(code(&[], false, &big), 413, "an oversized body");
    // a chunked body without a length, over the limit: also refused
    assert_eq!(
        code(
            &["-H", "transfer-encoding: chunked", "--http1.1"],
            false,
            &big
        ),
        413,
        "an oversized chunked body"
    );
    assert!(f.metric("exfilguard_resolve_doh_responses_total{status=\"404\"}") >= 1.0);
    assert!(f.metric("exfilguard_resolve_doh_responses_total{status=\"413\"}") >= 2.0);
    control("non-DNS HTTP requests");
    assert!(
        f.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        f.log()
    );
}

/// A client opening many connections: over `tcp_max_per_client` they are closed at once, and a
/// table filled from many addresses gives way to a real client within a second or two (the
/// handshakes that never started yield like idle TCP connections), far sooner than the
/// handshake timeout (10 s here).
#[test]
fn many_connections_do_not_lock_out_other_clients() {
    let up = Upstream::start();
    let f = Front::start(
        &up,
        "tcp_max_connections = 24\ntcp_max_per_client = 4\n[behaviour]\nenabled = false\n",
    );
    // one client, 40 connections to each listener: 4 each kept, the rest closed at accept
    let mut held = Vec::new();
    for dst in [f.dot, f.doh] {
        for _ in 0..40 {
            if let Ok(s) = tcp_from(Ipv4Addr::new(127, 0, 0, 50), dst) {
                held.push(s);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        f.metric("exfilguard_resolve_tcp_refused_total{reason=\"per_client\"}") >= 70.0,
        "per-client cap not applied"
    );
    let k = kdig(&f, f.dot.port(), &["+tls"], &[("other.example.com", "A")]);
    assert_eq!(k.one(), OK(), "another client was locked out: {}", k.out);
    drop(held);

    // many addresses fill the whole table with connections that never handshake
    let mut held = Vec::new();
    for c in 0..12u8 {
        for dst in [f.dot, f.doh] {
            for _ in 0..4 {
                if let Ok(s) = tcp_from(Ipv4Addr::new(127, 0, 1, 10 + c), dst) {
                    held.push(s);
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    let t = Instant::now();
    let mut got = None;
    while t.elapsed() < Duration::from_secs(5) {
        let (code, body) = curl_doh(
            &f,
            "127.0.0.1",
            &query("late.example.com", RecordType::A, 0),
            false,
            &[],
        );
        if code == 200 {
            got = parse(&body);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = t.elapsed();
    assert_eq!(
        got,
        OK(),
        "a real client was locked out by a full table ({waited:?})"
    );
    assert!(waited < Duration::from_secs(4), "took {waited:?}");
    assert!(f.metric("exfilguard_resolve_tcp_refused_total{reason=\"total\"}") >= 1.0);
    assert!(f.metric("exfilguard_resolve_tcp_closed_total{reason=\"pressure\"}") >= 1.0);
    drop(held);
}

/// Bad TLS settings stop the front at start-up with an error naming the key and the file.
#[test]
fn bad_tls_settings_are_clear_errors() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str| -> String {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
            .args(["resolve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(!st.success(), "the front started with {toml}");
                let mut e = String::new();
                c.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                return e;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!("the front kept running with {toml}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let base = format!(
        "[metrics]\nenabled = false\n[resolve]\nlisten = [\"127.0.0.1:{}\"]\nupstreams = [\"{}\"]\nlisten_tls = [\"127.0.0.1:{}\"]\n",
        free_port(),
        up.addr,
        free_port()
    );
    let e = run(&base);
    assert!(
        e.contains("need resolve.tls_cert and resolve.tls_key"),
        "{e}"
    );
    let missing = dir.path().join("missing.pem");
    let e = run(&format!(
        "{base}tls_cert = \"{0}\"\ntls_key = \"{0}\"\n",
        missing.display()
    ));
    assert!(
        e.contains("resolve.tls_cert") && e.contains("missing.pem"),
        "{e}"
    );
    // a file that is not PEM, and a key that is not the certificate's
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = run(&format!(
        "{base}tls_cert = \"{0}\"\ntls_key = \"{0}\"\n",
        junk.display()
    ));
    assert!(
        e.contains("resolve.tls_cert") && e.contains("junk.pem"),
        "{e}"
    );
    // two self-signed pairs: the first one's certificate with the second one's key
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        let p = free_port();
        let cfg = format!(
            "[metrics]\nenabled = false\n[resolve]\nlisten = [\"127.0.0.1:{}\"]\nupstreams = [\"{}\"]\nlisten_tls = [\"127.0.0.1:{p}\"]\ntls_self_signed = true\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            free_port(),
            up.addr,
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        );
        std::fs::write(d.join("f.toml"), cfg).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
            .args(["resolve", "--config"])
            .arg(d.join("f.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", p)).is_err() && t.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
        let key = std::fs::read_to_string(d.join("key.pem")).unwrap();
        assert!(
            key.contains("PRIVATE KEY"),
            "no key written in {}",
            d.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let e = run(&format!(
        "{base}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        a.join("cert.pem").display(),
        b.join("key.pem").display()
    ));
    assert!(
        e.contains("resolve.tls_cert") && e.contains("resolve.tls_key"),
        "{e}"
    );
}

/// Unbound serving DNS over TLS only, on a loopback port, with a certificate for `dot.test`;
/// `ok.example` and every name under it answer `A 10.9.9.9`. Logs the queries it gets.
struct Unbound {
    child: Child,
    addr: SocketAddr,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Unbound {
    fn start() -> Self {
        need("unbound");
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["dot.test".to_string()]).unwrap();
        let (ca, key) = (dir.path().join("dot.pem"), dir.path().join("dot.key"));
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let port = free_port();
        let conf = dir.path().join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1@{port}\n  tls-port: {port}\n\
                 tls-service-key: \"{}\"\n  tls-service-pem: \"{}\"\n\
                 do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n\
                 directory: \"{}\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n\
                 do-udp: no\n  log-queries: yes\n  access-control: 127.0.0.0/8 allow\n\
                 module-config: \"iterator\"\n  do-not-query-localhost: yes\n\
                 local-zone: \"ok.example.\" redirect\n  local-data: \"ok.example. 60 A 10.9.9.9\"\n\
                 local-zone: \"example.\" static\n",
                key.display(),
                ca.display(),
                dir.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("unbound.log")).unwrap())
            .spawn()
            .expect("starting unbound");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "unbound did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            ca,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `resolve.upstream_tls`: the front forwards UDP, TCP and DoT clients' queries to Unbound
/// over DNS over TLS (Unbound listens for nothing else on that port), verifying its
/// certificate; tunnel names never reach it. Attack: an upstream whose certificate is not for
/// the configured name (a man in the middle) gets no query at all, not even in plaintext, and
/// the client gets SERVFAIL. The browsers' DoH canary is answered NXDOMAIN by the front.
#[test]
fn the_front_forwards_over_dot_and_fails_closed_on_a_wrong_certificate() {
    need("kdig");
    let ub = Unbound::start();
    // config() ends inside [resolve]: these keys continue it
    let extra = |name: &str| {
        format!(
            "upstream_tls = true\nupstream_tls_name = \"{name}\"\nupstream_tls_ca = \"{}\"\n\
             [behaviour]\nenabled = false\n",
            ub.ca.display()
        )
    };
    let f = Front::start_at(ub.addr, &extra("dot.test"));
    for i in 0..5 {
        let name = format!("host{i}.ok.example");
        assert_eq!(
            ask_udp(&f, "127.0.0.1", &name, RecordType::A),
            OK(),
            "UDP query over a DoT upstream: {}\n{}",
            f.log(),
            ub.log()
        );
    }
    let k = kdig(
        &f,
        f.dot.port(),
        &["+tls"],
        &[("dot.ok.example", "A"), (TUNNEL, "A")],
    );
    assert_eq!(k.rcodes, ["NOERROR", "REFUSED"], "{}", k.out);
    assert_eq!(k.ips, [Ipv4Addr::new(10, 9, 9, 9)], "{}", k.out);
    // a plain TCP client
    let mut t = TcpStream::connect(f.udp).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let q = query("tcp.ok.example", RecordType::A, 7);
    t.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    t.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    t.read_exact(&mut len).unwrap();
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut a).unwrap();
    assert_eq!(parse(&a), OK(), "TCP client over a DoT upstream");
    // the canary never leaves the front
    assert_eq!(
        ask_udp(&f, "127.0.0.1", "use-application-dns.net", RecordType::A),
        Some((ResponseCode::NXDomain, vec![]))
    );
    let log = ub.log();
    assert!(
        log.contains("host4.ok.example."),
        "unbound saw no query:\n{log}"
    );
    assert!(
        log.contains("dot.ok.example.") && log.contains("tcp.ok.example."),
        "{log}"
    );
    assert!(
        !log.to_lowercase().contains("tun.test.com"),
        "a tunnel name reached the upstream"
    );
    assert!(
        !log.contains("use-application-dns"),
        "the canary was forwarded"
    );
    assert!(f.metric("exfilguard_resolve_upstream_answers_total") >= 7.0);
    drop(f);

    // the same upstream under a name its certificate does not carry: nothing is sent
    let f = Front::start_at(ub.addr, &extra("other.test"));
    for name in ["mitm1.ok.example", "mitm2.ok.example"] {
        assert_eq!(
            ask_udp(&f, "127.0.0.1", name, RecordType::A),
            Some((ResponseCode::ServFail, vec![])),
            "{}",
            f.log()
        );
    }
    let k = kdig(&f, f.dot.port(), &["+tls"], &[("mitm3.ok.example", "A")]);
    assert_eq!(k.rcodes, ["SERVFAIL"], "{}", k.out);
    let log = ub.log();
    assert!(
        !log.contains("mitm"),
        "a query reached an upstream whose certificate failed:\n{log}"
    );
    assert!(
        f.log().contains("DoT upstream") && f.log().contains("certificate"),
        "the failure is not logged: {}",
        f.log()
    );
    drop(f);

    // control: the same front without upstream_tls speaks plain DNS, which Unbound's TLS port
    // does not answer (so the answers above did come over TLS)
    let f = Front::start_at(ub.addr, "timeout_ms = 500\n[behaviour]\nenabled = false\n");
    assert_eq!(
        ask_udp(&f, "127.0.0.1", "plain.ok.example", RecordType::A),
        Some((ResponseCode::ServFail, vec![]))
    );
}
