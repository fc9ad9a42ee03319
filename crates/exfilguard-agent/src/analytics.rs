//! Behaviour analytics in the agent. The kernel passes plainly benign names on its own, so a
//! leak in short innocent labels never reaches the model; with `[behaviour] enabled` the kernel
//! copies what it passes (and the NXDOMAIN answers XDP lets through) to an observation ring,
//! and every query, held or passed, goes through one `Tracker`. The host is the client (its
//! source address); the alarm's reason names the process and container that sent the query
//! that tipped it. What an alarm blocks (the zone for everyone, or the process) and for how
//! long is the conviction policy's call (exfilguard-convict), shared with the front.

use exfilguard_behaviour::{Alarm, AlarmKind, Settings, Tracker};
use exfilguard_dataplane::Event;
use exfilguard_detect::{Class, Source, Verdict};
use exfilguard_dns::DnsName;

/// The verdict class an alarm convicts with.
pub fn class_of(kind: AlarmKind) -> Class {
    match kind {
        AlarmKind::InfoRate | AlarmKind::Beacon => Class::Tunnel,
        AlarmKind::DgaBot => Class::Dga,
    }
}

/// The verdict an alarm stands for: the pattern, not one name, is the evidence.
pub fn verdict_of(a: &Alarm) -> Verdict {
    Verdict::plain(class_of(a.kind), 1.0, Source::Behaviour, a.reason.clone())
}

pub struct Analytics {
    tracker: Tracker,
}

impl Analytics {
    pub fn new(settings: &Settings) -> Self {
        Self {
            tracker: Tracker::new(settings.clone()),
        }
    }

    /// New settings: fresh tables (the old state was built with other thresholds); the
    /// blocks in force live in the conviction tables and keep their expiry.
    pub fn reconfigure(&mut self, settings: &Settings) {
        *self = Self::new(settings);
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
        let outside = carried(ev);
        let mut alarms = self
            .tracker
            .observe_query_carrying(now, ev.src, 0, name, outside);
        if let Some(p) = ev.process.as_ref().filter(|p| p.tgid != 0) {
            for a in self
                .tracker
                .observe_query_carrying(now, ev.src, p.tgid, name, outside)
            {
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
}

/// The bytes a held query with a new OPT carrier (`new_carrier`) or other data after its
/// question charges its (client, server) pair: the non-zero bytes
/// after its question, or, when the frame is missing (judged without it, reported in monitor
/// mode) or the agent cannot find the message in it (an encapsulation it does not open), all
/// `extra_len` bytes the kernel counted there.
pub(crate) fn carrier_bytes(ev: &Event) -> usize {
    let c = carried(ev);
    if c.is_empty() {
        usize::from(ev.extra_len)
    } else {
        c.iter().filter(|b| **b != 0).count()
    }
}

/// What a held query carried after its question (its frame says; a frameless observation
/// carried nothing the policy let through): counted as information by the analytics.
fn carried(ev: &Event) -> &[u8] {
    if ev.extra_len == 0 || ev.packet.is_empty() {
        return &[];
    }
    match crate::pipeline::held_message(ev) {
        Ok(Some(m)) => match exfilguard_dns::message::outside_question(m) {
            Ok(o) => &m[m.len().saturating_sub(o.bytes)..],
            Err(_) => &[],
        },
        _ => &[],
    }
}
