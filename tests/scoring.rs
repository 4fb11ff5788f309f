//! The scoring model, example by example: fit, engagement, caps, once,
//! decay, tiers, gates, alias, dedup, lateness, explanations.

mod common;

use common::*;
use leadscore::core::{Direction, Engine, Event, EventKind, Outcome, Output, Rejection, Timestamp};

const RULES: &str = r#"
version = "test-1"
[scoring]
half_life = "none"
clamp = { min = 0, max = 100 }
step = 1
hysteresis = 5
[grades]
A = 30
B = 20
C = 10
[[tiers]]
name = "cold"
min_score = 0
[[tiers]]
name = "warm"
min_score = 40
[[tiers]]
name = "hot"
min_score = 70
min_grade = "B"
require_any_trait = ["budget", "authority"]

[[fit]]
name = "vp"
group = "seniority"
points = 20
when = [{ field = "title", contains = "vp" }]
[[fit]]
name = "manager"
group = "seniority"
points = 10
when = [{ field = "title", contains = "manager" }]
[[fit]]
name = "student"
group = "seniority"
points = -10
when = [{ field = "title", contains = "student" }]
[[fit]]
name = "business_email"
points = 5
when = [{ field = "email_domain", one_of = ["gmail.com", "yahoo.com"], not = true }, { field = "email_domain", exists = true }]

[[engagement]]
name = "demo"
type = "track"
event = "Demo Requested"
points = 40
[[engagement]]
name = "pricing"
type = "page"
when = [{ field = "context.page.path", prefix = "/pricing" }]
points = 10
[[engagement]]
name = "open"
type = "track"
event = "Email Opened"
points = 1
cap = { points = 15, per = "30d" }
[[engagement]]
name = "trial"
type = "track"
event = "Trial Started"
points = 25
once = true
[[engagement]]
name = "unsubscribe"
type = "track"
event = "Unsubscribed"
points = -20
"#;

fn engine() -> Engine {
    Engine::new(arc(rules(RULES)))
}

fn applied(outcome: Outcome) -> Vec<Output> {
    match outcome {
        Outcome::Applied(outputs) => outputs,
        other => panic!("expected the event to apply, got {other:?}"),
    }
}

fn score(engine: &Engine, lead: &str, at_ms: i64) -> f64 {
    engine
        .explain(lead, Timestamp(at_ms))
        .expect("lead exists")
        .score
}

#[test]
fn fit_reflects_current_traits_and_is_never_accumulated() {
    let mut e = engine();
    applied(e.apply(
        &identify(
            "m1",
            "l",
            T0,
            &[("title", "VP Marketing"), ("email", "a@acme.com")],
        ),
        Timestamp(T0),
    ));
    let s = e.explain("l", Timestamp(T0)).unwrap();
    assert_eq!((s.fit, s.grade.as_str()), (25.0, "B"));
    applied(e.apply(
        &identify("m2", "l", T0 + 1, &[("title", "Student")]),
        Timestamp(T0),
    ));
    let s = e.explain("l", Timestamp(T0 + 1)).unwrap();
    assert_eq!(
        (s.fit, s.grade.as_str()),
        (-5.0, "D"),
        "title replaced, email kept"
    );
    // An older identify arriving late does not overwrite the newer title.
    applied(e.apply(
        &identify("m0", "l", T0 - 1, &[("title", "Manager")]),
        Timestamp(T0),
    ));
    assert_eq!(e.explain("l", Timestamp(T0 + 1)).unwrap().fit, -5.0);
}

#[test]
fn group_alternatives_count_once() {
    let mut e = engine();
    applied(e.apply(
        &identify("m1", "l", T0, &[("title", "VP and Manager")]),
        Timestamp(T0),
    ));
    assert_eq!(e.explain("l", Timestamp(T0)).unwrap().fit, 20.0);
}

#[test]
fn engagement_rules_match_on_type_name_and_conditions() {
    let mut e = engine();
    applied(e.apply(&page("m1", "l", "/pricing/enterprise", T0), Timestamp(T0)));
    applied(e.apply(&page("m2", "l", "/blog", T0), Timestamp(T0)));
    applied(e.apply(&track("m3", "l", "demo requested", T0), Timestamp(T0)));
    let s = e.explain("l", Timestamp(T0)).unwrap();
    assert_eq!(
        s.engagement, 50.0,
        "pricing + demo (names ignore case); blog scores nothing"
    );
    let rules: Vec<&str> = s.contributions.iter().map(|c| c.rule.as_ref()).collect();
    assert_eq!(rules, ["demo", "pricing"], "largest first");
}

#[test]
fn caps_limit_points_per_window() {
    let mut e = engine();
    for i in 0..20 {
        applied(e.apply(
            &track(&format!("o{i}"), "l", "Email Opened", T0 + i * 1000),
            Timestamp(T0 + DAY),
        ));
    }
    assert!((score(&e, "l", T0 + DAY) - 15.0).abs() < 1e-9);
    // The next 30-day window (aligned to the epoch) has its own cap.
    let next_window = (T0 / (30 * DAY) + 1) * 30 * DAY;
    for i in 0..3 {
        applied(e.apply(
            &track(&format!("p{i}"), "l", "Email Opened", next_window + i),
            Timestamp(next_window),
        ));
    }
    assert!((score(&e, "l", next_window) - 18.0).abs() < 1e-9);
}

#[test]
fn once_rules_count_the_earliest_hit_only() {
    let mut e = engine();
    applied(e.apply(
        &track("t2", "l", "Trial Started", T0 + DAY),
        Timestamp(T0 + DAY),
    ));
    applied(e.apply(&track("t1", "l", "Trial Started", T0), Timestamp(T0 + DAY)));
    applied(e.apply(
        &track("t3", "l", "Trial Started", T0 + 2 * DAY),
        Timestamp(T0 + 2 * DAY),
    ));
    assert_eq!(score(&e, "l", T0 + 2 * DAY), 25.0);
    let lead = e.lead("l").unwrap();
    assert_eq!(lead.credits[0].credit.anchor, Timestamp(T0));
}

#[test]
fn base_points_start_every_lead_and_stay_out_of_fit() {
    let with_base = RULES.replace("step = 1\n", "step = 1\nbase = 30\n");
    assert_ne!(with_base, RULES);
    let mut e = Engine::new(arc(rules(&with_base)));
    applied(e.apply(&track("u", "l", "Unsubscribed", T0), Timestamp(T0)));
    let s = e.explain("l", Timestamp(T0)).unwrap();
    assert_eq!((s.fit, s.engagement, s.score), (0.0, -20.0, 10.0));
    assert_eq!(s.grade.as_str(), "D", "grade is from fit alone");
}

#[test]
fn negative_points_and_clamp() {
    let mut e = engine();
    applied(e.apply(&track("u", "l", "Unsubscribed", T0), Timestamp(T0)));
    let s = e.explain("l", Timestamp(T0)).unwrap();
    assert_eq!(
        (s.engagement, s.score),
        (-20.0, 0.0),
        "clamped at the floor"
    );
}

#[test]
fn tiers_need_their_gates() {
    let mut e = engine();
    applied(e.apply(
        &identify(
            "i",
            "l",
            T0,
            &[("title", "VP Sales"), ("email", "v@acme.com")],
        ),
        Timestamp(T0),
    ));
    let out = applied(e.apply(
        &track("d", "l", "Demo Requested", T0 + 1),
        Timestamp(T0 + 1),
    ));
    assert_eq!(out.last().unwrap().tier.as_ref(), "warm", "65 < 70");
    let out = applied(e.apply(&page("p", "l", "/pricing", T0 + 2), Timestamp(T0 + 2)));
    assert_eq!(
        out.last().unwrap().tier.as_ref(),
        "warm",
        "75 but no budget or authority"
    );
    let out = applied(e.apply(
        &identify("b", "l", T0 + 3, &[("budget", "50k")]),
        Timestamp(T0 + 3),
    ));
    let crossed = crossings(&out);
    assert_eq!(crossed.len(), 1);
    assert_eq!(
        (crossed[0].previous_tier.as_ref(), crossed[0].tier.as_ref()),
        ("warm", "hot")
    );
    assert_eq!(crossed[0].direction, Direction::Up);
    assert_eq!(crossed[0].cause_event_id(), Some("b"));
}

#[test]
fn score_changes_are_published_only_past_the_step() {
    let mut rules = rules(RULES);
    rules.settings.step = 5.0;
    let mut e = Engine::new(arc(rules));
    let out = applied(e.apply(&track("o1", "l", "Email Opened", T0), Timestamp(T0)));
    assert!(out.is_empty(), "1 point < step 5");
    for i in 2..=5 {
        applied(e.apply(
            &track(&format!("o{i}"), "l", "Email Opened", T0),
            Timestamp(T0),
        ));
    }
    let out = applied(e.apply(&track("o6", "l", "Email Opened", T0), Timestamp(T0)));
    assert!(out.is_empty(), "5 points, published at the 5th open");
    let out = applied(e.apply(&page("p", "l", "/pricing", T0), Timestamp(T0)));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].score, out[0].delta), (16.0, 11.0));
}

#[test]
fn duplicates_count_once() {
    let mut e = engine();
    applied(e.apply(&track("d", "l", "Demo Requested", T0), Timestamp(T0)));
    assert_eq!(
        e.apply(&track("d", "l", "Demo Requested", T0), Timestamp(T0)),
        Outcome::Duplicate
    );
    assert_eq!(score(&e, "l", T0), 40.0);
}

#[test]
fn late_and_future_events_are_rejected_with_a_reason() {
    let mut e = engine();
    let now = T0 + 30 * DAY;
    // Lateness is measured behind the latest event time applied (the
    // watermark), not the wall clock: a backlog is not "late".
    applied(e.apply(&page("first", "l", "/pricing", T0), Timestamp(now)));
    applied(e.apply(&page("recent", "other", "/pricing", now), Timestamp(now)));
    match e.apply(
        &track("late", "l", "Demo Requested", T0 + DAY),
        Timestamp(now),
    ) {
        Outcome::Rejected(r @ Rejection::TooLate { .. }) => assert_eq!(r.reason_code(), "too_late"),
        other => panic!("{other:?}"),
    }
    // The future is measured against the processing clock.
    match e.apply(
        &track("future", "l", "Demo Requested", now + DAY),
        Timestamp(now),
    ) {
        Outcome::Rejected(Rejection::TooFarInFuture { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(score(&e, "l", T0), 10.0, "only the pricing view counted");
}

#[test]
fn a_redelivered_position_is_recognised_without_the_dedup_memory() {
    let mut rules = rules(RULES);
    rules.settings.dedup_max_ids = 1;
    let mut e = Engine::new(arc(rules));
    assert!(matches!(
        e.apply_from(&page("a", "l", "/pricing", T0), Timestamp(T0), Some(7)),
        Outcome::Applied(_)
    ));
    assert!(matches!(
        e.apply_from(&page("b", "l", "/pricing", T0), Timestamp(T0), Some(9)),
        Outcome::Applied(_)
    ));
    // "a" is no longer in the one-id dedup memory, but its position is old.
    assert_eq!(
        e.apply_from(&page("a", "l", "/pricing", T0), Timestamp(T0), Some(7)),
        Outcome::AlreadyApplied
    );
    assert_eq!(score(&e, "l", T0), 20.0);
}

#[test]
fn changes_are_reported_for_the_changelog_and_restore_gives_the_same_engine() {
    use leadscore::core::engine::StateChange;
    let mut e = Engine::new(arc(rules(RULES))).track_changes();
    applied(e.apply(&page("p", "anon", "/pricing", T0), Timestamp(T0)));
    applied(e.apply(
        &track("d", "known", "Demo Requested", T0 + 1),
        Timestamp(T0),
    ));
    let mut alias = Event::new("a", "known", EventKind::Alias, Timestamp(T0 + 2));
    alias.previous_id = Some("anon".into());
    applied(e.apply(&alias, Timestamp(T0)));
    let mut restored = Engine::new(arc(rules(RULES)));
    let mut seen = Vec::new();
    e.take_changes(|id, change| {
        match change {
            StateChange::Lead(state) => restored.restore_lead(id, state.clone()),
            StateChange::AliasOf(to) => restored.restore_alias(id, to),
            StateChange::Gone => restored.forget_lead(id),
        }
        seen.push(id.to_string());
    });
    assert_eq!(
        seen,
        ["anon", "known"],
        "the alias, then the lead (anon's own state is gone)"
    );
    assert_eq!(
        restored.snapshot(Timestamp(T0 + 2)),
        e.snapshot(Timestamp(T0 + 2))
    );
    assert_eq!(restored.resolve("anon"), "known");
    e.take_changes(|id, _| panic!("{id} reported twice"));
}

#[test]
fn alias_merges_anonymous_history_in_either_order() {
    let alias = |id: &str, at: i64| {
        let mut a = Event::new(id, "known", EventKind::Alias, Timestamp(at));
        a.previous_id = Some("anon".into());
        a
    };
    // History first, then the alias.
    let mut e = engine();
    applied(e.apply(&page("p1", "anon", "/pricing", T0), Timestamp(T0)));
    applied(e.apply(
        &track("d", "known", "Demo Requested", T0 + 2),
        Timestamp(T0 + 2),
    ));
    applied(e.apply(&alias("a", T0 + 3), Timestamp(T0 + 3)));
    assert!(e.lead("anon").is_none());
    assert_eq!(score(&e, "known", T0 + 3), 50.0);
    // The alias first, then late anonymous history: same lead, same score.
    let mut e = engine();
    applied(e.apply(&alias("a", T0 + 3), Timestamp(T0 + 3)));
    applied(e.apply(
        &track("d", "known", "Demo Requested", T0 + 2),
        Timestamp(T0 + 3),
    ));
    applied(e.apply(&page("p1", "anon", "/pricing", T0), Timestamp(T0 + 3)));
    assert!(e.lead("anon").is_none());
    assert_eq!(score(&e, "known", T0 + 3), 50.0);
    assert_eq!(e.resolve("anon"), "known");
}

#[test]
fn decay_alone_publishes_a_cool_down_crossing_once() {
    let mut rules = rules(RULES);
    rules.settings.half_life = leadscore::core::decay::HalfLife::days(7.0);
    let mut e = Engine::new(arc(rules));
    let out = applied(e.apply(&track("d", "l", "Demo Requested", T0), Timestamp(T0)));
    assert_eq!(out.last().unwrap().tier.as_ref(), "warm");
    // 40 points decay below 35 (warm minus hysteresis) after
    // 7 * log2(40/35) days; no event needed.
    let expected_due = T0 + (7.0 * (40.0f64 / 35.0).log2() * DAY as f64) as i64;
    let due = e.next_due().expect("a due time");
    assert!(
        (due.millis() - expected_due).abs() <= 1000,
        "due {due} vs {expected_due}"
    );
    assert!(e.advance(Timestamp(due.millis() - 1)).is_empty());
    let out = e.advance(Timestamp(T0 + 365 * DAY));
    let crossed = crossings(&out);
    assert_eq!(crossed.len(), 1);
    let c = crossed[0];
    assert_eq!(
        (c.previous_tier.as_ref(), c.tier.as_ref(), c.direction),
        ("warm", "cold", Direction::Down)
    );
    assert_eq!(c.at, due);
    assert!(c.score < 35.0 && c.score > 34.99, "{}", c.score);
    assert_eq!(c.cause_event_id(), None);
    assert!(
        e.advance(Timestamp(T0 + 1000 * DAY)).is_empty(),
        "published once"
    );
    assert_eq!(e.next_due(), None);
}

#[test]
fn outputs_carry_explanations_and_the_rules_version() {
    let mut e = engine();
    applied(e.apply(
        &identify("i", "l", T0, &[("title", "Manager")]),
        Timestamp(T0),
    ));
    let out = applied(e.apply(&track("d", "l", "Demo Requested", T0), Timestamp(T0)));
    let o = &out[0];
    assert_eq!(o.rules_version.as_ref(), "test-1");
    let points: f64 = o.contributions.iter().map(|c| c.points).sum();
    assert_eq!(points, o.score);
    assert_eq!(o.contributions[0].rule.as_ref(), "demo");
}
