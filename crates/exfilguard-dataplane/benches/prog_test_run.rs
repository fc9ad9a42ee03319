//! ns/packet of the tc egress program through BPF_PROG_TEST_RUN (the kernel times the runs;
//! JIT on): non-DNS, benign DNS, suspicious DNS (held: ring-buffer copy of the frame) and
//! blocklisted DNS; the socket-layer program (cgroup_skb egress, the cost every local send
//! pays); plus the XDP response path. Each case runs at least 1 M times, in 5 rounds;
//! the median round is reported. Needs root.
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

/// Median ns/packet over ROUNDS rounds of TOTAL runs; `batch` < TOTAL splits each round so the
/// ring buffer can be drained between batches (held packets each produce a 2.4 KiB event).
fn measure(dp: &Dataplane, frame: &[u8], batch: u32, which: u8) -> (f64, i32) {
    let mut rounds = Vec::new();
    let mut verdict = 0;
    for _ in 0..ROUNDS {
        let mut ns = 0.0;
        let mut done = 0;
        while done < TOTAL {
            let n = batch.min(TOTAL - done);
            let (v, d) = match which {
                1 => dp.test_run_xdp(frame, n),
                2 => dp.test_run_noop(frame, n),
                3 => dp.test_run_sock(frame, n),
                _ => dp.test_run_tc(frame, n),
            }
            .expect("test run");
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
}
