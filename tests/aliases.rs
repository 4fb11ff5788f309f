//! `alias` merges across partitions in the core: identities on four
//! "partitions", each with its own engine that knows which identities are
//! its own; handoffs encoded, routed by identity, decoded, delivered late,
//! some twice; state restored from encoded changelog records. The leads
//! end as in one engine that saw everything.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use common::*;
use leadscore::codec::identity::{decode_handoff, encode_handoff};
use leadscore::codec::proto::{decode_changelog, encode_changelog, ChangelogValue};
use leadscore::codec::Decoder;
use leadscore::core::engine::LeadSnapshot;
use leadscore::core::{Engine, Event, EventKind, Handoff, Outcome, Rules, Timestamp};
use proptest::prelude::*;

const RULES: &str = r#"
version = "aliases-test-1"
[scoring]
half_life = "10d"
clamp = { min = 0, max = 100 }
step = 1
hysteresis = 5
[events]
allowed_lateness = "100d"
dedup_window = "101d"
[grades]
A = 20
B = 10
C = 5
[[tiers]]
name = "cold"
min_score = 0
[[tiers]]
name = "hot"
min_score = 60

[[fit]]
name = "vp"
points = 20
when = [{ field = "title", contains = "vp" }]

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
cap = { points = 20, per = "7d" }
half_life = "3d"
[[engagement]]
name = "webinar"
type = "track"
event = "Webinar Attended"
points = 15
once = true
"#;

const PARTITIONS: usize = 4;

fn partition_of(id: &str) -> usize {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % PARTITIONS as u64) as usize
}

fn alias(id: &str, user: &str, anonymous: &str, at_ms: i64) -> Event {
    let mut e = Event::new(id, user, EventKind::Alias, Timestamp(at_ms));
    e.previous_id = Some(anonymous.to_string());
    e
}

/// Identities: four users, eight anonymous visitors; each anonymous id
/// belongs to one user, and its alias calls (if any, possibly repeated)
/// say so. (An anonymous id aliased to two users contradicts itself; which
/// user ends up with what then depends on arrival order, even in one
/// engine.)
fn history() -> impl Strategy<Value = Vec<Event>> {
    let event = (0usize..12, 0u8..7, 0i64..(20 * DAY), 0usize..4);
    prop::collection::vec(event, 1..60).prop_map(|specs| {
        let mut events = Vec::new();
        for (i, (who, kind, at, user)) in specs.into_iter().enumerate() {
            let id = if who < 4 {
                format!("user-{who}")
            } else {
                format!("anon-{}", who - 4)
            };
            let message = format!("m{i}");
            let at = T0 + at;
            let event = match kind {
                0 => track(&message, &id, "Demo Requested", at),
                1 | 2 => page(&message, &id, "/pricing", at),
                3 => track(&message, &id, "Webinar Attended", at),
                4 => identify(&message, &id, at, &[("title", ["VP", "intern"][user % 2])]),
                _ if who >= 4 => alias(&message, &format!("user-{}", who % 4), &id, at),
                _ => page(&message, &id, "/blog", at),
            };
            // A producer retry: the same message again.
            if i % 9 == 8 {
                events.push(event.clone());
            }
            events.push(event);
        }
        events
    })
}

/// One input partition's engine and the identity topic partition it reads.
struct Partition {
    engine: Engine,
    inbox: VecDeque<Vec<u8>>,
    position: i64,
}

fn split_engines(rules: &Arc<Rules>) -> Vec<Partition> {
    (0..PARTITIONS)
        .map(|p| {
            let mut engine = Engine::new(rules.clone()).track_changes();
            engine.set_locality(Arc::new(move |id: &str| partition_of(id) == p));
            Partition {
                engine,
                inbox: VecDeque::new(),
                position: -1,
            }
        })
        .collect()
}

/// Encodes and routes what partition `from` handed off.
fn route(parts: &mut [Partition], from: usize, version: &leadscore::core::RulesStamp) {
    for handoff in parts[from].engine.take_handoffs() {
        let to = partition_of(handoff.destination());
        parts[to].inbox.push_back(encode_handoff(&handoff, version));
    }
}

/// Delivers up to `n` handoffs waiting for partition `p`; each `twice`
/// delivery is repeated, as a redelivery after a crash would.
fn deliver(
    parts: &mut [Partition],
    p: usize,
    n: usize,
    twice: bool,
    decoder: &Decoder,
    version: &leadscore::core::RulesStamp,
) -> Result<(), TestCaseError> {
    for _ in 0..n {
        let Some(bytes) = parts[p].inbox.pop_front() else {
            return Ok(());
        };
        let handoff: Handoff = decode_handoff(&bytes, decoder, version).unwrap();
        prop_assert_eq!(
            decode_handoff(&encode_handoff(&handoff, version), decoder, version).unwrap(),
            handoff.clone()
        );
        let outcome = parts[p].engine.apply_handoff(handoff.clone());
        prop_assert!(!matches!(outcome, Outcome::Rejected(_)), "{:?}", outcome);
        route(parts, p, version);
        if twice {
            let before = parts[p].engine.snapshot(Timestamp(T0));
            let again = parts[p].engine.apply_handoff(handoff);
            if let Outcome::Applied(outputs) = &again {
                prop_assert!(
                    outputs.is_empty(),
                    "a repeated handoff published {:?}",
                    outputs
                );
            }
            route(parts, p, version);
            prop_assert_eq!(parts[p].engine.snapshot(Timestamp(T0)), before);
        }
    }
    Ok(())
}

fn snapshots(parts: &[Partition], at: Timestamp) -> Vec<LeadSnapshot> {
    let mut all: Vec<LeadSnapshot> = parts.iter().flat_map(|p| p.engine.snapshot(at)).collect();
    all.sort_by(|a, b| a.lead_id.cmp(&b.lead_id));
    all
}

fn assert_same(expected: &[LeadSnapshot], actual: &[LeadSnapshot]) -> Result<(), TestCaseError> {
    let ids = |s: &[LeadSnapshot]| s.iter().map(|l| l.lead_id.clone()).collect::<Vec<_>>();
    prop_assert_eq!(ids(expected), ids(actual));
    for (x, y) in expected.iter().zip(actual) {
        // Tiers have hysteresis, so they depend on when a lead was
        // evaluated; the numbers do not.
        prop_assert!(
            (x.score - y.score).abs() < 1e-9,
            "{}: {} vs {}",
            x.lead_id,
            x.score,
            y.score
        );
        prop_assert!(
            (x.fit - y.fit).abs() < 1e-9,
            "{}: fit {} vs {}",
            x.lead_id,
            x.fit,
            y.fit
        );
        prop_assert!(
            (x.engagement - y.engagement).abs() < 1e-9,
            "{}: engagement {} vs {}",
            x.lead_id,
            x.engagement,
            y.engagement
        );
        prop_assert_eq!(x.last_event_at, y.last_event_at);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn aliases_across_partitions_equal_one_engine(
        events in history(),
        lag in prop::collection::vec(0usize..3, 200),
        repeat in prop::collection::vec(any::<bool>(), 200),
    ) {
        let rules = arc(rules(RULES));
        let version = rules.stamp();
        let decoder = Decoder::for_rules(&rules);
        let mut whole = Engine::new(rules.clone());
        let mut parts = split_engines(&rules);
        for (i, event) in events.iter().enumerate() {
            let now = Timestamp(T0 + 30 * DAY);
            let _ = whole.apply(event, now);
            let p = partition_of(&event.lead_id);
            parts[p].position += 1;
            let position = parts[p].position;
            let _ = parts[p].engine.apply_from(event, now, Some(position));
            route(&mut parts, p, &version);
            // Handoffs arrive late, in order, some twice.
            let q = i % PARTITIONS;
            deliver(&mut parts, q, lag[i % lag.len()], repeat[i % repeat.len()], &decoder, &version)?;
        }
        while parts.iter().any(|p| !p.inbox.is_empty()) {
            for p in 0..PARTITIONS {
                deliver(&mut parts, p, usize::MAX, false, &decoder, &version)?;
            }
        }
        let at = Timestamp(T0 + 40 * DAY);
        let expected = whole.snapshot(at);
        let split = snapshots(&parts, at);
        assert_same(&expected, &split)?;

        // Every partition restored from its encoded changelog records.
        let mut restored = split_engines(&rules);
        for (p, part) in parts.iter_mut().enumerate() {
            part.engine.take_changes(|id, change| {
                match decode_changelog(&encode_changelog(&change, &version)).unwrap() {
                    ChangelogValue::Lead { state, .. } => restored[p].engine.restore_lead(id, state),
                    ChangelogValue::AliasOf(to) => restored[p].engine.restore_alias(id, &to),
                }
            });
        }
        assert_same(&expected, &snapshots(&restored, at))?;
    }
}

/// The plain case, step by step: anonymous browsing on one partition, the
/// alias on another, then more anonymous browsing.
#[test]
fn anonymous_history_follows_its_alias_to_another_partition() {
    let rules = arc(rules(RULES));
    let version = rules.stamp();
    let decoder = Decoder::for_rules(&rules);
    // Two ids that live on different partitions.
    let user = "user-0";
    let anonymous = (0..)
        .map(|i| format!("anon-{i}"))
        .find(|a| partition_of(a) != partition_of(user))
        .unwrap();
    let (pu, pa) = (partition_of(user), partition_of(&anonymous));
    let mut parts = split_engines(&rules);
    let now = Timestamp(T0 + 30 * DAY);
    let apply = |parts: &mut Vec<Partition>, p: usize, e: Event| {
        parts[p].position += 1;
        let position = parts[p].position;
        let outcome = parts[p].engine.apply_from(&e, now, Some(position));
        route(parts, p, &version);
        outcome
    };
    apply(&mut parts, pa, page("m1", &anonymous, "/pricing", T0));
    apply(
        &mut parts,
        pa,
        track("m2", &anonymous, "Demo Requested", T0 + 1000),
    );
    apply(&mut parts, pu, alias("m3", user, &anonymous, T0 + 2000));
    // The user's partition asks the anonymous id's partition to hand over.
    assert_eq!(parts[pa].inbox.len(), 1);
    deliver(&mut parts, pa, 1, false, &decoder, &version).unwrap();
    assert!(parts[pa].engine.lead(&anonymous).is_none(), "handed over");
    assert_eq!(parts[pu].inbox.len(), 1);
    deliver(&mut parts, pu, 1, true, &decoder, &version).unwrap();
    let lead = parts[pu]
        .engine
        .explain(user, Timestamp(T0 + 5000))
        .unwrap();
    assert!(lead.engagement > 49.0, "{lead:?}");
    // A later anonymous event is forwarded, and counted once.
    let outcome = apply(
        &mut parts,
        pa,
        page("m4", &anonymous, "/pricing", T0 + 3000),
    );
    assert_eq!(outcome, Outcome::HandedOff);
    deliver(&mut parts, pu, 1, true, &decoder, &version).unwrap();
    let after = parts[pu]
        .engine
        .explain(user, Timestamp(T0 + 5000))
        .unwrap();
    assert!(
        (after.engagement - lead.engagement - 10.0).abs() < 0.01,
        "{} then {}",
        lead.engagement,
        after.engagement
    );
    // Asked about the anonymous id, the user's partition answers for the user.
    assert_eq!(parts[pu].engine.resolve(&anonymous), user);
}
