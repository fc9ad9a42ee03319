//! Forwarding to the upstream resolvers. UDP: every query gets its own socket connected to the
//! upstream, so a fresh kernel-chosen random source port, a fresh random id and (0x20) a random
//! case of the name's letters; the kernel drops datagrams from any other address or port, and an
//! answer is taken only when it is a response with the same opcode and exactly the question sent
//! (anything else is counted as a spoofing near miss and the socket keeps waiting; an upstream
//! that does not preserve case is told apart from a forger by asking again). The client's id and
//! question bytes are restored on the way back, nothing else in the answer changes. TCP: one
//! upstream connection per query, same checks. DoT (`resolve.upstream_tls`, RFC 7858): every
//! query, whatever the client spoke, goes over TLS; connections are kept and reused one query at
//! a time (a stale one is replaced once), certificates are verified (no opportunistic mode: a
//! failed handshake is a SERVFAIL, never a plaintext retry). Round robin over the upstreams that answer;
//! one that misses `DOWN_AFTER` deadlines in a row is skipped for `DOWN_FOR`. What is in flight
//! is bounded by bytes and by count (`Limits`); queries over a bound are shed.

use hickory_proto::op::{Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const DOWN_AFTER: u32 = 3;
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Default bound on the bytes of queries in flight (their copies and per-query overhead).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Default bound on the number of queries in flight (each holds a socket, so a descriptor and
/// an ephemeral port).
pub const MAX_IN_FLIGHT_QUERIES: usize = 10_000;
/// Charged per query beyond its bytes: the task, the socket and its registration.
const PER_QUERY_OVERHEAD: usize = 1024;

/// Bounds on what is in flight over UDP; queries beyond either are shed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_queries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // every query in flight holds a descriptor: leave half the table to listeners and TCP
        let by_fds = open_files_limit().map_or(MAX_IN_FLIGHT_QUERIES, |n| n / 2);
        Self {
            max_bytes: MAX_IN_FLIGHT_BYTES,
            max_queries: MAX_IN_FLIGHT_QUERIES.min(by_fds).max(16),
        }
    }
}

/// The soft RLIMIT_NOFILE (from /proc: no libc here).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

/// A share of the in-flight bounds, given back when dropped.
struct Reserved<'a> {
    me: &'a Upstreams,
    cost: usize,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.me
            .in_flight_bytes
            .fetch_sub(self.cost, Ordering::Relaxed);
        self.me.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an upstream answer goes.
pub enum Reply {
    Udp {
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
    },
}

struct Upstream {
    addr: SocketAddr,
    misses: AtomicU32,
    /// Milliseconds since `epoch` until which this upstream is skipped.
    down_until_ms: AtomicU64,
    /// Set once it answered with the name's case changed: no 0x20 for it, names compared
    /// case-insensitively from then on.
    folds_case: AtomicBool,
    /// DoT: connections that answered and may be reused.
    idle: std::sync::Mutex<Vec<DotStream>>,
}

type DotStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Idle DoT connections kept per upstream; more are opened under load and closed after.
const DOT_IDLE_MAX: usize = 256;

/// How to reach the upstreams over TLS.
pub struct DotClient {
    connector: tokio_rustls::TlsConnector,
    /// The name certificates are checked against (`None`: each upstream's IP address).
    name: Option<rustls_pki_types::ServerName<'static>>,
}

impl DotClient {
    /// `ca`: a PEM bundle of trusted roots (`None`: the system's trust store). `name`: the
    /// name in the upstreams' certificates (`None`: their IP addresses, as IP SANs).
    pub fn new(ca: Option<&std::path::Path>, name: Option<&str>) -> anyhow::Result<Self> {
        use anyhow::Context;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                for c in
                    rustls_pki_types::CertificateDer::pem_file_iter(path).with_context(|| {
                        format!("reading resolve.upstream_tls_ca {}", path.display())
                    })?
                {
                    let c = c.with_context(|| format!("a certificate in {}", path.display()))?;
                    roots
                        .add(c)
                        .with_context(|| format!("a CA in {}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                tracing::debug!(added, errors = found.errors.len(), "system trust store");
            }
        }
        if roots.is_empty() {
            anyhow::bail!(
                "no trusted CA certificates for the DoT upstreams (set resolve.upstream_tls_ca)"
            );
        }
        #[allow(deprecated)] // see tls.rs: ring's provider, no cmake
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"dot".to_vec()];
        let name = match name {
            Some(n) => Some(
                rustls_pki_types::ServerName::try_from(n.to_string()).with_context(|| {
                    format!("resolve.upstream_tls_name {n:?} is not a DNS name")
                })?,
            ),
            None => None,
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            name,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<DotStream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| rustls_pki_types::ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

/// Outcome counters (Prometheus handles: cheap atomics, registered by the caller).
pub struct UpstreamStats {
    pub answered: Counter,
    pub timeouts: Counter,
    pub send_errors: Counter,
    /// Datagrams that reached a query's socket (right address and port) but were not its
    /// answer: wrong id, not a response, another opcode or question. Forgeries, mostly.
    pub spoof_nearmiss: Counter,
    /// Upstreams found to change the case of query names (0x20 turned off for them).
    pub case_fallbacks: Counter,
    /// Answers cut to the client's UDP size (shared with the front's own answers' counter).
    pub truncated: Counter,
    pub latency: Histogram,
}

/// Called with the client's address and the answer for every NXDOMAIN relayed over UDP.
pub type NxHook = Box<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

pub struct Upstreams {
    ups: Vec<Arc<Upstream>>,
    /// Set once at start-up when the upstreams are spoken to over TLS.
    pub dot: std::sync::OnceLock<DotClient>,
    /// Set once after start-up (the behaviour analytics watch failed lookups).
    pub nx_hook: std::sync::OnceLock<NxHook>,
    next: AtomicUsize,
    timeout: Duration,
    epoch: Instant,
    limits: Limits,
    in_flight_bytes: AtomicUsize,
    in_flight: AtomicUsize,
    pub stats: Arc<UpstreamStats>,
}

fn rand_id() -> u16 {
    // ids must be unpredictable to off-path spoofers (rand's thread RNG is a CSPRNG)
    rand::random()
}

/// Where a message's first question name ends and its question section ends.
fn question_bounds(msg: &[u8]) -> Option<(usize, usize)> {
    let mut d = BinDecoder::new(msg);
    let h = Header::read(&mut d).ok()?;
    let mut name_end = d.index();
    for i in 0..h.counts.queries {
        Query::read(&mut d).ok()?;
        if i == 0 {
            name_end = d.index() - 4;
        }
    }
    Some((name_end, d.index()))
}

/// Flips the case of each ASCII letter of the name at `msg[12..name_end]` at random (0x20): an
/// off-path forger must also guess these bits. Lookups only (not the zone of NOTIFY/UPDATE);
/// stops at a compression pointer.
fn randomise_case(msg: &mut [u8], name_end: usize) {
    if OpCode::from_u8((msg[2] >> 3) & 0x0f) != OpCode::Query {
        return;
    }
    let (mut bits, mut left) = (0u64, 0u32);
    let mut i = 12;
    while i < name_end {
        let len = msg[i] as usize;
        if len == 0 || len > 63 {
            break;
        }
        let end = (i + 1 + len).min(name_end);
        for b in &mut msg[i + 1..end] {
            if b.is_ascii_alphabetic() {
                if left == 0 {
                    bits = rand::random();
                    left = 64;
                }
                *b ^= (bits as u8 & 1) << 5;
                bits >>= 1;
                left -= 1;
            }
        }
        i = end;
    }
}

enum Check {
    Match,
    /// The question matches but for the case of the name's letters.
    CaseChanged,
    Mismatch,
}

/// Is `ans` the answer to `sent`? QR set, same id, same opcode, the same question section;
/// header and question only, byte for byte (a resolver repeats the question as sent; the first
/// name of a message has nothing earlier to be compressed against).
fn check(sent: &[u8], name_end: usize, q_end: usize, ans: &[u8]) -> Check {
    if ans.len() < q_end {
        return Check::Mismatch;
    }
    let (Ok(a), Ok(s)) = (
        Header::read(&mut BinDecoder::new(ans)),
        Header::read(&mut BinDecoder::new(sent)),
    ) else {
        return Check::Mismatch;
    };
    if a.metadata.message_type != MessageType::Response
        || a.metadata.id != s.metadata.id
        || u8::from(a.metadata.op_code) != u8::from(s.metadata.op_code)
        || a.counts.queries != s.counts.queries
    {
        return Check::Mismatch;
    }
    if ans[12..q_end] == sent[12..q_end] {
        return Check::Match;
    }
    // length octets are < 64 and never fold, so this compares the same labels
    if ans[12..name_end].eq_ignore_ascii_case(&sent[12..name_end])
        && ans[name_end..q_end] == sent[name_end..q_end]
    {
        return Check::CaseChanged;
    }
    Check::Mismatch
}

thread_local! {
    // one receive buffer per runtime thread, not one per query in flight
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 65535]);
}

/// One UDP query in flight; dropping it releases its share of the in-flight bounds.
struct Exchange {
    me: Arc<Upstreams>,
    up: Arc<Upstream>,
    /// The query as sent: our id, the name's case as randomised.
    sent: Vec<u8>,
    name_end: usize,
    q_end: usize,
    client_id: u16,
    /// The client's question section as received (its case), restored in what goes back.
    client_q: Box<[u8]>,
    reply: Reply,
    cost: usize,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.me
            .in_flight_bytes
            .fetch_sub(self.cost, Ordering::Relaxed);
        self.me.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What to do with a datagram that reached a query's socket.
enum Outcome {
    Relay(Vec<u8>),
    /// Not the answer: keep waiting.
    Wait,
    /// The right answer but for the name's case: ask again (see `Exchange::accept`).
    Verify,
}

impl Exchange {
    async fn run(mut self) {
        let deadline = tokio::time::Instant::now() + self.me.timeout;
        let started = Instant::now();
        let mut verifying = false;
        // at most two tries: the second only when the first answer changed the name's case
        let answer = 'tries: loop {
            let usock = match connected_socket(self.up.addr) {
                Ok(s) => s,
                Err(_) => {
                    // descriptors or ephemeral ports exhausted: shed now
                    self.me.stats.send_errors.inc();
                    return self.servfail().await;
                }
            };
            if usock.send(&self.sent).await.is_err() {
                self.me.stats.send_errors.inc();
                return self.servfail().await;
            }
            loop {
                match tokio::time::timeout_at(deadline, usock.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // the runtime is going away
                    Err(_) => return self.expire().await,
                }
                let outcome = RECV_BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    match usock.try_recv(&mut b) {
                        Ok(n) => self.accept(&b[..n], verifying),
                        // ICMP port unreachable surfaces here; the deadline handles the query
                        Err(_) => Outcome::Wait,
                    }
                });
                match outcome {
                    Outcome::Relay(a) => break 'tries a,
                    Outcome::Wait => {}
                    Outcome::Verify => break,
                }
            }
            verifying = true;
            self.retarget();
        };
        self.up.misses.store(0, Ordering::Relaxed);
        let stats = &self.me.stats;
        stats.answered.inc();
        stats.latency.observe(started.elapsed().as_secs_f64());
        let Reply::Udp { sock, peer } = &self.reply;
        // no bigger than the client's UDP size (its EDNS record is in `sent` unchanged): a
        // larger answer goes out as TC=1 and the client retries over TCP
        let out = crate::limits::fit_udp(&self.sent, &answer);
        if out.len() < answer.len() {
            stats.truncated.inc();
        }
        let _ = sock.send_to(&out, *peer).await;
        if answer[3] & 0x0f == 3 {
            if let Some(h) = self.me.nx_hook.get() {
                h(*peer, &answer);
            }
        }
    }

    /// Judges a datagram from the upstream's address and this query's port. An answer with
    /// only the name's case changed comes from an upstream that does not preserve case, or
    /// from a forger who hit port and id but not the 0x20 bits: ask again on a fresh port with
    /// a fresh id and case. The real upstream then answers in exactly our case (the first was
    /// forged), or changes it again (it folds case: compare case-insensitively from now on).
    fn accept(&self, ans: &[u8], verifying: bool) -> Outcome {
        match check(&self.sent, self.name_end, self.q_end, ans) {
            Check::Match => {
                if verifying {
                    self.me.stats.spoof_nearmiss.inc(); // the case-changed answer was forged
                }
            }
            Check::CaseChanged if self.up.folds_case.load(Ordering::Relaxed) => {}
            Check::CaseChanged if verifying => self.me.case_fallback(&self.up),
            Check::CaseChanged => return Outcome::Verify,
            Check::Mismatch => {
                self.me.stats.spoof_nearmiss.inc();
                return Outcome::Wait;
            }
        }
        Outcome::Relay(
            self.me
                .restore(ans, self.client_id, &self.client_q, self.q_end),
        )
    }

    /// A fresh id and a fresh random case for the second try.
    fn retarget(&mut self) {
        self.sent[..2].copy_from_slice(&rand_id().to_be_bytes());
        self.sent[12..self.q_end].copy_from_slice(&self.client_q);
        randomise_case(&mut self.sent, self.name_end);
    }

    /// The deadline passed: SERVFAIL to the client, and the upstream counts a miss.
    async fn expire(self) {
        self.me.stats.timeouts.inc();
        self.me.miss(&self.up);
        self.servfail().await;
    }

    async fn servfail(mut self) {
        // the client's query again: its id and question bytes back in the copy sent
        self.sent[..2].copy_from_slice(&self.client_id.to_be_bytes());
        self.sent[12..self.q_end].copy_from_slice(&self.client_q);
        let Reply::Udp { sock, peer } = &self.reply;
        if let Some(a) = crate::answer::error_for(&self.sent, ResponseCode::ServFail) {
            let _ = sock.send_to(&a, *peer).await;
        }
    }
}

/// A UDP socket of its own for one query: connect() binds it to a random ephemeral port (the
/// kernel picks it) and makes it drop datagrams from any other source.
fn connected_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    sock.connect(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

impl Upstreams {
    pub async fn connect(
        addrs: &[SocketAddr],
        timeout: Duration,
        stats: UpstreamStats,
    ) -> std::io::Result<Arc<Self>> {
        Self::connect_with_limits(addrs, timeout, stats, Limits::default()).await
    }

    pub async fn connect_with_limits(
        addrs: &[SocketAddr],
        timeout: Duration,
        stats: UpstreamStats,
        limits: Limits,
    ) -> std::io::Result<Arc<Self>> {
        if addrs.is_empty() {
            return Err(std::io::Error::other("no upstream resolvers"));
        }
        let ups = addrs
            .iter()
            .map(|&addr| {
                Arc::new(Upstream {
                    addr,
                    misses: AtomicU32::new(0),
                    down_until_ms: AtomicU64::new(0),
                    folds_case: AtomicBool::new(false),
                    idle: std::sync::Mutex::new(Vec::new()),
                })
            })
            .collect();
        Ok(Arc::new(Self {
            ups,
            dot: std::sync::OnceLock::new(),
            nx_hook: std::sync::OnceLock::new(),
            next: AtomicUsize::new(0),
            timeout,
            epoch: Instant::now(),
            limits,
            in_flight_bytes: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            stats: Arc::new(stats),
        }))
    }

    /// Bytes charged to the UDP queries in flight now (at most `Limits::max_bytes`).
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes.load(Ordering::Relaxed)
    }

    /// UDP queries in flight now (at most `Limits::max_queries`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next upstream in round robin that is not marked down (all down: the next one).
    fn pick(&self) -> &Arc<Upstream> {
        let n = self.ups.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        for k in 0..n {
            let i = (start + k) % n;
            if self.ups[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return &self.ups[i];
            }
        }
        &self.ups[start % n]
    }

    /// An upstream missed a deadline (or refused): `DOWN_AFTER` in a row and it is skipped.
    fn miss(&self, up: &Upstream) {
        if up.misses.fetch_add(1, Ordering::Relaxed) + 1 >= DOWN_AFTER {
            let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
            if up.down_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                tracing::warn!(upstream = %up.addr, "upstream not answering: skipped for {DOWN_FOR:?}");
            }
        }
    }

    /// Takes `cost` bytes and one query from the in-flight bounds, or says no.
    fn reserve(&self, cost: usize) -> bool {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.limits.max_queries {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let before = self.in_flight_bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.limits.max_bytes {
            self.in_flight_bytes.fetch_sub(cost, Ordering::Relaxed);
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// An upstream changed the name's case (twice over UDP, see `Exchange::accept`): no 0x20
    /// for it and names compared case-insensitively from now on, rather than fail every query.
    fn case_fallback(&self, up: &Upstream) {
        if !up.folds_case.swap(true, Ordering::Relaxed) {
            self.stats.case_fallbacks.inc();
            tracing::warn!(upstream = %up.addr, "upstream does not preserve the case of query names: 0x20 off for it");
        }
    }

    /// A checked answer with the client's id and question bytes (the same length) back.
    fn restore(&self, ans: &[u8], client_id: u16, client_q: &[u8], q_end: usize) -> Vec<u8> {
        let mut out = ans.to_vec();
        out[..2].copy_from_slice(&client_id.to_be_bytes());
        out[12..q_end].copy_from_slice(client_q);
        out
    }

    /// Sends `query` upstream over UDP; the answer (or SERVFAIL at the deadline) goes to `reply`.
    pub async fn forward_udp(self: &Arc<Self>, query: &[u8], reply: Reply) {
        if query.len() < 12 {
            return;
        }
        let bounds = question_bounds(query);
        let cost = query.len() + bounds.map_or(0, |b| b.1) + PER_QUERY_OVERHEAD;
        let Some((name_end, q_end)) = bounds.filter(|_| self.reserve(cost)) else {
            // no question to match an answer to, or over a bound: shed rather than grow
            self.stats.send_errors.inc();
            let Reply::Udp { sock, peer } = &reply;
            if let Some(a) = crate::answer::error_for(query, ResponseCode::ServFail) {
                let _ = sock.send_to(&a, *peer).await;
            }
            return;
        };
        if self.dot.get().is_some() {
            let me = self.clone();
            let query = query.to_vec();
            tokio::spawn(async move {
                let _held = Reserved { me: &me, cost };
                let Reply::Udp { sock, peer } = &reply;
                let out = match me.exchange_dot(&query, name_end, q_end).await {
                    Some(answer) => {
                        let out = crate::limits::fit_udp(&query, &answer);
                        if out.len() < answer.len() {
                            me.stats.truncated.inc();
                        }
                        if answer[3] & 0x0f == 3 {
                            if let Some(h) = me.nx_hook.get() {
                                h(*peer, &answer);
                            }
                        }
                        out.into_owned()
                    }
                    None => match crate::answer::error_for(&query, ResponseCode::ServFail) {
                        Some(a) => a,
                        None => return,
                    },
                };
                let _ = sock.send_to(&out, *peer).await;
            });
            return;
        }
        let up = self.pick().clone();
        let mut sent = query.to_vec();
        sent[..2].copy_from_slice(&rand_id().to_be_bytes());
        if !up.folds_case.load(Ordering::Relaxed) {
            randomise_case(&mut sent, name_end);
        }
        let ex = Exchange {
            me: self.clone(),
            up,
            sent,
            name_end,
            q_end,
            client_id: u16::from_be_bytes([query[0], query[1]]),
            client_q: query[12..q_end].into(),
            reply,
            cost,
        };
        tokio::spawn(ex.run());
    }

    /// One query over TCP to the next upstream (failing over once), within the deadline. The
    /// answer must carry the id and question sent, like over UDP.
    pub async fn exchange_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let (name_end, q_end) = question_bounds(query)?;
        if self.dot.get().is_some() {
            return self.exchange_dot(query, name_end, q_end).await;
        }
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        for _ in 0..2.min(self.ups.len()) {
            let up = self.pick();
            let mut sent = query.to_vec();
            sent[..2].copy_from_slice(&rand_id().to_be_bytes());
            let sent = &sent;
            let r = tokio::time::timeout(self.timeout, async move {
                let mut s = TcpStream::connect(up.addr).await?;
                self.ask_stream(&mut s, up, sent, name_end, q_end).await
            })
            .await;
            match r {
                Ok(Ok(a)) => {
                    self.stats.answered.inc();
                    return Some(self.restore(&a, client_id, &query[12..q_end], q_end));
                }
                _ => {
                    self.stats.timeouts.inc();
                }
            }
        }
        None
    }

    /// Writes `sent` length-prefixed on a TCP or TLS stream and reads answers until the one that
    /// carries its id and question (others, e.g. a late answer on a kept connection, are counted
    /// as near misses and skipped). Unbounded: callers put a deadline around it.
    async fn ask_stream<S>(
        &self,
        s: &mut S,
        up: &Upstream,
        sent: &[u8],
        name_end: usize,
        q_end: usize,
    ) -> std::io::Result<Vec<u8>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut framed = Vec::with_capacity(sent.len() + 2);
        framed.extend((sent.len() as u16).to_be_bytes());
        framed.extend(sent);
        s.write_all(&framed).await?;
        loop {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut ans = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut ans).await?;
            match check(sent, name_end, q_end, &ans) {
                Check::Match => {}
                Check::CaseChanged => self.case_fallback(up),
                Check::Mismatch => {
                    self.stats.spoof_nearmiss.inc();
                    continue;
                }
            }
            return Ok(ans);
        }
    }

    /// One query over DoT to the next upstream (failing over once), within the deadline: a
    /// kept connection first (one that turns out closed is replaced by a fresh one), the same
    /// answer checks as over TCP. `None`: no answer in time (the client gets SERVFAIL).
    async fn exchange_dot(&self, query: &[u8], name_end: usize, q_end: usize) -> Option<Vec<u8>> {
        let dot = self.dot.get()?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let started = Instant::now();
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        let mut sent = query.to_vec();
        for _ in 0..2.min(self.ups.len()) {
            let up = self.pick().clone();
            // kept connections may have been closed by the upstream meanwhile: each is tried
            // once (bounded by DOT_IDLE_MAX), then a fresh one
            loop {
                let kept = up.idle.lock().ok().and_then(|mut v| v.pop());
                let reused = kept.is_some();
                sent[..2].copy_from_slice(&rand_id().to_be_bytes());
                let r = tokio::time::timeout_at(deadline, async {
                    let mut s = match kept {
                        Some(s) => s,
                        None => dot.connect(up.addr).await?,
                    };
                    let ans = self.ask_stream(&mut s, &up, &sent, name_end, q_end).await?;
                    Ok::<_, std::io::Error>((s, ans))
                })
                .await;
                match r {
                    Ok(Ok((s, ans))) => {
                        if let Ok(mut idle) = up.idle.lock() {
                            if idle.len() < DOT_IDLE_MAX {
                                idle.push(s);
                            }
                        }
                        up.misses.store(0, Ordering::Relaxed);
                        self.stats.answered.inc();
                        self.stats.latency.observe(started.elapsed().as_secs_f64());
                        return Some(self.restore(&ans, client_id, &query[12..q_end], q_end));
                    }
                    Ok(Err(e)) if reused => {
                        tracing::debug!(upstream = %up.addr, "kept DoT connection failed ({e}): a fresh one");
                    }
                    Ok(Err(e)) => {
                        // refused, reset, or a certificate that does not verify: never plaintext
                        tracing::warn!(upstream = %up.addr, "DoT upstream: {e}");
                        self.stats.send_errors.inc();
                        self.miss(&up);
                        break;
                    }
                    Err(_) => {
                        self.stats.timeouts.inc();
                        self.miss(&up);
                        return None;
                    }
                }
            }
        }
        None
    }
}
