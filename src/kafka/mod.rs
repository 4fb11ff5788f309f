//! The Kafka edge: the stream processor (`leadscore run`), its changelog
//! restore, topic set-up and the records it writes.
//!
//! Delivery guarantees, and where they stop holding:
//!
//! - `exactly_once` (default): per batch, one Kafka transaction holds the
//!   outputs, the dead-letter records, the changelog records of every lead
//!   the batch touched and the consumer offsets (KIP-447, with the group's
//!   metadata). On brokers with full transaction support a `read_committed`
//!   subscriber sees every output once, across crashes and rebalances.
//! - On any broker, transactions or not (`at_least_once`), state stays
//!   exact: a lead remembers the highest input offset applied to it, so a
//!   redelivered event is never applied twice; outputs are acknowledged
//!   before the changelog records of their batch are sent, so a visible
//!   changelog record implies its outputs are visible too. Repeated outputs
//!   carry the same deterministic `event_id` and content.
//! - The same holds for the identity topic, through which partitions hand
//!   each other the histories of identities `alias` joined across
//!   partitions (see [`crate::core::handoff`]): a handoff seen twice, or
//!   from an aborted transaction, is recognised by the position it covers.

//!
//! The runtime is a driver per stream thread ([`driver`]: the consumer,
//! the producer, the transaction, rebalances) and tasks that own one
//! partition's state each ([`tasks`]). `[processing] threads = N` runs N
//! drivers in one process, each a member of the group.

mod admin;
mod clients;
pub mod diff;
mod driver;
pub mod history;
mod offsets;
mod poison;
pub mod promote;
mod records;
mod restore;
mod tasks;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::codec::{Decoder, Encoding};
use crate::config::{Config, Guarantee};
use crate::core::Timestamp;
use crate::ops::metrics as m;
use crate::ops::status::{LeadQuery, Status};
use clients::CLIENT_TIMEOUT;
use driver::{Driver, ThreadIds};
use tasks::{Shared, Topics};

/// Requests (SIGHUP) to read the rules from the configuration file again,
/// shared with the signal handler and every stream thread: each acts on
/// the latest between two batches.
#[derive(Clone, Default)]
pub struct Reload(Arc<AtomicU64>);

impl Reload {
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// How many reloads have been requested so far.
    pub fn requests(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A request to stop after the batch in flight, shared with signal
/// handlers and every stream thread.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `[processing] threads` stream threads, one per queue of
/// `queries`, until `shutdown` is requested (then each finishes and
/// commits its batch in flight, leaves the group and the call returns
/// `Ok`) or one meets a fatal error (fenced by a newer instance, broker
/// refuses the transaction): then the others stop too and the error is
/// returned.
/// `config_path`: the file `config` was read from, read again for its
/// rules when `reload` is requested.
pub fn run(
    config: &Config,
    config_path: &Path,
    shutdown: &Shutdown,
    reload: &Reload,
    status: &Status,
    queries: Vec<Receiver<LeadQuery>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let kafka = &config.kafka;
    let base = clients::base_config(kafka);
    if kafka.create_topics {
        admin::ensure_topics(&base, kafka, config.rules.accounts.is_some())?;
    }
    let creation_off = if kafka.create_topics {
        ""
    } else {
        " (and create_topics is off)"
    };
    let Some(input_partitions) = admin::partition_count(&base, &kafka.input_topic)? else {
        bail!(
            "input topic {} does not exist{creation_off}",
            kafka.input_topic
        );
    };
    let identity_topic = kafka.identity_topic();
    match admin::partition_count(&base, &identity_topic)? {
        Some(n) if n == input_partitions => {}
        Some(n) => bail!(
            "identity topic {identity_topic} has {n} partitions; it must have the input's \
             {input_partitions}"
        ),
        None => bail!(
            "identity topic {identity_topic} does not exist{creation_off}: create it with the \
             input's {input_partitions} partitions"
        ),
    }
    let account_partitions = match config.rules.accounts {
        Some(_) => match admin::partition_count(&base, &kafka.account_updates_topic)? {
            Some(n) => Some(i32::try_from(n).unwrap_or(i32::MAX)),
            None => bail!(
                "account updates topic {} does not exist{creation_off}: create it with the \
                 input's {input_partitions} partitions",
                kafka.account_updates_topic
            ),
        },
        None => None,
    };
    let default_encoding = Encoding::from_content_type(&config.processing.default_content_type)
        .map_err(|e| anyhow!("{e}"))?;
    let mut decoder = Decoder::for_rules(&config.rules);
    decoder.limits.max_message_bytes = config.processing.max_message_bytes;
    let rules = Arc::new(config.rules.clone());
    let stamp = rules.stamp();
    let transactional = config.processing.guarantee == Guarantee::ExactlyOnce;
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "rules_version" => config.rules.version.to_string()).set(1.0);
    metrics::gauge!(m::SHADOW).set(if config.shadow { 1.0 } else { 0.0 });
    if config.shadow {
        admin::warn_if_history_is_short(&base, &kafka.input_topic, &config.rules);
    }
    let threads = queries.len();
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // However this closure ends, a panic of a stream thread included
        // (resumed below): the scope waits for the watchdog, which must
        // stop, or the process would hang, deaf to SIGTERM.
        let _finish = Finish(&finished);
        let watchdog = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn_scoped(scope, || end_if_a_call_hangs(status, &finished));
        if let Err(e) = watchdog {
            bail!("cannot start the watchdog thread: {e}");
        }
        let running: Vec<_> = queries
            .into_iter()
            .enumerate()
            .map(|(thread, queries)| {
                let shared = Shared {
                    config,
                    rules: rules.clone(),
                    stamp: stamp.clone(),
                    decoder: decoder.clone(),
                    default_encoding,
                    topics: Topics::of(config),
                    input_partitions: i32::try_from(input_partitions).unwrap_or(i32::MAX),
                    account_partitioning: account_partitions
                        .map(|n| tasks::AccountPartitioning::new(config, n)),
                    read_committed: transactional,
                    base: base.clone(),
                };
                let ids = ThreadIds {
                    thread,
                    transactional_id: transactional
                        .then(|| thread_id(kafka.transactional_id(), thread, threads)),
                    group_instance_id: kafka
                        .group_instance_id()
                        .map(|id| thread_id(id, thread, threads)),
                };
                std::thread::Builder::new()
                    .name(format!("stream-{thread}"))
                    .spawn_scoped(scope, move || {
                        let _score = config.running_score.as_ref().map(|score| {
                            tracing::info_span!("score", score = %score.name).entered()
                        });
                        let _span =
                            (threads > 1).then(|| tracing::info_span!("stream", thread).entered());
                        let work = || {
                            Driver::start(ids, shared, status, queries, started)
                                .and_then(|driver| driver.run(shutdown, (reload, config_path)))
                        };
                        let result = match &config.running_score {
                            Some(score) => m::with_score_label(&score.name, work),
                            None => work(),
                        };
                        if result.is_err() {
                            // The process stops as a whole; the others
                            // leave the group on their way out.
                            shutdown.request();
                        }
                        result
                    })
            })
            .collect();
        join_all(running, shutdown, "a stream thread")
    })
}

/// Waits for every thread of `running` (a panic goes on up the caller's
/// thread) and returns the first error. One that could not start (`what`
/// says which) asks the others to stop.
pub fn join_all(
    running: Vec<std::io::Result<std::thread::ScopedJoinHandle<'_, anyhow::Result<()>>>>,
    shutdown: &Shutdown,
    what: &str,
) -> anyhow::Result<()> {
    let mut first_error = None;
    for thread in running {
        let result = match thread {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                shutdown.request();
                Err(anyhow!("cannot start {what}: {e}"))
            }
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Tells the watchdog to stop when dropped.
struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How long past its own timeout a client call may go on before the
/// process gives up on it.
const OVERDUE_AFTER: Duration = Duration::from_secs(2 * CLIENT_TIMEOUT.as_secs());

/// Ends the process when a stream thread stays inside a client call long
/// after the call's timeout. librdkafka's `send_offsets_to_transaction`
/// can wait forever while the group coordinator is down, whatever its
/// timeout (librdkafka issues 5456 and 5511); the thread cannot be
/// interrupted there, and it holds its partitions. Exiting is safe: the
/// open transaction is never committed (the broker aborts it, or the
/// successor's `init_transactions` with the same id fences and ends it),
/// so a restart resumes from the last commit, exactly once.
fn end_if_a_call_hangs(status: &Status, finished: &AtomicBool) {
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        if let Some((call, for_)) = status.overdue_call(OVERDUE_AFTER) {
            tracing::error!(
                call,
                seconds = for_.as_secs(),
                timeout_seconds = CLIENT_TIMEOUT.as_secs(),
                "a Kafka client call is stuck far past its timeout (a known librdkafka \
                 hang while a coordinator is down); exiting so that a restart resumes \
                 from the last committed transaction"
            );
            std::process::exit(1);
        }
    }
}

/// The transactional or group instance id of stream thread `thread`: the
/// configured one alone, `<id>-<thread>` with several threads.
fn thread_id(id: String, thread: usize, threads: usize) -> String {
    if threads == 1 {
        id
    } else {
        format!("{id}-{thread}")
    }
}

pub fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp(ms)
}

/// Waits until every record `producer` holds is delivered or has failed,
/// serving delivery reports meanwhile.
///
/// `rdkafka`'s own `flush` (and `commit_transaction`, which begins with
/// it) polls in fixed 100 ms slices whenever a record is still in flight,
/// so every flush cost at least 100 ms however fast the broker answered;
/// that was most of a batch's time in `leadscore run`. This one checks
/// again after each millisecond. Call it before `commit_transaction`: that
/// then finds nothing left to flush.
pub fn flush_promptly<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // A zero timeout only nudges librdkafka to send what lingers now.
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                producer.poll(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether librdkafka accepts every `[kafka.properties]` entry (names and
/// values), without connecting: `check` reports a typo before `run` would.
/// `Err` names the first entry refused, and why.
pub fn check_properties(kafka: &crate::config::KafkaSettings) -> Result<(), (String, String)> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    // One at a time, so the error names its entry; some properties are
    // judged only with the others (e.g. a mechanism and its credentials).
    for (key, value) in &kafka.properties {
        config.set(key, value);
        if let Err(e) = config.create_native_config() {
            return Err((key.clone(), format!("[kafka.properties] \"{key}\": {e}")));
        }
    }
    Ok(())
}
pub use records::headers;
