//! `exfilguard protect`: the agent's decision loop with command-line settings, JSON lines on
//! stdout and a summary line at exit; no config file, metrics or Kafka (that is `run`).

use anyhow::{Context, Result};
use exfilguard_agent::config::{AttachPoint, Config};
use exfilguard_dataplane::{Mode, SocketScope};
use exfilguard_events::Format;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ProtectArgs {
    /// Interfaces whose egress DNS is inspected (and whose ingress gets the XDP program).
    #[arg(long = "iface", required = true, value_name = "IFACE")]
    ifaces: Vec<String>,
    /// Report only: hold and drop nothing.
    #[arg(long)]
    monitor: bool,
    /// Inspect at netfilter LOCAL_OUT instead of tc egress.
    #[arg(long)]
    netfilter: bool,
    /// Do not attach the XDP response inspector.
    #[arg(long)]
    no_xdp: bool,
    /// cgroup v2 directory for process attribution (default: the cgroup2 mount root).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps.
    #[arg(long, default_value = exfilguard_dataplane::DEFAULT_PIN_DIR, value_name = "DIR")]
    pin_dir: PathBuf,
    /// Leave the programs attached when the agent exits (next start takes them over).
    #[arg(long)]
    persist: bool,
    /// Pass what cannot be held (full ring, oversize frame, agent dead for 2 s) instead of
    /// dropping it (`kernel.fail_open`).
    #[arg(long)]
    fail_open: bool,
    /// Report every DNS query, not only suspicious ones (those held and released too).
    #[arg(long)]
    report_all: bool,
    /// Quarantine a process after this many convicted queries (0: never).
    #[arg(long, default_value_t = 0)]
    quarantine_after: u32,
    /// Hold names whose dotted form is at least this long (kernel pre-filter).
    #[arg(long)]
    hold_name_len: Option<u32>,
    /// Hold names with a label at least this long (kernel pre-filter).
    #[arg(long)]
    hold_label_len: Option<u32>,
    /// No behaviour analytics (information rate, beacons, DGA bots).
    #[arg(long)]
    no_behaviour: bool,
    /// Which namespaces the socket-layer hook judges: all (every process of the host), netns
    /// (this agent's network namespace), off.
    #[arg(long, value_enum, default_value = "all")]
    socket_scope: Scope,
    /// Information-rate alarm threshold in bytes (`behaviour.info_alarm_bytes`).
    #[arg(long, value_name = "BYTES")]
    info_alarm_bytes: Option<f64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Scope {
    All,
    Netns,
    Off,
}

pub fn run(brain: &crate::BrainArgs, args: &ProtectArgs) -> Result<()> {
    // defaults, then EXFILGUARD__… environment variables (as with a config file), then the flags
    let mut cfg = Config::load(None)?;
    cfg.dataplane.interfaces = args.ifaces.clone();
    cfg.dataplane.attach = if args.netfilter {
        AttachPoint::Netfilter
    } else {
        AttachPoint::Tc
    };
    cfg.dataplane.xdp = !args.no_xdp;
    cfg.dataplane.cgroup = args.cgroup.clone().unwrap_or_default();
    cfg.dataplane.pin_dir = args.pin_dir.clone();
    cfg.dataplane.persist = args.persist;
    cfg.dataplane.socket_scope = match args.socket_scope {
        Scope::All => SocketScope::All,
        Scope::Netns => SocketScope::Netns,
        Scope::Off => SocketScope::Off,
    };
    cfg.kernel.mode = if args.monitor {
        Mode::Monitor
    } else {
        Mode::Enforce
    };
    cfg.kernel.report_all = args.report_all;
    cfg.kernel.fail_open = args.fail_open;
    if let Some(v) = args.hold_name_len {
        cfg.kernel.hold_name_len = v;
    }
    if let Some(v) = args.hold_label_len {
        cfg.kernel.hold_label_len = v;
    }
    cfg.detect.quarantine_after = args.quarantine_after;
    cfg.behaviour.enabled = !args.no_behaviour;
    if let Some(v) = args.info_alarm_bytes {
        cfg.behaviour.info_alarm_bytes = v;
    }
    brain.apply_to(&mut cfg.detect)?;
    cfg.events.file.enabled = false;
    cfg.events.stdout.enabled = true;
    cfg.events.stdout.format = Format::Native;
    cfg.metrics.enabled = false;
    cfg.validate()?;
    let summary = exfilguard_agent::run(cfg, Default::default())?;
    let mut line = serde_json::to_value(&summary).context("summary")?;
    line["event"] = "summary".into();
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
