//! `leadscore promote` on Apache Kafka: a live deployment (rules A) and
//! its shadow (rules B, with a rule that needs history) are both killed
//! mid-stream at different offsets; `promote` is killed during its drain
//! and run again; the promoted deployment then scores the rest. On the
//! live output topic, every input event's outputs come once, from A below
//! the cut-over offset and from B from it on, plus one cut-over crossing
//! per lead whose tier differs from the one A last published; the retired
//! deployment refuses to start.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;
use leadscore::codec::proto::{decode_changelog, ChangelogValue};
use leadscore::core::Timestamp;

const BIN: &str = env!("CARGO_BIN_EXE_leadscore");
const EVENT_TIME: &str = "timer_clock = \"event_time\"\n";
const HANDOVER_KEY: &str = "\u{0}leadscore-handover\u{0}";

fn promote(new: &Path, live: &Path, write: &Path, log: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["promote", "--config"])
        .arg(new)
        .arg("--live")
        .arg(live)
        .arg("--write")
        .arg(write)
        .env("RUST_LOG", "info,librdkafka=error,rdkafka=error")
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        ));
    command
}

fn json_of(records: &[Record]) -> Vec<serde_json::Value> {
    records.iter().map(Record::json).collect()
}

/// What a promotion scenario leaves for its checks.
struct Promoted {
    bootstrap: String,
    names: Names,
    shadow_names: Names,
    lines: Vec<String>,
    first: usize,
    second: usize,
    live: PathBuf,
    new: PathBuf,
    _dir: tempfile::TempDir,
}

/// How the deployments stop before the promotion.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL of live and shadow mid-stream, and of `promote` in its
    /// drain: for a broker whose aborted transactions stay hidden.
    Kill9,
    /// SIGTERM of live and shadow mid-stream (each commits what it
    /// published), `promote` left to finish: what the README asks of a
    /// broker whose aborted transactions stay visible (tansu).
    Term,
}

/// [`promote_scenario`] on Apache Kafka with kills.
fn promote_across_kills(
    test: &str,
    rules_text: &str,
    kafka_extra: &str,
    new_rules: impl Fn(&str) -> String,
) -> Promoted {
    promote_scenario(
        kafka(),
        Stop::Kill9,
        test,
        rules_text,
        kafka_extra,
        new_rules,
    )
}

/// Live (`rules_text`) and shadow (`new_rules` of its file) score the
/// first half of a sample; both are stopped (`stop`) mid-way through the
/// next quarter, at their own offsets; `promote` runs to the end (with
/// `Stop::Kill9`, after being killed during its drain), and once more,
/// which only says so; the retired deployment refuses to start; the
/// promoted one scores the last quarter.
fn promote_scenario(
    broker: &Broker,
    stop: Stop,
    test: &str,
    rules_text: &str,
    kafka_extra: &str,
    new_rules: impl Fn(&str) -> String,
) -> Promoted {
    let bootstrap = &broker.bootstrap;
    let names = Names::new(test);
    create_topic(bootstrap, &names.input, 2);
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 300,
        seed: 67,
        start: Timestamp(now_ms() - 20 * 86_400_000),
        days: 19,
        anonymous_share: 0.0,
        sales_share: SALES_SHARE,
        ..Default::default()
    });
    let (first, rest) = lines.split_at(lines.len() / 2);
    let (second, third) = rest.split_at(rest.len() / 2);
    produce_lines(bootstrap, &names.input, first);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("leadscore.log");
    let live = write_config_with_rules(
        dir.path(),
        rules_text,
        bootstrap,
        &names,
        "exactly_once",
        EVENT_TIME,
    );
    let text = std::fs::read_to_string(&live).unwrap().replacen(
        "[kafka]\n",
        &format!("[kafka]\n{kafka_extra}"),
        1,
    );
    std::fs::write(&live, &text).unwrap();
    let new = dir.path().join("new.toml");
    std::fs::write(&new, new_rules(&text)).unwrap();
    let shadow_names = names.shadow();

    let live_instance = Instance::start_logging(&live, &[], &log);
    let shadow_instance = Instance::start_shadow(&new, &[], &log);
    wait_caught_up(bootstrap, &names, Duration::from_secs(180));
    wait_caught_up(bootstrap, &shadow_names, Duration::from_secs(180));
    // Both stop mid-stream, each at its own offsets.
    produce_lines(bootstrap, &names.input, second);
    let promoted = dir.path().join("promoted.toml");
    match stop {
        Stop::Kill9 => {
            shadow_instance.kill9();
            std::thread::sleep(Duration::from_millis(400));
            live_instance.kill9();
            // Killed in its drain (past the 6 s the dead static members
            // keep their groups), then run to the end.
            let mut interrupted = promote(&new, &live, &promoted, &log).spawn().unwrap();
            std::thread::sleep(Duration::from_secs(9));
            interrupted.kill().unwrap();
            interrupted.wait().unwrap();
            assert!(!promoted.exists(), "written only once promoted");
        }
        Stop::Term => {
            assert!(shadow_instance.terminate().success());
            std::thread::sleep(Duration::from_millis(400));
            assert!(live_instance.terminate().success());
        }
    }
    let said = promote(&new, &live, &promoted, &log).output().unwrap();
    let stdout = String::from_utf8_lossy(&said.stdout).to_string();
    assert!(
        said.status.success(),
        "{stdout}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(stdout.contains("Promoted"), "{stdout}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("drained to the cut-over offsets"), "{said}");
    let again = promote(&new, &live, &promoted, &log).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("Already promoted"));

    // The retired deployment refuses to start.
    let mut retired = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&live)
        .env("RUST_LOG", "error")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while retired.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the retired deployment ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let refusal = retired.wait_with_output().unwrap();
    assert!(!refusal.status.success());
    assert!(
        String::from_utf8_lossy(&refusal.stderr).contains("retired"),
        "{}",
        String::from_utf8_lossy(&refusal.stderr)
    );

    // The promoted deployment scores the rest onto the live output.
    produce_lines(bootstrap, &names.input, third);
    let promoted_instance = Instance::start_logging(&promoted, &[], &log);
    let promoted_names = Names {
        output: names.output.clone(),
        dead_letter: names.dead_letter.clone(),
        ..shadow_names.clone()
    };
    wait_caught_up(bootstrap, &promoted_names, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(1));
    assert!(promoted_instance.terminate().success());
    Promoted {
        bootstrap: bootstrap.clone(),
        names,
        shadow_names,
        lines: lines.clone(),
        first: first.len(),
        second: second.len(),
        live,
        new,
        _dir: dir,
    }
}

/// Every crossing on the live output, per lead or account, in order:
/// each starts where the one before ended (the first at the lowest tier).
/// Returns the last tier of each, and how many cut-over crossings each
/// had.
fn crossing_chains(
    outputs: &[serde_json::Value],
    subject: &str,
    lowest: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, usize>) {
    let mut tier_of: BTreeMap<String, String> = BTreeMap::new();
    let mut switched: BTreeMap<String, usize> = BTreeMap::new();
    for output in outputs {
        if output["type"] != "threshold_crossed" {
            continue;
        }
        let id = match (output["lead_id"].as_str(), subject) {
            (Some(lead), "lead") => lead,
            (None, "account") => output["account_id"].as_str().unwrap(),
            _ => continue,
        };
        if output["cause"] == "rules_changed" {
            *switched.entry(id.to_string()).or_default() += 1;
        }
        let known = tier_of.get(id).map_or(lowest, String::as_str);
        assert_eq!(
            output["previous_tier"].as_str().unwrap(),
            known,
            "a crossing that does not start where the last one ended: {output}"
        );
        tier_of.insert(id.to_string(), output["tier"].as_str().unwrap().to_string());
    }
    (tier_of, switched)
}

#[test]
fn promote_hands_the_live_output_over_once_across_kill_9() {
    let promoted = promote_across_kills(
        "promote",
        &common::example_lead_rules_text(),
        "",
        rules_needing_history,
    );
    check_handover(&promoted, false);
}

/// On tansu, whose aborted transactions stay visible, with both
/// deployments stopped by SIGTERM before the promotion (as the README
/// asks there): after dropping repeats by `event_id`, the same as on
/// Apache Kafka.
#[test]
fn promote_on_tansu_after_sigterm_hands_over_once_after_dropping_repeats() {
    let promoted = promote_scenario(
        tansu(),
        Stop::Term,
        "promote-tansu",
        &common::example_lead_rules_text(),
        "",
        rules_needing_history,
    );
    check_handover(&promoted, true);
}

/// Every input event's outputs on the live topic once, by the rules in
/// force at its offset, plus one cut-over crossing per lead whose tier
/// differs; each lead's crossings chained to the tier its promoted state
/// holds. `dedup`: drop repeats by `event_id` first (for a broker whose
/// aborted transactions stay visible).
fn check_handover(promoted: &Promoted, dedup: bool) {
    let Promoted {
        bootstrap,
        names,
        shadow_names,
        lines,
        first,
        second,
        live,
        new,
        ..
    } = &promoted;
    let bootstrap = bootstrap.as_str();
    let read_outputs = |topic: &str| {
        let records = read_topic(bootstrap, topic, true);
        if dedup {
            let (unique, repeats) = drop_repeats(&records);
            eprintln!("{topic}: {repeats} repeats dropped");
            unique
        } else {
            records
        }
    };
    let cut_over: BTreeMap<i32, i64> = read_topic(bootstrap, &names.changelog, true)
        .iter()
        .find(|r| r.key.as_deref() == Some(HANDOVER_KEY))
        .map(|r| serde_json::from_value(r.json()["cut_over"].clone()).unwrap())
        .expect("a handover record in the retired changelog");
    let a_rules = leadscore::config::load_rules(live).unwrap();
    let b_rules = leadscore::config::load_rules(new).unwrap();
    let live_out = read_outputs(&names.output);
    let of_version = |version: &str| -> Vec<Record> {
        live_out
            .iter()
            .filter(|r| r.json()["rules_version"] == version)
            .cloned()
            .collect()
    };
    let (a_out, b_all) = (of_version(&a_rules.version), of_version(&b_rules.version));
    assert_eq!(a_out.len() + b_all.len(), live_out.len());
    let (switch, b_out): (Vec<Record>, Vec<Record>) = b_all
        .into_iter()
        .partition(|r| r.json()["cause"] == "rules_changed");

    // A: the outputs of the events below the cut-over.
    let position: HashMap<Vec<u8>, (i32, i64)> = read_topic(bootstrap, &names.input, true)
        .into_iter()
        .map(|r| (r.value, (r.partition, r.offset)))
        .collect();
    let before: Vec<String> = lines
        .iter()
        .filter(|l| {
            let (p, offset) = position[l.as_bytes()];
            offset < cut_over[&p]
        })
        .cloned()
        .collect();
    assert!(
        before.len() >= *first && before.len() <= first + second,
        "the cut-over lies in the second part: {} of {} events before it",
        before.len(),
        lines.len()
    );
    let cut_a = event_time_cut(&before);
    let (expected_a, _) = replay_under(&a_rules, &before, cut_a);
    assert_exactly_replay(&a_out, &expected_a, cut_a);

    // B: what the shadow published before the cut-over and the promoted
    // deployment after it are, together, B's outputs for the whole input,
    // each once.
    let cut = event_time_cut(lines);
    let (expected_b, replayer_b) = replay_under(&b_rules, lines, cut);
    let mut shadow_and_promoted = read_outputs(&shadow_names.output);
    shadow_and_promoted.extend(b_out);
    assert_exactly_replay(&shadow_and_promoted, &expected_b, cut);
    let last = replayer_b.watermark().unwrap().millis();
    assert_same_state(
        &changelog_snapshot_under(&b_rules, bootstrap, shadow_names, last),
        &replayer_b.engine().snapshot(Timestamp(last)),
    );

    // The cut-over crossings: one per lead at most, and with them every
    // lead's crossings on the live topic form one chain, from the lowest
    // tier to the tier the promoted state last published.
    assert!(!switch.is_empty(), "the new rules move some leads");
    let lowest = a_rules.tier_name(0).to_string();
    let (tier_of, switched) = crossing_chains(&json_of(&live_out), "lead", &lowest);
    assert!(switched.values().all(|&n| n == 1), "{switched:?}");
    eprintln!(
        "cut-over {cut_over:?}: {} of {} events before it; outputs on the live topic: {} by A, \
         {} cut-over crossings, then {} by B",
        before.len(),
        lines.len(),
        a_out.len(),
        switch.len(),
        live_out.len() - a_out.len() - switch.len()
    );
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for record in read_topic(bootstrap, &shadow_names.changelog, true) {
        let key = record.key.clone().unwrap();
        if key.starts_with('\0') {
            continue;
        }
        match (!record.value.is_empty()).then(|| decode_changelog(&record.value).unwrap()) {
            Some(ChangelogValue::Lead { state, .. }) => {
                let tier = b_rules.tier_name(usize::from(state.tier)).to_string();
                published.insert(key, tier);
            }
            _ => {
                published.remove(&key);
            }
        }
    }
    assert!(!published.is_empty());
    for (lead, tier) in &published {
        assert_eq!(
            tier_of.get(lead).unwrap_or(&lowest),
            tier,
            "lead {lead}: the live topic's last tier is the one its promoted state published"
        );
    }
}

/// The same with `[accounts]` (and the shipped rules' lifecycle and
/// filters): accounts are handed over too. Account outputs come from two
/// partitions' leads in their own order, so they are not compared with a
/// replay here (`kafka_accounts.rs` does that); what is checked is what a
/// subscriber relies on across the cut-over: no output twice, and every
/// lead's and every account's crossings chained from tier to tier, ending
/// at the tier its promoted state holds.
#[test]
fn promote_hands_accounts_over_too() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let rules_text = example.split("\n[kafka]\n").next().unwrap();
    let tag = format!("promote-accounts-{:08x}", fastrand::u32(..));
    let topics = format!(
        "account_updates_topic = \"{tag}-account-updates\"\n\
         account_changelog_topic = \"{tag}-account-changelog\"\n"
    );
    // A higher "buying" line for accounts too, so that some move.
    let promoted = promote_across_kills(&tag, rules_text, &topics, |text| {
        let buying = "name = \"buying\"\nmin_score = 85";
        assert!(text.contains(buying));
        rules_needing_history(text).replace(buying, "name = \"buying\"\nmin_score = 110")
    });
    let bootstrap = promoted.bootstrap.as_str();
    let new_rules = leadscore::config::load_rules(&promoted.new).unwrap();
    let live_rules = leadscore::config::load_rules(&promoted.live).unwrap();
    assert!(new_rules.accounts.is_some());

    let live_out = json_of(&read_topic(bootstrap, &promoted.names.output, true));
    let mut ids = std::collections::BTreeSet::new();
    for output in &live_out {
        assert!(
            ids.insert(output["event_id"].as_str().unwrap().to_string()),
            "published twice: {output}"
        );
    }
    let lowest_lead = live_rules.tier_name(0).to_string();
    let (_, lead_switches) = crossing_chains(&live_out, "lead", &lowest_lead);
    let account_tiers = |rules: &leadscore::core::Rules| {
        rules
            .accounts
            .as_ref()
            .unwrap()
            .profile
            .tier_name(0)
            .to_string()
    };
    let lowest_account = account_tiers(&live_rules);
    assert_eq!(lowest_account, account_tiers(&new_rules));
    let (account_tier_of, account_switches) =
        crossing_chains(&live_out, "account", &lowest_account);
    assert!(
        !account_switches.is_empty(),
        "the new rules move some accounts"
    );
    assert!(lead_switches
        .values()
        .chain(account_switches.values())
        .all(|&n| n == 1));

    // Each account ends at the tier its promoted state published.
    let changelog = format!("{tag}-account-changelog-shadow");
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for record in read_topic(bootstrap, &changelog, true) {
        let key = record.key.clone().unwrap();
        if key.starts_with('\0') {
            continue;
        }
        if record.value.is_empty() {
            published.remove(&key);
            continue;
        }
        let (state, _) = leadscore::codec::account::decode_account_state(&record.value).unwrap();
        let profile = &new_rules.accounts.as_ref().unwrap().profile;
        published.insert(key, profile.tier_name(usize::from(state.tier)).to_string());
    }
    assert!(!published.is_empty());
    for (account, tier) in &published {
        assert_eq!(
            account_tier_of.get(account).unwrap_or(&lowest_account),
            tier,
            "account {account}: the live topic's last tier is the one its promoted state published"
        );
    }
    eprintln!(
        "cut-over crossings: {} of leads, {} of accounts ({} accounts: {:?})",
        lead_switches.len(),
        account_switches.len(),
        published.len(),
        published
            .values()
            .collect::<std::collections::BTreeSet<_>>()
    );
}
