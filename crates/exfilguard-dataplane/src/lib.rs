//! The exfilguard kernel data plane: loads the eBPF programs of `bpf/exfilguard.bpf.c`, pins the
//! maps that must outlive the agent, attaches (tcx or clsact egress, XDP ingress, cgroup
//! sock_addr, netfilter), reads the ring buffer and acts on the agent's verdicts (release a held
//! frame, block a domain, quarantine a process). No detection logic lives here.

pub mod config;
pub mod event;
pub mod guard;
pub mod hash;
mod maps;
pub mod probe;
mod reinject;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/exfilguard.skel.rs"));
}

pub use config::{random_release_mark, KernelPolicy, Mode, SocketScope};
pub use event::{Action, Event, Hook, Process, QuietKey};
pub use maps::Maps;
pub use probe::Features;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, RingBufferBuilder, TcHookBuilder};
use skel::{ExfilguardSkel, ExfilguardSkelBuilder};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where maps (and, with `persist`, links) are pinned.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/exfilguard";

/// Names of the per-CPU counters (`enum eg_stat`), in index order.
pub const STAT_NAMES: [&str; 52] = [
    "packets",
    "non_dns",
    "dns_queries",
    "pass_plain",
    "pass_allow",
    "hold",
    "block",
    "report",
    "quarantine",
    "released",
    "fail_closed",
    "ringbuf_full",
    "malformed",
    "tcp_dns",
    "vxlan",
    "geneve",
    "ipv6",
    "nf_packets",
    "xdp_packets",
    "xdp_responses",
    "xdp_nxdomain",
    "xdp_ratelimited",
    "xdp_downlink",
    "sock_events",
    "sock_denied",
    "observed",
    "observe_full",
    "agent_down",
    "block_quiet",
    "frag_drop",
    "deep_encap",
    "tcp_partial",
    "gso_drop",
    "malformed_drop",
    "odd_message",
    "encap",
    "l3_dev",
    "sock_packets",
    "sockopt_denied",
    "observe_held",
    "judge",
    "encdns_sanctioned",
    "encdns_reported",
    "encdns_denied",
    "encdns_quiet",
    "tcp_flow",
    "user_pages",
    "new_carrier",
    "cookie_learnt",
    "cookie_echoed",
    "cookie_forged",
    "cookie_unasked",
];

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("BPF: {context}: {source}")]
    Bpf {
        context: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, DataplaneError>;

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}
impl<T> Ctx<T> for std::result::Result<T, libbpf_rs::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| DataplaneError::Bpf {
            context: what(),
            source,
        })
    }
}
impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| DataplaneError::Io {
            context: what(),
            source,
        })
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin directory on bpffs; `None` keeps every map private to this process (tests, benches).
    pub pin_dir: Option<PathBuf>,
    /// Keep programs attached after this process exits (links pinned under `pin_dir/links`),
    /// so a restart leaves no unprotected gap; the next start takes the links over.
    pub persist: bool,
    /// Size of the held-frame ring buffer in bytes (a power of two ≥ the page size); 0: 8 MiB.
    pub ringbuf_bytes: u32,
    /// Size of the observation ring (behaviour analytics), same rules; 0: 4 MiB.
    pub observe_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            persist: false,
            ringbuf_bytes: 0,
            observe_bytes: 0,
        }
    }
}

enum Attachment {
    Link {
        link: Link,
        pin: Option<PathBuf>,
    },
    Clsact {
        hook: libbpf_rs::TcHook,
    },
    /// Generic-mode XDP through netlink (drivers that refuse a native XDP link).
    XdpGeneric {
        ifindex: u32,
        xdp: libbpf_rs::Xdp<'static>,
    },
}

/// How an egress program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressAttach {
    Tcx,
    /// Took over a pinned tcx link left by a previous agent (no gap).
    TcxTakenOver,
    Clsact,
}

/// What is attached to one interface, whoever attached it (`exfilguard attached`): a restart
/// that took the pinned links over shows one tcx program, not two.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AttachedPrograms {
    pub ifindex: u32,
    /// Program ids attached at tcx egress, in order.
    pub tcx_egress: Vec<u32>,
    /// The XDP program id (0: none), any mode.
    pub xdp: u32,
}

/// Queries the kernel for the programs at `ifindex`'s tcx egress and XDP hooks.
pub fn attached_programs(ifindex: u32) -> Result<AttachedPrograms> {
    use libbpf_rs::libbpf_sys as sys;
    let mut ids = vec![0u32; 64];
    let mut opts = sys::bpf_prog_query_opts {
        sz: std::mem::size_of::<sys::bpf_prog_query_opts>() as _,
        prog_ids: ids.as_mut_ptr(),
        ..Default::default()
    };
    opts.__bindgen_anon_1.count = ids.len() as u32;
    // SAFETY: opts points at a buffer of `count` ids that outlives the call.
    let rc = unsafe { sys::bpf_prog_query_opts(ifindex as i32, sys::BPF_TCX_EGRESS, &mut opts) };
    if rc != 0 {
        return Err(DataplaneError::Io {
            context: format!("querying tcx egress of ifindex {ifindex}"),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    // SAFETY: the kernel wrote the count member.
    let n = unsafe { opts.__bindgen_anon_1.count } as usize;
    ids.truncate(n.min(64));
    let mut xdp = 0u32;
    // SAFETY: writes one u32 we own.
    let rc = unsafe { sys::bpf_xdp_query_id(ifindex as i32, 0, &mut xdp) };
    if rc != 0 {
        return Err(DataplaneError::Io {
            context: format!("querying XDP of ifindex {ifindex}"),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    Ok(AttachedPrograms {
        ifindex,
        tcx_egress: ids,
        xdp,
    })
}

/// One program's size and verifier cost (see [`Dataplane::program_stats`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramStats {
    pub name: String,
    /// BPF instructions loaded (after libbpf's relocations).
    pub insns: usize,
    /// Instructions the verifier processed (all paths): the figure its 1 M limit applies to.
    pub verified_insns: u32,
    pub xlated_bytes: u32,
    pub jited_bytes: u32,
}

/// [`ProgramStats`] of every program of a loaded object.
fn program_stats(obj: &libbpf_rs::Object) -> Result<Vec<ProgramStats>> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    for prog in obj.progs() {
        let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of_val(&info) as u32;
        // SAFETY: a valid program fd and an info struct of the length we pass.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(
                prog.as_fd().as_raw_fd(),
                &mut info,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(DataplaneError::Io {
                context: format!("bpf_prog_get_info_by_fd {}", prog.name().to_string_lossy()),
                source: std::io::Error::from_raw_os_error(-rc),
            });
        }
        out.push(ProgramStats {
            name: prog.name().to_string_lossy().into_owned(),
            insns: prog.insn_cnt(),
            verified_insns: info.verified_insns,
            xlated_bytes: info.xlated_prog_len,
            jited_bytes: info.jited_prog_len,
        });
    }
    Ok(out)
}

/// A loaded data plane. Dropping it detaches every program (unless `persist`); pinned maps stay.
pub struct Dataplane {
    skel: ExfilguardSkel<'static>,
    attachments: Vec<Attachment>,
    reinject: Option<reinject::Reinjector>,
    opts: LoadOptions,
    policy: KernelPolicy,
    maps: Maps,
    /// The release mark used when the policy leaves it to chance.
    mark: u32,
}

fn mount_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    log::info!("bpffs not mounted at /sys/fs/bpf: mounting it to pin maps");
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .ctx(|| "running mount -t bpf".into())?;
    if !status.success() {
        return Err(DataplaneError::Other(
            "mount -t bpf bpf /sys/fs/bpf failed".into(),
        ));
    }
    Ok(())
}

/// A pinned map from a release with another value layout cannot be reused (libbpf refuses the
/// load): unpin it so this release pins its own. The agent rewrites the policy anyway; TCP
/// streams off port 53 open across the upgrade are no longer followed (as sockets older than
/// the agent).
fn drop_outdated_pins(dir: &Path) {
    let sizes = [
        ("eg_config", std::mem::size_of::<skel::types::eg_config>()),
        ("eg_flows", std::mem::size_of::<skel::types::eg_flow>()),
    ];
    for (name, want) in sizes {
        let path = dir.join(name);
        if let Ok(old) = libbpf_rs::MapHandle::from_pinned_path(&path) {
            if old.value_size() as usize != want {
                log::warn!(
                    "pinned {name} has {} bytes per value, this release needs {want}: re-pinning",
                    old.value_size()
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// An address as the programs key it: IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
fn addr16(a: std::net::IpAddr) -> [u8; 16] {
    match a {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

/// The `struct eg_lpm_key` of a network: IPv4 mapped into IPv6 (::ffff:0:0/96).
pub fn lpm_key(addr: std::net::IpAddr, prefix: u8) -> [u8; 20] {
    let len = match addr {
        std::net::IpAddr::V4(_) => 96 + u32::from(prefix.min(32)),
        std::net::IpAddr::V6(_) => u32::from(prefix.min(128)),
    };
    // the trie compares the first `len` bits only; host bits are cleared so equal networks
    // give equal keys
    let mut bits = u128::from_be_bytes(addr16(addr));
    if len < 128 {
        bits &= !(u128::MAX >> len);
    }
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&len.to_ne_bytes());
    k[4..].copy_from_slice(&bits.to_be_bytes());
    k
}

fn replace_lpm(
    map: &libbpf_rs::Map<'_>,
    nets: &[(std::net::IpAddr, u8)],
    name: &str,
) -> Result<usize> {
    let want: std::collections::HashSet<[u8; 20]> =
        nets.iter().map(|&(a, p)| lpm_key(a, p)).collect();
    for k in &want {
        map.update(k, &[1u8], MapFlags::ANY)
            .ctx(|| format!("writing {name}"))?;
    }
    let stale: Vec<Vec<u8>> = map
        .keys()
        .filter(|k| <[u8; 20]>::try_from(&k[..]).map_or(true, |k| !want.contains(&k)))
        .collect();
    for k in stale {
        match map.delete(&k) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("pruning {name}")),
        }
    }
    Ok(want.len())
}

/// How long a release ticket is valid (`EG_TICKET_NS`).
const TICKET_NS: u64 = 2_000_000_000;

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The cookie of the caller's network namespace (SO_NETNS_COOKIE, Linux 5.14+).
pub fn netns_cookie() -> Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "socket for SO_NETNS_COOKIE".into());
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = 8u32;
    // SAFETY: the out-buffer is a u64 of the length we pass.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            71, /* SO_NETNS_COOKIE */
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "getsockopt SO_NETNS_COOKIE".into());
    }
    Ok(cookie)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Dataplane {
    /// Opens, pins and loads the programs (verifier runs here) and writes the default policy.
    pub fn load(opts: LoadOptions) -> Result<Self> {
        // The skeleton borrows its backing storage for its whole life; one leak per load.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let builder = ExfilguardSkelBuilder::default();
        let mut open = builder.open(storage).ctx(|| "opening BPF object".into())?;
        // tcx links need the attach type at load time; clsact ignores it.
        if probe::Features::tcx_possible() {
            open.progs
                .eg_tc_egress
                .set_attach_type(libbpf_rs::ProgramAttachType::TcxEgress);
        }
        if opts.ringbuf_bytes != 0 {
            open.maps
                .eg_events
                .set_max_entries(opts.ringbuf_bytes)
                .ctx(|| format!("ring buffer size {}", opts.ringbuf_bytes))?;
        }
        if opts.observe_bytes != 0 {
            open.maps
                .eg_observe
                .set_max_entries(opts.observe_bytes)
                .ctx(|| format!("observation ring size {}", opts.observe_bytes))?;
        }
        if let Some(dir) = &opts.pin_dir {
            mount_bpffs(dir)?;
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
            drop_outdated_pins(dir);
            let m = &mut open.maps;
            let pinned: [(&str, &mut libbpf_rs::OpenMapMut<'_>); 8] = [
                ("eg_blocklist", &mut m.eg_blocklist),
                ("eg_allow", &mut m.eg_allow),
                // the allow cache's keys are hashes under this key: the questions the agent
                // cleared stay cleared across a restart (0600 like every pin)
                ("eg_secret", &mut m.eg_secret),
                ("eg_quarantine", &mut m.eg_quarantine),
                ("eg_config", &mut m.eg_config),
                ("eg_socks", &mut m.eg_socks),
                // sockets opened before a restart stay attributed
                ("eg_sk", &mut m.eg_sk),
                // a DNS stream off port 53 stays one across a restart
                ("eg_flows", &mut m.eg_flows),
            ];
            for (name, map) in pinned {
                map.set_pin_path(dir.join(name))
                    .ctx(|| format!("pin path for {name}"))?;
            }
        }
        let skel = open
            .load()
            .ctx(|| "loading BPF programs (verifier)".into())?;
        let handle = |m: &libbpf_rs::Map| {
            libbpf_rs::MapHandle::try_from(m).ctx(|| "duplicating a map handle".into())
        };
        let maps = Maps::from_handles(
            handle(&skel.maps.eg_blocklist)?,
            handle(&skel.maps.eg_allow)?,
            handle(&skel.maps.eg_quarantine)?,
            Some(handle(&skel.maps.eg_stats)?),
        );
        let mut dp = Self {
            maps,
            skel,
            attachments: Vec::new(),
            reinject: None,
            opts,
            policy: KernelPolicy::default(),
            mark: config::random_release_mark(),
        };
        // A pinned config from a previous run is the operator's live policy: keep it.
        let existing = dp.read_policy_raw()?;
        if existing.iter().all(|&b| b == 0) {
            dp.set_policy(&KernelPolicy::default())?;
        } else {
            dp.policy = KernelPolicy {
                release_mark: dp.mark,
                ..KernelPolicy::default()
            };
        }
        Ok(dp)
    }

    fn read_policy_raw(&self) -> Result<Vec<u8>> {
        Ok(self
            .skel
            .maps
            .eg_config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "reading eg_config".into())?
            .unwrap_or_default())
    }

    /// Rewrites the kernel policy; takes effect on the next packet, no reload. A release
    /// mark of 0 means this data plane's random one (drawn once at load).
    pub fn set_policy(&mut self, policy: &KernelPolicy) -> Result<()> {
        let mut policy = policy.clone();
        if policy.release_mark == 0 {
            policy.release_mark = self.mark;
        }
        let policy = &policy;
        self.skel
            .maps
            .eg_config
            .update(&0u32.to_ne_bytes(), &policy.to_bytes(), MapFlags::ANY)
            .ctx(|| "writing eg_config".into())?;
        self.policy = policy.clone();
        if self.reinject.is_some() {
            self.reinject = Some(
                reinject::Reinjector::new(policy.release_mark)
                    .ctx(|| "opening re-injection sockets".into())?,
            );
        }
        Ok(())
    }

    pub fn policy(&self) -> &KernelPolicy {
        &self.policy
    }

    /// Where a link is pinned. Looked up with or without `persist`: an agent started without
    /// it after one that persisted must take the pinned link over (and unpin it at stop), not
    /// attach a second copy beside it.
    fn link_pin(&self, name: &str) -> Option<PathBuf> {
        self.opts
            .pin_dir
            .as_ref()
            .map(|dir| dir.join("links").join(name))
    }

    /// Replaces the program of a pinned link left by a previous agent, if there is one.
    fn take_over(&self, pin: &Option<PathBuf>, prog: &libbpf_rs::Program<'_>) -> Option<Link> {
        let path = pin.as_ref()?;
        if !path.exists() {
            return None;
        }
        match Link::open(path) {
            Ok(mut link) => match link.update_prog(prog) {
                Ok(()) => Some(link),
                Err(e) => {
                    log::warn!(
                        "pinned link {} not reusable ({e}); re-attaching",
                        path.display()
                    );
                    let _ = std::fs::remove_file(path);
                    None
                }
            },
            Err(_) => None,
        }
    }

    fn keep_link(&mut self, mut link: Link, pin: Option<PathBuf>) -> Result<()> {
        if let (Some(p), true) = (&pin, self.opts.persist) {
            if link.pin_path().is_none() && !p.exists() {
                std::fs::create_dir_all(p.parent().expect("pin has a parent"))
                    .ctx(|| format!("creating {}", p.display()))?;
                link.pin(p)
                    .ctx(|| format!("pinning link {}", p.display()))?;
            }
        }
        self.attachments.push(Attachment::Link { link, pin });
        Ok(())
    }

    /// Attaches the DNS inspector to `ifindex` egress: tcx when the kernel has it, otherwise a
    /// clsact qdisc filter through netlink.
    pub fn attach_tc_egress(&mut self, ifindex: u32) -> Result<EgressAttach> {
        let pin = self.link_pin(&format!("tc-egress-{ifindex}"));
        if let Some(link) = self.take_over(&pin, &self.skel.progs.eg_tc_egress) {
            self.keep_link(link, pin)?;
            return Ok(EgressAttach::TcxTakenOver);
        }
        let prog = &self.skel.progs.eg_tc_egress;
        let opts = libbpf_rs::libbpf_sys::bpf_tcx_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_tcx_opts>() as _,
            ..Default::default()
        };
        use libbpf_rs::AsRawLibbpf;
        // SAFETY: valid program pointer and opts; libbpf returns an owned link or null.
        let raw = unsafe {
            libbpf_rs::libbpf_sys::bpf_program__attach_tcx(
                prog.as_libbpf_object().as_ptr(),
                ifindex as i32,
                &opts,
            )
        };
        if let Some(ptr) = std::ptr::NonNull::new(raw) {
            // SAFETY: ptr is a fresh link owned by us.
            let link = unsafe { Link::from_ptr(ptr) };
            self.keep_link(link, pin)?;
            return Ok(EgressAttach::Tcx);
        }
        let err = std::io::Error::last_os_error();
        log::warn!("tcx attach on ifindex {ifindex} failed ({err}): falling back to clsact");
        let mut builder = TcHookBuilder::new(prog.as_fd());
        builder
            .ifindex(ifindex as i32)
            .replace(true)
            .handle(1)
            .priority(1);
        let mut hook = builder.hook(libbpf_rs::TC_EGRESS);
        hook.create()
            .ctx(|| format!("creating clsact on ifindex {ifindex}"))?;
        hook.attach()
            .ctx(|| format!("attaching tc egress on ifindex {ifindex}"))?;
        self.attachments.push(Attachment::Clsact { hook });
        Ok(EgressAttach::Clsact)
    }

    /// Attaches the response inspector (NXDOMAIN limiter, C2 downlink) to `ifindex` ingress.
    pub fn attach_xdp(&mut self, ifindex: u32) -> Result<()> {
        let pin = self.link_pin(&format!("xdp-{ifindex}"));
        if let Some(link) = self.take_over(&pin, &self.skel.progs.eg_xdp_ingress) {
            return self.keep_link(link, pin);
        }
        match self.skel.progs.eg_xdp_ingress.attach_xdp(ifindex as i32) {
            Ok(link) => self.keep_link(link, pin),
            Err(err) => {
                // e.g. virtio-net with guest offloads on refuses native XDP: generic mode
                // runs the same program on the skb path
                log::warn!("native XDP on ifindex {ifindex} refused ({err}): using generic XDP");
                let fd = self.skel.progs.eg_xdp_ingress.as_fd();
                // SAFETY: the program fd lives as long as the skeleton, which outlives every
                // attachment (detach_all runs before the skeleton drops).
                let fd: std::os::fd::BorrowedFd<'static> = unsafe { std::mem::transmute(fd) };
                let xdp = libbpf_rs::Xdp::new(fd);
                xdp.attach(ifindex as i32, libbpf_rs::XdpFlags::SKB_MODE)
                    .ctx(|| format!("attaching generic XDP on ifindex {ifindex}"))?;
                self.attachments
                    .push(Attachment::XdpGeneric { ifindex, xdp });
                Ok(())
            }
        }
    }

    /// Attaches the four sock_addr hooks and the socket-creation hook (who owns each socket)
    /// to a cgroup v2 directory (normally the root).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        self.attach_to_cgroup(
            cgroup,
            &[
                "sock-create",
                "sendmsg4",
                "sendmsg6",
                "connect4",
                "connect6",
            ],
        )
    }

    /// Attaches the socket layer to a cgroup v2 directory (normally the root, which covers
    /// every process of the host): cgroup_skb egress judges every packet a local socket sends
    /// before any device, route, VPN or encapsulation sees it; cgroup/setsockopt keeps
    /// PACKET_QDISC_BYPASS and AF_XDP (sends that skip tc) to the agent.
    pub fn attach_socket_layer(&mut self, cgroup: &Path) -> Result<()> {
        self.attach_to_cgroup(cgroup, &["sock-egress", "setsockopt"])
    }

    /// Attaches cgroup programs by their short names, taking over pinned links of a previous
    /// agent; all or nothing is kept.
    fn attach_to_cgroup(&mut self, cgroup: &Path, names: &[&str]) -> Result<()> {
        let dir =
            std::fs::File::open(cgroup).ctx(|| format!("opening cgroup {}", cgroup.display()))?;
        use std::os::fd::AsRawFd;
        let fd = dir.as_raw_fd();
        let mut made = Vec::new();
        for &name in names {
            let p = &self.skel.progs;
            let prog = match name {
                "sock-create" => &p.eg_sock_create,
                "sendmsg4" => &p.eg_sendmsg4,
                "sendmsg6" => &p.eg_sendmsg6,
                "connect4" => &p.eg_connect4,
                "connect6" => &p.eg_connect6,
                "sock-egress" => &p.eg_sock_egress,
                "setsockopt" => &p.eg_setsockopt,
                other => return Err(DataplaneError::Other(format!("no cgroup program {other}"))),
            };
            let pin = self.link_pin(&format!("cgroup-{name}"));
            if let Some(link) = self.take_over(&pin, prog) {
                made.push((link, pin));
                continue;
            }
            let link = prog
                .attach_cgroup(fd)
                .ctx(|| format!("attaching cgroup/{name} to {}", cgroup.display()))?;
            made.push((link, pin));
        }
        for (link, pin) in made {
            self.keep_link(link, pin)?;
        }
        Ok(())
    }

    /// Attaches the inspector at netfilter LOCAL_OUT (IPv4 and IPv6) instead of tc.
    pub fn attach_netfilter(&mut self) -> Result<()> {
        for (pf, name) in [(2, "ipv4"), (10, "ipv6")] {
            let opts = libbpf_rs::NetfilterOpts {
                protocol_family: pf,
                hooknum: libbpf_rs::NF_INET_LOCAL_OUT,
                priority: -100,
                ..Default::default()
            };
            let link = self
                .skel
                .progs
                .eg_netfilter
                .attach_netfilter_with_opts(opts)
                .ctx(|| format!("attaching netfilter LOCAL_OUT {name}"))?;
            self.attachments.push(Attachment::Link { link, pin: None });
        }
        Ok(())
    }

    /// Detaches everything this process attached; persisted links stay attached and pinned.
    pub fn detach_all(&mut self) {
        let persist = self.opts.persist;
        for a in self.attachments.drain(..) {
            match a {
                Attachment::Link { mut link, pin } => {
                    if pin.is_some() && persist {
                        continue; // dropping our fd leaves the pinned link attached
                    }
                    if link.pin_path().is_some() {
                        let _ = link.unpin();
                    }
                    // a link taken over from a persisting agent's pin
                    if let Some(p) = pin.filter(|p| p.exists()) {
                        let _ = std::fs::remove_file(p);
                    }
                    let _ = link.detach();
                }
                Attachment::Clsact { mut hook } => {
                    if let Err(e) = hook.detach() {
                        log::warn!("detaching clsact filter: {e}");
                    }
                }
                Attachment::XdpGeneric { ifindex, xdp } => {
                    if let Err(e) = xdp.detach(ifindex as i32, libbpf_rs::XdpFlags::SKB_MODE) {
                        log::warn!("detaching generic XDP from ifindex {ifindex}: {e}");
                    }
                }
            }
        }
    }

    /// Makes the pin directory (and `links/`) 0700 and every pinned object 0600: bpffs checks
    /// these modes when another process opens a pin, so only root (or a holder of
    /// CAP_DAC_OVERRIDE) can reach exfilguard's maps and links. Returns the paths changed.
    pub fn restrict_pins(&self) -> Result<Vec<PathBuf>> {
        use std::os::unix::fs::PermissionsExt;
        let Some(dir) = &self.opts.pin_dir else {
            return Ok(Vec::new());
        };
        let mut done = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .ctx(|| format!("chmod 0700 {}", d.display()))?;
            done.push(d.clone());
            for entry in std::fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
                let path = entry.ctx(|| format!("reading {}", d.display()))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .ctx(|| format!("chmod 0600 {}", path.display()))?;
                    done.push(path);
                }
            }
        }
        Ok(done)
    }

    /// Ids of every map of the data plane and every link this process holds, for the guard.
    pub fn object_ids(&self) -> Vec<(guard::ObjectKind, u32)> {
        use libbpf_rs::skel::Skel;
        let mut ids = guard::map_ids(self.skel.object());
        for a in &self.attachments {
            if let Attachment::Link { link, .. } = a {
                if let Ok(i) = link.info() {
                    ids.push((guard::ObjectKind::Link, i.id));
                }
            }
        }
        ids
    }

    /// Where maps and links are pinned, if anywhere.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.opts.pin_dir.as_deref()
    }

    /// Thread-safe handles on the shared maps (blocklist, allow cache, quarantine, stats).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn block_domain(&self, domain: &str) -> Result<u64> {
        self.maps.block_domain(domain)
    }

    pub fn unblock_domain(&self, domain: &str) -> Result<()> {
        self.maps.unblock_domain(domain)
    }

    pub fn is_blocked(&self, domain: &str) -> Result<bool> {
        self.maps.is_blocked(domain)
    }

    pub fn quarantine(&self, tgid: u32) -> Result<()> {
        self.maps.quarantine(tgid)
    }

    /// Releases a held query: remembers the name as benign, issues a ticket bound to the
    /// whole message and re-injects the exact original frame where it was held.
    pub fn release(&mut self, ev: &Event) -> Result<()> {
        Self::held(ev)?;
        self.release_ticket_only(ev)?;
        self.reinject(ev, &ev.wire_frame())
    }

    /// Releases a held query as a message the agent made of it (`msg`, carried in `frame`,
    /// which stands where the held frame stood): the same question with less after it. The
    /// ticket binds that message; the held one stays refused.
    pub fn release_rewritten(&mut self, ev: &Event, frame: &[u8], msg: &[u8]) -> Result<()> {
        Self::held(ev)?;
        self.rewritten_ticket_only(ev, msg)?;
        self.reinject(ev, frame)
    }

    /// The map half of `release_rewritten`: the name cleared as `release_ticket_only` does,
    /// and a ticket for `msg` (the agent's hash of it, the programs' `msg_hash`).
    pub fn rewritten_ticket_only(&self, ev: &Event, msg: &[u8]) -> Result<()> {
        let len = u16::try_from(msg.len())
            .map_err(|_| DataplaneError::Other("rewritten message over 64 KiB".into()))?;
        self.ticket(ev, hash::message_hash(msg), len)
    }

    fn held(ev: &Event) -> Result<()> {
        if ev.action != Action::Hold || ev.packet.is_empty() {
            return Err(DataplaneError::Other(
                "only held events can be released".into(),
            ));
        }
        Ok(())
    }

    /// Sends `frame` out where `ev`'s frame was held, with the release mark.
    fn reinject(&mut self, ev: &Event, frame: &[u8]) -> Result<()> {
        if self.reinject.is_none() {
            self.reinject = Some(
                reinject::Reinjector::new(self.policy.release_mark)
                    .ctx(|| "opening re-injection sockets".into())?,
            );
        }
        let r = self.reinject.as_ref().expect("just set");
        match (ev.hook, ev.frame_l3) {
            // held before routing: routed again, out of the device the kernel had chosen
            (Hook::Netfilter | Hook::Sock, _) => r.send_ip(frame, ev.ifindex),
            // a layer-3 device (tun, wireguard, ipip): no link header to rebuild
            (_, true) => r.send_l3(ev.ifindex, frame),
            _ => r.send_frame(ev.ifindex, frame),
        }
        .ctx(|| format!("re-injecting {} on ifindex {}", ev.name_text(), ev.ifindex))
    }

    /// Lets an exact name pass from now on (a judged query that was dropped without its
    /// frame: the sender's retransmission passes).
    pub fn allow_name(&self, ev: &Event) -> Result<()> {
        self.maps.allow_name_hash(ev.name_hash)
    }

    /// The map half of `release`: allow-cache entry (unless the message carried data outside
    /// its question: then only this exact message may pass) plus a ticket for this message,
    /// valid 2 s at every hook it crosses; no re-injection.
    pub fn release_ticket_only(&self, ev: &Event) -> Result<()> {
        self.ticket(ev, ev.msg_hash, ev.msg_len)
    }

    /// `ev`'s name cleared (unless it carried data outside its question) and a ticket
    /// (`struct eg_ticket`) for the message going out in its place, valid 2 s at every hook
    /// it crosses.
    fn ticket(&self, ev: &Event, msg_hash: u64, msg_len: u16) -> Result<()> {
        if !ev.outside_question() {
            self.maps.allow_name_hash(ev.name_hash)?;
        }
        let mut ticket = [0u8; 16];
        ticket[..8].copy_from_slice(&msg_hash.to_ne_bytes());
        ticket[8..10].copy_from_slice(&ev.dns_id.to_ne_bytes());
        ticket[10..12].copy_from_slice(&msg_len.to_ne_bytes());
        let expiry = monotonic_ns() + TICKET_NS;
        self.skel
            .maps
            .eg_tickets
            .update(&ticket, &expiry.to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "writing release ticket".into())
    }

    /// Pins the carrier of a `new_carrier` query that went out (released, or reported in
    /// monitor mode) for its (client, server) pair, oldest of the 4 out: the pair's queries
    /// with it pass unheld from now on. Never called for a query the agent dropped, so a
    /// resend of it is held again. Only the agent writes `eg_carriers`.
    pub fn pin_carrier(&self, ev: &Event) -> Result<()> {
        use skel::types::eg_carriers;
        // nonzero only on a new_carrier record (Event::decode)
        if ev.carrier == 0 {
            return Ok(());
        }
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&addr16(ev.src));
        key[16..].copy_from_slice(&addr16(ev.dst));
        let map = &self.skel.maps.eg_carriers;
        let size = std::mem::size_of::<eg_carriers>();
        let slots = eg_carriers::default().h.len();
        let next_at = std::mem::offset_of!(eg_carriers, next);
        let mut v = map
            .lookup(&key, MapFlags::ANY)
            .ctx(|| "reading eg_carriers".into())?
            .unwrap_or_else(|| vec![0u8; size]);
        if v.len() != size {
            return Err(DataplaneError::Other(format!(
                "eg_carriers value of {} bytes, {size} expected",
                v.len()
            )));
        }
        let slot =
            |v: &[u8], i: usize| u64::from_ne_bytes(v[i * 8..i * 8 + 8].try_into().expect("8"));
        if (0..slots).any(|i| slot(&v, i) == ev.carrier) {
            return Ok(());
        }
        let next = u32::from_ne_bytes(v[next_at..next_at + 4].try_into().expect("4"));
        let i = next as usize % slots;
        v[i * 8..i * 8 + 8].copy_from_slice(&ev.carrier.to_ne_bytes());
        v[next_at..next_at + 4].copy_from_slice(&next.wrapping_add(1).to_ne_bytes());
        map.update(&key, &v, MapFlags::ANY)
            .ctx(|| "writing eg_carriers".into())
    }

    /// Tells the kernel the agent is alive (CLOCK_MONOTONIC now in `eg_heartbeat`); `run`
    /// does it every poll. A heartbeat older than 2 s makes `fail_open` pass what would be
    /// held, and counts `agent_down`.
    pub fn heartbeat(&self) -> Result<()> {
        let ns = monotonic_ns();
        self.skel
            .maps
            .eg_heartbeat
            .update(&0u32.to_ne_bytes(), &ns.to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "writing eg_heartbeat".into())
    }

    /// The kernel's running drop total of a flood key (`eg_quiet`), if it still has the key.
    pub fn quiet_total(&self, key: &QuietKey) -> Result<Option<u64>> {
        let v = self
            .skel
            .maps
            .eg_quiet
            .lookup(&key.to_bytes(), MapFlags::ANY)
            .ctx(|| "reading eg_quiet".into())?;
        Ok(v.and_then(|b| {
            b.get(..8)
                .map(|t| u64::from_ne_bytes(t.try_into().expect("8 bytes")))
        }))
    }

    /// Replaces the encrypted-DNS address lists (`eg_doh_addrs`: known DoH/DoT resolvers;
    /// `eg_sanctioned`: the resolvers encrypted DNS may go to) with `(network, prefix length)`
    /// entries; IPv4 is stored mapped into IPv6. Entries not in the new lists are removed
    /// after the new ones are in, so a reload never leaves a gap. Returns (doh, sanctioned)
    /// entries written.
    pub fn set_encrypted_dns_lists(
        &self,
        doh: &[(std::net::IpAddr, u8)],
        sanctioned: &[(std::net::IpAddr, u8)],
    ) -> Result<(usize, usize)> {
        let m = &self.skel.maps;
        Ok((
            replace_lpm(&m.eg_doh_addrs, doh, "eg_doh_addrs")?,
            replace_lpm(&m.eg_sanctioned, sanctioned, "eg_sanctioned")?,
        ))
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        self.maps.stats()
    }

    /// Reads events until `stop` is set, handing each wake-up's records to `handler` as one
    /// batch (which may release, block or quarantine through the `&mut Dataplane` it gets);
    /// batches let the agent classify many held names in one model call under load. The second
    /// vector holds the observation ring's records (what the kernel passed on its own, when
    /// `KernelPolicy::observe` is set). The handler also runs with empty batches when the rings
    /// stay quiet for 100 ms.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut handler: impl FnMut(&mut Dataplane, Vec<Event>, Vec<Event>),
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (otx, orx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.eg_events, move |data: &[u8]| {
                let _ = tx.send(data.to_vec());
                0
            })
            .ctx(|| "ring buffer".into())?
            .add(&self.skel.maps.eg_observe, move |data: &[u8]| {
                let _ = otx.send(data.to_vec());
                0
            })
            .ctx(|| "observation ring".into())?;
        let ring = builder.build().ctx(|| "ring buffer".into())?;
        let decode =
            |raw: Vec<u8>, how: fn(&[u8]) -> std::result::Result<Event, event::DecodeError>| {
                match how(&raw) {
                    Ok(ev) => Some(ev),
                    Err(e) => {
                        log::warn!("dropping undecodable event: {e}");
                        None
                    }
                }
            };
        while !stop.load(Ordering::Relaxed) {
            // the kernel's liveness check (fail_open passes holds when this goes stale)
            if let Err(e) = self.heartbeat() {
                log::warn!("writing the heartbeat: {e}");
            }
            match ring.poll(Duration::from_millis(100)) {
                Ok(()) => {}
                // a signal (SIGTERM to stop us) interrupts epoll: re-check the flag
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx(|| "polling ring buffer".into()),
            }
            let batch = rx
                .try_iter()
                .filter_map(|r| decode(r, Event::decode))
                .collect();
            let observed = orx
                .try_iter()
                .filter_map(|r| decode(r, Event::decode_observation))
                .collect();
            // empty batches are the handler's idle tick (at most every 100 ms)
            handler(self, batch, observed);
        }
        Ok(())
    }

    /// Size and verifier cost of every loaded program (`bpf_prog_info`), so growth is visible:
    /// the verifier refuses a program past 1 M processed instructions.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>> {
        use libbpf_rs::skel::Skel;
        program_stats(self.skel.object())
    }

    /// The raw programs, for BPF_PROG_TEST_RUN benchmarks and tests.
    pub fn test_run_tc(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration)> {
        self.test_run(&self.skel.progs.eg_tc_egress, frame, repeat)
    }

    /// One tc test run with `skb->mark` set (how a re-injected frame arrives).
    pub fn test_run_tc_marked(&self, frame: &[u8], mark: u32) -> Result<i32> {
        self.test_run_tc_ctx(frame, |ctx| {
            ctx[8..12].copy_from_slice(&mark.to_ne_bytes()); // __sk_buff.mark
        })
    }

    /// One tc test run of a GSO super-packet (`__sk_buff.gso_segs` / `gso_size` set).
    pub fn test_run_tc_gso(&self, frame: &[u8], segs: u32, size: u32) -> Result<i32> {
        self.test_run_tc_ctx(frame, |ctx| {
            let segs_at = std::mem::offset_of!(skel::types::__sk_buff, gso_segs);
            let size_at = std::mem::offset_of!(skel::types::__sk_buff, gso_size);
            ctx[segs_at..segs_at + 4].copy_from_slice(&segs.to_ne_bytes());
            ctx[size_at..size_at + 4].copy_from_slice(&size.to_ne_bytes());
        })
    }

    /// One tc test run with a `__sk_buff` context the caller fills in.
    fn test_run_tc_ctx(&self, frame: &[u8], fill: impl FnOnce(&mut [u8])) -> Result<i32> {
        let mut ctx = vec![0u8; std::mem::size_of::<skel::types::__sk_buff>()];
        fill(&mut ctx);
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            context_in: Some(&mut ctx),
            ..Default::default()
        };
        let out = self
            .skel
            .progs
            .eg_tc_egress
            .test_run(input)
            .ctx(|| "BPF_PROG_TEST_RUN".into())?;
        Ok(out.return_value as i32)
    }

    /// The socket-layer program (cgroup_skb egress) on an Ethernet frame (the harness strips
    /// the link header, as the stack has none there yet). 1: pass, 0 or 2: dropped.
    pub fn test_run_sock(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration)> {
        self.test_run(&self.skel.progs.eg_sock_egress, frame, repeat)
    }

    /// The empty calibration program (harness overhead).
    pub fn test_run_noop(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration)> {
        self.test_run(&self.skel.progs.eg_tc_noop, frame, repeat)
    }

    /// One netfilter test run at LOCAL_OUT, IPv4 (the kernel's default hook state): `packet`
    /// starts at the IP header. Verdicts: 0 drop, 1 accept.
    pub fn test_run_nf(&self, packet: &[u8]) -> Result<i32> {
        Ok(self.test_run(&self.skel.progs.eg_netfilter, packet, 1)?.0)
    }

    pub fn test_run_xdp(&self, frame: &[u8], repeat: u32) -> Result<(i32, Duration)> {
        self.test_run(&self.skel.progs.eg_xdp_ingress, frame, repeat)
    }

    fn test_run(
        &self,
        prog: &libbpf_rs::ProgramMut<'_>,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(i32, Duration)> {
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let out = prog.test_run(input).ctx(|| "BPF_PROG_TEST_RUN".into())?;
        Ok((out.return_value as i32, out.duration))
    }

    /// Drains queued events without a handler (tests use it after test runs).
    pub fn drain_events(&self) -> Result<Vec<Event>> {
        self.drain(&self.skel.maps.eg_events, Event::decode)
    }

    /// Drains queued observation records (see `KernelPolicy::observe`).
    pub fn drain_observations(&self) -> Result<Vec<Event>> {
        self.drain(&self.skel.maps.eg_observe, Event::decode_observation)
    }

    fn drain(
        &self,
        map: &libbpf_rs::Map<'_>,
        decode: fn(&[u8]) -> std::result::Result<Event, event::DecodeError>,
    ) -> Result<Vec<Event>> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |data: &[u8]| {
                let _ = tx.send(data.to_vec());
                0
            })
            .ctx(|| "ring buffer".into())?;
        let ring = builder.build().ctx(|| "ring buffer".into())?;
        ring.consume().ctx(|| "consuming ring buffer".into())?;
        drop(ring);
        Ok(rx.try_iter().filter_map(|raw| decode(&raw).ok()).collect())
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}
