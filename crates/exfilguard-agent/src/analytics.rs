//! Behaviour analytics in the agent. The kernel passes plainly benign names on its own, so a
//! leak in short innocent labels never reaches the model; with `[behaviour] enabled` the kernel
//! copies what it passes (and the NXDOMAIN answers XDP lets through) to an observation ring,
//! and every query, held or passed, goes through one `Tracker`. The host is the client (its
//! source address); the alarm's reason names the process and container that sent the query
//! that tipped it. Information-rate and beacon alarms block the registered domain in the
//! kernel for `block_secs` (unless `block = false` or an operator list names it).

use exfilguard_behaviour::{Alarm, AlarmKind, Settings, Tracker};
use exfilguard_dataplane::Event;
use exfilguard_detect::{Class, Source, Verdict};
use exfilguard_dns::DnsName;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The verdict class an alarm convicts with.
pub fn class_of(kind: AlarmKind) -> Class {
    match kind {
        AlarmKind::InfoRate | AlarmKind::Beacon => Class::Tunnel,
        AlarmKind::DgaBot => Class::Dga,
    }
}

/// The verdict an alarm stands for: the pattern, not one name, is the evidence.
pub fn verdict_of(a: &Alarm) -> Verdict {
    Verdict {
        class: class_of(a.kind),
        score: 1.0,
        source: Source::Behaviour,
        reasons: vec![a.reason.clone()],
    }
}

pub struct Analytics {
    tracker: Tracker,
    /// Domains blocked by an alarm and when the block lapses.
    expiries: HashMap<String, Instant>,
    /// `detect.block` entries: never unblocked by an expiry.
    pinned: HashSet<String>,
    last_sweep: Instant,
}

impl Analytics {
    pub fn new(settings: &Settings, pinned_block: &[String]) -> Self {
        Self {
            tracker: Tracker::new(settings.clone()),
            expiries: HashMap::new(),
            pinned: pinned_block
                .iter()
                .map(|d| d.trim_start_matches('=').to_ascii_lowercase())
                .collect(),
            last_sweep: Instant::now(),
        }
    }

    /// New settings: fresh tables (the old state was built with other thresholds); the
    /// behaviour blocks in force keep their expiry.
    pub fn reconfigure(&mut self, settings: &Settings, pinned_block: &[String]) {
        let expiries = std::mem::take(&mut self.expiries);
        *self = Self::new(settings, pinned_block);
        self.expiries = expiries;
    }

    /// Whether queries are analysed (a disabled instance only lifts lapsed blocks).
    pub fn enabled(&self) -> bool {
        self.settings().enabled
    }

    pub fn settings(&self) -> &Settings {
        self.tracker.settings()
    }

    pub fn pairs(&self) -> usize {
        self.tracker.pairs()
    }

    /// A query (held or observed): the sender's address is the client, and so is the
    /// sending process beside it (state per address and per process: a leak split over
    /// processes still sums at the address, one process is told apart from its neighbours).
    /// An alarm the process-level state raises for a domain the address-level one did not is
    /// added.
    pub fn query(&mut self, ev: &Event, name: &DnsName) -> Vec<Alarm> {
        let now = crate::pipeline::now_ms();
        let mut alarms = self.tracker.observe_query(now, ev.src, name);
        if let Some(p) = ev.process.as_ref().filter(|p| p.tgid != 0) {
            for a in self.tracker.observe_query_from(now, ev.src, p.tgid, name) {
                if !alarms
                    .iter()
                    .any(|b| b.kind == a.kind && b.domain == a.domain)
                {
                    alarms.push(a);
                }
            }
        }
        alarms
    }

    /// An NXDOMAIN answer: its destination is the client; `score` is the name's model score.
    pub fn nxdomain(&mut self, ev: &Event, name: &DnsName, score: f32) -> Vec<Alarm> {
        self.tracker
            .observe_response(crate::pipeline::now_ms(), ev.dst, name, ev.rcode, score)
    }

    /// Whether `domain` is blocked by a behaviour alarm (and will lapse).
    pub fn owns(&self, domain: &str) -> bool {
        self.expiries.contains_key(domain)
    }

    /// Remembers (or extends) a behaviour block of `domain`.
    pub fn blocked(&mut self, domain: &str) {
        let until = Instant::now() + Duration::from_secs(self.settings().block_secs.max(1));
        self.expiries.insert(domain.to_string(), until);
    }

    /// A model verdict convicted `domain`: that block is the model's, it does not lapse.
    pub fn convicted(&mut self, domain: &str) {
        self.expiries.remove(domain);
    }

    /// Behaviour blocks whose time is up (checked at most once a second).
    pub fn lapsed(&mut self) -> Vec<String> {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < Duration::from_secs(1) {
            return Vec::new();
        }
        self.last_sweep = now;
        let mut gone: Vec<String> = self
            .expiries
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for d in &gone {
            self.expiries.remove(d);
        }
        gone.retain(|d| !self.pinned.contains(d));
        gone
    }
}
