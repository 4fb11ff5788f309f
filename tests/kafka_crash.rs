//! Crash safety of `leadscore run` on Apache Kafka: `kill -9` at random
//! points, restarts and fail-over change nothing a `read_committed`
//! subscriber or the state can see.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;

const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";

#[test]
fn kill_9_five_times_mid_stream_loses_nothing_and_repeats_nothing() {
    let broker = kafka();
    let names = Names::new("crash");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(8000, 21);
    assert!(lines.len() > 95_000, "{} events", lines.len());
    let dir = tempfile::tempdir().unwrap();
    // Historical events: timers follow event time, so the state can be
    // compared with replay's at the last event time.
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let cut = event_time_cut(&lines);
    let txn = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "crash-test-instance")];
    // All events up front, then five kills at points spread over the work.
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let instance = kill_five_times_mid_stream(broker, &names, &config, &txn, lines.len(), 5);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success());

    let (expected, replayer) = replay(&lines, cut);
    let committed = read_topic(&broker.bootstrap, &names.output, true);
    let raw = read_topic(&broker.bootstrap, &names.output, false);
    eprintln!(
        "crash test: {} committed outputs; {} raw records including aborted transactions",
        committed.len(),
        raw.len()
    );
    assert!(
        raw.len() > committed.len(),
        "some kill landed inside a transaction"
    );
    assert_exactly_replay(&committed, &expected, cut);
    assert_changelog_equals_replay(&broker.bootstrap, &names, &replayer);
}

#[test]
fn a_second_instance_takes_over_when_the_first_is_killed() {
    let broker = kafka();
    let names = Names::new("failover");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(3000, 22);
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let cut = event_time_cut(&lines);
    produce_lines(&broker.bootstrap, &names.input, first);
    let a = Instance::start(
        &config,
        &[("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "failover-a")],
    );
    let b = Instance::start(
        &config,
        &[("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "failover-b")],
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    a.kill9();
    produce_lines(&broker.bootstrap, &names.input, second);
    // b restores a's partitions from the changelog once the group notices.
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    assert!(b.terminate().success());

    let (expected, replayer) = replay(&lines, cut);
    assert_exactly_replay(
        &read_topic(&broker.bootstrap, &names.output, true),
        &expected,
        cut,
    );
    assert_changelog_equals_replay(&broker.bootstrap, &names, &replayer);
}

#[test]
fn an_instance_fenced_by_a_newer_one_with_its_transactional_id_exits_non_zero() {
    let broker = kafka();
    let names = Names::new("fenced");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(400, 23);
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let same_id = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "fenced-instance")];
    produce_lines(&broker.bootstrap, &names.input, first);
    let mut old = Instance::start(&config, &same_id);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    // A second instance with the same transactional id: its
    // init_transactions fences the first, whose next commit must fail.
    let new = Instance::start(&config, &same_id);
    std::thread::sleep(Duration::from_secs(3));
    produce_lines(&broker.bootstrap, &names.input, second);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fenced instance kept running"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !status.success(),
        "a fenced instance exits non-zero: {status}"
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    assert!(new.terminate().success());
}

/// A batch the broker refuses (its outputs exceed the output topic's
/// `max.message.bytes`) is aborted, state is restored from the changelog
/// and the input rewound, again and again, until the topic is fixed; then
/// everything goes through exactly once. With `poison_after_attempts = 0`:
/// by default a message that keeps failing would be dead-lettered. While
/// it fails, `/healthz` says so.
#[test]
fn refused_batches_are_aborted_and_retried_until_the_broker_accepts_them() {
    use rdkafka::admin::{
        AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let broker = kafka();
    let names = Names::new("refused");
    create_topic(&broker.bootstrap, &names.input, 2);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Every output record is larger than this.
    let small =
        NewTopic::new(&names.output, 2, TopicReplication::Fixed(1)).set("max.message.bytes", "100");
    for r in runtime
        .block_on(admin.create_topics(&[small], &options))
        .unwrap()
    {
        r.unwrap();
    }
    let lines = sample(40, 51);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        &format!("{EVENT_TIME}poison_after_attempts = 0\n"),
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let instance = Instance::start(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
            ("LEADSCORE_HTTP_STUCK_AFTER_MS", "2000"),
        ],
    );
    let healthz = || -> u16 {
        match ureq::get(&format!("http://{listen}/healthz")).call() {
            Ok(response) => response.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(e) => panic!("/healthz: {e}"),
        }
    };
    let aborted = || metric(&listen, "leadscore_transactions_total{result=\"aborted\"}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aborted() < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused batch was not aborted and retried"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        committed_total(&broker.bootstrap, &names).unwrap_or(0),
        0,
        "nothing committed while the batch is refused"
    );
    // The loop comes round, but an abort loop is not progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while healthz() != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz stayed healthy through an abort loop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let fixed = AlterConfig::new(ResourceSpecifier::Topic(&names.output))
        .set("max.message.bytes", "1048576");
    for r in runtime
        .block_on(admin.alter_configs(&[fixed], &options))
        .unwrap()
    {
        r.unwrap();
    }
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    assert_eq!(healthz(), 200, "healthy again once batches commit");
    assert!(instance.terminate().success());

    assert_run_equals_replay(&broker.bootstrap, &names, &lines);
}

/// Leads that go quiet expire (`inactive_after`), sales dispositions set
/// stages and recycle leads, and leads are erased (by tombstones and by
/// `erase` calls, some followed by late events of theirs), while the
/// processor is killed five times: the `read_committed` outputs
/// (`lead_expired` and `lead_erased` included) are replay's, the changelog
/// holds a tombstone as the last record of every expired or erased lead and
/// exactly replay's leads otherwise, and an instance restored from it
/// answers 404 for every erased lead.
#[test]
fn dispositions_erasures_and_expiry_exactly_once_across_kill_9() {
    let broker = kafka();
    let names = Names::new("expiry");
    create_topic(&broker.bootstrap, &names.input, 4);
    let (lines, erased) = with_erasures(&sample(3000, 23), 20);
    assert!(erased.len() > 100, "{} leads erased", erased.len());
    let dir = tempfile::tempdir().unwrap();
    let rules_text = common::with_expiry(&common::example_lead_rules_text(), 9);
    let rules = common::rules(&rules_text);
    assert!(rules.settings.inactive_after_ms.is_some());
    let config = write_config_with_rules(
        dir.path(),
        &rules_text,
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "expiry-test-instance"),
        ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
    ];
    // Every other erasure as a tombstone, the rest as `erase` calls.
    let mut erase_calls = 0;
    let tombstone = |i: usize| lines[i].contains("\"erase\"") && i % 2 == 0;
    for (i, line) in lines.iter().enumerate() {
        erase_calls += usize::from(line.contains("\"erase\"") && !tombstone(i));
    }
    assert!(
        erase_calls > 20 && erase_calls + 20 < erased.len(),
        "both kinds of request"
    );
    produce_lines_erasing(&broker.bootstrap, &names.input, &lines, tombstone);
    let instance = kill_five_times_mid_stream(broker, &names, &config, &env, lines.len(), 23);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success());

    assert_run_equals_replay_under(&rules, &broker.bootstrap, &names, &lines);
    let outputs: Vec<serde_json::Value> = read_topic(&broker.bootstrap, &names.output, true)
        .iter()
        .map(Record::json)
        .collect();
    let of_type = |kind: &str| -> std::collections::BTreeSet<String> {
        outputs
            .iter()
            .filter(|v| v["type"] == kind)
            .map(|v| v["lead_id"].as_str().unwrap().to_string())
            .collect()
    };
    let expired = of_type("lead_expired");
    assert!(expired.len() > 50, "{} leads expired", expired.len());
    assert_eq!(of_type("lead_erased"), erased.iter().cloned().collect());
    // The last changelog record of every expired lead that did not come
    // back, and of every erased lead, is a tombstone.
    let mut last: std::collections::BTreeMap<String, bool> = Default::default();
    for record in read_topic(&broker.bootstrap, &names.changelog, true) {
        let key = record.key.clone().unwrap();
        last.insert(key, record.value.is_empty());
    }
    let tombstones = last.values().filter(|t| **t).count();
    assert!(tombstones > 50, "{tombstones} tombstones");
    for (key, tombstone) in &last {
        if *tombstone && !key.starts_with('\0') {
            assert!(
                expired.contains(key) || erased.contains(key),
                "{key}: a tombstone without lead_expired or lead_erased"
            );
        }
    }
    for lead in &erased {
        assert_eq!(
            last.get(lead),
            Some(&true),
            "{lead}: erased, its last record a tombstone"
        );
    }

    // Restored from the changelog, an instance holds none of them.
    let instance = Instance::start(&config, &env);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&listen, "leadscore_ready") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "ready after restore");
        std::thread::sleep(Duration::from_millis(100));
    }
    for lead in &erased {
        let (status, body) = http_get(&format!("http://{listen}/v1/leads/{lead}"));
        assert_eq!(status, 404, "{lead}: {body}");
    }
    let kept = last
        .iter()
        .find(|(key, tombstone)| !**tombstone && !key.starts_with('\0'))
        .map(|(key, _)| key.clone())
        .unwrap();
    let (status, body) = http_get(&format!("http://{listen}/v1/leads/{kept}"));
    assert_eq!(status, 200, "{kept}: {body}");
    assert!(instance.terminate().success());
}
