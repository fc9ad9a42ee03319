//! Serving the zone: transfers over TCP, SOA over UDP, NOTIFY to the secondaries after each
//! change. Runs as tasks on the caller's tokio runtime.

use crate::{RpzError, RpzSettings, Zone};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

type Labels = Vec<(&'static str, String)>;

/// Bounds of the transfer port. Whoever can reach `rpz.listen` can open connections, so none
/// of them may hold the accept loop or every slot (docs/threat-model.md, "Hostile clients of
/// the metrics and RPZ endpoints").
pub mod limits {
    use std::time::Duration;
    /// Transfer connections at once; one over the cap is closed at once, never queued (a
    /// queued accept loop stopped every transfer, also REFUSED for outsiders).
    pub const MAX_TRANSFERS: usize = 32;
    /// Per secondary address: one idle host cannot take every slot from the others.
    pub const MAX_PER_PEER: usize = 4;
    /// For each request on a connection, from accept or the previous answer.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// A connection's whole life, every request and answer on it (a peer that asks for the
    /// zone and never reads it).
    pub const TRANSFER_DEADLINE: Duration = Duration::from_secs(60);
    /// Longest pause of the accept loop after an accept error (EMFILE, ENFILE, ENOBUFS).
    pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
}

#[derive(Clone, Default)]
pub struct RpzMetrics {
    /// `kind`: axfr, ixfr, soa, refused, other.
    pub requests: Family<Labels, Counter>,
    /// `result`: acked, unanswered.
    pub notifies: Family<Labels, Counter>,
    pub serial: Gauge,
    pub domains: Gauge,
    /// Transfer connections closed by a bound, `result`: busy (over a cap, closed at once),
    /// timeout (no request in time, or the transfer deadline).
    pub connections: Family<Labels, Counter>,
}

impl RpzMetrics {
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        reg.register(
            "exfilguard_rpz_requests",
            "Requests to the RPZ server by kind (axfr, ixfr, soa, refused, other)",
            self.requests.clone(),
        );
        reg.register(
            "exfilguard_rpz_notifies",
            "NOTIFY messages sent to secondaries, by result",
            self.notifies.clone(),
        );
        reg.register(
            "exfilguard_rpz_serial",
            "Current SOA serial of the RPZ",
            self.serial.clone(),
        );
        reg.register(
            "exfilguard_rpz_domains",
            "Registered domains in the RPZ",
            self.domains.clone(),
        );
        reg.register(
            "exfilguard_rpz_connections",
            "Transfer connections closed by a bound (busy: over a cap; timeout)",
            self.connections.clone(),
        );
    }

    fn closed(&self, result: &'static str) {
        self.connections
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    fn refused(&self) {
        self.requests
            .get_or_create(&vec![("kind", "refused".to_string())])
            .inc();
    }

    fn count(&self, bytes: &[u8], allowed: bool) {
        let kind = if !allowed {
            "refused"
        } else {
            match Message::from_vec(bytes)
                .ok()
                .and_then(|m| m.queries.first().map(|q| q.query_type))
            {
                Some(RecordType::AXFR) => "axfr",
                Some(RecordType::IXFR) => "ixfr",
                Some(RecordType::SOA) => "soa",
                _ => "other",
            }
        };
        self.requests
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }
}

/// IPv4-mapped IPv6 peers as IPv4: the ACL and the per-peer count see one address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn allowed(settings: &RpzSettings, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    settings.allow_transfer.iter().any(|n| n.contains(&ip))
}

/// Transfer connections held, in total and per peer address.
#[derive(Default)]
struct Slots {
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One held connection; gives its place back when the connection task ends.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical(ip);
        let mut g = self.held.lock().expect("slots lock");
        let (total, peers) = &mut *g;
        let mine = peers.get(&ip).copied().unwrap_or(0);
        if *total >= limits::MAX_TRANSFERS || mine >= limits::MAX_PER_PEER {
            return None;
        }
        peers.insert(ip, mine + 1);
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.held.lock().expect("slots lock");
        let (total, peers) = &mut *g;
        *total -= 1;
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Binds `settings.listen` (TCP and UDP, same port) and starts serving `zone` and sending
/// NOTIFYs. Returns the bound address (port 0 picks one).
pub async fn serve(
    zone: Arc<Zone>,
    settings: RpzSettings,
    metrics: RpzMetrics,
) -> Result<SocketAddr, RpzError> {
    let addr: SocketAddr = settings.listen.parse().map_err(|_| {
        RpzError::Config(format!("rpz.listen = {:?}: not ip:port", settings.listen))
    })?;
    let tcp = TcpListener::bind(addr).await?;
    let local = tcp.local_addr()?;
    let udp = UdpSocket::bind(local).await?;
    let settings = Arc::new(settings);
    tokio::spawn(accept_loop(
        tcp,
        zone.clone(),
        settings.clone(),
        metrics.clone(),
    ));
    {
        let (zone, settings, metrics) = (zone.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let ok = allowed(&settings, peer.ip());
                metrics.count(&buf[..n], ok);
                if let Some(out) = zone.answer(&buf[..n], ok, false) {
                    for m in out {
                        let _ = udp.send_to(&m, peer).await;
                    }
                }
            }
        });
    }
    tracing::info!(listen = %local, zone = %zone.origin(), notify = ?settings.notify, "RPZ served over AXFR/IXFR");
    tokio::spawn(notify_loop(zone, settings, metrics, local.ip()));
    Ok(local)
}

enum Read {
    Msg(Vec<u8>),
    Closed,
    TimedOut,
}

/// Reads one length-prefixed message, the whole of it within `wait`.
async fn read_msg(s: &mut TcpStream, wait: Duration) -> Read {
    let read = async {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).await.ok()?;
        Some(msg)
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Some(m)) => Read::Msg(m),
        Ok(None) => Read::Closed,
        Err(_) => Read::TimedOut,
    }
}

async fn write_msgs(s: &mut TcpStream, out: Vec<Vec<u8>>) -> bool {
    for m in out {
        let mut framed = Vec::with_capacity(m.len() + 2);
        framed.extend((m.len() as u16).to_be_bytes());
        framed.extend(m);
        if s.write_all(&framed).await.is_err() {
            return false;
        }
    }
    true
}

/// Transfers over TCP. Every decision is taken at accept, before any byte is read, and none
/// waits: a peer outside `rpz.allow_transfer` is closed at once (counted `refused`), one over
/// the per-peer or the global cap too (`busy`); the loop never blocks on a slot.
async fn accept_loop(
    tcp: TcpListener,
    zone: Arc<Zone>,
    settings: Arc<RpzSettings>,
    metrics: RpzMetrics,
) {
    let slots = Arc::new(Slots::default());
    let mut backoff = Duration::ZERO;
    loop {
        let (s, peer) = match tcp.accept().await {
            Ok(a) => a,
            // the peer gave up while queued: nothing to back off from
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // EMFILE and friends leave the connection queued: retrying at once spins
                if backoff.is_zero() {
                    tracing::warn!("RPZ: accept failed ({e}); retrying with back-off up to {:?} until it succeeds", limits::MAX_ACCEPT_BACKOFF);
                }
                backoff =
                    (backoff * 2).clamp(Duration::from_millis(10), limits::MAX_ACCEPT_BACKOFF);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if !backoff.is_zero() {
            tracing::info!("RPZ: accepting again");
            backoff = Duration::ZERO;
        }
        if !allowed(&settings, peer.ip()) {
            tracing::debug!(%peer, "RPZ transfer refused: peer not in rpz.allow_transfer");
            metrics.refused();
            drop(s);
            continue;
        }
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(%peer, "RPZ transfer connection over a cap: closed");
            metrics.closed("busy");
            drop(s);
            continue;
        };
        let (z, m) = (zone.clone(), metrics.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(limits::TRANSFER_DEADLINE, transfer_conn(z, &m, s))
                .await
                .is_err()
            {
                m.closed("timeout");
            }
        });
    }
}

async fn transfer_conn(zone: Arc<Zone>, metrics: &RpzMetrics, mut s: TcpStream) {
    let mut first = true;
    loop {
        let msg = match read_msg(&mut s, limits::REQUEST_TIMEOUT).await {
            Read::Msg(m) => m,
            Read::Closed => return,
            Read::TimedOut => {
                // idle after an answer is a secondary done with the connection, not a
                // client that held a slot for nothing
                if first {
                    metrics.closed("timeout");
                }
                return;
            }
        };
        first = false;
        metrics.count(&msg, true);
        let Some(out) = zone.answer(&msg, true, true) else {
            return;
        };
        if !write_msgs(&mut s, out).await {
            return;
        }
    }
}

/// After each change (coalesced over 100 ms), NOTIFY every secondary; up to three tries each.
async fn notify_loop(
    zone: Arc<Zone>,
    settings: Arc<RpzSettings>,
    metrics: RpzMetrics,
    source: IpAddr,
) {
    let targets: Vec<SocketAddr> = settings
        .notify
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    loop {
        metrics.serial.set(zone.serial() as i64);
        metrics.domains.set(zone.len() as i64);
        zone.changed.notified().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let serial = zone.serial();
        metrics.serial.set(serial as i64);
        metrics.domains.set(zone.len() as i64);
        for &t in &targets {
            let (z, m) = (zone.clone(), metrics.clone());
            tokio::spawn(async move {
                let result = if notify(&z, t, source).await {
                    "acked"
                } else {
                    "unanswered"
                };
                if result == "unanswered" {
                    tracing::warn!(target = %t, serial, "RPZ NOTIFY unanswered (the secondary polls at rpz.refresh)");
                } else {
                    tracing::debug!(target = %t, serial, "RPZ NOTIFY acknowledged");
                }
                m.notifies
                    .get_or_create(&vec![("result", result.to_string())])
                    .inc();
            });
        }
    }
}

/// One NOTIFY (RFC 1996): SOA question, current SOA as a hint; true once answered.
/// Sent from the listening address when it is a specific one: secondaries check that a
/// NOTIFY comes from their primary.
async fn notify(zone: &Zone, target: SocketAddr, source: IpAddr) -> bool {
    let bind = if !source.is_unspecified() && source.is_ipv4() == target.is_ipv4() {
        SocketAddr::new(source, 0)
    } else if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return false;
    };
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(zone.origin().clone(), RecordType::SOA));
    m.add_answer(zone.soa(zone.serial()));
    let Ok(bytes) = m.to_vec() else { return false };
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        if sock.send_to(&bytes, target).await.is_err() {
            return false;
        }
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
        {
            if from == target && n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return true;
            }
        }
    }
    false
}
