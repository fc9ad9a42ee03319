#![no_main]
use exfilguard_dns::{looks_like_dns, parse_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_dns(data);
    if let Ok(m) = parse_message(data) {
        for q in &m.questions {
            let _ = q.name.registered_domain();
        }
    }
});
