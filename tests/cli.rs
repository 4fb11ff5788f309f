//! The `check` and `replay` commands as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_leadscore");

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("leadscore runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The example config with `find` replaced by `replace` (which must occur).
fn broken_config(dir: &Path, find: &str, replace: &str) -> PathBuf {
    let original = std::fs::read_to_string(example_config()).unwrap();
    assert!(
        original.contains(find),
        "example config no longer has {find:?}"
    );
    let path = dir.join("broken.toml");
    std::fs::write(&path, original.replacen(find, replace, 1)).unwrap();
    path
}

fn line_of(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in file")
        + 1
}

#[test]
fn check_accepts_the_example_and_summarises_it() {
    let out = run(&["check", "--config", example_config().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("rules version: b2b-saas-2026.11.1"),
        "{stdout}"
    );
    assert!(stdout.contains("tiers (4):"));
    assert!(stdout.contains(
        "sql          score >= 85 if grade B or better and any of [budget, authority] known"
    ));
    assert!(stdout.contains("ok: "));
}

#[test]
fn check_rejects_bad_files_with_the_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        // (find, replace, line marker in the broken file, expected message)
        (
            "step = 5 ",
            "steps = 5 ",
            "steps = 5",
            "unknown field `steps`",
        ),
        (
            "regex = '(?i)\\b(vp|",
            "regex = '(?i)\\b(vp[|",
            "regex = '(?i)\\b(vp[|",
            "bad regex",
        ),
        (
            "min_score = 70",
            "min_score = 30",
            "min_score = 30",
            "tiers out of order",
        ),
        (
            "half_life = \"30d\"",
            "half_life = \"-3d\"",
            "half_life = \"-3d\"",
            "negative",
        ),
        (
            "half_life = \"21d\"",
            "half_life = \"three weeks\"",
            "half_life = \"three weeks\"",
            "not a duration",
        ),
        (
            "min_grade = \"B\"",
            "min_grade = \"E\"",
            "min_grade = \"E\"",
            "min_grade must be A, B, C or D",
        ),
        (
            "name = \"pricing_page\"",
            "name = \"demo_requested\"",
            "name = \"demo_requested\"\ntype = \"page\"",
            "used twice",
        ),
        (
            "prefix = \"/pricing\" }",
            "prefix = \"/pricing\", contains = \"x\" }",
            "contains = \"x\"",
            "several comparisons",
        ),
        (
            "context.page.path\", prefix = \"/contact\"",
            "page.path\", prefix = \"/contact\"",
            "\"page.path\", prefix",
            "unknown field `page.path`",
        ),
        ("B = 30", "B = 50", "[grades]", "A >= B >= C"),
    ];
    for (find, replace, marker, message) in cases {
        let path = broken_config(dir.path(), find, replace);
        let out = run(&["check", "--config", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{replace} was accepted");
        assert!(stderr.contains(message), "{replace}: {stderr}");
        let marker_line = marker.lines().next().unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        let expected_line = if marker.contains('\n') {
            content
                .find(marker)
                .map(|at| content[..at].lines().count() + 1)
                .unwrap()
        } else {
            line_of(&path, marker_line)
        };
        // The reported line is the offending entry's (for a table entry, the
        // line where the entry starts, at most a few lines above).
        let reported: usize = stderr
            .split(&format!("{}:", path.display()))
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line in {stderr}"));
        assert!(
            reported <= expected_line && expected_line - reported <= 6,
            "{replace}: reported line {reported}, offending line {expected_line}: {stderr}"
        );
    }
}

#[test]
fn check_names_a_missing_file() {
    let out = run(&["check", "--config", "/nonexistent/rules.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/rules.toml: cannot read"));
}

fn write_sample(dir: &Path, leads: usize, shuffle_seed: Option<u64>) -> PathBuf {
    let mut lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        ..Default::default()
    });
    if let Some(seed) = shuffle_seed {
        fastrand::Rng::with_seed(seed).shuffle(&mut lines);
    }
    let path = dir.join(format!("events-{}.jsonl", shuffle_seed.unwrap_or(0)));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_writes_outputs_and_a_snapshot_that_shuffling_does_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config();
    let mut snapshots = Vec::new();
    for seed in [None, Some(1), Some(2)] {
        let input = write_sample(dir.path(), 400, seed);
        let out_path = dir.path().join("out.jsonl");
        let snap_path = dir.path().join("snap.jsonl");
        let out = run(&[
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out_path.to_str().unwrap(),
            "--snapshot",
            snap_path.to_str().unwrap(),
            "--at",
            "2026-01-15T00:00:00Z",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("0 rejected"),
            "{}",
            text(&out.stderr)
        );
        let outputs = jsonl(&out_path);
        assert!(outputs.len() > 400, "{}", outputs.len());
        for o in &outputs {
            for field in [
                "type",
                "event_id",
                "lead_id",
                "account_id",
                "score",
                "fit",
                "engagement",
                "grade",
                "tier",
                "previous_tier",
                "direction",
                "delta",
                "at",
                "cause_event_id",
                "contributions",
                "rules_version",
            ] {
                assert!(o.get(field).is_some(), "{field} missing in {o}");
            }
        }
        snapshots.push(jsonl(&snap_path));
    }
    let reference = &snapshots[0];
    assert_eq!(reference.len(), 400);
    let tiers: std::collections::BTreeSet<&str> = reference
        .iter()
        .map(|s| s["tier"].as_str().unwrap())
        .collect();
    assert!(tiers.len() >= 3, "plausible spread of tiers: {tiers:?}");
    for other in &snapshots[1..] {
        assert_eq!(other.len(), reference.len());
        for (a, b) in reference.iter().zip(other) {
            assert_eq!(a["lead_id"], b["lead_id"]);
            assert_eq!(a["grade"], b["grade"]);
            assert_eq!(a["as_of"], b["as_of"]);
            let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{a} vs {b}");
        }
    }
}

#[test]
fn replay_reports_rejected_lines_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"type":"track","messageId":"1","userId":"u","event":"Demo Requested","timestamp":"2026-11-25T10:00:00Z"}"#,
            "garbage",
            "",
            r#"{"type":"track","messageId":"2","userId":"u","timestamp":"2026-11-25T10:00:00Z"}"#,
            r#"{"type":"track","messageId":"1","userId":"u","event":"Demo Requested","timestamp":"2026-11-25T10:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = run(&[
        "replay",
        "-c",
        example_config().to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rejected: line 2: invalid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rejected: line 4: missing required field `event`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 lines: 2 events, 1 scored, 1 duplicates, 2 rejected"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one score change to stdout: {stdout}"
    );
}

#[test]
fn replay_refuses_an_as_of_time_before_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), 5, None);
    let out = run(&[
        "replay",
        "-c",
        example_config().to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--at",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("before the latest event time"));
}

#[test]
fn run_with_a_broken_setting_exits_non_zero_naming_it() {
    let cases: [(&str, &str, &str); 4] = [
        ("LEADSCORE_HTTP_LISTEN", "nowhere", "[http] listen"),
        (
            "LEADSCORE_LOGGING_FORMAT",
            "xml",
            "LEADSCORE_LOGGING_FORMAT",
        ),
        ("LEADSCORE_PROCESSING_MAX_BATCH", "0", "max_batch"),
        (
            "LEADSCORE_KAFKA_PARTITIONS",
            "many",
            "LEADSCORE_KAFKA_PARTITIONS",
        ),
    ];
    for (variable, value, named) in cases {
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(example_config())
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{variable}={value}: {stderr}");
        assert!(stderr.contains(named), "{variable}={value}: {stderr}");
        assert!(
            stderr.contains("leadscore.toml"),
            "the file is named: {stderr}"
        );
    }
}

#[test]
fn replay_snapshots_accounts_and_emits_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let with_accounts = broken_config(
        dir.path(),
        "\n[kafka]\n",
        "\n[accounts]\nfrom_email_domain = true\n[[accounts.tiers]]\nname = \"quiet\"\nmin_score = 0\n[[accounts.tiers]]\nname = \"surging\"\nmin_score = 20\n\n[kafka]\n",
    );

    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"type":"identify","messageId":"i1","userId":"ann","traits":{"email":"ann@acme.io","title":"VP Sales"},"timestamp":"2026-11-20T10:00:00Z"}"#,
            "\n",
            r#"{"type":"track","messageId":"t1","userId":"ann","event":"Demo Requested","timestamp":"2026-11-20T11:00:00Z"}"#,
            "\n"
        ),
    )
    .unwrap();
    let snapshot = dir.path().join("state.jsonl");
    let out = run(&[
        "replay",
        "-c",
        with_accounts.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--snapshot",
        snapshot.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&snapshot)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let account = lines
        .iter()
        .find(|l| l.get("lead_id").is_none())
        .expect("an account line");
    assert_eq!(account["account_id"], "acme.io");
    assert_eq!(account["members"], 1);
    assert_eq!(account["tier"], "surging");
    let outputs: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(outputs.iter().any(|o| o["account_id"] == "acme.io"
        && o["lead_id"].is_null()
        && o["type"] == "threshold_crossed"));
}

#[test]
fn check_catches_a_misspelt_librdkafka_property() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(example_config()).unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        format!("{original}\n[kafka.properties]\n\"securty.protocol\" = \"ssl\"\n"),
    )
    .unwrap();
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("securty.protocol"), "{stderr}");
    assert!(stderr.contains("[kafka.properties]"), "{stderr}");
}
