//! ns/packet of the tc egress program through BPF_PROG_TEST_RUN (the kernel times the runs;
//! JIT on): non-DNS, benign DNS, suspicious DNS (held: ring-buffer copy of the frame) and
//! blocklisted DNS; the socket-layer program (cgroup_skb egress, the cost every local send
//! pays); plus the XDP response path. Each case runs at least 1 M times, in 5 rounds;
//! the median round is reported. Then the cgroup sock_addr hooks, which have no
//! BPF_PROG_TEST_RUN: connect() of a UDP socket timed with the hooks attached to a cgroup this
//! process moves into, encrypted-DNS policy off and on (what a non-DNS connect pays), and
//! socket() + close() (the owner written into the new socket's storage). Needs root.
//!
//! cargo bench -p exfilguard-dataplane --bench prog_test_run

use exfilguard_dataplane::{Dataplane, KernelPolicy, LoadOptions};
use exfilguard_dns::message::build_query;
use exfilguard_dns::packet::build::{tcp_dns_frame, udp_frame};
use exfilguard_dns::DnsName;
use std::net::SocketAddr;

const TOTAL: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    build_query(&DnsName::parse(name).unwrap(), qtype, 7).unwrap()
}

/// `m` with ARCOUNT 1 and an OPT record carrying the COOKIE option `ck`.
fn with_cookie(mut m: Vec<u8>, ck: &[u8]) -> Vec<u8> {
    m[11] = 1;
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend_from_slice(&(ck.len() as u16 + 4).to_be_bytes());
    m.extend_from_slice(&[0, 10]);
    m.extend_from_slice(&(ck.len() as u16).to_be_bytes());
    m.extend_from_slice(ck);
    m
}

/// An answer to www.example.com A with an A record, an NS record and the cookie `ck`.
fn cookie_answer(ck: &[u8]) -> Vec<u8> {
    let mut m = query("www.example.com", 1);
    m[2] |= 0x80;
    m[7] = 1;
    m[9] = 1;
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    m.extend_from_slice(&[
        0xc0, 12, 0, 2, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'n', b's', b'1', 0xc0, 12,
    ]);
    with_cookie(m, ck)
}

/// Median ns/packet over ROUNDS rounds of TOTAL runs; `batch` < TOTAL splits each round so the
/// ring buffer can be drained between batches (held packets each produce a 2.4 KiB event).
fn measure(dp: &Dataplane, frame: &[u8], batch: u32, which: u8) -> (f64, i32) {
    let run = |n| {
        match which {
            1 => dp.test_run_xdp(frame, n),
            2 => dp.test_run_noop(frame, n),
            3 => dp.test_run_sock(frame, n),
            _ => dp.test_run_tc(frame, n),
        }
        .expect("test run")
    };
    // the agent's part, once: a query held for its new carrier goes out and its carrier is
    // pinned (what a kept carrier costs is measured, not its first hold)
    run(1);
    for e in dp.drain_events().expect("drain") {
        dp.pin_carrier(&e).expect("pin");
    }
    let mut rounds = Vec::new();
    let mut verdict = 0;
    for _ in 0..ROUNDS {
        let mut ns = 0.0;
        let mut done = 0;
        while done < TOTAL {
            let n = batch.min(TOTAL - done);
            let (v, d) = run(n);
            verdict = v;
            ns += d.as_nanos() as f64 * n as f64;
            done += n;
            if batch < TOTAL {
                dp.drain_events().expect("drain");
                dp.drain_observations().expect("drain");
            }
        }
        rounds.push(ns / TOTAL as f64);
    }
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (rounds[ROUNDS / 2], verdict)
}

fn main() {
    // criterion-style flags (--bench) are accepted and ignored
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("!!! prog_test_run bench needs root (BPF_PROG_TEST_RUN); not run !!!");
        return;
    }
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        persist: false,
        ..Default::default()
    })
    .expect("load");
    dp.block_domain("evil-c2.net").unwrap();
    let c = sa("10.0.0.1:40000");
    let tunnel = "paaaafbhb3vhdf5cqhwytuoz3ng2fzx4ugwlj3o0gaqoqkbgj4pu.t1.tunnel.example.com";
    let mut nx = query("r1.victim.example", 1);
    nx[2] |= 0x80;
    nx[3] = 0x80; // NOERROR response
    let ck: Vec<u8> = (1..=24).collect(); // client 8 + server 16 (RFC 9018)
                                          // the query the answer below answers (XDP learns only answers to pending queries): the
                                          // answer's first run learns, the rest walk it and find it answered
    let asked = udp_frame(
        c,
        sa("10.0.0.2:53"),
        &with_cookie(query("www.example.com", 1), &ck[..8]),
    );
    dp.test_run_tc(&asked, 1).expect("test run");
    dp.drain_events().expect("drain");
    let cases: Vec<(&str, Vec<u8>, u32, u8)> = vec![
        (
            "harness: empty tc program (UDP/443)",
            udp_frame(c, sa("10.0.0.2:443"), &[0x16; 64]),
            TOTAL,
            2,
        ),
        (
            "non-DNS (UDP/443, 64 B payload)",
            udp_frame(c, sa("10.0.0.2:443"), &[0x16; 64]),
            TOTAL,
            0,
        ),
        (
            "non-DNS (TCP/443 segment)",
            tcp_dns_frame(c, sa("10.0.0.2:443"), &[0x17; 200]),
            TOTAL,
            0,
        ),
        (
            "benign DNS (www.example.com A)",
            udp_frame(c, sa("10.0.0.2:53"), &query("www.example.com", 1)),
            TOTAL,
            0,
        ),
        (
            "blocklisted DNS (www.evil-c2.net)",
            udp_frame(c, sa("10.0.0.2:53"), &query("www.evil-c2.net", 1)),
            TOTAL,
            0,
        ),
        (
            "suspicious DNS, held (73-char tunnel name)",
            udp_frame(c, sa("10.0.0.2:53"), &query(tunnel, 16)),
            2000,
            0,
        ),
        (
            "benign DNS over TCP, 5 messages in one segment",
            {
                // one segment: the first message, then four more appended (IPv4 length fixed)
                let q = query("www.example.com", 1);
                let mut f = tcp_dns_frame(c, sa("10.0.0.2:53"), &q);
                for _ in 0..4 {
                    f.extend_from_slice(&(q.len() as u16).to_be_bytes());
                    f.extend_from_slice(&q);
                }
                let ip_len = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&ip_len.to_be_bytes());
                f
            },
            TOTAL,
            0,
        ),
        (
            "socket layer: non-DNS (UDP/443)",
            udp_frame(c, sa("10.0.0.2:443"), &[0x16; 64]),
            TOTAL,
            3,
        ),
        (
            "socket layer: benign DNS",
            udp_frame(c, sa("10.0.0.2:53"), &query("www.example.com", 1)),
            TOTAL,
            3,
        ),
        (
            "socket layer: suspicious DNS, held",
            udp_frame(c, sa("10.0.0.2:53"), &query(tunnel, 16)),
            2000,
            3,
        ),
        (
            "XDP: DNS response (NOERROR)",
            udp_frame(sa("10.0.0.2:53"), c, &nx),
            TOTAL,
            1,
        ),
        (
            "XDP: answer with A, NS and OPT cookie records (walked to the cookie, checked)",
            udp_frame(sa("10.0.0.2:53"), c, &cookie_answer(&ck)),
            TOTAL,
            1,
        ),
        (
            "benign DNS echoing that server cookie (carrier pinned)",
            udp_frame(
                c,
                sa("10.0.0.2:53"),
                &with_cookie(query("www.example.com", 1), &ck),
            ),
            TOTAL,
            0,
        ),
    ];
    println!("| path | verdict | ns/packet (median of {ROUNDS} × {TOTAL}) |");
    println!("|---|---|---|");
    for (what, frame, batch, which) in cases {
        let (ns, v) = measure(&dp, &frame, batch, which);
        println!("| {what} | {v} | {ns:.1} |");
    }
    // behaviour analytics on: passed queries also go to the observation ring (~0.4 KiB each)
    dp.set_policy(&KernelPolicy {
        observe: true,
        ..Default::default()
    })
    .unwrap();
    let benign = udp_frame(c, sa("10.0.0.2:53"), &query("www.example.com", 1));
    let (ns, v) = measure(&dp, &benign, 5000, 0);
    println!("| benign DNS, observed (behaviour analytics on) | {v} | {ns:.1} |");
    connect_cost(&mut dp);
}

/// ns per connect() of one UDP socket (re-connected in a loop), median of ROUNDS rounds.
fn connects(fd: i32, to: SocketAddr, n: u32) -> f64 {
    let SocketAddr::V4(a) = to else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let t = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: a valid socket and a sockaddr_in of the length passed.
        unsafe {
            libc::connect(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// ns per socket(2) + close(2) of a UDP socket, median of ROUNDS rounds: the socket-creation
/// hook writes the owner into the new socket's storage.
fn sockets(n: u32) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: plain socket(2), closed at once.
        unsafe { libc::close(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// The encrypted-DNS policy's cost at connect(): this process moves into a cgroup of its own
/// with the sock_addr hooks attached; configurations alternate round by round.
fn connect_cost(dp: &mut Dataplane) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(root) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
    }) else {
        println!("(no cgroup2 mount: connect() cost not measured)");
        return;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let cg = root.join(format!("eg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    // the shipped list's size: ~100 resolver addresses
    let doh: Vec<(std::net::IpAddr, u8)> = (0..100u8)
        .map(|i| (std::net::IpAddr::from([198, 18, 0, i]), 32))
        .collect();
    dp.set_encrypted_dns_lists(&doh, &[("198.18.1.1".parse().unwrap(), 32)])
        .unwrap();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    const N: u32 = 200_000;
    let web = sa("192.0.2.54:443"); // HTTPS/QUIC, not a resolver: the non-DNS path
    let dot_ok = sa("198.18.1.1:853"); // DoT to a sanctioned resolver: both tries looked up
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("connect(), no exfilguard hooks attached", vec![]),
        (
            "connect() to UDP/443, hooks attached, encrypted_dns off",
            vec![],
        ),
        (
            "connect() to UDP/443 (not a resolver), encrypted_dns on",
            vec![],
        ),
        (
            "connect() to UDP/853, sanctioned resolver, encrypted_dns on",
            vec![],
        ),
        ("socket() + close(), no exfilguard hooks attached", vec![]),
        ("socket() + close(), hooks attached", vec![]),
    ];
    let on = KernelPolicy {
        encrypted_dns: true,
        ..Default::default()
    };
    let off = KernelPolicy::default();
    for _ in 0..ROUNDS {
        dp.detach_all();
        rows[0].1.push(connects(fd, web, N));
        rows[4].1.push(sockets(N));
        dp.attach_cgroup(&cg).unwrap();
        rows[5].1.push(sockets(N));
        dp.set_policy(&off).unwrap();
        rows[1].1.push(connects(fd, web, N));
        dp.set_policy(&on).unwrap();
        rows[2].1.push(connects(fd, web, N));
        rows[3].1.push(connects(fd, dot_ok, N));
    }
    dp.set_policy(&off).unwrap();
    let tcp = tcp_cost(dp, &cg);
    dp.detach_all();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    let back = root.join(&own).join("cgroup.procs");
    let _ = std::fs::write(back, std::process::id().to_string());
    let _ = std::fs::remove_dir(&cg);
    println!();
    println!("| sock_addr / sock_create hook path | ns per call (median of {ROUNDS} × {N}) |");
    println!("|---|---|");
    for (what, mut v) in rows {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("| {what} | {:.1} |", v[ROUNDS / 2]);
    }
    println!();
    println!(
        "| bulk TCP over loopback, 16 KiB writes | ns/KiB (median of {ROUNDS} × {TCP_MIB} MiB) |"
    );
    println!("|---|---|");
    for (what, mut v) in tcp {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("| {what} | {:.1} |", v[ROUNDS / 2]);
    }
}

const TCP_MIB: usize = 256;

/// ns per KiB of one loopback TCP stream of TCP_MIB MiB (16 KiB writes; the reader drains).
fn tcp_send(to: SocketAddr, fill: &[u8]) -> f64 {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(to).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..TCP_MIB * 64 {
        c.write_all(fill).unwrap();
    }
    drop(c);
    t.elapsed().as_nanos() as f64 / (TCP_MIB * 1024) as f64
}

/// What a bulk TCP sender off port 53 pays at the socket layer (the stream framing follower
/// of `tcp_flow`): hooks detached, then attached, for a stream whose first two bytes are zero
/// (never followed), random bytes (a frame step per ~32 KiB) and a run of 0x01 bytes (a step
/// per 259 bytes). Rounds alternate the configurations.
fn tcp_cost(dp: &mut Dataplane, cg: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = vec![0u8; 1 << 16];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let mut zero = vec![0u8; 16 << 10];
    zero[2] = 1;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..16 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let ones = vec![1u8; 16 << 10];
    let kinds = [
        ("zero length first (not followed)", &zero),
        ("random bytes (followed)", &random),
        ("0x01 bytes (a frame per 259 bytes)", &ones),
    ];
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (k, _) in &kinds {
        rows.push((format!("{k}, no hooks"), vec![]));
        rows.push((format!("{k}, socket layer attached"), vec![]));
    }
    for _ in 0..ROUNDS {
        for (i, (_, fill)) in kinds.iter().enumerate() {
            dp.detach_all();
            rows[2 * i].1.push(tcp_send(to, fill));
            dp.attach_socket_layer(cg).unwrap();
            rows[2 * i + 1].1.push(tcp_send(to, fill));
        }
    }
    rows
}
