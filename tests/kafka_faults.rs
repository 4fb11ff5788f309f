//! Fault injection with librdkafka's mock cluster, in addition to the real
//! brokers: broker errors in the middle of transactions force aborts, a
//! fencing error stops the processor (exit non-zero, restarted here as a
//! supervisor would), dropped connections make librdkafka retry.
//!
//! The mock cluster is a weak broker too: it shows records of aborted
//! transactions and keeps no offsets committed in transactions, so every
//! rewind and restart reads the input from the beginning again. The
//! criteria are therefore the weak-broker ones: state equal to `replay`,
//! outputs equal to `replay`'s after dropping repeated `event_id`s.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Historical events: decay timers on event time, as in `replay`. Small
/// batches, so that the run has a few hundred transactions to hit.
const SETTINGS: &str = "timer_clock = \"event_time\"\nmax_batch = 100\n";

/// An error for the `after + 1`-th request of its kind from now on (the
/// mock answers the requests before it normally).
fn after(requests: usize, error: RDKafkaRespErr) -> Vec<RDKafkaRespErr> {
    let mut errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR; requests];
    errors.push(error);
    errors
}

fn mock_cluster(names: &Names) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("a mock cluster");
    // The mock has no CreateTopics: the processor finds its topics made.
    for (topic, partitions) in [
        (names.input.clone(), 4),
        (format!("{}-identities", names.group), 4),
        (names.changelog.clone(), 4),
        (names.output.clone(), 4),
        (names.dead_letter.clone(), 4),
    ] {
        mock.create_topic(&topic, partitions, 1).unwrap();
    }
    mock
}

/// Waits until the changelog holds the replay's state, restarting the
/// processor whenever it exits; returns the non-zero exits seen.
fn supervise_until_exact(
    bootstrap: &str,
    names: &Names,
    config: &Path,
    log: &Path,
    replayer: &leadscore::replay::Replayer,
    env: &[(&str, &str)],
) -> Vec<std::process::ExitStatus> {
    let last = replayer.watermark().expect("replayed events").millis();
    let expected = replayer.engine().snapshot(leadscore::core::Timestamp(last));
    let mut instance = Instance::start_logging(config, env, log);
    let mut exits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(status) = instance.child.try_wait().unwrap() {
            exits.push(status);
            assert!(exits.len() < 5, "the processor keeps exiting: {exits:?}");
            instance = Instance::start_logging(config, env, log);
            continue;
        }
        let difference = state_difference(&changelog_snapshot(bootstrap, names, last), &expected);
        match difference {
            None => break,
            Some(d) => assert!(
                Instant::now() < deadline,
                "the state did not reach the replay's: {d}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
    exits
}

#[test]
fn broker_errors_mid_transaction_abort_and_state_stays_exact() {
    use RDKafkaRespErr::*;
    let names = Names::new("mock-faults");
    let mock = mock_cluster(&names);
    let bootstrap = mock.bootstrap_servers();
    let lines = sample(1500, 53);
    produce_lines(&bootstrap, &names.input, &lines);

    // Pushed before the processor starts, so only its requests meet them.
    // A refused produce and a refused offset commit each fail a batch:
    // abort, rewind, rebuild. Dropped connections and a busy coordinator
    // are retried inside librdkafka. A fencing error is fatal: the
    // processor exits non-zero, and its successor carries on.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            after(20, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED),
            after(25, RD_KAFKA_RESP_ERR__TRANSPORT),
            after(25, RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH),
        ]
        .concat(),
    );
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &after(15, RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED),
    );
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            after(10, RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS),
            vec![RD_KAFKA_RESP_ERR__TRANSPORT],
        ]
        .concat(),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &bootstrap, &names, "exactly_once", SETTINGS);
    let log = dir.path().join("leadscore.log");
    let cut = event_time_cut(&lines);
    let (expected, replayer) = replay(&lines, cut);
    let exits = supervise_until_exact(&bootstrap, &names, &config, &log, &replayer, &[]);

    let log = std::fs::read_to_string(&log).unwrap();
    let rewinds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("batch failed; rewinding"))
        .collect();
    for reason in ["Topic authorization failed", "Group authorization failed"] {
        assert!(
            rewinds.iter().any(|l| l.contains(reason)),
            "no batch aborted for {reason:?}; rewinds:\n{}",
            rewinds.join("\n")
        );
    }
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(
        exits.len(),
        1,
        "one fatal exit (fenced): {exits:?}\n{}",
        errors.join("\n")
    );
    assert!(!exits[0].success());
    assert!(log.contains("fenced"), "the fatal exit names the fencing");

    let raw = read_topic(&bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&raw);
    eprintln!(
        "mock faults: {} rewinds, {} raw outputs, {repeats} repeats, {} unique",
        rewinds.len(),
        raw.len(),
        unique.len()
    );
    assert_exactly_replay(&unique, &expected, cut);
}

#[test]
fn refused_produce_at_least_once_rewinds_and_state_stays_exact() {
    let names = Names::new("mock-faults-alo");
    let mock = mock_cluster(&names);
    let bootstrap = mock.bootstrap_servers();
    let lines = sample(1500, 59);
    produce_lines(&bootstrap, &names.input, &lines);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            after(
                20,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            ),
            after(20, RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT),
        ]
        .concat(),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &bootstrap, &names, "at_least_once", SETTINGS);
    let log = dir.path().join("leadscore.log");
    let cut = event_time_cut(&lines);
    let (expected, replayer) = replay(&lines, cut);
    let exits = supervise_until_exact(&bootstrap, &names, &config, &log, &replayer, &[]);
    assert!(exits.is_empty(), "no exits: {exits:?}");

    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("batch failed; rewinding") && l.contains("not delivered")),
        "no batch failed for the refused produce:\n{log}"
    );
    let raw = read_topic(&bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&raw);
    eprintln!(
        "mock faults, at-least-once: {} raw outputs, {repeats} repeats",
        raw.len()
    );
    assert_exactly_replay(&unique, &expected, cut);
}

/// librdkafka's `send_offsets_to_transaction` waits for the group
/// coordinator however long it is down, past its timeout (librdkafka
/// issues 5456 and 5511). The stream thread cannot be interrupted there:
/// the watchdog ends the process once the call is well past its timeout,
/// and the successor, with the coordinator back, carries on exactly.
/// (Where the call returns at its timeout after all, the process ends on
/// the error of the next call that needs the coordinator: either way it
/// does not hang.)
#[test]
fn a_transaction_call_stuck_past_its_timeout_ends_the_process_and_a_restart_carries_on() {
    let names = Names::new("mock-hang");
    let mock = MockCluster::new(3).expect("a mock cluster");
    for (topic, partitions) in [
        (names.input.clone(), 4),
        (format!("{}-identities", names.group), 4),
        (names.changelog.clone(), 4),
        (names.output.clone(), 4),
        (names.dead_letter.clone(), 4),
    ] {
        mock.create_topic(&topic, partitions, 1).unwrap();
        for partition in 0..partitions {
            mock.partition_leader(&topic, partition, Some(1)).unwrap();
        }
    }
    // The group's coordinator on a broker of its own, to take down.
    let transactional_id = format!("{}-txn", names.group);
    mock.coordinator(MockCoordinator::Transaction(transactional_id.clone()), 1)
        .unwrap();
    mock.coordinator(MockCoordinator::Group(names.group.clone()), 2)
        .unwrap();
    let bootstrap = mock.bootstrap_servers();
    let lines = sample(1500, 61);
    produce_lines(&bootstrap, &names.input, &lines);

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &bootstrap, &names, "exactly_once", SETTINGS);
    let log = dir.path().join("leadscore.log");
    let env = [(
        "LEADSCORE_KAFKA_TRANSACTIONAL_ID",
        transactional_id.as_str(),
    )];
    let mut instance = Instance::start_logging(&config, &env, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !read_log().contains("first batch committed") {
        assert!(
            Instant::now() < deadline,
            "no batch committed:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mock.broker_down(2).unwrap();
    let down = Instant::now();
    let status = loop {
        if let Some(status) = instance.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            down.elapsed() < Duration::from_secs(180),
            "still running three minutes after the coordinator went down:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let stuck = down.elapsed();
    assert!(!status.success(), "{status:?}");
    let text = read_log();
    // Mostly the call hangs and the watchdog ends the process, naming it.
    // Now and then librdkafka's call does return at its timeout; the
    // process then ends on the next call that needs the coordinator, with
    // that call's error (the watchdog's own test is in `ops::status`).
    let exit_line = text
        .lines()
        .find(|l| l.contains("stuck far past its timeout"))
        .or_else(|| {
            text.contains("Failed to commit offsets to transaction")
                .then(|| text.lines().rfind(|l| l.starts_with("error: ")))
                .flatten()
        })
        .unwrap_or_else(|| panic!("the exit names the stuck call or its error:\n{text}"));
    assert!(
        exit_line.contains("send_offsets_to_transaction") || exit_line.starts_with("error: "),
        "{exit_line}"
    );
    eprintln!(
        "exited {:.0} s after the coordinator went down: {exit_line}",
        stuck.as_secs_f64()
    );

    mock.broker_up(2).unwrap();
    let cut = event_time_cut(&lines);
    let (expected, replayer) = replay(&lines, cut);
    let exits = supervise_until_exact(&bootstrap, &names, &config, &log, &replayer, &env);
    assert!(exits.is_empty(), "the successor runs on: {exits:?}");
    let raw = read_topic(&bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&raw);
    eprintln!("mock hang: {} raw outputs, {repeats} repeats", raw.len());
    assert_exactly_replay(&unique, &expected, cut);
}
