//! The name hashes the BPF programs use; this module must agree with `walk_name()` in
//! bpf/exfilguard.bpf.c. All hashing is over the lower-cased wire form (ASCII A-Z only).
//!
//! * full-name hash (allow cache, release tickets): 64-bit FNV-1a over the wire bytes, left
//!   to right, length bytes included, root byte excluded;
//! * suffix hash (blocklist): each label is hashed alone (FNV-1a over its length byte and
//!   bytes), then label hashes are mixed right to left, so the kernel gets the hash of every
//!   parent suffix in one pass over the name. Only the last 8 labels are checked, so a
//!   blocklist entry has at most 8 labels.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Longest blocklist entry, in labels (EG_MAX_SUFFIXES).
pub const MAX_SUFFIX_LABELS: usize = 8;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &c| (h ^ c as u64).wrapping_mul(FNV_PRIME))
}

fn mix(h: u64, label: u64) -> u64 {
    let h = (h ^ label).wrapping_mul(FNV_PRIME);
    h ^ (h >> 29)
}

/// Wire form of `labels`, lower-casing ASCII A-Z only (as the kernel does).
pub fn wire<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for l in labels {
        out.push(l.len() as u8);
        out.extend(l.iter().map(|c| c.to_ascii_lowercase()));
    }
    out
}

/// Wire form of a dotted name (no escapes: operators' list entries). Empty labels are skipped.
pub fn wire_from_dotted(name: &str) -> Vec<u8> {
    wire(
        name.trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::as_bytes),
    )
}

/// Full-name hash of a wire-format (already lower-cased) name.
pub fn name_hash(wire: &[u8]) -> u64 {
    fnv(FNV_OFFSET, wire)
}

/// What a release ticket binds: FNV-1a 64 over the whole DNS message, as `msg_hash()` in the
/// programs (not a secret: the ticket also names the message's id and length and lasts 2 s).
pub fn message_hash(msg: &[u8]) -> u64 {
    fnv(FNV_OFFSET, msg)
}

/// Identity of a question in the resolver front's events: the exact wire name (case kept), its
/// type and class. The kernel's allow-cache key is a keyed SipHash of the same bytes instead
/// (an unkeyed hash let a sender search for a name colliding with a cleared one).
pub fn question_hash(wire: &[u8], qtype: u16, qclass: u16) -> u64 {
    fnv(
        fnv(name_hash(wire), &qtype.to_be_bytes()),
        &qclass.to_be_bytes(),
    )
}

/// Blocklist key of a domain given as lower-cased labels; `None` beyond 8 labels.
pub fn suffix_hash<'a>(
    labels: impl DoubleEndedIterator<Item = &'a [u8]> + ExactSizeIterator,
) -> Option<u64> {
    if labels.len() > MAX_SUFFIX_LABELS {
        return None;
    }
    Some(labels.rev().fold(FNV_OFFSET, |h, l| {
        let lh = fnv(fnv(FNV_OFFSET, &[l.len() as u8]), l);
        mix(h, lh)
    }))
}

/// Blocklist key of a dotted domain (case-insensitive).
pub fn domain_hash(domain: &str) -> Option<u64> {
    let w = wire_from_dotted(domain);
    let l = labels(&w)?;
    suffix_hash(l.into_iter())
}

/// Labels of a wire-format name; `None` if it is not well formed.
pub fn labels(wire: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < wire.len() {
        let n = wire[i] as usize;
        if n == 0 || n > 63 || i + 1 + n > wire.len() {
            return None;
        }
        out.push(&wire[i + 1..i + 1 + n]);
        i += 1 + n;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_case_blind_and_suffix_specific() {
        assert_eq!(domain_hash("Example.COM"), domain_hash("example.com."));
        assert_ne!(domain_hash("example.com"), domain_hash("www.example.com"));
        assert_ne!(domain_hash("a.bc"), domain_hash("ab.c"));
        let full = wire_from_dotted("a.Tunnel.Example.COM");
        assert_eq!(
            name_hash(&full),
            name_hash(&wire_from_dotted("a.tunnel.example.com"))
        );
        assert_eq!(labels(&full).unwrap().len(), 4);
        assert!(labels(b"\x03abc\x40").is_none());
        assert!(domain_hash("a.b.c.d.e.f.g.h.i").is_none(), "over 8 labels");
    }
}
