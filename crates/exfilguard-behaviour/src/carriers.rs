//! The carrier budget: bytes of new OPT carriers (cookie, client subnet, size, flags) a
//! (client, server) address pair sent, whatever names they came under. The kernel holds a
//! plain query whose carrier its pair has not sent lately (`new_carrier`); the data in a
//! carrier goes to the server's address, not to the zone of the name, so it is counted per
//! pair, with no exemption for reverse lookups, internal zones or names that do not parse.
//! An IPv6 server counts by its /64 (one host's allocation: a server has 2^64 addresses to
//! spread carriers over, each pair new), and every client has a budget over all its servers
//! too (`carrier_client_alarm_bytes`), so spreading over many servers is bounded as well.
//! The sums decay like the information rate (`info_tau_secs`); from an alarm on, the pair's
//! (or the client's) new carriers are refused.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// Why a new carrier is refused: the decayed total and the alarm it reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Over {
    pub total: f64,
    pub alarm: f64,
    /// The client's budget over all its servers (else the pair's).
    pub client_wide: bool,
}

pub struct CarrierBudget {
    tau_ms: f64,
    alarm: f64,
    client_alarm: f64,
    max_pairs: usize,
    pairs: HashMap<(IpAddr, IpAddr), (f64, u64)>,
    clients: HashMap<IpAddr, (f64, u64)>,
}

/// The server as budgets key it: an IPv6 address by its /64.
pub fn server_key(server: IpAddr) -> IpAddr {
    match server {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn decayed(e: &(f64, u64), now_ms: u64, tau_ms: f64) -> f64 {
    e.0 * (-(now_ms.saturating_sub(e.1) as f64) / tau_ms).exp()
}

/// Adds `bytes` to `key`'s decayed sum in a table of at most `max` entries (full: the
/// entries decayed to almost nothing go, else the stalest); returns the new sum.
fn add<K: Hash + Eq + Copy>(
    t: &mut HashMap<K, (f64, u64)>,
    max: usize,
    tau_ms: f64,
    now_ms: u64,
    key: K,
    bytes: f64,
) -> f64 {
    if t.len() >= max && !t.contains_key(&key) {
        t.retain(|_, e| decayed(e, now_ms, tau_ms) > 1.0);
        if t.len() >= max {
            if let Some(k) = t.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                t.remove(&k);
            }
        }
    }
    let e = t.entry(key).or_insert((0.0, now_ms));
    e.0 = decayed(e, now_ms, tau_ms) + bytes;
    e.1 = e.1.max(now_ms);
    e.0
}

impl CarrierBudget {
    pub fn new(
        info_tau_secs: u64,
        info_alarm_bytes: f64,
        client_alarm_bytes: f64,
        max_pairs: usize,
    ) -> Self {
        Self {
            tau_ms: (info_tau_secs.max(1) * 1000) as f64,
            alarm: info_alarm_bytes,
            client_alarm: client_alarm_bytes,
            max_pairs: max_pairs.max(1),
            pairs: HashMap::new(),
            clients: HashMap::new(),
        }
    }

    /// Set when the pair's, or the client's, decayed total at `now_ms` has reached its alarm:
    /// the pair's next new carrier is refused.
    pub fn over(&self, now_ms: u64, client: IpAddr, server: IpAddr) -> Option<Over> {
        let pair = self
            .pairs
            .get(&(client, server_key(server)))
            .map_or(0.0, |e| decayed(e, now_ms, self.tau_ms));
        if pair >= self.alarm {
            return Some(Over {
                total: pair,
                alarm: self.alarm,
                client_wide: false,
            });
        }
        let all = self
            .clients
            .get(&client)
            .map_or(0.0, |e| decayed(e, now_ms, self.tau_ms));
        (all >= self.client_alarm).then_some(Over {
            total: all,
            alarm: self.client_alarm,
            client_wide: true,
        })
    }

    /// Adds `bytes` of a carrier that went out from `client` to `server` at `now_ms`, to the
    /// pair and to the client; returns what is over its alarm now, if anything.
    pub fn charge(
        &mut self,
        now_ms: u64,
        client: IpAddr,
        server: IpAddr,
        bytes: usize,
    ) -> Option<Over> {
        let (tau, max) = (self.tau_ms, self.max_pairs);
        let key = (client, server_key(server));
        add(&mut self.pairs, max, tau, now_ms, key, bytes as f64);
        add(&mut self.clients, max, tau, now_ms, client, bytes as f64);
        self.over(now_ms, client, server)
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
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 1000);
        let (c, s) = (ip("10.0.0.1"), ip("192.0.2.53"));
        let first = (0..40u64)
            .position(|i| b.charge(i * 100, c, s, 40).is_some())
            .unwrap();
        assert_eq!(first, 25, "the 26th carrier reaches the alarm");
        let o = b.over(2600, c, s).expect("the next is refused");
        assert!(!o.client_wide && o.alarm == 1024.0);
        assert!(b.over(2600, c, ip("192.0.2.54")).is_none());
        assert!(b.charge(5000, c, ip("192.0.2.54"), 40).is_none());
        assert!(b.charge(5000, ip("10.0.0.2"), s, 40).is_none());
        let mut slow = CarrierBudget::new(14_400, 1024.0, 16_384.0, 1000);
        assert!((0..100u64).all(|h| slow.charge(h * 3_600_000, c, s, 40).is_none()));
    }

    /// The spread attack: a carrier to each of many addresses of one IPv6 /64 is one pair;
    /// over many /64s (or IPv4 servers) the client's own budget stops it. The benign control:
    /// a client with one new carrier (a resolver's OPT and per-server cookie, ~20 bytes) to
    /// each of 400 servers stays under both.
    #[test]
    fn spreading_carriers_over_servers_is_bounded() {
        let c = ip("fd00::1");
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 100_000);
        let sent = (0..1000u64)
            .take_while(|i| {
                let s = IpAddr::V6((0x2001_0db8_0000_0001u128 << 64 | u128::from(*i + 1)).into());
                b.over(*i, c, s).is_none() && {
                    b.charge(*i, c, s, 40);
                    true
                }
            })
            .count();
        assert_eq!(sent, 26, "one /64, one budget");
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 100_000);
        let sent = (0..10_000u64)
            .take_while(|i| {
                let s = IpAddr::V6((u128::from(*i + 1) << 64 | 1).into());
                b.over(*i, c, s).is_none() && {
                    b.charge(*i, c, s, 40);
                    true
                }
            })
            .count();
        assert_eq!(sent, 410, "a /64 each: the client's 16 KiB");
        let o = b.over(10_001, c, ip("2001:db8:ffff::1")).unwrap();
        assert!(o.client_wide && o.alarm == 16_384.0);
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 100_000);
        let c4 = ip("10.0.0.1");
        for i in 0..400u32 {
            let s = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + i));
            assert!(
                b.charge(u64::from(i) * 1000, c4, s, 20).is_none(),
                "server {i}"
            );
        }
    }

    /// The table is bounded: a flood of pairs evicts, the memory does not grow.
    #[test]
    fn the_table_is_bounded() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 64);
        for i in 0..10_000u32 {
            let c = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.charge(u64::from(i), c, ip("192.0.2.53"), 40);
        }
        assert!(b.pairs() <= 64, "{}", b.pairs());
        assert!(b.clients.len() <= 64, "{}", b.clients.len());
    }
}
