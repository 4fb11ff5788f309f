//! Reading changelog partitions from their start to their end: how each
//! task kind rebuilds its state (see `tasks`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::core::migration::{Migration, RulesOutline};
use crate::core::{Rules, RulesStamp};

use crate::codec::OUTLINE_KEY_PREFIX;

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
    each: impl FnMut(i32, &str, Option<&[u8]>, i64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let starts: Vec<(i32, Offset)> = partitions.iter().map(|&p| (p, Offset::Beginning)).collect();
    read_from(base, topic, &starts, read_committed, each)
}

/// Reads each of `topic`'s partitions from its start offset to its end,
/// handing each record (partition, key, value, offset) to `each`.
pub(super) fn read_from(
    base: &ClientConfig,
    topic: &str,
    starts: &[(i32, Offset)],
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
    // A restore reads whole partitions as fast as it can: bigger fetches
    // than a consumer tailing a topic needs (unless the file says other).
    for (key, value) in [
        ("max.partition.fetch.bytes", "16777216"),
        ("fetch.max.bytes", "67108864"),
        ("queued.max.messages.kbytes", "262144"),
    ] {
        if base.get(key).is_none() {
            config.set(key, value);
        }
    }
    let consumer: BaseConsumer<QuietContext> = config
        .create_with_context(QuietContext)
        .context("cannot create the restore consumer")?;
    let mut assignment = TopicPartitionList::new();
    for &(partition, start) in starts {
        assignment
            .add_partition_offset(topic, partition, start)
            .context("bad changelog partition")?;
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the changelog partitions")?;
    let mut unfinished: BTreeSet<i32> = starts.iter().map(|&(p, _)| p).collect();
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

/// Why state the changelog holds, written under `found`, is not restored
/// under the running rules (`running`) when no outline of `found` is kept
/// (written before outlines were, or by hand): its rule and trait indexes
/// would point at other rules.
fn refusal(topic: &str, partition: i32, found: &RulesStamp, running: &RulesStamp) -> anyhow::Error {
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
    anyhow::anyhow!(
        "changelog {topic}/{partition} holds state scored by {what}, and no outline of those \
         rules is kept beside it to re-score it in place; its rule and trait indexes would \
         point at other rules, so it is not restored. Run the rules that wrote it, or use a new \
         changelog topic (and consumer group) for the new rules and replay history into it."
    )
}

/// What a restore knows of the rules that wrote a changelog: the outline
/// records read so far, and the migrations built from them to the running
/// rules.
pub(super) struct RulesHistory<'a> {
    topic: &'a str,
    rules: &'a Rules,
    running: &'a RulesStamp,
    outlines: HashMap<String, RulesOutline>,
    migrations: HashMap<String, Migration>,
    /// Partitions that hold the running rules' outline.
    pub recorded: BTreeSet<i32>,
    /// Partitions with state migrated from other rules, to re-score.
    pub migrated: BTreeSet<i32>,
}

impl<'a> RulesHistory<'a> {
    pub fn new(topic: &'a str, rules: &'a Rules, running: &'a RulesStamp) -> Self {
        RulesHistory {
            topic,
            rules,
            running,
            outlines: HashMap::new(),
            migrations: HashMap::new(),
            recorded: BTreeSet::new(),
            migrated: BTreeSet::new(),
        }
    }

    /// Takes the record if it is an outline (`true`); other records are
    /// state for the caller.
    pub fn take_outline(
        &mut self,
        partition: i32,
        key: &str,
        value: Option<&[u8]>,
        offset: i64,
    ) -> anyhow::Result<bool> {
        let Some(fingerprint) = key.strip_prefix(OUTLINE_KEY_PREFIX) else {
            return Ok(false);
        };
        let Some(value) = value else {
            return Ok(true);
        };
        let outline = RulesOutline::from_json(value).with_context(|| {
            format!(
                "changelog {}/{partition} offset {offset}: unreadable rules outline",
                self.topic
            )
        })?;
        if fingerprint == self.running.fingerprint {
            self.recorded.insert(partition);
        }
        self.outlines.insert(fingerprint.to_string(), outline);
        Ok(true)
    }

    /// How state written under `found` reads under the running rules:
    /// as it is (`None`), through a migration, or not at all (an error
    /// that says why and what to do).
    pub fn migration(
        &mut self,
        partition: i32,
        found: &RulesStamp,
    ) -> anyhow::Result<Option<&Migration>> {
        if found.readable_by(self.running) {
            return Ok(None);
        }
        self.migrated.insert(partition);
        let fingerprint = &found.fingerprint;
        if !self.migrations.contains_key(fingerprint) {
            let Some(outline) = self.outlines.get(fingerprint) else {
                return Err(refusal(self.topic, partition, found, self.running));
            };
            let migration = Migration::plan(outline, self.rules).map_err(|reasons| {
                let unversioned = if outline.version == self.running.version {
                    " (the rules file was edited without a new version)"
                } else {
                    ""
                };
                anyhow::anyhow!(
                    "changelog {}/{partition} holds state scored by rules \"{}\" (fingerprint \
                     {}), which cannot be re-scored in place under \"{}\" (fingerprint \
                     {}){unversioned}: {}. It is not restored: run the rules that wrote it, or \
                     start the new rules in a new consumer group and changelog and replay \
                     history into them (README: Changing the rules).",
                    self.topic,
                    outline.version,
                    fingerprint,
                    self.running.version,
                    self.running.fingerprint,
                    reasons.join("; ")
                )
            })?;
            tracing::info!(
                topic = self.topic,
                from_version = outline.version,
                from_fingerprint = %fingerprint,
                to_version = self.running.version,
                to_fingerprint = self.running.fingerprint,
                "changelog written under other rules: re-scoring it in place"
            );
            self.migrations.insert(fingerprint.clone(), migration);
        }
        Ok(self.migrations.get(fingerprint))
    }
}
