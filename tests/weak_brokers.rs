//! Exact state and repeat-free-by-`event_id` outputs where transactions are
//! weak or absent: tansu (aborted and fenced records visible to
//! `read_committed` readers, offsets of killed producers lost) in both
//! modes, and `at_least_once` on Apache Kafka. Each is killed with `kill -9`
//! five times mid-stream.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;

/// Historical events: decay timers on event time, as in `replay`.
const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";

fn crash_and_check(broker: &Broker, test: &str, guarantee: &str) {
    let names = Names::new(test);
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(6000, 31);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, guarantee, EVENT_TIME);
    let cut = event_time_cut(&lines);
    let txn = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "weak-broker-instance")];
    // All events up front, then five kills at points spread over the work.
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let instance = kill_five_times_mid_stream(broker, &names, &config, &txn, lines.len(), 9);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success());

    let (expected, replayer) = replay(&lines, cut);
    let raw = read_topic(&broker.bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&raw);
    eprintln!(
        "{test}: {} raw outputs, {repeats} repeats let through, {} unique",
        raw.len(),
        unique.len()
    );
    assert_exactly_replay(&unique, &expected, cut);
    assert_changelog_equals_replay(&broker.bootstrap, &names, &replayer);
}

#[test]
fn tansu_exactly_once_mode_keeps_state_exact_and_outputs_dedupable() {
    crash_and_check(tansu(), "tansu-eos", "exactly_once");
}

#[test]
fn tansu_at_least_once_keeps_state_exact_and_outputs_dedupable() {
    crash_and_check(tansu(), "tansu-alo", "at_least_once");
}

#[test]
fn kafka_at_least_once_keeps_state_exact_and_outputs_dedupable() {
    crash_and_check(kafka(), "kafka-alo", "at_least_once");
}
