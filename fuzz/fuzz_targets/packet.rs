#![no_main]
use exfilguard_dns::{dns_payloads, parse_message, LinkType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for link in [LinkType::Ethernet, LinkType::RawIp, LinkType::LinuxSll] {
        if let Ok(payloads) = dns_payloads(data, link) {
            for p in payloads {
                let _ = parse_message(p.payload);
            }
        }
    }
});
