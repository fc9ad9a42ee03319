//! Throughput of the detection brain: features alone, and the full classify path (lists,
//! features, batched DNN, verdicts) on a realistic mix of benign, tunnel and DGA names.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use exfilguard_detect::{extract, Detector, Lexicon};
use exfilguard_dns::DnsName;
use std::hint::black_box;

/// A fixed mix: mostly benign host names (what a filter sees), some tunnel and DGA names.
fn names() -> Vec<DnsName> {
    let sample = [
        "www.google.com",
        "api-global.netflix.com",
        "r2---sn-hgn7rne6.googlevideo.com",
        "e8840.e2.akamaiedge.net",
        "img01-olxua.akamaized.net",
        "mail.example.co.uk",
        "facebook.com",
        "fineboost-loghub.ap-southeast-1.log.aliyuncs.com",
        "q+aDvIPUCGcDHHAbNdlJFXaCj+nHxXN8w/lOW7b5iVSg+taEkbH8ssUnxRrPgND.5VGfRergsUjUbvbSOamAJcm21gqS00H9ji8yCNBw4lbTcfUKmfpKf3QnZEz8DUl.t.example.org",
        "dIUEABDEEOVAAAQAGUHVAUAAAAMFAAAAC37CAAFUWW22M6HRPM4PIAEAAHRNFCA.AAAEAQQCWZBIDM5EGV2ZHXRJGVSTL3UKEYGHUQLRODBRES633FAACXNR6HRX6GV.tunnel.tuns.org",
        "uhbqolxf.org",
        "ruinpotrelywakepotloseperfect.com",
    ];
    (0..1024)
        .map(|i| DnsName::parse(sample[i % sample.len()]).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let names = names();
    let lex = Lexicon::embedded();
    let detector = Detector::embedded().expect("embedded model");
    let mut g = c.benchmark_group("brain");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("split_1024", |b| {
        b.iter(|| {
            for n in &names {
                black_box(black_box(n).split());
            }
        })
    });
    g.bench_function("segment_1024", |b| {
        b.iter(|| {
            for n in &names {
                for l in n.labels() {
                    black_box(lex.words.segment(black_box(l)));
                }
            }
        })
    });
    g.bench_function("ngram_1024", |b| {
        b.iter(|| {
            for n in &names {
                for l in n.labels() {
                    black_box(lex.ngram.label(black_box(l)));
                }
            }
        })
    });
    g.bench_function("features_1024", |b| {
        b.iter(|| {
            for n in &names {
                black_box(extract(black_box(n), lex));
            }
        })
    });
    let feats: Vec<_> = names.iter().map(|n| extract(n, lex)).collect();
    g.bench_function("model_only_1024", |b| {
        b.iter(|| black_box(detector.model().predict(black_box(&feats)).unwrap()))
    });
    g.bench_function("classify_batch_1024", |b| {
        b.iter_batched(
            || (),
            |_| black_box(detector.classify_batch(&names).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_and_classify_batch_1024", |b| {
        let text: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        b.iter(|| {
            let parsed: Vec<DnsName> = text.iter().map(|t| DnsName::parse(t).unwrap()).collect();
            black_box(detector.classify_batch(&parsed).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
