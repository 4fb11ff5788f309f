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
    let admin: AdminClient<DefaultClientContext> =
        base.create().context("cannot create an admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin runtime")?;
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
