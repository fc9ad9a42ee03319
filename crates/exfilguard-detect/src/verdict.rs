//! Verdicts and the human-readable reasons behind them.

use crate::features::{Encoding, Features, F};
use crate::model::ModelClass;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Benign,
    /// Data tunnel or C2 channel carried in query names.
    Tunnel,
    /// Algorithmically generated domain (malware rendezvous).
    Dga,
    /// On the operator's (or the fleet's) blocklist, whatever the model says.
    Blocked,
}

impl Class {
    pub fn is_malicious(self) -> bool {
        self != Class::Benign
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Benign => "benign",
            Class::Tunnel => "tunnel",
            Class::Dga => "dga",
            Class::Blocked => "blocked",
        }
    }
}

impl From<ModelClass> for Class {
    fn from(c: ModelClass) -> Self {
        match c {
            ModelClass::Benign => Class::Benign,
            ModelClass::Tunnel => Class::Tunnel,
            ModelClass::Dga => Class::Dga,
        }
    }
}

/// Where the decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Model,
    Allowlist,
    Blocklist,
    /// The name could not be parsed; see the reasons.
    Invalid,
    /// Behaviour analytics over many queries (information rate, beaconing, DGA walks).
    Behaviour,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub class: Class,
    /// Calibrated probability that the name is not benign (1.0 for blocklist hits).
    pub score: f32,
    pub source: Source,
    pub reasons: Vec<String>,
}

/// Reference points for the explanations only (decisions are the model's): roughly the 99th
/// percentile of benign host names in the training split.
const LONG_LABEL: usize = 24;
const LONG_SUBDOMAIN: f32 = 60.0;
const HIGH_ENTROPY: f32 = 4.0;
const LOW_LIKELIHOOD: f32 = -3.3;

/// Explains a feature vector in words, most telling first.
pub fn reasons(f: &Features, class: ModelClass) -> Vec<String> {
    let mut out = Vec::new();
    let (len, enc) = f.longest_label;
    match class {
        ModelClass::Tunnel | ModelClass::Benign => {
            if len >= LONG_LABEL || (len >= 12 && !matches!(enc, Encoding::Alpha | Encoding::Other))
            {
                out.push(format!("label of {len} {} characters", enc.describe()));
            }
            let s_len = f.get(F::SLen);
            if s_len >= LONG_SUBDOMAIN {
                out.push(format!(
                    "{} bytes left of the registered domain in {} labels",
                    s_len,
                    f.get(F::SLabels)
                ));
            }
            if s_len >= 12.0 && f.get(F::SEntropy) >= HIGH_ENTROPY {
                out.push(format!("entropy {:.1} bits/char", f.get(F::SEntropy)));
            }
            if f.get(F::SNonAscii) > 0.0 {
                out.push(format!(
                    "{:.0}% non-ASCII bytes",
                    100.0 * f.get(F::SNonAscii)
                ));
            }
            if f.get(F::SOther) > 0.0 {
                out.push(
                    "characters outside letters, digits and '-' (base64 '+', '/', '=')".into(),
                );
            }
            if f.get(F::SCaseSwitch) >= 0.3 && s_len >= 12.0 {
                out.push(format!(
                    "case switches on {:.0}% of letter pairs",
                    100.0 * f.get(F::SCaseSwitch)
                ));
            }
            if s_len >= 8.0 && f.get(F::STrigram) <= LOW_LIKELIHOOD {
                out.push(format!(
                    "subdomain unlike benign names (trigram log-likelihood {:.1} nats/char)",
                    f.get(F::STrigram)
                ));
            }
        }
        ModelClass::Dga => {
            let r_len = f.get(F::RLen);
            if f.get(F::RWords) >= 3.0 && f.get(F::RWordCover) >= 0.8 {
                out.push(format!(
                    "registrable label of {r_len} letters is {} dictionary words glued together",
                    f.get(F::RWords)
                ));
            }
            if f.get(F::RTrigram) <= LOW_LIKELIHOOD {
                out.push(format!(
                    "registrable label unlike benign names (trigram log-likelihood {:.1} nats/char)",
                    f.get(F::RTrigram)
                ));
            }
            if f.get(F::RConsonantRun) >= 5.0 {
                out.push(format!("run of {} consonants", f.get(F::RConsonantRun)));
            }
            if f.get(F::RDigit) > 0.2 && f.get(F::RAlnumSwitch) > 0.2 {
                out.push(format!(
                    "{:.0}% digits interleaved with letters",
                    100.0 * f.get(F::RDigit)
                ));
            }
            if r_len >= 12.0 && f.get(F::REntropy) >= 3.5 {
                out.push(format!(
                    "registrable label entropy {:.1} bits/char",
                    f.get(F::REntropy)
                ));
            }
        }
    }
    out
}
