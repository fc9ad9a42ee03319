//! `exfilguard classify` and `exfilguard features`.

use crate::Format;
use anyhow::Result;
use exfilguard_detect::verdict::fmt_p;
use exfilguard_detect::{extract, Detector, Lexicon, Verdict, FEATURE_NAMES};
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

pub fn run(detector: &Detector, names: &[String], format: Format) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == Format::Table {
        writeln!(
            out,
            "{:<60} {:<8} {:<18} {:<22} {:<24} reason",
            "name", "class", "risk", "p / threshold", "registered domain"
        )?;
    }
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
                    emit(detector, &mut batch, format, &mut out)?;
                    out.flush()?;
                }
            }
        } else {
            batch.push(arg.clone());
        }
    }
    emit(detector, &mut batch, format, &mut out)?;
    out.flush()?;
    Ok(())
}

fn emit(
    detector: &Detector,
    batch: &mut Vec<String>,
    format: Format,
    out: &mut impl Write,
) -> Result<()> {
    let parsed: Vec<Result<DnsName, String>> = batch.iter().map(|n| user_name(n)).collect();
    let valid: Vec<DnsName> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let verdicts = detector.classify_batch(&valid)?;
    let mut v = verdicts.iter();
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
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&line)?)?,
            Format::Table => write_row(out, &line)?,
        }
    }
    batch.clear();
    Ok(())
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

/// A name cut on the left to `width` characters: the registered domain stays readable.
fn cut_left(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(n - (width - 3)).collect();
    format!("...{tail}")
}

fn write_row(out: &mut impl Write, l: &Line) -> std::io::Result<()> {
    let name = cut_left(l.name, 60);
    let rd = l.registered_domain.as_deref().unwrap_or("-");
    match (l.verdict, &l.error) {
        (Some(v), _) => {
            // the detector closest to its threshold, with the threshold in use: "benign 0.997"
            // alone reads as a near miss when the DGA threshold is 0.998422
            let top = v
                .detectors
                .iter()
                .max_by(|a, b| a.risk.cmp(&b.risk).then(a.p.total_cmp(&b.p)));
            let (risk, p) = match top {
                Some(d) => (
                    format!("{} {} {}", d.detector.as_str(), d.risk, d.level.as_str()),
                    format!(
                        "{} {} {}",
                        fmt_p(d.p),
                        if d.p >= d.threshold { ">=" } else { "<" },
                        fmt_p(d.threshold)
                    ),
                ),
                None => ("-".into(), format!("{:.3}", v.score)),
            };
            writeln!(
                out,
                "{name:<60} {:<8} {risk:<18} {p:<22} {rd:<24} {}",
                v.class.as_str(),
                v.reasons.first().map(String::as_str).unwrap_or("")
            )
        }
        (None, e) => writeln!(
            out,
            "{name:<60} {:<8} {:<18} {:<22} {rd:<24} {}",
            "invalid",
            "-",
            "-",
            e.as_deref().unwrap_or("")
        ),
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
