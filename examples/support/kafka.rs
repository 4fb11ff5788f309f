//! What the benchmark examples share: a local Apache Kafka started by the
//! project's own script, and topics on it. Included by each with
//! `#[path = "support/kafka.rs"] mod kafka;`.

use std::process::{Command, Stdio};

use rdkafka::ClientConfig;

/// Starts a broker with `scripts/kafka.sh` (stopped when this process
/// exits); returns its bootstrap address.
pub fn start_kafka() -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new("bash")
        .args([
            "scripts/kafka.sh",
            "start",
            "--watch",
            &std::process::id().to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let bootstrap = text
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
        .ok_or("scripts/kafka.sh did not start a broker")?;
    Ok(bootstrap.to_string())
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(
    broker: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for result in runtime.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))? {
        result.map_err(|(t, e)| format!("cannot create {t}: {e}"))?;
    }
    Ok(())
}
