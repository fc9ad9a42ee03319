//! Serving the zone: transfers over TCP, SOA over UDP, NOTIFY to the secondaries after each
//! change. Runs as tasks on the caller's tokio runtime.

use crate::{RpzError, RpzSettings, Zone};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

type Labels = Vec<(&'static str, String)>;

/// At most this many transfers run at once; more connections wait for a slot.
const MAX_TRANSFERS: usize = 32;

#[derive(Clone, Default)]
pub struct RpzMetrics {
    /// `kind`: axfr, ixfr, soa, refused, other.
    pub requests: Family<Labels, Counter>,
    /// `result`: acked, unanswered.
    pub notifies: Family<Labels, Counter>,
    pub serial: Gauge,
    pub domains: Gauge,
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

fn allowed(settings: &RpzSettings, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    settings.allow_transfer.iter().any(|n| n.contains(&ip))
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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TRANSFERS));

    {
        let (zone, settings, metrics) = (zone.clone(), settings.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = tcp.accept().await else {
                    continue;
                };
                // outsiders never take a transfer slot: one REFUSED, then the connection closes
                if !allowed(&settings, peer.ip()) {
                    let (z, m) = (zone.clone(), metrics.clone());
                    tokio::spawn(async move { refuse_conn(&z, &m, s, peer).await });
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (z, m) = (zone.clone(), metrics.clone());
                tokio::spawn(async move {
                    transfer_conn(z, &m, s).await;
                    drop(permit);
                });
            }
        });
    }
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

/// Reads one length-prefixed message (bounded wait).
async fn read_msg(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    tokio::time::timeout(wait, s.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    tokio::time::timeout(wait, s.read_exact(&mut msg))
        .await
        .ok()?
        .ok()?;
    Some(msg)
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

/// A peer outside `rpz.allow_transfer`: one REFUSED answer, then the connection closes.
async fn refuse_conn(zone: &Zone, metrics: &RpzMetrics, mut s: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "RPZ transfer refused: peer not in rpz.allow_transfer");
    if let Some(msg) = read_msg(&mut s, Duration::from_secs(2)).await {
        metrics.count(&msg, false);
        if let Some(out) = zone.answer(&msg, false, true) {
            write_msgs(&mut s, out).await;
        }
    }
}

async fn transfer_conn(zone: Arc<Zone>, metrics: &RpzMetrics, mut s: TcpStream) {
    let idle = Duration::from_secs(30);
    while let Some(msg) = read_msg(&mut s, idle).await {
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
