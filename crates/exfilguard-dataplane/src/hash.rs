//! The name hash the BPF programs use for the blocklist and the allow cache: 64-bit FNV-1a over
//! the lower-cased wire-format name (length bytes included, root byte excluded), fed from the
//! last byte to the first. Reading right to left lets the kernel hash every parent suffix in one
//! pass; this module must agree with `walk_name()` in bpf/exfilguard.bpf.c byte for byte.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

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

/// Hash of a wire-format name (right-to-left FNV-1a).
pub fn name_hash(wire: &[u8]) -> u64 {
    wire.iter()
        .rev()
        .fold(FNV_OFFSET, |h, &c| (h ^ c as u64).wrapping_mul(FNV_PRIME))
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
    fn suffix_hash_is_a_prefix_of_the_right_to_left_walk() {
        let full = wire_from_dotted("a.Tunnel.Example.COM");
        let suffix = wire_from_dotted("example.com");
        assert!(full.ends_with(&suffix));
        assert_eq!(
            name_hash(&suffix),
            name_hash(&full[full.len() - suffix.len()..])
        );
        assert_ne!(name_hash(&suffix), name_hash(&full));
        assert_eq!(labels(&full).unwrap().len(), 4);
        assert!(labels(b"\x03abc\x40").is_none());
    }
}
