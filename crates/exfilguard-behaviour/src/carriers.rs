//! The carrier budget: bytes of new OPT carriers (cookie, client subnet, size, flags) a
//! (client, server) address pair sent, whatever names they came under. The kernel holds a
//! plain query whose carrier its pair has not sent lately (`new_carrier`); the data in a
//! carrier goes to the server's address, not to the zone of the name, so it is counted per
//! pair, with no exemption for reverse lookups, internal zones or names that do not parse.
//! An IPv6 server counts by its /64 (one host's allocation: a server has 2^64 addresses to
//! spread carriers over, each pair new), and every client has a budget over all its servers
//! too (`carrier_client_alarm_bytes`), so spreading over many servers is bounded as well.
//!
//! A local sender is known by its user (the kernel's uid, as the init namespace sees it: a
//! process cannot change it without privilege, where a fork is a new process): the pair and
//! client budgets are the user's, so one user spending them does not refuse the carriers of
//! another user of the same address (a resolver's, an admin's dig). Sends the kernel could
//! not attribute share one budget per address. The address over all its users has
//! `carrier_users_per_address` users' budgets, per server and over all servers, which bounds
//! a sender holding several uids.
//!
//! One of the last 4 carriers a sender paid for to a server (its exact address) is not
//! charged again, nor refused, for `info_tau_secs`: the kernel keeps only the pair's last 4
//! carriers over all users, and another user of the address can push a victim's out of them
//! (4 carriers differing in RD/AD/CD, a byte each), so the victim's next query is a new
//! carrier to the kernel; charged again each time, its budget would be spent by the
//! attacker's evictions. Only 4 per sender and server, as the kernel keeps: every paid
//! carrier excused (first built so, found in review) was a dictionary of cheap carriers, a
//! few bits per query to pick among for free.
//!
//! The sums decay like the information rate (`info_tau_secs`); from an alarm on, the pair's
//! (or the client's) new carriers are refused.

use lru::LruCache;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;

/// Which budget refused a carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The user's (client, server) pair: `info_alarm_bytes`.
    Pair,
    /// The user's carriers to all servers: `carrier_client_alarm_bytes`.
    Client,
    /// The address's carriers from all users to the server: `carrier_users_per_address`
    /// pair budgets.
    AddressPair,
    /// The address's carriers from all users to all servers: `carrier_users_per_address`
    /// client budgets.
    Address,
}

/// Why a new carrier is refused: the decayed total and the alarm it reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Over {
    pub total: f64,
    pub alarm: f64,
    pub scope: Scope,
}

/// A sender: its address and, when the kernel attributed the send, its uid.
pub type Sender = (IpAddr, Option<u32>);

pub struct CarrierBudget {
    tau_ms: f64,
    alarm: f64,
    client_alarm: f64,
    users: f64,
    max_pairs: usize,
    pairs: HashMap<(Sender, IpAddr), (f64, u64)>,
    clients: HashMap<Sender, (f64, u64)>,
    address_pairs: HashMap<(IpAddr, IpAddr), (f64, u64)>,
    addresses: HashMap<IpAddr, (f64, u64)>,
    /// (sender, exact server address) → the last 4 carriers it paid for and when.
    paid: LruCache<(Sender, IpAddr), Paid>,
}

const PAID_SLOTS: usize = 4;

/// A sender's last carriers to one server, oldest out.
#[derive(Clone, Copy, Default)]
struct Paid {
    h: [u64; PAID_SLOTS],
    at: [u64; PAID_SLOTS],
    next: usize,
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
        users_per_address: f64,
        max_pairs: usize,
    ) -> Self {
        Self {
            tau_ms: (info_tau_secs.max(1) * 1000) as f64,
            alarm: info_alarm_bytes,
            client_alarm: client_alarm_bytes,
            users: users_per_address.max(1.0),
            max_pairs: max_pairs.max(1),
            pairs: HashMap::new(),
            clients: HashMap::new(),
            address_pairs: HashMap::new(),
            addresses: HashMap::new(),
            paid: LruCache::new(NonZeroUsize::new(max_pairs.max(1)).expect("non-zero")),
        }
    }

    /// Set when the sender's pair, the sender over all servers, or its address over all
    /// users (to the server, or to all) has reached its alarm at `now_ms`: the sender's next
    /// new carrier to `server` is refused.
    /// A carrier (hash `carrier`, 0: unknown) the sender paid for lately is never refused.
    pub fn over(&self, now_ms: u64, from: Sender, server: IpAddr, carrier: u64) -> Option<Over> {
        if self.is_paid(now_ms, from, server, carrier) {
            return None;
        }
        let sum = |e: Option<&(f64, u64)>| e.map_or(0.0, |e| decayed(e, now_ms, self.tau_ms));
        let to = server_key(server);
        let (pair, all) = (self.alarm, self.client_alarm);
        [
            (sum(self.pairs.get(&(from, to))), pair, Scope::Pair),
            (sum(self.clients.get(&from)), all, Scope::Client),
            (
                sum(self.address_pairs.get(&(from.0, to))),
                pair * self.users,
                Scope::AddressPair,
            ),
            (
                sum(self.addresses.get(&from.0)),
                all * self.users,
                Scope::Address,
            ),
        ]
        .into_iter()
        .find(|(total, alarm, _)| total >= alarm)
        .map(|(total, alarm, scope)| Over {
            total,
            alarm,
            scope,
        })
    }

    fn is_paid(&self, now_ms: u64, from: Sender, server: IpAddr, carrier: u64) -> bool {
        carrier != 0
            && self.paid.peek(&(from, server)).is_some_and(|p| {
                p.h.iter().zip(p.at).any(|(h, at)| {
                    *h == carrier && (now_ms.saturating_sub(at) as f64) < self.tau_ms
                })
            })
    }

    /// Adds `bytes` of a carrier (hash `carrier`, 0: unknown) that went out from `from` to
    /// `server` at `now_ms` to the sender's pair and total and to its address's, unless the
    /// sender paid for it lately; returns what is over its alarm now, if anything.
    pub fn charge(
        &mut self,
        now_ms: u64,
        from: Sender,
        server: IpAddr,
        bytes: usize,
        carrier: u64,
    ) -> Option<Over> {
        let (tau, max, b, to) = (
            self.tau_ms,
            self.max_pairs,
            bytes as f64,
            server_key(server),
        );
        if !self.is_paid(now_ms, from, server, carrier) {
            add(&mut self.pairs, max, tau, now_ms, (from, to), b);
            add(&mut self.clients, max, tau, now_ms, from, b);
            add(&mut self.address_pairs, max, tau, now_ms, (from.0, to), b);
            add(&mut self.addresses, max, tau, now_ms, from.0, b);
            if carrier != 0 {
                let p = self.paid.get_or_insert_mut((from, server), Paid::default);
                let i = p.next % PAID_SLOTS;
                (p.h[i], p.at[i], p.next) = (carrier, now_ms, i + 1);
            }
        }
        self.over(now_ms, from, server, 0)
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

    /// An unattributed sender at `s`.
    fn at(s: &str) -> Sender {
        (ip(s), None)
    }

    /// 40-byte carriers, carrier `i` at `i` ms from and to what `at(i)` gives, until the
    /// first one refused: how many went out.
    fn until_refused(b: &mut CarrierBudget, n: u64, at: impl Fn(u64) -> (Sender, IpAddr)) -> usize {
        (0..n)
            .take_while(|i| {
                let (from, s) = at(*i);
                b.over(*i, from, s, 0).is_none() && {
                    b.charge(*i, from, s, 40, 0);
                    true
                }
            })
            .count()
    }

    /// 40-byte carriers: the 26th reaches 1 KiB, the 27th is refused; another server of the
    /// same client, and the same server from another client, have budgets of their own; a
    /// slow sender (one carrier an hour) never reaches it.
    #[test]
    fn a_pair_is_refused_at_the_alarm_and_pairs_are_apart() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 1000);
        let (c, s) = (at("10.0.0.1"), ip("192.0.2.53"));
        let first = (0..40u64)
            .position(|i| b.charge(i * 100, c, s, 40, 0).is_some())
            .unwrap();
        assert_eq!(first, 25, "the 26th carrier reaches the alarm");
        let o = b.over(2600, c, s, 0).expect("the next is refused");
        assert!(o.scope == Scope::Pair && o.alarm == 1024.0);
        assert!(b.over(2600, c, ip("192.0.2.54"), 0).is_none());
        assert!(b.charge(5000, c, ip("192.0.2.54"), 40, 0).is_none());
        assert!(b.charge(5000, at("10.0.0.2"), s, 40, 0).is_none());
        let mut slow = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 1000);
        assert!((0..100u64).all(|h| slow.charge(h * 3_600_000, c, s, 40, 0).is_none()));
    }

    /// The spread attack: a carrier to each of many addresses of one IPv6 /64 is one pair;
    /// over many /64s (or IPv4 servers) the client's own budget stops it. The benign control:
    /// a client with one new carrier (a resolver's OPT and per-server cookie, ~20 bytes) to
    /// each of 400 servers stays under both.
    #[test]
    fn spreading_carriers_over_servers_is_bounded() {
        let c = at("fd00::1");
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let sent = until_refused(&mut b, 1000, |i| {
            let s = IpAddr::V6((0x2001_0db8_0000_0001u128 << 64 | u128::from(i + 1)).into());
            (c, s)
        });
        assert_eq!(sent, 26, "one /64, one budget");
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let sent = until_refused(&mut b, 10_000, |i| {
            let s = IpAddr::V6((u128::from(i + 1) << 64 | 1).into());
            (c, s)
        });
        assert_eq!(sent, 410, "a /64 each: the client's 16 KiB");
        let o = b.over(10_001, c, ip("2001:db8:ffff::1"), 0).unwrap();
        assert!(o.scope == Scope::Client && o.alarm == 16_384.0);
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let c4 = at("10.0.0.1");
        for i in 0..400u32 {
            let s = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + i));
            assert!(
                b.charge(u64::from(i) * 1000, c4, s, 20, 0).is_none(),
                "server {i}"
            );
        }
    }

    /// The budgets are the user's: a process that spent its user's pair and client budgets
    /// (and forks, which keeps the uid) is refused, while another user of the same address —
    /// a resolver, an admin's dig — still gets its new carriers to the same server through.
    /// Sends the kernel could not attribute share the address's own budget. A sender with
    /// many uids is bounded by the address's budgets over all users (4 users' worth).
    #[test]
    fn one_user_spending_the_budget_does_not_refuse_another() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let (a, s) = (ip("10.0.0.1"), ip("192.0.2.53"));
        let attacker = (a, Some(1000));
        let spent = until_refused(&mut b, 100, |_| (attacker, s));
        assert_eq!(spent, 26, "the attacker's pair budget");
        assert_eq!(
            b.over(200, attacker, s, 0).map(|o| o.scope),
            Some(Scope::Pair)
        );
        for other in [Some(0), Some(998), None] {
            assert!(b.over(200, (a, other), s, 0).is_none(), "{other:?} refused");
            assert!(b.charge(200, (a, other), s, 14, 0).is_none(), "{other:?}");
        }
        // many uids (a subordinate range): 4 users' budgets to one server, and over /64s 4
        // users' 16 KiB in all
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let to_one = until_refused(&mut b, 1000, |i| {
            let from = (a, Some(100_000 + i as u32));
            (from, s)
        });
        assert_eq!(to_one, 103, "4 KiB to one server over all users");
        let o = b.over(to_one as u64, (a, Some(0)), s, 0).unwrap();
        assert!(o.scope == Scope::AddressPair && o.alarm == 4096.0);
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 100_000);
        let sent = until_refused(&mut b, 100_000, |i| {
            let from = (a, Some(100_000 + (i / 400) as u32));
            let s = IpAddr::V6((u128::from(i + 1) << 64 | 1).into());
            (from, s)
        });
        assert_eq!(sent, 1639, "64 KiB over all users");
        let o = b.over(sent as u64, (a, Some(0)), s, 0).unwrap();
        assert!(o.scope == Scope::Address && o.alarm == 65_536.0);
    }

    /// The eviction attack: another user of the address pushes a victim's pinned carrier
    /// out of the kernel's 4 slots (4 carriers differing in RD/AD/CD, a byte each), so the
    /// victim's next query is held as new, again and again. A carrier the victim paid for is
    /// not charged again, nor refused once the victim is over its budget; a new carrier of the
    /// victim still is, and the attacker pays for every carrier of its own, the victim's
    /// included (payments are per sender).
    #[test]
    fn a_carrier_paid_for_is_not_charged_again() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 1000);
        let (a, s) = (ip("10.0.0.1"), ip("192.0.2.53"));
        let (victim, attacker) = ((a, Some(0)), (a, Some(1000)));
        let kept = 0xc0ffee;
        for i in 0..1000u64 {
            assert!(
                b.over(i, victim, s, kept).is_none(),
                "evicted {i} times: refused"
            );
            assert!(b.charge(i, victim, s, 14, kept).is_none(), "{i}");
        }
        assert!(
            b.pairs.get(&(victim, s)).unwrap().0 < 15.0,
            "charged more than once"
        );
        // over the budget with 3 new carriers: the paid one (among its last 4) still passes,
        // a new one does not
        for c in 1..=3u64 {
            b.charge(2000 + c, victim, s, 400, c);
        }
        assert!(b.over(3000, victim, s, 99).is_some(), "a new carrier");
        assert!(
            b.over(3000, victim, s, kept).is_none(),
            "the carrier paid for"
        );
        assert!(b.over(3000, victim, s, 0).is_some(), "an unknown carrier");
        // per sender: the attacker sending the victim's carrier pays for it
        assert!(b.charge(3000, attacker, s, 14, kept).is_none());
        assert!(b.pairs.get(&(attacker, s)).unwrap().0 > 13.0);
        // a dictionary of cheap paid carriers: only the last 4 to the server are excused,
        // the rest is charged again on reuse (picking among them carries bits)
        let mut b2 = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 1000);
        for c in 1..=16u64 {
            b2.charge(c, attacker, s, 2, c);
        }
        let spent = b2.pairs.get(&(attacker, s)).unwrap().0;
        for c in 1..=16u64 {
            b2.charge(100 + c, attacker, s, 2, c);
        }
        let again = b2.pairs.get(&(attacker, s)).unwrap().0 - spent;
        assert!(
            again > 31.0,
            "reuse of 16 paid carriers charged {again:.1} bytes"
        );
        let before = b2.pairs.get(&(attacker, s)).unwrap().0;
        for c in 13..=16u64 {
            b2.charge(200 + c, attacker, s, 2, c);
        }
        assert!(
            b2.pairs.get(&(attacker, s)).unwrap().0 - before < 0.01,
            "the last 4"
        );
        // payments are per exact server address (the kernel pins per address)
        assert!(!b.is_paid(3000, victim, ip("192.0.2.54"), kept));
        // a payment (at 0) lasts info_tau_secs: then the carrier is charged once more
        assert!(b.is_paid(14_399_999, victim, s, kept));
        assert!(!b.is_paid(14_400_000, victim, s, kept));
    }

    /// The table is bounded: a flood of pairs evicts, the memory does not grow.
    #[test]
    fn the_table_is_bounded() {
        let mut b = CarrierBudget::new(14_400, 1024.0, 16_384.0, 4.0, 64);
        for i in 0..10_000u32 {
            let c = (
                IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                Some(i),
            );
            b.charge(u64::from(i), c, ip("192.0.2.53"), 40, 0);
        }
        assert!(b.pairs() <= 64, "{}", b.pairs());
        assert!(b.clients.len() <= 64, "{}", b.clients.len());
        assert!(b.addresses.len() <= 64, "{}", b.addresses.len());
        assert!(b.address_pairs.len() <= 64, "{}", b.address_pairs.len());
    }
}
