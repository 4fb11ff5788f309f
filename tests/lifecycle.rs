//! Lifecycle rules: dispositions set a stage, recycle, hold alerts back
//! for a while or for good, and record outcomes. Recycling equals a fresh
//! lead with the same fit; no upward crossing is published while alerts
//! are held back, and the one held back comes when the hold lapses.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use leadscore::codec::{Decoder, Encoding};
use leadscore::core::output::Cause;
use leadscore::core::{Engine, Event, EventKind, Outcome, Output, OutputKind, Timestamp};
use proptest::prelude::*;

/// The example rules with the tiers' lines lowered, so that sample leads
/// cross them often.
fn eager_rules() -> leadscore::core::Rules {
    let text = example_lead_rules_text()
        .replace("min_score = 50", "min_score = 15")
        .replace("min_score = 70", "min_score = 22")
        .replace("min_score = 85", "min_score = 30");
    rules(&text)
}

fn sales_events(leads: usize, seed: u64, rules: &leadscore::core::Rules) -> Vec<Event> {
    let decoder = Decoder::for_rules(rules);
    leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        seed,
        anonymous_share: 0.0,
        sales_share: 1.0,
        ..Default::default()
    })
    .iter()
    .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
    .map(Result::unwrap)
    .collect()
}

fn recycles(event: &Event) -> bool {
    matches!(
        event.name.as_deref(),
        Some("Lead Disqualified" | "Deal Lost")
    )
}

/// Runs `events` as `replay` does (decay due by event time first).
fn run(rules: &Arc<leadscore::core::Rules>, events: &[Event]) -> (Engine, Vec<Output>) {
    let mut engine = Engine::new(rules.clone());
    let mut outputs = Vec::new();
    for event in events {
        outputs.extend(engine.advance(event.timestamp));
        if let Outcome::Applied(more) = engine.apply(event, Timestamp(i64::MAX / 2)) {
            outputs.extend(more);
        }
    }
    (engine, outputs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_recycled_lead_equals_a_fresh_lead_with_the_same_fit(seed in 0u64..1000) {
        let rules = Arc::new(eager_rules());
        let events = sales_events(40, seed, &rules);
        let (recycled, _) = run(&rules, &events);

        // Each lead's last recycle; the fresh lead sees its traits (identify
        // and group calls) and only what came from then on.
        let mut last_reset: BTreeMap<&str, Timestamp> = BTreeMap::new();
        for e in events.iter().filter(|e| recycles(e)) {
            let at = last_reset.entry(&e.lead_id).or_insert(e.timestamp);
            *at = (*at).max(e.timestamp);
        }
        prop_assume!(!last_reset.is_empty());
        let fresh_events: Vec<Event> = events
            .iter()
            .filter(|e| match last_reset.get(e.lead_id.as_str()) {
                Some(reset) => {
                    e.timestamp >= *reset
                        || matches!(e.kind, EventKind::Identify | EventKind::Group)
                }
                None => true,
            })
            .cloned()
            .collect();
        let (fresh, _) = run(&rules, &fresh_events);

        let at = Timestamp(events.iter().map(|e| e.timestamp.millis()).max().unwrap());
        for lead in last_reset.keys() {
            let a = recycled.explain(lead, at).unwrap();
            let b = fresh.explain(lead, at).unwrap();
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
            prop_assert!(
                close(a.score, b.score) && close(a.fit, b.fit) && close(a.engagement, b.engagement),
                "{lead}: recycled {a:?}\nfresh    {b:?}"
            );
        }
    }

    #[test]
    fn no_upward_crossing_is_published_while_alerts_are_held_back(seed in 0u64..1000) {
        let rules = Arc::new(eager_rules());
        let events = sales_events(60, seed, &rules);
        let (_, outputs) = run(&rules, &events);
        // Per lead, when alerts are held back: 14 days after a rejection,
        // for good after a deal is won.
        let mut holds: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
        for e in &events {
            let t = e.timestamp.millis();
            let hold = match e.name.as_deref() {
                Some("Lead Disqualified") => Some((t, t + 14 * DAY)),
                Some("Deal Won") => Some((t, i64::MAX)),
                _ => None,
            };
            if let Some(hold) = hold {
                holds.entry(&e.lead_id).or_default().push(hold);
            }
        }
        let mut checked = 0;
        for o in &outputs {
            let Some(lead) = o.lead_id.as_deref() else { continue };
            let up = o.kind == OutputKind::ThresholdCrossed && o.direction.as_str() == "up";
            if !up {
                continue;
            }
            checked += 1;
            let at = o.at.millis();
            let inside = holds
                .get(lead)
                .is_some_and(|hs| hs.iter().any(|&(from, until)| at >= from && at < until));
            prop_assert!(!inside, "{lead}: crossed up at {at} while held back: {o:?}");
        }
        prop_assert!(checked > 0, "some lead crossed up");
        // Every disposition that changed something said so.
        let lifecycle = outputs
            .iter()
            .filter(|o| o.kind == OutputKind::LifecycleChanged)
            .count();
        prop_assert!(lifecycle >= holds.values().map(Vec::len).sum::<usize>());
    }
}

#[test]
fn the_crossing_held_back_comes_when_the_hold_lapses() {
    let rules = Arc::new(eager_rules());
    let mut engine = Engine::new(rules.clone());
    let lead = "lead-1";
    let t0 = T0;
    let mut outputs = Vec::new();
    fn feed(engine: &mut Engine, outputs: &mut Vec<Output>, event: Event) {
        outputs.extend(engine.advance(event.timestamp));
        if let Outcome::Applied(more) = engine.apply(&event, Timestamp(i64::MAX / 2)) {
            outputs.extend(more);
        }
    }
    feed(
        &mut engine,
        &mut outputs,
        identify("m0", lead, t0, &[("title", "VP Marketing")]),
    );
    feed(
        &mut engine,
        &mut outputs,
        track("m1", lead, "Lead Disqualified", t0 + DAY),
    );
    // A demo request during the hold: the score jumps, no crossing.
    feed(
        &mut engine,
        &mut outputs,
        track("m2", lead, "Demo Requested", t0 + 2 * DAY),
    );
    feed(
        &mut engine,
        &mut outputs,
        track("m3", lead, "Demo Requested", t0 + 3 * DAY),
    );
    let held_tier = engine.lead(lead).unwrap().tier;
    let state = engine.lead(lead).unwrap();
    let unsuppressed = state.tier_at(&rules, &state.evaluate(&rules, state.clock));
    assert!(
        unsuppressed > usize::from(held_tier),
        "the score qualifies for a higher tier ({unsuppressed}) than the one held ({held_tier})"
    );
    assert!(outputs
        .iter()
        .filter(|o| o.at.millis() >= t0 + DAY)
        .all(|o| !(o.kind == OutputKind::ThresholdCrossed && o.direction.as_str() == "up")));
    let lifecycle: Vec<&Output> = outputs
        .iter()
        .filter(|o| o.kind == OutputKind::LifecycleChanged)
        .collect();
    assert_eq!(lifecycle.len(), 1);
    assert_eq!(lifecycle[0].stage.as_deref(), Some("recycled"));
    let change = lifecycle[0].lifecycle.as_ref().unwrap();
    assert_eq!(change.previous_stage, None);
    assert_eq!(&*change.reasons[0], "mql_rejected");

    // When the hold lapses (14 days after the rejection), the crossing.
    let lapse = Timestamp(t0 + DAY + 14 * DAY);
    let later = engine.advance(lapse);
    let crossed: Vec<&Output> = later
        .iter()
        .filter(|o| o.kind == OutputKind::ThresholdCrossed)
        .collect();
    assert_eq!(crossed.len(), 1, "{later:#?}");
    assert_eq!(crossed[0].direction.as_str(), "up");
    assert_eq!(crossed[0].cause, Cause::Decay(lapse));
    assert_eq!(crossed[0].at, lapse);

    // A won deal ends alerts for good, whatever the lead does.
    feed(
        &mut engine,
        &mut outputs,
        track("m4", lead, "Deal Won", lapse.millis() + DAY),
    );
    feed(
        &mut engine,
        &mut outputs,
        track("m5", lead, "Deal Lost", lapse.millis() + 2 * DAY),
    );
    let state = engine.lead(lead).unwrap();
    let life = state.life().unwrap();
    assert_eq!(life.stage.as_deref(), Some("nurture"));
    assert!(!life.terminal);
    let outcome = life.outcome.unwrap();
    assert!(!outcome.converted, "the latest outcome counts");
    assert_eq!(outcome.at.millis(), lapse.millis() + 2 * DAY);
}

#[test]
fn lifecycle_state_survives_the_changelog() {
    use leadscore::codec::proto::{decode_lead_state, encode_lead_state};
    let rules = Arc::new(eager_rules());
    let events = sales_events(30, 5, &rules);
    let (engine, _) = run(&rules, &events);
    let stamp = rules.stamp();
    let mut with_life = 0;
    for snapshot in engine.snapshot(Timestamp(T0)) {
        let state = engine.lead(&snapshot.lead_id).unwrap();
        let (back, _) = decode_lead_state(&encode_lead_state(state, &stamp)).unwrap();
        assert_eq!(&back, state);
        with_life += usize::from(state.life().is_some());
    }
    assert!(with_life > 10, "{with_life} leads with a lifecycle");
}

/// The example rules with leads expiring after `days` of inactivity.
fn expiring_rules(days: u32) -> leadscore::core::Rules {
    rules(&with_expiry(&example_lead_rules_text(), days))
}

fn sample_events(leads: usize, seed: u64, rules: &leadscore::core::Rules) -> Vec<Event> {
    let decoder = Decoder::for_rules(rules);
    leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        seed,
        sales_share: 0.2,
        ..Default::default()
    })
    .iter()
    .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
    .map(Result::unwrap)
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whether a quiet lead's expiry fires from a timer (its partition's
    /// clock passed it) or from its own next event, the outputs and the
    /// state are the same: expiry depends on the lead's history alone.
    #[test]
    fn expiry_depends_on_the_lead_alone_not_on_when_timers_fire(seed in 0u64..1000) {
        let rules = Arc::new(expiring_rules(8));
        let events = sample_events(80, seed, &rules);
        let end = Timestamp(events.iter().map(|e| e.timestamp.millis()).max().unwrap() + 30 * DAY);
        let (mut timely, mut timely_outputs) = run(&rules, &events);
        timely_outputs.extend(timely.advance(end));
        let mut lazy = Engine::new(rules.clone());
        let mut lazy_outputs = Vec::new();
        for event in &events {
            if let Outcome::Applied(more) = lazy.apply(event, Timestamp(i64::MAX / 2)) {
                lazy_outputs.extend(more);
            }
        }
        lazy_outputs.extend(lazy.advance(end));
        let by_id = |outputs: &[Output]| -> BTreeMap<String, String> {
            outputs
                .iter()
                .map(|o| (o.event_id.to_string(), leadscore::codec::output::output_to_json(o)))
                .collect()
        };
        let (a, b) = (by_id(&timely_outputs), by_id(&lazy_outputs));
        prop_assert_eq!(a.len(), timely_outputs.len(), "no id twice");
        prop_assert_eq!(&a, &b);
        let expired = timely_outputs
            .iter()
            .filter(|o| o.kind == OutputKind::LeadExpired)
            .count();
        prop_assert!(expired > 0, "some lead expired");
        prop_assert_eq!(timely.snapshot(end), lazy.snapshot(end));
        // What is left is active, or above the lowest tier.
        for lead in timely.snapshot(end) {
            let state = timely.lead(&lead.lead_id).unwrap();
            prop_assert!(state.tier > 0, "{} is held in the lowest tier", lead.lead_id);
        }
    }
}
