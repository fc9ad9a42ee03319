//! Fleet-wide aggregates over the event topic. Runs in a consumer group, so more instances
//! split the partitions (events are keyed by host, so one host's events stay in one instance).
//! A domain convicted on at least `min_hosts` distinct hosts within the window is published to
//! the blocklist topic: the fleet blocks what several hosts saw, even where each host's agent
//! only reported (monitor mode) or saw too little.

use crate::fleet::{now_ms, BlockEntry};
use crate::{KafkaSettings, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct AnalyticsConfig {
    pub min_hosts: usize,
    pub window_ms: u64,
    /// Most domains tracked at once (least recently seen evicted first).
    pub max_domains: usize,
    /// Hosts remembered per domain (enough to decide `min_hosts`).
    pub max_hosts_per_domain: usize,
    /// Lifetime of the blocklist entries it writes (0: forever).
    pub ttl_ms: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            min_hosts: 3,
            window_ms: 3_600_000,
            max_domains: 200_000,
            max_hosts_per_domain: 64,
            ttl_ms: 86_400_000,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DomainStats {
    pub queries: u64,
    pub malicious: u64,
    /// Bytes of the names left of the registered domain in malicious queries: the encoded
    /// payload a tunnel carried.
    pub payload_bytes: u64,
    #[serde(skip)]
    pub hosts: HashSet<String>,
    #[serde(skip)]
    pub malicious_hosts: HashSet<String>,
    pub last_seen_ms: u64,
    pub published: bool,
}

#[derive(Default)]
pub struct Aggregates {
    pub domains: HashMap<String, DomainStats>,
    pub hosts: HashMap<String, u64>,
    pub events: u64,
    pub published: u64,
}

/// The facts analytics needs from one OCSF event.
pub struct Observation<'a> {
    pub host: &'a str,
    pub name: &'a str,
    pub domain: &'a str,
    pub class: &'a str,
    pub score: f32,
    pub time_ms: u64,
}

pub fn observation(ev: &Value) -> Option<Observation<'_>> {
    let x = &ev["unmapped"]["exfilguard"];
    Some(Observation {
        host: ev["device"]["hostname"].as_str()?,
        name: ev["query"]["hostname"].as_str()?,
        domain: x["registered_domain"].as_str()?,
        class: x["verdict"]["class"].as_str().unwrap_or("unknown"),
        score: x["verdict"]["score"].as_f64().unwrap_or(0.0) as f32,
        time_ms: ev["time"].as_u64().unwrap_or(0),
    })
}

impl Aggregates {
    /// Folds one event in; returns a blocklist entry when the domain just crossed `min_hosts`.
    pub fn observe(&mut self, cfg: &AnalyticsConfig, o: &Observation) -> Option<BlockEntry> {
        self.events += 1;
        *self.hosts.entry(o.host.to_string()).or_default() += 1;
        if self.domains.len() >= cfg.max_domains && !self.domains.contains_key(o.domain) {
            self.evict(cfg, o.time_ms);
        }
        let d = self.domains.entry(o.domain.to_string()).or_default();
        if o.time_ms.saturating_sub(d.last_seen_ms) > cfg.window_ms {
            // a new window for this domain
            let published = d.published;
            *d = DomainStats {
                published,
                ..Default::default()
            };
        }
        d.last_seen_ms = d.last_seen_ms.max(o.time_ms);
        d.queries += 1;
        if d.hosts.len() < cfg.max_hosts_per_domain {
            d.hosts.insert(o.host.to_string());
        }
        let malicious = matches!(o.class, "tunnel" | "dga" | "c2" | "blocklisted");
        if !malicious {
            return None;
        }
        d.malicious += 1;
        d.payload_bytes += o.name.len().saturating_sub(o.domain.len() + 1) as u64;
        if d.malicious_hosts.len() < cfg.max_hosts_per_domain {
            d.malicious_hosts.insert(o.host.to_string());
        }
        if d.published || d.malicious_hosts.len() < cfg.min_hosts {
            return None;
        }
        d.published = true;
        self.published += 1;
        let mut hosts: Vec<&String> = d.malicious_hosts.iter().collect();
        hosts.sort();
        Some(BlockEntry {
            domain: o.domain.to_string(),
            class: o.class.to_string(),
            score: o.score,
            host: hosts[0].clone(),
            source: "analytics".into(),
            first_seen_ms: o.time_ms,
            expires_ms: if cfg.ttl_ms == 0 {
                0
            } else {
                now_ms() + cfg.ttl_ms
            },
            reason: format!(
                "convicted on {} hosts, {} malicious queries, {} bytes of encoded names",
                d.malicious_hosts.len(),
                d.malicious,
                d.payload_bytes
            ),
        })
    }

    fn evict(&mut self, cfg: &AnalyticsConfig, now: u64) {
        self.domains
            .retain(|_, d| now.saturating_sub(d.last_seen_ms) <= cfg.window_ms);
        if self.domains.len() >= cfg.max_domains {
            // still full: drop the least recently seen tenth
            let mut seen: Vec<u64> = self.domains.values().map(|d| d.last_seen_ms).collect();
            seen.sort_unstable();
            let cut = seen[seen.len() / 10];
            self.domains.retain(|_, d| d.last_seen_ms > cut);
        }
    }

    /// Top domains by malicious payload, for the periodic summary.
    pub fn top(&self, n: usize) -> Vec<(String, usize, &DomainStats)> {
        let mut v: Vec<_> = self
            .domains
            .iter()
            .filter(|(_, d)| d.malicious > 0)
            .map(|(k, d)| (k.clone(), d.malicious_hosts.len(), d))
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2.payload_bytes));
        v.truncate(n);
        v
    }
}

/// Consumes the event topic in consumer group `group` until `stop`; publishes convictions to
/// the blocklist topic; calls `report` with the aggregates every `report_every`.
pub fn run(
    settings: &KafkaSettings,
    group: &str,
    cfg: &AnalyticsConfig,
    stop: &AtomicBool,
    report_every: Duration,
    mut report: impl FnMut(&Aggregates),
) -> Result<()> {
    let consumer: BaseConsumer = settings
        .client_config(&format!("{group}-analytics"))
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[settings.events_topic.as_str()])?;
    let mut agg = Aggregates::default();
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            match msg {
                Ok(m) => {
                    let Some(ev) = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    else {
                        continue;
                    };
                    if let Some(entry) = observation(&ev).and_then(|o| agg.observe(cfg, &o)) {
                        tracing::info!(domain = %entry.domain, "{}", entry.reason);
                        if let Err(e) = crate::fleet::publish_now(
                            settings,
                            &format!("{group}-analytics"),
                            &entry.domain,
                            Some(&entry),
                        ) {
                            tracing::error!(domain = %entry.domain, "publishing a fleet conviction: {e}");
                        }
                    }
                }
                Err(e) => tracing::debug!("analytics consumer: {e}"),
            }
        }
        if last.elapsed() >= report_every {
            report(&agg);
            last = std::time::Instant::now();
        }
    }
    report(&agg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ob<'a>(host: &'a str, name: &'a str, class: &'a str, t: u64) -> Observation<'a> {
        Observation {
            host,
            name,
            domain: "evil.com",
            class,
            score: 0.99,
            time_ms: t,
        }
    }

    #[test]
    fn convicts_once_when_enough_hosts_agree() {
        let cfg = AnalyticsConfig {
            min_hosts: 3,
            ..Default::default()
        };
        let mut a = Aggregates::default();
        assert!(a
            .observe(&cfg, &ob("h1", "aaaa.evil.com", "tunnel", 1))
            .is_none());
        assert!(a
            .observe(&cfg, &ob("h1", "bbbb.evil.com", "tunnel", 2))
            .is_none());
        // benign queries from other hosts do not count
        assert!(a
            .observe(&cfg, &ob("h2", "www.evil.com", "benign", 3))
            .is_none());
        assert!(a
            .observe(&cfg, &ob("h2", "cccc.evil.com", "tunnel", 4))
            .is_none());
        let e = a
            .observe(&cfg, &ob("h3", "dddd.evil.com", "tunnel", 5))
            .expect("third host convicts");
        assert_eq!(e.domain, "evil.com");
        assert_eq!(e.source, "analytics");
        assert!(e.reason.contains("3 hosts"), "{}", e.reason);
        assert!(a
            .observe(&cfg, &ob("h4", "eeee.evil.com", "tunnel", 6))
            .is_none());
        assert_eq!(a.domains["evil.com"].payload_bytes, 4 * 5);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = AnalyticsConfig {
            max_domains: 1000,
            ..Default::default()
        };
        let mut a = Aggregates::default();
        let names: Vec<String> = (0..10_000).map(|i| format!("d{i}.com")).collect();
        for (i, n) in names.iter().enumerate() {
            let o = Observation {
                host: "h",
                name: n,
                domain: n,
                class: "benign",
                score: 0.0,
                time_ms: i as u64,
            };
            a.observe(&cfg, &o);
        }
        assert!(a.domains.len() <= 1000, "{}", a.domains.len());
    }
}
