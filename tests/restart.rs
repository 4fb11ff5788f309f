//! A restart in the middle of the stream, in the core, as `leadscore run`
//! goes through it: batches of events applied with their input positions,
//! decay fired on the partition's event time before each event and at each
//! batch's end, changelog records encoded after every batch. A crash cuts a batch's changelog
//! short (its outputs were sent); a new engine restores what was written,
//! resumes with the watermark the commit recorded (or none, where the
//! broker drops commit metadata) and reads the input again from the
//! committed position, in other batches. Every output it publishes is one
//! the uninterrupted run published, with the same content, none is
//! missing, and the leads end the same.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::verify::{rules, sample, state_difference};
use leadscore::codec::output::output_to_json;
use leadscore::codec::proto::{decode_changelog, encode_changelog, ChangelogValue};
use leadscore::codec::{Decoder, Encoding};
use leadscore::core::{Engine, Event, Outcome, Output, Timestamp};
use proptest::prelude::*;

/// One changelog record: the key and the encoded value.
type Record = (String, Vec<u8>);

struct Run {
    engine: Engine,
    /// Outputs as `replay` prints them, by `event_id`.
    outputs: BTreeMap<String, String>,
    repeated_with_other_content: Vec<String>,
}

impl Run {
    fn new(engine: Engine) -> Run {
        Run {
            engine,
            outputs: BTreeMap::new(),
            repeated_with_other_content: Vec::new(),
        }
    }

    fn publish(&mut self, output: &Output) {
        let json = output_to_json(output);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let id = value["event_id"].as_str().unwrap().to_string();
        if let Some(first) = self.outputs.insert(id.clone(), json.clone()) {
            if first != json {
                self.repeated_with_other_content.push(id);
            }
        }
    }

    /// Applies `events[range]` in one batch, as the processor does, and
    /// returns the batch's changelog records.
    fn batch(&mut self, events: &[Event], range: std::ops::Range<usize>) -> Vec<Record> {
        let wall = Timestamp(i64::MAX / 2);
        for i in range {
            if let Some(clock) = self.engine.watermark() {
                for output in self.engine.advance(clock) {
                    self.publish(&output);
                }
            }
            if let Outcome::Applied(outputs) =
                self.engine.apply_from(&events[i], wall, Some(i as i64))
            {
                outputs.iter().for_each(|o| self.publish(o));
            }
        }
        if let Some(clock) = self.engine.watermark() {
            for output in self.engine.advance(clock) {
                self.publish(&output);
            }
        }
        let mut records = Vec::new();
        let stamp = self.engine.rules().stamp();
        self.engine.take_changes(|id, change| {
            records.push((id.to_string(), encode_changelog(&change, &stamp)));
        });
        records
    }
}

fn events(leads: usize, seed: u64) -> Vec<Event> {
    let decoder = Decoder::for_rules(&rules());
    sample(leads, seed)
        .iter()
        .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
        .map(|event| event.unwrap())
        .collect()
}

fn batches(len: usize, start: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (start..len)
        .step_by(size)
        .map(|from| from..(from + size).min(len))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_restart_after_a_cut_changelog_publishes_what_the_run_would_have(
        seed in 0u64..1000,
        first_batch in 20usize..400,
        later_batch in 1usize..400,
        crash_at in 0.05f64..0.95,
        written in 0.0f64..1.0,
        watermark_committed in any::<bool>(),
        late_arrivals in any::<bool>(),
    ) {
        let rules = Arc::new(rules());
        // Resuming with no watermark is exact only while event times rise.
        let (events, watermark_committed) = if late_arrivals {
            (out_of_order(events(60, seed), seed, 3 * 86_400_000), true)
        } else {
            (events(60, seed), watermark_committed)
        };
        let mut whole = Run::new(Engine::new(rules.clone()).track_changes());
        let mut changelog: Vec<Record> = Vec::new();
        let mut crashed = None;
        for range in batches(events.len(), 0, first_batch) {
            let watermark = whole.engine.watermark();
            let records = whole.batch(&events, range.clone());
            if crashed.is_none() && range.end as f64 >= crash_at * events.len() as f64 {
                // This batch's outputs went out; part of its changelog did.
                let kept = (records.len() as f64 * written) as usize;
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut cut: Vec<Record> = records.clone();
                rng.shuffle(&mut cut);
                cut.truncate(kept);
                let mut restored = changelog.clone();
                restored.extend(cut);
                crashed = Some((range.start, watermark, restored, whole.outputs.clone()));
            }
            changelog.extend(records);
        }
        let (resume_at, watermark, restored, sent_before_crash) = crashed.expect("a crash point");

        let mut engine = Engine::new(rules.clone()).track_changes();
        for (key, value) in &restored {
            match decode_changelog(value).unwrap() {
                ChangelogValue::Lead { state, .. } => engine.restore_lead(key, state),
                ChangelogValue::AliasOf(to) => engine.restore_alias(key, &to),
            }
        }
        engine.resume_watermark(if watermark_committed { watermark } else { None });
        let mut again = Run::new(engine);
        for range in batches(events.len(), resume_at, later_batch) {
            again.batch(&events, range);
        }

        prop_assert!(whole.repeated_with_other_content.is_empty());
        prop_assert!(again.repeated_with_other_content.is_empty());
        for (id, json) in &again.outputs {
            let first = whole.outputs.get(id);
            prop_assert!(first == Some(json), "published {json}\nthe run: {first:?}");
        }
        let missing: Vec<&String> = whole
            .outputs
            .keys()
            .filter(|id| !sent_before_crash.contains_key(*id) && !again.outputs.contains_key(*id))
            .collect();
        prop_assert!(missing.is_empty(), "missing {missing:?}");
        let at = whole.engine.watermark().unwrap();
        let difference = state_difference(&again.engine.snapshot(at), &whole.engine.snapshot(at));
        prop_assert!(difference.is_none(), "{}", difference.unwrap_or_default());
    }
}

/// An event read again that the state already holds still moves the
/// watermark, as it did the first time: what is judged late afterwards is
/// judged as before.
#[test]
fn events_read_again_move_the_watermark_as_before() {
    let rules = Arc::new(rules()); // events 7 days behind are late
    let day = 86_400_000;
    let recent = common::track("m-1", "lead-a", "Email Opened", 20 * day);
    let old = common::track("m-2", "lead-b", "Email Opened", 10 * day);
    let wall = Timestamp(30 * day);

    let mut first = Engine::new(rules.clone()).track_changes();
    assert!(matches!(
        first.apply_from(&recent, wall, Some(1)),
        Outcome::Applied(_)
    ));
    assert!(matches!(
        first.apply_from(&old, wall, Some(2)),
        Outcome::Rejected(_)
    ));

    let mut restarted = Engine::new(rules.clone());
    let stamp = rules.stamp();
    first.take_changes(|id, change| {
        if let ChangelogValue::Lead { state, .. } =
            decode_changelog(&encode_changelog(&change, &stamp)).unwrap()
        {
            restarted.restore_lead(id, state);
        }
    });
    restarted.resume_watermark(None);
    assert!(matches!(
        restarted.apply_from(&recent, wall, Some(1)),
        Outcome::AlreadyApplied
    ));
    assert!(matches!(
        restarted.apply_from(&old, wall, Some(2)),
        Outcome::Rejected(_)
    ));
}

/// Events in a partition arrive out of time order (late mobile batches,
/// retries). A batch that fires decay only at its end would apply a late
/// event before a decay its lead was already due, where a batch of one
/// fires the decay first: what is published must not depend on where
/// batches end, or a restart (other batches) publishes the same
/// `event_id` with other content.
fn out_of_order(events: Vec<Event>, seed: u64, max_delay_ms: i64) -> Vec<Event> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut keyed: Vec<(i64, Event)> = events
        .into_iter()
        .map(|e| (e.timestamp.millis() + rng.i64(0..=max_delay_ms), e))
        .collect();
    keyed.sort_by_key(|(arrival, _)| *arrival);
    keyed.into_iter().map(|(_, e)| e).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn batch_boundaries_do_not_change_what_is_published(
        seed in 0u64..1000,
        batch in 2usize..500,
    ) {
        let rules = Arc::new(rules());
        let events = out_of_order(events(60, seed), seed, 3 * 86_400_000);
        let mut one_by_one = Run::new(Engine::new(rules.clone()).track_changes());
        for range in batches(events.len(), 0, 1) {
            one_by_one.batch(&events, range);
        }
        let mut batched = Run::new(Engine::new(rules.clone()).track_changes());
        for range in batches(events.len(), 0, batch) {
            batched.batch(&events, range);
        }
        for (id, json) in &batched.outputs {
            let single = one_by_one.outputs.get(id);
            prop_assert!(single == Some(json), "batched {json}\none by one: {single:?}");
        }
        prop_assert_eq!(batched.outputs.len(), one_by_one.outputs.len());
    }
}
