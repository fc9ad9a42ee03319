//! Query names: parsing from presentation or wire form, normalisation, and the split into
//! "registered domain" (via the Public Suffix List) and the part left of it.
//!
//! Names are kept as raw label bytes with case preserved: tunnels encode data in case
//! (base64) and in non-ASCII bytes (iodine's base128), and both are detection signals.
//! The lower-cased, IDNA-normalised form is what policy lists and the PSL see.

use std::fmt;

/// Longest name on the wire, length octets included (RFC 1035 §2.3.4).
pub const MAX_WIRE_LEN: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("empty label at byte {0}")]
    EmptyLabel(usize),
    #[error("label of {0} bytes is longer than 63")]
    LabelTooLong(usize),
    #[error("name of {0} wire bytes is longer than 255")]
    NameTooLong(usize),
    #[error("bad escape at byte {0}")]
    BadEscape(usize),
}

/// A DNS name: label bytes exactly as queried (case preserved), without the root label.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DnsName {
    /// Label bytes back to back.
    bytes: Vec<u8>,
    /// End offset of each label in `bytes`, left to right.
    ends: Vec<u8>,
}

impl DnsName {
    /// Parses presentation format: optional trailing dot, `\DDD` and `\X` escapes (as dig and
    /// zone files write them). Non-ASCII text is kept as its UTF-8 bytes; it is IDNA-mapped only
    /// in [`DnsName::normalized`], so the bytes a tunnel put on the wire stay visible to features.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let src = text.as_bytes();
        let mut bytes = Vec::with_capacity(src.len());
        let mut ends = Vec::new();
        let mut label_start = 0usize;
        let mut i = 0usize;
        if src == b"." || src.is_empty() {
            return Err(NameError::Empty);
        }
        while i < src.len() {
            let c = src[i];
            match c {
                b'.' => {
                    if bytes.len() == label_start {
                        return Err(NameError::EmptyLabel(i));
                    }
                    close_label(&bytes, &mut ends, label_start)?;
                    label_start = bytes.len();
                    i += 1;
                    if i == src.len() {
                        // Trailing dot: the root label.
                        break;
                    }
                }
                b'\\' => {
                    let rest = &src[i + 1..];
                    if rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit) {
                        let v = (rest[0] - b'0') as u32 * 100
                            + (rest[1] - b'0') as u32 * 10
                            + (rest[2] - b'0') as u32;
                        if v > 255 {
                            return Err(NameError::BadEscape(i));
                        }
                        bytes.push(v as u8);
                        i += 4;
                    } else if let Some(&x) = rest.first() {
                        if x.is_ascii_digit() {
                            return Err(NameError::BadEscape(i));
                        }
                        bytes.push(x);
                        i += 2;
                    } else {
                        return Err(NameError::BadEscape(i));
                    }
                }
                _ => {
                    bytes.push(c);
                    i += 1;
                }
            }
            if bytes.len() - label_start > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong(bytes.len() - label_start));
            }
        }
        if bytes.len() > label_start {
            close_label(&bytes, &mut ends, label_start)?;
        }
        Self::from_parts(bytes, ends)
    }

    /// Builds a name from wire labels (e.g. as a DNS message parser yields them).
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, NameError> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (n, label) in labels.into_iter().enumerate() {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(n));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong(label.len()));
            }
            bytes.extend_from_slice(label);
            if bytes.len() > MAX_WIRE_LEN {
                return Err(NameError::NameTooLong(bytes.len() + ends.len() + 2));
            }
            ends.push(bytes.len() as u8);
        }
        Self::from_parts(bytes, ends)
    }

    fn from_parts(bytes: Vec<u8>, ends: Vec<u8>) -> Result<Self, NameError> {
        if ends.is_empty() {
            return Err(NameError::Empty);
        }
        // Wire length: one length octet per label, the label bytes, and the root octet.
        let wire = bytes.len() + ends.len() + 1;
        if wire > MAX_WIRE_LEN {
            return Err(NameError::NameTooLong(wire));
        }
        Ok(Self { bytes, ends })
    }

    pub fn label_count(&self) -> usize {
        self.ends.len()
    }

    /// Label `i`, counting from the left.
    pub fn label(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &[u8]> + ExactSizeIterator + '_ {
        (0..self.ends.len()).map(move |i| self.label(i))
    }

    /// Length on the wire, including length octets and the root label.
    pub fn wire_len(&self) -> usize {
        self.bytes.len() + self.ends.len() + 1
    }

    /// Lower-case, IDNA (UTS #46) mapped, dot-joined ASCII form used for lists and the PSL.
    /// Labels that are not valid IDNA (raw binary, as tunnels send) are kept byte for byte,
    /// ASCII-lower-cased, with non-printable bytes as `\DDD`.
    pub fn normalized(&self) -> String {
        let mut out = String::with_capacity(self.bytes.len() + self.ends.len());
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                out.push('.');
            }
            push_normalized_label(&mut out, label);
        }
        out
    }

    /// Splits the name at its registered domain (public suffix plus one label).
    pub fn split(&self) -> NameSplit {
        let n = self.label_count();
        // Hot path: the PSL only looks at the right-most labels, and those are ASCII in nearly
        // every query; lower-case them into a stack buffer instead of allocating.
        let mut buf = [0u8; MAX_WIRE_LEN];
        let mut len = 0;
        let mut ascii = true;
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            for &b in label {
                ascii &= b.is_ascii() && b != b'.';
                buf[len] = b.to_ascii_lowercase();
                len += 1;
            }
        }
        let joined: std::borrow::Cow<[u8]> = if ascii {
            std::borrow::Cow::Borrowed(&buf[..len])
        } else {
            let lower: Vec<Vec<u8>> = self.labels().map(normalized_label_bytes).collect();
            std::borrow::Cow::Owned(lower.join(&b'.'))
        };
        let suffix_labels = match psl::suffix(&joined) {
            Some(s) => s.as_bytes().iter().filter(|&&b| b == b'.').count() + 1,
            None => 1,
        }
        .min(n);
        // The registered domain needs one label left of the suffix; a bare suffix has none.
        let registered_labels = if n > suffix_labels {
            suffix_labels + 1
        } else {
            0
        };
        NameSplit {
            labels: n,
            suffix_labels,
            registered_labels,
        }
    }
}

fn close_label(bytes: &[u8], ends: &mut Vec<u8>, label_start: usize) -> Result<(), NameError> {
    let len = bytes.len() - label_start;
    if len > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong(len));
    }
    let wire = bytes.len() + ends.len() + 2;
    if wire > MAX_WIRE_LEN {
        return Err(NameError::NameTooLong(wire));
    }
    ends.push(bytes.len() as u8);
    Ok(())
}

fn normalized_label_bytes(label: &[u8]) -> Vec<u8> {
    let mut s = String::new();
    push_normalized_label(&mut s, label);
    s.into_bytes()
}

fn push_normalized_label(out: &mut String, label: &[u8]) {
    if label.is_ascii() {
        for &b in label {
            push_escaped(out, b.to_ascii_lowercase());
        }
        return;
    }
    if let Ok(text) = std::str::from_utf8(label) {
        if let Ok(ascii) = idna::domain_to_ascii(text) {
            if !ascii.contains('.') && !ascii.is_empty() {
                // UTS #46 without STD3 rules passes ASCII controls and spaces through into
                // the punycode: escape them like every other label byte
                for b in ascii.bytes() {
                    push_escaped(out, b);
                }
                return;
            }
        }
    }
    for &b in label {
        push_escaped(out, b.to_ascii_lowercase());
    }
}

fn push_escaped(out: &mut String, b: u8) {
    match b {
        b'.' | b'\\' => {
            out.push('\\');
            out.push(b as char);
        }
        0x21..=0x7e => out.push(b as char),
        _ => {
            out.push('\\');
            out.push_str(&format!("{b:03}"));
        }
    }
}

/// Where a name splits into subdomain | registered domain | public suffix, in labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameSplit {
    pub labels: usize,
    /// Labels of the public suffix (e.g. 2 for `co.uk`).
    pub suffix_labels: usize,
    /// Labels of the registered domain, 0 if the name is a bare public suffix.
    pub registered_labels: usize,
}

impl NameSplit {
    /// Number of labels left of the registered domain (where tunnels put their payload).
    pub fn subdomain_labels(&self) -> usize {
        self.labels - self.registered_labels.max(self.suffix_labels)
    }

    /// Index of the registered domain's own label (e.g. `example` in `a.example.co.uk`).
    pub fn registrable_label(&self) -> Option<usize> {
        (self.registered_labels > 0).then(|| self.labels - self.registered_labels)
    }
}

impl DnsName {
    /// The registered domain in normalised form, or None for a bare public suffix.
    pub fn registered_domain(&self) -> Option<String> {
        let split = self.split();
        let first = split.registrable_label()?;
        Some(self.normalized_from(first))
    }

    /// Normalised form of the labels from `first` to the right end.
    pub fn normalized_from(&self, first: usize) -> String {
        let mut out = String::new();
        for i in first..self.label_count() {
            if i > first {
                out.push('.');
            }
            push_normalized_label(&mut out, self.label(i));
        }
        out
    }
}

impl fmt::Display for DnsName {
    /// Presentation form with case preserved and non-printable bytes escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(self.bytes.len() + self.ends.len());
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                s.push('.');
            }
            for &b in label {
                push_escaped(&mut s, b);
            }
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DnsName({self})")
    }
}

impl std::str::FromStr for DnsName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_case_and_trailing_dot() {
        let n = DnsName::parse("Ab\\065\\.c.Example.COM.").unwrap();
        assert_eq!(n.label_count(), 3);
        assert_eq!(n.label(0), b"AbA.c");
        assert_eq!(n.normalized(), "aba\\.c.example.com");
        assert_eq!(n.to_string(), "AbA\\.c.Example.COM");
        let bin = DnsName::parse("\\000\\255x.example.org").unwrap();
        assert_eq!(bin.label(0), &[0, 255, b'x']);
        assert_eq!(bin.normalized(), "\\000\\255x.example.org");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(DnsName::parse(""), Err(NameError::Empty));
        assert_eq!(DnsName::parse("."), Err(NameError::Empty));
        assert!(matches!(
            DnsName::parse("a..b"),
            Err(NameError::EmptyLabel(_))
        ));
        assert!(matches!(
            DnsName::parse("a\\25"),
            Err(NameError::BadEscape(_))
        ));
        assert!(matches!(
            DnsName::parse("a\\256b"),
            Err(NameError::BadEscape(_))
        ));
        assert!(matches!(
            DnsName::parse("a\\"),
            Err(NameError::BadEscape(_))
        ));
        let long_label = "a".repeat(64) + ".com";
        assert_eq!(
            DnsName::parse(&long_label),
            Err(NameError::LabelTooLong(64))
        );
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert!(matches!(
            DnsName::parse(&long_name),
            Err(NameError::NameTooLong(_))
        ));
        let ok_name = vec!["a".repeat(63); 3].join(".") + "." + &"b".repeat(61);
        assert_eq!(DnsName::parse(&ok_name).unwrap().wire_len(), 255);
    }

    #[test]
    fn registered_domain_via_psl() {
        let n = DnsName::parse("a.b.Example.co.uk").unwrap();
        assert_eq!(n.registered_domain().as_deref(), Some("example.co.uk"));
        let s = n.split();
        assert_eq!(s.subdomain_labels(), 2);
        assert_eq!(s.registrable_label(), Some(2));
        let bare = DnsName::parse("co.uk").unwrap();
        assert_eq!(bare.registered_domain(), None);
        assert_eq!(bare.split().subdomain_labels(), 0);
        let tld = DnsName::parse("com").unwrap();
        assert_eq!(tld.registered_domain(), None);
        // Unknown TLDs fall back to the PSL's implicit "*" rule.
        let internal = DnsName::parse("x.corp.internal").unwrap();
        assert_eq!(
            internal.registered_domain().as_deref(),
            Some("corp.internal")
        );
    }

    #[test]
    fn idna_labels_normalise_to_punycode() {
        let n = DnsName::parse("Bücher.example.DE").unwrap();
        assert_eq!(n.normalized(), "xn--bcher-kva.example.de");
        let idn_tld = DnsName::parse("www.例え.テスト").unwrap();
        assert!(idn_tld.normalized().starts_with("www.xn--"));
    }

    #[test]
    fn idna_labels_with_controls_stay_escaped() {
        // found by the name_parse fuzz target: a NUL, a CR and a space beside a non-ASCII
        // letter made IDNA succeed and the raw bytes reached the normalised text (logs, lists)
        let n = DnsName::from_labels([&b"a\0\r b\xc3\xa9"[..], &b"example"[..]]).unwrap();
        let norm = n.normalized();
        assert!(norm.bytes().all(|b| b.is_ascii_graphic()), "{norm:?}");
        assert!(norm.starts_with("xn--a\\000\\013\\032b"), "{norm:?}");
        // and normalising is idempotent
        let again = DnsName::parse(&norm).unwrap().normalized();
        assert_eq!(again, norm);
    }
}
