//! Every mistake in a configuration file at once, each with its line and column.
//!
//! serde (and figment over it) stops at the first error, so four mistakes took four runs.
//! Here the file is parsed with spans, and every key is deserialised on its own into `Config`
//! (every section is `serde(default)`, so a one-key document is a whole configuration): each
//! key that fails is one problem at its own place, with a "did you mean" drawn from the names
//! serde expected. The keys that pass are then validated together (ranges, addresses), and
//! those messages are placed at the key they name.

use crate::config::Config;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem, placed in the file when it came from one.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 1-based line and column of the key (or the value, for a bad value).
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((l, c)) => write!(f, "line {l}, column {c}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// What checking one file found: the keys that deserialise (as a table to merge over the
/// defaults), where each key sits, and the problems.
pub struct Checked {
    pub good: toml::Table,
    spans: Vec<(String, Range<usize>)>,
    line_starts: Vec<usize>,
    pub problems: Vec<Problem>,
}

struct Leaf {
    path: Vec<String>,
    key_spans: Vec<Range<usize>>,
    value_span: Range<usize>,
    value: toml::Value,
}

/// Checks the text of a configuration file. Syntax errors end the check (the rest of the file
/// cannot be read reliably); otherwise every key is judged.
pub fn check(text: &str) -> Checked {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut out = Checked {
        good: toml::Table::new(),
        spans: Vec::new(),
        line_starts,
        problems: Vec::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let at = e.span().map(|s| out.line_col(s.start));
            out.problems.push(Problem {
                at,
                message: format!("TOML syntax: {}", e.message().trim_end()),
            });
        }
        return out;
    }
    let values: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let at = e.span().map(|s| out.line_col(s.start));
            out.problems.push(Problem {
                at,
                message: format!("TOML: {}", e.message().trim_end()),
            });
            return out;
        }
    };
    let mut leaves = Vec::new();
    walk(
        doc.get_ref(),
        &values,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut leaves,
    );
    let mut reported_unknown: Vec<Vec<String>> = Vec::new();
    for leaf in leaves {
        out.spans.push((
            leaf.path.join("."),
            leaf.key_spans.last().cloned().unwrap_or(0..0),
        ));
        let one = nest(&leaf.path, leaf.value.clone());
        let Err(e) = toml::Value::Table(one).try_into::<Config>() else {
            insert(&mut out.good, &leaf.path, leaf.value);
            continue;
        };
        let msg = e.message().trim_end().to_string();
        if let Some(field) = backticked(&msg)
            .first()
            .filter(|_| msg.starts_with("unknown field"))
        {
            // the unknown key is the first path element with that name; report it once
            let i = leaf
                .path
                .iter()
                .rposition(|p| p == field)
                .unwrap_or(leaf.path.len() - 1);
            let prefix = leaf.path[..=i].to_vec();
            if reported_unknown.contains(&prefix) {
                continue;
            }
            let at = out.line_col(leaf.key_spans[i].start);
            let hint = suggestion(field, &backticked(&msg)[1..], &prefix[..i]);
            reported_unknown.push(prefix.clone());
            out.problems.push(Problem {
                at: Some(at),
                message: format!("{}: unknown key{hint}", prefix.join(".")),
            });
        } else {
            let at = out.line_col(leaf.value_span.start);
            let hint = if msg.starts_with("unknown variant") {
                let words = backticked(&msg);
                words
                    .first()
                    .map(|w| suggestion(w, &words[1..], &[]))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            out.problems.push(Problem {
                at: Some(at),
                message: format!("{} = {}: {msg}{hint}", leaf.path.join("."), leaf.value),
            });
        }
    }
    out
}

impl Checked {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset);
        (line, offset - self.line_starts[line - 1] + 1)
    }

    /// Where a validation message belongs: the longest key of the file it starts with.
    pub fn place(&self, message: String) -> Problem {
        let at = self
            .spans
            .iter()
            .filter(|(k, _)| {
                message
                    .strip_prefix(k.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', ':', '=']))
            })
            .max_by_key(|(k, _)| k.len())
            .map(|(_, s)| self.line_col(s.start));
        Problem { at, message }
    }
}

/// Collects every leaf (a value that is not a table, or an empty table) with its spans.
fn walk(
    doc: &DeTable<'_>,
    values: &toml::Table,
    path: &mut Vec<String>,
    key_spans: &mut Vec<Range<usize>>,
    out: &mut Vec<Leaf>,
) {
    for (k, v) in doc.iter() {
        let name: &str = k.get_ref();
        let Some(value) = values.get(name) else {
            continue;
        };
        path.push(name.to_string());
        key_spans.push(k.span());
        match (v.get_ref(), value) {
            (DeValue::Table(t), toml::Value::Table(vt)) if !t.is_empty() => {
                walk(t, vt, path, key_spans, out)
            }
            _ => out.push(Leaf {
                path: path.clone(),
                key_spans: key_spans.clone(),
                value_span: Spanned::span(v),
                value: value.clone(),
            }),
        }
        path.pop();
        key_spans.pop();
    }
}

fn nest(path: &[String], value: toml::Value) -> toml::Table {
    let mut t = toml::Table::new();
    insert(&mut t, path, value);
    t
}

fn insert(t: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            t.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let e = t
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = e {
                insert(inner, rest, value);
            }
        }
    }
}

/// The words serde quotes in backticks: the bad name first, then what it expected.
fn backticked(msg: &str) -> Vec<String> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// " (did you mean `x`?)" when a candidate is close, or when the key belongs in another
/// section (`[kernel] upstreams` → `resolve.upstreams`).
fn suggestion(bad: &str, candidates: &[String], section: &[String]) -> String {
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(bad, c), c))
        .filter(|(s, _)| *s >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, c)) = best {
        return format!(" (did you mean `{c}`?)");
    }
    let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(Config::default()) else {
        return String::new();
    };
    let mut elsewhere = Vec::new();
    find_key(&defaults, bad, &mut Vec::new(), &mut elsewhere);
    elsewhere.retain(|p| p[..p.len() - 1] != *section);
    match elsewhere.as_slice() {
        [] => String::new(),
        [p, ..] => format!(
            " (it belongs in [{}]: `{}`)",
            p[..p.len() - 1].join("."),
            p.join(".")
        ),
    }
}

fn find_key(t: &toml::Table, key: &str, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in t {
        path.push(k.clone());
        if k == key {
            out.push(path.clone());
        }
        if let toml::Value::Table(inner) = v {
            find_key(inner, key, path, out);
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mistake_is_reported_with_its_line() {
        let text = "\
[kernal]
mode = \"enforce\"

[kernel]
mode = \"enforcee\"
hold_name_len = 300
upstreams = [\"9.9.9.9\"]

[resolve]
timeout_ms = \"fast\"
upstreams = [\"9.9.9.9\"]
";
        let c = check(text);
        let got: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(
            got[0],
            "line 1, column 2: kernal: unknown key (did you mean `kernel`?)"
        );
        assert!(
            got[1].starts_with(
                "line 5, column 8: kernel.mode = \"enforcee\": unknown variant `enforcee`"
            ),
            "{got:#?}"
        );
        assert!(got[1].ends_with("(did you mean `enforce`?)"), "{got:#?}");
        assert_eq!(
            got[2],
            "line 7, column 1: kernel.upstreams: unknown key (it belongs in [resolve]: `resolve.upstreams`)"
        );
        assert!(
            got[3].starts_with("line 10, column 14: resolve.timeout_ms = \"fast\": invalid type"),
            "{got:#?}"
        );
        // the good keys survive, and the range check on them is placed at their line
        assert!(c.good["kernel"].get("hold_name_len").is_some());
        let p = c.place("kernel.hold_name_len = 300: must be in 1..=255".into());
        assert_eq!(p.at, Some((6, 1)));
    }

    #[test]
    fn syntax_errors_are_placed_too() {
        let c = check("[kernel]\nmode = \"enforce\nhold = 3\n");
        assert!(!c.problems.is_empty());
        assert_eq!(c.problems[0].at.map(|a| a.0), Some(2), "{:?}", c.problems);
    }

    #[test]
    fn a_clean_file_has_no_problems() {
        let c = check(crate::config::EXAMPLE);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let c = check("[kernel]\nmode = \"monitor\"\n[resolve]\nupstreams = [\"9.9.9.9\"]\n");
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.good["kernel"]["mode"].as_str(), Some("monitor"));
    }
}
