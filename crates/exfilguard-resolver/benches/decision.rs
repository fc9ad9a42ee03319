//! Cost of the deployed decision at the front (`Judge::judge`: lists, convictions, the kernel's
//! prefilter, lookup-name rules, verdict cache, model, domain-level escalation) next to its peer,
//! the per-name `Detector::classify_batch`, in the same run; and the resident memory the model
//! and lexicon add. `cargo bench -p exfilguard-resolver --bench decision` (one thread: names/s
//! per core). Real names: the benign umbrella list from ../shared/data when present (else the
//! committed lookup names only), the committed unseen tunnel and DGA streams in model/eval.

use exfilguard_convict::{Client, Convictions};
use exfilguard_dataplane::KernelPolicy;
use exfilguard_detect::{Detector, NameList};
use exfilguard_dns::DnsName;
use exfilguard_resolver::judge::{Judge, Judgement};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// First column of a TSV with a header, or every line of a text list.
fn names_in(path: &Path, limit: usize) -> Vec<DnsName> {
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("(not found: {})", path.display());
        return Vec::new();
    };
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    text.lines()
        .skip(usize::from(tsv))
        .filter_map(|l| DnsName::parse(l.split('\t').next()?).ok())
        .take(limit)
        .collect()
}

fn judge(cache: usize) -> Judge {
    Judge::new(
        Detector::embedded().expect("embedded model"),
        KernelPolicy::default(),
        NameList::parse("").unwrap(),
        NameList::parse("").unwrap(),
        cache,
        Duration::from_secs(300),
        Duration::from_secs(3600),
        Convictions::new(Default::default()).unwrap(),
    )
}

/// names/s of `f` over `names`, repeated until at least `min` has passed.
fn rate(names: &[DnsName], min: Duration, mut f: impl FnMut(&[DnsName])) -> f64 {
    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed() < min {
        f(names);
        n += names.len();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let r = root();
    let base = rss_kib();
    let det = Detector::embedded().expect("embedded model");
    // one classification maps the lexicon and model pages in
    det.classify(&DnsName::parse("warm.up.example.com").unwrap())
        .unwrap();
    let model_kib = rss_kib().saturating_sub(base);

    let benign = names_in(
        &r.join("../shared/data/benign_umbrella_fqdn50k_2019.txt"),
        20_000,
    );
    let lookup = names_in(&r.join("model/eval/benign_lookup.tsv"), 3_000);
    let tunnel = names_in(&r.join("model/eval/unseen_tunnels.tsv"), 5_000);
    let dga = names_in(&r.join("model/eval/unseen_dga.tsv"), 5_000);
    // what a front sees: mostly benign, a little lookup traffic, a little malice
    let mut mix: Vec<DnsName> = Vec::new();
    mix.extend(benign.iter().cloned());
    mix.extend(lookup.iter().cloned());
    mix.extend(tunnel.iter().take(1_000).cloned());
    mix.extend(dga.iter().take(1_000).cloned());
    let min = Duration::from_secs(3);
    println!(
        "names: {} benign, {} lookup, {} tunnel, {} dga; mix {}",
        benign.len(),
        lookup.len(),
        tunnel.len(),
        dga.len(),
        mix.len()
    );
    println!(
        "RSS added by the embedded model + lexicon: {:.1} MiB",
        model_kib as f64 / 1024.0
    );

    let peer = rate(&mix, min, |ns| {
        for c in ns.chunks(1024) {
            black_box(det.classify_batch(c).unwrap());
        }
    });
    println!(
        "{:<52} {:>12.0} names/s",
        "peer: Detector::classify_batch (1024), every name", peer
    );

    let clients: Vec<Client> = (0..64u32)
        .map(|i| Client::Addr(std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])))
        .collect();
    for (label, set, cache) in [
        ("Judge::judge, mix, cache 65 536", &mix, 65_536usize),
        ("Judge::judge, mix, no cache", &mix, 0),
        ("Judge::judge, benign only, cache 65 536", &benign, 65_536),
        ("Judge::judge, lookup names only, no cache", &lookup, 0),
    ] {
        if set.is_empty() {
            continue;
        }
        let g = judge(cache);
        let (mut pass, mut model, mut refused) = (0usize, 0usize, 0usize);
        for (i, n) in set.iter().enumerate() {
            match g.judge(n, 1, &clients[i % clients.len()]).unwrap() {
                Judgement::Pass => pass += 1,
                Judgement::Refuse { .. } => refused += 1,
                _ => model += 1,
            }
        }
        let mut i = 0usize;
        let v = rate(set, min, |ns| {
            for n in ns {
                i += 1;
                black_box(g.judge(n, 1, &clients[i % clients.len()]).unwrap());
            }
        });
        println!(
            "{label:<52} {v:>12.0} names/s  ({:.2}× the peer; first pass: {:.1} % prefilter, {:.1} % judged, {:.1} % refused)",
            v / peer,
            100.0 * pass as f64 / set.len() as f64,
            100.0 * model as f64 / set.len() as f64,
            100.0 * refused as f64 / set.len() as f64,
        );
    }
}
