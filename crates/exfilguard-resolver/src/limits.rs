//! What keeps the front from being an amplifier or easy to starve (issue 22): the client ACL
//! (`resolve.allow_from`), a per-client token bucket over UDP with TC=1 slips, minimal ANY
//! answers (RFC 8482), truncation to the client's UDP size, and TCP connection caps with idle,
//! lifetime and pressure closes. Every per-client table is bounded.
//!
//! The wire helpers work on raw bytes (no full parse): they run on every packet of a flood.

use exfilguard_agent::config::ResolveConfig;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{RData, Record};
use ipnet::IpNet;
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type Labels = Vec<(&'static str, String)>;

/// The size every DNS client takes over UDP (RFC 1035), and the most the front relays.
pub const MIN_UDP: usize = 512;
pub const MAX_UDP: usize = 4096;
/// TTL of the RFC 8482 answer: clients need not ask again soon.
const ANY_TTL: u32 = 3600;
/// Rate-limit buckets live in this many independently locked LRU tables.
const SHARDS: usize = 16;
/// A full TCP table closes connections idle for longer than this.
pub const PRESSURE_IDLE: Duration = Duration::from_secs(1);
/// Accept errors (out of descriptors) back off from the first to the second.
pub const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(1));

/// What the limits count beyond `exfilguard_resolve_queries` (registered by `run`).
#[derive(Clone, Default)]
pub struct LimitMetrics {
    pub any_minimal: Counter,
    pub truncated: Counter,
    pub tcp_open: Gauge,
    /// `reason`: acl, total, per_client.
    pub tcp_refused: Family<Labels, Counter>,
    /// `reason`: idle, lifetime, pressure.
    pub tcp_closed: Family<Labels, Counter>,
    pub accept_errors: Counter,
}

impl LimitMetrics {
    pub fn register(reg: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        reg.register(
            "exfilguard_resolve_any_minimal",
            "ANY queries answered by the front with the RFC 8482 HINFO instead of forwarded",
            m.any_minimal.clone(),
        );
        reg.register(
            "exfilguard_resolve_truncated",
            "UDP answers cut to header and question (TC=1) to fit the client's UDP size",
            m.truncated.clone(),
        );
        reg.register(
            "exfilguard_resolve_tcp_connections",
            "TCP client connections open",
            m.tcp_open.clone(),
        );
        reg.register(
            "exfilguard_resolve_tcp_refused",
            "TCP connections closed at accept, by reason (acl, total, per_client)",
            m.tcp_refused.clone(),
        );
        reg.register(
            "exfilguard_resolve_tcp_closed",
            "TCP connections the front closed, by reason (idle, lifetime, pressure)",
            m.tcp_closed.clone(),
        );
        reg.register(
            "exfilguard_resolve_accept_errors",
            "Failed TCP accepts (out of file descriptors: the front backs off)",
            m.accept_errors.clone(),
        );
        m
    }

    pub fn tcp_closed(&self, reason: &'static str) {
        self.tcp_closed
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

/// What the rate limit says about one UDP query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Over the limit: an empty TC=1 answer (a real client retries over TCP).
    Slip,
    Drop,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
    over: u32,
}

struct RateLimit {
    per_ms: f64,
    burst: f64,
    slip: u32,
    shards: Vec<Mutex<LruCache<IpAddr, Bucket>>>,
    epoch: Instant,
}

impl RateLimit {
    fn admit(&self, key: IpAddr) -> Admit {
        let now = self.epoch.elapsed().as_millis() as u64;
        let shard = &self.shards[shard_of(&key)];
        let mut t = shard.lock().expect("lock");
        // a client not seen (or forgotten) starts with a full bucket
        let b = t.get_or_insert_mut(key, || Bucket {
            tokens: self.burst,
            last_ms: now,
            over: 0,
        });
        b.tokens = (b.tokens + (now - b.last_ms) as f64 * self.per_ms).min(self.burst);
        b.last_ms = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admit::Pass;
        }
        b.over = b.over.wrapping_add(1);
        if self.slip > 0 && b.over.is_multiple_of(self.slip) {
            Admit::Slip
        } else {
            Admit::Drop
        }
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    // FNV-1a over the octets: cheap, and an attacker piling onto one shard only slows itself
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    match ip {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    h as usize % SHARDS
}

/// Why a TCP connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    Acl,
    Total,
    PerClient,
}

impl Refuse {
    pub fn as_str(self) -> &'static str {
        match self {
            Refuse::Acl => "acl",
            Refuse::Total => "total",
            Refuse::PerClient => "per_client",
        }
    }
}

struct SlotTable {
    open: usize,
    per_client: HashMap<IpAddr, u32>,
}

/// Open TCP connections, in total and per client. The per-client map only holds clients with
/// an open connection, so it is bounded by `max` too.
pub struct TcpSlots {
    max: usize,
    per_client_max: u32,
    table: Mutex<SlotTable>,
    /// Woken when the table is full: connections idle for `PRESSURE_IDLE` close.
    pub pressure: Notify,
    last_pressure_ms: AtomicU64,
    epoch: Instant,
    gauge: Gauge,
}

/// One open connection's place in `TcpSlots`; freed on drop.
pub struct Slot {
    slots: Arc<TcpSlots>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.table.lock().expect("lock");
        t.open -= 1;
        if let Some(n) = t.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                t.per_client.remove(&self.key);
            }
        }
        self.slots.gauge.set(t.open as i64);
    }
}

impl TcpSlots {
    fn acquire(self: &Arc<Self>, key: IpAddr) -> Result<Slot, Refuse> {
        let mut t = self.table.lock().expect("lock");
        if t.open >= self.max {
            drop(t);
            self.squeeze();
            return Err(Refuse::Total);
        }
        let n = t.per_client.entry(key).or_insert(0);
        if *n >= self.per_client_max {
            return Err(Refuse::PerClient);
        }
        *n += 1;
        t.open += 1;
        self.gauge.set(t.open as i64);
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Full table: idle connections make room for the client's retry (at most every 100 ms,
    /// so a flood of connects does not wake every connection task each time).
    fn squeeze(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_pressure_ms.load(Ordering::Relaxed);
        if now >= last + 100
            && self
                .last_pressure_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.pressure.notify_waiters();
        }
    }
}

/// The ACL, the rate limit and the TCP caps of one front.
pub struct Limits {
    allow: Vec<IpNet>,
    exempt: Vec<IpNet>,
    v6_prefix: u8,
    rate: Option<RateLimit>,
    pub tcp: Arc<TcpSlots>,
    pub tcp_idle: Duration,
    pub tcp_lifetime: Duration,
    pub metrics: LimitMetrics,
}

impl Limits {
    pub fn new(r: &ResolveConfig, metrics: LimitMetrics) -> Self {
        let rate = (r.rate_limit_qps > 0).then(|| {
            let per_shard = NonZeroUsize::new((r.rate_limit_clients / SHARDS).max(1)).expect("≥1");
            RateLimit {
                per_ms: r.rate_limit_qps as f64 / 1000.0,
                burst: r.rate_limit_burst.max(1) as f64,
                slip: r.rrl_slip,
                shards: (0..SHARDS)
                    .map(|_| Mutex::new(LruCache::new(per_shard)))
                    .collect(),
                epoch: Instant::now(),
            }
        });
        Self {
            allow: r.allow_from.clone(),
            exempt: r.rate_limit_exempt.clone(),
            v6_prefix: r.rate_limit_ipv6_prefix,
            rate,
            tcp: Arc::new(TcpSlots {
                max: r.tcp_max_connections.max(1),
                per_client_max: r.tcp_max_per_client.clamp(1, u32::MAX as usize) as u32,
                table: Mutex::new(SlotTable {
                    open: 0,
                    per_client: HashMap::new(),
                }),
                pressure: Notify::new(),
                last_pressure_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                gauge: metrics.tcp_open.clone(),
            }),
            tcp_idle: Duration::from_millis(r.tcp_idle_ms.max(1)),
            tcp_lifetime: Duration::from_secs(r.tcp_lifetime_secs.max(1)),
            metrics,
        }
    }

    /// Whether `resolve.allow_from` lets this client query.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// The client's place in the rate limit: its address, an IPv6 client's prefix.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let keep = u32::from(self.v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            v4 => v4,
        }
    }

    /// The rate limit's word on one UDP query from `ip`.
    pub fn admit_udp(&self, ip: IpAddr) -> Admit {
        let Some(rate) = &self.rate else {
            return Admit::Pass;
        };
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Admit::Pass;
        }
        rate.admit(self.key(ip))
    }

    /// A slot for a new TCP connection, or why it is closed at once (counted).
    pub fn admit_tcp(&self, peer: SocketAddr) -> Result<Slot, Refuse> {
        let r = if self.allowed(peer.ip()) {
            self.tcp.acquire(self.key(peer.ip()))
        } else {
            Err(Refuse::Acl)
        };
        if let Err(why) = r {
            self.metrics
                .tcp_refused
                .get_or_create(&vec![("reason", why.as_str().to_string())])
                .inc();
        }
        r
    }
}

/// Raises the soft open-file limit to the hard one (the TCP caps stay well below it); returns
/// the soft limit in force.
pub fn raise_nofile() -> libc::rlim_t {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l = want;
            }
        }
    }
    l.rlim_cur
}

/// Accept errors that concern one connection only (no back-off).
pub fn transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

// ---- wire helpers -------------------------------------------------------------------------

fn u16_at(m: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]))
}

/// The offset after the name starting at `i`; `pointers`: whether a compression pointer may
/// end it.
fn skip_name(m: &[u8], mut i: usize, pointers: bool) -> Option<usize> {
    let start = i;
    loop {
        let l = *m.get(i)? as usize;
        match l & 0xc0 {
            0 if l == 0 => return Some(i + 1),
            0 => i += 1 + l,
            0xc0 if pointers => return Some(i + 2).filter(|&e| e <= m.len()),
            _ => return None,
        }
        if i - start > 255 {
            return None;
        }
    }
}

/// The end of the single question (after QTYPE and QCLASS); `None` unless QDCOUNT is 1 and
/// the question is whole and uncompressed.
fn question_end(m: &[u8]) -> Option<usize> {
    if m.len() < 12 || u16_at(m, 4)? != 1 {
        return None;
    }
    let e = skip_name(m, 12, false)? + 4;
    (e <= m.len()).then_some(e)
}

/// The QTYPE of a query's single question.
pub fn qtype(query: &[u8]) -> Option<u16> {
    let e = question_end(query)?;
    u16_at(query, e - 4)
}

/// Whether `query` is a standard query for ANY (QTYPE 255).
pub fn is_any(query: &[u8]) -> bool {
    query.len() >= 12
        && query[2] & 0x80 == 0
        && (query[2] >> 3) & 0x0f == 0
        && qtype(query) == Some(255)
}

/// The UDP payload size the client takes: its EDNS OPT size clamped to 512..=4096, 512 without.
pub fn client_udp_size(query: &[u8]) -> usize {
    let walk = || -> Option<usize> {
        let count = |i| u16_at(query, i).map(usize::from);
        let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
        let mut i = 12;
        for _ in 0..qd {
            i = skip_name(query, i, true)? + 4;
        }
        for n in 0..an + ns + ar {
            i = skip_name(query, i, true)?;
            let rtype = u16_at(query, i)?;
            if n >= an + ns && rtype == 41 {
                return Some(u16_at(query, i + 2)? as usize);
            }
            i += 10 + u16_at(query, i + 8)? as usize;
        }
        None
    };
    walk().unwrap_or(MIN_UDP).clamp(MIN_UDP, MAX_UDP)
}

/// A header-and-question answer to `query` (QR=1, the client's id, opcode and RD), or `None`
/// when `query` is not a query (responses are never answered: no loops with spoofed sources).
/// Never larger than the query, so answering a flood with it amplifies nothing.
fn bare_answer(query: &[u8], tc: bool, rcode: u8) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let end = question_end(query);
    let mut a = Vec::with_capacity(end.unwrap_or(12));
    a.extend_from_slice(&query[..2]);
    // QR, the opcode and RD kept, AA cleared, TC as asked; RA, rcode
    a.push(0x80 | (query[2] & 0x79) | if tc { 0x02 } else { 0 });
    a.push(0x80 | (rcode & 0x0f));
    a.extend_from_slice(&[0, u8::from(end.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(e) = end {
        a.extend_from_slice(&query[12..e]);
    }
    Some(a)
}

/// The empty TC=1 answer a rate-limited client gets on a slip.
pub fn slip_answer(query: &[u8]) -> Option<Vec<u8>> {
    bare_answer(query, true, 0)
}

/// REFUSED for a client outside `resolve.allow_from` (no larger than its query).
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    bare_answer(query, false, u16::from(ResponseCode::Refused) as u8)
}

/// `answer` cut to fit the UDP size `query` advertised: unchanged when it fits, else its
/// header with TC=1 and no records, plus its question (RFC 1035 4.2.1, RFC 6891 7).
pub fn fit_udp<'a>(query: &[u8], answer: &'a [u8]) -> Cow<'a, [u8]> {
    if answer.len() <= MIN_UDP || answer.len() < 12 || answer.len() <= client_udp_size(query) {
        return Cow::Borrowed(answer);
    }
    let end = question_end(answer);
    let mut a = Vec::with_capacity(end.unwrap_or(12));
    a.extend_from_slice(&answer[..12]);
    a[2] |= 0x02;
    a[4..12].copy_from_slice(&[0, u8::from(end.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(e) = end {
        a.extend_from_slice(&answer[12..e]);
    }
    Cow::Owned(a)
}

/// The RFC 8482 answer to an ANY query: one synthesised HINFO "RFC8482" "" for the name, so
/// the front never relays a full ANY answer (34 B in, up to 4 KB out: the classic amplifier).
pub fn any_answer(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?;
    let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.response_code = ResponseCode::NoError;
    m.add_query(q.clone());
    m.add_answer(Record::from_rdata(
        q.name().clone(),
        ANY_TTL,
        RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
    ));
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use exfilguard_dns::DnsName;

    fn query(name: &str, t: u16) -> Vec<u8> {
        exfilguard_dns::build_query(&DnsName::parse(name).unwrap(), t, 0x1234).unwrap()
    }

    /// `q` with an EDNS OPT record advertising `size`.
    fn with_edns(mut q: Vec<u8>, size: u16) -> Vec<u8> {
        q[11] = 1;
        q.extend([0, 0, 41]);
        q.extend(size.to_be_bytes());
        q.extend([0, 0, 0, 0, 0, 0]);
        q
    }

    /// An answer of `n` bytes to `q`: its question plus one TXT record padding it out.
    fn big_answer(q: &[u8], n: usize) -> Vec<u8> {
        let e = question_end(q).unwrap();
        let mut a = q[..e].to_vec();
        a[2] |= 0x80;
        a[7] = 1; // ANCOUNT
        a[10..12].copy_from_slice(&[0, 0]);
        let rdlen = n - a.len() - 12;
        a.extend([0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
        a.extend((rdlen as u16).to_be_bytes());
        let mut left = rdlen;
        while left > 0 {
            let l = (left - 1).min(255);
            a.push(l as u8);
            a.extend(std::iter::repeat_n(b'x', l));
            left -= l + 1;
        }
        assert_eq!(a.len(), n);
        a
    }

    #[test]
    fn client_udp_size_reads_edns() {
        let q = query("www.example.com", 1);
        assert_eq!(client_udp_size(&q), 512);
        assert_eq!(client_udp_size(&with_edns(q.clone(), 1232)), 1232);
        assert_eq!(client_udp_size(&with_edns(q.clone(), 65000)), 4096);
        assert_eq!(client_udp_size(&with_edns(q.clone(), 100)), 512);
        assert_eq!(client_udp_size(&[1, 2, 3]), 512);
        let mut cut = with_edns(q, 1232);
        cut.truncate(cut.len() - 8);
        assert_eq!(client_udp_size(&cut), 512, "a cut OPT record is no EDNS");
    }

    #[test]
    fn fit_udp_truncates_to_the_client_size() {
        let q = query("big.example", 16);
        let a = big_answer(&q, 4310);
        let cut = fit_udp(&q, &a);
        assert!(cut.len() <= 512, "{}", cut.len());
        let m = Message::from_vec(&cut).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries[0].name().to_ascii(), "big.example.");
        // it fits a 4096-byte EDNS client? no: 4310 > 4096
        assert!(fit_udp(&with_edns(q.clone(), 4096), &a).len() < 100);
        // what fits is untouched (borrowed, no copy)
        let small = big_answer(&q, 1200);
        assert!(matches!(
            fit_udp(&with_edns(q.clone(), 1232), &small),
            Cow::Borrowed(_)
        ));
        assert!(fit_udp(&q, &small).len() < 100, "no EDNS: 512");
        let tiny = big_answer(&q, 500);
        assert_eq!(&*fit_udp(&q, &tiny), &tiny[..]);
    }

    #[test]
    fn slip_and_refused_are_no_larger_than_the_query() {
        let q = with_edns(query("www.example.com", 255), 4096);
        for (a, tc, rcode) in [
            (slip_answer(&q).unwrap(), true, ResponseCode::NoError),
            (refused(&q).unwrap(), false, ResponseCode::Refused),
        ] {
            assert!(a.len() < q.len());
            let m = Message::from_vec(&a).unwrap();
            assert_eq!(m.metadata.truncation, tc);
            assert_eq!(m.metadata.response_code, rcode);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(m.queries.len(), 1);
        }
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(slip_answer(&resp).is_none(), "responses are never answered");
        assert!(refused(&[0; 5]).is_none());
    }

    #[test]
    fn any_gets_the_rfc8482_answer() {
        let q = query("example.com", 255);
        assert!(is_any(&q));
        assert!(!is_any(&query("example.com", 1)));
        let a = any_answer(&q).unwrap();
        assert!(a.len() < 100, "{}", a.len());
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert!(matches!(&m.answers[0].data, RData::HINFO(h) if &*h.cpu == b"RFC8482"));
    }

    fn cfg(f: impl FnOnce(&mut ResolveConfig)) -> Limits {
        let mut r = ResolveConfig::default();
        f(&mut r);
        Limits::new(&r, LimitMetrics::default())
    }

    #[test]
    fn rate_limit_passes_the_burst_then_slips_every_other() {
        let l = cfg(|r| {
            r.rate_limit_qps = 10;
            r.rate_limit_burst = 20;
            r.rate_limit_exempt.clear();
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let got: Vec<Admit> = (0..40).map(|_| l.admit_udp(a)).collect();
        let pass = got.iter().filter(|&&x| x == Admit::Pass).count();
        let slip = got.iter().filter(|&&x| x == Admit::Slip).count();
        assert!((20..=21).contains(&pass), "{pass}");
        assert!((9..=10).contains(&slip), "{slip}");
        // another client is not affected; neither is loopback when exempt
        assert_eq!(l.admit_udp("192.0.2.2".parse().unwrap()), Admit::Pass);
        let lo = cfg(|r| r.rate_limit_qps = 1);
        for _ in 0..1000 {
            assert_eq!(lo.admit_udp("127.0.0.1".parse().unwrap()), Admit::Pass);
        }
    }

    #[test]
    fn ipv6_clients_share_their_prefix_and_the_table_is_bounded() {
        let l = cfg(|r| {
            r.rate_limit_qps = 1;
            r.rate_limit_burst = 1;
            r.rate_limit_clients = 64;
        });
        assert_eq!(l.admit_udp("2001:db8:0:1::1".parse().unwrap()), Admit::Pass);
        assert_ne!(
            l.admit_udp("2001:db8:0:1::2".parse().unwrap()),
            Admit::Pass,
            "same /56"
        );
        assert_eq!(l.admit_udp("2001:db8:1::1".parse().unwrap()), Admit::Pass);
        for i in 0..100_000u32 {
            l.admit_udp(IpAddr::from(i.to_be_bytes()));
        }
        let held: usize = l
            .rate
            .as_ref()
            .unwrap()
            .shards
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(held <= 64, "{held}");
    }

    #[test]
    fn acl_and_tcp_caps() {
        let l = cfg(|r| {
            r.allow_from = vec!["10.0.0.0/8".parse().unwrap()];
            r.tcp_max_connections = 3;
            r.tcp_max_per_client = 2;
        });
        assert!(l.allowed("10.1.2.3".parse().unwrap()));
        assert!(l.allowed("::ffff:10.1.2.3".parse().unwrap()), "v4-mapped");
        assert!(!l.allowed("192.0.2.1".parse().unwrap()));
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(l.admit_tcp(p("192.0.2.1:1")).err(), Some(Refuse::Acl));
        let a1 = l.admit_tcp(p("10.0.0.1:1")).unwrap();
        let _a2 = l.admit_tcp(p("10.0.0.1:2")).unwrap();
        assert_eq!(l.admit_tcp(p("10.0.0.1:3")).err(), Some(Refuse::PerClient));
        let _b1 = l.admit_tcp(p("10.0.0.2:1")).unwrap();
        assert_eq!(l.admit_tcp(p("10.0.0.3:1")).err(), Some(Refuse::Total));
        drop(a1);
        assert!(
            l.admit_tcp(p("10.0.0.3:1")).is_ok(),
            "a closed slot is free again"
        );
    }
}
