//! The DNS side of exfilguard: names (normalisation, registered domain), DNS messages and
//! the packet headers around them. Pure parsing apart from reading capture files.

pub mod capture;
pub mod message;
pub mod name;
pub mod packet;

pub use capture::{read_capture, write_pcap, CaptureError, CapturedFrame};
pub use message::{build_query, looks_like_dns, parse_message, DnsMessage, MessageError, Question};
pub use name::{DnsName, NameError, NameSplit};
pub use packet::{dns_payloads, DnsPayload, LinkType, PacketError, Transport};
