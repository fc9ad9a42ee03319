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
    /// `outside`: what the query carried after its question (`Outside::carried`).
    pub fn query(&mut self, ev: &Event, name: &DnsName, outside: &[u8]) -> Vec<Alarm> {
        let now = crate::pipeline::now_ms();
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

/// What a held query's frame says of the data after its question, read once per event: why
/// it is not what clients send (only when the kernel flagged it: `odd_message`,
/// `extra_data`; a frame that does not parse is unexplained, a judged record without its
/// frame cannot be explained), and the bytes it carried there (empty for a frameless record:
/// an observation carried nothing the policy let through).
pub(crate) struct Outside<'a> {
    pub why: Option<String>,
    pub carried: &'a [u8],
}

pub(crate) fn outside(ev: &Event) -> Outside<'_> {
    let flagged = ev.outside_question();
    let none = Outside {
        why: None,
        carried: &[],
    };
    if !flagged && (ev.extra_len == 0 || ev.packet.is_empty()) {
        return none;
    }
    let msg = match crate::pipeline::held_message(ev) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Outside {
                why: flagged.then(|| "no DNS message in the held frame".into()),
                ..none
            }
        }
        Err(e) => {
            return Outside {
                why: flagged.then(|| format!("{} bytes the agent cannot read ({e})", ev.extra_len)),
                ..none
            }
        }
    };
    match exfilguard_dns::message::outside_question(msg) {
        Ok(o) => Outside {
            why: o
                .unexplained
                .filter(|_| flagged)
                .map(|w| format!("{w} ({} bytes)", o.bytes)),
            carried: if ev.extra_len == 0 {
                &[]
            } else {
                &msg[msg.len().saturating_sub(o.bytes)..]
            },
        },
        Err(e) => Outside {
            why: flagged.then(|| format!("a message the agent cannot parse ({e})")),
            ..none
        },
    }
}

/// The bytes a held query with a new OPT carrier (`new_carrier`) or other data after its
/// question charges its (client, server) pair: the non-zero bytes it `carried`, or, when the
/// frame is missing (judged without it, reported in monitor mode) or the agent cannot find
/// the message in it (an encapsulation it does not open), all `extra_len` bytes the kernel
/// counted there.
pub(crate) fn carrier_bytes(ev: &Event, carried: &[u8]) -> usize {
    if carried.is_empty() {
        usize::from(ev.extra_len)
    } else {
        carried.iter().filter(|b| **b != 0).count()
    }
}
