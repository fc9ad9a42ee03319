//! Accounting for floods of blocked queries. The kernel drops every query under a blocked
//! domain (or from a quarantined process) but hands over one record per `eg_quiet` key
//! (domain, socket, source) and second, carrying the key's running drop total. This keeps a
//! flood from costing a ring record, a model call and an event per packet, and still lets
//! every drop reach the sinks: each record says how many drops it stands for (OCSF `count`),
//! and a sweep reports the drops after a key's last record from the kernel map.

use exfilguard_dataplane::QuietKey;
use exfilguard_events::Detection;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Matches the kernel's `EG_QUIET_NS`: a key gets at most one record per second.
const WINDOW: Duration = Duration::from_secs(1);
/// A key with nothing left to report is forgotten after this long.
const IDLE: Duration = Duration::from_secs(30);
/// The kernel map's size; beyond it the oldest keys are forgotten.
const MAX_KEYS: usize = 16_384;

struct Flood {
    /// Drops already in a record (the kernel's total when it was last reported).
    reported: u64,
    /// The key's last record, the template of the sweep's summaries.
    last: Box<Detection>,
    at: Instant,
}

#[derive(Default)]
pub struct Floods {
    keys: HashMap<QuietKey, Flood>,
}

impl Floods {
    /// The drops a kernel record stands for, or `None` when a sweep has already reported them
    /// all (the record is then a duplicate and is not sent).
    pub fn count(&mut self, key: QuietKey, drops: u32) -> Option<u64> {
        let Some(f) = self.keys.get(&key) else {
            return Some(u64::from(drops));
        };
        // the record's total is the low 32 bits of the kernel's; records come at least once
        // a second, so the difference is small and wrapping arithmetic is exact
        let delta = drops.wrapping_sub(f.reported as u32);
        (delta != 0 && delta < 1 << 31).then_some(u64::from(delta))
    }

    /// Remembers a record sent for `key`, which brought the reported total to `total`.
    pub fn sent(&mut self, key: QuietKey, det: &Detection, now: Instant) {
        let base = self.keys.get(&key).map_or(0, |f| f.reported);
        let reported = base + det.count.unwrap_or(1);
        self.keys.insert(
            key,
            Flood {
                reported,
                last: Box::new(det.clone()),
                at: now,
            },
        );
        if self.keys.len() > MAX_KEYS {
            self.forget_oldest();
        }
    }

    /// Summaries for keys whose kernel total grew since their last record a second or more
    /// ago; `total_of` reads the kernel map. Idle keys are forgotten.
    pub fn sweep(
        &mut self,
        now: Instant,
        mut total_of: impl FnMut(&QuietKey) -> Option<u64>,
    ) -> Vec<Detection> {
        let mut out = Vec::new();
        self.keys.retain(|key, f| {
            if now.duration_since(f.at) < WINDOW {
                return true;
            }
            match total_of(key) {
                Some(total) if total > f.reported => {
                    let mut d = (*f.last).clone();
                    d.count = Some(total - f.reported);
                    d.hold_us = None;
                    d.time_ms = crate::pipeline::now_ms();
                    d.uid = uuid::Uuid::now_v7();
                    out.push(d);
                    f.reported = total;
                    f.at = now;
                    true
                }
                // the kernel forgot the key (LRU): nothing more can be counted for it
                None => false,
                Some(_) => now.duration_since(f.at) < IDLE,
            }
        });
        out
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn forget_oldest(&mut self) {
        if let Some(k) = self.keys.iter().min_by_key(|(_, f)| f.at).map(|(k, _)| *k) {
            self.keys.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exfilguard_dataplane::{Action, Event, Hook};
    use exfilguard_events::Decision;

    fn det(count: u64) -> Detection {
        let ev = Event {
            ts_ns: 0,
            action: Action::Block,
            hook: Hook::Tc,
            response: false,
            reasons: vec!["blocklist"],
            ifindex: 1,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            sport: 5353,
            dport: 53,
            transport: "udp",
            encap: "none",
            qtype: 16,
            dns_id: 1,
            rcode: 0,
            ancount: 0,
            name_wire: Vec::new(),
            name_hash: 0,
            socket_cookie: 9,
            process: None,
            wire_len: 60,
            msg_len: 0,
            extra_len: 0,
            msg_hash: 0,
            carrier: 0,
            frame_l3: false,
            quiet: None,
            packet: Vec::new(),
            csum: None,
        };
        Detection {
            event: "query",
            decision: Decision::Blocked,
            name: "aaaa.tunnel.test".into(),
            registered_domain: Some("tunnel.test".into()),
            verdict: None,
            kernel: ev,
            count: Some(count),
            hold_us: None,
            time_ms: 0,
            host: "h".into(),
            iface: None,
            container: None,
            uid: uuid::Uuid::now_v7(),
        }
    }

    const K: QuietKey = QuietKey {
        hash: 7,
        cookie: 9,
        src: 1,
    };

    #[test]
    fn every_drop_is_counted_once() {
        let mut f = Floods::default();
        let t0 = Instant::now();
        // first record of a key: the drop itself
        assert_eq!(f.count(K, 1), Some(1));
        f.sent(K, &det(1), t0);
        // a second later the kernel hands over drop 5000: 4999 since the last record
        assert_eq!(f.count(K, 5000), Some(4999));
        f.sent(K, &det(4999), t0 + WINDOW);
        // the flood goes on to 7000 and stops: the sweep reports the last 2000
        let early = f.sweep(t0 + WINDOW + Duration::from_millis(10), |_| Some(7000));
        assert!(early.is_empty(), "not before a window has passed");
        let s = f.sweep(t0 + 2 * WINDOW, |_| Some(7000));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, Some(2000));
        assert_eq!(s[0].name, "aaaa.tunnel.test");
        // a record the kernel raced with the sweep (total 6800 ≤ 7000) is a duplicate
        assert_eq!(f.count(K, 6800), None);
        assert_eq!(f.count(K, 7000), None);
        assert_eq!(f.count(K, 7001), Some(1));
        // nothing new: no summary; idle long enough: forgotten
        assert!(f.sweep(t0 + 4 * WINDOW, |_| Some(7000)).is_empty());
        assert_eq!(f.len(), 1);
        assert!(f.sweep(t0 + IDLE + 3 * WINDOW, |_| Some(7000)).is_empty());
        assert!(f.is_empty());
    }

    #[test]
    fn totals_wrap_at_32_bits() {
        let mut f = Floods::default();
        let t0 = Instant::now();
        f.sent(K, &det(u64::from(u32::MAX) - 10), t0);
        // the kernel's u64 total passed 2^32; the record carries its low half
        assert_eq!(f.count(K, 5), Some(16));
    }

    #[test]
    fn keys_the_kernel_forgot_are_dropped_and_the_table_is_bounded() {
        let mut f = Floods::default();
        let t0 = Instant::now();
        f.sent(K, &det(1), t0);
        assert!(f.sweep(t0 + WINDOW, |_| None).is_empty());
        assert!(f.is_empty());
        for i in 0..(MAX_KEYS as u64 + 10) {
            let k = QuietKey { hash: i, ..K };
            f.sent(k, &det(1), t0 + Duration::from_micros(i));
        }
        assert_eq!(f.len(), MAX_KEYS);
    }
}
