//! Drains a spool into a topic, in order, at least once: the cursor moves only past records the
//! broker acknowledged (acks=all, idempotent producer, so librdkafka's own retries never
//! duplicate). A broker outage only grows the spool; when the broker returns, the backlog leaves
//! first, then new records.

use crate::spool::{Pos, Spool};
use crate::{KafkaSettings, Result};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters the agent exports as metrics.
#[derive(Default, Debug)]
pub struct SenderStats {
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: std::sync::Mutex<String>,
}

pub fn producer(settings: &KafkaSettings, client_id: &str) -> Result<FutureProducer> {
    let mut c = settings.client_config(client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        // a failed batch comes back to us after this long and is retried from the spool
        .set("message.timeout.ms", "10000");
    Ok(c.create()?)
}

pub struct Sender {
    pub spool: Arc<Spool>,
    pub topic: String,
    pub producer: FutureProducer,
    /// To replace the producer after a fatal error (e.g. the idempotence state is lost when a
    /// broker cluster is rebuilt).
    pub settings: KafkaSettings,
    pub client_id: String,
    pub stats: Arc<SenderStats>,
    /// Records per round trip.
    pub batch: usize,
}

impl Sender {
    /// Runs until `stop`, then tries for up to `drain` to deliver what is left (the rest stays
    /// in the spool for the next start).
    pub fn run(mut self, stop: &AtomicBool, drain: Duration) {
        let rt = crate::runtime();
        let mut backoff = Duration::from_millis(200);
        let mut stop_at = None;
        let mut failures = 0u32;
        loop {
            if stop.load(Ordering::Relaxed) && stop_at.is_none() {
                stop_at = Some(std::time::Instant::now() + drain);
            }
            if stop_at.is_some_and(|t| std::time::Instant::now() >= t) {
                break;
            }
            let batch = match self.spool.peek(self.batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("reading the event spool: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if batch.is_empty() {
                if stop_at.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let (sent, failed) = rt.block_on(self.send_batch(&batch));
            if let Some(pos) = sent {
                if let Err(e) = self.spool.commit(pos) {
                    tracing::error!("committing the event spool: {e}");
                }
            }
            if let Some(err) = failed {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                *self.stats.last_error.lock().expect("lock") = err.clone();
                failures += 1;
                let fatal = self.producer.client().fatal_error();
                // After a failed round start a fresh producer: an idempotent producer can stay
                // stuck on a producer id a rebuilt broker no longer knows. Nothing is lost:
                // every unacknowledged record is still in the spool.
                if fatal.is_some() || failures >= 1 {
                    tracing::warn!(?fatal, failures, "recreating the kafka producer");
                    match producer(&self.settings, &self.client_id) {
                        Ok(p) => self.producer = p,
                        Err(e) => tracing::error!("recreating the kafka producer: {e}"),
                    }
                }
                tracing::warn!(
                    topic = %self.topic,
                    retry_in_ms = backoff.as_millis() as u64,
                    "kafka delivery failed, records stay spooled: {err}"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(200);
                failures = 0;
            }
        }
        let _ = self.producer.flush(Duration::from_secs(1));
    }

    /// Sends a batch; returns the position after the longest delivered prefix and the first
    /// error. Records after a failure are re-sent from the spool, never skipped.
    async fn send_batch(&self, batch: &[crate::spool::Record]) -> (Option<Pos>, Option<String>) {
        let mut futures = Vec::with_capacity(batch.len());
        for r in batch {
            let mut rec = FutureRecord::<str, str>::to(&self.topic).key(&r.key);
            if let Some(v) = &r.value {
                rec = rec.payload(v);
            }
            loop {
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((e, back)) => {
                        // local queue full: let librdkafka drain, then retry this record
                        if matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ) {
                            rec = back;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        return (None, Some(e.to_string()));
                    }
                }
            }
        }
        let mut sent = None;
        let mut failed = None;
        for (r, f) in batch.iter().zip(futures) {
            match f.await {
                Ok(Ok(_)) if failed.is_none() => {
                    sent = Some(r.next);
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(_)) => {} // after a gap: will be re-sent in order
                Ok(Err((e, _))) => {
                    failed.get_or_insert(e.to_string());
                }
                Err(_) => {
                    failed.get_or_insert("producer dropped".to_string());
                }
            }
        }
        (sent, failed)
    }
}
