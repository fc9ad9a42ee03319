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
        // one lock for both questions: the convictions table is shared by every front worker
        let (blocked, dga_bot) = {
            let mut c = self.convictions.lock().expect("lock");
            let now = Instant::now();
            (
                c.blocked(now, Some(client), name),
                c.is_dga_bot(now, client),
            )
        };
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
        if !dga_bot && self.policy.suspicion(&wire(name), qtype).is_empty() {
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
                // that name only: never a witness nor a zone block (Escalation::DgaBot)
                Escalation::DgaBot(v) => {
                    return Ok(if v.refuses() {
                        Judgement::Refuse {
                            verdict: v,
                            convicted: None,
                        }
                    } else {
                        Judgement::Alert { verdict: v }
                    });
                }
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

    /// `n` names under `zone` that the shipped model rates MEDIUM for tunnel (benign per
    /// name, P(tunnel) ≥ suspect): hex labels, generated deterministically. Panics, rather
    /// than passing vacuously, when the model no longer rates any such names MEDIUM.
    fn medium_names(g: &Judge, zone: &str, n: usize) -> Vec<String> {
        let det = g.detector.read().unwrap().clone();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let mut out = Vec::new();
        for _ in 0..4000 {
            let len = 24 + (next() % 9) as usize;
            let label: String = (0..len)
                .map(|_| b"0123456789abcdef"[(next() % 16) as usize] as char)
                .collect();
            let name = format!("{label}.{zone}");
            let v = det.classify(&DnsName::parse(&name).unwrap()).unwrap();
            if !v.class.is_malicious()
                && v.detector(Class::Tunnel)
                    .is_some_and(|d| d.level == exfilguard_detect::Level::Medium)
            {
                out.push(name);
                if out.len() == n {
                    return out;
                }
            }
        }
        panic!("the model rates fewer than {n} of 4000 hex names MEDIUM: pick new candidates");
    }

    fn is_refused(j: &Judgement) -> bool {
        matches!(j, Judgement::Refuse { .. })
    }

    #[test]
    fn four_medium_names_under_one_zone_convict_it_for_that_client() {
        let g = judge();
        let names = medium_names(&g, "sync-cdn.net", 8);
        // controls first: the same MEDIUM names spread over four zones, one name repeated,
        // or one name each from four clients — none of these is a domain-level decision
        for (k, n) in names[..4].iter().enumerate() {
            let label = n.split('.').next().unwrap();
            assert!(!is_refused(&jc(
                &g,
                &format!("{label}.zone{k}.net"),
                1,
                "10.0.1.1"
            )));
            assert!(!is_refused(&jc(&g, n, 1, &format!("10.0.2.{k}"))));
        }
        for _ in 0..10 {
            assert!(!is_refused(&jc(&g, &names[0], 1, "10.0.3.1")));
        }
        // the attack: four distinct ones from one client
        for n in &names[..3] {
            assert!(!is_refused(&j(&g, n, 1)), "{n}");
        }
        match j(&g, &names[3], 1) {
            Judgement::Refuse {
                verdict,
                convicted: Some(o),
            } => {
                assert_eq!(verdict.source, Source::Domain, "{verdict:?}");
                assert_eq!(verdict.class, Class::Tunnel);
                assert_eq!(o.zone.as_deref(), Some("sync-cdn.net"));
                assert!(!o.newly_everyone);
                assert!(
                    verdict.reasons.iter().any(|r| r.contains("(MEDIUM)")),
                    "{:?}",
                    verdict.reasons
                );
            }
            other => panic!("the 4th MEDIUM name was not a domain verdict: {other:?}"),
        }
        // the zone is now closed to that client, even for plainly benign names …
        assert!(is_refused(&j(&g, "www.sync-cdn.net", 1)));
        assert!(is_refused(&j(&g, &names[4], 1)));
        // … and to nobody else
        assert!(matches!(
            jc(&g, "www.sync-cdn.net", 1, "10.0.0.9"),
            Judgement::Pass
        ));
        assert_eq!(g.convicted_domains(), 0);
        // a second client doing the same blocks it for everyone
        let mut last = None;
        for n in &names[4..8] {
            last = Some(jc(&g, n, 1, "10.0.0.2"));
        }
        match last.unwrap() {
            Judgement::Refuse {
                convicted: Some(o), ..
            } => assert!(o.newly_everyone, "{o:?}"),
            other => panic!("{other:?}"),
        }
        assert!(is_refused(&jc(&g, "www.sync-cdn.net", 1, "10.0.0.9")));
    }

    #[test]
    fn with_blocks_off_a_domain_verdict_still_refuses_the_name() {
        // resolve.block_secs = 0 ("the name only") must not switch the domain-level rule off
        let g = Judge::new(
            Detector::embedded().unwrap(),
            KernelPolicy::default(),
            NameList::parse("").unwrap(),
            NameList::parse("").unwrap(),
            1000,
            Duration::from_secs(60),
            Duration::ZERO,
            Convictions::new(Default::default()).unwrap(),
        );
        let names = medium_names(&g, "sync-cdn.net", 6);
        for n in &names[..3] {
            assert!(!is_refused(&j(&g, n, 1)), "{n}");
        }
        for n in &names[3..] {
            match j(&g, n, 1) {
                Judgement::Refuse { verdict, .. } => assert_eq!(verdict.source, Source::Domain),
                other => panic!("{n}: {other:?}"),
            }
        }
        // the name only: nobody is blocked from the zone
        assert!(matches!(j(&g, "www.sync-cdn.net", 1), Judgement::Pass));
    }

    #[test]
    fn short_medium_names_never_count_toward_a_domain_verdict() {
        // ad-slot and shard ids look random to the model but carry a few bits each: the
        // 16-byte floor keeps them out of the domain-level count
        let g = judge();
        let det = g.detector.read().unwrap().clone();
        let mut short = Vec::new();
        for i in 0..4000u32 {
            let name = format!(
                "a{:x}q{}.adslot-example.com",
                i.wrapping_mul(2_654_435_761),
                i % 97
            );
            let p = DnsName::parse(&name).unwrap();
            let v = det.classify(&p).unwrap();
            if p.split().subdomain_labels() == 1
                && name.split('.').next().unwrap().len() < 16
                && !v.class.is_malicious()
                && v.detector(Class::Tunnel)
                    .is_some_and(|d| d.level == exfilguard_detect::Level::Medium)
            {
                short.push(name);
            }
        }
        drop(det);
        assert!(
            short.len() >= 4,
            "only {} short MEDIUM names: pick new candidates",
            short.len()
        );
        for n in &short {
            assert!(!is_refused(&j(&g, n, 1)), "{n}");
        }
        assert!(!is_refused(&j(&g, "www.adslot-example.com", 1)));
        eprintln!("{} short MEDIUM names sent, none refused", short.len());
    }

    #[test]
    fn a_dga_bot_alarm_refuses_that_clients_unpopular_names_only() {
        let g = judge();
        let dga = ["qwzxkjhfgtrp.com", "xkqvbnrtzplw.net", "mvbdkqzrtyxw.org"];
        // before the alarm, short DGA-like names pass the prefilter or the model
        for n in dga {
            assert!(!is_refused(&j(&g, n, 1)), "{n}");
        }
        let alarm = exfilguard_behaviour::Alarm {
            kind: exfilguard_behaviour::AlarmKind::DgaBot,
            at_ms: 0,
            client: A.parse().unwrap(),
            domain: None,
            novel_bytes: 0.0,
            after_secs: 60.0,
            reason: "25 distinct NXDOMAIN registered domains in 600 s".into(),
        };
        let c = Client::Addr(A.parse().unwrap());
        g.alarm(&c, &alarm, true, Duration::from_secs(60));
        for n in dga {
            match j(&g, n, 1) {
                Judgement::Refuse { verdict, .. } => {
                    assert_eq!(verdict.class, Class::Dga);
                    assert_eq!(verdict.source, Source::Behaviour);
                    assert!(
                        verdict.reasons.iter().any(|r| r.contains("DGA-bot alarm")),
                        "{:?}",
                        verdict.reasons
                    );
                }
                other => panic!("{n} from a marked DGA bot: {other:?}"),
            }
            // other clients are not affected
            assert!(!is_refused(&jc(&g, n, 1, "10.0.0.7")), "{n}");
        }
        // a marked bot still resolves popular domains and lookup names
        for n in [
            "www.google.com",
            "4.4.8.8.in-addr.arpa",
            "_ldap._tcp.google.com",
            "2.0.0.127.zen.spamhaus.org",
            "_ldap._tcp.dc._msdcs.corp-example.com",
        ] {
            assert!(!is_refused(&j(&g, n, 12)), "{n}");
        }
        // a mark refuses names, never zones: two marked clients asking an unpopular domain
        // (victims of a page full of dns-prefetch links) get nobody else blocked from it
        let b = Client::Addr("10.0.0.9".parse().unwrap());
        g.alarm(&b, &alarm, true, Duration::from_secs(60));
        for c in [A, "10.0.0.9"] {
            assert!(is_refused(&jc(&g, "www.rival-shop-example.de", 1, c)));
        }
        assert!(!is_refused(&jc(
            &g,
            "www.rival-shop-example.de",
            1,
            "10.0.0.10"
        )));
        assert_eq!(g.convicted_domains(), 0);
        // an alarm in monitor mode (block = false) marks nobody
        let c2 = Client::Addr("10.0.0.8".parse().unwrap());
        g.alarm(&c2, &alarm, false, Duration::from_secs(60));
        assert!(!is_refused(&jc(&g, dga[0], 1, "10.0.0.8")));
    }

    #[test]
    fn lookup_names_are_never_refused_nor_convict_their_zone() {
        let g = judge();
        let v6 = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa";
        let lookups = [
            ("4.4.8.8.in-addr.arpa", 12),
            ("130.0/25.2.0.192.in-addr.arpa", 12),
            (v6, 12),
            ("_ldap._tcp.dc._msdcs.corp-example.com", 33),
            ("_sip._udp.example.com", 33),
            ("selector1._domainkey.example.com", 16),
            ("_dmarc.example.com", 16),
            ("2.0.0.127.zen.spamhaus.org", 1),
            ("4.3.2.1.dnsbl.example.net", 1),
            ("_acme-challenge.www.example.org", 16),
            ("8.7.6.5.4.3.2.1.e164.arpa", 35),
        ];
        for round in 0..20 {
            for (n, t) in lookups {
                let r = jc(&g, n, t, &format!("10.0.4.{}", round % 4));
                assert!(!is_refused(&r), "{n}: {r:?}");
            }
        }
        assert_eq!(g.convicted_domains(), 0);
        // controls: data hidden under a reverse zone, or under a DNSBL-looking zone whose
        // key is not an address, is refused
        for n in [
            "mzxw6ytboi2gk3tqnfzxg5dpojsxg5dbmrqxiyls.1.168.192.in-addr.arpa",
            "mzxw6ytboi2gk3tqnfzxg5dpojsxg5dbmrqxiylsmzxw6ytboi2gk3tq.x.ip6.arpa",
        ] {
            match j(&g, n, 12) {
                Judgement::Refuse { verdict, .. } => assert_eq!(verdict.source, Source::Lookup),
                other => panic!("{n}: {other:?}"),
            }
        }
        // the reverse zone itself is never convicted: later PTRs still pass for that client
        assert!(!is_refused(&j(&g, "1.1.168.192.in-addr.arpa", 12)));
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
