//! `exfilguard scan`: classify every DNS query in a pcap/pcapng capture.

use crate::Format;
use anyhow::{Context, Result};
use exfilguard_detect::{Class, Detector, Verdict};
use exfilguard_dns::{dns_payloads, parse_message, read_capture, DnsName};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// pcap or pcapng capture, gzip-compressed or not; `-` reads stdin.
    file: PathBuf,
    /// Output format: a table for people, or JSON lines (one per query, then one summary object).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Print only the per-registered-domain summary.
    #[arg(long)]
    summary_only: bool,
}

#[derive(Serialize)]
struct QueryLine<'a> {
    frame: u64,
    src: String,
    dst: String,
    transport: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    encapsulation: Vec<&'static str>,
    qtype: u16,
    name: String,
    registered_domain: Option<String>,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

struct Pending {
    frame: u64,
    src: String,
    dst: String,
    transport: &'static str,
    encapsulation: Vec<&'static str>,
    qtype: u16,
    name: DnsName,
}

#[derive(Default, Serialize)]
struct DomainSummary {
    queries: u64,
    distinct_names: u64,
    malicious: u64,
    max_score: f32,
    classes: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    names: std::collections::HashSet<String>,
}

#[derive(Default, Serialize)]
struct Totals {
    frames: u64,
    queries: u64,
    responses: u64,
    not_dns: u64,
    errors: u64,
}

const BATCH: usize = 4096;

pub fn run(detector: &Detector, args: &ScanArgs) -> Result<()> {
    let file = crate::input::open(&args.file)?;
    let frames = read_capture(file).with_context(|| {
        format!(
            "reading {}: scan reads pcap and pcapng captures (gzip-compressed or not); query logs go to `exfilguard replay`",
            args.file.display()
        )
    })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut totals = Totals::default();
    let mut domains: BTreeMap<String, DomainSummary> = BTreeMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    if args.format == Format::Table && !args.summary_only {
        writeln!(
            out,
            "{:>7} {:<22} {:<5} {:<60} {:<8} {:>8}  reason",
            "frame", "destination", "type", "name", "class", "score"
        )?;
    }
    for frame in frames {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                totals.errors += 1;
                eprintln!("scan: {e}");
                break;
            }
        };
        totals.frames += 1;
        let Some(link) = frame.link else {
            totals.not_dns += 1;
            continue;
        };
        let payloads = match dns_payloads(&frame.data, link) {
            Ok(p) => p,
            Err(
                exfilguard_dns::PacketError::NoDns
                | exfilguard_dns::PacketError::NotUdpTcp
                | exfilguard_dns::PacketError::NotIp,
            ) => {
                totals.not_dns += 1;
                continue;
            }
            Err(e) => {
                totals.errors += 1;
                eprintln!("scan: frame {}: {e}", frame.index);
                continue;
            }
        };
        for p in payloads {
            match parse_message(p.payload) {
                Ok(m) if m.is_response => totals.responses += 1,
                Ok(m) => {
                    for q in m.questions {
                        pending.push(Pending {
                            frame: frame.index,
                            src: p.src.to_string(),
                            dst: p.dst.to_string(),
                            transport: match p.transport {
                                exfilguard_dns::Transport::Udp => "udp",
                                exfilguard_dns::Transport::Tcp => "tcp",
                            },
                            encapsulation: p.encapsulation.clone(),
                            qtype: q.qtype,
                            name: q.name,
                        });
                    }
                }
                Err(e) => {
                    totals.errors += 1;
                    eprintln!("scan: frame {}: {e}", frame.index);
                }
            }
        }
        if pending.len() >= BATCH {
            flush(
                detector,
                &mut pending,
                args,
                &mut out,
                &mut domains,
                &mut totals,
            )?;
        }
    }
    flush(
        detector,
        &mut pending,
        args,
        &mut out,
        &mut domains,
        &mut totals,
    )?;
    summary(&mut out, args.format, &domains, &totals)?;
    out.flush()?;
    Ok(())
}

fn flush(
    detector: &Detector,
    pending: &mut Vec<Pending>,
    args: &ScanArgs,
    out: &mut impl Write,
    domains: &mut BTreeMap<String, DomainSummary>,
    totals: &mut Totals,
) -> Result<()> {
    let names: Vec<DnsName> = pending.iter().map(|p| p.name.clone()).collect();
    let verdicts = detector.classify_batch(&names)?;
    for (p, v) in pending.iter().zip(&verdicts) {
        totals.queries += 1;
        let rd = p.name.registered_domain();
        let d = domains
            .entry(rd.clone().unwrap_or_else(|| p.name.normalized()))
            .or_default();
        d.queries += 1;
        if d.names.insert(p.name.normalized()) {
            d.distinct_names += 1;
        }
        d.malicious += v.class.is_malicious() as u64;
        d.max_score = d.max_score.max(v.score);
        *d.classes.entry(v.class.as_str()).or_default() += 1;
        if args.summary_only {
            continue;
        }
        match args.format {
            Format::Json => {
                let line = QueryLine {
                    frame: p.frame,
                    src: p.src.clone(),
                    dst: p.dst.clone(),
                    transport: p.transport,
                    encapsulation: p.encapsulation.clone(),
                    qtype: p.qtype,
                    name: p.name.to_string(),
                    registered_domain: rd,
                    verdict: v,
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            }
            Format::Table => {
                let mut name = p.name.to_string();
                if name.chars().count() > 60 {
                    name = name.chars().take(57).chain("...".chars()).collect();
                }
                writeln!(
                    out,
                    "{:>7} {:<22} {:<5} {name:<60} {:<8} {:>8.6}  {}",
                    p.frame,
                    p.dst,
                    p.qtype,
                    v.class.as_str(),
                    v.score,
                    v.reasons.first().map(String::as_str).unwrap_or("")
                )?;
            }
        }
    }
    pending.clear();
    Ok(())
}

fn summary(
    out: &mut impl Write,
    format: Format,
    domains: &BTreeMap<String, DomainSummary>,
    totals: &Totals,
) -> Result<()> {
    if format == Format::Json {
        let v = serde_json::json!({ "summary": { "totals": totals, "domains": domains } });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{} frames, {} queries, {} responses, {} not DNS, {} errors",
        totals.frames, totals.queries, totals.responses, totals.not_dns, totals.errors
    )?;
    writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>9} {:>8}  verdict",
        "registered domain", "queries", "names", "malicious", "max"
    )?;
    let mut rows: Vec<_> = domains.iter().collect();
    rows.sort_by(|a, b| {
        b.1.malicious
            .cmp(&a.1.malicious)
            .then(b.1.queries.cmp(&a.1.queries))
    });
    for (d, s) in rows {
        let verdict = s
            .classes
            .iter()
            .filter(|(c, _)| **c != Class::Benign.as_str())
            .max_by_key(|(_, n)| **n)
            .map_or("benign", |(c, _)| *c);
        writeln!(
            out,
            "{d:<40} {:>8} {:>8} {:>9} {:>8.6}  {verdict}",
            s.queries, s.distinct_names, s.malicious, s.max_score
        )?;
    }
    Ok(())
}
