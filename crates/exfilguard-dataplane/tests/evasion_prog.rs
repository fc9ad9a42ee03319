//! Evasions of the data plane's parser, sent through the real programs with
//! BPF_PROG_TEST_RUN: one attack and one benign control per class. Each attack here passed the
//! kernel before the fail-closed parser (issue 21); each control must still pass. The live
//! counterparts (sockets, devices, namespaces) are in crates/exfilguard/tests/evasion.rs.

mod common;

use common::*;
use exfilguard_dataplane::{Action, Dataplane, Hook, KernelPolicy, LoadOptions};
use exfilguard_dns::packet::build::{tcp_dns_frame, udp_frame, vxlan_frame};
use std::collections::HashMap;

const PASS: i32 = -1;
const DROP: i32 = 2;

const TUNNEL: &str = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpjzgs2dsmv.t.tunnel.test";
const BENIGN: &str = "www.example.com";

fn load() -> Option<Dataplane> {
    if !kernel_tests_possible() {
        return None;
    }
    let dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        ..Default::default()
    })
    .expect("loading the BPF programs (verifier)");
    dp.heartbeat().unwrap();
    Some(dp)
}

/// The programs with a one-page observation ring (it fills after a few records) and the
/// observation on.
fn load_observing() -> Option<Dataplane> {
    if !kernel_tests_possible() {
        return None;
    }
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        observe_bytes: 4096,
        ..Default::default()
    })
    .expect("loading the BPF programs (verifier)");
    dp.heartbeat().unwrap();
    dp.set_policy(&KernelPolicy {
        observe: true,
        ..Default::default()
    })
    .unwrap();
    Some(dp)
}

fn tc(dp: &Dataplane, frame: &[u8]) -> i32 {
    dp.test_run_tc(frame, 1).expect("BPF_PROG_TEST_RUN").0
}

/// A client keeps its carrier (OPT record, RD/AD/CD): the first query with a new one is held
/// once (`new_carrier`) and pinned for its (client, server) pair. Sends `f` that first time,
/// then returns the verdict on a client that keeps it.
fn kept(dp: &Dataplane, f: &[u8]) -> i32 {
    tc(dp, f);
    handed(dp);
    tc(dp, f)
}

/// The held queries' events, each gone out as the agent releases it: a new carrier is pinned
/// for its pair (`Dataplane::pin_carrier`, what the agent does once it lets one out).
fn handed(dp: &Dataplane) -> Vec<exfilguard_dataplane::Event> {
    let ev = dp.drain_events().unwrap();
    for e in &ev {
        dp.pin_carrier(e).unwrap();
    }
    ev
}

fn stats(dp: &Dataplane) -> HashMap<&'static str, u64> {
    dp.stats().unwrap().into_iter().collect()
}

fn udp53(payload: &[u8]) -> Vec<u8> {
    udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:53"), payload)
}

/// Attack dropped (with the counter named growing), control passed.
fn expect(dp: &Dataplane, class: &str, attack: &[u8], control: &[u8], counter: &str) {
    let before = stats(dp)[counter];
    assert_eq!(tc(dp, attack), DROP, "{class}: the attack passed");
    assert!(
        stats(dp)[counter] > before,
        "{class}: counter {counter} did not move"
    );
    assert_eq!(
        tc(dp, control),
        PASS,
        "{class}: the benign control was dropped"
    );
    let _ = dp.drain_events().unwrap();
}

#[test]
fn dns_on_a_tunnel_port_without_a_tunnel_header_is_plain_dns() {
    let Some(dp) = load() else { return };
    for port in [4789, 6081] {
        let to = sa(&format!("10.0.0.2:{port}"));
        let attack = udp_frame(sa("10.0.0.1:40000"), to, &query(TUNNEL, 16, 1));
        let control = udp_frame(sa("10.0.0.1:40000"), to, &query(BENIGN, 1, 2));
        expect(&dp, &format!("udp/{port}"), &attack, &control, "hold");
    }
    // a real VXLAN frame still has its inner frame judged, and passes when benign
    let inner = |name: &str| {
        udp_frame(
            sa("192.168.1.1:5000"),
            sa("192.168.1.2:53"),
            &query(name, 1, 3),
        )
    };
    let v = |name: &str| vxlan_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:0"), 42, &inner(name));
    expect(&dp, "vxlan", &v(TUNNEL), &v(BENIGN), "vxlan");
}

#[test]
fn non_dns_to_port_53_is_dropped() {
    let Some(dp) = load() else { return };
    let raw: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    expect(
        &dp,
        "udp/53 raw",
        &udp53(&raw),
        &udp53(&query(BENIGN, 1, 1)),
        "malformed_drop",
    );
    // elsewhere, the same bytes are not DNS: passed
    let other = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:5000"), &raw);
    assert_eq!(tc(&dp, &other), PASS);
    let tcp_raw = tcp_frame(40000, 53, &raw);
    expect(
        &dp,
        "tcp/53 raw",
        &tcp_raw,
        &tcp_frame(40000, 53, &prefixed(&query(BENIGN, 1, 2))),
        "tcp_partial",
    );
    // the operator can turn the drop off (a resolver host relaying odd protocols on 53)
    let mut dp = dp;
    dp.set_policy(&KernelPolicy {
        drop_malformed53: false,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(tc(&dp, &udp53(&raw)), PASS);
}

#[test]
fn fragments_of_dns_are_dropped() {
    let Some(dp) = load() else { return };
    let q = udp53(&query(TUNNEL, 16, 1));
    // a tiny first fragment: the UDP header alone, the question in the next fragment
    let (first, rest) = ipv4_fragments(&q, 8);
    let big_benign = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:443"), &[0x42; 1400]);
    let (big_first, big_rest) = ipv4_fragments(&big_benign, 1200);
    expect(&dp, "tiny first fragment", &first, &big_first, "frag_drop");
    // later fragments follow the verdict on their first one: the question bytes they carry
    // do not leave, the rest of a passed datagram does
    expect(
        &dp,
        "later fragment of a dropped datagram",
        &rest,
        &big_rest,
        "frag_drop",
    );
    // a later fragment whose first one never passed here: nothing judged it
    let orphan = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:443"), &[0x43; 1400]);
    let (_, orphan_rest) = ipv4_fragments(&orphan, 1200);
    let mut orphan_rest = orphan_rest;
    orphan_rest[18..20].copy_from_slice(&[0x55, 0x66]); // another IP id
    assert_eq!(tc(&dp, &orphan_rest), DROP, "orphan later fragment");
    // a first fragment that holds a whole DNS header: no query needs fragmenting
    let mut padded = query(TUNNEL, 16, 2);
    padded.resize(600, 0);
    let (first, _) = ipv4_fragments(&udp53(&padded), 512);
    expect(
        &dp,
        "first fragment of a DNS datagram",
        &first,
        &big_first,
        "frag_drop",
    );
}

#[test]
fn data_outside_the_question_is_held() {
    let Some(dp) = load() else { return };
    let cookie = query_with_opt(BENIGN, 1, &[(10, vec![7; 8])]);
    let plain_opt = query_with_opt(BENIGN, 2, &[]);
    assert_eq!(kept(&dp, &udp53(&plain_opt)), PASS, "OPT without options");
    assert_eq!(kept(&dp, &udp53(&cookie)), PASS, "a cookie");
    let attacks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "large EDNS option",
            query_with_opt(BENIGN, 3, &[(65001, vec![0x61; 200])]),
            "extra_data",
        ),
        (
            "EDNS padding",
            query_with_opt(BENIGN, 4, &[(12, vec![0x61; 40])]),
            "extra_data",
        ),
        (
            "oversized cookie",
            query_with_opt(BENIGN, 5, &[(10, vec![7; 64])]),
            "extra_data",
        ),
        (
            "answer record in a query",
            query_with_answer(BENIGN, 6, &[0x61; 100]),
            "odd_message",
        ),
        (
            "trailing bytes",
            {
                let mut m = query(BENIGN, 1, 7);
                m.extend_from_slice(&[0x61; 40]);
                m
            },
            "extra_data",
        ),
        (
            "NOTIFY opcode",
            {
                let mut m = query(BENIGN, 6, 8);
                m[2] = 0x20;
                m
            },
            "odd_message",
        ),
        (
            "two questions",
            {
                let mut m = query(BENIGN, 1, 9);
                let q2 = query(TUNNEL, 1, 9);
                m[5] = 2;
                m.extend_from_slice(&q2[12..]);
                m
            },
            "odd_message",
        ),
    ];
    for (what, msg, reason) in attacks {
        expect(&dp, what, &udp53(&msg), &udp53(&cookie), "odd_message");
        // the event says why
        assert_eq!(tc(&dp, &udp53(&msg)), DROP);
        let ev = dp.drain_events().unwrap();
        assert_eq!(ev[0].action, Action::Hold, "{what}");
        assert!(
            ev[0].reasons.contains(&reason),
            "{what}: {:?}",
            ev[0].reasons
        );
        assert_eq!(ev[0].name_text(), BENIGN, "{what}");
        // the allow cache holds names: clearing the name does not excuse the message
        dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
        assert_eq!(
            tc(&dp, &udp53(&msg)),
            DROP,
            "{what}: passed on the allow cache"
        );
        let _ = dp.drain_events().unwrap();
    }
}

/// A client subnet's address bytes reach the server and are forwarded on by resolvers: only
/// the form RFC 7871 gives and the precision its section 11.1 asks (/24, /56) pass; a whole
/// address, bytes or bits past the prefix, or a scope in a query are held (EXTRA_DATA), as
/// the agent's `outside_question` names them. Controls: /24, /56, /20 and /0 pass.
#[test]
fn client_subnet_beyond_its_rfc_is_held() {
    let Some(dp) = load() else { return };
    let ecs = |id: u16, d: &[u8]| udp53(&query_with_opt(BENIGN, id, &[(8, d.to_vec())]));
    let controls: [&[u8]; 4] = [
        &[0, 1, 24, 0, 192, 0, 2],
        &[0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0x12],
        &[0, 1, 20, 0, 10, 1, 0x10],
        &[0, 1, 0, 0],
    ];
    for (i, c) in controls.iter().enumerate() {
        assert_eq!(kept(&dp, &ecs(100 + i as u16, c)), PASS, "control {c:?}");
    }
    let attacks: [(&str, &[u8]); 5] = [
        ("a whole IPv4 address (/32)", &[0, 1, 32, 0, 192, 0, 2, 77]),
        (
            "an IPv6 /64",
            &[0, 2, 64, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0x12, 7],
        ),
        (
            "bytes past the prefix",
            &[0, 1, 24, 0, 192, 0, 2, 0x61, 0x61, 0x61],
        ),
        ("bits past the prefix", &[0, 1, 20, 0, 10, 1, 0x1f]),
        ("a scope in a query", &[0, 1, 24, 24, 192, 0, 2]),
    ];
    for (i, (what, d)) in attacks.into_iter().enumerate() {
        let control = ecs(200 + i as u16, controls[0]);
        expect(&dp, what, &ecs(300 + i as u16, d), &control, "odd_message");
        assert_eq!(tc(&dp, &ecs(400 + i as u16, d)), DROP);
        let ev = dp.drain_events().unwrap();
        assert!(
            ev[0].reasons.contains(&"extra_data"),
            "{what}: {:?}",
            ev[0].reasons
        );
    }
}

/// The free bits of a plain query: the header bits only responses set (AA, TC, RA), the
/// reserved Z, an RCODE, and the OPT TTL beyond extended RCODE 0, version 0 and the DO/CO
/// flags. Set, they carried up to 38 bits per benign-looking query past the kernel unjudged;
/// now the query is held (`odd_message` / `extra_data`), on port 53 and off it, and a plain
/// header of that kind whose question cannot be read off port 53 still fails closed. Controls:
/// RD+AD+CD and an OPT with DO and CO pass.
#[test]
fn free_header_and_opt_bits_are_held() {
    let Some(dp) = load() else { return };
    let flagged = |bits: u16, id: u16| {
        let mut m = query(BENIGN, 1, id);
        m[2..4].copy_from_slice(&(0x0100 | bits).to_be_bytes());
        m
    };
    let ttl = query(BENIGN, 1, 0).len() + 5;
    let opt_ttl = |t: [u8; 4], id: u16| {
        let mut m = query_with_opt(BENIGN, id, &[(10, vec![7; 8])]);
        m[ttl..ttl + 4].copy_from_slice(&t);
        m
    };
    let other = |m: &[u8]| udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:5300"), m);
    assert_eq!(tc(&dp, &udp53(&flagged(0x0030, 1))), PASS, "RD AD CD");
    assert_eq!(
        tc(&dp, &other(&flagged(0x0030, 2))),
        PASS,
        "RD AD CD off 53"
    );
    assert_eq!(
        kept(&dp, &udp53(&opt_ttl([0, 0, 0xc0, 0], 3))),
        PASS,
        "DO CO"
    );
    let _ = dp.drain_events().unwrap();
    let control = udp53(&flagged(0, 4));
    for (i, bits) in [0x0400u16, 0x0200, 0x0080, 0x0040, 0x0001, 0x000f]
        .into_iter()
        .enumerate()
    {
        let id = 10 + i as u16;
        let what = format!("header bits {bits:#06x}");
        expect(
            &dp,
            &what,
            &udp53(&flagged(bits, id)),
            &control,
            "odd_message",
        );
        expect(
            &dp,
            &what,
            &other(&flagged(bits, id)),
            &control,
            "odd_message",
        );
    }
    for (i, t) in [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0x3f, 0], [0, 0, 0, 0xff]]
        .into_iter()
        .enumerate()
    {
        let m = opt_ttl(t, 30 + i as u16);
        expect(
            &dp,
            &format!("OPT TTL {t:?}"),
            &udp53(&m),
            &control,
            "odd_message",
        );
        assert_eq!(tc(&dp, &udp53(&m)), DROP);
        let ev = dp.drain_events().unwrap();
        assert!(
            ev[0].reasons.contains(&"extra_data"),
            "{t:?}: {:?}",
            ev[0].reasons
        );
    }
    // the same option twice: a second cookie (found in review: passed as plain)
    let twice = query_with_opt(BENIGN, 50, &[(10, vec![7; 40]), (10, vec![8; 21])]);
    expect(&dp, "two cookies", &udp53(&twice), &control, "odd_message");
    // off port 53 a plain header with TC set whose name ends in a compression pointer: a
    // server still reads it, so it fails closed as the same header without TC does
    let mut ptr = flagged(0x0200, 40);
    let at = ptr.len() - 5;
    ptr[at] = 0xc0;
    ptr.insert(at + 1, 12);
    expect(
        &dp,
        "TC + pointer off 53",
        &other(&ptr),
        &control,
        "malformed",
    );
}

/// The allow cache holds exact questions: a name cleared for one type (TXT here) does not
/// excuse any other rare type asked of it. Keyed on the name alone, one release let every
/// type of that name pass unheld: 16 bits per query in the type, no hold, no event.
#[test]
fn a_cleared_name_does_not_excuse_other_types() {
    let Some(dp) = load() else { return };
    let ask = |qtype: u16, id: u16| udp53(&query(BENIGN, qtype, id));
    assert_eq!(tc(&dp, &ask(16, 1)), DROP, "a rare type is held");
    let ev = dp.drain_events().unwrap();
    assert!(ev[0].reasons.contains(&"rare_qtype"), "{:?}", ev[0].reasons);
    dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
    assert_eq!(tc(&dp, &ask(16, 2)), PASS, "the cleared question passes");
    assert_eq!(tc(&dp, &ask(1, 3)), PASS, "A is plain");
    // the cleared question in class CH or ANY: another question
    for (i, class) in [3u16, 255].into_iter().enumerate() {
        let mut m = query(BENIGN, 16, 20 + i as u16);
        let n = m.len();
        m[n - 2..].copy_from_slice(&class.to_be_bytes());
        assert_eq!(
            tc(&dp, &udp53(&m)),
            DROP,
            "class {class} passed on IN's clearance"
        );
        let _ = dp.drain_events().unwrap();
    }
    for (i, qtype) in [10u16, 99, 0x1234, 0xff00].into_iter().enumerate() {
        let id = 10 + i as u16;
        assert_eq!(
            tc(&dp, &ask(qtype, id)),
            DROP,
            "type {qtype} passed on TXT's clearance"
        );
        let ev = dp.drain_events().unwrap();
        assert_eq!(ev[0].action, Action::Hold, "type {qtype}");
        assert!(ev[0].reasons.contains(&"rare_qtype"), "{:?}", ev[0].reasons);
    }
}

/// Issue 22: a plain name in any opcode but QUERY (IQUERY, STATUS, NOTIFY, UPDATE, DSO,
/// unassigned) is held for the agent, never passed as plainly benign; a tunnel name in any
/// opcode is held too. The QUERY control passes.
#[test]
fn every_opcode_but_query_is_held() {
    let Some(dp) = load() else { return };
    let with_op = |name: &str, op: u8, id: u16| {
        let mut m = query(name, 1, id);
        m[2] = (m[2] & 0x87) | (op << 3);
        m
    };
    assert_eq!(
        tc(&dp, &udp53(&with_op(BENIGN, 0, 1))),
        PASS,
        "QUERY control"
    );
    let _ = dp.drain_events().unwrap();
    for op in 1u8..16 {
        for name in [BENIGN, TUNNEL] {
            let m = with_op(name, op, 100 + op as u16);
            assert_eq!(tc(&dp, &udp53(&m)), DROP, "opcode {op} {name}: passed");
            let ev = dp.drain_events().unwrap();
            assert!(
                ev.iter().any(|e| e.action == Action::Hold),
                "opcode {op} {name}: not held for the agent: {ev:?}"
            );
            if name == BENIGN {
                assert!(
                    ev[0].reasons.contains(&"odd_message"),
                    "opcode {op}: {:?}",
                    ev[0].reasons
                );
            }
        }
    }
}

#[test]
fn encapsulations_sent_from_the_host_are_opened() {
    let Some(dp) = load() else { return };
    let inner_v4 = |name: &str| {
        udp_frame(
            sa("192.168.1.1:5000"),
            sa("192.168.1.2:53"),
            &query(name, 1, 1),
        )
    };
    let inner_v6 =
        |name: &str| udp_frame(sa("[fd00::1]:5000"), sa("[fd00::2]:53"), &query(name, 1, 1));
    let ipip = |name: &str| ipv4_frame(4, 0, ip_packet(&inner_v4(name)));
    let sit = |name: &str| ipv4_frame(41, 0, ip_packet(&inner_v6(name)));
    let gre = |name: &str| {
        ipv4_frame(
            47,
            0,
            &gre_payload(0x0800, None, ip_packet(&inner_v4(name))),
        )
    };
    let gre_key = |name: &str| {
        ipv4_frame(
            47,
            0,
            &gre_payload(0x86dd, Some(7), ip_packet(&inner_v6(name))),
        )
    };
    let gretap = |name: &str| ipv4_frame(47, 0, &gre_payload(0x6558, Some(9), &inner_v4(name)));
    for (what, f) in [
        ("ipip", &ipip as &dyn Fn(&str) -> Vec<u8>),
        ("sit", &sit),
        ("gre", &gre),
        ("gre with key", &gre_key),
        ("gretap", &gretap),
    ] {
        expect(&dp, what, &f(TUNNEL), &f(BENIGN), "encap");
        assert_eq!(tc(&dp, &f(TUNNEL)), DROP);
        let ev = dp.drain_events().unwrap();
        assert_eq!(ev[0].name_text(), TUNNEL, "{what}");
    }
    // more layers than the parser follows: nothing inside was read, nothing passes
    let deep = ipv4_frame(4, 0, ip_packet(&ipv4_frame(4, 0, ip_packet(&ipip(BENIGN)))));
    expect(
        &dp,
        "ipip in ipip in ipip",
        &deep,
        &ipip(BENIGN),
        "deep_encap",
    );
}

#[test]
fn tcp_dns_must_be_whole_messages() {
    let Some(dp) = load() else { return };
    let t = query(TUNNEL, 16, 1);
    let b = query(BENIGN, 1, 2);
    let control = tcp_frame(40000, 53, &prefixed(&b));
    let whole = prefixed(&t);
    // the length prefix alone, then the message without it
    expect(
        &dp,
        "length prefix alone",
        &tcp_frame(40000, 53, &whole[..2]),
        &control,
        "tcp_partial",
    );
    expect(
        &dp,
        "message without its prefix",
        &tcp_frame(40000, 53, &whole[2..]),
        &control,
        "tcp_partial",
    );
    // off port 53 a bare header does not make a stream DNS (Kafka's requests look like one):
    // a documented residual risk, docs/dataplane.md
    let kafka = [0, 0, 0, 0x24, 0, 1, 0, 4, 0, 0, 0, 1, 0, 10];
    assert_eq!(
        tc(&dp, &tcp_frame(40000, 9092, &kafka)),
        PASS,
        "Kafka request header"
    );
    // a message cut mid-name
    expect(
        &dp,
        "message split mid-name",
        &tcp_frame(40000, 53, &whole[..30]),
        &control,
        "tcp_partial",
    );
    // several messages in one segment: a plain one first, the tunnel after it
    let mut two = prefixed(&b);
    two.extend_from_slice(&prefixed(&t));
    expect(
        &dp,
        "tunnel after a plain message",
        &tcp_frame(40000, 53, &two),
        &control,
        "judge",
    );
    let ev = dp.drain_events().unwrap();
    assert!(ev.is_empty() || ev.iter().all(|e| e.packet.is_empty()));
    assert_eq!(tc(&dp, &tcp_frame(40000, 53, &two)), DROP);
    let ev = dp.drain_events().unwrap();
    assert_eq!(
        (ev[0].action, ev[0].name_text().as_str()),
        (Action::Judge, TUNNEL)
    );
    // cleared by the agent: the retransmission passes
    dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
    assert_eq!(
        tc(&dp, &tcp_frame(40000, 53, &two)),
        PASS,
        "retransmission after clearing"
    );
    // several plain messages on one connection (dig +tcp, +keepopen) pass
    let mut many = Vec::new();
    for i in 0..5 {
        many.extend_from_slice(&prefixed(&query(BENIGN, 1, 10 + i)));
    }
    assert_eq!(
        tc(&dp, &tcp_frame(40000, 53, &many)),
        PASS,
        "pipelined plain queries"
    );
    // more messages than one segment is judged for: dropped, never passed unread
    let mut lots = Vec::new();
    for i in 0..20 {
        lots.extend_from_slice(&prefixed(&query(BENIGN, 1, 30 + i)));
    }
    expect(
        &dp,
        "more messages than judged",
        &tcp_frame(40000, 53, &lots),
        &control,
        "tcp_partial",
    );
    // ordinary TCP elsewhere is untouched
    assert_eq!(tc(&dp, &tcp_frame(40000, 443, &[0x17; 300])), PASS);
    assert_eq!(
        tc(
            &dp,
            &tcp_dns_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:53"), &b)
        ),
        PASS
    );
}

#[test]
fn every_segment_of_a_gso_send_is_judged() {
    let Some(dp) = load() else { return };
    let seg = 96usize;
    let pad = |m: Vec<u8>| {
        let mut m = m;
        m.resize(seg, 0);
        m
    };
    let mut payload = pad(query(BENIGN, 1, 1));
    payload.extend_from_slice(&pad(query(TUNNEL, 16, 2)));
    payload.extend_from_slice(&pad(query(TUNNEL, 16, 3)));
    let attack = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:5300"), &payload);
    let before = stats(&dp)["gso_drop"];
    assert_eq!(
        dp.test_run_tc_gso(&attack, 3, seg as u32).unwrap(),
        DROP,
        "GSO with DNS segments"
    );
    assert_eq!(stats(&dp)["gso_drop"], before + 1);
    // QUIC-like GSO of non-DNS segments passes
    let quic: Vec<u8> = (0..3 * 1200u32).map(|i| 0xc0 | (i as u8 & 0x3f)).collect();
    let control = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:443"), &quic);
    assert_eq!(
        dp.test_run_tc_gso(&control, 3, 1200).unwrap(),
        PASS,
        "non-DNS GSO"
    );
}

#[test]
fn letter_case_is_kept_as_evidence() {
    let Some(dp) = load() else { return };
    let name = "documentation-portal.example.com";
    let f = |n: &str, id| udp53(&query(n, 1, id));
    assert_eq!(tc(&dp, &f(name, 1)), DROP, "a long name is held");
    let ev = dp.drain_events().unwrap();
    dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
    assert_eq!(tc(&dp, &f(name, 2)), PASS, "cleared: passes");
    // every case variant is another name: held and judged, not passed on the cache
    for (i, v) in [
        "Documentation-portal.example.com",
        "dOcUmEnTaTiOn-PoRtAl.example.com",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(tc(&dp, &f(v, 3 + i as u16)), DROP, "{v}");
        let ev = dp.drain_events().unwrap();
        assert!(ev[0].reasons.contains(&"mixed_case"), "{:?}", ev[0].reasons);
        assert_eq!(
            ev[0].name_text(),
            name,
            "the brain sees the lower-cased name"
        );
    }
    // short names: mixed case is held, one case is not
    expect(
        &dp,
        "mixed case in a short name",
        &f("wWw.ExAmple.com", 9),
        &f("WWW.EXAMPLE.COM", 10),
        "hold",
    );
}

/// A query over its sender's carrier budget goes out as its header and question alone: the
/// ticket the agent writes for the cut message (its own hash of it, which must be the
/// programs') lets that frame pass; the held frame with its cookie stays refused, and so does
/// a cut frame with another question.
#[test]
fn a_query_cut_to_its_question_passes_with_its_ticket() {
    let Some(dp) = load() else { return };
    let msg = query_with_opt(TUNNEL, 77, &[(10, vec![1; 40])]);
    let frame = udp53(&msg);
    assert_eq!(tc(&dp, &frame), DROP);
    let ev = dp.drain_events().unwrap().remove(0);
    let cut = exfilguard_dns::question_only(&msg).unwrap();
    let cut_frame = exfilguard_dns::replace_udp_payload(&frame, false, &cut).unwrap();
    assert_eq!(cut_frame.len(), frame.len() - (msg.len() - cut.len()));
    dp.rewritten_ticket_only(&ev, &cut).unwrap();
    // the ticket alone lets it through: the name is not in the allow cache in this test
    dp.maps().unallow_name_hash(ev.name_hash).unwrap();
    let mark = dp.policy().release_mark;
    assert_eq!(tc(&dp, &cut_frame), DROP, "unmarked, the cut frame is held");
    assert_eq!(
        dp.test_run_tc_marked(&cut_frame, mark).unwrap(),
        PASS,
        "the cut frame with its ticket"
    );
    assert_eq!(
        dp.test_run_tc_marked(&frame, mark).unwrap(),
        DROP,
        "the held frame, cookie and all"
    );
    let other = query_with_opt(&format!("z{TUNNEL}"), 77, &[(10, vec![1; 40])]);
    let other = exfilguard_dns::question_only(&other).unwrap();
    assert_eq!(
        dp.test_run_tc_marked(&udp53(&other), mark).unwrap(),
        DROP,
        "another question, cut likewise"
    );
}

#[test]
fn release_tickets_bind_the_whole_message() {
    let Some(dp) = load() else { return };
    let msg = query_with_opt(TUNNEL, 77, &[(10, vec![1; 8])]);
    let frame = udp53(&msg);
    assert_eq!(tc(&dp, &frame), DROP);
    let ev = dp.drain_events().unwrap().remove(0);
    assert_ne!(ev.msg_hash, 0);
    // the ticket only: the name is not in the allow cache in this test
    dp.release_ticket_only(&ev).unwrap();
    dp.maps().unallow_name_hash(ev.name_hash).unwrap();
    let mark = dp.policy().release_mark;
    assert_ne!(
        mark,
        exfilguard_dataplane::config::DEFAULT_RELEASE_MARK,
        "a random mark per start"
    );
    assert_eq!(
        dp.test_run_tc_marked(&frame, mark).unwrap(),
        PASS,
        "the released frame"
    );
    // the same name and id carrying other bytes does not ride the ticket
    let other = udp53(&query_with_opt(TUNNEL, 77, &[(10, vec![2; 8])]));
    assert_eq!(
        dp.test_run_tc_marked(&other, mark).unwrap(),
        DROP,
        "other bytes, same name and id"
    );
    let other_id = udp53(&query_with_opt(TUNNEL, 78, &[(10, vec![1; 8])]));
    assert_eq!(
        dp.test_run_tc_marked(&other_id, mark).unwrap(),
        DROP,
        "another id"
    );
    assert_eq!(
        dp.test_run_tc_marked(&frame, mark ^ 1).unwrap(),
        DROP,
        "another mark"
    );
    let released = stats(&dp)["released"];
    // tickets expire (2 s)
    std::thread::sleep(std::time::Duration::from_millis(2100));
    dp.heartbeat().unwrap();
    assert_eq!(
        dp.test_run_tc_marked(&frame, mark).unwrap(),
        DROP,
        "expired ticket"
    );
    assert_eq!(stats(&dp)["released"], released);
}

#[test]
fn the_socket_layer_judges_before_any_device() {
    let Some(dp) = load() else { return };
    let attack = udp53(&query(TUNNEL, 16, 1));
    let control = udp53(&query(BENIGN, 1, 2));
    let (v, _) = dp.test_run_sock(&attack, 1).unwrap();
    assert_eq!(v, 2, "dropped without an error to the sender");
    let ev = dp.drain_events().unwrap();
    assert_eq!((ev[0].action, ev[0].hook), (Action::Hold, Hook::Sock));
    assert!(ev[0].frame_l3, "held at the IP header");
    assert_eq!(ev[0].packet, ip_packet(&attack), "the exact IP packet");
    assert_eq!(dp.test_run_sock(&control, 1).unwrap().0, 1);
    assert!(stats(&dp)["sock_packets"] >= 2);
    // a send in another namespace (a container's): the agent cannot re-send there, so the
    // query is judged without its frame and the client's retry passes once cleared
    let mut dp = dp;
    let foreign = |scope| KernelPolicy {
        netns_cookie: 0xdead_beef,
        socket_scope: scope,
        ..Default::default()
    };
    dp.set_policy(&foreign(exfilguard_dataplane::SocketScope::All))
        .unwrap();
    assert_eq!(dp.test_run_sock(&attack, 1).unwrap().0, 2);
    let ev = dp.drain_events().unwrap();
    assert_eq!((ev[0].action, ev[0].packet.len()), (Action::Judge, 0));
    // scope netns: another namespace's sends are not this agent's to judge
    dp.set_policy(&foreign(exfilguard_dataplane::SocketScope::Netns))
        .unwrap();
    assert_eq!(dp.test_run_sock(&attack, 1).unwrap().0, 1);
}

#[test]
fn a_full_observation_ring_holds_instead_of_passing_unseen() {
    let Some(mut dp) = load_observing() else {
        return;
    };
    let mut held = 0;
    for i in 0..40u16 {
        if tc(&dp, &udp53(&query(BENIGN, 1, i))) == DROP {
            held += 1;
        }
    }
    let s = stats(&dp);
    assert!(s["observe_full"] > 0 && s["observe_held"] == held, "{s:?}");
    assert!(held > 0, "a blind analytics must not pass queries silently");
    let ev = dp.drain_events().unwrap();
    assert!(ev.iter().all(|e| e.reasons.contains(&"unobserved")));
    // fail_open is the operator's explicit choice to pass (counted)
    dp.set_policy(&KernelPolicy {
        observe: true,
        fail_open: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(tc(&dp, &udp53(&query(BENIGN, 1, 99))), PASS);
}

/// What an attacker's review of the fail-closed parser found next: urgent data shifting a
/// DNS/TCP stream, compression pointers off port 53, the query class as a free field, GRE
/// carrying what the walk does not follow, VXLAN on the kernel's own port.
#[test]
fn reviewed_evasions_fail_closed() {
    let Some(dp) = load() else { return };
    let b = query(BENIGN, 1, 2);
    // urgent data: the server drops a byte the kernel judged, the stream shifts
    let mut urg = tcp_frame(40000, 53, &prefixed(&b));
    urg[14 + 20 + 13] |= 0x20;
    expect(
        &dp,
        "TCP URG on a DNS stream",
        &urg,
        &tcp_frame(40000, 53, &prefixed(&b)),
        "tcp_partial",
    );
    // a plain query header whose name ends in a compression pointer, on another port
    let mut ptr = query("www.example", 1, 3);
    let at = ptr.len() - 5; // the root byte of the question name
    ptr[at] = 0xc0;
    ptr.insert(at + 1, 12);
    let to = |m: &[u8]| udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:5353"), m);
    expect(
        &dp,
        "compression pointer off port 53",
        &to(&ptr),
        &to(&b),
        "malformed",
    );
    // the query class as a data field
    let mut class = query(BENIGN, 1, 4);
    let n = class.len();
    class[n - 2..].copy_from_slice(&[0x12, 0x34]);
    expect(
        &dp,
        "odd query class",
        &udp53(&class),
        &udp53(&b),
        "odd_message",
    );
    // GRE carrying MPLS: not followed, not passed
    let inner = udp_frame(
        sa("192.168.1.1:5000"),
        sa("192.168.1.2:53"),
        &query(TUNNEL, 1, 5),
    );
    let mpls = ipv4_frame(47, 0, &gre_payload(0x8847, None, ip_packet(&inner)));
    let gre_ok = ipv4_frame(
        47,
        0,
        &gre_payload(
            0x0800,
            None,
            ip_packet(&udp_frame(sa("192.168.1.1:5000"), sa("192.168.1.2:53"), &b)),
        ),
    );
    expect(&dp, "GRE with MPLS inside", &mpls, &gre_ok, "deep_encap");
    // VXLAN on 8472 (the kernel's default port) is opened like 4789
    let v = |m: &[u8]| {
        let f = vxlan_frame(
            sa("10.0.0.1:40000"),
            sa("10.0.0.2:0"),
            42,
            &udp_frame(sa("192.168.1.1:5000"), sa("192.168.1.2:53"), m),
        );
        let mut f = f;
        f[36..38].copy_from_slice(&8472u16.to_be_bytes()); // UDP destination port
        f
    };
    expect(
        &dp,
        "VXLAN on 8472",
        &v(&query(TUNNEL, 1, 6)),
        &v(&b),
        "vxlan",
    );
}

/// Benign traffic the fail-closed egress must not break on the way in: the fragments of a
/// large EDNS answer pass XDP (responses are not judged by fragments), first and later alike.
#[test]
fn fragments_of_large_answers_pass_on_ingress() {
    let Some(dp) = load() else { return };
    let mut answer = query("big.example.com", 16, 9);
    answer[2] |= 0x80; // QR: a response
    answer.resize(3000, 0x41);
    let resp = udp_frame(sa("10.0.0.2:53"), sa("10.0.0.1:40000"), &answer);
    let (first, rest) = ipv4_fragments(&resp, 1472);
    for (what, f) in [("first fragment", &first), ("later fragment", &rest)] {
        let (v, _) = dp.test_run_xdp(f, 1).unwrap();
        assert_eq!(v, 2 /* XDP_PASS */, "{what} of a large answer");
    }
}

/// A TCP segment of several plain queries: every one of them reaches the analytics (before,
/// only the last did, so a tunnel pipelining names under the plain thresholds was counted one
/// name per segment). A full ring holds the segment for TCP's retransmission.
#[test]
fn every_message_of_a_tcp_segment_is_observed() {
    let Some(dp) = load_observing() else {
        return;
    };
    let names: Vec<String> = (0..5).map(|i| format!("w{i}.example.com")).collect();
    let mut seg = Vec::new();
    for (i, n) in names.iter().enumerate() {
        seg.extend_from_slice(&prefixed(&query(n, 1, 70 + i as u16)));
    }
    assert_eq!(tc(&dp, &tcp_frame(40000, 53, &seg)), PASS);
    let seen: Vec<String> = dp
        .drain_observations()
        .unwrap()
        .iter()
        .map(|e| e.name_text())
        .collect();
    assert_eq!(
        seen, names,
        "every message of the segment observed, in order"
    );
    // the ring fills: the segment is held for retransmission, never passed with a message unseen
    let mut dropped = 0;
    for _ in 0..40 {
        if tc(&dp, &tcp_frame(40000, 53, &seg)) == DROP {
            dropped += 1;
        }
    }
    let s = stats(&dp);
    assert!(dropped > 0 && s["observe_held"] >= dropped, "{s:?}");
}

/// The carrier of a plain query: its OPT record (cookie, client subnet, UDP size, DO/CO) and
/// RD/AD/CD. Each is well formed, so the kernel passed any value unjudged: a cookie of 8 + 32
/// bytes per query under a benign name went out uncounted (on the old code, 20 of 20 here).
/// Now a carrier its (client, server) pair has not sent lately is held once and pinned; a
/// client that keeps its carrier (every resolver and stub does) passes after the first.
#[test]
fn a_new_carrier_is_held_once_per_pair() {
    let Some(mut dp) = load() else { return };
    let held = |what: &str, f: &[u8]| {
        let before = stats(&dp)["new_carrier"];
        assert_eq!(tc(&dp, f), DROP, "{what}: passed");
        assert_eq!(stats(&dp)["new_carrier"], before + 1, "{what}");
        let ev = handed(&dp);
        assert_eq!(ev.len(), 1, "{what}");
        assert_eq!(ev[0].action, Action::Hold, "{what}");
        assert_eq!(ev[0].reasons, vec!["new_carrier"], "{what}");
    };
    let cookie = |id: u16, c: &[u8]| udp53(&query_with_opt(BENIGN, id, &[(10, c.to_vec())]));

    // the tunnel: a fresh client + server cookie in every query, under a plain name
    let mut arrived = 0;
    for i in 0..20u8 {
        let c: Vec<u8> = (0..40u8).map(|j| j.wrapping_mul(31) ^ i).collect();
        if tc(&dp, &cookie(100 + u16::from(i), &c)) == PASS {
            arrived += 1;
        }
    }
    assert_eq!(arrived, 0, "{arrived} of 20 fresh cookies passed unjudged");
    assert_eq!(stats(&dp)["new_carrier"], 20);
    let _ = dp.drain_events().unwrap();

    // controls: no OPT at all passes; a kept cookie is held once, then passes under any
    // name and ID
    assert_eq!(tc(&dp, &udp53(&query(BENIGN, 1, 1))), PASS, "no OPT");
    held("first cookie", &cookie(2, &[1; 8]));
    assert_eq!(tc(&dp, &cookie(3, &[1; 8])), PASS, "the same cookie again");
    let other_name = udp53(&query_with_opt("mail.example.org", 4, &[(10, vec![1; 8])]));
    assert_eq!(tc(&dp, &other_name), PASS, "the same cookie, another name");

    // RD/AD/CD are part of it: AD set is a new carrier
    let mut ad = query_with_opt(BENIGN, 5, &[(10, vec![1; 8])]);
    ad[2..4].copy_from_slice(&0x0120u16.to_be_bytes());
    held("AD", &udp53(&ad));
    assert_eq!(tc(&dp, &udp53(&ad)), PASS, "AD again");

    // four carriers are kept per pair (1, AD, 2, 3); a fifth evicts the oldest
    held("cookie 2", &cookie(6, &[2; 8]));
    held("cookie 3", &cookie(7, &[3; 8]));
    for (i, c) in [[1u8; 8], [2; 8], [3; 8]].iter().enumerate() {
        assert_eq!(tc(&dp, &cookie(8 + i as u16, c)), PASS, "kept {c:?}");
    }
    held("cookie 4", &cookie(11, &[4; 8]));
    held("cookie 1, evicted", &cookie(12, &[1; 8]));

    // pairs are apart: the same cookie to another server is new there
    let to_other = udp_frame(
        sa("10.0.0.1:40000"),
        sa("10.0.0.3:53"),
        &query_with_opt(BENIGN, 13, &[(10, vec![4; 8])]),
    );
    held("another server", &to_other);
    assert_eq!(tc(&dp, &to_other), PASS);

    // TCP, two messages in one segment, the first with a new cookie: judged without the
    // frame (the retransmission passes, its carrier pinned)
    let two = |a: &[u8], b: &[u8]| {
        let mut p = prefixed(a);
        p.extend_from_slice(&prefixed(b));
        tcp_frame(40001, 53, &p)
    };
    let seg = two(
        &query_with_opt(BENIGN, 14, &[(10, vec![9; 8])]),
        &query(BENIGN, 1, 15),
    );
    assert_eq!(
        tc(&dp, &seg),
        DROP,
        "TCP: a new carrier in the first message"
    );
    let ev = handed(&dp);
    assert!(
        ev.iter()
            .any(|e| e.action == Action::Judge && e.reasons.contains(&"new_carrier")),
        "{:?}",
        ev.iter()
            .map(|e| (e.action, e.reasons.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(tc(&dp, &seg), PASS, "TCP: the retransmission");

    // off: the old behaviour, every cookie passes
    dp.set_policy(&KernelPolicy {
        pin_carriers: false,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(tc(&dp, &cookie(16, &[0x55; 40])), PASS, "pin_carriers off");
}

/// Found in review of the carrier pin: a carrier pinned when the held query could not be
/// handed over (the event ring full) let its resend pass uncounted; and an additional count
/// with no record after the question was a free field. Now a carrier is pinned only once its
/// record is in the ring, and ARCOUNT without a record is held (`extra_data`).
#[test]
fn a_carrier_is_pinned_only_when_the_agent_has_it() {
    if !kernel_tests_possible() {
        return;
    }
    // a one-page event ring: a held frame is ~2.4 KiB, so the second hold finds it full
    let dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        ringbuf_bytes: 4096,
        ..Default::default()
    })
    .expect("loading the BPF programs (verifier)");
    dp.heartbeat().unwrap();
    let q = |id: u16, c: u8| udp53(&query_with_opt(BENIGN, id, &[(10, vec![c; 8])]));
    assert_eq!(tc(&dp, &q(1, 1)), DROP, "first carrier held");
    let full = stats(&dp)["ringbuf_full"];
    assert_eq!(
        tc(&dp, &q(2, 2)),
        DROP,
        "second carrier: ring full, dropped"
    );
    assert!(stats(&dp)["ringbuf_full"] > full, "the ring was not full");
    handed(&dp);
    assert_eq!(tc(&dp, &q(3, 1)), PASS, "the carrier handed over is pinned");
    assert_eq!(
        tc(&dp, &q(4, 2)),
        DROP,
        "the carrier dropped for a full ring was pinned: its resend passed uncounted"
    );
    let _ = dp.drain_events().unwrap();

    // ARCOUNT 1 or 2 with no record: held; the same query with ARCOUNT 0 passes
    let Some(dp) = load() else { return };
    for ar in [1u8, 2] {
        let mut m = query(BENIGN, 1, 10 + u16::from(ar));
        m[11] = ar;
        expect(
            &dp,
            &format!("ARCOUNT {ar} without a record"),
            &udp53(&m),
            &udp53(&query(BENIGN, 1, 20)),
            "odd_message",
        );
    }
}

/// Found in review of the per-user budgets: the kernel pinned a new carrier when it held the
/// query, so one the agent then dropped (its pair over the budget) passed unheld when the
/// sender simply sent it again: every carrier got out at the second try (on the old code the
/// resend passed). Now only the agent pins, once the query went out: a dropped carrier's
/// resend is held again, every time. Control: a carrier the agent let out passes when kept.
#[test]
fn a_dropped_carrier_is_held_again() {
    let Some(dp) = load() else { return };
    let q = |id: u16, c: &[u8]| udp53(&query_with_opt(BENIGN, id, &[(10, c.to_vec())]));
    let data: Vec<u8> = (0..40u8).map(|j| j.wrapping_mul(37) ^ 0x5a).collect();
    for attempt in 0..3u16 {
        let before = stats(&dp)["new_carrier"];
        assert_eq!(
            tc(&dp, &q(20 + attempt, &data)),
            DROP,
            "resend {attempt} of a dropped carrier passed"
        );
        assert_eq!(stats(&dp)["new_carrier"], before + 1, "resend {attempt}");
        let ev = dp.drain_events().unwrap(); // the agent drops it: nothing pinned
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reasons, vec!["new_carrier"]);
        assert_ne!(ev[0].carrier, 0, "the event names its carrier");
    }
    let kept_cookie = [3u8; 8];
    assert_eq!(tc(&dp, &q(30, &kept_cookie)), DROP, "held once");
    handed(&dp);
    assert_eq!(tc(&dp, &q(31, &kept_cookie)), PASS, "let out, then kept");
    // the programs cannot write the map: only the agent pins
    assert!(
        dp.test_run_tc(&q(32, &data), 1).is_ok() && tc(&dp, &q(33, &data)) == DROP,
        "a carrier pinned itself"
    );
}

/// A response to 10.0.0.1:40000 from 10.0.0.2:53 with an answer and an authority record
/// before its OPT record, which carries the COOKIE option `cookie`.
fn cookie_response(id: u16, cookie: &[u8]) -> Vec<u8> {
    let mut m = query(BENIGN, 1, id);
    m[2] |= 0x80; // QR
    m[7] = 1; // ANCOUNT
    m[9] = 1; // NSCOUNT
    m[11] = 1; // ARCOUNT
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
    m.extend_from_slice(&[
        0xc0, 12, 0, 2, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'n', b's', b'1', 0xc0, 12,
    ]);
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend_from_slice(&(cookie.len() as u16 + 4).to_be_bytes());
    m.extend_from_slice(&[0, 10]);
    m.extend_from_slice(&(cookie.len() as u16).to_be_bytes());
    m.extend_from_slice(cookie);
    udp_frame(sa("10.0.0.2:53"), sa("10.0.0.1:40000"), &m)
}

/// A server cookie is the server's data: a client echoing the one the last answer brought
/// (BIND stamps a new one on every answer, RFC 9018) sends nothing new, so the echo is no new
/// carrier (before, named's every query to such a server was held). A server part the server
/// never sent, an old one, or one sent to another client or by another server, is.
#[test]
fn an_echoed_server_cookie_is_no_new_carrier() {
    let Some(dp) = load() else { return };
    let cc = [7u8; 8];
    let with = |sc: &[u8]| [&cc[..], sc].concat();
    let q = |id: u16, ck: Vec<u8>| udp53(&query_with_opt(BENIGN, id, &[(10, ck)]));
    let answer = |id: u16, ck: Vec<u8>| {
        let (v, _) = dp.test_run_xdp(&cookie_response(id, &ck), 1).unwrap();
        assert_eq!(v, 2 /* XDP_PASS */, "the answer passes");
    };
    let held = |what: &str, f: &[u8]| {
        let before = stats(&dp)["new_carrier"];
        assert_eq!(tc(&dp, f), DROP, "{what}: passed");
        assert_eq!(stats(&dp)["new_carrier"], before + 1, "{what}");
        handed(&dp);
    };

    // the client's first query (client cookie) and its first with a server part: once each
    held("client cookie", &q(1, cc.to_vec()));
    assert_eq!(tc(&dp, &q(2, cc.to_vec())), PASS, "client cookie again");
    // an answer to no query the pair sent (another id) teaches nothing
    answer(999, with(&[0x99; 16]));
    assert_eq!(
        stats(&dp)["cookie_learnt"],
        0,
        "an unasked answer was learnt"
    );
    assert_eq!(stats(&dp)["cookie_unasked"], 1);
    answer(2, with(&[1; 16]));
    assert_eq!(stats(&dp)["cookie_learnt"], 1);
    // the same query answered twice: the second answer is unasked
    answer(2, with(&[0x98; 16]));
    assert_eq!(stats(&dp)["cookie_learnt"], 1, "a second answer was learnt");
    held("first server cookie", &q(3, with(&[1; 16])));
    // every answer brings a new server cookie; echoing the last is nothing new
    for i in 2..12u8 {
        answer(
            if i == 2 { 3 } else { 10 + u16::from(i) - 1 },
            with(&[i; 16]),
        );
        assert_eq!(
            tc(&dp, &q(10 + u16::from(i), with(&[i; 16]))),
            PASS,
            "echo of server cookie {i}"
        );
    }
    let s = stats(&dp);
    assert_eq!(s["new_carrier"], 2);
    assert_eq!(s["cookie_learnt"], 11);
    assert_eq!(s["cookie_unasked"], 2);
    assert!(s["cookie_echoed"] >= 10, "{}", s["cookie_echoed"]);

    // one of the last 4 answers echoed passes; an older one is held
    assert_eq!(
        tc(&dp, &q(40, with(&[9; 16]))),
        PASS,
        "2 answers old (among the last 4)"
    );
    held("5 answers old", &q(41, with(&[7; 16])));
    // the attack: a server part the server never sent is held, query after query
    for i in 0..5u8 {
        held(
            "unsent server part",
            &q(30 + u16::from(i), with(&[0xa0 + i; 16])),
        );
    }
    // the server part with another client cookie, or to another server: held
    held(
        "learnt server part, other client cookie",
        &q(42, [&[8u8; 8][..], &[11; 16]].concat()),
    );
    held(
        "to another server",
        &udp_frame(
            sa("10.0.0.1:40000"),
            sa("10.0.0.3:53"),
            &query_with_opt(BENIGN, 43, &[(10, with(&[11; 16]))]),
        ),
    );
    // an answer to another client teaches this one nothing
    let mut other = cookie_response(50, &with(&[0x55; 16]));
    other[33] = 9; // IPv4 destination 10.0.0.9 (checksum aside: XDP reads, never checks)
    answer_frame(&dp, &other);
    held("learnt by another client", &q(51, with(&[0x55; 16])));
}

fn answer_frame(dp: &Dataplane, f: &[u8]) {
    let (v, _) = dp.test_run_xdp(f, 1).unwrap();
    assert_eq!(v, 2 /* XDP_PASS */);
}

/// A local sender forges the server's answer (AF_PACKET out to the gateway, which routes it
/// back: found in review), so that XDP learns a "server cookie" carrying its own data and its
/// echo goes out free: a pair a local socket sent a frame from port 53 to learns nothing for
/// an hour. An answer not from port 53 teaches nothing either. Control: another server's
/// answer is learnt.
#[test]
fn a_forged_answer_teaches_no_server_cookie() {
    let Some(dp) = load() else { return };
    let cc = [7u8; 8];
    let data: Vec<u8> = [&cc[..], b"sixteen secret b"].concat();
    let q = |id: u16, to: &str, ck: Vec<u8>| {
        udp_frame(
            sa("10.0.0.1:40000"),
            sa(to),
            &query_with_opt(BENIGN, id, &[(10, ck)]),
        )
    };
    // the client's carrier with a (zeroed) server part is pinned through a real server's
    // answer first, as a tunnel would set it up
    assert_eq!(kept(&dp, &q(1, "10.0.0.2:53", cc.to_vec())), PASS);
    let (v, _) = dp
        .test_run_xdp(&cookie_response(1, &[&cc[..], &[1; 16]].concat()), 1)
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        stats(&dp)["cookie_learnt"],
        1,
        "control: a real answer is learnt"
    );
    assert_eq!(
        kept(&dp, &q(2, "10.0.0.2:53", [&cc[..], &[1; 16]].concat())),
        PASS
    );

    // the forgery answers a query the sender made (its port, id and client cookie) ...
    tc(&dp, &q(3, "10.0.0.2:53", cc.to_vec()));
    let _ = dp.drain_events().unwrap();
    // ... leaves through tc (a local socket's frame from port 53 to this host) ...
    let mut forged = cookie_response(3, &data);
    tc(&dp, &forged);
    // ... and comes back: not learnt, so the echo of its "server part" is a new carrier
    let (v, _) = dp.test_run_xdp(&forged, 1).unwrap();
    assert_eq!(v, 2);
    let s = stats(&dp);
    assert_eq!(s["cookie_learnt"], 1, "the forged answer was learnt");
    assert_eq!(s["cookie_forged"], 1);
    let _ = dp.drain_events().unwrap();
    assert_eq!(
        tc(&dp, &q(4, "10.0.0.2:53", data.clone())),
        DROP,
        "the echo passed"
    );

    // an answer from another port than 53 teaches nothing
    forged[34..36].copy_from_slice(&5353u16.to_be_bytes()); // UDP source port
    forged[26..30].copy_from_slice(&[10, 0, 0, 4]); // from 10.0.0.4
    dp.test_run_xdp(&forged, 1).unwrap();
    assert_eq!(
        stats(&dp)["cookie_learnt"],
        1,
        "an answer from port 5353 was learnt"
    );

    // control: another server's answer is learnt and echoed without a hold
    assert_eq!(kept(&dp, &q(5, "10.0.0.3:53", cc.to_vec())), PASS);
    let mut other = cookie_response(5, &[&cc[..], &[2; 16]].concat());
    other[26..30].copy_from_slice(&[10, 0, 0, 3]);
    dp.test_run_xdp(&other, 1).unwrap();
    assert_eq!(stats(&dp)["cookie_learnt"], 2);
    let _ = dp.drain_events().unwrap();
    assert_eq!(
        kept(&dp, &q(6, "10.0.0.3:53", [&cc[..], &[2; 16]].concat())),
        PASS
    );
    assert!(stats(&dp)["cookie_echoed"] >= 2);
}

/// The forged answer inside IP-in-IP (found in review): tc passes an answer as non-DNS and
/// marks no pair for a tunnelled frame, and XDP keyed it on the outer addresses. Servers
/// answer in plain IP: a tunnelled answer teaches nothing. Control: the same answer, plain.
#[test]
fn a_tunnelled_answer_teaches_no_server_cookie() {
    let Some(dp) = load() else { return };
    let cc = [7u8; 8];
    let data: Vec<u8> = [&cc[..], b"sixteen secret b"].concat();
    let asked = udp53(&query_with_opt(BENIGN, 7, &[(10, cc.to_vec())]));
    assert_eq!(kept(&dp, &asked), PASS);
    let plain = cookie_response(7, &data);
    let mut ipip = ipv4_frame(4, 0, ip_packet(&plain));
    // outer header from the server to the client, as the answer's
    let (src, dst) = (ipip[26..30].to_vec(), ipip[30..34].to_vec());
    ipip[26..30].copy_from_slice(&dst);
    ipip[30..34].copy_from_slice(&src);
    tc(&dp, &ipip);
    let (v, _) = dp.test_run_xdp(&ipip, 1).unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        stats(&dp)["cookie_learnt"],
        0,
        "a tunnelled answer was learnt"
    );
    let (v, _) = dp.test_run_xdp(&plain, 1).unwrap();
    assert_eq!(v, 2);
    assert_eq!(stats(&dp)["cookie_learnt"], 1, "control: the plain answer");
}
