//! The fuzz targets' smoke run on stable, on every `cargo test`: every committed corpus file
//! (`fuzz/seeds/<target>/`) and seeded random mutations of them go through the same bodies
//! the cargo-fuzz binaries run (`fuzz/src/lib.rs`, compiled in here). A panic or a failed
//! check fails the test and leaves the input in `$CARGO_TARGET_TMPDIR/fuzz_failures/`, ready
//! for `cargo fuzz run -s none TARGET FILE`. See docs/fuzzing.md.

#[path = "../../../fuzz/src/lib.rs"]
mod checks;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Random inputs per target, from a fixed seed (the same ones on every run).
const MUTATIONS: usize = 3000;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seeds_dir().join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("corpus entry").path();
            let name = p.file_name().expect("file").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs one input; on a panic, keeps the input and returns a description.
fn run(target: &str, f: fn(&[u8]), label: &str, data: &[u8]) -> Option<String> {
    if catch_unwind(AssertUnwindSafe(|| f(data))).is_ok() {
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_failures");
    std::fs::create_dir_all(&dir).expect("failure dir");
    let path = dir.join(format!("{target}-{label}"));
    std::fs::write(&path, data).expect("keeping the failing input");
    Some(format!("{target}: {label} (kept as {})", path.display()))
}

#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for (name, _) in checks::TARGETS {
        assert!(
            targets.join(format!("{name}.rs")).is_file(),
            "fuzz/fuzz_targets/{name}.rs"
        );
        corpus(name);
    }
}

#[test]
fn corpus_files_pass_every_target() {
    let mut failures = Vec::new();
    for &(target, f) in checks::TARGETS {
        for (name, data) in corpus(target) {
            failures.extend(run(target, f, &name, &data));
        }
    }
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}

/// A few libFuzzer-style edits of a corpus file: bit flips, byte sets, boundary values,
/// insertions, deletions, duplicated runs, splices with another file, truncation.
fn mutate(rng: &mut StdRng, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut d = files[rng.random_range(0..files.len())].1.clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = d.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..8) {
            0 if len > 0 => d[at.min(len - 1)] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => d[at.min(len - 1)] = rng.random(),
            2 if len > 0 => {
                d[at.min(len - 1)] =
                    [0, 1, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xff][rng.random_range(0..8)]
            }
            3 => {
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                d.splice(at..at, bytes);
            }
            4 if at < len => {
                let end = rng.random_range(at..=len);
                d.drain(at..end);
            }
            5 if at < len => {
                let end = rng.random_range(at..=len.min(at + 64));
                let run = d[at..end].to_vec();
                d.splice(at..at, run);
            }
            6 => {
                let other = &files[rng.random_range(0..files.len())].1;
                let from = rng.random_range(0..=other.len());
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            _ => d.truncate(at),
        }
    }
    d
}

#[test]
fn mutated_inputs_pass_every_target() {
    let mut failures = Vec::new();
    for (i, &(target, f)) in checks::TARGETS.iter().enumerate() {
        let files = corpus(target);
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + i as u64);
        for n in 0..MUTATIONS {
            let data = if n % 10 == 0 {
                // now and then pure noise, of any length up to 1 KiB
                let len = rng.random_range(0..1024);
                (0..len).map(|_| rng.random()).collect()
            } else {
                mutate(&mut rng, &files)
            };
            failures.extend(run(target, f, &format!("mutation-{n}"), &data));
        }
    }
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}
