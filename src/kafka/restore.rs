//! Rebuilding a partition's lead state from its changelog partition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::codec::account::decode_account_state;
use crate::codec::proto::{decode_changelog, ChangelogValue};
use crate::core::account::AccountEngine;
use crate::core::{Engine, Rules};

/// Give up when the changelog makes no progress for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Engines rebuilt from a changelog, one per partition: lead engines or
/// account engines.
pub(crate) struct Restored<E> {
    pub engines: BTreeMap<i32, E>,
    pub records: u64,
    pub elapsed: Duration,
}

struct QuietContext;

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        super::processor::quiet_error(error, reason);
    }
}

impl ConsumerContext for QuietContext {}

/// Reads `topic`'s `partitions` from the start to their end, handing each
/// record (partition, key, value, offset) to `each`.
fn read_to_end(
    base: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    read_committed: bool,
    mut each: impl FnMut(i32, &str, Option<&[u8]>, i64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut config = base.clone();
    config
        .set("group.id", "leadscore-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    let consumer: BaseConsumer<QuietContext> = config
        .create_with_context(QuietContext)
        .context("cannot create the restore consumer")?;
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .context("bad changelog partition")?;
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the changelog partitions")?;
    let mut unfinished: BTreeSet<i32> = partitions.iter().copied().collect();
    let mut records = 0u64;
    let mut last_progress = Instant::now();
    while !unfinished.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > STALL_TIMEOUT {
                    bail!("changelog {topic} partitions {unfinished:?} made no progress for {STALL_TIMEOUT:?}");
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "changelog read failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(Ok(message)) => {
                last_progress = Instant::now();
                records += 1;
                let partition = message.partition();
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    bail!(
                        "changelog {topic}/{partition} offset {}: no key",
                        message.offset()
                    );
                };
                each(partition, key, message.payload(), message.offset())?;
            }
        }
    }
    Ok(records)
}

fn wrong_rules(topic: &str, partition: i32, found: &str, rules: &Rules) -> anyhow::Error {
    anyhow::anyhow!(
        "changelog {topic}/{partition} holds state scored by rules version \
         \"{found}\", but this instance runs \"{}\": rule indexes would not match. \
         Use a new changelog topic (and consumer group) for new rules, and replay \
         history into it.",
        rules.version
    )
}

/// Reads the changelog `partitions` from the start to their end and
/// returns the engine each describes. With `read_committed`, records of aborted
/// transactions are skipped (on brokers that hide them); either way the
/// leads' recorded input offsets keep reprocessing exact.
pub(crate) fn restore_partitions(
    base: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    rules: &Arc<Rules>,
    read_committed: bool,
) -> anyhow::Result<Restored<Engine>> {
    let started = Instant::now();
    let mut engines: BTreeMap<i32, Engine> = partitions
        .iter()
        .map(|&p| (p, Engine::new(rules.clone()).track_changes()))
        .collect();
    let records = read_to_end(
        base,
        topic,
        partitions,
        read_committed,
        |partition, key, value, offset| {
            let Some(engine) = engines.get_mut(&partition) else {
                return Ok(());
            };
            let Some(value) = value else {
                return Ok(()); // a tombstone: nothing to restore
            };
            match decode_changelog(value)
                .with_context(|| format!("changelog {topic}/{partition} offset {offset}"))?
            {
                ChangelogValue::Lead {
                    state,
                    rules_version,
                } => {
                    if rules_version != rules.version.as_ref() {
                        return Err(wrong_rules(topic, partition, &rules_version, rules));
                    }
                    engine.restore_lead(key, state);
                }
                ChangelogValue::AliasOf(target) => engine.restore_alias(key, &target),
            }
            Ok(())
        },
    )?;
    for engine in engines.values_mut() {
        // What was restored is not a change to write back.
        engine.take_changes(|_, _| {});
    }
    Ok(Restored {
        engines,
        records,
        elapsed: started.elapsed(),
    })
}

/// [`restore_partitions`] for the account changelog.
pub(crate) fn restore_account_partitions(
    base: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    rules: &Arc<Rules>,
    read_committed: bool,
) -> anyhow::Result<Restored<AccountEngine>> {
    let started = Instant::now();
    let mut engines: BTreeMap<i32, AccountEngine> = BTreeMap::new();
    for &p in partitions {
        let engine = AccountEngine::new(rules.clone())
            .context("account rules")?
            .track_changes();
        engines.insert(p, engine);
    }
    let records = read_to_end(
        base,
        topic,
        partitions,
        read_committed,
        |partition, key, value, offset| {
            let Some(engine) = engines.get_mut(&partition) else {
                return Ok(());
            };
            let Some(value) = value else {
                engine.forget_account(key); // a tombstone: the account was dropped
                return Ok(());
            };
            let (state, rules_version) = decode_account_state(value)
                .with_context(|| format!("changelog {topic}/{partition} offset {offset}"))?;
            if rules_version != rules.version.as_ref() {
                return Err(wrong_rules(topic, partition, &rules_version, rules));
            }
            engine.restore_account(key, state);
            Ok(())
        },
    )?;
    for engine in engines.values_mut() {
        engine.take_changes(|_, _| {});
    }
    Ok(Restored {
        engines,
        records,
        elapsed: started.elapsed(),
    })
}
