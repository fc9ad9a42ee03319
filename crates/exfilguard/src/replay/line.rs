//! One line of a query log for `exfilguard replay`: an OCSF JSON event (`time`,
//! `src_endpoint.ip`, `query.hostname`, `rcode_id`) or `SECONDS CLIENT NAME [RCODE]`.
//!
//! Self-contained (std, serde_json, exfilguard-dns) so the fuzz target and the corpus test
//! (`fuzz/src/lib.rs`) compile this same file.

use exfilguard_dns::DnsName;
use std::net::IpAddr;

/// One observation from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts_ms: u64,
    pub client: IpAddr,
    pub name: DnsName,
    /// Some: a response with this RCODE; None: a query.
    pub rcode: Option<u8>,
}

/// One trimmed, non-empty, non-comment line; `None` when it is not a record.
pub fn parse_line(l: &str) -> Option<Record> {
    if l.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        return Some(Record {
            ts_ms: v.get("time")?.as_u64()?,
            client: v.pointer("/src_endpoint/ip")?.as_str()?.parse().ok()?,
            name: DnsName::parse(v.pointer("/query/hostname")?.as_str()?).ok()?,
            rcode: v.get("rcode_id").and_then(|r| r.as_u64()).map(|r| r as u8),
        });
    }
    let mut f = l.split_whitespace();
    let secs: f64 = f.next()?.parse().ok()?;
    let client = f.next()?.parse().ok()?;
    let name = DnsName::parse(f.next()?).ok()?;
    let rcode = match f.next() {
        Some(r) => Some(r.parse().ok()?),
        None => None,
    };
    (secs.is_finite() && secs >= 0.0).then_some(Record {
        ts_ms: (secs * 1000.0) as u64,
        client,
        name,
        rcode,
    })
}
