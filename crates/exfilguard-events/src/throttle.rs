//! Records per (client, domain) and per client are rate limited before the sinks, so a flood
//! of hostile queries cannot overwrite the audit trail (the rotated event log) with itself. A
//! suppressed record is counted: the next record of its pair carries `count` = the records it
//! stands for, and `suppressed()` feeds a metric. Tables are bounded (least recently used out).

use lru::LruCache;
use std::num::NonZeroUsize;
use std::time::Instant;

/// A token bucket.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Pair {
    bucket: Bucket,
    /// Records suppressed since the pair's last one.
    suppressed: u64,
}

pub struct Throttle {
    clients: LruCache<String, Bucket>,
    pairs: LruCache<(String, String), Pair>,
    client_rate: f64,
    client_burst: f64,
    pair_rate: f64,
    pair_burst: f64,
    suppressed: u64,
}

impl Throttle {
    /// `per_client`/`per_pair`: records per second allowed in the long run, with a burst of
    /// ten seconds' worth (at least 20 per pair).
    pub fn new(per_client: f64, per_pair: f64) -> Self {
        let n = NonZeroUsize::new(65_536).expect("non-zero");
        Self {
            clients: LruCache::new(n),
            pairs: LruCache::new(n),
            client_rate: per_client,
            client_burst: (per_client * 10.0).max(1.0),
            pair_rate: per_pair,
            pair_burst: (per_pair * 10.0).max(20.0),
            suppressed: 0,
        }
    }

    /// Whether a record of `client` about `domain` goes to the sinks now: `Some(n)` = yes, and
    /// it stands for `n` records (itself and those suppressed before it); `None` = suppressed.
    pub fn admit(&mut self, now: Instant, client: &str, domain: &str) -> Option<u64> {
        let fresh = Bucket {
            tokens: self.pair_burst,
            at: now,
        };
        let key = (client.to_string(), domain.to_string());
        let pair = self.pairs.get_or_insert_mut(key, || Pair {
            bucket: fresh,
            suppressed: 0,
        });
        let pair_ok = pair.bucket.take(now, self.pair_rate, self.pair_burst);
        let (rate, burst) = (self.client_rate, self.client_burst);
        let client_ok = pair_ok
            && self
                .clients
                .get_or_insert_mut(client.to_string(), || Bucket {
                    tokens: burst,
                    at: now,
                })
                .take(now, rate, burst);
        let pair = self
            .pairs
            .get_mut(&(client.to_string(), domain.to_string()))
            .expect("just inserted");
        if client_ok {
            let n = pair.suppressed + 1;
            pair.suppressed = 0;
            Some(n)
        } else {
            pair.suppressed += 1;
            self.suppressed += 1;
            None
        }
    }

    /// Records suppressed since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_and_counted_and_others_pass() {
        let mut t = Throttle::new(50.0, 1.0);
        let t0 = Instant::now();
        // one client, one domain: the burst, then one a second
        let passed = (0..1000)
            .filter(|_| t.admit(t0, "a", "x.test").is_some())
            .count();
        assert_eq!(passed, 20);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            t.admit(later, "a", "x.test"),
            Some(981),
            "the next record counts the suppressed"
        );
        // one client, many domains: the client's budget
        let passed = (0..100_000)
            .filter(|i| t.admit(later, "a", &format!("d{i}.test")).is_some())
            .count();
        assert!(passed <= 500, "{passed}");
        // another client is not starved
        assert!(t.admit(later, "b", "x.test").is_some());
        assert!(t.suppressed() > 99_000);
    }
}
