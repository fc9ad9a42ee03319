#![no_main]
//! Names from presentation text and from raw labels, then the features of each.
use exfilguard_detect::{extract, Lexicon};
use exfilguard_dns::DnsName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = DnsName::parse(text) {
            let f = extract(&n, Lexicon::embedded());
            assert!(f.values.iter().all(|v| v.is_finite()));
            let _ = n.registered_domain();
            assert_eq!(DnsName::parse(&n.to_string()).as_ref(), Ok(&n));
        }
    }
    // The same bytes as length-prefixed labels.
    let mut labels = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        labels.push(&tail[..len]);
        rest = &tail[len..];
    }
    if let Ok(n) = DnsName::from_labels(labels) {
        let f = extract(&n, Lexicon::embedded());
        assert!(f.values.iter().all(|v| v.is_finite()));
    }
});
