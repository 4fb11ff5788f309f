//! A rules file of two scores (`[[scores]]`) on Apache Kafka, run as one
//! process for both and as a `leadscore run --score NAME` process per
//! score, killed with SIGKILL five times mid-stream. The `read_committed`
//! outputs are replay's of the file (each output naming its score), none
//! repeated or missing; each score's changelog holds replay's state; a
//! bad record is dead-lettered once, by the file's first score. New rules
//! for both scores in shadow, and `diff --score` per score.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;

const SCORES: [&str; 2] = ["enterprise", "self_serve"];

#[test]
fn one_process_scores_each_score_exactly_once_across_kill_9() {
    let broker = kafka();
    let setup = Setup::new(broker, "scores-one");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "scores-one-test"),
        ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
    ];
    // Progress is watched on the first score's group; the second's keeps
    // pace on the same input, in the same process.
    let instance = kill_five_times_mid_stream_with(
        broker,
        &setup.names.for_score(SCORES[0]),
        (&setup.config, &[]),
        &env,
        setup.lines.len(),
        11,
    );
    setup.wait_caught_up(broker);
    // Each score's series carry its name; a lead's answer is one per score.
    for name in SCORES {
        let series = format!("leadscore_leads{{score=\"{name}\"}}");
        assert_eq!(metric(&listen, &series), 1500.0, "{series}");
    }
    let (status, body) = http_get(&format!("http://{listen}/v1/leads/lead-000001"));
    assert_eq!(status, 200, "{body}");
    let answers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let named: Vec<&str> = answers
        .as_array()
        .expect("one answer per score")
        .iter()
        .map(|a| a["score_name"].as_str().unwrap())
        .collect();
    assert_eq!(named, SCORES);
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
    setup.check_outputs(broker);
}

#[test]
fn a_process_per_score_scores_each_exactly_once_across_kill_9() {
    let broker = kafka();
    let setup = Setup::new(broker, "scores-each");
    for (index, name) in SCORES.into_iter().enumerate() {
        let txn = format!("scores-each-test-{name}");
        let env = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", txn.as_str())];
        let instance = kill_five_times_mid_stream_with(
            broker,
            &setup.names.for_score(name),
            (&setup.config, &["--score", name]),
            &env,
            setup.lines.len(),
            index as u64 + 7,
        );
        wait_caught_up(
            &broker.bootstrap,
            &setup.names.for_score(name),
            Duration::from_secs(600),
        );
        std::thread::sleep(Duration::from_secs(2));
        assert!(instance.terminate().success(), "exit 0 on SIGTERM");
    }
    setup.check_outputs(broker);
}

#[test]
fn a_shadow_of_two_scores_and_a_diff_per_score() {
    let broker = kafka();
    // Recent traffic, so that scores have not all decayed by now.
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 400,
        seed: 61,
        start: leadscore::core::Timestamp(now_ms() - 20 * 86_400_000),
        days: 19,
        anonymous_share: 0.0,
        sales_share: SALES_SHARE,
        ..Default::default()
    });
    let setup = Setup::with_lines(broker, "scores-diff", lines);
    let live = Instance::start(&setup.config, &[]);
    setup.wait_caught_up(broker);
    assert!(live.terminate().success());

    // Both scores' MQL lines lower, in a file of their own.
    let new_rules = common::scores::two_scores(
        &common::example_lead_rules_text()
            .replace("b2b-saas-2026.11.1", "b2b-saas-2026.12.0")
            .replacen("min_score = 70", "min_score = 60", 1),
    );
    let new_dir = tempfile::tempdir().unwrap();
    let new = write_config_with_rules(
        new_dir.path(),
        &new_rules,
        &broker.bootstrap,
        &setup.names,
        "exactly_once",
        "timer_clock = \"event_time\"\n",
    );
    let log = new_dir.path().join("shadow.log");
    let shadow = Instance::start_shadow(&new, &[], &log);
    for name in SCORES {
        wait_caught_up(
            &broker.bootstrap,
            &setup.names.for_score(name).shadow(),
            Duration::from_secs(300),
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(shadow.terminate().success());

    let good: Vec<String> = setup
        .lines
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .cloned()
        .collect();
    let new_scores =
        leadscore::config::parse_scores(&new_rules, std::path::Path::new("new.toml")).unwrap();
    for (index, name) in SCORES.into_iter().enumerate() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["diff", "--config"])
            .arg(&new)
            .arg("--live")
            .arg(&setup.config)
            .args(["--score", name])
            .output()
            .unwrap();
        let markdown = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let as_of = diff_as_of(&markdown);
        let want_live = tiers_of(&setup.scores[index], &good, as_of);
        let want_shadow = tiers_of(&new_scores[index], &good, as_of);
        assert_ne!(want_live, want_shadow, "the new rules move {name}'s leads");
        assert_eq!(
            diff_tiers(&markdown),
            (want_live, want_shadow),
            "{markdown}"
        );
    }
    // A file of several scores needs --score.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .args(["diff", "--config"])
        .arg(&new)
        .arg("--live")
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose one with --score"));
}

struct Setup {
    names: Names,
    lines: Vec<String>,
    config: std::path::PathBuf,
    scores: Vec<leadscore::core::Rules>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Sample traffic with one bad record, produced; a configuration of
    /// the example's lead rules as two scores.
    fn new(broker: &Broker, test: &str) -> Setup {
        Setup::with_lines(broker, test, sample(1500, 41))
    }

    /// [`Setup::new`] with these lines.
    fn with_lines(broker: &Broker, test: &str, mut lines: Vec<String>) -> Setup {
        let names = Names::new(test);
        create_topic(&broker.bootstrap, &names.input, 4);
        lines.insert(
            lines.len() / 2,
            "{\"type\": \"track\", not json".to_string(),
        );
        let dir = tempfile::tempdir().unwrap();
        let rules_text = common::scores::two_scores(&common::example_lead_rules_text());
        let scores =
            leadscore::config::parse_scores(&rules_text, std::path::Path::new("two.toml")).unwrap();
        let names_of: Vec<_> = scores.iter().map(|r| r.score_name.as_deref()).collect();
        assert_eq!(names_of, SCORES.map(Some));
        let config = write_config_with_rules(
            dir.path(),
            &rules_text,
            &broker.bootstrap,
            &names,
            "exactly_once",
            "timer_clock = \"event_time\"\n",
        );
        produce_lines(&broker.bootstrap, &names.input, &lines);
        Setup {
            names,
            lines,
            config,
            scores,
            _dir: dir,
        }
    }

    /// Waits for every score to catch up.
    fn wait_caught_up(&self, broker: &Broker) {
        for name in SCORES {
            wait_caught_up(
                &broker.bootstrap,
                &self.names.for_score(name),
                Duration::from_secs(600),
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }

    /// Each score's changelog holds replay's state; the outputs are
    /// replay's of both scores; the bad record was dead-lettered once.
    fn check_outputs(&self, broker: &Broker) {
        let good: Vec<String> = self
            .lines
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .cloned()
            .collect();
        let cut = event_time_cut(&good);
        let mut expected = Vec::new();
        for (rules, name) in self.scores.iter().zip(SCORES) {
            let (outputs, replayer) = replay_under(rules, &good, cut);
            assert!(outputs.iter().all(|o| o["score_name"] == name));
            let last = replayer.watermark().unwrap().millis();
            assert_same_state(
                &changelog_snapshot_under(
                    rules,
                    &broker.bootstrap,
                    &self.names.for_score(name),
                    last,
                ),
                &replayer.engine().snapshot(leadscore::core::Timestamp(last)),
            );
            expected.extend(outputs);
        }
        let committed = read_topic(&broker.bootstrap, &self.names.output, true);
        for name in SCORES {
            assert!(
                committed.iter().any(|r| r.json()["score_name"] == name),
                "outputs of {name}"
            );
        }
        assert_exactly_replay(&committed, &expected, cut);
        let dead = read_topic(&broker.bootstrap, &self.names.dead_letter, true);
        assert_eq!(dead.len(), 1, "the bad record, dead-lettered once");
    }
}
