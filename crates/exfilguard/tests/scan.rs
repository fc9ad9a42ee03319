//! `exfilguard scan` on a capture the test writes itself, with good and hostile packets.

use exfilguard_dns::packet::build::{tcp_dns_frame, udp_frame, vxlan_frame};
use exfilguard_dns::{build_query, write_pcap, DnsName};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    build_query(&DnsName::parse(name).unwrap(), qtype, 1).unwrap()
}

/// A raw DNS query with a hand-made question section (for names hickory would refuse to build).
fn raw_query(question: &[u8]) -> Vec<u8> {
    let mut m = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(question);
    m
}

#[test]
fn scan_classifies_queries_and_survives_hostile_packets() {
    let c = sa("10.1.0.2:41000");
    let r = sa("10.1.0.1:53");
    let tunnel = "q+aDvIPUCGcDHHAbNdlJFXaCj+nHxXN8w/lOW7b5iVSg+taEkbH8ssUnxRrPgND.5VGfRergsUjUbvbSOamAJcm21gqS00H9ji8yCNBw4lbTcfUKmfpKf3QnZEz8DUl.t.evil.org";
    let mut frames = vec![
        udp_frame(c, r, &query("www.wikipedia.org", 1)),
        udp_frame(c, sa("10.1.0.1:5353"), &query("mail.example.com", 28)),
        udp_frame(c, r, &query(tunnel, 16)),
        tcp_dns_frame(c, r, &query("dIUEABDEEOVAAAQAGUHVAUAAAAMFAAAAC37CAAFUWW22M6HRPM4PIAEAAHRNFCA.AAAEAQQCWZBIDM5EGV2ZHXRJGVSTL3UKEYGHUQLRODBRES633FAACXNR6HRX6GV.t.evil.org", 10)),
        vxlan_frame(sa("192.0.2.1:5000"), sa("192.0.2.2:0"), 7, &udp_frame(c, r, &query(tunnel, 16))),
        udp_frame(sa("[fd00::2]:4000"), sa("[fd00::1]:53"), &query("www.example.net", 1)),
    ];
    let good = frames.len();
    let mut looped = raw_query(&[0xc0, 12, 0, 1, 0, 1]);
    looped[5] = 1;
    let mut long_label = raw_query(&[64]);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut long_name = raw_query(&[]);
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'b'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut empty_q = raw_query(&[0, 0, 1, 0, 1]);
    empty_q[5] = 0;
    for bad in [looped, long_label, long_name, empty_q] {
        frames.push(udp_frame(c, r, &bad));
    }
    let full = udp_frame(c, r, &query("cut.example.com", 1));
    frames.push(full[..full.len() - 6].to_vec()); // truncated
    frames.push(full[..20].to_vec()); // cut inside the IP header
    frames.push(udp_frame(c, sa("10.1.0.1:80"), b"GET / HTTP/1.1\r\n\r\n")); // not DNS

    let dir = std::env::temp_dir().join(format!("exfilguard-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("t.pcap");
    let stamped: Vec<(Duration, Vec<u8>)> = frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| (Duration::from_millis(i as u64), f))
        .collect();
    write_pcap(std::fs::File::create(&pcap).unwrap(), &stamped).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan", "--format", "json"])
        .arg(&pcap)
        .output()
        .unwrap();
    // exit status 1: malicious queries were found
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (queries, summary) = lines.split_at(lines.len() - 1);
    assert_eq!(queries.len(), good, "{queries:#?}");
    let class = |i: usize| queries[i]["class"].as_str().unwrap().to_owned();
    assert_eq!(class(0), "benign");
    assert_eq!(queries[1]["dst"], "10.1.0.1:5353");
    assert_eq!(queries[1]["client"], "10.1.0.2");
    assert_eq!(queries[1]["qtype_name"], "AAAA");
    assert_eq!(class(1), "benign");
    assert_eq!(class(2), "tunnel");
    assert_eq!(queries[3]["transport"], "tcp");
    assert_eq!(class(3), "tunnel");
    assert_eq!(queries[4]["encapsulation"][0], "vxlan");
    assert_eq!(class(4), "tunnel");
    assert_eq!(queries[5]["dst"], "[fd00::1]:53");
    let s = &summary[0]["summary"];
    assert_eq!(s["totals"]["frames"], 13);
    assert_eq!(s["totals"]["queries"], good);
    // Five malformed DNS packets and one broken IP header give per-packet errors, not a crash.
    assert!(s["totals"]["errors"].as_u64().unwrap() >= 5, "{s}");
    assert_eq!(s["domains"]["evil.org"]["malicious"], 3);
    // the per-client summary: the tunnel's client, with its domain
    assert_eq!(s["clients"]["10.1.0.2"]["malicious"], 3, "{s}");
    assert_eq!(
        s["clients"]["10.1.0.2"]["malicious_domains"][0][0],
        "evil.org"
    );
    assert_eq!(s["clients"]["fd00::2"]["malicious"], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frame 7") && err.contains("frame 10"), "{err}");

    // The table format and a corrupt file.
    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan"])
        .arg(&pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("evil.org") && text.contains("tunnel"),
        "{text}"
    );
    std::fs::write(dir.join("bad.pcap"), b"definitely not a capture").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan"])
        .arg(dir.join("bad.pcap"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "an error is exit status 2");
    assert!(
        err.contains("no DNS records found") && err.contains("line 1 reads"),
        "{err}"
    );
    assert!(
        err.contains("pcapng") && err.contains("Zeek dns.log") && err.contains("zstd"),
        "the error lists what scan reads: {err}"
    );

    // issue 25: the same capture gzip-compressed, and on stdin, gives the same report
    let scan = |arg: &std::path::Path, stdin: Option<&std::path::Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_exfilguard"));
        c.args(["scan", "--format", "json"]).arg(arg);
        if let Some(f) = stdin {
            c.stdin(std::fs::File::open(f).unwrap());
        }
        let out = c.output().unwrap();
        assert!(
            out.status.code() == Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = scan(&pcap, None);
    assert!(plain.contains("evil.org"));
    let gz = dir.join("t.pcap.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", pcap.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success(), "gzip");
    assert_eq!(scan(&gz, None), plain, "gzip-compressed capture");
    assert_eq!(
        scan(std::path::Path::new("-"), Some(&pcap)),
        plain,
        "capture on stdin"
    );
    assert_eq!(
        scan(std::path::Path::new("-"), Some(&gz)),
        plain,
        "gzip on stdin"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 25: a query log scans like a capture (Zeek dns.log here), with the client column, the
/// type's name and the per-client summary; a log of benign names only exits 0.
#[test]
fn scan_reads_query_logs_with_clients_and_exit_status() {
    let zeek = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../exfilguard-ingest/tests/samples/zeek-dns.log"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan", zeek])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].trim_start().starts_with("at") && lines[0].contains("client"),
        "{text}"
    );
    let tunnel = lines
        .iter()
        .find(|l| l.contains("t.evil.test"))
        .expect("the tunnel query");
    assert!(
        tunnel.contains("192.168.1.23") && tunnel.contains("TXT") && tunnel.contains("tunnel"),
        "{tunnel}"
    );
    assert!(text.contains("read as zeek-tsv 5"), "{text}");
    let per_client = text.split("per client").nth(1).expect("a per-client table");
    let first = per_client.lines().nth(2).unwrap_or("");
    assert!(
        first.starts_with("192.168.1.23") && first.contains("evil.test (1)"),
        "the client with malicious queries comes first: {per_client}"
    );

    // responses only (an Unbound log-replies log, a one-way capture): judged, not "clean"
    let dir = std::env::temp_dir().join(format!("eg-scan-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let replies = dir.join("replies.log");
    std::fs::write(
        &replies,
        "[1796598518] unbound[1:0] reply: 10.0.0.5 www.example.com. A IN NOERROR 0.000 0 45\n\
         [1796598519] unbound[1:0] reply: 10.0.0.5 aGVsbG8gd29ybGQgZXhmaWx0cmF0aW9u.t.evil.test. TXT IN NXDOMAIN 0.000 0 45\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan", "--format", "json", "--summary-only"])
        .arg(&replies)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["totals"]["unasked_responses"], 2, "{v}");

    // the benign control
    let log = dir.join("benign.log");
    std::fs::write(
        &log,
        "1796594400 192.168.1.10 www.example.com\n1796594401 192.168.1.11 mail.google.com\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exfilguard"))
        .args(["scan", "--format", "json"])
        .arg(&log)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
