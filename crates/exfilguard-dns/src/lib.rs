//! The DNS side of exfilguard: names (normalisation, registered domain), DNS messages and
//! the packet headers around them. Pure parsing apart from reading capture files.

pub mod capture;
pub mod message;
pub mod name;
pub mod packet;

pub use capture::{read_capture, write_pcap, CaptureError, CapturedFrame};
pub use message::{
    build_query, looks_like_dns, parse_message, question_only, DnsMessage, MessageError, Question,
};
pub use name::{DnsName, NameError, NameSplit};
pub use packet::{dns_payloads, replace_udp_payload, DnsPayload, LinkType, PacketError, Transport};

/// Lookup services whose query names are keys into somebody's database (reverse DNS, ENUM,
/// DNSBLs, hash and reputation lookups), not data: the one list behind the detector's
/// lookup-name rule and the behaviour analytics' default `lookup_zones`.
pub const KNOWN_LOOKUP_ZONES: &[&str] = &[
    "in-addr.arpa",
    "ip6.arpa",
    "e164.arpa",
    "spamhaus.org",
    "spamhaus.net",
    "spamcop.net",
    "sorbs.net",
    "barracudacentral.org",
    "surbl.org",
    "uribl.com",
    "dnswl.org",
    "mailspike.net",
    "abuseat.org",
    "senderscore.com",
    "mcafee.com",
    "hash.cymru.com",
    "sophosxl.net",
];
