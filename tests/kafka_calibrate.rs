//! `leadscore calibrate --from-kafka` on Apache Kafka: the input topic read
//! from its beginning (JSON and protobuf records, tombstones among them)
//! calibrates exactly as the same history from a file does.

mod common;

use std::process::Command;

use common::kafka::*;
use common::verify::*;
use leadscore::codec::{Decoder, Encoding};
use prost::Message as _;

const BIN: &str = env!("CARGO_BIN_EXE_leadscore");

#[test]
fn calibrate_reads_the_input_topic_as_it_reads_a_file() {
    let broker = kafka();
    let names = Names::new("calibrate");
    create_topic(&broker.bootstrap, &names.input, 4);
    // Sales outcomes for a third of the leads, recorded by the example's
    // lifecycle rules; a few leads erased.
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 1500,
        seed: 41,
        anonymous_share: 0.2,
        sales_share: 0.3,
        ..Default::default()
    });
    let (lines, erased) = with_erasures(&lines, 60);
    assert!(!erased.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n")).unwrap();

    // On the topic: every fifth event as protobuf, every other erasure as
    // a tombstone.
    let decoder = Decoder::keep_all();
    let records: Vec<Produced> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = v["userId"]
                .as_str()
                .or(v["anonymousId"].as_str())
                .unwrap()
                .to_string();
            if v["type"] == "erase" && i % 2 == 0 {
                let at =
                    leadscore::core::Timestamp::parse_rfc3339(v["timestamp"].as_str().unwrap());
                return Produced::Tombstone {
                    key,
                    at_ms: at.unwrap().millis(),
                };
            }
            if i % 5 == 0 {
                let event = decoder
                    .decode(line.as_bytes(), Encoding::Json)
                    .unwrap()
                    .pop()
                    .unwrap()
                    .unwrap();
                let bytes = leadscore::codec::proto::event_to_wire(&event).encode_to_vec();
                let header = (
                    "content-type".to_string(),
                    "application/x-protobuf".to_string(),
                );
                return Produced::Value((Some(key), bytes, vec![header]));
            }
            Produced::Value((Some(key), line.clone().into_bytes(), Vec::new()))
        })
        .collect();
    produce_all(&broker.bootstrap, &names.input, &records);

    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let rules = example.split("\n[kafka]\n").next().unwrap();
    let config = write_config_with_rules(
        dir.path(),
        rules,
        &broker.bootstrap,
        &names,
        "exactly_once",
        "",
    );
    let calibrate = |source: &[&std::ffi::OsStr], out: &str| {
        let out = dir.path().join(out);
        std::fs::create_dir_all(&out).unwrap();
        let run = Command::new(BIN)
            .arg("calibrate")
            .arg("--config")
            .arg(&config)
            .args(source)
            .arg("--report")
            .arg(out.join("report"))
            .arg("--out-rules")
            .arg(out.join("rules.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).to_string();
        assert!(run.status.success(), "{stderr}");
        let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
        (read("report/report.md"), read("rules.toml"), stderr)
    };
    let (from_file, file_rules, _) = calibrate(&["--events".as_ref(), events.as_os_str()], "file");
    let (from_topic, topic_rules, said) = calibrate(&["--from-kafka".as_ref()], "topic");
    assert!(
        said.contains(&format!(
            "reading {} records of topic {}",
            lines.len(),
            names.input
        )),
        "{said}"
    );
    assert!(from_file.contains("AUC"), "{from_file}");
    assert_eq!(from_topic, from_file);
    assert_eq!(topic_rules, file_rules);
}
