//! The fleet blocklist: a compacted topic keyed by registered domain. A value is a
//! [`BlockEntry`]; a null value (tombstone) unblocks. Every agent reads the topic from the
//! beginning with a plain partition assignment (no consumer group, so no rebalance delay and
//! every agent sees every entry) and applies entries to its kernel blocklist.

use crate::{KafkaError, KafkaSettings, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub domain: String,
    /// Verdict class that convicted it (tunnel, dga, …; "operator" for manual entries).
    pub class: String,
    pub score: f32,
    /// Host that first convicted it.
    pub host: String,
    /// Who wrote the entry: agent, operator, analytics.
    pub source: String,
    pub first_seen_ms: u64,
    /// Unix milliseconds after which the entry no longer applies (0: never).
    pub expires_ms: u64,
    #[serde(default)]
    pub reason: String,
}

impl BlockEntry {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }
}

/// What a fleet record asks of the local data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetUpdate {
    Block(BlockEntry),
    Unblock(String),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes one entry (or a tombstone) and waits for the broker's acknowledgement; used by
/// `exfilguard block|unblock`. Agents publish through their spool instead.
pub fn publish_now(
    settings: &KafkaSettings,
    client_id: &str,
    domain: &str,
    entry: Option<&BlockEntry>,
) -> Result<()> {
    let producer = crate::sender::producer(settings, client_id)?;
    let value = entry.map(|e| serde_json::to_string(e).expect("entry serialises"));
    let mut rec = FutureRecord::<str, str>::to(&settings.blocklist_topic).key(domain);
    if let Some(v) = &value {
        rec = rec.payload(v);
    }
    let rt = crate::runtime();
    rt.block_on(producer.send(rec, Duration::from_secs(5)))
        .map(|_| ())
        .map_err(|(e, _)| KafkaError::Client(e))
}

pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Option<FleetUpdate> {
    let domain = std::str::from_utf8(key?).ok()?.to_string();
    match payload {
        None => Some(FleetUpdate::Unblock(domain)),
        Some(p) => match serde_json::from_slice::<BlockEntry>(p) {
            Ok(e) if e.domain == domain => Some(FleetUpdate::Block(e)),
            Ok(e) => {
                tracing::warn!(key = %domain, domain = %e.domain, "fleet entry with a mismatched key ignored");
                None
            }
            Err(err) => {
                tracing::warn!(key = %domain, "undecodable fleet entry ignored: {err}");
                None
            }
        },
    }
}

/// Follows the blocklist topic from its beginning until `stop`, handing every update to
/// `apply` (and `None` at least every 200 ms, for expiry sweeps). Survives a dead broker
/// (librdkafka reconnects; the assignment stays).
pub fn follow(
    settings: &KafkaSettings,
    client_id: &str,
    stop: &AtomicBool,
    mut apply: impl FnMut(Option<FleetUpdate>),
) -> Result<()> {
    let consumer: BaseConsumer = settings
        .client_config(client_id)
        // required by librdkafka, unused: offsets are never committed, the topic is re-read
        .set("group.id", format!("{client_id}-fleet"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create()?;
    let topic = settings.blocklist_topic.as_str();
    let mut assigned = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // (re)assign when the topic's partition count is known or grows
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            let n = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if n > assigned {
                let mut tpl = TopicPartitionList::new();
                for p in 0..n as i32 {
                    tpl.add_partition_offset(topic, p, Offset::Beginning)?;
                }
                consumer.assign(&tpl)?;
                assigned = n;
                tracing::info!(topic, partitions = n, "following the fleet blocklist");
            }
        }
        if assigned == 0 {
            apply(None);
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)) {
                None => apply(None),
                Some(Ok(m)) => {
                    if let Some(u) = decode(m.key(), m.payload()) {
                        apply(Some(u));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("fleet blocklist consumer: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: &str) -> BlockEntry {
        BlockEntry {
            domain: d.into(),
            class: "tunnel".into(),
            score: 0.99,
            host: "a".into(),
            source: "agent".into(),
            first_seen_ms: 1,
            expires_ms: 0,
            reason: String::new(),
        }
    }

    #[test]
    fn decodes_entries_and_tombstones() {
        let e = entry("evil.com");
        let v = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            decode(Some(b"evil.com"), Some(&v)),
            Some(FleetUpdate::Block(e))
        );
        assert_eq!(
            decode(Some(b"evil.com"), None),
            Some(FleetUpdate::Unblock("evil.com".into()))
        );
        // hostile records are ignored, not applied
        assert_eq!(decode(Some(b"other.com"), Some(&v)), None);
        assert_eq!(decode(Some(b"x.com"), Some(b"{not json")), None);
        assert_eq!(decode(None, Some(&v)), None);
        let mut old = entry("x.com");
        old.expires_ms = 5;
        assert!(old.expired(6) && !old.expired(4));
        assert!(!entry("x.com").expired(u64::MAX));
    }
}
