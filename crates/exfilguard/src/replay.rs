//! `exfilguard replay FILE`: feeds a capture or a timestamped query log through the behaviour
//! analytics in accelerated time (the file's clock, no waiting), so operators can try the
//! `[behaviour]` thresholds on their own traffic before turning them on.
//!
//! Input: whatever `exfilguard_ingest` reads (captures, dnstap, Zeek, dnsmasq/Pi-hole, BIND and
//! Unbound logs, OCSF events, `SECONDS CLIENT NAME [RCODE]` lines; plain, gzip or zstd),
//! recognised from the content.

use crate::Format;
use anyhow::Result;
use exfilguard_behaviour::{Alarm, AlarmKind, Settings, Tracker};
use exfilguard_detect::{Detector, ModelClass};
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

pub use exfilguard_ingest::Record;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A capture (pcap, pcapng), dnstap, or a query log (Zeek dns.log, dnsmasq/Pi-hole,
    /// BIND, Unbound, OCSF events, `SECONDS CLIENT NAME [RCODE]`); plain, gzip or zstd; `-`
    /// reads stdin.
    file: PathBuf,
    /// Configuration file whose `[behaviour]` section sets the thresholds.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// A table for people, or one JSON object per alarm and a summary object.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Serialize, Default)]
pub struct Summary {
    /// Records per input format read ("dnsmasq", "pcap", "zeek-tsv" …).
    pub formats: std::collections::BTreeMap<&'static str, u64>,
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

/// Reads a file of any supported kind into records in time order (logs are not always in
/// order; the analytics need it); what could not be read is counted, not fatal.
pub fn read_records(path: &std::path::Path) -> Result<(Vec<Record>, exfilguard_ingest::Stats)> {
    let mut out = Vec::new();
    let stats = exfilguard_ingest::read(path, |r| out.push(r))?;
    out.sort_by_key(|r| r.ts_ms);
    Ok((out, stats))
}

/// `detector`: the brain of the global flags (`--model` …), for the per-name scores.
/// Returns whether an alarm was raised (the exit status says so).
pub fn run(detector: &Detector, args: &ReplayArgs) -> Result<bool> {
    let cfg = exfilguard_agent::config::Config::load(args.config.as_deref())?;
    let (records, stats) = read_records(&args.file)?;
    if records.is_empty() {
        return Err(stats.nothing_read(&args.file.display().to_string()));
    }
    if let Some(why) = &stats.stopped {
        eprintln!("replay: reading stopped early: {why}");
    }
    let bad = stats.unparsable + stats.errors;
    let (alarms, mut sum) = replay(cfg.behaviour.clone(), detector, records);
    sum.skipped = bad;
    sum.formats = stats.formats.clone();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => {
            for a in &alarms {
                writeln!(out, "{}", serde_json::to_string(a)?)?;
            }
            writeln!(out, "{}", serde_json::json!({ "summary": sum }))?;
        }
        Format::Table => {
            let rows = alarms
                .iter()
                .map(|a| {
                    vec![
                        format!("{:.0}s", a.after_secs),
                        a.kind.as_str().to_string(),
                        a.client.to_string(),
                        a.domain.clone().unwrap_or_else(|| "-".into()),
                        format!("{:.0}", a.novel_bytes),
                        a.reason.clone(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                crate::view::table(
                    vec![
                        ("after", 9, true),
                        ("alarm", 9, false),
                        ("client", 39, false),
                        ("domain", 30, false),
                        ("novel B", 9, true),
                        ("reason", 0, false),
                    ],
                    rows
                )
            )?;
            writeln!(
                out,
                "\nhighest information peaks (alarm at {} B):",
                cfg.behaviour.info_alarm_bytes
            )?;
            let rows = sum
                .top_info
                .iter()
                .take(10)
                .map(|(c, d, peak, uniq, q)| {
                    vec![
                        format!("{peak:.0} B"),
                        c.to_string(),
                        d.clone(),
                        uniq.to_string(),
                        q.to_string(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                crate::view::table(
                    vec![
                        ("peak", 10, true),
                        ("client", 39, false),
                        ("domain", 30, false),
                        ("distinct subdomains", 19, true),
                        ("queries", 0, true),
                    ],
                    rows
                )
            )?;
            writeln!(
                out,
                "\n{} records (read as {}; {} queries, {} responses, {} unparsable) over {:.0} s: {} alarms ({} information rate, {} DGA bot, {} beacon); {} pairs tracked, memory bound {:.1} MB",
                sum.records,
                exfilguard_ingest::read_as(&sum.formats),
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
    Ok(!alarms.is_empty())
}
