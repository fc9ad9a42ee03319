//! Behaviour analytics at the front: every query (and every NXDOMAIN answer) goes through an
//! `exfilguard_behaviour::Tracker`, sharded by client so workers rarely share a lock. An
//! information-rate or beacon alarm convicts the registered domain like a model verdict does
//! (refused here, in the RPZ, on the fleet topic); a DGA-bot alarm is reported per client.

use exfilguard_agent::metrics::Metrics;
use exfilguard_behaviour::{Alarm, Settings, Tracker};
use exfilguard_dns::DnsName;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

pub struct Behaviour {
    shards: Vec<Mutex<Tracker>>,
    hasher: RandomState,
    metrics: Metrics,
}

impl Behaviour {
    /// `shards` trackers, each with its share of the tables (the memory bound is unchanged).
    pub fn new(settings: &Settings, shards: usize, metrics: Metrics) -> Self {
        let n = shards.max(1);
        let per = Settings {
            max_pairs: settings.max_pairs.div_ceil(n),
            max_clients: settings.max_clients.div_ceil(n),
            ..settings.clone()
        };
        Self {
            shards: (0..n)
                .map(|_| Mutex::new(Tracker::new(per.clone())))
                .collect(),
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, client: IpAddr) -> &Mutex<Tracker> {
        &self.shards[(self.hasher.hash_one(client) % self.shards.len() as u64) as usize]
    }

    fn count(&self, alarms: &[Alarm]) {
        for a in alarms {
            self.metrics.behaviour_alarm(a.kind.as_str());
        }
    }

    pub fn query(&self, now_ms: u64, client: IpAddr, name: &DnsName) -> Vec<Alarm> {
        let a = self
            .shard(client)
            .lock()
            .expect("lock")
            .observe_query(now_ms, client, name);
        self.count(&a);
        a
    }

    pub fn nxdomain(&self, now_ms: u64, client: IpAddr, name: &DnsName, score: f32) -> Vec<Alarm> {
        let a = self
            .shard(client)
            .lock()
            .expect("lock")
            .observe_response(now_ms, client, name, 3, score);
        self.count(&a);
        a
    }

    /// Refreshes the gauges (called from the housekeeping tick).
    pub fn refresh(&self) {
        let pairs: usize = self
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").pairs())
            .sum();
        self.metrics.behaviour_pairs.set(pairs as i64);
    }
}
