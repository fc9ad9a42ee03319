//! From a captured frame to the DNS messages inside it. etherparse does the headers (Ethernet,
//! VLAN/QinQ, IPv4 with options, IPv6 extension headers, UDP, TCP); exfilguard adds what makes
//! it a DNS filter: DNS recognised by header sanity on any port, TCP length prefixes, and
//! VXLAN/GENEVE inner frames.

use crate::message::looks_like_dns;
use etherparse::{LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    RawIp,
    LinuxSll,
}

impl LinkType {
    /// From a pcap/pcapng link-layer type number.
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        match linktype {
            1 => Some(Self::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(Self::RawIp),
            113 => Some(Self::LinuxSll),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPayload<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// The DNS message (TCP: without its length prefix; possibly cut short by the segment).
    pub payload: &'a [u8],
    /// Tunnels and tags crossed on the way in, outermost first ("vlan", "vxlan", "geneve").
    pub encapsulation: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("malformed headers: {0}")]
    Malformed(String),
    #[error("not an IP packet")]
    NotIp,
    #[error("not UDP or TCP")]
    NotUdpTcp,
    #[error("no DNS message in the payload")]
    NoDns,
}

const VXLAN_PORT: u16 = 4789;
/// DNS, mDNS and LLMNR.
const DNS_PORTS: [u16; 3] = [53, 5353, 5355];
const GENEVE_PORT: u16 = 6081;
const MAX_DEPTH: usize = 3;

/// `frame` (Ethernet, or an IP packet when `ip`) with its UDP payload replaced by `payload`:
/// the UDP and IP lengths and checksums rewritten, every other byte kept (tags, IPv4 options,
/// IPv6 extension headers). Only an unfragmented datagram that is the whole frame is rewritten.
pub fn replace_udp_payload(frame: &[u8], ip: bool, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
    let bad = |e: String| PacketError::Malformed(e);
    let s = if ip {
        SlicedPacket::from_ip(frame)
    } else {
        SlicedPacket::from_ethernet(frame)
    }
    .map_err(|e| bad(e.to_string()))?;
    let Some(TransportSlice::Udp(udp)) = &s.transport else {
        return Err(PacketError::NotUdpTcp);
    };
    let at = |part: &[u8]| part.as_ptr() as usize - frame.as_ptr() as usize;
    let u = at(udp.slice());
    if u + usize::from(udp.length()) != frame.len() {
        return Err(bad("the datagram is not the whole frame".into()));
    }
    let end = u + 8 + payload.len();
    let len16 = |n: usize| u16::try_from(n).map_err(|_| bad(format!("{n} bytes: too long")));
    let mut out = frame[..u + 8].to_vec();
    out.extend_from_slice(payload);
    let mut uh = udp.to_header();
    uh.length = len16(8 + payload.len())?;
    let csum = match &s.net {
        Some(NetSlice::Ipv4(v4)) => {
            let i = at(v4.header().slice());
            out[i + 2..i + 4].copy_from_slice(&len16(end - i)?.to_be_bytes());
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(&out[i..])
                .map_err(|e| bad(e.to_string()))?
                .to_header();
            h.header_checksum = h.calc_header_checksum();
            out[i + 10..i + 12].copy_from_slice(&h.header_checksum.to_be_bytes());
            // no checksum stays none (IPv4 allows it)
            match udp.checksum() {
                0 => 0,
                _ => uh
                    .calc_checksum_ipv4(&h, payload)
                    .map_err(|e| bad(e.to_string()))?,
            }
        }
        Some(NetSlice::Ipv6(v6)) => {
            let i = at(v6.header().slice());
            out[i + 4..i + 6].copy_from_slice(&len16(end - i - 40)?.to_be_bytes());
            uh.calc_checksum_ipv6(&v6.header().to_header(), payload)
                .map_err(|e| bad(e.to_string()))?
        }
        _ => return Err(PacketError::NotIp),
    };
    out[u + 4..u + 6].copy_from_slice(&uh.length.to_be_bytes());
    out[u + 6..u + 8].copy_from_slice(&csum.to_be_bytes());
    Ok(out)
}

/// Finds the DNS message(s) carried by one frame.
pub fn dns_payloads(frame: &[u8], link: LinkType) -> Result<Vec<DnsPayload<'_>>, PacketError> {
    let mut out = Vec::new();
    walk(frame, link, 0, &mut Vec::new(), &mut out)?;
    if out.is_empty() {
        return Err(PacketError::NoDns);
    }
    Ok(out)
}

fn walk<'a>(
    frame: &'a [u8],
    link: LinkType,
    depth: usize,
    encap: &mut Vec<&'static str>,
    out: &mut Vec<DnsPayload<'a>>,
) -> Result<(), PacketError> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        LinkType::RawIp => SlicedPacket::from_ip(frame),
        LinkType::LinuxSll => SlicedPacket::from_linux_sll(frame),
    }
    .map_err(|e| PacketError::Malformed(e.to_string()))?;
    for ext in &sliced.link_exts {
        if matches!(ext, LinkExtSlice::Vlan(_)) {
            encap.push("vlan");
        }
    }
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return Err(PacketError::NotIp),
    };
    let (sport, dport, payload, transport) = match &sliced.transport {
        Some(TransportSlice::Udp(u)) => (
            u.source_port(),
            u.destination_port(),
            u.payload(),
            Transport::Udp,
        ),
        Some(TransportSlice::Tcp(t)) => (
            t.source_port(),
            t.destination_port(),
            t.payload(),
            Transport::Tcp,
        ),
        _ => return Err(PacketError::NotUdpTcp),
    };
    if transport == Transport::Udp && depth < MAX_DEPTH {
        if let Some((inner, kind)) = overlay_inner(dport, payload) {
            encap.push(kind);
            let r = walk(inner, LinkType::Ethernet, depth + 1, encap, out);
            encap.pop();
            // A broken inner frame is reported only if nothing else was found.
            return if out.is_empty() { r } else { Ok(()) };
        }
    }
    let dns = match transport {
        Transport::Udp => payload,
        Transport::Tcp => {
            if payload.len() < 2 {
                return Ok(());
            }
            let len = u16::from_be_bytes([payload[0], payload[1]]) as usize;
            &payload[2..payload.len().min(2 + len)]
        }
    };
    // DNS on any port is recognised by its header; on the well-known ports every payload goes
    // to the parser, so a malformed query there is reported as such, not ignored.
    let well_known = [sport, dport].iter().any(|p| DNS_PORTS.contains(p));
    if looks_like_dns(dns) || (well_known && !dns.is_empty()) {
        out.push(DnsPayload {
            src: SocketAddr::new(src_ip, sport),
            dst: SocketAddr::new(dst_ip, dport),
            transport,
            payload: dns,
            encapsulation: encap.clone(),
        });
    }
    Ok(())
}

/// The inner Ethernet frame of a VXLAN or GENEVE packet.
fn overlay_inner(dport: u16, p: &[u8]) -> Option<(&[u8], &'static str)> {
    match dport {
        // VXLAN: 8-byte header with the I flag (RFC 7348).
        VXLAN_PORT if p.len() > 8 && p[0] & 0x08 != 0 => Some((&p[8..], "vxlan")),
        // GENEVE: version 0, options in 4-byte words, protocol 0x6558 (Ethernet) (RFC 8926).
        GENEVE_PORT
            if p.len() >= 8 && p[0] >> 6 == 0 && u16::from_be_bytes([p[2], p[3]]) == 0x6558 =>
        {
            let hdr = 8 + 4 * (p[0] & 0x3f) as usize;
            (p.len() > hdr).then(|| (&p[hdr..], "geneve"))
        }
        _ => None,
    }
}

/// Test and tool helpers that build frames with etherparse.
pub mod build {
    use etherparse::PacketBuilder;
    use std::net::{IpAddr, SocketAddr};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn ip_step(
        src: SocketAddr,
        dst: SocketAddr,
    ) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (s, d) => eth.ipv6(to_v6(s), to_v6(d), 64),
        }
    }

    fn to_v6(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// Ethernet + IP + UDP around `payload`.
    pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let b = ip_step(src, dst).udp(src.port(), dst.port());
        let mut v = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut v, payload).expect("writing to a Vec");
        v
    }

    /// Ethernet + IP + TCP around a length-prefixed DNS message.
    pub fn tcp_dns_frame(src: SocketAddr, dst: SocketAddr, dns: &[u8]) -> Vec<u8> {
        let mut payload = (dns.len() as u16).to_be_bytes().to_vec();
        payload.extend_from_slice(dns);
        let b = ip_step(src, dst).tcp(src.port(), dst.port(), 1, 65535);
        let mut v = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut v, &payload).expect("writing to a Vec");
        v
    }

    /// An outer UDP/4789 VXLAN frame carrying `inner` (an Ethernet frame).
    pub fn vxlan_frame(src: SocketAddr, dst: SocketAddr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut payload = vec![0x08, 0, 0, 0];
        payload.extend_from_slice(&(vni << 8).to_be_bytes());
        payload.extend_from_slice(inner);
        udp_frame(src, SocketAddr::new(dst.ip(), 4789), &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::message::{build_query, parse_message};
    use crate::DnsName;

    fn q(name: &str) -> Vec<u8> {
        build_query(&DnsName::parse(name).unwrap(), 1, 7).unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The UDP checksum a frame's datagram should carry, and the one it does.
    fn udp_sums(f: &[u8], ip: bool) -> (u16, u16) {
        let s = if ip {
            SlicedPacket::from_ip(f)
        } else {
            SlicedPacket::from_ethernet(f)
        }
        .unwrap();
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!("not UDP")
        };
        let h = u.to_header();
        let want = match &s.net {
            Some(NetSlice::Ipv4(v4)) => {
                let ih = v4.header().to_header();
                assert_eq!(ih.header_checksum, ih.calc_header_checksum());
                assert_eq!(usize::from(ih.total_len), f.len() - if ip { 0 } else { 14 });
                h.calc_checksum_ipv4(&ih, u.payload()).unwrap()
            }
            Some(NetSlice::Ipv6(v6)) => h
                .calc_checksum_ipv6(&v6.header().to_header(), u.payload())
                .unwrap(),
            _ => panic!("not IP"),
        };
        (want, h.checksum)
    }

    #[test]
    fn a_replaced_payload_has_its_lengths_and_checksums_rewritten() {
        let short = q("a.example.com");
        let mut long = q("a.example.com");
        long.extend_from_slice(&[0; 40]); // as if an OPT followed
        for (src, dst) in [
            ("10.0.0.1:40000", "10.0.0.2:53"),
            ("[fd00::1]:5000", "[fd00::2]:53"),
        ] {
            let f = udp_frame(sa(src), sa(dst), &long);
            let g = replace_udp_payload(&f, false, &short).unwrap();
            assert_eq!(g.len(), f.len() - 40);
            let p = dns_payloads(&g, LinkType::Ethernet).unwrap();
            assert_eq!(p[0].payload, &short[..]);
            assert_eq!((p[0].src, p[0].dst), (sa(src), sa(dst)));
            let (want, got) = udp_sums(&g, false);
            assert_eq!(want, got, "{src}");
            // a layer-3 packet (tun, the socket hook) likewise
            let g3 = replace_udp_payload(&f[14..], true, &short).unwrap();
            assert_eq!(g3, g[14..]);
            let (want, got) = udp_sums(&g3, true);
            assert_eq!(want, got);
        }
        // an IPv4 datagram sent without a checksum keeps none
        let mut f = udp_frame(sa("10.0.0.1:1"), sa("10.0.0.2:53"), &long);
        let n = f.len();
        f[n - long.len() - 2..n - long.len()].fill(0);
        let g = replace_udp_payload(&f, false, &short).unwrap();
        assert_eq!(
            &g[g.len() - short.len() - 2..g.len() - short.len()],
            &[0, 0]
        );
        // a frame cut short, TCP, or not IP: refused, not rewritten
        assert!(replace_udp_payload(&f[..n - 1], false, &short).is_err());
        let t = tcp_dns_frame(sa("10.0.0.1:1"), sa("10.0.0.2:53"), &short);
        assert_eq!(
            replace_udp_payload(&t, false, &short),
            Err(PacketError::NotUdpTcp)
        );
        assert!(replace_udp_payload(&[0u8; 60], false, &short).is_err());
    }

    #[test]
    fn udp_any_port_v4_and_v6() {
        for (src, dst) in [
            ("10.0.0.1:40000", "10.0.0.2:53"),
            ("10.0.0.1:40000", "10.0.0.2:9999"),
            ("[fd00::1]:5000", "[fd00::2]:5353"),
        ] {
            let f = udp_frame(sa(src), sa(dst), &q("a.example.com"));
            let p = dns_payloads(&f, LinkType::Ethernet).unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].dst, sa(dst));
            assert_eq!(
                parse_message(p[0].payload).unwrap().questions[0]
                    .name
                    .to_string(),
                "a.example.com"
            );
        }
    }

    #[test]
    fn tcp_vlan_vxlan() {
        let tcp = tcp_dns_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:53"), &q("t.example.com"));
        let p = dns_payloads(&tcp, LinkType::Ethernet).unwrap();
        assert_eq!(p[0].transport, Transport::Tcp);
        // 802.1Q and 802.1ad: insert tags after the MAC addresses.
        let mut qinq = tcp[..12].to_vec();
        qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14]);
        qinq.extend_from_slice(&tcp[12..]);
        let p = dns_payloads(&qinq, LinkType::Ethernet).unwrap();
        assert_eq!(p[0].encapsulation, vec!["vlan", "vlan"]);
        let inner = udp_frame(
            sa("192.168.1.1:1111"),
            sa("192.168.1.2:53"),
            &q("inner.example.com"),
        );
        let outer = vxlan_frame(sa("10.0.0.1:5555"), sa("10.0.0.2:0"), 42, &inner);
        let p = dns_payloads(&outer, LinkType::Ethernet).unwrap();
        assert_eq!(p[0].encapsulation, vec!["vxlan"]);
        assert_eq!(p[0].dst, sa("192.168.1.2:53"));
    }

    #[test]
    fn ipv4_options_and_ipv6_extension_headers() {
        let f = udp_frame(sa("10.0.0.1:1000"), sa("10.0.0.2:53"), &q("o.example.com"));
        // IPv4 options: IHL 6 with a 4-byte NOP/EOL option; fix total length and checksum-free.
        let mut v4 = f[..14].to_vec();
        let mut ip = f[14..34].to_vec();
        ip[0] = 0x46;
        let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        v4.extend_from_slice(&ip);
        v4.extend_from_slice(&[1, 1, 1, 0]);
        v4.extend_from_slice(&f[34..]);
        assert_eq!(dns_payloads(&v4, LinkType::Ethernet).unwrap().len(), 1);
        // IPv6 with hop-by-hop and destination-options headers before UDP.
        let f6 = udp_frame(
            sa("[fd00::1]:1000"),
            sa("[fd00::2]:53"),
            &q("x.example.com"),
        );
        let mut v6 = f6[..14 + 40].to_vec();
        v6[14 + 6] = 0; // next header: hop-by-hop
        let plen = u16::from_be_bytes([v6[18], v6[19]]) + 16;
        v6[18..20].copy_from_slice(&plen.to_be_bytes());
        v6.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // HBH -> dest opts, PadN
        v6.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // dest opts -> UDP, PadN
        v6.extend_from_slice(&f6[54..]);
        let p = dns_payloads(&v6, LinkType::Ethernet).unwrap();
        assert_eq!(p[0].dst, sa("[fd00::2]:53"));
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let f = tcp_dns_frame(sa("10.0.0.1:40000"), sa("10.0.0.2:53"), &q("t.example.com"));
        for n in 0..f.len() {
            let _ = dns_payloads(&f[..n], LinkType::Ethernet);
            let _ = dns_payloads(&f[..n], LinkType::RawIp);
            let _ = dns_payloads(&f[..n], LinkType::LinuxSll);
        }
        assert!(dns_payloads(&[0u8; 3], LinkType::Ethernet).is_err());
        let http = udp_frame(
            sa("10.0.0.1:1"),
            sa("10.0.0.2:80"),
            b"GET / HTTP/1.1\r\n\r\n",
        );
        assert_eq!(
            dns_payloads(&http, LinkType::Ethernet),
            Err(PacketError::NoDns)
        );
        // On port 53 the parser gets it, and reports the error.
        let junk53 = udp_frame(
            sa("10.0.0.1:1"),
            sa("10.0.0.2:53"),
            b"GET / HTTP/1.1\r\n\r\n",
        );
        let p = dns_payloads(&junk53, LinkType::Ethernet).unwrap();
        assert!(parse_message(p[0].payload).is_err());
    }
}
