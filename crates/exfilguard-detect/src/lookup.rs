//! Lookup names: names whose labels are keys into somebody's database, not words or data —
//! reverse DNS, ENUM, DNSBL/RHSBL lookups, service and attribute records (`_ldap._tcp`,
//! `_dmarc`, DKIM selectors). The generic model reads them as random strings (a reversed
//! address is all digits, an ip6.arpa name 32 one-character labels), so they are judged by
//! their structure instead, before the model, by every caller of [`crate::Detector`]:
//!
//! * under `in-addr.arpa`, `ip6.arpa`, `e164.arpa`: address octets, nibbles or digits are
//!   benign; **anything else there is a tunnel** (no resolver answers it, so only a tool that
//!   reads the queries sends it) — fail closed;
//! * a reversed IPv4 address (four octets) or IPv6 address (32 nibbles) in front of any zone
//!   is a DNSBL-style lookup: the key is benign, the zone is judged by the model;
//! * names under a known lookup service (`KNOWN_LOOKUP_ZONES`, the operator's
//!   `behaviour.lookup_zones`) are benign: an attacker cannot read the queries that service's
//!   servers receive;
//! * underscore labels (`_service._proto`, `_dmarc`, `_domainkey`, `_acme-challenge` …) and
//!   the key labels in front of them (DKIM selectors, DNS-SD instances, GUIDs) are structure:
//!   the owner name right of the last underscore label is judged by the model, so
//!   `_dmarc.<dga>.com` is still a DGA.
//!
//! What such names can still carry (four bytes per reversed address, a selector label) is
//! counted by the behaviour analytics' information-rate budget per registered domain, which
//! skips only the known lookup services.

use exfilguard_dns::DnsName;

pub use exfilguard_dns::KNOWN_LOOKUP_ZONES;

/// Bytes of underscore and key labels (with their dots) a lookup name may strip before the
/// model judges the owner: `_ldap._tcp.dc._msdcs.` is 21, a 32-character DKIM selector 44.
const MAX_STRUCTURE_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LookupKind {
    ReverseV4,
    ReverseV6,
    Enum,
    /// A reversed address in front of a list's zone.
    Dnsbl,
    /// Under a known lookup service.
    Service,
    /// Underscore (service/attribute) labels.
    Underscore,
}

impl LookupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::ReverseV4 => "reverse-DNS (IPv4)",
            LookupKind::ReverseV6 => "reverse-DNS (IPv6)",
            LookupKind::Enum => "ENUM",
            LookupKind::Dnsbl => "DNSBL lookup",
            LookupKind::Service => "lookup service",
            LookupKind::Underscore => "service/attribute record",
        }
    }
}

/// What the structure says about a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A well-formed key: benign, whatever it looks like.
    Key { kind: LookupKind, what: String },
    /// Under a reverse or ENUM zone but not a key of it: fail closed.
    Malformed { kind: LookupKind, what: String },
    /// Structure stripped: the model judges `owner` (the name right of the key labels).
    Owner { kind: LookupKind, owner: DnsName },
}

fn lower(l: &[u8]) -> Vec<u8> {
    l.to_ascii_lowercase()
}

fn is_octet(l: &[u8]) -> bool {
    !l.is_empty()
        && l.len() <= 3
        && l.iter().all(u8::is_ascii_digit)
        && (l.len() == 1 || l[0] != b'0')
        && std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|v| v <= 255)
}

/// RFC 2317 classless delegation labels: `0/25` (prefix length), `0-25`, `64-127` (ranges).
fn is_classless(l: &[u8]) -> bool {
    let Some(p) = l.iter().position(|&c| c == b'/' || c == b'-') else {
        return false;
    };
    let (first, sep, rest) = (&l[..p], l[p], &l[p + 1..]);
    let value = std::str::from_utf8(rest)
        .ok()
        .filter(|r| !r.is_empty() && r.len() <= 3 && r.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|r| r.parse::<u16>().ok());
    is_octet(first) && value.is_some_and(|v| v <= if sep == b'/' { 32 } else { 255 })
}

fn is_nibble(l: &[u8]) -> bool {
    l.len() == 1 && l[0].is_ascii_hexdigit()
}

/// An underscore label as the registries name them (RFC 8552): `_` and a letter, then up to
/// 40 letters, digits or hyphens (`_globalsign-domain-verification` is 31).
fn is_underscore(l: &[u8]) -> bool {
    l.len() >= 2
        && l.len() <= 41
        && l[0] == b'_'
        && l[1].is_ascii_alphabetic()
        && l[2..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

fn suffix_is(name: &DnsName, zone: &[&[u8]]) -> bool {
    let n = name.label_count();
    n >= zone.len()
        && zone
            .iter()
            .rev()
            .enumerate()
            .all(|(i, z)| lower(name.label(n - 1 - i)) == *z)
}

fn under_known(name: &DnsName, known: &[String]) -> Option<String> {
    let n = name.label_count();
    // only proper subdomains: the service's own name is judged like any other
    (1..n).find_map(|first| {
        let s = name.normalized_from(first);
        known.contains(&s).then_some(s)
    })
}

/// The structural judgement of `name`, if it is a lookup name. `known`: lookup services
/// (lower-case, no trailing dot).
pub fn judge(name: &DnsName, known: &[String]) -> Option<Lookup> {
    let n = name.label_count();
    // underscore structure first: DNS-SD browses reverse zones (`b._dns-sd._udp.<rev>`)
    if let Some(last_us) = (0..n).rev().find(|&i| is_underscore(name.label(i))) {
        let owner_start = last_us + 1;
        let keys = (0..last_us)
            .filter(|&i| !is_underscore(name.label(i)))
            .count();
        let underscores = (0..=last_us)
            .filter(|&i| is_underscore(name.label(i)))
            .count();
        let stripped: usize = (0..owner_start).map(|i| name.label(i).len() + 1).sum();
        if owner_start >= n {
            return None; // `_x` alone has nothing to strip
        }
        let owner = DnsName::from_labels((owner_start..n).map(|i| name.label(i))).ok()?;
        // under a reverse or ENUM zone only DNS-SD's browse names (RFC 6763 §11) are
        // structure; anything else there fails closed like any non-key label
        let inner = judge(&owner, known);
        if let (true, Some(Lookup::Key { kind, .. } | Lookup::Malformed { kind, .. })) =
            (suffix_is(&owner, &[b"arpa"]), &inner)
        {
            let kind = *kind;
            let browse = owner_start == 3
                && [&b"b"[..], b"db", b"r", b"dr", b"lb"].contains(&&*lower(name.label(0)))
                && lower(name.label(1)) == b"_dns-sd"
                && lower(name.label(2)) == b"_udp";
            if !browse {
                return Some(Lookup::Malformed {
                    kind,
                    what: "service labels under a reverse zone that are not a DNS-SD browse name"
                        .into(),
                });
            }
        }
        // more than two key labels (a DNS-SD instance, a DKIM selector, `dc` + a site), more
        // than three underscore labels (`_ldap._tcp.dc._msdcs` has three) or more than 64
        // bytes of structure is no structure anyone publishes, only room for data: the model
        // judges the whole name then
        if keys > 2 || underscores > 3 || stripped > MAX_STRUCTURE_BYTES {
            return None;
        }
        return Some(match inner {
            Some(inner) => inner,
            None => Lookup::Owner {
                kind: LookupKind::Underscore,
                owner,
            },
        });
    }
    if suffix_is(name, &[b"in-addr", b"arpa"]) {
        let keys: Vec<&[u8]> = (0..n - 2).map(|i| name.label(i)).collect();
        // RFC 2317 adds one label (`1.0/25.2.0.192`)
        let classless = keys.iter().any(|l| is_classless(l));
        let ok = keys.len() <= 4 + usize::from(classless)
            && keys
                .iter()
                .enumerate()
                .all(|(i, l)| is_octet(l) || (i + 1 < keys.len() && is_classless(l)));
        let what = format!("{} under in-addr.arpa", keys.len());
        return Some(if ok {
            Lookup::Key {
                kind: LookupKind::ReverseV4,
                what: format!("{what} address octets"),
            }
        } else {
            Lookup::Malformed {
                kind: LookupKind::ReverseV4,
                what: "labels under in-addr.arpa that are not address octets".into(),
            }
        });
    }
    // one key label per nibble / telephone digit
    let digit = |l: &[u8]| l.len() == 1 && l[0].is_ascii_digit();
    for (zone, labels, max, is_key, kind, unit) in [
        (
            "ip6.arpa",
            [&b"ip6"[..], b"arpa"],
            32,
            &is_nibble as &dyn Fn(&[u8]) -> bool,
            LookupKind::ReverseV6,
            "address nibbles",
        ),
        (
            "e164.arpa",
            [&b"e164"[..], b"arpa"],
            15,
            &digit,
            LookupKind::Enum,
            "telephone digits",
        ),
    ] {
        if suffix_is(name, &labels) {
            let ok = n - 2 <= max && (0..n - 2).all(|i| is_key(name.label(i)));
            return Some(if ok {
                Lookup::Key {
                    kind,
                    what: format!("{} {unit} under {zone}", n - 2),
                }
            } else {
                Lookup::Malformed {
                    kind,
                    what: format!("labels under {zone} that are not single {unit}"),
                }
            });
        }
    }
    if let Some(zone) = under_known(name, known) {
        return Some(Lookup::Key {
            kind: LookupKind::Service,
            what: format!("a query to the lookup service {zone}"),
        });
    }
    // a reversed address in front of a zone of at least two labels
    for (keys, ok) in [
        (4usize, (0..4).all(|i| i < n && is_octet(name.label(i)))),
        (32, (0..32).all(|i| i < n && is_nibble(name.label(i)))),
    ] {
        if ok && n >= keys + 2 {
            let owner = DnsName::from_labels((keys..n).map(|i| name.label(i))).ok()?;
            return Some(Lookup::Owner {
                kind: LookupKind::Dnsbl,
                owner,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Option<Lookup> {
        let known: Vec<String> = KNOWN_LOOKUP_ZONES.iter().map(|s| s.to_string()).collect();
        judge(&DnsName::parse(s).unwrap(), &known)
    }

    fn key(s: &str) -> bool {
        matches!(j(s), Some(Lookup::Key { .. }))
    }

    fn bad(s: &str) -> bool {
        matches!(j(s), Some(Lookup::Malformed { .. }))
    }

    fn owner(s: &str) -> Option<String> {
        match j(s) {
            Some(Lookup::Owner { owner, .. }) => Some(owner.normalized()),
            _ => None,
        }
    }

    #[test]
    fn reverse_and_enum_keys_are_benign_anything_else_there_is_not() {
        for n in [
            "4.4.8.8.in-addr.arpa",
            "0.168.192.in-addr.arpa",
            "1.0/25.2.0.192.in-addr.arpa",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            "8.b.d.0.1.0.0.2.ip6.arpa",
            "4.3.2.1.5.5.5.0.0.8.1.e164.arpa",
            "b._dns-sd._udp.0.1.168.192.in-addr.arpa",
        ] {
            assert!(key(n), "{n}: {:?}", j(n));
        }
        for n in [
            "mfzwizltoq2dk.4.8.8.in-addr.arpa",
            "256.4.8.8.in-addr.arpa",
            "01.4.8.8.in-addr.arpa",
            "1.1.4.4.8.8.in-addr.arpa",
            "ab.0.0.ip6.arpa",
            "g.0.ip6.arpa",
            "12.3.e164.arpa",
        ] {
            assert!(bad(n), "{n}: {:?}", j(n));
        }
    }

    #[test]
    fn dnsbl_service_and_underscore_names_leave_the_owner_to_the_model() {
        assert!(key("2.0.0.127.zen.spamhaus.org"));
        assert!(key(
            "d41d8cd98f00b204e9800998ecf8427e.malware.hash.cymru.com"
        ));
        assert_eq!(
            owner("2.0.0.127.bl.unknown-list.net").as_deref(),
            Some("bl.unknown-list.net")
        );
        assert_eq!(
            owner("_ldap._tcp.dc._msdcs.corp.example.com").as_deref(),
            Some("corp.example.com")
        );
        assert_eq!(
            owner("4kd6l3efxscyrwbvrdegazb5i6m3kexn._domainkey.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            owner("_dmarc.qwzxkjhfgtrp.com").as_deref(),
            Some("qwzxkjhfgtrp.com")
        );
        assert_eq!(j("www.example.com"), None);
        // an underscore label too long for a registry name is no structure
        assert_eq!(
            j("_mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojqgezdgnbv.evil.com"),
            None
        );
        // key labels are one or two, never a payload's worth
        assert_eq!(j("aaaa.bbbb.cccc._domainkey.evil.com"), None);
        // the service's own name is an ordinary name
        assert_eq!(j("spamhaus.org"), None);
    }

    /// The attacker's review of issue 23: structure must not become a channel of its own.
    #[test]
    fn structure_is_bounded_and_fails_closed_under_reverse_zones() {
        let p63 = "mfzwizltoq2dknbvgy3tqojqgezdgnbvgy3tqojqgezdgnbvgy3tqojqgezdgnb";
        // data in key and underscore labels in front of a delegated reverse zone: refused,
        // not an address key
        for n in [
            format!("{p63}._q.x._x.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
            "abc._x.7.0/26.113.0.203.in-addr.arpa".to_string(),
            "_ldap._tcp.1.168.192.in-addr.arpa".to_string(),
        ] {
            assert!(bad(&n), "{n}: {:?}", j(&n));
        }
        // more structure than anyone publishes: no lookup verdict, the model judges it all
        for n in [
            format!("{p63}._x.evil.com"),
            format!("{}.{}._x.evil.com", &p63[..30], &p63[..30]),
            "_mfzwizltoq2dk._nbvgy3tqojqge._zdgnbvgy3tq._ojqgezdgnbv._tcp.evil.com".to_string(),
        ] {
            assert_eq!(j(&n), None, "{n}");
        }
        // benign controls: the structures people publish
        for (n, o) in [
            ("_ldap._tcp.dc._msdcs.corp.example.com", "corp.example.com"),
            (
                "selector1-contoso-com._domainkey.contoso.com",
                "contoso.com",
            ),
            ("_globalsign-domain-verification.example.com", "example.com"),
            ("printer._ipp._tcp.example.com", "example.com"),
        ] {
            assert_eq!(owner(n).as_deref(), Some(o), "{n}");
        }
        for n in [
            "lb._dns-sd._udp.0.1.168.192.in-addr.arpa",
            // RFC 2317 ranges and prefix lengths
            "65.64-127.2.0.192.in-addr.arpa",
            "5.0/24.2.0.192.in-addr.arpa",
        ] {
            assert!(key(n), "{n}: {:?}", j(n));
        }
        assert!(bad("5.0/33.2.0.192.in-addr.arpa"));
    }
}
