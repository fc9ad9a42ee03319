//! Encrypted DNS at the front (issue 24): DNS over TLS (RFC 7858) here, DNS over HTTPS in
//! `doh`. Both hand every message to `Front::answer_stream`, the path TCP clients take: the
//! same ACL, judge, convictions, behaviour analytics, events and metrics (`proto` = "dot" or
//! "doh"). Connections take a slot in the TCP table (`resolve.tcp_max_connections`,
//! `tcp_max_per_client`) before the handshake, which must finish within `tcp_idle_ms`; idle,
//! lifetime and pressure closes are the TCP ones. rustls with the ring provider: no system
//! libraries.

use crate::limits::{self, Slot};
use crate::{Front, Wait};
use anyhow::{bail, Context, Result};
use exfilguard_agent::config::ResolveConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

type Labels = Vec<(&'static str, String)>;

/// What the encrypted listeners count beyond `exfilguard_resolve_queries{proto="dot"|"doh"}`.
#[derive(Clone, Default)]
pub struct TlsMetrics {
    /// `proto` (dot, doh) × `result` (ok, failed, timeout).
    pub handshakes: Family<Labels, Counter>,
    /// `status`: the HTTP status of every DoH response.
    pub doh_responses: Family<Labels, Counter>,
}

impl TlsMetrics {
    pub fn register(reg: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        reg.register(
            "exfilguard_resolve_tls_handshakes",
            "TLS handshakes on the DoT and DoH listeners, by transport and result (ok, failed, timeout)",
            m.handshakes.clone(),
        );
        reg.register(
            "exfilguard_resolve_doh_responses",
            "DoH responses by HTTP status (200: a DNS answer; 4xx: not a DNS request)",
            m.doh_responses.clone(),
        );
        m
    }

    fn handshake(&self, proto: &'static str, result: &'static str) {
        self.handshakes
            .get_or_create(&vec![
                ("proto", proto.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// The listeners' certificate chain and key.
pub struct Certs {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Certs {
    /// From `resolve.tls_cert`/`tls_key`, or a self-signed development certificate; `None`
    /// without DoT/DoH listeners. Errors name the key and the file.
    pub fn load(r: &ResolveConfig) -> Result<Option<Self>> {
        if !r.serves_tls() {
            return Ok(None);
        }
        let problems = r.tls_problems();
        if !problems.is_empty() {
            bail!("invalid configuration: {}", problems.join("; "));
        }
        let given = !r.tls_cert.as_os_str().is_empty();
        if r.tls_self_signed && !(given && r.tls_cert.exists() && r.tls_key.exists()) {
            return self_signed(r).map(Some);
        }
        if r.tls_self_signed {
            tracing::warn!(cert = %r.tls_cert.display(), "DoT/DoH: reusing the self-signed development certificate (resolve.tls_self_signed)");
        }
        Ok(Some(Self::from_files(&r.tls_cert, &r.tls_key)?))
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("resolve.tls_cert: {}: {e}", cert.display()))?;
        if chain.is_empty() {
            bail!(
                "resolve.tls_cert: {}: no PEM certificate in it",
                cert.display()
            );
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            anyhow::anyhow!(
                "resolve.tls_key: {}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                key.display()
            )
        })?;
        let c = Self { chain, key };
        // a key that does not match the certificate fails here, not at the first handshake
        c.server_config(&[])
            .with_context(|| format!("resolve.tls_cert {} and resolve.tls_key", cert.display()))?;
        Ok(c)
    }

    /// A rustls server config offering `alpn` (empty: whatever the client asks, no ALPN).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
        // ring builds without cmake or system libraries; rustls deprecated its provider
        // constructor only for lacking post-quantum key exchange (X25519, P-256, P-384 remain)
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    }
}

/// A development certificate for `resolve.tls_names`, written where clients can load it.
fn self_signed(r: &ResolveConfig) -> Result<Certs> {
    let ck = rcgen::generate_simple_self_signed(r.tls_names.clone())
        .context("resolve.tls_self_signed: generating a certificate for resolve.tls_names")?;
    let pem = ck.cert.pem();
    let (cert_path, key_path): (PathBuf, Option<&Path>) = if r.tls_cert.as_os_str().is_empty() {
        let p = std::env::temp_dir().join(format!(
            "exfilguard-resolve-{}-cert.pem",
            std::process::id()
        ));
        (p, None)
    } else {
        (r.tls_cert.clone(), Some(&r.tls_key))
    };
    write_new(&cert_path, pem.as_bytes(), 0o644)
        .with_context(|| format!("resolve.tls_cert: writing {}", cert_path.display()))?;
    if let Some(k) = key_path {
        write_new(k, ck.signing_key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| format!("resolve.tls_key: writing {}", k.display()))?;
    }
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let pin = data_encoding::BASE64.encode(&sha2::Sha256::digest(
        ck.signing_key.subject_public_key_info(),
    ));
    tracing::warn!(
        cert = %cert_path.display(),
        names = ?r.tls_names,
        pin_sha256 = %pin,
        "DoT/DoH: self-signed development certificate (resolve.tls_self_signed); clients must trust it explicitly (kdig +tls-ca=CERT or +tls-pin=PIN, curl --cacert CERT)"
    );
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    Ok(Certs {
        chain: vec![ck.cert.der().clone()],
        key,
    })
}

/// Writes a file that must not exist yet (no symlink followed), or replaces one this process
/// may own (`tls_cert`/`tls_key` given by the operator).
fn write_new(p: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Which encrypted listener.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Dot,
    Doh,
}

impl Kind {
    pub fn proto(self) -> &'static str {
        match self {
            Kind::Dot => "dot",
            Kind::Doh => "doh",
        }
    }
}

/// Binds `addr` for `kind`; the bound address (port 0 resolved).
pub(crate) async fn listen(
    front: Arc<Front>,
    addr: SocketAddr,
    kind: Kind,
    config: Arc<ServerConfig>,
) -> Result<SocketAddr> {
    let key = match kind {
        Kind::Dot => "resolve.listen_tls",
        Kind::Doh => "resolve.listen_https",
    };
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: binding tcp {addr}"))?;
    let bound = l.local_addr()?;
    tokio::spawn(accept(front, l, kind, TlsAcceptor::from(config)));
    Ok(bound)
}

/// Accepts clients like the TCP listener: ACL and caps before anything is read, accept errors
/// back off. Each connection's handshake and messages run in a task of its own, so a bad
/// handshake or garbage affects no other client.
async fn accept(front: Arc<Front>, l: TcpListener, kind: Kind, acceptor: TlsAcceptor) {
    let (min, max) = limits::ACCEPT_BACKOFF;
    let mut backoff = min;
    let mut warned: Option<Instant> = None;
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                backoff = min;
                if let Ok(slot) = front.limits.admit_tcp(peer) {
                    tokio::spawn(connection(
                        front.clone(),
                        s,
                        peer,
                        slot,
                        kind,
                        acceptor.clone(),
                    ));
                }
            }
            Err(e) => {
                front.limits.metrics.accept_errors.inc();
                if limits::transient_accept_error(&e) {
                    continue;
                }
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, proto = kind.proto(), backoff_ms = backoff.as_millis() as u64, "accepting TLS clients failed: backing off");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

async fn connection(
    front: Arc<Front>,
    s: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    kind: Kind,
    acceptor: TlsAcceptor,
) {
    let Ok(local) = s.local_addr() else { return };
    let _ = s.set_nodelay(true);
    let lim = &front.limits;
    let start = tokio::time::Instant::now();
    // the handshake is bounded like an idle wait: a client that connects and says nothing
    // (or speaks plaintext) holds its slot no longer than that
    // (or speaks plaintext) holds its slot no longer than that, and a full table closes
    // handshakes older than a second like idle TCP connections
    let handshake = acceptor.accept(s);
    tokio::pin!(handshake);
    let deadline = start + lim.tcp_idle;
    let tls = loop {
        tokio::select! {
            biased;
            r = &mut handshake => match r {
                Ok(t) => break t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, proto = kind.proto(), "TLS handshake failed");
                    front.tls.handshake(kind.proto(), "failed");
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                front.tls.handshake(kind.proto(), "timeout");
                return;
            }
            _ = lim.tcp.pressure.notified() => {
                if start.elapsed() >= limits::PRESSURE_IDLE {
                    front.tls.handshake(kind.proto(), "timeout");
                    lim.metrics.tcp_closed("pressure");
                    return;
                }
            }
        }
    };
    front.tls.handshake(kind.proto(), "ok");
    match kind {
        Kind::Dot => dot(front, tls, peer, local, start, slot).await,
        Kind::Doh => crate::doh::serve(front, tls, peer, local, start, slot).await,
    }
}

/// One DoT connection: length-prefixed messages (RFC 7858 §3.3), pipelined: up to
/// `resolve.tls_max_streams` in flight, each answered as soon as it is ready (RFC 7766 §6.2.1.1
/// lets answers come out of order; the id tells them apart).
async fn dot<S>(
    front: Arc<Front>,
    s: S,
    peer: SocketAddr,
    local: SocketAddr,
    start: tokio::time::Instant,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lim = &front.limits;
    let idle = lim.tcp_idle;
    let end = start + lim.tcp_lifetime;
    let (mut rd, mut wr) = tokio::io::split(s);
    let streams = front.cfg.resolve.tls_max_streams.max(1) as usize;
    let permits = Arc::new(tokio::sync::Semaphore::new(streams));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(streams);
    let mut writer = tokio::spawn(async move {
        while let Some(framed) = rx.recv().await {
            // an empty frame: a message the front drops; the connection closes like over TCP
            if framed.is_empty() {
                break;
            }
            // a client that stops reading would block the write forever
            match tokio::time::timeout(idle, wr.write_all(&framed)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    });
    let mut writer_done = false;
    let mut last = tokio::time::Instant::now();
    loop {
        let mut len = [0u8; 2];
        let wait = {
            let (deadline, why) = if last + idle < end {
                (last + idle, "idle")
            } else {
                (end, "lifetime")
            };
            let read = rd.read_exact(&mut len);
            tokio::pin!(read);
            loop {
                let busy = permits.available_permits() < streams;
                tokio::select! {
                    biased;
                    _ = &mut writer => {
                        writer_done = true;
                        break Wait::Closed;
                    }
                    // queries still in flight keep the connection from counting as idle
                    _ = tokio::time::sleep_until(deadline), if !busy => break Wait::Expired(why),
                    _ = tokio::time::sleep(Duration::from_millis(100)), if busy => {}
                    _ = lim.tcp.pressure.notified() => {
                        if !busy && last.elapsed() >= limits::PRESSURE_IDLE {
                            break Wait::Expired("pressure");
                        }
                    }
                    r = &mut read => break if r.is_ok() { Wait::Ready } else { Wait::Closed },
                }
            }
        };
        match wait {
            Wait::Ready => {}
            Wait::Closed => break,
            Wait::Expired(why) => {
                lim.metrics.tcp_closed(why);
                break;
            }
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(idle, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        last = tokio::time::Instant::now();
        // at most tls_max_streams in flight: the next read waits for one to finish
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (front, tx) = (front.clone(), tx.clone());
        tokio::spawn(async move {
            let framed = match front.answer_stream(&msg, peer, local, "dot").await {
                Some(out) => {
                    let mut f = Vec::with_capacity(out.len() + 2);
                    f.extend((out.len() as u16).to_be_bytes());
                    f.extend(out);
                    f
                }
                None => Vec::new(),
            };
            let _ = tx.send(framed).await;
            drop(permit);
        });
    }
    // answers still in flight are written (each bounded by the upstream deadline), then the
    // TLS session is closed; the slot is held until then
    drop(tx);
    if !writer_done {
        let _ = tokio::time::timeout(idle + Duration::from_secs(1), &mut writer).await;
        writer.abort();
    }
    drop(slot);
}
