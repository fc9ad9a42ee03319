//! `exfilguard run | config | block | unblock | analytics`: the agent daemon and its
//! operator commands.

use anyhow::{bail, Context, Result};
use exfilguard_agent::config::{Config, EXAMPLE};
use exfilguard_dataplane::Maps;
use exfilguard_dns::DnsName;
use exfilguard_kafka::fleet::{now_ms, publish_now, BlockEntry};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML; see `exfilguard config --default`). Without one, the embedded
    /// defaults: enforce on the default-route interface, events to a local JSONL file,
    /// metrics on 127.0.0.1:9353, no broker.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also print every event on stdout (exfilguard's own JSON form).
    #[arg(long)]
    pub foreground: bool,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if args.foreground {
        cfg.events.stdout.enabled = true;
    }
    let summary = exfilguard_agent::run(
        cfg,
        exfilguard_agent::RunOptions {
            config_path: args.config.clone(),
        },
    )?;
    tracing::info!(
        holds = summary.holds,
        hold_us_p50 = summary.hold_us_p50,
        hold_us_p99 = summary.hold_us_p99,
        events_dropped = summary.events_dropped,
        "summary"
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ResolveArgs {
    /// Configuration file (TOML; its [resolve] section and the shared [detect], [events],
    /// [kafka], [metrics]).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve over UDP and TCP (repeatable; replaces resolve.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Resolver to forward to (repeatable; replaces resolve.upstreams).
    #[arg(long, value_name = "ADDR:PORT")]
    pub upstream: Vec<String>,
    /// Answer to refused queries: refused, nxdomain or sinkhole.
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Also print every event on stdout (exfilguard's own JSON form).
    #[arg(long)]
    pub foreground: bool,
}

pub fn resolve(brain: &crate::BrainArgs, args: &ResolveArgs) -> Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if !args.listen.is_empty() {
        cfg.resolve.listen = args.listen.clone();
    }
    if !args.upstream.is_empty() {
        cfg.resolve.upstreams = args.upstream.clone();
    }
    if let Some(a) = &args.action {
        cfg.resolve.action = serde_json::from_value(serde_json::Value::String(a.clone()))
            .with_context(|| format!("--action {a}: expected refused, nxdomain or sinkhole"))?;
    }
    if args.foreground {
        cfg.events.stdout.enabled = true;
    }
    brain.apply_to(&mut cfg.detect)?;
    cfg.validate()?;
    let flags = brain.clone();
    exfilguard_resolver::run(
        cfg,
        exfilguard_resolver::ResolveOptions {
            config_path: args.config.clone(),
            reapply: Some(Box::new(move |c: &mut Config| {
                flags.apply_to(&mut c.detect)
            })),
            ..Default::default()
        },
    )
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Print the commented default configuration.
    #[arg(long, conflicts_with_all = ["check", "reference"])]
    default: bool,
    /// Print the configuration reference (Markdown: every key, default, environment variable
    /// and meaning), as in docs/configuration.md.
    #[arg(long, conflicts_with = "check")]
    reference: bool,
    /// Validate a configuration file (with environment overrides) and print the result.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

pub fn config(args: &ConfigArgs) -> Result<()> {
    let mut out = std::io::stdout();
    if let Some(p) = &args.check {
        let cfg = Config::load(Some(p))?;
        write!(out, "{}", toml::to_string(&cfg)?)?;
        eprintln!("exfilguard: {} is valid", p.display());
    } else if args.default {
        write!(out, "{EXAMPLE}")?;
    } else if args.reference {
        write!(out, "{}", exfilguard_agent::reference::markdown()?)?;
    } else {
        // the effective configuration from the environment alone
        write!(out, "{}", toml::to_string(&Config::load(None)?)?)?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BlockArgs {
    /// Registered domains (or any suffix of at most 8 labels) to block or unblock.
    #[arg(required = true)]
    domains: Vec<String>,
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Lifetime of the fleet entry in seconds (0: forever).
    #[arg(long, default_value_t = 0)]
    ttl: u64,
    /// Why (shown in every agent's log).
    #[arg(long, default_value = "operator")]
    reason: String,
}

#[derive(clap::Args)]
pub struct QuarantineArgs {
    /// Process ids (tgids) to let send DNS again.
    #[arg(long = "release", value_name = "PID")]
    release: Vec<u32>,
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// bpffs directory of the pinned maps (default: `dataplane.pin_dir` of the config).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
}

/// Quarantine entries outlive the process and the agent (keyed by tgid: a later process that
/// gets the same id inherits it), so operators list and lift them here.
pub fn quarantine(args: &QuarantineArgs) -> Result<()> {
    let dir = match &args.pin_dir {
        Some(d) => d.clone(),
        None => Config::load(args.config.as_deref())?.dataplane.pin_dir,
    };
    let maps = Maps::open_pinned(&dir)
        .with_context(|| format!("no pinned exfilguard maps in {}", dir.display()))?;
    for &pid in &args.release {
        if maps.release_quarantine(pid)? {
            eprintln!("exfilguard: process {pid} may send DNS again");
        } else {
            eprintln!("exfilguard: process {pid} was not quarantined");
        }
    }
    if args.release.is_empty() {
        let list: Vec<serde_json::Value> = maps
            .quarantined()?
            .into_iter()
            .map(|(pid, since)| {
                // the name of whatever process has this id now (gone: null)
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|c| c.trim().to_string());
                serde_json::json!({"pid": pid, "since": since, "comm": comm})
            })
            .collect();
        println!("{}", serde_json::to_string(&list)?);
    }
    Ok(())
}

/// Blocks (or unblocks) on this host's pinned maps when an agent has pinned them, and on the
/// fleet topic when Kafka is configured; at least one must succeed.
pub fn block(args: &BlockArgs, unblock: bool) -> Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let domains: Vec<String> = args
        .domains
        .iter()
        .map(|d| {
            DnsName::parse(d)
                .map(|n| n.to_string())
                .with_context(|| format!("{d:?} is not a domain name"))
        })
        .collect::<Result<_>>()?;
    let mut done = false;
    match Maps::open_pinned(&cfg.dataplane.pin_dir) {
        Ok(maps) => {
            for d in &domains {
                if unblock {
                    maps.unblock_domain(d)?;
                } else {
                    maps.block_domain(d)?;
                }
            }
            eprintln!(
                "exfilguard: {} {} in the local kernel blocklist ({})",
                if unblock { "removed" } else { "added" },
                domains.join(", "),
                cfg.dataplane.pin_dir.display()
            );
            done = true;
        }
        Err(e) => eprintln!("exfilguard: no local data plane: {e}"),
    }
    if cfg.kafka.enabled() {
        let host = if cfg.host.name.is_empty() {
            exfilguard_agent::host::hostname()
        } else {
            cfg.host.name.clone()
        };
        for d in &domains {
            let entry = BlockEntry {
                domain: d.clone(),
                class: "operator".into(),
                score: 1.0,
                host: host.clone(),
                source: "operator".into(),
                first_seen_ms: now_ms(),
                expires_ms: if args.ttl == 0 {
                    0
                } else {
                    now_ms() + args.ttl * 1000
                },
                reason: args.reason.clone(),
            };
            publish_now(
                &cfg.kafka,
                &format!("exfilguard-cli-{host}"),
                d,
                (!unblock).then_some(&entry),
            )
            .with_context(|| format!("publishing {d} to {}", cfg.kafka.blocklist_topic))?;
        }
        eprintln!(
            "exfilguard: {} {} on the fleet topic {}",
            if unblock { "tombstoned" } else { "published" },
            domains.join(", "),
            cfg.kafka.blocklist_topic
        );
        done = true;
    }
    if !done {
        bail!(
            "nothing changed: no pinned maps at {} and no kafka.brokers configured",
            cfg.dataplane.pin_dir.display()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct AnalyticsArgs {
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Consumer group (instances in one group split the event partitions).
    #[arg(long, default_value = "exfilguard-analytics")]
    group: String,
    /// Convict a domain when this many distinct hosts saw malicious queries to it.
    #[arg(long, default_value_t = 3)]
    min_hosts: usize,
    /// Aggregation window in seconds.
    #[arg(long, default_value_t = 3600)]
    window: u64,
    /// Print the aggregates (JSON) every this many seconds.
    #[arg(long, default_value_t = 10)]
    report_every: u64,
    /// Lifetime of the entries it publishes, seconds (0: forever).
    #[arg(long, default_value_t = 86400)]
    ttl: u64,
}

pub fn analytics(args: &AnalyticsArgs) -> Result<()> {
    use exfilguard_kafka::analytics::{run, AnalyticsConfig};
    let cfg = Config::load(args.config.as_deref())?;
    if !cfg.kafka.enabled() {
        bail!("kafka.brokers is empty: analytics reads the event topic");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let acfg = AnalyticsConfig {
        min_hosts: args.min_hosts.max(1),
        window_ms: args.window * 1000,
        ttl_ms: args.ttl * 1000,
        ..Default::default()
    };
    let out = std::io::stdout();
    run(
        &cfg.kafka,
        &args.group,
        &acfg,
        &stop,
        std::time::Duration::from_secs(args.report_every.max(1)),
        |agg| {
            let top: Vec<_> = agg
                .top(10)
                .into_iter()
                .map(|(d, hosts, s)| serde_json::json!({"domain": d, "hosts": hosts, "stats": s}))
                .collect();
            let line = serde_json::json!({
                "event": "analytics",
                "events": agg.events,
                "hosts": agg.hosts.len(),
                "domains": agg.domains.len(),
                "published": agg.published,
                "top": top,
            });
            let _ = writeln!(out.lock(), "{line}");
        },
    )?;
    Ok(())
}
