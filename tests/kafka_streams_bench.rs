//! The Kafka Streams application that `examples/bench_e2e.rs` runs beside
//! `leadscore run` (benches/kafka-streams) does the same job: on Apache
//! Kafka, its outputs equal `replay`'s under the same rules, for every lead
//! its job covers. Built with Maven, like the brokers' jars.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kafka::*;
use common::verify::*;

/// The shipped lead rules without what the Streams application leaves out
/// (lifecycle rules, bot filters; accounts are already out).
fn same_job_rules() -> leadscore::core::Rules {
    let mut text: toml_edit::DocumentMut = common::example_lead_rules_text().parse().unwrap();
    for table in ["lifecycle", "filters"] {
        text.remove(table).expect("the example rules have it");
    }
    common::rules(&text.to_string())
}

/// What a lead's event-caused output says: cause, kind, score (to 1e-6)
/// and tier.
type Said = (String, String, String);

fn said(output: &serde_json::Value) -> Option<(String, Said)> {
    let cause = output["cause_event_id"].as_str()?.to_string();
    let kind = output["type"].as_str().unwrap().to_string();
    let what = match kind.as_str() {
        "score_changed" => format!("{:.6}", output["score"].as_f64().unwrap()),
        "threshold_crossed" => output["tier"]
            .as_str()
            .or(output["to_tier"].as_str())
            .unwrap()
            .to_string(),
        _ => return None,
    };
    let lead = output["lead_id"].as_str().unwrap().to_string();
    Some((lead, (cause, kind, what)))
}

#[test]
fn the_kafka_streams_application_publishes_what_replay_publishes() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kafka-streams");
    let built = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never", "package"])
        .current_dir(&project)
        .output()
        .expect("Maven runs");
    assert!(
        built.status.success(),
        "mvn package in {}: {}{}",
        project.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let broker = kafka();
    let names = Names::new("kstreams");
    create_topic(&broker.bootstrap, &names.input, 4);
    create_topic(&broker.bootstrap, &names.output, 4);
    let lines = sample_with_anonymous(400, 21, 0.2);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let state = tempfile::tempdir().unwrap();
    let mut app = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "{0}/target/classes:{0}/target/lib/*",
            project.display()
        ))
        .arg("dev.leadscore.streams.LeadScoreStreams")
        .args([&broker.bootstrap, &names.input, &names.output, &names.group])
        .arg("rocksdb")
        .arg(state.path())
        .stdout(Stdio::inherit())
        .spawn()
        .expect("java runs");
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(300));
    let _ = Command::new("kill")
        .args(["-TERM", &app.id().to_string()])
        .status();
    app.wait().unwrap();

    let (expected, _) = replay_under(&same_job_rules(), &lines, 0);
    // Leads the job covers: none that `alias` joined (the application keeps
    // an anonymous visitor apart). The application has no wall-clock
    // timers: once decay alone has moved a lead's score in replay (which
    // also moves the score the next step is measured from), the rest of
    // that lead's outputs are not compared.
    let aliased: BTreeSet<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "alias")
        .map(|v| v["userId"].as_str().unwrap().to_string())
        .collect();
    let covered = |lead: &str| !aliased.contains(lead) && !lead.starts_with("anon-");
    let mut replayed: BTreeMap<String, Vec<Said>> = BTreeMap::new();
    let mut decayed = BTreeSet::new();
    for output in &expected {
        let lead = output["lead_id"].as_str().unwrap();
        if output["cause_event_id"].is_null() {
            decayed.insert(lead.to_string());
        } else if let Some((lead, s)) = said(output) {
            if covered(&lead) && !decayed.contains(&lead) {
                replayed.entry(lead).or_default().push(s);
            }
        }
    }
    let mut streamed: BTreeMap<String, Vec<Said>> = BTreeMap::new();
    for record in read_topic(&broker.bootstrap, &names.output, true) {
        if let Some((lead, s)) = said(&record.json()) {
            if covered(&lead) {
                streamed.entry(lead).or_default().push(s);
            }
        }
    }
    for (lead, outputs) in streamed.iter_mut() {
        if decayed.contains(lead) {
            outputs.truncate(replayed.get(lead).map_or(0, Vec::len));
        }
    }
    streamed.retain(|_, outputs| !outputs.is_empty());
    let compared: usize = replayed.values().map(Vec::len).sum();
    assert!(
        replayed.len() >= 200 && compared >= 1000,
        "most of the 400 leads compared: {} leads, {compared} outputs",
        replayed.len()
    );
    assert_eq!(
        replayed.keys().collect::<Vec<_>>(),
        streamed.keys().collect::<Vec<_>>()
    );
    for (lead, outputs) in &replayed {
        assert_eq!(&streamed[lead], outputs, "{lead}");
    }
}
