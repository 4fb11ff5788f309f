//! Re-scoring in place: state written under rules A, migrated to rules B
//! (changed the ways `calibrate` and people change rules: points, caps
//! with their points, base, fit points, tiers, grades, step, hysteresis,
//! rules and traits moved, rules removed) and re-evaluated, equals a replay
//! of the same history under B; and what the switch publishes is exactly
//! each lead's tier change and each score move of a step or more.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::verify::sample_with_anonymous;
use leadscore::codec::{Decoder, Encoding};
use leadscore::core::engine::StateChange;
use leadscore::core::lead::LeadState;
use leadscore::core::migration::{Migration, RulesOutline};
use leadscore::core::output::Cause;
use leadscore::core::rules::{Grade, Rules};
use leadscore::core::{Engine, Event, OutputKind, Timestamp};
use proptest::prelude::*;

/// The example rules without their `[filters]` (which name engagement
/// rules by index: [`changed`] moves and drops rules, and filters are no
/// part of what re-scoring in place answers).
fn rules() -> Rules {
    let mut rules = common::verify::rules();
    rules.filters = None;
    rules
}

fn events(leads: usize, seed: u64) -> Vec<Event> {
    let decoder = Decoder::for_rules(&rules());
    sample_with_anonymous(leads, seed, 0.2)
        .iter()
        .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
        .map(|event| event.unwrap())
        .collect()
}

/// Every lead and alias an engine holds, as its changelog would.
fn changelog(engine: &mut Engine) -> Vec<(String, Option<LeadState>, Option<String>)> {
    let mut records = Vec::new();
    engine.take_changes(|id, change| match change {
        StateChange::Lead(state) => records.push((id.to_string(), Some(state.clone()), None)),
        StateChange::AliasOf(to) => records.push((id.to_string(), None, Some(to.to_string()))),
        StateChange::Gone => unreachable!("these rules expire no lead"),
    });
    records
}

/// A change of the kinds that can be re-scored in place.
#[derive(Clone, Debug)]
struct Change {
    factors: Vec<f64>,
    fit_points: Vec<f64>,
    base: f64,
    tier_steps: Vec<f64>,
    grade_shift: f64,
    step: f64,
    hysteresis: f64,
    reverse_rules: bool,
    rotate_traits: usize,
    drop_rule: Option<usize>,
    rename_tier: bool,
}

fn change() -> impl Strategy<Value = Change> {
    let old = rules();
    (
        prop::collection::vec(
            prop_oneof![0.2f64..3.0, -2.0f64..-0.2],
            old.engagement.len(),
        ),
        prop::collection::vec(-10.0f64..30.0, old.fit.len()),
        -15.0f64..15.0,
        prop::collection::vec(5.0f64..40.0, old.tiers.len()),
        -10.0f64..10.0,
        1.0f64..10.0,
        0.0f64..10.0,
        any::<bool>(),
        0usize..8,
        prop::option::of(0usize..old.engagement.len()),
        any::<bool>(),
    )
        .prop_map(
            |(
                factors,
                fit_points,
                base,
                tier_steps,
                grade_shift,
                step,
                hysteresis,
                reverse_rules,
                rotate_traits,
                drop_rule,
                rename_tier,
            )| Change {
                factors,
                fit_points,
                base,
                tier_steps,
                grade_shift,
                step,
                hysteresis,
                reverse_rules,
                rotate_traits,
                drop_rule,
                rename_tier,
            },
        )
}

fn changed(old: &Rules, change: &Change) -> Rules {
    let mut settings = old.settings.clone();
    settings.base = change.base;
    settings.step = change.step;
    settings.hysteresis = change.hysteresis;
    let mut grades = old.grades.clone();
    grades.a += change.grade_shift;
    grades.b += change.grade_shift;
    grades.c += change.grade_shift;
    let mut tiers = old.tiers.clone();
    let mut min = 0.0;
    for (i, tier) in tiers.iter_mut().enumerate().skip(1) {
        min += change.tier_steps[i];
        tier.min_score = min;
    }
    if change.rename_tier {
        let last = tiers.len() - 1;
        tiers[last].name = format!("{}-renamed", tiers[last].name).into();
    }
    let mut fit = old.fit.clone();
    for (rule, points) in fit.iter_mut().zip(&change.fit_points) {
        rule.points = *points;
    }
    let mut engagement = old.engagement.clone();
    for (rule, factor) in engagement.iter_mut().zip(&change.factors) {
        rule.points *= factor;
        if let Some(cap) = rule.cap.as_mut() {
            cap.points *= factor.abs();
        }
    }
    if let Some(index) = change.drop_rule {
        engagement.remove(index);
    }
    if change.reverse_rules {
        engagement.reverse();
    }
    // The same trait comparisons at other positions: fit conditions and
    // tier gates follow them.
    let mut trait_keys = old.trait_keys.clone();
    let n = trait_keys.len();
    let rotate = change.rotate_traits % n;
    trait_keys.rotate_left(rotate);
    let moved = |key: usize| (key + n - rotate) % n;
    for rule in &mut fit {
        for condition in &mut rule.conditions {
            condition.key = moved(condition.key);
        }
    }
    for tier in &mut tiers {
        tier.require_all_traits
            .iter_mut()
            .for_each(|k| *k = moved(*k));
        tier.require_any_trait
            .iter_mut()
            .for_each(|k| *k = moved(*k));
    }
    let mut new = Rules::new(
        "changed", settings, grades, tiers, fit, engagement, trait_keys,
    );
    new.accounts = old.accounts.clone();
    new.lifecycle = old.lifecycle.clone();
    new
}

/// Whether `score` sits in a hysteresis band of one of `rules`' tiers,
/// where the tier depends on the path taken.
fn in_a_band(rules: &Rules, score: f64) -> bool {
    rules.tiers.iter().skip(1).any(|t| {
        score < t.min_score + 1e-9 && score >= t.min_score - rules.settings.hysteresis - 1e-9
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn state_rescored_in_place_equals_a_replay_under_the_new_rules(
        seed in 0u64..1000,
        change in change(),
    ) {
        let old = Arc::new(rules());
        let new = Arc::new(changed(&old, &change));
        let events = events(50, seed);
        let wall = Timestamp(i64::MAX / 2);

        let mut before = Engine::new(old.clone()).track_changes();
        let mut replayed = Engine::new(new.clone());
        for event in &events {
            before.apply(event, wall);
            replayed.apply(event, wall);
        }
        let records = changelog(&mut before);

        let migration = Migration::plan(&RulesOutline::of(&old), &new)
            .map_err(|reasons| TestCaseError::fail(format!("{reasons:#?}")))?;
        let mut after = Engine::new(new.clone()).track_changes();
        let mut previous: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for (id, state, alias) in records {
            match (state, alias) {
                (Some(state), _) => {
                    previous.insert(id.clone(), (usize::from(state.tier), state.last_emitted_score));
                    after.restore_lead(&id, migration.lead(state));
                }
                (None, Some(to)) => after.restore_alias(&id, &to),
                (None, None) => unreachable!(),
            }
        }
        after.take_changes(|_, _| {});
        let cause = Cause::RulesChanged(new.fingerprint().into());
        let outputs = after.rescore(&cause);

        // The state: the new rules' numbers for the same history.
        let at = Timestamp(events.iter().map(|e| e.timestamp.millis()).max().unwrap());
        let mut rescored_leads = 0;
        for want in replayed.snapshot(at) {
            let got = after.explain(&want.lead_id, at);
            prop_assert!(got.is_some(), "lead {} is kept", want.lead_id);
            let got = got.unwrap();
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
            prop_assert!(
                close(got.score, want.score) && close(got.fit, want.fit)
                    && close(got.engagement, want.engagement) && got.grade == want.grade,
                "{}: rescored {got:?}\nreplayed {want:?}", want.lead_id
            );
            // Tiers move at events, so they are compared at the lead's
            // last event, where both were evaluated.
            let then = replayed.explain(&want.lead_id, want.last_event_at).unwrap();
            // A disposition holding upward crossings back holds the
            // re-scored tier too, until it lapses.
            let held = after
                .lead(&want.lead_id)
                .is_some_and(|l| l.suppresses_up(want.last_event_at));
            prop_assert!(
                got.tier == want.tier || in_a_band(&new, then.score) || held,
                "{}: tier {} rescored, {} replayed, at score {}",
                want.lead_id, got.tier, want.tier, then.score
            );
            rescored_leads += 1;
        }
        prop_assert_eq!(rescored_leads, after.lead_count());

        // What the switch published: per lead, a score change where the
        // tier moved or the score moved a step from what was last
        // published, a crossing where the tier moved, under the new rules.
        let mut published: BTreeMap<(String, &str), usize> = BTreeMap::new();
        for output in &outputs {
            prop_assert_eq!(&output.cause, &cause);
            prop_assert_eq!(&*output.rules_version, "changed");
            *published
                .entry((output.lead_id.clone().unwrap(), output.kind.as_str()))
                .or_default() += 1;
        }
        prop_assert!(published.values().all(|&n| n == 1), "one of each per lead");
        for (id, (tier_before, score_before)) in &previous {
            let Some(lead) = after.lead(id) else {
                continue; // merged into another lead
            };
            let snapshot = after.explain(id, lead.clock).unwrap();
            let tier_now = new.tiers.iter().position(|t| t.name == snapshot.tier).unwrap();
            let tier_mapped = migration.lead(LeadState { tier: *tier_before as u8, ..LeadState::new(lead.clock) }).tier;
            let tier_moved = tier_now != usize::from(tier_mapped);
            let score_moved = (snapshot.score - score_before).abs() >= new.settings.step;
            prop_assert_eq!(
                published.contains_key(&(id.clone(), OutputKind::ScoreChanged.as_str())),
                tier_moved || score_moved,
                "{}: score {} -> {}, tier {} -> {}", id, score_before, snapshot.score, tier_mapped, tier_now
            );
            prop_assert_eq!(
                published.contains_key(&(id.clone(), OutputKind::ThresholdCrossed.as_str())),
                tier_moved
            );
        }
        // Every lead is written back under the new rules.
        let mut written = 0;
        after.take_changes(|_, change| {
            if matches!(change, StateChange::Lead(_)) {
                written += 1;
            }
        });
        prop_assert_eq!(written, after.lead_count());
        let _ = Grade::A;
    }
}

#[test]
fn changes_that_need_history_are_named() {
    let old = rules();
    let outline = RulesOutline::of(&old);

    // A rule inserted at the top, another's condition edited, a half-life
    // changed, a cap moved without its points.
    let mut engagement = old.engagement.clone();
    let capped = engagement
        .iter()
        .position(|r| r.cap.is_some())
        .expect("the example rules cap a rule");
    engagement[capped].cap.as_mut().unwrap().points += 1.0;
    let mut others = (0..engagement.len()).filter(|&i| i != capped);
    let (renamed, slower) = (others.next().unwrap(), others.next().unwrap());
    engagement[renamed].names = vec!["Something Else".into()];
    engagement[slower].half_life = leadscore::core::decay::HalfLife::days(3.0);
    let mut inserted = engagement[renamed].clone();
    inserted.name = "brand new".into();
    engagement.insert(0, inserted);
    let new = Rules::new(
        "v2",
        old.settings.clone(),
        old.grades.clone(),
        old.tiers.clone(),
        old.fit.clone(),
        engagement,
        old.trait_keys.clone(),
    );
    let reasons = Migration::plan(&outline, &new).unwrap_err();
    let text = reasons.join("\n");
    assert!(text.contains("\"brand new\" is new"), "{text}");
    assert!(text.contains("matches other events"), "{text}");
    assert!(text.contains("another half-life"), "{text}");
    assert!(text.contains("cap that changed"), "{text}");

    // A trait compared in a new way.
    let mut trait_keys = old.trait_keys.clone();
    trait_keys[0]
        .ops
        .push(leadscore::core::rules::Op::Contains("zzz".into()));
    let new = Rules::new(
        "v3",
        old.settings.clone(),
        old.grades.clone(),
        old.tiers.clone(),
        old.fit.clone(),
        old.engagement.clone(),
        trait_keys,
    );
    let reasons = Migration::plan(&outline, &new).unwrap_err();
    assert!(reasons[0].contains("compared in a new way"), "{reasons:#?}");

    // The outline survives its JSON form.
    let back = RulesOutline::from_json(outline.to_json().as_bytes()).unwrap();
    assert_eq!(back, outline);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The crossings of a promotion: for each lead whose tier differs from
    /// the one the old deployment last published (none: the lowest), one
    /// `threshold_crossed` from that tier to the lead's, in lead id order;
    /// state is left as it is.
    #[test]
    fn a_handover_crosses_exactly_the_leads_whose_tier_differs(
        seed in 0u64..1_000,
        published_as in proptest::collection::vec(proptest::option::of(0usize..8), 64),
    ) {
        let rules = Arc::new(rules());
        let mut engine = Engine::new(rules.clone()).track_changes();
        for event in events(64, seed) {
            let now = event.timestamp;
            let _ = engine.apply(&event, now);
        }
        changelog(&mut engine);
        let at = engine.watermark().unwrap();
        let leads = engine.snapshot(at);
        // Tiers of another deployment: some named as here, some gone.
        let tiers = rules.tiers.len();
        let published: BTreeMap<String, (Arc<str>, usize)> = leads
            .iter()
            .zip(published_as.iter().cycle())
            .filter_map(|(lead, tier)| {
                let tier = (*tier)?;
                let name: Arc<str> = if tier < tiers {
                    rules.tier_name(tier).clone()
                } else {
                    format!("old-tier-{tier}").into()
                };
                Some((lead.lead_id.to_string(), (name, tier.min(tiers - 1))))
            })
            .collect();
        let cause = Cause::RulesChanged("fingerprint\x1fpromoted".into());
        let crossings = engine.handover_crossings(|id| published.get(id).cloned(), &cause);
        let mut expected = Vec::new();
        for lead in &leads {
            let from = published
                .get(lead.lead_id.as_ref() as &str)
                .map_or(rules.tier_name(0).clone(), |(name, _)| name.clone());
            // A snapshot's tier is the one the lead last published.
            let tier = lead.tier.clone();
            if *from != *tier {
                expected.push((lead.lead_id.to_string(), from, tier));
            }
        }
        let got: Vec<(String, Arc<str>, Arc<str>)> = crossings
            .iter()
            .map(|o| (o.lead_id.clone().unwrap(), o.previous_tier.clone(), o.tier.clone()))
            .collect();
        prop_assert_eq!(got, expected);
        for output in &crossings {
            prop_assert_eq!(output.kind, OutputKind::ThresholdCrossed);
            prop_assert_eq!(&output.cause, &cause);
        }
        prop_assert!(changelog(&mut engine).is_empty(), "state is left as it is");
        let again = engine.handover_crossings(|id| published.get(id).cloned(), &cause);
        prop_assert_eq!(again, crossings, "a repeat publishes the same outputs");
    }
}
