//! `exfilguard classify` and `exfilguard features`.

use crate::view::{cut_left, risk, Rows};
use crate::Format;
use anyhow::Result;
use exfilguard_detect::verdict::fmt_p;
use exfilguard_detect::{extract, Detector, Lexicon, ModelClass, Verdict, FEATURE_NAMES};
use exfilguard_dns::DnsName;
use serde::Serialize;
use std::io::{BufRead, Write};

/// One output line: the verdict plus the name it is about.
#[derive(Serialize)]
pub struct Line<'a> {
    pub name: &'a str,
    pub registered_domain: Option<String>,
    #[serde(flatten)]
    pub verdict: Option<&'a Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Largest batch before output is flushed; smaller when stdin has nothing more buffered.
const BATCH: usize = 1024;

/// Returns whether a name was judged malicious (the exit status says so).
pub fn run(detector: &Detector, names: &[String], format: Format) -> Result<bool> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut e = Emit {
        rows: Rows::new(vec![
            ("name", 60, false),
            ("class", 8, false),
            ("risk", 18, false),
            ("p / threshold", 22, false),
            ("registered domain", 24, false),
            ("reason", 0, false),
        ]),
        format,
        found: false,
    };
    let mut batch = Vec::with_capacity(BATCH);
    for arg in names {
        if arg == "-" {
            let mut input = std::io::BufReader::new(std::io::stdin().lock());
            let mut line = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line)? == 0 {
                    break;
                }
                let name = line.trim();
                if !name.is_empty() {
                    batch.push(name.to_owned());
                }
                // Stream: classify as soon as nothing more is buffered (never block to batch).
                if batch.len() >= BATCH || input.buffer().is_empty() {
                    e.emit(detector, &mut batch, &mut out)?;
                    out.flush()?;
                }
            }
        } else {
            batch.push(arg.clone());
        }
    }
    e.emit(detector, &mut batch, &mut out)?;
    out.flush()?;
    Ok(e.found)
}

struct Emit {
    rows: Rows,
    format: Format,
    found: bool,
}

impl Emit {
    fn emit(
        &mut self,
        detector: &Detector,
        batch: &mut Vec<String>,
        out: &mut impl Write,
    ) -> Result<()> {
        let parsed: Vec<Result<DnsName, String>> = batch.iter().map(|n| user_name(n)).collect();
        let valid: Vec<DnsName> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let verdicts = detector.classify_batch(&valid)?;
        self.found |= verdicts.iter().any(|v| v.class.is_malicious());
        let mut v = verdicts.iter();
        let mut rows = Vec::new();
        for (text, p) in batch.iter().zip(&parsed) {
            let line = match p {
                Ok(name) => Line {
                    name: text,
                    registered_domain: name.registered_domain(),
                    verdict: v.next(),
                    error: None,
                },
                Err(e) => Line {
                    name: text,
                    registered_domain: None,
                    verdict: None,
                    error: Some(format!("invalid name: {e}")),
                },
            };
            match self.format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&line)?)?,
                Format::Table => rows.push(row(&line)),
            }
        }
        if !rows.is_empty() {
            write!(out, "{}", self.rows.render(rows))?;
        }
        batch.clear();
        Ok(())
    }
}

/// A name typed or pasted by an operator. DNS labels may hold any byte (dns2tcp puts `+` in
/// them), so only what is plainly not a query name is refused, each with what to do instead:
/// whitespace, a URL, an IP address, an over-long label (with its real length).
pub fn user_name(text: &str) -> Result<DnsName, String> {
    if text.chars().any(char::is_whitespace) {
        return Err("contains whitespace: give one name per argument or line".into());
    }
    if let Some((_, rest)) = text.split_once("://") {
        let host = rest.split(['/', '?', '#', ':']).next().unwrap_or("");
        return Err(format!(
            "a URL, not a DNS name: classify its host ({host:?})"
        ));
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        let rev = match ip {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            std::net::IpAddr::V6(v6) => {
                let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
                let mut n: Vec<String> = hex.chars().rev().map(String::from).collect();
                n.push("ip6.arpa".into());
                n.join(".")
            }
        };
        return Err(format!(
            "an IP address, not a DNS name (its reverse-lookup name is {rev})"
        ));
    }
    // `/` is a legal label byte (base64 tunnels use it) but never in a top-level domain
    if let Some((host, _)) = text
        .rsplit('.')
        .next()
        .filter(|tld| tld.contains('/'))
        .and_then(|_| text.split_once('/'))
    {
        return Err(format!(
            "a host followed by a path, not a DNS name: classify the host ({host:?})"
        ));
    }
    if !text.contains('\\') {
        if let Some((i, l)) = text
            .trim_end_matches('.')
            .split('.')
            .enumerate()
            .find(|(_, l)| l.len() > 63)
        {
            return Err(format!(
                "label {} is {} bytes long (at most 63)",
                i + 1,
                l.len()
            ));
        }
    }
    DnsName::parse(text).map_err(|e| e.to_string())
}

fn row(l: &Line) -> Vec<String> {
    let rd = l.registered_domain.clone().unwrap_or_else(|| "-".into());
    match (l.verdict, &l.error) {
        (Some(v), _) => {
            let (risk, p) = risk(v);
            vec![
                cut_left(l.name, 60),
                v.class.as_str().into(),
                risk,
                p,
                rd,
                v.reasons.first().cloned().unwrap_or_default(),
            ]
        }
        (None, e) => vec![
            cut_left(l.name, 60),
            "invalid".into(),
            "-".into(),
            "-".into(),
            rd,
            e.clone().unwrap_or_default(),
        ],
    }
}

pub fn features(names: &[String]) -> Result<()> {
    for text in names {
        let name = user_name(text).map_err(|e| anyhow::anyhow!("{text:?}: {e}"))?;
        let f = extract(&name, Lexicon::embedded());
        let map: serde_json::Map<String, serde_json::Value> = FEATURE_NAMES
            .iter()
            .zip(f.values)
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({ "name": text, "features": map })
        )?;
    }
    Ok(())
}

/// `exfilguard model-info`: the model's metadata, and per class the threshold the decisions
/// use (from a verdict, so `--threshold` and the config's overrides show) next to the one the
/// model ships, with what it means. Benign has none: it is what a name is when no detector
/// reaches its threshold (the model file stores 1.0 there, unused).
pub fn model_info(detector: &Detector, format: Format) -> Result<()> {
    let info = detector.model().info();
    let probe = detector.classify(&DnsName::parse("example.com")?)?;
    let mut decision = Vec::new();
    for (class, model_t) in info.classes.iter().zip(&info.thresholds) {
        let name = match class {
            ModelClass::Benign => "benign",
            ModelClass::Tunnel => "tunnel",
            ModelClass::Dga => "dga",
        };
        let in_use = probe.detectors.iter().find(|d| d.detector.as_str() == name);
        decision.push(serde_json::json!({
            "class": name,
            "threshold_in_use": in_use.map(|d| d.threshold),
            "suspect_in_use": in_use.map(|d| d.suspect),
            "model_threshold": model_t,
            "rule": match in_use {
                Some(_) => format!("{name} when P({name}) >= threshold; from suspect on, evidence against the domain"),
                None => "what a name is when no other class reaches its threshold (the model file's 1.0 is unused)".into(),
            },
        }));
    }
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let mut v = serde_json::to_value(info)?;
        v["decision"] = serde_json::Value::Array(decision);
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "model {} ({} features, sha256 {})\n",
        info.version,
        info.features.len(),
        info.sha256
    )?;
    let rows = decision
        .iter()
        .map(|d| {
            let p = |k: &str| d[k].as_f64().map_or("-".into(), |x| fmt_p(x as f32));
            vec![
                d["class"].as_str().unwrap_or("").to_string(),
                p("threshold_in_use"),
                p("suspect_in_use"),
                d["rule"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        crate::view::table(
            vec![
                ("class", 8, false),
                ("threshold", 12, false),
                ("suspect", 12, false),
                ("meaning", 0, false),
            ],
            rows
        )
    )?;
    writeln!(
        out,
        "\n`exfilguard features NAME` prints a name's feature vector; -o json lists the features."
    )?;
    Ok(())
}
