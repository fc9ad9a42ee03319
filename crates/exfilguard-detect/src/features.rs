//! The feature vector: the one function ([`extract`]) that both training export and inference
//! call. Every feature is computed from two places only:
//!
//! * the **subdomain part** (`s_*`): the labels left of the registered domain, where tunnels
//!   put their payload, with case and raw bytes preserved;
//! * the **registrable label** (`r_*`): the one label of the registered domain left of the public
//!   suffix (`example` in `a.b.example.co.uk`), where DGAs put their randomness.
//!
//! The registered domain itself (its text, its TLD) is never an input: a model that saw it would
//! learn the lab zones of the training tools instead of the tunnels.

use crate::lexicon::{Lexicon, Likelihood};
use exfilguard_dns::DnsName;

macro_rules! features {
    ($($id:ident = $name:literal : $doc:literal,)*) => {
        /// Index of each feature in [`Features::values`].
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum F { $($id,)* }
        /// Feature names in vector order (also stored in the ONNX model's metadata and checked at load).
        pub const FEATURE_NAMES: &[&str] = &[$($name,)*];
        /// One line of documentation per feature, in vector order.
        pub const FEATURE_DOCS: &[&str] = &[$($doc,)*];
    };
}

features! {
    SLen = "s_len": "bytes in the subdomain part (labels left of the registered domain, dots excluded)",
    SLabels = "s_labels": "labels in the subdomain part",
    SMaxLabel = "s_max_label": "longest subdomain label, bytes",
    SMeanLabel = "s_mean_label": "mean subdomain label length, bytes",
    SStdLabel = "s_std_label": "standard deviation of subdomain label lengths",
    SLower = "s_lower": "fraction of subdomain bytes that are a-z",
    SUpper = "s_upper": "fraction of subdomain bytes that are A-Z",
    SDigit = "s_digit": "fraction of subdomain bytes that are 0-9",
    SHyphen = "s_hyphen": "fraction of subdomain bytes that are '-' or '_'",
    SOther = "s_other": "fraction of subdomain bytes that are other printable ASCII ('+', '/', '=', ...)",
    SNonAscii = "s_nonascii": "fraction of subdomain bytes that are non-ASCII or control bytes",
    SEntropy = "s_entropy": "Shannon entropy of subdomain bytes, bits per byte",
    SEntropyNorm = "s_entropy_norm": "s_entropy divided by its maximum for that length, log2(min(len, 256))",
    SUnique = "s_unique": "distinct bytes divided by subdomain bytes",
    SBigram = "s_bigram_ll": "mean ln P(char | previous) under the benign bigram model, case-folded",
    STrigram = "s_trigram_ll": "mean ln P(char | two previous) under the benign trigram model, case-folded",
    SMinTrigram = "s_min_label_trigram_ll": "lowest per-label trigram log-likelihood among subdomain labels",
    SVowel = "s_vowel": "vowels divided by letters in the subdomain part",
    SConsonantRun = "s_consonant_run": "longest run of consonants in the subdomain part",
    SDigitRun = "s_digit_run": "longest run of digits in the subdomain part",
    SCaseSwitch = "s_case_switch": "fraction of adjacent letter pairs that switch case (base64, base62)",
    SAlnumSwitch = "s_alnum_switch": "fraction of adjacent alphanumeric pairs that switch letter/digit",
    SWordCover = "s_word_cover": "fraction of subdomain letters covered by dictionary words (only single-case labels without digits are segmented)",
    SEncHex = "s_enc_hex": "fraction of subdomain bytes in labels that are hex (single case, letters and digits)",
    SEncB32 = "s_enc_b32": "fraction of subdomain bytes in labels that are base32 ([a-z2-7] single case, with digits)",
    SEncB36 = "s_enc_b36": "fraction of subdomain bytes in other single-case labels mixing letters and digits",
    SEncB62 = "s_enc_b62": "fraction of subdomain bytes in mixed-case alphanumeric labels",
    SEncB64 = "s_enc_b64": "fraction of subdomain bytes in labels with base64 punctuation (+ / =) or mixed case with - _",
    SEncBinary = "s_enc_binary": "fraction of subdomain bytes in labels with non-ASCII or control bytes",
    SNumericLabels = "s_numeric_labels": "subdomain labels made only of digits",
    RLen = "r_len": "length of the registrable label",
    RDigit = "r_digit": "fraction of the registrable label that is digits",
    RHyphen = "r_hyphen": "hyphens in the registrable label",
    REntropy = "r_entropy": "Shannon entropy of the registrable label, bits per byte",
    RBigram = "r_bigram_ll": "mean bigram log-likelihood of the registrable label",
    RTrigram = "r_trigram_ll": "mean trigram log-likelihood of the registrable label",
    RVowel = "r_vowel": "vowels divided by letters in the registrable label",
    RConsonantRun = "r_consonant_run": "longest run of consonants in the registrable label",
    RDigitRun = "r_digit_run": "longest run of digits in the registrable label",
    RAlnumSwitch = "r_alnum_switch": "fraction of adjacent alphanumeric pairs that switch letter/digit",
    RWordCover = "r_word_cover": "fraction of the registrable label covered by dictionary words",
    RWords = "r_words": "dictionary words in the best segmentation of the registrable label",
    RIdn = "r_idn": "1 if the registrable label is an IDN (xn--) label",
    NWireLen = "n_wire_len": "length of the whole name on the wire",
    NLabels = "n_labels": "labels in the whole name",
}

pub const N_FEATURES: usize = FEATURE_NAMES.len();

/// How a label's bytes are drawn: the narrowest alphabet that explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Letters only, one case (words, most host names).
    Alpha,
    Numeric,
    Hex,
    Base32,
    Base36,
    Base62,
    Base64,
    Binary,
    /// Anything else (hyphenated host names, mixed).
    Other,
}

impl Encoding {
    pub fn describe(self) -> &'static str {
        match self {
            Encoding::Alpha => "alphabetic",
            Encoding::Numeric => "numeric",
            Encoding::Hex => "hex",
            Encoding::Base32 => "base32",
            Encoding::Base36 => "base36 (letters+digits)",
            Encoding::Base62 => "mixed-case alphanumeric (base62/base64)",
            Encoding::Base64 => "base64",
            Encoding::Binary => "binary (non-ASCII)",
            Encoding::Other => "host-name",
        }
    }
}

/// Classifies one label's alphabet.
pub fn label_encoding(label: &[u8]) -> Encoding {
    let (mut lower, mut upper, mut digit, mut b32digit, mut hexletter, mut nonhex) =
        (false, false, false, true, false, false);
    let (mut punct64, mut dashes, mut binary, mut other) = (false, false, false, false);
    for &b in label {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => {
                if b.is_ascii_lowercase() {
                    lower = true
                } else {
                    upper = true
                }
                if b.to_ascii_lowercase() <= b'f' {
                    hexletter = true
                } else {
                    nonhex = true
                }
            }
            b'0'..=b'9' => {
                digit = true;
                if !(b'2'..=b'7').contains(&b) {
                    b32digit = false
                }
            }
            b'+' | b'/' | b'=' => punct64 = true,
            b'-' | b'_' => dashes = true,
            0x21..=0x7e => other = true,
            _ => binary = true,
        }
    }
    let letters = lower || upper;
    if binary {
        Encoding::Binary
    } else if punct64 || (dashes && lower && upper && digit) {
        Encoding::Base64
    } else if other || dashes {
        Encoding::Other
    } else if !letters {
        Encoding::Numeric
    } else if lower && upper {
        // Mixed case, with or without digits: base62/base64 payload or camel-case words; the
        // case-switch feature tells them apart.
        Encoding::Base62
    } else if !digit {
        Encoding::Alpha
    } else if hexletter && !nonhex {
        Encoding::Hex
    } else if b32digit {
        Encoding::Base32
    } else {
        Encoding::Base36
    }
}

/// A feature vector plus the facts that verdict reasons quote.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub values: [f32; N_FEATURES],
    /// The longest subdomain label: its length and alphabet.
    pub longest_label: (usize, Encoding),
}

impl Features {
    #[inline]
    pub fn get(&self, f: F) -> f32 {
        self.values[f as usize]
    }
}

#[derive(Default)]
struct CharStats {
    letters: u32,
    vowels: u32,
    consonant_run: u32,
    digit_run: u32,
    case_pairs: u32,
    case_switches: u32,
    alnum_pairs: u32,
    alnum_switches: u32,
}

impl CharStats {
    /// Runs and switches restart at every label boundary.
    fn label(&mut self, label: &[u8]) {
        let (mut crun, mut drun) = (0u32, 0u32);
        let mut prev: Option<u8> = None;
        for &b in label {
            let is_letter = b.is_ascii_alphabetic();
            let is_digit = b.is_ascii_digit();
            if is_letter {
                self.letters += 1;
                if matches!(
                    b.to_ascii_lowercase(),
                    b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
                ) {
                    self.vowels += 1;
                    crun = 0;
                } else {
                    crun += 1;
                    self.consonant_run = self.consonant_run.max(crun);
                }
            } else {
                crun = 0;
            }
            if is_digit {
                drun += 1;
                self.digit_run = self.digit_run.max(drun);
            } else {
                drun = 0;
            }
            if let Some(p) = prev {
                if is_letter && p.is_ascii_alphabetic() {
                    self.case_pairs += 1;
                    if p.is_ascii_uppercase() != b.is_ascii_uppercase() {
                        self.case_switches += 1;
                    }
                }
                if b.is_ascii_alphanumeric() && p.is_ascii_alphanumeric() {
                    self.alnum_pairs += 1;
                    if is_digit != p.is_ascii_digit() {
                        self.alnum_switches += 1;
                    }
                }
            }
            prev = Some(b);
        }
    }
}

fn ratio(a: u32, b: u32) -> f32 {
    if b == 0 {
        0.0
    } else {
        a as f32 / b as f32
    }
}

/// c·log2(c) for every count a label can reach, so entropy needs one log per name, not one
/// per distinct byte: H = log2(T) - Σ c·log2(c) / T.
static C_LOG_C: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0f32; 256];
    for (c, v) in t.iter_mut().enumerate().skip(1) {
        *v = c as f32 * (c as f32).log2();
    }
    t
});

/// Byte histogram that remembers which buckets it touched, so resetting is cheap.
struct Histogram {
    counts: [u16; 256],
    distinct: [u8; 256],
    n_distinct: usize,
    total: u32,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: [0; 256],
            distinct: [0; 256],
            n_distinct: 0,
            total: 0,
        }
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.counts[b as usize] == 0 {
                self.distinct[self.n_distinct] = b;
                self.n_distinct += 1;
            }
            self.counts[b as usize] += 1;
        }
        self.total += bytes.len() as u32;
    }
    /// Shannon entropy in bits per byte.
    fn entropy(&self) -> f32 {
        if self.total == 0 {
            return 0.0;
        }
        let table = &*C_LOG_C;
        let t = self.total as f32;
        let sum: f32 = self.distinct[..self.n_distinct]
            .iter()
            .map(|&b| {
                let c = self.counts[b as usize] as usize;
                if c < 256 {
                    table[c]
                } else {
                    c as f32 * (c as f32).log2()
                }
            })
            .sum();
        (t.log2() - sum / t).max(0.0)
    }
}

/// Computes the feature vector of a query name. Pure and total: any name gives a vector.
pub fn extract(name: &DnsName, lex: &Lexicon) -> Features {
    let split = name.split();
    let sub_n = split.subdomain_labels();
    let mut v = [0f32; N_FEATURES];
    let mut set = |f: F, x: f32| v[f as usize] = x;

    // Subdomain part.
    let mut hist = Histogram::new();
    let mut stats = CharStats::default();
    let (mut lower, mut upper, mut digit, mut hyphen, mut other, mut nonascii) = (0, 0, 0, 0, 0, 0);
    let mut enc_bytes = [0u32; 9];
    let mut numeric_labels = 0u32;
    let mut longest = (0usize, Encoding::Alpha);
    let mut ll = Likelihood::default();
    let mut min_tri = 0f32;
    let (mut words_cov, mut sum_len, mut sum_sq) = (0u32, 0f32, 0f32);
    for i in 0..sub_n {
        let label = name.label(i);
        hist.add(label);
        stats.label(label);
        for &b in label {
            match b {
                b'a'..=b'z' => lower += 1,
                b'A'..=b'Z' => upper += 1,
                b'0'..=b'9' => digit += 1,
                b'-' | b'_' => hyphen += 1,
                0x21..=0x7e => other += 1,
                _ => nonascii += 1,
            }
        }
        let enc = label_encoding(label);
        enc_bytes[enc as usize] += label.len() as u32;
        if enc == Encoding::Numeric {
            numeric_labels += 1;
        }
        if label.len() > longest.0 {
            longest = (label.len(), enc);
        }
        let l = lex.ngram.label(label);
        min_tri = if i == 0 {
            l.trigram
        } else {
            min_tri.min(l.trigram)
        };
        ll.add(l);
        // Only labels that could be words are segmented: encoded payload labels (digits mixed
        // in, mixed case, punctuation, binary) count as uncovered, which is what they are.
        if enc == Encoding::Alpha
            || (enc == Encoding::Other && !label.iter().any(u8::is_ascii_digit))
        {
            words_cov += lex.words.segment(label).covered;
        }
        let n = label.len() as f32;
        sum_len += n;
        sum_sq += n * n;
    }
    let s_len = hist.total;
    if sub_n > 0 {
        let k = sub_n as f32;
        let mean = sum_len / k;
        set(F::SLen, s_len as f32);
        set(F::SLabels, k);
        set(F::SMaxLabel, longest.0 as f32);
        set(F::SMeanLabel, mean);
        set(F::SStdLabel, (sum_sq / k - mean * mean).max(0.0).sqrt());
        set(F::SLower, ratio(lower, s_len));
        set(F::SUpper, ratio(upper, s_len));
        set(F::SDigit, ratio(digit, s_len));
        set(F::SHyphen, ratio(hyphen, s_len));
        set(F::SOther, ratio(other, s_len));
        set(F::SNonAscii, ratio(nonascii, s_len));
        let h = hist.entropy();
        set(F::SEntropy, h);
        let hmax = (s_len.min(256) as f32).log2();
        set(F::SEntropyNorm, if hmax > 0.0 { h / hmax } else { 0.0 });
        set(F::SUnique, ratio(hist.n_distinct as u32, s_len));
        set(F::SBigram, ll.bigram);
        set(F::STrigram, ll.trigram);
        set(F::SMinTrigram, min_tri);
        set(F::SVowel, ratio(stats.vowels, stats.letters));
        set(F::SConsonantRun, stats.consonant_run as f32);
        set(F::SDigitRun, stats.digit_run as f32);
        set(F::SCaseSwitch, ratio(stats.case_switches, stats.case_pairs));
        set(
            F::SAlnumSwitch,
            ratio(stats.alnum_switches, stats.alnum_pairs),
        );
        set(F::SWordCover, ratio(words_cov, stats.letters));
        set(F::SEncHex, ratio(enc_bytes[Encoding::Hex as usize], s_len));
        set(
            F::SEncB32,
            ratio(enc_bytes[Encoding::Base32 as usize], s_len),
        );
        set(
            F::SEncB36,
            ratio(enc_bytes[Encoding::Base36 as usize], s_len),
        );
        set(
            F::SEncB62,
            ratio(enc_bytes[Encoding::Base62 as usize], s_len),
        );
        set(
            F::SEncB64,
            ratio(enc_bytes[Encoding::Base64 as usize], s_len),
        );
        set(
            F::SEncBinary,
            ratio(enc_bytes[Encoding::Binary as usize], s_len),
        );
        set(F::SNumericLabels, numeric_labels as f32);
    }

    // Registrable label, case-folded (DGAs are not case-sensitive; resolvers may 0x20 it).
    if let Some(r) = split.registrable_label() {
        let label = name.label(r);
        let mut hist = Histogram::new();
        let mut folded = [0u8; 63];
        let folded = &mut folded[..label.len()];
        for (d, s) in folded.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        hist.add(folded);
        let mut stats = CharStats::default();
        stats.label(folded);
        let n = label.len() as u32;
        let l = lex.ngram.label(folded);
        let seg = lex.words.segment(folded);
        set(F::RLen, n as f32);
        set(
            F::RDigit,
            ratio(
                folded.iter().filter(|b| b.is_ascii_digit()).count() as u32,
                n,
            ),
        );
        set(
            F::RHyphen,
            folded.iter().filter(|&&b| b == b'-').count() as f32,
        );
        set(F::REntropy, hist.entropy());
        set(F::RBigram, l.bigram);
        set(F::RTrigram, l.trigram);
        set(F::RVowel, ratio(stats.vowels, stats.letters));
        set(F::RConsonantRun, stats.consonant_run as f32);
        set(F::RDigitRun, stats.digit_run as f32);
        set(
            F::RAlnumSwitch,
            ratio(stats.alnum_switches, stats.alnum_pairs),
        );
        set(F::RWordCover, ratio(seg.covered, n));
        set(F::RWords, seg.words as f32);
        set(F::RIdn, folded.starts_with(b"xn--") as u8 as f32);
    }
    set(F::NWireLen, name.wire_len() as f32);
    set(F::NLabels, name.label_count() as f32);
    Features {
        values: v,
        longest_label: longest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(name: &str) -> Features {
        extract(&DnsName::parse(name).unwrap(), Lexicon::embedded())
    }

    #[test]
    fn names_and_docs_line_up() {
        assert_eq!(FEATURE_NAMES.len(), FEATURE_DOCS.len());
        assert_eq!(FEATURE_NAMES[F::NLabels as usize], "n_labels");
        let mut sorted = FEATURE_NAMES.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), N_FEATURES, "feature names are unique");
    }

    #[test]
    fn encodings() {
        assert_eq!(label_encoding(b"mail"), Encoding::Alpha);
        assert_eq!(label_encoding(b"12345"), Encoding::Numeric);
        assert_eq!(label_encoding(b"deadbeef01"), Encoding::Hex);
        assert_eq!(label_encoding(b"mfrggzdfmztwq2lk"), Encoding::Base32);
        assert_eq!(label_encoding(b"MFRGGZDFMZTWQ2LK"), Encoding::Base32);
        assert_eq!(label_encoding(b"x9q8z0"), Encoding::Base36);
        assert_eq!(label_encoding(b"aGVsbG8gd29ybGQ"), Encoding::Base62);
        assert_eq!(label_encoding(b"q+Z8AnwaBA"), Encoding::Base64);
        assert_eq!(label_encoding(b"r2---sn-hgn7rne6"), Encoding::Other);
        assert_eq!(label_encoding(&[b'a', 0xbc, b'z']), Encoding::Binary);
    }

    #[test]
    fn registered_domain_is_not_an_input() {
        let a = feats("abcdefgh12.example.com");
        let b = feats("abcdefgh12.zzzzzz.net");
        for (i, name) in FEATURE_NAMES.iter().enumerate() {
            if name.starts_with("s_") {
                assert_eq!(a.values[i], b.values[i], "{name} depends on the zone");
            }
        }
    }

    #[test]
    fn tunnel_and_benign_differ_where_expected() {
        let t = feats(
            "q+aDvIPUCGcDHHAbNdlJFXaCj+nHxXN8w/lOW7b5iVSg+taEkbH8ssUnxRrPgND.tunnel.example.org",
        );
        let b = feats("api-global.netflix.com");
        assert_eq!(t.get(F::SLabels), 2.0);
        assert!(t.get(F::SEntropy) > 4.5, "{}", t.get(F::SEntropy));
        assert!(b.get(F::SEntropy) < 3.5);
        assert!(t.get(F::STrigram) < b.get(F::STrigram));
        assert!(t.get(F::SCaseSwitch) > 0.3);
        assert!(t.get(F::SEncB64) > 0.8);
        assert_eq!(t.longest_label, (63, Encoding::Base64));
        let bare = feats("example.com");
        assert_eq!(bare.get(F::SLen), 0.0);
        assert_eq!(bare.get(F::RLen), 7.0);
    }

    #[test]
    fn wordlist_dga_segments() {
        let m = feats("ruinpotrelywakepotloseperfect.com");
        assert!(m.get(F::RWords) >= 5.0, "{}", m.get(F::RWords));
        assert!(m.get(F::RWordCover) > 0.9);
        let r = feats("uhbqolxf.org");
        assert!(r.get(F::RWordCover) < 0.7);
    }
}
