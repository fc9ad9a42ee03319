//! Every input format from a sample: dnsmasq, Unbound (log and dnstap) were written by the real
//! daemons on loopback (dnsmasq 2.90, Unbound 1.17.1 with fstrm_capture 0.6.1); Zeek and BIND
//! follow their documented layouts (neither runs here). Each is also read gzip- and
//! zstd-compressed, and a log of nothing readable gives an error that lists the formats.

use exfilguard_ingest::{read, read_bytes, Record, Stats};
use std::io::Write;
use std::path::{Path, PathBuf};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(name)
}

fn all(path: &Path) -> (Vec<Record>, Stats) {
    let mut out = Vec::new();
    let stats = read(path, |r| out.push(r)).unwrap();
    (out, stats)
}

/// (client, name, qtype, rcode) of each record.
fn brief(rs: &[Record]) -> Vec<(String, String, String, Option<u8>)> {
    rs.iter()
        .map(|r| {
            (
                r.client.to_string(),
                r.name.to_string(),
                r.qtype_name().unwrap_or_default(),
                r.rcode,
            )
        })
        .collect()
}

fn q(c: &str, n: &str, t: &str, rc: Option<u8>) -> (String, String, String, Option<u8>) {
    (c.into(), n.into(), t.into(), rc)
}

#[test]
fn dnsmasq_log_queries_extra() {
    let (rs, st) = all(&sample("dnsmasq-extra.log"));
    assert_eq!(
        brief(&rs),
        [
            q("127.0.0.1", "www.example.com", "A", None),
            q("127.0.0.1", "www.example.com", "A", Some(0)),
            q("127.0.0.1", "aGVsbG8.t.test", "TXT", None),
            q("127.0.0.1", "aGVsbG8.t.test", "TXT", Some(3)),
            q("127.0.0.1", "x.example.com", "AAAA", None),
            // "config error is REFUSED": tied to its query by the serial
            q("127.0.0.1", "x.example.com", "AAAA", Some(5)),
        ]
    );
    // start-up and exit lines are dnsmasq's own, not unreadable
    assert_eq!((st.unparsable, st.formats["dnsmasq"]), (0, 6));
    assert_eq!(rs[0].client_port, Some(48805));
    assert_eq!(rs[1].ts_ms - rs[0].ts_ms, 0);
}

#[test]
fn unbound_log_queries_and_replies() {
    let (rs, st) = all(&sample("unbound.log"));
    // the same three rounds as the dnstap sample: a query line, then its reply line
    assert_eq!(rs.len(), 12);
    assert_eq!(
        brief(&rs[..4]),
        [
            q("127.0.0.1", "www.example.com", "A", None),
            q("127.0.0.1", "www.example.com", "A", Some(0)),
            q("127.0.0.1", "aGVsbG81.t.test", "TXT", None),
            q("127.0.0.1", "aGVsbG81.t.test", "TXT", Some(3)),
        ]
    );
    // start-up, statistics and shutdown lines are Unbound's own, not unreadable
    assert_eq!(st.unparsable, 0);
    assert_eq!(rs[0].ts_ms, 1_796_598_518_000);
}

#[test]
fn unbound_dnstap() {
    let (rs, st) = all(&sample("unbound.dnstap"));
    let b = brief(&rs);
    // three rounds of two names, each a CLIENT_QUERY and a CLIENT_RESPONSE
    assert_eq!(b.len(), 12, "{b:?} {st:?}");
    assert!(b.contains(&q("127.0.0.1", "www.example.com", "A", None)));
    assert!(b.contains(&q("127.0.0.1", "www.example.com", "A", Some(0))));
    assert!(b.contains(&q("127.0.0.1", "aGVsbG82.t.test", "TXT", Some(3))));
    assert!(rs
        .iter()
        .all(|r| r.transport == Some("udp") && r.format == "dnstap"));
    assert!(rs[0].ts_ms > 1_700_000_000_000);
    assert_eq!((st.errors, st.not_dns), (0, 0));
}

#[test]
fn zeek_dns_log_tsv_and_json_agree() {
    let want = [
        q("192.168.1.10", "www.example.com", "A", None),
        q("192.168.1.10", "www.example.com", "A", Some(0)),
        q("192.168.1.23", "aGVsbG8gd29ybGQ.t.evil.test", "TXT", None),
        q("fe80::1", "qwzxkjhfgtrp.com", "AAAA", None),
        q("fe80::1", "qwzxkjhfgtrp.com", "AAAA", Some(3)),
    ];
    let (tsv, st) = all(&sample("zeek-dns.log"));
    assert_eq!(brief(&tsv), want);
    assert_eq!(st.unparsable, 0);
    let (json, st) = all(&sample("zeek-dns.json"));
    assert_eq!(brief(&json), want);
    assert_eq!(st.unparsable, 0);
    // a response is stamped its round trip after the query; an ISO `ts` reads the same
    assert_eq!(tsv[1].ts_ms - tsv[0].ts_ms, 12);
    for (a, b) in tsv.iter().zip(&json) {
        assert_eq!(a.ts_ms, b.ts_ms);
    }
    assert_eq!(json[2].transport, Some("tcp"));
    assert_eq!(tsv[0].server, Some("192.168.1.1:53".parse().unwrap()));
}

#[test]
fn bind_query_log_with_print_time_and_through_syslog() {
    let (rs, st) = all(&sample("bind-query.log"));
    assert_eq!(
        brief(&rs),
        [
            q("192.168.1.10", "www.example.com", "A", None),
            q("192.168.1.23", "aGVsbG8gd29ybGQ.t.evil.test", "TXT", None),
            q("2001:db8::23", "qwzxkjhfgtrp.com", "AAAA", None),
            q("10.0.0.7", "old.example.net", "HTTPS", None),
        ]
    );
    assert_eq!(st.unparsable, 0);
    assert_eq!(rs[1].transport, Some("tcp"));
    assert_eq!(rs[0].server, Some("192.168.1.1:53".parse().unwrap()));
    assert_eq!(rs[1].ts_ms - rs[0].ts_ms, 1377);
}

#[test]
fn compressed_inputs_read_the_same() {
    for s in ["zeek-dns.log", "unbound.dnstap", "dnsmasq-extra.log"] {
        let raw = std::fs::read(sample(s)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(raw.as_slice(), 3).unwrap();
        let read_all = |data: &[u8]| {
            let mut v = Vec::new();
            read_bytes(data, |r| v.push(r)).unwrap();
            v
        };
        let plain = read_all(&raw);
        assert!(!plain.is_empty());
        assert_eq!(read_all(&gz), plain, "{s} gzip");
        assert_eq!(read_all(&zst), plain, "{s} zstd");
    }
}

#[test]
fn nothing_readable_names_the_formats_and_the_first_line() {
    let mut st = read_bytes(b"hello world\nthis is not a log\n", |_| panic!("no record")).unwrap();
    assert_eq!(st.unparsable, 2);
    let e = st.nothing_read("notes.txt").to_string();
    for want in [
        "line 1 reads \"hello world\"",
        "dnstap",
        "Zeek dns.log",
        "BIND",
        "Unbound",
        "zstd",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    // a broken dnstap stream keeps what came before the break
    let raw = std::fs::read(sample("unbound.dnstap")).unwrap();
    let mut n = 0;
    st = read_bytes(&raw[..raw.len() / 2], |_| n += 1).unwrap();
    assert!(n > 0 && st.stopped.is_some(), "{n} {st:?}");
}

/// An attacker's review: names crafted to pick another parser, blame another client, or hide
/// a query. A crafted line is read right or counted as unparsable, never skipped silently.
#[test]
fn crafted_names_neither_hide_a_query_nor_blame_another_client() {
    let log = "\
Dec  6 23:08:20 dnsmasq[1]: query[TXT] aaa bbb.t.evil.com from 10.0.0.5
Dec  6 23:08:20 dnsmasq[1]: query[A] x from 10.9.9.9 y.evil.com from 10.0.0.6
Dec  6 23:08:20 dnsmasq[1]: query[A] <name unprintable> from 10.0.0.7
Dec  6 23:08:20 dnsmasq[1]: forwarded www.example.com to 9.9.9.9
06-Dec-2026 22:00:00.123 queries: info: client @0x1 10.0.0.8#5 (p.dnsmasq[.t.evil.com): query: p.dnsmasq[.t.evil.com IN TXT + (10.0.0.1)
06-Dec-2026 22:00:00.124 queries: info: client @0x1 10.0.0.9#5 (q.x]:.t.evil.com): query: q.x]:.t.evil.com IN TXT + (10.0.0.1)
1796594400 10.0.0.10 p.named[x]:.t.evil.com
[1796598518] unbound[1:0] query: 10.0.0.11 c2.t.evil.com. TXT IN
[1796598518] unbound[1:0] info: 10.0.0.12 broken
[1796598518] unbound[1:0] info: start of service (unbound 1.17.1).
";
    let mut rs = Vec::new();
    let st = read_bytes(log.as_bytes(), |r| rs.push(r)).unwrap();
    let got: Vec<(String, String)> = rs
        .iter()
        .map(|r| (r.client.to_string(), r.name.to_string()))
        .collect();
    // the space is part of the name dnsmasq logged; the client is after the last " from "
    // (names print with DNS escapes: a space is \032)
    assert!(
        got.contains(&("10.0.0.5".into(), "aaa\\032bbb.t.evil.com".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "10.0.0.6".into(),
            "x\\032from\\03210.9.9.9\\032y.evil.com".into()
        )),
        "{got:?}"
    );
    assert!(!got.iter().any(|(c, _)| c == "10.9.9.9"), "{got:?}");
    // "dnsmasq[" or "named[" inside a name does not choose the parser
    assert!(
        got.contains(&("10.0.0.8".into(), "p.dnsmasq[.t.evil.com".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&("10.0.0.9".into(), "q.x]:.t.evil.com".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&("10.0.0.10".into(), "p.named[x]:.t.evil.com".into())),
        "{got:?}"
    );
    // Unbound's log-tag-queryreply
    assert!(
        got.contains(&("10.0.0.11".into(), "c2.t.evil.com".into())),
        "{got:?}"
    );
    // the unprintable name and the broken Unbound query are counted, not dropped silently;
    // "forwarded" and "start of service" are the daemons' own lines
    assert_eq!(st.unparsable, 2, "{st:?} {got:?}");
}

#[test]
fn a_long_line_and_short_reads_are_handled() {
    // a line of 1 MB without a newline, then a record: bounded, and the record still reads
    let mut data = vec![b'a'; 1 << 20];
    data.extend_from_slice(b"\n1796594400 10.0.0.1 www.example.com\n");
    let mut n = 0;
    let st = read_bytes(&data, |_| n += 1).unwrap();
    assert_eq!((n, st.unparsable), (1, 1));
    // a source that hands out one byte per read is still recognised as dnstap
    let raw = std::fs::read(sample("unbound.dnstap")).unwrap();
    let one_byte = std::io::BufReader::with_capacity(1, std::io::Cursor::new(raw));
    let mut rs = Vec::new();
    exfilguard_ingest::read_from(Box::new(one_byte), |r| rs.push(r)).unwrap();
    assert_eq!(rs.len(), 12);
}
