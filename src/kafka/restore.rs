//! Reading changelog partitions from their start to their end: how each
//! task kind rebuilds its state (see `tasks`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::core::RulesStamp;

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

/// Whether state the changelog holds, written under `found`, can be
/// restored under the running rules (`running`): only when both have the
/// same content, whatever their versions say. Records written before state
/// carried a fingerprint are judged by their version.
pub(super) fn check_rules(
    topic: &str,
    partition: i32,
    found: &RulesStamp,
    running: &RulesStamp,
) -> anyhow::Result<()> {
    if found.readable_by(running) {
        return Ok(());
    }
    let what = if found.version == running.version {
        format!(
            "rules of the same version \"{}\" but other content (fingerprint {} there, {} \
             here): the rules file was edited without a new version",
            running.version, found.fingerprint, running.fingerprint
        )
    } else {
        format!(
            "rules version \"{}\"{}, but this instance runs \"{}\" (fingerprint {})",
            found.version,
            if found.fingerprint.is_empty() {
                String::new()
            } else {
                format!(" (fingerprint {})", found.fingerprint)
            },
            running.version,
            running.fingerprint
        )
    };
    Err(anyhow::anyhow!(
        "changelog {topic}/{partition} holds state scored by {what}; its rule and trait \
         indexes would point at other rules, so it is not restored. Run the rules that wrote \
         it, or use a new changelog topic (and consumer group) for the new rules and replay \
         history into it."
    ))
}
