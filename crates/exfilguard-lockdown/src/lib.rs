//! Lock-down of the agent once its programs are attached. Loading and attaching eBPF needs
//! CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN and friends; the steady state (ring buffer reads, map
//! updates through fds it already holds, re-injecting released frames, sinks, metrics, Kafka)
//! needs only CAP_NET_RAW and CAP_NET_ADMIN. So after attach the agent:
//!
//! 1. drops every other capability from all five sets (bounding included, so nothing it
//!    executes could regain them) and sets `no_new_privs`;
//! 2. installs a seccomp allowlist on every thread (TSYNC): the syscalls of the steady state,
//!    with `bpf(2)` limited to map and link-detach commands (no program load or attach, no
//!    fd-by-id lookups of other programs' objects), `socket(2)` to the families it uses,
//!    `ioctl(2)` and `prctl(2)` to a few requests; no `execve`, `ptrace`, `mount`, module or
//!    namespace calls.
//!
//! Capabilities are per thread in Linux: [`drop_capabilities`] must run before the agent
//! starts its service threads (they inherit the reduced sets); [`threads_over`] checks.
//!
//! The resolver front (`exfilguard resolve`) has its own, narrower [`Profile`]: it loads no
//! eBPF, so it drops to nothing (or CAP_NET_BIND_SERVICE alone for a port below 1024) before
//! its first thread, and its filter has no `bpf(2)` and no packet or netlink-route sockets.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use caps::Capability as Cap;

/// What the steady state keeps: raw/packet sockets and SO_MARK for re-injecting released
/// frames, netlink for detaching clsact/generic-XDP attachments at shutdown.
pub const KEEP: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// The capability bit mask of [`KEEP`], as `/proc/PID/status` prints it (`CapEff`).
pub fn keep_mask() -> u64 {
    mask_of(&KEEP)
}

/// The bit mask of `caps`, as `/proc/PID/status` prints it.
pub fn mask_of(caps: &[Capability]) -> u64 {
    caps.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
}

/// Whose steady state a seccomp filter allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The eBPF agent (`run`, `protect`): map commands on `bpf(2)`, packet sockets for
    /// re-injection, netlink for detaching at shutdown.
    Agent,
    /// The resolver front (`resolve`): UDP/TCP to clients, upstreams, the model runtime and
    /// Kafka, the RPZ listener; no `bpf(2)`, no packet sockets.
    Resolver,
}

/// What a syscall outside the allowlist gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Fails with EPERM (the agent logs the error it causes and keeps protecting).
    #[default]
    Enforce,
    /// Kills the agent (the pinned maps and, with `persist`, the programs keep enforcing).
    Kill,
    /// Allowed, and logged by the kernel audit (`type=1326` in dmesg): for finding what a new
    /// environment needs before enforcing.
    Log,
    /// No filter.
    Off,
}

/// Drops every capability but [`KEEP`] from the calling thread's bounding (when it holds
/// CAP_SETPCAP), inheritable, ambient, permitted and effective sets, and sets `no_new_privs`. Threads that already exist
/// keep theirs: call it before spawning service threads.
pub fn drop_capabilities() -> Result<()> {
    drop_capabilities_to(&KEEP)
}

/// [`drop_capabilities`] keeping `keep` (possibly nothing) instead of [`KEEP`].
pub fn drop_capabilities_to(keep: &[Capability]) -> Result<()> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // Lowering the bounding set needs CAP_SETPCAP (it goes last, with the effective set). A
    // service manager that withheld it (the systemd unit) has already bounded the set; with
    // no_new_privs and no execve under the filter nothing could regain the rest anyway.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)
                    .with_context(|| format!("dropping {cap} from the bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    set_no_new_privs()?;
    let left = caps::read(None, CapSet::Effective).context("reading capabilities")?;
    if !left.is_subset(&keep) {
        bail!("capabilities still effective after the drop: {left:?}");
    }
    Ok(())
}

fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One thread's view from `/proc/self/task/TID/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadState {
    pub tid: u32,
    pub cap_eff: u64,
    pub cap_prm: u64,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub no_new_privs: bool,
}

/// Parses the fields of a `/proc/…/status` text this crate checks.
pub fn parse_status(tid: u32, text: &str) -> Option<ThreadState> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    Some(ThreadState {
        tid,
        cap_eff: u64::from_str_radix(&field("CapEff:")?, 16).ok()?,
        cap_prm: u64::from_str_radix(&field("CapPrm:")?, 16).ok()?,
        seccomp: field("Seccomp:")?.parse().ok()?,
        no_new_privs: field("NoNewPrivs:")? == "1",
    })
}

/// Every thread of process `pid` (`"self"` for this one).
pub fn threads(pid: &str) -> Result<Vec<ThreadState>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // a thread that exited between readdir and read is not an error
        if let Ok(text) = std::fs::read_to_string(entry.path().join("status")) {
            if let Some(t) = parse_status(tid, &text) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// This process's threads that hold more than [`KEEP`] (should be none after the drop).
pub fn threads_over() -> Result<Vec<ThreadState>> {
    threads_over_mask(keep_mask())
}

/// This process's threads that hold a capability outside `mask`.
pub fn threads_over_mask(mask: u64) -> Result<Vec<ThreadState>> {
    Ok(threads("self")?
        .into_iter()
        .filter(|t| (t.cap_eff | t.cap_prm) & !mask != 0)
        .collect())
}

// bpf(2) commands of the steady state (enum bpf_cmd, include/uapi/linux/bpf.h)
const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;
const BPF_MAP_GET_NEXT_KEY: u64 = 4;
const BPF_OBJ_GET_INFO_BY_FD: u64 = 15;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: u64 = 21;
const BPF_MAP_LOOKUP_BATCH: u64 = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: u64 = 25;
const BPF_MAP_UPDATE_BATCH: u64 = 26;
const BPF_MAP_DELETE_BATCH: u64 = 27;
const BPF_LINK_DETACH: u64 = 34;

/// The syscalls allowed without conditions.
fn plain_syscalls() -> Vec<i64> {
    use libc::*;
    let mut v = vec![
        // memory
        SYS_brk,
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_madvise,
        SYS_mremap,
        // threads, signals, time
        SYS_futex,
        SYS_clone,
        SYS_clone3,
        SYS_set_robust_list,
        SYS_get_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_gettid,
        SYS_getpid,
        SYS_getppid,
        SYS_tgkill,
        SYS_exit,
        SYS_exit_group,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_restart_syscall,
        SYS_sigaltstack,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_gettimeofday,
        SYS_getrandom,
        SYS_prlimit64,
        SYS_getrusage,
        SYS_uname,
        SYS_sysinfo,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_capget,
        SYS_membarrier,
        // files: sinks, spool, rotation, /proc reads, config and model reload
        SYS_openat,
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_close,
        SYS_lseek,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_statfs,
        SYS_fstatfs,
        SYS_fcntl,
        SYS_flock,
        SYS_fsync,
        SYS_fdatasync,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_renameat,
        SYS_renameat2,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_getcwd,
        SYS_dup,
        SYS_dup3,
        SYS_pipe2,
        SYS_eventfd2,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        // polling: the ring buffers (epoll), tokio, librdkafka
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_ppoll,
        SYS_pselect6,
        // sockets: metrics, Kafka, re-injection, netlink at shutdown
        SYS_socketpair,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept4,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendmmsg,
        SYS_recvmmsg,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_getsockname,
        SYS_getpeername,
        SYS_shutdown,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_rename,
        SYS_unlink,
        SYS_mkdir,
        SYS_readlink,
        SYS_poll,
        SYS_select,
        SYS_epoll_wait,
        SYS_epoll_create,
        SYS_accept,
        SYS_pipe,
        SYS_dup2,
        SYS_getdents,
        SYS_arch_prctl,
        SYS_time,
    ]);
    v
}

fn arg_in(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|&v| {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
            Ok(SeccompRule::new(vec![c])?)
        })
        .collect()
}

/// The agent's allowlist as rules: plain syscalls, then those limited by an argument.
pub fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    rules_for(Profile::Agent)
}

/// The allowlist of `profile` as rules.
pub fn rules_for(profile: Profile) -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        plain_syscalls().into_iter().map(|s| (s, vec![])).collect();
    if profile == Profile::Agent {
        rules.insert(
            libc::SYS_bpf,
            arg_in(
                0,
                &[
                    BPF_MAP_LOOKUP_ELEM,
                    BPF_MAP_UPDATE_ELEM,
                    BPF_MAP_DELETE_ELEM,
                    BPF_MAP_GET_NEXT_KEY,
                    BPF_OBJ_GET_INFO_BY_FD,
                    BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                    BPF_MAP_LOOKUP_BATCH,
                    BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                    BPF_MAP_UPDATE_BATCH,
                    BPF_MAP_DELETE_BATCH,
                    BPF_LINK_DETACH,
                ],
            )?,
        );
    }
    // netlink stays for the resolver too: glibc's getaddrinfo (broker and runtime host
    // names) asks NETLINK_ROUTE for the local addresses
    let families: &[i32] = match profile {
        Profile::Agent => &[
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            libc::AF_PACKET,
        ],
        Profile::Resolver => &[
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ],
    };
    let families: Vec<u64> = families.iter().map(|&f| f as u64).collect();
    rules.insert(libc::SYS_socket, arg_in(0, &families)?);
    // non-blocking and close-on-exec toggles, terminal checks (log colours), interface names
    let ioctls = [
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::FIONCLEX,
        libc::FIONREAD,
        libc::TCGETS,
        libc::TIOCGWINSZ,
        libc::SIOCGIFINDEX,
        libc::SIOCGIFNAME,
    ];
    // the request type is c_ulong on glibc, c_int on musl
    #[allow(clippy::unnecessary_cast)]
    let ioctls = ioctls.map(|r| r as u64);
    rules.insert(libc::SYS_ioctl, arg_in(1, &ioctls)?);
    // thread names (librdkafka, tokio) and the bounding-set read of capability checks
    let prctls = [libc::PR_SET_NAME, libc::PR_GET_NAME, libc::PR_CAPBSET_READ];
    rules.insert(libc::SYS_prctl, arg_in(0, &prctls.map(|p| p as u64))?);
    Ok(rules)
}

/// The agent's compiled filter for `mode` (`None` for [`SeccompMode::Off`]).
pub fn filter(mode: SeccompMode) -> Result<Option<BpfProgram>> {
    filter_for(mode, Profile::Agent)
}

/// The compiled filter of `profile` for `mode`.
pub fn filter_for(mode: SeccompMode, profile: Profile) -> Result<Option<BpfProgram>> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .context("seccomp: unsupported architecture")?;
    let f = SeccompFilter::new(rules_for(profile)?, mismatch, SeccompAction::Allow, arch)
        .context("building the seccomp filter")?;
    Ok(Some(f.try_into().context("compiling the seccomp filter")?))
}

/// Installs the agent's allowlist on every thread of the process (new threads inherit it).
pub fn apply_seccomp(mode: SeccompMode) -> Result<()> {
    apply_seccomp_for(mode, Profile::Agent)
}

/// Installs `profile`'s allowlist on every thread of the process.
pub fn apply_seccomp_for(mode: SeccompMode, profile: Profile) -> Result<()> {
    if let Some(prog) = filter_for(mode, profile)? {
        set_no_new_privs()?;
        seccompiler::apply_filter_all_threads(&prog).context("installing the seccomp filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn status_parsing() {
        let text = "Name:\tx\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\n\
                    NoNewPrivs:\t1\nSeccomp:\t2\n";
        let t = parse_status(7, text).unwrap();
        assert_eq!(t.cap_eff, keep_mask());
        assert_eq!(t.seccomp, 2);
        assert!(t.no_new_privs);
        assert!(parse_status(7, "Name:\tx\n").is_none());
    }

    #[test]
    fn every_mode_compiles() {
        for m in [SeccompMode::Enforce, SeccompMode::Kill, SeccompMode::Log] {
            assert!(!filter(m).unwrap().unwrap().is_empty());
            assert!(!filter_for(m, Profile::Resolver)
                .unwrap()
                .unwrap()
                .is_empty());
        }
        assert!(filter(SeccompMode::Off).unwrap().is_none());
        let agent = rules_for(Profile::Agent).unwrap();
        let resolver = rules_for(Profile::Resolver).unwrap();
        assert!(agent.contains_key(&libc::SYS_bpf));
        assert!(
            !resolver.contains_key(&libc::SYS_bpf),
            "the front loads no eBPF"
        );
        assert!(resolver.len() < agent.len());
    }

    #[test]
    fn resolver_filter_refuses_bpf_and_packet_sockets() {
        in_child("tests::child_resolver");
    }

    #[test]
    fn child_resolver() {
        if std::env::var(CHILD).is_err() {
            return;
        }
        apply_seccomp_for(SeccompMode::Enforce, Profile::Resolver).unwrap();
        assert!(threads("self").unwrap().iter().all(|t| t.seccomp == 2));
        // what a front does: UDP and TCP on loopback, from another thread too
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = u.local_addr().unwrap();
        std::thread::spawn(move || {
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(b"q", to).unwrap();
        })
        .join()
        .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(u.recv_from(&mut buf).unwrap().0, 1);
        let l = std::net::TcpListener::bind("[::1]:0")
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // refused with EPERM: every bpf(2) command (even a map lookup), packet sockets, exec
        for cmd in [1u64, 5] {
            // SAFETY: raw syscall with null arguments; must fail.
            let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::null::<u8>(), 0) };
            assert_eq!(rc, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EPERM),
                "bpf cmd {cmd}"
            );
        }
        // SAFETY: socket(2) with integer arguments.
        let pkt = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert_eq!(pkt, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(Command::new("/bin/true").status().is_err());
    }

    #[test]
    fn resolver_keeps_at_most_net_bind_service() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("!!! resolver capability drop not tested: needs root !!!");
            return;
        }
        in_child("tests::child_resolver_caps");
    }

    #[test]
    fn child_resolver_caps() {
        if std::env::var(CHILD).is_err() {
            return;
        }
        // a low port needs the one capability; binding it still works after the drop
        drop_capabilities_to(&[Capability::CAP_NET_BIND_SERVICE]).unwrap();
        let me = parse_status(
            0,
            &std::fs::read_to_string("/proc/thread-self/status").unwrap(),
        )
        .unwrap();
        assert_eq!(me.cap_eff, mask_of(&[Capability::CAP_NET_BIND_SERVICE]));
        // this thread is within the mask (the harness's other threads started before the drop)
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let over = threads_over_mask(me.cap_eff).unwrap();
        assert!(over.iter().all(|t| t.tid != tid), "{over:?}");
        std::net::UdpSocket::bind("127.0.0.1:853").unwrap();
        // then nothing at all: a low port is refused, a high one is fine
        drop_capabilities_to(&[]).unwrap();
        let me = parse_status(
            0,
            &std::fs::read_to_string("/proc/thread-self/status").unwrap(),
        )
        .unwrap();
        assert_eq!((me.cap_eff, me.cap_prm), (0, 0));
        let low = std::net::UdpSocket::bind("127.0.0.1:854");
        assert_eq!(
            low.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    }

    const CHILD: &str = "EXFILGUARD_LOCKDOWN_CHILD";

    /// Runs `name` in a fresh copy of this test binary (a filter cannot be taken off again).
    fn in_child(name: &str) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child {name} failed:\n{text}");
        assert!(text.contains("1 passed"), "child ran nothing:\n{text}");
    }

    #[test]
    fn enforced_filter_allows_the_steady_state_and_refuses_the_rest() {
        in_child("tests::child_enforced");
    }

    #[test]
    fn child_enforced() {
        if std::env::var(CHILD).is_err() {
            return; // run through in_child only
        }
        apply_seccomp(SeccompMode::Enforce).unwrap();
        let me = threads("self").unwrap();
        assert!(
            me.iter().all(|t| t.seccomp == 2 && t.no_new_privs),
            "{me:?}"
        );
        // the steady state: files, threads, loopback TCP, a UDP socket
        let dir = std::env::temp_dir().join(format!("eg-lockdown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"x").unwrap();
        std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || l.accept().map(|_| ()));
        std::net::TcpStream::connect(addr).unwrap();
        t.join().unwrap().unwrap();
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // refused: exec, a new BPF program, a socket family the agent never opens
        let exec = Command::new("/bin/true").status();
        assert!(exec.is_err(), "exec must fail: {exec:?}");
        // SAFETY: raw syscalls with null/invalid arguments; each must fail with EPERM.
        let prog_load = unsafe { libc::syscall(libc::SYS_bpf, 5, std::ptr::null::<u8>(), 0) };
        assert_eq!(prog_load, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        let alg = unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) };
        assert_eq!(alg, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
        let ptrace = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        assert_eq!(ptrace, -1);
        // a map command passes the filter (EBADF from the kernel, not EPERM from seccomp)
        let lookup = unsafe { libc::syscall(libc::SYS_bpf, 1, std::ptr::null::<u8>(), 0) };
        assert_eq!(lookup, -1);
        assert_ne!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn dropped_capabilities_stay_dropped() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("!!! capability drop not tested: needs root !!!");
            return;
        }
        in_child("tests::child_caps");
    }

    #[test]
    fn child_caps() {
        if std::env::var(CHILD).is_err() {
            return;
        }
        drop_capabilities().unwrap();
        let mine = parse_status(
            0,
            &std::fs::read_to_string("/proc/thread-self/status").unwrap(),
        )
        .unwrap();
        assert_eq!(mine.cap_eff, keep_mask(), "{mine:?}");
        assert_eq!(mine.cap_prm, keep_mask());
        assert!(mine.no_new_privs);
        // a thread spawned after the drop inherits it
        let spawned = std::thread::spawn(|| {
            parse_status(
                0,
                &std::fs::read_to_string("/proc/thread-self/status").unwrap(),
            )
            .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(spawned.cap_eff, keep_mask());
        // CAP_SYS_ADMIN is gone: mounting fails
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/proc/self".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }
}
