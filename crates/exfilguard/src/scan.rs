//! `exfilguard scan`: classify every DNS query of a capture, dnstap file or query log, with a
//! summary per registered domain and per client.

use crate::view::{cut_left, risk, table, Rows};
use crate::Format;
use anyhow::Result;
use exfilguard_detect::{Class, Detector, Verdict};
use exfilguard_dns::DnsName;
use exfilguard_ingest::Record;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// A capture (pcap, pcapng), dnstap, or a query log (Zeek dns.log, dnsmasq/Pi-hole, BIND,
    /// Unbound, OCSF events); plain, gzip or zstd; `-` reads stdin.
    file: PathBuf,
    /// A table for people, or JSON lines (one per query, then one summary object).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Print only the summaries (per registered domain and per client).
    #[arg(long)]
    summary_only: bool,
}

#[derive(Serialize)]
struct QueryLine<'a> {
    /// The frame number in a capture, the line in a log, the message in dnstap.
    at: u64,
    format: &'static str,
    client: IpAddr,
    /// `client:port` when the source gives the port (captures, dnstap, Zeek, BIND).
    src: String,
    dst: Option<String>,
    transport: Option<&'static str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    encapsulation: &'a [&'static str],
    qtype: Option<u16>,
    qtype_name: Option<String>,
    name: String,
    registered_domain: Option<String>,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

#[derive(Default, Serialize)]
struct DomainSummary {
    queries: u64,
    distinct_names: u64,
    clients: u64,
    malicious: u64,
    max_score: f32,
    classes: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    names: HashSet<String>,
    #[serde(skip)]
    client_set: HashSet<IpAddr>,
}

#[derive(Default, Serialize)]
struct ClientSummary {
    queries: u64,
    domains: u64,
    malicious: u64,
    /// The registered domains of its malicious queries, most queried first (at most 5).
    malicious_domains: Vec<(String, u64)>,
    #[serde(skip)]
    domain_set: HashSet<String>,
    #[serde(skip)]
    bad: BTreeMap<String, u64>,
}

#[derive(Default, Serialize)]
struct Totals {
    records: u64,
    formats: BTreeMap<&'static str, u64>,
    frames: u64,
    queries: u64,
    responses: u64,
    /// Responses whose query was not in the input, judged as queries.
    unasked_responses: u64,
    malicious: u64,
    not_dns: u64,
    errors: u64,
    unparsable_lines: u64,
}

const BATCH: usize = 4096;
/// Queries remembered for matching their responses; forgotten all at once past this (a
/// response then counts as a query of its own: judged twice, never missed).
const MAX_ASKED: usize = 1 << 20;

struct Scan<'a> {
    detector: &'a Detector,
    args: &'a ScanArgs,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    rows: Rows,
    pending: Vec<Record>,
    /// (client, name) of queries whose response has not been read yet.
    asked: HashSet<(IpAddr, String)>,
    domains: BTreeMap<String, DomainSummary>,
    clients: BTreeMap<IpAddr, ClientSummary>,
    totals: Totals,
    failed: Option<anyhow::Error>,
}

/// Returns whether anything malicious was found (the exit status says so).
pub fn run(detector: &Detector, args: &ScanArgs) -> Result<bool> {
    let mut s = Scan {
        detector,
        args,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        rows: Rows::new(vec![
            ("at", 7, true),
            ("client", 26, false),
            ("type", 6, false),
            ("name", 56, false),
            ("class", 8, false),
            ("risk", 16, false),
            ("p / threshold", 22, false),
            ("reason", 0, false),
        ]),
        pending: Vec::new(),
        asked: HashSet::new(),
        domains: BTreeMap::new(),
        clients: BTreeMap::new(),
        totals: Totals::default(),
        failed: None,
    };
    let stats = exfilguard_ingest::read(&args.file, |r| {
        if s.failed.is_some() {
            return;
        }
        // A response is judged when its query was not seen: a one-way capture, dnstap or an
        // Unbound log of responses only must not read as "nothing malicious".
        let key = (r.client, r.name.normalized());
        if r.rcode.is_some() {
            s.totals.responses += 1;
            if s.asked.remove(&key) {
                return;
            }
            s.totals.unasked_responses += 1;
        } else {
            if s.asked.len() >= MAX_ASKED {
                s.asked.clear();
            }
            s.asked.insert(key);
        }
        s.pending.push(r);
        if s.pending.len() >= BATCH {
            if let Err(e) = s.flush() {
                s.failed = Some(e);
            }
        }
    })?;
    if let Some(e) = s.failed.take() {
        return Err(e);
    }
    s.flush()?;
    for p in &stats.problems {
        eprintln!("scan: {p}");
    }
    if stats.errors as usize > stats.problems.len() {
        eprintln!(
            "scan: … {} more errors",
            stats.errors as usize - stats.problems.len()
        );
    }
    if stats.records == 0 {
        return Err(stats.nothing_read(&args.file.display().to_string()));
    }
    s.totals.records = stats.records;
    s.totals.formats = stats.formats.clone();
    s.totals.frames = stats.frames;
    s.totals.not_dns = stats.not_dns;
    s.totals.errors = stats.errors;
    s.totals.unparsable_lines = stats.unparsable;
    s.summary()?;
    s.out.flush()?;
    Ok(s.totals.malicious > 0)
}

impl Scan<'_> {
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let names: Vec<DnsName> = self.pending.iter().map(|p| p.name.clone()).collect();
        let verdicts = self.detector.classify_batch(&names)?;
        let mut rows = Vec::new();
        for (p, v) in self.pending.iter().zip(&verdicts) {
            self.totals.queries += 1;
            let bad = v.class.is_malicious();
            self.totals.malicious += bad as u64;
            let rd = p.name.registered_domain();
            let key = rd.clone().unwrap_or_else(|| p.name.normalized());
            let d = self.domains.entry(key.clone()).or_default();
            d.queries += 1;
            if d.names.insert(p.name.normalized()) {
                d.distinct_names += 1;
            }
            if d.client_set.insert(p.client) {
                d.clients += 1;
            }
            d.malicious += bad as u64;
            d.max_score = d.max_score.max(v.score);
            *d.classes.entry(v.class.as_str()).or_default() += 1;
            let c = self.clients.entry(p.client).or_default();
            c.queries += 1;
            if c.domain_set.insert(key.clone()) {
                c.domains += 1;
            }
            if bad {
                c.malicious += 1;
                *c.bad.entry(key).or_default() += 1;
            }
            if self.args.summary_only {
                continue;
            }
            match self.args.format {
                Format::Json => {
                    let line = QueryLine {
                        at: p.at,
                        format: p.format,
                        client: p.client,
                        src: match p.client_port {
                            Some(port) => std::net::SocketAddr::new(p.client, port).to_string(),
                            None => p.client.to_string(),
                        },
                        dst: p.server.map(|s| s.to_string()),
                        transport: p.transport,
                        encapsulation: &p.encapsulation,
                        qtype: p.qtype,
                        qtype_name: p.qtype_name(),
                        name: p.name.to_string(),
                        registered_domain: rd,
                        verdict: v,
                    };
                    writeln!(self.out, "{}", serde_json::to_string(&line)?)?;
                }
                Format::Table => {
                    let (risk, p_t) = risk(v);
                    rows.push(vec![
                        p.at.to_string(),
                        p.client.to_string(),
                        p.qtype_name().unwrap_or_else(|| "-".into()),
                        cut_left(&p.name.to_string(), 56),
                        v.class.as_str().to_string(),
                        risk,
                        p_t,
                        v.reasons.first().cloned().unwrap_or_default(),
                    ]);
                }
            }
        }
        if !rows.is_empty() {
            write!(self.out, "{}", self.rows.render(rows))?;
        }
        self.pending.clear();
        Ok(())
    }

    fn summary(&mut self) -> Result<()> {
        for c in self.clients.values_mut() {
            let mut bad: Vec<(String, u64)> = std::mem::take(&mut c.bad).into_iter().collect();
            bad.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            bad.truncate(5);
            c.malicious_domains = bad;
        }
        let t = &self.totals;
        if self.args.format == Format::Json {
            let v = serde_json::json!({ "summary": {
                "totals": t, "domains": self.domains, "clients": self.clients } });
            writeln!(self.out, "{v}")?;
            return Ok(());
        }
        writeln!(
            self.out,
            "\n{} records read as {}: {} queries judged ({} malicious; {} of them responses whose query was not read), {} responses; {} frames without DNS, {} errors, {} unparsable lines",
            t.records,
            exfilguard_ingest::read_as(&t.formats),
            t.queries,
            t.malicious,
            t.unasked_responses,
            t.responses,
            t.not_dns,
            t.errors,
            t.unparsable_lines
        )?;
        let mut rows: Vec<_> = self.domains.iter().collect();
        rows.sort_by(|a, b| {
            b.1.malicious
                .cmp(&a.1.malicious)
                .then(b.1.queries.cmp(&a.1.queries))
                .then(a.0.cmp(b.0))
        });
        let rows = rows
            .into_iter()
            .map(|(d, s)| {
                let verdict = s
                    .classes
                    .iter()
                    .filter(|(c, _)| **c != Class::Benign.as_str())
                    .max_by_key(|(_, n)| **n)
                    .map_or("benign", |(c, _)| *c);
                vec![
                    d.clone(),
                    s.queries.to_string(),
                    s.distinct_names.to_string(),
                    s.clients.to_string(),
                    s.malicious.to_string(),
                    format!("{:.6}", s.max_score),
                    verdict.to_string(),
                ]
            })
            .collect();
        writeln!(self.out, "\nper registered domain")?;
        write!(
            self.out,
            "{}",
            table(
                vec![
                    ("registered domain", 40, false),
                    ("queries", 8, true),
                    ("names", 8, true),
                    ("clients", 8, true),
                    ("malicious", 9, true),
                    ("max score", 9, true),
                    ("verdict", 0, false),
                ],
                rows
            )
        )?;
        let mut rows: Vec<_> = self.clients.iter().collect();
        rows.sort_by(|a, b| {
            b.1.malicious
                .cmp(&a.1.malicious)
                .then(b.1.queries.cmp(&a.1.queries))
                .then(a.0.cmp(b.0))
        });
        let rows = rows
            .into_iter()
            .map(|(c, s)| {
                let bad: Vec<String> = s
                    .malicious_domains
                    .iter()
                    .map(|(d, n)| format!("{d} ({n})"))
                    .collect();
                vec![
                    c.to_string(),
                    s.queries.to_string(),
                    s.domains.to_string(),
                    s.malicious.to_string(),
                    if bad.is_empty() {
                        "-".into()
                    } else {
                        bad.join(", ")
                    },
                ]
            })
            .collect();
        writeln!(self.out, "\nper client")?;
        write!(
            self.out,
            "{}",
            table(
                vec![
                    ("client", 39, false),
                    ("queries", 8, true),
                    ("domains", 8, true),
                    ("malicious", 9, true),
                    ("malicious domains", 0, false),
                ],
                rows
            )
        )?;
        Ok(())
    }
}
