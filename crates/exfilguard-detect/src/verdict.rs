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
    /// The structure of a lookup name (reverse DNS, DNSBL, service labels): see `lookup`.
    Lookup,
    /// Several suspect names under one domain from one client (the domain-level decision).
    Domain,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub class: Class,
    /// Calibrated probability that the name is not benign (1.0 for blocklist hits).
    pub score: f32,
    pub source: Source,
    pub reasons: Vec<String>,
    /// What the deployment does with a malicious verdict: refuse it, or report it only
    /// (`detect.<detector>_action = "alert"`).
    pub action: Action,
    /// Every detector's own confidence and the thresholds in use (model verdicts only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<DetectorScore>,
}

impl Verdict {
    /// A decision without a model (lists, lookup structure, convictions, behaviour).
    pub fn plain(class: Class, score: f32, source: Source, reason: String) -> Self {
        Self {
            class,
            score,
            source,
            reasons: vec![reason],
            action: Action::Block,
            detectors: Vec::new(),
        }
    }

    /// The score of one detector (`tunnel`, `dga`), if the model ran.
    pub fn detector(&self, class: Class) -> Option<&DetectorScore> {
        self.detectors.iter().find(|d| d.detector == class)
    }

    /// Refused where it is judged: malicious and not alert-only.
    pub fn refuses(&self) -> bool {
        self.class.is_malicious() && self.action == Action::Block
    }
}

/// Per-detector action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the query (and let the conviction policy act on its zone).
    #[default]
    Block,
    /// Report it (event, metric) and answer it.
    Alert,
}

/// Risk levels an operator can read, like DNS firewalls' confidence levels: HIGH = the
/// detector's own operating point (the name alone is refused), MEDIUM = suspect (a few such
/// names under one domain from one client convict the domain for that client), LOW = more
/// likely malicious than not, NONE below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    None,
    Low,
    Medium,
    High,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Low => "LOW",
            Level::Medium => "MEDIUM",
            Level::High => "HIGH",
        }
    }
}

/// One detector's calibrated probability, its level and the thresholds behind the level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorScore {
    pub detector: Class,
    /// Calibrated probability (softmax with temperature, fitted on validation data).
    pub p: f32,
    /// 0–100: −log10(1 − p) scaled so that the HIGH threshold reads 100 at most; see
    /// [`risk_of`].
    pub risk: u8,
    pub level: Level,
    /// P at and above which the name alone is refused (HIGH).
    pub threshold: f32,
    /// P at and above which the name is suspect evidence against its domain (MEDIUM).
    pub suspect: f32,
}

/// A readable 0–100 risk from a probability: probabilities this close to 1 differ in their
/// number of nines, so the risk is the nines of `p` relative to the HIGH threshold's nines,
/// 100 at the threshold and above. `0.999991` with a threshold of `0.999991` is 100;
/// `0.99` is about 40.
pub fn risk_of(p: f32, threshold: f32) -> u8 {
    let nines = |x: f32| -(1.0 - x.clamp(0.0, 1.0 - 1e-9) as f64).log10();
    let full = nines(threshold).max(1e-6);
    (100.0 * (nines(p) / full).clamp(0.0, 1.0)).floor() as u8
}

/// Prints a probability close to 1 with enough digits to tell it from a threshold
/// (`0.999991` is not "1.0000").
pub fn fmt_p(p: f32) -> String {
    let q = 1.0 - p as f64;
    if p >= 0.999 && q > 0.0 {
        let digits = (-q.log10()).ceil() as usize + 2;
        format!("{p:.digits$}")
    } else {
        format!("{p:.4}")
    }
}

/// A probability and the threshold it is compared with, printed with as many digits as it
/// takes for the printed numbers to compare as the real ones do: `0.998410 < 0.998422`, never
/// "0.9984 < 0.9984" or "1.0000 ≥ 1.0000" for a value under its threshold.
pub fn fmt_vs(p: f32, threshold: f32) -> (String, String) {
    let digits = |x: f32| {
        let q = 1.0 - x as f64;
        if x >= 0.999 && q > 0.0 {
            (-q.log10()).ceil() as usize + 2
        } else {
            4
        }
    };
    let mut d = digits(p).max(digits(threshold));
    loop {
        let (a, b) = (format!("{p:.d$}"), format!("{threshold:.d$}"));
        let same = match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x >= y) == (p >= threshold) && (x == y) == (p == threshold),
            _ => true,
        };
        if same || d >= 10 {
            return (a, b);
        }
        d += 1;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_and_its_threshold_print_in_their_true_order() {
        for (p, t) in [
            (0.998_41_f32, 0.998_422_f32),
            (0.998_43, 0.998_422),
            (0.999_995, 0.999_990_5),
            (0.999_990_4, 0.999_990_5),
            (0.5, 0.5),
            (0.997, 0.998_422),
        ] {
            let (a, b) = fmt_vs(p, t);
            let (x, y): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(x >= y, p >= t, "{a} vs {b}");
            assert_eq!(x == y, p == t, "{a} vs {b}");
        }
        assert_eq!(
            fmt_vs(0.998_41, 0.998_422),
            ("0.99841".into(), "0.99842".into())
        );
    }
}
