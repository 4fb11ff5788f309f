//! Several scores per lead (`[[scores]]`): each score of a file is scored
//! as a file holding only it would score it, its outputs say which score
//! they are about, and a file without `[[scores]]` is unchanged.

mod common;

use std::path::Path;

use leadscore::codec::output::{account_snapshot_to_json, output_to_json, snapshot_to_json};
use leadscore::core::{Output, Rules};
use leadscore::replay::Replayer;
use proptest::prelude::*;
use toml::{Table, Value};

/// The example rules file, accounts and filters included, as a table.
fn example() -> Table {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let rules = text.split("\n[kafka]\n").next().unwrap();
    rules.parse::<Table>().unwrap()
}

/// What one score of a file has of its own.
#[derive(Clone, Debug)]
struct Own {
    name: &'static str,
    /// `[scores.scoring]` overrides.
    scoring: Table,
    grades: Value,
    tiers: Value,
    engagement: Value,
    shared_fit: bool,
    fit: Option<Value>,
}

/// The example file cut into what every score shares and what its one
/// score has of its own.
fn cut(mut file: Table) -> (Table, Own) {
    let own = Own {
        name: "enterprise",
        scoring: Table::new(),
        grades: file.remove("grades").unwrap(),
        tiers: file.remove("tiers").unwrap(),
        engagement: file.remove("engagement").unwrap(),
        shared_fit: true,
        fit: None,
    };
    (file, own)
}

fn entry(own: &Own) -> Value {
    let mut entry = Table::new();
    entry.insert("name".into(), own.name.into());
    if !own.scoring.is_empty() {
        entry.insert("scoring".into(), Value::Table(own.scoring.clone()));
    }
    entry.insert("shared_fit".into(), own.shared_fit.into());
    entry.insert("grades".into(), own.grades.clone());
    entry.insert("tiers".into(), own.tiers.clone());
    entry.insert("engagement".into(), own.engagement.clone());
    if let Some(fit) = &own.fit {
        entry.insert("fit".into(), fit.clone());
    }
    Value::Table(entry)
}

/// A file of `shared` sections and these scores.
fn with_scores(shared: &Table, scores: &[&Own]) -> String {
    let mut file = shared.clone();
    file.insert(
        "scores".into(),
        Value::Array(scores.iter().map(|own| entry(own)).collect()),
    );
    toml::to_string(&file).unwrap()
}

/// A file without `[[scores]]` that says what `own` says.
fn plain(shared: &Table, own: &Own) -> String {
    let mut file = shared.clone();
    let scoring = file
        .entry("scoring")
        .or_insert_with(|| Value::Table(Table::new()));
    for (key, value) in &own.scoring {
        scoring
            .as_table_mut()
            .unwrap()
            .insert(key.clone(), value.clone());
    }
    let mut fit = if own.shared_fit {
        file.get("fit")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if let Some(own_fit) = &own.fit {
        fit.extend(own_fit.as_array().unwrap().iter().cloned());
    }
    file.insert("fit".into(), Value::Array(fit));
    file.insert("grades".into(), own.grades.clone());
    file.insert("tiers".into(), own.tiers.clone());
    file.insert("engagement".into(), own.engagement.clone());
    toml::to_string(&file).unwrap()
}

fn scores(text: &str) -> Vec<Rules> {
    leadscore::config::parse_scores(text, Path::new("scores.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

struct Replayed {
    outputs: Vec<Output>,
    /// Lead and account snapshot lines at the end.
    snapshot: Vec<String>,
}

fn replay(text: &str, lines: &[String]) -> Replayed {
    let mut replayer = Replayer::of_scores(&scores(text), false);
    let mut outputs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(
            i as u64 + 1,
            line,
            &mut |o| outputs.push(o.clone()),
            &mut |r| panic!("rejected {r}"),
        );
    }
    let (at, leads) = replayer
        .finish(None, &mut |o| outputs.push(o.clone()))
        .unwrap();
    let snapshot = leads
        .iter()
        .map(snapshot_to_json)
        .chain(
            replayer
                .account_snapshot(at)
                .iter()
                .map(account_snapshot_to_json),
        )
        .collect();
    Replayed { outputs, snapshot }
}

fn json(outputs: &[Output]) -> Vec<String> {
    outputs.iter().map(output_to_json).collect()
}

/// `outputs` as a file without `[[scores]]` would have them: no score
/// name, and ids of the unnamed score.
fn unnamed(outputs: &[Output]) -> Vec<Output> {
    outputs
        .iter()
        .map(|o| Output {
            score_name: None,
            event_id: uuid::Uuid::nil(),
            ..o.clone()
        })
        .collect()
}

/// A second score unlike the example's: points scaled rule by rule, its
/// own base and half-life, tiers moved, and perhaps fit rules of its own
/// in place of the shared ones.
#[derive(Clone, Debug)]
struct Variation {
    scales: Vec<f64>,
    base: Option<f64>,
    half_life: Option<&'static str>,
    tier_shift: f64,
    own_fit: bool,
}

fn variation() -> impl Strategy<Value = Variation> {
    (
        proptest::collection::vec(prop::sample::select(vec![0.0, 0.5, 1.0, 1.5, 3.0]), 20),
        proptest::option::of(prop::sample::select(vec![-10.0, 5.0, 20.0])),
        proptest::option::of(prop::sample::select(vec!["7d", "45d", "none"])),
        prop::sample::select(vec![-20.0, -5.0, 0.0, 10.0]),
        any::<bool>(),
    )
        .prop_map(|(scales, base, half_life, tier_shift, own_fit)| Variation {
            scales,
            base,
            half_life,
            tier_shift,
            own_fit,
        })
}

fn second_score(shared: &Table, first: &Own, v: &Variation) -> Own {
    let mut own = first.clone();
    own.name = "self_serve";
    if let Some(base) = v.base {
        own.scoring.insert("base".into(), base.into());
    }
    if let Some(half_life) = v.half_life {
        own.scoring.insert("half_life".into(), half_life.into());
    }
    for (rule, scale) in own
        .engagement
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(v.scales.iter().cycle())
    {
        let points = rule.get("points").and_then(Value::as_float).or_else(|| {
            rule.get("points")
                .and_then(Value::as_integer)
                .map(|p| p as f64)
        });
        let rule = rule.as_table_mut().unwrap();
        rule.insert("points".into(), (points.unwrap() * scale).into());
        // A capped rule's cap must stay positive.
        if let Some(cap) = rule.get_mut("cap").and_then(Value::as_table_mut) {
            if *scale == 0.0 {
                rule.remove("cap");
            } else {
                let cap_points = cap["points"]
                    .as_float()
                    .or_else(|| cap["points"].as_integer().map(|p| p as f64))
                    .unwrap();
                cap.insert("points".into(), (cap_points * scale).into());
            }
        }
    }
    for tier in own.tiers.as_array_mut().unwrap().iter_mut().skip(1) {
        let tier = tier.as_table_mut().unwrap();
        let min = tier["min_score"]
            .as_float()
            .or_else(|| tier["min_score"].as_integer().map(|p| p as f64))
            .unwrap();
        tier.insert("min_score".into(), (min + v.tier_shift).into());
    }
    if v.own_fit {
        // The shared rules under the same names (accounts read their
        // groups), worth other points.
        own.shared_fit = false;
        let mut fit = shared["fit"].clone();
        for rule in fit.as_array_mut().unwrap() {
            let rule = rule.as_table_mut().unwrap();
            let points = rule["points"]
                .as_float()
                .or_else(|| rule["points"].as_integer().map(|p| p as f64))
                .unwrap();
            rule.insert("points".into(), (points * 1.5).into());
        }
        own.fit = Some(fit);
    }
    own
}

fn sample(seed: u64) -> Vec<String> {
    leadscore::sample::generate(&leadscore::sample::SampleConfig {
        seed,
        leads: 60,
        days: 20,
        anonymous_share: 0.2,
        sales_share: 0.2,
        companies: 4,
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Two scores over the same events: each gives, output for output and
    /// snapshot line for snapshot line, what a file holding only it gives;
    /// and that is what the same rules without `[[scores]]` give, but for
    /// the score's name and the ids it scopes.
    #[test]
    fn each_score_is_scored_as_a_file_of_its_own(v in variation(), seed in 0u64..1000) {
        let (shared, first) = cut(example());
        let second = second_score(&shared, &first, &v);
        let lines = sample(seed);

        let both = replay(&with_scores(&shared, &[&first, &second]), &lines);
        let mut total = 0;
        for own in [&first, &second] {
            let alone = replay(&with_scores(&shared, &[own]), &lines);
            let of_own: Vec<Output> = both
                .outputs
                .iter()
                .filter(|o| o.score_name.as_deref() == Some(own.name))
                .cloned()
                .collect();
            total += of_own.len();
            prop_assert_eq!(json(&of_own), json(&alone.outputs), "score {}", own.name);
            let name = format!("\"score_name\":\"{}\"", own.name);
            let snapshot: Vec<&String> =
                both.snapshot.iter().filter(|l| l.contains(&name)).collect();
            prop_assert_eq!(snapshot, alone.snapshot.iter().collect::<Vec<_>>());

            let without = replay(&plain(&shared, own), &lines);
            prop_assert_eq!(unnamed(&alone.outputs), unnamed(&without.outputs));
            prop_assert!(without.outputs.iter().all(|o| o.score_name.is_none()));
            let named = alone.snapshot.iter().map(|l| l.replace(&format!("{name},"), ""));
            prop_assert_eq!(named.collect::<Vec<_>>(), without.snapshot);
        }
        prop_assert_eq!(total, both.outputs.len(), "every output names its score");
        prop_assert!(total > 0);
        // Ids are unique across scores: subscribers dedup by id alone.
        let mut ids: Vec<_> = both.outputs.iter().map(|o| o.event_id).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), both.outputs.len());
    }
}

/// A file without `[[scores]]`: one unnamed score, and outputs and ids as
/// before scores could be named (the id of a pinned output is unchanged).
#[test]
fn a_file_without_scores_is_one_unnamed_score() {
    let text = toml::to_string(&example()).unwrap();
    let parsed = scores(&text);
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].score_name, None);
    let one = common::rules(&text);
    assert_eq!(one.fingerprint(), parsed[0].fingerprint());
    let outputs = replay(&text, &sample(3)).outputs;
    assert!(!outputs.is_empty());
    for output in &outputs {
        let json = output_to_json(output);
        assert!(!json.contains("score_name"), "{json}");
        if let Some(lead_id) = &output.lead_id {
            assert_eq!(
                output.event_id,
                leadscore::core::output::output_id(None, lead_id, output.kind, &output.cause),
                "{json}"
            );
        }
    }
}

/// Named scores have fingerprints of their own (so state of one is never
/// read as another's), and a rules file with several cannot be read where
/// one is expected.
#[test]
fn named_scores_are_told_apart() {
    let (shared, first) = cut(example());
    let second = Own {
        name: "self_serve",
        ..first.clone()
    };
    let text = with_scores(&shared, &[&first, &second]);
    let parsed = scores(&text);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].score_name.as_deref(), Some("enterprise"));
    assert_ne!(parsed[0].fingerprint(), parsed[1].fingerprint());
    let unnamed = scores(&plain(&shared, &first));
    assert_ne!(parsed[0].fingerprint(), unnamed[0].fingerprint());
    let error = leadscore::config::parse_rules(&text, Path::new("two.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("holds 2 scores") && error.contains("enterprise, self_serve"),
        "{error}"
    );
}

fn error_of(text: &str) -> String {
    leadscore::config::parse_scores(text, Path::new("scores.toml"))
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

const SHARED: &str = r#"
version = "v1"
[grades]
A = 30
B = 20
C = 10
[[fit]]
name = "vp"
points = 20
when = [{ field = "title", contains = "vp" }]
"#;

const SCORE: &str = r#"
[[scores]]
name = "NAME"
[[scores.tiers]]
name = "cold"
min_score = 0
[[scores.tiers]]
name = "hot"
min_score = 40
[[scores.engagement]]
name = "demo"
points = 30
event = "Demo Requested"
"#;

fn score(name: &str) -> String {
    SCORE.replace("NAME", name)
}

#[test]
fn score_sections_are_checked_with_their_score_named() {
    let ok = format!("{SHARED}{}{}", score("a"), score("b"));
    assert_eq!(scores(&ok).len(), 2);

    let twice = format!("{SHARED}{}{}", score("a"), score("a"));
    assert!(error_of(&twice).contains("score `a` is defined twice"));

    let bad_name = format!("{SHARED}{}", score("self serve"));
    assert!(error_of(&bad_name).contains("letters, digits"));

    let top_level = format!(
        "{SHARED}[[engagement]]\nname = \"x\"\npoints = 1\nevent = \"X\"\n{}",
        score("a")
    );
    assert!(error_of(&top_level).contains("engagement rules belong to a score"));

    let top_tiers = format!(
        "{SHARED}[[tiers]]\nname = \"cold\"\nmin_score = 0\n{}",
        score("a")
    );
    assert!(error_of(&top_tiers).contains("tiers belong to a score"));

    let no_tiers = format!("{SHARED}[[scores]]\nname = \"a\"\n");
    assert!(error_of(&no_tiers).contains("score `a`: at least one tier"));

    let no_grades = format!(
        "{}{}",
        SHARED.replace("[grades]\nA = 30\nB = 20\nC = 10\n", ""),
        score("a")
    );
    assert!(error_of(&no_grades).contains("score `a`: no grades"));
    let own_grades = no_grades.replacen(
        "[[scores.tiers]]",
        "[scores.grades]\nA = 30\nB = 20\nC = 10\n[[scores.tiers]]",
        1,
    );
    assert_eq!(scores(&own_grades).len(), 1);

    // An error inside a score says which score.
    let bad_rule = format!(
        "{SHARED}{}{}",
        score("a"),
        score("b").replace("points = 30", "points = 1e9")
    );
    let error = error_of(&bad_rule);
    assert!(error.contains("score `b`: "), "{error}");

    // A velocity filter watches a rule in every score.
    let filtered = format!(
        "{SHARED}[filters]\n[[filters.burst]]\nrule = \"demo\"\nmax_hits = 3\nwithin = \"5s\"\n{}{}",
        score("a"),
        score("b").replace("name = \"demo\"", "name = \"demo_b\"")
    );
    let error = error_of(&filtered);
    assert!(
        error.contains("score `b`: ") && error.contains("demo"),
        "{error}"
    );

    // Scoring settings: the file's, overridden per score.
    let overridden = format!(
        "{SHARED}[scoring]\nbase = 5\nstep = 2\n{}{}",
        score("a"),
        score("b").replacen(
            "[[scores.tiers]]",
            "[scores.scoring]\nbase = 10\n[[scores.tiers]]",
            1
        )
    );
    let parsed = scores(&overridden);
    assert_eq!(parsed[0].settings.base, 5.0);
    assert!(parsed[0].lifecycle.is_empty());
    assert_eq!(parsed[1].settings.base, 10.0);
    assert_eq!(parsed[1].settings.step, 2.0);

    // Dispositions: the file's for every score, then a score's own (the
    // outcome calibration fits that score against, say).
    let lifecycle = format!(
        "{SHARED}[[lifecycle]]\nname = \"won\"\nevent = \"Deal Won\"\noutcome = \"won\"\n{}{}\
         [[scores.lifecycle]]\nname = \"upgraded\"\nevent = \"Plan Upgraded\"\noutcome = \"won\"\n",
        score("a"),
        score("b")
    );
    let parsed = scores(&lifecycle);
    let names = |rules: &Rules| {
        rules
            .lifecycle
            .iter()
            .map(|r| r.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&parsed[0]), ["won"]);
    assert_eq!(names(&parsed[1]), ["won", "upgraded"]);
}

/// The commands as a user runs them on a file of two scores: `check`
/// summarises each, `replay` scores both, `run --score` names the file's
/// scores when it names none of them.
#[test]
fn the_commands_on_a_file_of_two_scores() {
    let bin = env!("CARGO_BIN_EXE_leadscore");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two.toml");
    let full = toml::to_string(&example()).unwrap();
    std::fs::write(&config, common::scores::two_scores(&full)).unwrap();
    let config = config.to_str().unwrap();
    let command = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, stdout, stderr) = command(&["check", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("score: enterprise") && stdout.contains("score: self_serve"));

    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, sample(5).join("\n")).unwrap();
    let outputs = dir.path().join("outputs.jsonl");
    let snapshot = dir.path().join("snapshot.jsonl");
    let (ok, _, stderr) = command(&[
        "replay",
        "--config",
        config,
        "--input",
        events.to_str().unwrap(),
        "--output",
        outputs.to_str().unwrap(),
        "--snapshot",
        snapshot.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for file in [&outputs, &snapshot] {
        let text = std::fs::read_to_string(file).unwrap();
        for score in ["enterprise", "self_serve"] {
            let named = format!("\"score_name\":\"{score}\"");
            assert!(text.contains(&named), "{} names {score}", file.display());
        }
        assert!(text.lines().all(|l| l.contains("\"score_name\":")));
    }

    let (ok, _, stderr) = command(&["run", "--config", config, "--score", "retail"]);
    assert!(!ok);
    assert!(
        stderr.contains("--score retail: the file's scores are enterprise, self_serve"),
        "{stderr}"
    );
}

/// The README's example of two scores, as a user would run it.
#[test]
fn the_readme_example_of_two_scores_holds() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("<!-- readme:scores -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /readme:scores -->").next())
        .expect("the README's example of scores");
    let text = block
        .trim()
        .strip_prefix("```toml")
        .and_then(|t| t.strip_suffix("```"))
        .unwrap();
    let parsed = scores(text);
    let names: Vec<_> = parsed.iter().map(|r| r.score_name.as_deref()).collect();
    assert_eq!(names, [Some("analytics"), Some("platform")]);
    let fit = |rules: &Rules| {
        rules
            .fit
            .iter()
            .map(|r| r.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(fit(&parsed[0]), ["title_vp"]);
    assert_eq!(fit(&parsed[1]), ["enterprise_size"]);
    assert_eq!(parsed[1].lifecycle.len(), 1);

    // A VP who starts a trial and shares dashboards: a product-qualified
    // lead for analytics; a demo request alone leaves platform cold.
    let t = |minutes: i64| leadscore::core::Timestamp(common::T0 + minutes * 60_000).to_rfc3339();
    let lines: Vec<String> = [
        serde_json::json!({"type": "identify", "messageId": "m1", "userId": "ada", "timestamp": t(0),
                           "traits": {"title": "VP Data", "company": {"employees": 300}}}),
        serde_json::json!({"type": "track", "messageId": "m2", "userId": "ada", "timestamp": t(1),
                           "event": "Trial Started"}),
        serde_json::json!({"type": "track", "messageId": "m3", "userId": "ada", "timestamp": t(2),
                           "event": "Dashboard Shared"}),
        serde_json::json!({"type": "track", "messageId": "m4", "userId": "ada", "timestamp": t(3),
                           "event": "Demo Requested"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect();
    let outputs = replay(text, &lines).outputs;
    let crossings: Vec<(Option<&str>, &str)> = outputs
        .iter()
        .filter(|o| o.kind == leadscore::core::OutputKind::ThresholdCrossed)
        .map(|o| (o.score_name.as_deref(), &*o.tier))
        .collect();
    assert_eq!(crossings, [(Some("analytics"), "pql")]);
    let last = |score: &str| {
        outputs
            .iter()
            .rfind(|o| o.score_name.as_deref() == Some(score))
            .map(|o| ((o.score * 10.0).round() / 10.0, &*o.tier))
    };
    assert_eq!(last("analytics"), Some((65.0, "pql")));
    assert_eq!(last("platform"), Some((40.0, "cold")));
}
