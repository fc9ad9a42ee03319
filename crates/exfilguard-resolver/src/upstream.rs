//! Forwarding to the upstream resolvers. UDP: a few connected sockets per upstream, each with
//! its own table of in-flight queries keyed by a fresh random id (the client's id is restored
//! on the way back, nothing else in the answer changes). TCP: one upstream connection per
//! client connection. Round robin over the upstreams that answer; one that misses
//! `DOWN_AFTER` deadlines in a row is skipped for `DOWN_FOR`.

use hickory_proto::op::ResponseCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SOCKETS_PER_UPSTREAM: usize = 4;
const DOWN_AFTER: u32 = 3;
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Where an upstream answer goes.
pub enum Reply {
    Udp {
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
    },
}

struct Pending {
    /// The client's query as received (for the SERVFAIL at the deadline).
    query: Vec<u8>,
    client_id: u16,
    reply: Reply,
    sent: Instant,
}

struct Lane {
    sock: Arc<UdpSocket>,
    pending: Mutex<HashMap<u16, Pending>>,
}

struct Upstream {
    addr: SocketAddr,
    lanes: Vec<Lane>,
    misses: AtomicU32,
    /// Milliseconds since `epoch` until which this upstream is skipped.
    down_until_ms: AtomicU64,
}

/// Outcome counters (Prometheus handles: cheap atomics, registered by the caller).
pub struct UpstreamStats {
    pub answered: Counter,
    pub timeouts: Counter,
    pub send_errors: Counter,
    pub latency: Histogram,
}

/// Called with the client's address and the answer for every NXDOMAIN relayed over UDP.
pub type NxHook = Box<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

pub struct Upstreams {
    ups: Vec<Arc<Upstream>>,
    /// Set once after start-up (the behaviour analytics watch failed lookups).
    pub nx_hook: std::sync::OnceLock<NxHook>,
    next: AtomicUsize,
    timeout: Duration,
    epoch: Instant,
    pub stats: Arc<UpstreamStats>,
}

fn rand_id() -> u16 {
    // ids must be unpredictable to off-path spoofers (rand's thread RNG is a CSPRNG)
    rand::random()
}

impl Upstreams {
    pub async fn connect(
        addrs: &[SocketAddr],
        timeout: Duration,
        stats: UpstreamStats,
    ) -> std::io::Result<Arc<Self>> {
        let mut ups = Vec::new();
        for &addr in addrs {
            let mut lanes = Vec::new();
            for _ in 0..SOCKETS_PER_UPSTREAM {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("addr")
                } else {
                    "[::]:0".parse().expect("addr")
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(addr).await?;
                lanes.push(Lane {
                    sock: Arc::new(sock),
                    pending: Mutex::new(HashMap::new()),
                });
            }
            ups.push(Arc::new(Upstream {
                addr,
                lanes,
                misses: AtomicU32::new(0),
                down_until_ms: AtomicU64::new(0),
            }));
        }
        let me = Arc::new(Self {
            ups,
            nx_hook: std::sync::OnceLock::new(),
            next: AtomicUsize::new(0),
            timeout,
            epoch: Instant::now(),
            stats: Arc::new(stats),
        });
        for u in &me.ups {
            for i in 0..u.lanes.len() {
                let (me2, u2) = (me.clone(), u.clone());
                tokio::spawn(async move { me2.read_lane(u2, i).await });
            }
        }
        let me2 = me.clone();
        tokio::spawn(async move { me2.sweep().await });
        Ok(me)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next upstream in round robin that is not marked down (all down: the next one).
    fn pick(&self) -> (usize, &Arc<Upstream>) {
        let n = self.ups.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        for k in 0..n {
            let i = (start + k) % n;
            if self.ups[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return (start, &self.ups[i]);
            }
        }
        (start, &self.ups[start % n])
    }

    /// Sends `query` upstream over UDP; the answer (or SERVFAIL at the deadline) goes to `reply`.
    pub async fn forward_udp(&self, query: &[u8], reply: Reply) {
        if query.len() < 12 {
            return;
        }
        let (turn, up) = self.pick();
        let lane = &up.lanes[turn / self.ups.len() % up.lanes.len()];
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        let mut out = query.to_vec();
        let id = {
            let mut p = lane.pending.lock().expect("lock");
            if p.len() >= 60_000 {
                // this lane is saturated: shed rather than grow
                self.stats.send_errors.inc();
                return;
            }
            let mut id = rand_id();
            while p.contains_key(&id) {
                id = rand_id();
            }
            p.insert(
                id,
                Pending {
                    query: query.to_vec(),
                    client_id,
                    reply,
                    sent: Instant::now(),
                },
            );
            id
        };
        out[..2].copy_from_slice(&id.to_be_bytes());
        if lane.sock.send(&out).await.is_err() {
            self.stats.send_errors.inc();
            // the sweeper answers SERVFAIL at the deadline
        }
    }

    async fn read_lane(self: Arc<Self>, up: Arc<Upstream>, i: usize) {
        let lane = &up.lanes[i];
        let mut buf = vec![0u8; 65535];
        loop {
            let n = match lane.sock.recv(&mut buf).await {
                Ok(n) => n,
                Err(_) => {
                    // ICMP port unreachable surfaces here; the deadline handles the query
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if n < 12 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let Some(p) = lane.pending.lock().expect("lock").remove(&id) else {
                continue; // late or spoofed
            };
            up.misses.store(0, Ordering::Relaxed);
            self.stats.answered.inc();
            self.stats.latency.observe(p.sent.elapsed().as_secs_f64());
            buf[..2].copy_from_slice(&p.client_id.to_be_bytes());
            match p.reply {
                Reply::Udp { sock, peer } => {
                    let _ = sock.send_to(&buf[..n], peer).await;
                    if buf[3] & 0x0f == 3 {
                        if let Some(h) = self.nx_hook.get() {
                            h(peer, &buf[..n]);
                        }
                    }
                }
            }
        }
    }

    /// Answers SERVFAIL to queries past the deadline and marks silent upstreams down.
    async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            for up in &self.ups {
                for lane in &up.lanes {
                    let expired: Vec<Pending> = {
                        let mut p = lane.pending.lock().expect("lock");
                        let due: Vec<u16> = p
                            .iter()
                            .filter(|(_, v)| v.sent.elapsed() >= self.timeout)
                            .map(|(&k, _)| k)
                            .collect();
                        due.into_iter().filter_map(|k| p.remove(&k)).collect()
                    };
                    if expired.is_empty() {
                        continue;
                    }
                    self.stats.timeouts.inc_by(expired.len() as u64);
                    if up.misses.fetch_add(1, Ordering::Relaxed) + 1 >= DOWN_AFTER {
                        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
                        if up.down_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                            tracing::warn!(upstream = %up.addr, "upstream not answering: skipped for {DOWN_FOR:?}");
                        }
                    }
                    for p in expired {
                        let Reply::Udp { sock, peer } = p.reply;
                        if let Some(a) = crate::answer::error_for(&p.query, ResponseCode::ServFail)
                        {
                            let _ = sock.send_to(&a, peer).await;
                        }
                    }
                }
            }
        }
    }

    /// One query over TCP to the next upstream (failing over once), within the deadline.
    pub async fn exchange_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for _ in 0..2.min(self.ups.len()) {
            let (_, up) = self.pick();
            let addr = up.addr;
            let r = tokio::time::timeout(self.timeout, async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(&(query.len() as u16).to_be_bytes()).await?;
                s.write_all(query).await?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await?;
                let mut ans = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut ans).await?;
                Ok::<_, std::io::Error>(ans)
            })
            .await;
            match r {
                Ok(Ok(a)) => {
                    self.stats.answered.inc();
                    return Some(a);
                }
                _ => {
                    self.stats.timeouts.inc();
                }
            }
        }
        None
    }
}
