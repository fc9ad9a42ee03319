//! DNS over HTTPS (RFC 8484) on the front: HTTP/2 (ALPN `h2`) and HTTP/1.1 over TLS, `POST`
//! with an `application/dns-message` body and `GET ?dns=<base64url>` on `resolve.doh_path`.
//! Each DNS message goes to `Front::answer_stream` like a TCP client's. Everything that is not
//! a DNS request gets an HTTP error and reaches no judge: another path 404, another method
//! 405, another content type 415, a body over 65 535 bytes 413, a malformed `dns` parameter 400.

use crate::limits::{self, Slot};
use crate::Front;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest DNS message (RFC 8484 §6: the same as over TCP).
pub const MAX_MESSAGE: usize = 65_535;
/// Request headers, HTTP/2 (decoded) and HTTP/1.1 (buffered): a `GET ?dns=` of the largest
/// message fits.
const MAX_HEADERS: usize = 96 * 1024;
const DNS_MESSAGE: &str = "application/dns-message";

/// Requests in progress and the time the last one ended (ms since the connection's start).
struct Activity {
    start: tokio::time::Instant,
    active: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        (self.active.load(Ordering::Relaxed) == 0)
            .then(|| self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A request in progress; its end is the connection's latest activity.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.active.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.store(ms, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One DoH connection after the handshake, until the client closes it or it is idle for
/// `tcp_idle_ms`, reaches `tcp_lifetime_secs` or gives way to pressure (graceful: HTTP/2
/// GOAWAY, requests in progress finish).
pub(crate) async fn serve<S>(
    front: Arc<Front>,
    tls: tokio_rustls::server::TlsStream<S>,
    peer: SocketAddr,
    local: SocketAddr,
    start: tokio::time::Instant,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let act = Arc::new(Activity {
        start,
        active: AtomicUsize::new(0),
        last_ms: AtomicU64::new(start.elapsed().as_millis() as u64),
    });
    let svc = {
        let (front, act) = (front.clone(), act.clone());
        hyper::service::service_fn(move |req| {
            let (front, busy) = (front.clone(), Busy::new(&act));
            async move {
                let r = handle(&front, req, peer, local).await;
                front
                    .tls
                    .doh_responses
                    .get_or_create(&vec![("status", r.status().as_u16().to_string())])
                    .inc();
                drop(busy);
                Ok::<_, Infallible>(r)
            }
        })
    };
    let io = TokioIo::new(tls);
    let r = &front.cfg.resolve;
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(r.tls_max_streams.max(1))
            .max_header_list_size(MAX_HEADERS as u32)
            // a client resetting streams in a loop (CVE-2023-44487) is cut off
            .max_pending_accept_reset_streams(Some(r.tls_max_streams.max(1) as usize))
            .max_send_buf_size(256 * 1024);
        let conn = b.serve_connection(io, svc);
        watch(&front, conn, &act, start).await;
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(front.limits.tcp_idle)
            .max_buf_size(MAX_HEADERS)
            .keep_alive(true);
        let conn = b.serve_connection(io, svc);
        watch(&front, conn, &act, start).await;
    }
    drop(slot);
}

/// hyper's two connection types, for `watch`.
trait Graceful: std::future::Future + Send {
    fn shut(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: std::future::Future + Send,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    Self: std::future::Future + Send,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Runs `conn` under the TCP listener's idle, lifetime and pressure rules.
async fn watch<C: Graceful>(front: &Front, conn: C, act: &Activity, start: tokio::time::Instant) {
    let lim = &front.limits;
    let (idle, end) = (lim.tcp_idle, start + lim.tcp_lifetime);
    tokio::pin!(conn);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let next = match (closing, act.idle_since()) {
            // closing: requests in progress get one more idle period, then the connection goes
            (Some(t), _) => t + idle,
            (None, Some(since)) => (since + idle).min(end),
            (None, None) => (now + Duration::from_millis(100)).min(end),
        };
        tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(next) => {
                if closing.is_some() {
                    return;
                }
                let now = tokio::time::Instant::now();
                let why = if now >= end {
                    Some("lifetime")
                } else {
                    act.idle_since().filter(|s| now >= *s + idle).map(|_| "idle")
                };
                if let Some(why) = why {
                    lim.metrics.tcp_closed(why);
                    conn.as_mut().shut();
                    closing = Some(now);
                }
            }
            _ = lim.tcp.pressure.notified(), if closing.is_none() => {
                if act.idle_since().is_some_and(|s| s.elapsed() >= limits::PRESSURE_IDLE) {
                    lim.metrics.tcp_closed("pressure");
                    conn.as_mut().shut();
                    closing = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// What a request may send before its error answer (more: the answer goes at once and the
/// stream is reset). Reading it first lets HTTP/2 clients see the answer rather than a reset.
const DRAIN_MAX: usize = 256 * 1024;

/// A request body as read.
enum Body {
    Whole(Vec<u8>),
    /// Over the bytes kept (what followed read up to `DRAIN_MAX`).
    TooLarge,
    Broken,
    Slow,
}

/// Reads `body`: up to `keep` bytes kept, up to `DRAIN_MAX` read in all, within `wait`.
async fn read_body(mut body: Incoming, keep: usize, wait: Duration) -> Body {
    let read = async move {
        let (mut kept, mut seen) = (Vec::new(), 0usize);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Body::Broken;
            };
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen <= keep {
                    kept.extend_from_slice(&data);
                } else if seen > DRAIN_MAX {
                    break;
                }
            }
        }
        if seen > keep {
            Body::TooLarge
        } else {
            Body::Whole(kept)
        }
    };
    tokio::time::timeout(wait, read).await.unwrap_or(Body::Slow)
}

/// An HTTP error once what the client sent is read (within bounds).
async fn fail(
    body: Incoming,
    idle: Duration,
    status: StatusCode,
    text: &'static str,
) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    read_body(body, 0, idle).await;
    Err(reply(status, text))
}

/// The DNS message of a DoH request, or the HTTP error to answer instead (after reading what
/// the client sent, within bounds).
async fn message(front: &Front, req: Request<Incoming>) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    let idle = front.limits.tcp_idle;
    let (head, body) = req.into_parts();
    if head.uri.path() != front.cfg.resolve.doh_path {
        return fail(body, idle, StatusCode::NOT_FOUND, "not found\n").await;
    }
    match head.method {
        Method::GET => {
            let q = head.uri.query().unwrap_or("");
            let Some(v) = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("dns="))
                .filter(|v| !v.is_empty())
            else {
                return fail(
                    body,
                    idle,
                    StatusCode::BAD_REQUEST,
                    "missing dns parameter\n",
                )
                .await;
            };
            // base64url without padding (RFC 8484 §4.1); padding is tolerated
            match data_encoding::BASE64URL_NOPAD
                .decode(v.trim_end_matches('=').as_bytes())
                .ok()
                .filter(|m| m.len() <= MAX_MESSAGE)
            {
                Some(m) => Ok(m),
                None => {
                    fail(
                        body,
                        idle,
                        StatusCode::BAD_REQUEST,
                        "dns is not base64url\n",
                    )
                    .await
                }
            }
        }
        Method::POST => {
            let header = |h| {
                head.headers
                    .get(h)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
            };
            let ct = header(CONTENT_TYPE).unwrap_or("");
            if !ct
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(DNS_MESSAGE))
            {
                return fail(
                    body,
                    idle,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type must be application/dns-message\n",
                )
                .await;
            }
            let declared = header(CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > DRAIN_MAX as u64) {
                // not worth reading: answered at once, the rest of the stream reset
                return Err(reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
            }
            // a body trickled in slowly is bounded like an idle wait
            match read_body(body, MAX_MESSAGE, idle).await {
                Body::Whole(b) => Ok(b),
                Body::TooLarge => Err(reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")),
                Body::Broken => Err(reply(StatusCode::BAD_REQUEST, "bad body\n")),
                Body::Slow => Err(reply(StatusCode::REQUEST_TIMEOUT, "body too slow\n")),
            }
        }
        _ => {
            read_body(body, 0, idle).await;
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n");
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, POST"));
            Err(r)
        }
    }
}

async fn handle(
    front: &Front,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let msg = match message(front, req).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(ans) = front.answer_stream(&msg, peer, local, "doh").await else {
        // under 12 bytes, or a response: nothing a DNS client sends
        return reply(StatusCode::BAD_REQUEST, "not a DNS query\n");
    };
    let ttl = min_ttl(&ans);
    let mut r = Response::new(Full::new(Bytes::from(ans)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    // RFC 8484 §5.1: the freshness is the smallest TTL of the answer
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={ttl}")) {
        h.insert(CACHE_CONTROL, v);
    }
    r
}

/// The smallest TTL in an answer's records (0 when it has none, or an error rcode).
fn min_ttl(ans: &[u8]) -> u32 {
    let Ok(m) = hickory_proto::op::Message::from_vec(ans) else {
        return 0;
    };
    if m.metadata.response_code != hickory_proto::op::ResponseCode::NoError {
        return 0;
    }
    m.answers
        .iter()
        .chain(m.authorities.iter())
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0)
}
