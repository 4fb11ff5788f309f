//! The `leadscore` command line: wiring only.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use leadscore::codec::output::{output_to_json, snapshot_to_json};
use leadscore::config;
use leadscore::core::Timestamp;
use leadscore::replay::{replay_lines, Replayer};

#[derive(Parser)]
#[command(name = "leadscore", version, about = "Real-time B2B lead scoring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a rules file and print a summary.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the stream processor: consume tracking events from Kafka, publish
    /// score changes and threshold crossings. Stops cleanly on SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the engine over a file of JSON events, event time as the clock.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Segment JSON events, one message (or batch) per line; `-` for stdin.
        #[arg(long, short)]
        input: PathBuf,
        /// Where output events go, as JSON lines (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write every lead's final state here, one JSON line per lead.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// State as of this time (RFC 3339; default: the latest event time).
        #[arg(long)]
        at: Option<String>,
        /// Reject events older than the allowed lateness behind the latest
        /// event time read, as the live processor would.
        #[arg(long)]
        enforce_lateness: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Replay {
            config,
            input,
            output,
            snapshot,
            at,
            enforce_lateness,
        } => replay(
            &config,
            &input,
            output.as_deref(),
            snapshot.as_deref(),
            at.as_deref(),
            enforce_lateness,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::load(path, &env)?;
    print!("{}", config::summarize(&config.rules));
    let k = &config.kafka;
    println!(
        "kafka: {} -> {} (dead letters {}, changelog {}), group {}, {:?}",
        k.input_topic,
        k.output_topic,
        k.dead_letter_topic,
        k.changelog_topic,
        k.group_id,
        config.processing.guarantee
    );
    for name in &config.overridden_by_env {
        println!("overridden by environment: {name}");
    }
    println!("ok: {} is valid", path.display());
    Ok(())
}

fn run(path: &Path) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::load(path, &env)?;
    let shutdown = leadscore::kafka::Shutdown::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let on_signal = shutdown.clone();
    runtime.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested; finishing the batch in flight");
        on_signal.request();
    });
    // The processor loop blocks (librdkafka calls); it runs on this thread.
    leadscore::kafka::run(&config, &shutdown)
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::new(file))
}

fn replay(
    config_path: &Path,
    input: &Path,
    output: Option<&Path>,
    snapshot: Option<&Path>,
    at: Option<&str>,
    enforce_lateness: bool,
) -> anyhow::Result<()> {
    let rules = config::load_rules(config_path)?;
    let at = match at {
        Some(text) => match Timestamp::parse_rfc3339(text) {
            Some(t) => Some(t),
            None => bail!("--at \"{text}\" is not an RFC 3339 time such as 2026-11-25T10:00:00Z"),
        },
        None => None,
    };
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(BufReader::new(io::stdin()))
    } else {
        let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
        Box::new(BufReader::new(file))
    };
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(create(path)?),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut write_error: Option<io::Error> = None;
    let mut emit = |o: &leadscore::core::Output| {
        if write_error.is_none() {
            if let Err(e) = writeln!(out, "{}", output_to_json(o)) {
                write_error = Some(e);
            }
        }
    };
    let mut reject = |r: leadscore::replay::RejectedLine| eprintln!("rejected: {r}");

    let mut replayer = Replayer::new(&rules, enforce_lateness);
    replay_lines(&mut replayer, reader, &mut emit, &mut reject)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let (as_of, leads) = replayer.finish(at, &mut emit).map_err(anyhow::Error::msg)?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write outputs");
    }
    out.flush().context("cannot write outputs")?;
    drop(out);

    if let Some(path) = snapshot {
        let mut file = create(path)?;
        for lead in &leads {
            writeln!(file, "{}", snapshot_to_json(lead))?;
        }
        file.flush()?;
    }
    let s = &replayer.stats;
    eprintln!(
        "replayed {} lines: {} events, {} scored, {} duplicates, {} rejected; {} leads as of {}; {} score changes, {} threshold crossings",
        s.lines, s.events, s.applied, s.duplicates, s.rejected, leads.len(), as_of, s.score_changes, s.crossings
    );
    Ok(())
}
