//! The decision loop: ring-buffer batch → one model call → kernel maps (release, blocklist,
//! quarantine) → detection records for the sinks. Kernel actions come first; records go to a
//! bounded queue that never blocks the loop.

use crate::analytics::{verdict_of, Analytics};
use crate::metrics::Metrics;
use exfilguard_behaviour::Alarm;
use exfilguard_convict::{AlarmAction, Client, Convictions, Escalation, Evidence, Outcome, Scope};
use exfilguard_dataplane::{Action, Dataplane, Event};
use exfilguard_detect::{Detector, Verdict};
use exfilguard_dns::DnsName;
use exfilguard_events::{Decision, Detection};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use exfilguard_dataplane::monotonic_ns;

/// Event records per second per sender (process, or address), and per (sender, registered
/// domain), in the long run with bursts of ten seconds' worth: every distinct finding gets
/// through, a flood cannot rotate the audit trail away (docs/threat-model.md).
pub const EVENTS_PER_CLIENT: f64 = 50.0;
pub const EVENTS_PER_PAIR: f64 = 1.0;

pub fn now_ms() -> u64 {
    exfilguard_kafka::fleet::now_ms()
}

/// A conviction this host makes, for the fleet blocklist.
#[derive(Clone, Debug)]
pub struct Conviction {
    pub domain: String,
    pub verdict: Verdict,
    pub name: String,
    /// What the block for everyone rests on (exfilguard-convict's evidence line).
    pub evidence: String,
}

/// Hold latencies for the p50/p99 summary: a reservoir sample of bounded size.
pub struct Reservoir {
    samples: Vec<u64>,
    seen: u64,
    rng: u64,
}

impl Reservoir {
    const CAP: usize = 100_000;

    pub fn new() -> Self {
        Self {
            samples: Vec::new(),
            seen: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub fn push(&mut self, v: u64) {
        self.seen += 1;
        if self.samples.len() < Self::CAP {
            self.samples.push(v);
            return;
        }
        // xorshift: cheap, and good enough to pick which sample to replace
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % self.seen;
        if (j as usize) < Self::CAP {
            self.samples[j as usize] = v;
        }
    }

    /// Percentile in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        if s.is_empty() {
            return 0.0;
        }
        s.sort_unstable();
        let i = ((s.len() - 1) as f64 * p).round() as usize;
        s[i] as f64 / 1000.0
    }

    pub fn count(&self) -> u64 {
        self.seen
    }
}

impl Default for Reservoir {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Pipeline {
    pub detector: Detector,
    pub metrics: Metrics,
    pub host: String,
    pub max_hold_ns: u64,
    pub fail_open: bool,
    /// `kernel.mode = "monitor"`: behaviour alarms are reported, never blocked nor published
    /// (the fleet's enforcing agents would act on them).
    pub monitor: bool,
    pub batch_max: usize,
    pub quarantine_after: u32,
    pub emit_released: bool,
    /// Boxed so the bounded channel preallocates pointers, not whole records.
    pub sink: SyncSender<Box<Detection>>,
    pub convictions_tx: Option<SyncSender<Conviction>>,
    pub released: u64,
    pub convicted: u64,
    pub expired: u64,
    pub hold_latency: Reservoir,
    /// Behaviour analytics (`[behaviour] enabled`).
    pub analytics: Option<Analytics>,
    /// Bytes of new OPT carriers per (client, server) address pair (`new_carrier` holds).
    pub carriers: exfilguard_behaviour::carriers::CarrierBudget,
    /// Subordinate uids (`/etc/subuid`): the carrier budgets charge their owner.
    pub subuids: crate::host::SubordinateIds,
    /// The conviction policy's tables, shared with the fleet applier.
    pub convictions: Arc<Mutex<Convictions>>,
    /// How long a model verdict's block for everyone lasts (as long as its fleet entry).
    pub everyone_for: Duration,
    /// How long a behaviour alarm's block for everyone lasts.
    pub alarm_everyone_for: Duration,
    pub behaviour_block: bool,
    /// `detect.allow`: alarms for these zones are not blocked.
    pub allow: exfilguard_detect::NameList,
    /// `detect.block` entries: loaded at start, never lifted by a lapse or an eviction.
    pub pinned: HashSet<String>,
    per_process: HashMap<u32, u32>,
    throttle: exfilguard_events::throttle::Throttle,
    ifnames: HashMap<u32, Option<String>>,
    cgroups: crate::host::CgroupNames,
    floods: crate::floods::Floods,
    last_sweep: Instant,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        detector: Detector,
        metrics: Metrics,
        host: String,
        cfg: &crate::config::Config,
        sink: SyncSender<Box<Detection>>,
        convictions: Option<SyncSender<Conviction>>,
        cgroup_root: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            detector,
            metrics,
            host,
            max_hold_ns: cfg.pipeline.max_hold_ms * 1_000_000,
            fail_open: cfg.kernel.fail_open,
            monitor: cfg.kernel.mode == exfilguard_dataplane::Mode::Monitor,
            batch_max: cfg.pipeline.batch_max,
            quarantine_after: cfg.detect.quarantine_after,
            // report_all means every query: one the kernel held (a new OPT carrier, a long
            // name) and the agent released is one too
            emit_released: cfg.events.released || cfg.kernel.report_all,
            sink,
            convictions_tx: convictions,
            released: 0,
            convicted: 0,
            expired: 0,
            hold_latency: Reservoir::new(),
            analytics: cfg
                .behaviour
                .enabled
                .then(|| Analytics::new(&cfg.behaviour)),
            carriers: exfilguard_behaviour::carriers::CarrierBudget::new(
                cfg.behaviour.info_tau_secs,
                cfg.behaviour.info_alarm_bytes,
                cfg.behaviour.carrier_client_alarm_bytes,
                cfg.behaviour.carrier_users_per_address,
                cfg.behaviour.max_pairs,
            ),
            subuids: crate::host::SubordinateIds::load(&cfg.behaviour.subuid_file),
            convictions: Arc::new(Mutex::new(convictions_for(cfg))),
            everyone_for: ttl(cfg.kafka.conviction_ttl_secs),
            alarm_everyone_for: ttl(cfg.behaviour.block_secs.max(1)),
            behaviour_block: cfg.behaviour.block,
            allow: crate::name_list(&cfg.detect.allow).unwrap_or_default(),
            pinned: pinned(&cfg.detect.block),
            per_process: HashMap::new(),
            throttle: exfilguard_events::throttle::Throttle::new(
                EVENTS_PER_CLIENT,
                EVENTS_PER_PAIR,
            ),
            ifnames: HashMap::new(),
            cgroups: crate::host::CgroupNames::new(cgroup_root),
            floods: Default::default(),
            last_sweep: Instant::now(),
        }
    }

    /// Decides one ring-buffer batch (chunked to `batch_max` names per model call), then feeds
    /// the observation ring's records to the behaviour analytics.
    pub fn handle(&mut self, dp: &mut Dataplane, batch: Vec<Event>, observed: Vec<Event>) {
        // encrypted DNS refused or reported at connect()/sendmsg(): no name for the model
        let (encrypted, mut batch): (Vec<Event>, Vec<Event>) =
            batch.into_iter().partition(Event::encrypted_dns);
        if !encrypted.is_empty() {
            self.encrypted_dns(encrypted);
        }
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.batch_max));
            self.handle_chunk(dp, batch);
            batch = rest;
        }
        self.observe(dp, observed);
        if self.last_sweep.elapsed() >= std::time::Duration::from_millis(500) {
            self.sweep_floods(dp);
            let lapsed = self.convictions.lock().expect("lock").sweep(Instant::now());
            self.lift(dp, &lapsed, "block lapsed");
        }
    }

    /// Encrypted DNS to a resolver that is not sanctioned, refused (enforce) or let through
    /// (monitor) by the kernel at connect()/sendmsg(): a record naming the process and the
    /// destination, and `exfilguard_encrypted_dns_total{decision,reason}`.
    fn encrypted_dns(&mut self, events: Vec<Event>) {
        let mut records = Vec::with_capacity(events.len());
        for ev in events {
            let decision = if ev.action == Action::Block {
                Decision::Blocked
            } else {
                Decision::Reported
            };
            let rule = ev
                .reasons
                .iter()
                .copied()
                .find(|r| matches!(*r, "dot_port" | "doh_endpoint"))
                .unwrap_or("unknown");
            let attempts = ev.attempts();
            self.metrics
                .encrypted_dns
                .get_or_create(&vec![
                    ("decision", decision.as_str().to_string()),
                    ("reason", rule.to_string()),
                ])
                .inc_by(attempts);
            let to = std::net::SocketAddr::new(ev.dst, ev.dport);
            let what = match rule {
                "dot_port" => format!(
                    "encrypted DNS port {} over {} (DNS over {})",
                    ev.dport,
                    ev.transport,
                    if ev.transport == "udp" { "QUIC" } else { "TLS" }
                ),
                _ => format!(
                    "DNS over HTTPS: {} is a known public DoH resolver, port {} over {}",
                    ev.dst, ev.dport, ev.transport
                ),
            };
            let proc_text = ev.process.as_ref().map_or_else(String::new, |p| {
                format!(", pid {} {} (uid {})", p.tgid, p.comm, p.uid)
            });
            let done = if decision == Decision::Blocked {
                "refused (EPERM)"
            } else {
                "reported (monitor mode)"
            };
            let reason = format!(
                "{what}: {to} is not a sanctioned resolver (encrypted_dns.sanctioned); {done}{proc_text}"
            );
            tracing::warn!(%to, rule, attempts, "encrypted DNS {done}{proc_text}");
            let container = ev
                .process
                .as_ref()
                .and_then(|p| self.cgroups.name(p.cgroup_id));
            records.push(Detection {
                event: "encrypted_dns",
                decision,
                name: String::new(),
                registered_domain: None,
                verdict: Some(Verdict::plain(
                    exfilguard_detect::Class::Blocked,
                    1.0,
                    exfilguard_detect::Source::Blocklist,
                    reason,
                )),
                kernel: ev,
                count: (attempts > 1).then_some(attempts),
                hold_us: None,
                time_ms: now_ms(),
                host: self.host.clone(),
                iface: None,
                container,
                uid: uuid::Uuid::now_v7(),
            });
        }
        self.send(records);
    }

    /// Drops of blocked floods after their last kernel record, as summary records.
    fn sweep_floods(&mut self, dp: &Dataplane) {
        let now = Instant::now();
        self.last_sweep = now;
        let summaries = self.floods.sweep(now, |k| dp.quiet_total(k).ok().flatten());
        for d in &summaries {
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("iface", d.iface.clone().unwrap_or_else(|| "unknown".into())),
                    ("decision", d.decision.as_str().to_string()),
                ])
                .inc_by(d.count.unwrap_or(1));
        }
        self.send(summaries);
    }

    /// What the kernel passed on its own: queries and NXDOMAIN answers, through the analytics;
    /// then behaviour blocks whose time is up are lifted.
    fn observe(&mut self, dp: &mut Dataplane, observed: Vec<Event>) {
        let Some(an) = &mut self.analytics else {
            return;
        };
        let mut alarms = Vec::new();
        let mut nx = Vec::new();
        // a disabled instance (after a reload) only lifts the blocks it made
        let on = an.enabled();
        for ev in observed.into_iter().filter(|_| on) {
            let Some(name) = parse(&ev) else { continue };
            if !ev.response {
                alarms.extend(
                    an.query(&ev, &name, &[])
                        .into_iter()
                        .map(|a| (a, ev.clone())),
                );
            } else if ev.rcode == 3 {
                nx.push((ev, name));
            }
        }
        if !nx.is_empty() {
            // the DGA-bot reason reports the names' mean model score
            let names: Vec<DnsName> = nx.iter().map(|(_, n)| n.clone()).collect();
            let scores: Vec<f32> = match self.detector.classify_batch(&names) {
                Ok(v) => v.into_iter().map(|v| v.score).collect(),
                Err(_) => vec![0.0; names.len()],
            };
            for ((ev, name), score) in nx.into_iter().zip(scores) {
                alarms.extend(
                    an.nxdomain(&ev, &name, score)
                        .into_iter()
                        .map(|a| (a, ev.clone())),
                );
            }
        }
        self.metrics.behaviour_pairs.set(an.pairs() as i64);
        for (a, ev) in alarms {
            self.on_alarm(dp, a, ev);
        }
    }

    /// A behaviour alarm: the reason gains the sender; information-rate and beacon alarms block
    /// the registered domain (unless `block = false` or allowlisted); every alarm is a record.
    fn on_alarm(&mut self, dp: &mut Dataplane, mut a: Alarm, ev: Event) {
        self.metrics.behaviour_alarm(a.kind.as_str());
        let container = ev
            .process
            .as_ref()
            .and_then(|p| self.cgroups.name(p.cgroup_id));
        if let Some(p) = &ev.process {
            // observations carry the thread's name; the process's is worth one read here
            let comm = exfilguard_dataplane::event::process_name(p.tgid, &p.comm);
            a.reason.push_str(&format!(", pid {} {comm}", p.tgid));
        }
        if let Some(c) = &container {
            a.reason.push_str(&format!(" in {c}"));
        }
        let mut verdict = verdict_of(&a);
        let name = parse(&ev);
        let block = !self.monitor && self.behaviour_block;
        let mut decision = Decision::Reported;
        let action = self.convictions.lock().expect("lock").alarm(
            Instant::now(),
            &client_of(&ev),
            &a,
            block,
            &self.allow,
            Some(self.alarm_everyone_for),
        );
        match action {
            AlarmAction::Convicted(o) => {
                tracing::warn!(zone = ?o.zone, kind = a.kind.as_str(), scope = o.scope.as_str(), "convicted by behaviour: {} ({})", a.reason, o.evidence);
                verdict.reasons.push(blocks_line(&o));
                if o.scope != Scope::Name {
                    decision = Decision::Blocked;
                }
                self.enforce(dp, &o, &verdict, &ev.name_text());
            }
            AlarmAction::Allowlisted(domain) => {
                tracing::warn!(%domain, "behaviour alarm for an allowlisted domain, not blocking: {}", a.reason);
            }
            AlarmAction::Report => {
                tracing::warn!(client = %a.client, kind = a.kind.as_str(), "behaviour alarm: {}", a.reason)
            }
        }
        let iface = self.iface(ev.ifindex);
        self.send(vec![Detection {
            event: if ev.response { "response" } else { "query" },
            decision,
            name: ev.name_text(),
            registered_domain: a
                .domain
                .clone()
                .or_else(|| name.and_then(|n| n.registered_domain())),
            verdict: Some(verdict),
            kernel: ev,
            count: None,
            hold_us: None,
            time_ms: now_ms(),
            host: self.host.clone(),
            iface,
            container,
            uid: uuid::Uuid::now_v7(),
        }]);
    }

    fn iface(&mut self, ifindex: u32) -> Option<String> {
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| crate::host::ifname(ifindex))
            .clone()
    }

    /// Hands records to the sinks without ever blocking the decision loop. A sender's records
    /// about one zone are rate limited (a flood must not rotate the audit trail away); the
    /// next record of the pair counts those held back. Flood summaries carry their own count.
    fn send(&mut self, records: Vec<Detection>) {
        let now = Instant::now();
        for mut r in records {
            if r.count.is_none() {
                let client = match r.kernel.process.as_ref().filter(|p| p.tgid != 0) {
                    Some(p) => format!("pid {}", p.tgid),
                    None => r.kernel.src.to_string(),
                };
                // encrypted-DNS records have no name: the destination is the pair's other half
                let dest;
                let zone = if r.event == "encrypted_dns" {
                    dest = format!("{}:{}", r.kernel.dst, r.kernel.dport);
                    &dest
                } else {
                    r.registered_domain.as_deref().unwrap_or(&r.name)
                };
                match self.throttle.admit(now, &client, zone) {
                    None => {
                        self.metrics.events_suppressed.inc();
                        continue;
                    }
                    Some(n) => r.count = (n > 1).then_some(n),
                }
            }
            match self.sink.try_send(Box::new(r)) {
                Ok(()) => {
                    self.metrics.sink_queue_depth.inc();
                }
                Err(TrySendError::Full(_)) => {
                    self.metrics.events_dropped.inc();
                }
                Err(TrySendError::Disconnected(_)) => break,
            };
        }
    }

    fn handle_chunk(&mut self, dp: &mut Dataplane, batch: Vec<Event>) {
        let names: Vec<Option<DnsName>> = batch.iter().map(parse).collect();
        let valid: Vec<DnsName> = names.iter().flatten().cloned().collect();
        let t0 = Instant::now();
        let verdicts = match self.detector.classify_batch(&valid) {
            Ok(v) => v,
            Err(e) => {
                // no verdict: held queries get the fail policy below, nothing is lost silently
                tracing::error!("model failed on a batch of {}: {e}", valid.len());
                self.metrics.error("model");
                Vec::new()
            }
        };
        if !valid.is_empty() {
            self.metrics
                .inference_seconds
                .observe(t0.elapsed().as_secs_f64());
        }
        let mut it = verdicts.into_iter();
        let verdicts: Vec<Option<Verdict>> = names
            .iter()
            .map(|n| n.as_ref().and_then(|_| it.next()))
            .collect();

        let now = monotonic_ns();
        let mut records = Vec::with_capacity(batch.len());
        let mut alarms = Vec::new();
        let analyse = self.analytics.as_ref().is_some_and(|a| a.enabled());
        for ((ev, name), mut verdict) in batch.into_iter().zip(&names).zip(verdicts) {
            // a flood's record stands for the drops since the key's last one; none: a sweep
            // already reported them
            let count = match ev.quiet {
                Some((key, drops)) => match self.floods.count(key, drops) {
                    Some(n) => Some(n),
                    None => continue,
                },
                None => None,
            };
            let text = ev.name_text();
            let registered = name.as_ref().and_then(|n| n.registered_domain());
            if let Some(v) = &verdict {
                self.metrics
                    .verdicts
                    .get_or_create(&vec![("class", v.class.as_str().to_string())])
                    .inc();
            }
            let age = now.saturating_sub(ev.ts_ns);
            // a new OPT carrier, or other data after the question, is charged to its
            // (client, server) pair whatever the name, once it goes out; a pair over its
            // budget has its new carriers refused
            // the frame's data after the question, parsed once for the decision, the
            // carrier budget and the analytics
            let out = crate::analytics::outside(&ev);
            let carried = (!ev.response
                && (ev.reasons.contains(&"new_carrier") || ev.outside_question()))
            .then(|| crate::analytics::carrier_bytes(&ev, out.carried));
            // a local sender's budgets are its user's on this host (another user's carriers
            // are not refused for them; a subordinate uid is its owner's), whatever source
            // address its frame names: a raw socket writes any, and each address was a
            // budget of its own; frames without a local socket are keyed by their source
            let uid = ev.process.as_ref().map(|p| self.subuids.owner(p.uid));
            let sender = (if uid.is_some() { THIS_HOST } else { ev.src }, uid);
            // over its budget, a query that would go out goes as its question alone
            let over = carried
                .and_then(|_| self.carriers.over(now_ms(), sender, ev.dst, ev.carrier))
                .map(|o| over_budget(&o, &ev, sender.1));
            let decision = match (ev.response, ev.action) {
                (true, Action::Block) => Decision::Blocked,
                (true, _) => Decision::Reported,
                (false, Action::Hold)
                    if age > self.max_hold_ns || verdict.is_none() && name.is_some() =>
                {
                    // too late to matter, or no model verdict: the fail policy decides
                    self.expired += 1;
                    if self.fail_open {
                        self.release_within(dp, &ev, over.as_deref(), verdict.as_mut(), &text)
                    } else {
                        Decision::Dropped
                    }
                }
                (false, Action::Hold | Action::Judge) => {
                    // the deployed decision beyond the name (shared with the front): a
                    // suspect name may convict its domain, or a marked DGA bot's name
                    let mut domain_convicted = false;
                    let mut name_only = false;
                    if let (Some(v), Some(n)) = (verdict.as_mut(), name.as_ref()) {
                        if !v.class.is_malicious() {
                            let e = self.convictions.lock().expect("lock").escalate(
                                Instant::now(),
                                &client_of(&ev),
                                n,
                                v,
                                &self.detector,
                                Some(self.everyone_for),
                            );
                            match e {
                                Escalation::No => {}
                                Escalation::DgaBot(nv) => {
                                    // this name only: no conviction, no witness
                                    *v = nv;
                                    name_only = v.refuses();
                                }
                                Escalation::Domain(nv, o) => {
                                    *v = nv;
                                    if v.refuses() {
                                        self.convicted += 1;
                                        self.enforce(dp, &o, v, &text);
                                        domain_convicted = true;
                                    }
                                }
                            }
                        }
                    }
                    // a detector whose action is `alert`: answered and reported
                    let alert = verdict
                        .as_ref()
                        .is_some_and(|v| v.class.is_malicious() && !v.refuses());
                    // a name the agent cannot even parse is not released
                    let malicious = verdict.as_ref().is_none_or(|v| v.class.is_malicious());
                    let blocked = name.as_ref().and_then(|n| {
                        self.convictions.lock().expect("lock").blocked(
                            Instant::now(),
                            Some(&client_of(&ev)),
                            n,
                        )
                    });
                    if domain_convicted || name_only {
                        Decision::Blocked
                    } else if alert && out.why.is_none() {
                        let d = if ev.action == Action::Judge {
                            self.allow_within(dp, &ev, over.as_deref(), verdict.as_mut(), &text)
                        } else {
                            self.release_within(dp, &ev, over.as_deref(), verdict.as_mut(), &text)
                        };
                        match d {
                            Decision::Released => Decision::Reported,
                            d => d,
                        }
                    } else if let Some(b) = blocked.filter(|_| !malicious) {
                        // this sender (or everyone) is blocked from the zone already: even a
                        // name the model finds benign stays dropped
                        if let Some(v) = verdict.as_mut() {
                            v.reasons.insert(
                                0,
                                format!(
                                    "convicted domain {} for {}: {}",
                                    b.zone,
                                    b.scope.as_str(),
                                    b.evidence
                                ),
                            );
                        }
                        Decision::Blocked
                    } else if malicious {
                        self.convict(dp, &ev, &text, name.as_ref(), verdict.as_mut());
                        Decision::Blocked
                    } else if let Some(why) = out.why.clone() {
                        // a benign name carrying data elsewhere: this message stays dropped,
                        // the domain is not blocked (the name may well be someone else's)
                        tracing::warn!(name = %text, "query dropped: data outside the question: {why}");
                        if let Some(v) = verdict.as_mut() {
                            v.reasons
                                .insert(0, format!("data outside the question: {why}"));
                        }
                        Decision::Dropped
                    } else if ev.action == Action::Judge {
                        // dropped without its frame: clearing the exact name lets the
                        // sender's retransmission pass
                        self.allow_within(dp, &ev, over.as_deref(), verdict.as_mut(), &text)
                    } else {
                        self.release_within(dp, &ev, over.as_deref(), verdict.as_mut(), &text)
                    }
                }
                (false, Action::Block) => {
                    // the kernel's blocklist dropped it: say on what evidence, whatever the
                    // model thinks of this one name
                    if let Some(v) = verdict.as_mut() {
                        let b = name.as_ref().and_then(|n| {
                            self.convictions
                                .lock()
                                .expect("lock")
                                .blocked(Instant::now(), None, n)
                        });
                        v.reasons.insert(
                            0,
                            b.map_or_else(
                                || "dropped by the kernel blocklist (detect.block or a fleet entry)".to_string(),
                                |b| format!(
                                    "dropped by the kernel blocklist: convicted domain {} for everyone: {}",
                                    b.zone, b.evidence
                                ),
                            ),
                        );
                    }
                    Decision::Blocked
                }
                (false, Action::Quarantine) => Decision::Quarantined,
                (false, Action::FailClosed) => Decision::Dropped,
                (false, _) => Decision::Reported,
            };
            if let Some(bytes) =
                carried.filter(|_| matches!(decision, Decision::Released | Decision::Reported))
            {
                self.carriers
                    .charge(now_ms(), sender, ev.dst, bytes, ev.carrier);
                // charged, so pinned: the pair's repeats of it carry nothing new (a dropped
                // one is never pinned, and its resend is held again)
                if let Err(e) = dp.pin_carrier(&ev) {
                    tracing::warn!("pinning the carrier of {text}: {e}");
                    self.metrics.error("pin_carrier");
                }
            }
            let hold_us = (ev.action == Action::Hold).then(|| {
                let ns = monotonic_ns().saturating_sub(ev.ts_ns);
                self.hold_latency.push(ns);
                self.metrics.hold_release_seconds.observe(ns as f64 / 1e9);
                ns as f64 / 1000.0
            });
            if let (Some(an), Some(n), true) = (&mut self.analytics, name, analyse && !ev.response)
            {
                alarms.extend(
                    an.query(&ev, n, out.carried)
                        .into_iter()
                        .map(|a| (a, ev.clone())),
                );
            }
            let iface = self.iface(ev.ifindex);
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("iface", iface.clone().unwrap_or_else(|| "unknown".into())),
                    ("decision", decision.as_str().to_string()),
                ])
                .inc_by(count.unwrap_or(1));
            if decision == Decision::Released && !self.emit_released {
                continue;
            }
            let container = ev
                .process
                .as_ref()
                .and_then(|p| self.cgroups.name(p.cgroup_id));
            let quiet = ev.quiet.map(|(k, _)| k);
            records.push(Detection {
                event: if ev.response { "response" } else { "query" },
                decision,
                name: text,
                registered_domain: registered,
                verdict,
                kernel: ev,
                count,
                hold_us,
                time_ms: now_ms(),
                host: self.host.clone(),
                iface,
                container,
                uid: uuid::Uuid::now_v7(),
            });
            if let (Some(k), Some(d)) = (quiet, records.last()) {
                self.floods.sent(k, d, Instant::now());
            }
        }
        self.send(records);
        for (a, ev) in alarms {
            self.on_alarm(dp, a, ev);
        }
    }

    /// Releases a held query; one over its carrier budget (`over`: why) goes as its header
    /// and question alone, the data it carried after them dropped, so its sender still gets
    /// an answer (a frame that cannot be cut so, TCP or inside a tunnel, is dropped).
    fn release_within(
        &mut self,
        dp: &mut Dataplane,
        ev: &Event,
        over: Option<&str>,
        verdict: Option<&mut Verdict>,
        text: &str,
    ) -> Decision {
        let Some(why) = over else {
            return self.release(dp, ev);
        };
        let cut = strip(ev).and_then(|(frame, msg)| {
            dp.release_rewritten(ev, &frame, &msg)
                .map_err(|e| e.to_string())
        });
        let (d, why) = match cut {
            Ok(()) => {
                self.released += 1;
                (
                    Decision::Stripped,
                    format!("{why}: released as its question alone"),
                )
            }
            Err(e) => (Decision::Dropped, format!("{why} (not cut: {e})")),
        };
        over_said(d, why, verdict, text)
    }

    /// A judged query held without its frame (a TCP segment): its name is cleared so the
    /// retransmission passes, unless it is over its carrier budget (the retransmission would
    /// carry the same data).
    fn allow_within(
        &mut self,
        dp: &mut Dataplane,
        ev: &Event,
        over: Option<&str>,
        verdict: Option<&mut Verdict>,
        text: &str,
    ) -> Decision {
        if let Some(why) = over {
            return over_said(Decision::Dropped, why.to_string(), verdict, text);
        }
        match dp.allow_name(ev) {
            Ok(()) => Decision::Released,
            Err(e) => {
                tracing::warn!("clearing {text}: {e}");
                Decision::Dropped
            }
        }
    }

    fn release(&mut self, dp: &mut Dataplane, ev: &Event) -> Decision {
        match dp.release(ev) {
            Ok(()) => {
                self.released += 1;
                Decision::Released
            }
            Err(e) => {
                tracing::warn!("releasing {}: {e}", ev.name_text());
                self.metrics.error("release");
                Decision::Dropped
            }
        }
    }

    /// A malicious held query: evidence against its zone from its sender; whom that blocks
    /// is the conviction policy's call. The process is quarantined after `quarantine_after`.
    fn convict(
        &mut self,
        dp: &mut Dataplane,
        ev: &Event,
        text: &str,
        name: Option<&DnsName>,
        verdict: Option<&mut Verdict>,
    ) {
        self.convicted += 1;
        if let (Some(n), Some(v)) = (name, verdict) {
            let o = self.convictions.lock().expect("lock").convict(
                Instant::now(),
                &client_of(ev),
                n,
                Evidence::Verdict(v.class.as_str()),
                Some(self.everyone_for),
            );
            v.reasons.push(blocks_line(&o));
            self.enforce(dp, &o, v, text);
        }
        // a sender known by its socket's uid alone has no process to quarantine
        if let (Some(p), true) = (
            ev.process.as_ref().filter(|p| p.tgid != 0),
            self.quarantine_after > 0,
        ) {
            let n = self.per_process.entry(p.tgid).or_default();
            *n += 1;
            if *n == self.quarantine_after {
                match dp.quarantine(p.tgid) {
                    Ok(()) => {
                        tracing::warn!(pid = p.tgid, comm = %p.comm, "process quarantined: all its DNS is denied")
                    }
                    Err(e) => tracing::warn!("quarantining {}: {e}", p.tgid),
                }
            }
        }
    }

    /// A conviction's effect on this host: a new block for everyone goes into the kernel's
    /// blocklist and onto the fleet topic; evicted ones leave the kernel. A client block
    /// needs nothing in the kernel: the sender's suspicious queries are held and dropped here.
    fn enforce(&mut self, dp: &mut Dataplane, o: &Outcome, verdict: &Verdict, name: &str) {
        self.lift(dp, &o.evicted, "block evicted (convict.max_zones)");
        let (Some(zone), Scope::Everyone) = (&o.zone, o.scope) else {
            return;
        };
        if let Err(e) = dp.block_domain(zone) {
            tracing::warn!("blocking {zone}: {e}");
            self.metrics.error("blocklist");
        }
        if let (true, Some(tx)) = (o.newly_everyone, &self.convictions_tx) {
            let _ = tx.try_send(Conviction {
                domain: zone.clone(),
                verdict: verdict.clone(),
                name: name.to_string(),
                evidence: o.evidence.clone(),
            });
        }
    }

    /// Zones no longer blocked for everyone leave the kernel's blocklist (operator entries stay).
    fn lift(&mut self, dp: &mut Dataplane, zones: &[String], why: &str) {
        for z in zones.iter().filter(|z| !self.pinned.contains(*z)) {
            match dp.unblock_domain(z) {
                Ok(()) => tracing::info!(domain = %z, "{why}"),
                Err(e) => tracing::warn!("unblocking {z}: {e}"),
            }
        }
    }
}

/// The conviction tables for `cfg` (the built-in popularity list if the file cannot be read:
/// validation already named it).
pub fn convictions_for(cfg: &crate::config::Config) -> Convictions {
    Convictions::new(cfg.convict.clone()).unwrap_or_else(|e| {
        tracing::error!("convict.protected_file: {e}; using the built-in list");
        Convictions::new(exfilguard_convict::Settings {
            protected_file: None,
            ..cfg.convict.clone()
        })
        .expect("built-in list")
    })
}

/// `detect.block` as the zones the kernel blocklist holds.
pub fn pinned(block: &[String]) -> HashSet<String> {
    block
        .iter()
        .map(|d| d.trim_start_matches('=').to_ascii_lowercase())
        .collect()
}

fn ttl(secs: u64) -> Duration {
    // 0: no end; ten years stands for that without overflowing an Instant
    Duration::from_secs(if secs == 0 { 10 * 365 * 86_400 } else { secs })
}

/// The sender of a kernel record as the conviction policy sees it: its process when the
/// kernel attributed one, else its source address.
fn client_of(ev: &Event) -> Client {
    match ev.process.as_ref().filter(|p| p.tgid != 0) {
        Some(p) => Client::Process {
            tgid: p.tgid,
            uid: p.uid,
            cgroup: p.cgroup_id,
        },
        None => Client::Addr(ev.src),
    }
}

fn blocks_line(o: &Outcome) -> String {
    format!(
        "blocks {} for {}: {}",
        o.zone.as_deref().unwrap_or("this name"),
        o.scope.as_str(),
        o.evidence
    )
}

/// What became of a query over its carrier budget, and why: logged, and first among the
/// verdict's reasons.
fn over_said(d: Decision, why: String, verdict: Option<&mut Verdict>, text: &str) -> Decision {
    tracing::warn!(name = %text, "query {}: {why}", d.as_str());
    if let Some(v) = verdict {
        v.reasons.insert(0, why);
    }
    d
}

/// The address a local sender's budgets are kept under: all of this host's, one per user.
const THIS_HOST: std::net::IpAddr = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// Why a sender's carriers are refused, naming who and where (its user, or all the address's
/// users; a server, or all of them).
fn over_budget(o: &exfilguard_behaviour::carriers::Over, ev: &Event, uid: Option<u32>) -> String {
    use exfilguard_behaviour::carriers::{server_key, Scope};
    let who = match uid {
        Some(uid) => format!("{} (uid {uid})", ev.src),
        None => ev.src.to_string(),
    };
    let all = match uid {
        Some(_) => format!("this host (all users; {})", ev.src),
        None => format!("{} (all users)", ev.src),
    };
    let server = match ev.dst {
        std::net::IpAddr::V6(_) => format!("{}/64", server_key(ev.dst)),
        v4 => v4.to_string(),
    };
    let (who, to) = match o.scope {
        Scope::Pair => (who, server),
        Scope::Client => (who, "all its servers".to_string()),
        Scope::AddressPair => (all, server),
        Scope::Address => (all, "all its servers".to_string()),
    };
    format!(
        "{:.0} bytes of new OPT carriers (cookie, client subnet) from {who} to {to}: over the information budget ({:.0} bytes)",
        o.total, o.alarm
    )
}

/// A held UDP query cut back to its header and question (`question_only`), in a frame like
/// the held one: (frame, message).
fn strip(ev: &Event) -> Result<(Vec<u8>, Vec<u8>), String> {
    let frame = ev.wire_frame();
    let payloads = payloads_of(ev, &frame)?;
    let p = match payloads.as_slice() {
        [p] if p.transport == exfilguard_dns::Transport::Udp
            && p.encapsulation.iter().all(|e| *e == "vlan") =>
        {
            p
        }
        _ => return Err("not a plain UDP query".into()),
    };
    if !is_kernels(ev, p) {
        return Err(NOT_KERNELS.into());
    }
    let msg = exfilguard_dns::question_only(p.payload).map_err(|e| e.to_string())?;
    let frame = exfilguard_dns::replace_udp_payload(&frame, ev.frame_l3, &msg)
        .map_err(|e| e.to_string())?;
    Ok((frame, msg))
}

/// The DNS message the kernel held in `ev`'s frame: where the kernel named it (a held frame's
/// message hash and length), the payload that is that message, never merely the first the
/// agent's parser finds (the two parsers open different tunnels: a payload the kernel read as
/// a tunnel's may also parse as a query of its own, and judging that one would explain data
/// the kernel flagged in the other).
pub(crate) fn held_message(ev: &Event) -> Result<Option<&[u8]>, String> {
    let payloads = payloads_of(ev, &ev.packet)?;
    if ev.msg_hash == 0 {
        return Ok(payloads.first().map(|p| p.payload));
    }
    payloads
        .iter()
        .find(|p| is_kernels(ev, p))
        .map(|p| Some(p.payload))
        .ok_or_else(|| NOT_KERNELS.into())
}

const NOT_KERNELS: &str = "the frame's DNS message is not the one the kernel held";

/// The DNS payloads of `frame`, `ev`'s frame as held or as the wire carries it.
fn payloads_of<'a>(
    ev: &Event,
    frame: &'a [u8],
) -> Result<Vec<exfilguard_dns::DnsPayload<'a>>, String> {
    use exfilguard_dns::packet::{dns_payloads, LinkType};
    let link = if ev.frame_l3 {
        LinkType::RawIp
    } else {
        LinkType::Ethernet
    };
    dns_payloads(frame, link).map_err(|e| e.to_string())
}

/// Whether `p` is the message the kernel held (its hash and length), not another reading of
/// the frame: a payload the kernel took for a tunnel's may parse as a query of its own here.
fn is_kernels(ev: &Event, p: &exfilguard_dns::DnsPayload) -> bool {
    p.payload.len() == usize::from(ev.msg_len)
        && exfilguard_dataplane::hash::message_hash(p.payload) == ev.msg_hash
}

/// The question name of a kernel record, if it is a well-formed name.
fn parse(ev: &Event) -> Option<DnsName> {
    ev.labels()
        .and_then(|l| DnsName::from_labels(l.iter().copied()).ok())
}

impl Pipeline {}

#[cfg(test)]
mod tests {
    use super::*;
    use exfilguard_dataplane::hash::message_hash;
    use exfilguard_dataplane::Hook;
    use exfilguard_dns::packet::build::udp_frame;

    fn held(packet: Vec<u8>, msg: &[u8]) -> Event {
        Event {
            ts_ns: 0,
            action: Action::Hold,
            hook: Hook::Tc,
            response: false,
            reasons: vec!["odd_message"],
            ifindex: 1,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            dport: 8472,
            transport: "udp",
            encap: "vxlan",
            qtype: 1,
            dns_id: 7,
            rcode: 0,
            ancount: 0,
            name_wire: Vec::new(),
            name_hash: 0,
            socket_cookie: 0,
            process: None,
            wire_len: packet.len() as u32,
            msg_len: msg.len() as u16,
            extra_len: 0,
            msg_hash: message_hash(msg),
            carrier: 0,
            frame_l3: false,
            quiet: None,
            packet,
            csum: None,
        }
    }

    /// The agent judges the message the kernel held, or none: a frame whose payload the
    /// agent reads as one query while the kernel held another inside it (a tunnel port the
    /// kernel opens and the agent's parser does not) is not explained by the outer one.
    #[test]
    fn the_held_message_is_the_kernels_not_the_first_reading() {
        let name = DnsName::parse("www.example.org").unwrap();
        let outer = exfilguard_dns::build_query(&name, 1, 7).unwrap();
        let frame = udp_frame(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            &outer,
        );
        assert_eq!(
            held_message(&held(frame.clone(), &outer)),
            Ok(Some(&outer[..]))
        );
        let mut inner = outer.clone();
        inner.extend_from_slice(&[0xab; 40]);
        let other = held(frame.clone(), &inner);
        assert!(held_message(&other).is_err());
        assert!(strip(&other).is_err(), "nor cut to its question");
        // an observation names no message: the frame's first
        let mut obs = held(frame, &outer);
        obs.msg_hash = 0;
        assert_eq!(held_message(&obs), Ok(Some(&outer[..])));
    }
}
