//! The real BPF programs, loaded into this kernel and driven with BPF_PROG_TEST_RUN: every
//! decision path and a malformed-packet corpus. Needs root (CAP_BPF + CAP_NET_ADMIN); without
//! it the test fails loudly unless EXFILGUARD_SKIP_KERNEL_TESTS=1 says to skip.

mod common;

use common::*;
use exfilguard_dataplane::{Action, Dataplane, KernelPolicy, LoadOptions, Mode};
use exfilguard_dns::packet::build::{tcp_dns_frame, udp_frame, vxlan_frame};

const PASS: i32 = -1;
const DROP: i32 = 2;

fn load() -> Option<Dataplane> {
    if !kernel_tests_possible() {
        return None;
    }
    Some(
        Dataplane::load(LoadOptions {
            pin_dir: None,
            persist: false,
            ..Default::default()
        })
        .expect("loading the BPF programs (verifier)"),
    )
}

fn run(dp: &Dataplane, frame: &[u8]) -> i32 {
    dp.test_run_tc(frame, 1).expect("BPF_PROG_TEST_RUN").0
}

const TUNNEL: &str = "paaaafbhb3vhdf5cqhwytuoz3ng2fzx4ugwlj3o0gaqoqkbgj4pu.t1.tunnel.example.com";

#[test]
fn decisions_on_every_path() {
    let Some(mut dp) = load() else { return };

    // non-DNS traffic passes untouched
    let tls = udp_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:443"), &[0x16; 64]);
    assert_eq!(run(&dp, &tls), PASS);

    // plainly benign query passes without an event
    let benign = udp_frame(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:53"),
        &query("www.example.com", 1, 1),
    );
    assert_eq!(run(&dp, &benign), PASS);
    assert!(dp.drain_events().unwrap().is_empty());

    // a tunnel query is held: dropped in the kernel, exact frame handed to userspace
    let held = udp_frame(
        sa("10.0.0.1:40001"),
        sa("10.0.0.2:53"),
        &query(TUNNEL, 16, 2),
    );
    assert_eq!(run(&dp, &held), DROP);
    let ev = dp.drain_events().unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].action, Action::Hold);
    assert_eq!(ev[0].packet, held, "held frame must be byte-identical");
    assert_eq!(ev[0].name_text(), TUNNEL);
    // the allow-cache key is the kernel's own keyed hash of the exact question (the agent
    // hands back what the event carries): not the unkeyed FNV-1a anyone can search against,
    // the same for the same question, another for a case variant or another type
    assert_ne!(
        ev[0].name_hash,
        exfilguard_dataplane::hash::question_hash(&ev[0].name_wire, 16, 1),
        "the allow-cache key is unkeyed FNV-1a"
    );
    let key_of = |name: &str, qtype: u16| {
        let f = udp_frame(
            sa("10.0.0.1:40009"),
            sa("10.0.0.2:53"),
            &query(name, qtype, 9),
        );
        assert_eq!(run(&dp, &f), DROP, "{name} held");
        let e = dp.drain_events().unwrap();
        e[0].name_hash
    };
    assert_eq!(key_of(TUNNEL, 16), ev[0].name_hash, "the same question");
    assert_ne!(
        key_of(&TUNNEL.to_uppercase(), 16),
        ev[0].name_hash,
        "a case variant"
    );
    assert_ne!(key_of(TUNNEL, 1), ev[0].name_hash, "another type");
    assert_eq!(ev[0].qtype, 16);
    assert_eq!(ev[0].dport, 53);
    assert!(ev[0].reasons.contains(&"long_label"), "{:?}", ev[0].reasons);

    // once judged benign (allow cache) the same name passes
    dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
    assert_eq!(run(&dp, &held), PASS);

    // a blocklisted registered domain drops every subdomain, checked by suffix hash
    dp.block_domain("evil-c2.net").unwrap();
    let blocked = udp_frame(
        sa("10.0.0.1:40002"),
        sa("10.0.0.2:53"),
        &query("www.Evil-C2.net", 1, 3),
    );
    assert_eq!(run(&dp, &blocked), DROP);
    let ev = dp.drain_events().unwrap();
    assert_eq!(ev[0].action, Action::Block);
    assert_eq!(
        ev[0].name_text(),
        "www.evil-c2.net",
        "kernel lower-cases the name"
    );
    dp.unblock_domain("evil-c2.net").unwrap();
    // unblocked, the mixed-case spelling is held (case can carry data), one case passes
    assert_eq!(run(&dp, &blocked), DROP);
    assert!(dp.drain_events().unwrap()[0]
        .reasons
        .contains(&"mixed_case"));
    let lower = udp_frame(
        sa("10.0.0.1:40002"),
        sa("10.0.0.2:53"),
        &query("www.evil-c2.net", 1, 3),
    );
    assert_eq!(run(&dp, &lower), PASS);

    // monitor mode reports and passes
    let p = KernelPolicy {
        mode: Mode::Monitor,
        ..Default::default()
    };
    dp.set_policy(&p).unwrap();
    let other = udp_frame(
        sa("10.0.0.1:40003"),
        sa("10.0.0.2:53"),
        &query(&format!("x{TUNNEL}"), 1, 4),
    );
    assert_eq!(run(&dp, &other), PASS);
    let ev = dp.drain_events().unwrap();
    assert_eq!(ev[0].action, Action::Report);
    assert!(ev[0].packet.is_empty());
    dp.set_policy(&KernelPolicy::default()).unwrap();
}

#[test]
fn dns_is_found_by_header_not_port() {
    let Some(dp) = load() else { return };
    let q = query(TUNNEL, 1, 9);
    let v4 = sa("10.0.0.1:40000");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("udp/9999", udp_frame(v4, sa("10.0.0.2:9999"), &q)),
        (
            "udp6",
            udp_frame(sa("[fd00::1]:4000"), sa("[fd00::2]:53"), &q),
        ),
        ("tcp/53", tcp_dns_frame(v4, sa("10.0.0.2:53"), &q)),
        ("tcp/8053", tcp_dns_frame(v4, sa("10.0.0.2:8053"), &q)),
        (
            "vxlan",
            vxlan_frame(
                v4,
                sa("10.0.0.2:0"),
                42,
                &udp_frame(sa("192.168.1.1:5000"), sa("192.168.1.2:53"), &q),
            ),
        ),
        (
            "geneve",
            geneve_frame(&udp_frame(sa("192.168.1.1:5000"), sa("192.168.1.2:53"), &q)),
        ),
        (
            "qinq",
            with_vlan_tags(&udp_frame(v4, sa("10.0.0.2:53"), &q)),
        ),
        (
            "ipv4 options",
            with_ipv4_options(&udp_frame(v4, sa("10.0.0.2:53"), &q)),
        ),
        (
            "ipv6 ext headers",
            with_ipv6_ext(&udp_frame(sa("[fd00::1]:4000"), sa("[fd00::2]:53"), &q)),
        ),
    ];
    for (what, frame) in cases {
        assert_eq!(run(&dp, &frame), DROP, "{what}: tunnel query must be held");
        let ev = dp.drain_events().unwrap();
        assert_eq!(ev.len(), 1, "{what}");
        assert_eq!(ev[0].action, Action::Hold, "{what}");
        assert_eq!(ev[0].name_text(), TUNNEL, "{what}");
        assert_eq!(ev[0].packet, frame, "{what}");
    }
}

#[test]
fn released_frame_passes_with_its_ticket() {
    let Some(dp) = load() else { return };
    let frame = udp_frame(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:53"),
        &query(TUNNEL, 1, 77),
    );
    assert_eq!(run(&dp, &frame), DROP);
    let ev = dp.drain_events().unwrap().remove(0);
    // the ticket is what `release` writes before re-injecting; here the frame comes back
    // through test-run with the release mark instead of through AF_PACKET.
    dp.release_ticket_only(&ev).unwrap();
    let mark = dp.policy().release_mark;
    assert_eq!(
        dp.test_run_tc_marked(&frame, mark).unwrap(),
        PASS,
        "released once"
    );
    // the ticket names this exact message and lives 2 s, so the copy a second hook sees
    // (socket layer, then tc) passes too: the same bytes, nothing new leaves
    assert_eq!(dp.test_run_tc_marked(&frame, mark).unwrap(), PASS);
    let stats: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
    assert_eq!(stats["released"], 2);
    assert_eq!(stats["pass_allow"], 0);
    // a forged mark without a ticket on an unknown suspicious name is still held
    let other = udp_frame(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:53"),
        &query(&format!("z{TUNNEL}"), 1, 78),
    );
    assert_eq!(
        dp.test_run_tc_marked(&other, mark).unwrap(),
        DROP,
        "mark alone is not a pass"
    );
}

#[test]
fn malformed_corpus_gets_a_defined_verdict() {
    let Some(dp) = load() else { return };
    let corpus = malformed_corpus();
    assert!(corpus.len() > 200, "corpus of {}", corpus.len());
    let mut drops = 0;
    let mut refused = Vec::new();
    for (what, frame) in &corpus {
        let v = match dp.test_run_tc(frame, 1) {
            Ok((v, _)) => v,
            Err(e) => {
                // the test harness itself refuses some truncations (EINVAL before the program
                // runs): count them, the stack never delivers such frames either
                refused.push(format!("{what}: {e}"));
                continue;
            }
        };
        assert!(v == PASS || v == DROP, "{what}: verdict {v}");
        drops += (v == DROP) as usize;
        let _ = dp.drain_events().unwrap();
    }
    eprintln!(
        "malformed corpus: {} frames, {drops} dropped, {} refused by BPF_PROG_TEST_RUN itself, rest passed",
        corpus.len(),
        refused.len()
    );
    assert!(
        refused.len() < 40,
        "test harness refused too much: {refused:?}"
    );
    let stats: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
    assert!(
        stats["malformed"] > 0,
        "the corpus must reach the name walker"
    );

    // the same corpus, and its mirror image as responses, through XDP and netfilter
    let (mut xdp_ok, mut nf_ok) = (0, 0);
    for (what, frame) in &corpus {
        if let Ok((v, _)) = dp.test_run_xdp(frame, 1) {
            assert!((1..=2).contains(&v), "{what}: XDP verdict {v}");
            xdp_ok += 1;
        }
        let mut turned = frame.clone();
        if turned.len() >= 14 {
            // swap MACs: harmless; what matters is the bytes after them
            turned[..12].rotate_left(6);
            if let Ok((v, _)) = dp.test_run_xdp(&turned, 1) {
                assert!((1..=2).contains(&v), "{what} (turned): XDP verdict {v}");
            }
            if let Ok(v) = dp.test_run_nf(&frame[14..]) {
                assert!(v == 0 || v == 1, "{what}: netfilter verdict {v}");
                nf_ok += 1;
            }
        }
        let _ = dp.drain_events().unwrap();
        let _ = dp.drain_observations().unwrap();
    }
    eprintln!("malformed corpus: XDP ran {xdp_ok}, netfilter ran {nf_ok} frames");
    assert!(
        xdp_ok > 200 && nf_ok > 150,
        "xdp {xdp_ok}, netfilter {nf_ok}"
    );
}

/// Random frames (fixed seed) shaped like DNS over UDP/IPv4 with random bytes after the UDP
/// header, through every packet program: a defined verdict each, never a harness error.
#[test]
fn random_frames_get_a_defined_verdict_everywhere() {
    let Some(dp) = load() else { return };
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 20_000;
    let mut verdicts = std::collections::BTreeMap::new();
    for i in 0..n {
        let len = 12 + (next() % 300) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            // half look like a one-question query, so the name walker sees hostile labels
            payload[2] = 0x01;
            payload[3] = 0x00;
            payload[4..6].copy_from_slice(&[0, 1]);
            payload[6..12].fill(0);
        }
        let port = if i % 3 == 0 {
            "10.0.0.2:53"
        } else {
            "10.0.0.2:5353"
        };
        let frame = udp_frame(sa("10.0.0.1:40000"), sa(port), &payload);
        let tc = run(&dp, &frame);
        assert!(tc == PASS || tc == DROP, "tc verdict {tc}");
        let (xdp, _) = dp.test_run_xdp(&frame, 1).unwrap();
        assert!((1..=2).contains(&xdp), "xdp verdict {xdp}");
        let nf = dp.test_run_nf(&frame[14..]).unwrap();
        assert!(nf == 0 || nf == 1, "netfilter verdict {nf}");
        *verdicts.entry((tc, xdp, nf)).or_insert(0u32) += 1;
        if i % 512 == 0 {
            let _ = dp.drain_events().unwrap();
            let _ = dp.drain_observations().unwrap();
        }
    }
    eprintln!("{n} random frames, (tc, xdp, netfilter) verdicts: {verdicts:?}");
    let stats: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
    assert!(stats["malformed"] > 0 && stats["hold"] > 0, "{stats:?}");
}

/// Verifier cost per program, printed so growth shows in every test log; the budgets are
/// twice the figures in docs/dataplane.md (the verifier's own limit is 1 M).
#[test]
fn verifier_cost_is_reported_and_within_budget() {
    let Some(dp) = load() else { return };
    let stats = dp.program_stats().unwrap();
    eprintln!("program              insns  verified  xlated B  jited B");
    for p in &stats {
        eprintln!(
            "{:<20} {:>5} {:>9} {:>9} {:>8}",
            p.name, p.insns, p.verified_insns, p.xlated_bytes, p.jited_bytes
        );
    }
    let budget = |name: &str| match name {
        "eg_tc_egress" | "eg_netfilter" | "eg_sock_egress" => 250_000,
        "eg_xdp_ingress" => 65_000,
        // attribution, quarantine and the encrypted-DNS policy (two unrolled port lists)
        "eg_sendmsg4" | "eg_sendmsg6" | "eg_connect4" | "eg_connect6" => 7_000,
        _ => 1_000,
    };
    assert!(stats.len() >= 8, "{stats:?}");
    for p in &stats {
        assert!(p.verified_insns > 0 && p.insns > 0, "{p:?}");
        assert!(
            p.verified_insns <= budget(&p.name),
            "{} verifier cost {} over its budget {}: see docs/dataplane.md",
            p.name,
            p.verified_insns,
            budget(&p.name)
        );
    }
}

/// A question the agent cleared stays cleared across a restart: the allow cache's keys are
/// hashes under the programs' own key, pinned with the cache (before, the key was drawn anew
/// at every load, so every cleared question was held once more). The key is still not the
/// unkeyed hash, and a question never cleared is still held after the restart.
#[test]
fn a_cleared_question_passes_after_a_restart() {
    if !kernel_tests_possible() {
        return;
    }
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/eg-test-restart-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let load = || {
        Dataplane::load(LoadOptions {
            pin_dir: Some(dir.clone()),
            persist: false,
            ..Default::default()
        })
        .expect("loading the BPF programs with pins")
    };
    let frame =
        |name: &str| udp_frame(sa("10.0.0.1:40001"), sa("10.0.0.2:53"), &query(name, 16, 7));
    let (cleared, other) = (frame(TUNNEL), frame(&format!("q{TUNNEL}")));
    let dp = load();
    assert_eq!(run(&dp, &cleared), DROP, "held before it is cleared");
    let ev = dp.drain_events().unwrap();
    assert_ne!(
        ev[0].name_hash,
        exfilguard_dataplane::hash::question_hash(&ev[0].name_wire, 16, 1)
    );
    dp.maps().allow_name_hash(ev[0].name_hash).unwrap();
    assert_eq!(run(&dp, &cleared), PASS, "cleared");
    drop(dp);
    let dp = load();
    let passed = run(&dp, &cleared);
    let other_verdict = run(&dp, &other);
    let events = dp.drain_events().unwrap();
    drop(dp);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        passed, PASS,
        "the cleared question is held again after a restart"
    );
    assert_eq!(
        other_verdict, DROP,
        "a question never cleared passed after a restart"
    );
    assert_eq!(events.len(), 1, "one event: the question never cleared");
}

/// What happens to a query the kernel would hold when it cannot be handed over: a full ring
/// or a dead agent (stale heartbeat). `fail_open = false` drops it, `true` passes it.
#[test]
fn held_queries_follow_the_fail_policy() {
    if !kernel_tests_possible() {
        return;
    }
    // one page: a held record (~2.4 KiB) fills it
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: None,
        ringbuf_bytes: 4096,
        ..Default::default()
    })
    .unwrap();
    let stats = |dp: &Dataplane| -> std::collections::HashMap<&'static str, u64> {
        dp.stats().unwrap().into_iter().collect()
    };
    let held = |i: u16| {
        udp_frame(
            sa("10.0.0.1:40001"),
            sa("10.0.0.2:53"),
            &query(&format!("q{i}{TUNNEL}"), 16, i),
        )
    };
    dp.heartbeat().unwrap();
    assert_eq!(run(&dp, &held(1)), DROP, "held");
    assert_eq!(run(&dp, &held(2)), DROP, "ring full, fail closed");
    let s = stats(&dp);
    // the second never became a hold: it was dropped at the reservation
    assert_eq!((s["hold"], s["ringbuf_full"], s["agent_down"]), (1, 1, 0));
    assert!(s["fail_closed"] >= 1);
    let open = KernelPolicy {
        fail_open: true,
        ..Default::default()
    };
    dp.set_policy(&open).unwrap();
    assert_eq!(run(&dp, &held(3)), PASS, "ring full, fail open");
    assert_eq!(
        dp.drain_events().unwrap().len(),
        1,
        "only the first was handed over"
    );

    // the agent stops polling: after 2 s its heartbeat is stale
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(run(&dp, &held(4)), PASS, "agent down, fail open");
    assert!(
        dp.drain_events().unwrap().is_empty(),
        "nothing queued for nobody"
    );
    dp.set_policy(&KernelPolicy::default()).unwrap();
    assert_eq!(run(&dp, &held(5)), DROP, "agent down, fail closed");
    assert_eq!(
        dp.drain_events().unwrap().len(),
        1,
        "queued for the next agent"
    );
    assert_eq!(stats(&dp)["agent_down"], 2);
    // back alive: holds again without counting
    dp.heartbeat().unwrap();
    assert_eq!(run(&dp, &held(6)), DROP);
    assert_eq!(stats(&dp)["agent_down"], 2);
}

#[test]
fn xdp_limits_nxdomain_floods() {
    let Some(mut dp) = load() else { return };
    let p = KernelPolicy {
        nx_limit: 50,
        nx_domain_limit: 1000,
        ..Default::default()
    };
    dp.set_policy(&p).unwrap();
    let mut verdicts = Vec::new();
    for i in 0..120u16 {
        let resp = nxdomain_response(&format!("r{i}.victim.example"), i);
        let frame = udp_frame(sa("10.0.0.2:53"), sa("10.0.0.1:40000"), &resp);
        verdicts.push(dp.test_run_xdp(&frame, 1).unwrap().0);
    }
    let passed = verdicts.iter().filter(|&&v| v == 2 /* XDP_PASS */).count();
    let dropped = verdicts.iter().filter(|&&v| v == 1 /* XDP_DROP */).count();
    assert_eq!(passed, 50, "first nx_limit NXDOMAINs pass");
    assert_eq!(dropped, 70);
    let stats: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
    assert_eq!(stats["xdp_nxdomain"], 120);
    assert_eq!(stats["xdp_ratelimited"], 70);
}

/// With `observe` set, what the kernel passes on its own (plain and allowlisted queries, the
/// NXDOMAIN answers the limiter lets through) is copied, frameless, to the observation ring;
/// held or blocked queries are not (the agent sees those as events), nor anything when unset.
#[test]
fn observation_ring_sees_what_the_kernel_passes() {
    let Some(mut dp) = load() else { return };
    let plain = udp_frame(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:53"),
        &query("apple-cat.files.example.org", 1, 7),
    );
    assert_eq!(run(&dp, &plain), PASS);
    assert!(
        dp.drain_observations().unwrap().is_empty(),
        "observe is off by default"
    );

    dp.set_policy(&KernelPolicy {
        observe: true,
        nx_limit: 3,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(run(&dp, &plain), PASS);
    let held = udp_frame(
        sa("10.0.0.1:40001"),
        sa("10.0.0.2:53"),
        &query(TUNNEL, 16, 8),
    );
    assert_eq!(run(&dp, &held), DROP);
    let obs = dp.drain_observations().unwrap();
    assert_eq!(obs.len(), 1, "only the passed query is observed");
    let o = &obs[0];
    assert_eq!(o.name_text(), "apple-cat.files.example.org");
    assert_eq!(
        (o.action, o.response, o.qtype, o.dns_id),
        (Action::Pass, false, 1, 7)
    );
    assert_eq!(o.src.to_string(), "10.0.0.1");
    assert!(o.packet.is_empty());
    // BPF_PROG_TEST_RUN hands the frame a socket of its own that no hook ever saw: a local
    // socket, known by its uid alone (sk_uid), never unattributed
    let p = o.process.as_ref().expect("the harness socket's owner");
    assert_eq!((p.tgid, p.uid, p.comm.as_str()), (0, 0, "(socket owner)"));
    assert_eq!(
        dp.drain_events().unwrap().len(),
        1,
        "the held query is an event"
    );

    // NXDOMAIN answers: observed until the per-client limiter drops them
    for i in 0..5u16 {
        let resp = nxdomain_response(&format!("q{i}x7k2.example"), i);
        let frame = udp_frame(sa("10.0.0.2:53"), sa("10.0.0.1:40000"), &resp);
        dp.test_run_xdp(&frame, 1).unwrap();
    }
    let obs = dp.drain_observations().unwrap();
    assert_eq!(
        obs.len(),
        3,
        "answers over nx_limit are dropped, not observed"
    );
    assert!(obs.iter().all(|o| o.response && o.rcode == 3));
    assert_eq!(
        obs[0].dst.to_string(),
        "10.0.0.1",
        "the client is the answer's destination"
    );
    let stats: std::collections::HashMap<_, _> = dp.stats().unwrap().into_iter().collect();
    assert_eq!(stats["observed"], 4);
    assert_eq!(stats["observe_full"], 0);
}

/// `KernelPolicy::suspicion` (used by the resolver front) is the kernel's hold test: both hold
/// exactly the same names, with the same reasons.
#[test]
fn rust_prefilter_agrees_with_the_kernel() {
    let Some(dp) = load() else { return };
    let policy = KernelPolicy::default();
    let names = [
        ("www.example.com", 1),
        ("www.example.com", 16),
        ("abcdefghi.abcdefghi.abcdefg.com", 1),
        ("abcdefghi.abcdefghi.abcdefgh.com", 1),
        ("abcdefghij.com", 28),
        ("a.b.c.d.com", 1),
        ("a.b.c.com", 65),
        ("a1b2c3.com", 1),
        ("a1b2c3d4.com", 1),
        ("mail_srv.example.org", 1),
        ("q+z8anwaba.hidemyself.org", 1),
        ("r12345.t.example", 16),
        ("x.y", 10),
        (TUNNEL, 16),
    ];
    for (i, (name, qtype)) in names.into_iter().enumerate() {
        let frame = udp_frame(
            sa("10.0.0.1:40100"),
            sa("10.0.0.2:53"),
            &query(name, qtype, 100 + i as u16),
        );
        let verdict = run(&dp, &frame);
        let ev = dp.drain_events().unwrap();
        let n = exfilguard_dns::DnsName::parse(name).unwrap();
        let wire = exfilguard_dataplane::hash::wire(n.labels());
        let mut rust = policy.suspicion(&wire, qtype);
        rust.sort();
        if rust.is_empty() {
            assert_eq!(verdict, PASS, "{name}/{qtype}: Rust passes, kernel held");
            assert!(ev.is_empty(), "{name}/{qtype}: {ev:?}");
        } else {
            assert_eq!(
                verdict, DROP,
                "{name}/{qtype}: Rust holds {rust:?}, kernel passed"
            );
            let mut k: Vec<&str> = ev[0].reasons.clone();
            k.sort();
            assert_eq!(k, rust, "{name}/{qtype}: reasons");
        }
    }
}
