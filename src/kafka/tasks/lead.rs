//! The lead task: input partition N with identity partition N. Scores
//! tracking events, applies handoffs from other partitions' alias merges,
//! sends the handoffs and account updates scoring produces, fires decay
//! timers and writes the lead changelog.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use rdkafka::message::{Message, OwnedMessage};

use super::{Out, Shared, Task, Topics};
use crate::codec::account::encode_account_update;
use crate::codec::identity::{decode_handoff, encode_handoff};
use crate::codec::proto::{decode_changelog, encode_changelog, ChangelogValue};
use crate::codec::{erasure_key, erasure_of_key, erasure_request, Encoding, HANDOVER_KEY};
use crate::core::engine::StateChange;
use crate::core::output::Cause;
use crate::core::{Engine, Outcome, Output, Timestamp};
use crate::kafka::clients::Retry;
use crate::kafka::offsets::{Committed, Resume};
use crate::kafka::promote::{published_tiers, Handovers};
use crate::kafka::records::{header_text, record_time};
use crate::kafka::restore::{read_to_end, RulesHistory};
use crate::ops::metrics as m;
use crate::ops::partitioner::partition_of;
use crate::ops::status::LeadAnswer;

/// Items of one batch envelope share an input offset; each gets its own
/// position below it. Envelopes with more items are dead-lettered.
const MAX_BATCH_ITEMS: usize = 1 << POSITION_ITEM_BITS;
const POSITION_ITEM_BITS: u32 = 10;

/// An input key was seen on another partition than the configured
/// partitioner gives: said once per process, counted always.
static MISROUTED_WARNED: AtomicBool = AtomicBool::new(false);

pub(super) struct LeadTask {
    partition: i32,
    engine: Engine,
    /// The consumer has read the input partition to its end: decay timers
    /// then follow the wall clock; while catching up they follow event
    /// time.
    at_end: bool,
    /// The outputs of re-scoring restored state under new rules, for the
    /// next transaction.
    /// `Some` (perhaps empty) until the re-score is written.
    pending: Option<Vec<Output>>,
    /// The changelog partition holds the running rules' outline.
    outline_recorded: bool,
    /// The handover record to write, marked done, with the cut-over
    /// crossings of a promotion (see `kafka::promote`).
    handover_done: Option<Vec<u8>>,
}

impl LeadTask {
    /// Whether its input partition is read to the end.
    pub(super) fn at_end(&self) -> bool {
        self.at_end
    }

    pub fn lead_count(&self) -> usize {
        self.engine.lead_count()
    }

    fn score(&mut self, message: &OwnedMessage, out: &mut Out<'_>) -> Result<(), Retry> {
        out.counters.consumed();
        check_routing(out.shared, message);
        let encoding = match header_text(message.headers(), crate::kafka::headers::CONTENT_TYPE) {
            Some(value) => Encoding::from_content_type(value),
            None => Ok(out.shared.default_encoding),
        };
        let decoded = match (message.payload(), message.key()) {
            (None, Some(key)) => {
                // A tombstone: an erasure request, at the record's time.
                let at = record_time(message).or(self.engine.watermark());
                Ok(vec![erasure_request(key, at)])
            }
            (payload, _) => encoding.and_then(|encoding| {
                out.shared
                    .decoder
                    .decode(payload.unwrap_or_default(), encoding)
            }),
        };
        let items = match decoded {
            Ok(items) if items.len() > MAX_BATCH_ITEMS => {
                return out.dead_letter(
                    message,
                    "batch_too_large",
                    format!("a batch envelope may hold at most {MAX_BATCH_ITEMS} items"),
                    None,
                );
            }
            Ok(items) => items,
            Err(e) => return out.dead_letter(message, e.reason_code(), e.to_string(), None),
        };
        let several = items.len() > 1;
        for (index, item) in items.into_iter().enumerate() {
            let item_number = several.then_some(index + 1);
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    out.dead_letter(message, e.reason_code(), e.to_string(), item_number)?;
                    continue;
                }
            };
            let lag_ms = out.wall.millis().saturating_sub(event.timestamp.millis());
            let position = (message.offset() << POSITION_ITEM_BITS) | index as i64;
            // Decay already due by event time fires before the next event,
            // as in `replay`: a late event must not slip in ahead of a
            // cool-down its lead was due, or what is published would depend
            // on where batches end (and differ, under one event_id, after a
            // restart). The wall clock waits for the batch's end, when every
            // event read so far is applied.
            let due = self
                .engine
                .watermark()
                .map(|clock| self.engine.advance(clock))
                .unwrap_or_default();
            let outcome = self.engine.apply_from(&event, out.wall, Some(position));
            out.outputs(&due)?;
            match outcome {
                Outcome::Applied(outputs) => {
                    out.counters.scored(lag_ms);
                    out.outputs(&outputs)?;
                }
                Outcome::Duplicate | Outcome::AlreadyApplied => {
                    out.counters.duplicate();
                }
                Outcome::HandedOff => {}
                Outcome::Erased => metrics::counter!(m::EVENTS_ERASED).increment(1),
                Outcome::Filtered { reason, outputs } => {
                    out.outputs(&outputs)?;
                    out.filtered(message, reason, item_number)?;
                }
                Outcome::Rejected(r) => {
                    out.dead_letter(message, r.reason_code(), r.to_string(), item_number)?
                }
            }
        }
        Ok(())
    }

    /// Acts on one handoff from another partition's engine.
    fn apply_handoff(&mut self, message: &OwnedMessage, out: &mut Out<'_>) -> Result<(), Retry> {
        let decoded = decode_handoff(
            message.payload().unwrap_or_default(),
            &out.shared.decoder,
            &out.shared.stamp,
        );
        let handoff = match decoded {
            Ok(handoff) => handoff,
            Err(e) => return out.dead_letter(message, "invalid_handoff", e.to_string(), None),
        };
        let kind = handoff.kind();
        let outcome = self.engine.apply_handoff(handoff);
        tracing::debug!(
            kind,
            partition = message.partition(),
            offset = message.offset(),
            outcome = match &outcome {
                Outcome::Applied(_) => "applied",
                Outcome::Duplicate | Outcome::AlreadyApplied => "already applied",
                Outcome::HandedOff => "passed on",
                Outcome::Erased => "dropped (erased)",
                Outcome::Filtered { .. } => "filtered",
                Outcome::Rejected(_) => "rejected",
            },
            "handoff"
        );
        match outcome {
            Outcome::Applied(outputs) => out.outputs(&outputs),
            Outcome::Duplicate | Outcome::AlreadyApplied | Outcome::HandedOff => Ok(()),
            Outcome::Erased => {
                metrics::counter!(m::EVENTS_ERASED).increment(1);
                Ok(())
            }
            Outcome::Filtered { reason, outputs } => {
                metrics::counter!(m::EVENTS_FILTERED, "reason" => reason.as_str()).increment(1);
                out.outputs(&outputs)
            }
            Outcome::Rejected(r) => out.dead_letter(message, r.reason_code(), r.to_string(), None),
        }
    }

    /// Sends the handoffs the engine produced to the identity topic, each
    /// to the partition of the identity it concerns.
    fn send_handoffs(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        let shared = out.shared;
        for handoff in &self.engine.take_handoffs() {
            let destination = handoff.destination();
            let value = encode_handoff(handoff, &shared.stamp);
            let partition = partition_of(
                shared.config.kafka.input_partitioner,
                destination.as_bytes(),
                shared.input_partitions,
            );
            metrics::counter!(m::HANDOFFS, "kind" => handoff.kind()).increment(1);
            out.record(
                &shared.topics.identities,
                Some(partition),
                destination,
                Some(&value),
            )?;
        }
        Ok(())
    }

    /// Sends the account updates scoring produced to the account updates
    /// topic, keyed by account; those for an account partition this thread
    /// applies in place wait in `out` for the thread's account task.
    fn send_account_updates(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        let updates = self.engine.take_account_updates();
        let Some(topic) = &out.shared.topics.account_updates else {
            return Ok(());
        };
        for update in updates {
            if !out.in_place.is_empty() {
                if let Some(partition) = out
                    .shared
                    .account_partition(update.account_id())
                    .filter(|p| out.in_place.contains(p))
                {
                    out.local_updates.push((partition, update));
                    continue;
                }
            }
            let value = encode_account_update(&update);
            out.record(topic, None, update.account_id(), Some(&value))?;
        }
        Ok(())
    }
}

impl Task for LeadTask {
    fn apply(&mut self, message: &OwnedMessage, out: &mut Out<'_>) -> Result<(), Retry> {
        if message.topic() == out.shared.topics.identities {
            self.apply_handoff(message, out)?;
        } else {
            self.score(message, out)?;
        }
        self.send_handoffs(out)?;
        self.send_account_updates(out)
    }

    fn set_at_end(&mut self, topics: &Topics, topic: &str, at_end: bool) {
        // Handoffs come when they come; only the input's end says the
        // partition has caught up.
        if topic == topics.input {
            self.at_end = at_end;
        }
    }

    /// Decay follows the partition's watermark (its latest event time).
    fn own_time(&self) -> (Option<Timestamp>, bool) {
        (self.engine.watermark(), self.at_end)
    }

    fn next_due(&self) -> Option<Timestamp> {
        self.engine.next_due()
    }

    fn advance(&mut self, clock: Timestamp) -> Vec<Output> {
        self.engine.advance(clock)
    }

    /// A lead expired by a timer leaves its account: the account hears it
    /// in the same transaction as the lead's tombstone.
    fn send_caused(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        self.send_account_updates(out)
    }

    fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn publish_pending(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        out.outputs(&self.pending.take().unwrap_or_default())?;
        self.send_account_updates(out)
    }

    fn write_changes(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        let stamp = &out.shared.stamp;
        let mut records: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        self.engine.take_changes(|lead_id, change| {
            let value = match change {
                StateChange::Gone => None, // expired: a tombstone
                change => Some(encode_changelog(&change, stamp)),
            };
            records.push((lead_id.to_string(), value));
        });
        self.engine.take_erasures(|hash, at| {
            let value = at.map(|at| at.millis().to_string().into_bytes());
            records.push((erasure_key(hash), value));
        });
        let topic = &out.shared.topics.changelog;
        if !records.is_empty() {
            out.record_outline(topic, self.partition, &mut self.outline_recorded)?;
        }
        for (key, value) in &records {
            out.record(topic, Some(self.partition), key, value.as_deref())?;
        }
        if let Some(done) = self.handover_done.take() {
            out.record(topic, Some(self.partition), HANDOVER_KEY, Some(&done))?;
        }
        Ok(())
    }

    fn watermark(&self) -> Option<Timestamp> {
        self.engine.watermark()
    }
}

/// Merges across partitions send a handoff to the partition the configured
/// partitioner gives an identity; an input key found on another partition
/// means producers use another partitioner.
fn check_routing(shared: &Shared<'_>, message: &OwnedMessage) {
    let Some(key) = message.key() else {
        return;
    };
    let partitioner = shared.config.kafka.input_partitioner;
    let expected = partition_of(partitioner, key, shared.input_partitions);
    if expected == message.partition() {
        return;
    }
    metrics::counter!(m::MISROUTED).increment(1);
    if !MISROUTED_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            key = %String::from_utf8_lossy(key),
            partition = message.partition(),
            expected,
            ?partitioner,
            "input key on another partition than [kafka] input_partitioner gives: alias merges \
             across partitions will miss; set input_partitioner to the producers' partitioner"
        );
    }
}

/// Rebuilds the lead tasks of input `partitions` from the changelog, all
/// at once. With `read_committed`, records of aborted transactions are
/// skipped (on brokers that hide them); either way the leads' recorded
/// input offsets keep reprocessing exact.
pub(super) fn restore(
    shared: &Shared<'_>,
    partitions: &[i32],
    committed: &BTreeMap<(String, i32), Committed>,
) -> anyhow::Result<BTreeMap<i32, LeadTask>> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let started = Instant::now();
    let rules = &shared.rules;
    let topic = &shared.topics.changelog;
    let mut history = RulesHistory::new(topic, rules, &shared.stamp);
    let mut engines: BTreeMap<i32, Engine> = partitions
        .iter()
        .map(|&p| (p, Engine::new(rules.clone()).track_changes()))
        .collect();
    let mut handovers = Handovers::default();
    let records = read_to_end(
        &shared.base,
        topic,
        partitions,
        shared.read_committed,
        |partition, key, value, offset| {
            let Some(engine) = engines.get_mut(&partition) else {
                return Ok(());
            };
            if handovers.take((topic, partition, offset), key, value)? {
                return Ok(());
            }
            if history.take_outline(partition, key, value, offset)? {
                return Ok(());
            }
            if let Some(hash) = erasure_of_key(key) {
                let at = value.map(|v| {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .map(Timestamp)
                        .with_context(|| format!("changelog {topic}/{partition} offset {offset}: unreadable erasure time"))
                });
                engine.restore_erasure(hash?, at.transpose()?);
                return Ok(());
            }
            let Some(value) = value else {
                // A tombstone: the lead expired or was erased.
                engine.forget_lead(key);
                return Ok(());
            };
            match decode_changelog(value)
                .with_context(|| format!("changelog {topic}/{partition} offset {offset}"))?
            {
                ChangelogValue::Lead {
                    state,
                    rules: written_by,
                } => {
                    let state = match history.migration(partition, &written_by)? {
                        Some(migration) => migration.lead(state),
                        None => state,
                    };
                    engine.restore_lead(key, state);
                }
                ChangelogValue::AliasOf(target) => engine.restore_alias(key, &target),
            }
            Ok(())
        },
    )?;
    handovers.check(topic, &shared.topics.output)?;
    // Decay timers, built once per partition from the restored leads (a
    // partition re-scored below builds them as it goes).
    for (partition, engine) in &mut engines {
        if !history.migrated.contains(partition) {
            engine.fresh_timers();
        }
    }
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let leads: usize = engines.values().map(Engine::lead_count).sum();
    metrics::histogram!(m::RESTORE_DURATION).record(elapsed.as_secs_f64());
    metrics::counter!(m::RESTORED_LEADS).increment(leads as u64);
    let resume: BTreeMap<i32, Resume> = partitions
        .iter()
        .map(|&p| {
            let resume = committed
                .get(&(shared.topics.input.clone(), p))
                .map_or(Resume::At(None), |c| c.resume);
            (p, resume)
        })
        .collect();
    tracing::info!(
        ?partitions,
        leads,
        records,
        resume_at = ?resume,
        seconds = format!("{seconds:.3}"),
        leads_per_second = format!("{:.0}", leads as f64 / seconds),
        "partitions restored from changelog"
    );
    let partitioner = shared.config.kafka.input_partitioner;
    let count = shared.input_partitions;
    let mut tasks = BTreeMap::new();
    let rules_changed = Cause::RulesChanged(shared.stamp.fingerprint.as_str().into());
    for (partition, mut engine) in engines {
        // What was restored is not a change to write back.
        engine.take_changes(|_, _| {});
        // State written under other rules is re-scored now, before any
        // event: every lead is written back under the running rules, and
        // what moved is published in the next transaction, with the
        // changelog records. Aborted, it is all done again from the same
        // state, with the same ids.
        let mut pending = if history.migrated.contains(&partition) {
            let outputs = engine.rescore(&rules_changed);
            metrics::counter!(m::RESCORED).increment(engine.lead_count() as u64);
            tracing::info!(
                partition,
                leads = engine.lead_count(),
                outputs = outputs.len(),
                "re-scored under the running rules"
            );
            Some(outputs)
        } else {
            None
        };
        // The first run of a promoted deployment: subscribers know each
        // lead at the tier the old rules last published; a crossing to the
        // tier held here goes out with the changelog's "done" mark.
        let mut handover_done = None;
        if let Some(handover) = handovers.owed(partition) {
            let published = published_tiers(
                (&shared.base, shared.read_committed),
                (&handover.live_changelog, partition),
                &shared.rules,
                |outline| Some(&outline.leads.tiers),
                |value| {
                    Ok(match decode_changelog(value)? {
                        ChangelogValue::Lead { state, rules } => {
                            Some((rules.fingerprint, state.tier))
                        }
                        ChangelogValue::AliasOf(_) => None,
                    })
                },
            )?;
            handover_done = Some(handover.cut_over(
                (partition, &shared.stamp.fingerprint),
                &mut pending,
                |cause| engine.handover_crossings(|id| published.get(id).cloned(), cause),
            ));
        }
        engine.set_locality(Arc::new(move |id: &str| {
            partition_of(partitioner, id.as_bytes(), count) == partition
        }));
        engine.resume_watermark(match resume.get(&partition) {
            Some(Resume::At(watermark)) => *watermark,
            // Committed without a watermark (by an older version, or by a
            // broker that drops commit metadata, as tansu does): none, so
            // the events read again rebuild it. Decay then fires no earlier
            // than it did before, only possibly later, which changes
            // nothing while a partition's event times rise; the restored
            // leads' latest clock could fire it too early.
            Some(Resume::Unknown) | None => None,
        });
        tasks.insert(
            partition,
            LeadTask {
                partition,
                engine,
                at_end: false,
                pending,
                outline_recorded: history.recorded.contains(&partition),
                handover_done,
            },
        );
    }
    Ok(tasks)
}

/// Answers a lead query from the lead tasks a thread holds.
pub(super) fn answer(
    tasks: &BTreeMap<i32, LeadTask>,
    shared: &Shared<'_>,
    lead_id: &str,
) -> LeadAnswer {
    let now = crate::kafka::wall_clock();
    for (&partition, task) in tasks {
        let id = task.engine.resolve(lead_id);
        if let Some(snapshot) = task.engine.explain(id, now) {
            return LeadAnswer::Found(crate::ops::http::lead_json(
                &snapshot,
                &shared.rules,
                partition,
            ));
        }
    }
    // An identity merged into a lead held elsewhere: that lead's partition
    // knows the alias too.
    let held_as = tasks
        .values()
        .map(|t| t.engine.resolve(lead_id))
        .find(|id| *id != lead_id)
        .unwrap_or(lead_id);
    let partition = partition_of(
        shared.config.kafka.input_partitioner,
        held_as.as_bytes(),
        shared.input_partitions,
    );
    if tasks.contains_key(&partition) {
        LeadAnswer::Unknown { partition }
    } else {
        LeadAnswer::Elsewhere {
            partition,
            assigned: tasks.keys().copied().collect(),
        }
    }
}
