#![no_main]
//! Body: `exfilguard_fuzz::packet` (fuzz/src/lib.rs), also run over the corpus by `cargo test`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| exfilguard_fuzz::packet(data));
