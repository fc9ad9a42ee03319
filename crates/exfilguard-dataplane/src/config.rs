//! Runtime policy of the data plane: one element of the `eg_config` array map, rewritten
//! without reloading the programs.

use serde::{Deserialize, Serialize};

/// Mark carried by frames the agent re-injects ("EGRL").
pub const DEFAULT_RELEASE_MARK: u32 = 0x4547_524c;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report what would be held or blocked; drop nothing.
    Monitor,
    /// Hold suspicious queries until the agent decides; drop blocklisted names.
    Enforce,
}

/// What the kernel treats as "plainly benign" and how it behaves at its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelPolicy {
    pub mode: Mode,
    /// Hold names whose dotted form is at least this long.
    pub hold_name_len: u32,
    /// Hold names with a label at least this long.
    pub hold_label_len: u32,
    /// Hold names with at least this many labels.
    pub hold_labels: u32,
    /// Hold names with at least this many digits.
    pub hold_digits: u32,
    /// Report every DNS query (monitor audits), not only suspicious ones.
    pub report_all: bool,
    pub release_mark: u32,
    /// NXDOMAIN answers per client per second before XDP drops them (0: no limit).
    pub nx_limit: u32,
    /// NXDOMAIN answers per parent domain per second (water torture).
    pub nx_domain_limit: u32,
    /// Report (enforce: drop) responses from blocklisted domains at least this large.
    pub downlink_bytes: u32,
    /// Pass queries that cannot be held (ring buffer full, frame too large) instead of dropping.
    pub fail_open: bool,
    /// Drop non-DNS payloads sent to UDP/TCP port 53 in enforce mode.
    pub drop_malformed53: bool,
    /// Copy what the kernel passes (plain and allowlisted queries, NXDOMAIN answers) to the
    /// observation ring for the behaviour analytics. Set by the agent from `[behaviour]`.
    #[serde(skip)]
    pub observe: bool,
}

impl KernelPolicy {
    /// The kernel's "is this name worth the model?" test (`suspicion()` in the BPF program),
    /// for fronts that see queries without the kernel: reasons, empty when plainly benign.
    /// `name_wire` is the lower-cased wire-format name without the root byte.
    pub fn suspicion(&self, name_wire: &[u8], qtype: u16) -> Vec<&'static str> {
        let (mut labels, mut max_label, mut digits, mut odd, mut i) = (0u32, 0u32, 0u32, false, 0);
        while i < name_wire.len() {
            let len = name_wire[i] as usize;
            labels += 1;
            max_label = max_label.max(len as u32);
            for &c in name_wire.iter().skip(i + 1).take(len) {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_digit() {
                    digits += 1;
                } else if !(c.is_ascii_lowercase() || c == b'-' || c == b'_') {
                    odd = true;
                }
            }
            i += len + 1;
        }
        // dotted length = wire length without the root byte, minus the first length byte
        let dotted = name_wire.len().saturating_sub(1) as u32;
        let mut r = Vec::new();
        if dotted >= self.hold_name_len {
            r.push("long_name");
        }
        if max_label >= self.hold_label_len {
            r.push("long_label");
        }
        if labels >= self.hold_labels {
            r.push("many_labels");
        }
        if digits >= self.hold_digits {
            r.push("digits");
        }
        if odd {
            r.push("odd_chars");
        }
        if !matches!(qtype, 1 | 2 | 6 | 12 | 28 | 43 | 48 | 64 | 65) {
            r.push("rare_qtype");
        }
        r
    }
}

impl Default for KernelPolicy {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            hold_name_len: 32,
            hold_label_len: 10,
            hold_labels: 5,
            hold_digits: 4,
            report_all: false,
            release_mark: DEFAULT_RELEASE_MARK,
            nx_limit: 200,
            nx_domain_limit: 100,
            downlink_bytes: 512,
            fail_open: false,
            drop_malformed53: true,
            observe: false,
        }
    }
}

impl KernelPolicy {
    /// The map value, in the field order of `struct eg_config` (thirteen u32, native endian).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let f = [
            match self.mode {
                Mode::Monitor => 0,
                Mode::Enforce => 1,
            },
            self.hold_name_len,
            self.hold_label_len,
            self.hold_labels,
            self.hold_digits,
            self.report_all as u32,
            self.release_mark,
            self.nx_limit,
            self.nx_domain_limit,
            self.downlink_bytes,
            self.fail_open as u32,
            self.drop_malformed53 as u32,
            self.observe as u32,
        ];
        f.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }
}
