//! Ring-buffer records from the BPF programs, decoded from `struct eg_event`.

use crate::skel::types;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pass,
    /// Dropped in the kernel and handed to the agent, which releases or convicts it.
    Hold,
    Block,
    /// Monitor mode: would have been held or blocked.
    Report,
    Quarantine,
    /// Could not be held (ring buffer full or frame too large) and was dropped.
    FailClosed,
    RateLimit,
    /// Dropped without its frame (several messages in one TCP segment, one of them
    /// suspicious): the agent judges the name; a retransmission passes once it is cleared.
    Judge,
    Unknown,
}

impl Action {
    fn from_raw(v: u8) -> Self {
        match v {
            0 => Self::Pass,
            1 => Self::Hold,
            2 => Self::Block,
            3 => Self::Report,
            4 => Self::Quarantine,
            5 => Self::FailClosed,
            6 => Self::RateLimit,
            7 => Self::Judge,
            _ => Self::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Tc,
    Xdp,
    Netfilter,
    /// cgroup_skb egress: the sending socket's packet, before any device or route.
    Sock,
    /// Not a kernel hook: the query reached `exfilguard resolve` (the resolver front).
    Resolver,
    /// cgroup/connect4/6: a socket's connect() (encrypted-DNS policy).
    Connect,
    /// cgroup/sendmsg4/6: an unconnected UDP sendmsg() (encrypted-DNS policy).
    Sendmsg,
}

/// Names of the `enum eg_reason` bits, in bit order.
pub const REASONS: [&str; 20] = [
    "long_name",
    "long_label",
    "many_labels",
    "rare_qtype",
    "digits",
    "blocklist",
    "quarantine",
    "odd_chars",
    "nxdomain_flood",
    "big_downlink",
    "malformed",
    "report_all",
    "odd_message",
    "extra_data",
    "mixed_case",
    "unobserved",
    "multi_message",
    "dot_port",
    "doh_endpoint",
    "new_carrier",
];

#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// Process name (`/proc/TGID/comm` when the process is still there, else the thread's).
    pub comm: String,
    /// Name of the sending thread, as the kernel saw it (e.g. `isc-net-0000` inside dig).
    pub thread: String,
    pub cgroup_id: u64,
}

/// The key of the kernel's `eg_quiet` map (`struct eg_quiet_key`): blocked domain (or
/// quarantined process), socket, source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuietKey {
    pub hash: u64,
    pub cookie: u64,
    pub src: u32,
}

impl QuietKey {
    /// The kernel's fold of a source address: the XOR of its four 32-bit words.
    pub fn fold(addr: &[u8; 16]) -> u32 {
        addr.chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .fold(0, |a, b| a ^ b)
    }

    /// The map key's bytes (`struct eg_quiet_key`, native endian, 4 bytes of padding).
    pub fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.hash.to_ne_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_ne_bytes());
        b[16..20].copy_from_slice(&self.src.to_ne_bytes());
        b
    }
}

/// One decoded event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub ts_ns: u64,
    pub action: Action,
    pub hook: Hook,
    /// `true` for responses seen on ingress (XDP), `false` for queries.
    pub response: bool,

    pub reasons: Vec<&'static str>,
    pub ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub transport: &'static str,
    pub encap: &'static str,
    pub qtype: u16,
    pub dns_id: u16,
    pub rcode: u8,
    pub ancount: u16,
    /// Lower-cased wire-format question name (no root byte); `name_hash` is of the exact
    /// bytes (case kept), type and class: from the kernel the allow-cache key (keyed SipHash,
    /// handed back as it is), from the resolver front `hash::question_hash`.
    #[serde(skip)]
    pub name_wire: Vec<u8>,
    pub name_hash: u64,
    pub socket_cookie: u64,
    /// The sending process, when the cgroup hooks saw its socket.
    pub process: Option<Process>,
    pub wire_len: u32,
    /// Bytes of the DNS message, and of them those after the question (OPT and whatever
    /// else a query carries outside its name).
    pub msg_len: u16,
    pub extra_len: u16,
    /// The kernel's hash of the whole DNS message (held frames): what a release ticket binds.
    #[serde(skip)]
    pub msg_hash: u64,
    /// The carrier hash of a `new_carrier` query: what `Dataplane::pin_carrier` pins once
    /// the query went out.
    #[serde(skip)]
    pub carrier: u64,
    /// The held frame starts at the IP header (socket hook, layer-3 device, netfilter).
    #[serde(skip)]
    pub frame_l3: bool,
    /// Blocked or quarantined queries: the kernel's `eg_quiet` key and its running drop total
    /// (this drop included). The kernel hands over one record per key and second of a flood.
    /// Encrypted-DNS records ([`Event::encrypted_dns`]): key hash 0, and the attempts since
    /// the previous record of the same process, destination and port (this one included).
    #[serde(skip)]
    pub quiet: Option<(QuietKey, u32)>,
    /// The held frame (Ethernet for tc on an Ethernet device, IP otherwise: `frame_l3`);
    /// empty unless `action == Hold`.
    #[serde(skip)]
    pub packet: Vec<u8>,
    /// Where the device would have finished the L4 checksum (CHECKSUM_PARTIAL): (start, offset).
    #[serde(skip)]
    pub csum: Option<(u16, u16)>,
}

#[derive(Debug, thiserror::Error)]
#[error("ring-buffer record of {got} bytes, expected {want}")]
pub struct DecodeError {
    got: usize,
    want: usize,
}

fn addr(raw: &[u8; 16], ipver: u8) -> IpAddr {
    if ipver == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

fn cstr(raw: &[u8]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// `EG_TGID_SOCKET`: an owner known from its socket alone (its uid, no process).
const TGID_SOCKET: u32 = u32::MAX;

/// The name of process `tgid` (`/proc/TGID/comm`), or `fallback` once it has gone.
pub fn process_name(tgid: u32, fallback: &str) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_else(|_| fallback.to_string())
}

impl Event {
    pub const RAW_SIZE: usize = std::mem::size_of::<types::eg_event>();
    /// An observation record (`EG_OBS_SIZE`): the event without its frame.
    pub const HEADER_SIZE: usize = std::mem::offset_of!(types::eg_event, pkt);

    /// Decodes a held-frame event or a frameless observation record; the process name is read
    /// from `/proc` (threads have their own names: dig's is `isc-net-0000`).
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(data, true)
    }

    /// Decodes an observation record without touching `/proc`: one per passed query is too
    /// many reads for the loop that also releases held queries (`process_name` when needed).
    pub fn decode_observation(data: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(data, false)
    }

    fn decode_with(data: &[u8], read_proc: bool) -> Result<Self, DecodeError> {
        if data.len() < Self::HEADER_SIZE {
            return Err(DecodeError {
                got: data.len(),
                want: Self::HEADER_SIZE,
            });
        }
        // an observation record stops before the frame: the rest stays zero
        let mut raw = Box::<types::eg_event>::default();
        let n = data.len().min(Self::RAW_SIZE);
        // SAFETY: n <= size_of::<eg_event>(); eg_event is plain old data (integers and byte
        // arrays), so any bytes are a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (&mut *raw as *mut types::eg_event).cast::<u8>(),
                n,
            )
        };
        // a frame is only as long as the record that carried it
        let raw_pkt = (raw.pkt_len as usize).min(n - Self::HEADER_SIZE);
        let name_len = (raw.name_len as usize).min(raw.name.len());
        let pkt_len = raw_pkt.min(raw.pkt.len());
        let reasons: Vec<&'static str> = REASONS
            .iter()
            .enumerate()
            .filter(|(i, _)| raw.reasons & (1 << i) != 0)
            .map(|(_, r)| *r)
            .collect();
        // computed afresh only for a new carrier: on other records the field is left from
        // an earlier message, and must not name this one's carrier
        let carrier = if reasons.contains(&"new_carrier") {
            raw.carrier
        } else {
            0
        };
        let process = if raw.tgid == TGID_SOCKET {
            // a local socket no hook recorded: its owner's uid, no process
            Some(Process {
                pid: 0,
                tgid: 0,
                uid: raw.uid,
                comm: "(socket owner)".into(),
                thread: String::new(),
                cgroup_id: 0,
            })
        } else {
            (raw.tgid != 0).then(|| Process {
                pid: raw.pid,
                tgid: raw.tgid,
                uid: raw.uid,
                comm: if read_proc {
                    process_name(raw.tgid, &cstr(&raw.comm))
                } else {
                    cstr(&raw.comm)
                },
                thread: cstr(&raw.comm),
                cgroup_id: raw.cgroup_id,
            })
        };
        Ok(Self {
            ts_ns: raw.ts_ns,
            action: Action::from_raw(raw.action),
            hook: match raw.hook {
                1 => Hook::Xdp,
                2 => Hook::Netfilter,
                3 => Hook::Sock,
                4 => Hook::Connect,
                5 => Hook::Sendmsg,
                _ => Hook::Tc,
            },
            response: raw.kind == 1,

            reasons,
            ifindex: raw.ifindex,
            src: addr(&raw.saddr, raw.ipver),
            dst: addr(&raw.daddr, raw.ipver),
            sport: raw.sport,
            dport: raw.dport,
            transport: if raw.l4 == 6 { "tcp" } else { "udp" },
            encap: match raw.encap {
                1 => "vxlan",
                2 => "geneve",
                3 => "ipip",
                4 => "gre",
                _ => "none",
            },
            qtype: raw.qtype,
            dns_id: raw.dns_id,
            rcode: raw.rcode,
            ancount: raw.ancount,
            name_wire: raw.name[..name_len].to_vec(),
            name_hash: raw.name_hash,
            socket_cookie: raw.cookie,
            process,
            wire_len: raw.wire_len,
            msg_len: raw.msg_len,
            extra_len: raw.extra_len,
            msg_hash: raw.msg_hash,
            carrier,
            frame_l3: raw.frame_l3 != 0,
            quiet: (raw.drops != 0).then(|| {
                (
                    QuietKey {
                        hash: raw.quiet_hash,
                        cookie: raw.cookie,
                        src: if raw.kind == 2 {
                            0
                        } else {
                            QuietKey::fold(&raw.saddr)
                        },
                    },
                    raw.drops,
                )
            }),
            packet: raw.pkt[..pkt_len].to_vec(),
            csum: (raw.csum_partial != 0).then_some((raw.csum_start, raw.csum_offset)),
        })
    }

    /// The held frame as the wire would carry it: the L4 checksum the device would have
    /// computed is finished here, as `skb_checksum_help()` does; every other byte is original.
    pub fn wire_frame(&self) -> Vec<u8> {
        let mut f = self.packet.clone();
        if let Some((start, off)) = self.csum {
            let (start, field) = (start as usize, start as usize + off as usize);
            if start < f.len() && field + 2 <= f.len() {
                let mut sum: u32 = 0;
                for c in f[start..].chunks(2) {
                    sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
                }
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                let mut csum = !(sum as u16);
                if csum == 0 {
                    csum = 0xffff; // 0 means "no checksum" for UDP; 0xffff is the same value
                }
                f[field..field + 2].copy_from_slice(&csum.to_be_bytes());
            }
        }
        f
    }

    /// Whether the kernel flagged data outside the question (`odd_message`, `extra_data`):
    /// such a message is never cleared by name alone.
    pub fn outside_question(&self) -> bool {
        self.reasons
            .iter()
            .any(|r| matches!(*r, "odd_message" | "extra_data"))
    }

    /// A connect()/sendmsg() of encrypted DNS (DoT, DoQ, DoH) to a resolver that is not
    /// sanctioned (cgroup sock_addr hooks): no name; `reasons` says which rule (`dot_port`,
    /// `doh_endpoint`), `dst`/`dport` where to, `quiet` how many attempts the record is.
    pub fn encrypted_dns(&self) -> bool {
        matches!(self.hook, Hook::Connect | Hook::Sendmsg)
    }

    /// Attempts an encrypted-DNS record stands for (1 unless a retry loop was counted).
    pub fn attempts(&self) -> u64 {
        self.quiet.map_or(1, |(_, n)| u64::from(n.max(1)))
    }

    /// The question name's labels, or `None` if the kernel sent a malformed name.
    pub fn labels(&self) -> Option<Vec<&[u8]>> {
        crate::hash::labels(&self.name_wire)
    }

    /// Dotted text of the name (bytes outside printable ASCII as `\DDD`).
    pub fn name_text(&self) -> String {
        let Some(labels) = self.labels() else {
            return String::from("<malformed>");
        };
        let mut s = String::new();
        for l in labels {
            for &c in l {
                if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                    s.push(c as char);
                } else {
                    s.push_str(&format!("\\{c:03}"));
                }
            }
            s.push('.');
        }
        if s.is_empty() {
            s.push('.');
        } else {
            s.pop();
        }
        s
    }
}
