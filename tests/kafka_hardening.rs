//! On Apache Kafka: no record stalls a partition. A message too large to
//! dead-letter whole goes there truncated; a message that makes every
//! attempt fail is dead-lettered after the configured attempts; either
//! way every other event is scored, exactly once.

mod common;

use std::time::Duration;

use sha2::Digest as _;

use common::kafka::*;
use common::verify::*;

const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";

/// The event time of the line in the middle of `lines`.
fn middle_timestamp(lines: &[String]) -> String {
    let middle: serde_json::Value = serde_json::from_str(&lines[lines.len() / 2]).unwrap();
    middle["timestamp"].as_str().unwrap().to_string()
}

/// `lines` keyed by their lead, with `extra` (key, value) placed after the
/// first half.
fn with_one_more(lines: &[String], key: &str, value: Vec<u8>) -> Vec<InputRecord> {
    let keyed = |l: &String| -> InputRecord {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        (
            v["userId"].as_str().map(str::to_string),
            l.clone().into_bytes(),
            Vec::new(),
        )
    };
    let (first, second) = lines.split_at(lines.len() / 2);
    let mut records: Vec<InputRecord> = first.iter().map(keyed).collect();
    records.push((Some(key.to_string()), value, Vec::new()));
    records.extend(second.iter().map(keyed));
    records
}

#[test]
fn a_message_too_large_to_dead_letter_whole_goes_there_truncated_and_nothing_stalls() {
    let broker = kafka();
    let names = Names::new("oversized");
    // The broker's defaults: a record of 1,020,000 bytes is let in.
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(300, 41);
    let timestamp = middle_timestamp(&lines);
    let head = format!(
        r#"{{"type":"track","messageId":"big","userId":"lead-big","event":"Demo Requested","timestamp":"{timestamp}","properties":{{"blob":""#
    );
    let tail = r#""}}"#;
    let mut big = head.into_bytes();
    big.resize(1_020_000 - tail.len(), b'x');
    big.extend_from_slice(tail.as_bytes());
    assert_eq!(big.len(), 1_020_000);
    produce(
        &broker.bootstrap,
        &names.input,
        &with_one_more(&lines, "lead-big", big.clone()),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let instance = Instance::start(&config, &[("LEADSCORE_HTTP_LISTEN", listen.as_str())]);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    let aborted = metric(&listen, "leadscore_transactions_total{result=\"aborted\"}");
    assert_eq!(aborted, 0.0, "no batch was aborted");
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success());

    let dead = read_topic(&broker.bootstrap, &names.dead_letter, true);
    assert_eq!(
        dead.len(),
        1,
        "{:?}",
        dead.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    let letter = &dead[0];
    let header = |name: &str| letter.headers.get(name).map(String::as_str);
    assert_eq!(header("leadscore.dlq.reason_code"), Some("oversized"));
    assert_eq!(header("leadscore.dlq.truncated"), Some("value"));
    assert_eq!(header("leadscore.dlq.original_bytes"), Some("1020000"));
    let digest: String = sha2::Sha256::digest(&big)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        header("leadscore.dlq.original_sha256"),
        Some(digest.as_str())
    );
    assert_eq!(letter.key.as_deref(), Some("lead-big"));
    assert!(letter.value.len() <= 900_000, "{}", letter.value.len());
    assert!(big.starts_with(&letter.value), "the original's first bytes");

    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}

#[test]
fn a_message_that_fails_every_attempt_is_dead_lettered_after_the_configured_attempts() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let broker = kafka();
    let names = Names::new("poison");
    create_topic(&broker.bootstrap, &names.input, 2);
    // Outputs of ordinary leads fit; those of a lead with a 150 KB id (in
    // the key and the value) do not.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let output = NewTopic::new(&names.output, 2, TopicReplication::Fixed(1))
        .set("max.message.bytes", "200000");
    for r in runtime
        .block_on(admin.create_topics(&[output], &options))
        .unwrap()
    {
        r.unwrap();
    }
    let lines = sample(100, 42);
    let timestamp = middle_timestamp(&lines);
    let long_id = format!("lead-{}", "9".repeat(150_000));
    let poison = format!(
        r#"{{"type":"track","messageId":"poison","userId":"{long_id}","event":"Demo Requested","timestamp":"{timestamp}"}}"#
    );
    produce(
        &broker.bootstrap,
        &names.input,
        &with_one_more(&lines, &long_id, poison.clone().into_bytes()),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        &format!("{EVENT_TIME}poison_after_attempts = 3\n"),
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let instance = Instance::start(&config, &[("LEADSCORE_HTTP_LISTEN", listen.as_str())]);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    let aborted = metric(&listen, "leadscore_transactions_total{result=\"aborted\"}");
    // Three attempts of the batch that held it, one per halving of it,
    // three of it alone.
    assert!(aborted >= 6.0, "{aborted} aborted");
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success());

    let dead = read_topic(&broker.bootstrap, &names.dead_letter, true);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(
        letter
            .headers
            .get("leadscore.dlq.reason_code")
            .map(String::as_str),
        Some("poison")
    );
    let reason = &letter.headers["leadscore.dlq.reason"];
    assert!(reason.contains("failed 3 times in a row"), "{reason}");
    assert_eq!(letter.value, poison.as_bytes(), "kept whole: it fits");

    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}
