//! Training data: the honest split of `shared/data` and the feature export that `model/train.py`
//! reads. Splits are by group, never by row: benign names by registrable label (so google.com
//! and google.de land together), tunnels by tool, DGAs by family. The held-out tools and
//! families never reach training; they are what `eval` and the accuracy guard measure.

use anyhow::{bail, Context, Result};
use exfilguard_detect::lexicon::{NgramModel, WordList};
use exfilguard_detect::{extract, Lexicon, FEATURE_NAMES};
use exfilguard_dns::DnsName;
use rand::prelude::*;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Default held-out tunnel tools and DGA families of the shipped model.
pub const HOLDOUT_TOOLS: &[&str] = &["dnsexfiltrator", "tuns"];
pub const HOLDOUT_FAMILIES: &[&str] = &["matsnu", "newgoz", "ramdo"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Fits the benign character model only.
    Ngram,
    Train,
    /// Calibration and threshold choice.
    Val,
    Test,
}

impl Split {
    fn as_str(self) -> &'static str {
        match self {
            Split::Ngram => "ngram",
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Benign = 0,
    Tunnel = 1,
    Dga = 2,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub label: Label,
    /// Source file tag for benign rows, tool for tunnels, family for DGAs.
    pub group: String,
    pub split: Split,
    /// For tunnel rows: the lab zone, which training replaces by a benign registered domain.
    pub zone: Option<String>,
}

/// Stable 64-bit FNV-1a: split assignment must not change between runs or platforms.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn benign_split(name: &DnsName) -> Split {
    let key = match name.split().registrable_label() {
        Some(i) => name.normalized_from(i),
        None => name.normalized(),
    };
    // Group by the registrable label alone (google.com, google.de together).
    let label = key.split('.').next().unwrap_or("").to_owned();
    match fnv(&label) % 10 {
        0..=2 => Split::Ngram,
        3..=5 => Split::Train,
        6 => Split::Val,
        _ => Split::Test,
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BufReader::new(f)
        .lines()
        .map(|l| l.with_context(|| format!("reading {}", path.display())))
        .collect()
}

/// Reads and splits every labelled file in `data` (the layout of `shared/data`).
pub fn load(
    data: &Path,
    holdout_tools: &[String],
    holdout_families: &[String],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    let mut benign = |name: &str, group: &str, rows: &mut Vec<Row>| match DnsName::parse(name) {
        Ok(n) => rows.push(Row {
            name: name.to_owned(),
            label: Label::Benign,
            group: group.to_owned(),
            split: benign_split(&n),
            zone: None,
        }),
        Err(_) => skipped += 1,
    };
    for l in read_lines(&data.join("benign_top_alexa100k_2016.txt"))? {
        benign(l.trim(), "alexa", &mut rows);
    }
    for l in read_lines(&data.join("benign_umbrella_fqdn50k_2019.txt"))? {
        benign(l.trim(), "umbrella", &mut rows);
    }
    for l in read_lines(&data.join("benign_opendns_lists.tsv"))?
        .iter()
        .skip(1)
    {
        let mut f = l.split('\t');
        if let (Some(name), Some(list)) = (f.next(), f.next()) {
            benign(name.trim(), list, &mut rows);
        }
    }
    for l in read_lines(&data.join("tunnel_queries_train.tsv"))?
        .iter()
        .skip(1)
    {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 4 || DnsName::parse(f[0]).is_err() {
            skipped += 1;
            continue;
        }
        let split = if holdout_tools.iter().any(|t| t == f[1]) {
            Split::Test
        } else if fnv(f[0]) % 10 >= 8 {
            Split::Val
        } else {
            Split::Train
        };
        rows.push(Row {
            name: f[0].to_owned(),
            label: Label::Tunnel,
            group: f[1].to_owned(),
            split,
            zone: Some(f[3].to_owned()),
        });
    }
    for l in read_lines(&data.join("dga_generated_10_families.tsv"))?
        .iter()
        .skip(1)
    {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 2 || DnsName::parse(f[0]).is_err() {
            skipped += 1;
            continue;
        }
        let split = if holdout_families.iter().any(|t| t == f[1]) {
            Split::Test
        } else {
            match fnv(f[0]) % 10 {
                0..=6 => Split::Train,
                7 => Split::Val,
                _ => Split::Test,
            }
        };
        rows.push(Row {
            name: f[0].to_owned(),
            label: Label::Dga,
            group: f[1].to_owned(),
            split,
            zone: None,
        });
    }
    if skipped > 0 {
        eprintln!("dataset: skipped {skipped} rows that are not valid DNS names");
    }
    if rows.is_empty() {
        bail!("no rows read from {}", data.display());
    }
    Ok(rows)
}

/// Writes the held-out test slices in the format `exfilguard eval` reads.
pub fn write_test_slices(rows: &[Row], out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    let mut files: std::collections::BTreeMap<String, BufWriter<std::fs::File>> =
        Default::default();
    for r in rows.iter().filter(|r| r.split == Split::Test) {
        let file = match r.label {
            Label::Benign => format!("test_benign_{}.txt", r.group),
            Label::Tunnel => "test_tunnel.tsv".to_owned(),
            Label::Dga => "test_dga.tsv".to_owned(),
        };
        if !files.contains_key(&file) {
            let path = out.join(&file);
            let mut w = BufWriter::new(std::fs::File::create(&path)?);
            match r.label {
                Label::Benign => {}
                Label::Tunnel => writeln!(w, "name\tgroup")?,
                // a DGA's candidates do not resolve: `eval --stream` feeds the NXDOMAIN
                // answers to the DGA-bot analytics as the front would
                Label::Dga => writeln!(w, "name\tgroup\trcode")?,
            }
            files.insert(file.clone(), w);
            written.push(path);
        }
        let w = files.get_mut(&file).expect("inserted");
        match r.label {
            Label::Benign => writeln!(w, "{}", r.name)?,
            Label::Tunnel => writeln!(w, "{}\t{}", r.name, r.group)?,
            Label::Dga => writeln!(w, "{}\t{}\t3", r.name, r.group)?,
        }
    }
    for (_, mut w) in files {
        w.flush()?;
    }
    written.sort();
    Ok(written)
}

/// Fits the benign character model on the n-gram split (registrable labels and subdomain
/// labels of benign names that neither training nor testing sees) and the English word list.
pub fn fit_ngram(rows: &[Row]) -> NgramModel {
    let mut labels: Vec<Vec<u8>> = WORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|w| w.as_bytes().to_vec())
        .collect();
    for r in rows.iter().filter(|r| r.split == Split::Ngram) {
        let Ok(n) = DnsName::parse(&r.name) else {
            continue;
        };
        let s = n.split();
        let last = s
            .registrable_label()
            .map_or(s.subdomain_labels(), |i| i + 1);
        for i in 0..last {
            labels.push(n.label(i).to_ascii_lowercase());
        }
    }
    NgramModel::train(labels.iter().map(Vec::as_slice))
}

/// Synthetic payload-carrying names: random or text payloads in common DNS-safe encodings,
/// laid out in labels as tunnel tools do. They teach encodings, not any one tool.
pub fn synth_tunnels(count: usize, zones: &[String], seed: u64) -> Vec<String> {
    const HEX: &[u8] = b"0123456789abcdef";
    const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    const B36: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const B62: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const B64: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    const B64URL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let words: Vec<&'static str> = WORDS.lines().filter(|l| !l.starts_with('#')).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let kind = rng.random_range(0..12);
        // Random (compressed or encrypted) payloads are uniform over the alphabet; text
        // payloads are encoded for real so their skew is realistic.
        let short = rng.random_bool(0.2);
        let want = if short {
            rng.random_range(12..28)
        } else {
            rng.random_range(28..200)
        };
        let payload: Vec<u8> = match kind {
            0..=6 => {
                let alphabet: &[u8] = match kind {
                    0 => HEX,
                    1 => B32,
                    2 => B36,
                    3 => B62,
                    4 => B64,
                    5 => B64URL,
                    _ => b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\xbc\xbd\xbe\xbf\xc0\xc1\xc2\xd0\xd1\xe0\xe1\xf0",
                };
                (0..want)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            }
            _ => {
                let mut text = String::new();
                while text.len() < want {
                    text.push_str(words[rng.random_range(0..words.len())]);
                    text.push(if rng.random_bool(0.5) { ' ' } else { '\n' });
                }
                let enc = match kind {
                    7 => data_encoding::HEXLOWER.encode(text.as_bytes()),
                    8 => data_encoding::BASE32_NOPAD.encode(text.as_bytes()),
                    9 => data_encoding::BASE32_NOPAD
                        .encode(text.as_bytes())
                        .to_lowercase(),
                    10 => data_encoding::BASE64URL_NOPAD.encode(text.as_bytes()),
                    _ => data_encoding::BASE64_NOPAD.encode(text.as_bytes()),
                };
                enc.into_bytes().into_iter().take(want).collect()
            }
        };
        let upper = kind == 0 && rng.random_bool(0.3);
        let label_len = rng.random_range(16..=63usize);
        let mut labels: Vec<Vec<u8>> = payload.chunks(label_len).map(<[u8]>::to_vec).collect();
        if upper {
            labels.iter_mut().for_each(|l| l.make_ascii_uppercase());
        }
        // Sequence numbers, session ids and tags around the payload, as most tools add.
        match rng.random_range(0..5) {
            0 => labels.insert(0, rng.random_range(0..100_000u32).to_string().into_bytes()),
            1 => labels.insert(0, format!("{:x}", rng.random::<u32>()).into_bytes()),
            2 => labels.push(rng.random_range(0..1000u32).to_string().into_bytes()),
            3 => labels.insert(0, vec![B36[rng.random_range(0..26)]]),
            _ => {}
        }
        let zone = &zones[rng.random_range(0..zones.len())];
        let mut name = Vec::new();
        for l in &labels {
            for &b in l {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    name.push(b);
                } else {
                    name.extend_from_slice(format!("\\{b:03}").as_bytes());
                }
            }
            name.push(b'.');
        }
        name.extend_from_slice(zone.as_bytes());
        let name = String::from_utf8(name).expect("escaped ASCII");
        if DnsName::parse(&name).is_ok() {
            out.push(name);
        }
    }
    out
}

static WORDS: &str = include_str!("../../exfilguard-detect/assets/words.txt");

/// Replaces a tunnel row's lab zone with a benign registered domain, so the model never sees
/// the zone a tool ran in.
fn rezone(name: &str, zone: &str, new_zone: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let z = zone.to_ascii_lowercase();
    let cut = lower.strip_suffix(&z)?;
    let left = &name[..cut.len()];
    Some(format!("{left}{new_zone}"))
}

/// Builds everything training needs under `out`: the n-gram table (also copied to
/// `ngram_out`), test slices, and `features.csv` (every row, with its split and group).
pub fn build(
    data: &Path,
    out: &Path,
    ngram_out: &Path,
    holdout_tools: &[String],
    holdout_families: &[String],
    synth: usize,
) -> Result<()> {
    let rows = load(data, holdout_tools, holdout_families)?;
    std::fs::create_dir_all(out)?;
    let ngram = fit_ngram(&rows);
    std::fs::write(ngram_out, ngram.to_bytes())
        .with_context(|| format!("writing {}", ngram_out.display()))?;
    let lexicon = Lexicon {
        ngram,
        words: WordList::from_text(WORDS)?,
    };
    let slices = write_test_slices(&rows, out)?;
    let train_zones: Vec<String> = rows
        .iter()
        .filter(|r| r.label == Label::Benign && r.split == Split::Train && r.group == "alexa")
        .map(|r| r.name.clone())
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let path = out.join("features.csv");
    let mut w = csv::Writer::from_path(&path)?;
    let mut header = vec!["split", "label", "group", "name"];
    header.extend(FEATURE_NAMES);
    w.write_record(&header)?;
    let mut write = |split: Split, label: Label, group: &str, name: &str| -> Result<()> {
        let n = DnsName::parse(name).with_context(|| format!("{name:?}"))?;
        let f = extract(&n, &lexicon);
        let mut rec = vec![
            split.as_str().to_owned(),
            (label as u8).to_string(),
            group.to_owned(),
            name.to_owned(),
        ];
        rec.extend(f.values.iter().map(|v| format!("{v:.5}")));
        w.write_record(&rec)?;
        Ok(())
    };
    let mut counts = std::collections::BTreeMap::<(String, &str), usize>::new();
    for r in rows.iter().filter(|r| r.split != Split::Ngram) {
        let mut name = r.name.clone();
        // Tunnel rows: the lab zone goes, a benign registered domain comes in (all splits, so
        // cross-validation on held-out tools measures the payload, not the zone).
        if let (Label::Tunnel, Some(zone)) = (r.label, &r.zone) {
            let z = &train_zones[rng.random_range(0..train_zones.len())];
            match rezone(&r.name, zone, z) {
                Some(n) if DnsName::parse(&n).is_ok() => name = n,
                _ => continue,
            }
        }
        // A share of registered-domain-only rows get "www.", so that the model does not learn
        // "has a subdomain" as a signal.
        if matches!(r.label, Label::Benign | Label::Dga)
            && !name.contains("www.")
            && rng.random_bool(0.1)
        {
            let n = DnsName::parse(&name)?;
            if n.split().subdomain_labels() == 0 {
                name = format!("www.{name}");
            }
        }
        write(r.split, r.label, &r.group, &name)?;
        *counts
            .entry((r.group.clone(), r.split.as_str()))
            .or_default() += 1;
    }
    for (i, name) in synth_tunnels(synth, &train_zones, 11).iter().enumerate() {
        let split = if i % 10 == 9 {
            Split::Val
        } else {
            Split::Train
        };
        write(split, Label::Tunnel, "synthetic", name)?;
        *counts
            .entry(("synthetic".into(), split.as_str()))
            .or_default() += 1;
    }
    w.flush()?;
    eprintln!(
        "dataset: wrote {} and {} test slices",
        path.display(),
        slices.len()
    );
    for ((g, s), c) in counts {
        eprintln!("  {g:>20} {s:>5} {c:>7}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rezone_keeps_payload_case() {
        assert_eq!(
            rezone("AbC.Tunnel.Example.org", "tunnel.example.org", "news.com").as_deref(),
            Some("AbC.news.com")
        );
        assert_eq!(rezone("x.other.org", "tunnel.example.org", "n.com"), None);
    }

    #[test]
    fn synthetic_names_are_valid_and_varied() {
        let zones = vec!["example.com".to_owned()];
        let names = synth_tunnels(300, &zones, 1);
        assert_eq!(names.len(), 300);
        assert!(names.iter().all(|n| n.ends_with(".example.com")));
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), 300);
    }

    #[test]
    fn benign_split_groups_by_registrable_label() {
        let a = benign_split(&DnsName::parse("google.com").unwrap());
        let b = benign_split(&DnsName::parse("mail.google.de").unwrap());
        assert_eq!(a, b);
    }
}
