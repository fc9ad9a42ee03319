//! DNS messages, parsed with hickory-proto. exfilguard needs the questions (names and types)
//! and a summary of answers; hickory does the wire format, compression and its limits.

use crate::name::{DnsName, NameError};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
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
