//! DNS messages, parsed with hickory-proto. exfilguard needs the questions (names and types)
//! and a summary of answers; hickory does the wire format, compression and its limits.

use crate::name::{DnsName, NameError};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RecordType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: DnsName,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerSummary {
    pub name: DnsName,
    pub rtype: u16,
    pub ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub is_response: bool,
    pub opcode: u8,
    pub rcode: u16,
    pub questions: Vec<Question>,
    pub answers: Vec<AnswerSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("truncated DNS header ({0} bytes, need 12)")]
    TruncatedHeader(usize),
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    #[error("bad name in DNS message: {0}")]
    Name(#[from] NameError),
    #[error("query without a question")]
    NoQuestion,
}

fn convert_name(name: &Name) -> Result<DnsName, NameError> {
    DnsName::from_labels(name.iter())
}

/// Parses a whole DNS message (UDP payload, or TCP payload without its length prefix).
pub fn parse_message(bytes: &[u8]) -> Result<DnsMessage, MessageError> {
    if bytes.len() < 12 {
        return Err(MessageError::TruncatedHeader(bytes.len()));
    }
    let msg = Message::from_vec(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let is_response = msg.metadata.message_type == MessageType::Response;
    let questions = msg
        .queries
        .iter()
        .map(|q| {
            Ok(Question {
                name: convert_name(q.name())?,
                qtype: u16::from(q.query_type()),
                qclass: u16::from(q.query_class()),
            })
        })
        .collect::<Result<Vec<_>, NameError>>()?;
    if !is_response && questions.is_empty() {
        return Err(MessageError::NoQuestion);
    }
    let answers = msg
        .answers
        .iter()
        .filter_map(|r| {
            Some(AnswerSummary {
                name: convert_name(&r.name).ok()?,
                rtype: u16::from(r.record_type()),
                ttl: r.ttl,
            })
        })
        .collect();
    Ok(DnsMessage {
        id: msg.metadata.id,
        is_response,
        opcode: u8::from(msg.metadata.op_code),
        rcode: u16::from(msg.metadata.response_code),
        questions,
        answers,
    })
}

/// What a query carries besides its question, and whether a stub resolver has a reason to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    /// Bytes of the message after the (first) question.
    pub bytes: usize,
    /// Why the rest is not what clients send (None: explained: an OPT record with the usual
    /// options and zero padding, a TSIG signature, a NOTIFY's SOA, a small dynamic update).
    pub unexplained: Option<String>,
}

/// Largest block a client pads a query to (RFC 8467 recommends 128; 468 is its upper policy).
const PAD_MAX: usize = 468;

/// Header bits a query does not set: AA, TC, RA, Z and RCODE.
const Q_FREE_BITS: u16 = 0x06cf;
/// EDNS "compact answers OK" (RFC 9824), the one flag beside DO a client sets.
const EDNS_CO: u16 = 0x4000;

/// The policy on data outside the question of a query (`exfilguard-detect` holds the one on
/// names). Hickory parses the message; this judges what it found.
pub fn outside_question(bytes: &[u8]) -> Result<Outside, MessageError> {
    if bytes.len() < 12 {
        return Err(MessageError::TruncatedHeader(bytes.len()));
    }
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut decoder = BinDecoder::new(bytes);
    let msg = Message::read(&mut decoder).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let trailing = bytes.len().saturating_sub(decoder.index());
    let first = msg.queries.first().ok_or(MessageError::NoQuestion)?;
    let qname_len: usize = first.name().iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    let used = (12 + qname_len + 4).min(bytes.len());
    let mut why: Vec<String> = Vec::new();
    let small = |r: &hickory_proto::rr::Record| {
        use hickory_proto::serialize::binary::BinEncodable;
        r.data.to_bytes().map(|d| d.len()).unwrap_or(usize::MAX) <= 64
    };
    if msg.metadata.message_type == MessageType::Response {
        why.push("a response sent to a server".into());
    }
    if trailing > 0 {
        why.push(format!("{trailing} bytes after the end of the message"));
    }
    if msg.queries.len() > 1 {
        why.push(format!("{} questions", msg.queries.len()));
    }
    match msg.metadata.op_code {
        OpCode::Query => {
            // AA, TC, RA, Z, RCODE: a response's or reserved, free bits in a query (the
            // kernel's Q_FREE_BITS)
            let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
            if flags & Q_FREE_BITS != 0 {
                why.push(format!(
                    "header bits {:#06x} no query sets",
                    flags & Q_FREE_BITS
                ));
            }
            if !msg.answers.is_empty() || !msg.authorities.is_empty() {
                why.push(format!(
                    "{} answer and {} authority records in a query",
                    msg.answers.len(),
                    msg.authorities.len()
                ));
            }
        }
        OpCode::Notify => {
            let soa_only = msg.answers.len() <= 1
                && msg
                    .answers
                    .iter()
                    .all(|r| r.record_type() == RecordType::SOA)
                && msg.authorities.is_empty();
            if !soa_only {
                why.push("a NOTIFY carrying more than its SOA".into());
            }
        }
        OpCode::Update => {
            let records = msg.answers.len() + msg.authorities.len();
            if records > 4 || !msg.answers.iter().chain(&msg.authorities).all(small) {
                why.push(format!("a dynamic update of {records} records"));
            }
        }
        other => why.push(format!("opcode {}", u8::from(other))),
    }
    if !msg.additionals.is_empty() {
        why.push(format!("{} additional records", msg.additionals.len()));
    }
    if let Some(edns) = &msg.edns {
        // the parser skips bytes it does not need (an address longer than its prefix): the
        // raw length of a plain query's OPT record, straight after the question, counts them
        let read: usize = edns
            .options()
            .options
            .iter()
            .map(|(_, o)| 4 + usize::from(o.len()))
            .sum();
        let lone = msg.queries.len() == 1 && msg.answers.is_empty() && msg.authorities.is_empty();
        if let (true, Some(&[0, _, _, _, _, _, _, _, _, hi, lo])) = (
            lone && msg.additionals.is_empty(),
            bytes.get(used..used + 11),
        ) {
            let rdlen = usize::from(u16::from_be_bytes([hi, lo]));
            if rdlen != read {
                why.push(format!(
                    "EDNS options of {rdlen} bytes, {read} of them read"
                ));
            }
        }
        // the OPT TTL: extended RCODE and version 0, flags DO and CO only (the kernel's
        // extra_ok)
        let z = edns.flags().z & !EDNS_CO;
        if edns.rcode_high() != 0 || edns.version() != 0 || z != 0 {
            why.push(format!(
                "EDNS extended rcode {}, version {}, flags {z:#06x}",
                edns.rcode_high(),
                edns.version()
            ));
        }
        for (code, opt) in &edns.options().options {
            let code = u16::from(*code);
            let ok = match opt {
                EdnsOption::Subnet(cs) => subnet_ok(cs),
                EdnsOption::NSID(p) => p.as_ref().is_empty(),
                // COOKIE: client 8, with the server's 16..40
                EdnsOption::Unknown(10, d) => d.len() == 8 || (16..=40).contains(&d.len()),
                // PADDING: zero bytes up to a block boundary
                EdnsOption::Unknown(12, d) => d.len() < PAD_MAX && d.iter().all(|&b| b == 0),
                // EXPIRE, TCP keepalive: empty in queries
                EdnsOption::Unknown(9 | 11, d) => d.is_empty(),
                _ => false,
            };
            if !ok {
                why.push(format!("EDNS option {code} of {} bytes", opt.len()));
            }
        }
    }
    Ok(Outside {
        bytes: bytes.len() - used,
        unexplained: (!why.is_empty()).then(|| why.join(", ")),
    })
}

/// A client subnet as RFC 7871 has it, at most as precise as its section 11.1 asks (/24 for
/// IPv4, /56 for IPv6): every byte of it reaches the server, and resolvers forward it on.
/// The kernel's `extra_ok` applies the same rule.
fn subnet_ok(cs: &hickory_proto::rr::rdata::opt::ClientSubnet) -> bool {
    let src = u32::from(cs.source_prefix());
    let (bits, max) = match cs.addr() {
        std::net::IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 24),
        std::net::IpAddr::V6(a) => (u128::from(a), 56),
    };
    // and the address bits past the prefix are zero
    cs.scope_prefix() == 0 && src <= max && bits.checked_shl(src).unwrap_or(0) == 0
}

/// Cheap header sanity check that recognises DNS on any port: 12-byte header, standard or
/// notify/update opcode, a question count a real client sends, and counts that fit the length.
pub fn looks_like_dns(bytes: &[u8]) -> bool {
    if bytes.len() < 17 {
        return false; // header + root name + type + class
    }
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    let opcode = (flags >> 11) & 0xf;
    let z = (flags >> 6) & 1;
    let qd = u16::from_be_bytes([bytes[4], bytes[5]]);
    let an = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
    let ns = u16::from_be_bytes([bytes[8], bytes[9]]) as usize;
    let ar = u16::from_be_bytes([bytes[10], bytes[11]]) as usize;
    let is_query = flags & 0x8000 == 0;
    if !matches!(opcode, 0 | 4 | 5) || z != 0 || !(1..=4).contains(&qd) {
        return false;
    }
    // Each record takes at least 11 bytes (root name, type, class, ttl, rdlength).
    if is_query && an > 0 && opcode == 0 {
        return false;
    }
    let min = 12 + qd as usize * 5 + (an + ns + ar) * 11;
    if min > bytes.len() {
        return false;
    }
    // The first question name must be well-formed labels (no compression at offset 12).
    let mut i = 12;
    for _ in 0..128 {
        let Some(&len) = bytes.get(i) else {
            return false;
        };
        if len == 0 {
            return bytes.len() >= i + 5;
        }
        if len > 63 {
            return false;
        }
        i += 1 + len as usize;
    }
    false
}

/// Encodes a standard recursive query for `name` (tests and tools).
pub fn build_query(name: &DnsName, qtype: u16, id: u16) -> Result<Vec<u8>, MessageError> {
    let hname =
        Name::from_labels(name.labels()).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(hname, RecordType::from(qtype)));
    msg.to_vec()
        .map_err(|e| MessageError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        build_query(&DnsName::parse(name).unwrap(), qtype, 0x1234).unwrap()
    }

    #[test]
    fn round_trip_keeps_case_and_type() {
        let q = query("AbC+/x.Example.org", 16);
        assert!(looks_like_dns(&q));
        let m = parse_message(&q).unwrap();
        assert_eq!(m.id, 0x1234);
        assert!(!m.is_response);
        assert_eq!(m.questions.len(), 1);
        assert_eq!(m.questions[0].name.to_string(), "AbC+/x.Example.org");
        assert_eq!(m.questions[0].qtype, 16);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(
            parse_message(&[0; 5]),
            Err(MessageError::TruncatedHeader(5))
        );
        // A compression pointer to itself.
        let mut looped = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(parse_message(&looped).is_err());
        // A 64-byte label.
        let mut long = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 64];
        long.extend_from_slice(&[b'a'; 64]);
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(parse_message(&long).is_err());
        assert!(!looks_like_dns(&long));
        // A name over 255 bytes: five 63-byte labels.
        let mut huge = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            huge.push(63);
            huge.extend_from_slice(&[b'a'; 63]);
        }
        huge.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(parse_message(&huge).is_err());
        // No question.
        let empty = [0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse_message(&empty).is_err());
        assert!(!looks_like_dns(&empty));
        // Every truncation of a valid query fails cleanly.
        let q = query("abc.example.org", 1);
        for n in 0..q.len() {
            let _ = parse_message(&q[..n]);
            let _ = looks_like_dns(&q[..n]);
        }
    }

    #[test]
    fn header_sanity_rejects_non_dns() {
        assert!(!looks_like_dns(
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        ));
        assert!(!looks_like_dns(&[0xff; 40]));
    }
}

#[cfg(test)]
mod outside_tests {
    use super::*;

    fn q(name: &str) -> Vec<u8> {
        build_query(&DnsName::parse(name).unwrap(), 1, 7).unwrap()
    }

    fn with_opt(mut m: Vec<u8>, code: u16, data: &[u8]) -> Vec<u8> {
        m[11] = 1;
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    #[test]
    fn what_clients_send_is_explained() {
        let plain = outside_question(&q("www.example.com")).unwrap();
        assert_eq!((plain.bytes, plain.unexplained), (0, None));
        let cookie = outside_question(&with_opt(q("www.example.com"), 10, &[1; 8])).unwrap();
        assert_eq!((cookie.bytes, cookie.unexplained), (23, None));
        let pad = outside_question(&with_opt(q("www.example.com"), 12, &[0; 80])).unwrap();
        assert_eq!(pad.unexplained, None, "zero padding");
        // the header bits clients set (RD, AD, CD) and the OPT flags DO and CO
        let mut m = with_opt(q("www.example.com"), 10, &[1; 8]);
        m[2..4].copy_from_slice(&0x0130u16.to_be_bytes());
        let ttl = q("www.example.com").len() + 5;
        m[ttl..ttl + 4].copy_from_slice(&[0, 0, 0xc0, 0]);
        assert_eq!(
            outside_question(&m).unwrap().unexplained,
            None,
            "RD AD CD, DO CO"
        );
        // client subnets as forwarders send them: /24, /56, /20, and "none" (/0)
        for ecs in [
            &[0, 1, 24, 0, 192, 0, 2][..],
            &[0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0x12],
            &[0, 1, 20, 0, 10, 1, 0x10],
            &[0, 1, 0, 0],
        ] {
            let o = outside_question(&with_opt(q("www.example.com"), 8, ecs)).unwrap();
            assert_eq!(o.unexplained, None, "{ecs:?}");
        }
    }

    /// A client subnet carries its address bytes to the server and on: only the precision
    /// RFC 7871 section 11.1 asks for, in the form it gives, is explained (as in the kernel).
    #[test]
    fn client_subnet_beyond_its_rfc_is_named() {
        let cases: [&[u8]; 6] = [
            &[0, 1, 32, 0, 192, 0, 2, 77], // a whole address (/32)
            &[0, 2, 64, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0x12, 7], // /64
            &[0, 1, 24, 0, 192, 0, 2, 0x61, 0x61, 0x61], // bytes past the prefix
            &[0, 1, 20, 0, 10, 1, 0x1f],   // bits past the prefix
            &[0, 1, 24, 24, 192, 0, 2],    // a scope, in a query
            &[0, 1, 24, 0, 192, 0],        // an address cut short
        ];
        for ecs in cases {
            let msg = with_opt(q("www.example.com"), 8, ecs);
            let why = outside_question(&msg)
                .map(|o| o.unexplained.unwrap_or_default())
                .unwrap_or_else(|e| e.to_string());
            assert!(!why.is_empty(), "{ecs:?} passed as explained");
        }
    }

    /// The header bits only responses set (AA, TC, RA), the reserved Z bit, an RCODE, and an
    /// OPT TTL beyond extended RCODE 0, version 0 and the DO/CO flags are free bits a query
    /// would carry past a hold unjudged (as the kernel's `Q_FREE_BITS` and `extra_ok`).
    #[test]
    fn free_header_and_opt_bits_are_named() {
        for bits in [0x0400u16, 0x0200, 0x0080, 0x0040, 0x0005] {
            let mut m = q("www.example.com");
            m[2..4].copy_from_slice(&(0x0100 | bits).to_be_bytes());
            let why = outside_question(&m)
                .unwrap()
                .unexplained
                .unwrap_or_default();
            assert!(why.contains("header bits"), "{bits:#06x}: {why:?}");
        }
        let ttl = q("www.example.com").len() + 5;
        for opt_ttl in [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0x20, 0], [0, 0, 0, 1]] {
            let mut m = with_opt(q("www.example.com"), 10, &[1; 8]);
            m[ttl..ttl + 4].copy_from_slice(&opt_ttl);
            let why = outside_question(&m)
                .unwrap()
                .unexplained
                .unwrap_or_default();
            assert!(why.contains("EDNS extended rcode"), "{opt_ttl:?}: {why:?}");
        }
    }

    #[test]
    fn data_outside_the_question_is_named() {
        let cases = [
            (
                with_opt(q("www.example.com"), 12, &[0x61; 80]),
                "EDNS option 12",
            ),
            (
                with_opt(q("www.example.com"), 65001, &[0x61; 200]),
                "EDNS option 65001",
            ),
            (
                with_opt(q("www.example.com"), 10, &[1; 64]),
                "EDNS option 10",
            ),
            (
                {
                    let mut m = with_opt(q("www.example.com"), 10, &[1; 8]);
                    m.extend_from_slice(&[0x61; 200]);
                    m
                },
                "200 bytes after the end",
            ),
        ];
        for (msg, want) in cases {
            let o = outside_question(&msg).unwrap();
            let why = o.unexplained.unwrap_or_default();
            assert!(why.contains(want), "{want}: {why}");
        }
    }
}
