//! The resolver front's policy: operator lists, convicted domains, the kernel's "plainly
//! benign" prefilter, a per-name verdict cache and the brain — in that order, cheapest first.

use exfilguard_dataplane::KernelPolicy;
use exfilguard_detect::{Class, Detector, NameList, Source, Verdict};
use exfilguard_dns::DnsName;
use lru::LruCache;
use std::collections::HashMap;
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
    /// Refuse. `convicted` is set when this query's verdict convicted its registered domain.
    Refuse {
        verdict: Verdict,
        convicted: Option<String>,
    },
}

/// A convicted registered domain: refused until `until` (None: until unblocked).
#[derive(Debug, Clone)]
struct Conviction {
    until: Option<Instant>,
    reason: String,
}

pub struct Judge {
    detector: RwLock<std::sync::Arc<Detector>>,
    policy: KernelPolicy,
    allow: NameList,
    block: NameList,
    convicted: RwLock<HashMap<String, Conviction>>,
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
    pub fn new(
        detector: Detector,
        policy: KernelPolicy,
        allow: NameList,
        block: NameList,
        cache_entries: usize,
        cache_ttl: Duration,
        block_for: Duration,
    ) -> Self {
        Self {
            detector: RwLock::new(std::sync::Arc::new(detector)),
            policy,
            allow,
            block,
            convicted: RwLock::new(HashMap::new()),
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

    /// Refuses `domain` and every name below it (fleet entries, operator blocks).
    /// Refuses `domain` and every name below it until `until` (None: until unblocked). An
    /// existing conviction keeps the later expiry: a fleet or operator block without one is
    /// not shortened by a timed conviction. The RPZ changes under the same lock as the map,
    /// so the two never disagree.
    pub fn convict(&self, domain: &str, until: Option<Instant>, reason: String) {
        let mut map = self.convicted.write().expect("lock");
        let until = match map.get(domain) {
            Some(old) if old.until.is_none() || until.is_none() => None,
            Some(old) => until.max(old.until),
            None => until,
        };
        map.insert(domain.to_string(), Conviction { until, reason });
        self.rpz_change(&[domain], &[]);
    }

    pub fn acquit(&self, domain: &str) -> bool {
        let mut map = self.convicted.write().expect("lock");
        let was = map.remove(domain).is_some();
        self.rpz_change(&[], &[domain]);
        was
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

    pub fn convicted_domains(&self) -> usize {
        self.convicted.read().expect("lock").len()
    }

    /// The convicted domain `name` falls under, walking from the full name up.
    fn convicted_match(&self, name: &DnsName) -> Option<(String, String)> {
        let map = self.convicted.read().expect("lock");
        if map.is_empty() {
            return None;
        }
        let now = Instant::now();
        for first in 0..name.label_count() {
            let suffix = name.normalized_from(first);
            if let Some(c) = map.get(&suffix) {
                if c.until.is_none_or(|t| t > now) {
                    return Some((suffix, c.reason.clone()));
                }
            }
        }
        None
    }

    /// Drops expired convictions; returns the domains released.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.convicted.write().expect("lock");
        let due: Vec<String> = map
            .iter()
            .filter(|(_, c)| c.until.is_some_and(|t| t <= now))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &due {
            map.remove(d);
        }
        if !due.is_empty() {
            let refs: Vec<&str> = due.iter().map(|d| d.as_str()).collect();
            self.rpz_change(&[], &refs);
        }
        due
    }

    /// Decides one query. `Err` only when the model itself fails (the caller applies its
    /// fail policy).
    pub fn judge(
        &self,
        name: &DnsName,
        qtype: u16,
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
        if let Some((domain, reason)) = self.convicted_match(name) {
            return Ok(Judgement::Refuse {
                verdict: list_verdict(
                    Class::Blocked,
                    Source::Blocklist,
                    format!("convicted domain {domain}: {reason}"),
                ),
                convicted: None,
            });
        }
        if self.policy.suspicion(&wire(name), qtype).is_empty() {
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
        if !verdict.class.is_malicious() {
            return Ok(Judgement::Benign { verdict, fresh });
        }
        let convicted = match (self.block_for, name.registered_domain()) {
            (Some(d), Some(rd)) => {
                self.convict(
                    &rd,
                    Some(Instant::now() + d),
                    format!("{} ({})", verdict.class.as_str(), key),
                );
                Some(rd)
            }
            _ => None,
        };
        Ok(Judgement::Refuse { verdict, convicted })
    }
}

fn list_verdict(class: Class, source: Source, reason: String) -> Verdict {
    Verdict {
        class,
        score: 1.0,
        source,
        reasons: vec![reason],
    }
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
        )
    }

    fn j(judge: &Judge, n: &str, t: u16) -> Judgement {
        judge.judge(&DnsName::parse(n).unwrap(), t).unwrap()
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
        // the conviction covers the whole registered domain, even plainly benign names
        match j(&g, "www.test.com", 1) {
            Judgement::Refuse { verdict, .. } => {
                assert!(verdict.reasons[0].contains("convicted domain test.com"))
            }
            other => panic!("{other:?}"),
        }
        assert!(g.acquit("test.com"));
        assert!(matches!(j(&g, "www.test.com", 1), Judgement::Pass));
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
