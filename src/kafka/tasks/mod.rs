//! Tasks: the state of one partition each, and what it does with the
//! records of its topics. The driver hands each record to the task that
//! owns its topic-partition, asks every task for its due timers and its
//! changelog records, and commits; tasks never touch the consumer or the
//! transaction. A new kind of record goes to the task that owns its topic;
//! a new kind of task is one file here and a line in [`Tasks`].

mod account;
mod lead;

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::message::{Header, Headers, Message, OwnedMessage};
use rdkafka::producer::BaseRecord;
use rdkafka::ClientConfig;

use super::clients::{send, Retry, TransactionProducer};
use super::offsets::Committed;
use super::records::{
    dead_letter_headers, fit_dead_letter, headers_bytes, output_headers, output_value, DeadLetter,
};
use crate::codec::{Decoder, Encoding};
use crate::config::{Config, Partitioner, TimerClock};
use crate::core::account::AccountUpdate;
use crate::core::filters::FilterReason;
use crate::core::{Output, OutputKind, Rules, RulesStamp, Timestamp};
use crate::ops::metrics as m;
use crate::ops::partitioner::partition_of;
use crate::ops::status::{Held, LeadAnswer, Subject};

use account::AccountTask;
use lead::LeadTask;

/// The partition state of one stream thread, one task per partition.
pub(super) trait Task {
    /// Applies one record of one of the task's topics, writing what it
    /// causes to `out`.
    fn apply(&mut self, message: &OwnedMessage, out: &mut Out<'_>) -> Result<(), Retry>;

    /// Whether the consumer has read `topic`'s partition to its end: timers
    /// then follow the wall clock, while catching up the records' time.
    fn set_at_end(&mut self, topics: &Topics, topic: &str, at_end: bool);

    /// The time the task's own records have reached (event or update
    /// time), and whether its partition is read to the end: together they
    /// give the clock its timers follow ([`timer_clock`]).
    fn own_time(&self) -> (Option<Timestamp>, bool);

    /// When its next timer is due, if one is.
    fn next_due(&self) -> Option<Timestamp>;

    /// Fires the timers due by `clock`; returns what they publish.
    fn advance(&mut self, clock: Timestamp) -> Vec<Output>;

    /// Whether a timer is due at the clock the task follows.
    fn timers_due(&self, wall: Timestamp, mode: TimerClock) -> bool {
        let (own, at_end) = self.own_time();
        self.next_due()
            .zip(timer_clock(own, at_end, wall, mode))
            .is_some_and(|(due, clock)| due <= clock)
    }

    /// Fires the timers due at the clock the task follows, and sends what
    /// they cause (in this batch's transaction, with the state they
    /// changed).
    fn fire_timers(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        let (own, at_end) = self.own_time();
        let mode = out.shared.config.processing.timer_clock;
        if let Some(clock) = timer_clock(own, at_end, out.wall, mode) {
            out.outputs(&self.advance(clock))?;
        }
        self.send_caused(out)
    }

    /// Sends the records other tasks must hear of what the task just did
    /// (a lead task's account updates); nothing by default.
    fn send_caused(&mut self, _out: &mut Out<'_>) -> Result<(), Retry> {
        Ok(())
    }

    /// Writes the changelog records of what changed since the last call.
    /// Whether a restore left outputs for the next transaction (those of
    /// re-scoring state written under other rules).
    fn has_pending(&self) -> bool {
        false
    }

    /// Publishes what a restore left, before the batch's records.
    fn publish_pending(&mut self, _out: &mut Out<'_>) -> Result<(), Retry> {
        Ok(())
    }

    fn write_changes(&mut self, out: &mut Out<'_>) -> Result<(), Retry>;

    /// The event-time watermark committed with the task's offsets.
    fn watermark(&self) -> Option<Timestamp>;
}

/// The clock a task's timers follow: its own time while catching up, so a
/// backlog fires timers exactly as `replay` does; the wall clock once its
/// partition is read to the end, so an idle lead cools down on time
/// (unless the config says event time only).
fn timer_clock(
    own: Option<Timestamp>,
    at_end: bool,
    wall: Timestamp,
    mode: TimerClock,
) -> Option<Timestamp> {
    if at_end && mode == TimerClock::Wall {
        Some(wall.max(own.unwrap_or(wall)))
    } else {
        own
    }
}

/// The topics of one deployment.
pub(super) struct Topics {
    pub input: String,
    /// Handoffs between lead partitions for alias merges; its partitions
    /// go with the input's.
    pub identities: String,
    pub output: String,
    /// `None` when running a score of a file of several other than its
    /// first: the first publishes them.
    pub dead_letter: Option<String>,
    /// `[kafka] filtered_topic`, if set (and published here, as dead
    /// letters are).
    pub filtered: Option<String>,
    pub changelog: String,
    /// With `[accounts]`.
    pub account_updates: Option<String>,
    pub account_changelog: String,
}

impl Topics {
    pub fn of(config: &Config) -> Topics {
        let kafka = &config.kafka;
        Topics {
            input: kafka.input_topic.clone(),
            identities: kafka.identity_topic(),
            output: kafka.output_topic.clone(),
            dead_letter: config
                .publishes_rejects()
                .then(|| kafka.dead_letter_topic.clone()),
            filtered: kafka
                .filtered_topic
                .clone()
                .filter(|_| config.publishes_rejects()),
            changelog: kafka.changelog_topic.clone(),
            account_updates: config
                .rules
                .accounts
                .is_some()
                .then(|| kafka.account_updates_topic.clone()),
            account_changelog: kafka.account_changelog_topic.clone(),
        }
    }

    /// The topics the group consumer subscribes to.
    pub fn subscribed(&self) -> Vec<&str> {
        let mut topics = vec![self.input.as_str(), self.identities.as_str()];
        topics.extend(self.account_updates.as_deref());
        topics
    }
}

/// What every task of a stream thread reads and never changes.
pub(super) struct Shared<'c> {
    pub config: &'c Config,
    pub rules: Arc<Rules>,
    /// What changelog records say about the rules that wrote them.
    pub stamp: RulesStamp,
    pub decoder: Decoder,
    pub default_encoding: Encoding,
    pub topics: Topics,
    /// Of the input topic, to name the partition of a lead held elsewhere.
    pub input_partitions: i32,
    /// How account updates are partitioned (with `[accounts]`).
    pub account_partitioning: Option<AccountPartitioning>,
    /// Changelogs are read `read_committed` (in `exactly_once` mode).
    pub read_committed: bool,
    /// For the changelog readers of restores.
    pub base: ClientConfig,
}

/// Where this process's producer puts an account's updates: the account
/// updates topic's partition count, and librdkafka's partitioner unless
/// `[kafka.properties] partitioner` names murmur2. Found once, not per
/// update.
#[derive(Clone, Copy)]
pub(super) struct AccountPartitioning {
    partitioner: Partitioner,
    partitions: i32,
}

impl AccountPartitioning {
    pub fn new(config: &Config, partitions: i32) -> Self {
        let partitioner = match config
            .kafka
            .properties
            .get("partitioner")
            .map(String::as_str)
        {
            Some("murmur2" | "murmur2_random") => Partitioner::Murmur2Random,
            _ => Partitioner::ConsistentRandom,
        };
        AccountPartitioning {
            partitioner,
            partitions,
        }
    }
}

impl Shared<'_> {
    /// The account updates partition an account's updates go to.
    pub fn account_partition(&self, account_id: &str) -> Option<i32> {
        let AccountPartitioning {
            partitioner,
            partitions,
        } = self.account_partitioning?;
        Some(partition_of(partitioner, account_id.as_bytes(), partitions))
    }
}

/// What a stream thread counts: totals for its progress log, and the
/// metrics counted per event or output, through handles registered once
/// (`metrics::counter!` looks its name up in the registry at every call).
pub(super) struct Counters {
    pub consumed: u64,
    pub scored: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub outputs: u64,
    pub batches: u64,
    meters: Meters,
}

struct Meters {
    consumed: metrics::Counter,
    scored: metrics::Counter,
    duplicates: metrics::Counter,
    event_lag: metrics::Histogram,
    /// By [`OutputKind::ALL`]'s order.
    outputs: [metrics::Counter; OutputKind::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            consumed: 0,
            scored: 0,
            duplicates: 0,
            dead_lettered: 0,
            outputs: 0,
            batches: 0,
            meters: Meters {
                consumed: metrics::counter!(m::EVENTS_CONSUMED),
                scored: metrics::counter!(m::EVENTS_SCORED),
                duplicates: metrics::counter!(m::EVENTS_DUPLICATE),
                event_lag: metrics::histogram!(m::EVENT_LAG),
                outputs: OutputKind::ALL
                    .map(|kind| metrics::counter!(m::OUTPUTS, "type" => kind.as_str())),
            },
        }
    }
}

impl Counters {
    pub fn consumed(&mut self) {
        self.consumed += 1;
        self.meters.consumed.increment(1);
    }

    /// An event scored `lag_ms` after its time.
    pub fn scored(&mut self, lag_ms: i64) {
        self.scored += 1;
        self.meters.scored.increment(1);
        self.meters.event_lag.record(lag_ms as f64 / 1000.0);
    }

    pub fn duplicate(&mut self) {
        self.duplicates += 1;
        self.meters.duplicates.increment(1);
    }

    fn output(&mut self, kind: OutputKind) {
        self.outputs += 1;
        let index = OutputKind::ALL.iter().position(|k| *k == kind);
        self.meters.outputs[index.expect("every kind is in OutputKind::ALL")].increment(1);
    }
}

/// Where tasks write during a batch: every record goes through the
/// thread's producer, into the batch's transaction.
pub(super) struct Out<'a> {
    pub shared: &'a Shared<'a>,
    pub producer: &'a TransactionProducer,
    pub counters: &'a mut Counters,
    /// The batch's wall clock.
    pub wall: Timestamp,
    /// The account updates partitions this thread applies its own lead
    /// tasks' updates to in place (see [`Tasks::apply_local`]).
    pub in_place: Vec<i32>,
    /// Account updates for those partitions, waiting to be applied.
    pub local_updates: Vec<(i32, AccountUpdate)>,
    /// Whether the batch applied any.
    pub applied_in_place: bool,
}

impl Out<'_> {
    pub fn output(&mut self, output: &Output) -> Result<(), Retry> {
        let encoding = self.shared.config.processing.output_encoding;
        let value = output_value(output, encoding);
        let record = BaseRecord::to(&self.shared.topics.output)
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
        self.counters.output(output.kind);
        if output.kind == OutputKind::ThresholdCrossed {
            metrics::counter!(
                m::CROSSINGS,
                "tier" => output.tier.to_string(),
                "direction" => output.direction.as_str()
            )
            .increment(1);
        }
        send(self.producer, record)
    }

    pub fn outputs(&mut self, outputs: &[Output]) -> Result<(), Retry> {
        outputs.iter().try_for_each(|output| self.output(output))
    }

    /// Sends `message` to the dead-letter topic with why (item `item` of a
    /// batch envelope, when it holds several).
    pub fn dead_letter(
        &mut self,
        message: &OwnedMessage,
        reason_code: &'static str,
        reason: String,
        item: Option<usize>,
    ) -> Result<(), Retry> {
        self.counters.dead_lettered += 1;
        metrics::counter!(m::EVENTS_REJECTED, "reason" => reason_code).increment(1);
        let Some(topic) = &self.shared.topics.dead_letter else {
            return Ok(());
        };
        metrics::counter!(m::DEAD_LETTERS).increment(1);
        let fitted = fit_dead_letter(
            message.key(),
            message.payload(),
            headers_bytes(message.headers()),
            self.shared.config.processing.dead_letter_max_bytes,
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
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = fitted.key {
            record = record.key(key);
        }
        if let Some(payload) = fitted.value {
            record = record.payload(payload);
        }
        send(self.producer, record)
    }

    /// Counts an event `[filters]` kept out of scores and, with `[kafka]
    /// filtered_topic`, sends the record it came in there, with the reason.
    pub fn filtered(
        &mut self,
        message: &OwnedMessage,
        reason: FilterReason,
        item: Option<usize>,
    ) -> Result<(), Retry> {
        metrics::counter!(m::EVENTS_FILTERED, "reason" => reason.as_str()).increment(1);
        let Some(topic) = &self.shared.topics.filtered else {
            return Ok(());
        };
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for h in message.headers().iter().flat_map(|h| h.iter()) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
        headers = headers.insert(Header {
            key: crate::kafka::headers::FILTER_REASON,
            value: Some(reason.as_str()),
        });
        let item = item.map(|i| i.to_string());
        if let Some(item) = &item {
            headers = headers.insert(Header {
                key: crate::kafka::headers::FILTER_BATCH_ITEM,
                value: Some(item.as_str()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        send(self.producer, record)
    }

    /// Sends a keyed record to `topic` (to `partition`, or where the
    /// producer's partitioner puts the key); no value is a tombstone.
    /// Before the first state a task writes under the running rules: the
    /// outline of those rules, which a restore under other rules needs to
    /// re-score that state (see `core::migration`). Once per task.
    pub fn record_outline(
        &mut self,
        topic: &str,
        partition: i32,
        recorded: &mut bool,
    ) -> Result<(), Retry> {
        if *recorded {
            return Ok(());
        }
        let outline = crate::core::migration::RulesOutline::of(&self.shared.rules).to_json();
        let key = crate::codec::outline_key(&self.shared.stamp.fingerprint);
        self.record(topic, Some(partition), &key, Some(outline.as_bytes()))?;
        *recorded = true;
        Ok(())
    }

    pub fn record(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), Retry> {
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        send(self.producer, record)
    }
}

/// The tasks of one stream thread, by kind and partition.
#[derive(Default)]
pub(super) struct Tasks {
    /// Input partition N with identity partition N.
    leads: BTreeMap<i32, LeadTask>,
    /// Account updates partitions.
    accounts: BTreeMap<i32, AccountTask>,
}

impl Tasks {
    /// The task that owns a topic-partition, if this thread holds it.
    pub fn get_mut(
        &mut self,
        topics: &Topics,
        topic: &str,
        partition: i32,
    ) -> Option<&mut dyn Task> {
        if topic == topics.input || topic == topics.identities {
            self.leads.get_mut(&partition).map(|t| t as &mut dyn Task)
        } else if topics.account_updates.as_deref() == Some(topic) {
            self.accounts
                .get_mut(&partition)
                .map(|t| t as &mut dyn Task)
        } else {
            None
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn Task> {
        let leads = self.leads.values().map(|t| t as &dyn Task);
        leads.chain(self.accounts.values().map(|t| t as &dyn Task))
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut dyn Task> {
        let leads = self.leads.values_mut().map(|t| t as &mut dyn Task);
        leads.chain(self.accounts.values_mut().map(|t| t as &mut dyn Task))
    }

    /// Drops the tasks of revoked topic-partitions.
    pub fn drop_partitions(&mut self, topics: &Topics, lost: &[(String, i32)]) {
        for (topic, partition) in lost {
            if *topic == topics.input {
                self.leads.remove(partition);
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string()).set(0.0);
            } else if topics.account_updates.as_ref() == Some(topic) {
                self.accounts.remove(partition);
            }
        }
    }

    /// (Re)builds the tasks of `partitions` from their changelogs, where
    /// the group's `committed` offsets say their processing resumes.
    pub fn restore(
        &mut self,
        shared: &Shared<'_>,
        partitions: &[(String, i32)],
        committed: &BTreeMap<(String, i32), Committed>,
    ) -> anyhow::Result<()> {
        let of = |topic: &str| -> Vec<i32> {
            let mut held: Vec<i32> = partitions
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|&(_, p)| p)
                .collect();
            held.sort_unstable();
            held
        };
        let topics = &shared.topics;
        let input = of(&topics.input);
        let identities = of(&topics.identities);
        if input != identities {
            // Also seen for a moment while a new identity topic reaches the
            // group's metadata; handoffs for an input partition held
            // elsewhere wait, uncommitted, for the instance that holds it.
            tracing::warn!(
                ?input,
                ?identities,
                "input and identity partitions assigned apart: alias merges across partitions \
                 wait until partition N of both topics is on one instance; keep \
                 partition.assignment.strategy at range (the default)"
            );
        }
        if !input.is_empty() {
            // Account tasks kept from before may still have updates from
            // the new lead partitions' former holders in the topic: those
            // tasks hear this thread's leads through the topic too, in
            // order (with the default eager assignment, every task is
            // restored at each rebalance and this never happens).
            for task in self.accounts.values_mut() {
                task.in_place = false;
            }
        }
        self.leads.extend(lead::restore(shared, &input, committed)?);
        if let Some(topic) = &topics.account_updates {
            self.accounts
                .extend(account::restore(shared, &of(topic), committed)?);
        }
        self.note_leads_at_end();
        Ok(())
    }

    /// The account partitions whose updates from this thread's lead tasks
    /// are applied in place.
    pub fn in_place_partitions(&self) -> Vec<i32> {
        self.accounts
            .iter()
            .filter(|(_, t)| t.in_place)
            .map(|(&p, _)| p)
            .collect()
    }

    /// Applies the account updates lead tasks left in `out` for partitions
    /// this thread holds, in the order they were sent.
    pub fn apply_local(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        for (partition, update) in std::mem::take(&mut out.local_updates) {
            out.applied_in_place = true;
            match self.accounts.get_mut(&partition) {
                Some(task) => task.apply_local(&update, out)?,
                None => unreachable!("in_place names held account partitions only"),
            }
        }
        Ok(())
    }

    /// Publishes what restores left (see [`Task::publish_pending`]).
    pub fn publish_pending(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        self.leads_then_accounts(out, |task, out| task.publish_pending(out))
    }

    /// Fires every task's due timers (see [`Task::fire_timers`]).
    pub fn fire_timers(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        self.leads_then_accounts(out, |task, out| task.fire_timers(out))
    }

    /// Runs `act` on the lead tasks, applies the account updates they left
    /// for this thread's account tasks, then runs it on those: an account
    /// hears its leads before it acts itself.
    fn leads_then_accounts(
        &mut self,
        out: &mut Out<'_>,
        mut act: impl FnMut(&mut dyn Task, &mut Out<'_>) -> Result<(), Retry>,
    ) -> Result<(), Retry> {
        for task in self.leads.values_mut() {
            act(task, out)?;
        }
        self.apply_local(out)?;
        for task in self.accounts.values_mut() {
            act(task, out)?;
        }
        Ok(())
    }

    pub fn write_account_changes(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        for task in self.accounts.values_mut() {
            task.write_changes(out)?;
        }
        Ok(())
    }

    pub fn write_lead_changes(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        for task in self.leads.values_mut() {
            task.write_changes(out)?;
        }
        Ok(())
    }

    /// Tells the task that owns `topic`'s `partition` whether it is read
    /// to its end.
    pub fn set_at_end(&mut self, topics: &Topics, topic: &str, partition: i32, at_end: bool) {
        if let Some(task) = self.get_mut(topics, topic, partition) {
            task.set_at_end(topics, topic, at_end);
        }
        if topic == topics.input {
            self.note_leads_at_end();
        }
    }

    fn note_leads_at_end(&mut self) {
        let at_end = self.leads.values().all(LeadTask::at_end);
        for task in self.accounts.values_mut() {
            task.leads_at_end = at_end;
        }
    }

    /// The topic-partitions this thread's tasks read.
    pub fn topic_partitions(&self, topics: &Topics) -> Vec<(String, i32)> {
        let mut held = Vec::new();
        for &p in self.leads.keys() {
            held.push((topics.input.clone(), p));
            held.push((topics.identities.clone(), p));
        }
        if let Some(topic) = &topics.account_updates {
            held.extend(self.accounts.keys().map(|&p| (topic.clone(), p)));
        }
        held
    }

    pub fn held(&self) -> Held {
        Held {
            leads: self.leads.values().map(LeadTask::lead_count).sum(),
            accounts: self.accounts.values().map(AccountTask::account_count).sum(),
            partitions: self.leads.len(),
        }
    }

    /// Input and account partitions held, for logs.
    pub fn partitions(&self) -> (Vec<i32>, Vec<i32>) {
        (
            self.leads.keys().copied().collect(),
            self.accounts.keys().copied().collect(),
        )
    }

    /// Answers a query from committed state (called between batches).
    pub fn answer(&self, shared: &Shared<'_>, subject: Subject, id: &str) -> LeadAnswer {
        match subject {
            Subject::Lead => lead::answer(&self.leads, shared, id),
            Subject::Account => account::answer(&self.accounts, shared, id),
        }
    }
}
