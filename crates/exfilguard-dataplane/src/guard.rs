//! The BPF LSM guard (`bpf/guard.bpf.c`): while the agent runs, only the agent and processes
//! running its executable file (the `exfilguard` commands) may get fds on exfilguard's maps and
//! links, touch, rename, mount over or unmount its pin directory, or ptrace the agent; and
//! only the agent may set `PACKET_QDISC_BYPASS` or `SOL_XDP` options, from 32-bit syscalls
//! too (which skip the data plane's cgroup/setsockopt program). The guard is not pinned: it
//! goes with the agent's fds, so a killed agent (or one whose executable changed in an upgrade)
//! never locks its successor out.

use crate::{Ctx, DataplaneError, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/guard.skel.rs"));
}

/// Kinds of protected objects, as `struct guard_key.kind` in the BPF program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Map = 1,
    Link = 3,
}

/// Refusal counters (`eg_guard_refused`), in index order.
pub const REFUSAL_NAMES: [&str; 6] = ["map_fd", "link_fd", "pin_dir", "ptrace", "mount", "sockopt"];

pub struct Guard {
    skel: skel::GuardSkel<'static>,
    links: Vec<Link>,
}

fn libbpf_to_debug(_: libbpf_rs::PrintLevel, msg: String) {
    log::debug!(target: "libbpf", "{}", msg.trim_end());
}

/// (Map, id) of every map of a loaded object.
pub(crate) fn map_ids(obj: &libbpf_rs::Object) -> Vec<(ObjectKind, u32)> {
    obj.maps()
        .filter_map(|m| m.info().ok())
        .map(|i| (ObjectKind::Map, i.info.id))
        .collect()
}

/// `dev_t` as the kernel stores it in `super_block.s_dev` (MKDEV: major << 20 | minor).
fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | minor
}

impl Guard {
    /// Loads and attaches the guard over `pin_dir` (which must exist) for this process and
    /// its executable, and protects `objects` and the guard's own maps and links.
    pub fn attach(pin_dir: &Path, objects: &[(ObjectKind, u32)]) -> Result<Self> {
        let dir = std::fs::metadata(pin_dir).ctx(|| format!("stat {}", pin_dir.display()))?;
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = skel::GuardSkelBuilder::default()
            .open(storage)
            .ctx(|| "opening the guard's BPF object".into())?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| DataplaneError::Other("guard object has no .rodata".into()))?;
        ro.agent_tgid = std::process::id();
        // bpffs has no subvolumes or overlays: its st_dev is the superblock's s_dev
        ro.dir_dev = kernel_dev(dir.dev());
        ro.dir_ino = dir.ino();
        // A kernel without usable BPF LSM refuses the load; libbpf's own lines about it
        // ("try raising 'ulimit -l'") would mislead, so they go to the debug log and the
        // caller logs one line saying why.
        let prev = libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_to_debug)));
        let loaded = open.load();
        libbpf_rs::set_print(prev);
        let skel = loaded.ctx(|| "loading the BPF LSM guard (verifier)".into())?;
        let mut links = Vec::new();
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            links.push(
                prog.attach_lsm()
                    .ctx(|| format!("attaching the BPF LSM guard ({name})"))?,
            );
        }
        let guard = Self { skel, links };
        let mut own = map_ids(guard.skel.object());
        for l in &guard.links {
            own.push((
                ObjectKind::Link,
                l.info().ctx(|| "guard link id".into())?.id,
            ));
        }
        // these map updates are the agent's first bpf() calls under the guard: it learns the
        // agent's executable from them
        guard.protect(&own)?;
        guard.protect(objects)?;
        let learnt = guard
            .skel
            .maps
            .eg_guard_self
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "reading eg_guard_self".into())?
            .is_some_and(|v| {
                let at = std::mem::offset_of!(skel::types::exe_ident, learnt);
                v.get(at..at + 4)
                    .is_some_and(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()) == 1)
            });
        if !learnt {
            return Err(DataplaneError::Other(
                "the guard did not learn the agent's executable (no mm?)".into(),
            ));
        }
        Ok(guard)
    }

    /// Adds objects (say, links attached after start) to the protected set.
    pub fn protect(&self, objects: &[(ObjectKind, u32)]) -> Result<()> {
        for &(kind, id) in objects {
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&(kind as u32).to_ne_bytes());
            key[4..].copy_from_slice(&id.to_ne_bytes());
            self.skel
                .maps
                .eg_guard_ids
                .update(&key, &[1], MapFlags::ANY)
                .ctx(|| format!("protecting {kind:?} {id}"))?;
        }
        Ok(())
    }

    /// Refusals since the guard was loaded, as [`REFUSAL_NAMES`].
    pub fn refused(&self) -> [u64; REFUSAL_NAMES.len()] {
        let mut out = [0u64; REFUSAL_NAMES.len()];
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(Some(v)) = self
                .skel
                .maps
                .eg_guard_refused
                .lookup(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            {
                *o = u64::from_ne_bytes(v[..8].try_into().unwrap_or_default());
            }
        }
        out
    }

    /// The refusal counters as one log-friendly line: "map_fd=2 link_fd=0 …".
    pub fn refusal_summary(&self) -> String {
        REFUSAL_NAMES
            .iter()
            .zip(self.refused())
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Size and verifier cost of the guard's programs.
    pub fn program_stats(&self) -> Result<Vec<crate::ProgramStats>> {
        crate::program_stats(self.skel.object())
    }

    /// Ids of the guard's own links.
    pub fn link_ids(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter_map(|l| l.info().ok().map(|i| i.id))
            .collect()
    }
}
