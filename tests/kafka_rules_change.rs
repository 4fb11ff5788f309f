//! Changing the rules under a running deployment, on Apache Kafka: state in
//! the changelog carries the fingerprint of the rules that wrote it and an
//! outline of those rules, so new points, tiers and the like are re-scored
//! in place at start-up (across a kill -9 in the switch, each switch output
//! published once), a change the state cannot answer is refused (also when
//! the file was edited without a new `version`), and state is never
//! restored against rules whose indexes mean something else; a new
//! `version` of the same content restores as before.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;

const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";
const VERSION_LINE: &str = "version = \"b2b-saas-2026.11.1\"";

/// Runs an instance on `config` until it has caught up, then stops it.
fn run_to_end(broker: &Broker, names: &Names, config: &Path, env: &[(&str, &str)]) {
    let instance = Instance::start(config, env);
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
    run_to_end(broker, &names, &config, &[]);

    // A rule inserted at the top and the next one's points changed, the
    // version kept: the state cannot answer the new rule.
    let silent_edit = edited(&config, "silent.toml", |text| {
        let at = text.find("[[engagement]]").unwrap();
        let points = at + text[at..].find("\npoints = ").unwrap() + 1;
        let end = points + text[points..].find('\n').unwrap();
        format!(
            "{}[[engagement]]\nname = \"trade_show_visit\"\ntype = \"track\"\nevent = \"Trade Show \
             Visit\"\npoints = 12\n\n{}points = 7{}",
            &text[..at],
            &text[at..points],
            &text[end..]
        )
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
            .is_some_and(|l| l.contains("cannot be re-scored in place")
                && l.contains("edited without a new version")
                && l.contains("trade_show_visit")
                && l.contains("is new")
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

/// Leads (with their `LeadState`) and aliases as a changelog holds them,
/// and the outlines of the rules beside them.
struct Changelog {
    leads: std::collections::BTreeMap<String, leadscore::core::lead::LeadState>,
    aliases: Vec<(String, String)>,
    outlines: std::collections::BTreeMap<String, leadscore::core::migration::RulesOutline>,
    /// The fingerprint each lead's latest record was written under.
    stamps: std::collections::BTreeMap<String, String>,
}

fn read_changelog(bootstrap: &str, names: &Names) -> Changelog {
    use leadscore::codec::proto::{decode_changelog, ChangelogValue};
    let mut log = Changelog {
        leads: Default::default(),
        aliases: Vec::new(),
        outlines: Default::default(),
        stamps: Default::default(),
    };
    for record in read_topic(bootstrap, &names.changelog, true) {
        let key = record.key.clone().unwrap();
        if let Some(fingerprint) = key.strip_prefix(leadscore::codec::OUTLINE_KEY_PREFIX) {
            let outline =
                leadscore::core::migration::RulesOutline::from_json(&record.value).unwrap();
            log.outlines.insert(fingerprint.to_string(), outline);
            continue;
        }
        match decode_changelog(&record.value).unwrap() {
            ChangelogValue::Lead { state, rules } => {
                log.stamps.insert(key.clone(), rules.fingerprint);
                log.leads.insert(key, state);
            }
            ChangelogValue::AliasOf(to) => {
                log.leads.remove(&key);
                log.stamps.remove(&key);
                log.aliases.push((key, to));
            }
        }
    }
    log
}

fn json_of(output: &leadscore::core::Output) -> serde_json::Value {
    serde_json::from_str(&leadscore::codec::output::output_to_json(output)).unwrap()
}

fn by_event_id(
    outputs: impl IntoIterator<Item = serde_json::Value>,
) -> (std::collections::BTreeMap<String, serde_json::Value>, usize) {
    let mut map = std::collections::BTreeMap::new();
    let mut repeats = 0;
    for v in outputs {
        if map
            .insert(v["event_id"].as_str().unwrap().to_string(), v)
            .is_some()
        {
            repeats += 1;
        }
    }
    (map, repeats)
}

fn assert_same_outputs(
    what: &str,
    run: &std::collections::BTreeMap<String, serde_json::Value>,
    want: &std::collections::BTreeMap<String, serde_json::Value>,
) {
    let missing: Vec<&String> = want.keys().filter(|k| !run.contains_key(*k)).collect();
    let extra: Vec<&String> = run.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} expected, {} missing (first {:?}), {} extra (first {:?})",
        want.len(),
        missing.len(),
        missing.first().map(|k| &want[*k]),
        extra.len(),
        extra.first().map(|k| &run[*k]),
    );
    for (id, output) in run {
        assert!(
            same_content(output, &want[id]),
            "{what}:\nrun:      {output}\nexpected: {}",
            want[id]
        );
    }
}

#[test]
fn new_points_and_tiers_are_re_scored_in_place_across_a_kill_9_during_the_switch() {
    rescore_across_a_kill(kafka(), "rules-rescore", Switch::Restart { weak: false });
}

#[test]
fn on_tansu_the_switch_keeps_state_exact_and_its_outputs_dedupable() {
    rescore_across_a_kill(
        tansu(),
        "rules-rescore-tansu",
        Switch::Restart { weak: true },
    );
}

/// The same switch without a restart: the file rewritten and SIGHUP sent
/// to the running instance (after a SIGHUP with rules that need history,
/// which is refused while processing goes on under the running rules).
#[test]
fn sighup_switches_the_rules_of_a_running_instance_in_place() {
    rescore_across_a_kill(kafka(), "rules-sighup", Switch::Sighup);
}

/// How the new rules take over.
#[derive(Clone, Copy, PartialEq)]
enum Switch {
    /// Started on the new file, killed with kill -9 once it has re-scored,
    /// started again. On a `weak` broker (tansu), repeats are dropped by
    /// `event_id` first (each with the same content).
    Restart { weak: bool },
    /// The running instance's file rewritten, and SIGHUP.
    Sighup,
}

fn hang_up(instance: &Instance) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &instance.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for_log(log: &Path, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
        < times
    {
        assert!(Instant::now() < deadline, "no {text:?} logged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rules A over the first half of a stream; rules A' (new points, a tier
/// line, the step) over the second half, taken over `how` it says.
fn rescore_across_a_kill(broker: &Broker, test: &str, how: Switch) {
    let weak = how == Switch::Restart { weak: true };
    use leadscore::core::migration::{Migration, RulesOutline};
    use leadscore::core::output::Cause;
    use leadscore::core::{Engine, Outcome, Timestamp};

    let names = Names::new(test);
    // A fixed transactional id: on tansu, where fencing is all there is.
    let txn = [("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "rules-rescore-instance")];
    create_topic(&broker.bootstrap, &names.input, 2);
    let lines = sample(300, 41);
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
    let log = dir.path().join("switch.log");
    let running = match how {
        Switch::Restart { .. } => {
            run_to_end(broker, &names, &config, &txn);
            None
        }
        Switch::Sighup => {
            let instance = Instance::start_logging(&config, &txn, &log);
            wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
            Some(instance)
        }
    };
    let before = read_changelog(&broker.bootstrap, &names);
    let old_rules = leadscore::config::load_rules(&config).unwrap();
    assert_eq!(
        before.outlines.get(&old_rules.fingerprint()),
        Some(&RulesOutline::of(&old_rules)),
        "the changelog keeps an outline of the rules that wrote it"
    );
    assert!(before
        .stamps
        .values()
        .all(|f| *f == old_rules.fingerprint()));

    // What calibrate and sales change: points, a tier's line, the step.
    let tuned = edited(&config, "tuned.toml", |text| {
        text.replace(VERSION_LINE, "version = \"b2b-saas-2026.12.1\"")
            .replacen("points = 30", "points = 24", 1)
            .replacen("min_score = 70", "min_score = 60", 1)
            .replacen("step = 5", "step = 3", 1)
    });
    let new_rules = Arc::new(leadscore::config::load_rules(&tuned).unwrap());
    let migration = Migration::plan(&RulesOutline::of(&old_rules), &new_rules)
        .expect("these changes re-score in place");

    // The switch, as the core makes it from the changelog: the outputs
    // it publishes, and the state the second half of the stream meets.
    let mut engine = Engine::new(new_rules.clone()).track_changes();
    for (id, state) in &before.leads {
        engine.restore_lead(id, migration.lead(state.clone()));
    }
    for (from, to) in &before.aliases {
        engine.restore_alias(from, to);
    }
    engine.take_changes(|_, _| {});
    let switch = engine.rescore(&Cause::RulesChanged(new_rules.fingerprint().into()));
    assert!(
        switch.len() > 10,
        "the change moves leads: {} outputs",
        switch.len()
    );
    let (expected_switch, _) = by_event_id(switch.iter().map(json_of));

    // The second half under the new rules, as the lead tasks apply it.
    let cut = event_time_cut(&lines);
    let decoder = leadscore::codec::Decoder::for_rules(&new_rules);
    let wall = Timestamp(i64::MAX / 2);
    let mut after = Vec::new();
    for line in second {
        for event in decoder
            .decode(line.as_bytes(), leadscore::codec::Encoding::Json)
            .unwrap()
        {
            if let Some(clock) = engine.watermark() {
                after.extend(engine.advance(clock));
            }
            if let Outcome::Applied(outputs) = engine.apply(&event.unwrap(), wall) {
                after.extend(outputs);
            }
        }
    }
    after.extend(engine.advance(Timestamp(cut)));
    let (expected_after, _) = by_event_id(after.iter().map(json_of).filter(|v| at_millis(v) < cut));

    let instance = match running {
        None => {
            // The new rules start, re-score, and are killed mid-switch;
            // started again, they finish the switch and the stream.
            produce_lines(&broker.bootstrap, &names.input, second);
            let mut rng = fastrand::Rng::with_seed(41);
            let switching = Instance::start_logging(&tuned, &txn, &log);
            wait_for_log(&log, "re-scored under the running rules", 1);
            std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
            switching.kill9();
            Instance::start_logging(&tuned, &txn, &log)
        }
        Some(instance) => {
            // A new rule at the top: refused, the running rules stay.
            let needs_history = edited(&config, "needs-history.toml", |text| {
                text.replacen(
                    "[[engagement]]",
                    "[[engagement]]\nname = \"inserted\"\ntype = \"page\"\npoints = 1\n\n[[engagement]]",
                    1,
                )
                .replace(VERSION_LINE, "version = \"b2b-saas-2026.12.0\"")
            });
            std::fs::copy(&needs_history, &config).unwrap();
            hang_up(&instance);
            wait_for_log(&log, "these rules need history", 1);
            // The tuned rules: switched to between two batches.
            std::fs::copy(&tuned, &config).unwrap();
            hang_up(&instance);
            wait_for_log(&log, "re-scored under the running rules", 1);
            produce_lines(&broker.bootstrap, &names.input, second);
            instance
        }
    };
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("changelog written under other rules: re-scoring it in place"),
        "{text}"
    );
    if how == Switch::Sighup {
        assert!(text.contains("SIGHUP: switching rules"), "{text}");
        assert_eq!(
            text.matches("processor started").count(),
            1,
            "switched without a restart:\n{text}"
        );
    }

    let raw = read_topic(&broker.bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&raw);
    eprintln!("{test}: {} outputs, {repeats} repeats", raw.len());
    let outputs: Vec<serde_json::Value> = if weak { &unique } else { &raw }
        .iter()
        .map(Record::json)
        .collect();
    let version = |v: &serde_json::Value| v["rules_version"].as_str().unwrap().to_string();
    let (old_outputs, old_repeats) = by_event_id(
        outputs
            .iter()
            .filter(|v| version(v) == "b2b-saas-2026.11.1")
            .cloned(),
    );
    let (switch_outputs, switch_repeats) = by_event_id(
        outputs
            .iter()
            .filter(|v| v["cause"] == "rules_changed")
            .cloned(),
    );
    let (new_outputs, new_repeats) = by_event_id(
        outputs
            .iter()
            .filter(|v| version(v) == "b2b-saas-2026.12.1" && v["cause"] != "rules_changed")
            .filter(|v| at_millis(v) < cut)
            .cloned(),
    );
    assert_eq!(
        (old_repeats, switch_repeats, new_repeats),
        (0, 0, 0),
        "no output repeated"
    );
    assert_eq!(
        old_outputs.len() + switch_outputs.len() + new_outputs.len(),
        outputs
            .iter()
            .filter(|v| !(version(v) == "b2b-saas-2026.12.1"
                && v["cause"] != "rules_changed"
                && at_millis(v) >= cut))
            .count(),
        "every output is the old rules', the switch's or the new rules'"
    );
    assert!(switch_outputs
        .values()
        .all(|v| version(v) == "b2b-saas-2026.12.1" && v["cause_event_id"].is_null()));
    // The old rules' outputs are a replay of the first half under them.
    let (replayed_first, _) = replay(first, event_time_cut(first));
    let first_cut = event_time_cut(first);
    let (expected_old, _) = by_event_id(
        replayed_first
            .into_iter()
            .filter(|v| at_millis(v) < first_cut),
    );
    let old_before_cut: std::collections::BTreeMap<String, serde_json::Value> = old_outputs
        .into_iter()
        .filter(|(_, v)| at_millis(v) < first_cut)
        .collect();
    assert_same_outputs("old rules", &old_before_cut, &expected_old);
    assert_same_outputs("the switch", &switch_outputs, &expected_switch);
    assert_same_outputs("new rules", &new_outputs, &expected_after);

    // The changelog now holds every lead under the new rules, and its
    // numbers are a replay of the whole stream under them.
    let final_log = read_changelog(&broker.bootstrap, &names);
    assert!(
        final_log
            .stamps
            .values()
            .all(|f| *f == new_rules.fingerprint()),
        "every lead written back under the new rules"
    );
    assert!(final_log.outlines.contains_key(&new_rules.fingerprint()));
    let mut restored = Engine::new(new_rules.clone());
    for (id, state) in &final_log.leads {
        restored.restore_lead(id, state.clone());
    }
    for (from, to) in &final_log.aliases {
        restored.restore_alias(from, to);
    }
    let mut replayer = leadscore::replay::Replayer::new(&new_rules, false);
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(i as u64 + 1, line, &mut |_| {}, &mut |r| {
            panic!("replay rejected {r}")
        });
    }
    let at = Timestamp(cut + 86_400_000);
    let want = replayer.engine().snapshot(at);
    let got = restored.snapshot(at);
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
        assert!(
            got.lead_id == want.lead_id
                && close(got.score, want.score)
                && close(got.fit, want.fit)
                && close(got.engagement, want.engagement),
            "changelog {got:?}\nreplay    {want:?}"
        );
    }
}
