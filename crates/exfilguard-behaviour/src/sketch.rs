//! The small fixed-size pieces the tracker keeps per pair, and the information estimate.

use std::hash::{BuildHasher, Hash};

/// A 1024-bit Bloom filter with four probes: "has this pair sent this subdomain lately?".
/// Two of them rotate per window, so memory stays fixed and old names become new again, and a
/// filter also rotates once it holds [`Bloom1024::CAPACITY`] names: its false-positive rate
/// never passes 0.96 % (two filters checked: 1.9 %), however many names a sender pushes in.
/// Pre-filling it with junk names therefore cannot make real payload look "seen"; it can only
/// make old names count as new again (over-counting, towards an alarm).
#[derive(Clone, Default)]
pub struct Bloom1024 {
    bits: [u64; 16],
    len: u16,
}

impl Bloom1024 {
    /// Names a filter takes before it rotates: (1 - e^(-4·96/1024))^4 = 0.96 %.
    pub const CAPACITY: u16 = 96;

    fn probes(h: u64) -> [usize; 4] {
        [
            (h & 1023) as usize,
            ((h >> 10) & 1023) as usize,
            ((h >> 20) & 1023) as usize,
            ((h >> 30) & 1023) as usize,
        ]
    }

    pub fn contains(&self, h: u64) -> bool {
        Self::probes(h)
            .iter()
            .all(|&b| self.bits[b / 64] & (1 << (b % 64)) != 0)
    }

    pub fn insert(&mut self, h: u64) {
        for b in Self::probes(h) {
            self.bits[b / 64] |= 1 << (b % 64);
        }
        self.len = self.len.saturating_add(1);
    }

    pub fn is_full(&self) -> bool {
        self.len >= Self::CAPACITY
    }

    pub fn clear(&mut self) {
        self.bits = [0; 16];
        self.len = 0;
    }
}

/// The tracker's keyed hash (SipHash-2-4 with a 128-bit key): random per process in service,
/// so nobody can aim names at one filter bit or table slot offline; a fixed key makes a
/// replay of the same input give the same alarms ([`Keyed::seeded`]).
#[derive(Clone)]
pub struct Keyed([u64; 2]);

impl Keyed {
    pub fn random() -> Self {
        let r = std::hash::RandomState::new();
        Self([r.hash_one(1u64), r.hash_one(2u64)])
    }

    pub fn seeded(seed: u64) -> Self {
        Self([seed, seed.rotate_left(32) ^ 0x6a09_e667_f3bc_c908])
    }

    pub fn hash_one<T: Hash + ?Sized>(&self, v: &T) -> u64 {
        use std::hash::Hasher;
        #[allow(deprecated)] // std's keyed SipHash-2-4, deprecated only in favour of RandomState
        let mut h = std::hash::SipHasher::new_with_keys(self.0[0], self.0[1]);
        v.hash(&mut h);
        h.finish()
    }
}

/// Admission filter in front of the per-pair table: a pair gets a slot on its second distinct
/// subdomain within one window. One-off lookups (`www.example.com` once) — most of a
/// resolver's distinct domains — never take a slot, so a million of them cannot evict the few
/// pairs that matter. Two Bloom filters of 2^24 bits (4 MiB together): pairs seen, and
/// (pair, subdomain) seen; at a million distinct pairs per window about 0.5 % of one-off pairs
/// are admitted by a false positive (and age out of the LRU table untouched).
pub struct Doorkeeper {
    pairs: Vec<u64>,
    subs: Vec<u64>,
}

const DOOR_BITS: usize = 1 << 24;

impl Default for Doorkeeper {
    fn default() -> Self {
        Self {
            pairs: vec![0; DOOR_BITS / 64],
            subs: vec![0; DOOR_BITS / 64],
        }
    }
}

/// Sets the three probe bits of `h`; true when all were already set.
fn test_and_set(bits: &mut [u64], h: u64) -> bool {
    let mut present = true;
    for k in 0..3 {
        let b = (h.rotate_left(21 * k) as usize) % DOOR_BITS;
        let (w, m) = (b / 64, 1u64 << (b % 64));
        present &= bits[w] & m != 0;
        bits[w] |= m;
    }
    present
}

impl Doorkeeper {
    pub const BYTES: usize = 2 * DOOR_BITS / 8;

    /// Records that `pair` sent subdomain `sub` (both hashed); true when this is a new
    /// subdomain of a pair already seen this window with another one.
    pub fn admit(&mut self, pair: u64, sub: u64) -> bool {
        let ps = pair.rotate_left(17) ^ sub.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if test_and_set(&mut self.subs, ps) {
            return false;
        }
        test_and_set(&mut self.pairs, pair)
    }

    /// A new window: everything starts from zero.
    pub fn reset(&mut self) {
        self.pairs.iter_mut().for_each(|w| *w = 0);
        self.subs.iter_mut().for_each(|w| *w = 0);
    }
}

/// Bits per character of the smallest usual alphabet the characters come from: what an
/// encoder using that alphabet can put in each one.
pub fn bits_per_char(s: &[u8]) -> f64 {
    let (mut digit, mut alpha, mut hexalpha, mut dash, mut other, mut high) =
        (false, false, true, false, false, false);
    let (mut lower, mut upper) = (false, false);
    for &b in s {
        match b {
            b'0'..=b'9' => digit = true,
            b'a'..=b'z' | b'A'..=b'Z' => {
                alpha = true;
                lower |= b.is_ascii_lowercase();
                upper |= b.is_ascii_uppercase();
                hexalpha &= matches!(b, b'a'..=b'f' | b'A'..=b'F');
            }
            b'-' | b'_' => dash = true,
            0x80.. => high = true,
            _ => other = true,
        }
    }
    if high {
        8.0
    } else if other || (lower && upper) {
        6.0 // base64-like alphabets, case used as data
    } else if alpha && digit && hexalpha && !dash {
        4.0
    } else if alpha && digit {
        (38f64).log2() // letters, digits, '-' and '_'
    } else if alpha {
        (if dash { 28f64 } else { 26f64 }).log2()
    } else if digit {
        (if dash { 12f64 } else { 10f64 }).log2()
    } else {
        1.0
    }
}

/// Novel information in `sub` given `history` (the pair's recent subdomain text), in bytes:
/// characters not inside a 4-character sequence already seen (in the history or earlier in
/// `sub`) count at [`bits_per_char`]; each run of repeated text costs 12 bits (a reference).
/// A compressor's view, cheap enough for every new name: counters, shared prefixes and
/// repeated tokens cost little, fresh encoded payload costs its full size.
pub fn novel_bytes(sub: &[u8], history: &[u8]) -> f64 {
    const K: usize = 4;
    if sub.is_empty() {
        return 0.0;
    }
    let mut covered = vec![false; sub.len()];
    let gram = |w: &[u8]| u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    let hist: Vec<u32> = history.windows(K).map(gram).collect();
    for i in 0..sub.len().saturating_sub(K - 1) {
        let g = gram(&sub[i..i + K]);
        let earlier = sub[..i + K - 1].windows(K).take(i).any(|w| gram(w) == g);
        if earlier || hist.contains(&g) {
            covered[i..i + K].iter_mut().for_each(|c| *c = true);
        }
    }
    let novel = covered.iter().filter(|c| !**c).count() as f64;
    let runs = covered
        .iter()
        .zip(std::iter::once(&false).chain(covered.iter()))
        .filter(|(c, prev)| **c && !**prev)
        .count() as f64;
    (novel * bits_per_char(sub) + runs * 12.0) / 8.0
}

pub fn hash_of<T: Hash + ?Sized>(s: &Keyed, v: &T) -> u64 {
    s.hash_one(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabets() {
        assert_eq!(bits_per_char(b"0123"), 10f64.log2());
        assert_eq!(bits_per_char(b"deadbeef42"), 4.0);
        assert_eq!(bits_per_char(b"hello"), 26f64.log2());
        assert_eq!(bits_per_char(b"mfzwizlt2"), 38f64.log2());
        assert_eq!(bits_per_char(b"aGVsbG8+"), 6.0);
        assert_eq!(bits_per_char(b"hbYbdn4yFp"), 6.0, "mixed case");
    }

    #[test]
    fn repetition_is_cheap_and_payload_is_not() {
        let payload = b"mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojq";
        let full = novel_bytes(payload, b"");
        assert!(full > 20.0, "{full}");
        // the same text again explains itself
        assert!(novel_bytes(payload, payload) < 3.0);
        // a PTR walk: only the changing octet is new
        assert!(novel_bytes(b"17010168192", b"16010168192") < 3.0);
        // a counter in front of a fixed token
        let a = novel_bytes(b"r1234apiupdates", b"r1233apiupdates");
        assert!(a < 5.0, "{a}");
    }

    #[test]
    fn bloom_and_doorkeeper() {
        let mut b = Bloom1024::default();
        assert!(!b.contains(42));
        b.insert(42);
        assert!(b.contains(42));
        let mut d = Doorkeeper::default();
        assert!(!d.admit(7, 1), "first subdomain");
        assert!(!d.admit(7, 1), "same subdomain again");
        assert!(d.admit(7, 2), "second distinct subdomain");
        assert!(!d.admit(8, 1), "another pair");
        d.reset();
        assert!(!d.admit(7, 3));
    }
}
