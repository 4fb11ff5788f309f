//! The `leadscore` command line: wiring only.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use leadscore::codec::output::{account_snapshot_to_json, output_to_json, snapshot_to_json};
use leadscore::config;
use leadscore::core::Timestamp;
use leadscore::replay::{replay_lines, Replayer};

// Scoring allocates small, short-lived values per event (outputs, account
// updates, changelog records); glibc's allocator spent a third of `run`'s
// time on them and fragments a heap of millions of small lead states.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Another rules (or config) file, say the one deployed now: print
        /// what differs between its rules and these, and whether state it
        /// wrote can be restored under these.
        #[arg(long, value_name = "OLD")]
        against: Option<PathBuf>,
    },
    /// Run the stream processor: consume tracking events from Kafka, publish
    /// score changes and threshold crossings. Stops cleanly on SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Run as a shadow of the deployment the file configures: the same
        /// input read from its beginning, and its own group, changelog and
        /// `<output_topic>-shadow` (every topic and id gets `-shadow`), so
        /// new rules can be compared with `leadscore diff` first.
        #[arg(long)]
        shadow: bool,
        /// With a rules file of several scores (`[[scores]]`): run this one
        /// alone (without it, every score runs, side by side). A score's
        /// group, changelogs, account and identity topics and transactional
        /// id get `-NAME`; it reads the file's input and publishes to its
        /// output topic, each output naming its score.
        #[arg(long, value_name = "NAME")]
        score: Option<String>,
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
    /// Compare a shadow deployment (`run --config NEW --shadow`) with the
    /// live one: leads per tier, leads whose tier differs, the largest
    /// movers with both explanations, and what each published lately.
    Diff {
        /// The shadow's file (the new rules; its topics get `-shadow`).
        #[arg(long, short)]
        config: PathBuf,
        /// The live deployment's file.
        #[arg(long)]
        live: PathBuf,
        /// Compare outputs published over this many days.
        #[arg(long, default_value_t = 7.0)]
        days: f64,
        /// How many of the largest movers to list.
        #[arg(long, default_value_t = 20)]
        movers: usize,
        /// Write report.md and tiers.svg into this directory.
        #[arg(long)]
        report: Option<PathBuf>,
        /// With rules files of several scores (`[[scores]]`): the score to
        /// compare (its state, and the outputs that name it).
        #[arg(long, value_name = "NAME")]
        score: Option<String>,
    },
    /// Hand the live deployment's output topic over to its shadow (new
    /// rules, `run --config NEW --shadow`), exactly once: stop both first.
    /// Each side is drained to a common cut-over offset per partition; the
    /// live one is then retired, and the configuration of the promoted
    /// deployment is written to `--write`. Its first run publishes a
    /// crossing for each lead whose tier differs from the old rules' last.
    Promote {
        /// The shadow's file (the new rules; its topics get `-shadow`).
        #[arg(long, short)]
        config: PathBuf,
        /// The live deployment's file.
        #[arg(long)]
        live: PathBuf,
        /// Where to write the promoted deployment's configuration: the new
        /// rules with the shadow's group and changelogs and the live output
        /// topic.
        #[arg(long)]
        write: PathBuf,
        /// How long to wait for both consumer groups to empty.
        #[arg(long, default_value_t = 120)]
        wait_seconds: u64,
    },
    /// Fit weights and thresholds to a history of events and outcomes, and
    /// report how well current and suggested rules rank converted leads.
    Calibrate {
        /// The rules to start from (their structure is kept; points,
        /// base, grade and tier minimums are suggested).
        #[arg(long, short)]
        config: PathBuf,
        /// Segment JSON events, one message (or batch) per line.
        #[arg(long, short, required_unless_present = "from_kafka")]
        events: Option<PathBuf>,
        /// Read the events from the config's `[kafka]` input topic instead:
        /// every partition from its beginning to its end as of the start.
        #[arg(long, conflicts_with = "events")]
        from_kafka: bool,
        /// CSV with `lead_id,converted[,decided_at]`; events of a lead after
        /// its decision time are left out. Without it, the outcomes that
        /// lifecycle rules (`outcome = "won"`/`"lost"`) record from the
        /// events, each decided just before the disposition that said so.
        #[arg(long)]
        outcomes: Option<PathBuf>,
        /// Decision time (RFC 3339) for leads without one (default: the
        /// latest event time).
        #[arg(long)]
        at: Option<String>,
        /// Write the suggested rules file here.
        #[arg(long)]
        out_rules: Option<PathBuf>,
        /// Write report.md, charts (SVG) and per-lead scores into this directory.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Cross-validation folds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Ridge penalty on standardised weights; higher is more cautious.
        #[arg(long, default_value_t = 1.0)]
        l2: f64,
        /// Suggest the lowest threshold whose leads convert at least this
        /// often (0..1).
        #[arg(long)]
        target_precision: Option<f64>,
        /// Suggest the threshold that sends sales about this many leads.
        #[arg(long)]
        capacity: Option<usize>,
        /// Version of the suggested rules (default: `<current>-calibrated`).
        #[arg(long = "rules-version")]
        rules_version: Option<String>,
        /// With a rules file of several scores (`[[scores]]`): the one to
        /// calibrate, against the outcomes given for it. The others are
        /// written back as they were.
        #[arg(long, value_name = "NAME")]
        score: Option<String>,
    },
}

/// Logs go to stderr: human lines by default, JSON objects when asked;
/// `RUST_LOG` wins over the configured level.
fn init_logging(logging: &config::LoggingSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&logging.level));
    let builder = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(filter);
    match logging.format {
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
        config::LogFormat::Text => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging(&config::LoggingSettings::default());
    }
    let result = match cli.command {
        Command::Check { config, against } => check(&config, against.as_deref()),
        Command::Run {
            config,
            shadow,
            score,
        } => run(&config, shadow, score.as_deref()),
        Command::Promote {
            config,
            live,
            write,
            wait_seconds,
        } => promote(&config, &live, &write, wait_seconds),
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
        Command::Diff {
            config,
            live,
            days,
            movers,
            report,
            score,
        } => diff(
            (&config, &live),
            days,
            movers,
            report.as_deref(),
            score.as_deref(),
        ),
        Command::Calibrate {
            config,
            events,
            from_kafka,
            outcomes,
            at,
            out_rules,
            report,
            folds,
            l2,
            target_precision,
            capacity,
            rules_version,
            score,
        } => calibrate(CalibrateArgs {
            config,
            events,
            from_kafka,
            outcomes,
            at,
            out_rules,
            report,
            folds,
            l2,
            target_precision,
            capacity,
            rules_version,
            score,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path, against: Option<&Path>) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::load(path, &env)?;
    if let Some(old_path) = against {
        let text = std::fs::read_to_string(old_path)
            .with_context(|| format!("cannot read {}", old_path.display()))?;
        let old = config::parse_scores(&text, old_path)?;
        print_scores_change(&old, &config, old_path, path);
    }
    leadscore::kafka::check_properties(&config.kafka)
        .map_err(|(key, message)| config::setting_error(path, "kafka.properties", &key, message))?;
    for (index, rules) in config.scores().enumerate() {
        if index > 0 {
            println!();
        }
        print!("{}", config::summarize(rules));
    }
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
    match config.http.listen.as_str() {
        "" => println!("http: off"),
        address => {
            let allowed = address.parse().is_ok_and(|a| {
                leadscore::ops::http::query_api_allowed(&a, config.http.token.as_deref())
            });
            println!(
                "http: {address} (query API {})",
                match (config.http.token.is_some(), allowed) {
                    (true, _) => "behind a bearer token",
                    (false, true) => "open, on loopback",
                    (false, false) => "off: not a loopback address and no [http] token",
                }
            )
        }
    }
    for name in &config.overridden_by_env {
        println!("overridden by environment: {name}");
    }
    println!("ok: {} is valid", path.display());
    Ok(())
}

/// What changes from the scores of `old` to those of `new`: score by
/// score, matched by name, and which were added or removed.
fn print_scores_change(
    old: &[leadscore::core::Rules],
    new: &config::Config,
    old_path: &Path,
    new_path: &Path,
) {
    for rules in new.scores() {
        match old.iter().find(|o| o.score_name == rules.score_name) {
            Some(was) => {
                if let Some(name) = &rules.score_name {
                    println!("score {name}:");
                }
                print_rules_change(was, rules, old_path, new_path);
            }
            None => println!(
                "score {} is new: its state starts empty (a shadow run gives it history)",
                rules.score_name.as_deref().unwrap_or("(unnamed)")
            ),
        }
    }
    for was in old {
        if !new.scores().any(|rules| rules.score_name == was.score_name) {
            println!(
                "score {} is removed: its state is no longer read",
                was.score_name.as_deref().unwrap_or("(unnamed)")
            );
        }
    }
}

/// What changes in the rules from `old` to `new`, and what it means for
/// the state `old` wrote.
fn print_rules_change(
    old: &leadscore::core::Rules,
    new: &leadscore::core::Rules,
    old_path: &Path,
    new_path: &Path,
) {
    let (was, is) = (old.stamp(), new.stamp());
    println!(
        "rules change: {} (version {:?}, fingerprint {}) -> {} (version {:?}, fingerprint {})",
        old_path.display(),
        was.version,
        was.fingerprint,
        new_path.display(),
        is.version,
        is.fingerprint
    );
    let differences = leadscore::core::fingerprint::differences(old, new);
    for difference in &differences {
        println!("{difference}");
    }
    if differences.is_empty() {
        println!(
            "no difference in what scores: state written under the old rules is restored under \
             these{}",
            if was.version == is.version {
                ""
            } else {
                " (outputs will name the new version)"
            }
        );
    } else {
        if was.version == is.version {
            println!(
                "warning: the content differs but the version does not; give these rules a new \
                 version"
            );
        }
        let outline = leadscore::core::migration::RulesOutline::of(old);
        match leadscore::core::migration::Migration::plan(&outline, new) {
            Ok(_) => println!(
                "re-scored in place: state written under the old rules is restored under these \
                 and re-evaluated at start-up; each lead whose tier changes, or whose score moves \
                 by `step` or more, gets outputs with cause \"rules_changed\""
            ),
            Err(reasons) => {
                println!("needs history: state written under the old rules cannot answer these:");
                for reason in reasons {
                    println!("  - {reason}");
                }
                println!(
                    "state written under the old rules is not restored under these (run stops, \
                     naming why): deploy them with a new changelog topic and consumer group, and \
                     replay history into them"
                );
            }
        }
    }
}

/// `promote` hands over deployments of one score.
fn one_score(config: &config::Config, path: &Path, command: &str) -> anyhow::Result<()> {
    if config.more_scores.is_empty() {
        return Ok(());
    }
    bail!(
        "{} holds {} scores ([[scores]]); `leadscore {command}` takes a file with one for now",
        path.display(),
        config.scores().count()
    )
}

fn run(path: &Path, shadow: bool, score: Option<&str>) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::load(path, &env)?;
    init_logging(&config.logging);
    let runs = scores_to_run(config, score, shadow)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let config = &runs[0];
    let shutdown = leadscore::kafka::Shutdown::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let metrics = leadscore::ops::metrics::install().context("cannot set up metrics")?;
    // Per score run: the health of its stream threads, and one query
    // queue per thread (a query goes to each).
    let statuses: Vec<_> = runs
        .iter()
        .map(|c| std::sync::Arc::new(leadscore::ops::status::Status::new(c.processing.threads)))
        .collect();
    let (queries, answer_from): (Vec<_>, Vec<Vec<_>>) = runs
        .iter()
        .map(|c| -> (Vec<_>, Vec<_>) {
            (0..c.processing.threads)
                .map(|_| std::sync::mpsc::sync_channel(leadscore::ops::http::QUERY_QUEUE))
                .unzip()
        })
        .unzip();
    let queries: Vec<_> = queries.into_iter().flatten().collect();
    if !config.http.listen.is_empty() {
        let address = &config.http.listen;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("cannot listen on [http] listen = {address}"))?;
        let bound = listener
            .local_addr()
            .map_or(address.clone(), |a| a.to_string());
        let query_api = listener.local_addr().is_ok_and(|a| {
            leadscore::ops::http::query_api_allowed(&a, config.http.token.as_deref())
        });
        if query_api {
            tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz, /v1/leads and /v1/accounts");
        } else {
            tracing::warn!(
                address = %bound,
                "serving /metrics, /healthz and /readyz; the query API (/v1/...) is off: \
                 [http] listen is not a loopback address and no [http] token is set"
            );
        }
        let state = leadscore::ops::http::AppState {
            statuses: statuses.clone(),
            queries,
            metrics: metrics.clone(),
            token: config.http.token.clone(),
            stuck_after: std::time::Duration::from_millis(config.http.stuck_after_ms),
            query_api,
        };
        let max_connections = config.http.max_connections;
        runtime.spawn(leadscore::ops::http::serve(
            listener,
            state,
            max_connections,
        ));
        runtime.spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        });
    }
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
    let reload = leadscore::kafka::Reload::default();
    let on_hangup = reload.clone();
    runtime.spawn(async move {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP");
                    return;
                }
            };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the rules again after the batch in flight");
            on_hangup.request();
        }
    });
    // The stream threads block (librdkafka calls); they run beside the
    // runtime's, each score's on a thread of its own.
    let mut work: Vec<_> = runs.iter().zip(&statuses).zip(answer_from).collect();
    if work.len() == 1 {
        let ((config, status), answer_from) = work.remove(0);
        return leadscore::kafka::run(config, path, &shutdown, &reload, status, answer_from);
    }
    std::thread::scope(|scope| {
        let running: Vec<_> = work
            .into_iter()
            .map(|((config, status), answer_from)| {
                let (shutdown, reload) = (&shutdown, &reload);
                let name = config
                    .running_score
                    .as_ref()
                    .map_or("", |s| s.name.as_str());
                std::thread::Builder::new()
                    .name(format!("score-{name}"))
                    .spawn_scoped(scope, move || {
                        let result = leadscore::kafka::run(
                            config,
                            path,
                            shutdown,
                            reload,
                            status,
                            answer_from,
                        );
                        if result.is_err() {
                            // The process stops as a whole.
                            shutdown.request();
                        }
                        result
                    })
            })
            .collect();
        leadscore::kafka::join_all(running, &shutdown, "a score's thread")
    })
}

/// What a `run` process scores: the file's one score; the one `--score`
/// names; or, for a file of several without `--score`, each of them, side
/// by side, each with its own group, changelogs, ids and stream threads
/// (see [`config::Config::run_score`]).
fn scores_to_run(
    config: config::Config,
    score: Option<&str>,
    shadow: bool,
) -> Result<Vec<config::Config>, String> {
    let names: Vec<Option<String>> = match score {
        Some(name) => vec![Some(name.to_string())],
        None if config.more_scores.is_empty() => vec![None],
        None => config
            .scores()
            .map(|rules| rules.score_name.as_deref().map(str::to_string))
            .collect(),
    };
    let mut runs = Vec::new();
    for name in names {
        let mut run = config.clone();
        run.run_score(name.as_deref())?;
        if let Some(score) = &run.running_score {
            tracing::info!(
                score = %score.name,
                group = %run.kafka.group_id,
                changelog = %run.kafka.changelog_topic,
                publishes_rejects = score.publishes_rejects,
                "scoring a score of the file"
            );
        }
        if shadow {
            run.kafka.shadow();
            run.shadow = true;
            tracing::info!(
                group = %run.kafka.group_id,
                output = %run.kafka.output_topic,
                changelog = %run.kafka.changelog_topic,
                "shadow mode: scoring the input from its beginning into topics of its own"
            );
        }
        runs.push(run);
    }
    Ok(runs)
}

fn promote(shadow: &Path, live: &Path, write: &Path, wait_seconds: u64) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let live_config = config::load(live, &env)?;
    let mut shadow_config = config::load(shadow, &env)?;
    one_score(&live_config, live, "promote")?;
    one_score(&shadow_config, shadow, "promote")?;
    shadow_config.kafka.shadow();
    shadow_config.shadow = true;
    let source = std::fs::read_to_string(shadow)
        .with_context(|| format!("cannot read {}", shadow.display()))?;
    // Written before anything changes, so a file that cannot be written
    // stops the promotion before it starts.
    let text = config::promoted_text(&source, &shadow_config.kafka, &live_config.kafka)
        .map_err(|e| anyhow::anyhow!("{}: {e}", shadow.display()))?;
    let promotion = leadscore::kafka::promote::promote(
        (&live_config, live),
        (&shadow_config, shadow),
        std::time::Duration::from_secs(wait_seconds),
    )?;
    std::fs::write(write, text).with_context(|| format!("cannot write {}", write.display()))?;
    let overridden: Vec<&String> = shadow_config
        .overridden_by_env
        .iter()
        .filter(|name| name.starts_with("LEADSCORE_KAFKA_"))
        .collect();
    println!(
        "{} {} over to the rules of {} at input offsets {:?}.",
        if promotion.already_done {
            "Already promoted: the output topic was handed"
        } else {
            "Promoted: the output topic is handed"
        },
        live_config.kafka.output_topic,
        shadow.display(),
        promotion.cut_over
    );
    println!(
        "Run the promoted deployment with: leadscore run --config {}",
        write.display()
    );
    println!(
        "Its first transaction publishes a threshold_crossed (cause rules_changed) for each lead \
         whose tier differs from the one {} last published; {} is retired and will not start.",
        live.display(),
        live.display()
    );
    if !overridden.is_empty() {
        println!(
            "Environment variables set [kafka] settings ({}): the promoted deployment must not \
             carry those that name its group, changelogs or output.",
            overridden
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn diff(
    (shadow, live): (&Path, &Path),
    days: f64,
    movers: usize,
    report: Option<&Path>,
    score: Option<&str>,
) -> anyhow::Result<()> {
    if !(days.is_finite() && days > 0.0) {
        bail!("--days must be positive");
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut live_config = config::load(live, &env)?;
    let mut shadow_config = config::load(shadow, &env)?;
    for (config, path) in [(&mut live_config, live), (&mut shadow_config, shadow)] {
        config
            .run_score(score)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    shadow_config.kafka.shadow();
    let at = leadscore::kafka::wall_clock();
    let live_side = leadscore::kafka::diff::read_side(&live_config, at)
        .with_context(|| format!("the live deployment of {}", live.display()))?;
    let shadow_side = leadscore::kafka::diff::read_side(&shadow_config, at)
        .with_context(|| format!("the shadow of {}", shadow.display()))?;
    let tiers: Vec<String> = live_config
        .rules
        .tiers
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    let compared = leadscore::diff::Diff::of(
        (&live_side.version, &live_side.leads, &live_side.outputs),
        (
            &shadow_side.version,
            &shadow_side.leads,
            &shadow_side.outputs,
        ),
        &tiers,
        at,
        days,
        movers,
    );
    let markdown = compared.markdown();
    print!("{markdown}");
    if let Some(dir) = report {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("report.md", &markdown)?;
        write(
            "tiers.svg",
            &compared
                .tiers_svg()
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?,
        )?;
        eprintln!("report written to {}", dir.display());
    }
    Ok(())
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::new(file))
}

fn parse_at(at: Option<&str>) -> anyhow::Result<Option<Timestamp>> {
    match at {
        Some(text) => match Timestamp::parse_rfc3339(text) {
            Some(t) => Ok(Some(t)),
            None => bail!("--at \"{text}\" is not an RFC 3339 time such as 2026-11-25T10:00:00Z"),
        },
        None => Ok(None),
    }
}

struct CalibrateArgs {
    config: PathBuf,
    events: Option<PathBuf>,
    from_kafka: bool,
    outcomes: Option<PathBuf>,
    at: Option<String>,
    out_rules: Option<PathBuf>,
    report: Option<PathBuf>,
    folds: usize,
    l2: f64,
    target_precision: Option<f64>,
    capacity: Option<usize>,
    rules_version: Option<String>,
    score: Option<String>,
}

fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    use leadscore::calibrate::history::EventSource as _;
    use leadscore::calibrate::{self, history, report, Progress};

    if !(args.l2.is_finite() && args.l2 >= 0.0) {
        bail!("--l2 must be zero or positive");
    }
    if let Some(p) = args.target_precision {
        if !(0.0..=1.0).contains(&p) {
            bail!("--target-precision is a share between 0 and 1, e.g. 0.8");
        }
    }
    let source = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let mut events: Box<dyn history::EventSource> = match &args.events {
        Some(path) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("cannot open {}", path.display()))?
                .len();
            let path = path.clone();
            Box::new(history::JsonLines::new(
                move || File::open(&path).map(BufReader::new),
                size,
            ))
        }
        None => {
            debug_assert!(args.from_kafka);
            let env: Vec<(String, String)> = std::env::vars().collect();
            let config = config::load(&args.config, &env)?;
            let topic = leadscore::kafka::history::TopicHistory::open(&config)?;
            eprintln!(
                "reading {} records of topic {} from its beginning",
                topic.size(),
                topic.topic()
            );
            Box::new(topic)
        }
    };
    // Hidden when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(events.size().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>26} [{bar:40}] {percent:>3}%")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // Redrawn every half percent or so: a pass reports every line.
    let step = (events.size() / 200).max(1);
    let shown = std::cell::Cell::new(0u64);
    let show = |message: &'static str, done: u64| {
        if done < shown.get() || done - shown.get() >= step {
            shown.set(done);
            bar.set_message(message);
            bar.set_position(done);
        }
    };
    let outcomes = match &args.outcomes {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            history::read_outcomes(BufReader::new(file))
                .with_context(|| path.display().to_string())?
        }
        None => {
            let rules = calibrate::score_of(&source, &args.config, args.score.as_deref())?;
            let outcomes = history::outcomes_from_events(&rules, &mut *events, &mut |done| {
                show("reading outcomes", done)
            })
            .context("outcomes from the events")?;
            bar.println(format!(
                "outcomes from lifecycle rules: {} leads, {} converted",
                outcomes.len(),
                outcomes.iter().filter(|o| o.converted).count()
            ));
            outcomes
        }
    };
    let options = calibrate::Options {
        folds: args.folds,
        fit: calibrate::logistic::FitOptions {
            l2: args.l2,
            ..Default::default()
        },
        version: args.rules_version.clone(),
        at: parse_at(args.at.as_deref())?,
        target_precision: args.target_precision,
        capacity: args.capacity,
        score: args.score.clone(),
    };

    let events_size = events.size().max(1);
    let mut on_progress = |p: Progress| match p {
        Progress::Replay { pass, done } => {
            bar.set_length(events_size);
            show(
                if pass == 1 {
                    "replaying current rules"
                } else {
                    "replaying suggested rules"
                },
                done,
            );
        }
        Progress::Folds { done, of } => {
            bar.set_message("cross-validating");
            bar.set_length(of as u64);
            bar.set_position(done as u64);
        }
    };
    let result = calibrate::calibrate(
        &source,
        &args.config,
        &mut *events,
        &outcomes,
        options,
        &mut on_progress,
    );
    bar.finish_and_clear();
    let calibration = result?;

    let rules_name = args.config.display().to_string();
    let mut summary = report::markdown(&calibration, &rules_name);
    if let Some(path) = &args.out_rules {
        std::fs::write(path, &calibration.suggested_rules)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("suggested rules written to {}", path.display());
    }
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        let labels = &calibration.labels;
        let chart = |r: Result<String, String>| r.map_err(|e| anyhow::anyhow!("chart: {e}"));
        write(
            "bands.svg",
            &chart(report::bands_svg(&calibration.suggested, labels))?,
        )?;
        write(
            "bands-current.svg",
            &chart(report::bands_svg(&calibration.current, labels))?,
        )?;
        write(
            "roc.svg",
            &chart(report::roc_svg(
                &calibration.current,
                &calibration.suggested,
                labels,
            ))?,
        )?;
        write("scores.csv", &report::scores_csv(&calibration))?;
        write("rules.toml", &calibration.suggested_rules)?;
        summary.push_str(
            "\n## Charts\n\n![Leads and conversion by score band, suggested rules](bands.svg)\n\n\
             ![Leads and conversion by score band, current rules](bands-current.svg)\n\n\
             ![ROC curves](roc.svg)\n",
        );
        write("report.md", &summary)?;
        eprintln!("report written to {}", dir.display());
    }
    print!("{summary}");
    Ok(())
}

fn replay(
    config_path: &Path,
    input: &Path,
    output: Option<&Path>,
    snapshot: Option<&Path>,
    at: Option<&str>,
    enforce_lateness: bool,
) -> anyhow::Result<()> {
    let scores = config::load_scores(config_path)?;
    let at = parse_at(at)?;
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

    let mut replayer = Replayer::of_scores(&scores, enforce_lateness);
    if let Some(at) = at {
        replayer = replayer.until(at);
    }
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
        for account in &replayer.account_snapshot(as_of) {
            writeln!(file, "{}", account_snapshot_to_json(account))?;
        }
        file.flush()?;
    }
    let s = &replayer.stats;
    eprintln!(
        "replayed {} lines: {} events, {} scored, {} duplicates, {} rejected; {} leads as of {}; {} score changes, {} threshold crossings",
        s.lines, s.events, s.applied, s.duplicates, s.rejected, leads.len(), as_of, s.score_changes, s.crossings
    );
    if !s.filtered.is_empty() {
        let by_reason: Vec<String> = s
            .filtered
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        eprintln!(
            "{} events filtered as not a person's: {}",
            s.filtered.values().sum::<u64>(),
            by_reason.join(", ")
        );
    }
    if s.erasures > 0 || s.dropped_erased > 0 {
        eprintln!(
            "{} leads erased; {} events dropped as from before their lead's erasure",
            s.erasures, s.dropped_erased
        );
    }
    Ok(())
}
