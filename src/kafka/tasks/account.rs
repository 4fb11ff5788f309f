//! The account task: one partition of the account updates topic, the
//! accounts keyed to it. Applies the membership and trait updates lead
//! tasks send, fires account decay timers and writes the account
//! changelog.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use rdkafka::message::{Message, OwnedMessage};

use super::{Out, Shared, Task, Topics};
use crate::codec::account::{decode_account_state, decode_account_update, encode_account_state};
use crate::config::Partitioner;
use crate::core::account::{AccountEngine, AccountUpdate};
use crate::core::output::Cause;
use crate::core::{Output, Timestamp};
use crate::kafka::clients::Retry;
use crate::kafka::restore::{read_to_end, RulesHistory};
use crate::ops::metrics as m;
use crate::ops::partitioner::partition_of;
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
}

impl AccountTask {
    pub fn account_count(&self) -> usize {
        self.engine.account_count()
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
        let at = match &update {
            AccountUpdate::Member { at, .. } | AccountUpdate::Traits { at, .. } => *at,
        };
        self.watermark = Some(self.watermark.map_or(at, |w| w.max(at)));
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
        (self.watermark, self.at_end)
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
        Ok(())
    }

    fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }
}

/// Rebuilds the account tasks of `partitions` from the account changelog.
pub(super) fn restore(
    shared: &Shared<'_>,
    partitions: &[i32],
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
    let records = read_to_end(
        &shared.base,
        topic,
        partitions,
        shared.read_committed,
        |partition, key, value, offset| {
            let Some(engine) = engines.get_mut(&partition) else {
                return Ok(());
            };
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
    let rules_changed = Cause::RulesChanged(shared.stamp.fingerprint.clone());
    Ok(engines
        .into_iter()
        .map(|(partition, mut engine)| {
            // What was restored is not a change to write back.
            engine.take_changes(|_, _| {});
            // Re-scored now, published with the next transaction (see the
            // lead task); members follow as their leads send new shares.
            let pending = if history.migrated.contains(&partition) {
                metrics::counter!(m::RESCORED).increment(engine.account_count() as u64);
                Some(engine.rescore(&rules_changed))
            } else {
                None
            };
            let task = AccountTask {
                partition,
                engine,
                watermark: None,
                at_end: false,
                pending,
                outline_recorded: history.recorded.contains(&partition),
            };
            (partition, task)
        })
        .collect())
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
    // Account updates are keyed by account and partitioned by this
    // process's own producer: librdkafka's partitioner.
    let partitioner = match shared
        .config
        .kafka
        .properties
        .get("partitioner")
        .map(String::as_str)
    {
        Some("murmur2" | "murmur2_random") => Partitioner::Murmur2Random,
        _ => Partitioner::ConsistentRandom,
    };
    let partition = partition_of(partitioner, account_id.as_bytes(), shared.input_partitions);
    if tasks.contains_key(&partition) {
        LeadAnswer::Unknown { partition }
    } else {
        LeadAnswer::Elsewhere {
            partition,
            assigned: tasks.keys().copied().collect(),
        }
    }
}
