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

/// The example with `find` replaced: `check` refuses it, saying
/// `message`; the file and `check`'s stderr.
fn check_refuses(dir: &Path, find: &str, replace: &str, message: &str) -> (PathBuf, String) {
    let path = broken_config(dir, find, replace);
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{replace} was accepted");
    assert!(stderr.contains(message), "{replace}: {stderr}");
    (path, stderr)
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
    let fingerprint = stdout
        .split("(fingerprint ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("a fingerprint: {stdout}"));
    assert_eq!(fingerprint.len(), 16, "{fingerprint}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
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
        let (path, stderr) = check_refuses(dir.path(), find, replace, message);
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

/// `FILE:LINE:COLUMN: ` at the start of an error, as numbers.
fn place(stderr: &str, path: &Path) -> (usize, usize) {
    let rest = stderr
        .split(&format!("{}:", path.display()))
        .nth(1)
        .unwrap_or_else(|| panic!("no place in {stderr}"));
    let mut numbers = rest.split(':').map(|n| n.parse::<usize>());
    match (numbers.next(), numbers.next()) {
        (Some(Ok(line)), Some(Ok(column))) if line > 0 && column > 0 => (line, column),
        _ => panic!("no LINE:COLUMN in {stderr}"),
    }
}

#[test]
fn check_places_runtime_setting_errors_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        // (find, replace, line marker in the broken file, expected message)
        (
            "max_batch = 10000",
            "max_batch = 0",
            "max_batch = 0",
            "max_batch must be positive",
        ),
        (
            "commit_interval_ms = 100",
            "commit_interval_ms = \"fast\"",
            "commit_interval_ms = \"fast\"",
            "invalid type",
        ),
        (
            "stuck_after_ms = 120000",
            "stuck_after = 120000",
            "stuck_after = 120000",
            "unknown field `stuck_after`",
        ),
        (
            "listen = \"127.0.0.1:9464\"",
            "listen = \"nowhere\"",
            "listen = \"nowhere\"",
            "is not an address",
        ),
        (
            "level = \"info\"",
            "level = \"leadscore=loudest\"",
            "level = \"leadscore=loudest\"",
            "[logging] level",
        ),
        (
            "create_topics = true",
            "create_topics = true\npartitions = 0",
            "partitions = 0",
            "partitions must be at least 1",
        ),
        (
            "# [kafka.properties]\n# \"security.protocol\" = \"SASL_SSL\"",
            "[kafka.properties]\n\"securty.protocol\" = \"SASL_SSL\"",
            "\"securty.protocol\"",
            "securty.protocol",
        ),
    ];
    for (find, replace, marker, message) in cases {
        let (path, stderr) = check_refuses(dir.path(), find, replace, message);
        let (line, _) = place(&stderr, &path);
        assert_eq!(line, line_of(&path, marker), "{replace}: {stderr}");
    }

    // A byte that is not UTF-8, placed.
    let original = std::fs::read(example_config()).unwrap();
    let mut bytes = original.clone();
    let at = original.windows(9).position(|w| w == b"[scoring]").unwrap();
    bytes.splice(at + 1..at + 1, [0xffu8]);
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, &bytes).unwrap();
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    let line = original[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    assert_eq!(place(&stderr, &path), (line, 2), "{stderr}");
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
    let leads = reference.iter().filter(|s| s.get("lead_id").is_some());
    assert_eq!(leads.count(), 400);
    assert!(reference.len() > 400, "account lines follow the leads'");
    let tiers: std::collections::BTreeSet<&str> = reference
        .iter()
        .map(|s| s["tier"].as_str().unwrap())
        .collect();
    assert!(tiers.len() >= 3, "plausible spread of tiers: {tiers:?}");
    for other in &snapshots[1..] {
        assert_eq!(other.len(), reference.len());
        for (a, b) in reference.iter().zip(other) {
            assert_eq!(a["lead_id"], b["lead_id"]);
            assert_eq!(a["account_id"], b["account_id"]);
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

/// Replays `input` with the example config; the outputs, the snapshot and
/// stderr.
fn replay_file(dir: &Path, input: &Path, extra: &[&str]) -> (String, String, String) {
    let out_path = dir.join("replay-out.jsonl");
    let snap_path = dir.join("replay-snap.jsonl");
    let config = example_config();
    let mut args = vec![
        "replay",
        "-c",
        config.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
        "--snapshot",
        snap_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&snap_path).unwrap(),
        text(&out.stderr),
    )
}

#[test]
fn replay_rejects_events_too_far_past_its_as_of_time_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), 5, None);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    // Every event lies after this --at: each is rejected, by its line.
    let (outputs, _, stderr) = replay_file(dir.path(), &input, &["--at", "2020-01-01T00:00:00Z"]);
    assert!(outputs.is_empty(), "{outputs}");
    assert_eq!(
        stderr
            .matches("in the future, beyond the allowed skew")
            .count(),
        lines,
        "{stderr}"
    );
    assert!(
        stderr.contains("rejected: line 1: event time is"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{lines} rejected")), "{stderr}");

    // One line stamped 9999-12-31 among good ones neither moves the clock
    // nor stops a later --at: it is rejected, the rest score as without it.
    let good = std::fs::read_to_string(&input).unwrap();
    let mut with_bad: Vec<&str> = good.lines().collect();
    let bad = r#"{"type":"track","messageId":"far","userId":"lead-000001","event":"Demo Requested","timestamp":"9999-12-31T00:00:00Z"}"#;
    with_bad.insert(3, bad);
    let bad_input = dir.path().join("with-far-future.jsonl");
    std::fs::write(&bad_input, with_bad.join("\n") + "\n").unwrap();
    let at = ["--at", "2026-01-15T00:00:00Z"];
    let (want_outputs, want_snapshot, _) = replay_file(dir.path(), &input, &at);
    let (got_outputs, got_snapshot, stderr) = replay_file(dir.path(), &bad_input, &at);
    assert!(
        stderr.contains("rejected: line 4: event time is"),
        "{stderr}"
    );
    assert!(stderr.contains("1 rejected"), "{stderr}");
    assert_eq!(got_outputs, want_outputs);
    assert_eq!(got_snapshot, want_snapshot);
}

#[test]
fn replay_rejects_lines_that_are_not_utf8_by_number_and_scores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), 30, None);
    let good = std::fs::read(&input).unwrap();
    let mut bytes = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in good.split_inclusive(|&b| b == b'\n').enumerate() {
        if i % 50 == 7 {
            bytes.extend_from_slice(b"{\"type\":\"track\",\"event\":\"\xff\xfe\"}\n");
            bad_lines.push(bytes.iter().filter(|&&b| b == b'\n').count());
        }
        bytes.extend_from_slice(line);
    }
    assert!(bad_lines.len() > 3);
    let bad_input = dir.path().join("not-utf8.jsonl");
    std::fs::write(&bad_input, bytes).unwrap();
    let (want_outputs, want_snapshot, _) = replay_file(dir.path(), &input, &[]);
    let (got_outputs, got_snapshot, stderr) = replay_file(dir.path(), &bad_input, &[]);
    for line in &bad_lines {
        assert!(
            stderr.contains(&format!("rejected: line {line}: not UTF-8")),
            "line {line}: {stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("{} rejected", bad_lines.len())),
        "{stderr}"
    );
    assert_eq!(got_outputs, want_outputs);
    assert_eq!(got_snapshot, want_snapshot);
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
    // The shipped rules with an [accounts] section of the test's own.
    let original = std::fs::read_to_string(example_config()).unwrap();
    let lead_rules = original.split("\n[accounts]\n").next().unwrap();
    let with_accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &with_accounts,
        format!(
            "{lead_rules}\n[accounts]\nfrom_email_domain = true\n[[accounts.tiers]]\nname = \"quiet\"\nmin_score = 0\n[[accounts.tiers]]\nname = \"surging\"\nmin_score = 20\n"
        ),
    )
    .unwrap();

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

#[test]
fn the_shipped_rules_score_accounts_in_replay() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), 200, None);
    let (outputs, snapshot, _) = replay_file(dir.path(), &input, &[]);
    let accounts: Vec<serde_json::Value> = snapshot
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|s| s.get("lead_id").is_none())
        .collect();
    // Group calls and work email domains both form accounts.
    assert!(
        accounts
            .iter()
            .any(|a| a["account_id"].as_str().unwrap().starts_with("acct-")),
        "{accounts:?}"
    );
    assert!(
        accounts
            .iter()
            .any(|a| a["account_id"].as_str().unwrap().ends_with(".example")),
        "{accounts:?}"
    );
    assert!(accounts.iter().all(|a| a["members"].as_u64().unwrap() > 0));
    let account_crossings = outputs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|o| o["type"] == "threshold_crossed" && o["lead_id"].is_null())
        .count();
    assert!(account_crossings > 0, "no account crossed a tier");
}

#[test]
fn check_against_the_deployed_rules_names_each_change_and_what_it_means_for_state() {
    let deployed = example_config();
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(&deployed).unwrap();

    // A new version of the same content: state restores.
    let renamed = dir.path().join("renamed.toml");
    std::fs::write(
        &renamed,
        shipped.replace(
            "version = \"b2b-saas-2026.11.1\"",
            "version = \"b2b-saas-2026.12.0\"",
        ),
    )
    .unwrap();
    let args = |new: &Path| {
        vec![
            "check".to_string(),
            "--config".into(),
            new.display().to_string(),
            "--against".into(),
            deployed.display().to_string(),
        ]
    };
    let out = run(&args(&renamed)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("no difference in what scores"), "{stdout}");
    assert!(
        stdout.contains("outputs will name the new version"),
        "{stdout}"
    );

    // A rule inserted at the top of the engagement rules and a point
    // changed, version kept: both named, and the warning.
    let at = shipped.find("[[engagement]]").unwrap();
    let edited_text = format!(
        "{}[[engagement]]\nname = \"trade_show_visit\"\ntype = \"track\"\nevent = \"Trade Show Visit\"\npoints = 12\n\n{}",
        &shipped[..at],
        &shipped[at..].replacen("points = 30", "points = 25", 1)
    );
    let edited = dir.path().join("edited.toml");
    std::fs::write(&edited, edited_text).unwrap();
    let out = run(&args(&edited).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "changed: engagement \"demo_requested\"",
        "points=30.0",
        "points=25.0",
        "added: engagement \"trade_show_visit\"",
        "moved: engagement \"demo_requested\" from position 1 to 2",
        "warning: the content differs but the version does not",
        "needs history",
        "engagement rule \"trade_show_visit\" is new",
        "is not restored under these",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }

    // New points alone (and a tier moved): re-scored in place.
    let tuned = dir.path().join("tuned.toml");
    std::fs::write(
        &tuned,
        shipped
            .replacen("points = 30", "points = 25", 1)
            .replace("min_score = 70", "min_score = 65")
            .replace(
                "version = \"b2b-saas-2026.11.1\"",
                "version = \"b2b-saas-2026.12.1\"",
            ),
    )
    .unwrap();
    let out = run(&args(&tuned).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("re-scored in place"), "{stdout}");
    assert!(!stdout.contains("needs history"), "{stdout}");
}
