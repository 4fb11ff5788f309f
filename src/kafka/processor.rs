//! `leadscore run`: one consumer-group member that scores tracking events.
//!
//! The loop owns every side effect; the core only returns what should
//! happen. Per batch (closed by `commit_interval_ms` or `max_batch`):
//! decode and score the batch's messages, fire due decay timers, produce
//! outputs and dead letters, wait until they are acknowledged, produce the
//! changelog records of every lead the batch changed, then commit the
//! input offsets — inside one transaction in `exactly_once` mode.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::admin;
use super::poison::{Position, Retries};
use super::records::{
    dead_letter_headers, fit_dead_letter, header_text, headers_bytes, output_headers, output_value,
    DeadLetter,
};
use super::restore::{restore_account_partitions, restore_partitions};
use crate::codec::account::{decode_account_update, encode_account_state, encode_account_update};
use crate::codec::identity::{decode_handoff, encode_handoff};
use crate::codec::proto::encode_changelog;
use crate::codec::{Decoder, Encoding};
use crate::config::{Config, Guarantee, TimerClock};
use crate::core::account::{AccountEngine, AccountUpdate};
use crate::core::{Engine, Outcome, Output, OutputKind, Rules, Timestamp};
use crate::ops::metrics as m;
use crate::ops::partitioner::partition_of;
use crate::ops::status::{LeadAnswer, LeadQuery, Status, Subject};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Items of one batch envelope share an input offset; each gets its own
/// position below it. Envelopes with more items are dead-lettered.
const MAX_BATCH_ITEMS: usize = 1 << POSITION_ITEM_BITS;
const POSITION_ITEM_BITS: u32 = 10;

/// A request to stop after the batch in flight, shared with signal handlers.
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

/// Partition assignment changes, recorded during `poll` and acted on by the
/// loop right after it.
enum AssignmentChange {
    Assigned(Held),
    Revoked(Held),
}

/// Partitions of the input topic, the identity topic and the account
/// updates topic.
#[derive(Default)]
struct Held {
    input: Vec<i32>,
    identities: Vec<i32>,
    accounts: Vec<i32>,
}

struct GroupContext {
    input_topic: String,
    identity_topic: String,
    /// With `[accounts]`.
    account_topic: Option<String>,
    read_committed: bool,
    changes: Mutex<Vec<AssignmentChange>>,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Held {
        let of = |topic: &str| -> Vec<i32> {
            list.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        };
        Held {
            input: of(&self.input_topic),
            identities: of(&self.identity_topic),
            accounts: self.account_topic.as_deref().map(of).unwrap_or_default(),
        }
    }

    fn record(&self, change: AssignmentChange) {
        self.changes.lock().expect("poisoned").push(change);
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) give each
    /// partition's end and the offset the loop has taken; their librdkafka
    /// `consumer_lag` needs offsets committed by the consumer itself, which
    /// transactions do not do.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.input_topic) else {
            return;
        };
        for (&partition, p) in &topic.partitions {
            if partition < 0 || !p.desired {
                continue;
            }
            let end = if self.read_committed {
                p.ls_offset
            } else {
                p.hi_offset
            };
            let taken = if p.app_offset >= 0 {
                p.app_offset
            } else {
                p.next_offset
            };
            if end >= 0 && taken >= 0 {
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                    .set((end - taken).max(0) as f64);
            }
        }
    }
}

/// Client errors worth a log line; the end of a partition is not one.
pub(super) fn quiet_error(error: KafkaError, reason: &str) {
    let end_of_partition = matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    );
    if !end_of_partition {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.record(AssignmentChange::Revoked(self.partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.record(AssignmentChange::Assigned(self.partitions(list)));
        }
    }
}

/// Counts deliveries that failed, so a batch is never committed over a
/// lost record.
#[derive(Default)]
struct DeliveryContext {
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DeliveryContext {
    /// The failures counted since the last call, with the last one's
    /// reason; forgets them.
    fn take_failures(&self) -> (u64, Option<String>) {
        let failures = self.failures.swap(0, Ordering::SeqCst);
        (failures, self.last_error.lock().expect("poisoned").take())
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failures.fetch_add(1, Ordering::SeqCst);
            *self.last_error.lock().expect("poisoned") =
                Some(format!("delivery to {} failed: {error}", message.topic()));
        }
    }
}

/// One partition of the account updates topic: the accounts keyed to it.
struct AccountPartition {
    engine: AccountEngine,
    /// The latest update time seen: the account timers' clock while
    /// catching up.
    watermark: Option<Timestamp>,
    at_end: bool,
}

struct PartitionState {
    engine: Engine,
    /// The consumer has read to the end of the partition: decay timers then
    /// follow the wall clock; while catching up they follow event time.
    at_end: bool,
}

/// A batch failed in a way the processor recovers from: abort, rewind to
/// the committed offsets, restore state, go on.
struct Retry(anyhow::Error);

#[derive(Default)]
struct Counters {
    consumed: u64,
    scored: u64,
    duplicates: u64,
    dead_lettered: u64,
    outputs: u64,
    batches: u64,
}

struct Processor<'c> {
    /// When `run` began: recovery after a restart is measured from here to
    /// the first committed batch.
    started: Instant,
    first_commit_logged: bool,
    config: &'c Config,
    status: &'c Status,
    queries: std::sync::mpsc::Receiver<LeadQuery>,
    /// Of the input topic, to name the partition of a lead held elsewhere.
    input_partitions: i32,
    rules: Arc<Rules>,
    decoder: Decoder,
    default_encoding: Encoding,
    base: ClientConfig,
    consumer: BaseConsumer<GroupContext>,
    producer: BaseProducer<DeliveryContext>,
    transactional: bool,
    partitions: BTreeMap<i32, PartitionState>,
    /// Handoffs between partitions for alias merges; its partitions go
    /// with the input's.
    identity_topic: String,
    /// An input key was seen on another partition than the configured
    /// partitioner gives (said once, counted always).
    misrouted_warned: bool,
    /// With `[accounts]`: the account updates topic and its partitions held.
    account_topic: Option<String>,
    accounts: BTreeMap<i32, AccountPartition>,
    counters: Counters,
    retries: Retries,
}

/// Runs the processor until `shutdown` is requested (then finishes and
/// commits the batch in flight, leaves the group and returns `Ok`) or a
/// fatal error (fenced by a newer instance, broker refuses the
/// transaction): then returns the error.
pub fn run(
    config: &Config,
    shutdown: &Shutdown,
    status: &Status,
    queries: std::sync::mpsc::Receiver<LeadQuery>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let kafka = &config.kafka;
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        base.set(key, value);
    }
    if kafka.create_topics {
        admin::ensure_topics(&base, kafka, config.rules.accounts.is_some())?;
    }
    let Some(input_partitions) = admin::partition_count(&base, &kafka.input_topic)? else {
        bail!(
            "input topic {} does not exist (and create_topics is off)",
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
            "identity topic {identity_topic} does not exist (and create_topics is off): create \
             it with the input's {input_partitions} partitions"
        ),
    }
    let transactional = config.processing.guarantee == Guarantee::ExactlyOnce;

    let mut producer_config = base.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "transaction.timeout.ms",
            config.processing.transaction_timeout_ms.to_string(),
        );
    if transactional {
        producer_config.set("transactional.id", kafka.transactional_id());
        // A record stuck in the queue (say, behind an abortable error)
        // must fail here before the broker times the transaction out:
        // that bumps the epoch and would fence this producer for good,
        // where a local failure only aborts and retries the batch.
        producer_config.set(
            "message.timeout.ms",
            (config.processing.transaction_timeout_ms / 2)
                .max(1000)
                .to_string(),
        );
    }
    user_wins(&mut producer_config, kafka);
    let producer: BaseProducer<DeliveryContext> = producer_config
        .create_with_context(DeliveryContext::default())
        .context("cannot create the producer")?;
    if transactional {
        // Also fences a dead predecessor with the same transactional id and
        // ends its open transaction, before anything is restored.
        producer
            .init_transactions(CLIENT_TIMEOUT)
            .context("cannot initialise transactions")?;
    }

    let account_topic = config
        .rules
        .accounts
        .is_some()
        .then(|| kafka.account_updates_topic.clone());
    let mut consumer_config = base.clone();
    consumer_config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set(
            "isolation.level",
            if transactional {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    if let Some(id) = kafka.group_instance_id() {
        consumer_config.set("group.instance.id", id);
    }
    user_wins(&mut consumer_config, kafka);
    let consumer: BaseConsumer<GroupContext> = consumer_config
        .create_with_context(GroupContext {
            input_topic: kafka.input_topic.clone(),
            identity_topic: identity_topic.clone(),
            account_topic: account_topic.clone(),
            read_committed: transactional,
            changes: Mutex::new(Vec::new()),
        })
        .context("cannot create the consumer")?;
    let mut topics = vec![kafka.input_topic.as_str(), identity_topic.as_str()];
    topics.extend(account_topic.as_deref());
    consumer
        .subscribe(&topics)
        .context("cannot subscribe to the input topic")?;

    let default_encoding = Encoding::from_content_type(&config.processing.default_content_type)
        .map_err(|e| anyhow!("{e}"))?;
    let mut decoder = Decoder::for_rules(&config.rules);
    decoder.limits.max_message_bytes = config.processing.max_message_bytes;
    let mut processor = Processor {
        started,
        first_commit_logged: false,
        config,
        status,
        queries,
        input_partitions: i32::try_from(input_partitions).unwrap_or(i32::MAX),
        rules: Arc::new(config.rules.clone()),
        decoder,
        default_encoding,
        base,
        consumer,
        producer,
        transactional,
        partitions: BTreeMap::new(),
        identity_topic,
        misrouted_warned: false,
        account_topic,
        accounts: BTreeMap::new(),
        counters: Counters::default(),
        retries: Retries::new(config.processing.poison_after_attempts),
    };
    tracing::info!(
        input = %kafka.input_topic,
        output = %kafka.output_topic,
        guarantee = ?config.processing.guarantee,
        rules_version = %config.rules.version,
        group_instance_id = kafka.group_instance_id().as_deref().unwrap_or("(dynamic membership)"),
        "processor started"
    );
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "rules_version" => config.rules.version.to_string()).set(1.0);
    status.set_ready(false);
    let mut last_report = Instant::now();
    while !shutdown.is_requested() {
        let batch = processor.collect(shutdown)?;
        processor.process_or_recover(batch)?;
        if last_report.elapsed() > Duration::from_secs(10) {
            processor.report();
            last_report = Instant::now();
        }
    }
    processor.report();
    processor.leave_group();
    tracing::info!("processor stopped");
    Ok(())
}

/// librdkafka properties from the config file win over leadscore's own.
fn user_wins(config: &mut ClientConfig, kafka: &crate::config::KafkaSettings) {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
}

/// Where a partition's processing resumes after a restore.
#[derive(Debug, PartialEq)]
enum Resume {
    /// From the committed offset (or the first record, with no watermark
    /// yet, when nothing is committed), where the watermark was this.
    At(Option<Timestamp>),
    /// From the committed offset; its watermark was not recorded.
    Unknown,
}

const WATERMARK_METADATA: &str = "leadscore-watermark=";
const GENERATION_METADATA: &str = ";generation=";

/// The metadata committed with an input partition's offset: the
/// partition's event-time watermark, and the group generation it was
/// committed in (a restarted static member that finds its own generation
/// took its partitions back without a rebalance).
fn commit_metadata(watermark: Option<Timestamp>, generation: Option<i32>) -> String {
    let mut metadata = WATERMARK_METADATA.to_string();
    if let Some(w) = watermark {
        metadata.push_str(&w.millis().to_string());
    }
    if let Some(g) = generation {
        metadata.push_str(&format!("{GENERATION_METADATA}{g}"));
    }
    metadata
}

fn parse_watermark_metadata(metadata: &str) -> Resume {
    let watermark = metadata
        .split_once(GENERATION_METADATA)
        .map_or(metadata, |(w, _)| w);
    match watermark.strip_prefix(WATERMARK_METADATA) {
        Some("") => Resume::At(None),
        Some(ms) => ms
            .parse()
            .map_or(Resume::Unknown, |ms| Resume::At(Some(Timestamp(ms)))),
        None => Resume::Unknown,
    }
}

fn parse_generation_metadata(metadata: &str) -> Option<i32> {
    metadata
        .split_once(GENERATION_METADATA)
        .and_then(|(_, g)| g.parse().ok())
}

fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp(ms)
}

impl Processor<'_> {
    /// Polls until the commit interval passes or the batch is full, acting
    /// on assignment changes as they come.
    fn collect(&mut self, shutdown: &Shutdown) -> anyhow::Result<Vec<OwnedMessage>> {
        let interval = Duration::from_millis(self.config.processing.commit_interval_ms);
        let deadline = Instant::now() + interval;
        let mut batch = Vec::new();
        let limit = self.retries.batch_limit(self.config.processing.max_batch);
        while batch.len() < limit && !shutdown.is_requested() {
            self.status.beat();
            self.answer_queries();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left) {
                Some(Ok(message)) => {
                    if message.topic() == self.config.kafka.input_topic {
                        if let Some(p) = self.partitions.get_mut(&message.partition()) {
                            p.at_end = false;
                        }
                    } else if self.account_topic.as_deref() == Some(message.topic()) {
                        if let Some(a) = self.accounts.get_mut(&message.partition()) {
                            a.at_end = false;
                        }
                    }
                    batch.push(message.detach());
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => self.reached_end(partition),
                Some(Err(e)) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        return Err(fatal_consumer_error(code, reason));
                    }
                    tracing::warn!(error = %e, "consumer error");
                }
                None => {}
            }
            self.apply_assignment_changes(&mut batch)?;
        }
        Ok(batch)
    }

    /// librdkafka reports the end of a partition without its topic; the
    /// identity topic always shares the input's partition numbers, so the
    /// consumer's position and the high watermark of its last fetch tell
    /// which topic is at its end (no broker round trip: this runs on every
    /// end-of-partition report).
    fn reached_end(&mut self, partition: i32) {
        let positions = self.consumer.position().ok();
        let at_end = |topic: &str| -> bool {
            let position = positions.as_ref().and_then(|list| {
                list.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            });
            let high = cached_high_watermark(&self.consumer, topic, partition);
            matches!((position, high), (Some(p), Some(h)) if p >= h)
        };
        if self.partitions.contains_key(&partition) && at_end(&self.config.kafka.input_topic) {
            if let Some(p) = self.partitions.get_mut(&partition) {
                p.at_end = true;
            }
        }
        if let Some(topic) = self.account_topic.clone() {
            if self.accounts.contains_key(&partition) && at_end(&topic) {
                if let Some(a) = self.accounts.get_mut(&partition) {
                    a.at_end = true;
                }
            }
        }
    }

    fn apply_assignment_changes(&mut self, batch: &mut Vec<OwnedMessage>) -> anyhow::Result<()> {
        let changes =
            std::mem::take(&mut *self.consumer.context().changes.lock().expect("poisoned"));
        for change in changes {
            match change {
                AssignmentChange::Revoked(held) => {
                    metrics::counter!(m::REBALANCES, "change" => "revoked").increment(1);
                    self.status.set_ready(false);
                    for p in &held.input {
                        self.partitions.remove(p);
                        metrics::gauge!(m::CONSUMER_LAG, "partition" => p.to_string()).set(0.0);
                    }
                    for p in &held.accounts {
                        self.accounts.remove(p);
                    }
                    let input_topic = self.config.kafka.input_topic.clone();
                    let identity_topic = self.identity_topic.clone();
                    batch.retain(|m| {
                        let lost = if m.topic() == input_topic {
                            &held.input
                        } else if m.topic() == identity_topic {
                            &held.identities
                        } else {
                            &held.accounts
                        };
                        !lost.contains(&m.partition())
                    });
                    tracing::info!(
                        partitions = ?held.input,
                        account_partitions = ?held.accounts,
                        "partitions revoked; their state dropped"
                    );
                }
                AssignmentChange::Assigned(mut held) => {
                    held.input.sort_unstable();
                    held.identities.sort_unstable();
                    if held.input != held.identities {
                        // Also seen for a moment while a new identity topic
                        // reaches the group's metadata; handoffs for an input
                        // partition held elsewhere wait, uncommitted, for
                        // the instance that holds it.
                        tracing::warn!(
                            input = ?held.input,
                            identities = ?held.identities,
                            "input and identity partitions assigned apart: alias merges across \
                             partitions wait until partition N of both topics is on one \
                             instance; keep partition.assignment.strategy at range (the default)"
                        );
                    }
                    let committed_in = self.restore(&held.input)?;
                    self.restore_accounts(&held.accounts)?;
                    self.report_assignment(&held, &committed_in);
                    self.status.set_ready(true);
                }
            }
        }
        Ok(())
    }

    /// Restores the partitions' state from the changelog, all at once;
    /// returns the group generation each partition's offset was committed
    /// in, where recorded.
    fn restore(&mut self, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, Option<i32>>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let restored = restore_partitions(
            &self.base,
            &self.config.kafka.changelog_topic,
            partitions,
            &self.rules,
            self.transactional,
        )?;
        let seconds = restored.elapsed.as_secs_f64().max(1e-3);
        let leads: usize = restored.engines.values().map(Engine::lead_count).sum();
        metrics::histogram!(m::RESTORE_DURATION).record(restored.elapsed.as_secs_f64());
        metrics::counter!(m::RESTORED_LEADS).increment(leads as u64);
        let committed = self.committed_watermarks(partitions)?;
        let resume: BTreeMap<i32, &Resume> = committed.iter().map(|(&p, (r, _))| (p, r)).collect();
        tracing::info!(
            ?partitions,
            leads,
            records = restored.records,
            resume_at = ?resume,
            seconds = format!("{seconds:.3}"),
            leads_per_second = format!("{:.0}", leads as f64 / seconds),
            "partitions restored from changelog"
        );
        let partitioner = self.config.kafka.input_partitioner;
        let count = self.input_partitions;
        for (partition, mut engine) in restored.engines {
            engine.set_locality(Arc::new(move |id: &str| {
                partition_of(partitioner, id.as_bytes(), count) == partition
            }));
            engine.resume_watermark(match resume.get(&partition) {
                Some(Resume::At(watermark)) => *watermark,
                // Committed without a watermark (by an older version, or by
                // a broker that drops commit metadata, as tansu does): none,
                // so the events read again rebuild it. Decay then fires no
                // earlier than it did before, only possibly later, which
                // changes nothing while a partition's event times rise; the
                // restored leads' latest clock could fire it too early.
                Some(Resume::Unknown) | None => None,
            });
            self.partitions.insert(
                partition,
                PartitionState {
                    engine,
                    at_end: false,
                },
            );
        }
        Ok(committed.into_iter().map(|(p, (_, g))| (p, g)).collect())
    }

    /// Counts and logs an assignment: `reclaimed` when a restarted static
    /// member took back partitions whose offsets were last committed in
    /// the group's current generation (no rebalance happened since: no
    /// other member gave anything up), `assigned` after a rebalance.
    fn report_assignment(&self, held: &Held, committed_in: &BTreeMap<i32, Option<i32>>) {
        let generation = group_generation(&self.consumer);
        let reclaimed = generation.is_some()
            && !committed_in.is_empty()
            && committed_in.values().all(|g| *g == generation);
        let change = if reclaimed { "reclaimed" } else { "assigned" };
        metrics::counter!(m::REBALANCES, "change" => change).increment(1);
        tracing::info!(
            partitions = ?held.input,
            account_partitions = ?held.accounts,
            generation,
            seconds_since_start = format!("{:.3}", self.started.elapsed().as_secs_f64()),
            "{}",
            if reclaimed {
                "partitions reclaimed without a rebalance (static membership)"
            } else {
                "partitions assigned"
            }
        );
    }

    /// Leaves the consumer group before the consumer closes. A static
    /// member's close does not leave (KIP-345: a restart should find its
    /// partitions waiting), but a stop on SIGTERM is a scale-down or a
    /// move, so the partitions go to the others now rather than after
    /// `session.timeout.ms`: unsubscribing does send the leave.
    fn leave_group(&mut self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The revocation is served by poll; the leave follows it.
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let assigned = self.consumer.assignment().map_or(0, |list| list.count());
            if assigned == 0 {
                break;
            }
        }
        let mut batch = Vec::new();
        if let Err(e) = self.apply_assignment_changes(&mut batch) {
            tracing::warn!(error = %e, "while leaving the group");
        }
    }

    /// Restores account partitions from the account changelog.
    fn restore_accounts(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let restored = restore_account_partitions(
            &self.base,
            &self.config.kafka.account_changelog_topic,
            partitions,
            &self.rules,
            self.transactional,
        )?;
        let accounts: usize = restored
            .engines
            .values()
            .map(AccountEngine::account_count)
            .sum();
        metrics::histogram!(m::RESTORE_DURATION).record(restored.elapsed.as_secs_f64());
        tracing::info!(
            ?partitions,
            accounts,
            records = restored.records,
            seconds = format!("{:.3}", restored.elapsed.as_secs_f64()),
            "account partitions restored from changelog"
        );
        for (partition, engine) in restored.engines {
            self.accounts.insert(
                partition,
                AccountPartition {
                    engine,
                    watermark: None,
                    at_end: false,
                },
            );
        }
        Ok(())
    }

    fn process_or_recover(&mut self, batch: Vec<OwnedMessage>) -> anyhow::Result<()> {
        match self.process(&batch) {
            Ok(true) => {
                self.status.batch_committed();
                self.retries
                    .committed(batch.iter().map(|m| (m.topic(), m.partition(), m.offset())));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(Retry(error)) if is_fatal(&error) => Err(stop_reason(error, "batch failed")),
            Err(Retry(error)) => {
                if self.transactional {
                    metrics::counter!(m::TRANSACTIONS, "result" => "aborted").increment(1);
                }
                tracing::warn!(
                    error = format!("{error:#}"),
                    messages = batch.len(),
                    "batch failed; rewinding to the committed offsets"
                );
                self.status.batch_failed();
                let positions: Vec<Position> = batch
                    .iter()
                    .map(|m| (m.topic().to_string(), m.partition(), m.offset()))
                    .collect();
                self.retries.failed(&positions, &format!("{error:#}"));
                self.settle_failed_batch();
                if self.transactional {
                    self.producer
                        .abort_transaction(CLIENT_TIMEOUT)
                        .map_err(|e| {
                            stop_reason(anyhow::Error::new(e), "cannot abort the transaction")
                        })?;
                }
                self.rewind()
            }
        }
    }

    /// Before a failed batch runs again: records it still has on their way
    /// are purged (in a transaction about to be aborted) or left to arrive
    /// (at-least-once: a repeat, dropped downstream by `event_id`), and
    /// their delivery reports served. librdkafka's abort waits for those
    /// reports, which only this thread serves; failures among them must not
    /// fail the next batch.
    fn settle_failed_batch(&self) {
        if self.transactional {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
        }
        if let Err(e) = super::flush_promptly(&self.producer, CLIENT_TIMEOUT) {
            tracing::warn!(error = %e, "records of the failed batch still undelivered");
        }
        self.producer.context().take_failures();
    }

    /// After a failed batch: state back to what the changelog holds, input
    /// back to the committed offsets.
    fn rewind(&mut self) -> anyhow::Result<()> {
        let assigned: Vec<i32> = self.partitions.keys().copied().collect();
        let assigned_accounts: Vec<i32> = self.accounts.keys().copied().collect();
        let committed = self
            .consumer
            .committed(CLIENT_TIMEOUT)
            .context("cannot read committed offsets")?;
        self.restore(&assigned)?;
        self.restore_accounts(&assigned_accounts)?;
        let mut seeks: Vec<(String, i32)> = assigned
            .iter()
            .flat_map(|&p| {
                [
                    (self.config.kafka.input_topic.clone(), p),
                    (self.identity_topic.clone(), p),
                ]
            })
            .collect();
        if let Some(topic) = &self.account_topic {
            seeks.extend(assigned_accounts.iter().map(|&p| (topic.clone(), p)));
        }
        for (topic, p) in seeks {
            let offset = committed
                .find_partition(&topic, p)
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)))
                .unwrap_or(Offset::Beginning);
            self.consumer
                .seek(&topic, p, offset, CLIENT_TIMEOUT)
                .with_context(|| format!("cannot seek {topic} partition {p}"))?;
        }
        Ok(())
    }

    /// Processes and commits a batch; `Ok(false)` when there was nothing
    /// to do.
    fn process(&mut self, batch: &[OwnedMessage]) -> Result<bool, Retry> {
        let wall = wall_clock();
        let mode = self.config.processing.timer_clock;
        let timers_due = self.partitions.values().any(|p| {
            let clock = timer_clock(p, wall, mode);
            p.engine
                .next_due()
                .zip(clock)
                .is_some_and(|(due, clock)| due <= clock)
        }) || self.accounts.values().any(|a| {
            a.engine
                .next_due()
                .zip(account_timer_clock(a, wall, mode))
                .is_some_and(|(due, clock)| due <= clock)
        });
        if batch.is_empty() && !timers_due {
            self.update_gauges();
            return Ok(false);
        }
        let started = Instant::now();
        if self.transactional {
            self.producer
                .begin_transaction()
                .map_err(retry("cannot begin a transaction"))?;
        }
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in batch {
            let partition = message.partition();
            let topic = message.topic();
            let is_input = topic == self.config.kafka.input_topic;
            let is_identity = topic == self.identity_topic;
            let held = if is_input || is_identity {
                self.partitions.contains_key(&partition)
            } else {
                self.accounts.contains_key(&partition)
            };
            if !held {
                continue; // revoked while buffered
            }
            next_offsets.insert((topic.to_string(), partition), message.offset() + 1);
            if let Some(reason) = self.retries.poison(topic, partition, message.offset()) {
                let reason = reason.to_string();
                tracing::warn!(
                    topic,
                    partition,
                    offset = message.offset(),
                    reason,
                    "dead-lettering a message that failed every attempt"
                );
                self.dead_letter(message, "poison", reason, None)?;
                continue;
            }
            if is_identity {
                self.apply_handoff(message)?;
                self.send_handoffs(partition)?;
                self.send_account_updates(partition)?;
            } else if is_input {
                self.counters.consumed += 1;
                metrics::counter!(m::EVENTS_CONSUMED).increment(1);
                self.score(message, wall)?;
                self.send_handoffs(partition)?;
                self.send_account_updates(partition)?;
            } else {
                self.apply_account_update(message)?;
            }
        }
        let mut decay_outputs = Vec::new();
        for p in self.partitions.values_mut() {
            if let Some(clock) = timer_clock(p, wall, mode) {
                decay_outputs.extend(p.engine.advance(clock));
            }
        }
        for a in self.accounts.values_mut() {
            if let Some(clock) = account_timer_clock(a, wall, mode) {
                decay_outputs.extend(a.engine.advance(clock));
            }
        }
        for output in &decay_outputs {
            self.send_output(output)?;
        }
        // Outputs first: a changelog record a reader can see implies the
        // outputs of its batch are visible too.
        self.flush()?;
        self.send_changelog()?;
        if self.transactional {
            if !next_offsets.is_empty() {
                let offsets = self.offset_list(&next_offsets)?;
                let group = self
                    .consumer
                    .group_metadata()
                    .ok_or_else(|| Retry(anyhow!("no consumer group metadata")))?;
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                    .map_err(retry("cannot add offsets to the transaction"))?;
            }
            // Left to commit_transaction, this flush would take 100 ms
            // (see flush_promptly).
            self.flush()?;
            self.producer
                .commit_transaction(CLIENT_TIMEOUT)
                .map_err(retry("cannot commit the transaction"))?;
            metrics::counter!(m::TRANSACTIONS, "result" => "committed").increment(1);
        } else {
            self.flush()?;
            if !next_offsets.is_empty() {
                let offsets = self.offset_list(&next_offsets)?;
                self.consumer
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(retry("cannot commit offsets"))?;
            }
        }
        self.counters.batches += 1;
        if !self.first_commit_logged && !next_offsets.is_empty() {
            self.first_commit_logged = true;
            tracing::info!(
                seconds_since_start = format!("{:.3}", self.started.elapsed().as_secs_f64()),
                "first batch committed"
            );
        }
        metrics::histogram!(m::BATCH_MESSAGES).record(batch.len() as f64);
        metrics::histogram!(m::BATCH_DURATION).record(started.elapsed().as_secs_f64());
        self.update_gauges();
        Ok(true)
    }

    /// Leads and partitions held (cheap: map sizes).
    fn update_gauges(&self) {
        let leads: usize = self
            .partitions
            .values()
            .map(|p| p.engine.lead_count())
            .sum();
        metrics::gauge!(m::LEADS).set(leads as f64);
        let accounts: usize = self
            .accounts
            .values()
            .map(|a| a.engine.account_count())
            .sum();
        metrics::gauge!(m::ACCOUNTS).set(accounts as f64);
        metrics::gauge!(m::PARTITIONS).set(self.partitions.len() as f64);
    }

    /// Answers the query API from committed state: called between batches.
    fn answer_queries(&self) {
        while let Ok(query) = self.queries.try_recv() {
            let answer = match query.subject {
                Subject::Lead => self.answer(&query.lead_id),
                Subject::Account => self.answer_account(&query.lead_id),
            };
            let _ = query.reply.send(answer);
        }
    }

    fn answer_account(&self, account_id: &str) -> LeadAnswer {
        if !self.status.is_ready() {
            return LeadAnswer::NotReady;
        }
        let now = wall_clock();
        for (&partition, a) in &self.accounts {
            if let Some(snapshot) = a.engine.explain(account_id, now) {
                return LeadAnswer::Found(crate::ops::http::account_json(
                    &snapshot,
                    &self.rules,
                    partition,
                ));
            }
        }
        // Account updates are keyed by account and partitioned by this
        // process's own producer: librdkafka's partitioner.
        let partitioner = match self
            .config
            .kafka
            .properties
            .get("partitioner")
            .map(String::as_str)
        {
            Some("murmur2" | "murmur2_random") => crate::config::Partitioner::Murmur2Random,
            _ => crate::config::Partitioner::ConsistentRandom,
        };
        let partition = partition_of(partitioner, account_id.as_bytes(), self.input_partitions);
        if self.accounts.contains_key(&partition) {
            LeadAnswer::Unknown { partition }
        } else {
            LeadAnswer::Elsewhere {
                partition,
                assigned: self.accounts.keys().copied().collect(),
            }
        }
    }

    fn answer(&self, lead_id: &str) -> LeadAnswer {
        if !self.status.is_ready() {
            return LeadAnswer::NotReady;
        }
        let now = wall_clock();
        for (&partition, p) in &self.partitions {
            let id = p.engine.resolve(lead_id);
            if let Some(snapshot) = p.engine.explain(id, now) {
                return LeadAnswer::Found(crate::ops::http::lead_json(
                    &snapshot,
                    &self.rules,
                    partition,
                ));
            }
        }
        // An identity merged into a lead held elsewhere: that lead's
        // partition knows the alias too.
        let held_as = self
            .partitions
            .values()
            .map(|p| p.engine.resolve(lead_id))
            .find(|id| *id != lead_id)
            .unwrap_or(lead_id);
        let partition = partition_of(
            self.config.kafka.input_partitioner,
            held_as.as_bytes(),
            self.input_partitions,
        );
        if self.partitions.contains_key(&partition) {
            LeadAnswer::Unknown { partition }
        } else {
            LeadAnswer::Elsewhere {
                partition,
                assigned: self.partitions.keys().copied().collect(),
            }
        }
    }

    /// The offsets to commit; an input partition's carries the watermark
    /// its engine has there, for a restore to resume with.
    fn offset_list(
        &self,
        next: &BTreeMap<(String, i32), i64>,
    ) -> Result<TopicPartitionList, Retry> {
        let generation = group_generation(&self.consumer);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), &offset) in next {
            let mut entry = list.add_partition(topic, *partition);
            entry
                .set_offset(Offset::Offset(offset))
                .map_err(retry("bad offset"))?;
            if *topic == self.config.kafka.input_topic {
                let watermark = self
                    .partitions
                    .get(partition)
                    .and_then(|p| p.engine.watermark());
                entry.set_metadata(commit_metadata(watermark, generation));
            }
        }
        Ok(list)
    }

    /// Where each of `partitions` resumes, and the group generation it was
    /// committed in, as the group's committed input offsets say.
    fn committed_watermarks(
        &self,
        partitions: &[i32],
    ) -> anyhow::Result<BTreeMap<i32, (Resume, Option<i32>)>> {
        let topic = &self.config.kafka.input_topic;
        let mut list = TopicPartitionList::new();
        for &p in partitions {
            list.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(list, CLIENT_TIMEOUT)
            .context("cannot read committed offsets")?;
        Ok(committed
            .elements_for_topic(topic)
            .iter()
            .map(|e| {
                let resume = match e.offset() {
                    Offset::Offset(_) => parse_watermark_metadata(e.metadata()),
                    _ => Resume::At(None),
                };
                (
                    e.partition(),
                    (resume, parse_generation_metadata(e.metadata())),
                )
            })
            .collect())
    }

    /// Merges across partitions send a handoff to the partition the
    /// configured partitioner gives an identity; an input key found on
    /// another partition means producers use another partitioner.
    fn check_routing(&mut self, message: &OwnedMessage) {
        let Some(key) = message.key() else {
            return;
        };
        let expected = partition_of(
            self.config.kafka.input_partitioner,
            key,
            self.input_partitions,
        );
        if expected == message.partition() {
            return;
        }
        metrics::counter!(m::MISROUTED).increment(1);
        if !self.misrouted_warned {
            self.misrouted_warned = true;
            tracing::warn!(
                key = %String::from_utf8_lossy(key),
                partition = message.partition(),
                expected,
                partitioner = ?self.config.kafka.input_partitioner,
                "input key on another partition than [kafka] input_partitioner gives: \
                 alias merges across partitions will miss; set input_partitioner to the \
                 producers' partitioner"
            );
        }
    }

    /// Sends the handoffs input `partition`'s engine produced to the
    /// identity topic, each to the partition of the identity it concerns.
    fn send_handoffs(&mut self, partition: i32) -> Result<(), Retry> {
        let handoffs = self
            .partitions
            .get_mut(&partition)
            .map(|p| p.engine.take_handoffs())
            .unwrap_or_default();
        for handoff in &handoffs {
            let destination = handoff.destination();
            let value = encode_handoff(handoff, &self.rules.version);
            let record = BaseRecord::<str, [u8]>::to(&self.identity_topic)
                .partition(partition_of(
                    self.config.kafka.input_partitioner,
                    destination.as_bytes(),
                    self.input_partitions,
                ))
                .key(destination)
                .payload(value.as_slice())
                .headers(OwnedHeaders::new());
            metrics::counter!(m::HANDOFFS, "kind" => handoff.kind()).increment(1);
            send(&self.producer, record)?;
        }
        Ok(())
    }

    /// Acts on one handoff from another partition's engine.
    fn apply_handoff(&mut self, message: &OwnedMessage) -> Result<(), Retry> {
        let decoded = decode_handoff(
            message.payload().unwrap_or_default(),
            &self.decoder,
            &self.rules.version,
        );
        let handoff = match decoded {
            Ok(handoff) => handoff,
            Err(e) => return self.dead_letter(message, "invalid_handoff", e.to_string(), None),
        };
        let engine = &mut self
            .partitions
            .get_mut(&message.partition())
            .expect("checked by the caller")
            .engine;
        let kind = handoff.kind();
        let outcome = engine.apply_handoff(handoff);
        tracing::debug!(
            kind,
            partition = message.partition(),
            offset = message.offset(),
            outcome = match &outcome {
                Outcome::Applied(_) => "applied",
                Outcome::Duplicate | Outcome::AlreadyApplied => "already applied",
                Outcome::HandedOff => "passed on",
                Outcome::Rejected(_) => "rejected",
            },
            "handoff"
        );
        match outcome {
            Outcome::Applied(outputs) => {
                for output in &outputs {
                    self.send_output(output)?;
                }
            }
            Outcome::Duplicate | Outcome::AlreadyApplied | Outcome::HandedOff => {}
            Outcome::Rejected(r) => {
                self.dead_letter(message, r.reason_code(), r.to_string(), None)?
            }
        }
        Ok(())
    }

    /// Sends the account updates scoring produced on input `partition` to
    /// the account updates topic, keyed by account.
    fn send_account_updates(&mut self, partition: i32) -> Result<(), Retry> {
        let Some(topic) = self.account_topic.clone() else {
            return Ok(());
        };
        let updates = self
            .partitions
            .get_mut(&partition)
            .map(|p| p.engine.take_account_updates())
            .unwrap_or_default();
        for update in &updates {
            let value = encode_account_update(update);
            let record = BaseRecord::<str, [u8]>::to(&topic)
                .key(update.account_id())
                .payload(value.as_slice())
                .headers(OwnedHeaders::new());
            send(&self.producer, record)?;
        }
        Ok(())
    }

    /// Applies one account update to the account partition it came on.
    fn apply_account_update(&mut self, message: &OwnedMessage) -> Result<(), Retry> {
        let update = match decode_account_update(message.payload().unwrap_or_default()) {
            Ok(update) => update,
            Err(e) => {
                return self.dead_letter(message, "invalid_account_update", e.to_string(), None)
            }
        };
        let Some(a) = self.accounts.get_mut(&message.partition()) else {
            return Ok(());
        };
        let at = match &update {
            AccountUpdate::Member { at, .. } | AccountUpdate::Traits { at, .. } => *at,
        };
        a.watermark = Some(a.watermark.map_or(at, |w| w.max(at)));
        match a.engine.apply_from(&update, Some(message.offset())) {
            Some(outputs) => {
                for output in &outputs {
                    self.send_output(output)?;
                }
            }
            None => {
                self.counters.duplicates += 1;
                metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
            }
        }
        Ok(())
    }

    fn score(&mut self, message: &OwnedMessage, wall: Timestamp) -> Result<(), Retry> {
        self.check_routing(message);
        let encoding = match header_text(message.headers(), super::headers::CONTENT_TYPE) {
            Some(value) => Encoding::from_content_type(value),
            None => Ok(self.default_encoding),
        };
        let decoded = encoding.and_then(|encoding| {
            self.decoder
                .decode(message.payload().unwrap_or_default(), encoding)
        });
        let items = match decoded {
            Ok(items) if items.len() > MAX_BATCH_ITEMS => {
                return self.dead_letter(
                    message,
                    "batch_too_large",
                    format!("a batch envelope may hold at most {MAX_BATCH_ITEMS} items"),
                    None,
                );
            }
            Ok(items) => items,
            Err(e) => return self.dead_letter(message, e.reason_code(), e.to_string(), None),
        };
        let several = items.len() > 1;
        for (index, item) in items.into_iter().enumerate() {
            let item_number = several.then_some(index + 1);
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    self.dead_letter(message, e.reason_code(), e.to_string(), item_number)?;
                    continue;
                }
            };
            let lag_ms = wall.millis().saturating_sub(event.timestamp.millis());
            let position = (message.offset() << POSITION_ITEM_BITS) | index as i64;
            let p = self
                .partitions
                .get_mut(&message.partition())
                .expect("checked by the caller");
            // Decay already due by event time fires before the next event,
            // as in `replay`: a late event must not slip in ahead of a
            // cool-down its lead was due, or what is published would depend
            // on where batches end (and differ, under one event_id, after a
            // restart). The wall clock waits for the batch's end, when every
            // event read so far is applied.
            let due = p
                .engine
                .watermark()
                .map(|clock| p.engine.advance(clock))
                .unwrap_or_default();
            let outcome = p.engine.apply_from(&event, wall, Some(position));
            for output in &due {
                self.send_output(output)?;
            }
            match outcome {
                Outcome::Applied(outputs) => {
                    self.counters.scored += 1;
                    metrics::counter!(m::EVENTS_SCORED).increment(1);
                    metrics::histogram!(m::EVENT_LAG).record(lag_ms as f64 / 1000.0);
                    for output in &outputs {
                        self.send_output(output)?;
                    }
                }
                Outcome::Duplicate | Outcome::AlreadyApplied => {
                    self.counters.duplicates += 1;
                    metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
                }
                Outcome::HandedOff => {}
                Outcome::Rejected(r) => {
                    self.dead_letter(message, r.reason_code(), r.to_string(), item_number)?
                }
            }
        }
        Ok(())
    }

    fn send_output(&mut self, output: &Output) -> Result<(), Retry> {
        let encoding = self.config.processing.output_encoding;
        let value = output_value(output, encoding);
        let record = BaseRecord::to(&self.config.kafka.output_topic)
            .key(
                output
                    .lead_id
                    .as_deref()
                    .or(output.account_id.as_deref())
                    .unwrap_or_default()
                    .as_bytes(),
            )
            .payload(&value)
            .headers(output_headers(output, encoding));
        self.counters.outputs += 1;
        metrics::counter!(m::OUTPUTS, "type" => output.kind.as_str()).increment(1);
        if output.kind == OutputKind::ThresholdCrossed {
            metrics::counter!(
                m::CROSSINGS,
                "tier" => output.tier.to_string(),
                "direction" => output.direction.as_str()
            )
            .increment(1);
        }
        send(&self.producer, record)
    }

    fn dead_letter(
        &mut self,
        message: &OwnedMessage,
        reason_code: &'static str,
        reason: String,
        item: Option<usize>,
    ) -> Result<(), Retry> {
        self.counters.dead_lettered += 1;
        metrics::counter!(m::EVENTS_REJECTED, "reason" => reason_code).increment(1);
        metrics::counter!(m::DEAD_LETTERS).increment(1);
        let fitted = fit_dead_letter(
            message.key(),
            message.payload(),
            headers_bytes(message.headers()),
            self.config.processing.dead_letter_max_bytes,
        );
        if let Some((what, bytes, _)) = &fitted.truncated {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                original_bytes = bytes,
                truncated = %what,
                "dead letter truncated to fit dead_letter_max_bytes"
            );
        }
        let headers = dead_letter_headers(
            message.headers(),
            &DeadLetter {
                reason_code,
                reason,
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                item,
            },
            &fitted,
        );
        let mut record =
            BaseRecord::<[u8], [u8]>::to(&self.config.kafka.dead_letter_topic).headers(headers);
        if let Some(key) = fitted.key {
            record = record.key(key);
        }
        if let Some(payload) = fitted.value {
            record = record.payload(payload);
        }
        send(&self.producer, record)
    }

    fn send_changelog(&mut self) -> Result<(), Retry> {
        let topic = self.config.kafka.changelog_topic.clone();
        let version = self.rules.version.clone();
        let mut records: Vec<(i32, String, Vec<u8>)> = Vec::new();
        for (&partition, p) in self.partitions.iter_mut() {
            p.engine.take_changes(|lead_id, change| {
                records.push((
                    partition,
                    lead_id.to_string(),
                    encode_changelog(&change, &version),
                ));
            });
        }
        for (partition, key, value) in &records {
            let record = BaseRecord::<str, [u8]>::to(&topic)
                .partition(*partition)
                .key(key.as_str())
                .payload(value.as_slice())
                .headers(OwnedHeaders::new());
            send(&self.producer, record)?;
        }
        let account_topic = self.config.kafka.account_changelog_topic.clone();
        let mut account_records: Vec<(i32, String, Option<Vec<u8>>)> = Vec::new();
        for (&partition, a) in self.accounts.iter_mut() {
            a.engine.take_changes(|account_id, state| {
                account_records.push((
                    partition,
                    account_id.to_string(),
                    state.map(|s| encode_account_state(s, &version)),
                ));
            });
        }
        for (partition, key, value) in &account_records {
            let mut record = BaseRecord::<str, [u8]>::to(&account_topic)
                .partition(*partition)
                .key(key.as_str())
                .headers(OwnedHeaders::new());
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            send(&self.producer, record)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Retry> {
        super::flush_promptly(&self.producer, CLIENT_TIMEOUT)
            .map_err(retry("cannot flush the producer"))?;
        let (failures, last) = self.producer.context().take_failures();
        if failures > 0 {
            return Err(Retry(anyhow!(
                "{failures} records were not delivered; last: {}",
                last.unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn report(&self) {
        let c = &self.counters;
        let leads: usize = self
            .partitions
            .values()
            .map(|p| p.engine.lead_count())
            .sum();
        tracing::info!(
            consumed = c.consumed,
            scored = c.scored,
            duplicates = c.duplicates,
            dead_lettered = c.dead_lettered,
            outputs = c.outputs,
            batches = c.batches,
            partitions = self.partitions.len(),
            leads,
            "progress"
        );
    }
}

/// The clock decay timers follow: event time (the partition's watermark)
/// while catching up, so a backlog fires timers exactly as `replay` does;
/// the wall clock once the partition is read to its end (unless the
/// config says event time only).
fn timer_clock(p: &PartitionState, wall: Timestamp, mode: TimerClock) -> Option<Timestamp> {
    if p.at_end && mode == TimerClock::Wall {
        Some(wall.max(p.engine.watermark().unwrap_or(wall)))
    } else {
        p.engine.watermark()
    }
}

/// [`timer_clock`] for an account partition: its latest update time while
/// catching up, the wall clock once read to its end.
fn account_timer_clock(
    a: &AccountPartition,
    wall: Timestamp,
    mode: TimerClock,
) -> Option<Timestamp> {
    if a.at_end && mode == TimerClock::Wall {
        Some(wall.max(a.watermark.unwrap_or(wall)))
    } else {
        a.watermark
    }
}

/// The consumer group generation this member is in; `None` outside a
/// group (before the first join, or after leaving).
fn group_generation(consumer: &BaseConsumer<GroupContext>) -> Option<i32> {
    // SAFETY: the client pointer is valid while `consumer` lives; the
    // group metadata librdkafka returns is a copy, read and then destroyed
    // here, never used after.
    let generation = unsafe {
        let metadata =
            rdkafka::bindings::rd_kafka_consumer_group_metadata(consumer.client().native_ptr());
        if metadata.is_null() {
            return None;
        }
        let generation =
            rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(metadata);
        rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    };
    (generation >= 0).then_some(generation)
}

/// The high watermark librdkafka cached from its last fetch of the
/// partition (`rd_kafka_get_watermark_offsets`: local, unlike
/// `fetch_watermarks`, which asks the broker); `None` before any fetch.
fn cached_high_watermark(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic
    // is a NUL-terminated string that outlives the call; librdkafka only
    // writes the two offsets it is given.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer<DeliveryContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), Retry> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(50));
                record = back;
            }
            Err((e, _)) => return Err(Retry(anyhow::Error::new(e).context("cannot produce"))),
        }
    }
}

fn retry(what: &'static str) -> impl Fn(KafkaError) -> Retry {
    move |e| Retry(anyhow::Error::new(e).context(what))
}

/// The error to end the process with: why, in words an operator can act on.
fn stop_reason(error: anyhow::Error, otherwise: &'static str) -> anyhow::Error {
    if is_fatal(&error) {
        error.context(
            "cannot go on: fenced by a newer instance with the same transactional id or \
             group instance id (each instance needs its own [kafka] transactional_id and \
             group_instance_id), or another fatal broker error; exiting",
        )
    } else {
        error.context(otherwise)
    }
}

/// The error to end the process with when the consumer cannot go on.
fn fatal_consumer_error(code: RDKafkaErrorCode, reason: String) -> anyhow::Error {
    if code == RDKafkaErrorCode::FencedInstanceId {
        anyhow!(
            "fenced: another instance joined the group with this instance's group.instance.id \
             ({reason}); each instance needs its own [kafka] group_instance_id (by default its \
             transactional_id: set LEADSCORE_KAFKA_TRANSACTIONAL_ID per instance); exiting"
        )
    } else {
        anyhow!("the consumer cannot go on: {code:?}: {reason}; exiting")
    }
}

/// Whether librdkafka says the producer is done for: fenced by a newer
/// instance with its transactional id, or another fatal error. Aborting and
/// retrying cannot help; the process must end.
fn is_fatal(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| match cause.downcast_ref::<KafkaError>() {
            Some(KafkaError::Transaction(e)) => e.is_fatal(),
            Some(e) => matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::FencedInstanceId)
            ),
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_metadata_round_trips() {
        let at = Timestamp(1_764_547_200_123);
        for generation in [None, Some(0), Some(17)] {
            let with_time = commit_metadata(Some(at), generation);
            assert_eq!(parse_watermark_metadata(&with_time), Resume::At(Some(at)));
            assert_eq!(parse_generation_metadata(&with_time), generation);
            let without = commit_metadata(None, generation);
            assert_eq!(parse_watermark_metadata(&without), Resume::At(None));
            assert_eq!(parse_generation_metadata(&without), generation);
        }
        // As committed before generations were recorded.
        assert_eq!(
            parse_watermark_metadata("leadscore-watermark=1764547200123"),
            Resume::At(Some(at))
        );
        assert_eq!(
            parse_generation_metadata("leadscore-watermark=1764547200123"),
            None
        );
        assert_eq!(parse_watermark_metadata(""), Resume::Unknown);
        assert_eq!(
            parse_watermark_metadata("leadscore-watermark=soon"),
            Resume::Unknown
        );
    }
}
