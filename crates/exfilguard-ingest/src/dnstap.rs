//! dnstap (<https://dnstap.info>): protobuf `Dnstap` messages in a Frame Streams file, as
//! `fstrm_capture`, `dnstap-read`'s sources, Unbound, BIND, Knot and PowerDNS write them.
//!
//! The client side of a server is read: CLIENT_QUERY/CLIENT_RESPONSE (a resolver's clients)
//! and AUTH_QUERY/AUTH_RESPONSE (an authoritative server's). A resolver's own queries upstream
//! (RESOLVER_*, FORWARDER_*) repeat the client's names from the resolver's address, so they
//! are counted as `not_dns`, not read as clients.

use crate::{Record, Stats};
use anyhow::{bail, Result};
use exfilguard_dns::parse_message;
use prost::Message as _;
use std::io::{BufRead, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The largest frame read: a DNS message is at most 64 KiB, both with their envelope well
/// under this. Bigger is a corrupt or hostile file.
const MAX_FRAME: u32 = 1 << 20;
const CONTROL_START: u32 = 2;
const CONTROL_STOP: u32 = 3;

#[derive(Clone, PartialEq, prost::Message)]
struct Dnstap {
    #[prost(message, optional, tag = "14")]
    message: Option<Message>,
    /// Type MESSAGE (1): the only type there is.
    #[prost(int32, optional, tag = "15")]
    r#type: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Message {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    socket_protocol: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    query_address: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    response_address: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "6")]
    query_port: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    response_port: Option<u32>,
    #[prost(uint64, optional, tag = "8")]
    query_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "9")]
    query_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "10")]
    query_message: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "12")]
    response_time_sec: Option<u64>,
    #[prost(fixed32, optional, tag = "13")]
    response_time_nsec: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "14")]
    response_message: Option<Vec<u8>>,
}

// Message.Type values of dnstap.proto
const AUTH_QUERY: i32 = 1;
const AUTH_RESPONSE: i32 = 2;
const CLIENT_QUERY: i32 = 5;
const CLIENT_RESPONSE: i32 = 6;

pub(crate) fn is_dnstap(head: &[u8]) -> bool {
    head.len() >= 12 && head[..4] == [0; 4] && head[8..12] == CONTROL_START.to_be_bytes()
}

fn be32(r: &mut dyn Read) -> std::io::Result<Option<u32>> {
    let mut b = [0u8; 4];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u32::from_be_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn address(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into()),
        _ => None,
    }
}

fn transport(p: Option<i32>) -> Option<&'static str> {
    // SocketProtocol: UDP 1, TCP 2, DOT 3, DOH 4, DNSCryptUDP 5, DNSCryptTCP 6, DOQ 7
    Some(match p? {
        1 => "udp",
        2 => "tcp",
        3 => "tls",
        4 => "https",
        5 | 6 => "dnscrypt",
        7 => "quic",
        _ => return None,
    })
}

pub(crate) fn read(
    mut r: Box<dyn BufRead>,
    stats: &mut Stats,
    sink: &mut dyn FnMut(&mut Stats, Record),
) -> Result<()> {
    let mut index = 0u64;
    let mut buf = Vec::new();
    while let Some(len) = be32(&mut r)? {
        if len == 0 {
            // a control frame: its length, then its type (START, STOP) and fields
            let Some(clen) = be32(&mut r)? else { break };
            if clen > MAX_FRAME {
                bail!("dnstap control frame of {clen} bytes");
            }
            buf.resize(clen as usize, 0);
            r.read_exact(&mut buf)?;
            if buf.len() >= 4 && buf[..4] == CONTROL_STOP.to_be_bytes() {
                break;
            }
            continue;
        }
        if len > MAX_FRAME {
            stats.error(format!("dnstap frame {} of {len} bytes", index + 1));
            stats.stopped = Some(format!("dnstap frame {} of {len} bytes", index + 1));
            break;
        }
        buf.resize(len as usize, 0);
        if let Err(e) = r.read_exact(&mut buf) {
            stats.error(format!("dnstap frame {}: {e}", index + 1));
            stats.stopped = Some(format!("dnstap frame {}: {e}", index + 1));
            break;
        }
        index += 1;
        stats.frames += 1;
        let Some(m) = Dnstap::decode(buf.as_slice()).ok().and_then(|d| d.message) else {
            stats.error(format!("dnstap frame {index}: not a dnstap message"));
            continue;
        };
        let (wire, sec, nsec) = match m.r#type {
            Some(CLIENT_QUERY | AUTH_QUERY) => {
                (&m.query_message, m.query_time_sec, m.query_time_nsec)
            }
            Some(CLIENT_RESPONSE | AUTH_RESPONSE) => (
                &m.response_message,
                m.response_time_sec,
                m.response_time_nsec,
            ),
            _ => {
                stats.not_dns += 1;
                continue;
            }
        };
        let (Some(wire), Some(client)) = (wire, m.query_address.as_deref().and_then(address))
        else {
            stats.error(format!(
                "dnstap frame {index}: no message or client address"
            ));
            continue;
        };
        let msg = match parse_message(wire) {
            Ok(m) => m,
            Err(e) => {
                stats.error(format!("dnstap frame {index}: {e}"));
                continue;
            }
        };
        let ts_ms = sec
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::from(nsec.unwrap_or(0) / 1_000_000));
        let server = m
            .response_address
            .as_deref()
            .and_then(address)
            .map(|a| SocketAddr::new(a, m.response_port.unwrap_or(53) as u16));
        for q in msg.questions {
            sink(
                stats,
                Record {
                    ts_ms,
                    client,
                    client_port: m.query_port.map(|p| p as u16),
                    server,
                    name: q.name,
                    qtype: Some(q.qtype),
                    rcode: msg.is_response.then_some(msg.rcode as u8),
                    transport: transport(m.socket_protocol),
                    encapsulation: Vec::new(),
                    at: index,
                    format: "dnstap",
                },
            );
        }
    }
    Ok(())
}
