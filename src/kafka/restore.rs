//! Reading changelog partitions from their start to their end: how each
//! task kind rebuilds its state (see `tasks`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::core::Rules;

/// Give up when the changelog makes no progress for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

struct QuietContext;

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        super::clients::quiet_error(error, reason);
    }
}

impl ConsumerContext for QuietContext {}

/// Reads `topic`'s `partitions` from the start to their end, handing each
/// record (partition, key, value, offset) to `each`.
pub(super) fn read_to_end(
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

/// Why a changelog written under other rules cannot be restored.
pub(super) fn wrong_rules(
    topic: &str,
    partition: i32,
    found: &str,
    rules: &Rules,
) -> anyhow::Error {
    anyhow::anyhow!(
        "changelog {topic}/{partition} holds state scored by rules version \
         \"{found}\", but this instance runs \"{}\": rule indexes would not match. \
         Use a new changelog topic (and consumer group) for new rules, and replay \
         history into it.",
        rules.version
    )
}
