//! Runtime policy of the data plane: one element of the `eg_config` array map, rewritten
//! without reloading the programs.

use serde::{Deserialize, Serialize};

/// Mark carried by frames the agent re-injects ("EGRL") when no random one is drawn: tests
/// and `BPF_PROG_TEST_RUN` use it; the agent draws a fresh one at every start.
pub const DEFAULT_RELEASE_MARK: u32 = 0x4547_524c;

/// A non-zero random release mark: only the agent knows which mark its releases carry.
pub fn random_release_mark() -> u32 {
    let mut b = [0u8; 4];
    loop {
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let m = u32::from_ne_bytes(b);
        if n == 4 && m != 0 {
            return m;
        }
    }
}

/// Which network namespaces the socket-layer hook (cgroup_skb egress at the cgroup root,
/// which sees every namespace) judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SocketScope {
    /// Every process of the host, containers and their namespaces included.
    #[default]
    All,
    /// Only sockets in the agent's own network namespace (labs, several agents on one host).
    Netns,
    /// Attached but judging nothing.
    Off,
}

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
    /// Packet mark of released frames; 0 (the default): a random one drawn at every start.
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
    /// Hold queries carrying more than this many bytes after the question, or anything there
    /// but one OPT record with the usual options (cookie, client subnet, NSID …).
    pub hold_extra_bytes: u32,
    /// Hold names mixing upper- and lower-case letters: letter case can carry 1 bit per
    /// letter, and the allow cache keys exact names.
    pub hold_mixed_case: bool,
    /// Hold a plain query whose OPT record (cookie, client subnet, UDP size, flags) or
    /// RD/AD/CD bits its (client, server) pair has not sent lately (4 kept per pair): the
    /// cookie alone is 8-40 free bytes a query. Clients keep theirs, so this costs one hold
    /// per pair and per new dig process; a resolver that echoes a server cookie changing
    /// every second (BIND as a recursive resolver) is held far more often.
    pub pin_carriers: bool,
    /// The agent's process id: the one process allowed PACKET_QDISC_BYPASS and AF_XDP.
    #[serde(skip)]
    pub agent_tgid: u32,
    /// What the socket-layer hook judges.
    #[serde(skip)]
    pub socket_scope: SocketScope,
    /// The agent's network namespace cookie (`SocketScope::Netns`).
    #[serde(skip)]
    pub netns_cookie: u64,
    /// The sanctioned-resolver policy for encrypted DNS at connect()/sendmsg() (the agent
    /// sets it from `[encrypted_dns]`; the address lists are maps of their own).
    #[serde(skip)]
    pub encrypted_dns: bool,
    /// Encrypted-DNS ports refused towards any unsanctioned address (DoT, DoQ: 853); at most
    /// [`ENCDNS_PORTS`].
    #[serde(skip)]
    pub encdns_ports: Vec<u16>,
    /// Ports refused towards the known DoH resolvers' addresses (443); at most [`DOH_PORTS`].
    #[serde(skip)]
    pub doh_ports: Vec<u16>,
}

/// Encrypted-DNS ports the kernel policy holds (`EG_ENCDNS_PORTS`).
pub const ENCDNS_PORTS: usize = 8;
/// DoH ports the kernel policy holds (`EG_DOH_PORTS`).
pub const DOH_PORTS: usize = 4;

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
        let (upper, lower) = mixed_case(name_wire);
        if self.hold_mixed_case && upper && lower {
            r.push("mixed_case");
        }
        if !matches!(qtype, 1 | 2 | 6 | 12 | 28 | 43 | 48 | 64 | 65) {
            r.push("rare_qtype");
        }
        r
    }
}

/// Whether the labels of a wire name hold upper- and lower-case ASCII letters.
fn mixed_case(name_wire: &[u8]) -> (bool, bool) {
    let (mut upper, mut lower, mut i) = (false, false, 0);
    while i < name_wire.len() {
        let len = name_wire[i] as usize;
        for &c in name_wire.iter().skip(i + 1).take(len) {
            upper |= c.is_ascii_uppercase();
            lower |= c.is_ascii_lowercase();
        }
        i += len + 1;
    }
    (upper, lower)
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
            release_mark: 0,
            nx_limit: 200,
            nx_domain_limit: 100,
            downlink_bytes: 512,
            fail_open: false,
            drop_malformed53: true,
            observe: false,
            hold_extra_bytes: 80,
            hold_mixed_case: true,
            pin_carriers: true,
            agent_tgid: 0,
            socket_scope: SocketScope::All,
            netns_cookie: 0,
            encrypted_dns: false,
            encdns_ports: vec![853],
            doh_ports: vec![443],
        }
    }
}

impl KernelPolicy {
    /// The map value, in the field order of `struct eg_config` (seventeen u32, padding, one
    /// u64, then the encrypted-DNS switch and ports, the carrier switch; native endian).
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
            self.hold_extra_bytes,
            self.hold_mixed_case as u32,
            self.agent_tgid,
            match self.socket_scope {
                SocketScope::All => 0,
                SocketScope::Netns => 1,
                SocketScope::Off => 2,
            },
            0, // padding before the u64
        ];
        let mut b: Vec<u8> = f.iter().flat_map(|v| v.to_ne_bytes()).collect();
        b.extend_from_slice(&self.netns_cookie.to_ne_bytes());
        b.extend_from_slice(&(self.encrypted_dns as u32).to_ne_bytes());
        for (list, n) in [
            (&self.encdns_ports, ENCDNS_PORTS),
            (&self.doh_ports, DOH_PORTS),
        ] {
            for i in 0..n {
                b.extend_from_slice(&list.get(i).copied().unwrap_or(0).to_ne_bytes());
            }
        }
        b.extend_from_slice(&(self.pin_carriers as u32).to_ne_bytes());
        b
    }
}
