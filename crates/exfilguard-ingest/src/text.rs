//! Query logs, one line at a time. Each line is tried against every format (files are
//! recognised from their lines, so a syslog mixing daemons reads too); the state a format
//! needs is kept here: Zeek's `#fields` header, and dnsmasq's pending queries (its reply
//! lines name no client).

use crate::{Record, Stats};
use anyhow::Result;
use chrono::{DateTime, NaiveDateTime};
use exfilguard_dns::DnsName;
use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// dnsmasq queries waiting for their reply line; older ones are forgotten past this.
const MAX_PENDING: usize = 65_536;
/// The longest line read (a Zeek line with many answers stays far below).
const MAX_LINE: u64 = 64 * 1024;

#[derive(Default)]
struct State {
    zeek_fields: Option<Vec<String>>,
    zeek_sep: Option<String>,
    /// dnsmasq: serial (or name) → (client, qtype, name) of a query not yet answered.
    pending: HashMap<String, (IpAddr, Option<u16>, DnsName)>,
}

/// What one line is.
enum Line {
    Records(Vec<Record>),
    /// A line of a known daemon that carries no query (dnsmasq "forwarded", "started" …).
    Other,
    Unparsable,
}

pub(crate) fn read(
    mut r: Box<dyn BufRead>,
    stats: &mut Stats,
    sink: &mut dyn FnMut(&mut Stats, Record),
) -> Result<()> {
    let mut st = State::default();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        // a line is read up to MAX_LINE bytes; the rest of a longer one is skipped, so a log
        // without newlines (or a decompression bomb) cannot take the memory
        if (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        if buf.len() as u64 == MAX_LINE && buf.last() != Some(&b'\n') {
            loop {
                let avail = r.fill_buf()?;
                if avail.is_empty() {
                    break;
                }
                match avail.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let k = avail.len();
                        r.consume(k);
                    }
                }
            }
            stats.unparsable += 1;
            if stats.first_unparsable.is_none() {
                stats.first_unparsable = Some((n, format!("a line over {MAX_LINE} bytes")));
            }
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let l = text.trim();
        match st.line(l, n) {
            Line::Records(rs) => rs.into_iter().for_each(|r| sink(stats, r)),
            Line::Other => {}
            Line::Unparsable => {
                stats.unparsable += 1;
                if stats.first_unparsable.is_none() {
                    stats.first_unparsable = Some((n, l.chars().take(120).collect()));
                }
            }
        }
    }
    Ok(())
}

fn qtype(s: &str) -> Option<u16> {
    let s = s.trim();
    if let Some(n) = s.strip_prefix("type=").or_else(|| s.strip_prefix("TYPE")) {
        return n.parse().ok();
    }
    let t = hickory_proto::rr::RecordType::from_str(&s.to_ascii_uppercase()).ok()?;
    Some(u16::from(t))
}

fn rcode(s: &str) -> Option<u8> {
    Some(match s.to_ascii_uppercase().as_str() {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" | "NOTIMPL" => 4,
        "REFUSED" => 5,
        "YXDOMAIN" => 6,
        "YXRRSET" => 7,
        "NXRRSET" => 8,
        "NOTAUTH" => 9,
        "NOTZONE" => 10,
        n => n.parse().ok()?,
    })
}

fn ms(secs: f64) -> Option<u64> {
    (0.0..1e12)
        .contains(&secs)
        .then_some((secs * 1000.0) as u64)
}

/// `Dec  6 22:38:09` at the start of a syslog line; the year is not written, so 2000 (a leap
/// year: Feb 29 reads) stands in.
fn syslog_time(l: &str) -> Option<u64> {
    let head = l.get(..15)?;
    let t = NaiveDateTime::parse_from_str(&format!("2000 {head}"), "%Y %b %e %H:%M:%S").ok()?;
    Some(t.and_utc().timestamp_millis().max(0) as u64)
}

/// Zeek's `ts`: epoch seconds, or ISO 8601 when `LogAscii::use_json` writes it so.
fn json_time(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => ms(n.as_f64()?),
        serde_json::Value::String(s) => {
            let t = DateTime::parse_from_rfc3339(s).ok()?;
            u64::try_from(t.timestamp_millis()).ok()
        }
        _ => None,
    }
}

fn record(ts_ms: u64, client: IpAddr, name: DnsName, at: u64, format: &'static str) -> Record {
    Record {
        ts_ms,
        client,
        client_port: None,
        server: None,
        name,
        qtype: None,
        rcode: None,
        transport: None,
        encapsulation: Vec::new(),
        at,
        format,
    }
}

impl State {
    fn line(&mut self, l: &str, at: u64) -> Line {
        if let Some(sep) = l.strip_prefix("#separator") {
            // "#separator \x09"
            let sep = sep.trim();
            self.zeek_sep = Some(
                match sep.strip_prefix("\\x").map(|h| u8::from_str_radix(h, 16)) {
                    Some(Ok(b)) => (b as char).to_string(),
                    _ => sep.to_string(),
                },
            );
            return Line::Other;
        }
        if let Some(f) = l.strip_prefix("#fields") {
            let sep = self.zeek_sep.clone().unwrap_or_else(|| "\t".into());
            self.zeek_fields = Some(
                f.split(sep.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
            return Line::Other;
        }
        if l.is_empty() || l.starts_with('#') {
            return Line::Other;
        }
        // The daemon is named in the syslog header (before the first ": "), never searched
        // for in the whole line: a query name holding "dnsmasq[" must not choose the parser.
        // A daemon's line that carries a query marker but does not parse is unparsable
        // (counted, shown), never "other": a crafted name cannot hide its query.
        let header = l.split_once(": ").map_or("", |(h, _)| h);
        let got = if let Some(r) = simple(l, at) {
            Some(vec![r])
        } else if self.zeek_fields.is_some() && !l.starts_with('{') {
            self.zeek_tsv(l, at)
        } else if l.starts_with('{') {
            json(l, at)
        } else if header.contains("dnsmasq[") || header.contains("pihole-FTL[") {
            return self.dnsmasq(l, line_time(l).unwrap_or(0), at);
        } else if header.contains("unbound[") {
            return unbound(l, at, header.len());
        } else if header.contains("named[") || bind_time(l).is_some() {
            // BIND's other categories (general, lame-servers …) are no queries
            return match bind(l, at) {
                Some(r) => Line::Records(r),
                None if l.contains(" query: ") => Line::Unparsable,
                None => Line::Other,
            };
        } else {
            bind(l, at)
        };
        got.map_or(Line::Unparsable, Line::Records)
    }

    /// Zeek `dns.log` (TSV): one line per transaction, so a query and, when answered, its
    /// response (`rtt` later).
    fn zeek_tsv(&self, l: &str, at: u64) -> Option<Vec<Record>> {
        let fields = self.zeek_fields.as_ref()?;
        let sep = self.zeek_sep.as_deref().unwrap_or("\t");
        let cols: Vec<&str> = l.split(sep).collect();
        if cols.len() != fields.len() {
            return None;
        }
        let get = |k: &str| {
            fields
                .iter()
                .position(|f| f == k)
                .map(|i| cols[i])
                .filter(|v| *v != "-" && *v != "(empty)")
        };
        zeek(
            get("ts")?.parse().ok().and_then(ms)?,
            get("id.orig_h")?,
            get("id.orig_p"),
            get("id.resp_h"),
            get("id.resp_p"),
            get("proto"),
            get("query")?,
            get("qtype"),
            get("rcode"),
            get("rtt"),
            at,
            "zeek-tsv",
        )
    }

    /// dnsmasq and Pi-hole (`log-queries`, also `=extra`):
    /// `dnsmasq[1]: query[A] name from 10.0.0.5`, `dnsmasq[1]: reply name is NXDOMAIN`.
    /// dnsmasq writes printable bytes of a name as they are, spaces included, so the client is
    /// what follows the *last* " from ", and a name is never split on whitespace.
    fn dnsmasq(&mut self, l: &str, ts_ms: u64, at: u64) -> Line {
        let Some((_, mut msg)) = l.split_once("]: ") else {
            return Line::Unparsable;
        };
        // log-queries=extra: "<serial> <client>/<port> query[A] …": the serial ties a reply
        // to its query
        let mut serial = None;
        let mut port = None;
        let mut words = msg.splitn(3, ' ');
        if let (Some(n), Some(cp), Some(rest)) = (words.next(), words.next(), words.next()) {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && cp.contains('/') {
                serial = Some(n.to_string());
                port = cp.rsplit_once('/').and_then(|(_, p)| p.parse().ok());
                msg = rest;
            }
        }
        if let Some(q) = msg.strip_prefix("query[") {
            let Some((t, rest)) = q.split_once("] ") else {
                return Line::Unparsable;
            };
            let Some((name, client)) = rest.rsplit_once(" from ") else {
                return Line::Unparsable;
            };
            // "<name unprintable>" (dnsmasq's stand-in for a name with other bytes: a binary
            // tunnel) and anything else that is no name stay visible as unparsable
            if name == "<name unprintable>" {
                return Line::Unparsable;
            }
            let (Ok(name), Ok(client)) = (DnsName::parse(name), client.trim().parse::<IpAddr>())
            else {
                return Line::Unparsable;
            };
            let t = qtype(t);
            if self.pending.len() >= MAX_PENDING {
                self.pending.clear();
            }
            let key = serial.unwrap_or_else(|| name.normalized());
            self.pending.insert(key, (client, t, name.clone()));
            let mut r = record(ts_ms, client, name, at, "dnsmasq");
            r.qtype = t;
            r.client_port = port;
            return Line::Records(vec![r]);
        }
        // "reply NAME is ANSWER", "cached …", "config …", "/etc/hosts …", Pi-hole "gravity blocked …"
        let Some((kind, rest)) = msg.split_once(' ') else {
            return Line::Other;
        };
        let kind_ok = matches!(kind, "reply" | "cached" | "config" | "blocked" | "gravity")
            || kind.starts_with('/');
        let Some((name, answer)) = rest.rsplit_once(" is ").filter(|_| kind_ok) else {
            return Line::Other;
        };
        let name = name.strip_prefix("blocked ").unwrap_or(name);
        let Ok(name) = DnsName::parse(name) else {
            return Line::Other;
        };
        // the first reply line answers the query; later ones are its other records
        let key = serial.unwrap_or_else(|| name.normalized());
        // with a serial the query's own name is used ("config error is REFUSED" answers it)
        let Some((client, t, name)) = self.pending.remove(&key) else {
            return Line::Other;
        };
        let rc = match answer.split_whitespace().next().unwrap_or("") {
            "NXDOMAIN" => 3,
            "SERVFAIL" => 2,
            "REFUSED" => 5,
            _ => 0,
        };
        let mut r = record(ts_ms, client, name, at, "dnsmasq");
        r.qtype = t;
        r.rcode = Some(rc);
        Line::Records(vec![r])
    }
}

#[allow(clippy::too_many_arguments)] // Zeek's columns, by name, from TSV or JSON
fn zeek(
    ts_ms: u64,
    orig_h: &str,
    orig_p: Option<&str>,
    resp_h: Option<&str>,
    resp_p: Option<&str>,
    proto: Option<&str>,
    query: &str,
    qtype: Option<&str>,
    rcode: Option<&str>,
    rtt: Option<&str>,
    at: u64,
    format: &'static str,
) -> Option<Vec<Record>> {
    let client: IpAddr = orig_h.parse().ok()?;
    let name = DnsName::parse(query).ok()?;
    let mut q = record(ts_ms, client, name, at, format);
    q.client_port = orig_p.and_then(|p| p.parse().ok());
    q.server = resp_h
        .and_then(|h| h.parse().ok())
        .map(|h| SocketAddr::new(h, resp_p.and_then(|p| p.parse().ok()).unwrap_or(53)));
    q.qtype = qtype.and_then(|t| t.parse().ok());
    q.transport = match proto {
        Some("udp") => Some("udp"),
        Some("tcp") => Some("tcp"),
        _ => None,
    };
    let mut out = vec![q.clone()];
    if let Some(rc) = rcode.and_then(|r| r.parse::<u8>().ok()) {
        let rtt_ms = rtt
            .and_then(|r| r.parse::<f64>().ok())
            .and_then(ms)
            .unwrap_or(0);
        q.ts_ms += rtt_ms;
        q.rcode = Some(rc);
        out.push(q);
    }
    Some(out)
}

/// Zeek `dns.log` written as JSON, or exfilguard's own OCSF events.
fn json(l: &str, at: u64) -> Option<Vec<Record>> {
    let v: serde_json::Value = serde_json::from_str(l).ok()?;
    if let Some(orig) = v.get("id.orig_h") {
        let s = |k: &str| {
            v.get(k)
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        };
        let (p, rp, q, t, rc, rtt) = (
            s("id.orig_p"),
            s("id.resp_p"),
            s("query")?,
            s("qtype"),
            s("rcode"),
            s("rtt"),
        );
        return zeek(
            json_time(v.get("ts")?)?,
            orig.as_str()?,
            p.as_deref(),
            v.get("id.resp_h").and_then(|x| x.as_str()),
            rp.as_deref(),
            v.get("proto").and_then(|x| x.as_str()),
            &q,
            t.as_deref(),
            rc.as_deref(),
            rtt.as_deref(),
            at,
            "zeek-json",
        );
    }
    let mut r = record(
        v.get("time")?.as_u64()?,
        v.pointer("/src_endpoint/ip")?.as_str()?.parse().ok()?,
        DnsName::parse(v.pointer("/query/hostname")?.as_str()?).ok()?,
        at,
        "ocsf",
    );
    r.qtype = v
        .pointer("/query/type")
        .and_then(|t| t.as_str())
        .and_then(qtype);
    r.rcode = v.get("rcode_id").and_then(|r| r.as_u64()).map(|r| r as u8);
    Some(vec![r])
}

/// The stamp a daemon's line starts with: syslog (`Dec  6 22:38:09`) or RFC 3339
/// (rsyslog's precise format, `log-time-iso`).
fn line_time(l: &str) -> Option<u64> {
    syslog_time(l).or_else(|| {
        let t = DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok()?;
        u64::try_from(t.timestamp_millis()).ok()
    })
}

/// `06-Dec-2026 22:38:09.123`, BIND's `print-time` stamp.
fn bind_time(l: &str) -> Option<u64> {
    let t = NaiveDateTime::parse_from_str(l.get(..24)?, "%d-%b-%Y %H:%M:%S%.3f").ok()?;
    Some(t.and_utc().timestamp_millis().max(0) as u64)
}

/// BIND `querylog`: `06-Dec-2026 22:38:09.123 queries: info: client @0x7f… 10.0.0.5#41234
/// (name): query: name IN A +E(0)K (10.0.0.1)`, also through syslog and from older versions.
fn bind(l: &str, at: u64) -> Option<Vec<Record>> {
    let ts = bind_time(l).or_else(|| line_time(l)).unwrap_or(0);
    let after = &l[l.find("client ")? + 7..];
    let addr = after
        .split_whitespace()
        .find(|w| !w.starts_with('@'))?
        .trim_end_matches(':');
    let (ip, port) = addr.rsplit_once('#')?;
    let q = &l[l.find(" query: ")? + 8..];
    let mut w = q.split_whitespace();
    let name = DnsName::parse(w.next()?).ok()?;
    let _class = w.next()?;
    let mut r = record(ts, ip.parse().ok()?, name, at, "bind");
    r.qtype = qtype(w.next()?);
    r.client_port = port.parse().ok();
    let rest: Vec<&str> = w.collect();
    r.transport = rest
        .first()
        .map(|flags| if flags.contains('T') { "tcp" } else { "udp" });
    r.server = rest
        .last()
        .and_then(|s| s.strip_prefix('(')?.strip_suffix(')')?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53));
    Some(vec![r])
}

/// Unbound `log-queries` (`info: 10.0.0.5 name. A IN`) and `log-replies` (`info:` or
/// `reply: 10.0.0.5 name. A IN NXDOMAIN 0.000 0 45`), also with `log-tag-queryreply`
/// (`query:`), with `[epoch]`, `log-time-ascii` or RFC 3339 stamps. Other Unbound lines
/// ("start of service") are no queries; a line that starts like a query and does not parse is
/// unparsable.
fn unbound(l: &str, at: u64, header_len: usize) -> Line {
    let ts = match l.strip_prefix('[') {
        Some(rest) => rest
            .split(']')
            .next()
            .and_then(|t| t.parse().ok())
            .and_then(ms),
        None => line_time(l),
    }
    .unwrap_or(0);
    let kind = &l[..header_len];
    let rest = &l[(header_len + 2).min(l.len())..];
    let w: Vec<&str> = rest.split_whitespace().collect();
    let client = w.first().copied().unwrap_or("");
    let (ip, port) = match client.split_once('@') {
        Some((ip, p)) => (ip, p.parse().ok()),
        None => (client, None),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return Line::Other;
    };
    let parsed = (|| {
        let (name, t, class) = (w.get(1)?, w.get(2)?, w.get(3)?);
        if !matches!(*class, "IN" | "CH" | "HS" | "ANY" | "NONE") && !class.starts_with("CLASS") {
            return None;
        }
        let mut r = record(ts, ip, DnsName::parse(name).ok()?, at, "unbound");
        r.client_port = port;
        r.qtype = qtype(t);
        // 1.17 logs replies as `info:` too, told apart by the RCODE after the class
        r.rcode = w.get(4).and_then(|x| rcode(x));
        if kind.ends_with(" reply") && r.rcode.is_none() {
            return None;
        }
        Some(r)
    })();
    parsed.map_or(Line::Unparsable, |r| Line::Records(vec![r]))
}

/// `SECONDS CLIENT NAME [RCODE]`.
fn simple(l: &str, at: u64) -> Option<Record> {
    let mut f = l.split_whitespace();
    let ts = ms(f.next()?.parse().ok()?)?;
    let client = f.next()?.parse().ok()?;
    let mut r = record(ts, client, DnsName::parse(f.next()?).ok()?, at, "text");
    r.rcode = match f.next() {
        Some(x) => Some(rcode(x)?),
        None => None,
    };
    Some(r)
}
