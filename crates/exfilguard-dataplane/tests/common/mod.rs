//! Helpers shared by the kernel tests: frame builders for the encapsulations the programs must
//! see through, a malformed-frame corpus, and the root check.
#![allow(dead_code)]

use exfilguard_dns::message::build_query;
use exfilguard_dns::packet::build::udp_frame;
use exfilguard_dns::DnsName;
use std::net::SocketAddr;

/// True when this process may load BPF programs. Without root the tests fail loudly, unless
/// EXFILGUARD_SKIP_KERNEL_TESTS=1 asks for an explicit (and printed) skip.
pub fn kernel_tests_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("EXFILGUARD_SKIP_KERNEL_TESTS").as_deref() == Ok("1") {
        eprintln!("!!! SKIPPED: kernel test needs root (EXFILGUARD_SKIP_KERNEL_TESTS=1) !!!");
        return false;
    }
    panic!("kernel tests need root (CAP_BPF, CAP_NET_ADMIN); set EXFILGUARD_SKIP_KERNEL_TESTS=1 to skip them explicitly");
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn query(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    build_query(&DnsName::parse(name).unwrap(), qtype, id).unwrap()
}

/// An NXDOMAIN answer to `name` (the query with QR, RA and RCODE=3 set).
pub fn nxdomain_response(name: &str, id: u16) -> Vec<u8> {
    let mut m = query(name, 1, id);
    m[2] |= 0x80;
    m[3] = 0x83;
    m
}

/// Outer UDP/6081 GENEVE (no options, protocol 0x6558) around an Ethernet frame.
pub fn geneve_frame(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 0, 0x65, 0x58, 0, 0, 42, 0];
    payload.extend_from_slice(inner);
    udp_frame(sa("10.0.0.1:50000"), sa("10.0.0.2:6081"), &payload)
}

/// Inserts an 802.1ad outer and an 802.1Q inner tag after the MAC addresses.
pub fn with_vlan_tags(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a]);
    f.extend_from_slice(&frame[12..]);
    f
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Adds 8 bytes of IPv4 options (NOP padding + end) to an Ethernet/IPv4 frame.
pub fn with_ipv4_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..14].to_vec();
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x47; // version 4, IHL 7
    let tot = u16::from_be_bytes([ip[2], ip[3]]) + 8;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 0]);
    ip[10] = 0;
    ip[11] = 0;
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&frame[34..]);
    f
}

/// Inserts hop-by-hop and destination-options headers into an Ethernet/IPv6/UDP frame.
pub fn with_ipv6_ext(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..14].to_vec();
    let mut ip = frame[14..54].to_vec();
    let next = ip[6];
    ip[6] = 0; // hop-by-hop
    let plen = u16::from_be_bytes([ip[4], ip[5]]) + 16;
    ip[4..6].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // HBH -> DSTOPTS, PadN
    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // DSTOPTS -> UDP
    f.extend_from_slice(&frame[54..]);
    f
}

/// Frames a hostile or broken sender could emit: every truncation of valid frames, bad IHL,
/// long extension-header chains, compression loops, oversized labels and names, empty question.
pub fn malformed_corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let tunnel = "paaaafbhb3vhdf5cqhwytuoz3ng2fzx4ugwlj3o0gaqoqkbgj4pu.t1.tunnel.example.com";
    let base = udp_frame(
        sa("10.0.0.1:4000"),
        sa("10.0.0.2:53"),
        &query(tunnel, 16, 1),
    );
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), so the
    // truncations start there; the stack never hands tc anything shorter.
    for n in 14..base.len() {
        out.push((format!("truncated v4 at {n}"), base[..n].to_vec()));
    }
    let base6 = with_ipv6_ext(&udp_frame(
        sa("[fd00::1]:4000"),
        sa("[fd00::2]:53"),
        &query(tunnel, 1, 1),
    ));
    for n in (14..base6.len()).step_by(3) {
        out.push((format!("truncated v6+ext at {n}"), base6[..n].to_vec()));
    }
    for ihl in [0u8, 1, 4, 5, 6, 15] {
        let mut f = base.clone();
        f[14] = 0x40 | ihl;
        out.push((format!("ihl {ihl}"), f));
    }
    // 20 chained destination-options headers: deeper than the bounded walk
    {
        let mut f = base6[..54].to_vec();
        f[20] = 60;
        for _ in 0..20 {
            f.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&base6[70..]);
        out.push(("ext header chain of 20".into(), f));
    }
    let dns_at = 42;
    let mut with_dns = |what: &str, dns: Vec<u8>| {
        out.push((
            what.to_string(),
            udp_frame(sa("10.0.0.1:4000"), sa("10.0.0.2:53"), &dns),
        ));
    };
    let hdr = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut loop_ptr = hdr.to_vec();
    loop_ptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // pointer to itself
    with_dns("compression pointer loop", loop_ptr);
    let mut long_label = hdr.to_vec();
    long_label.push(64);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    with_dns("label of 64", long_label);
    let mut long_name = hdr.to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'b'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    with_dns("name over 255", long_name);
    let mut empty_q = hdr.to_vec();
    empty_q[5] = 0;
    with_dns("qdcount 0", empty_q);
    let mut no_term = hdr.to_vec();
    no_term.extend_from_slice(&[3, b'a', b'b', b'c']);
    no_term.extend_from_slice(&[0u8; 5].map(|_| b'x'));
    with_dns("unterminated name", no_term);
    let mut root = hdr.to_vec();
    root.extend_from_slice(&[0, 0, 1, 0, 1]);
    with_dns("root name", root);
    let _ = dns_at;
    // random bytes to port 53 and to a random port
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..64 {
        let mut junk = Vec::new();
        for _ in 0..(12 + i * 3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push(x as u8);
        }
        if i % 2 == 0 {
            junk[2] = 0x01; // query, opcode 0
            junk[3] = 0;
            junk[4] = 0;
            junk[5] = 1; // one question
            junk[6..12].fill(0);
        }
        out.push((
            format!("junk {i}"),
            udp_frame(
                sa("10.0.0.1:4000"),
                sa(if i % 3 == 0 {
                    "10.0.0.2:53"
                } else {
                    "10.0.0.2:7777"
                }),
                &junk,
            ),
        ));
    }
    out
}
