//! `leadscore run` on Apache Kafka, exactly-once mode, checked with a
//! `read_committed` reader against `replay` over the same events.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::kafka::*;
use common::verify::*;
use leadscore::core::Timestamp;

#[test]
fn end_to_end_outputs_are_exactly_the_replay() {
    let broker = kafka();
    let names = Names::new("e2e");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(300, 11);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, "exactly_once", "");
    let cut = now_ms();
    process_all(broker, &names, &config, Duration::from_secs(2));

    let run = read_topic(&broker.bootstrap, &names.output, true);
    let (expected, replayer) = replay(&lines, cut);
    assert_exactly_replay(&run, &expected, cut);
    for r in &run {
        let v = r.json();
        assert_eq!(r.key.as_deref(), v["lead_id"].as_str(), "keyed by lead");
        assert_eq!(r.headers["event_id"], v["event_id"].as_str().unwrap());
        assert_eq!(r.headers["event_type"], v["type"].as_str().unwrap());
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let cool_downs = run
        .iter()
        .map(Record::json)
        .filter(|v| {
            v["type"] == "threshold_crossed"
                && v["direction"] == "down"
                && v["cause_event_id"].is_null()
        })
        .count();
    assert!(
        cool_downs > 10,
        "decay-driven crossings published: {cool_downs}"
    );

    let state = changelog_snapshot(&broker.bootstrap, &names, cut);
    assert_same_state(&state, &replayer.engine().snapshot(Timestamp(cut)));
    assert!(read_topic(&broker.bootstrap, &names.dead_letter, true).is_empty());
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_and_good_ones_are_scored() {
    let broker = kafka();
    let names = Names::new("dlq");
    create_topic(&broker.bootstrap, &names.input, 4);
    let good = sample(40, 12);
    let future = SystemTime::now() + Duration::from_secs(86_400);
    let future =
        Timestamp(future.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64).to_rfc3339();
    let bad: Vec<(&str, Vec<u8>, HeaderList)> = vec![
        ("invalid_json", b"{not json".to_vec(), vec![]),
        ("invalid_json", br#"{"type":"track","messageId":"x1","userId":"u","event":"A","timestamp":12}"#.to_vec(), vec![]),
        ("missing_field", br#"{"type":"track","userId":"u","event":"A","timestamp":"2025-12-02T00:00:00Z"}"#.to_vec(), vec![]),
        ("missing_field", br#"{"type":"track","messageId":"x2","event":"A","timestamp":"2025-12-02T00:00:00Z"}"#.to_vec(), vec![]),
        ("oversized", format!(r#"{{"type":"track","messageId":"x3","userId":"u","event":"{}","timestamp":"2025-12-02T00:00:00Z"}}"#, "x".repeat(300_000)).into_bytes(), vec![]),
        ("too_far_in_future", format!(r#"{{"type":"track","messageId":"x4","userId":"u","event":"A","timestamp":"{future}"}}"#).into_bytes(), vec![]),
        ("unsupported_content_type", b"a,b,c".to_vec(), vec![("content-type".to_string(), "text/csv".to_string())]),
        ("invalid_protobuf", b"\xff\xff\xff".to_vec(), vec![("content-type".to_string(), "application/x-protobuf".to_string())]),
    ];
    let mut records: Vec<InputRecord> = Vec::new();
    for (i, line) in good.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        records.push((
            v["userId"]
                .as_str()
                .or(v["anonymousId"].as_str())
                .map(str::to_string),
            line.clone().into_bytes(),
            vec![],
        ));
        if i % 50 == 7 {
            let (_, bytes, headers) = &bad[(i / 50) % bad.len()];
            records.push((Some(format!("bad-{i}")), bytes.clone(), headers.clone()));
        }
    }
    for (_, bytes, headers) in &bad {
        records.push((Some("bad-tail".into()), bytes.clone(), headers.clone()));
    }
    // A good protobuf event for a lead of its own.
    let proto = leadscore::codec::proto::event_to_wire(
        &leadscore::core::Event::new(
            "pb-1",
            "proto-lead",
            leadscore::core::EventKind::Track,
            Timestamp(1_767_225_000_000),
        )
        .named("Demo Requested"),
    );
    records.push((
        Some("proto-lead".into()),
        prost::Message::encode_to_vec(&proto),
        vec![("content-type".into(), "application/x-protobuf".into())],
    ));
    produce(&broker.bootstrap, &names.input, &records);
    let expected_bad = records.len() - good.len() - 1;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, "exactly_once", "");
    let cut = now_ms();
    process_all(broker, &names, &config, Duration::from_secs(1));

    let dead = read_topic(&broker.bootstrap, &names.dead_letter, true);
    assert_eq!(dead.len(), expected_bad);
    let codes: BTreeSet<&str> = dead
        .iter()
        .map(|d| d.headers["leadscore.dlq.reason_code"].as_str())
        .collect();
    let want: BTreeSet<&str> = bad.iter().map(|(code, _, _)| *code).collect();
    assert_eq!(codes, want);
    for d in &dead {
        assert_eq!(d.headers["leadscore.dlq.source_topic"], names.input);
        assert!(d.headers["leadscore.dlq.source_offset"]
            .parse::<i64>()
            .is_ok());
        assert!(!d.headers["leadscore.dlq.reason"].is_empty());
        assert!(
            d.key.as_deref().is_some_and(|k| k.starts_with("bad-")),
            "original key kept"
        );
    }
    let csv = dead
        .iter()
        .find(|d| d.headers["leadscore.dlq.reason_code"] == "unsupported_content_type")
        .unwrap();
    assert_eq!(csv.value, b"a,b,c", "original value kept");
    assert_eq!(
        csv.headers["content-type"], "text/csv",
        "original headers kept"
    );

    let run = read_topic(&broker.bootstrap, &names.output, true);
    let (expected, _) = replay(&good, cut);
    let (proto_outputs, json_outputs): (Vec<Record>, Vec<Record>) = run
        .into_iter()
        .partition(|r| r.key.as_deref() == Some("proto-lead"));
    assert_exactly_replay(&json_outputs, &expected, cut);
    assert!(
        proto_outputs.iter().any(|r| r.json()["score"] == 30.0),
        "protobuf input scored"
    );
}

#[test]
fn the_same_events_produced_twice_are_scored_once() {
    let broker = kafka();
    let names = Names::new("dup");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(100, 13);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, "exactly_once", "");
    let cut = now_ms();
    process_all(broker, &names, &config, Duration::from_secs(1));
    let (expected, _) = replay(&lines, cut);
    assert_exactly_replay(
        &read_topic(&broker.bootstrap, &names.output, true),
        &expected,
        cut,
    );
}

#[test]
fn a_hot_lead_cools_down_with_no_new_event_and_it_is_published_once() {
    let broker = kafka();
    let names = Names::new("decay");
    create_topic(&broker.bootstrap, &names.input, 4);
    // A minute (the shortest half-life check accepts) instead of weeks,
    // so the wall clock reaches the due time.
    let rules = r#"
        version = "decay-test"
        [scoring]
        half_life = "1m"
        hysteresis = 5
        [events]
        max_future_skew = "1m"
        [grades]
        A = 3
        B = 2
        C = 1
        [[tiers]]
        name = "cold"
        min_score = 0
        [[tiers]]
        name = "hot"
        min_score = 40
        [[engagement]]
        name = "demo"
        type = "track"
        event = "Demo Requested"
        points = 50
    "#;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with_rules(
        dir.path(),
        rules,
        &broker.bootstrap,
        &names,
        "exactly_once",
        "",
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let env = [("LEADSCORE_HTTP_LISTEN", listen.as_str())];
    let ready = || {
        ureq::get(&format!("http://{listen}/readyz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    };
    let wait_for = |what: &str, condition: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let crossings_so_far = || {
        read_topic(&broker.bootstrap, &names.output, true)
            .iter()
            .filter(|r| r.json()["type"] == "threshold_crossed")
            .count()
    };
    let instance = Instance::start(&config, &env);
    wait_for("the processor did not get ready", &ready);
    let now = Timestamp(now_ms()).to_rfc3339();
    let event = format!(
        r#"{{"type":"track","messageId":"d-1","userId":"hot-lead","event":"Demo Requested","timestamp":"{now}"}}"#
    );
    produce_lines(&broker.bootstrap, &names.input, &[event]);
    // 50 points fall below 35 after 60 * log2(50/35) = 30.87 s, by the
    // wall clock alone; then the processor is killed, and its successor (ready,
    // so holding the lead again) must not publish the cool-down again.
    wait_for("no cool-down was published", &|| crossings_so_far() >= 2);
    instance.kill9();
    let instance = Instance::start(&config, &env);
    wait_for("the restarted processor did not get ready", &ready);
    std::thread::sleep(Duration::from_secs(3));
    assert!(instance.terminate().success());

    let outputs: Vec<serde_json::Value> = read_topic(&broker.bootstrap, &names.output, true)
        .iter()
        .map(Record::json)
        .collect();
    let crossings: Vec<&serde_json::Value> = outputs
        .iter()
        .filter(|o| o["type"] == "threshold_crossed")
        .collect();
    assert_eq!(crossings.len(), 2, "{crossings:?}");
    assert_eq!(
        (
            crossings[0]["tier"].as_str(),
            crossings[0]["direction"].as_str()
        ),
        (Some("hot"), Some("up"))
    );
    let down = crossings[1];
    assert_eq!(
        (down["previous_tier"].as_str(), down["tier"].as_str()),
        (Some("hot"), Some("cold"))
    );
    assert!(down["cause_event_id"].is_null());
    let score = down["score"].as_f64().unwrap();
    assert!(score < 35.0 && score > 34.9, "{score}");
    let cooled_after = at_millis(down) - Timestamp::parse_rfc3339(&now).unwrap().millis();
    assert!(
        (30_800..31_100).contains(&cooled_after),
        "cooled down after {cooled_after} ms"
    );
}
