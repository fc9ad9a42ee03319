//! Facts about the host the agent needs once or rarely: its name, the default-route
//! interface, the cgroup2 root, interface and cgroup names for events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer and length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The interface of the IPv4 default route (then IPv6), from /proc/net.
pub fn default_route_interface() -> Option<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            return Some(f[0].to_string());
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 10
            && f[0] == "00000000000000000000000000000000"
            && f[1] == "00"
            && f[9] != "lo"
        {
            return Some(f[9].to_string());
        }
    }
    None
}

/// Every interface of this network namespace, loopback included (AF_PACKET on lo reaches a
/// local stub resolver), as (name, ifindex): what the agent guards at tc egress when
/// `dataplane.interfaces` is empty. From if_nameindex(3),
/// which asks the kernel in the caller's namespace (/sys may show another one's).
pub fn egress_interfaces() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return out;
    }
    let mut p = list;
    // SAFETY: walks the array up to its terminating entry; names are NUL-terminated.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        anyhow::bail!("no interface {name}: {}", std::io::Error::last_os_error());
    }
    Ok(idx)
}

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

pub fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
}

/// cgroup id (the cgroup directory's inode) → path below the cgroup2 root, e.g.
/// `system.slice/docker-3f2a….scope` or `kubepods.slice/…/cri-containerd-….scope`: the
/// container or unit of the sending process. Rescans at most every 5 s, at most 20 000 dirs.
pub struct CgroupNames {
    root: Option<PathBuf>,
    map: HashMap<u64, String>,
    scanned: Option<Instant>,
}

impl CgroupNames {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            map: HashMap::new(),
            scanned: None,
        }
    }

    pub fn name(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.map.contains_key(&id)
            && self
                .scanned
                .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            self.rescan();
        }
        self.map.get(&id).filter(|p| !p.is_empty()).cloned()
    }

    fn rescan(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.scanned = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.map.clear();
        let mut stack = vec![(root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if self.map.len() > 20_000 {
                break;
            }
            if let Ok(md) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
                self.map
                    .insert(md.ino(), rel.to_string_lossy().into_owned());
            }
            if depth >= 8 {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
}

/// Subordinate uid ranges (`/etc/subuid`, `owner:first:count`): the uids a user may map into
/// its user namespaces (rootless containers) without privilege. Budgets kept per user fold
/// them into their owner, so holding a range is not holding many users. Read as shadow's
/// newuidmap reads it (owner by name first, then as a uid; numbers as `strtoul(…, 0)`:
/// hex, octal), and again when the file changes (checked every 30 s).
#[derive(Debug, Default)]
pub struct SubordinateIds {
    /// (first, count, owner's uid), as listed.
    ranges: Vec<(u32, u32, u32)>,
    path: Option<PathBuf>,
    modified: Option<std::time::SystemTime>,
    checked: Option<Instant>,
}

impl SubordinateIds {
    /// Reads `path` (absent: no ranges); owners are names (resolved through NSS) or uids.
    pub fn load(path: &Path) -> Self {
        let mut ids = Self {
            path: Some(path.to_path_buf()),
            ..Self::default()
        };
        ids.reload();
        ids
    }

    fn reload(&mut self) {
        let Some(path) = &self.path else { return };
        self.checked = Some(Instant::now());
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == self.modified {
            return;
        }
        self.modified = modified;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        self.ranges = Self::parse(&text, uid_of_name).ranges;
        if !self.ranges.is_empty() {
            tracing::info!(
                "{} subordinate uid ranges in {}: folded into their owners for the carrier budgets",
                self.ranges.len(),
                path.display()
            );
        }
    }

    /// Parses subuid lines, resolving owner names with `uid_of`; malformed lines and unknown
    /// owners are skipped (with a warning: their uids count as users of their own).
    pub fn parse(text: &str, uid_of: impl Fn(&str) -> Option<u32>) -> Self {
        let mut ranges = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(':').collect();
            let parsed = match f.as_slice() {
                [owner, first, count] => strtoul(first)
                    .zip(strtoul(count))
                    .zip(uid_of(owner).or_else(|| owner.parse::<u32>().ok())),
                _ => None,
            };
            match parsed {
                Some(((first, count), owner)) => ranges.push((first, count, owner)),
                None => tracing::warn!(
                    "subordinate uid line skipped (its uids are not folded into an owner): {line:?}"
                ),
            }
        }
        Self {
            ranges,
            ..Self::default()
        }
    }

    /// The user a budget charges for `uid`: the owner of a range holding it, else itself.
    pub fn owner(&mut self, uid: u32) -> u32 {
        if self
            .checked
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.reload();
        }
        self.ranges
            .iter()
            .find(|(first, count, _)| {
                uid >= *first && u64::from(uid) < u64::from(*first) + u64::from(*count)
            })
            .map_or(uid, |r| r.2)
    }
}

/// A number as C's `strtoul(s, …, 0)` reads it whole: `0x` hex, a leading `0` octal, else
/// decimal (shadow's subuid parser).
fn strtoul(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// A user name's uid through NSS (`getpwnam_r`).
fn uid_of_name(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16_384];
    // SAFETY: zeroed passwd is a valid out-parameter; buffers outlive the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid C string, out-parameters and buffer of the given length.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
}

#[cfg(test)]
mod tests {
    use super::{uid_of_name, SubordinateIds};
    use std::time::{Duration, Instant};

    #[test]
    fn host_facts() {
        assert!(!super::hostname().is_empty());
        assert_eq!(
            super::ifname(super::ifindex("lo").unwrap()).as_deref(),
            Some("lo")
        );
        assert!(super::ifindex("no-such-if0").is_err());
    }

    /// Every uid of a subordinate range charges its owner (rootless containers are one user);
    /// uids outside the ranges, and lines that do not parse, change nothing.
    #[test]
    fn subordinate_uids_fold_into_their_owner() {
        let mut ids = SubordinateIds::parse(
            "# ranges\nalice:100000:65536\n1001:165536:65536\nghost:300000:10\nbroken line\n\
             bob:x:1\n 7:0x40000:0200\n",
            |n| match n {
                "alice" => Some(1000),
                "7" => Some(1007), // a user named "7": the name comes first, as in shadow
                _ => None,
            },
        );
        assert_eq!(ids.ranges.len(), 3);
        for (uid, owner) in [
            (100_000, 1000),
            (165_535, 1000),
            (165_536, 1001),
            (231_071, 1001),
            (0x40000, 1007),
            (0x40000 + 127, 1007),
        ] {
            assert_eq!(ids.owner(uid), owner, "{uid}");
        }
        for uid in [0, 1000, 99_999, 231_072, 0x40000 + 128, 300_000, u32::MAX] {
            assert_eq!(ids.owner(uid), uid, "{uid}");
        }
        // the file changed: read again (30 s on, or at once when never checked)
        let f = std::env::temp_dir().join(format!("eg-subuid-{}", std::process::id()));
        std::fs::write(&f, "root:500000:10\n").unwrap();
        let mut ids = SubordinateIds::load(&f);
        assert_eq!(ids.owner(500_000), 0);
        std::fs::write(&f, "root:600000:10\n").unwrap();
        ids.checked = Some(Instant::now() - Duration::from_secs(31));
        ids.modified = None;
        assert_eq!(ids.owner(600_000), 0, "not read again");
        assert_eq!(ids.owner(500_000), 500_000);
        let _ = std::fs::remove_file(&f);
        assert_eq!(uid_of_name("root"), Some(0));
        assert_eq!(uid_of_name("no-such-user-exfilguard"), None);
    }
}
