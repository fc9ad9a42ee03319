//! The encrypted-DNS policy of the cgroup sock_addr hooks (connect4/6, sendmsg4/6), on this
//! kernel: the real programs attached to a cgroup of their own, a client process moved into
//! it making real connect()/sendto() calls (no packet needs to leave: UDP connect sends
//! nothing, and a refusal comes before any routing). sock_addr programs have no
//! BPF_PROG_TEST_RUN, so this is the unit test of the classification. Needs root and python3.

mod common;

use common::kernel_tests_possible;
use exfilguard_dataplane::{Action, Dataplane, Event, Hook, KernelPolicy, LoadOptions, Mode};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

/// Runs each `proto family addr port op` line in one python3 process inside `cg`; returns
/// one result a line: "ok" or the errno name.
const CLIENT: &str = r#"
import errno, os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
for line in sys.argv[2:]:
    proto, fam, addr, port, op = line.split()
    f = socket.AF_INET6 if fam == "6" else socket.AF_INET
    t = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(f, t)
    s.settimeout(2)
    try:
        if op == "connect":
            s.connect((addr, int(port)))
        else:
            s.sendto(b"x", (addr, int(port)))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    s.close()
"#;

struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        let dir = root.join(format!("eg-encdns-test-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn client(cg: &Cgroup, ops: &[&str]) -> Vec<String> {
    let mut args = vec!["-c", CLIENT, cg.0.to_str().unwrap()];
    args.extend_from_slice(ops);
    let out = Command::new("python3")
        .args(&args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn stat(dp: &Dataplane, name: &str) -> u64 {
    dp.stats()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap()
}

fn net(s: &str) -> (IpAddr, u8) {
    let (a, p) = s.split_once('/').unwrap();
    (a.parse().unwrap(), p.parse().unwrap())
}

#[test]
fn connect_and_sendmsg_follow_the_sanctioned_resolver_policy() {
    if !kernel_tests_possible() {
        return;
    }
    assert!(
        Command::new("python3").arg("-V").output().is_ok(),
        "this test needs python3 (the client making the calls)"
    );
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        ..Default::default()
    })
    .expect("loading the BPF programs (verifier)");
    let cg = Cgroup::new();
    dp.attach_cgroup(&cg.0)
        .expect("attaching the sock_addr hooks");
    let (d, s) = dp
        .set_encrypted_dns_lists(
            &[
                net("192.0.2.53/32"),
                net("2001:db8::53/128"),
                net("203.0.113.0/24"),
            ],
            &[
                net("127.0.0.1/32"),
                net("198.51.100.53/32"),
                net("192.0.2.200/32"),
            ],
        )
        .unwrap();
    assert_eq!((d, s), (3, 3));
    let enforce = KernelPolicy {
        mode: Mode::Enforce,
        encrypted_dns: true,
        ..KernelPolicy::default()
    };
    dp.set_policy(&enforce).unwrap();

    let results = client(
        &cg,
        &[
            "udp 4 192.0.2.1 853 connect",    // DoQ port, any address: refused
            "tcp 4 127.0.0.2 853 connect",    // DoT, not sanctioned: refused
            "tcp 4 127.0.0.1 853 connect",    // DoT to a sanctioned resolver: connects (no server)
            "udp 4 192.0.2.53 443 connect",   // DoH endpoint: refused
            "tcp 4 203.0.113.9 443 connect",  // DoH endpoint by network: refused
            "udp 4 192.0.2.54 443 connect",   // ordinary HTTPS/QUIC elsewhere: untouched
            "udp 4 192.0.2.53 53 connect",    // plain DNS to a DoH resolver: inspected elsewhere
            "udp 4 192.0.2.2 853 sendto",     // unconnected UDP: sendmsg hook refuses
            "udp 6 2001:db8::53 443 connect", // IPv6 DoH endpoint: refused
            "udp 6 ::ffff:203.0.113.10 443 connect", // v4-mapped through an IPv6 socket: refused
            "udp 4 198.51.100.53 853 connect", // sanctioned DoQ: passes
        ],
    );
    assert_eq!(
        results,
        [
            "EPERM",
            "EPERM",
            "ECONNREFUSED",
            "EPERM",
            "EPERM",
            "ok",
            "ok",
            "EPERM",
            "EPERM",
            "EPERM",
            "ok"
        ],
        "{results:?}"
    );
    assert_eq!(stat(&dp, "encdns_denied"), 7);
    assert_eq!(stat(&dp, "encdns_sanctioned"), 2);
    let evs: Vec<Event> = dp.drain_events().unwrap();
    assert_eq!(evs.len(), 7, "{evs:#?}");
    for ev in &evs {
        assert!(ev.encrypted_dns(), "{ev:?}");
        assert_eq!(ev.action, Action::Block);
        let p = ev.process.as_ref().expect("process named");
        assert!(p.thread.starts_with("python"), "{p:?}");
        assert!(p.tgid != 0 && p.cgroup_id != 0, "{p:?}");
        assert_eq!(ev.attempts(), 1);
    }
    let summary: Vec<(String, u16, &str, Hook, &str)> = evs
        .iter()
        .map(|e| {
            (
                e.dst.to_string(),
                e.dport,
                e.transport,
                e.hook,
                e.reasons[0],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("192.0.2.1".into(), 853, "udp", Hook::Connect, "dot_port"),
            ("127.0.0.2".into(), 853, "tcp", Hook::Connect, "dot_port"),
            (
                "192.0.2.53".into(),
                443,
                "udp",
                Hook::Connect,
                "doh_endpoint"
            ),
            (
                "203.0.113.9".into(),
                443,
                "tcp",
                Hook::Connect,
                "doh_endpoint"
            ),
            ("192.0.2.2".into(), 853, "udp", Hook::Sendmsg, "dot_port"),
            (
                "2001:db8::53".into(),
                443,
                "udp",
                Hook::Connect,
                "doh_endpoint"
            ),
            (
                "::ffff:203.0.113.10".into(),
                443,
                "udp",
                Hook::Connect,
                "doh_endpoint"
            ),
        ]
    );

    // a retry loop: one ring record per (process, destination, port, transport) and second;
    // the kernel counts the rest (here the same destination by connect and by sendto, or as
    // IPv4 and v4-mapped IPv6, is one key)
    let quiet0 = stat(&dp, "encdns_quiet");
    let ops = vec!["udp 4 192.0.2.7 853 connect"; 200];
    let results = client(&cg, &ops);
    assert!(results.iter().all(|r| r == "EPERM"), "{results:?}");
    let evs = dp.drain_events().unwrap();
    assert!(
        (1..=3).contains(&evs.len()),
        "{} records for 200 attempts",
        evs.len()
    );
    assert!(stat(&dp, "encdns_quiet") - quiet0 >= 197);

    // monitor: let through, reported
    dp.set_policy(&KernelPolicy {
        mode: Mode::Monitor,
        ..enforce.clone()
    })
    .unwrap();
    let results = client(
        &cg,
        &[
            "udp 4 192.0.2.1 853 connect",
            "udp 4 192.0.2.53 443 connect",
        ],
    );
    assert_eq!(results, ["ok", "ok"]);
    let evs = dp.drain_events().unwrap();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.action == Action::Report), "{evs:?}");
    assert_eq!(stat(&dp, "encdns_reported"), 2);

    // off: nothing recognised
    dp.set_policy(&KernelPolicy {
        encrypted_dns: false,
        ..enforce.clone()
    })
    .unwrap();
    let results = client(&cg, &["udp 4 192.0.2.1 853 connect"]);
    assert_eq!(results, ["ok"]);
    assert!(dp.drain_events().unwrap().is_empty());

    // ports are the policy's: DoT on 8853 once listed, 853 no longer
    dp.set_policy(&KernelPolicy {
        encdns_ports: vec![8853],
        ..enforce.clone()
    })
    .unwrap();
    let results = client(
        &cg,
        &[
            "udp 4 192.0.2.1 8853 connect",
            "udp 4 192.0.2.1 853 connect",
        ],
    );
    assert_eq!(results, ["EPERM", "ok"]);

    // lists are replaced, not merged: the old DoH endpoint passes, the new one is refused
    dp.set_policy(&enforce).unwrap();
    dp.set_encrypted_dns_lists(&[net("192.0.2.99/32")], &[])
        .unwrap();
    let results = client(
        &cg,
        &[
            "udp 4 192.0.2.53 443 connect",
            "udp 4 192.0.2.99 443 connect",
        ],
    );
    assert_eq!(results, ["ok", "EPERM"]);
    dp.detach_all();
}
