//! A rules file of two scores (`[[scores]]`) on Apache Kafka: a `leadscore
//! run --score NAME` process per score, each killed with SIGKILL five
//! times mid-stream. The `read_committed` outputs are replay's of the
//! file (each output naming its score), none repeated or missing; each
//! score's changelog holds replay's state; a bad record is dead-lettered
//! once, by the file's first score.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;

#[test]
fn each_score_runs_exactly_once_across_kill_9() {
    let broker = kafka();
    let names = Names::new("scores");
    create_topic(&broker.bootstrap, &names.input, 4);
    let mut lines = sample(1500, 41);
    lines.insert(
        lines.len() / 2,
        "{\"type\": \"track\", not json".to_string(),
    );
    let good: Vec<String> = lines
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rules_text = common::two_scores(&common::example_lead_rules_text());
    let scores =
        leadscore::config::parse_scores(&rules_text, std::path::Path::new("two.toml")).unwrap();
    let config = write_config_with_rules(
        dir.path(),
        &rules_text,
        &broker.bootstrap,
        &names,
        "exactly_once",
        "timer_clock = \"event_time\"\n",
    );
    produce_lines(&broker.bootstrap, &names.input, &lines);

    let cut = event_time_cut(&good);
    let mut expected = Vec::new();
    for (index, rules) in scores.iter().enumerate() {
        let name = rules.score_name.as_deref().unwrap();
        let score_names = names.for_score(name);
        let txn = format!("scores-test-{name}");
        let env = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", txn.as_str())];
        let instance = kill_five_times_mid_stream_with(
            broker,
            &score_names,
            (&config, &["--score", name]),
            &env,
            lines.len(),
            index as u64 + 7,
        );
        wait_caught_up(&broker.bootstrap, &score_names, Duration::from_secs(600));
        std::thread::sleep(Duration::from_secs(2));
        assert!(instance.terminate().success(), "exit 0 on SIGTERM");

        let (outputs, replayer) = replay_under(rules, &good, cut);
        assert!(outputs.iter().all(|o| o["score_name"] == name));
        let last = replayer.watermark().unwrap().millis();
        assert_same_state(
            &changelog_snapshot_under(rules, &broker.bootstrap, &score_names, last),
            &replayer.engine().snapshot(leadscore::core::Timestamp(last)),
        );
        expected.extend(outputs);
    }

    let committed = read_topic(&broker.bootstrap, &names.output, true);
    for score in ["enterprise", "self_serve"] {
        assert!(
            committed.iter().any(|r| r.json()["score_name"] == score),
            "outputs of {score}"
        );
    }
    assert_exactly_replay(&committed, &expected, cut);
    let dead = read_topic(&broker.bootstrap, &names.dead_letter, true);
    assert_eq!(dead.len(), 1, "the bad record, dead-lettered once");
}
