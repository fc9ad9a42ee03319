//! The conviction policy, one for the agent and the resolver front: which zone the evidence
//! points at, who is blocked (the client that sent it, or everyone), on what evidence and for
//! how long, in bounded tables.
//!
//! An attacker chooses the queries, not who answers them: a tunnel needs an authoritative
//! server the attacker runs, so it lives in a zone of its own. Anybody can send a
//! tunnel-looking name under somebody else's domain, so one client's queries only ever block
//! that client (the process on a host, the address at the front). A zone is blocked for
//! everyone (kernel blocklist, RPZ, fleet topic) only on the evidence the operator trusts:
//! malicious queries from `domain_clients` distinct clients, an information-rate or beacon
//! alarm (`alarm_blocks_everyone`), a fleet entry, an operator list. Public suffixes, lookup
//! zones (`arpa`, `local`) and popular domains are never blocked for everyone, whoever asks,
//! unless the operator unprotects them. Every block says what evidence it rests on.

use exfilguard_behaviour::Alarm;
use exfilguard_detect::{fmt_p, fmt_vs, Action, Class, Detector, Level, NameList, Source, Verdict};
use exfilguard_dns::DnsName;
use exfilguard_kafka::fleet::FleetUpdate;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The built-in popularity list (data/README.md says where it comes from).
const POPULAR: &str = include_str!("../data/popular.txt");

/// Distinct clients remembered per zone: enough for any sane `domain_clients`.
const MAX_WITNESSES: usize = 16;
/// Distinct suspect names remembered per (client, zone): enough for any sane `domain_names`.
const MAX_SUSPECTS: usize = 32;
/// Bytes left of the registered domain (dots excluded) a suspect name carries at least.
pub const SUSPECT_MIN_BYTES: usize = 16;

/// `[convict]`: who a conviction blocks, and the bounds of the tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Distinct clients (front: addresses, IPv6 by /64; agent: user and cgroup of the sending
    /// process) whose malicious queries under one zone, within `window_secs`, block the zone
    /// for everyone: host blocklist, RPZ, fleet topic. Until then only the sending client is
    /// blocked. 1 blocks for everyone on one client's evidence (trusting every client).
    pub domain_clients: u32,
    /// An information-rate or beacon alarm blocks its zone for everyone on its own (a sustained
    /// leak is stronger evidence than one name); false: it blocks the client that raised it.
    pub alarm_blocks_everyone: bool,
    /// How long one client's evidence counts toward `domain_clients`, seconds.
    pub window_secs: u64,
    /// How long a block of one client (process or address) from a zone lasts, seconds.
    pub client_block_secs: u64,
    /// Zones blocked for everyone, at most (least recently used beyond: evicted and counted).
    pub max_zones: usize,
    /// Client blocks (client × zone), at most; likewise evicted and counted.
    pub max_client_blocks: usize,
    /// Popular domains never blocked for everyone: a file (one domain per line, or a Tranco
    /// `rank,domain` CSV) replacing the built-in list of 10 000; empty: the built-in one.
    pub protected_file: Option<PathBuf>,
    /// Entries of the popularity list the operator wants convictable after all.
    pub unprotect: Vec<String>,
    /// The domain-level decision: this many distinct MEDIUM-risk names (suspect, below the
    /// per-name threshold) under one zone from one client within `window_secs` are a tunnel
    /// verdict on the zone, with the same consequences as a per-name one. 0 turns it off.
    pub domain_names: u32,
    /// A DGA-bot alarm (NXDOMAIN walks) marks its client for this long (a name that fails is
    /// not the same evidence as one that resolves; `dga_bot_scope` says what is refused).
    pub dga_bot_secs: u64,
    /// What a marked DGA bot may no longer resolve: `unpopular` (every domain outside the
    /// popularity list: the next candidate the walk tries, word-list DGAs included) or
    /// `suspect` (only names the DGA detector rates MEDIUM or HIGH).
    pub dga_bot_scope: DgaBotScope,
}

/// See `Settings::dga_bot_scope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DgaBotScope {
    #[default]
    Unpopular,
    Suspect,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            domain_clients: 2,
            alarm_blocks_everyone: true,
            window_secs: 3600,
            client_block_secs: 3600,
            max_zones: 100_000,
            max_client_blocks: 100_000,
            protected_file: None,
            unprotect: Vec::new(),
            domain_names: 4,
            dga_bot_secs: 3600,
            dga_bot_scope: DgaBotScope::Unpopular,
        }
    }
}

impl Settings {
    /// What is wrong with the settings, as `convict.<key>: …` lines.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.domain_clients == 0 || self.domain_clients as usize > MAX_WITNESSES {
            p.push(format!(
                "convict.domain_clients: {} (1..={MAX_WITNESSES})",
                self.domain_clients
            ));
        }
        if self.max_zones == 0 || self.max_client_blocks == 0 {
            p.push("convict.max_zones and convict.max_client_blocks must be at least 1".into());
        }
        if self.domain_names as usize > MAX_SUSPECTS {
            p.push(format!(
                "convict.domain_names: {} (0 = off, or 1..={MAX_SUSPECTS})",
                self.domain_names
            ));
        }
        if self.window_secs == 0 {
            p.push("convict.window_secs: 0 (at least 1)".into());
        }
        if let Some(f) = &self.protected_file {
            if !f.as_os_str().is_empty() && !f.exists() {
                p.push(format!(
                    "convict.protected_file: {} does not exist",
                    f.display()
                ));
            }
        }
        p
    }
}

/// Who sent the evidence, and who a client block applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// A client of the front (or a host seen from the network): its address.
    Addr(IpAddr),
    /// A local process: blocks apply to it (`tgid`); it counts toward `domain_clients` as its
    /// user in its cgroup, so forking does not make more witnesses.
    Process { tgid: u32, uid: u32, cgroup: u64 },
}

/// What a client block is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Process(u32),
}

/// Who counts as one distinct client toward `domain_clients`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Witness {
    Addr(IpAddr),
    User(u32, u64),
}

impl Client {
    fn key(&self) -> Key {
        match *self {
            Client::Addr(a) => Key::Addr(a),
            Client::Process { tgid, .. } => Key::Process(tgid),
        }
    }

    fn witness(&self) -> Witness {
        match *self {
            // an IPv6 client has a /64 to pick addresses from: it is one witness
            Client::Addr(IpAddr::V6(a)) => {
                let seg = a.segments();
                let net = std::net::Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0);
                Witness::Addr(match a.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(net),
                })
            }
            Client::Addr(a) => Witness::Addr(a),
            Client::Process { uid, cgroup, .. } => Witness::User(uid, cgroup),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Addr(a) => write!(f, "client {a}"),
            Client::Process { tgid, uid, .. } => write!(f, "pid {tgid} (uid {uid})"),
        }
    }
}

/// Whom a block applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Nothing beyond the name itself (its zone cannot be convicted): that query is refused.
    Name,
    /// The client that sent the evidence, for every name in the zone.
    Client,
    /// Everyone: host blocklist, RPZ, fleet topic.
    Everyone,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Name => "name",
            Scope::Client => "client",
            Scope::Everyone => "everyone",
        }
    }
}

/// What a piece of evidence is.
#[derive(Clone, Copy, Debug)]
pub enum Evidence<'a> {
    /// A malicious model verdict (its class) on one query.
    Verdict(&'a str),
    /// A behaviour alarm: its kind (information_rate, beacon) and reason.
    Alarm(&'a str, &'a str),
    /// The domain-level decision: `names` distinct suspect names of one client under the zone,
    /// none refused on its own; the class they point to.
    Domain(&'a str, u32),
}

impl fmt::Display for Evidence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Verdict(c) => write!(f, "{c} verdict"),
            Evidence::Alarm(k, why) => write!(f, "{k} alarm ({why})"),
            Evidence::Domain(c, n) => write!(
                f,
                "domain-level {c} verdict ({n} distinct suspect names, each below the per-name threshold)"
            ),
        }
    }
}

/// What one piece of evidence did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The zone blocked (None: the name has no zone that may be convicted).
    pub zone: Option<String>,
    pub scope: Scope,
    /// What the block rests on, for logs, events and the RPZ/fleet reason.
    pub evidence: String,
    /// The zone became blocked for everyone now: the caller blocks it in the kernel, the RPZ
    /// and publishes it.
    pub newly_everyone: bool,
    /// Zones blocked for everyone that were evicted to make room: the caller lifts them.
    pub evicted: Vec<String>,
}

/// A block in force for a name.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub zone: String,
    pub scope: Scope,
    pub evidence: String,
}

/// What a fleet update did.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetAction {
    /// The zone is blocked for everyone (until the instant, None: until unblocked).
    Block {
        zone: String,
        until: Option<Instant>,
        evicted: Vec<String>,
    },
    /// The zone is released (tombstone or expired entry); `was` = it was blocked here.
    Unblock { zone: String, was: bool },
    /// Not applied, and why.
    Skipped { zone: String, why: String },
}

/// What [`Convictions::escalate`] made of a benign per-name verdict.
#[derive(Clone, Debug)]
pub enum Escalation {
    No,
    /// A name from a client a DGA-bot alarm marked: refuse (or report) **this name only** —
    /// never evidence against its zone nor a witness: a bot never revisits a zone, and a
    /// victim made to fail lookups must not get anybody's domain blocked.
    DgaBot(Verdict),
    /// The domain-level decision: the verdict on the zone and what it did.
    Domain(Verdict, Outcome),
}

/// What a behaviour alarm did.
#[derive(Clone, Debug, PartialEq)]
pub enum AlarmAction {
    /// Reported only (a client alarm, blocking off, or monitor mode).
    Report,
    /// The zone is allowlisted: reported, not blocked.
    Allowlisted(String),
    Convicted(Outcome),
}

#[derive(Clone, Debug)]
struct Everyone {
    until: Option<Instant>,
    evidence: String,
}

#[derive(Clone, Debug)]
struct ClientBlock {
    until: Instant,
    evidence: String,
}

/// The conviction tables. Not shared: callers wrap it in their lock.
pub struct Convictions {
    settings: Settings,
    protected: HashSet<String>,
    everyone: LruCache<String, Everyone>,
    clients: LruCache<(Key, String), ClientBlock>,
    witnesses: LruCache<String, Vec<(Witness, Instant)>>,
    /// Suspect names (hash of the lower-cased name, when) per (client, zone).
    suspects: LruCache<(Witness, String), Vec<(u64, Instant)>>,
    /// Clients marked by a DGA-bot alarm, until when.
    dga_bots: LruCache<Key, Instant>,
    evictions: u64,
}

/// Why `zone` may never be blocked for everyone, if it may not.
fn lookup_zone(name: &DnsName) -> Option<&'static str> {
    let n = name.label_count();
    if n == 0 {
        return Some("the root");
    }
    let last = name.label(n - 1).to_ascii_lowercase();
    match last.as_slice() {
        b"arpa" => Some("a lookup zone (reverse DNS and other arpa names)"),
        b"local" | b"localhost" => Some("a link-local lookup zone"),
        _ => None,
    }
}

impl Convictions {
    /// Empty tables; the popularity list from `protected_file` or the built-in one.
    pub fn new(settings: Settings) -> std::io::Result<Self> {
        let text = match settings
            .protected_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(p) => std::fs::read_to_string(p)?,
            None => POPULAR.to_string(),
        };
        let unprotect: HashSet<String> = settings
            .unprotect
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let protected = text
            .lines()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            // Tranco ships `rank,domain`
            .map(|l| l.rsplit(',').next().unwrap_or(l))
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !unprotect.contains(d))
            .collect();
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).expect("non-zero");
        Ok(Self {
            everyone: LruCache::new(cap(settings.max_zones)),
            clients: LruCache::new(cap(settings.max_client_blocks)),
            witnesses: LruCache::new(cap(settings.max_zones)),
            suspects: LruCache::new(cap(settings.max_client_blocks)),
            dga_bots: LruCache::new(cap(settings.max_client_blocks)),
            settings,
            protected,
            evictions: 0,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Zones blocked for everyone.
    pub fn zones(&self) -> usize {
        self.everyone.len()
    }

    /// Client blocks in force (or lapsed and not yet swept).
    pub fn client_blocks(&self) -> usize {
        self.clients.len()
    }

    /// Entries evicted from a full table since start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The zone a name's evidence points at: its registered domain (PSL with private
    /// suffixes, so `x.github.io` is its own); `Err` says why there is none to convict.
    pub fn zone_for(&self, name: &DnsName) -> Result<String, String> {
        if let Some(why) = lookup_zone(name) {
            return Err(format!("{} is in {why}", name.normalized()));
        }
        let zone = name
            .registered_domain()
            .ok_or_else(|| format!("{} is a public suffix", name.normalized()))?;
        match self.protection(&zone) {
            Some(why) => Err(why),
            None => Ok(zone),
        }
    }

    /// Why `zone` may not be blocked for everyone, if so: it is (under) a popular domain, a
    /// public suffix or a lookup zone.
    pub fn protection(&self, zone: &str) -> Option<String> {
        let Ok(name) = DnsName::parse(zone) else {
            return Some(format!("{zone:?} is not a domain name"));
        };
        if let Some(why) = lookup_zone(&name) {
            return Some(format!("{zone} is in {why}"));
        }
        let Some(rd) = name.registered_domain() else {
            return Some(format!("{zone} is a public suffix"));
        };
        self.protected
            .contains(&rd)
            .then(|| format!("{rd} is a popular domain (convict.protected_file)"))
    }

    /// One piece of evidence from `client` about `name`. `everyone_for`: how long a block for
    /// everyone lasts (None: blocks for everyone are off, e.g. `resolve.block_secs = 0`; the
    /// evidence still blocks the client).
    pub fn convict(
        &mut self,
        now: Instant,
        client: &Client,
        name: &DnsName,
        evidence: Evidence<'_>,
        everyone_for: Option<Duration>,
    ) -> Outcome {
        let zone = match self.zone_for(name) {
            Ok(z) => z,
            Err(why) => {
                return Outcome {
                    zone: None,
                    scope: Scope::Name,
                    evidence: format!("{evidence} from {client}; {why}: only the name is refused"),
                    newly_everyone: false,
                    evicted: Vec::new(),
                }
            }
        };
        let window = Duration::from_secs(self.settings.window_secs);
        let w = client.witness();
        let mut evicted = Vec::new();
        let seen = {
            if !self.witnesses.contains(&zone) && self.witnesses.len() == self.witnesses.cap().get()
            {
                self.evictions += 1;
            }
            let list = self.witnesses.get_or_insert_mut(zone.clone(), Vec::new);
            list.retain(|(_, t)| now.duration_since(*t) < window);
            let full = list.len() >= MAX_WITNESSES;
            match list.iter_mut().find(|(x, _)| *x == w) {
                Some(e) => e.1 = now,
                None if !full => list.push((w, now)),
                None => {}
            }
            list.len() as u32
        };
        let need = self.settings.domain_clients.max(1);
        let enough = match evidence {
            Evidence::Verdict(_) | Evidence::Domain(..) => seen >= need,
            Evidence::Alarm(..) => self.settings.alarm_blocks_everyone || seen >= need,
        };
        if let (true, Some(d)) = (enough, everyone_for) {
            let text = if seen >= need && need > 1 {
                format!("{evidence}: malicious queries from {seen} distinct clients within {} s, last from {client}", self.settings.window_secs)
            } else {
                format!("{evidence} from {client}")
            };
            let until = Some(now + d);
            let newly = match self.everyone.get_mut(&zone) {
                Some(e) => {
                    // a block without an end (fleet, operator) is not shortened by a timed one
                    if let (Some(old), Some(new)) = (e.until, until) {
                        e.until = Some(old.max(new));
                    }
                    e.evidence = text.clone();
                    false
                }
                None => {
                    if let Some((old, _)) = self.everyone.push(
                        zone.clone(),
                        Everyone {
                            until,
                            evidence: text.clone(),
                        },
                    ) {
                        self.evictions += 1;
                        evicted.push(old);
                    }
                    true
                }
            };
            return Outcome {
                zone: Some(zone),
                scope: Scope::Everyone,
                evidence: text,
                newly_everyone: newly,
                evicted,
            };
        }
        let text = if everyone_for.is_some()
            && matches!(evidence, Evidence::Verdict(_) | Evidence::Domain(..))
        {
            format!(
                "{evidence} from {client} ({seen} of the {need} distinct clients that block {zone} for everyone)"
            )
        } else {
            format!("{evidence} from {client}")
        };
        let until = now + Duration::from_secs(self.settings.client_block_secs.max(1));
        let key = (client.key(), zone.clone());
        if let Some((k, _)) = self.clients.push(
            key.clone(),
            ClientBlock {
                until,
                evidence: text.clone(),
            },
        ) {
            if k != key {
                self.evictions += 1;
            }
        }
        Outcome {
            zone: Some(zone),
            scope: Scope::Client,
            evidence: text,
            newly_everyone: false,
            evicted,
        }
    }

    /// One suspect name (MEDIUM risk, not refused on its own) from `client`: the
    /// `domain_names`-th distinct one under its zone within `window_secs` convicts the zone
    /// like a verdict (`Evidence::Domain`). None: not (yet) enough, off, or the zone may not
    /// be convicted (popular, lookup zone, public suffix).
    pub fn suspect(
        &mut self,
        now: Instant,
        client: &Client,
        name: &DnsName,
        class: &str,
        everyone_for: Option<Duration>,
    ) -> Option<Outcome> {
        let (_, n) = self.count_suspect(now, client, name)?;
        Some(self.convict(now, client, name, Evidence::Domain(class, n), everyone_for))
    }

    /// Records a suspect name; (zone, distinct names) once they reach `domain_names`, and for
    /// every further distinct one within the window. Counted per witness (a process as its
    /// user in its cgroup): a shell loop that starts one `dig` per chunk is one sender, and
    /// its later processes are convicted on their first suspect name.
    fn count_suspect(
        &mut self,
        now: Instant,
        client: &Client,
        name: &DnsName,
    ) -> Option<(String, u32)> {
        let need = self.settings.domain_names as usize;
        if need == 0 || name.split().subdomain_labels() == 0 {
            return None;
        }
        let zone = self.zone_for(name).ok()?;
        let window = Duration::from_secs(self.settings.window_secs);
        // case-blind: 0x20 and case variants are one name
        let h = {
            use std::hash::{Hash, Hasher};
            let mut x = std::collections::hash_map::DefaultHasher::new();
            name.normalized().hash(&mut x);
            x.finish()
        };
        let key = (client.witness(), zone);
        if !self.suspects.contains(&key) && self.suspects.len() == self.suspects.cap().get() {
            self.evictions += 1;
        }
        let list = self.suspects.get_or_insert_mut(key.clone(), Vec::new);
        list.retain(|(_, t)| now.duration_since(*t) < window);
        if !list.iter().any(|(x, _)| *x == h) && list.len() < MAX_SUSPECTS {
            list.push((h, now));
        }
        let n = list.len();
        (n >= need).then_some((key.1, n as u32))
    }

    /// What a benign per-name verdict still amounts to with the client's and the domain's
    /// history — the deployed decision, the same in the agent and the front (`eval --stream`
    /// replays it): a MEDIUM-risk DGA name from a client a DGA-bot alarm marked is a DGA
    /// verdict; the `domain_names`-th MEDIUM-risk tunnel name under one zone is a domain-level
    /// tunnel verdict that convicts the zone (a conviction only when the action is `block`).
    /// `everyone_for` None: blocks are off (the name only): a domain-level decision refuses
    /// the name and blocks nobody.
    pub fn escalate(
        &mut self,
        now: Instant,
        client: &Client,
        name: &DnsName,
        v: &Verdict,
        det: &Detector,
        everyone_for: Option<Duration>,
    ) -> Escalation {
        let medium = |c: Class| v.detector(c).filter(|d| d.level >= Level::Medium);
        // a DGA does not generate popular domains nor lookup names (PTR, DNSBL, SRV, DKIM):
        // those stay answered, so a victim made to look like a bot keeps its mail and
        // directory lookups
        if self.is_dga_bot(now, client) && self.zone_for(name).is_ok() && det.lookup(name).is_none()
        {
            let p = v.detector(Class::Dga);
            let why = match (medium(Class::Dga), self.settings.dga_bot_scope) {
                (Some(d), _) => {
                    let (p, t) = fmt_vs(d.p, d.suspect);
                    Some(format!("P(dga) = {p} ≥ suspect threshold {t} (MEDIUM)"))
                }
                (None, DgaBotScope::Unpopular) => Some(format!(
                    "an unpopular domain (P(dga) = {})",
                    p.map_or_else(|| "-".into(), |d| fmt_p(d.p))
                )),
                (None, DgaBotScope::Suspect) => None,
            };
            if let Some(why) = why {
                let mut v = v.clone();
                v.class = Class::Dga;
                v.source = Source::Behaviour;
                v.action = det.action(Class::Dga);
                v.reasons.push(format!(
                    "{why} from {client}, which a DGA-bot alarm (NXDOMAIN walk) marked for convict.dga_bot_secs"
                ));
                return Escalation::DgaBot(v);
            }
        }
        let Some(d) = medium(Class::Tunnel) else {
            return Escalation::No;
        };
        // a suspect must have room for data: ad-slot and shard ids (`a1713.example`) look
        // random to the model but carry a few bits each
        let n_sub = name.split().subdomain_labels();
        let payload: usize = name.labels().take(n_sub).map(<[u8]>::len).sum();
        if payload < SUSPECT_MIN_BYTES {
            return Escalation::No;
        }
        let action = det.action(Class::Tunnel);
        let o = if action == Action::Block && everyone_for.is_some() {
            self.suspect(now, client, name, "tunnel", everyone_for)
        } else {
            // alert-only, or blocks off (`block_secs = 0`: the name only): the decision
            // refuses or reports this name, nobody is blocked from the zone
            let only = if action == Action::Block {
                "this name only"
            } else {
                "alert only"
            };
            self.count_suspect(now, client, name)
                .map(|(zone, n)| Outcome {
                    evidence: format!("{} from {client} ({only})", Evidence::Domain("tunnel", n)),
                    zone: Some(zone),
                    scope: Scope::Name,
                    newly_everyone: false,
                    evicted: Vec::new(),
                })
        };
        let Some(o) = o else {
            return Escalation::No;
        };
        let mut v = v.clone();
        v.class = Class::Tunnel;
        v.source = Source::Domain;
        v.action = action;
        let (p, t) = fmt_vs(d.p, d.suspect);
        v.reasons.push(format!(
            "P(tunnel) = {p} ≥ suspect threshold {t} (MEDIUM); blocks {} for {}: {}",
            o.zone.as_deref().unwrap_or("this name"),
            o.scope.as_str(),
            o.evidence
        ));
        Escalation::Domain(v, o)
    }

    /// A DGA-bot alarm about `client`: marks it for `dga_bot_secs`.
    pub fn flag_dga_bot(&mut self, now: Instant, client: &Client) {
        let until = now + Duration::from_secs(self.settings.dga_bot_secs);
        self.dga_bots.push(client.key(), until);
    }

    /// Whether a DGA-bot alarm marks `client` now.
    pub fn is_dga_bot(&mut self, now: Instant, client: &Client) -> bool {
        match self.dga_bots.get(&client.key()) {
            Some(&t) if t > now => true,
            Some(_) => {
                self.dga_bots.pop(&client.key());
                false
            }
            None => false,
        }
    }

    /// The block in force for `name` sent by `client` (None: an unknown sender, only blocks
    /// for everyone apply), walking from the full name up.
    pub fn blocked(
        &mut self,
        now: Instant,
        client: Option<&Client>,
        name: &DnsName,
    ) -> Option<Blocked> {
        if self.everyone.is_empty() && (client.is_none() || self.clients.is_empty()) {
            return None;
        }
        let key = client.map(|c| c.key());
        for first in 0..name.label_count() {
            let suffix = name.normalized_from(first);
            if let Some(e) = self.everyone.get(&suffix) {
                if e.until.is_none_or(|t| t > now) {
                    return Some(Blocked {
                        zone: suffix,
                        scope: Scope::Everyone,
                        evidence: e.evidence.clone(),
                    });
                }
            }
            if let Some(k) = key {
                let pair = (k, suffix);
                if let Some(c) = self.clients.get(&pair) {
                    if c.until > now {
                        return Some(Blocked {
                            zone: pair.1,
                            scope: Scope::Client,
                            evidence: c.evidence.clone(),
                        });
                    }
                }
            }
        }
        None
    }

    /// Whether `zone` itself is blocked for everyone now.
    pub fn is_blocked_for_everyone(&self, zone: &str) -> bool {
        self.everyone
            .peek(zone)
            .is_some_and(|e| e.until.is_none_or(|t| t > Instant::now()))
    }

    /// Blocks `zone` for everyone on an operator's or the fleet's word (`until` None: until
    /// unblocked), unless it is protected. Returns the evicted zones, or why not.
    pub fn block_everyone(
        &mut self,
        zone: &str,
        until: Option<Instant>,
        evidence: String,
    ) -> Result<Vec<String>, String> {
        if let Some(why) = self.protection(zone) {
            return Err(why);
        }
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let mut evicted = Vec::new();
        match self.everyone.get_mut(&zone) {
            Some(e) => {
                e.until = match (e.until, until) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
                e.evidence = evidence;
            }
            None => {
                if let Some((old, _)) = self.everyone.push(zone, Everyone { until, evidence }) {
                    self.evictions += 1;
                    evicted.push(old);
                }
            }
        }
        Ok(evicted)
    }

    /// Lifts the block of `zone` for everyone and forgets its witnesses; true if it was blocked.
    pub fn acquit(&mut self, zone: &str) -> bool {
        self.witnesses.pop(zone);
        self.everyone.pop(zone).is_some()
    }

    /// Drops lapsed blocks; returns the zones no longer blocked for everyone.
    pub fn sweep(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .everyone
            .iter()
            .filter(|(_, e)| e.until.is_some_and(|t| t <= now))
            .map(|(z, _)| z.clone())
            .collect();
        for z in &due {
            self.everyone.pop(z);
        }
        let lapsed: Vec<(Key, String)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &lapsed {
            self.clients.pop(k);
        }
        due
    }

    /// A fleet update: an entry blocks its zone for everyone unless it is allowlisted here or
    /// protected (a hostile or misled fleet member cannot block a popular domain either); a
    /// tombstone or an expired entry releases it.
    pub fn fleet(&mut self, update: FleetUpdate, allow: &NameList, now_ms: u64) -> FleetAction {
        match update {
            FleetUpdate::Block(e) if e.expired(now_ms) => FleetAction::Unblock {
                was: self.acquit(&e.domain),
                zone: e.domain,
            },
            FleetUpdate::Block(e) => {
                if DnsName::parse(&e.domain).is_ok_and(|n| allow.lookup(&n).is_some()) {
                    return FleetAction::Skipped {
                        zone: e.domain,
                        why: "allowlisted here".into(),
                    };
                }
                let until = (e.expires_ms != 0).then(|| {
                    Instant::now() + Duration::from_millis(e.expires_ms.saturating_sub(now_ms))
                });
                let evidence = if e.reason.is_empty() {
                    format!("fleet entry from {} ({} {})", e.host, e.source, e.class)
                } else {
                    format!("fleet entry from {}: {}", e.host, e.reason)
                };
                match self.block_everyone(&e.domain, until, evidence) {
                    Ok(evicted) => FleetAction::Block {
                        zone: e.domain,
                        until,
                        evicted,
                    },
                    Err(why) => FleetAction::Skipped {
                        zone: e.domain,
                        why,
                    },
                }
            }
            FleetUpdate::Unblock(d) => FleetAction::Unblock {
                was: self.acquit(&d),
                zone: d,
            },
        }
    }

    /// A behaviour alarm from `client`: a client alarm (DGA bot) or `block` off is reported;
    /// an allowlisted zone is not blocked; otherwise the alarm is evidence like a verdict.
    pub fn alarm(
        &mut self,
        now: Instant,
        client: &Client,
        alarm: &Alarm,
        block: bool,
        allow: &NameList,
        everyone_for: Option<Duration>,
    ) -> AlarmAction {
        if block && alarm.kind == exfilguard_behaviour::AlarmKind::DgaBot {
            // NXDOMAIN walks: the client's suspect DGA names are refused from now on
            self.flag_dga_bot(now, client);
        }
        let Some(domain) = alarm.domain.as_deref() else {
            return AlarmAction::Report;
        };
        if !block {
            return AlarmAction::Report;
        }
        let Ok(name) = DnsName::parse(domain) else {
            return AlarmAction::Report;
        };
        if allow.lookup(&name).is_some() {
            return AlarmAction::Allowlisted(domain.to_string());
        }
        AlarmAction::Convicted(self.convict(
            now,
            client,
            &name,
            Evidence::Alarm(alarm.kind.as_str(), &alarm.reason),
            everyone_for,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exfilguard_kafka::fleet::BlockEntry;

    fn n(s: &str) -> DnsName {
        DnsName::parse(s).unwrap()
    }

    fn addr(s: &str) -> Client {
        Client::Addr(s.parse().unwrap())
    }

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    #[test]
    fn one_client_blocks_itself_two_block_everyone() {
        let mut c = Convictions::new(Settings::default()).unwrap();
        let t = Instant::now();
        let (a, b) = (addr("10.0.0.1"), addr("10.0.0.2"));
        let o = c.convict(
            t,
            &a,
            &n("aaaa.bbbb.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(
            (o.scope, o.zone.as_deref()),
            (Scope::Client, Some("tun.example"))
        );
        assert!(o.evidence.contains("1 of the 2"), "{}", o.evidence);
        // the sender is blocked from every name of the zone, nobody else is
        assert_eq!(
            c.blocked(t, Some(&a), &n("www.tun.example")).unwrap().scope,
            Scope::Client
        );
        assert!(c.blocked(t, Some(&b), &n("www.tun.example")).is_none());
        assert!(c.blocked(t, None, &n("www.tun.example")).is_none());
        // the same client again (another address of its /64 too) is still one witness
        let o = c.convict(
            t,
            &a,
            &n("cccc.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Client);
        let v6 = |s: &str| Client::Addr(s.parse().unwrap());
        c.convict(
            t,
            &v6("2001:db8::1"),
            &n("x.v6.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        let o = c.convict(
            t,
            &v6("2001:db8::2"),
            &n("y.v6.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Client);
        // a second client: everyone, once
        let o = c.convict(
            t,
            &b,
            &n("dddd.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Everyone);
        assert!(o.newly_everyone);
        assert!(o.evidence.contains("2 distinct clients"), "{}", o.evidence);
        assert_eq!(
            c.blocked(t, None, &n("www.tun.example")).unwrap().scope,
            Scope::Everyone
        );
        let o = c.convict(
            t,
            &b,
            &n("eeee.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert!(!o.newly_everyone);
        // blocks for everyone off: evidence still blocks the client
        let o = c.convict(
            t,
            &a,
            &n("x.other.example"),
            Evidence::Verdict("tunnel"),
            None,
        );
        let o2 = c.convict(
            t,
            &b,
            &n("x.other.example"),
            Evidence::Verdict("tunnel"),
            None,
        );
        assert_eq!((o.scope, o2.scope), (Scope::Client, Scope::Client));
        // lapse
        let later = t + Duration::from_secs(3601);
        assert_eq!(c.sweep(later), vec!["tun.example".to_string()]);
        assert!(c.blocked(later, Some(&a), &n("www.tun.example")).is_none());
    }

    #[test]
    fn processes_count_as_their_user_and_cgroup() {
        let mut c = Convictions::new(Settings::default()).unwrap();
        let t = Instant::now();
        let p = |tgid, uid| Client::Process {
            tgid,
            uid,
            cgroup: 7,
        };
        let o = c.convict(
            t,
            &p(100, 1000),
            &n("a.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Client);
        // a fork of the same user is no second witness, and is not blocked by its parent's block
        let o = c.convict(
            t,
            &p(101, 1000),
            &n("b.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Client);
        assert!(c
            .blocked(t, Some(&p(102, 1000)), &n("c.tun.example"))
            .is_none());
        let o = c.convict(
            t,
            &p(200, 1001),
            &n("d.tun.example"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Everyone);
    }

    #[test]
    fn suspect_names_pool_per_user_and_cgroup_not_per_process() {
        let mut c = Convictions::new(Settings::default()).unwrap();
        let t = Instant::now();
        let p = |tgid, uid| Client::Process {
            tgid,
            uid,
            cgroup: 7,
        };
        let name = |i: u32| n(&format!("{i:032x}.c2.example"));
        // one `dig` per chunk: four processes of one user, one suspect name each
        for i in 0..3 {
            assert!(c
                .suspect(t, &p(100 + i, 1000), &name(i), "tunnel", HOUR)
                .is_none());
        }
        let o = c
            .suspect(t, &p(103, 1000), &name(3), "tunnel", HOUR)
            .expect("the 4th suspect name of one user convicts");
        assert_eq!(
            (o.zone.as_deref(), o.scope),
            (Some("c2.example"), Scope::Client)
        );
        // the next process of that user is convicted on its first suspect name …
        assert!(c
            .suspect(t, &p(104, 1000), &name(4), "tunnel", HOUR)
            .is_some());
        // … another user's processes start from nothing, and names in other zones or out of
        // the window do not count
        for i in 0..3 {
            assert!(c
                .suspect(t, &p(200 + i, 1001), &name(10 + i), "tunnel", HOUR)
                .is_none());
        }
        let later = t + Duration::from_secs(Settings::default().window_secs + 1);
        for i in 0..3 {
            let other = n(&format!("{i:032x}.z{i}.example"));
            assert!(c
                .suspect(later, &p(300, 1002), &other, "tunnel", HOUR)
                .is_none());
        }
        assert!(c
            .suspect(later, &p(201, 1001), &name(13), "tunnel", HOUR)
            .is_none());
    }

    #[test]
    fn popular_public_suffix_and_lookup_zones_are_never_blocked_for_everyone() {
        let mut c = Convictions::new(Settings {
            domain_clients: 1,
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        for (name, why) in [
            (
                "mfzwizltoq2dknbvgy3tqojqgezdgnbv.nbswy3dp.www.google.com",
                "popular",
            ),
            ("co.uk", "public suffix"),
            ("github.io", "public suffix"),
            ("1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "lookup zone"),
            ("x9f3k.local", "lookup zone"),
        ] {
            let o = c.convict(
                t,
                &addr("10.0.0.1"),
                &n(name),
                Evidence::Verdict("tunnel"),
                HOUR,
            );
            assert_eq!(o.scope, Scope::Name, "{name}: {o:?}");
            assert!(o.evidence.contains(why), "{name}: {}", o.evidence);
            assert!(c.blocked(t, Some(&addr("10.0.0.1")), &n(name)).is_none());
        }
        assert_eq!(c.zones(), 0);
        // under a private suffix, the user's own zone is convictable
        let o = c.convict(
            t,
            &addr("10.0.0.1"),
            &n("abc.evil.github.io"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(
            (o.scope, o.zone.as_deref()),
            (Scope::Everyone, Some("evil.github.io"))
        );
        // the operator can unprotect a popular domain
        let mut c = Convictions::new(Settings {
            domain_clients: 1,
            unprotect: vec!["google.com".into()],
            ..Default::default()
        })
        .unwrap();
        let o = c.convict(
            t,
            &addr("10.0.0.1"),
            &n("x.google.com"),
            Evidence::Verdict("tunnel"),
            HOUR,
        );
        assert_eq!(o.scope, Scope::Everyone);
    }

    #[test]
    fn tables_are_bounded_and_evictions_are_returned() {
        let mut c = Convictions::new(Settings {
            domain_clients: 1,
            max_zones: 100,
            max_client_blocks: 50,
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        let mut evicted = 0;
        for i in 0..1000 {
            let o = c.convict(
                t,
                &addr("10.0.0.1"),
                &n(&format!("x.z{i}.example")),
                Evidence::Verdict("tunnel"),
                HOUR,
            );
            evicted += o.evicted.len();
        }
        assert_eq!(c.zones(), 100);
        assert_eq!(evicted, 900);
        assert!(c.evictions() >= 900);
        let mut c = Convictions::new(Settings {
            max_client_blocks: 50,
            ..Default::default()
        })
        .unwrap();
        for i in 0..1000 {
            c.convict(
                t,
                &addr("10.0.0.1"),
                &n(&format!("x.z{i}.example")),
                Evidence::Verdict("tunnel"),
                HOUR,
            );
        }
        assert_eq!(c.client_blocks(), 50);
        assert_eq!(c.zones(), 0);
    }

    #[test]
    fn fleet_entries_respect_allowlist_and_protection() {
        let mut c = Convictions::new(Settings::default()).unwrap();
        let allow = NameList::parse("corp.example\n").unwrap();
        let entry = |d: &str, exp: u64| {
            FleetUpdate::Block(BlockEntry {
                domain: d.into(),
                class: "tunnel".into(),
                score: 1.0,
                host: "h1".into(),
                source: "agent".into(),
                first_seen_ms: 0,
                expires_ms: exp,
                reason: String::new(),
            })
        };
        let now = 1_000_000;
        assert!(matches!(
            c.fleet(entry("tun.example", 0), &allow, now),
            FleetAction::Block { until: None, .. }
        ));
        assert!(c.is_blocked_for_everyone("tun.example"));
        assert!(matches!(
            c.fleet(entry("corp.example", 0), &allow, now),
            FleetAction::Skipped { .. }
        ));
        match c.fleet(entry("google.com", 0), &allow, now) {
            FleetAction::Skipped { why, .. } => assert!(why.contains("popular"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.fleet(entry("com", 0), &allow, now),
            FleetAction::Skipped { .. }
        ));
        assert!(matches!(
            c.fleet(entry("tun.example", 5), &allow, now),
            FleetAction::Unblock { was: true, .. }
        ));
        assert!(matches!(
            c.fleet(FleetUpdate::Unblock("tun.example".into()), &allow, now),
            FleetAction::Unblock { was: false, .. }
        ));
    }
}
