//! One stream thread: a member of the consumer group that owns a consumer,
//! a producer and the transaction, and hands every record to the task
//! that owns its topic-partition. It knows nothing about scoring.
//!
//! Per batch (closed by `commit_interval_ms` or `max_batch`): begin a
//! transaction; hand each record to its task; let every task fire its due
//! timers; wait until what they wrote is acknowledged; let every task write
//! its changelog records; add the consumed offsets (with each partition's
//! watermark and the group generation) and commit. A batch that fails is
//! aborted, the tasks are rebuilt from their changelogs and the consumer
//! is rewound to the committed offsets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{
    self, cached_high_watermark, fatal_consumer_error, group_generation, has_member_id, is_fatal,
    retry, stop_reason, AssignmentChange, GroupConsumer, Retry, TransactionProducer,
    CLIENT_TIMEOUT,
};
use super::offsets::{self, commit_metadata};
use super::poison::{Position, Retries};
use super::tasks::{Counters, Out, Shared, Tasks};
use super::{wall_clock, Reload, Shutdown};
use crate::ops::metrics as m;
use crate::ops::status::{LeadQuery, Status};

/// The ids one stream thread's clients take in the group and on the broker.
pub(super) struct ThreadIds {
    pub thread: usize,
    /// `exactly_once` mode.
    pub transactional_id: Option<String>,
    /// Static membership.
    pub group_instance_id: Option<String>,
}

pub(super) struct Driver<'c> {
    thread: usize,
    /// When the process began: recovery after a restart is measured from
    /// here to the first committed batch.
    started: Instant,
    first_commit_logged: bool,
    status: &'c Status,
    queries: Receiver<LeadQuery>,
    shared: Shared<'c>,
    consumer: GroupConsumer,
    producer: TransactionProducer,
    transactional: bool,
    tasks: Tasks,
    counters: Counters,
    retries: Retries,
}

impl<'c> Driver<'c> {
    pub fn start(
        ids: ThreadIds,
        shared: Shared<'c>,
        status: &'c Status,
        queries: Receiver<LeadQuery>,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let config = shared.config;
        let transactional = ids.transactional_id.is_some();
        let producer = clients::producer(&shared.base, config, ids.transactional_id.as_deref())?;
        let consumer = clients::consumer(
            &shared.base,
            config,
            ids.group_instance_id.as_deref(),
            transactional,
            &shared.topics.subscribed(),
        )?;
        tracing::info!(
            input = %shared.topics.input,
            output = %shared.topics.output,
            guarantee = ?config.processing.guarantee,
            rules_version = %config.rules.version,
            group_instance_id = ids.group_instance_id.as_deref().unwrap_or("(dynamic membership)"),
            "processor started"
        );
        status.set_ready(ids.thread, false);
        Ok(Driver {
            thread: ids.thread,
            started,
            first_commit_logged: false,
            status,
            queries,
            retries: Retries::new(config.processing.poison_after_attempts),
            shared,
            consumer,
            producer,
            transactional,
            tasks: Tasks::default(),
            counters: Counters::default(),
        })
    }

    /// Runs until `shutdown` is requested (then finishes and commits the
    /// batch in flight, leaves the group and returns `Ok`) or a fatal
    /// error. Between batches, a `reload` request reads the rules in
    /// `config_path` again (see [`Driver::reload_rules`]).
    pub fn run(
        mut self,
        shutdown: &Shutdown,
        (reload, config_path): (&Reload, &Path),
    ) -> anyhow::Result<()> {
        let mut last_report = Instant::now();
        let mut reloads_seen = reload.requests();
        while !shutdown.is_requested() {
            let batch = self.collect(shutdown)?;
            self.process_or_recover(batch)?;
            if reload.requests() != reloads_seen {
                reloads_seen = reload.requests();
                self.reload_rules(config_path)?;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                self.report();
                last_report = Instant::now();
            }
            if self.drained()? {
                tracing::info!("drained to the cut-over offsets");
                break;
            }
        }
        self.report();
        self.leave_group();
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Polls until the commit interval passes or the batch is full, acting
    /// on assignment changes as they come.
    fn collect(&mut self, shutdown: &Shutdown) -> anyhow::Result<Vec<OwnedMessage>> {
        let processing = &self.shared.config.processing;
        let deadline = Instant::now() + Duration::from_millis(processing.commit_interval_ms);
        let limit = self.retries.batch_limit(processing.max_batch);
        let mut batch = Vec::new();
        while batch.len() < limit && !shutdown.is_requested() {
            self.status.beat(self.thread);
            self.answer_queries();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left) {
                Some(Ok(message)) => {
                    let (topic, partition) = (message.topic(), message.partition());
                    if self.past_drain_stop(topic, partition, message.offset()) {
                        continue;
                    }
                    self.tasks
                        .set_at_end(&self.shared.topics, topic, partition, false);
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

    /// In a drain (`leadscore promote`): whether an input record lies at
    /// or past its partition's stop. It is left unprocessed (and its
    /// offset uncommitted), and the partition is paused.
    fn past_drain_stop(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some(stops) = &self.shared.config.drain_to else {
            return false;
        };
        if topic != self.shared.topics.input {
            return false;
        }
        let past = stops.get(&partition).is_none_or(|&stop| offset >= stop);
        if past {
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, partition);
            if let Err(e) = self.consumer.pause(&list) {
                tracing::warn!(partition, error = %e, "cannot pause a drained partition");
            }
        }
        past
    }

    /// In a drain: whether every input partition is committed up to its
    /// stop and the identity and account-update partitions hold nothing
    /// past their committed offsets (all that the processed input caused
    /// is applied). Checked between batches, after a commit.
    fn drained(&mut self) -> anyhow::Result<bool> {
        let Some(stops) = &self.shared.config.drain_to else {
            return Ok(false);
        };
        let topics = &self.shared.topics;
        let held = self.tasks.topic_partitions(topics);
        let inputs = held.iter().filter(|(t, _)| *t == topics.input).count();
        if inputs < stops.len() || self.tasks.all().any(|t| t.has_pending()) {
            return Ok(false);
        }
        let committed = offsets::committed(&self.consumer, &held)?;
        let offset_of = |topic: &str, p: i32| {
            committed
                .get(&(topic.to_string(), p))
                .and_then(|c| c.offset)
        };
        for (&p, &stop) in stops {
            if offset_of(&topics.input, p).unwrap_or(0) < stop {
                return Ok(false);
            }
        }
        for (topic, p) in held.iter().filter(|(t, _)| *t != topics.input) {
            let start = offset_of(topic, *p).map_or(Offset::Beginning, Offset::Offset);
            let left = super::restore::read_from(
                &self.shared.base,
                topic,
                &[(*p, start)],
                self.shared.read_committed,
                |_, _, _, _| Ok(()),
            )?;
            if left > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// librdkafka reports the end of a partition without its topic: the
    /// consumer's position and the high watermark of its last fetch tell
    /// which of the topics with that partition number is at its end (no
    /// broker round trip: this runs on every end-of-partition report).
    fn reached_end(&mut self, partition: i32) {
        let positions = self.consumer.position().ok();
        let topics = &self.shared.topics;
        for topic in topics.subscribed() {
            let position = positions.as_ref().and_then(|list| {
                list.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            });
            let high = cached_high_watermark(&self.consumer, topic, partition);
            if matches!((position, high), (Some(p), Some(h)) if p >= h) {
                self.tasks.set_at_end(topics, topic, partition, true);
            }
        }
    }

    fn apply_assignment_changes(&mut self, batch: &mut Vec<OwnedMessage>) -> anyhow::Result<()> {
        for change in self.consumer.context().take_changes() {
            match change {
                AssignmentChange::Revoked(lost) => {
                    metrics::counter!(m::REBALANCES, "change" => "revoked").increment(1);
                    self.status.set_ready(self.thread, false);
                    let (partitions, account_partitions) = self.tasks.partitions();
                    self.tasks.drop_partitions(&self.shared.topics, &lost);
                    batch.retain(|m| !lost.contains(&(m.topic().to_string(), m.partition())));
                    tracing::info!(
                        ?partitions,
                        ?account_partitions,
                        "partitions revoked; their state dropped"
                    );
                }
                AssignmentChange::Assigned(held) => {
                    let committed = self.restore_assigned(&held)?;
                    self.report_assignment(&committed);
                    self.publish_held();
                    self.status.set_ready(self.thread, true);
                }
            }
        }
        Ok(())
    }

    /// Restores the tasks of newly assigned partitions. The group's
    /// coordinator and the changelog's leaders may be moving while a
    /// rebalance settles: a failed read is tried again before it ends the
    /// thread.
    fn restore_assigned(
        &mut self,
        held: &[(String, i32)],
    ) -> anyhow::Result<BTreeMap<(String, i32), offsets::Committed>> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let restored = offsets::committed(&self.consumer, held).and_then(|committed| {
                self.tasks.restore(&self.shared, held, &committed)?;
                Ok(committed)
            });
            match restored {
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        attempt,
                        "restore failed; trying again"
                    );
                    self.tasks.drop_partitions(&self.shared.topics, held);
                    std::thread::sleep(Duration::from_secs(1));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Counts and logs an assignment: `reclaimed` when a restarted static
    /// member took back partitions whose offsets were last committed in
    /// the group's current generation (no rebalance happened since: no
    /// other member gave anything up), `assigned` after a rebalance.
    fn report_assignment(&self, committed: &BTreeMap<(String, i32), offsets::Committed>) {
        let generation = group_generation(&self.consumer);
        let last_committed_in = committed.values().filter_map(|c| c.generation).max();
        let reclaimed = generation.is_some() && last_committed_in == generation;
        let change = if reclaimed { "reclaimed" } else { "assigned" };
        metrics::counter!(m::REBALANCES, "change" => change).increment(1);
        let (partitions, account_partitions) = self.tasks.partitions();
        tracing::info!(
            ?partitions,
            ?account_partitions,
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
    /// `session.timeout.ms`: unsubscribing sends the leave, once the
    /// revocation is served (by poll) and the partitions are stopped.
    fn leave_group(&mut self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let assigned = self.consumer.assignment().map_or(0, |list| list.count());
            // librdkafka clears the member id as it sends the leave; a
            // close before that would skip it for a static member.
            if assigned == 0 && !has_member_id(&self.consumer) {
                break;
            }
        }
        if let Err(e) = self.apply_assignment_changes(&mut Vec::new()) {
            tracing::warn!(error = %e, "while leaving the group");
        }
    }

    fn process_or_recover(&mut self, batch: Vec<OwnedMessage>) -> anyhow::Result<()> {
        match self.process(&batch) {
            Ok(true) => {
                self.status.batch_committed(self.thread);
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
                self.status.batch_failed(self.thread);
                let positions: Vec<Position> = batch
                    .iter()
                    .map(|m| (m.topic().to_string(), m.partition(), m.offset()))
                    .collect();
                self.retries.failed(&positions, &format!("{error:#}"));
                self.settle_failed_batch();
                if self.transactional {
                    let _call = self.status.calling(self.thread, "abort_transaction");
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

    /// Switches to the rules now in `config_path`, between two batches,
    /// as a restart with them would: when the state can be re-scored in
    /// place, the tasks are rebuilt from their changelogs under the new
    /// rules (migrated, re-scored; what moved is published in the next
    /// transaction, with every lead's record). Rules that cannot be
    /// applied in place (or a file that does not load) are refused with
    /// the reasons, and the running rules stay.
    fn reload_rules(&mut self, config_path: &Path) -> anyhow::Result<()> {
        use crate::core::migration::{Migration, RulesOutline};
        let env: Vec<(String, String)> = std::env::vars().collect();
        let running_score = self.shared.config.running_score.as_ref();
        let new = match crate::config::load(config_path, &env) {
            Ok(mut config) => match config.run_score(running_score.map(|s| s.name.as_str())) {
                Ok(()) => config.rules,
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the running rules stay");
                    return Ok(());
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the configuration does not load; the running rules stay");
                return Ok(());
            }
        };
        let running = &self.shared.rules;
        let stamp = new.stamp();
        if stamp.fingerprint == self.shared.stamp.fingerprint {
            tracing::info!(rules_version = %new.version, "SIGHUP: the rules are unchanged");
            return Ok(());
        }
        if new.accounts.is_some() != running.accounts.is_some() {
            tracing::error!(
                "SIGHUP: adding or removing [accounts] takes a restart (it adds or drops \
                 topics and tasks); the running rules stay"
            );
            return Ok(());
        }
        if let Err(reasons) = Migration::plan(&RulesOutline::of(running), &new) {
            tracing::error!(
                reasons = %reasons.join("; "),
                "SIGHUP: these rules need history (see README, Changing the rules); the \
                 running rules stay"
            );
            return Ok(());
        }
        tracing::info!(
            from = %running.version,
            to = %new.version,
            fingerprint = %stamp.fingerprint,
            "SIGHUP: switching rules; state is re-scored in place"
        );
        metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "rules_version" => running.version.to_string()).set(0.0);
        metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "rules_version" => new.version.to_string()).set(1.0);
        let mut decoder = crate::codec::Decoder::for_rules(&new);
        decoder.limits = self.shared.decoder.limits;
        self.shared.decoder = decoder;
        self.shared.rules = std::sync::Arc::new(new);
        self.shared.stamp = stamp;
        self.rewind()
    }

    /// After a failed batch: tasks rebuilt from what their changelogs
    /// hold, the consumer back at the committed offsets.
    fn rewind(&mut self) -> anyhow::Result<()> {
        let held = self.tasks.topic_partitions(&self.shared.topics);
        let committed = offsets::committed(&self.consumer, &held)?;
        self.tasks = Tasks::default();
        self.tasks.restore(&self.shared, &held, &committed)?;
        for (topic, p) in &held {
            let offset = committed
                .get(&(topic.clone(), *p))
                .and_then(|c| c.offset)
                .map_or(Offset::Beginning, Offset::Offset);
            self.consumer
                .seek(topic, *p, offset, CLIENT_TIMEOUT)
                .map_err(|e| anyhow!("cannot seek {topic} partition {p}: {e}"))?;
        }
        Ok(())
    }

    /// Processes and commits a batch; `Ok(false)` when there was nothing
    /// to do.
    fn process(&mut self, batch: &[OwnedMessage]) -> Result<bool, Retry> {
        let wall = wall_clock();
        let mode = self.shared.config.processing.timer_clock;
        let timers_due = self.tasks.all().any(|t| t.timers_due(wall, mode));
        let pending = self.tasks.all().any(|t| t.has_pending());
        if batch.is_empty() && !timers_due && !pending {
            self.publish_held();
            return Ok(false);
        }
        let started = Instant::now();
        if self.transactional {
            self.producer
                .begin_transaction()
                .map_err(retry("cannot begin a transaction"))?;
        }
        // A few topic-partitions per batch: found by a scan, with no key
        // allocated per message.
        let mut next_offsets: Vec<((String, i32), i64)> = Vec::new();
        let mut out = Out {
            shared: &self.shared,
            producer: &self.producer,
            counters: &mut self.counters,
            wall,
            // Set at restore in transactional runs only.
            in_place: self.tasks.in_place_partitions(),
            local_updates: Vec::new(),
            applied_in_place: false,
        };
        self.tasks.publish_pending(&mut out)?;
        for message in batch {
            let (topic, partition, offset) =
                (message.topic(), message.partition(), message.offset());
            let Some(task) = self.tasks.get_mut(&self.shared.topics, topic, partition) else {
                continue; // revoked while buffered
            };
            match next_offsets
                .iter_mut()
                .find(|((t, p), _)| *p == partition && t == topic)
            {
                Some((_, next)) => *next = offset + 1,
                None => next_offsets.push(((topic.to_string(), partition), offset + 1)),
            }
            if let Some(reason) = self.retries.poison(topic, partition, offset) {
                let reason = reason.to_string();
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    reason,
                    "dead-lettering a message that failed every attempt"
                );
                out.dead_letter(message, "poison", reason, None)?;
                continue;
            }
            task.apply(message, &mut out)?;
            self.tasks.apply_local(&mut out)?;
        }
        self.tasks.fire_timers(&mut out)?;
        // Outputs first: a changelog record a reader can see implies the
        // outputs of its batch are visible too.
        flush(&self.producer)?;
        if out.applied_in_place {
            // Accounts that heard a lead in place before that lead's
            // record: where a broker's transactions leak (see
            // `weak_brokers`), a lead record a reader can see implies its
            // accounts' are visible too, as a sent update would be (an
            // account applying a lead's update again is unchanged by it).
            self.tasks.write_account_changes(&mut out)?;
            flush(&self.producer)?;
            self.tasks.write_lead_changes(&mut out)?;
        } else {
            for task in self.tasks.all_mut() {
                task.write_changes(&mut out)?;
            }
        }
        let offsets = self.offset_list(&next_offsets)?;
        if self.transactional {
            if !next_offsets.is_empty() {
                let group = self
                    .consumer
                    .group_metadata()
                    .ok_or_else(|| Retry(anyhow!("no consumer group metadata")))?;
                let _call = self
                    .status
                    .calling(self.thread, "send_offsets_to_transaction");
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, CLIENT_TIMEOUT)
                    .map_err(retry("cannot add offsets to the transaction"))?;
            }
            // Left to commit_transaction, this flush would take 100 ms
            // (see flush_promptly).
            flush(&self.producer)?;
            let _call = self.status.calling(self.thread, "commit_transaction");
            self.producer
                .commit_transaction(CLIENT_TIMEOUT)
                .map_err(retry("cannot commit the transaction"))?;
            metrics::counter!(m::TRANSACTIONS, "result" => "committed").increment(1);
        } else {
            flush(&self.producer)?;
            if !next_offsets.is_empty() {
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
        self.publish_held();
        Ok(true)
    }

    /// The offsets to commit, each with its task's watermark (for a
    /// restore to resume with) and the group generation.
    fn offset_list(&mut self, next: &[((String, i32), i64)]) -> Result<TopicPartitionList, Retry> {
        let generation = group_generation(&self.consumer);
        let mut list = TopicPartitionList::new();
        for &((ref topic, partition), offset) in next {
            let watermark = self
                .tasks
                .get_mut(&self.shared.topics, topic, partition)
                .and_then(|task| task.watermark());
            let mut entry = list.add_partition(topic, partition);
            entry
                .set_offset(Offset::Offset(offset))
                .map_err(retry("bad offset"))?;
            entry.set_metadata(commit_metadata(watermark, generation));
        }
        Ok(list)
    }

    /// Answers the query API from committed state: called between batches.
    fn answer_queries(&self) {
        let ready = self.status.is_ready();
        while let Ok(query) = self.queries.try_recv() {
            let answer = if ready {
                self.tasks
                    .answer(&self.shared, query.subject, &query.lead_id)
            } else {
                crate::ops::status::LeadAnswer::NotReady
            };
            let _ = query.reply.send(answer);
        }
    }

    /// What this thread holds, for the process-wide gauges (cheap: map
    /// sizes).
    fn publish_held(&self) {
        self.status.set_held(self.thread, self.tasks.held());
    }

    fn report(&self) {
        let c = &self.counters;
        let held = self.tasks.held();
        tracing::info!(
            consumed = c.consumed,
            scored = c.scored,
            duplicates = c.duplicates,
            dead_lettered = c.dead_lettered,
            outputs = c.outputs,
            batches = c.batches,
            partitions = held.partitions,
            leads = held.leads,
            "progress"
        );
    }
}

/// Waits until every record produced is acknowledged; a record that was
/// not fails the batch.
fn flush(producer: &TransactionProducer) -> Result<(), Retry> {
    super::flush_promptly(producer, CLIENT_TIMEOUT).map_err(retry("cannot flush the producer"))?;
    let (failures, last) = producer.context().take_failures();
    if failures > 0 {
        return Err(Retry(anyhow!(
            "{failures} records were not delivered; last: {}",
            last.unwrap_or_default()
        )));
    }
    Ok(())
}
