//! `exfilguard replay FILE`: feeds a capture or a timestamped query log through the behaviour
//! analytics in accelerated time (the file's clock, no waiting), so operators can try the
//! `[behaviour]` thresholds on their own traffic before turning them on.
//!
//! Input, detected from the first bytes: pcap/pcapng (queries and responses), JSON lines
//! (exfilguard's OCSF events: `time`, `src_endpoint.ip`, `query.hostname`, `rcode_id`), or
//! text lines `SECONDS CLIENT NAME [RCODE]` (`#` starts a comment); any of them gzip-compressed.

use crate::Format;
use anyhow::{bail, Context, Result};
use exfilguard_behaviour::{Alarm, AlarmKind, Settings, Tracker};
use exfilguard_detect::{Detector, ModelClass};
use exfilguard_dns::{dns_payloads, parse_message, read_capture};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;

mod line;
use line::parse_line;
pub use line::Record;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// pcap/pcapng, OCSF JSON lines, or `SECONDS CLIENT NAME [RCODE]` lines, gzip-compressed
    /// or not; `-` reads stdin.
    file: PathBuf,
    /// Configuration file whose `[behaviour]` section sets the thresholds.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// A table for people, or one JSON object per alarm and a summary object.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub records: u64,
    pub queries: u64,
    pub responses: u64,
    pub skipped: u64,
    pub seconds: f64,
    pub alarms: u64,
    pub info_rate: u64,
    pub dga_bot: u64,
    pub beacon: u64,
    pub pairs_tracked: usize,
    pub memory_bound_bytes: usize,
    /// The pairs that came closest to the information alarm: (client, domain, peak bytes,
    /// distinct subdomains, queries).
    pub top_info: Vec<(IpAddr, String, f64, u32, u32)>,
}

/// Runs records (in time order) through a tracker; alarms in the order raised.
pub fn replay(
    settings: Settings,
    detector: &Detector,
    records: impl IntoIterator<Item = Record>,
) -> (Vec<Alarm>, Summary) {
    let mut sum = Summary {
        memory_bound_bytes: settings.memory_bound(),
        ..Summary::default()
    };
    // fixed hashing: the same input gives the same alarms (docs/behaviour.md)
    let mut t = Tracker::seeded(settings, exfilguard_behaviour::OFFLINE_SEED);
    let dga = detector
        .model()
        .info()
        .classes
        .iter()
        .position(|c| *c == ModelClass::Dga);
    let mut alarms = Vec::new();
    let (mut first, mut last) = (None, 0u64);
    for r in records {
        sum.records += 1;
        first.get_or_insert(r.ts_ms);
        last = last.max(r.ts_ms);
        match r.rcode {
            None => {
                sum.queries += 1;
                alarms.extend(t.observe_query(r.ts_ms, r.client, &r.name));
            }
            Some(rc) => {
                sum.responses += 1;
                // the per-name DGA probability is evidence in a DGA-bot reason
                let score = if rc == 3 {
                    dga.and_then(|i| {
                        let f = exfilguard_detect::extract(&r.name, detector.lexicon());
                        detector.model().predict(&[f]).ok().map(|p| p[i])
                    })
                    .unwrap_or(0.0)
                } else {
                    0.0
                };
                alarms.extend(t.observe_response(r.ts_ms, r.client, &r.name, rc, score));
            }
        }
    }
    sum.seconds = first.map_or(0.0, |f| (last - f) as f64 / 1000.0);
    sum.alarms = alarms.len() as u64;
    for a in &alarms {
        match a.kind {
            AlarmKind::InfoRate => sum.info_rate += 1,
            AlarmKind::DgaBot => sum.dga_bot += 1,
            AlarmKind::Beacon => sum.beacon += 1,
        }
    }
    sum.pairs_tracked = t.pairs();
    sum.top_info = t.top_info(40);
    (alarms, sum)
}

/// Reads a file of any supported kind (gzip-compressed or not) into records; unparsable lines
/// are counted, not fatal.
pub fn read_records(path: &std::path::Path) -> Result<(Vec<Record>, u64)> {
    let mut r = crate::input::open(path)?;
    let head = r
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut bad = 0u64;
    let pcap = head.len() >= 4
        && matches!(
            head[..4],
            [0xd4, 0xc3, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0xc3, 0xd4]
                | [0x4d, 0x3c, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0x3c, 0x4d]
                | [0x0a, 0x0d, 0x0d, 0x0a]
        );
    if pcap {
        for frame in read_capture(r)? {
            let frame = match frame {
                Ok(fr) => fr,
                Err(e) => {
                    eprintln!("replay: {e}");
                    bad += 1;
                    break;
                }
            };
            let Some(link) = frame.link else { continue };
            let Ok(payloads) = dns_payloads(&frame.data, link) else {
                continue;
            };
            for p in payloads {
                let Ok(m) = parse_message(p.payload) else {
                    bad += 1;
                    continue;
                };
                for q in m.questions {
                    out.push(Record {
                        ts_ms: frame.timestamp.as_millis() as u64,
                        client: if m.is_response {
                            p.dst.ip()
                        } else {
                            p.src.ip()
                        },
                        name: q.name,
                        rcode: m.is_response.then_some(m.rcode as u8),
                    });
                }
            }
        }
        out.sort_by_key(|r| r.ts_ms);
        return Ok((out, bad));
    }
    for line in r.lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match parse_line(l) {
            Some(r) => out.push(r),
            None => bad += 1,
        }
    }
    // logs are not always in order; the analytics need time order
    out.sort_by_key(|r| r.ts_ms);
    Ok((out, bad))
}

/// `detector`: the brain of the global flags (`--model` …), for the per-name scores.
pub fn run(detector: &Detector, args: &ReplayArgs) -> Result<()> {
    let cfg = exfilguard_agent::config::Config::load(args.config.as_deref())?;
    let (records, bad) = read_records(&args.file)?;
    if records.is_empty() {
        bail!(
            "{}: no DNS records found ({bad} unparsable)",
            args.file.display()
        );
    }
    let (alarms, mut sum) = replay(cfg.behaviour.clone(), detector, records);
    sum.skipped = bad;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => {
            for a in &alarms {
                writeln!(out, "{}", serde_json::to_string(a)?)?;
            }
            writeln!(out, "{}", serde_json::json!({ "summary": sum }))?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>9}  {:<9} {:<39} {:<30} {:>9}  reason",
                "after", "alarm", "client", "domain", "novel B"
            )?;
            for a in &alarms {
                writeln!(
                    out,
                    "{:>8.0}s  {:<9} {:<39} {:<30} {:>9.0}  {}",
                    a.after_secs,
                    a.kind.as_str(),
                    a.client,
                    a.domain.as_deref().unwrap_or("-"),
                    a.novel_bytes,
                    a.reason
                )?;
            }
            writeln!(
                out,
                "\nhighest information peaks (alarm at {} B):",
                cfg.behaviour.info_alarm_bytes
            )?;
            for (c, d, peak, uniq, q) in sum.top_info.iter().take(10) {
                writeln!(
                    out,
                    "  {peak:>8.0} B  {c:<39} {d:<30} {uniq} distinct subdomains in {q} queries"
                )?;
            }
            writeln!(
                out,
                "\n{} records ({} queries, {} responses, {} unparsable) over {:.0} s: {} alarms ({} information rate, {} DGA bot, {} beacon); {} pairs tracked, memory bound {:.1} MB",
                sum.records,
                sum.queries,
                sum.responses,
                sum.skipped,
                sum.seconds,
                sum.alarms,
                sum.info_rate,
                sum.dga_bot,
                sum.beacon,
                sum.pairs_tracked,
                sum.memory_bound_bytes as f64 / 1e6
            )?;
        }
    }
    Ok(())
}
