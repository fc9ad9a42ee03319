#![no_main]
//! Body: `exfilguard_fuzz::name_parse` (fuzz/src/lib.rs), also run over the corpus by `cargo test`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| exfilguard_fuzz::name_parse(data));
