//! `exfilguard`: the command-line front door to the detection brain.

mod agent_cmd;
mod classify;
mod dataset;
mod demo;
mod eval;
mod protect;
mod replay;
mod scan;
mod stream;
mod view;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use exfilguard_detect::{Detector, Model, NameList};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "exfilguard",
    version,
    about = "Stops DNS tunnels, DNS C2 and DGA malware"
)]
struct Cli {
    #[command(flatten)]
    brain: BrainArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options that choose the brain: the model and the operator's lists.
#[derive(clap::Args, Clone)]
pub struct BrainArgs {
    /// ONNX model to use instead of the embedded one.
    #[arg(long, global = true, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Allowlist file (one domain per line; `=name` for an exact name).
    #[arg(long, global = true, value_name = "FILE")]
    allowlist: Option<PathBuf>,
    /// Blocklist file (same format).
    #[arg(long, global = true, value_name = "FILE")]
    blocklist: Option<PathBuf>,
    /// Decision threshold (calibrated probability) instead of the model's own.
    #[arg(long, global = true, value_name = "P")]
    threshold: Option<f32>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Classify names given as arguments, or one per line on stdin with `-`.
    Classify {
        /// Names to classify; `-` reads stdin (streamed).
        #[arg(required = true)]
        names: Vec<String>,
        /// A table for people, or one JSON object per name.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Measure detection on labelled name files (TPR, FPR, precision, ROC-AUC, per label).
    Eval(eval::EvalArgs),
    /// Classify every DNS query in a pcap or pcapng capture.
    Scan(scan::ScanArgs),
    /// Feed a capture or a query log through the behaviour analytics in accelerated time
    /// (information rate, DGA bots, beacons) to try thresholds on your own traffic.
    Replay(replay::ReplayArgs),
    /// Run the agent (root): kernel data plane, brain, event sinks, Kafka, metrics.
    Run(agent_cmd::RunArgs),
    /// The filtering DNS forwarder for resolvers (no eBPF, no root): refuses tunnel, C2 and DGA
    /// queries, forwards the rest.
    Resolve(agent_cmd::ResolveArgs),
    /// The kernel data plane with the brain, settings from flags, JSON events on stdout (root).
    Protect(protect::ProtectArgs),
    /// Print the default configuration, or check a configuration file.
    Config(agent_cmd::ConfigArgs),
    /// A throw-away lab (root): namespaces, a resolver, real iodine and dns2tcp tunnels, benign
    /// and DGA-style clients, the agent; shows live what was allowed, held and blocked, and why.
    Demo(demo::DemoArgs),
    /// Block domains on this host's pinned maps and on the fleet blocklist topic.
    Block(agent_cmd::BlockArgs),
    /// Programs attached at an interface's tcx egress and XDP hooks, as JSON (root).
    Attached {
        /// Interface name.
        #[arg(long)]
        iface: String,
    },
    /// Remove domains from this host's pinned maps and from the fleet blocklist topic.
    Unblock(agent_cmd::BlockArgs),
    /// List quarantined processes (JSON), or let some send DNS again with --release.
    Quarantine(agent_cmd::QuarantineArgs),
    /// Fleet-wide aggregates over the Kafka event topic; convicts domains seen from many hosts.
    Analytics(agent_cmd::AnalyticsArgs),
    /// Print the feature vector of names (the model's exact input), for debugging and docs.
    Features {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the model's metadata (version, thresholds in use and what they mean, features,
    /// sha256).
    ModelInfo {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Build the training set from shared/data (see model/README.md).
    Dataset {
        #[command(subcommand)]
        action: DatasetCommand,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Split, fit the n-gram table, write test slices and features.csv.
    Build {
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        #[arg(long, default_value = "model/data")]
        out: PathBuf,
        /// Where to write the fitted n-gram table (embedded at the next build).
        #[arg(long, default_value = "crates/exfilguard-detect/assets/ngram.bin")]
        ngram_out: PathBuf,
        #[arg(long, value_delimiter = ',', default_values_t = dataset::HOLDOUT_TOOLS.iter().map(|s| s.to_string()))]
        holdout_tools: Vec<String>,
        #[arg(long, value_delimiter = ',', default_values_t = dataset::HOLDOUT_FAMILIES.iter().map(|s| s.to_string()))]
        holdout_families: Vec<String>,
        /// Synthetic encoded-payload names to add to training.
        #[arg(long, default_value_t = 30000)]
        synthetic: usize,
    },
    /// Write only the held-out test slices (deterministic; what the accuracy guard evaluates).
    Split {
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_delimiter = ',', default_values_t = dataset::HOLDOUT_TOOLS.iter().map(|s| s.to_string()))]
        holdout_tools: Vec<String>,
        #[arg(long, value_delimiter = ',', default_values_t = dataset::HOLDOUT_FAMILIES.iter().map(|s| s.to_string()))]
        holdout_families: Vec<String>,
    },
}

impl BrainArgs {
    /// Carries these flags into an agent configuration (`protect`, `resolve`).
    pub(crate) fn apply_to(&self, d: &mut exfilguard_agent::config::DetectConfig) -> Result<()> {
        if let Some(m) = &self.model {
            d.model = m.clone();
        }
        if let Some(t) = self.threshold {
            d.threshold = t;
        }
        let lines = |p: &Option<PathBuf>| -> Result<Vec<String>> {
            Ok(match p {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect(),
                None => Vec::new(),
            })
        };
        // a list file replaces the config's list; without one the config's list stands
        if self.allowlist.is_some() {
            d.allow = lines(&self.allowlist)?;
        }
        if self.blocklist.is_some() {
            d.block = lines(&self.blocklist)?;
        }
        Ok(())
    }

    fn detector(&self) -> Result<Detector> {
        let mut model = match &self.model {
            Some(p) => {
                let bytes =
                    std::fs::read(p).with_context(|| format!("reading model {}", p.display()))?;
                Model::from_bytes(&bytes)
                    .with_context(|| format!("loading model {}", p.display()))?
            }
            None => Model::embedded().context("loading the embedded model")?,
        };
        if let Some(t) = self.threshold {
            anyhow::ensure!(
                (0.0..=1.0).contains(&t),
                "--threshold {t} is not a probability"
            );
            model.set_threshold(t);
        }
        let list = |p: &Option<PathBuf>| -> Result<NameList> {
            match p {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    NameList::parse(&text).with_context(|| format!("in {}", p.display()))
                }
                None => Ok(NameList::default()),
            }
        };
        Ok(Detector::new(model).with_lists(list(&self.allowlist)?, list(&self.blocklist)?))
    }
}

fn main() -> std::process::ExitCode {
    // structured logs on stderr; RUST_LOG filters (default info), EXFILGUARD_LOG_FORMAT=json
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("EXFILGUARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    // 0: done, nothing malicious; 1: something malicious was found (classify, scan, replay);
    // 2: an error (bad input, bad configuration, a failed service) — as grep and clamscan do
    match run(Cli::parse()) {
        Ok(false) => std::process::ExitCode::SUCCESS,
        Ok(true) => std::process::ExitCode::from(1),
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("exfilguard: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `Ok(true)`: something malicious was found.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Classify { names, format } => {
            classify::run(&cli.brain.detector()?, &names, format)
        }
        Command::Scan(args) => scan::run(&cli.brain.detector()?, &args),
        Command::Replay(args) => replay::run(&cli.brain.detector()?, &args),
        command => other(cli.brain, command).map(|()| false),
    }
}

fn other(brain: BrainArgs, command: Command) -> Result<()> {
    match command {
        Command::Classify { .. } | Command::Scan(_) | Command::Replay(_) => {
            unreachable!("run() handles the commands that find")
        }
        Command::Eval(args) => eval::run(brain.detector()?, &args),
        Command::Run(args) => agent_cmd::run(&args),
        Command::Resolve(args) => agent_cmd::resolve(&brain, &args),
        Command::Demo(args) => demo::run(&args),
        Command::Protect(args) => protect::run(&brain, &args),
        Command::Config(args) => agent_cmd::config(&args),
        Command::Block(args) => agent_cmd::block(&args, false),
        Command::Attached { iface } => {
            let idx = exfilguard_agent::host::ifindex(&iface)?;
            let a = exfilguard_dataplane::attached_programs(idx)?;
            println!("{}", serde_json::to_string(&a)?);
            Ok(())
        }
        Command::Unblock(args) => agent_cmd::block(&args, true),
        Command::Quarantine(args) => agent_cmd::quarantine(&args),
        Command::Analytics(args) => agent_cmd::analytics(&args),
        Command::Features { names } => classify::features(&names),
        Command::ModelInfo { format } => classify::model_info(&brain.detector()?, format),
        Command::Dataset { action } => match action {
            DatasetCommand::Build {
                data,
                out,
                ngram_out,
                holdout_tools,
                holdout_families,
                synthetic,
            } => dataset::build(
                &data,
                &out,
                &ngram_out,
                &holdout_tools,
                &holdout_families,
                synthetic,
            ),
            DatasetCommand::Split {
                data,
                out,
                holdout_tools,
                holdout_families,
            } => {
                let rows = dataset::load(&data, &holdout_tools, &holdout_families)?;
                for p in dataset::write_test_slices(&rows, &out)? {
                    writeln!(std::io::stdout(), "{}", p.display())?;
                }
                Ok(())
            }
        },
    }
}
