//! Answers the front writes itself (hickory-proto does the wire format): the block answer
//! (REFUSED, NXDOMAIN or a sinkhole A/AAAA), SERVFAIL at an upstream deadline and FORMERR for
//! messages that are not queries.

use exfilguard_agent::config::BlockAction;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{Ipv4Addr, Ipv6Addr};

/// TTL of sinkhole answers and of the SOA-less negative answers' caching by clients.
const SINKHOLE_TTL: u32 = 60;

fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.add_queries(req.queries.iter().cloned());
    m
}

/// The answer to a refused query.
pub fn block(req: &Message, action: BlockAction, v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<u8> {
    let m = match action {
        BlockAction::Refused => response_to(req, ResponseCode::Refused),
        BlockAction::Nxdomain => response_to(req, ResponseCode::NXDomain),
        BlockAction::Sinkhole => {
            let mut m = response_to(req, ResponseCode::NoError);
            if let Some(q) = req.queries.first() {
                let rdata = match q.query_type() {
                    RecordType::A => Some(RData::A(A(v4))),
                    RecordType::AAAA => Some(RData::AAAA(AAAA(v6))),
                    _ => None, // NODATA for every other type
                };
                if let Some(rd) = rdata {
                    m.add_answer(Record::from_rdata(q.name().clone(), SINKHOLE_TTL, rd));
                }
            }
            m
        }
    };
    m.to_vec()
        .unwrap_or_else(|_| header_only(req.metadata.id, 0, ResponseCode::Refused))
}

/// An error answer to raw query bytes: with the question when they parse, header-only
/// FORMERR when they do not; `None` when there is not even a header (nothing to answer).
pub fn error_for(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    match Message::from_vec(query) {
        Ok(req) => response_to(&req, rcode).to_vec().ok(),
        Err(_) => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            Some(header_only(
                id,
                (query[2] >> 3) & 0x0f,
                ResponseCode::FormErr,
            ))
        }
    }
}

fn header_only(id: u16, opcode: u8, rcode: ResponseCode) -> Vec<u8> {
    let op = OpCode::from_u8(opcode);
    let mut m = Message::new(id, MessageType::Response, op);
    m.metadata.response_code = rcode;
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use exfilguard_dns::DnsName;

    fn query(name: &str, t: u16) -> Message {
        let q = exfilguard_dns::build_query(&DnsName::parse(name).unwrap(), t, 0x1234).unwrap();
        Message::from_vec(&q).unwrap()
    }

    #[test]
    fn block_answers_keep_id_and_question() {
        let q = query("x.tunnel.example", 1);
        for (action, rcode, answers) in [
            (BlockAction::Refused, ResponseCode::Refused, 0),
            (BlockAction::Nxdomain, ResponseCode::NXDomain, 0),
            (BlockAction::Sinkhole, ResponseCode::NoError, 1),
        ] {
            let a = Message::from_vec(&block(
                &q,
                action,
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv6Addr::UNSPECIFIED,
            ))
            .unwrap();
            assert_eq!(a.metadata.id, 0x1234);
            assert_eq!(a.metadata.message_type, MessageType::Response);
            assert_eq!(a.metadata.response_code, rcode);
            assert_eq!(a.queries, q.queries);
            assert_eq!(a.answers.len(), answers);
        }
        let txt = query("x.tunnel.example", 16);
        let a = Message::from_vec(&block(
            &txt,
            BlockAction::Sinkhole,
            Ipv4Addr::UNSPECIFIED,
            Ipv6Addr::UNSPECIFIED,
        ))
        .unwrap();
        assert!(a.answers.is_empty(), "sinkhole answers TXT with NODATA");
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert!(error_for(&[1, 2, 3], ResponseCode::FormErr).is_none());
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend([63, b'a']); // a label running past the end
        let a = Message::from_vec(&error_for(&junk, ResponseCode::FormErr).unwrap()).unwrap();
        assert_eq!(a.metadata.id, 0xabcd);
        assert_eq!(a.metadata.response_code, ResponseCode::FormErr);
    }
}
