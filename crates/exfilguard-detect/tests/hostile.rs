//! Hostile names never crash, hang or produce non-finite features.

use exfilguard_detect::{extract, Detector, Lexicon};
use exfilguard_dns::DnsName;
use proptest::prelude::*;
use std::sync::OnceLock;

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| Detector::embedded().expect("embedded model"))
}

fn check(name: &DnsName) {
    let f = extract(name, Lexicon::embedded());
    assert!(
        f.values.iter().all(|v| v.is_finite()),
        "{name:?}: {:?}",
        f.values
    );
    let v = detector().classify(name).unwrap();
    assert!((0.0..=1.0).contains(&v.score), "{name:?}: {}", v.score);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_label_bytes(labels in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=63), 1..=8)) {
        if let Ok(name) = DnsName::from_labels(labels.iter().map(Vec::as_slice)) {
            check(&name);
            // Presentation form round-trips to the same label bytes.
            let again = DnsName::parse(&name.to_string()).unwrap();
            prop_assert_eq!(&again, &name);
        }
    }

    #[test]
    fn arbitrary_text(text in "\\PC{0,300}") {
        if let Ok(name) = DnsName::parse(&text) {
            check(&name);
        }
    }

    #[test]
    fn dns_like_text(text in "[a-zA-Z0-9+/=_\\-\\\\.]{1,260}") {
        if let Ok(name) = DnsName::parse(&text) {
            check(&name);
        }
    }
}

#[test]
fn extremes() {
    let max = [
        &"a".repeat(63)[..],
        &"b".repeat(63),
        &"c".repeat(63),
        &"d".repeat(61),
    ]
    .join(".");
    let binary = (0..4)
        .map(|i| {
            (0..63)
                .map(|j| format!("\\{:03}", (i * 63 + j) % 256))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".");
    for n in [
        max.as_str(),
        "a",
        "com",
        "co.uk",
        "xn--.com",
        "xn--zz-zz.xn--",
        "-.-.-",
        &binary[..250],
    ] {
        if let Ok(name) = DnsName::parse(n) {
            check(&name);
        }
    }
}
