//! The resolver front's policy: operator lists, convicted domains, the kernel's "plainly
//! benign" prefilter, a per-name verdict cache and the brain — in that order, cheapest first.

use exfilguard_convict::{
    AlarmAction, Client, Convictions, Escalation, Evidence, FleetAction, Outcome,
};
use exfilguard_dataplane::KernelPolicy;
use exfilguard_detect::{Action, Class, Detector, NameList, Source, Verdict};
use exfilguard_dns::DnsName;
use exfilguard_kafka::fleet::FleetUpdate;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// What to do with one query.
#[derive(Debug, Clone)]
pub enum Judgement {
    /// Plainly benign or allowlisted: forward, no event.
    Pass,
    /// Judged by the model (or taken from the cache): forward; `fresh` = the model ran now.
    Benign { verdict: Verdict, fresh: bool },
    /// Malicious, but its detector's action is `alert`: forward and report.
    Alert { verdict: Verdict },
    /// Refuse. `convicted` is set when this query's verdict was evidence against its zone
    /// (whom the conviction blocks, on what evidence).
    Refuse {
        verdict: Verdict,
        convicted: Option<Outcome>,
    },
}

pub struct Judge {
    detector: RwLock<std::sync::Arc<Detector>>,
    policy: KernelPolicy,
    allow: NameList,
    block: NameList,
    /// The shared conviction policy's tables (exfilguard-convict).
    convictions: Mutex<Convictions>,
    cache: Option<Mutex<LruCache<String, (Instant, Verdict)>>>,
    cache_ttl: Duration,
    block_for: Option<Duration>,
    /// The live RPZ mirrors the convictions, so resolvers behind the front refuse them too.
    rpz: Option<std::sync::Arc<exfilguard_rpz::Zone>>,
    /// A remote model runtime asked before the embedded model.
    remote: Option<exfilguard_runtime::Remote>,
}

fn wire(name: &DnsName) -> Vec<u8> {
    exfilguard_dataplane::hash::wire(name.labels())
}

impl Judge {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        detector: Detector,
        policy: KernelPolicy,
        allow: NameList,
        block: NameList,
        cache_entries: usize,
        cache_ttl: Duration,
        block_for: Duration,
        convictions: Convictions,
    ) -> Self {
        Self {
            detector: RwLock::new(std::sync::Arc::new(detector)),
            policy,
            allow,
            block,
            convictions: Mutex::new(convictions),
            cache: NonZeroUsize::new(cache_entries).map(|n| Mutex::new(LruCache::new(n))),
            cache_ttl,
            block_for: (!block_for.is_zero()).then_some(block_for),
            rpz: None,
            remote: None,
        }
    }

    /// Asks `remote` first for every name the model judges.
    pub fn with_remote(mut self, remote: exfilguard_runtime::Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Mirrors every conviction into `zone` from now on.
    pub fn with_rpz(mut self, zone: std::sync::Arc<exfilguard_rpz::Zone>) -> Self {
        self.rpz = Some(zone);
        self
    }

    fn rpz_change(&self, add: &[&str], remove: &[&str]) {
        if let Some(z) = &self.rpz {
            if let Err(e) = z.change(add, remove) {
                tracing::warn!("rpz: {e}");
            }
        }
    }

    /// Swaps the brain (SIGHUP); running queries finish with the old one.
    pub fn set_detector(&self, d: Detector) {
        *self.detector.write().expect("lock") = std::sync::Arc::new(d);
        if let Some(c) = &self.cache {
            c.lock().expect("lock").clear();
        }
    }

    pub fn model_version(&self) -> String {
        self.detector
            .read()
            .expect("lock")
            .model()
            .info()
            .version
            .clone()
    }

    /// The RPZ follows blocks for everyone: added, evicted, lapsed, released. Called under
    /// the tables' lock, so the two never disagree.
    fn mirror(&self, add: Option<&str>, removed: &[String]) {
        let rem: Vec<&str> = removed.iter().map(|d| d.as_str()).collect();
        if add.is_some() || !rem.is_empty() {
            self.rpz_change(add.as_slice(), &rem);
        }
    }

    /// A fleet update (entry, tombstone, expiry) through the conviction policy.
    pub fn fleet(&self, u: FleetUpdate) -> FleetAction {
        let mut c = self.convictions.lock().expect("lock");
        let a = c.fleet(u, &self.allow, exfilguard_kafka::fleet::now_ms());
        match &a {
            FleetAction::Block { zone, evicted, .. } => self.mirror(Some(zone), evicted),
            FleetAction::Unblock { zone, was: true } => {
                self.mirror(None, std::slice::from_ref(zone))
            }
            _ => {}
        }
        a
    }

    /// A behaviour alarm from `client` through the conviction policy; `everyone_for`: how
    /// long a block for everyone lasts.
    pub fn alarm(
        &self,
        client: &Client,
        alarm: &exfilguard_behaviour::Alarm,
        block: bool,
        everyone_for: Duration,
    ) -> AlarmAction {
        let mut c = self.convictions.lock().expect("lock");
        let a = c.alarm(
            Instant::now(),
            client,
            alarm,
            block,
            &self.allow,
            Some(everyone_for),
        );
        if let AlarmAction::Convicted(o) = &a {
            self.mirror(o.zone.as_deref().filter(|_| o.newly_everyone), &o.evicted);
        }
        a
    }

    /// Lifts a block for everyone; true if there was one.
    pub fn acquit(&self, domain: &str) -> bool {
        let mut c = self.convictions.lock().expect("lock");
        let was = c.acquit(domain);
        if was {
            self.mirror(None, &[domain.to_string()]);
        }
        was
    }

    /// Entries evicted from the full conviction tables since start.
    pub fn evictions(&self) -> u64 {
        self.convictions.lock().expect("lock").evictions()
    }

    pub fn is_allowed(&self, name: &DnsName) -> bool {
        self.allow.lookup(name).is_some()
    }

    /// The cached verdict's score for `name`, if the model judged it lately.
    pub fn cached_score(&self, name: &DnsName) -> Option<f32> {
        let c = self.cache.as_ref()?;
        c.lock()
            .expect("lock")
            .peek(&name.normalized())
            .map(|(_, v)| v.score)
    }

    /// Zones blocked for everyone.
    pub fn convicted_domains(&self) -> usize {
        self.convictions.lock().expect("lock").zones()
    }

    /// Drops lapsed blocks; returns the zones no longer blocked for everyone.
    pub fn sweep(&self) -> Vec<String> {
        let mut c = self.convictions.lock().expect("lock");
        let due = c.sweep(Instant::now());
        self.mirror(None, &due);
        due
    }

    /// Decides one query. `Err` only when the model itself fails (the caller applies its
    /// fail policy).
    pub fn judge(
        &self,
        name: &DnsName,
        qtype: u16,
        client: &Client,
    ) -> Result<Judgement, exfilguard_detect::ModelError> {
        if let Some(m) = self.block.lookup(name) {
            return Ok(Judgement::Refuse {
                verdict: list_verdict(
                    Class::Blocked,
                    Source::Blocklist,
                    format!("blocklisted {m}"),
                ),
                convicted: None,
            });
        }
        if self.allow.lookup(name).is_some() {
            return Ok(Judgement::Pass);
        }
        let blocked =
            self.convictions
                .lock()
                .expect("lock")
                .blocked(Instant::now(), Some(client), name);
        if let Some(b) = blocked {
            let whom = match b.scope {
                exfilguard_convict::Scope::Everyone => "for everyone".to_string(),
                _ => format!("for {client}"),
            };
            return Ok(Judgement::Refuse {
                verdict: list_verdict(
                    Class::Blocked,
                    Source::Blocklist,
                    format!("convicted domain {} {whom}: {}", b.zone, b.evidence),
                ),
                convicted: None,
            });
        }
        if self.policy.suspicion(&wire(name), qtype).is_empty()
            && !self
                .convictions
                .lock()
                .expect("lock")
                .is_dga_bot(Instant::now(), client)
        {
            // plainly benign, unless a DGA-bot alarm marked the client: then every name of
            // it goes to the model (DGA names are often short)
            return Ok(Judgement::Pass);
        }
        let key = name.normalized();
        let cached = self.cache.as_ref().and_then(|c| {
            let mut c = c.lock().expect("lock");
            match c.get(&key) {
                Some((t, v)) if t.elapsed() < self.cache_ttl => Some(v.clone()),
                Some(_) => {
                    c.pop(&key);
                    None
                }
                None => None,
            }
        });
        let (verdict, fresh) = match cached {
            Some(v) => (v, false),
            None => {
                // cloned out: a remote call must not hold the lock a reload waits for
                let det = self.detector.read().expect("lock").clone();
                let v = match &self.remote {
                    Some(r) => r.classify(&det, name)?,
                    None => det.classify(name)?,
                };
                drop(det);
                if let Some(c) = &self.cache {
                    c.lock()
                        .expect("lock")
                        .put(key.clone(), (Instant::now(), v.clone()));
                }
                (v, true)
            }
        };
        let now = Instant::now();
        let mut verdict = verdict;
        if !verdict.class.is_malicious() {
            let det = self.detector.read().expect("lock").clone();
            // resolve.block_secs = 0 means "the name only": no domain-level blocks either
            let e = self.convictions.lock().expect("lock").escalate(
                now,
                client,
                name,
                &verdict,
                &det,
                self.block_for,
            );
            match e {
                Escalation::No => return Ok(Judgement::Benign { verdict, fresh }),
                Escalation::DgaBot(v) => verdict = v,
                Escalation::Domain(v, outcome) => {
                    return Ok(if v.refuses() {
                        self.mirror(
                            outcome.zone.as_deref().filter(|_| outcome.newly_everyone),
                            &outcome.evicted,
                        );
                        Judgement::Refuse {
                            verdict: v,
                            convicted: Some(outcome),
                        }
                    } else {
                        Judgement::Alert { verdict: v }
                    });
                }
            }
        }
        if verdict.action == Action::Alert {
            return Ok(Judgement::Alert { verdict });
        }
        if self.block_for.is_none() {
            // resolve.block_secs = 0: the verdict refuses this name only
            return Ok(Judgement::Refuse {
                verdict,
                convicted: None,
            });
        }
        let outcome = {
            let mut c = self.convictions.lock().expect("lock");
            let o = c.convict(
                now,
                client,
                name,
                Evidence::Verdict(verdict.class.as_str()),
                self.block_for,
            );
            self.mirror(o.zone.as_deref().filter(|_| o.newly_everyone), &o.evicted);
            o
        };
        verdict.reasons.push(format!(
            "blocks {} for {}: {}",
            outcome.zone.as_deref().unwrap_or("this name"),
            outcome.scope.as_str(),
            outcome.evidence
        ));
        let convicted = Some(outcome);
        Ok(Judgement::Refuse { verdict, convicted })
    }
}

fn list_verdict(class: Class, source: Source, reason: String) -> Verdict {
    Verdict::plain(class, 1.0, source, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge() -> Judge {
        Judge::new(
            Detector::embedded().unwrap(),
            KernelPolicy::default(),
            NameList::parse("corp.example\n").unwrap(),
            NameList::parse("evil.example\n").unwrap(),
            1000,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Convictions::new(Default::default()).unwrap(),
        )
    }

    const A: &str = "10.0.0.1";

    fn j(judge: &Judge, n: &str, t: u16) -> Judgement {
        jc(judge, n, t, A)
    }

    fn jc(judge: &Judge, n: &str, t: u16, client: &str) -> Judgement {
        let c = Client::Addr(client.parse().unwrap());
        judge.judge(&DnsName::parse(n).unwrap(), t, &c).unwrap()
    }

    #[test]
    fn order_lists_prefilter_model_conviction() {
        let g = judge();
        assert!(matches!(j(&g, "www.google.com", 1), Judgement::Pass));
        assert!(matches!(
            j(&g, "a.b.evil.example", 1),
            Judgement::Refuse { .. }
        ));
        let t = "mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojqgezdgnbv.nbswy3dpeb3w64tmmq.tun.test.com";
        assert!(matches!(j(&g, t, 16), Judgement::Refuse { .. }));
        // one client's evidence blocks that client from the whole zone, even plainly benign
        // names, and nobody else
        match j(&g, "www.test.com", 1) {
            Judgement::Refuse { verdict, .. } => assert!(
                verdict.reasons[0].contains("convicted domain test.com for client 10.0.0.1"),
                "{:?}",
                verdict.reasons
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            jc(&g, "www.test.com", 1, "10.0.0.2"),
            Judgement::Pass
        ));
        assert_eq!(g.convicted_domains(), 0);
        // a second client's evidence blocks it for everyone
        match jc(&g, &format!("x{t}"), 16, "10.0.0.2") {
            Judgement::Refuse {
                convicted: Some(o), ..
            } => assert!(o.newly_everyone, "{o:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            jc(&g, "www.test.com", 1, "10.0.0.3"),
            Judgement::Refuse { .. }
        ));
        assert!(g.acquit("test.com"));
        assert!(matches!(
            jc(&g, "www.test.com", 1, "10.0.0.3"),
            Judgement::Pass
        ));
        // allowlist beats the model
        assert!(matches!(
            j(&g, &format!("{t}.corp.example"), 16),
            Judgement::Pass
        ));
        // a suspicious-looking but benign name goes to the model once, then the cache
        let n = "e8840.dscb.akamaiedge.net";
        match (j(&g, n, 1), j(&g, n, 1)) {
            (Judgement::Benign { fresh: true, .. }, Judgement::Benign { fresh: false, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefilter_matches_kernel_thresholds() {
        let p = KernelPolicy::default();
        let w = |n: &str| wire(&DnsName::parse(n).unwrap());
        assert!(p.suspicion(&w("www.google.com"), 1).is_empty());
        assert_eq!(p.suspicion(&w("www.google.com"), 16), vec!["rare_qtype"]);
        assert!(p.suspicion(&w("abcdefghij.com"), 1).contains(&"long_label"));
        assert!(p.suspicion(&w("a.b.c.d.com"), 1).contains(&"many_labels"));
        assert!(p.suspicion(&w("a1b2c3d4.com"), 1).contains(&"digits"));
        // 31 dotted characters pass, 32 are held (the kernel's >=)
        assert!(p
            .suspicion(&w("abcdefghi.abcdefghi.abcdefg.com"), 1)
            .is_empty());
        assert!(p
            .suspicion(&w("abcdefghi.abcdefghi.abcdefgh.com"), 1)
            .contains(&"long_name"));
    }
}
