//! The input topic as a history for `calibrate`: every partition read from
//! its beginning to the end it had when the history was opened, one
//! partition after another, so that every pass reads the same records in
//! the same order.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::clients::{base_config, user_wins};
use super::records::{header_text, record_time};
use crate::calibrate::history::{EventSource, HistoryError, Message};
use crate::codec::{erasure_request, Decoder, Encoding};
use crate::config::Config;

/// How long a read may wait for a record the broker said it holds.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TopicHistory {
    consumer_config: ClientConfig,
    topic: String,
    /// (partition, first offset, end offset) as of opening.
    partitions: Vec<(i32, i64, i64)>,
    default_encoding: Encoding,
}

impl TopicHistory {
    /// The input topic of `config`'s `[kafka]` section, as it stands now.
    pub fn open(config: &Config) -> anyhow::Result<TopicHistory> {
        let mut consumer_config = base_config(&config.kafka);
        consumer_config
            // Assigned, never subscribed: the group is not joined and no
            // offset is committed; the id only names the client.
            .set("group.id", format!("{}-calibrate", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        user_wins(&mut consumer_config, &config.kafka);
        let topic = config.kafka.input_topic.clone();
        let consumer: BaseConsumer = consumer_config
            .create()
            .context("cannot create a consumer")?;
        let timeout = Duration::from_secs(30);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("cannot read the metadata of topic {topic}"))?;
        let mut ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            anyhow::bail!("topic {topic} does not exist (or has no partitions)");
        }
        ids.sort_unstable();
        let mut partitions = Vec::with_capacity(ids.len());
        for partition in ids {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
            partitions.push((partition, low, high));
        }
        let default_encoding = Encoding::from_content_type(&config.processing.default_content_type)
            .map_err(|e| anyhow::anyhow!("[processing] default_content_type: {e}"))?;
        Ok(TopicHistory {
            consumer_config,
            topic,
            partitions,
            default_encoding,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn read_partition(
        &self,
        consumer: &BaseConsumer,
        (partition, low, high): (i32, i64, i64),
        decoder: &Decoder,
        each: &mut dyn FnMut(Message),
        progress: &mut dyn FnMut(u64),
        done: &mut u64,
    ) -> anyhow::Result<()> {
        let topic = &self.topic;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        consumer.assign(&assignment)?;
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(record)) => {
                    last_progress = Instant::now();
                    *done += 1;
                    progress(*done);
                    let encoding = match header_text(record.headers(), super::headers::CONTENT_TYPE)
                    {
                        Some(value) => Encoding::from_content_type(value),
                        None => Ok(self.default_encoding),
                    };
                    let message = match (record.payload(), record.key()) {
                        (None, Some(key)) => Ok(vec![erasure_request(key, record_time(&record))]),
                        (payload, _) => encoding
                            .and_then(|e| decoder.decode(payload.unwrap_or_default(), e))
                            .map_err(|e| e.to_string()),
                    };
                    each(message);
                    if record.offset() >= high - 1 {
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => {
                    return Err(e).with_context(|| format!("cannot read {topic}/{partition}"))
                }
                None if last_progress.elapsed() > STALL_TIMEOUT => anyhow::bail!(
                    "{topic}/{partition}: nothing read for {}s before offset {high}",
                    STALL_TIMEOUT.as_secs()
                ),
                None => {}
            }
        }
    }
}

impl EventSource for TopicHistory {
    /// Records (the offsets each partition spans; transaction markers among
    /// them are not read, so a pass may end short of it).
    fn size(&self) -> u64 {
        self.partitions
            .iter()
            .map(|(_, low, high)| (high - low).max(0) as u64)
            .sum()
    }

    fn read(
        &mut self,
        decoder: &Decoder,
        each: &mut dyn FnMut(Message),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), HistoryError> {
        let fail = |e: anyhow::Error| HistoryError::Source(format!("{e:#}"));
        let consumer: BaseConsumer = self
            .consumer_config
            .create()
            .map_err(|e| fail(anyhow::Error::new(e)))?;
        let mut done = 0;
        for &span in &self.partitions {
            if span.2 > span.1 {
                self.read_partition(&consumer, span, decoder, each, progress, &mut done)
                    .map_err(fail)?;
            }
        }
        Ok(())
    }
}
