//! pcap and pcapng: every DNS message in every frame (UDP, TCP, through VLAN/VXLAN/GENEVE).

use crate::{Record, Stats};
use anyhow::Result;
use exfilguard_dns::{dns_payloads, parse_message, read_capture, PacketError, Transport};
use std::io::BufRead;

pub(crate) fn is_capture(head: &[u8]) -> bool {
    head.len() >= 4
        && matches!(
            head[..4],
            [0xd4, 0xc3, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0xc3, 0xd4]
                | [0x4d, 0x3c, 0xb2, 0xa1]
                | [0xa1, 0xb2, 0x3c, 0x4d]
                | [0x0a, 0x0d, 0x0d, 0x0a]
        )
}

pub(crate) fn read(
    mut r: Box<dyn BufRead>,
    stats: &mut Stats,
    sink: &mut dyn FnMut(&mut Stats, Record),
) -> Result<()> {
    let format = if r.fill_buf()?.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        "pcapng"
    } else {
        "pcap"
    };
    for frame in read_capture(r)? {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // a truncated capture: what came before it stands
                stats.error(e.to_string());
                stats.stopped = Some(e.to_string());
                break;
            }
        };
        stats.frames += 1;
        let Some(link) = frame.link else {
            stats.not_dns += 1;
            continue;
        };
        let payloads = match dns_payloads(&frame.data, link) {
            Ok(p) => p,
            Err(PacketError::NoDns | PacketError::NotUdpTcp | PacketError::NotIp) => {
                stats.not_dns += 1;
                continue;
            }
            Err(e) => {
                stats.error(format!("frame {}: {e}", frame.index));
                continue;
            }
        };
        for p in payloads {
            let m = match parse_message(p.payload) {
                Ok(m) => m,
                Err(e) => {
                    stats.error(format!("frame {}: {e}", frame.index));
                    continue;
                }
            };
            let (client, server) = if m.is_response {
                (p.dst, p.src)
            } else {
                (p.src, p.dst)
            };
            for q in m.questions {
                sink(
                    stats,
                    Record {
                        ts_ms: frame.timestamp.as_millis() as u64,
                        client: client.ip(),
                        client_port: Some(client.port()),
                        server: Some(server),
                        name: q.name,
                        qtype: Some(q.qtype),
                        rcode: m.is_response.then_some(m.rcode as u8),
                        transport: Some(match p.transport {
                            Transport::Udp => "udp",
                            Transport::Tcp => "tcp",
                        }),
                        encapsulation: p.encapsulation.clone(),
                        at: frame.index,
                        format,
                    },
                );
            }
        }
    }
    Ok(())
}
