//! Produces JSON lines (Segment messages) to a Kafka topic, keyed by lead
//! id (`userId`, else `anonymousId`), in file order, partitioned as Java
//! clients do (murmur2, the example config's `input_partitioner`).
//!
//!     cargo run --example produce_events -- BOOTSTRAP TOPIC < events.jsonl

use std::io::BufRead;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args
        .next()
        .ok_or("usage: produce_events BOOTSTRAP TOPIC < events.jsonl")?;
    let topic = args
        .next()
        .ok_or("usage: produce_events BOOTSTRAP TOPIC < events.jsonl")?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .create()?;
    let mut count = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let key = lead_key(&line);
        let mut record = BaseRecord::<str, str>::to(&topic).payload(&line).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(50));
                    record = back;
                }
            }
        }
        count += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    eprintln!("produced {count} messages to {topic}");
    Ok(())
}

fn lead_key(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    ["userId", "anonymousId"]
        .iter()
        .find_map(|k| match &value[*k] {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}
