//! Kernel feature probes, run once at start-up. Each missing feature gets one clear log line
//! and a fallback; none of the optional ones is needed for protection.

use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Features {
    pub kernel: String,
    pub btf: bool,
    /// tcx links (6.6+): egress programs attached as links, otherwise netlink clsact.
    pub tcx: bool,
    pub netfilter_link: bool,
    pub xdp: bool,
    pub cgroup_sock_addr: bool,
    pub tracefs: bool,
    /// Optional observability hooks; the data plane does not depend on them.
    pub kprobe: bool,
    pub fentry: bool,
    pub bpf_lsm: bool,
    pub bpffs: bool,
}

fn prog_type(t: libbpf_rs::libbpf_sys::bpf_prog_type) -> bool {
    // SAFETY: libbpf loads a trivial program of this type; a null opts pointer is allowed.
    unsafe { libbpf_rs::libbpf_sys::libbpf_probe_bpf_prog_type(t, std::ptr::null()) == 1 }
}

fn is_mount(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _dev = f.next();
                f.next() == Some(path) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The kernel's active LSM list, mounting securityfs first when nothing has.
fn active_lsms() -> String {
    const LIST: &str = "/sys/kernel/security/lsm";
    if !Path::new(LIST).exists() && !is_mount("/sys/kernel/security", "securityfs") {
        // SAFETY: constant NUL-terminated strings; a failed mount leaves the list unread.
        unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                0,
                std::ptr::null(),
            );
        }
    }
    std::fs::read_to_string(LIST).unwrap_or_default()
}

impl Features {
    /// Kernel new enough for tcx links (6.6).
    pub fn tcx_possible() -> bool {
        let k = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(k.trim(), 6, 6)
    }

    pub fn probe() -> Self {
        use libbpf_rs::libbpf_sys as sys;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let lsm = active_lsms();
        Self {
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            tcx: kernel_at_least(&kernel, 6, 6) && prog_type(sys::BPF_PROG_TYPE_SCHED_CLS),
            netfilter_link: prog_type(sys::BPF_PROG_TYPE_NETFILTER),
            xdp: prog_type(sys::BPF_PROG_TYPE_XDP),
            cgroup_sock_addr: prog_type(sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR),
            tracefs: is_mount("/sys/kernel/tracing", "tracefs")
                || is_mount("/sys/kernel/debug/tracing", "tracefs"),
            kprobe: Path::new("/sys/kernel/tracing/kprobe_events").exists()
                && prog_type(sys::BPF_PROG_TYPE_KPROBE),
            fentry: prog_type(sys::BPF_PROG_TYPE_TRACING),
            bpf_lsm: lsm.split(',').any(|l| l.trim() == "bpf"),
            bpffs: is_mount("/sys/fs/bpf", "bpf"),
            kernel,
        }
    }

    /// One line per missing feature, with what happens instead.
    pub fn fallbacks(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut miss = |ok: bool, what: &str| {
            if !ok {
                v.push(what.to_string());
            }
        };
        miss(
            self.btf,
            "no kernel BTF: CO-RE relocations will fail on this kernel",
        );
        miss(
            self.tcx,
            "tcx unavailable: tc egress attaches through netlink clsact",
        );
        miss(
            self.netfilter_link,
            "netfilter BPF links unavailable: use the tc attach point",
        );
        miss(
            self.xdp,
            "XDP unavailable: no ingress response inspection or NXDOMAIN limiter",
        );
        miss(
            self.cgroup_sock_addr,
            "cgroup sock_addr hooks unavailable: events carry no process",
        );
        miss(self.tracefs, "tracefs not mounted: no tracepoint diagnostics (mount -t tracefs nodev /sys/kernel/tracing)");
        miss(
            self.kprobe,
            "kprobes unavailable: optional kernel-function diagnostics off",
        );
        miss(
            self.fentry,
            "fentry/fexit unavailable: optional kernel-function diagnostics off",
        );
        miss(
            self.bpf_lsm,
            "BPF LSM not active: no guard against other root processes detaching exfilguard's programs or writing its maps (pins are 0600 root-only)",
        );
        miss(
            self.bpffs,
            "bpffs not mounted at /sys/fs/bpf: mounting it to pin maps",
        );
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_compare() {
        assert!(super::kernel_at_least("6.18.44-fc", 6, 6));
        assert!(!super::kernel_at_least("6.1.0-18-amd64", 6, 6));
        assert!(super::kernel_at_least("7.0.1", 6, 6));
    }
}
