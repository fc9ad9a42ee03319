//! `exfilguard demo` (root): a throw-away lab that shows the product working in a minute.
//!
//! Three network namespaces — a client, a resolver (dnsmasq, which also routes) and a "C2"
//! server (iodined, dns2tcpd) — joined by veth pairs. `exfilguard protect` guards the client's
//! interface; on the client run ordinary lookups, an iodine and a dns2tcp tunnel through the
//! resolver, and a DGA-style walk of random names. The terminal shows, live, what the kernel
//! and the brain did with every sender's queries and why; at the end a summary table, then
//! every namespace, process and pin is removed (also on Ctrl-C).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 40)]
    secs: u64,
    /// One line per update instead of redrawing the screen (also when stdout is not a terminal).
    #[arg(long)]
    plain: bool,
    /// Report only (monitor mode): the tunnels get through, and the table shows what would
    /// have been stopped.
    #[arg(long)]
    monitor: bool,
    /// `json`: print the final summary as JSON on stdout (for scripts and tests), no live table.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::Format::Table)]
    format: crate::Format,
    /// The old name of `--format json`.
    #[arg(long, hide = true)]
    json: bool,
}

const TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "dnsutils"),
    ("nslookup", "dnsutils"),
    ("iodine", "iodine"),
    ("iodined", "iodine"),
    ("dns2tcpc", "dns2tcp"),
    ("dns2tcpd", "dns2tcp"),
];

/// The lab: namespaces, the processes in them, the pin directory. Dropping it removes all.
struct Lab {
    id: String,
    work: std::path::PathBuf,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("egdemo-{role}-{}", self.id)
    }

    fn pin_dir(&self) -> String {
        format!("/sys/fs/bpf/exfilguard-demo-{}", self.id)
    }

    fn client_if(&self) -> String {
        format!("egd{}c", self.id)
    }

    fn cmd(&self, role: &str, args: &[&str]) -> Command {
        let mut c = in_ns(&self.ns(role));
        c.args(args);
        c
    }

    fn spawn(&mut self, role: &str, label: &str, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.work.join(format!("{label}.log")))?;
        let child = self
            .cmd(role, args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args[0]))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    fn create() -> Result<Self> {
        let id = format!("{}", std::process::id() % 100_000);
        let work = std::env::temp_dir().join(format!("exfilguard-demo-{id}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let lab = Lab {
            id,
            work,
            children: Vec::new(),
        };
        let (c, r, s) = (lab.ns("client"), lab.ns("resolver"), lab.ns("c2"));
        let (ci, ri, rs, si) = (
            lab.client_if(),
            format!("egd{}r", lab.id),
            format!("egd{}u", lab.id),
            format!("egd{}s", lab.id),
        );
        // client 10.201.0.1 — 10.201.0.2 resolver 10.202.0.1 — 10.202.0.2/.3 C2
        let script = format!(
            "set -e
             ip netns add {c}; ip netns add {r}; ip netns add {s}
             ip link add {ci} type veth peer name {ri}; ip link set {ci} netns {c}; ip link set {ri} netns {r}
             ip link add {rs} type veth peer name {si}; ip link set {rs} netns {r}; ip link set {si} netns {s}
             ip -n {c} link set lo up; ip -n {r} link set lo up; ip -n {s} link set lo up
             ip -n {c} addr add 10.201.0.1/24 dev {ci}; ip -n {c} link set {ci} up
             ip -n {c} route add default via 10.201.0.2
             ip -n {r} addr add 10.201.0.2/24 dev {ri}; ip -n {r} link set {ri} up
             ip -n {r} addr add 10.202.0.1/24 dev {rs}; ip -n {r} link set {rs} up
             ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1
             ip -n {s} addr add 10.202.0.2/24 dev {si}; ip -n {s} addr add 10.202.0.3/24 dev {si}
             ip -n {s} link set {si} up; ip -n {s} route add default via 10.202.0.1"
        );
        let st = Command::new("sh").args(["-c", &script]).status()?;
        if !st.success() {
            bail!("creating the lab's namespaces failed (see the messages above)");
        }
        Ok(lab)
    }

    fn start_servers(&mut self) -> Result<()> {
        // the resolver: ordinary names answered locally, the two tunnel zones delegated to C2
        self.spawn(
            "resolver",
            "dnsmasq",
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.201.0.2",
                "--server=/t1.tunnel.demo/10.202.0.2",
                "--server=/t2.tunnel.demo/10.202.0.3",
                "--address=/#/10.201.0.99",
                "--cache-size=0",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
            ],
        )?;
        self.spawn(
            "c2",
            "iodined",
            &[
                "iodined",
                "-f",
                "-c",
                "-P",
                "demopass",
                "-l",
                "10.202.0.2",
                "-p",
                "53",
                "10.99.0.1",
                "t1.tunnel.demo",
            ],
        )?;
        let conf = self.work.join("dns2tcpd.conf");
        std::fs::write(
            &conf,
            "listen = 10.202.0.3\nport = 53\nuser = root\nchroot = /tmp\n\
             domain = t2.tunnel.demo\nresources = secrets:127.0.0.1:9\n",
        )?;
        let conf = conf.to_string_lossy().to_string();
        self.spawn(
            "c2",
            "dns2tcpd",
            &["dns2tcpd", "-F", "-d", "1", "-f", &conf],
        )
    }

    fn start_clients(&mut self) -> Result<()> {
        self.spawn(
            "client",
            "iodine",
            &[
                "iodine",
                "-f",
                "-r",
                "-P",
                "demopass",
                "10.201.0.2",
                "t1.tunnel.demo",
            ],
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns del {} ; ip netns del {} ; ip netns del {} ; rm -rf {} {}",
                    self.ns("client"),
                    self.ns("resolver"),
                    self.ns("c2"),
                    self.pin_dir(),
                    self.work.display()
                ),
            ])
            .stderr(Stdio::null())
            .status();
    }
}

/// What one sender (process) got: decisions counted, the latest reason.
#[derive(Default, Clone, serde::Serialize)]
struct Row {
    allowed: u64,
    held: u64,
    released: u64,
    blocked: u64,
    last_name: String,
    why: String,
}

#[derive(Default, serde::Serialize)]
struct Tally {
    rows: BTreeMap<String, Row>,
    events: u64,
    convicted: Vec<String>,
}

impl Tally {
    fn add(&mut self, v: &Value) {
        // the agent's closing summary line is not a decision
        if v.get("decision").is_none() {
            return;
        }
        self.events += 1;
        let who = v["process"]["comm"]
            .as_str()
            .or_else(|| v["comm"].as_str())
            .unwrap_or(if v["event"] == "response" {
                "(responses, XDP)"
            } else {
                "unattributed"
            })
            .to_string();
        let row = self.rows.entry(who).or_default();
        let decision = v["decision"].as_str().unwrap_or("");
        let action = v["action"].as_str().unwrap_or("");
        let n = v["count"].as_u64().unwrap_or(1);
        match decision {
            "reported" if action == "pass" => row.allowed += n,
            "released" => {
                row.held += 1;
                row.released += 1;
                row.allowed += 1;
            }
            "blocked" | "dropped" | "quarantined" => {
                if action == "hold" {
                    row.held += 1;
                }
                row.blocked += n;
            }
            _ => {}
        }
        let name = v["name"].as_str().unwrap_or("").to_string();
        if decision != "reported" {
            // the reason a domain was convicted says more than the blocklist hits after it
            let why = explain(v);
            if row.why.is_empty() || !why.starts_with("kernel blocklist") {
                row.why = why;
            }
            if decision == "blocked" && action == "hold" {
                if let Some(d) = v["registered_domain"].as_str() {
                    if !self.convicted.iter().any(|c| c == d) {
                        self.convicted.push(d.to_string());
                    }
                }
            }
        }
        row.last_name = name;
    }
}

/// A one-line reason: the kernel's, the model's verdict, or the behaviour alarm.
fn explain(v: &Value) -> String {
    let action = v["action"].as_str().unwrap_or("");
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let verdict = &v["verdict"];
    let model = verdict["class"].as_str().map(|c| {
        let why = verdict["reasons"][0].as_str().unwrap_or("");
        format!(
            "model: {c} ({:.2}) {why}",
            verdict["score"].as_f64().unwrap_or(0.0)
        )
    });
    match (action, model) {
        ("block", _) => match v["registered_domain"].as_str() {
            Some(d) => format!("kernel blocklist: {d} convicted"),
            None => format!("kernel blocklist ({})", reasons.join(",")),
        },
        (_, Some(m)) if !reasons.is_empty() => format!("{m} (held: {})", reasons.join(",")),
        (_, Some(m)) => m,
        _ => reasons.join(","),
    }
}

/// "3: tunnel.demo, a.com, b.com" — at most four names, so the line stays one line.
fn convicted_line(c: &[String]) -> String {
    match c.len() {
        0 => "-".into(),
        1..=4 => format!("{}: {}", c.len(), c.join(", ")),
        n => format!("{n}: {}, …", c[..4].join(", ")),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}

fn table(t: &Tally) -> String {
    let mut tab = comfy_table::Table::new();
    tab.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(vec![
            "sender",
            "allowed",
            "held",
            "released",
            "blocked",
            "last name",
            "why",
        ]);
    for (who, r) in &t.rows {
        tab.add_row(vec![
            who.clone(),
            r.allowed.to_string(),
            r.held.to_string(),
            r.released.to_string(),
            r.blocked.to_string(),
            cut(&r.last_name, 38),
            cut(&r.why, 64),
        ]);
    }
    tab.to_string()
}

fn possible() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root: it creates network namespaces and loads eBPF programs");
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let mut pkgs = missing.clone();
        pkgs.dedup();
        bail!(
            "the demo runs real DNS servers and tunnels: apt-get install {}",
            pkgs.join(" ")
        );
    }
    Ok(())
}

/// A command run in the network namespace `ns` (nsenter, not `ip netns exec`, which remounts
/// /sys and hides the pinned maps).
fn in_ns(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}"));
    c
}

/// Ordinary lookups from `dig`, a few a second, until `stop`.
fn benign_loop(lab_ns: String, stop: Arc<AtomicBool>) {
    let names = [
        "www.wikipedia.org",
        "mail.google.com",
        "api.github.com",
        "cdn.jsdelivr.net",
        "login.microsoftonline.com",
        "www.debian.org",
        "static.xx.fbcdn.net",
        "news.ycombinator.com",
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let _ = in_ns(&lab_ns)
            .args(["dig", "+tries=1", "+time=1", "+short", "@10.201.0.2"])
            .arg(names[i % names.len()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// dns2tcp's client asking the C2 server for its resources, as an operator does before opening
/// a channel; every few seconds, so the table shows it keep trying. Its output goes to
/// `dns2tcpc.log`: the resource name there means the tunnel got through.
fn dns2tcp_loop(lab_ns: String, log: std::path::PathBuf, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(out) = in_ns(&lab_ns)
            .args([
                "timeout",
                "4",
                "dns2tcpc",
                "-z",
                "t2.tunnel.demo",
                "10.201.0.2",
            ])
            .stdin(Stdio::null())
            .output()
        {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                let _ = f.write_all(&out.stdout);
                let _ = f.write_all(&out.stderr);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A DGA-style walk: random-looking .com names, a burst every few seconds, from `nslookup`
/// (so the table tells it apart from the ordinary lookups `dig` makes).
fn dga_loop(lab_ns: String, stop: Arc<AtomicBool>) {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..6 {
            let mut name = String::new();
            for _ in 0..14 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                name.push((b'a' + (seed % 26) as u8) as char);
            }
            name.push_str(".com");
            let _ = in_ns(&lab_ns)
                .args(["nslookup", "-timeout=1", "-retry=0", &name, "10.201.0.2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let json = args.json || args.format == crate::Format::Json;
    possible()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    let live = !args.plain && !json && std::io::stdout().is_terminal();
    let say = |s: &str| {
        if json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    say(
        "exfilguard demo: creating namespaces client ─ resolver (dnsmasq) ─ c2 (iodined, dns2tcpd)",
    );
    let mut lab = Lab::create()?;
    lab.start_servers()?;
    std::thread::sleep(Duration::from_millis(500));

    // the agent, in the client namespace, reporting every query (benign ones as "allowed")
    let exe = std::env::current_exe().context("locating the exfilguard binary")?;
    let exe = exe.to_string_lossy().to_string();
    let iface = lab.client_if();
    let pin = lab.pin_dir();
    let mut agent_args = vec![
        exe.as_str(),
        "protect",
        "--iface",
        &iface,
        "--pin-dir",
        &pin,
        "--report-all",
        // the lab's agent judges the lab's namespace, not the host around it
        "--socket-scope",
        "netns",
    ];
    if args.monitor {
        agent_args.push("--monitor");
    }
    let mut agent = lab
        .cmd("client", &agent_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting exfilguard protect")?;
    let (tx, rx) = mpsc::channel::<Value>();
    let out = agent.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let err = agent.stderr.take().expect("piped");
    let agent_log = lab.work.join("agent.log");
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(agent_log).ok();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(f) = &mut log {
                let _ = writeln!(f, "{line}");
            }
            if line.contains("protecting") {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = agent.kill();
        let log = std::fs::read_to_string(lab.work.join("agent.log")).unwrap_or_default();
        bail!("the agent did not start:\n{log}");
    }
    say(&format!(
        "agent protecting {iface} ({}); starting ordinary lookups, an iodine tunnel, a dns2tcp tunnel and a DGA-style walk for {} s",
        if args.monitor { "monitor mode: nothing is stopped" } else { "enforce mode" },
        args.secs
    ));
    lab.start_clients()?;
    let benign = {
        let (ns, stop) = (lab.ns("client"), stop.clone());
        std::thread::spawn(move || benign_loop(ns, stop))
    };
    let dga = {
        let (ns, stop) = (lab.ns("client"), stop.clone());
        std::thread::spawn(move || dga_loop(ns, stop))
    };
    let dns2tcp = {
        let (ns, log, stop) = (
            lab.ns("client"),
            lab.work.join("dns2tcpc.log"),
            stop.clone(),
        );
        std::thread::spawn(move || dns2tcp_loop(ns, log, stop))
    };

    let mut tally = Tally::default();
    let t0 = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(5);
    while t0.elapsed() < Duration::from_secs(args.secs) && !stop.load(Ordering::Relaxed) {
        while let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            tally.add(&v);
            if last_draw.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        if agent.try_wait()?.is_some() {
            bail!(
                "the agent exited early:\n{}",
                std::fs::read_to_string(lab.work.join("agent.log")).unwrap_or_default()
            );
        }
        if last_draw.elapsed() >= Duration::from_secs(1) && !json {
            last_draw = Instant::now();
            let head = format!(
                "t = {:>3} s   events {}   convicted: {}",
                t0.elapsed().as_secs(),
                tally.events,
                convicted_line(&tally.convicted)
            );
            if live {
                print!(
                    "\x1b[2J\x1b[H{head}\n{}\n(Ctrl-C ends the demo early)\n",
                    table(&tally)
                );
            } else {
                println!("{head}");
            }
            let _ = std::io::stdout().flush();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = benign.join();
    let _ = dga.join();
    let _ = dns2tcp.join();
    // tunnel clients: did they get through?
    let tunnels: Vec<(String, bool)> = ["iodine", "dns2tcpc"]
        .iter()
        .map(|t| {
            let log =
                std::fs::read_to_string(lab.work.join(format!("{t}.log"))).unwrap_or_default();
            let up = match *t {
                "iodine" => log.contains("Connection setup complete"),
                _ => log.contains("secrets"),
            };
            (t.to_string(), up)
        })
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && agent.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    while let Ok(v) = rx.try_recv() {
        tally.add(&v);
    }

    if json {
        let summary = serde_json::json!({
            "senders": tally.rows,
            "events": tally.events,
            "convicted": tally.convicted,
            "tunnels_established": tunnels.iter().filter(|(_, up)| *up).map(|(t, _)| t.clone()).collect::<Vec<_>>(),
            "monitor": args.monitor,
        });
        println!("{summary}");
    } else {
        if live {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "exfilguard demo: summary after {} s",
            t0.elapsed().as_secs()
        );
        println!("{}", table(&tally));
        for (t, up) in &tunnels {
            println!(
                "  {t:<9} tunnel {}",
                if *up {
                    "ESTABLISHED"
                } else {
                    "never established"
                }
            );
        }
        println!(
            "  convicted domains: {}",
            if tally.convicted.is_empty() {
                "none".into()
            } else {
                tally.convicted.join(", ")
            }
        );
        println!("removing the lab (namespaces, processes, pinned maps)");
    }
    drop(lab);
    Ok(())
}
