//! End to end in the kernel: two network namespaces joined by veth (plus VXLAN over it), a real
//! DNS server (dnsmasq) and real tunnels (iodine, dns2tcp) on the far side, `exfilguard protect`
//! on the client side. Needs root and the Debian packages iodine, dns2tcp, dnsmasq-base,
//! dnsutils, tcpdump (`.ci/run` installs them); without them the tests fail loudly unless
//! EXFILGUARD_SKIP_KERNEL_TESTS=1 asks for an explicit skip.

use exfilguard_dns::capture::read_capture;
use exfilguard_dns::message::parse_message;
use exfilguard_dns::packet::{dns_payloads, LinkType};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOOLS: [&str; 8] = [
    "ip", "iodine", "iodined", "dns2tcpc", "dns2tcpd", "dnsmasq", "dig", "tcpdump",
];

fn possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = format!("root={root}, missing tools {missing:?}");
    if std::env::var("EXFILGUARD_SKIP_KERNEL_TESTS").as_deref() == Ok("1") {
        eprintln!("!!! SKIPPED namespace test: {why} (EXFILGUARD_SKIP_KERNEL_TESTS=1) !!!");
        return false;
    }
    panic!("namespace tests need root and tools: {why}; set EXFILGUARD_SKIP_KERNEL_TESTS=1 to skip explicitly");
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(st.success(), "failed: {cmd}");
}

/// Two namespaces, veth + VXLAN, a DNS server on ports 53 and 9953, tunnel servers.
struct Lab {
    id: String,
    children: Vec<Child>,
    pin_dir: String,
    work: std::path::PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let id = format!("{tag}{}", std::process::id() % 100000);
        let work = std::env::temp_dir().join(format!("eg-lab-{id}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let lab = Lab {
            pin_dir: format!("/sys/fs/bpf/exfilguard-test-{id}"),
            id,
            children: Vec::new(),
            work,
        };
        let (c, s) = (lab.cns(), lab.sns());
        let (vc, vs) = (format!("vc{}", lab.id), format!("vs{}", lab.id));
        sh(&format!(
            "ip netns add {c} && ip netns add {s} && ip link add {vc} type veth peer name {vs} && \
             ip link set {vc} netns {c} && ip link set {vs} netns {s}"
        ));
        sh(&format!(
            "ip -n {c} link set lo up && ip -n {c} addr add 10.77.0.1/24 dev {vc} && \
             ip -n {c} addr add fd77::1/64 dev {vc} nodad && ip -n {c} link set {vc} up && \
             ip -n {s} link set lo up && ip -n {s} addr add 10.77.0.2/24 dev {vs} && \
             ip -n {s} addr add 10.77.0.3/24 dev {vs} && ip -n {s} addr add 10.77.0.4/24 dev {vs} && \
             ip -n {s} addr add fd77::2/64 dev {vs} nodad && ip -n {s} link set {vs} up && \
             ip -n {c} link add vx0 type vxlan id 42 remote 10.77.0.2 local 10.77.0.1 dstport 4789 dev {vc} && \
             ip -n {c} addr add 10.88.0.1/24 dev vx0 && ip -n {c} link set vx0 up && \
             ip -n {s} link add vx0 type vxlan id 42 remote 10.77.0.1 local 10.77.0.2 dstport 4789 dev {vs} && \
             ip -n {s} addr add 10.88.0.2/24 dev vx0 && ip -n {s} link set vx0 up"
        ));
        lab
    }

    fn cns(&self) -> String {
        format!("egc{}", self.id)
    }
    fn sns(&self) -> String {
        format!("egs{}", self.id)
    }
    fn client_if(&self) -> String {
        format!("vc{}", self.id)
    }

    fn in_ns(ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{ns}")).args(args);
        c
    }

    fn spawn_server(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.work.join(format!("{}.log", args[0]))).unwrap();
        let child = Self::in_ns(&self.sns(), args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        self.children.push(child);
    }

    /// dnsmasq answering every *.example.test with 10.77.0.99 on 53 (v4, v6, VXLAN) and 9953.
    fn start_dns(&mut self) {
        for port in ["53", "9953"] {
            let args = [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.77.0.2",
                "--listen-address=fd77::2",
                "--listen-address=10.88.0.2",
                "--address=/example.test/10.77.0.99",
                "--pid-file=",
                "--user=root",
            ];
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.push(format!("--port={port}"));
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            self.spawn_server(&refs);
        }
    }

    fn start_tunnel_servers(&mut self) {
        self.spawn_server(&[
            "iodined",
            "-f",
            "-c",
            "-P",
            "exfilpass",
            "-l",
            "10.77.0.3",
            "-p",
            "53",
            "10.99.0.1",
            "t1.tunnel.test",
        ]);
        let conf = self.work.join("dns2tcpd.conf");
        std::fs::write(
            &conf,
            "listen = 10.77.0.4\nport = 53\nuser = root\nchroot = /tmp\ndomain = t2.tunnel.test\nresources = echo:127.0.0.1:7\n",
        )
        .unwrap();
        self.spawn_server(&["dns2tcpd", "-F", "-d", "1", "-f", conf.to_str().unwrap()]);
    }

    /// Captures everything the server side receives, to count tunnel bytes that left.
    fn start_capture(&mut self) -> std::path::PathBuf {
        let pcap = self.work.join("server.pcap");
        let vs = format!("vs{}", self.id);
        let child = Self::in_ns(
            &self.sns(),
            &[
                "tcpdump",
                "-U",
                "-n",
                "-s",
                "0",
                "-i",
                &vs,
                "-w",
                pcap.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        self.children.push(child);
        std::thread::sleep(Duration::from_millis(800));
        pcap
    }

    fn dig(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["dig", "+tries=1", "+time=2", "+short"];
        full.extend_from_slice(args);
        let out = Self::in_ns(&self.cns(), &full).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (
            out.status.success() && !text.is_empty() && !text.contains("timed out"),
            text,
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns del {} ; ip netns del {} ; rm -rf {}",
                    self.cns(),
                    self.sns(),
                    self.pin_dir
                ),
            ])
            .status();
    }
}

/// A running `exfilguard protect`, its JSON lines collected.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    fn start(lab: &Lab, extra: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_exfilguard");
        let iface = lab.client_if();
        let mut args = vec![bin, "protect", "--iface", &iface, "--pin-dir", &lab.pin_dir];
        args.extend_from_slice(extra);
        let mut child = Lab::in_ns(&lab.cns(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning exfilguard protect");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l2.lock().unwrap().push(v);
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if line.contains("protecting (") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("agent did not start");
        Agent { child, lines }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM and wait: the agent detaches and prints its summary.
    fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        self.lines()
    }
}

fn events_for(lines: &[Value], suffix: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .cloned()
        .collect()
}

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
    for what in ["tcp", "ipv6", "vxlan"] {
        let _ = what;
    }
    let blocked: Vec<_> = lines
        .iter()
        .filter(|e| e["decision"] == "blocked")
        .collect();
    assert!(
        blocked.iter().any(|e| e["transport"] == "tcp"),
        "no TCP conviction"
    );
    assert!(
        blocked.iter().any(|e| e["encap"] == "vxlan"),
        "no VXLAN conviction"
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

/// Hold → release round trip under load: 4 concurrent `dig -f` batches of unique long benign
/// names (each one held, classified, re-injected). Prints p50/p99 from the agent's summary;
/// asserts only that every query was answered (timing belongs to the notes, not to asserts).
#[test]
fn hold_release_round_trip_under_load() {
    if !possible() {
        return;
    }
    let mut lab = Lab::new("l");
    lab.start_dns();
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&lab, &[]);
    let per_batch = 250;
    let batches: Vec<std::path::PathBuf> = (0..4)
        .map(|b| {
            let f = lab.work.join(format!("batch{b}.txt"));
            let lines: String = (0..per_batch)
                .map(|i| format!("@10.77.0.2 +tries=1 +time=3 +short loadtestlonglabel{b}x{i}.example.test\n"))
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
