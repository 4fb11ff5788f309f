//! Property tests of the scoring core's guarantees: order independence,
//! idempotence, exact decay, no flapping inside the hysteresis band.

mod common;

use common::*;
use leadscore::core::engine::LeadSnapshot;
use leadscore::core::{Event, EventKind, Output, OutputKind, Rules, Timestamp};
use leadscore::replay::Replayer;
use proptest::prelude::*;

/// One generated call; turned into an [`Event`] with a unique message id.
#[derive(Clone, Debug)]
enum Call {
    Identify {
        title: usize,
        email: usize,
        budget: bool,
    },
    Page(usize),
    Track(usize),
    Group(usize),
}

const TITLES: &[&str] = &[
    "VP Marketing",
    "Director of Sales",
    "Marketing Manager",
    "Student",
    "Engineer",
];
const EMAILS: &[&str] = &["a@acme.example", "b@gmail.com", "c@hubspot.com"];
const PATHS: &[&str] = &[
    "/pricing",
    "/product",
    "/contact",
    "/careers",
    "/blog/x",
    "/features/a",
];
const TRACKS: &[&str] = &[
    "Demo Requested",
    "Email Opened",
    "Email Link Clicked",
    "Whitepaper Downloaded",
    "Trial Started",
    "Unsubscribed",
    "Email Bounced",
    "Form Submitted",
];

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => (0..TITLES.len(), 0..EMAILS.len(), any::<bool>())
            .prop_map(|(title, email, budget)| Call::Identify { title, email, budget }),
        4 => (0..PATHS.len()).prop_map(Call::Page),
        4 => (0..TRACKS.len()).prop_map(Call::Track),
        1 => (0..3usize).prop_map(Call::Group),
    ]
}

/// A lead's history: calls at times within 60 days, some of them made
/// anonymously before an alias.
fn history() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((call(), 0..60 * DAY, any::<bool>()), 1..40).prop_map(|calls| {
        let mut events: Vec<Event> = calls
            .into_iter()
            .enumerate()
            .map(|(i, (call, offset, anonymous))| {
                let lead = if anonymous { "anon-1" } else { "lead-1" };
                to_event(&format!("m{i}"), lead, &call, T0 + offset)
            })
            .collect();
        let mut alias = Event::new(
            "alias",
            "lead-1",
            EventKind::Alias,
            Timestamp(T0 + 30 * DAY),
        );
        alias.previous_id = Some("anon-1".into());
        events.push(alias);
        events
    })
}

fn to_event(id: &str, lead: &str, call: &Call, at: i64) -> Event {
    match call {
        Call::Identify {
            title,
            email,
            budget,
        } => {
            let mut e = identify(
                id,
                lead,
                at,
                &[("title", TITLES[*title]), ("email", EMAILS[*email])],
            );
            if *budget {
                e = e.with_trait("budget", "50k");
            }
            e
        }
        Call::Page(p) => page(id, lead, PATHS[*p], at),
        Call::Track(t) => {
            let e = track(id, lead, TRACKS[*t], at);
            match TRACKS[*t] {
                "Form Submitted" => e.with_property("form_type", "contact"),
                _ => e,
            }
        }
        Call::Group(g) => {
            let mut e = Event::new(id, lead, EventKind::Group, Timestamp(at));
            e.account_id = Some(format!("acct-{g}"));
            e
        }
    }
}

fn replay(rules: &Rules, events: &[Event], at: Timestamp) -> (Vec<Output>, Vec<LeadSnapshot>) {
    let mut replayer = Replayer::new(rules, false);
    let mut outputs = Vec::new();
    for e in events {
        replayer
            .feed(e, &mut |o| outputs.push(o.clone()))
            .expect("no rejections");
    }
    let (_, snapshot) = replayer
        .finish(Some(at), &mut |o| outputs.push(o.clone()))
        .unwrap();
    (outputs, snapshot)
}

/// Whether `score` lies in some tier's hysteresis band, where the tier a
/// lead holds depends on the path it took.
fn in_a_band(rules: &Rules, score: f64) -> bool {
    rules
        .tiers
        .iter()
        .skip(1)
        .any(|t| score >= t.min_score - rules.settings.hysteresis && score < t.min_score)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The same events in any order give the same snapshot: score, fit,
    /// engagement, grade, account and every contribution within 1e-9; the
    /// tier too, except inside a hysteresis band where it depends on the
    /// path by design (that is what stops flapping).
    #[test]
    fn shuffled_events_give_the_same_snapshot(
        (events, shuffled) in history().prop_flat_map(|h| (Just(h.clone()), Just(h).prop_shuffle()))
    ) {
        let rules = example_rules();
        let at = Timestamp(T0 + 90 * DAY);
        let (_, a) = replay(&rules, &events, at);
        let (_, b) = replay(&rules, &shuffled, at);
        prop_assert_eq!(a.len(), 1, "the anonymous history merged into the lead");
        prop_assert_eq!(b.len(), 1);
        let (a, b) = (&a[0], &b[0]);
        prop_assert_eq!(&a.lead_id, &b.lead_id);
        prop_assert_eq!(&a.account_id, &b.account_id);
        prop_assert_eq!(a.grade, b.grade);
        prop_assert!((a.score - b.score).abs() < 1e-9, "{} vs {}", a.score, b.score);
        prop_assert!((a.fit - b.fit).abs() < 1e-9);
        prop_assert!((a.engagement - b.engagement).abs() < 1e-9);
        prop_assert_eq!(a.contributions.len(), b.contributions.len());
        for c in &a.contributions {
            let other = b.contributions.iter().find(|o| o.rule == c.rule);
            prop_assert!(other.is_some_and(|o| (o.points - c.points).abs() < 1e-9), "{:?}", c);
        }
        if !in_a_band(&rules, a.score) {
            prop_assert_eq!(&a.tier, &b.tier);
        }
    }

    /// Redelivered copies (same message id, later position) are counted
    /// once: the outputs and the snapshot are exactly those without them.
    #[test]
    fn a_duplicated_event_changes_nothing(
        events in history(),
        copies in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..10),
    ) {
        let rules = example_rules();
        let at = Timestamp(T0 + 90 * DAY);
        let mut with_copies = events.clone();
        for (which, position) in copies {
            let original = which.index(events.len());
            // A copy always comes after its original, as redelivery does.
            let start = with_copies.iter().position(|e| e.message_id == events[original].message_id).unwrap() + 1;
            let at_index = start + position.index(with_copies.len() - start + 1);
            with_copies.insert(at_index, events[original].clone());
        }
        let (out_a, snap_a) = replay(&rules, &events, at);
        let (out_b, snap_b) = replay(&rules, &with_copies, at);
        prop_assert_eq!(snap_a, snap_b);
        prop_assert_eq!(out_a, out_b);
    }

    /// Engagement halves after one half-life with no events, and never
    /// grows while positive points decay.
    #[test]
    fn engagement_halves_after_one_half_life(
        points in 1u32..200,
        half_life_hours in 1u32..2000,
        offset in 0..30 * DAY,
        probes in prop::collection::vec(0..400 * DAY, 2..6),
    ) {
        let rules = rules(&format!(r#"
            version = "p"
            [scoring]
            half_life = "{half_life_hours}h"
            [grades]
            A = 3
            B = 2
            C = 1
            [[tiers]]
            name = "all"
            min_score = 0
            [[engagement]]
            name = "hit"
            type = "track"
            points = {points}
        "#));
        let t = T0 + offset;
        let (_, snap) = replay(&rules, &[track("m", "l", "Anything", t)], Timestamp(t));
        prop_assert_eq!(snap[0].engagement, f64::from(points));
        let half = Timestamp(t + i64::from(half_life_hours) * 3_600_000);
        let (_, later) = replay(&rules, &[track("m", "l", "Anything", t)], half);
        prop_assert!((later[0].engagement - f64::from(points) / 2.0).abs() < 1e-9);
        let mut probes = probes;
        probes.sort();
        let values: Vec<f64> = probes
            .iter()
            .map(|p| replay(&rules, &[track("m", "l", "Anything", t)], Timestamp(t + p)).1[0].engagement)
            .collect();
        prop_assert!(values.windows(2).all(|w| w[0] >= w[1]), "{:?}", values);
    }

    /// A lead at a tier boundary whose score wobbles inside the hysteresis
    /// band crosses once (on entry) and never flaps.
    #[test]
    fn oscillation_inside_the_band_emits_no_crossings(
        steps in prop::collection::vec((any::<bool>(), 1u32..4), 1..80),
    ) {
        let rules = rules(r#"
            version = "osc"
            [scoring]
            half_life = "none"
            step = 0
            hysteresis = 5
            [grades]
            A = 3
            B = 2
            C = 1
            [[tiers]]
            name = "cold"
            min_score = 0
            [[tiers]]
            name = "warm"
            min_score = 40
            [[engagement]]
            name = "up"
            type = "track"
            event = "Up"
            points = 1
            [[engagement]]
            name = "down"
            type = "track"
            event = "Down"
            points = -1
        "#);
        let mut events = Vec::new();
        let mut score = 0i64;
        let mut t = T0;
        let mut push = |name: &str, t: &mut i64| {
            *t += 1000;
            events.push(track(&format!("m{}", events.len()), "l", name, *t));
        };
        while score < 40 {
            push("Up", &mut t);
            score += 1;
        }
        for (up, size) in steps {
            let size = i64::from(size);
            let next = if up { score + size } else { score - size };
            // Stay inside the band below the line, or above it.
            if !(36..=45).contains(&next) {
                continue;
            }
            for _ in 0..size {
                push(if up { "Up" } else { "Down" }, &mut t);
            }
            score = next;
        }
        let (outputs, snap) = replay(&rules, &events, Timestamp(t));
        let crossings: Vec<_> = outputs.iter().filter(|o| o.kind == OutputKind::ThresholdCrossed).collect();
        prop_assert_eq!(crossings.len(), 1, "{:?}", crossings);
        prop_assert_eq!(snap[0].tier.as_ref(), "warm");
        prop_assert_eq!(snap[0].score, score as f64);
    }
}
