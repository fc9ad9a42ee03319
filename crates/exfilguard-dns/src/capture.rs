//! pcap and pcapng files, read and written with the pcap-file crate.

use crate::packet::LinkType;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use std::io::{BufReader, Read, Write};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    UnknownFormat([u8; 4]),
    #[error("capture: {0}")]
    Pcap(String),
    #[error("capture I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// 1-based position in the file.
    pub index: u64,
    pub timestamp: Duration,
    /// None when the link type is not one exfilguard parses.
    pub link: Option<LinkType>,
    pub data: Vec<u8>,
}

fn link_of(dl: DataLink) -> Option<LinkType> {
    LinkType::from_pcap(u32::from(dl))
}

/// Reads every frame of a pcap or pcapng stream (detected by magic). A corrupt record ends
/// the iteration with one error; frames before it are delivered.
pub fn read_capture<'a>(
    reader: impl Read + 'a,
) -> Result<Box<dyn Iterator<Item = Result<CapturedFrame, CaptureError>> + 'a>, CaptureError> {
    let mut r = BufReader::new(reader);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let chained = std::io::Cursor::new(magic).chain(r);
    let err = |e: pcap_file::PcapError| CaptureError::Pcap(e.to_string());
    match magic {
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            let mut pr = PcapReader::new(chained).map_err(err)?;
            let link = link_of(pr.header().datalink);
            let mut index = 0u64;
            let mut done = false;
            Ok(Box::new(std::iter::from_fn(move || {
                if done {
                    return None;
                }
                let item = pr.next_packet()?;
                index += 1;
                Some(match item {
                    Ok(p) => Ok(CapturedFrame {
                        index,
                        timestamp: p.timestamp,
                        link,
                        data: p.data.into_owned(),
                    }),
                    Err(e) => {
                        done = true;
                        Err(CaptureError::Pcap(format!("record {index}: {e}")))
                    }
                })
            })))
        }
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut nr = PcapNgReader::new(chained).map_err(err)?;
            let mut links: Vec<Option<LinkType>> = Vec::new();
            let mut index = 0u64;
            let mut done = false;
            Ok(Box::new(std::iter::from_fn(move || loop {
                if done {
                    return None;
                }
                let block = match nr.next_block()? {
                    Ok(b) => b,
                    Err(e) => {
                        done = true;
                        return Some(Err(CaptureError::Pcap(format!("after frame {index}: {e}"))));
                    }
                };
                let (iface, ts, data) = match block {
                    Block::SectionHeader(_) => {
                        links.clear();
                        continue;
                    }
                    Block::InterfaceDescription(d) => {
                        links.push(link_of(d.linktype));
                        continue;
                    }
                    Block::EnhancedPacket(p) => {
                        (p.interface_id as usize, p.timestamp, p.data.into_owned())
                    }
                    Block::SimplePacket(p) => (0, Duration::ZERO, p.data.into_owned()),
                    _ => continue,
                };
                index += 1;
                return Some(Ok(CapturedFrame {
                    index,
                    timestamp: ts,
                    link: links.get(iface).copied().flatten(),
                    data,
                }));
            })))
        }
        other => Err(CaptureError::UnknownFormat(other)),
    }
}

/// Writes Ethernet frames as a pcap file (tests and tools).
pub fn write_pcap(writer: impl Write, frames: &[(Duration, Vec<u8>)]) -> Result<(), CaptureError> {
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut w =
        PcapWriter::with_header(writer, header).map_err(|e| CaptureError::Pcap(e.to_string()))?;
    for (ts, data) in frames {
        w.write_packet(&PcapPacket::new(*ts, data.len() as u32, data))
            .map_err(|e| CaptureError::Pcap(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::udp_frame;

    #[test]
    fn pcap_round_trip_and_garbage() {
        let f = udp_frame(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            b"0123456789abcdefgh",
        );
        let mut buf = Vec::new();
        write_pcap(
            &mut buf,
            &[
                (Duration::from_secs(1), f.clone()),
                (Duration::from_secs(2), f.clone()),
            ],
        )
        .unwrap();
        let frames: Vec<_> = read_capture(&buf[..])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].index, 2);
        assert_eq!(frames[0].link, Some(LinkType::Ethernet));
        assert_eq!(frames[0].data, f);
        // Cut in the middle of the second record: first frame, then one error, then the end.
        let cut = &buf[..buf.len() - 5];
        let items: Vec<_> = read_capture(cut).unwrap().collect();
        assert!(items[0].is_ok());
        assert!(items.iter().skip(1).all(|i| i.is_err()) && items.len() <= 2);
        assert!(matches!(
            read_capture(&b"nope, not a capture"[..]),
            Err(CaptureError::UnknownFormat(_))
        ));
        assert!(read_capture(&b"ab"[..]).is_err());
    }
}
