//! `exfilguard eval`: detection metrics on labelled name files.

use anyhow::{bail, Context, Result};
use exfilguard_detect::{Class, Detector};
use exfilguard_dns::DnsName;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// File of benign names (one per line, or TSV with the name in the first column). Repeatable.
    #[arg(long, required = true)]
    benign: Vec<PathBuf>,
    /// File of malicious names (same format). Repeatable.
    #[arg(long, required = true)]
    malicious: Vec<PathBuf>,
    /// 1-based TSV column holding a per-row label (tool, family) for the breakdown;
    /// rows without it are labelled by file name.
    #[arg(long)]
    label_column: Option<usize>,
    /// A table for people, or the full report as JSON on stdout.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::Format::Table)]
    format: crate::Format,
    /// Also write the full report as JSON to this file (`--json FILE` is the old name).
    #[arg(long, alias = "json", value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a ROC curve and score histogram (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Replay the files as query streams through the deployed decision (the front's judge,
    /// domain state and behaviour analytics included) and report refusal rates instead.
    /// TSV columns by header: qname, tool/family, client, qtype, rcode.
    #[arg(long)]
    stream: bool,
    /// Config file for `--stream` (default: the built-in defaults and EXFILGUARD__* variables).
    #[arg(long, requires = "stream")]
    config: Option<PathBuf>,
    /// `--stream`: benign rows without a client column are spread over this many clients.
    #[arg(long, default_value_t = 64, requires = "stream")]
    clients: u32,
    /// `--stream`: queries per client and domain that may pass before the goal counts.
    #[arg(long, default_value_t = 5, requires = "stream")]
    free: usize,
    /// `--stream`: write the mistakes here (malicious rows answered, benign rows refused).
    #[arg(long, requires = "stream")]
    misses: Option<PathBuf>,
    /// `--stream`: simulated time between rows, milliseconds.
    #[arg(long, default_value_t = 100, requires = "stream")]
    interval_ms: u64,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct LabelStats {
    pub truth: &'static str,
    pub rows: u64,
    pub flagged: u64,
    /// TPR for malicious labels, FPR for benign ones.
    pub rate: f64,
    pub invalid: u64,
    pub by_class: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    /// Per class, the model's operating point.
    pub thresholds: BTreeMap<String, f32>,
    pub tpr: f64,
    pub fpr: f64,
    pub precision: f64,
    pub roc_auc: f64,
    pub benign_rows: u64,
    pub malicious_rows: u64,
    pub labels: BTreeMap<String, LabelStats>,
}

struct Scored {
    score: f32,
    malicious: bool,
}

const BATCH: usize = 4096;

pub fn run(detector: Detector, args: &EvalArgs) -> Result<()> {
    if args.stream {
        let cfg = exfilguard_agent::config::Config::load(args.config.as_deref())?;
        let det = exfilguard_agent::tune(detector, &cfg);
        let r = crate::stream::run(
            det,
            &cfg,
            &crate::stream::StreamOptions {
                benign: &args.benign,
                malicious: &args.malicious,
                label_column: args.label_column,
                clients: args.clients,
                free: args.free,
                interval_ms: args.interval_ms,
                passed: args.misses.as_deref(),
            },
        )?;
        match args.format {
            crate::Format::Table => crate::stream::print(&r),
            crate::Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        }
        if let Some(p) = &args.report {
            std::fs::write(p, serde_json::to_vec_pretty(&r)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let detector = &detector;
    let mut scored: Vec<Scored> = Vec::new();
    let mut labels: BTreeMap<String, LabelStats> = BTreeMap::new();
    let files: Vec<(&PathBuf, bool)> = args
        .benign
        .iter()
        .map(|p| (p, false))
        .chain(args.malicious.iter().map(|p| (p, true)))
        .collect();
    let total: u64 = files
        .iter()
        .map(|(p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} {wide_bar} {bytes}/{total_bytes} {per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    for (path, malicious) in files {
        read_file(
            detector,
            path,
            malicious,
            args.label_column,
            &bar,
            &mut scored,
            &mut labels,
        )?;
    }
    bar.finish_and_clear();
    let report = summarise(detector, &scored, labels);
    match args.format {
        crate::Format::Table => print_report(&report)?,
        crate::Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(p) = &args.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        plot(p, &scored)?;
        eprintln!("plot written to {}", p.display());
    }
    Ok(())
}

fn read_file(
    detector: &Detector,
    path: &Path,
    malicious: bool,
    label_column: Option<usize>,
    bar: &ProgressBar,
    scored: &mut Vec<Scored>,
    labels: &mut BTreeMap<String, LabelStats>,
) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let truth = if malicious { "malicious" } else { "benign" };
    let mut names: Vec<DnsName> = Vec::with_capacity(BATCH);
    let mut row_labels: Vec<String> = Vec::with_capacity(BATCH);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        bar.inc(line.len() as u64 + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        let name = fields[0].trim();
        // A header row is a first line whose first field is no domain name.
        if name.is_empty() || (i == 0 && !name.contains('.')) {
            continue;
        }
        // Rows without the label column (plain name lists) are labelled by their file.
        let label = match label_column {
            Some(0) => bail!("--label-column is 1-based"),
            Some(c) => fields
                .get(c - 1)
                .map_or_else(|| stem.clone(), |l| l.trim().to_owned()),
            None => stem.clone(),
        };
        match DnsName::parse(name) {
            Ok(n) => {
                names.push(n);
                row_labels.push(label);
            }
            Err(_) => {
                let s = labels.entry(label).or_default();
                s.truth = truth;
                s.invalid += 1;
            }
        }
        if names.len() >= BATCH {
            flush(
                detector,
                &mut names,
                &mut row_labels,
                malicious,
                scored,
                labels,
            )?;
        }
    }
    flush(
        detector,
        &mut names,
        &mut row_labels,
        malicious,
        scored,
        labels,
    )
}

fn flush(
    detector: &Detector,
    names: &mut Vec<DnsName>,
    row_labels: &mut Vec<String>,
    malicious: bool,
    scored: &mut Vec<Scored>,
    labels: &mut BTreeMap<String, LabelStats>,
) -> Result<()> {
    let verdicts = detector.classify_batch(names)?;
    for (v, label) in verdicts.iter().zip(row_labels.iter()) {
        let s = labels.entry(label.clone()).or_default();
        s.truth = if malicious { "malicious" } else { "benign" };
        s.rows += 1;
        let flagged = v.class != Class::Benign;
        s.flagged += flagged as u64;
        *s.by_class.entry(v.class.as_str()).or_default() += 1;
        scored.push(Scored {
            score: v.score,
            malicious,
        });
    }
    names.clear();
    row_labels.clear();
    Ok(())
}

fn summarise(
    detector: &Detector,
    scored: &[Scored],
    mut labels: BTreeMap<String, LabelStats>,
) -> Report {
    for s in labels.values_mut() {
        s.rate = if s.rows == 0 {
            0.0
        } else {
            s.flagged as f64 / s.rows as f64
        };
    }
    let (mut tp, mut fp, mut pos, mut neg) = (0u64, 0u64, 0u64, 0u64);
    for s in labels.values() {
        if s.truth == "malicious" {
            tp += s.flagged;
            pos += s.rows;
        } else {
            fp += s.flagged;
            neg += s.rows;
        }
    }
    let div = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let info = detector.model().info();
    Report {
        model: info.version.clone(),
        thresholds: info
            .classes
            .iter()
            .zip(&info.thresholds)
            .filter(|(c, _)| **c != exfilguard_detect::ModelClass::Benign)
            .map(|(c, t)| (exfilguard_detect::Class::from(*c).as_str().to_owned(), *t))
            .collect(),
        tpr: div(tp, pos),
        fpr: div(fp, neg),
        precision: div(tp, tp + fp),
        roc_auc: roc_auc(scored),
        benign_rows: neg,
        malicious_rows: pos,
        labels,
    }
}

/// Area under the ROC curve: the probability that a random malicious name outscores a random
/// benign one (ties count half), computed from ranks.
pub fn roc_auc_of(scores: &[(f32, bool)]) -> f64 {
    let mut v: Vec<(f32, bool)> = scores.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0f64, 0u64, 0usize);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based
        for x in &v[i..j] {
            if x.1 {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = v.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

fn roc_auc(scored: &[Scored]) -> f64 {
    roc_auc_of(
        &scored
            .iter()
            .map(|s| (s.score, s.malicious))
            .collect::<Vec<_>>(),
    )
}

fn print_report(r: &Report) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let thr: Vec<String> = r
        .thresholds
        .iter()
        .map(|(c, t)| format!("{c} ≥ {t:.6}"))
        .collect();
    writeln!(
        out,
        "model {}  operating point: {}",
        r.model,
        thr.join(", ")
    )?;
    writeln!(
        out,
        "overall: TPR {:.4}  FPR {:.6}  precision {:.4}  ROC-AUC {:.5}  ({} malicious, {} benign)",
        r.tpr, r.fpr, r.precision, r.roc_auc, r.malicious_rows, r.benign_rows
    )?;
    writeln!(
        out,
        "{:<28} {:<9} {:>8} {:>8} {:>9} {:>7}  classes",
        "label", "truth", "rows", "flagged", "rate", "invalid"
    )?;
    for (name, s) in &r.labels {
        let kind = if s.truth == "malicious" { "TPR" } else { "FPR" };
        let classes: Vec<String> = s.by_class.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "{name:<28} {:<9} {:>8} {:>8} {kind} {:.4} {:>7}  {}",
            s.truth,
            s.rows,
            s.flagged,
            s.rate,
            s.invalid,
            classes.join(" ")
        )?;
    }
    Ok(())
}

fn plot(path: &Path, scored: &[Scored]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);

    // ROC on a log FPR axis: the operating region of a DNS filter is FPR < 1e-2.
    let mut v: Vec<(f32, bool)> = scored.iter().map(|s| (s.score, s.malicious)).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let pos = v.iter().filter(|x| x.1).count().max(1) as f64;
    let neg = v.iter().filter(|x| !x.1).count().max(1) as f64;
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut roc = Vec::new();
    for (i, (_, m)) in v.iter().enumerate() {
        if *m {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if i + 1 == v.len() || v[i + 1].0 != v[i].0 {
            roc.push(((fp / neg).max(1e-6), tp / pos));
        }
    }
    let mut chart = ChartBuilder::on(&left)
        .caption("ROC (log FPR)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1e-6f64..1f64).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("false positive rate")
        .y_desc("true positive rate")
        .draw()?;
    chart.draw_series(LineSeries::new(roc, &BLUE))?;

    // Score histograms, benign vs malicious, log counts.
    let bins = 50usize;
    let mut hist = vec![[0u32; 2]; bins];
    for s in scored {
        let b = ((s.score.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1);
        hist[b][s.malicious as usize] += 1;
    }
    let max = hist
        .iter()
        .flat_map(|h| h.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&right)
        .caption("score histogram", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, (0.5f64..max * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("score = P(not benign)")
        .y_desc("names")
        .draw()?;
    for (k, color) in [(0usize, GREEN), (1usize, RED)] {
        let pts: Vec<(f64, f64)> = hist
            .iter()
            .enumerate()
            .map(|(i, h)| ((i as f64 + 0.5) / bins as f64, (h[k] as f64).max(0.5)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(if k == 0 { "benign" } else { "malicious" })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::roc_auc_of;

    #[test]
    fn auc_by_ranks() {
        assert_eq!(roc_auc_of(&[(0.1, false), (0.9, true)]), 1.0);
        assert_eq!(roc_auc_of(&[(0.9, false), (0.1, true)]), 0.0);
        assert_eq!(roc_auc_of(&[(0.5, false), (0.5, true)]), 0.5);
        let v = [(0.1, false), (0.3, true), (0.35, false), (0.8, true)];
        assert_eq!(roc_auc_of(&v), 0.75);
        assert!(roc_auc_of(&[(0.5, true)]).is_nan());
    }
}
