//! Topic set-up at start-up.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Partition count of `topic`, or `None` if it does not exist.
pub(crate) fn partition_count(base: &ClientConfig, topic: &str) -> anyhow::Result<Option<usize>> {
    let probe: BaseConsumer = base.create().context("cannot create a metadata client")?;
    let metadata = probe
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read metadata of topic {topic} from {} within {} s: check [kafka] \
                 bootstrap_servers and, for TLS or SASL, [kafka.properties] \
                 (the log above has librdkafka's own words)",
                base.get("bootstrap.servers")
                    .unwrap_or("(no bootstrap_servers)"),
                METADATA_TIMEOUT.as_secs()
            )
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0))
}

/// Creates the topics that are missing: input, output and dead-letter with
/// `partitions`, the changelog compacted and the identity topic, both with
/// the input's partition count.
/// With `accounts`, also the account updates topic and the compacted
/// account changelog, both with the input's partition count.
pub(crate) fn ensure_topics(
    base: &ClientConfig,
    kafka: &KafkaSettings,
    accounts: bool,
) -> anyhow::Result<()> {
    let input_partitions =
        partition_count(base, &kafka.input_topic)?.map_or(kafka.partitions, |n| n as i32);
    let mut wanted = vec![
        (kafka.input_topic.as_str(), input_partitions, false),
        (kafka.output_topic.as_str(), kafka.partitions, false),
        (kafka.dead_letter_topic.as_str(), kafka.partitions, false),
        (kafka.changelog_topic.as_str(), input_partitions, true),
    ];
    let identity_topic = kafka.identity_topic();
    wanted.push((identity_topic.as_str(), input_partitions, false));
    if let Some(filtered) = &kafka.filtered_topic {
        wanted.push((filtered.as_str(), kafka.partitions, false));
    }
    if accounts {
        wanted.push((
            kafka.account_updates_topic.as_str(),
            input_partitions,
            false,
        ));
        wanted.push((
            kafka.account_changelog_topic.as_str(),
            input_partitions,
            true,
        ));
    }
    let mut missing = Vec::new();
    for (name, partitions, compacted) in wanted {
        if partition_count(base, name)?.is_none() {
            let topic = NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            );
            missing.push(if compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            });
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let (admin, runtime) = admin_client(base)?;
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = runtime
        .block_on(admin.create_topics(missing.iter(), &options))
        .context("cannot create topics")?;
    // Another instance starting at the same moment may create some of them
    // first: those are waited for like the ones created here.
    let mut awaited = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic");
                awaited.push(name);
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic already exists");
                awaited.push(name);
            }
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    // The controller has the topics; a broker's metadata may show them a
    // moment later, and start-up reads their partition counts next.
    let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
    for name in &awaited {
        while partition_count(base, name)?.is_none() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "topic {name} was created but its metadata did not show it within {} s",
                    METADATA_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// For `run --shadow`: the shadow rebuilds state from what the input topic
/// still holds, so warn when that is less than the rules remember (ten of
/// their longest half-lives): the topic's `retention.ms` is shorter, or its
/// earliest record is younger.
pub(crate) fn warn_if_history_is_short(
    base: &ClientConfig,
    topic: &str,
    rules: &crate::core::Rules,
) {
    use crate::core::decay::HalfLife;
    let longest = (0..rules.engagement.len())
        .filter_map(|i| match rules.half_life_of(i) {
            HalfLife::Millis(ms) => Some(ms),
            HalfLife::Never | HalfLife::Inherit => None,
        })
        .reduce(f64::max);
    let never_fades =
        (0..rules.engagement.len()).any(|i| matches!(rules.half_life_of(i), HalfLife::Never));
    let horizon_ms = if never_fades {
        i64::MAX
    } else {
        longest.map_or(0, |ms| (ms * 10.0) as i64)
    };
    let days = |ms: i64| ms as f64 / 86_400_000.0;
    match topic_retention_ms(base, topic) {
        Ok(Some(retention)) if retention >= 0 && retention < horizon_ms => tracing::warn!(
            topic,
            retention_days = format!("{:.1}", days(retention)),
            horizon_days = if horizon_ms == i64::MAX {
                "forever".to_string()
            } else {
                format!("{:.1}", days(horizon_ms))
            },
            "shadow: the input topic's retention.ms is shorter than the rules remember (ten \
             half-lives of their longest, or forever for points that never fade): leads are \
             rebuilt from part of their history, and the diff will show it"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            topic,
            error = format!("{e:#}"),
            "shadow: cannot read the input topic's retention.ms"
        ),
    }
    match earliest_record_ms(base, topic) {
        Ok(Some(earliest)) => {
            let age = crate::kafka::wall_clock().millis() - earliest;
            if age < horizon_ms {
                tracing::warn!(
                    topic,
                    earliest_age_days = format!("{:.1}", days(age)),
                    "shadow: the input topic's earliest record is younger than what the rules \
                     remember: leads older than it are rebuilt from part of their history"
                );
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(
            topic,
            error = format!("{e:#}"),
            "shadow: cannot read the input topic's earliest record"
        ),
    }
}

fn topic_retention_ms(base: &ClientConfig, topic: &str) -> anyhow::Result<Option<i64>> {
    use rdkafka::admin::ResourceSpecifier;
    let (admin, runtime) = admin_client(base)?;
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let results =
        runtime.block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options))?;
    for result in results {
        let resource = result.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(entry) = resource.get("retention.ms") {
            return Ok(entry.value.as_deref().and_then(|v| v.parse().ok()));
        }
    }
    Ok(None)
}

/// The timestamp of the earliest record still in `topic` (over its
/// partitions), if it holds any.
fn earliest_record_ms(base: &ClientConfig, topic: &str) -> anyhow::Result<Option<i64>> {
    use rdkafka::message::Message as _;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", "leadscore-shadow-probe")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a consumer")?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let mut list = TopicPartitionList::new();
    let mut waiting = 0;
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)?;
            if high > low {
                list.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                waiting += 1;
            }
        }
    }
    if waiting == 0 {
        return Ok(None);
    }
    consumer.assign(&list)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut earliest: Option<i64> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < waiting && std::time::Instant::now() < deadline {
        if let Some(record) = consumer.poll(Duration::from_millis(200)) {
            let record = record?;
            if seen.insert(record.partition()) {
                if let Some(ms) = record.timestamp().to_millis() {
                    earliest = Some(earliest.map_or(ms, |e| e.min(ms)));
                }
            }
        }
    }
    Ok(earliest)
}

/// An admin client, and the runtime its calls are awaited on.
fn admin_client(
    base: &ClientConfig,
) -> anyhow::Result<(AdminClient<DefaultClientContext>, tokio::runtime::Runtime)> {
    let admin = base.create().context("cannot create an admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin runtime")?;
    Ok((admin, runtime))
}
