//! What the agent (and later the resolver front) says about a DNS query: one `Detection`
//! record per held, blocked or reported query, serialised either in exfilguard's own compact
//! form or as an OCSF "DNS Activity" event for XDR/EDR/SIEM pipelines (docs/ocsf.md), and
//! written to a size-rotated JSONL file.

pub mod jsonl;
pub mod ocsf;
pub mod throttle;

use exfilguard_dataplane::Event;
use exfilguard_detect::Verdict;
use serde::{Deserialize, Serialize};

/// What the agent did with a query or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Held, judged benign, re-injected unchanged.
    Released,
    /// Dropped: blocklisted in the kernel, or held and convicted.
    Blocked,
    /// Dropped because the sending process is quarantined.
    Quarantined,
    /// Dropped by the fail policy (could not be held, or held too long).
    Dropped,
    /// Monitor mode or an audit: nothing dropped.
    Reported,
    /// Held, judged benign, over its sender's carrier budget: re-injected as its header and
    /// question alone (no OPT record, AD/CD cleared), so the answer still comes.
    Stripped,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Released => "released",
            Decision::Blocked => "blocked",
            Decision::Quarantined => "quarantined",
            Decision::Dropped => "dropped",
            Decision::Reported => "reported",
            Decision::Stripped => "stripped",
        }
    }

    pub const ALL: [Decision; 6] = [
        Decision::Released,
        Decision::Blocked,
        Decision::Quarantined,
        Decision::Dropped,
        Decision::Reported,
        Decision::Stripped,
    ];
}

/// One decision about one DNS message.
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// "query" (egress) or "response" (XDP ingress).
    pub event: &'static str,
    pub decision: Decision,
    pub name: String,
    pub registered_domain: Option<String>,
    pub verdict: Option<Verdict>,
    #[serde(flatten)]
    pub kernel: Event,
    /// Kernel drops this record stands for (OCSF `count`): a flood of blocked queries from one
    /// socket comes as one record per second, with the drops in between counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Kernel hold to agent decision, microseconds (held queries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_us: Option<f64>,
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The reporting host (config `host.name`, default the hostname).
    pub host: String,
    /// Interface name of `kernel.ifindex`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Container (or systemd unit) of the sending process, from its cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Unique id (UUIDv7, time ordered): lets consumers drop the rare duplicate an at-least-once
    /// delivery after a crash can produce.
    pub uid: uuid::Uuid,
}

/// Serialisation of records on a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCSF 1.3 DNS Activity (class 4003).
    #[default]
    Ocsf,
    /// exfilguard's own record (`Detection` as JSON).
    Native,
}

impl Detection {
    pub fn to_json(&self, format: Format) -> String {
        match format {
            Format::Native => serde_json::to_string(self),
            Format::Ocsf => serde_json::to_string(&ocsf::dns_activity(self)),
        }
        .expect("records serialise")
    }
}
