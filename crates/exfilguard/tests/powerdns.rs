//! The resolver topology with real PowerDNS on loopback: clients → `exfilguard resolve` →
//! PowerDNS Recursor → PowerDNS Authoritative (bind backend) serving an internal zone and a
//! "C2" zone. Needs the Debian packages pdns-server, pdns-backend-bind and pdns-recursor; no
//! root. Without them the test fails, unless EXFILGUARD_SKIP_POWERDNS_TESTS=1 says to skip.

mod support;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::data_dir;

fn possible() -> bool {
    let missing: Vec<_> = ["pdns_server", "pdns_recursor"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t} || test -x /usr/sbin/{t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("EXFILGUARD_SKIP_POWERDNS_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "!!! SKIPPED PowerDNS test: missing {missing:?} (EXFILGUARD_SKIP_POWERDNS_TESTS=1) !!!"
        );
        return false;
    }
    panic!("PowerDNS tests need {missing:?} (apt-get install pdns-server pdns-backend-bind pdns-recursor); set EXFILGUARD_SKIP_POWERDNS_TESTS=1 to skip explicitly");
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

struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM: killing", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query_bytes(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let n = exfilguard_dns::DnsName::parse(name).unwrap();
    exfilguard_dns::build_query(&n, qtype, id).unwrap()
}

fn ask_udp(server: SocketAddr, q: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for _ in 0..2 {
        s.send_to(q, server).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Message::from_vec(&buf[..n]).ok();
        }
    }
    None
}

fn ask(server: SocketAddr, name: &str, qtype: u16) -> Message {
    ask_udp(server, &query_bytes(name, qtype, 0x4242))
        .unwrap_or_else(|| panic!("no answer from {server} for {name}"))
}

fn ask_tcp(server: SocketAddr, name: &str, qtype: u16) -> Message {
    let q = query_bytes(name, qtype, 0x7777);
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut a).unwrap();
    Message::from_vec(&a).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn wait_for(server: SocketAddr, name: &str, what: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        let q = query_bytes(name, 1, 1);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.send_to(&q, server).unwrap();
        let mut buf = [0u8; 512];
        if s.recv_from(&mut buf).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} on {server} did not come up");
}

struct Lab {
    dir: PathBuf,
    recursor: SocketAddr,
    /// Where the recursor pulls the RPZ from (`rpzPrimary`, polled every second).
    rpz: SocketAddr,
    _auth: Proc,
    _rec: Proc,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rec`: where the recursor listens (a free loopback port when `None`); `extra`: more
/// forward zones (`zone=ip:port`), each also given a negative trust anchor.
fn start_powerdns(rec: Option<SocketAddr>, extra: &[(&str, SocketAddr)]) -> Lab {
    // tests run in parallel: one directory per lab
    static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "eg-pdns-{}-{}",
        std::process::id(),
        LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let soa = "@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n";
    w(
        "corp.test.zone",
        &format!("$ORIGIN corp.test.\n{soa}www 300 IN A 10.1.0.10\nmail 300 IN A 10.1.0.20\napi 300 IN TXT \"hello from corp\"\n*.hosts 300 IN A 10.1.0.99\n"),
    );
    // the "C2" zone answers everything, as a tunnel server would
    w(
        "c2.test.zone",
        &format!("$ORIGIN c2.test.\n{soa}* 0 IN A 10.66.6.6\n* 0 IN TXT \"payload\"\n"),
    );
    w(
        "named.conf",
        &format!(
            "zone \"corp.test\" {{ type master; file \"{d}/corp.test.zone\"; }};\nzone \"c2.test\" {{ type master; file \"{d}/c2.test.zone\"; }};\n",
            d = dir.display()
        ),
    );
    let auth_port = free_port();
    let auth = Command::new("pdns_server")
        .args([
            "--no-config",
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            "--security-poll-suffix=",
            "--launch=bind",
            &format!("--bind-config={}/named.conf", dir.display()),
            &format!("--socket-dir={}", dir.display()),
            "--local-address=127.0.0.1",
            &format!("--local-port={auth_port}"),
            "--loglevel=3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting pdns_server");
    let auth = Proc(auth, "pdns_server");
    let auth_addr: SocketAddr = format!("127.0.0.1:{auth_port}").parse().unwrap();
    wait_for(auth_addr, "www.corp.test", "PowerDNS Authoritative");

    let rpz: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Recursor 4.8 takes NOTIFY only as a cache wipe: it learns changes by polling (refresh)
    w(
        "recursor.lua",
        &format!(
            "addNTA(\"corp.test\")\naddNTA(\"c2.test\")\n{}rpzPrimary(\"{rpz}\", \"rpz.exfilguard.\", {{refresh=1, policyName=\"exfilguard\"}})\n",
            extra.iter().map(|(z, _)| format!("addNTA(\"{z}\")\n")).collect::<String>()
        ),
    );
    w("recursor.conf", "");
    let recursor: SocketAddr =
        rec.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let forwards: String = extra.iter().map(|(z, a)| format!(",{z}={a}")).collect();
    let rec = Command::new("pdns_recursor")
        .args([
            &format!("--config-dir={}", dir.display()),
            &format!("--socket-dir={}", dir.display()),
            "--daemon=no",
            "--disable-syslog",
            "--write-pid=no",
            "--security-poll-suffix=",
            &format!("--local-address={}", recursor.ip()),
            &format!("--local-port={}", recursor.port()),
            &format!(
                "--forward-zones=corp.test=127.0.0.1:{auth_port},c2.test=127.0.0.1:{auth_port}{forwards}"
            ),
            "--dont-query=",
            &format!("--lua-config-file={}/recursor.lua", dir.display()),
            "--threads=1",
            "--loglevel=3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting pdns_recursor");
    let rec = Proc(rec, "pdns_recursor");
    wait_for(recursor, "www.corp.test", "PowerDNS Recursor");
    Lab {
        dir,
        recursor,
        rpz,
        _auth: auth,
        _rec: rec,
    }
}

/// A running `exfilguard resolve`.
struct Front {
    _proc: Proc,
    addr: SocketAddr,
    events: PathBuf,
    metrics: SocketAddr,
}

impl Front {
    /// One sample of the Prometheus endpoint (0 when the series does not exist).
    fn metric(&self, series: &str) -> f64 {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

fn start_front(lab: &Lab, name: &str, extra: &str) -> Front {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    start_front_at(lab, name, addr, extra)
}

fn start_front_at(lab: &Lab, name: &str, addr: SocketAddr, extra: &str) -> Front {
    start_front_with(lab, name, addr, extra, &[])
}

/// `args`: command-line flags after `resolve --config FILE`.
fn start_front_with(lab: &Lab, name: &str, addr: SocketAddr, extra: &str, args: &[&str]) -> Front {
    let metrics = free_port();
    let events = lab.dir.join(format!("{name}-events.jsonl"));
    let cfg = lab.dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[events.file]\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[resolve]\nlisten = [\"{addr}\"]\nupstreams = [\"{}\"]\nworkers = 2\n{extra}",
            events.display(),
            lab.recursor
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["resolve", "--config"])
        .arg(&cfg)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(lab.dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("starting exfilguard resolve");
    let p = Proc(child, "exfilguard resolve");
    wait_for(addr, "www.corp.test", "exfilguard resolve");
    Front {
        _proc: p,
        addr,
        events,
        metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
    }
}

/// Payload-bearing tunnel names from the shared data (per tool), their lab zone replaced by
/// the test's C2 zone.
fn tunnel_names(per_tool: usize) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data_dir().join("tunnel_queries_train.tsv")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            continue;
        }
        let (q, tool, zone) = (f[0], f[1], f[3]);
        let Some(left) = q.strip_suffix(zone).and_then(|l| l.strip_suffix('.')) else {
            continue;
        };
        let name = format!("{left}.c2.test");
        if left.len() < 40 || exfilguard_dns::DnsName::parse(&name).is_err() {
            continue; // control queries carry no payload: caught per domain, not per name
        }
        let c = counts.entry(tool.to_string()).or_default();
        if *c < per_tool {
            *c += 1;
            out.push((tool.to_string(), name));
        }
    }
    out
}

#[test]
fn resolver_front_with_powerdns_recursor_and_authoritative() {
    if !possible() {
        return;
    }
    let lab = start_powerdns(None, &[]);

    // Front 1: per-name verdicts only (no domain conviction), to measure the replay; the
    // analytics run on their defaults with corp.test declared internal (300 of its host names
    // from one client in seconds would otherwise be a leak, see docs/behaviour.md)
    let f1 = start_front(
        &lab,
        "pername",
        "block_secs = 0\n[behaviour]\ninternal_zones = [\"corp.test\"]\n",
    );
    let front1 = f1.addr;
    // benign answers through the front equal the recursor's own
    for (name, qtype) in [
        ("www.corp.test", 1),
        ("mail.corp.test", 1),
        ("api.corp.test", 16),
    ] {
        let direct = ask(lab.recursor, name, qtype);
        let via = ask(front1, name, qtype);
        assert_eq!(via.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(via.metadata.id, 0x4242, "client id restored");
        assert_eq!(
            via.answers, direct.answers,
            "{name}: answer relayed unchanged"
        );
        assert!(!via.answers.is_empty(), "{name}");
    }
    assert_eq!(
        a_records(&ask(front1, "www.corp.test", 1)),
        vec!["10.1.0.10"]
    );
    assert_eq!(
        a_records(&ask_tcp(front1, "mail.corp.test", 1)),
        vec!["10.1.0.20"]
    );

    // benign host names (CDN, cloud, PTR-like) moved under the internal zone keep resolving
    let benign =
        std::fs::read_to_string(data_dir().join("benign_umbrella_fqdn50k_2019.txt")).unwrap();
    let benign: Vec<String> = benign
        .lines()
        .filter(|l| l.matches('.').count() >= 2)
        .step_by(97)
        .take(300)
        .map(|l| {
            let n = exfilguard_dns::DnsName::parse(l.trim()).unwrap();
            let first = n.split().subdomain_labels();
            let left = if first == 0 {
                "www".to_string()
            } else {
                n.normalized_from(0)
                    .split('.')
                    .take(first)
                    .collect::<Vec<_>>()
                    .join(".")
            };
            format!("{left}.hosts.corp.test")
        })
        .collect();
    let mut refused_benign = Vec::new();
    for n in &benign {
        let m = ask(front1, n, 1);
        if m.metadata.response_code == ResponseCode::Refused {
            refused_benign.push(n.clone());
        } else {
            let a = a_records(&m);
            assert!(
                a.len() == 1 && a[0].starts_with("10.1.0."),
                "{n}: {a:?} {:?}",
                m.metadata.response_code
            );
        }
    }
    eprintln!(
        "benign host names refused: {} of {} {:?}",
        refused_benign.len(),
        benign.len(),
        refused_benign
    );
    assert!(
        refused_benign.len() <= 3,
        "too many benign names refused: {refused_benign:?}"
    );

    // replayed tunnel names: refused per name
    let tunnels = tunnel_names(60);
    let mut per_tool = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for (tool, name) in &tunnels {
        let qtype = if tool == "iodine" { 10 } else { 16 };
        let m = ask(front1, name, qtype);
        let e = per_tool.entry(tool.clone()).or_default();
        e.1 += 1;
        if m.metadata.response_code == ResponseCode::Refused {
            e.0 += 1;
            assert!(m.answers.is_empty());
        }
    }
    eprintln!("tunnel payload names refused per tool (per-name verdicts): {per_tool:?}");
    assert!(per_tool.len() >= 4, "tools in the replay: {per_tool:?}");
    for (tool, (refused, total)) in &per_tool {
        assert!(
            *refused as f64 >= 0.9 * *total as f64,
            "{tool}: only {refused}/{total} payload names refused"
        );
    }

    // malformed messages never take the front down; they get FORMERR or nothing
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut corpus: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], // qdcount 1, no question
        vec![
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
        ], // pointer loop
        vec![
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64, b'a', 0, 0, 1, 0, 1,
        ], // label type 01
    ];
    let mut long = query_bytes("www.corp.test", 1, 9);
    long.truncate(20);
    corpus.push(long);
    for _ in 0..2000 {
        let mut q = query_bytes("abc.corp.test", 1, rng.random());
        let flips = rng.random_range(1..6);
        for _ in 0..flips {
            let i = rng.random_range(0..q.len());
            q[i] = rng.random();
        }
        q.truncate(rng.random_range(0..=q.len()));
        corpus.push(q);
    }
    let mut formerr = 0;
    for q in &corpus {
        s.send_to(q, front1).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if Message::from_vec(&buf[..n])
                .is_ok_and(|m| m.metadata.response_code == ResponseCode::FormErr)
            {
                formerr += 1;
            }
        }
    }
    eprintln!(
        "malformed corpus: {} messages, {formerr} FORMERR answers",
        corpus.len()
    );
    assert!(formerr > 0);
    assert_eq!(
        a_records(&ask(front1, "www.corp.test", 1)),
        vec!["10.1.0.10"],
        "front still serving"
    );

    // Front 2: a conviction refuses the whole registered domain, at the front and — through
    // the live RPZ — at the recursor itself; it expires after block_secs. One client's
    // evidence blocks the zone for everyone here (`domain_clients = 1`); the default needs two
    // (crates/exfilguard/tests/front_attacks.rs).
    let block_secs = 10;
    let f2 = start_front(
        &lab,
        "convict",
        &format!(
            "block_secs = {block_secs}\n[rpz]\nlisten = \"{}\"\n[behaviour]\nenabled = false\n[convict]\ndomain_clients = 1\n",
            lab.rpz
        ),
    );
    let (front2, events2) = (f2.addr, f2.events.clone());
    // the recursor started before the front: it loads the (empty) zone at its next retry;
    // wait for that, so the conviction below has to travel by IXFR
    let t = Instant::now();
    while f2.metric("exfilguard_rpz_requests_total{kind=\"axfr\"}") < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the recursor never transferred the RPZ"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "recursor loaded the RPZ {:.1} s after the front started",
        t.elapsed().as_secs_f64()
    );
    let quiet = "www.c2.test";
    assert_eq!(
        a_records(&ask(front2, quiet, 1)),
        vec!["10.66.6.6"],
        "plain name before any conviction"
    );
    let (_, payload) = tunnels.iter().find(|(t, _)| t == "iodine").unwrap();
    assert_eq!(
        ask(front2, payload, 10).metadata.response_code,
        ResponseCode::Refused
    );
    let convicted_at = Instant::now();
    let m = ask(front2, quiet, 1);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::Refused,
        "the convicted domain is refused, even plain names"
    );
    assert_eq!(
        ask_tcp(front2, "r12345.c2.test", 16).metadata.response_code,
        ResponseCode::Refused,
        "over TCP too"
    );
    assert_eq!(
        a_records(&ask(front2, "www.corp.test", 1)),
        vec!["10.1.0.10"],
        "other domains unaffected"
    );

    // the recursor itself now answers NXDOMAIN under the convicted domain (fresh names: its
    // packet cache keeps answers it already gave until their TTL)
    let mut probe = 0;
    let mut fresh = |what: &str| {
        probe += 1;
        format!("{what}-{probe}.c2.test")
    };
    loop {
        let m = ask(lab.recursor, &fresh("blocked"), 1);
        if m.metadata.response_code == ResponseCode::NXDomain {
            break;
        }
        assert_eq!(a_records(&m), vec!["10.66.6.6"]);
        assert!(
            convicted_at.elapsed() < Duration::from_secs(5),
            "the recursor did not take the conviction from the RPZ within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rpz_block = convicted_at.elapsed();
    assert!(
        f2.metric("exfilguard_rpz_requests_total{kind=\"ixfr\"}") >= 1.0,
        "the recursor follows the zone by IXFR"
    );
    assert_eq!(
        ask(lab.recursor, "c2.test", 1).metadata.response_code,
        ResponseCode::NXDomain,
        "the registered domain itself"
    );
    assert_eq!(
        a_records(&ask(lab.recursor, "www.corp.test", 1)),
        vec!["10.1.0.10"],
        "the RPZ holds nothing else"
    );

    std::thread::sleep(Duration::from_millis(500)); // the sink thread writes asynchronously
    let events = std::fs::read_to_string(&events2).unwrap();
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().all(|e| e["class_uid"] == 4003),
        "OCSF DNS Activity"
    );
    assert!(
        lines
            .iter()
            .any(|e| e.to_string().contains("convicted domain c2.test")),
        "an event explains the conviction"
    );

    // the conviction expires: the front and the recursor resolve the domain again
    let rpz_unblock = loop {
        let m = ask(lab.recursor, &fresh("released"), 1);
        if m.metadata.response_code == ResponseCode::NoError {
            assert_eq!(a_records(&m), vec!["10.66.6.6"]);
            break convicted_at.elapsed();
        }
        assert!(
            convicted_at.elapsed() < Duration::from_secs(block_secs + 5),
            "the recursor still refuses c2.test 5 s after the conviction expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        a_records(&ask(front2, &fresh("front"), 1)),
        vec!["10.66.6.6"]
    );
    eprintln!(
        "RPZ: recursor blocks c2.test {:.2} s after the conviction, resolves it again {:.2} s after it expired",
        rpz_block.as_secs_f64(),
        rpz_unblock.as_secs_f64() - block_secs as f64
    );
}

/// A SIGHUP re-reads the config file and the model; settings given on the command line
/// (here `--threshold`) must survive it.
#[test]
fn sighup_keeps_the_command_line_settings() {
    if !possible() {
        return;
    }
    let lab = start_powerdns(None, &[]);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // per-name verdicts (no domain conviction) so each query is judged afresh
    let front = start_front_with(
        &lab,
        "sighup",
        addr,
        "block_secs = 0\n[behaviour]\nenabled = false\n",
        &["--threshold", "0.000001"],
    );
    // P(tunnel) ≈ 4e-4: benign at the model's own threshold, convicted at 1e-6
    let name = |i: u32| format!("averyveryverylonglabelnameforthetest{i}.corp.test");
    let verdict = |i: u32| ask(front.addr, &name(i), 1).metadata.response_code;
    assert_eq!(
        verdict(1),
        ResponseCode::Refused,
        "--threshold applied at start"
    );

    let log = lab.dir.join("sighup.log");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(front._proc.0.id() as i32, libc::SIGHUP) };
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("model reloaded")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no reload in the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        verdict(2),
        ResponseCode::Refused,
        "the reload dropped --threshold"
    );
}

/// Runs a tool for at most `secs`, returning what it printed.
fn run_for(args: &[&str], secs: u64, out: &std::path::Path) -> String {
    let f = std::fs::File::create(out).unwrap();
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", args[0]));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(out).unwrap_or_default()
}

/// A live dns2tcp tunnel (dns2tcpd behind the recursor): it works through PowerDNS alone and
/// does not establish through `exfilguard resolve`. dns2tcpc only talks to port 53, so the
/// recursor and the front take port 53 on their own loopback addresses: root only.
#[test]
fn live_dns2tcp_tunnel_is_refused_at_the_front() {
    if !possible() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let have = Command::new("sh")
        .args(["-c", "command -v dns2tcpc && command -v dns2tcpd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(root && have) {
        let why = format!("root={root}, dns2tcp installed={have}");
        if std::env::var("EXFILGUARD_SKIP_KERNEL_TESTS").as_deref() == Ok("1") {
            eprintln!("!!! SKIPPED live dns2tcp test: {why} (EXFILGUARD_SKIP_KERNEL_TESTS=1) !!!");
            return;
        }
        panic!("the live dns2tcp test binds port 53 and needs dns2tcp: {why}; set EXFILGUARD_SKIP_KERNEL_TESTS=1 to skip explicitly");
    }
    let tunnel_server: SocketAddr = format!("127.77.0.4:{}", free_port()).parse().unwrap();
    let zone = "t2.tun.test";
    let lab = start_powerdns(
        Some("127.77.0.3:53".parse().unwrap()),
        &[(zone, tunnel_server)],
    );
    let conf = lab.dir.join("dns2tcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "listen = {}\nport = {}\nuser = root\nchroot = /tmp\ndomain = {zone}\nresources = echo:127.0.0.1:7\n",
            tunnel_server.ip(),
            tunnel_server.port()
        ),
    )
    .unwrap();
    let _d2 = Proc(
        Command::new("dns2tcpd")
            .args(["-F", "-d", "1", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dns2tcpd"),
        "dns2tcpd",
    );
    std::thread::sleep(Duration::from_millis(500));

    // control: through the recursor alone the tunnel comes up and lists its resources
    let direct = run_for(
        &["dns2tcpc", "-z", zone, &lab.recursor.ip().to_string()],
        10,
        &lab.dir.join("direct.out"),
    );
    assert!(
        direct.contains("echo"),
        "dns2tcp did not work through PowerDNS alone (the test's tunnel is broken):\n{direct}"
    );

    let front: SocketAddr = "127.77.0.2:53".parse().unwrap();
    let f = start_front_at(&lab, "live", front, "");
    let events = f.events.clone();
    let via = run_for(
        &["dns2tcpc", "-z", zone, &front.ip().to_string()],
        10,
        &lab.dir.join("via.out"),
    );
    assert!(
        !via.contains("echo"),
        "dns2tcp established through exfilguard resolve:\n{via}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&events).unwrap();
    let refused: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e.to_string().contains("tun.test"))
        .collect();
    assert!(!refused.is_empty(), "no event for the tunnel queries");
    assert_eq!(
        a_records(&ask(front, "www.corp.test", 1)),
        vec!["10.1.0.10"],
        "benign names still resolve through the front"
    );
    eprintln!(
        "live dns2tcp: lists its resources through the recursor alone; through the front it does not ({} tunnel events: {:?}); client said: {}",
        refused.len(),
        refused.iter().map(|e| e["query"]["hostname"].as_str().unwrap_or("?").to_string()).collect::<Vec<_>>(),
        via.trim()
    );
}

/// The model server of tools/model-server (onnxruntime serving the embedded .onnx file),
/// or why it cannot run here.
fn start_model_server(dir: &std::path::Path) -> Result<(Proc, SocketAddr), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let probe = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Err("python3 with onnxruntime and numpy (pip install onnxruntime numpy)".into());
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("python3")
        .arg(root.join("tools/model-server/serve.py"))
        .arg("--model")
        .arg(root.join("crates/exfilguard-detect/assets/exfilguard.onnx"))
        .args(["--listen", &addr.to_string()])
        .stdout(std::fs::File::create(dir.join("model-server.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("model-server.err")).unwrap())
        .spawn()
        .map_err(|e| format!("starting serve.py: {e}"))?;
    let p = Proc(child, "model server");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.write_all(b"GET /v2/health/ready HTTP/1.0\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200") {
                return Ok((p, addr));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("model server did not come up".into())
}

/// dnstun parity: the front asks a real TF-Serving-REST / KServe-v2 runtime (onnxruntime
/// serving the same model), and keeps judging with the embedded model when it is killed.
#[test]
fn remote_model_runtime_and_fallback_when_it_dies() {
    if !possible() {
        return;
    }
    let lab = start_powerdns(None, &[]);
    let (mut server, model_addr) = match start_model_server(&lab.dir) {
        Ok(x) => x,
        Err(why) => {
            if std::env::var("EXFILGUARD_SKIP_RUNTIME_TESTS").as_deref() == Ok("1") {
                eprintln!(
                    "!!! SKIPPED remote runtime test: {why} (EXFILGUARD_SKIP_RUNTIME_TESTS=1) !!!"
                );
                return;
            }
            panic!("the remote runtime test needs {why}; set EXFILGUARD_SKIP_RUNTIME_TESTS=1 to skip explicitly");
        }
    };
    let runtime = |protocol: &str| {
        format!(
            "block_secs = 0\ncache_secs = 1\n[runtime]\nurl = \"http://{model_addr}\"\nprotocol = \"{protocol}\"\ntimeout_ms = 500\nretry_secs = 2\n[behaviour]\nenabled = false\n"
        )
    };
    let tf = start_front(&lab, "tfserving", &runtime("tf-serving"));
    let v2 = start_front(&lab, "kserve", &runtime("kserve-v2"));
    let tunnels = tunnel_names(40);
    let explained = |f: &Front| -> (usize, usize) {
        std::thread::sleep(Duration::from_millis(400));
        let text = std::fs::read_to_string(&f.events).unwrap_or_default();
        let blocked: Vec<&str> = text.lines().filter(|l| l.contains("tunnel")).collect();
        let remote = blocked
            .iter()
            .filter(|l| l.contains("remote runtime exfilguard:1"))
            .count();
        (remote, blocked.len())
    };
    // both protocols: tunnel names refused, benign names answered, verdicts from the runtime
    for f in [&tf, &v2] {
        for (_, n) in tunnels.iter().take(30) {
            assert_eq!(
                ask(f.addr, n, 16).metadata.response_code,
                ResponseCode::Refused,
                "{n}"
            );
        }
        assert_eq!(
            a_records(&ask(f.addr, "www.corp.test", 1)),
            vec!["10.1.0.10"]
        );
        let ok = f.metric("exfilguard_runtime_calls_total{result=\"ok\"}");
        assert!(ok >= 30.0, "runtime calls ok: {ok}");
        assert_eq!(
            f.metric("exfilguard_runtime_fallbacks_total{reason=\"transport\"}"),
            0.0
        );
        // records are rate limited per (client, zone): a burst of 20, then 1/s
        let (remote, blocked) = explained(f);
        assert!(
            blocked >= 20 && remote == blocked,
            "{remote} of {blocked} verdicts from the runtime"
        );
    }

    // kill -9 the runtime mid-run: every query is still answered and judged (embedded model)
    let mut answered = 0;
    let mut refused = 0;
    let mut max_latency = Duration::ZERO;
    let rest: Vec<&(String, String)> = tunnels.iter().skip(30).collect();
    for (i, (_, n)) in rest.iter().enumerate() {
        if i == rest.len() / 4 {
            let _ = server.0.kill();
            let _ = server.0.wait();
        }
        let t = Instant::now();
        let m = ask(tf.addr, n, 16);
        max_latency = max_latency.max(t.elapsed());
        answered += 1;
        if m.metadata.response_code == ResponseCode::Refused {
            refused += 1;
        }
    }
    let fallbacks = tf.metric("exfilguard_runtime_fallbacks_total{reason=\"transport\"}")
        + tf.metric("exfilguard_runtime_fallbacks_total{reason=\"timeout\"}");
    let backing_off = tf.metric("exfilguard_runtime_fallbacks_total{reason=\"backing_off\"}");
    eprintln!(
        "runtime killed after {} of {} queries: {answered} answered, {refused} refused, max latency {:?}, fallbacks {fallbacks} failed call(s) + {backing_off} while backing off",
        rest.len() / 4,
        rest.len(),
        max_latency
    );
    assert_eq!(answered, rest.len());
    assert!(
        refused as f64 >= 0.9 * rest.len() as f64,
        "{refused}/{} refused after the runtime died",
        rest.len()
    );
    assert!(fallbacks >= 1.0, "the failed call is counted");
    assert!(backing_off >= 1.0, "later names skip the dead runtime");
    assert!(
        max_latency < Duration::from_millis(1500),
        "a dead runtime costs at most one deadline: {max_latency:?}"
    );
    assert_eq!(
        a_records(&ask(tf.addr, "www.corp.test", 1)),
        vec!["10.1.0.10"]
    );
    let log = std::fs::read_to_string(lab.dir.join("tfserving.log")).unwrap();
    assert!(
        log.contains("model runtime failed"),
        "the fallback is logged:\n{log}"
    );
    drop(server);
}

/// Behaviour analytics at the front: a client leaking data in innocent dictionary words (each
/// name passes the per-name model) is caught by the information rate, and the domain is then
/// refused whole — at the front and, through the RPZ, at the recursor.
#[test]
fn behaviour_information_rate_convicts_a_slow_word_tunnel() {
    if !possible() {
        return;
    }
    let lab = start_powerdns(None, &[]);
    let f = start_front(
        &lab,
        "behaviour",
        &format!(
            "block_secs = 0\n[rpz]\nlisten = \"{}\"\n[behaviour]\ninfo_alarm_bytes = 300.0\n",
            lab.rpz
        ),
    );
    let words = [
        "apple", "river", "stone", "cloud", "green", "house", "light", "music", "north", "paper",
        "quiet", "sugar", "table", "water", "young", "zebra",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut refused_at = None;
    let mut model_refused = 0;
    for i in 0..200 {
        let w: Vec<&str> = (0..3)
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        let name = format!("{}.{}.{}.c2.test", w[0], w[1], w[2]);
        let m = ask(f.addr, &name, 1);
        if m.metadata.response_code == ResponseCode::Refused {
            // refused by a per-name verdict, or because the domain is now convicted
            if ask(f.addr, "www.c2.test", 1).metadata.response_code == ResponseCode::Refused {
                refused_at = Some(i);
                break;
            }
            model_refused += 1;
        } else {
            assert_eq!(a_records(&m), vec!["10.66.6.6"], "{name}");
        }
    }
    let at = refused_at.expect("the word tunnel was never convicted");
    eprintln!("word tunnel convicted after {at} queries ({model_refused} refused per name before)");
    assert!(f.metric("exfilguard_behaviour_alarms_total{kind=\"info_rate\"}") >= 1.0);
    std::thread::sleep(Duration::from_millis(500));
    let events = std::fs::read_to_string(&f.events).unwrap();
    assert!(
        events.contains("of unique subdomain data to c2.test"),
        "the refusal is explained by the information rate"
    );
    // the recursor follows through the RPZ
    let t = Instant::now();
    while ask(
        lab.recursor,
        &format!("probe{}.c2.test", t.elapsed().as_millis()),
        1,
    )
    .metadata
    .response_code
        != ResponseCode::NXDomain
    {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "RPZ did not carry the behaviour conviction"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        a_records(&ask(f.addr, "www.corp.test", 1)),
        vec!["10.1.0.10"]
    );
}
