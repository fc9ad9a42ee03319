//! exfilguard's blocklist as a live Response Policy Zone. Any RPZ-capable resolver (PowerDNS
//! Recursor `rpzPrimary`, BIND `response-policy`, Unbound `rpz:`, Knot Resolver) follows it as a
//! secondary: a full transfer at start (AXFR), then only the changes (IXFR), woken by NOTIFY
//! within a second of a conviction instead of at the next SOA refresh. Each blocked domain is
//! two records, the domain and `*.` below it, so the whole registered domain is refused.

pub mod server;
pub mod zone;

use serde::{Deserialize, Serialize};

pub use server::{serve, RpzMetrics};
pub use zone::Zone;

#[derive(Debug, thiserror::Error)]
pub enum RpzError {
    #[error("invalid RPZ configuration: {0}")]
    Config(String),
    #[error("not a domain name the zone can hold: {0:?}")]
    Name(String),
    #[error("rpz.listen: {0}")]
    Io(#[from] std::io::Error),
}

/// What the resolver does with a name under a blocked domain (the RPZ CNAME target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// `CNAME .`: NXDOMAIN.
    Nxdomain,
    /// `CNAME *.`: the name exists, no data.
    Nodata,
    /// `CNAME rpz-drop.`: no answer at all (the client times out).
    Drop,
    /// `CNAME rpz-tcp-only.`: truncated over UDP.
    TcpOnly,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpzSettings {
    /// `ip:port` for transfers (TCP) and SOA queries (UDP); empty: no RPZ.
    pub listen: String,
    /// Zone name the resolvers load (`rpzPrimary(…, "rpz.exfilguard.")`).
    pub zone: String,
    pub policy: Policy,
    /// TTL of the policy records and of negative answers.
    pub ttl: u32,
    /// SOA timers in seconds: how often secondaries poll without a NOTIFY, retry after a failed
    /// poll, and how long they keep serving the zone while this server is unreachable.
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Changes kept for IXFR; a secondary further behind gets the full zone.
    pub journal: usize,
    /// `ip:port` of secondaries sent a NOTIFY after each change.
    pub notify: Vec<String>,
    /// Networks allowed to transfer the zone (everything else: REFUSED).
    pub allow_transfer: Vec<ipnet::IpNet>,
}

impl Default for RpzSettings {
    fn default() -> Self {
        Self {
            listen: String::new(),
            zone: "rpz.exfilguard.".into(),
            policy: Policy::Nxdomain,
            ttl: 60,
            refresh: 60,
            retry: 10,
            expire: 604_800,
            journal: 1024,
            notify: Vec::new(),
            allow_transfer: vec![
                "127.0.0.0/8".parse().expect("static"),
                "::1/128".parse().expect("static"),
            ],
        }
    }
}

impl RpzSettings {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Problems a config check reports, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.enabled() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!("rpz.listen = {:?}: not ip:port", self.listen));
        }
        for n in &self.notify {
            if n.parse::<std::net::SocketAddr>().is_err() {
                out.push(format!("rpz.notify: {n:?} is not ip:port"));
            }
        }
        if let Err(e) = Zone::new(self.clone()) {
            out.push(e.to_string());
        }
        if self.journal == 0 || self.journal > 1_000_000 {
            out.push(format!(
                "rpz.journal = {}: must be in 1..=1000000",
                self.journal
            ));
        }
        // SOA timers are 31-bit on the wire
        for (key, v) in [
            ("refresh", self.refresh),
            ("retry", self.retry),
            ("expire", self.expire),
            ("ttl", self.ttl),
        ] {
            if v == 0 || v > i32::MAX as u32 {
                out.push(format!("rpz.{key} = {v}: must be in 1..={}", i32::MAX));
            }
        }
        out
    }
}
