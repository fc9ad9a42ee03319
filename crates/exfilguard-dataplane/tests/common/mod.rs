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

/// An Ethernet frame around an IPv4 header of protocol `proto` (no options) and `payload`;
/// `frag` is the raw flags/offset field (0x2000: more fragments).
pub fn ipv4_frame(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// The IP packet of an Ethernet frame (what an IP-in-IP or GRE tunnel carries).
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// GRE (RFC 2784/2890) around `inner` with ethertype `proto`, optionally keyed.
pub fn gre_payload(proto: u16, key: Option<u32>, inner: &[u8]) -> Vec<u8> {
    let mut g = vec![if key.is_some() { 0x20 } else { 0 }, 0];
    g.extend_from_slice(&proto.to_be_bytes());
    if let Some(k) = key {
        g.extend_from_slice(&k.to_be_bytes());
    }
    g.extend_from_slice(inner);
    g
}

/// The UDP payload of a UDP/IPv4 Ethernet frame with its UDP header, split as IPv4
/// fragments: the first carries `first` bytes of the UDP datagram, the second the rest.
pub fn ipv4_fragments(udp_frame_v4: &[u8], first: usize) -> (Vec<u8>, Vec<u8>) {
    // every datagram its own IP id, as a sender numbers them
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0x2000);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let datagram = &udp_frame_v4[34..];
    let first = first.min(datagram.len()) & !7;
    let mut a = ipv4_frame(17, 0x2000, &datagram[..first]);
    let mut b = ipv4_frame(17, (first / 8) as u16, &datagram[first..]);
    for f in [&mut a, &mut b] {
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[24..26].fill(0);
        let c = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    (a, b)
}

/// A TCP/IPv4 Ethernet frame with an arbitrary payload (no length prefix added).
pub fn tcp_frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    ipv4_frame(6, 0x4000, &t)
}

/// `msg` with its 2-byte DNS-over-TCP length prefix.
pub fn prefixed(msg: &[u8]) -> Vec<u8> {
    let mut v = (msg.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

/// A query whose additional section is one OPT record carrying `options` (code, data).
pub fn query_with_opt(name: &str, id: u16, options: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = query(name, 1, id);
    m[11] = 1; // ARCOUNT
    let rdata: Vec<u8> = options
        .iter()
        .flat_map(|(code, d)| {
            let mut o = code.to_be_bytes().to_vec();
            o.extend_from_slice(&(d.len() as u16).to_be_bytes());
            o.extend_from_slice(d);
            o
        })
        .collect();
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);
    m
}

/// A query that also carries one TXT answer record of `data` (answer count 1).
pub fn query_with_answer(name: &str, id: u16, data: &[u8]) -> Vec<u8> {
    let mut m = query(name, 1, id);
    m[7] = 1; // ANCOUNT
    m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
    m.extend_from_slice(&((data.len() + 1) as u16).to_be_bytes());
    m.push(data.len() as u8);
    m.extend_from_slice(data);
    m
}
