//! Operator allow- and blocklists: exact names and domain suffixes, matched on the normalised
//! (lower-case, IDNA) form. Shared by the CLI, the agent and the resolver front.
//!
//! File format, one entry per line, `#` starts a comment:
//! * `example.com`  — the domain and every name below it;
//! * `=www.example.com` — that exact name only.

use exfilguard_dns::DnsName;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {entry:?}: {reason}")]
pub struct ListError {
    pub line: usize,
    pub entry: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct NameList {
    exact: HashSet<String>,
    suffixes: HashSet<String>,
}

/// Which entry matched, for verdict reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListMatch {
    Exact(String),
    Suffix(String),
}

impl std::fmt::Display for ListMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListMatch::Exact(n) => write!(f, "name {n}"),
            ListMatch::Suffix(n) => write!(f, "domain {n}"),
        }
    }
}

impl NameList {
    pub fn parse(text: &str) -> Result<Self, ListError> {
        let mut list = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let (exact, body) = match entry.strip_prefix('=') {
                Some(rest) => (true, rest),
                None => (false, entry),
            };
            let name = DnsName::parse(body).map_err(|e| ListError {
                line: i + 1,
                entry: entry.to_owned(),
                reason: e.to_string(),
            })?;
            list.insert(&name, exact);
        }
        Ok(list)
    }

    pub fn insert(&mut self, name: &DnsName, exact: bool) {
        let n = name.normalized();
        if exact {
            self.exact.insert(n);
        } else {
            self.suffixes.insert(n);
        }
    }

    pub fn remove(&mut self, name: &DnsName) -> bool {
        let n = name.normalized();
        self.exact.remove(&n) | self.suffixes.remove(&n)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry that covers `name`, if any: the exact name first, then the longest suffix.
    pub fn lookup(&self, name: &DnsName) -> Option<ListMatch> {
        if self.is_empty() {
            return None;
        }
        let n = name.normalized();
        if self.exact.contains(&n) {
            return Some(ListMatch::Exact(n));
        }
        for i in 0..name.label_count() {
            let suffix = if i == 0 {
                n.clone()
            } else {
                name.normalized_from(i)
            };
            if self.suffixes.contains(&suffix) {
                return Some(ListMatch::Suffix(suffix));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DnsName {
        DnsName::parse(s).unwrap()
    }

    #[test]
    fn exact_and_suffix() {
        let l = NameList::parse("# comment\nExample.COM\n=www.other.org # only this\n\n").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.lookup(&n("a.b.example.com")),
            Some(ListMatch::Suffix("example.com".into()))
        );
        assert_eq!(
            l.lookup(&n("example.com.")),
            Some(ListMatch::Suffix("example.com".into()))
        );
        assert_eq!(l.lookup(&n("notexample.com")), None);
        assert_eq!(
            l.lookup(&n("WWW.other.org")),
            Some(ListMatch::Exact("www.other.org".into()))
        );
        assert_eq!(l.lookup(&n("a.www.other.org")), None);
    }

    #[test]
    fn bad_entry_names_the_line() {
        let e = NameList::parse("ok.com\nbad..com\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("bad..com"));
    }
}
