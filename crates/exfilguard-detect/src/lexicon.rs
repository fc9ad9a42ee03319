//! What "looks like a benign name" means, as data: a character trigram model fitted on benign
//! labels and an English word list. Both are fitted offline (`exfilguard dataset build`),
//! committed under `assets/`, and embedded, so training export and inference share them.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use std::sync::OnceLock;

/// Symbols: a-z (0..26), 0-9 (26..36), '-' 36, '_' 37, any other byte 38, label boundary 39.
pub const SYMBOLS: usize = 40;
const BOUNDARY: u8 = 39;
const MAGIC: &[u8; 8] = b"EGNGRAM1";

#[inline]
pub fn symbol(b: u8) -> u8 {
    match b {
        b'a'..=b'z' => b - b'a',
        b'A'..=b'Z' => b - b'A',
        b'0'..=b'9' => 26 + (b - b'0'),
        b'-' => 36,
        b'_' => 37,
        _ => 38,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    #[error("n-gram table: {0}")]
    Ngram(String),
    #[error("word list: {0}")]
    Words(String),
}

/// Interpolated character trigram model: ln P(c | a b) for every (a, b, c), plus the bigram
/// table ln P(c | b), both over [`SYMBOLS`] with the boundary symbol at both ends of a label.
pub struct NgramModel {
    bigram: Vec<f32>,
    trigram: Vec<f32>,
}

/// Mean log-likelihoods of one or more labels under the benign model (nats per symbol).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Likelihood {
    pub bigram: f32,
    pub trigram: f32,
    pub symbols: u32,
}

impl Likelihood {
    pub fn add(&mut self, other: Likelihood) {
        let n = self.symbols + other.symbols;
        if n == 0 {
            return;
        }
        let (a, b) = (self.symbols as f32, other.symbols as f32);
        self.bigram = (self.bigram * a + other.bigram * b) / n as f32;
        self.trigram = (self.trigram * a + other.trigram * b) / n as f32;
        self.symbols = n;
    }
}

impl NgramModel {
    /// Fits the model on benign labels. Interpolation weights and add-k smoothing are fixed
    /// (0.6/0.3/0.1, k=0.05): the table only has to rank "name-like" above "encoded".
    pub fn train<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let s = SYMBOLS;
        let mut c1 = vec![0f64; s];
        let mut c2 = vec![0f64; s * s];
        let mut c3 = vec![0f64; s * s * s];
        for label in labels {
            let (mut a, mut b) = (BOUNDARY as usize, BOUNDARY as usize);
            for c in label
                .iter()
                .map(|&x| symbol(x) as usize)
                .chain([BOUNDARY as usize])
            {
                c1[c] += 1.0;
                c2[b * s + c] += 1.0;
                c3[(a * s + b) * s + c] += 1.0;
                a = b;
                b = c;
            }
        }
        let k = 0.05;
        let total: f64 = c1.iter().sum();
        let p1: Vec<f64> = c1
            .iter()
            .map(|&c| (c + k) / (total + k * s as f64))
            .collect();
        let mut p2 = vec![0f64; s * s];
        for b in 0..s {
            let row: f64 = c2[b * s..(b + 1) * s].iter().sum();
            for c in 0..s {
                let ml = (c2[b * s + c] + k) / (row + k * s as f64);
                p2[b * s + c] = 0.8 * ml + 0.2 * p1[c];
            }
        }
        let mut trigram = vec![0f32; s * s * s];
        for ab in 0..s * s {
            let row: f64 = c3[ab * s..(ab + 1) * s].iter().sum();
            let b = ab % s;
            for c in 0..s {
                let ml = (c3[ab * s + c] + k) / (row + k * s as f64);
                let p = 0.6 * ml + 0.3 * p2[b * s + c] + 0.1 * p1[c];
                trigram[ab * s + c] = p.ln() as f32;
            }
        }
        let bigram = p2.iter().map(|p| p.ln() as f32).collect();
        Self { bigram, trigram }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * (self.bigram.len() + self.trigram.len()));
        out.extend_from_slice(MAGIC);
        for v in self.bigram.iter().chain(&self.trigram) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LexiconError> {
        let s = SYMBOLS;
        let want = 8 + 4 * (s * s + s * s * s);
        if bytes.len() != want || &bytes[..8] != MAGIC {
            return Err(LexiconError::Ngram(format!(
                "expected {want} bytes starting with {MAGIC:?}, got {} bytes",
                bytes.len()
            )));
        }
        let floats: Vec<f32> = bytes[8..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if floats.iter().any(|v| !v.is_finite() || *v > 0.0) {
            return Err(LexiconError::Ngram(
                "log-probabilities must be finite and ≤ 0".into(),
            ));
        }
        let (bigram, trigram) = floats.split_at(s * s);
        Ok(Self {
            bigram: bigram.to_vec(),
            trigram: trigram.to_vec(),
        })
    }

    /// Mean log-likelihood of one label, end boundary included.
    #[inline]
    pub fn label(&self, label: &[u8]) -> Likelihood {
        let s = SYMBOLS;
        let (mut a, mut b) = (BOUNDARY as usize, BOUNDARY as usize);
        let (mut l2, mut l3) = (0f32, 0f32);
        for c in label
            .iter()
            .map(|&x| symbol(x) as usize)
            .chain([BOUNDARY as usize])
        {
            l2 += self.bigram[b * s + c];
            l3 += self.trigram[(a * s + b) * s + c];
            a = b;
            b = c;
        }
        let n = label.len() as u32 + 1;
        Likelihood {
            bigram: l2 / n as f32,
            trigram: l3 / n as f32,
            symbols: n,
        }
    }
}

/// Dictionary words (3 to 15 letters) for segmenting labels: wordlist DGAs (matsnu, rovnix)
/// glue many words together, benign names use one to three.
pub struct WordList {
    automaton: AhoCorasick,
}

/// The best segmentation of a label into dictionary words.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Segmentation {
    /// Letters covered by words.
    pub covered: u32,
    /// Words used to cover them.
    pub words: u32,
}

impl WordList {
    pub fn from_text(text: &str) -> Result<Self, LexiconError> {
        let words: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty() && !w.starts_with('#'))
            .collect();
        if words.is_empty() {
            return Err(LexiconError::Words("no words".into()));
        }
        if let Some(bad) = words
            .iter()
            .find(|w| !(3..=15).contains(&w.len()) || !w.bytes().all(|b| b.is_ascii_lowercase()))
        {
            return Err(LexiconError::Words(format!(
                "{bad:?} is not 3-15 lower-case letters"
            )));
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            // 3 MB and ~200 ns per 30-letter label; the DFA is 2x faster but 39 MB.
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&words)
            .map_err(|e| LexiconError::Words(e.to_string()))?;
        Ok(Self { automaton })
    }

    /// Maximum letters covered by non-overlapping words; ties go to fewer words.
    pub fn segment(&self, label: &[u8]) -> Segmentation {
        let n = label.len();
        if !(3..=63).contains(&n) {
            return Segmentation::default();
        }
        // best[i] = (covered, -words) for the prefix of length i.
        let mut best = [(0u32, 0u32); 64];
        let mut ends: [u64; 64] = [0; 64]; // bit s set in ends[e]: a word spans s..e
        for m in self.automaton.find_overlapping_iter(label) {
            ends[m.end()] |= 1u64 << m.start();
        }
        for i in 1..=n {
            let mut b = best[i - 1];
            let mut starts = ends[i];
            while starts != 0 {
                let s = starts.trailing_zeros() as usize;
                starts &= starts - 1;
                let cand = (best[s].0 + (i - s) as u32, best[s].1 + 1);
                if cand.0 > b.0 || (cand.0 == b.0 && cand.1 < b.1) {
                    b = cand;
                }
            }
            best[i] = b;
        }
        Segmentation {
            covered: best[n].0,
            words: best[n].1,
        }
    }
}

/// The n-gram model and word list that features are computed against.
pub struct Lexicon {
    pub ngram: NgramModel,
    pub words: WordList,
}

static NGRAM_BYTES: &[u8] = include_bytes!("../assets/ngram.bin");
static WORDS_TEXT: &str = include_str!("../assets/words.txt");

impl Lexicon {
    /// The lexicon embedded in the binary (built once, shared).
    pub fn embedded() -> &'static Lexicon {
        static LEX: OnceLock<Lexicon> = OnceLock::new();
        LEX.get_or_init(|| Lexicon {
            ngram: NgramModel::from_bytes(NGRAM_BYTES).expect("embedded n-gram table is valid"),
            words: Self::embedded_words().expect("embedded word list is valid"),
        })
    }

    pub fn embedded_words() -> Result<WordList, LexiconError> {
        WordList::from_text(WORDS_TEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_ranks_names_above_random() {
        let corpus: Vec<&[u8]> = vec![
            b"google",
            b"facebook",
            b"amazon",
            b"mail",
            b"static",
            b"images",
            b"online",
            b"shopping",
            b"weather",
            b"news",
            b"sports",
            b"music",
            b"travel",
            b"bank",
        ];
        let m = NgramModel::train(corpus.iter().copied());
        let back = NgramModel::from_bytes(&m.to_bytes()).unwrap();
        let name = back.label(b"shopnews");
        let noise = back.label(b"xq7zk2vj9w");
        assert!(name.trigram > noise.trigram, "{name:?} vs {noise:?}");
        assert!(NgramModel::from_bytes(b"junk").is_err());
    }

    #[test]
    fn segmentation_counts_words() {
        let w = WordList::from_text("face\nbook\nruin\npot\nrely\nwake\nlose\nperfect\n").unwrap();
        assert_eq!(
            w.segment(b"facebook"),
            Segmentation {
                covered: 8,
                words: 2
            }
        );
        let s = w.segment(b"ruinpotrelywakepotloseperfect");
        assert_eq!(s.covered, 29);
        assert_eq!(s.words, 7);
        assert_eq!(w.segment(b"xqzvkw").covered, 0);
        assert!(WordList::from_text("Bad\n").is_err());
    }
}
