//! Changing the rules under a running deployment, on Apache Kafka: state in
//! the changelog carries the fingerprint of the rules that wrote it, so a
//! rules file edited without a new `version` is refused, never restored
//! against rules whose indexes mean something else; a new `version` of the
//! same content restores as before.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;

const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";
const VERSION_LINE: &str = "version = \"b2b-saas-2026.11.1\"";

/// Runs an instance on `config` until it has caught up, then stops it.
fn run_to_end(broker: &Broker, names: &Names, config: &Path) {
    let instance = Instance::start(config, &[]);
    wait_caught_up(&broker.bootstrap, names, Duration::from_secs(120));
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
}

/// `config` rewritten by `edit` into a file of its own.
fn edited(config: &Path, name: &str, edit: impl Fn(&str) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let changed = edit(&text);
    assert_ne!(changed, text, "the edit changes the file");
    let path = config.with_file_name(name);
    std::fs::write(&path, changed).unwrap();
    path
}

#[test]
fn rules_edited_without_a_new_version_are_refused_and_a_new_version_alone_restores() {
    let broker = kafka();
    let names = Names::new("rules-fingerprint");
    create_topic(&broker.bootstrap, &names.input, 2);
    let lines = sample(300, 35);
    let (first, second) = lines.split_at(lines.len() / 2);
    produce_lines(&broker.bootstrap, &names.input, first);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains(VERSION_LINE));
    run_to_end(broker, &names, &config);

    // The first engagement rule's points changed, the version kept.
    let silent_edit = edited(&config, "silent.toml", |text| {
        let at = text.find("[[engagement]]").unwrap();
        let points = at + text[at..].find("\npoints = ").unwrap() + 1;
        let end = points + text[points..].find('\n').unwrap();
        format!("{}points = 7{}", &text[..points], &text[end..])
    });
    let log = dir.path().join("silent.log");
    let mut refused = Instance::start_logging(&silent_edit, &[], &log);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = refused.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "an instance with silently edited rules kept running:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("refused: {}", text.lines().last().unwrap_or_default());
    assert!(!status.success(), "it exits non-zero: {status}\n{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("edited without a new version")
                && l.contains("b2b-saas-2026.11.1")
                && l.contains("not restored")),
        "the last line says what happened and what to do:\n{text}"
    );

    // The same content under a new name restores and goes on; what it
    // publishes is what the original rules would have.
    let renamed = edited(&config, "renamed.toml", |text| {
        text.replace(VERSION_LINE, "version = \"b2b-saas-2026.12.0\"")
    });
    produce_lines(&broker.bootstrap, &names.input, second);
    let log = dir.path().join("renamed.log");
    let instance = Instance::start_logging(&renamed, &[], &log);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("partitions restored from changelog") && !l.contains("leads=0")),
        "the renamed rules restored the leads:\n{text}"
    );
    // Outputs name the rules version that published them; the scores
    // are those of one run over all lines.
    let outputs = read_topic(&broker.bootstrap, &names.output, true);
    let versions: std::collections::BTreeSet<String> = outputs
        .iter()
        .map(|r| r.json()["rules_version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["b2b-saas-2026.11.1", "b2b-saas-2026.12.0"]
    );
    let cut = event_time_cut(&lines);
    let (expected, _) = replay(&lines, cut);
    let by_id =
        |outputs: Vec<serde_json::Value>| -> std::collections::BTreeMap<String, serde_json::Value> {
            outputs
                .into_iter()
                .filter(|v| at_millis(v) < cut)
                .map(|mut v| {
                    v.as_object_mut().unwrap().remove("rules_version");
                    (v["event_id"].as_str().unwrap().to_string(), v)
                })
                .collect()
        };
    let run_outputs: Vec<serde_json::Value> = outputs.iter().map(|r| r.json()).collect();
    let published = run_outputs.iter().filter(|v| at_millis(v) < cut).count();
    let run = by_id(run_outputs);
    let expected = by_id(expected);
    assert_eq!(published, run.len(), "no output repeated");
    assert_eq!(
        run.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the outputs of one run over all lines"
    );
    for (id, output) in &run {
        assert!(
            same_content(output, &expected[id]),
            "{output}\n{}",
            expected[id]
        );
    }
}
