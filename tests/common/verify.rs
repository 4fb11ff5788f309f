//! Checking a processor's outputs and state against `replay`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::kafka::{read_topic, Names, Record};
use leadscore::codec::output::output_to_json;
use leadscore::codec::proto::{decode_changelog, ChangelogValue};
use leadscore::core::{Engine, Timestamp};
use leadscore::replay::Replayer;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn rules() -> leadscore::core::Rules {
    super::example_rules()
}

/// Sample traffic without anonymous browsing: every lead's outputs then
/// follow from its own partition's order alone, so they equal `replay`'s
/// exactly (merges across partitions are tested on their own, in
/// `kafka_aliases.rs`).
pub fn sample(leads: usize, seed: u64) -> Vec<String> {
    sample_with_anonymous(leads, seed, 0.0)
}

/// Sample traffic where `share` of the leads browse anonymously first,
/// and a tenth of the leads meet sales: dispositions that recycle, suppress
/// alerts, end them (customers) and record outcomes, so every test of the
/// runtime covers lifecycle state too.
pub fn sample_with_anonymous(leads: usize, seed: u64, share: f64) -> Vec<String> {
    leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        seed,
        anonymous_share: share,
        sales_share: SALES_SHARE,
        ..Default::default()
    })
}

pub const SALES_SHARE: f64 = 0.1;

/// `replay`'s outputs (as JSON values) and final engine for `lines`, with
/// decay up to `cut`.
pub fn replay(lines: &[String], cut: i64) -> (Vec<serde_json::Value>, Replayer) {
    replay_under(&rules(), lines, cut)
}

/// [`replay`] under other rules.
pub fn replay_under(
    rules: &leadscore::core::Rules,
    lines: &[String],
    cut: i64,
) -> (Vec<serde_json::Value>, Replayer) {
    let mut replayer = Replayer::new(rules, false);
    let mut outputs = Vec::new();
    let mut emit = |o: &leadscore::core::Output| {
        outputs.push(serde_json::from_str(&output_to_json(o)).unwrap())
    };
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(i as u64 + 1, line, &mut emit, &mut |r| {
            panic!("replay rejected {r}")
        });
    }
    // Decay up to `cut`, or to the last event if that is later (outputs
    // after `cut` are not compared).
    let at = replayer
        .watermark()
        .map_or(Timestamp(cut), |w| w.max(Timestamp(cut)));
    replayer.finish(Some(at), &mut emit).unwrap();
    (outputs, replayer)
}

/// For processors on `timer_clock = "event_time"`: a day before the last
/// event, a time every partition's event time has passed, so decay up to
/// it has fired in the processor as in replay.
pub fn event_time_cut(lines: &[String]) -> i64 {
    let last = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["timestamp"].as_str().and_then(Timestamp::parse_rfc3339))
        .max()
        .expect("events with timestamps");
    last.millis() - 86_400_000
}

pub fn at_millis(output: &serde_json::Value) -> i64 {
    Timestamp::parse_rfc3339(output["at"].as_str().unwrap())
        .unwrap()
        .millis()
}

/// Equal, numbers within 1e-9: where the processor has folded closed cap
/// windows (replay keeps them open), sums can differ in the last bit.
pub fn same_content(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-9,
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_content(x, y))
        }
        (Object(x), Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_content(v, w)))
        }
        _ => a == b,
    }
}

/// Asserts the run's outputs are exactly the replay's (those before
/// `cut`): no id twice, none missing, none extra, the same content.
pub fn assert_exactly_replay(run: &[Record], expected: &[serde_json::Value], cut: i64) {
    let mut got = BTreeMap::<String, serde_json::Value>::new();
    let mut repeats = 0;
    for v in run.iter().map(Record::json) {
        if at_millis(&v) >= cut {
            continue;
        }
        if got
            .insert(v["event_id"].as_str().unwrap().to_string(), v)
            .is_some()
        {
            repeats += 1;
        }
    }
    let want: BTreeMap<String, serde_json::Value> = expected
        .iter()
        .filter(|v| at_millis(v) < cut)
        .map(|v| (v["event_id"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(
        want.len(),
        expected.iter().filter(|v| at_millis(v) < cut).count(),
        "replay ids are unique"
    );
    let missing: Vec<&String> = want.keys().filter(|id| !got.contains_key(*id)).collect();
    let extra: Vec<&String> = got.keys().filter(|id| !want.contains_key(*id)).collect();
    let differing: Vec<&String> = want
        .iter()
        .filter(|(id, w)| got.get(*id).is_some_and(|g| !same_content(g, w)))
        .map(|(id, _)| id)
        .collect();
    let show = |id: Option<&&String>| {
        id.map(|id| format!("\nreplay: {:?}\nrun:    {:?}", want.get(*id), got.get(*id)))
            .unwrap_or_default()
    };
    assert!(
        repeats == 0 && missing.is_empty() && extra.is_empty() && differing.is_empty(),
        "of {} expected outputs: {repeats} repeated, {} missing, {} extra, {} different{}{}{}",
        want.len(),
        missing.len(),
        extra.len(),
        differing.len(),
        show(missing.first()),
        show(extra.first()),
        show(differing.first()),
    );
}

/// Every lead in both, with the same tier, grade and account, and numbers
/// within 1e-9 (see `same_content`).
pub fn assert_same_state(
    run: &[leadscore::core::engine::LeadSnapshot],
    replay: &[leadscore::core::engine::LeadSnapshot],
) {
    if let Some(difference) = state_difference(run, replay) {
        panic!("{difference}");
    }
}

/// How `run` differs from `replay` (see `assert_same_state`), if it does.
pub fn state_difference(
    run: &[leadscore::core::engine::LeadSnapshot],
    replay: &[leadscore::core::engine::LeadSnapshot],
) -> Option<String> {
    if run.len() != replay.len() {
        return Some(format!(
            "lead count: run {}, replay {}",
            run.len(),
            replay.len()
        ));
    }
    for (a, b) in run.iter().zip(replay) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9;
        let same = a.lead_id == b.lead_id
            && a.account_id == b.account_id
            && a.tier == b.tier
            && a.grade == b.grade
            && a.last_event_at == b.last_event_at
            && close(a.score, b.score)
            && close(a.fit, b.fit)
            && close(a.engagement, b.engagement)
            && a.contributions.len() == b.contributions.len()
            && a.contributions.iter().all(|c| {
                b.contributions
                    .iter()
                    .any(|d| d.rule == c.rule && close(d.points, c.points))
            });
        if !same {
            return Some(format!("lead state differs:\nrun:    {a:?}\nreplay: {b:?}"));
        }
    }
    None
}

/// The leads' state as the changelog holds it, advanced to `at` and
/// evaluated there.
pub fn changelog_snapshot(
    bootstrap: &str,
    names: &Names,
    at: i64,
) -> Vec<leadscore::core::engine::LeadSnapshot> {
    changelog_snapshot_under(&rules(), bootstrap, names, at)
}

/// [`changelog_snapshot`] under other rules.
pub fn changelog_snapshot_under(
    rules: &leadscore::core::Rules,
    bootstrap: &str,
    names: &Names,
    at: i64,
) -> Vec<leadscore::core::engine::LeadSnapshot> {
    let mut engine = Engine::new(Arc::new(rules.clone()));
    for record in read_topic(bootstrap, &names.changelog, true) {
        let key = record.key.clone().unwrap();
        if key.starts_with('\0') {
            continue; // rules outlines and erasures: not lead state
        }
        if record.value.is_empty() {
            engine.forget_lead(&key); // a tombstone: expired or erased
            continue;
        }
        match decode_changelog(&record.value).unwrap() {
            ChangelogValue::Lead { state, .. } => engine.restore_lead(&key, state),
            ChangelogValue::AliasOf(to) => engine.restore_alias(&key, &to),
        }
    }
    // Decay still due up to `at` (a processor on event time stops at its
    // partition's last event) is fired here, by the same core.
    engine.advance(Timestamp(at));
    engine.snapshot(Timestamp(at))
}

/// Drops repeated outputs by `event_id`, asserting that every repeat has
/// the same content as the first; returns the unique ones and the number
/// of repeats dropped.
pub fn drop_repeats(records: &[Record]) -> (Vec<Record>, usize) {
    let mut first: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut unique = Vec::new();
    let mut repeats = 0;
    for r in records {
        let id = r.json()["event_id"].as_str().unwrap().to_string();
        match first.get(&id) {
            Some(value) => {
                assert_eq!(
                    value,
                    &r.value,
                    "a repeat of {id} with different content:\n{}\n{}",
                    String::from_utf8_lossy(value),
                    String::from_utf8_lossy(&r.value)
                );
                repeats += 1;
            }
            None => {
                first.insert(id, r.value.clone());
                unique.push(r.clone());
            }
        }
    }
    (unique, repeats)
}

/// Asserts the processor's state, as its changelog holds it, equals the
/// replay's, both advanced to the replay's last event time.
pub fn assert_changelog_equals_replay(bootstrap: &str, names: &Names, replayer: &Replayer) {
    let last = replayer.watermark().expect("replayed events").millis();
    assert_same_state(
        &changelog_snapshot(bootstrap, names, last),
        &replayer.engine().snapshot(Timestamp(last)),
    );
}

/// On a broker with full transactions: the `read_committed` outputs are
/// `replay`'s of `lines` (with event-time decay up to their last event),
/// none repeated or missing, and the changelog holds replay's state.
pub fn assert_run_equals_replay(bootstrap: &str, names: &Names, lines: &[String]) {
    let cut = event_time_cut(lines);
    let (expected, replayer) = replay(lines, cut);
    assert_exactly_replay(&read_topic(bootstrap, &names.output, true), &expected, cut);
    assert_changelog_equals_replay(bootstrap, names, &replayer);
}

/// [`assert_run_equals_replay`] under other rules.
pub fn assert_run_equals_replay_under(
    rules: &leadscore::core::Rules,
    bootstrap: &str,
    names: &Names,
    lines: &[String],
) {
    let cut = event_time_cut(lines);
    let (expected, replayer) = replay_under(rules, lines, cut);
    assert_exactly_replay(&read_topic(bootstrap, &names.output, true), &expected, cut);
    let last = replayer.watermark().expect("replayed events").millis();
    assert_same_state(
        &changelog_snapshot_under(rules, bootstrap, names, last),
        &replayer.engine().snapshot(Timestamp(last)),
    );
}

/// `lines` (sample traffic, in time order) with every `every`-th
/// identified lead erased a second after its last event, by an `erase`
/// call (message id `erase:<lead>:<ms>`, as a tombstone's erasure has);
/// the last two events of every other one of them arrive just after the
/// erasure, late. Returns the lines and the leads erased.
pub fn with_erasures(lines: &[String], every: usize) -> (Vec<String>, Vec<String>) {
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let time = |v: &serde_json::Value| {
        Timestamp::parse_rfc3339(v["timestamp"].as_str().unwrap())
            .unwrap()
            .millis()
    };
    let mut last_event: BTreeMap<&str, (i64, Vec<usize>)> = BTreeMap::new();
    for (i, v) in events.iter().enumerate() {
        if let Some(lead) = v["userId"].as_str() {
            let entry = last_event.entry(lead).or_default();
            entry.0 = entry.0.max(time(v));
            entry.1.push(i);
        }
    }
    let erased: Vec<(&str, i64, Vec<usize>)> = last_event
        .iter()
        .step_by(every)
        .enumerate()
        .map(|(n, (lead, (last, at)))| {
            let late = if n % 2 == 0 {
                at[at.len().saturating_sub(2)..].to_vec()
            } else {
                Vec::new()
            };
            (*lead, last + 1000, late)
        })
        .collect();
    let late: std::collections::BTreeSet<usize> = erased
        .iter()
        .flat_map(|(_, _, late)| late.clone())
        .collect();
    let mut erasures: Vec<(i64, String, Vec<usize>)> = erased
        .iter()
        .map(|(lead, at, late)| {
            let line = serde_json::json!({
                "type": "erase",
                "messageId": format!("erase:{lead}:{at}"),
                "userId": lead,
                "timestamp": Timestamp(*at).to_rfc3339(),
            })
            .to_string();
            (*at, line, late.clone())
        })
        .collect();
    erasures.sort();
    let mut out = Vec::new();
    let mut next = erasures.into_iter().peekable();
    for (i, v) in events.iter().enumerate() {
        while let Some((at, line, late_ones)) = next.next_if(|(at, _, _)| *at < time(v)) {
            let _ = at;
            out.push(line);
            out.extend(late_ones.iter().map(|&j| lines[j].clone()));
        }
        if !late.contains(&i) {
            out.push(lines[i].clone());
        }
    }
    for (_, line, late_ones) in next {
        out.push(line);
        out.extend(late_ones.iter().map(|&j| lines[j].clone()));
    }
    let leads = erased.iter().map(|(lead, _, _)| lead.to_string()).collect();
    (out, leads)
}

/// The as-of time a `leadscore diff` report states.
pub fn diff_as_of(markdown: &str) -> Timestamp {
    markdown
        .split("As of ")
        .nth(1)
        .and_then(|rest| rest.split(". ").next())
        .and_then(Timestamp::parse_rfc3339)
        .expect("an as-of time")
}

/// Leads per tier, live and shadow, from a `leadscore diff` report's
/// table (tiers with none left out).
pub fn diff_tiers(markdown: &str) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut live = BTreeMap::new();
    let mut shadow = BTreeMap::new();
    let table = markdown
        .split("## Leads per tier")
        .nth(1)
        .and_then(|rest| rest.split("##").next())
        .expect("a table of leads per tier");
    for row in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| tier"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (tier, a, b): (&str, usize, usize) = (
            cells[1],
            cells[2].parse().unwrap(),
            cells[3].parse().unwrap(),
        );
        if a > 0 {
            live.insert(tier.to_string(), a);
        }
        if b > 0 {
            shadow.insert(tier.to_string(), b);
        }
    }
    (live, shadow)
}

/// Leads per tier under `rules` after `lines`, decayed to `as_of`, by
/// `replay`.
pub fn tiers_of(
    rules: &leadscore::core::Rules,
    lines: &[String],
    as_of: Timestamp,
) -> BTreeMap<String, usize> {
    let mut replayer = Replayer::new(rules, false);
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(i as u64 + 1, line, &mut |_| {}, &mut |r| panic!("{r}"));
    }
    let (_, leads) = replayer.finish(Some(as_of), &mut |_| {}).unwrap();
    let mut counts = BTreeMap::new();
    for lead in leads {
        *counts.entry(lead.tier.to_string()).or_default() += 1;
    }
    counts
}
