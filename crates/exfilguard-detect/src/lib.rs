//! The exfilguard detection brain: decides whether a DNS query name is a tunnel, C2 or DGA
//! name. Pure computation (no I/O): the CLI, the kernel data plane's agent and the resolver
//! front all call [`Detector`].

pub mod features;
pub mod lexicon;
pub mod lookup;
pub mod model;
pub mod policy;
pub mod verdict;

pub use features::{extract, Features, FEATURE_DOCS, FEATURE_NAMES, N_FEATURES};
pub use lexicon::Lexicon;
pub use lookup::{Lookup, LookupKind, KNOWN_LOOKUP_ZONES};
pub use model::{Model, ModelClass, ModelError, ModelInfo};
pub use policy::{ListMatch, NameList};
pub use verdict::{fmt_p, fmt_vs, risk_of, Action, Class, DetectorScore, Level, Source, Verdict};

use exfilguard_dns::DnsName;

/// Lists + features + model = verdicts.
pub struct Detector {
    model: Model,
    lexicon: &'static Lexicon,
    allow: NameList,
    block: NameList,
    lookup_zones: Vec<String>,
    /// Per class index: MEDIUM (suspect) threshold and action.
    suspect: Vec<f32>,
    actions: Vec<Action>,
}

/// Default MEDIUM thresholds: where a name becomes evidence against its domain. Chosen on the
/// benign training split (docs/evaluation.md, "domain-level decisions").
pub const TUNNEL_SUSPECT: f32 = 0.95;
pub const DGA_SUSPECT: f32 = 0.5;

impl Detector {
    pub fn new(model: Model) -> Self {
        let suspect = model
            .info()
            .classes
            .iter()
            .zip(&model.info().thresholds)
            .map(|(c, t)| match c {
                ModelClass::Benign => 1.0,
                ModelClass::Tunnel => TUNNEL_SUSPECT.min(*t),
                ModelClass::Dga => DGA_SUSPECT.min(*t),
            })
            .collect();
        let actions = vec![Action::Block; model.info().classes.len()];
        Self {
            model,
            lexicon: Lexicon::embedded(),
            allow: NameList::default(),
            block: NameList::default(),
            lookup_zones: KNOWN_LOOKUP_ZONES.iter().map(|s| s.to_string()).collect(),
            suspect,
            actions,
        }
    }

    /// Lookup services whose names are keys (replaces `KNOWN_LOOKUP_ZONES`).
    pub fn with_lookup_zones(mut self, zones: &[String]) -> Self {
        self.lookup_zones = zones
            .iter()
            .map(|z| z.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|z| !z.is_empty())
            .collect();
        self
    }

    /// The lookup-name structure of `name` (reverse DNS, DNSBL, service labels …), if any,
    /// with this detector's lookup services.
    pub fn lookup(&self, name: &DnsName) -> Option<Lookup> {
        lookup::judge(name, &self.lookup_zones)
    }

    /// A detector's MEDIUM threshold (capped at its HIGH one) and action.
    pub fn with_detector(mut self, class: Class, suspect: Option<f32>, action: Action) -> Self {
        let info = self.model.info();
        if let Some(i) = info.classes.iter().position(|&c| Class::from(c) == class) {
            if let Some(s) = suspect {
                self.suspect[i] = s.min(info.thresholds[i]);
            }
            self.actions[i] = action;
        }
        self
    }

    /// The MEDIUM threshold of `class`'s detector.
    pub fn suspect_threshold(&self, class: Class) -> Option<f32> {
        let info = self.model.info();
        let i = info.classes.iter().position(|&c| Class::from(c) == class)?;
        Some(self.suspect[i])
    }

    /// What the deployment does with `class`'s verdicts (`detect.<class>_action`).
    pub fn action(&self, class: Class) -> Action {
        let info = self.model.info();
        info.classes
            .iter()
            .position(|&c| Class::from(c) == class)
            .map_or(Action::Block, |i| self.actions[i])
    }

    /// The embedded model with empty lists.
    pub fn embedded() -> Result<Self, ModelError> {
        Ok(Self::new(Model::embedded()?))
    }

    pub fn with_lists(mut self, allow: NameList, block: NameList) -> Self {
        self.allow = allow;
        self.block = block;
        self
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn lexicon(&self) -> &'static Lexicon {
        self.lexicon
    }

    pub fn allowlist_mut(&mut self) -> &mut NameList {
        &mut self.allow
    }

    pub fn blocklist_mut(&mut self) -> &mut NameList {
        &mut self.block
    }

    pub fn classify(&self, name: &DnsName) -> Result<Verdict, ModelError> {
        Ok(self.classify_batch(std::slice::from_ref(name))?.remove(0))
    }

    /// Classifies many names with one batched model call. Lists win over the model: the
    /// blocklist first (an operator's block is never overridden), then the allowlist.
    pub fn classify_batch(&self, names: &[DnsName]) -> Result<Vec<Verdict>, ModelError> {
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(names.len());
        let mut pending = Vec::new();
        let mut feats = Vec::new();
        let mut owners: Vec<Option<(LookupKind, String)>> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(v) = self.list_verdict(name) {
                verdicts.push(Some(v));
                continue;
            }
            match lookup::judge(name, &self.lookup_zones) {
                Some(Lookup::Key { kind, what }) => verdicts.push(Some(Verdict::plain(
                    Class::Benign,
                    0.0,
                    Source::Lookup,
                    format!("{}: {what}", kind.as_str()),
                ))),
                Some(Lookup::Malformed { kind, what }) => {
                    let mut v = Verdict::plain(
                        Class::Tunnel,
                        1.0,
                        Source::Lookup,
                        format!("not a {} name: {what} (no resolver answers these; only a tool reading the queries sends them)", kind.as_str()),
                    );
                    v.action = self.action(Class::Tunnel);
                    verdicts.push(Some(v));
                }
                Some(Lookup::Owner { kind, owner }) => {
                    verdicts.push(None);
                    pending.push(i);
                    feats.push(extract(&owner, self.lexicon));
                    owners.push(Some((kind, owner.normalized())));
                }
                None => {
                    verdicts.push(None);
                    pending.push(i);
                    feats.push(extract(name, self.lexicon));
                    owners.push(None);
                }
            }
        }
        if !feats.is_empty() {
            let probs = self.model.predict(&feats)?;
            let k = self.model.info().classes.len();
            for (((i, f), p), o) in pending
                .into_iter()
                .zip(&feats)
                .zip(probs.chunks_exact(k))
                .zip(owners)
            {
                let mut v = self.decide(f, p);
                if let Some((kind, owner)) = o {
                    v.reasons.insert(
                        0,
                        format!("{}: judged by its owner name {owner}", kind.as_str()),
                    );
                }
                verdicts[i] = Some(v);
            }
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.expect("every name decided"))
            .collect())
    }

    /// The operator lists' verdict, when a list names `name`: the blocklist first (an
    /// operator's block is never overridden), then the allowlist.
    pub fn list_verdict(&self, name: &DnsName) -> Option<Verdict> {
        if let Some(m) = self.block.lookup(name) {
            return Some(Verdict::plain(
                Class::Blocked,
                1.0,
                Source::Blocklist,
                format!("blocklisted {m}"),
            ));
        }
        self.allow.lookup(name).map(|m| {
            Verdict::plain(
                Class::Benign,
                0.0,
                Source::Allowlist,
                format!("allowlisted {m}"),
            )
        })
    }

    /// Turns class probabilities into a verdict at the model's operating point: the most
    /// probable malicious class that reaches its threshold wins.
    pub fn decide(&self, f: &Features, probs: &[f32]) -> Verdict {
        let info = self.model.info();
        let b = self.model.benign_index();
        let score = (1.0 - probs[b]).clamp(0.0, 1.0);
        let detectors: Vec<DetectorScore> = info
            .classes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != b)
            .map(|(i, &c)| {
                let (p, t, s) = (probs[i], info.thresholds[i], self.suspect[i]);
                DetectorScore {
                    detector: c.into(),
                    p,
                    risk: risk_of(p, t),
                    level: if p >= t {
                        Level::High
                    } else if p >= s {
                        Level::Medium
                    } else if p >= 0.5 {
                        Level::Low
                    } else {
                        Level::None
                    },
                    threshold: t,
                    suspect: s,
                }
            })
            .collect();
        let hit = probs
            .iter()
            .enumerate()
            .filter(|&(i, &p)| i != b && p >= info.thresholds[i])
            .max_by(|x, y| x.1.total_cmp(y.1));
        match hit {
            Some((i, &p)) => {
                let class = info.classes[i];
                let mut reasons = verdict::reasons(f, class);
                let (p, t) = verdict::fmt_vs(p, info.thresholds[i]);
                reasons.push(format!(
                    "model: P({}) = {p} ≥ threshold {t} (HIGH)",
                    class_name(class),
                ));
                Verdict {
                    class: class.into(),
                    score,
                    source: Source::Model,
                    reasons,
                    action: self.action(class.into()),
                    detectors,
                }
            }
            None => Verdict {
                class: Class::Benign,
                score,
                source: Source::Model,
                reasons: Vec::new(),
                action: Action::Block,
                detectors,
            },
        }
    }
}

fn class_name(c: ModelClass) -> &'static str {
    Class::from(c).as_str()
}
