//! Static group membership on Apache Kafka: an instance restarted after a
//! `kill -9` takes its partitions straight back instead of waiting out its
//! dead self's session; a stop on SIGTERM still hands its partitions over
//! at once; two instances with one `group_instance_id` are told so.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;

const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";
/// librdkafka's default session timeout: what a restart without static
/// membership would wait out.
const SESSION_TIMEOUT_MS: u64 = 45_000;

/// The tests' usual config with librdkafka's default session timeout.
fn config_with_default_session(dir: &Path, broker: &Broker, names: &Names) -> PathBuf {
    let config = write_config(dir, &broker.bootstrap, names, "exactly_once", EVENT_TIME);
    let text = std::fs::read_to_string(&config).unwrap();
    let short = "\"session.timeout.ms\" = \"6000\"";
    assert!(text.contains(short));
    let text = text.replace(
        short,
        &format!("\"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\""),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The first line of `log` containing `message`, once it appears.
fn wait_for_log_line(log: &Path, message: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(message)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} in the log within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `seconds_since_start=` field of a log line.
fn seconds_since_start(line: &str) -> f64 {
    line.split("seconds_since_start=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|s| s.trim_matches('"').parse().unwrap())
        .unwrap_or_else(|| panic!("no seconds_since_start in {line}"))
}

#[test]
fn a_restarted_instance_reclaims_its_partitions_at_once_after_kill_9() {
    let broker = kafka();
    let names = Names::new("reclaim");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(3000, 31);
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_default_session(dir.path(), broker, &names);
    let env = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "reclaim-instance")];
    produce_lines(&broker.bootstrap, &names.input, first);
    let before = Instance::start(&config, &env);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    before.kill9();

    // Input waits for the restarted instance; its first commit is the
    // end of the outage.
    produce_lines(&broker.bootstrap, &names.input, second);
    let log = dir.path().join("restarted.log");
    let after = Instance::start_logging(&config, &env, &log);
    let reclaimed = wait_for_log_line(
        &log,
        "partitions reclaimed without a rebalance",
        Duration::from_secs(60),
    );
    let first_commit = wait_for_log_line(&log, "first batch committed", Duration::from_secs(60));
    let recovery = seconds_since_start(&first_commit);
    eprintln!(
        "restart after kill -9: partitions back after {:.3} s, first batch committed after \
         {recovery:.3} s (session timeout {} s)",
        seconds_since_start(&reclaimed),
        SESSION_TIMEOUT_MS / 1000
    );
    assert!(
        recovery < 15.0,
        "the restarted instance committed its first batch {recovery:.1} s after starting"
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    assert!(after.terminate().success());

    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}

#[test]
fn an_instance_stopped_by_sigterm_hands_its_partitions_over_at_once() {
    let broker = kafka();
    let names = Names::new("handover");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(2000, 32);
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_default_session(dir.path(), broker, &names);
    produce_lines(&broker.bootstrap, &names.input, first);
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let a = Instance::start_logging(
        &config,
        &[("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "handover-a")],
        &logs[0],
    );
    let mut b = Instance::start_logging(
        &config,
        &[("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "handover-b")],
        &logs[1],
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    // Both started at once and raced to create the topics: both run.
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "b stopped early:\n{}",
        std::fs::read_to_string(&logs[1]).unwrap_or_default()
    );
    assert!(a.terminate().success());
    let stopped = Instant::now();
    produce_lines(&broker.bootstrap, &names.input, second);
    // Well inside the session timeout: only a member that left the group
    // lets b take its partitions this soon.
    let caught_up = std::panic::catch_unwind(|| {
        wait_caught_up(
            &broker.bootstrap,
            &names,
            Duration::from_millis(SESSION_TIMEOUT_MS / 2),
        )
    });
    if let Err(panic) = caught_up {
        for log in &logs {
            eprintln!(
                "--- {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::panic::resume_unwind(panic);
    }
    eprintln!(
        "after SIGTERM of one of two instances, the other had caught up on all partitions \
         {:.1} s later (session timeout {} s)",
        stopped.elapsed().as_secs_f64(),
        SESSION_TIMEOUT_MS / 1000
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(b.terminate().success());

    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}

#[test]
fn two_instances_with_one_group_instance_id_end_with_a_message_naming_it() {
    let broker = kafka();
    let names = Names::new("same-instance");
    create_topic(&broker.bootstrap, &names.input, 2);
    let lines = sample(200, 33);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let log = dir.path().join("first.log");
    let mut first = Instance::start_logging(
        &config,
        &[
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "same-instance-a"),
            ("LEADSCORE_KAFKA_GROUP_INSTANCE_ID", "same-instance"),
        ],
        &log,
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    let second = Instance::start(
        &config,
        &[
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "same-instance-b"),
            ("LEADSCORE_KAFKA_GROUP_INSTANCE_ID", "same-instance"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the instance whose group.instance.id was taken kept running"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "it exits non-zero: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap_or_default();
    eprintln!("the fenced instance's last words: {last}");
    assert!(
        last.contains("fenced") && last.contains("[kafka] group_instance_id"),
        "the last line names the setting: {last}"
    );
    assert!(second.terminate().success());
}
