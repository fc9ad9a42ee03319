//! Memory and speed of the behaviour tracker under a million distinct domains:
//! `cargo bench -p exfilguard-behaviour --bench memory`. Prints resident-memory growth (from
//! /proc/self/status) next to `Settings::memory_bound()`, and observations per second.

use exfilguard_behaviour::{Settings, Tracker};
use exfilguard_dns::DnsName;
use std::net::IpAddr;
use std::time::Instant;

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

fn main() {
    let s = Settings::default();
    let bound = s.memory_bound();
    // names are built before measuring, so only the tracker's memory is in the growth
    let n = 1_000_000u64;
    let one_off: Vec<DnsName> = (0..n)
        .map(|i| DnsName::parse(&format!("www.site{i}.com")).unwrap())
        .collect();
    let busy: Vec<[DnsName; 3]> = (0..n)
        .map(|i| {
            [
                DnsName::parse(&format!("a{i}x.busy{i}.net")).unwrap(),
                DnsName::parse(&format!("b{i}y.busy{i}.net")).unwrap(),
                DnsName::parse(&format!("c{i}z.busy{i}.net")).unwrap(),
            ]
        })
        .collect();
    let base = rss_kib();
    let mut t = Tracker::new(s.clone());
    let clients: Vec<IpAddr> = (0..1000u32)
        .map(|i| IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))
        .collect();

    let t0 = Instant::now();
    for (i, name) in one_off.iter().enumerate() {
        t.observe_query(i as u64, clients[i % clients.len()], name);
    }
    let one_off_rate = n as f64 / t0.elapsed().as_secs_f64();
    let after_one_off = rss_kib();
    println!(
        "1 M one-off domains: {:.2} M obs/s, {} pairs tracked, RSS +{:.1} MB",
        one_off_rate / 1e6,
        t.pairs(),
        (after_one_off.saturating_sub(base)) as f64 / 1024.0
    );

    let t0 = Instant::now();
    let mut obs = 0u64;
    for (i, names) in busy.iter().enumerate() {
        for (k, name) in names.iter().enumerate() {
            t.observe_query(
                (n + i as u64) * 10 + k as u64,
                clients[i % clients.len()],
                name,
            );
            obs += 1;
        }
        // DGA-style failures from every client
        t.observe_response(
            (n + i as u64) * 10,
            clients[i % clients.len()],
            &names[0],
            3,
            0.5,
        );
        obs += 1;
    }
    let busy_rate = obs as f64 / t0.elapsed().as_secs_f64();
    let grown = rss_kib().saturating_sub(base) as f64 * 1024.0;
    println!(
        "1 M domains with 3 subdomains each + 1 M NXDOMAINs: {:.2} M obs/s, {} pairs and {} clients tracked (max {} / {})",
        busy_rate / 1e6,
        t.pairs(),
        t.clients(),
        s.max_pairs,
        s.max_clients
    );
    println!(
        "RSS growth {:.1} MB; documented bound {:.1} MB ({})",
        grown / 1e6,
        bound as f64 / 1e6,
        if grown <= bound as f64 {
            "within"
        } else {
            "EXCEEDED"
        }
    );
    assert!(t.pairs() <= s.max_pairs && t.clients() <= s.max_clients);
    assert!(grown <= bound as f64 * 1.1, "memory bound exceeded");
}
