//! The carrier budget: bytes of new OPT carriers (cookie, client subnet, size, flags) a
//! (client, server) address pair sent, whatever names they came under. The kernel holds a
//! plain query whose carrier its pair has not sent lately (`new_carrier`); the data in a
//! carrier goes to the server's address, not to the zone of the name, so it is counted per
//! pair, with no exemption for reverse lookups, internal zones or names that do not parse.
//! The sum decays like the information rate (`info_tau_secs`); from `info_alarm_bytes` on, the
//! pair's new carriers are refused.

use std::collections::HashMap;
use std::net::IpAddr;

pub struct CarrierBudget {
    tau_ms: f64,
    alarm: f64,
    max_pairs: usize,
    pairs: HashMap<(IpAddr, IpAddr), (f64, u64)>,
}

impl CarrierBudget {
    pub fn new(info_tau_secs: u64, info_alarm_bytes: f64, max_pairs: usize) -> Self {
        Self {
            tau_ms: (info_tau_secs.max(1) * 1000) as f64,
            alarm: info_alarm_bytes,
            max_pairs: max_pairs.max(1),
            pairs: HashMap::new(),
        }
    }

    /// The pair's decayed total at `now_ms` when it has reached the alarm: its next new
    /// carrier is refused.
    pub fn over(&self, now_ms: u64, client: IpAddr, server: IpAddr) -> Option<f64> {
        let (b, t) = self.pairs.get(&(client, server))?;
        let total = b * (-(now_ms.saturating_sub(*t) as f64) / self.tau_ms).exp();
        (total >= self.alarm).then_some(total)
    }

    /// Adds `bytes` of a carrier that went out from `client` to `server` at `now_ms`; returns
    /// the pair's decayed total when it has reached the alarm.
    pub fn charge(
        &mut self,
        now_ms: u64,
        client: IpAddr,
        server: IpAddr,
        bytes: usize,
    ) -> Option<f64> {
        if self.pairs.len() >= self.max_pairs && !self.pairs.contains_key(&(client, server)) {
            // full: forget the pairs that have decayed to almost nothing, else the stalest
            let tau = self.tau_ms;
            self.pairs
                .retain(|_, (b, t)| *b * (-(now_ms.saturating_sub(*t) as f64) / tau).exp() > 1.0);
            if self.pairs.len() >= self.max_pairs {
                if let Some(k) = self
                    .pairs
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
                {
                    self.pairs.remove(&k);
                }
            }
        }
        let e = self.pairs.entry((client, server)).or_insert((0.0, now_ms));
        let decay = (-(now_ms.saturating_sub(e.1) as f64) / self.tau_ms).exp();
        e.0 = e.0 * decay + bytes as f64;
        e.1 = e.1.max(now_ms);
        (e.0 >= self.alarm).then_some(e.0)
    }

    pub fn alarm(&self) -> f64 {
        self.alarm
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// 40-byte carriers: the 26th reaches 1 KiB, the 27th is refused; another server of the
    /// same client, and the same server from another client, have budgets of their own; a
    /// slow sender (one carrier an hour) never reaches it.
    #[test]
    fn a_pair_is_refused_at_the_alarm_and_pairs_are_apart() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 1000);
        let (c, s) = (ip("10.0.0.1"), ip("192.0.2.53"));
        let first = (0..40u64)
            .position(|i| b.charge(i * 100, c, s, 40).is_some())
            .unwrap();
        assert_eq!(first, 25, "the 26th carrier reaches the alarm");
        assert!(b.over(2600, c, s).is_some(), "the next is refused");
        assert!(b.over(2600, c, ip("192.0.2.54")).is_none());
        assert!(b.charge(5000, c, ip("192.0.2.54"), 40).is_none());
        assert!(b.charge(5000, ip("10.0.0.2"), s, 40).is_none());
        let mut slow = CarrierBudget::new(14_400, 1024.0, 1000);
        assert!((0..100u64).all(|h| slow.charge(h * 3_600_000, c, s, 40).is_none()));
    }

    /// The table is bounded: a flood of pairs evicts, the memory does not grow.
    #[test]
    fn the_table_is_bounded() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 64);
        for i in 0..10_000u32 {
            let c = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.charge(u64::from(i), c, ip("192.0.2.53"), 40);
        }
        assert!(b.pairs() <= 64, "{}", b.pairs());
    }
}
