//! Re-injects a released frame exactly as it was held: same bytes, same interface. The frame
//! carries the release mark so the programs let it through (with the ticket the agent put in
//! `eg_tickets`, bound to the whole message). Ethernet frames (tc hook) go out through
//! AF_PACKET on the original ifindex, IP packets of layer-3 devices likewise; IP packets held
//! before routing (socket hook, netfilter) through a raw IP socket with IP_HDRINCL, bound to
//! the device the kernel had chosen.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_mark(fd: &OwnedFd, mark: u32) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a u32 of the stated size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const u32 as *const libc::c_void,
            4,
        )
    })?;
    Ok(())
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub struct Reinjector {
    packet: OwnedFd,
    raw4: Option<OwnedFd>,
    raw6: Option<OwnedFd>,
}

impl Reinjector {
    /// Opens the sockets in the caller's network namespace (where the interfaces are).
    pub fn new(mark: u32) -> io::Result<Self> {
        // protocol 0: this socket only sends, it never receives copies of traffic.
        let packet = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        set_mark(&packet, mark)?;
        let raw = |domain| -> Option<OwnedFd> {
            let fd = socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW).ok()?;
            set_mark(&fd, mark).ok()?;
            Some(fd)
        };
        Ok(Self {
            packet,
            raw4: raw(libc::AF_INET),
            raw6: raw(libc::AF_INET6),
        })
    }

    /// Sends an Ethernet frame unchanged out of `ifindex`.
    pub fn send_frame(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than Ethernet",
            ));
        }
        let proto = u16::from_be_bytes([frame[12], frame[13]]);
        self.send_ll(ifindex, proto, Some(&frame[..6]), frame)
    }

    /// Sends an IP packet unchanged out of a layer-3 device (tun, wireguard, ipip: no link
    /// header), through AF_PACKET like `send_frame`.
    pub fn send_l3(&self, ifindex: u32, packet: &[u8]) -> io::Result<()> {
        let proto: u16 = match packet.first().map(|b| b >> 4) {
            Some(4) => 0x0800,
            Some(6) => 0x86dd,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IP packet",
                ))
            }
        };
        self.send_ll(ifindex, proto, None, packet)
    }

    /// One AF_PACKET send of `bytes` as they are, out of `ifindex`.
    fn send_ll(
        &self,
        ifindex: u32,
        proto: u16,
        dst: Option<&[u8]>,
        bytes: &[u8],
    ) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_protocol = proto.to_be();
        if let Some(mac) = dst {
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(mac);
        }
        // SAFETY: bytes and sll outlive the call; lengths are theirs.
        let n = check(unsafe {
            libc::sendto(
                self.packet.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) as i32
        })?;
        if n as usize != bytes.len() {
            return Err(io::Error::other(format!("short send {n}/{}", bytes.len())));
        }
        Ok(())
    }

    /// Sends an IP packet (header included) unchanged through the local output path, bound
    /// to `ifindex` (the device the kernel had routed it to; 0: any) so that a query held
    /// before a VPN device is not released around it.
    pub fn send_ip(&self, packet: &[u8], ifindex: u32) -> io::Result<()> {
        let version = packet.first().map(|b| b >> 4);
        let (fd, storage, len) = match version {
            Some(4) if packet.len() >= 20 => {
                // SAFETY: zeroed sockaddr_in is valid.
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_addr.s_addr =
                    u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]);
                let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_storage is larger than sockaddr_in.
                unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in, sin) };
                (&self.raw4, st, std::mem::size_of::<libc::sockaddr_in>())
            }
            Some(6) if packet.len() >= 40 => {
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_addr.s6_addr.copy_from_slice(&packet[24..40]);
                let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6.
                unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in6, sin6) };
                (&self.raw6, st, std::mem::size_of::<libc::sockaddr_in6>())
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IP packet",
                ))
            }
        };
        let fd = fd
            .as_ref()
            .ok_or_else(|| io::Error::other("raw IP socket unavailable"))?;
        // SAFETY: valid fd, pointer to an int of the stated size (0 unbinds).
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                62, /* SO_BINDTOIFINDEX */
                &(ifindex as libc::c_int) as *const libc::c_int as *const libc::c_void,
                4,
            )
        })?;
        // SAFETY: packet and storage outlive the call.
        check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &storage as *const _ as *const libc::sockaddr,
                len as u32,
            ) as i32
        })?;
        Ok(())
    }
}
