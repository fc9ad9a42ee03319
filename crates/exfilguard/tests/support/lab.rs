//! The namespace lab shared by the kernel tests (`netns.rs`, `evasion.rs`): two network
//! namespaces joined by veth (plus VXLAN over it), dnsmasq and tunnel servers on the far side,
//! `exfilguard protect` on the client side with its JSON lines collected. Included with
//! `#[path = "support/lab.rs"] mod lab;` (not from `support/mod.rs`, which every test crate
//! compiles); not every includer uses every item.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOOLS: [&str; 8] = [
    "ip", "iodine", "iodined", "dns2tcpc", "dns2tcpd", "dnsmasq", "dig", "tcpdump",
];

/// Root and every tool the full lab needs (tunnel servers and clients included); see
/// `possible_with`.
pub fn possible() -> bool {
    possible_with(&TOOLS)
}

/// Root and `tools` on PATH: true; otherwise a loud panic, or a loud skip (false) when
/// EXFILGUARD_SKIP_KERNEL_TESTS=1 asks for one.
pub fn possible_with(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<_> = tools
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

pub fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(st.success(), "failed: {cmd}");
}

/// Two namespaces, veth + VXLAN, a DNS server on ports 53 and 9953, tunnel servers.
pub struct Lab {
    pub id: String,
    pub children: Vec<Child>,
    pub pin_dir: String,
    pub work: std::path::PathBuf,
}

impl Lab {
    pub fn new(tag: &str) -> Self {
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

    pub fn cns(&self) -> String {
        format!("egc{}", self.id)
    }
    pub fn sns(&self) -> String {
        format!("egs{}", self.id)
    }
    pub fn client_if(&self) -> String {
        format!("vc{}", self.id)
    }

    pub fn in_ns(ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{ns}")).args(args);
        c
    }

    pub fn spawn_server(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.work.join(format!("{}.log", args[0]))).unwrap();
        let child = Self::in_ns(&self.sns(), args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        self.children.push(child);
    }

    /// A lab with its DNS server up, or `None` when the test cannot run here (said loudly by
    /// `possible`).
    pub fn with_dns(tag: &str) -> Option<Self> {
        if !possible() {
            return None;
        }
        let mut lab = Lab::new(tag);
        lab.start_dns();
        std::thread::sleep(Duration::from_millis(500));
        Some(lab)
    }

    /// dnsmasq answering every *.example.test with 10.77.0.99 on 53 (v4, v6, VXLAN) and 9953.
    pub fn start_dns(&mut self) {
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
                "--address=/tunnel.test/10.77.0.99",
                // every .com name fails: what a DGA bot's walk gets
                "--address=/com/",
                "--pid-file=",
                "--user=root",
            ];
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.push(format!("--port={port}"));
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            self.spawn_server(&refs);
        }
    }

    pub fn start_tunnel_servers(&mut self) {
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
    pub fn start_capture(&mut self) -> std::path::PathBuf {
        let pcap = self.work.join("server.pcap");
        let vs = format!("vs{}", self.id);
        let child = Self::in_ns(
            &self.sns(),
            &[
                "tcpdump",
                // packets reach the file as they cross the wire, not when a ring block retires (~1 s)
                "--immediate-mode",
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

    pub fn dig(&self, args: &[&str]) -> (bool, String) {
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
pub struct Agent {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    pub fn start(lab: &Lab, extra: &[&str]) -> Self {
        Self::start_env(lab, extra, &[])
    }

    /// `start` with settings in the agent's environment (`EXFILGUARD__SECTION__KEY`).
    pub fn start_env(lab: &Lab, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = env!("CARGO_BIN_EXE_exfilguard");
        let iface = lab.client_if();
        // the socket layer sees every namespace; a lab's agent judges its own only, so labs
        // running side by side do not judge each other's queries
        let mut args = vec![
            bin,
            "protect",
            "--iface",
            &iface,
            "--pin-dir",
            &lab.pin_dir,
            "--socket-scope",
            "netns",
        ];
        args.extend(
            extra
                .iter()
                .copied()
                .filter(|a| *a != "--default-convictions"),
        );
        let mut cmd = Lab::in_ns(&lab.cns(), &args);
        if !extra.contains(&"--default-convictions") {
            // a lab tunnel is one client: these tests are about blocking it host-wide, which
            // the default policy leaves to two distinct clients (tests/front_attacks.rs and
            // netns.rs `one_process_cannot_block_a_zone_for_others` test the default)
            cmd.env("EXFILGUARD__CONVICT__DOMAIN_CLIENTS", "1");
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
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
                if line.contains("protecting") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("agent did not start");
        Agent { child, lines }
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM and wait: the agent detaches and prints its summary.
    pub fn stop(mut self) -> Vec<Value> {
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

impl Drop for Agent {
    fn drop(&mut self) {
        // a failing test must not leave an agent running (stop() has already reaped it)
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn events_for(lines: &[Value], suffix: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .cloned()
        .collect()
}
