//! `exfilguard eval --stream`: replays labelled query streams through the deployed decision —
//! the front's judge (operator lists, kernel prefilter, verdict cache, model, lookup
//! structure, the domain-level decision, convictions) and its behaviour analytics, with each
//! row's answer (an `rcode` column, NOERROR without one) fed back as the front does — and
//! reports per tool/family how many queries were refused.
//!
//! Rows keep their file order. A `client` column names the sender; without one, malicious
//! rows get one address per label and benign rows are spread over `--clients` addresses
//! (round robin). Time advances `--interval-ms` per row for the analytics; the conviction
//! windows run on the wall clock, so a replay packs every row into one window: harsher on
//! benign traffic than the same rows over a day.

use anyhow::{bail, Context, Result};
use exfilguard_agent::config::Config;
use exfilguard_behaviour::Tracker;
use exfilguard_convict::Client;
use exfilguard_detect::Detector;
use exfilguard_dns::DnsName;
use exfilguard_resolver::judge::Judgement;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Serialize, Clone)]
pub struct StreamStats {
    pub truth: &'static str,
    pub queries: u64,
    pub refused: u64,
    /// Refused share of all queries.
    pub rate: f64,
    /// Queries after the first `free` of each (client, registered domain): the goal's count.
    pub after_free: u64,
    pub refused_after_free: u64,
    pub rate_after_free: f64,
    /// Distinct registered domains; how many got at least one refusal.
    pub domains: u64,
    pub domains_refused: u64,
    pub alerted: u64,
    pub invalid: u64,
    /// Refusals per deciding source (model, lookup, domain, behaviour, blocklist …).
    pub by_source: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct StreamReport {
    pub model: String,
    pub free: usize,
    pub labels: BTreeMap<String, StreamStats>,
}

pub struct StreamOptions<'a> {
    pub benign: &'a [PathBuf],
    pub malicious: &'a [PathBuf],
    pub label_column: Option<usize>,
    pub clients: u32,
    pub free: usize,
    pub interval_ms: u64,
    /// Write the mistakes here: malicious rows answered, benign rows refused.
    pub passed: Option<&'a Path>,
}

struct Columns {
    name: usize,
    label: Option<usize>,
    client: Option<usize>,
    qtype: Option<usize>,
    rcode: Option<usize>,
}

fn columns(header: Option<&str>, label_column: Option<usize>) -> Columns {
    let fields: Vec<String> = header
        .map(|h| {
            h.split('\t')
                .map(|f| f.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let find = |names: &[&str]| fields.iter().position(|f| names.contains(&f.as_str()));
    Columns {
        name: find(&["qname", "name", "domain", "query"]).unwrap_or(0),
        label: label_column
            .map(|c| c - 1)
            .or_else(|| find(&["tool", "family", "group", "label"])),
        client: find(&["client", "src", "client_ip"]),
        qtype: find(&["qtype"]),
        rcode: find(&["rcode"]),
    }
}

pub fn run(detector: Detector, cfg: &Config, o: &StreamOptions) -> Result<StreamReport> {
    if o.label_column == Some(0) {
        bail!("--label-column is 1-based");
    }
    let model = detector.model().info().version.clone();
    let judge = exfilguard_resolver::judge_for(cfg, detector)?;
    let mut tracker = cfg
        .behaviour
        .enabled
        .then(|| Tracker::seeded(cfg.behaviour.clone(), exfilguard_behaviour::OFFLINE_SEED));
    let everyone_for = Duration::from_secs(cfg.behaviour.block_secs.max(1));
    let mut labels: BTreeMap<String, StreamStats> = BTreeMap::new();
    // per (label, client, registered domain): queries so far; per label: domains refused
    let mut seen: HashMap<(String, IpAddr, String), usize> = HashMap::new();
    let mut refused_domains: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    let mut ts_ms: u64 = 1_000_000;
    let mut benign_row: u32 = 0;
    let files = o
        .benign
        .iter()
        .map(|p| (p, false))
        .chain(o.malicious.iter().map(|p| (p, true)));
    let mut label_clients: HashMap<String, IpAddr> = HashMap::new();
    let mut passed = match o.passed {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    for (path, malicious) in files {
        let (header, rows) = read(path)?;
        let cols = columns(header.as_deref(), o.label_column);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let truth = if malicious { "malicious" } else { "benign" };
        for fields in rows {
            let get = |c: Option<usize>| c.and_then(|c| fields.get(c)).map(|s| s.trim());
            let label = get(cols.label)
                .filter(|l| !l.is_empty())
                .map_or_else(|| stem.clone(), str::to_string);
            let st = labels.entry(label.clone()).or_default();
            st.truth = truth;
            let Some(name) = get(Some(cols.name)).and_then(|n| DnsName::parse(n).ok()) else {
                st.invalid += 1;
                continue;
            };
            let ip: IpAddr = match get(cols.client).and_then(|c| c.parse().ok()) {
                Some(ip) => ip,
                None if malicious => {
                    let n = label_clients.len() as u32;
                    *label_clients
                        .entry(label.clone())
                        .or_insert_with(|| IpAddr::V4(Ipv4Addr::from(0x0a_fe_00_01 + n)))
                }
                None => {
                    benign_row = benign_row.wrapping_add(1);
                    IpAddr::V4(Ipv4Addr::from(
                        0x0a_01_00_01 + benign_row % o.clients.max(1),
                    ))
                }
            };
            let qtype: u16 = get(cols.qtype).and_then(|q| q.parse().ok()).unwrap_or(1);
            let rcode: u8 = get(cols.rcode).and_then(|r| r.parse().ok()).unwrap_or(0);
            let client = Client::Addr(ip);
            ts_ms += o.interval_ms;
            // the front's order: analytics first (an alarm convicts before the judge runs)
            if let Some(t) = tracker.as_mut() {
                for a in t.observe_query(ts_ms, ip, &name) {
                    judge.alarm(&client, &a, cfg.behaviour.block, everyone_for);
                }
            }
            let judged = judge
                .judge(&name, qtype, &client)
                .map_err(|e| anyhow::anyhow!("model: {e}"))?;
            let (refused, source) = match &judged {
                Judgement::Refuse { verdict, .. } => (true, Some(verdict.source)),
                Judgement::Alert { .. } => {
                    st.alerted += 1;
                    (false, None)
                }
                _ => (false, None),
            };
            if !refused && rcode == 3 {
                if let Some(t) = tracker.as_mut() {
                    let score = judge.cached_score(&name).unwrap_or(0.0);
                    for a in t.observe_response(ts_ms, ip, &name, 3, score) {
                        judge.alarm(&client, &a, cfg.behaviour.block, everyone_for);
                    }
                }
            }
            if let (true, Some(w)) = (refused != malicious, passed.as_mut()) {
                use std::io::Write;
                let what = if malicious { "answered" } else { "refused" };
                writeln!(w, "{}\t{label}\t{ip}\t{what}", name.normalized())?;
            }
            let rd = name
                .registered_domain()
                .unwrap_or_else(|| name.normalized());
            let k = seen.entry((label.clone(), ip, rd.clone())).or_insert(0);
            *k += 1;
            let counted = *k > o.free;
            st.queries += 1;
            if counted {
                st.after_free += 1;
            }
            if refused {
                st.refused += 1;
                if counted {
                    st.refused_after_free += 1;
                }
                let s = serde_json::to_value(source)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                *st.by_source.entry(s).or_default() += 1;
                refused_domains.entry(label.clone()).or_default().insert(rd);
            }
        }
    }
    let mut domains: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
    for (l, _, rd) in seen.keys() {
        domains.entry(l.clone()).or_default().insert(rd);
    }
    for (l, st) in labels.iter_mut() {
        st.rate = st.refused as f64 / st.queries.max(1) as f64;
        st.rate_after_free = st.refused_after_free as f64 / st.after_free.max(1) as f64;
        st.domains = domains.get(l).map_or(0, |d| d.len() as u64);
        st.domains_refused = refused_domains.get(l).map_or(0, |d| d.len() as u64);
    }
    Ok(StreamReport {
        model,
        free: o.free,
        labels,
    })
}

/// (header, rows) of a name list or TSV; a header is a first line whose first field is no
/// domain name (a `.tsv` always has one).
fn read(path: &Path) -> Result<(Option<String>, Vec<Vec<String>>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = None;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
        if i == 0 && !fields[0].contains('.') {
            header = Some(line);
            continue;
        }
        rows.push(fields);
    }
    Ok((header, rows))
}

pub fn print(r: &StreamReport) {
    println!(
        "deployed decision, model {} (the first {} queries of each client and domain may pass)",
        r.model, r.free
    );
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_header(vec![
            "label",
            "truth",
            "queries",
            "refused",
            "after first queries",
            "domains refused",
            "refused by",
        ]);
    for (l, s) in &r.labels {
        let by: Vec<String> = s
            .by_source
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let after = if s.after_free == 0 {
            "-".to_string()
        } else {
            format!("{:.3}%", 100.0 * s.rate_after_free)
        };
        t.add_row(vec![
            l.clone(),
            s.truth.to_string(),
            s.queries.to_string(),
            format!("{:.3}%", 100.0 * s.rate),
            after,
            format!("{}/{}", s.domains_refused, s.domains),
            by.join(", "),
        ]);
    }
    for i in 2..6 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    println!("{t}");
}
