//! Restore benchmark on a local Apache Kafka: how fast `leadscore run`
//! rebuilds its state from a real changelog.
//!
//! Replays the sample generator's realistic traffic (20,000 leads: traits,
//! page views, email and sales events, anonymous browsing merged by
//! `alias`) under `config/leadscore.toml`, writes N lead records shaped
//! like those leads' (their states, under N distinct ids, encoded as `run`
//! encodes them) to a 4-partition changelog topic, starts `leadscore run`
//! on it with an empty input, and reports what its restore logged:
//! leads, records and seconds, and leads per second.
//!
//!     cargo build --release --bin leadscore --example bench_restore
//!     target/release/examples/bench_restore [LEADS]      (default 1,000,000)
//!
//! Starts its own broker with scripts/kafka.sh; run from the repository.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadscore::codec::proto::encode_changelog;
use leadscore::codec::{Decoder, Encoding};
use leadscore::config::Partitioner;
use leadscore::core::engine::StateChange;
use leadscore::core::{Engine, Timestamp};
use leadscore::ops::partitioner::partition_of;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[path = "support/kafka.rs"]
mod kafka;

const PARTITIONS: i32 = 4;
const TEMPLATE_LEADS: usize = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let leads: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    assert!(
        Path::new("target/release/leadscore").exists(),
        "build target/release/leadscore first"
    );
    let rules = leadscore::config::load_rules(Path::new("config/leadscore.toml"))?;
    let stamp = rules.stamp();

    // Lead states as realistic traffic leaves them.
    let decoder = Decoder::for_rules(&rules);
    let mut engine = Engine::new(Arc::new(rules)).track_changes();
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: TEMPLATE_LEADS,
        seed: 7,
        ..Default::default()
    });
    for line in &lines {
        for event in decoder
            .decode(line.as_bytes(), Encoding::Json)?
            .into_iter()
            .flatten()
        {
            engine.advance(event.timestamp);
            engine.apply(&event, Timestamp(i64::MAX / 2));
        }
    }
    let mut templates: Vec<Vec<u8>> = Vec::new();
    engine.take_changes(|_, change| {
        if let StateChange::Lead(_) = change {
            templates.push(encode_changelog(&change, &stamp));
        }
    });
    let bytes: usize = templates.iter().map(Vec::len).sum();
    println!(
        "{} lead states from {} sample events ({:.0} bytes per record on average)",
        templates.len(),
        lines.len(),
        bytes as f64 / templates.len() as f64
    );

    let broker = kafka::start_kafka()?;
    let name = format!("bench-restore-{}", std::process::id());
    let changelog = format!("{name}-changelog");
    create_topic(&broker, &changelog)?;
    let t = Instant::now();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let mut written = 0usize;
    for i in 0..leads {
        let key = format!("lead-{i:08}");
        let value = &templates[i % templates.len()];
        written += key.len() + value.len();
        let partition = partition_of(Partitioner::ConsistentRandom, key.as_bytes(), PARTITIONS);
        let mut record = BaseRecord::<str, [u8]>::to(&changelog)
            .key(key.as_str())
            .payload(value.as_slice())
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    println!(
        "wrote {leads} lead records ({:.0} MB) to {changelog} in {:.1} s",
        written as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // The first restore warms the broker (its JIT compiles the fetch path
    // while it serves): measured is the second, by a group of its own.
    let warm = restore(&broker, &format!("{name}-warm"), &changelog)?;
    println!("warm-up restore: {warm}");
    let measured = restore(&broker, &name, &changelog)?;
    println!("{measured}");
    Ok(())
}

/// Starts `leadscore run` as group `name` on `changelog` with an empty
/// input, waits for its restore to be logged, stops it; says what the
/// restore logged.
fn restore(
    broker: &str,
    name: &str,
    changelog: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let started = Instant::now();
    create_topic(broker, &format!("{name}-in"))?;
    let mut child = Command::new("target/release/leadscore")
        .args(["run", "--config", "config/leadscore.toml"])
        .env("RUST_LOG", "info")
        .env("LEADSCORE_LOGGING_FORMAT", "text")
        .env("LEADSCORE_KAFKA_BOOTSTRAP_SERVERS", broker)
        .env("LEADSCORE_KAFKA_GROUP_ID", name)
        .env("LEADSCORE_KAFKA_TRANSACTIONAL_ID", format!("{name}-txn"))
        .env("LEADSCORE_KAFKA_INPUT_TOPIC", format!("{name}-in"))
        .env("LEADSCORE_KAFKA_OUTPUT_TOPIC", format!("{name}-out"))
        .env("LEADSCORE_KAFKA_DEAD_LETTER_TOPIC", format!("{name}-dlq"))
        .env("LEADSCORE_KAFKA_CHANGELOG_TOPIC", changelog)
        .env(
            "LEADSCORE_KAFKA_IDENTITY_TOPIC",
            format!("{name}-identities"),
        )
        .env(
            "LEADSCORE_KAFKA_ACCOUNT_UPDATES_TOPIC",
            format!("{name}-account-updates"),
        )
        .env(
            "LEADSCORE_KAFKA_ACCOUNT_CHANGELOG_TOPIC",
            format!("{name}-account-changelog"),
        )
        .env("LEADSCORE_KAFKA_INPUT_PARTITIONER", "consistent_random")
        .env("LEADSCORE_HTTP_LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut restored = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains("partitions restored from changelog") {
            restored = Some(line);
            break;
        }
        if line.contains("ERROR") || line.contains("panicked") {
            eprintln!("{line}");
        }
    }
    let to_restored = started.elapsed();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    let line = restored.ok_or("leadscore run exited before restoring")?;
    let field = |name: &str| -> Option<f64> {
        let rest = line.split(&format!("{name}=")).nth(1)?;
        rest.trim_start_matches('"')
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    };
    let (held, records, seconds) = (
        field("leads").ok_or("no leads= in the restore line")?,
        field("records").ok_or("no records= in the restore line")?,
        field("seconds").ok_or("no seconds= in the restore line")?,
    );
    Ok(format!(
        "restored {held:.0} leads ({records:.0} records) in {seconds:.2} s: {:.0} leads/s, \
         {:.1} s per million leads; process start to restored {:.1} s",
        held / seconds,
        seconds * 1e6 / held,
        to_restored.as_secs_f64()
    ))
}

fn create_topic(broker: &str, topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    kafka::create_topic(broker, topic, PARTITIONS)
}
