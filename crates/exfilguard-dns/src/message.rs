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
    /// options and zero padding, a NOTIFY's SOA, a small dynamic update in its zone).
    pub unexplained: Option<String>,
}

/// Largest block a client pads a query to (RFC 8467 recommends 128; 468 is its upper policy).
const PAD_MAX: usize = 468;

/// Header bits a query does not set: AA, TC, RA, Z and RCODE.
const Q_FREE_BITS: u16 = 0x06cf;
/// EDNS "compact answers OK" (RFC 9824), the one flag beside DO a client sets.
const EDNS_CO: u16 = 0x4000;

/// The one header bit a cut query keeps: RD, which changes what a server does (the opcode is
/// QUERY, the rest are free bits: AA, TC, RA, Z, AD, CD, RCODE).
const Q_RD: u16 = 0x0100;

/// A standard query cut back to its header and first question: the counts of the other
/// sections zeroed, every header bit but RD cleared, the id and the question's bytes (its
/// letter case) kept. What a client over its
/// carrier budget may still send: a plain question, judged on its name, carrying nothing in
/// an OPT record or the free header bits.
pub fn question_only(bytes: &[u8]) -> Result<Vec<u8>, MessageError> {
    if bytes.len() < 12 {
        return Err(MessageError::TruncatedHeader(bytes.len()));
    }
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let msg = Message::read(&mut BinDecoder::new(bytes))
        .map_err(|e| MessageError::Malformed(e.to_string()))?;
    let first = msg.queries.first().ok_or(MessageError::NoQuestion)?;
    let qname_len: usize = first.name().iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    // a first question's name is never compressed: its labels are the bytes at offset 12
    let end = 12 + qname_len + 4;
    if end > bytes.len() || bytes[12 + qname_len - 1] != 0 {
        return Err(MessageError::Malformed("compressed first question".into()));
    }
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    if flags & 0xf800 != 0 {
        return Err(MessageError::Malformed(
            "not a standard query (QR or an opcode set)".into(),
        ));
    }
    let mut out = bytes[..end].to_vec();
    out[2..4].copy_from_slice(&(flags & Q_RD).to_be_bytes());
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..12].fill(0);
    Ok(out)
}

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
    // an update's records: small, and owned by names in the zone it updates
    let small = |r: &hickory_proto::rr::Record| {
        rdata_len(r) <= 64 && first.name().zone_of(&r.name) && r.name.len() <= 128
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
    // AA, TC, RA, Z, RCODE: a response's or reserved, free bits in a query (the kernel's
    // Q_FREE_BITS); a NOTIFY sets AA, an UPDATE nothing but its opcode (RFC 1996, 2136)
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    let free = match msg.metadata.op_code {
        OpCode::Notify => Q_FREE_BITS & !0x0400,
        OpCode::Update => 0x07ff,
        _ => Q_FREE_BITS,
    };
    if flags & free != 0 {
        why.push(format!("header bits {:#06x} no query sets", flags & free));
    }
    match msg.metadata.op_code {
        OpCode::Query => {
            if !msg.answers.is_empty() || !msg.authorities.is_empty() {
                why.push(format!(
                    "{} answer and {} authority records in a query",
                    msg.answers.len(),
                    msg.authorities.len()
                ));
            }
        }
        OpCode::Notify => {
            // at most the zone's own SOA, of a size SOAs have
            let soa_only = msg.answers.len() <= 1
                && msg.answers.iter().all(|r| {
                    r.record_type() == RecordType::SOA
                        && r.name.eq_case(first.name())
                        && rdata_len(r) <= 255
                })
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
        // the OPT record as a client writes it, checked on the wire: the last record (a query
        // puts it straight after the question), the root as owner and exactly the options read.
        // The parser follows a pointer for the owner and drops an option list cut short, so
        // what it returns alone would explain an OPT whose rdata carries anything.
        let lone = msg.queries.len() == 1 && msg.answers.is_empty() && msg.authorities.is_empty();
        let end = bytes.len() - trailing;
        let at = end.checked_sub(11 + read).filter(|&a| a >= used);
        let as_written = at.is_some_and(|a| {
            let r = &bytes[a..a + 11];
            r[..3] == [0, 0, 41]
                && usize::from(u16::from_be_bytes([r[9], r[10]])) == read
                && (!lone || a == used)
        });
        if !as_written {
            why.push("an OPT record not as clients write it (owner, place or options)".into());
        }
        let codes: Vec<u16> = edns
            .options()
            .options
            .iter()
            .map(|(c, _)| u16::from(*c))
            .collect();
        if codes.len() > 4 || (1..codes.len()).any(|i| codes[..i].contains(&codes[i])) {
            why.push(format!(
                "EDNS options {codes:?}: more, or more often, than clients send"
            ));
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

fn rdata_len(r: &hickory_proto::rr::Record) -> usize {
    use hickory_proto::serialize::binary::BinEncodable;
    r.data.to_bytes().map(|d| d.len()).unwrap_or(usize::MAX)
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
    fn question_only_keeps_the_question_and_nothing_else() {
        let mut q = query("Www.Example.ORG", 28);
        let plain = q.clone();
        // AD, CD and the other free bits set, an OPT with a 40-byte cookie after the question
        q[2] |= 0x06;
        q[3] |= 0xff;
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 44, 0, 10, 0, 40]);
        q.extend_from_slice(&[0xab; 40]);
        assert_eq!(parse_message(&q).unwrap().questions.len(), 1);
        let cut = question_only(&q).unwrap();
        assert_eq!(
            cut, plain,
            "header counts, flags and question as a plain query's"
        );
        assert_eq!(outside_question(&cut).unwrap().bytes, 0);
        // RD is the client's request, kept
        assert_eq!(cut[2] & 0x01, plain[2] & 0x01);
        // answers and authority records go too
        let mut r = plain.clone();
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 0, 0, 2, 1, b'x']);
        assert_eq!(question_only(&r).unwrap(), plain);
        assert!(question_only(&plain[..11]).is_err());
        // a NOTIFY, an UPDATE or a response is not cut to a question
        for b in [0x20u8, 0x28, 0x80] {
            let mut o = plain.clone();
            o[2] |= b;
            assert!(question_only(&o).is_err(), "{b:#x}");
        }
        assert!(question_only(&plain[..plain.len() - 1]).is_err());
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

    fn wire(name: &str) -> Vec<u8> {
        let mut v: Vec<u8> = name
            .split('.')
            .flat_map(|l| std::iter::once(l.len() as u8).chain(l.bytes()))
            .collect();
        v.push(0);
        v
    }

    /// A NOTIFY (or UPDATE) of example.com with one record (owner, type, rdata).
    fn zone_msg(flags: u16, owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let update = flags & 0x7800 == 0x2800;
        let mut m = vec![0, 1];
        m.extend(flags.to_be_bytes());
        m.extend([0, 1, 0, u8::from(!update), 0, u8::from(update), 0, 0]);
        m.extend(wire("example.com"));
        m.extend([0, 6, 0, 1]);
        m.extend(owner);
        m.extend(rtype.to_be_bytes());
        m.extend([0, 1, 0, 0, 0, 60]);
        m.extend((rdata.len() as u16).to_be_bytes());
        m.extend(rdata);
        m
    }

    /// What an attacker's review of the agent's rule found (2026-12-07): an OPT whose owner
    /// is a pointer and whose option list is cut short (the parser drops the list, 1.4 KB
    /// explained), 32 cookies in one OPT, a NOTIFY with free header bits or an SOA of another
    /// name, an UPDATE of records outside its zone. Controls: a NOTIFY with its SOA, an UPDATE
    /// of a small record in the zone.
    #[test]
    fn carriers_the_parser_hides_are_named() {
        let mut wiped = q("www.example.com");
        wiped[11] = 1;
        wiped.extend([
            0xc0, 4, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0x05, 0x78, 0xfd, 0xe9, 0x05, 0x78,
        ]);
        wiped.extend([0x61; 1396]);
        let mut cookies = q("www.example.com");
        cookies[11] = 1;
        cookies.extend([0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0x05, 0x80]);
        for _ in 0..32 {
            cookies.extend([0, 10, 0, 40]);
            cookies.extend([0x62; 40]);
        }
        let mut soa = wire("ns1.example.com");
        soa.extend(wire("h.example.com"));
        soa.extend([0; 20]);
        let notify = zone_msg(0x2400, &[0xc0, 12], 6, &soa);
        let update = zone_msg(0x2800, &wire("a.example.com"), 16, b"\x04text");
        for (what, m) in [("NOTIFY", &notify), ("UPDATE", &update)] {
            let o = outside_question(m).unwrap();
            assert_eq!(o.unexplained, None, "{what} control");
        }
        let cases = [
            ("pointer owner, options cut short", wiped),
            ("32 cookies", cookies),
            ("NOTIFY with TC", zone_msg(0x2600, &[0xc0, 12], 6, &soa)),
            (
                "NOTIFY, SOA of another name",
                zone_msg(0x2400, &wire("x.evil.test"), 6, &soa),
            ),
            (
                "UPDATE outside its zone",
                zone_msg(0x2800, &wire("x.evil.test"), 16, b"\x04text"),
            ),
            (
                "UPDATE with RD",
                zone_msg(0x2900, &wire("a.example.com"), 16, b"\x04text"),
            ),
        ];
        for (what, m) in cases {
            let why = outside_question(&m)
                .map(|o| o.unexplained.unwrap_or_default())
                .unwrap_or_else(|e| e.to_string());
            assert!(!why.is_empty(), "{what} explained");
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
