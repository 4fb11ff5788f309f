//! The Kafka clients of one stream thread: how they are configured, what
//! their callbacks record, and the errors that end the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::{Config, KafkaSettings};
use crate::ops::metrics as m;

pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic-partitions, as the consumer is assigned them.
pub(super) type TopicPartitions = Vec<(String, i32)>;

/// Partition assignment changes, recorded during `poll` and acted on by the
/// driver right after it.
pub(super) enum AssignmentChange {
    Assigned(TopicPartitions),
    Revoked(TopicPartitions),
}

pub(super) struct GroupContext {
    /// Whose lag the statistics report.
    pub input_topic: String,
    pub read_committed: bool,
    pub changes: Mutex<Vec<AssignmentChange>>,
}

fn topic_partitions(list: &TopicPartitionList) -> TopicPartitions {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl GroupContext {
    fn record(&self, change: AssignmentChange) {
        self.changes.lock().expect("poisoned").push(change);
    }

    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().expect("poisoned"))
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) give each
    /// partition's end and the offset the loop has taken; their librdkafka
    /// `consumer_lag` needs offsets committed by the consumer itself, which
    /// transactions do not do.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.input_topic) else {
            return;
        };
        for (&partition, p) in &topic.partitions {
            if partition < 0 || !p.desired {
                continue;
            }
            let end = if self.read_committed {
                p.ls_offset
            } else {
                p.hi_offset
            };
            let taken = if p.app_offset >= 0 {
                p.app_offset
            } else {
                p.next_offset
            };
            if end >= 0 && taken >= 0 {
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                    .set((end - taken).max(0) as f64);
            }
        }
    }
}

/// Client errors worth a log line; the end of a partition is not one.
pub(super) fn quiet_error(error: KafkaError, reason: &str) {
    let end_of_partition = matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    );
    if !end_of_partition {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.record(AssignmentChange::Revoked(topic_partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.record(AssignmentChange::Assigned(topic_partitions(list)));
        }
    }
}

/// Counts deliveries that failed, so a batch is never committed over a
/// lost record.
#[derive(Default)]
pub(super) struct DeliveryContext {
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DeliveryContext {
    /// The failures counted since the last call, with the last one's
    /// reason; forgets them.
    pub fn take_failures(&self) -> (u64, Option<String>) {
        let failures = self.failures.swap(0, Ordering::SeqCst);
        (failures, self.last_error.lock().expect("poisoned").take())
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            self.failures.fetch_add(1, Ordering::SeqCst);
            *self.last_error.lock().expect("poisoned") =
                Some(format!("delivery to {} failed: {error}", message.topic()));
        }
    }
}

pub(super) type GroupConsumer = BaseConsumer<GroupContext>;
pub(super) type TransactionProducer = BaseProducer<DeliveryContext>;

/// The settings every client of the process starts from.
pub(super) fn base_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        base.set(key, value);
    }
    base
}

/// The producer of one stream thread; in `exactly_once` mode with
/// `transactional_id`, its transactions initialised (which fences a dead
/// predecessor with that id and ends its open transaction).
pub(super) fn producer(
    base: &ClientConfig,
    config: &Config,
    transactional_id: Option<&str>,
) -> anyhow::Result<TransactionProducer> {
    let mut producer_config = base.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Only failures matter to a batch (see `DeliveryContext`): a
        // report for every record delivered cost the stream thread as
        // much as producing it.
        .set("delivery.report.only.error", "true")
        .set(
            "transaction.timeout.ms",
            config.processing.transaction_timeout_ms.to_string(),
        );
    if let Some(id) = transactional_id {
        producer_config.set("transactional.id", id);
        // A record stuck in the queue (say, behind an abortable error)
        // must fail here before the broker times the transaction out:
        // that bumps the epoch and would fence this producer for good,
        // where a local failure only aborts and retries the batch.
        producer_config.set(
            "message.timeout.ms",
            (config.processing.transaction_timeout_ms / 2)
                .max(1000)
                .to_string(),
        );
    }
    user_wins(&mut producer_config, &config.kafka);
    let producer: TransactionProducer = producer_config
        .create_with_context(DeliveryContext::default())
        .context("cannot create the producer")?;
    if transactional_id.is_some() {
        producer
            .init_transactions(CLIENT_TIMEOUT)
            .context("cannot initialise transactions")?;
    }
    Ok(producer)
}

/// The group consumer of one stream thread, subscribed to `topics`.
pub(super) fn consumer(
    base: &ClientConfig,
    config: &Config,
    group_instance_id: Option<&str>,
    read_committed: bool,
    topics: &[&str],
) -> anyhow::Result<GroupConsumer> {
    let kafka = &config.kafka;
    let mut consumer_config = base.clone();
    consumer_config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    if let Some(id) = group_instance_id {
        consumer_config.set("group.instance.id", id);
    }
    user_wins(&mut consumer_config, kafka);
    let consumer: GroupConsumer = consumer_config
        .create_with_context(GroupContext {
            input_topic: kafka.input_topic.clone(),
            read_committed,
            changes: Mutex::new(Vec::new()),
        })
        .context("cannot create the consumer")?;
    consumer
        .subscribe(topics)
        .context("cannot subscribe to the input topic")?;
    Ok(consumer)
}

/// librdkafka properties from the config file win over leadscore's own.
pub(super) fn user_wins(config: &mut ClientConfig, kafka: &KafkaSettings) {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
}

/// A batch failed in a way the driver recovers from: abort, rewind to the
/// committed offsets, restore state, go on.
pub(super) struct Retry(pub anyhow::Error);

pub(super) fn retry(what: &'static str) -> impl Fn(KafkaError) -> Retry {
    move |e| Retry(anyhow::Error::new(e).context(what))
}

/// Produces `record`, waiting while librdkafka's queue is full.
pub(super) fn send<K, P>(
    producer: &TransactionProducer,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), Retry>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(50));
                record = back;
            }
            Err((e, _)) => return Err(Retry(anyhow::Error::new(e).context("cannot produce"))),
        }
    }
}

/// The error to end the process with: why, in words an operator can act on.
pub(super) fn stop_reason(error: anyhow::Error, otherwise: &'static str) -> anyhow::Error {
    if is_fatal(&error) {
        error.context(
            "cannot go on: fenced by a newer instance with the same transactional id or \
             group instance id (each instance needs its own [kafka] transactional_id and \
             group_instance_id), or another fatal broker error; exiting",
        )
    } else {
        error.context(otherwise)
    }
}

/// The error to end the process with when the consumer cannot go on.
pub(super) fn fatal_consumer_error(code: RDKafkaErrorCode, reason: String) -> anyhow::Error {
    if code == RDKafkaErrorCode::FencedInstanceId {
        anyhow!(
            "fenced: another instance joined the group with this instance's group.instance.id \
             ({reason}); each instance needs its own [kafka] group_instance_id (by default its \
             transactional_id: set LEADSCORE_KAFKA_TRANSACTIONAL_ID per instance); exiting"
        )
    } else {
        anyhow!("the consumer cannot go on: {code:?}: {reason}; exiting")
    }
}

/// Whether librdkafka says the producer is done for: fenced by a newer
/// instance with its transactional id, or another fatal error. Aborting and
/// retrying cannot help; the process must end.
pub(super) fn is_fatal(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| match cause.downcast_ref::<KafkaError>() {
            Some(KafkaError::Transaction(e)) => e.is_fatal(),
            Some(e) => matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::FencedInstanceId)
            ),
            None => false,
        })
}

/// The consumer group generation this member is in; `None` outside a
/// group (before the first join, or after leaving).
pub(super) fn group_generation(consumer: &GroupConsumer) -> Option<i32> {
    // SAFETY: the client pointer is valid while `consumer` lives; the
    // group metadata librdkafka returns is a copy, read and then destroyed
    // here, never used after.
    let generation = unsafe {
        let metadata =
            rdkafka::bindings::rd_kafka_consumer_group_metadata(consumer.client().native_ptr());
        if metadata.is_null() {
            return None;
        }
        let generation =
            rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(metadata);
        rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    };
    (generation >= 0).then_some(generation)
}

/// Whether the consumer has a member id in its group. librdkafka clears it
/// when it sends the LeaveGroup request, so an empty one after
/// unsubscribing means the leave is on its way.
pub(super) fn has_member_id(consumer: &GroupConsumer) -> bool {
    // SAFETY: the client pointer is valid while `consumer` lives; the
    // returned string is librdkafka's copy, read here and freed with
    // librdkafka's own free, never used after.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(consumer.client().native_ptr());
        if id.is_null() {
            return false;
        }
        let present = *id != 0;
        rdkafka::bindings::rd_kafka_mem_free(std::ptr::null_mut(), id.cast());
        present
    }
}

/// The high watermark librdkafka cached from its last fetch of the
/// partition (`rd_kafka_get_watermark_offsets`: local, unlike
/// `fetch_watermarks`, which asks the broker); `None` before any fetch.
pub(super) fn cached_high_watermark(
    consumer: &GroupConsumer,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic
    // is a NUL-terminated string that outlives the call; librdkafka only
    // writes the two offsets it is given.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}
