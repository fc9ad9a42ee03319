//! The bodies of the fuzz targets: one function per target, each taking the attacker's bytes
//! and asserting what must hold for any input (no panic, bounded output, round trips).
//!
//! Compiled twice from this one file: as the `exfilguard-fuzz` library the cargo-fuzz
//! binaries in `fuzz_targets/` call, and as a module of the stable corpus test
//! `crates/exfilguard/tests/fuzz_corpus.rs`, which feeds every committed corpus file
//! (`fuzz/seeds/<target>/`) and seeded random mutations through [`TARGETS`] on every
//! `cargo test`. See docs/fuzzing.md.

use exfilguard_dns::{
    dns_payloads, looks_like_dns, parse_message, read_capture, DnsName, LinkType,
};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// A target: its name (the directory under `fuzz/seeds/` and the `fuzz_targets/` binary) and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order docs/fuzzing.md lists them.
pub const TARGETS: &[Target] = &[
    ("name_parse", name_parse),
    ("dns_message", dns_message),
    ("packet", packet),
    ("capture", capture),
    ("rpz_answer", rpz_answer),
    ("resolver_request", resolver_request),
    ("config_toml", config_toml),
    ("replay_log", replay_log),
    ("kernel_event", kernel_event),
];

/// What every name must satisfy: finite features, a registered domain, a normalised form
/// that is stable, and presentation text that parses back to the same name.
fn check_name(n: &DnsName) {
    let f = exfilguard_detect::extract(n, exfilguard_detect::Lexicon::embedded());
    assert!(f.values.iter().all(|v| v.is_finite()), "features of {n}");
    let split = n.split();
    assert!(split.subdomain_labels() <= n.label_count());
    let _ = n.registered_domain();
    assert!(n.wire_len() <= 255);
    assert_eq!(
        DnsName::parse(&n.to_string()).as_ref(),
        Ok(n),
        "text of {n}"
    );
    let norm = n.normalized();
    if let Ok(again) = DnsName::parse(&norm) {
        assert_eq!(again.normalized(), norm, "normalising {n} twice");
    }
}

/// Names from presentation text (configs, logs, lists) and from raw wire labels (queries).
pub fn name_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = DnsName::parse(text) {
            check_name(&n);
        }
    }
    // The same bytes as length-prefixed labels.
    let mut labels = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        labels.push(&tail[..len]);
        rest = &tail[len..];
    }
    if let Ok(n) = DnsName::from_labels(labels) {
        check_name(&n);
    }
}

/// A DNS message off the wire: every question name is a valid name, and a query rebuilt
/// from a question parses back to the same question.
pub fn dns_message(data: &[u8]) {
    let _ = looks_like_dns(data);
    let Ok(m) = parse_message(data) else { return };
    assert!(m.is_response || !m.questions.is_empty());
    for q in &m.questions {
        check_name(&q.name);
        if let Ok(wire) = exfilguard_dns::build_query(&q.name, q.qtype, m.id) {
            let back = parse_message(&wire).expect("a query exfilguard built parses");
            assert_eq!(back.questions.len(), 1);
            assert_eq!(back.questions[0].name, q.name);
            assert_eq!(back.questions[0].qtype, q.qtype);
        }
    }
}

fn dns_in_frame(frame: &[u8], link: LinkType) {
    let Ok(payloads) = dns_payloads(frame, link) else {
        return;
    };
    let range = frame.as_ptr_range();
    for p in payloads {
        // payloads are views into the frame, never copies or overreads
        let r = p.payload.as_ptr_range();
        assert!(range.start <= r.start && r.end <= range.end);
        assert!(p.encapsulation.len() <= 16);
        let _ = looks_like_dns(p.payload);
        if let Ok(m) = parse_message(p.payload) {
            for q in &m.questions {
                let _ = q.name.registered_domain();
            }
        }
    }
}

/// One captured frame as every link type exfilguard reads.
pub fn packet(data: &[u8]) {
    for link in [LinkType::Ethernet, LinkType::RawIp, LinkType::LinuxSll] {
        dns_in_frame(data, link);
    }
}

/// A whole pcap or pcapng file (`scan`, `replay`): frames are numbered 1, 2, …, at most one
/// error ends the stream, and a file cannot yield more frames than it has bytes for.
pub fn capture(data: &[u8]) {
    let Ok(frames) = read_capture(data) else {
        return;
    };
    let (mut n, mut errors) = (0u64, 0u32);
    for item in frames {
        match item {
            Ok(f) => {
                assert_eq!(errors, 0, "a frame after the error");
                n += 1;
                assert_eq!(f.index, n);
                assert!(f.data.len() <= data.len());
                if let Some(link) = f.link {
                    dns_in_frame(&f.data, link);
                }
            }
            Err(_) => errors += 1,
        }
        // pcap records take 16 header bytes, pcapng blocks at least 12
        assert!(
            n as usize * 12 <= data.len(),
            "{n} frames from {} bytes",
            data.len()
        );
        assert!(errors <= 1, "errors after the first");
    }
}

/// A zone with data in it, shared by every run (answering never changes it).
fn zone() -> &'static exfilguard_rpz::Zone {
    static ZONE: OnceLock<exfilguard_rpz::Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let z = exfilguard_rpz::Zone::new(exfilguard_rpz::RpzSettings {
            journal: 4,
            ..Default::default()
        })
        .expect("default RPZ settings");
        z.add("evil.example").expect("valid");
        z.change(&["c2.test", "dga-xyz.example"], &["evil.example"])
            .expect("valid");
        z
    })
}

fn response(reply: &[u8]) -> Message {
    let m = Message::from_vec(reply).expect("every answer parses");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    m
}

/// A request from an RPZ secondary (or anyone who can reach `rpz.listen`): SOA, AXFR, IXFR,
/// NOTIFY, garbage. Answers parse, keep the request's id, fit a TCP message, and a peer
/// outside `allow_transfer` never sees a record.
pub fn rpz_answer(data: &[u8]) {
    let z = zone();
    for (allowed, tcp) in [(true, true), (true, false), (false, true), (false, false)] {
        let Some(msgs) = z.answer(data, allowed, tcp) else {
            continue;
        };
        assert!(data.len() >= 12, "an answer to {} bytes", data.len());
        assert!(!msgs.is_empty());
        let id = u16::from_be_bytes([data[0], data[1]]);
        for raw in &msgs {
            assert!(raw.len() <= 65535);
            let m = response(raw);
            assert_eq!(m.metadata.id, id);
            if !allowed {
                assert!(m.answers.is_empty() && m.authorities.is_empty());
                assert!(matches!(
                    m.metadata.response_code,
                    ResponseCode::Refused | ResponseCode::FormErr
                ));
            }
            if !tcp {
                assert_eq!(msgs.len(), 1, "one UDP answer");
            }
        }
    }
}

/// A client's message to `exfilguard resolve`, through the pure steps of its request path
/// (parse, question name, the FORMERR/SERVFAIL and block answers it writes itself).
pub fn resolver_request(data: &[u8]) {
    use exfilguard_agent::config::BlockAction;
    use exfilguard_resolver::answer::{block, error_for};
    if data.len() < 12 {
        assert!(error_for(data, ResponseCode::FormErr).is_none());
        return;
    }
    let id = u16::from_be_bytes([data[0], data[1]]);
    for rcode in [ResponseCode::FormErr, ResponseCode::ServFail] {
        let a = error_for(data, rcode);
        if let Some(a) = a {
            assert_eq!(response(&a).metadata.id, id);
        }
    }
    let Ok(req) = Message::from_vec(data) else {
        return;
    };
    if req.metadata.message_type != MessageType::Query
        || req.metadata.op_code != OpCode::Query
        || req.queries.len() != 1
    {
        return;
    }
    let Ok(name) = DnsName::from_labels(req.queries[0].name().iter()) else {
        return;
    };
    check_name(&name);
    for action in [
        BlockAction::Refused,
        BlockAction::Nxdomain,
        BlockAction::Sinkhole,
    ] {
        let a = block(
            &req,
            action,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv6Addr::LOCALHOST,
        );
        assert_eq!(response(&a).metadata.id, id);
    }
}

/// The agent's TOML config (`--config`, `config --check`): an accepted config validates, and
/// what `config --check` prints of it reads back as the same config.
pub fn config_toml(data: &[u8]) {
    use exfilguard_agent::config::Config;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    cfg.validate().expect("an accepted config validates");
    let printed = toml::to_string(&cfg).expect("an accepted config prints");
    let again = Config::from_toml(&printed).expect("the printed config is accepted");
    assert_eq!(again, cfg, "printed config:\n{printed}");
}

/// Any input of `exfilguard scan` and `replay` (captures, dnstap, every log format, gzip and
/// zstd), read by `exfilguard_ingest`, then the behaviour analytics over what it yields, with
/// thresholds low enough for alarms.
pub fn replay_log(data: &[u8]) {
    let mut records = Vec::new();
    let Ok(stats) = exfilguard_ingest::read_bytes(data, |r| records.push(r)) else {
        return;
    };
    assert_eq!(stats.records as usize, records.len());
    assert!(stats.problems.len() <= exfilguard_ingest::MAX_PROBLEMS);
    for r in &records {
        check_name(&r.name);
    }
    records.sort_by_key(|r| r.ts_ms);
    let settings = exfilguard_behaviour::Settings {
        max_pairs: 8,
        max_clients: 8,
        info_alarm_bytes: 16.0,
        dga_min_domains: 2,
        beacon_min_queries: 4,
        beacon_min_secs: 0.5,
        ..Default::default()
    };
    let mut t = exfilguard_behaviour::Tracker::new(settings);
    for r in records {
        let alarms = match r.rcode {
            None => t.observe_query(r.ts_ms, r.client, &r.name),
            Some(rc) => t.observe_response(r.ts_ms, r.client, &r.name, rc, 0.5),
        };
        for a in alarms {
            assert!(a.novel_bytes.is_finite() && a.after_secs.is_finite());
        }
    }
    assert!(t.pairs() <= 8 && t.clients() <= 8);
}

/// A ring-buffer record from the BPF programs (kernel-written, decoded without `/proc`).
pub fn kernel_event(data: &[u8]) {
    let Ok(ev) = exfilguard_dataplane::Event::decode_observation(data) else {
        return;
    };
    assert!(ev.packet.len() <= data.len() && ev.name_wire.len() <= data.len());
    let _ = ev.labels();
    let _ = ev.name_text();
    assert_eq!(ev.wire_frame().len(), ev.packet.len());
    let _ = serde_json::to_string(&ev).expect("events serialise");
}
