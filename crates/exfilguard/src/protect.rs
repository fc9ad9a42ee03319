//! `exfilguard protect`: the kernel data plane with the brain in-process. Held queries are
//! classified and either released unchanged or convicted (registered domain into the kernel
//! blocklist); every held, blocked or reported query is printed as one JSON line.

use anyhow::{bail, Context, Result};
use exfilguard_dataplane::{
    Action, Dataplane, EgressAttach, Event, Features, KernelPolicy, LoadOptions, Mode,
};
use exfilguard_detect::{Detector, Verdict};
use exfilguard_dns::DnsName;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    /// Report every DNS query, not only suspicious ones.
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
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name}: {}", std::io::Error::last_os_error());
    }
    Ok(idx)
}

fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Serialize)]
struct Line<'a> {
    event: &'a str,
    /// What the agent did: released, blocked, reported, dropped.
    decision: &'a str,
    name: String,
    registered_domain: Option<String>,
    verdict: Option<&'a Verdict>,
    #[serde(flatten)]
    kernel: &'a Event,
    /// Kernel hold to agent decision, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_us: Option<f64>,
}

#[derive(Default)]
struct Tally {
    hold_latency_ns: Vec<u64>,
    released: u64,
    convicted: u64,
    per_process: HashMap<u32, u32>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub fn run(detector: &Detector, args: &ProtectArgs) -> Result<()> {
    // Warm the model (first-run allocations) so the first held query is not the slow one.
    detector.classify(&DnsName::parse("warm-up.exfilguard.invalid")?)?;
    let features = Features::probe();
    for line in features.fallbacks() {
        eprintln!("exfilguard: {line}");
    }
    let mut dp = Dataplane::load(LoadOptions {
        pin_dir: Some(args.pin_dir.clone()),
        persist: args.persist,
    })
    .context("loading the data plane (needs root)")?;
    let mut policy = KernelPolicy {
        mode: if args.monitor {
            Mode::Monitor
        } else {
            Mode::Enforce
        },
        report_all: args.report_all,
        ..KernelPolicy::default()
    };
    if let Some(v) = args.hold_name_len {
        policy.hold_name_len = v;
    }
    if let Some(v) = args.hold_label_len {
        policy.hold_label_len = v;
    }
    dp.set_policy(&policy)?;

    let cg = args.cgroup.clone().or_else(cgroup_root);
    match &cg {
        Some(dir) if features.cgroup_sock_addr => dp
            .attach_cgroup(dir)
            .with_context(|| format!("attaching to cgroup {}", dir.display()))?,
        _ => eprintln!("exfilguard: no cgroup2 hierarchy: events carry no process"),
    }
    if args.netfilter {
        dp.attach_netfilter()?;
        eprintln!("exfilguard: inspecting at netfilter LOCAL_OUT");
    }
    for name in &args.ifaces {
        let idx = ifindex(name)?;
        if !args.netfilter {
            let how = dp.attach_tc_egress(idx)?;
            let how = match how {
                EgressAttach::Tcx => "tcx",
                EgressAttach::TcxTakenOver => "tcx (taken over from a pinned link)",
                EgressAttach::Clsact => "clsact",
            };
            eprintln!("exfilguard: {name}: egress DNS inspection via {how}");
        }
        if !args.no_xdp && features.xdp {
            dp.attach_xdp(idx)
                .with_context(|| format!("attaching XDP to {name}"))?;
            eprintln!("exfilguard: {name}: ingress response inspection via XDP");
        }
    }
    let mode = if args.monitor { "monitor" } else { "enforce" };
    eprintln!("exfilguard: protecting ({mode}); SIGTERM or Ctrl-C to stop");

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }

    let mut tally = Tally::default();
    let out = std::io::stdout();
    let quarantine_after = args.quarantine_after;
    dp.run(&stop, |dp, batch| {
        if let Err(e) = handle_batch(dp, detector, &batch, &mut tally, quarantine_after, &out) {
            eprintln!("exfilguard: {e:#}");
        }
    })?;

    let mut lat = std::mem::take(&mut tally.hold_latency_ns);
    lat.sort_unstable();
    let stats: serde_json::Map<String, serde_json::Value> = dp
        .stats()?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let summary = serde_json::json!({
        "event": "summary",
        "released": tally.released,
        "convicted": tally.convicted,
        "hold_us_p50": percentile(&lat, 0.50),
        "hold_us_p99": percentile(&lat, 0.99),
        "holds": lat.len(),
        "kernel": stats,
    });
    writeln!(out.lock(), "{summary}")?;
    dp.detach_all();
    eprintln!(
        "exfilguard: stopped; {}",
        if args.persist {
            "programs left attached (--persist)"
        } else {
            "programs detached, maps stay pinned"
        }
    );
    Ok(())
}

/// Decides a batch: one model call for all names, held queries released or convicted first,
/// then the JSON lines (printing never delays a release).
fn handle_batch(
    dp: &mut Dataplane,
    detector: &Detector,
    batch: &[Event],
    tally: &mut Tally,
    quarantine_after: u32,
    out: &std::io::Stdout,
) -> Result<()> {
    let names: Vec<Option<DnsName>> = batch
        .iter()
        .map(|ev| {
            ev.labels()
                .and_then(|l| DnsName::from_labels(l.iter().copied()).ok())
        })
        .collect();
    let valid: Vec<DnsName> = names.iter().flatten().cloned().collect();
    let mut verdicts = detector.classify_batch(&valid)?.into_iter();
    let verdicts: Vec<Option<Verdict>> = names
        .iter()
        .map(|n| n.as_ref().and_then(|_| verdicts.next()))
        .collect();

    let mut lines = Vec::with_capacity(batch.len());
    for ((ev, name), verdict) in batch.iter().zip(&names).zip(&verdicts) {
        let text = ev.name_text();
        let registered = name.as_ref().and_then(|n| n.registered_domain());
        // a name the agent cannot even parse is not released
        let malicious = verdict.as_ref().is_none_or(|v| v.class.is_malicious());
        let (event, decision) = match (ev.response, ev.action) {
            (true, a) => (
                "response",
                if a == Action::Block {
                    "dropped"
                } else {
                    "reported"
                },
            ),
            (false, Action::Hold) if malicious => {
                let target = registered.clone().unwrap_or_else(|| text.clone());
                if let Err(e) = dp.block_domain(&target) {
                    eprintln!("exfilguard: {e}");
                }
                tally.convicted += 1;
                if let (Some(p), true) = (&ev.process, quarantine_after > 0) {
                    let n = tally.per_process.entry(p.tgid).or_default();
                    *n += 1;
                    if *n == quarantine_after {
                        dp.quarantine(p.tgid)?;
                    }
                }
                ("query", "blocked")
            }
            (false, Action::Hold) => {
                dp.release(ev)?;
                tally.released += 1;
                ("query", "released")
            }
            (false, Action::Block) => ("query", "blocked"),
            (false, Action::Quarantine) => ("query", "quarantined"),
            (false, Action::FailClosed) => ("query", "dropped"),
            (false, _) => ("query", "reported"),
        };
        let hold_us = (ev.action == Action::Hold).then(|| {
            let ns = monotonic_ns().saturating_sub(ev.ts_ns);
            tally.hold_latency_ns.push(ns);
            ns as f64 / 1000.0
        });
        lines.push((event, decision, text, registered, hold_us));
    }

    let mut o = out.lock();
    for ((event, decision, name, registered_domain, hold_us), (ev, verdict)) in
        lines.into_iter().zip(batch.iter().zip(&verdicts))
    {
        let line = Line {
            event,
            decision,
            name,
            registered_domain,
            verdict: verdict.as_ref(),
            kernel: ev,
            hold_us,
        };
        serde_json::to_writer(&mut o, &line)?;
        o.write_all(b"\n")?;
    }
    o.flush()?;
    Ok(())
}
