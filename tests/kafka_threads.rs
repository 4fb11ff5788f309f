//! `[processing] threads = 2` on Apache Kafka: two stream threads in one
//! process, each a member of the group with its own transactional id,
//! survive a `kill -9` mid-stream with `replay`'s outputs exactly, and
//! the query API answers for leads held by either thread.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;
use leadscore::config::Partitioner;
use leadscore::ops::partitioner::partition_of;

/// The log lines of stream thread `thread` that contain `message`.
fn thread_lines(log: &str, thread: usize, message: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("stream{{thread={thread}}}")) && l.contains(message))
        .map(str::to_string)
        .collect()
}

#[test]
fn two_threads_survive_kill_9_and_answer_for_either_threads_leads() {
    let broker = kafka();
    let names = Names::new("threads");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(3000, 34);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        "timer_clock = \"event_time\"\nthreads = 2\n",
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "threads-instance"),
        ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
    ];
    let (first, second) = lines.split_at(lines.len() / 2);
    produce_lines(&broker.bootstrap, &names.input, first);
    let before = Instance::start(&config, &env);
    // Mid-stream: some of the first half committed, not all of it.
    let target = first.len() as i64 / 3;
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_total(&broker.bootstrap, &names).unwrap_or(0) < target {
        assert!(
            Instant::now() < deadline,
            "no progress to {target} committed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    before.kill9();

    produce_lines(&broker.bootstrap, &names.input, second);
    let log = dir.path().join("after.log");
    let after = Instance::start_logging(&config, &env, &log);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));

    let text = std::fs::read_to_string(&log).unwrap();
    for thread in 0..2 {
        let started = thread_lines(&text, thread, "processor started");
        assert!(
            started
                .iter()
                .any(|l| l.contains(&format!("threads-instance-{thread}"))),
            "thread {thread} is group member threads-instance-{thread}:\n{text}"
        );
        assert!(
            !thread_lines(&text, thread, "first batch committed").is_empty(),
            "thread {thread} committed batches:\n{text}"
        );
    }

    // One lead of each input partition: each thread holds some of them.
    let mut lead_of_partition: BTreeMap<i32, String> = BTreeMap::new();
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(id) = event["userId"].as_str() {
            let partition = partition_of(Partitioner::ConsistentRandom, id.as_bytes(), 4);
            lead_of_partition.entry(partition).or_insert(id.to_string());
        }
    }
    assert_eq!(lead_of_partition.len(), 4, "{lead_of_partition:?}");
    for (partition, lead) in &lead_of_partition {
        let (status, body) = http_get(&format!("http://{listen}/v1/leads/{lead}"));
        assert_eq!(status, 200, "lead {lead} of partition {partition}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["partition"], *partition, "{answer}");
    }
    let (status, body) = http_get(&format!("http://{listen}/v1/leads/nobody-at-all"));
    assert_eq!(status, 404, "{body}");
    // The gauges add up both threads.
    assert_eq!(metric(&listen, "leadscore_partitions_assigned"), 4.0);
    let (status, body) = http_get(&format!("http://{listen}/readyz"));
    assert_eq!(status, 200, "{body}");

    std::thread::sleep(Duration::from_secs(2));
    assert!(after.terminate().success(), "exit 0 on SIGTERM");
    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}
