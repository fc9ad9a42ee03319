//! What a per-name classifier cannot see: a client that leaks data in short, innocent labels
//! at a few bytes a minute, a bot walking a DGA list, an implant beaconing on a timer. The
//! tracker keeps state per (client, registered domain) and per client in fixed memory and
//! raises explainable alarms:
//!
//! * **information rate** — the novel information in the subdomains a client sends to one
//!   domain (a compressor's estimate, [`sketch::novel_bytes`]), summed with exponential decay
//!   (time constant `info_tau_secs`); an alarm at `info_alarm_bytes`. A leak slower than
//!   `info_alarm_bytes / info_tau_secs` never alarms: that is the documented leakage bound;
//! * **DGA bot** — distinct registered domains that answered NXDOMAIN to one client within a
//!   sliding window: a fast rule (`dga_min_domains` within `dga_window_secs`) and a slow one
//!   (`dga_slow_min_domains` within `dga_slow_window_secs`) for bots that walk their list a
//!   name a minute; the per-name DGA scores are evidence;
//! * **beaconing** — queries from one client to one domain at regular intervals (robust
//!   coefficient of variation of the last inter-arrival times) that carry changing subdomains.
//!
//! Memory: see [`Settings::memory_bound`].

pub mod carriers;
pub mod sketch;

use exfilguard_dns::DnsName;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sketch::{hash_of, novel_bytes, Bloom1024, Doorkeeper, Keyed};
use std::net::IpAddr;
use std::num::NonZeroUsize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Behaviour analytics in the agent (fed by the kernel's observation ring) and in
    /// `exfilguard resolve` (`replay` always runs them).
    pub enabled: bool,
    /// Information-rate and beacon alarms block the registered domain (like a model verdict);
    /// `false` reports them only. Set `false` where the clients are other resolvers: one
    /// address then speaks for many users, and their names add up.
    pub block: bool,
    /// How long such a block lasts (no single name was judged: the pattern was).
    pub block_secs: u64,
    /// (client, registered domain) pairs tracked in full.
    pub max_pairs: usize,
    /// Clients tracked for NXDOMAIN behaviour.
    pub max_clients: usize,
    /// Window of the admission filter (a pair is tracked from its second distinct subdomain
    /// within a window) and of the novelty filters.
    pub window_secs: u64,
    /// Decay time constant of the information sum, seconds.
    pub info_tau_secs: u64,
    /// Alarm when the decayed novel information to one domain from one client reaches this.
    pub info_alarm_bytes: f64,
    /// Bytes of new OPT carriers one client (an address and, for a local sender, its user)
    /// may send to all its servers together (decaying over `info_tau_secs`); each (client,
    /// server) pair has `info_alarm_bytes` of its own.
    pub carrier_client_alarm_bytes: f64,
    /// An address over all its users has this many users' carrier budgets (per server and
    /// over all servers): one user alone cannot spend them.
    pub carrier_users_per_address: f64,
    /// Subordinate uid ranges (`owner:first:count`): a uid in one is charged to its owner's
    /// carrier budgets (absent file: none).
    pub subuid_file: std::path::PathBuf,
    /// DGA bots, fast rule: at least `dga_min_domains` distinct registered domains answered
    /// NXDOMAIN to one client within the last `dga_window_secs` (a sliding window).
    pub dga_window_secs: u64,
    pub dga_min_domains: u32,
    /// DGA bots, slow rule: at least `dga_slow_min_domains` within the last
    /// `dga_slow_window_secs` (a bot that tries a name a minute never meets the fast rule).
    /// Either 0 turns the slow rule off.
    pub dga_slow_window_secs: u64,
    pub dga_slow_min_domains: u32,
    /// Beacons: at least this many check-ins (queries less than `beacon_min_secs` apart are one
    /// check-in: implants send bursts) at intervals whose robust spread (median absolute
    /// deviation / median) is at most `beacon_max_spread`, intervals within
    /// `beacon_min_secs..=beacon_max_secs`, and at least `beacon_min_unique` of the check-ins
    /// carrying a new subdomain.
    pub beacon_min_queries: u8,
    pub beacon_max_spread: f64,
    pub beacon_min_secs: f64,
    pub beacon_max_secs: f64,
    pub beacon_min_unique: f64,
    /// Lookup services whose subdomains are keys, not data (reverse DNS, ENUM, DNSBLs): no
    /// information-rate or beacon tracking below them; the detector's lookup-name rule judges
    /// their names benign from the same list (`exfilguard_dns::KNOWN_LOOKUP_ZONES` by default).
    pub lookup_zones: Vec<String>,
    /// The operator's own zones (an attacker cannot read their queries at an authoritative
    /// server they do not run): not tracked either. Special-use and de-facto private TLDs by
    /// default; add your internal domains (hundreds of host names are not a leak).
    pub internal_zones: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            block: true,
            block_secs: 3600,
            max_pairs: 32_768,
            max_clients: 16_384,
            window_secs: 600,
            info_tau_secs: 14_400,
            info_alarm_bytes: 1024.0,
            carrier_client_alarm_bytes: 16_384.0,
            carrier_users_per_address: 4.0,
            subuid_file: "/etc/subuid".into(),
            dga_window_secs: 600,
            dga_min_domains: 20,
            dga_slow_window_secs: 21_600,
            dga_slow_min_domains: 40,
            beacon_min_queries: 16,
            beacon_max_spread: 0.1,
            beacon_min_secs: 5.0,
            beacon_max_secs: 3600.0,
            beacon_min_unique: 0.5,
            lookup_zones: exfilguard_dns::KNOWN_LOOKUP_ZONES
                .iter()
                .map(|z| z.to_string())
                .collect(),
            internal_zones: [
                "local",
                "home.arpa",
                "internal",
                "lan",
                "localdomain",
                "intranet",
                "corp",
                "private",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Upper bounds of what one table entry holds, for [`Settings::memory_bound`].
const PAIR_BYTES: usize = std::mem::size_of::<Pair>() + 64 /* domain text */ + 64 /* LRU node + map */;
/// A client without its failing-domain buffer ([`Settings::client_bytes`] adds it).
const CLIENT_BASE_BYTES: usize = std::mem::size_of::<Client>() + 64 /* LRU node + map */;

/// The most distinct failing registered domains a client's DGA rules may need to remember
/// (the larger of `dga_min_domains` and `dga_slow_min_domains`; both are checked against it).
pub const MAX_DGA_DOMAINS: u32 = 256;

impl Settings {
    /// Problems a config check reports, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut range = |key: &str, v: f64, lo: f64, hi: f64| {
            if !(lo..=hi).contains(&v) {
                out.push(format!("behaviour.{key} = {v}: must be in {lo}..={hi}"));
            }
        };
        range("max_pairs", self.max_pairs as f64, 1.0, 16e6);
        range("max_clients", self.max_clients as f64, 1.0, 16e6);
        range("window_secs", self.window_secs as f64, 1.0, 86400.0);
        range("block_secs", self.block_secs as f64, 1.0, 30.0 * 86400.0);
        range(
            "info_tau_secs",
            self.info_tau_secs as f64,
            1.0,
            7.0 * 86400.0,
        );
        range("info_alarm_bytes", self.info_alarm_bytes, 1.0, 1e9);
        range(
            "carrier_client_alarm_bytes",
            self.carrier_client_alarm_bytes,
            1.0,
            1e12,
        );
        range(
            "carrier_users_per_address",
            self.carrier_users_per_address,
            1.0,
            1e6,
        );
        range("dga_window_secs", self.dga_window_secs as f64, 1.0, 86400.0);
        let max_domains = MAX_DGA_DOMAINS as f64;
        range(
            "dga_min_domains",
            self.dga_min_domains as f64,
            2.0,
            max_domains,
        );
        range(
            "dga_slow_window_secs",
            self.dga_slow_window_secs as f64,
            0.0,
            7.0 * 86400.0,
        );
        if self.dga_slow_min_domains != 0 {
            range(
                "dga_slow_min_domains",
                self.dga_slow_min_domains as f64,
                2.0,
                max_domains,
            );
        }
        range(
            "beacon_min_queries",
            self.beacon_min_queries as f64,
            4.0,
            16.0,
        );
        range("beacon_max_spread", self.beacon_max_spread, 0.0, 1.0);
        range("beacon_min_unique", self.beacon_min_unique, 0.0, 1.0);
        // `contains` is false when either bound is NaN (`nan` is a TOML float)
        if !(0.0..=self.beacon_max_secs).contains(&self.beacon_min_secs) {
            out.push(format!(
                "behaviour.beacon_min_secs = {} must be >= 0 and <= beacon_max_secs = {}",
                self.beacon_min_secs, self.beacon_max_secs
            ));
        }
        if self.dga_slow_rule() && self.dga_slow_window_secs < self.dga_window_secs {
            out.push(format!(
                "behaviour.dga_slow_window_secs = {} must be 0 (off) or >= dga_window_secs = {}",
                self.dga_slow_window_secs, self.dga_window_secs
            ));
        }
        out
    }

    /// Whether the slow DGA rule is on (neither of its keys is 0).
    pub fn dga_slow_rule(&self) -> bool {
        self.dga_slow_window_secs > 0 && self.dga_slow_min_domains > 0
    }

    /// Distinct failing registered domains remembered per client: the larger threshold (the
    /// count within either window is exact up to it), at most [`MAX_DGA_DOMAINS`].
    pub fn dga_buffer(&self) -> usize {
        let slow = if self.dga_slow_rule() {
            self.dga_slow_min_domains
        } else {
            0
        };
        self.dga_min_domains.max(slow).clamp(1, MAX_DGA_DOMAINS) as usize
    }

    /// The most memory one tracked client takes: the fixed part (counters, buffer headers, LRU
    /// node) plus 8 B (a 32-bit keyed hash of the registered domain and the second of its last
    /// failure) per remembered failing domain: 72 + 64 + 40 × 8 = 456 B with the defaults.
    /// The three example names an alarm quotes add their text.
    pub fn client_bytes(&self) -> usize {
        CLIENT_BASE_BYTES + self.dga_buffer() * std::mem::size_of::<NxSeen>()
    }

    /// The most memory the tracker takes, whatever the traffic: full tables plus the fixed
    /// admission filter. Defaults: 32 768 pairs × 656 B + 16 384 clients × 456 B + 4 MiB ≈
    /// 33.2 MB.
    pub fn memory_bound(&self) -> usize {
        self.max_pairs * PAIR_BYTES + self.max_clients * self.client_bytes() + Doorkeeper::BYTES
    }

    /// The leak rate that never alarms (bytes per second per client and domain).
    pub fn undetected_rate(&self) -> f64 {
        self.info_alarm_bytes / self.info_tau_secs as f64
    }

    /// Seconds until a sustained leak at `rate` bytes/s alarms (None: never).
    pub fn time_to_detect(&self, rate: f64) -> Option<f64> {
        let tau = self.info_tau_secs as f64;
        let x = self.info_alarm_bytes / (rate * tau);
        (x < 1.0).then(|| -tau * (1.0 - x).ln())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    InfoRate,
    DgaBot,
    Beacon,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InfoRate => "info_rate",
            Self::DgaBot => "dga_bot",
            Self::Beacon => "beacon",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Alarm {
    pub kind: AlarmKind,
    pub at_ms: u64,
    pub client: IpAddr,
    /// The registered domain (information rate, beacon); None for a DGA bot (a client alarm).
    pub domain: Option<String>,
    /// Estimated novel bytes sent to the domain since the pair was first seen.
    pub novel_bytes: f64,
    /// Seconds since the pair was first seen (DGA bot: since the oldest failure the rule that
    /// fired counted).
    pub after_secs: f64,
    pub reason: String,
}

struct Pair {
    domain: Box<str>,
    client: IpAddr,
    first_ms: u64,
    last_ms: u64,
    info: f64,
    /// Highest `info` reached (for threshold tuning: `exfilguard replay` lists the top pairs).
    info_peak: f64,
    novel_total: f64,
    queries: u32,
    unique: u32,
    blooms: [Bloom1024; 2],
    bloom_epoch: u64,
    history: [u8; 96],
    hist_len: u8,
    /// Start times of the last check-ins (deciseconds after `first_ms`; a query less than
    /// `beacon_min_secs` after the previous one joins its check-in), and whether each carried a
    /// new subdomain.
    times: [u32; 16],
    n_times: u8,
    new_bits: u16,
}

/// A registered domain that answered NXDOMAIN to a client: the low 32 bits of its hash under
/// the tracker's random key (an attacker cannot aim two names at one key), and the second of
/// its last failure.
#[derive(Clone, Copy, Debug)]
struct NxSeen {
    secs: u32,
    key: u32,
}

/// A client's NXDOMAIN history for the DGA rules ([`Settings::client_bytes`]).
struct Client {
    /// Distinct failing registered domains, oldest last failure first: at most
    /// `Settings::dga_buffer` (the oldest goes first), none older than the longer window.
    /// Keeping the most recent ones makes the count within either window exact up to the
    /// buffer, which is at least both thresholds.
    nx_seen: Vec<NxSeen>,
    /// Since the episode began (the first failure after an empty window): answers, failures,
    /// the failures' summed per-name DGA score, the last three distinct failing domains.
    since_s: u32,
    responses: u32,
    nx: u32,
    nx_score: f32,
    examples: Vec<String>,
    /// The second of the last alarm: while a rule holds, a client alarms again at most once
    /// per `dga_window_secs` (a bot still walking when its mark expires is marked again).
    alarm_s: Option<u32>,
}

impl Client {
    /// Failing domains whose last failure is less than `secs` before `now_s`, and the
    /// oldest such failure.
    fn within(&self, now_s: u32, secs: u64) -> (usize, u32) {
        let i = self
            .nx_seen
            .partition_point(|e| u64::from(now_s - e.secs) >= secs);
        (
            self.nx_seen.len() - i,
            self.nx_seen.get(i).map_or(now_s, |e| e.secs),
        )
    }
}

/// The hash seed of offline runs (`exfilguard replay`, `eval --stream`): fixed, so a run over
/// the same input gives the same alarms at the same times.
pub const OFFLINE_SEED: u64 = 0x6578_6669_6c67_7561;

/// Per-client and per-(client, domain) behaviour, in bounded memory.
pub struct Tracker {
    s: Settings,
    hasher: Keyed,
    door: Doorkeeper,
    door_epoch: u64,
    pairs: LruCache<u64, Pair>,
    clients: LruCache<IpAddr, Client>,
    /// `Settings::dga_buffer`.
    dga_buffer: usize,
    lookup: Vec<String>,
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

impl Tracker {
    /// A tracker with a random hash key (a service: nobody can aim names at its filters).
    pub fn new(s: Settings) -> Self {
        Self::with_key(s, Keyed::random())
    }

    /// A tracker whose hashing is fixed by `seed`: the same input gives the same alarms
    /// (`exfilguard replay`). Not for a service facing senders who could learn the seed.
    pub fn seeded(s: Settings, seed: u64) -> Self {
        Self::with_key(s, Keyed::seeded(seed))
    }

    fn with_key(s: Settings, hasher: Keyed) -> Self {
        let lookup = s
            .lookup_zones
            .iter()
            .chain(&s.internal_zones)
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        Self {
            pairs: LruCache::new(NonZeroUsize::new(s.max_pairs.max(1)).expect("non-zero")),
            clients: LruCache::new(NonZeroUsize::new(s.max_clients.max(1)).expect("non-zero")),
            hasher,
            door: Doorkeeper::default(),
            door_epoch: 0,
            dga_buffer: s.dga_buffer(),
            lookup,
            s,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The `n` tracked pairs with the highest information peak: (client, domain, peak bytes,
    /// distinct subdomains, queries). How close benign traffic comes to `info_alarm_bytes`.
    pub fn top_info(&self, n: usize) -> Vec<(IpAddr, String, f64, u32, u32)> {
        let mut v: Vec<_> = self
            .pairs
            .iter()
            .map(|(_, p)| {
                (
                    p.client,
                    p.domain.to_string(),
                    p.info_peak,
                    p.unique,
                    p.queries,
                )
            })
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v.truncate(n);
        v
    }

    fn is_lookup(&self, rd: &str) -> bool {
        // the registered domain is, or is below, a listed zone — or a listed zone is below it
        // (zen.spamhaus.org listed, spamhaus.org seen)
        let below = |a: &str, b: &str| a.strip_suffix(b).is_some_and(|r| r.ends_with('.'));
        self.lookup
            .iter()
            .any(|z| rd == z || below(rd, z) || below(z, rd))
    }

    /// One query from `client` at `ts_ms`. A pair alarms again only after a fresh
    /// `info_alarm_bytes` (information) or a fresh run of regular arrivals (beacon).
    pub fn observe_query(&mut self, ts_ms: u64, client: IpAddr, name: &DnsName) -> Vec<Alarm> {
        self.observe_query_from(ts_ms, client, 0, name)
    }

    /// Like `observe_query`, with the pair kept per `origin` as well as per address: the agent
    /// passes the sending process (tgid), so processes behind one address are told apart
    /// (0: the address alone).
    pub fn observe_query_from(
        &mut self,
        ts_ms: u64,
        client: IpAddr,
        origin: u32,
        name: &DnsName,
    ) -> Vec<Alarm> {
        self.observe_query_carrying(ts_ms, client, origin, name, &[])
    }

    /// Like `observe_query_from`, with the bytes the query carried after its question that
    /// the policy let through (an OPT record's options, a TSIG, an update's records): a
    /// carrier the pair has not sent before adds its non-zero bytes to the information, as
    /// new subdomain text does (zero padding and the OPT record's zero fields add nothing).
    pub fn observe_query_carrying(
        &mut self,
        ts_ms: u64,
        client: IpAddr,
        origin: u32,
        name: &DnsName,
        outside: &[u8],
    ) -> Vec<Alarm> {
        let mut out = Vec::new();
        let split = name.split();
        let Some(first) = split.registrable_label() else {
            return out;
        };
        let n_sub = split.subdomain_labels();
        let rd = name.normalized_from(first);
        if self.is_lookup(&rd) {
            return out;
        }
        // case can carry data (iodine's base64 does), so the estimate sees it; novelty is
        // case-blind, so a resolver's 0x20 case randomisation does not make old names new
        let sub: Vec<u8> = name.labels().take(n_sub).flatten().copied().collect();
        let key = hash_of(&self.hasher, &(client, origin, rd.as_str()));
        let sub_h = hash_of(&self.hasher, &sub.to_ascii_lowercase());
        // the exact text when it has capitals: case variants are new to the doorkeeper and
        // to the information estimate below (one bit per letter)
        let cased = sub.iter().any(u8::is_ascii_uppercase);
        let exact_h = if cased {
            hash_of(&self.hasher, &sub)
        } else {
            sub_h
        };

        let window_ms = self.s.window_secs * 1000;
        let epoch = ts_ms / window_ms.max(1);
        if epoch != self.door_epoch {
            self.door.reset();
            self.door_epoch = epoch;
        }
        // a new carrier outside the question is as new as a new subdomain
        let oh = (!outside.is_empty()).then(|| hash_of(&self.hasher, &(b"outside", outside)));
        if !self.pairs.contains(&key) {
            if !self.door.admit(key, exact_h ^ oh.unwrap_or(0)) {
                return out;
            }
            self.pairs.push(
                key,
                Pair {
                    domain: rd.clone().into_boxed_str(),
                    client,
                    first_ms: ts_ms,
                    last_ms: ts_ms,
                    info: 0.0,
                    info_peak: 0.0,
                    novel_total: 0.0,
                    queries: 0,
                    unique: 0,
                    blooms: Default::default(),
                    bloom_epoch: epoch,
                    history: [0; 96],
                    hist_len: 0,
                    times: [0; 16],
                    n_times: 0,
                    new_bits: 0,
                },
            );
        }
        let s = &self.s;
        let p = self.pairs.get_mut(&key).expect("just inserted");
        // novelty filters rotate per window: [current, previous]
        if epoch != p.bloom_epoch {
            if epoch == p.bloom_epoch + 1 {
                p.blooms.swap(0, 1);
                p.blooms[0].clear();
            } else {
                p.blooms.iter_mut().for_each(Bloom1024::clear);
            }
            p.bloom_epoch = epoch;
        }
        if p.blooms[0].is_full() {
            // bounded error: a full filter rotates early (see Bloom1024)
            p.blooms.swap(0, 1);
            p.blooms[0].clear();
        }
        let new = !p.blooms[0].contains(sub_h) && !p.blooms[1].contains(sub_h);
        p.blooms[0].insert(sub_h);
        // a name seen before in another letter case: the case itself is the message (one bit
        // per letter: a 0x20-style channel in one allowed name), counted once per variant
        let mut case_bytes = 0.0;
        if cased {
            if !new && !p.blooms[0].contains(exact_h) && !p.blooms[1].contains(exact_h) {
                case_bytes = sub.iter().filter(|c| c.is_ascii_alphabetic()).count() as f64 / 8.0;
            }
            p.blooms[0].insert(exact_h);
        }
        // data outside the question, once per distinct carrier (a client cookie repeats)
        let mut outside_bytes = 0.0;
        if let Some(oh) = oh {
            if !p.blooms[0].contains(oh) && !p.blooms[1].contains(oh) {
                outside_bytes = outside.iter().filter(|&&b| b != 0).count() as f64;
            }
            p.blooms[0].insert(oh);
        }
        let dt = ts_ms.saturating_sub(p.last_ms) as f64 / 1000.0;
        p.info *= (-dt / s.info_tau_secs as f64).exp();
        p.last_ms = ts_ms;
        p.queries += 1;
        p.info += case_bytes + outside_bytes;
        p.novel_total += case_bytes + outside_bytes;
        p.info_peak = p.info_peak.max(p.info);
        if new {
            p.unique += 1;
            let nb = novel_bytes(&sub, &p.history[..p.hist_len as usize]);
            p.info += nb;
            p.info_peak = p.info_peak.max(p.info);
            p.novel_total += nb;
            // keep the most recent subdomain text as the compressor's dictionary
            let keep = sub.len().min(p.history.len());
            let old = (p.hist_len as usize).min(p.history.len() - keep);
            let start = p.hist_len as usize - old;
            p.history.copy_within(start..start + old, 0);
            p.history[old..old + keep].copy_from_slice(&sub[sub.len() - keep..]);
            p.hist_len = (old + keep) as u8;
        }
        // check-in times for beaconing: an implant sends a burst of queries per check-in, so a
        // query less than beacon_min_secs after the previous one joins its check-in (a steady
        // stream is one long check-in, never a run of regular ones)
        let n = p.n_times as usize;
        let t = (ts_ms.saturating_sub(p.first_ms) / 100).min(u32::MAX as u64) as u32;
        if n > 0 && dt < s.beacon_min_secs {
            p.new_bits |= u16::from(new);
        } else {
            if n == p.times.len() {
                p.times.copy_within(1.., 0);
                p.times[n - 1] = t;
            } else {
                p.times[n] = t;
                p.n_times += 1;
            }
            p.new_bits = (p.new_bits << 1) | u16::from(new);
        }

        let after = ts_ms.saturating_sub(p.first_ms) as f64 / 1000.0;
        if p.info >= s.info_alarm_bytes {
            // the sum starts again: a leak that goes on alarms again after another
            // info_alarm_bytes (the front keeps the domain convicted while it does)
            p.info = 0.0;
            out.push(Alarm {
                kind: AlarmKind::InfoRate,
                at_ms: ts_ms,
                client,
                domain: Some(p.domain.to_string()),
                novel_bytes: p.novel_total,
                after_secs: after,
                reason: format!(
                    "{} of unique subdomain data to {} in {} from {client} ({} distinct subdomains in {} queries; alarm at {} decaying over {})",
                    fmt_bytes(p.novel_total),
                    p.domain,
                    fmt_secs(after),
                    p.unique,
                    p.queries,
                    fmt_bytes(s.info_alarm_bytes),
                    fmt_secs(s.info_tau_secs as f64)
                ),
            });
        }
        if p.n_times >= s.beacon_min_queries.min(16) {
            if let Some((period, spread)) = regular(&p.times[..p.n_times as usize]) {
                let recent = (p.n_times as u32).min(16);
                let new_share = (p.new_bits & ((1u32 << recent) - 1) as u16).count_ones() as f64
                    / recent as f64;
                if spread <= s.beacon_max_spread
                    && (s.beacon_min_secs..=s.beacon_max_secs).contains(&period)
                    && new_share >= s.beacon_min_unique
                {
                    // a new run of arrivals must show the pattern again
                    p.n_times = 0;
                    out.push(Alarm {
                        kind: AlarmKind::Beacon,
                        at_ms: ts_ms,
                        client,
                        domain: Some(p.domain.to_string()),
                        novel_bytes: p.novel_total,
                        after_secs: after,
                        reason: format!(
                            "beacon: {client} queries {} every {:.1} s (spread {:.0} %) with changing subdomains ({:.0} % new) over {}",
                            p.domain,
                            period,
                            spread * 100.0,
                            new_share * 100.0,
                            fmt_secs(after)
                        ),
                    });
                }
            }
        }
        out
    }

    /// One response to `client`: NXDOMAIN walks over many registered domains make a DGA bot.
    /// `dga_score` is the per-name DGA probability when the model judged the name (else 0).
    ///
    /// Two sliding windows over the client's distinct failing registered domains: the fast
    /// rule (`dga_min_domains` within `dga_window_secs`) and the slow one
    /// (`dga_slow_min_domains` within `dga_slow_window_secs`). Repeats of a failing domain
    /// (a typo retried, search-list suffixes under one domain) count once. While a rule holds
    /// the client alarms at most once per `dga_window_secs`.
    pub fn observe_response(
        &mut self,
        ts_ms: u64,
        client: IpAddr,
        name: &DnsName,
        rcode: u8,
        dga_score: f32,
    ) -> Vec<Alarm> {
        // failed reverse, DNSBL and internal lookups are no DGA walk: a mail server's PTR
        // checks of clients without PTR records would otherwise mark it a bot
        let rcode = match name.registered_domain() {
            Some(rd)
                if rcode == 3 && (rd == "arpa" || rd.ends_with(".arpa") || self.is_lookup(&rd)) =>
            {
                0
            }
            _ => rcode,
        };
        let mut out = Vec::new();
        let s = &self.s;
        let slow = s.dga_slow_rule();
        let horizon = if slow {
            s.dga_window_secs.max(s.dga_slow_window_secs)
        } else {
            s.dga_window_secs
        };
        if !self.clients.contains(&client) {
            if rcode != 3 {
                return out; // only clients with failures need state
            }
            self.clients.push(
                client,
                Client {
                    nx_seen: Vec::new(),
                    since_s: 0,
                    responses: 0,
                    nx: 0,
                    nx_score: 0.0,
                    examples: Vec::new(),
                    alarm_s: None,
                },
            );
        }
        let c = self.clients.get_mut(&client).expect("present");
        // seconds fit a u32 until 2106; a clock that steps back does not reorder the buffer
        let now_s = ((ts_ms / 1000).min(u64::from(u32::MAX)) as u32)
            .max(c.nx_seen.last().map_or(0, |e| e.secs));
        let expired = c
            .nx_seen
            .partition_point(|e| u64::from(now_s - e.secs) >= horizon);
        c.nx_seen.drain(..expired);
        if c.nx_seen.is_empty() {
            // a new episode: what the reason quotes starts again
            c.since_s = now_s;
            c.responses = 0;
            c.nx = 0;
            c.nx_score = 0.0;
            c.examples.clear();
            if expired > 0 {
                c.nx_seen = Vec::new(); // a quiet client gives its buffer back
            }
        }
        c.responses += 1;
        if rcode != 3 {
            return out;
        }
        let Some(rd) = name.registered_domain() else {
            return out;
        };
        c.nx += 1;
        c.nx_score += dga_score;
        let key = hash_of(&self.hasher, rd.as_str()) as u32;
        match c.nx_seen.iter().position(|e| e.key == key) {
            Some(i) => {
                // a repeat: it moves to the back (its last failure is now)
                c.nx_seen.remove(i);
            }
            None => {
                if c.nx_seen.len() >= self.dga_buffer {
                    c.nx_seen.remove(0);
                }
                if !c.examples.contains(&rd) {
                    if c.examples.len() == 3 {
                        c.examples.remove(0);
                    }
                    c.examples.push(rd);
                }
            }
        }
        if c.nx_seen.len() == c.nx_seen.capacity() {
            // grow by doubling but never past the buffer: memory stays at client_bytes
            let len = c.nx_seen.len();
            c.nx_seen
                .reserve_exact(len.max(4).min(self.dga_buffer.saturating_sub(len).max(1)));
        }
        c.nx_seen.push(NxSeen { secs: now_s, key });

        let (fast_n, fast_from) = c.within(now_s, s.dga_window_secs);
        let (slow_n, slow_from) = c.within(now_s, s.dga_slow_window_secs);
        let fired = if fast_n >= s.dga_min_domains as usize {
            Some((
                "fast",
                s.dga_min_domains,
                s.dga_window_secs,
                fast_n,
                fast_from,
            ))
        } else if slow && slow_n >= s.dga_slow_min_domains as usize {
            Some((
                "slow",
                s.dga_slow_min_domains,
                s.dga_slow_window_secs,
                slow_n,
                slow_from,
            ))
        } else {
            None
        };
        let Some((rule, min, window, n, from)) = fired else {
            return out;
        };
        if c.alarm_s
            .is_some_and(|a| u64::from(now_s - a) < s.dga_window_secs)
        {
            return out;
        }
        c.alarm_s = Some(now_s);
        let after = f64::from(now_s - from);
        out.push(Alarm {
            kind: AlarmKind::DgaBot,
            at_ms: ts_ms,
            client,
            domain: None,
            novel_bytes: 0.0,
            after_secs: after,
            reason: format!(
                "DGA bot ({rule} rule: {min} distinct NXDOMAIN registered domains within {}): {client} got NXDOMAIN for {n} distinct registered domains in {} ({} of {} answers failed in {}; mean per-name score {:.2}; e.g. {})",
                fmt_secs(window as f64),
                fmt_secs(after),
                c.nx,
                c.responses,
                fmt_secs(f64::from(now_s - c.since_s)),
                c.nx_score / c.nx as f32,
                c.examples.join(", ")
            ),
        });
        out
    }
}

/// (median interval s, median absolute deviation / median) of arrival times (deciseconds),
/// when there are at least three intervals.
fn regular(times: &[u32]) -> Option<(f64, f64)> {
    if times.len() < 4 {
        return None;
    }
    let mut iv: Vec<f64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 10.0)
        .collect();
    iv.sort_by(f64::total_cmp);
    let med = iv[iv.len() / 2];
    if med <= 0.0 {
        return None;
    }
    let mut dev: Vec<f64> = iv.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    Some((med, dev[dev.len() / 2] / med))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_beacon_bounds_are_problems() {
        // found by the config_toml fuzz target: `beacon_min_secs = nan` passed the check
        for (min, max) in [
            (f64::NAN, 3600.0),
            (5.0, f64::NAN),
            (-1.0, 10.0),
            (20.0, 10.0),
        ] {
            let s = Settings {
                beacon_min_secs: min,
                beacon_max_secs: max,
                ..Settings::default()
            };
            assert_eq!(s.problems().len(), 1, "{min} {max}");
        }
        assert!(Settings::default().problems().is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn q(t: &mut Tracker, ts: u64, c: &str, n: &str) -> Vec<Alarm> {
        t.observe_query(ts, ip(c), &DnsName::parse(n).unwrap())
    }

    /// Issue 21: letter case as a channel. Case variants of one name carry a bit per letter;
    /// they used to count as nothing new. Control: the same name repeated, in one case, stays
    /// quiet, and a variant repeated counts once.
    #[test]
    fn case_variants_of_one_name_count_as_information() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let base = "documentationportalserviceaccount";
        let mut t = Tracker::new(Settings::default());
        let mut quiet = Tracker::new(Settings::default());
        let mut alarms = Vec::new();
        for i in 0..400u64 {
            let variant: String = base
                .chars()
                .map(|c| {
                    if rng.random::<bool>() {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            alarms.extend(q(
                &mut t,
                i * 1000,
                "10.0.0.1",
                &format!("{variant}.example.com"),
            ));
            let none = q(
                &mut quiet,
                i * 1000,
                "10.0.0.1",
                &format!("{base}.example.com"),
            );
            assert!(none.is_empty(), "one name repeated alarmed: {none:?}");
        }
        let info = alarms.iter().find(|a| a.kind == AlarmKind::InfoRate);
        assert!(
            info.is_some(),
            "400 case variants (33 bits each) passed unseen"
        );
        // one variant over and over is one variant
        let mut same = Tracker::new(Settings::default());
        for i in 0..400u64 {
            let none = q(
                &mut same,
                i * 1000,
                "10.0.0.1",
                "DocumentationPortal.example.com",
            );
            assert!(none.is_empty());
        }
    }

    /// Issue 21: the bytes a released query carries outside its question count toward the
    /// information rate. A benign name repeated with a new 24-byte carrier each time (a
    /// cookie or TSIG rewritten per query) alarms; the same name with one carrier repeated
    /// (a client's fixed cookie), or with zero padding, stays quiet.
    #[test]
    fn data_outside_the_question_counts_as_information() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let name = DnsName::parse("www.example.com").unwrap();
        let run = |carrier: &mut dyn FnMut() -> Vec<u8>| {
            let mut t = Tracker::new(Settings::default());
            (0..200u64)
                .flat_map(|i| {
                    t.observe_query_carrying(i * 1000, ip("10.0.0.1"), 0, &name, &carrier())
                })
                .find(|a| a.kind == AlarmKind::InfoRate)
        };
        let alarm = run(&mut || (0..24).map(|_| rng.random::<u8>() | 1).collect());
        assert!(
            alarm.is_some(),
            "200 × 24 new bytes outside the question unseen"
        );
        let cookie = vec![7u8; 24];
        assert!(
            run(&mut || cookie.clone()).is_none(),
            "one carrier repeated"
        );
        assert!(run(&mut || vec![0; 128]).is_none(), "zero padding");
    }

    #[test]
    fn leakage_bound_arithmetic() {
        let s = Settings::default();
        assert!((s.undetected_rate() - 1024.0 / 14_400.0).abs() < 1e-9);
        let t = s.time_to_detect(0.5).unwrap();
        assert!(t < 3600.0, "0.5 B/s within an hour: {t}");
        assert!(
            s.time_to_detect(0.05).is_none(),
            "below the undetected rate"
        );
        assert!(s.memory_bound() < 32 << 20, "{}", s.memory_bound());
    }

    /// Issue 25: the novelty filter's error is bounded. 1 000 unique names are ~1 000 distinct
    /// (the 512-bit filter counted 858); an attacker who first sends 5 000 junk names to fill
    /// it still has its real payload counted; repeats within a filter's span stay repeats.
    #[test]
    fn novelty_error_is_bounded_and_the_filter_cannot_be_prefilled() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b32 = |n: usize| -> String {
            (0..n)
                .map(|_| b"abcdefghijklmnopqrstuvwxyz234567"[rng.random_range(0..32)] as char)
                .collect()
        };
        let s = Settings {
            info_alarm_bytes: 1e12, // count only; no alarm resets anything
            ..Settings::default()
        };
        // each tracker below has one pair: the one client and its zone
        let unique = |t: &Tracker, _: &str| t.top_info(1).first().map_or(0, |p| p.3);
        let mut t = Tracker::seeded(s.clone(), 1);
        for i in 0..1000u64 {
            q(
                &mut t,
                i * 100,
                "10.0.0.7",
                &format!("{}.t.example", b32(40)),
            );
        }
        let n = unique(&t, "example");
        assert!(n >= 985, "1 000 unique names counted as {n} distinct");

        let mut t = Tracker::seeded(s.clone(), 2);
        for i in 0..5000u64 {
            q(
                &mut t,
                i * 10,
                "10.0.0.8",
                &format!("{}.t.example", b32(12)),
            );
        }
        let before = unique(&t, "example");
        for i in 0..200u64 {
            q(
                &mut t,
                50_000 + i * 10,
                "10.0.0.8",
                &format!("{}.t.example", b32(40)),
            );
        }
        let real = unique(&t, "example") - before;
        assert!(
            real >= 194,
            "after a junk pre-fill only {real} of 200 payload names counted"
        );

        // control: the same 50 names asked again and again are not new
        let mut t = Tracker::seeded(s, 3);
        let names: Vec<String> = (0..50).map(|_| format!("{}.t.example", b32(20))).collect();
        for r in 0..10u64 {
            for (i, n) in names.iter().enumerate() {
                q(&mut t, r * 5_000 + i as u64 * 10, "10.0.0.9", n);
            }
        }
        let n = unique(&t, "example");
        assert!(
            (48..=52).contains(&n),
            "50 names repeated 10 times counted as {n}"
        );
    }

    /// Issue 25: the same input gives the same alarms with the same seed (a replay).
    #[test]
    fn a_seeded_tracker_is_deterministic() {
        let run = |seed: u64| {
            let mut t = Tracker::seeded(Settings::default(), seed);
            let mut out = Vec::new();
            for i in 0..3000u64 {
                let name = format!(
                    "{:x}{}.c2.example",
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    i % 7
                );
                for a in q(&mut t, i * 200, "10.0.0.5", &name) {
                    out.push((a.at_ms, a.reason));
                }
            }
            (out, t.top_info(5))
        };
        let (a, ta) = run(9);
        let (b, tb) = run(9);
        assert!(!a.is_empty(), "the input alarms");
        assert_eq!(a, b);
        assert_eq!(format!("{ta:?}"), format!("{tb:?}"));
    }

    #[test]
    fn slow_payload_alarms_and_repeated_names_do_not() {
        let mut t = Tracker::new(Settings::default());
        // 1 query per minute, 32 fresh base32 characters each (~20 B): ~0.33 B/s
        let mut alarm = None;
        for i in 0..240u64 {
            let payload: String = (0..32)
                .map(|j| {
                    b"abcdefghijklmnopqrstuvwxyz234567"
                        [((i * 7919 + j * 104729) ^ (i * j)) as usize % 32]
                        as char
                })
                .collect();
            let a = q(
                &mut t,
                i * 60_000,
                "10.0.0.5",
                &format!("{payload}.exfil.example"),
            );
            if let Some(a) = a.into_iter().find(|a| a.kind == AlarmKind::InfoRate) {
                alarm = Some(a);
                break;
            }
        }
        let a = alarm.expect("slow exfiltration alarms");
        assert!(
            a.reason.contains("exfil.example") && a.reason.contains("10.0.0.5"),
            "{}",
            a.reason
        );
        assert!(a.after_secs < 4.0 * 3600.0);
        // the same few names every 30 s for a day: nothing
        let mut t = Tracker::new(Settings::default());
        for i in 0..2880u64 {
            for n in ["www.example.org", "api.example.org", "cdn.example.org"] {
                assert!(q(&mut t, i * 30_000, "10.0.0.6", n).is_empty());
            }
        }
    }

    #[test]
    fn one_off_domains_take_no_slot() {
        let mut t = Tracker::new(Settings {
            max_pairs: 16,
            ..Settings::default()
        });
        for i in 0..10_000 {
            q(&mut t, i, "10.0.0.7", &format!("www.site{i}.com"));
        }
        // the count-min sketch can over-count a pair that collides in all four rows: rare
        assert!(
            t.pairs() <= 8,
            "{} of 10 000 one-off domains admitted",
            t.pairs()
        );
    }

    #[test]
    fn failed_lookups_are_no_dga_walk() {
        let mut t = Tracker::new(Settings::default());
        let c: IpAddr = "10.0.0.5".parse().unwrap();
        let mut alarms = 0;
        // a mail server checking clients without PTR records, and DNSBL misses
        for i in 0..200u32 {
            let ptr = format!(
                "{}.{}.{}.{}.in-addr.arpa",
                i % 250,
                i / 7,
                i % 13,
                i % 223 + 1
            );
            let bl = format!("{}.{}.0.10.zen.spamhaus.org", i % 250, i % 13);
            for n in [ptr, bl] {
                alarms += t
                    .observe_response(u64::from(i) * 100, c, &DnsName::parse(&n).unwrap(), 3, 0.0)
                    .len();
            }
        }
        assert_eq!(alarms, 0);
        // control: distinct failing registered domains still make a walk
        for i in 0..30u32 {
            let n = DnsName::parse(&format!("q{i}xkvbrtzplw{i}.com")).unwrap();
            alarms += t
                .observe_response(30_000 + u64::from(i) * 100, c, &n, 3, 0.0)
                .len();
        }
        assert_eq!(alarms, 1);
    }

    #[test]
    fn lookup_zones_are_skipped() {
        let mut t = Tracker::new(Settings::default());
        for i in 0..5000u64 {
            let n = format!(
                "{}.{}.{}.{}.zen.spamhaus.org",
                i % 251,
                i % 13,
                i % 7,
                i % 199
            );
            assert!(q(&mut t, i * 100, "10.0.0.8", &n).is_empty());
        }
    }

    /// A sweep of hundreds of host names in an internal zone is not a leak; the same sweep
    /// under a zone the operator did not declare is (what `internal_zones` is for).
    #[test]
    fn internal_zones_are_skipped() {
        let mut s = Settings::default();
        s.internal_zones.push("corp.example".into());
        let mut t = Tracker::new(s);
        let mut other = Tracker::new(Settings::default());
        let mut alarms = 0;
        for i in 0..600u64 {
            let host = format!(
                "ws{}-{}.{}",
                i * 7919 % 10007,
                i % 17,
                ["eng", "ops", "fin"][i as usize % 3]
            );
            assert!(q(&mut t, i * 100, "10.0.0.7", &format!("{host}.corp.example")).is_empty());
            assert!(q(
                &mut t,
                i * 100,
                "10.0.0.7",
                &format!("{host}.printer.local")
            )
            .is_empty());
            alarms += q(
                &mut other,
                i * 100,
                "10.0.0.7",
                &format!("{host}.corp.example"),
            )
            .len();
        }
        assert!(alarms > 0, "the same sweep to an undeclared zone alarms");
    }

    #[test]
    fn dga_bot_and_beacon() {
        let mut t = Tracker::new(Settings::default());
        let c = ip("10.0.0.9");
        let mut hit = None;
        for i in 0..40u64 {
            let n = DnsName::parse(&format!("xq{i}zkvbnrt{}.com", i * 7)).unwrap();
            if let Some(a) = t.observe_response(i * 1000, c, &n, 3, 0.9).pop() {
                hit = Some((i, a));
                break;
            }
        }
        let (i, a) = hit.expect("DGA walk alarms");
        assert!((18..=24).contains(&i), "after ~20 domains: {i}");
        assert!(a.reason.contains("DGA bot"), "{}", a.reason);
        // NXDOMAIN for a handful of typos: nothing
        let mut t = Tracker::new(Settings::default());
        for i in 0..200u64 {
            let n = DnsName::parse(&format!("typo{}.com", i % 5)).unwrap();
            assert!(t.observe_response(i * 1000, c, &n, 3, 0.0).is_empty());
        }
        // a beacon every 60 s with a fresh id
        let mut t = Tracker::new(Settings::default());
        let mut beacon = None;
        for i in 0..30u64 {
            let jitter = (i * 37) % 900;
            let a = q(
                &mut t,
                i * 60_000 + jitter,
                "10.0.0.10",
                &format!("id{}.c2.example", i * 7919 % 10007),
            );
            if let Some(a) = a.into_iter().find(|a| a.kind == AlarmKind::Beacon) {
                beacon = Some(a);
                break;
            }
        }
        let b = beacon.expect("beacon alarms");
        assert!(b.reason.contains("every 60"), "{}", b.reason);
        // an implant checking in every 60 s ± 10 % with a burst of three fresh names
        let mut t2 = Tracker::new(Settings::default());
        let c2 = ip("10.0.0.12");
        let mut at = 0u64;
        let mut burst = None;
        for i in 0..40u64 {
            at += 54_000 + (i * 7919 % 12_000);
            for j in 0..3u64 {
                let n = format!("{:x}{j}.c2.example", i * 2654435761 % 65_521);
                if let Some(a) = q(&mut t2, at + j * 150, "10.0.0.12", &n).pop() {
                    burst.get_or_insert((i, a));
                }
            }
        }
        let (i, a) = burst.expect("a bursty beacon alarms");
        assert_eq!(a.kind, AlarmKind::Beacon);
        assert_eq!(a.client, c2);
        assert!(i < 20, "after {i} check-ins");
        // a steady stream (1 query/s, Poisson-like gaps, a fifth of the names new) is one long
        // check-in, not a beacon
        let mut t3 = Tracker::new(Settings::default());
        let mut at = 0u64;
        for i in 0..3600u64 {
            at += 200 + (i * 2654435761 % 1600);
            let n = if i % 5 == 0 {
                format!("img{}.cdn.example", i)
            } else {
                format!("img{}.cdn.example", i % 40)
            };
            let a = q(&mut t3, at, "10.0.0.13", &n);
            assert!(a.iter().all(|a| a.kind != AlarmKind::Beacon), "{a:?}");
        }
        // the same name polled every 60 s (a cached update check): no beacon
        let mut t = Tracker::new(Settings::default());
        for i in 0..100u64 {
            assert!(q(&mut t, i * 60_000, "10.0.0.11", "update.vendor.example").is_empty());
        }
    }

    fn nx(t: &mut Tracker, secs: u64, c: &str, n: &str) -> Vec<Alarm> {
        t.observe_response(secs * 1000, ip(c), &DnsName::parse(n).unwrap(), 3, 0.5)
    }

    /// A distinct DGA-looking registered domain per `i`.
    fn dga_name(i: u64) -> String {
        format!("q{}zx{i}vk.com", i * 7919 % 10_007)
    }

    /// A slow bot: one failing domain a minute (10 per fast window) alarms on the slow rule at
    /// its `dga_slow_min_domains`-th failure; the tumbling window never alarmed.
    #[test]
    fn dga_slow_walk_alarms_on_the_slow_rule() {
        let s = Settings::default();
        let mut t = Tracker::new(s.clone());
        let mut hit = None;
        for i in 0..400u64 {
            if let Some(a) = nx(&mut t, i * 60, "10.0.3.1", &dga_name(i)).pop() {
                hit = Some((i + 1, a));
                break;
            }
        }
        let (n, a) = hit.expect("a name a minute alarms");
        assert_eq!(n, u64::from(s.dga_slow_min_domains), "{}", a.reason);
        assert_eq!(a.kind, AlarmKind::DgaBot);
        assert!(
            a.reason.contains("slow rule") && a.reason.contains("within 6.0 h"),
            "{}",
            a.reason
        );
        assert!(a
            .reason
            .contains("40 distinct registered domains in 39 min"));
        assert_eq!(a.after_secs, 39.0 * 60.0);
        // with the slow rule off it never does
        for off in [
            Settings {
                dga_slow_min_domains: 0,
                ..Settings::default()
            },
            Settings {
                dga_slow_window_secs: 0,
                ..Settings::default()
            },
        ] {
            assert!(off.problems().is_empty());
            let mut t = Tracker::new(off);
            for i in 0..400u64 {
                assert!(nx(&mut t, i * 60, "10.0.3.1", &dga_name(i)).is_empty());
            }
        }
    }

    /// 20 domains in 20 s across the edge of a tumbling window (one failure at 0 s opened
    /// it): 6 fell in the first window and 14 in the second, and nothing alarmed.
    #[test]
    fn dga_burst_straddling_a_window_edge_alarms() {
        let mut t = Tracker::new(Settings::default());
        assert!(nx(&mut t, 0, "10.0.3.2", "first-typo.com").is_empty());
        let mut alarms = Vec::new();
        for i in 0..20u64 {
            alarms.extend(nx(&mut t, 595 + i, "10.0.3.2", &format!("burst{i}q.net")));
        }
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        let a = &alarms[0];
        assert!(
            a.reason.contains("fast rule") && a.reason.contains("within 10 min"),
            "{}",
            a.reason
        );
        assert_eq!(a.at_ms, 614_000, "at the 20th distinct failure");
    }

    /// What a benign client does: retry a failing name, fail under one registered domain
    /// (search-list suffixes), fail now and then, get answers. None of it alarms.
    #[test]
    fn dga_benign_failures_do_not_alarm() {
        let s = Settings::default();
        // the same name failing every 10 s for a day
        let mut t = Tracker::new(s.clone());
        for i in 0..8640u64 {
            assert!(nx(&mut t, i * 10, "10.0.4.1", "printer.gone-vendor.com").is_empty());
        }
        // 39 distinct failures in every 6 h, for a day (one every 555 s: 21 600 / 555 < 39)
        let mut t = Tracker::new(s.clone());
        for i in 0..156u64 {
            assert!(
                nx(&mut t, i * 555, "10.0.4.2", &dga_name(i)).is_empty(),
                "failure {i}"
            );
        }
        // search-list suffixes: thousands of distinct host names under one registered domain
        let mut t = Tracker::new(s.clone());
        for i in 0..5000u64 {
            let n = format!(
                "host{i}.{}.corp-example.com",
                ["eng", "ops", "hq"][i as usize % 3]
            );
            assert!(nx(&mut t, i, "10.0.4.3", &n).is_empty());
            assert!(nx(&mut t, i, "10.0.4.3", &format!("host{i}.corp-example.com")).is_empty());
        }
        // thousands of distinct domains answered (NOERROR): no alarm, no state either
        let mut t = Tracker::new(s.clone());
        for i in 0..5000u64 {
            let n = DnsName::parse(&dga_name(i)).unwrap();
            assert!(t
                .observe_response(i * 100, ip("10.0.4.4"), &n, 0, 0.9)
                .is_empty());
        }
        assert_eq!(t.clients(), 0);
        // ...and answers among failures do not help the failures along
        let mut t = Tracker::new(s);
        for i in 0..2000u64 {
            let n = DnsName::parse(&dga_name(i)).unwrap();
            let rcode = if i % 100 == 0 { 3 } else { 0 };
            assert!(t
                .observe_response(i * 10_000, ip("10.0.4.5"), &n, rcode, 0.9)
                .is_empty());
        }
    }

    /// A bot that keeps walking alarms at most once per `dga_window_secs`, is marked again as
    /// soon as its failures resume after a mark (its refused names are not seen), and a new
    /// walk after a quiet spell alarms again.
    #[test]
    fn dga_alarms_once_per_window_while_a_rule_holds() {
        let mut t = Tracker::new(Settings::default());
        // one failure a second for an hour: 6 alarms, 600 s apart
        let mut at = Vec::new();
        for i in 0..3600u64 {
            for a in nx(&mut t, i, "10.0.3.3", &dga_name(i)) {
                at.push(a.at_ms / 1000);
            }
        }
        assert_eq!(at, [19, 619, 1219, 1819, 2419, 3019], "{at:?}");
        // a slow walk, marked at its 40th failure; its names are refused (unseen) for the
        // hour the mark lasts; the next failure is still within 6 h of the first 40: a mark
        let mut t = Tracker::new(Settings::default());
        let mut at = Vec::new();
        for i in 0..300u64 {
            if at.last().is_some_and(|&a| i * 60 < a + 3600) {
                continue; // refused while marked
            }
            for a in nx(&mut t, i * 60, "10.0.3.4", &dga_name(i)) {
                at.push(a.at_ms / 1000);
            }
        }
        assert_eq!(at[..3], [39 * 60, 99 * 60, 159 * 60], "{at:?}");
        // a quiet day later a new walk needs its own 20 (or 40)
        let day = 86_400;
        let mut alarms = 0;
        for i in 0..20u64 {
            let a = nx(&mut t, day + i, "10.0.3.4", &dga_name(1000 + i));
            assert!(i == 19 || a.is_empty(), "{i}: {a:?}");
            alarms += a.len();
        }
        assert_eq!(alarms, 1);
    }

    /// Per-client memory stays at `Settings::client_bytes` whatever a client sends, and the
    /// table at `max_clients`.
    #[test]
    fn dga_memory_is_bounded() {
        let s = Settings::default();
        assert_eq!(s.dga_buffer(), 40);
        assert!(s.client_bytes() <= 512, "{}", s.client_bytes());
        assert!(s.memory_bound() < 32 << 20, "{}", s.memory_bound());
        let mut t = Tracker::new(s.clone());
        for i in 0..10_000u64 {
            nx(&mut t, i, "10.0.5.1", &dga_name(i));
            let c = t.clients.peek(&ip("10.0.5.1")).unwrap();
            assert!(c.nx_seen.len() <= 40 && c.nx_seen.capacity() <= 40);
            assert!(c.examples.len() <= 3);
        }
        // the largest buffer the settings allow
        let big = Settings {
            dga_slow_min_domains: MAX_DGA_DOMAINS,
            ..Settings::default()
        };
        assert!(big.problems().is_empty());
        let mut t = Tracker::new(big.clone());
        for i in 0..10_000u64 {
            nx(&mut t, i * 60, "10.0.5.2", &dga_name(i));
        }
        let c = t.clients.peek(&ip("10.0.5.2")).unwrap();
        assert_eq!(c.nx_seen.len(), MAX_DGA_DOMAINS as usize);
        assert_eq!(c.nx_seen.capacity(), MAX_DGA_DOMAINS as usize);
        // 10 000 distinct failures from 10 000 clients: the table stays at max_clients
        let mut t = Tracker::new(Settings {
            max_clients: 64,
            ..Settings::default()
        });
        for i in 0..10_000u64 {
            nx(
                &mut t,
                i,
                &format!("10.1.{}.{}", i / 250, i % 250),
                &dga_name(i),
            );
        }
        assert_eq!(t.clients(), 64);
        // a quiet client gives its buffer back on its next failure
        let mut t = Tracker::new(s);
        for i in 0..30u64 {
            nx(&mut t, i * 60, "10.0.5.3", &dga_name(i));
        }
        nx(&mut t, 86_400, "10.0.5.3", "late-typo.com");
        let c = t.clients.peek(&ip("10.0.5.3")).unwrap();
        assert_eq!((c.nx_seen.len(), c.nx_seen.capacity()), (1, 4));
    }

    #[test]
    fn dga_settings_are_checked() {
        let bad = |s: Settings| s.problems().join("; ");
        for (s, key) in [
            (
                Settings {
                    dga_min_domains: MAX_DGA_DOMAINS + 1,
                    ..Settings::default()
                },
                "dga_min_domains",
            ),
            (
                Settings {
                    dga_slow_min_domains: 1,
                    ..Settings::default()
                },
                "dga_slow_min_domains",
            ),
            (
                Settings {
                    dga_slow_min_domains: MAX_DGA_DOMAINS + 1,
                    ..Settings::default()
                },
                "dga_slow_min_domains",
            ),
            (
                Settings {
                    dga_slow_window_secs: 8 * 86_400,
                    ..Settings::default()
                },
                "dga_slow_window_secs",
            ),
            (
                Settings {
                    dga_slow_window_secs: 300,
                    ..Settings::default()
                },
                "dga_slow_window_secs = 300 must be 0 (off) or >= dga_window_secs",
            ),
        ] {
            let p = bad(s);
            assert!(p.contains(key), "{key}: {p}");
        }
    }
}
