//! The exfilguard detection brain: decides whether a DNS query name is a tunnel, C2 or DGA
//! name. Pure computation (no I/O): the CLI, the kernel data plane's agent and the resolver
//! front all call [`Detector`].

pub mod features;
pub mod lexicon;
pub mod model;
pub mod policy;
pub mod verdict;

pub use features::{extract, Features, FEATURE_DOCS, FEATURE_NAMES, N_FEATURES};
pub use lexicon::Lexicon;
pub use model::{Model, ModelClass, ModelError, ModelInfo};
pub use policy::{ListMatch, NameList};
pub use verdict::{Class, Source, Verdict};

use exfilguard_dns::DnsName;

/// Lists + features + model = verdicts.
pub struct Detector {
    model: Model,
    lexicon: &'static Lexicon,
    allow: NameList,
    block: NameList,
}

impl Detector {
    pub fn new(model: Model) -> Self {
        Self {
            model,
            lexicon: Lexicon::embedded(),
            allow: NameList::default(),
            block: NameList::default(),
        }
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
        for (i, name) in names.iter().enumerate() {
            if let Some(v) = self.list_verdict(name) {
                verdicts.push(Some(v));
            } else {
                verdicts.push(None);
                pending.push(i);
                feats.push(extract(name, self.lexicon));
            }
        }
        if !feats.is_empty() {
            let probs = self.model.predict(&feats)?;
            let k = self.model.info().classes.len();
            for ((i, f), p) in pending.into_iter().zip(&feats).zip(probs.chunks_exact(k)) {
                verdicts[i] = Some(self.decide(f, p));
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
            return Some(Verdict {
                class: Class::Blocked,
                score: 1.0,
                source: Source::Blocklist,
                reasons: vec![format!("blocklisted {m}")],
            });
        }
        self.allow.lookup(name).map(|m| Verdict {
            class: Class::Benign,
            score: 0.0,
            source: Source::Allowlist,
            reasons: vec![format!("allowlisted {m}")],
        })
    }

    /// Turns class probabilities into a verdict at the model's operating point: the most
    /// probable malicious class that reaches its threshold wins.
    pub fn decide(&self, f: &Features, probs: &[f32]) -> Verdict {
        let info = self.model.info();
        let b = self.model.benign_index();
        let score = (1.0 - probs[b]).clamp(0.0, 1.0);
        let hit = probs
            .iter()
            .enumerate()
            .filter(|&(i, &p)| i != b && p >= info.thresholds[i])
            .max_by(|x, y| x.1.total_cmp(y.1));
        match hit {
            Some((i, &p)) => {
                let class = info.classes[i];
                let mut reasons = verdict::reasons(f, class);
                reasons.push(format!(
                    "model: P({}) = {p:.4} ≥ threshold {:.4}",
                    class_name(class),
                    info.thresholds[i]
                ));
                Verdict {
                    class: class.into(),
                    score,
                    source: Source::Model,
                    reasons,
                }
            }
            None => Verdict {
                class: Class::Benign,
                score,
                source: Source::Model,
                reasons: Vec::new(),
            },
        }
    }
}

fn class_name(c: ModelClass) -> &'static str {
    Class::from(c).as_str()
}
