//! The zone itself: the blocked domains, a SOA serial that increases on every change, and a
//! bounded journal of changes so a resolver that is a few serials behind gets only the
//! difference (IXFR, RFC 1995). No I/O here: `server` moves the bytes.

use crate::{Policy, RpzError, RpzSettings};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Records per transfer message are cut well below the 64 KiB TCP message limit.
const MESSAGE_BUDGET: usize = 32 * 1024;

/// One serial step: what went out and what came in.
#[derive(Debug, Clone)]
struct Delta {
    from: u32,
    to: u32,
    removed: Vec<String>,
    added: Vec<String>,
}

struct State {
    serial: u32,
    domains: BTreeSet<String>,
    journal: VecDeque<Delta>,
}

/// A live Response Policy Zone. Cheap to share (`Arc<Zone>`); every method takes `&self`.
pub struct Zone {
    origin: Name,
    settings: RpzSettings,
    target: Name,
    state: Mutex<State>,
    /// Wakes the NOTIFY sender after a change.
    pub(crate) changed: tokio::sync::Notify,
}

/// RFC 1982: is serial `a` older than `b`?
pub fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

fn unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}

/// `example.com.` / `Example.COM` → `example.com`; `None` for what cannot be a domain.
fn normalize(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(d)
}

impl Zone {
    pub fn new(settings: RpzSettings) -> Result<Self, RpzError> {
        let origin = Name::from_ascii(&settings.zone)
            .map_err(|e| RpzError::Config(format!("rpz.zone = {:?}: {e}", settings.zone)))?;
        let origin = if origin.is_fqdn() {
            origin
        } else {
            origin
                .append_domain(&Name::root())
                .map_err(|e| RpzError::Config(format!("rpz.zone: {e}")))?
        };
        if origin.is_root() {
            return Err(RpzError::Config("rpz.zone must not be the root".into()));
        }
        let target = Name::from_ascii(match settings.policy {
            Policy::Nxdomain => ".",
            Policy::Nodata => "*.",
            Policy::Drop => "rpz-drop.",
            Policy::TcpOnly => "rpz-tcp-only.",
        })
        .expect("static names");
        Ok(Self {
            origin: origin.to_lowercase(),
            settings,
            target,
            state: Mutex::new(State {
                serial: unix_secs(),
                domains: BTreeSet::new(),
                journal: VecDeque::new(),
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn serial(&self) -> u32 {
        self.state.lock().expect("lock").serial
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("lock").domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, domain: &str) -> bool {
        normalize(domain).is_some_and(|d| self.state.lock().expect("lock").domains.contains(&d))
    }

    /// Blocks `domain` and every name below it. `Ok(false)`: already there.
    pub fn add(&self, domain: &str) -> Result<bool, RpzError> {
        self.change(&[domain], &[])
    }

    /// Unblocks `domain`. `Ok(false)`: it was not there.
    pub fn remove(&self, domain: &str) -> Result<bool, RpzError> {
        self.change(&[], &[domain])
    }

    /// Applies additions and removals as one serial step (or none, when nothing changes).
    /// Every name is checked before anything changes; a name in both lists is left as it is.
    pub fn change(&self, add: &[&str], remove: &[&str]) -> Result<bool, RpzError> {
        let mut adds = Vec::with_capacity(add.len());
        for d in add {
            let n = normalize(d).ok_or_else(|| RpzError::Name(d.to_string()))?;
            // the owner names must fit: `*.<domain>.<zone>` within 255 bytes
            self.owner(&n, true)?;
            adds.push(n);
        }
        let removes: Vec<String> = remove.iter().filter_map(|d| normalize(d)).collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut st = self.state.lock().expect("lock");
        for n in adds {
            if !removes.contains(&n) && st.domains.insert(n.clone()) {
                added.push(n);
            }
        }
        for n in removes {
            if !added.contains(&n)
                && !add.iter().any(|a| normalize(a).as_ref() == Some(&n))
                && st.domains.remove(&n)
            {
                removed.push(n);
            }
        }
        if added.is_empty() && removed.is_empty() {
            return Ok(false);
        }
        // date-based when it can be: a restarted server starts above what it served before
        let from = st.serial;
        let mut to = from.wrapping_add(1);
        let now = unix_secs();
        if serial_lt(to, now) {
            to = now;
        }
        st.serial = to;
        st.journal.push_back(Delta {
            from,
            to,
            removed,
            added,
        });
        while st.journal.len() > self.settings.journal {
            st.journal.pop_front();
        }
        drop(st);
        self.changed.notify_one();
        Ok(true)
    }

    fn owner(&self, domain: &str, wildcard: bool) -> Result<Name, RpzError> {
        let mut n = Name::from_ascii(domain).map_err(|_| RpzError::Name(domain.into()))?;
        if wildcard {
            n = n
                .prepend_label("*")
                .map_err(|_| RpzError::Name(domain.into()))?;
        }
        n.append_domain(&self.origin)
            .map_err(|_| RpzError::Name(format!("{domain} is too long under {}", self.origin)))
    }

    pub fn soa(&self, serial: u32) -> Record {
        let s = &self.settings;
        let mname = Name::from_ascii("localhost.").expect("static");
        let rname = Name::from_ascii("hostmaster.localhost.").expect("static");
        Record::from_rdata(
            self.origin.clone(),
            s.ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                serial,
                s.refresh as i32,
                s.retry as i32,
                s.expire as i32,
                s.ttl,
            )),
        )
    }

    /// The two policy records of one domain: the name itself and everything below it.
    fn records(&self, domain: &str, out: &mut Packer) {
        for wildcard in [false, true] {
            if let Ok(owner) = self.owner(domain, wildcard) {
                out.push(Record::from_rdata(
                    owner,
                    self.settings.ttl,
                    RData::CNAME(CNAME(self.target.clone())),
                ));
            }
        }
    }

    /// The apex NS record: RPZ data is never served to clients, but BIND refuses a zone
    /// without one.
    fn ns(&self) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.settings.ttl,
            RData::NS(NS(Name::from_ascii("localhost.").expect("static"))),
        )
    }

    /// Full transfer: SOA, NS, every record, SOA (RFC 5936).
    pub fn axfr(&self, id: u16, q: &Query) -> Vec<Vec<u8>> {
        let st = self.state.lock().expect("lock");
        let mut p = Packer::new(id, q);
        let soa = self.soa(st.serial);
        p.push(soa.clone());
        p.push(self.ns());
        for d in &st.domains {
            self.records(d, &mut p);
        }
        p.push(soa);
        p.finish()
    }

    /// Incremental transfer from `client` (RFC 1995): the deltas when the journal still holds
    /// them, the current SOA alone when the client is up to date, a full zone otherwise.
    pub fn ixfr(&self, id: u16, q: &Query, client: u32) -> Vec<Vec<u8>> {
        let st = self.state.lock().expect("lock");
        let current = self.soa(st.serial);
        if client == st.serial || serial_lt(st.serial, client) {
            let mut p = Packer::new(id, q);
            p.push(current);
            return p.finish();
        }
        let Some(start) = st.journal.iter().position(|d| d.from == client) else {
            drop(st);
            return self.axfr(id, q);
        };
        let mut p = Packer::new(id, q);
        p.push(current.clone());
        for d in st.journal.iter().skip(start) {
            p.push(self.soa(d.from));
            for r in &d.removed {
                self.records(r, &mut p);
            }
            p.push(self.soa(d.to));
            for a in &d.added {
                self.records(a, &mut p);
            }
        }
        p.push(current);
        p.finish()
    }

    /// Answers one message from a secondary: SOA, AXFR, IXFR (TCP) or a NOTIFY response;
    /// REFUSED for everything else and for peers outside `allow_transfer`. `None`: nothing
    /// to answer (a response, garbage without a header).
    pub fn answer(&self, bytes: &[u8], allowed: bool, tcp: bool) -> Option<Vec<Vec<u8>>> {
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) if bytes.len() >= 12 => {
                let mut m =
                    Message::response(u16::from_be_bytes([bytes[0], bytes[1]]), OpCode::Query);
                m.metadata.response_code = ResponseCode::FormErr;
                return m.to_vec().ok().map(|v| vec![v]);
            }
            Err(_) => return None,
        };
        if req.metadata.message_type == hickory_proto::op::MessageType::Response {
            return None;
        }
        let reply = |rcode: ResponseCode| {
            let mut m = Message::response(req.metadata.id, req.metadata.op_code);
            m.metadata.response_code = rcode;
            m.add_queries(req.queries.iter().cloned());
            m.to_vec().ok().map(|v| vec![v])
        };
        if !allowed {
            return reply(ResponseCode::Refused);
        }
        let Some(q) = req.queries.first().filter(|_| req.queries.len() == 1) else {
            return reply(ResponseCode::FormErr);
        };
        if q.query_class != DNSClass::IN || q.name.to_lowercase() != self.origin {
            return reply(ResponseCode::Refused);
        }
        match (req.metadata.op_code, q.query_type) {
            (OpCode::Query, RecordType::SOA) => {
                let mut p = Packer::new(req.metadata.id, q);
                p.push(self.soa(self.serial()));
                Some(p.finish())
            }
            (OpCode::Query, RecordType::AXFR) if tcp => Some(self.axfr(req.metadata.id, q)),
            (OpCode::Query, RecordType::IXFR) => {
                let client = req.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(s) => Some(s.serial),
                    _ => None,
                });
                match client {
                    // over UDP only "up to date" fits: the current SOA tells the client to use TCP
                    Some(c) if tcp => Some(self.ixfr(req.metadata.id, q, c)),
                    Some(_) => {
                        let mut p = Packer::new(req.metadata.id, q);
                        p.push(self.soa(self.serial()));
                        Some(p.finish())
                    }
                    None => reply(ResponseCode::FormErr),
                }
            }
            (OpCode::Query, RecordType::AXFR) => reply(ResponseCode::Refused),
            _ => reply(ResponseCode::Refused),
        }
    }
}

/// Cuts a record stream into transfer messages.
struct Packer {
    id: u16,
    query: Query,
    done: Vec<Vec<u8>>,
    records: Vec<Record>,
    size: usize,
}

impl Packer {
    fn new(id: u16, q: &Query) -> Self {
        Self {
            id,
            query: q.clone(),
            done: Vec::new(),
            records: Vec::new(),
            size: 0,
        }
    }

    fn push(&mut self, r: Record) {
        // uncompressed upper bound: owner + fixed fields + the largest rdata we write (SOA)
        let est = r.name.len() + 1 + 10 + 64;
        if self.size + est > MESSAGE_BUDGET && !self.records.is_empty() {
            self.flush();
        }
        self.size += est;
        self.records.push(r);
    }

    fn flush(&mut self) {
        let mut m = Message::response(self.id, OpCode::Query);
        m.metadata.authoritative = true;
        if self.done.is_empty() {
            // the question goes in the first message only (RFC 5936 2.2)
            m.add_query(self.query.clone());
        }
        m.add_answers(std::mem::take(&mut self.records));
        self.size = 0;
        match m.to_vec() {
            Ok(v) => self.done.push(v),
            Err(e) => tracing::error!("rpz: encoding a transfer message: {e}"),
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.records.is_empty() || self.done.is_empty() {
            self.flush();
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(journal: usize) -> Zone {
        Zone::new(RpzSettings {
            journal,
            ..RpzSettings::default()
        })
        .unwrap()
    }

    fn records(msgs: &[Vec<u8>]) -> Vec<Record> {
        msgs.iter()
            .flat_map(|m| Message::from_vec(m).unwrap().answers)
            .collect()
    }

    fn q(z: &Zone, t: RecordType) -> Query {
        Query::query(z.origin().clone(), t)
    }

    fn soa_serial(r: &Record) -> Option<u32> {
        match &r.data {
            RData::SOA(s) => Some(s.serial),
            _ => None,
        }
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_lt(1, 2));
        assert!(!serial_lt(2, 1));
        assert!(serial_lt(u32::MAX, 0), "0 follows 2^32-1");
        assert!(!serial_lt(5, 5));
    }

    #[test]
    fn names_are_normalised_and_checked() {
        let z = zone(8);
        assert!(z.add("Evil.Example.").unwrap());
        assert!(!z.add("evil.example").unwrap(), "same domain");
        assert!(z.contains("EVIL.example"));
        assert!(z.add("bad name.example").is_err());
        let s = z.serial();
        assert!(z
            .change(&["fine.example", "bad name.example"], &[])
            .is_err());
        assert!(
            !z.contains("fine.example") && z.serial() == s,
            "nothing applied"
        );
        assert!(
            !z.change(&["both.example"], &["both.example"]).unwrap(),
            "no net change"
        );
        assert!(z.add("").is_err());
        assert!(z.add(&format!("{}.example", "a".repeat(64))).is_err());
        let long = vec!["abcdefghij"; 22].join(".");
        assert!(z.add(&long).is_err(), "too long under the zone origin");
        assert_eq!(z.len(), 1);
    }

    #[test]
    fn axfr_is_soa_records_soa_and_serial_grows() {
        let z = zone(8);
        let s0 = z.serial();
        z.add("evil.example").unwrap();
        z.add("c2.test").unwrap();
        assert!(serial_lt(s0, z.serial()));
        let rs = records(&z.axfr(7, &q(&z, RecordType::AXFR)));
        assert_eq!(rs.len(), 7);
        assert_eq!(soa_serial(&rs[0]), Some(z.serial()));
        assert!(matches!(rs[1].data, RData::NS(_)), "apex NS");
        assert_eq!(soa_serial(&rs[6]), Some(z.serial()));
        let owners: Vec<String> = rs[2..6].iter().map(|r| r.name.to_string()).collect();
        assert_eq!(
            owners,
            [
                "c2.test.rpz.exfilguard.",
                "*.c2.test.rpz.exfilguard.",
                "evil.example.rpz.exfilguard.",
                "*.evil.example.rpz.exfilguard."
            ]
        );
        assert!(
            matches!(&rs[2].data, RData::CNAME(c) if c.0.is_root()),
            "NXDOMAIN policy"
        );
    }

    #[test]
    fn ixfr_sends_only_the_difference() {
        let z = zone(8);
        z.add("one.example").unwrap();
        let s1 = z.serial();
        z.add("two.example").unwrap();
        z.remove("one.example").unwrap();
        let s3 = z.serial();
        let rs = records(&z.ixfr(1, &q(&z, RecordType::IXFR), s1));
        let serials: Vec<Option<u32>> = rs.iter().map(soa_serial).collect();
        // SOA(new) | SOA(s1) SOA(s2) +two | SOA(s2) -one SOA(s3) | SOA(new)
        assert_eq!(serials.first().unwrap(), &Some(s3));
        assert_eq!(serials.last().unwrap(), &Some(s3));
        assert_eq!(serials.iter().flatten().count(), 6);
        let names: Vec<String> = rs
            .iter()
            .filter(|r| soa_serial(r).is_none())
            .map(|r| r.name.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "two.example.rpz.exfilguard.",
                "*.two.example.rpz.exfilguard.",
                "one.example.rpz.exfilguard.",
                "*.one.example.rpz.exfilguard."
            ]
        );
        // up to date: one SOA
        assert_eq!(records(&z.ixfr(1, &q(&z, RecordType::IXFR), s3)).len(), 1);
        // older than the journal: the full zone, AXFR style
        let z2 = zone(1);
        let s = z2.serial();
        z2.add("a.example").unwrap();
        z2.add("b.example").unwrap();
        let rs = records(&z2.ixfr(1, &q(&z2, RecordType::IXFR), s));
        assert_eq!(rs.len(), 7, "SOA + NS + 4 records + SOA");
    }

    #[test]
    fn big_zones_span_messages() {
        let z = zone(8);
        let many: Vec<String> = (0..5000).map(|i| format!("d{i}.example")).collect();
        let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        z.change(&refs, &[]).unwrap();
        let msgs = z.axfr(1, &q(&z, RecordType::AXFR));
        assert!(msgs.len() > 1);
        assert!(msgs.iter().all(|m| m.len() < 65535));
        assert_eq!(records(&msgs).len(), 10_003);
    }

    #[test]
    fn answer_refuses_strangers_and_other_zones() {
        let z = zone(8);
        let ask = |name: &str, t: RecordType, allowed: bool, tcp: bool| {
            let mut m = Message::query();
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
            let out = z.answer(&m.to_vec().unwrap(), allowed, tcp).unwrap();
            Message::from_vec(&out[0]).unwrap()
        };
        let ok = ask("rpz.exfilguard.", RecordType::SOA, true, false);
        assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
        assert!(ok.metadata.authoritative);
        for (n, t, allowed, tcp) in [
            ("rpz.exfilguard.", RecordType::AXFR, false, true),
            ("other.zone.", RecordType::SOA, true, false),
            ("rpz.exfilguard.", RecordType::AXFR, true, false),
            ("x.rpz.exfilguard.", RecordType::A, true, false),
        ] {
            assert_eq!(
                ask(n, t, allowed, tcp).metadata.response_code,
                ResponseCode::Refused,
                "{n} {t} allowed={allowed} tcp={tcp}"
            );
        }
        assert!(z.answer(&[1, 2, 3], true, true).is_none());
        let garbage = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        let m = Message::from_vec(&z.answer(&garbage, true, true).unwrap()[0]).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}
