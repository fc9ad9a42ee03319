//! Owned handles on the maps the agent's other threads (fleet blocklist feed, metrics) and the
//! operator's `exfilguard block` command touch. Each is a dup of the map fd, so they are `Send`
//! and outlive nothing: the kernel map lives as long as any fd or pin holds it.

use crate::{hash, now_secs, Ctx, DataplaneError, Result, STAT_NAMES};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use std::path::Path;

pub struct Maps {
    blocklist: MapHandle,
    allow: MapHandle,
    quarantine: MapHandle,
    /// Not pinned: only present when the handles come from a loaded data plane.
    stats: Option<MapHandle>,
}

impl Maps {
    pub(crate) fn from_handles(
        blocklist: MapHandle,
        allow: MapHandle,
        quarantine: MapHandle,
        stats: Option<MapHandle>,
    ) -> Self {
        Self {
            blocklist,
            allow,
            quarantine,
            stats,
        }
    }

    /// The pinned maps of a running (or stopped) agent, e.g. for `exfilguard block`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let p = dir.join(name);
            MapHandle::from_pinned_path(&p).ctx(|| format!("opening pinned map {}", p.display()))
        };
        Ok(Self::from_handles(
            open("eg_blocklist")?,
            open("eg_allow")?,
            open("eg_quarantine")?,
            None,
        ))
    }

    pub fn try_clone(&self) -> Result<Self> {
        let dup = |m: &MapHandle| MapHandle::try_from(m).ctx(|| "duplicating a map handle".into());
        Ok(Self {
            blocklist: dup(&self.blocklist)?,
            allow: dup(&self.allow)?,
            quarantine: dup(&self.quarantine)?,
            stats: self.stats.as_ref().map(dup).transpose()?,
        })
    }

    fn block_key(domain: &str) -> Result<u64> {
        // the kernel matches suffixes of two or more labels: a one-label entry (a TLD) would
        // be accepted and never match
        let wire = hash::wire_from_dotted(domain);
        hash::labels(&wire)
            .filter(|l| l.len() >= 2)
            .and_then(|l| hash::suffix_hash(l.into_iter()))
            .ok_or_else(|| {
                DataplaneError::Other(format!(
                    "cannot block {domain:?}: the kernel blocklist takes domains of 2 to {} labels",
                    hash::MAX_SUFFIX_LABELS
                ))
            })
    }

    /// Blocks a domain and all its subdomains (dotted form, e.g. a registered domain).
    pub fn block_domain(&self, domain: &str) -> Result<u64> {
        let h = Self::block_key(domain)?;
        self.blocklist
            .update(&h.to_ne_bytes(), &now_secs().to_ne_bytes(), MapFlags::ANY)
            .ctx(|| format!("blocking {domain}"))?;
        Ok(h)
    }

    pub fn unblock_domain(&self, domain: &str) -> Result<()> {
        let h = Self::block_key(domain)?;
        match self.blocklist.delete(&h.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx(|| format!("unblocking {domain}")),
        }
    }

    pub fn is_blocked(&self, domain: &str) -> Result<bool> {
        let h = Self::block_key(domain)?;
        Ok(self
            .blocklist
            .lookup(&h.to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "reading eg_blocklist".into())?
            .is_some())
    }

    /// Lets this exact name pass without a hold from now on.
    pub fn allow_name_hash(&self, name_hash: u64) -> Result<()> {
        self.allow
            .update(
                &name_hash.to_ne_bytes(),
                &now_secs().to_ne_bytes(),
                MapFlags::ANY,
            )
            .ctx(|| "writing eg_allow".into())
    }

    /// Forgets a cleared name (the next query for it is held and judged again).
    pub fn unallow_name_hash(&self, name_hash: u64) -> Result<()> {
        match self.allow.delete(&name_hash.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx(|| "deleting from eg_allow".into()),
        }
    }

    /// Denies all further DNS from a process (socket layer for port 53, tc for any port).
    pub fn quarantine(&self, tgid: u32) -> Result<()> {
        self.quarantine
            .update(
                &tgid.to_ne_bytes(),
                &now_secs().to_ne_bytes(),
                MapFlags::ANY,
            )
            .ctx(|| format!("quarantining tgid {tgid}"))
    }

    /// Quarantined processes: (tgid, since, in unix seconds).
    pub fn quarantined(&self) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for k in self.quarantine.keys() {
            let Ok(tgid) = <[u8; 4]>::try_from(&k[..]).map(u32::from_ne_bytes) else {
                continue;
            };
            // an entry released between the key walk and the lookup is simply gone
            if let Some(v) = self
                .quarantine
                .lookup(&k, MapFlags::ANY)
                .ctx(|| "reading eg_quarantine".into())?
            {
                let since = <[u8; 8]>::try_from(&v[..]).map_or(0, u64::from_ne_bytes);
                out.push((tgid, since));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Lets a quarantined process send DNS again; false when it was not quarantined.
    pub fn release_quarantine(&self, tgid: u32) -> Result<bool> {
        match self.quarantine.delete(&tgid.to_ne_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx(|| format!("releasing tgid {tgid} from quarantine")),
        }
    }

    /// Entries in (blocklist, allow cache, quarantine): a walk of the keys, so call it at a
    /// slow cadence (metrics refresh), not per packet.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        (
            self.blocklist.keys().count(),
            self.allow.keys().count(),
            self.quarantine.keys().count(),
        )
    }

    /// Sums the per-CPU counters (empty when these handles came from pins).
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let Some(stats) = &self.stats else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(STAT_NAMES.len());
        for (i, name) in STAT_NAMES.iter().enumerate() {
            let per_cpu = stats
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .ctx(|| "reading eg_stats".into())?
                .unwrap_or_default();
            let sum = per_cpu
                .iter()
                .map(|v| u64::from_ne_bytes(v[..8].try_into().expect("u64 counter")))
                .sum();
            out.push((*name, sum));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Maps;

    #[test]
    fn block_keys_are_suffixes_the_kernel_matches() {
        assert!(Maps::block_key("example.com").is_ok());
        assert!(Maps::block_key("a.b.c.d.e.f.g.h").is_ok());
        for bad in ["com", "", "a.b.c.d.e.f.g.h.i"] {
            let e = Maps::block_key(bad).unwrap_err().to_string();
            assert!(e.contains("2 to 8 labels"), "{bad}: {e}");
        }
    }
}
