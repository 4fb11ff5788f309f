//! The account task: one partition of the account updates topic, the
//! accounts keyed to it. Applies the membership and trait updates lead
//! tasks send, fires account decay timers and writes the account
//! changelog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;

use super::{Out, Shared, Task, Topics};
use crate::codec::account::{decode_account_state, decode_account_update, encode_account_state};
use crate::codec::HANDOVER_KEY;
use crate::core::account::{AccountEngine, AccountUpdate};
use crate::core::output::Cause;
use crate::core::{Output, Timestamp};
use crate::kafka::clients::Retry;
use crate::kafka::offsets::Committed;
use crate::kafka::promote::{published_tiers, Handovers};
use crate::kafka::restore::{read_from, read_to_end, RulesHistory};
use crate::ops::metrics as m;
use crate::ops::status::LeadAnswer;

pub(super) struct AccountTask {
    partition: i32,
    engine: AccountEngine,
    /// The latest update time seen: the account timers' clock while
    /// catching up.
    watermark: Option<Timestamp>,
    at_end: bool,
    /// The outputs of re-scoring restored state under new rules.
    /// `Some` (perhaps empty) until the re-score is written.
    pending: Option<Vec<Output>>,
    /// The changelog partition holds the running rules' outline.
    outline_recorded: bool,
    /// The lead tasks of this thread send their updates for this
    /// partition's accounts here directly, not through the topic: set when
    /// the task was restored (and caught up with the topic) together with
    /// the thread's lead partitions, in a transactional run.
    pub(super) in_place: bool,
    /// Whether every lead partition of this thread is read to its end:
    /// while one catches up, account timers follow the updates' time, as
    /// the updates applied in place come from it.
    pub(super) leads_at_end: bool,
    /// Updates below this offset were applied when the task was restored.
    caught_up_to: i64,
    /// The handover record to write, marked done, with the cut-over
    /// crossings of a promotion (see `kafka::promote`).
    handover_done: Option<Vec<u8>>,
}

impl AccountTask {
    pub fn account_count(&self) -> usize {
        self.engine.account_count()
    }

    /// Applies an update a lead task of this thread sent straight here
    /// (see `in_place`): in the same transaction as the lead state that
    /// caused it, so it needs no position of its own.
    pub(super) fn apply_local(
        &mut self,
        update: &AccountUpdate,
        out: &mut Out<'_>,
    ) -> Result<(), Retry> {
        self.note_time(update);
        let outputs = self.engine.apply_from(update, None).unwrap_or_default();
        out.outputs(&outputs)
    }

    fn note_time(&mut self, update: &AccountUpdate) {
        let at = match update {
            AccountUpdate::Member { at, .. } | AccountUpdate::Traits { at, .. } => *at,
        };
        self.watermark = Some(self.watermark.map_or(at, |w| w.max(at)));
    }
}

impl Task for AccountTask {
    fn apply(&mut self, message: &OwnedMessage, out: &mut Out<'_>) -> Result<(), Retry> {
        let update = match decode_account_update(message.payload().unwrap_or_default()) {
            Ok(update) => update,
            Err(e) => {
                return out.dead_letter(message, "invalid_account_update", e.to_string(), None)
            }
        };
        if message.offset() < self.caught_up_to {
            return Ok(()); // applied by the restore
        }
        self.note_time(&update);
        match self.engine.apply_from(&update, Some(message.offset())) {
            Some(outputs) => out.outputs(&outputs),
            None => {
                out.counters.duplicate();
                Ok(())
            }
        }
    }

    fn set_at_end(&mut self, _: &Topics, _: &str, at_end: bool) {
        self.at_end = at_end;
    }

    /// Account decay follows the latest update time seen.
    fn own_time(&self) -> (Option<Timestamp>, bool) {
        (self.watermark, self.at_end && self.leads_at_end)
    }

    fn next_due(&self) -> Option<Timestamp> {
        self.engine.next_due()
    }

    fn advance(&mut self, clock: Timestamp) -> Vec<Output> {
        self.engine.advance(clock)
    }

    fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn publish_pending(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        out.outputs(&self.pending.take().unwrap_or_default())
    }

    fn write_changes(&mut self, out: &mut Out<'_>) -> Result<(), Retry> {
        let stamp = &out.shared.stamp;
        let mut records: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        self.engine.take_changes(|account_id, state| {
            records.push((
                account_id.to_string(),
                state.map(|s| encode_account_state(s, stamp)),
            ));
        });
        let topic = &out.shared.topics.account_changelog;
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
        self.watermark
    }
}

/// Rebuilds the account tasks of `partitions` from the account changelog
/// and, in a transactional run, brings them up to the end of the account
/// updates topic (from the group's `committed` offsets), so this thread's
/// lead tasks can send their updates to them in place: no update from one
/// of its leads is then left in the topic, to be applied after a newer
/// one.
pub(super) fn restore(
    shared: &Shared<'_>,
    partitions: &[i32],
    committed: &BTreeMap<(String, i32), Committed>,
) -> anyhow::Result<BTreeMap<i32, AccountTask>> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let started = Instant::now();
    let rules = &shared.rules;
    let topic = &shared.topics.account_changelog;
    let mut history = RulesHistory::new(topic, rules, &shared.stamp);
    let mut engines: BTreeMap<i32, AccountEngine> = BTreeMap::new();
    for &p in partitions {
        let engine = AccountEngine::new(rules.clone())
            .context("account rules")?
            .track_changes();
        engines.insert(p, engine);
    }
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
            let Some(value) = value else {
                engine.forget_account(key); // a tombstone: the account was dropped
                return Ok(());
            };
            let (state, written_by) = decode_account_state(value)
                .with_context(|| format!("changelog {topic}/{partition} offset {offset}"))?;
            let state = match history.migration(partition, &written_by)? {
                Some(migration) => migration.account(state),
                None => state,
            };
            engine.restore_account(key, state);
            Ok(())
        },
    )?;
    handovers.check(topic, &shared.topics.output)?;
    let elapsed = started.elapsed();
    let accounts: usize = engines.values().map(AccountEngine::account_count).sum();
    metrics::histogram!(m::RESTORE_DURATION).record(elapsed.as_secs_f64());
    tracing::info!(
        ?partitions,
        accounts,
        records,
        seconds = format!("{:.3}", elapsed.as_secs_f64()),
        "account partitions restored from changelog"
    );
    let rules_changed = Cause::RulesChanged(shared.stamp.fingerprint.as_str().into());
    let mut tasks = BTreeMap::new();
    for (partition, mut engine) in engines {
        // What was restored is not a change to write back.
        engine.take_changes(|_, _| {});
        // Re-scored now, published with the next transaction (see the
        // lead task); members follow as their leads send new shares.
        let mut pending = if history.migrated.contains(&partition) {
            metrics::counter!(m::RESCORED).increment(engine.account_count() as u64);
            Some(engine.rescore(&rules_changed))
        } else {
            None
        };
        // A promoted deployment's first run (see the lead task).
        let mut handover_done = None;
        if let Some(handover) = handovers.owed(partition) {
            let profile = &rules.accounts.as_deref().expect("account rules").profile;
            let published = published_tiers(
                (&shared.base, shared.read_committed),
                (&handover.live_changelog, partition),
                profile,
                |outline| outline.accounts.as_ref().map(|a| &a.profile.tiers),
                |value| {
                    let (state, stamp) = decode_account_state(value)?;
                    Ok(Some((stamp.fingerprint, state.tier)))
                },
            )?;
            handover_done = Some(handover.cut_over(
                (partition, &shared.stamp.fingerprint),
                &mut pending,
                |cause| engine.handover_crossings(|id| published.get(id).cloned(), cause),
            ));
        }
        let task = AccountTask {
            partition,
            engine,
            watermark: None,
            at_end: false,
            pending,
            outline_recorded: history.recorded.contains(&partition),
            in_place: false,
            leads_at_end: true,
            caught_up_to: 0,
            handover_done,
        };
        tasks.insert(partition, task);
    }
    if shared.read_committed {
        catch_up(shared, &mut tasks, committed)?;
    }
    Ok(tasks)
}

/// Applies what the account updates topic holds past the committed
/// offsets (updates sent by lead tasks before this assignment), as the
/// consumer would; their outputs and changelog records go out with the
/// next transaction, and the consumer skips them when it reads them.
///
/// Read `read_committed`, this stops at the last stable offset: a
/// transaction still open there belongs to a producer that holds other
/// lead partitions now (a former holder of this thread's partitions ended
/// its transaction when it gave them up, or was fenced, or died and its
/// transaction is aborted), so what it commits later concerns other leads.
fn catch_up(
    shared: &Shared<'_>,
    tasks: &mut BTreeMap<i32, AccountTask>,
    committed: &BTreeMap<(String, i32), Committed>,
) -> anyhow::Result<()> {
    let Some(topic) = &shared.topics.account_updates else {
        return Ok(());
    };
    let started = Instant::now();
    // Partitions with nothing past the committed offset are not read (a
    // reader would wait a fetch for their end).
    let probe: BaseConsumer = shared
        .base
        .create()
        .context("cannot create a watermark client")?;
    let mut starts: Vec<(i32, Offset)> = Vec::new();
    for (&p, task) in tasks.iter_mut() {
        let from = committed
            .get(&(topic.clone(), p))
            .and_then(|c| c.offset)
            .unwrap_or(0);
        let (low, high) = probe
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("cannot read the watermarks of {topic}/{p}"))?;
        if from.max(low) < high {
            starts.push((p, Offset::Offset(from.max(low))));
        }
        task.in_place = true;
    }
    let updates = read_from(
        &shared.base,
        topic,
        &starts,
        true,
        |partition, _, value, offset| {
            let Some(task) = tasks.get_mut(&partition) else {
                return Ok(());
            };
            // An invalid update is left to the consumer, which dead-letters it.
            if let Ok(update) = decode_account_update(value.unwrap_or_default()) {
                task.note_time(&update);
                if let Some(outputs) = task.engine.apply_from(&update, Some(offset)) {
                    task.pending.get_or_insert_default().extend(outputs);
                }
            }
            task.caught_up_to = offset + 1;
            Ok(())
        },
    )?;
    for task in tasks.values_mut() {
        task.in_place = true;
    }
    tracing::info!(
        partitions = ?tasks.keys().collect::<Vec<_>>(),
        updates,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "account partitions caught up with the account updates topic; this thread's \
         lead updates now apply in place"
    );
    Ok(())
}

/// Answers an account query from the account tasks a thread holds.
pub(super) fn answer(
    tasks: &BTreeMap<i32, AccountTask>,
    shared: &Shared<'_>,
    account_id: &str,
) -> LeadAnswer {
    let now = crate::kafka::wall_clock();
    for (&partition, task) in tasks {
        if let Some(snapshot) = task.engine.explain(account_id, now) {
            return LeadAnswer::Found(crate::ops::http::account_json(
                &snapshot,
                &shared.rules,
                partition,
            ));
        }
    }
    // With accounts on, the account updates topic exists (checked at start).
    let partition = shared.account_partition(account_id).unwrap_or_default();
    if tasks.contains_key(&partition) {
        LeadAnswer::Unknown { partition }
    } else {
        LeadAnswer::Elsewhere {
            partition,
            assigned: tasks.keys().copied().collect(),
        }
    }
}
