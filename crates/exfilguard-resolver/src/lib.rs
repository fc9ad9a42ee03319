//! `exfilguard resolve`: a filtering DNS forwarder (UDP and TCP, IPv4 and IPv6) to put in front
//! of any resolver. Every query goes through the same brain as the eBPF agent; tunnel, C2 and
//! DGA queries get the configured block answer (REFUSED by default), a conviction refuses the
//! whole registered domain, everything else is forwarded and its answer relayed unchanged.
//! Events, convictions, the fleet blocklist and metrics go through the agent's services.
//! Needs no privileges (port 53 needs `cap_net_bind_service`).

pub mod answer;
pub mod behaviour;
pub mod doh;
pub mod judge;
pub mod limits;
pub mod tls;
pub mod upstream;

use anyhow::{bail, Context, Result};
use exfilguard_agent::config::Config;
use exfilguard_agent::metrics::{Live, Metrics};
use exfilguard_agent::pipeline::{monotonic_ns, now_ms, Conviction};
use exfilguard_agent::services::{FleetApply, Services};
use exfilguard_convict::{AlarmAction, Client, FleetAction};
use exfilguard_dataplane::{Action, Event, Hook};
use exfilguard_detect::Verdict;
use exfilguard_dns::DnsName;
use exfilguard_events::{Decision, Detection};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use judge::{Judge, Judgement};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use upstream::{Reply, Upstreams};

type Labels = Vec<(&'static str, String)>;

use exfilguard_agent::pipeline::{EVENTS_PER_CLIENT, EVENTS_PER_PAIR};

/// Re-applies command-line settings to a re-read config.
pub type Reapply = dyn Fn(&mut Config) -> anyhow::Result<()> + Send;

/// Options from the command line beyond the config file.
#[derive(Default)]
pub struct ResolveOptions {
    pub config_path: Option<PathBuf>,
    /// Called once every listener is bound (tests, readiness).
    pub on_ready: Option<Box<dyn FnOnce(Vec<SocketAddr>) + Send>>,
    /// Re-applies command-line settings to a config re-read on SIGHUP (`--model`,
    /// `--threshold`, list files), so a reload does not silently drop them.
    pub reapply: Option<Box<Reapply>>,
}

/// What the front counts beyond the agent's metrics.
#[derive(Clone)]
pub struct FrontMetrics {
    /// `proto` (udp, tcp) × `result` (forwarded, forwarded_opcode, refused, notimp, formerr,
    /// servfail, dropped, denied, ratelimited, slipped).
    pub queries: Family<Labels, Counter>,
    pub convicted_domains: prometheus_client::metrics::gauge::Gauge,
    /// Conviction-table entries evicted to stay within `convict.max_*`.
    pub evicted: Counter,
}

impl FrontMetrics {
    fn register(
        reg: &mut prometheus_client::registry::Registry,
        up: &upstream::UpstreamStats,
    ) -> Self {
        let m = Self {
            queries: Family::default(),
            convicted_domains: Default::default(),
            evicted: Counter::default(),
        };

        reg.register(
            "exfilguard_convictions_evicted",
            "Conviction-table entries evicted (least recently used) to stay within convict.max_zones / max_client_blocks",
            m.evicted.clone(),
        );
        reg.register(
            "exfilguard_resolve_queries",
            "Queries the resolver front handled, by transport and result",
            m.queries.clone(),
        );
        reg.register(
            "exfilguard_resolve_convicted_domains",
            "Registered domains the front refuses (convictions and fleet entries)",
            m.convicted_domains.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_answers",
            "Answers relayed from the upstream resolvers",
            up.answered.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_timeouts",
            "Queries the upstream resolvers did not answer within resolve.timeout_ms",
            up.timeouts.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_send_errors",
            "Queries that could not be sent upstream (or were shed)",
            up.send_errors.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_spoof_nearmiss",
            "Datagrams from an upstream's address and query port that were not the answer (wrong id or question): forgery attempts, mostly",
            up.spoof_nearmiss.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_case_fallbacks",
            "Upstreams that changed the case of query names (0x20 randomisation turned off for them)",
            up.case_fallbacks.clone(),
        );
        reg.register(
            "exfilguard_resolve_upstream_seconds",
            "Upstream round-trip time of forwarded UDP queries",
            up.latency.clone(),
        );
        m
    }

    fn count(&self, proto: &'static str, result: &'static str) {
        self.queries
            .get_or_create(&vec![
                ("proto", proto.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// Shared by every worker task.
struct Front {
    cfg: Config,
    host: String,
    judge: Arc<Judge>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    front: FrontMetrics,
    sink: SyncSender<Box<Detection>>,
    convictions: Option<SyncSender<Conviction>>,
    behaviour: Option<Arc<behaviour::Behaviour>>,
    limits: limits::Limits,
    /// DoT/DoH handshakes and HTTP statuses.
    tls: tls::TlsMetrics,
    /// `resolve.forward_opcodes` as numbers.
    forward_ops: Vec<u8>,
    /// A flood of hostile queries must not overwrite the audit trail with itself.
    throttle: std::sync::Mutex<exfilguard_events::throttle::Throttle>,
}

/// What to do with one client message.
enum Step {
    Answer(Vec<u8>),
    Forward,
    Drop,
}

impl Front {
    /// Judges one client message. Decisions never wait on sinks (bounded `try_send`).
    fn decide(
        &self,
        bytes: &[u8],
        client: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
    ) -> Step {
        if bytes.len() < 12 {
            self.front.count(proto, "dropped");
            return Step::Drop;
        }
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.front.count(proto, "formerr");
                return match answer::error_for(bytes, ResponseCode::FormErr) {
                    Some(a) => Step::Answer(a),
                    None => Step::Drop,
                };
            }
        };
        if req.metadata.message_type == MessageType::Response {
            self.front.count(proto, "dropped");
            return Step::Drop;
        }
        let op = (bytes[2] >> 3) & 0x0f;
        if op != 0 && self.forward_ops.contains(&op) {
            // the operator relays this opcode (resolve.forward_opcodes): unjudged
            self.front.count(proto, "forwarded_opcode");
            return Step::Forward;
        }
        if req.metadata.op_code != OpCode::Query {
            // IQUERY, STATUS, NOTIFY, UPDATE, DSO and unassigned opcodes carry names the
            // judge would not see, and an UPDATE relayed from here passes the upstream's
            // address ACLs: refused like Unbound and PowerDNS Recursor do
            self.front.count(proto, "notimp");
            return answer::error_for(bytes, ResponseCode::NotImp).map_or(Step::Drop, Step::Answer);
        }
        let Some(q) = req.queries.first().filter(|_| req.queries.len() == 1) else {
            self.front.count(proto, "formerr");
            return answer::error_for(bytes, ResponseCode::FormErr)
                .map_or(Step::Drop, Step::Answer);
        };
        let name = match DnsName::from_labels(q.name().iter()) {
            Ok(n) => n,
            Err(_) => {
                self.front.count(proto, "formerr");
                return answer::error_for(bytes, ResponseCode::FormErr)
                    .map_or(Step::Drop, Step::Answer);
            }
        };
        let qtype = u16::from(q.query_type());
        if self.cfg.resolve.doh_canary && is_doh_canary(&name) {
            // browsers that find it missing leave their own DoH off: their queries stay here
            self.front.count(proto, "canary");
            return Step::Answer(answer::block(
                &req,
                exfilguard_agent::config::BlockAction::Nxdomain,
                self.cfg.resolve.sinkhole_ipv4,
                self.cfg.resolve.sinkhole_ipv6,
            ));
        }
        let who = client_of(client);
        if let Some(b) = &self.behaviour {
            // before the judge: an alarm convicts the domain, so this query is refused too
            for a in b.query(now_ms(), client.ip(), &name) {
                self.on_alarm(
                    a,
                    req.metadata.id,
                    &name,
                    qtype,
                    client,
                    local,
                    proto,
                    bytes.len(),
                );
            }
        }
        let t0 = Instant::now();
        let judged = if self.judge.has_remote() {
            // an HTTP call: let this worker's other tasks move to another thread meanwhile
            tokio::task::block_in_place(|| self.judge.judge(&name, qtype, &who))
        } else {
            self.judge.judge(&name, qtype, &who)
        };
        let record = |decision: Decision, verdict: Option<Verdict>| {
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("iface", "resolve".to_string()),
                    ("decision", decision.as_str().to_string()),
                ])
                .inc();
            if let Some(v) = &verdict {
                self.metrics
                    .verdicts
                    .get_or_create(&vec![("class", v.class.as_str().to_string())])
                    .inc();
            }
            self.emit(
                req.metadata.id,
                &name,
                qtype,
                client,
                local,
                proto,
                decision,
                verdict,
                bytes.len(),
            );
        };
        let refuse = || {
            let r = &self.cfg.resolve;
            Step::Answer(answer::block(
                &req,
                r.action,
                r.sinkhole_ipv4,
                r.sinkhole_ipv6,
            ))
        };
        match judged {
            Ok(Judgement::Pass) => {
                self.front.count(proto, "forwarded");
                Step::Forward
            }
            Ok(Judgement::Benign { verdict, fresh }) => {
                if fresh {
                    self.metrics
                        .inference_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    if self.cfg.events.released {
                        record(Decision::Released, Some(verdict));
                    }
                }
                self.front.count(proto, "forwarded");
                Step::Forward
            }
            Ok(Judgement::Alert { verdict }) => {
                // the detector's action is `alert`: answered, and reported
                self.front.count(proto, "forwarded");
                record(Decision::Reported, Some(verdict));
                Step::Forward
            }
            Ok(Judgement::Refuse { verdict, convicted }) => {
                if let Some(o) = convicted {
                    self.metrics
                        .inference_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    self.convicted(&o, &verdict, &name);
                }
                self.front.count(proto, "refused");
                record(Decision::Blocked, Some(verdict));
                refuse()
            }
            Err(e) => {
                // the model failed: the configured fail policy, like held packets in the kernel
                tracing::error!("model error: {e}");
                self.metrics.error("model");
                if self.cfg.kernel.fail_open {
                    self.front.count(proto, "forwarded");
                    Step::Forward
                } else {
                    self.front.count(proto, "refused");
                    record(Decision::Dropped, None);
                    refuse()
                }
            }
        }
    }

    /// One message from a stream client (TCP, DoT, DoH: `proto`) judged like any query, and
    /// forwarded over TCP when it passes: the answer to send, or `None` to close.
    async fn answer_stream(
        &self,
        msg: &[u8],
        peer: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
    ) -> Option<Vec<u8>> {
        Some(match self.decide(msg, peer, local, proto) {
            Step::Answer(a) => a,
            Step::Forward if limits::is_any(msg) => {
                let a = limits::any_answer(msg)?;
                self.limits.metrics.any_minimal.inc();
                a
            }
            Step::Forward => match self.upstreams.exchange_tcp(msg).await {
                Some(a) => {
                    if a.len() >= 12 && a[3] & 0x0f == 3 {
                        self.on_nxdomain(peer, &a, proto);
                    }
                    a
                }
                None => {
                    self.front.count(proto, "servfail");
                    answer::error_for(msg, ResponseCode::ServFail)?
                }
            },
            Step::Drop => return None,
        })
    }

    /// A behaviour alarm: information rate and beacons convict the registered domain (unless
    /// allowlisted); a DGA bot is reported.
    #[allow(clippy::too_many_arguments)]
    fn on_alarm(
        &self,
        a: exfilguard_behaviour::Alarm,
        dns_id: u16,
        name: &DnsName,
        qtype: u16,
        client: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
        len: usize,
    ) {
        let verdict = exfilguard_agent::analytics::verdict_of(&a);
        let block = self.cfg.behaviour.block;
        let everyone_for = Duration::from_secs(self.cfg.behaviour.block_secs.max(1));
        match self
            .judge
            .alarm(&client_of(client), &a, block, everyone_for)
        {
            AlarmAction::Convicted(o) => {
                tracing::warn!(client = %a.client, kind = a.kind.as_str(), zone = ?o.zone, scope = o.scope.as_str(), "convicted by behaviour: {} ({})", a.reason, o.evidence);
                self.convicted(&o, &verdict, name);
            }
            AlarmAction::Allowlisted(domain) => {
                tracing::warn!(%domain, "behaviour alarm for an allowlisted domain, not blocking: {}", a.reason);
            }
            AlarmAction::Report => {
                tracing::warn!(client = %a.client, kind = a.kind.as_str(), domain = ?a.domain, "behaviour alarm (report only): {}", a.reason);
                self.emit(
                    dns_id,
                    name,
                    qtype,
                    client,
                    local,
                    proto,
                    Decision::Reported,
                    Some(verdict),
                    len,
                );
            }
        }
    }

    /// A conviction made: logged; a new block for everyone goes to the fleet topic.
    fn convicted(&self, o: &exfilguard_convict::Outcome, verdict: &Verdict, name: &DnsName) {
        tracing::info!(zone = ?o.zone, scope = o.scope.as_str(), name = %name.normalized(), class = verdict.class.as_str(), "convicted: {}", o.evidence);
        if let (Some(zone), true, Some(tx)) = (&o.zone, o.newly_everyone, &self.convictions) {
            let _ = tx.try_send(Conviction {
                domain: zone.clone(),
                verdict: verdict.clone(),
                name: name.normalized(),
                evidence: o.evidence.clone(),
            });
        }
    }

    /// An NXDOMAIN answer relayed to `client`: the DGA-bot analytics.
    fn on_nxdomain(&self, client: SocketAddr, answer: &[u8], proto: &'static str) {
        let Some(b) = &self.behaviour else { return };
        let Ok(m) = exfilguard_dns::parse_message(answer) else {
            return;
        };
        let Some(q) = m.questions.first() else { return };
        let score = self.judge.cached_score(&q.name).unwrap_or(0.0);
        let local = self
            .cfg
            .resolve
            .listen
            .first()
            .and_then(|l| l.parse().ok())
            .unwrap_or(client);
        for a in b.nxdomain(now_ms(), client.ip(), &q.name, score) {
            self.on_alarm(
                a,
                m.id,
                &q.name,
                q.qtype,
                client,
                local,
                proto,
                answer.len(),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        dns_id: u16,
        name: &DnsName,
        qtype: u16,
        client: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
        decision: Decision,
        verdict: Option<Verdict>,
        len: usize,
    ) {
        let zone = name
            .registered_domain()
            .unwrap_or_else(|| name.normalized());
        let count = self.throttle.lock().expect("lock").admit(
            Instant::now(),
            &client.ip().to_string(),
            &zone,
        );
        let Some(count) = count else {
            self.metrics.events_suppressed.inc();
            return;
        };
        let name_wire = exfilguard_dataplane::hash::wire(name.labels());
        // OCSF's protocol_name stays the IP protocol; what carried the DNS is the encapsulation
        let (transport, encap) = match proto {
            "dot" => ("tcp", "tls"),
            "doh" => ("tcp", "https"),
            p => (p, "none"),
        };
        let ev = Event {
            ts_ns: monotonic_ns(),
            action: if decision == Decision::Released {
                Action::Pass
            } else {
                Action::Block
            },
            hook: Hook::Resolver,
            response: false,
            reasons: Vec::new(),
            ifindex: 0,
            src: client.ip(),
            dst: local.ip(),
            sport: client.port(),
            dport: local.port(),
            transport,
            encap,
            qtype,
            dns_id,
            rcode: 0,
            ancount: 0,
            name_hash: exfilguard_dataplane::hash::question_hash(&name_wire, qtype, 1),
            name_wire,
            socket_cookie: 0,
            process: None,
            wire_len: len as u32,
            msg_len: len.min(u16::MAX as usize) as u16,
            extra_len: 0,
            msg_hash: 0,
            carrier: 0,
            frame_l3: false,
            quiet: None,
            packet: Vec::new(),
            csum: None,
        };
        let det = Detection {
            event: "query",
            decision,
            name: name.normalized(),
            registered_domain: name.registered_domain(),
            verdict,
            kernel: ev,
            count: (count > 1).then_some(count),
            hold_us: None,
            time_ms: now_ms(),
            host: self.host.clone(),
            iface: None,
            container: None,
            uid: uuid::Uuid::now_v7(),
        };
        match self.sink.try_send(Box::new(det)) {
            Ok(()) => {
                self.metrics.sink_queue_depth.inc();
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.events_dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => {}
        };
    }
}

/// A front client as the conviction policy sees it (IPv4-mapped addresses as IPv4).
fn client_of(a: SocketAddr) -> Client {
    Client::Addr(match a.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        ip => ip,
    })
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // one socket per worker on the same address: the kernel spreads clients over them
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_recv_buffer_size(4 << 20).ok();
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("resolve.listen: binding udp {addr}"))?;
    Ok(UdpSocket::from_std(s.into())?)
}

async fn udp_worker(front: Arc<Front>, sock: Arc<UdpSocket>) {
    let local = sock.local_addr().expect("bound");
    let lim = &front.limits;
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let query = &buf[..n];
        // before any parsing: a flood costs one bucket lookup per packet
        let admit = lim.admit_udp(peer.ip());
        if !lim.allowed(peer.ip()) {
            front.front.count("udp", "denied");
            if admit == limits::Admit::Pass {
                if let Some(a) = limits::refused(query) {
                    let _ = sock.send_to(&a, peer).await;
                }
            }
            continue;
        }
        match admit {
            limits::Admit::Pass => {}
            limits::Admit::Slip => {
                match limits::slip_answer(query) {
                    Some(a) => {
                        front.front.count("udp", "slipped");
                        let _ = sock.send_to(&a, peer).await;
                    }
                    None => front.front.count("udp", "ratelimited"),
                }
                continue;
            }
            limits::Admit::Drop => {
                front.front.count("udp", "ratelimited");
                continue;
            }
        }
        let answer = match front.decide(query, peer, local, "udp") {
            Step::Answer(a) => a,
            // judged like any query, but never relayed: ANY is the classic amplifier
            Step::Forward if limits::is_any(query) => match limits::any_answer(query) {
                Some(a) => {
                    lim.metrics.any_minimal.inc();
                    a
                }
                None => continue,
            },
            Step::Forward => {
                let reply = Reply::Udp {
                    sock: sock.clone(),
                    peer,
                };
                front.upstreams.forward_udp(query, reply).await;
                continue;
            }
            Step::Drop => continue,
        };
        let out = limits::fit_udp(query, &answer);
        if out.len() < answer.len() {
            lim.metrics.truncated.inc();
        }
        let _ = sock.send_to(&out, peer).await;
    }
}

/// Accepts TCP clients: outside the ACL or over a cap they are closed at once; accept errors
/// (out of descriptors) back off instead of spinning, with one warning per 10 s.
async fn tcp_accept(front: Arc<Front>, tcp: TcpListener) {
    let (min, max) = limits::ACCEPT_BACKOFF;
    let mut backoff = min;
    let mut warned: Option<Instant> = None;
    let mut failed = 0u64;
    loop {
        match tcp.accept().await {
            Ok((s, peer)) => {
                backoff = min;
                // Err: dropped here, so closed before any read (counted by reason)
                if let Ok(slot) = front.limits.admit_tcp(peer) {
                    // answers are single small writes: without this, Nagle holds each one
                    // behind the client's delayed ACK of the previous (~40 ms per pipelined answer)
                    let _ = s.set_nodelay(true);
                    tokio::spawn(tcp_conn(front.clone(), s, peer, slot));
                }
            }
            Err(e) => {
                front.limits.metrics.accept_errors.inc();
                if limits::transient_accept_error(&e) {
                    continue;
                }
                failed += 1;
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, failed, backoff_ms = backoff.as_millis() as u64, "accepting TCP clients failed: backing off");
                    warned = Some(Instant::now());
                    failed = 0;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// Why a TCP connection stopped waiting for its next message.
enum Wait {
    Ready,
    Closed,
    Expired(&'static str),
}

async fn tcp_conn(
    front: Arc<Front>,
    mut s: tokio::net::TcpStream,
    peer: SocketAddr,
    _slot: limits::Slot,
) {
    let local = match s.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let lim = &front.limits;
    // idle clients are cut off, and every connection ends at its lifetime: a client trickling
    // queries cannot pin a slot forever
    let idle = lim.tcp_idle;
    let end = tokio::time::Instant::now() + lim.tcp_lifetime;
    let mut last = tokio::time::Instant::now();
    loop {
        let mut len = [0u8; 2];
        let wait = {
            let (deadline, why) = if last + idle < end {
                (last + idle, "idle")
            } else {
                (end, "lifetime")
            };
            let read = s.read_exact(&mut len);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline) => break Wait::Expired(why),
                    // a full table: connections idle for a while make room
                    _ = lim.tcp.pressure.notified() => {
                        if last.elapsed() >= limits::PRESSURE_IDLE {
                            break Wait::Expired("pressure");
                        }
                    }
                    r = &mut read => break if r.is_ok() { Wait::Ready } else { Wait::Closed },
                }
            }
        };
        match wait {
            Wait::Ready => {}
            Wait::Closed => return,
            Wait::Expired(why) => {
                lim.metrics.tcp_closed(why);
                return;
            }
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(idle, s.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(out) = front.answer_stream(&msg, peer, local, "tcp").await else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend((out.len() as u16).to_be_bytes());
        framed.extend(out);
        // a client that stops reading would block the write forever
        match tokio::time::timeout(idle, s.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        last = tokio::time::Instant::now();
    }
}

/// The fleet blocklist applied to the front through the conviction policy: entries refuse
/// (unless allowlisted here or protected), tombstones and expiries release.
fn fleet_applier(judge: Arc<Judge>) -> FleetApply {
    Box::new(move |u| match u {
        Some(u) => match judge.fleet(u) {
            FleetAction::Block { zone, .. } => {
                tracing::info!(domain = %zone, "fleet blocklist: refusing")
            }
            FleetAction::Unblock { zone, was: true } => {
                tracing::info!(domain = %zone, "fleet blocklist: released")
            }
            FleetAction::Unblock { .. } => {}
            FleetAction::Skipped { zone, why } => {
                tracing::warn!(domain = %zone, "fleet entry not applied: {why}")
            }
        },
        None => {
            for d in judge.sweep() {
                tracing::info!(domain = %d, "conviction expired");
            }
        }
    })
}

/// The front's judge for `cfg` with `detector` (also what `eval --stream` replays through).
pub fn judge_for(cfg: &Config, detector: exfilguard_detect::Detector) -> Result<Judge> {
    Ok(Judge::new(
        detector,
        cfg.kernel.clone(),
        exfilguard_agent::name_list(&cfg.detect.allow)?,
        exfilguard_agent::name_list(&cfg.detect.block)?,
        cfg.resolve.cache_entries,
        Duration::from_secs(cfg.resolve.cache_secs),
        Duration::from_secs(cfg.resolve.block_secs),
        exfilguard_convict::Convictions::new(cfg.convict.clone())
            .context("convict.protected_file")?,
    ))
}

/// `use-application-dns.net` or a name under it (Mozilla's canary domain).
fn is_doh_canary(name: &DnsName) -> bool {
    let mut l = name.labels().rev();
    l.next().is_some_and(|t| t.eq_ignore_ascii_case(b"net"))
        && l.next()
            .is_some_and(|d| d.eq_ignore_ascii_case(b"use-application-dns"))
}

/// Runs the front until SIGTERM/SIGINT. SIGHUP reloads the model and lists.
pub fn run(cfg: Config, opts: ResolveOptions) -> Result<()> {
    if cfg.resolve.upstreams.is_empty() {
        bail!("resolve.upstreams is empty: name at least one resolver to forward to (--upstream ADDR:PORT)");
    }
    let listen: Vec<SocketAddr> = cfg
        .resolve
        .listen
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let ups = cfg.resolve.upstream_addrs().map_err(anyhow::Error::msg)?;
    let dot = if cfg.resolve.upstream_tls {
        let r = &cfg.resolve;
        let ca = Some(r.upstream_tls_ca.as_path()).filter(|p| !p.as_os_str().is_empty());
        let name = Some(r.upstream_tls_name.as_str()).filter(|n| !n.is_empty());
        Some(upstream::DotClient::new(ca, name)?)
    } else {
        None
    };
    let encrypted: Vec<(SocketAddr, tls::Kind)> = (cfg.resolve.listen_tls.iter())
        .map(|a| (a, tls::Kind::Dot))
        .chain(cfg.resolve.listen_https.iter().map(|a| (a, tls::Kind::Doh)))
        .map(|(a, k)| Ok::<_, std::net::AddrParseError>((a.parse()?, k)))
        .collect::<Result<_, _>>()?;
    // certificate files are read (or the development one made) before anything else starts
    let certs = tls::Certs::load(&cfg.resolve)?;
    // before the first thread (runtime workers, sinks, Kafka inherit the reduced sets)
    let mut bind_ports = listen.clone();
    bind_ports.extend(encrypted.iter().map(|(a, _)| *a));
    let keep = front_capabilities(&cfg, &bind_ports);
    if cfg.hardening.drop_caps {
        exfilguard_lockdown::drop_capabilities_to(&keep).context("dropping capabilities")?;
        tracing::info!(kept = ?keep, "capabilities dropped (no_new_privs)");
    }
    // TCP clients are capped well below the descriptor limit; raise it while we may
    let nofile = limits::raise_nofile();
    if nofile < (cfg.resolve.tcp_max_connections + 256) as libc::rlim_t {
        tracing::warn!(
            nofile,
            tcp_max_connections = cfg.resolve.tcp_max_connections,
            "open-file limit leaves little room above resolve.tcp_max_connections"
        );
    }
    let host = exfilguard_agent::host_name(&cfg);
    let detector = exfilguard_agent::detector(&cfg)?;
    let info = detector.model().info().clone();
    tracing::info!(model = %info.version, sha256 = %&info.sha256[..12], host = %host, "brain loaded");
    let mut judge = judge_for(&cfg, detector)?;
    let runtime_metrics = exfilguard_runtime::RuntimeMetrics::default();
    if cfg.runtime.enabled() {
        let remote = exfilguard_runtime::Remote::new(cfg.runtime.clone(), runtime_metrics.clone());
        tracing::info!(endpoint = %remote.endpoint(), timeout_ms = cfg.runtime.timeout_ms, "remote model runtime, embedded model as fallback");
        judge = judge.with_remote(remote);
    }
    let rpz = if cfg.rpz.enabled() {
        let zone = Arc::new(exfilguard_rpz::Zone::new(cfg.rpz.clone())?);
        judge = judge.with_rpz(zone.clone());
        Some(zone)
    } else {
        None
    };
    let judge = Arc::new(judge);

    let workers = match cfg.resolve.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("exfilguard-resolve")
        .build()?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry, &info.version, &info.sha256);
    let limit_metrics = limits::LimitMetrics::register(&mut registry);
    let tls_metrics = tls::TlsMetrics::register(&mut registry);
    let upstreams = rt.block_on(Upstreams::connect(
        &ups,
        Duration::from_millis(cfg.resolve.timeout_ms),
        upstream::UpstreamStats {
            answered: Counter::default(),
            timeouts: Counter::default(),
            send_errors: Counter::default(),
            spoof_nearmiss: Counter::default(),
            case_fallbacks: Counter::default(),
            truncated: limit_metrics.truncated.clone(),
            latency: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
        },
    ))?;
    if let Some(d) = dot {
        let _ = upstreams.dot.set(d);
    }
    let front_metrics = FrontMetrics::register(&mut registry, &upstreams.stats);
    let rpz_metrics = exfilguard_rpz::RpzMetrics::default();
    if rpz.is_some() {
        rpz_metrics.register(&mut registry);
    }
    if cfg.runtime.enabled() {
        runtime_metrics.register(&mut registry);
    }
    let behaviour = cfg.behaviour.enabled.then(|| {
        Arc::new(behaviour::Behaviour::new(
            &cfg.behaviour,
            workers,
            metrics.clone(),
        ))
    });
    let fleet =
        (cfg.kafka.enabled() && cfg.kafka.follow_blocklist).then(|| fleet_applier(judge.clone()));
    let services = Services::start(&cfg, &host, &metrics, registry, Live::default(), fleet)?;

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("signal handler")?;

    let front = Arc::new(Front {
        behaviour: behaviour.clone(),
        cfg: cfg.clone(),
        host,
        judge: judge.clone(),
        upstreams,
        metrics: metrics.clone(),
        front: front_metrics.clone(),
        sink: services.sink.clone(),
        convictions: services.convictions.clone(),
        forward_ops: cfg
            .resolve
            .forward_opcodes
            .iter()
            .filter_map(|o| exfilguard_agent::config::opcode_number(o))
            .collect(),
        throttle: std::sync::Mutex::new(exfilguard_events::throttle::Throttle::new(
            EVENTS_PER_CLIENT,
            EVENTS_PER_PAIR,
        )),
        limits: limits::Limits::new(&cfg.resolve, limit_metrics),
        tls: tls_metrics,
    });
    if behaviour.is_some() {
        let weak = Arc::downgrade(&front);
        let _ = front.upstreams.nx_hook.set(Box::new(move |peer, answer| {
            if let Some(f) = weak.upgrade() {
                f.on_nxdomain(peer, answer, "udp");
            }
        }));
    }
    let result = rt.block_on(async {
        let mut bound = Vec::new();
        for &addr in &listen {
            let mut local = addr;
            for w in 0..workers {
                let s = Arc::new(udp_socket(local)?);
                if w == 0 {
                    // port 0: the workers share the port the first socket got
                    local = s.local_addr()?;
                }
                tokio::spawn(udp_worker(front.clone(), s));
            }
            let tcp = TcpListener::bind(local)
                .await
                .with_context(|| format!("resolve.listen: binding tcp {local}"))?;
            tokio::spawn(tcp_accept(front.clone(), tcp));
            bound.push(local);
        }
        for &(addr, kind) in &encrypted {
            let certs = certs.as_ref().context("TLS listener without a certificate")?;
            let config = match kind {
                tls::Kind::Dot => certs.server_config(&[])?,
                tls::Kind::Doh => certs.server_config(&[b"h2", b"http/1.1"])?,
            };
            let at = tls::listen(front.clone(), addr, kind, config).await?;
            tracing::info!(listen = %at, proto = kind.proto(), "encrypted DNS listener");
        }
        if let Some(zone) = &rpz {
            exfilguard_rpz::serve(zone.clone(), cfg.rpz.clone(), rpz_metrics)
                .await
                .with_context(|| format!("rpz.listen: serving {}", cfg.rpz.listen))?;
        }
        lock_down(&cfg.hardening, &keep)?;
        metrics.ready.store(true, Ordering::Relaxed);
        tracing::info!(listen = ?bound, upstreams = ?ups, action = ?cfg.resolve.action, workers, "resolving; SIGTERM stops, SIGHUP reloads");
        if let Some(f) = opts.on_ready {
            f(bound);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let mut evicted = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            ticks += 1;
            if ticks.is_multiple_of(10) {
                // expired convictions leave the map and the RPZ within a second
                for d in judge.sweep() {
                    tracing::info!(domain = %d, "conviction expired");
                }
                if let Some(b) = &behaviour {
                    b.refresh();
                }
            }
            front_metrics.convicted_domains.set(judge.convicted_domains() as i64);
            let ev = judge.evictions();
            front_metrics.evicted.inc_by(ev.saturating_sub(evicted));
            evicted = ev;
            if reload.swap(false, Ordering::Relaxed) {
                reload_model(
                    &judge,
                    opts.config_path.as_deref(),
                    opts.reapply.as_deref(),
                    &cfg,
                    &metrics,
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    metrics.ready.store(false, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(front);
    services.shutdown();
    tracing::info!("stopped");
    result
}

/// What the front keeps: CAP_NET_BIND_SERVICE when it binds a port below 1024 (DNS on 53,
/// metrics or RPZ on a low port), else nothing. It loads no eBPF and sends no raw packets.
fn front_capabilities(cfg: &Config, listen: &[SocketAddr]) -> Vec<exfilguard_lockdown::Cap> {
    let port = |a: &str| a.parse::<SocketAddr>().map_or(0, |a| a.port());
    let mut ports: Vec<u16> = listen.iter().map(|a| a.port()).collect();
    if cfg.metrics.enabled {
        ports.push(port(&cfg.metrics.listen));
    }
    if cfg.rpz.enabled() {
        ports.push(port(&cfg.rpz.listen));
    }
    if ports.iter().any(|&p| p != 0 && p < 1024) {
        vec![exfilguard_lockdown::Cap::CAP_NET_BIND_SERVICE]
    } else {
        vec![]
    }
}

/// Once every socket is bound and every thread runs: a check that no thread kept more than
/// `keep`, then the resolver's seccomp allowlist on all of them (TSYNC).
fn lock_down(
    h: &exfilguard_agent::config::HardeningConfig,
    keep: &[exfilguard_lockdown::Cap],
) -> Result<()> {
    if h.drop_caps {
        let over = exfilguard_lockdown::threads_over_mask(exfilguard_lockdown::mask_of(keep))
            .context("checking thread capabilities")?;
        if !over.is_empty() {
            bail!("threads kept capabilities after the drop: {over:?}");
        }
    }
    exfilguard_lockdown::apply_seccomp_for(h.seccomp, exfilguard_lockdown::Profile::Resolver)
        .context("seccomp")?;
    match h.seccomp {
        exfilguard_lockdown::SeccompMode::Off => {
            tracing::warn!("seccomp off (hardening.seccomp = \"off\")")
        }
        mode => tracing::info!(
            ?mode,
            "seccomp allowlist (resolver profile) installed on every thread"
        ),
    }
    Ok(())
}

/// SIGHUP: the model and threshold from the (re-read) config; on error the running ones stay.
fn reload_model(
    judge: &Judge,
    path: Option<&std::path::Path>,
    reapply: Option<&Reapply>,
    running: &Config,
    metrics: &Metrics,
) {
    let reread = path.map(|p| {
        let mut c = Config::load(Some(p))?;
        if let Some(f) = reapply {
            f(&mut c)?;
        }
        anyhow::Ok(c)
    });
    let cfg = match reread.transpose() {
        Ok(c) => c.unwrap_or_else(|| running.clone()),
        Err(e) => {
            tracing::error!("reload failed, keeping the running model: {e:#}");
            metrics.error("reload");
            return;
        }
    };
    match exfilguard_agent::detector(&cfg) {
        Ok(d) => {
            judge.set_detector(d);
            tracing::info!(model = %judge.model_version(), "model reloaded (listeners, lists and upstreams change at restart)");
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the running model: {e:#}");
            metrics.error("reload");
        }
    }
}
