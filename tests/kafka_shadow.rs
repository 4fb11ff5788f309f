//! New rules in shadow (`run --shadow`) beside the live deployment on
//! Apache Kafka: the shadow reads the input from its beginning into topics
//! of its own (nothing reaches the live output), scores exactly as a
//! replay under its rules does, and `leadscore diff` reports leads per
//! tier under each, which equal both replays.

mod common;

use std::process::Command;
use std::time::Duration;

use common::kafka::*;
use common::verify::*;
use leadscore::core::Timestamp;

const BIN: &str = env!("CARGO_BIN_EXE_leadscore");
const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";

#[test]
fn a_shadow_scores_the_whole_input_apart_and_diff_compares_it_with_live() {
    let broker = kafka();
    let names = Names::new("shadow");
    create_topic(&broker.bootstrap, &names.input, 2);
    // Recent traffic, so that scores have not all decayed by now.
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 400,
        seed: 61,
        start: Timestamp(now_ms() - 20 * 86_400_000),
        days: 19,
        // As `sample`: no merges across partitions, whose outputs follow
        // their own order (tests/kafka_aliases.rs).
        anonymous_share: 0.0,
        sales_share: SALES_SHARE,
        ..Default::default()
    });
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let live = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    process_all(broker, &names, &live, Duration::from_secs(1));
    let live_outputs = read_topic(&broker.bootstrap, &names.output, true).len();

    let text = std::fs::read_to_string(&live).unwrap();
    let new_text = rules_needing_history(&text);
    let new = dir.path().join("new.toml");
    std::fs::write(&new, &new_text).unwrap();
    let shadow_names = names.shadow();
    let log = dir.path().join("shadow.log");
    let shadow = Instance::start_shadow(&new, &[], &log);
    wait_caught_up(&broker.bootstrap, &shadow_names, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(1));
    assert!(shadow.terminate().success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("shadow mode"), "{said}");

    // Apart, and exact.
    assert_eq!(
        read_topic(&broker.bootstrap, &names.output, true).len(),
        live_outputs,
        "nothing reaches the live output"
    );
    let new_rules = leadscore::config::load_rules(&new).unwrap();
    assert_run_equals_replay_under(&new_rules, &broker.bootstrap, &shadow_names, &lines);

    // The diff's tiers are both replays'.
    let report = dir.path().join("report");
    let out = Command::new(BIN)
        .args(["diff", "--config"])
        .arg(&new)
        .arg("--live")
        .arg(&live)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let markdown = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert_eq!(markdown, stdout);
    assert!(std::fs::read_to_string(report.join("tiers.svg"))
        .unwrap()
        .starts_with("<svg"));
    let as_of = diff_as_of(&markdown);
    let live_rules = leadscore::config::load_rules(&live).unwrap();
    let (want_live, want_shadow) = (
        tiers_of(&live_rules, &lines, as_of),
        tiers_of(&new_rules, &lines, as_of),
    );
    assert_ne!(want_live, want_shadow, "the new rules move leads");
    let (got_live, got_shadow) = diff_tiers(&markdown);
    assert_eq!(got_live, want_live, "{markdown}");
    assert_eq!(got_shadow, want_shadow, "{markdown}");
    assert!(markdown.contains("## Largest movers"));
}
