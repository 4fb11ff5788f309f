//! Erasure: a lead erased (an `erase` call, or a tombstone on the input
//! topic) leaves state as if it had never existed, accounts included; its
//! events from before the erasure that arrive later are dropped; only a
//! hash of its ids is kept, and only for the lateness window.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use common::*;
use leadscore::codec::{Decoder, Encoding};
use leadscore::core::account::{AccountEngine, AccountSnapshot, AccountUpdate};
use leadscore::core::output::Cause;
use leadscore::core::{Engine, Event, EventKind, Outcome, Output, OutputKind, Rules, Timestamp};
use proptest::prelude::*;

/// The example rules, accounts included, with any lateness accepted (as
/// `replay` does by default).
fn rules_with_accounts() -> Rules {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let mut rules = rules(example.split("\n[kafka]\n").next().unwrap());
    assert!(rules.accounts.is_some(), "the example scores accounts");
    rules.settings.allowed_lateness_ms = None;
    rules.settings.dedup_window_ms = i64::MAX;
    rules.settings.dedup_max_ids = usize::MAX;
    rules
}

fn sample_events(leads: usize, seed: u64, rules: &Rules) -> Vec<Event> {
    let decoder = Decoder::for_rules(rules);
    let mut events: Vec<Event> = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        seed,
        anonymous_share: 0.4,
        sales_share: 0.2,
        ..Default::default()
    })
    .iter()
    .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
    .map(Result::unwrap)
    .collect();
    events.sort_by_key(|e| e.timestamp);
    events
}

/// What a stream holds: events, and (for the stream in which a lead never
/// existed) the company traits its `group` calls reported, which describe
/// the account and stay when the person is erased.
enum Item {
    Event(Event),
    AccountTraits(AccountUpdate),
}

struct Run {
    leads: Engine,
    accounts: AccountEngine,
    outputs: Vec<Output>,
    dropped: usize,
}

/// Runs `items` as `replay` does: decay due by event time first, account
/// updates handed over at once.
fn run(rules: &Arc<Rules>, items: Vec<Item>, end: Timestamp) -> Run {
    let mut r = Run {
        leads: Engine::new(rules.clone()),
        accounts: AccountEngine::new(rules.clone()).unwrap(),
        outputs: Vec::new(),
        dropped: 0,
    };
    let mut watermark = Timestamp(0);
    let forward = |r: &mut Run| {
        for update in r.leads.take_account_updates() {
            let outputs = r.accounts.apply(&update);
            r.outputs.extend(outputs);
        }
    };
    for item in items {
        match item {
            Item::Event(event) => {
                watermark = watermark.max(event.timestamp);
                let due = r.leads.advance(watermark);
                r.outputs.extend(due);
                forward(&mut r);
                let due = r.accounts.advance(watermark);
                r.outputs.extend(due);
                match r.leads.apply(&event, Timestamp(i64::MAX / 2)) {
                    Outcome::Applied(outputs) => r.outputs.extend(outputs),
                    Outcome::Erased => r.dropped += 1,
                    _ => {}
                }
                forward(&mut r);
            }
            Item::AccountTraits(update) => {
                // As for the `group` call it stands for: decay due by its
                // time fires first.
                let AccountUpdate::Traits { at, .. } = &update else {
                    unreachable!("only traits are injected");
                };
                watermark = watermark.max(*at);
                let due = r.leads.advance(watermark);
                r.outputs.extend(due);
                forward(&mut r);
                let due = r.accounts.advance(watermark);
                r.outputs.extend(due);
                let outputs = r.accounts.apply(&update);
                r.outputs.extend(outputs);
            }
        }
    }
    let due = r.leads.advance(end);
    r.outputs.extend(due);
    forward(&mut r);
    let due = r.accounts.advance(end);
    r.outputs.extend(due);
    r
}

/// An account as compared: everything but the time of its latest update
/// (the erased lead's updates moved it, and nothing is computed from it).
fn account_view(mut account: AccountSnapshot) -> AccountSnapshot {
    account.last_event_at = Timestamp(0);
    account
}

fn erase(lead: &str, at: Timestamp) -> Event {
    Event::new(&format!("erase:{lead}"), lead, EventKind::Erase, at)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    })]

    /// Leads erased halfway through (some by an anonymous id merged into
    /// them, some of their events arriving after the erasure): the state
    /// at the end equals a run in which their events up to the erasure
    /// never happened, for every lead and every account. Their events after
    /// the erasure start them afresh.
    #[test]
    fn an_erased_lead_leaves_state_as_if_it_never_existed(seed in 0u64..1000, every in 2usize..5) {
        let rules = Arc::new(rules_with_accounts());
        let events = sample_events(60, seed, &rules);
        let erased_at = events[events.len() / 2].timestamp;
        let end = Timestamp(events.last().unwrap().timestamp.millis() + 30 * DAY);

        let users: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Identify)
            .map(|e| e.lead_id.as_str())
            .collect();
        let erased: Vec<&str> = users.iter().copied().step_by(every).collect();
        // Identities merged into an erased lead by the time of the erasure.
        let merged_in: BTreeMap<&str, &str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Alias && e.timestamp <= erased_at)
            .filter(|e| erased.contains(&e.lead_id.as_str()))
            .map(|e| (e.previous_id.as_deref().unwrap(), e.lead_id.as_str()))
            .collect();
        let person: BTreeSet<&str> = erased.iter().copied().chain(merged_in.keys().copied()).collect();
        let before = |e: &Event| e.timestamp <= erased_at;

        // With the erasures: a third of the erased persons' events from
        // before the erasure arrive after it (not their `alias` calls: one
        // arriving late would merge nothing, so the lead erased would be
        // another; nor `group` calls, whose company traits would then never
        // reach the account).
        let mut with = Vec::new();
        let mut late = Vec::new();
        let mut erasures = Vec::new();
        for (i, lead) in erased.iter().enumerate() {
            // Every other lead with a merged identity is erased by it.
            let by = merged_in
                .iter()
                .find(|(_, into)| *into == lead)
                .filter(|_| i % 2 == 1)
                .map_or(*lead, |(from, _)| *from);
            erasures.push(Item::Event(erase(by, erased_at)));
        }
        let mut erasures = Some(erasures);
        let mut moved = 0;
        for event in &events {
            if !before(event) {
                if let Some(erasures) = erasures.take() {
                    with.extend(erasures);
                    with.append(&mut late);
                }
            } else if person.contains(event.lead_id.as_str())
                && !matches!(event.kind, EventKind::Alias | EventKind::Group)
            {
                moved += 1;
                if moved % 3 == 0 {
                    late.push(Item::Event(event.clone()));
                    continue;
                }
            }
            with.push(Item::Event(event.clone()));
        }
        prop_assert!(erasures.is_none(), "events after the erasure");
        let late_count = moved / 3;

        // Without them: no event of theirs up to the erasure; the company
        // traits of their `group` calls reach the account all the same.
        let without: Vec<Item> = events
            .iter()
            .filter_map(|e| {
                if !(before(e) && person.contains(e.lead_id.as_str())) {
                    return Some(Item::Event(e.clone()));
                }
                let account_id = e.account_id.as_deref().filter(|_| e.kind == EventKind::Group)?;
                (!e.traits.is_empty()).then(|| Item::AccountTraits(AccountUpdate::Traits {
                    account_id: account_id.into(),
                    traits: e.traits.clone(),
                    at: e.timestamp,
                    cause: Cause::Event(e.message_id.clone()),
                }))
            })
            .collect();

        let a = run(&rules, with, end);
        let b = run(&rules, without, end);
        prop_assert_eq!(a.leads.snapshot(end), b.leads.snapshot(end));
        let accounts = |r: &Run| r.accounts.snapshot(end).into_iter().map(account_view).collect::<Vec<_>>();
        prop_assert_eq!(accounts(&a), accounts(&b));

        let erased_outputs: Vec<&Output> =
            a.outputs.iter().filter(|o| o.kind == OutputKind::LeadErased).collect();
        prop_assert_eq!(erased_outputs.len(), erased.len(), "one lead_erased per request");
        for output in &erased_outputs {
            prop_assert!(erased.contains(&output.lead_id.as_deref().unwrap()));
            prop_assert_eq!(output.at, erased_at);
        }
        prop_assert_eq!(a.dropped, late_count, "every late event of an erased lead dropped");
        for identity in merged_in.keys() {
            prop_assert_eq!(a.leads.resolve(identity), *identity, "the alias is gone");
        }
        // Only hashes are kept, one per identity erased.
        prop_assert_eq!(a.leads.erased_count(), person.len());
    }
}

/// An erased lead's late events are dropped while an event from before the
/// erasure could still be accepted; after that the erasure is forgotten
/// (such events are too late anyway), and an event after the erasure
/// starts the lead afresh.
#[test]
fn an_erasure_is_remembered_for_the_lateness_window_only() {
    let rules = arc(example_rules()); // allowed_lateness 7d
    let lateness = rules.settings.allowed_lateness_ms.unwrap();
    let mut engine = Engine::new(rules.clone()).track_changes();
    let now = Timestamp(i64::MAX / 2);
    let t = |days: f64| Timestamp(T0 + (days * DAY as f64) as i64);
    assert!(matches!(
        engine.apply(&track("m1", "ann", "Demo Requested", t(0.0).millis()), now),
        Outcome::Applied(_)
    ));
    let Outcome::Applied(outputs) = engine.apply(&erase("ann", t(1.0)), now) else {
        panic!("the erasure is applied");
    };
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].kind, OutputKind::LeadErased);
    assert!(engine.lead("ann").is_none());

    let mut changes = Vec::new();
    engine.take_changes(|id, change| {
        changes.push((
            id.to_string(),
            matches!(change, leadscore::core::engine::StateChange::Gone),
        ))
    });
    assert_eq!(
        changes,
        vec![("ann".to_string(), true)],
        "a tombstone for the lead"
    );
    let mut erasures = Vec::new();
    engine.take_erasures(|hash, at| erasures.push((hash, at)));
    let hash = leadscore::core::engine::identity_hash("ann");
    assert_eq!(erasures, vec![(hash, Some(t(1.0)))]);

    // A late event from before the erasure: dropped, not a new lead.
    let late = page("m2", "ann", "/pricing", t(0.5).millis());
    assert_eq!(engine.apply(&late, now), Outcome::Erased);
    assert!(engine.lead("ann").is_none());
    // The erasure repeated (a redelivery): nothing more to publish.
    assert_eq!(
        engine.apply(&erase("ann", t(1.0)), now),
        Outcome::AlreadyApplied
    );

    // Other leads move the watermark past the window: the erasure is
    // forgotten, and a late event is rejected as too late instead.
    let past = t(1.0).millis() + lateness + 1;
    engine.apply(&track("m3", "bob", "Demo Requested", past), now);
    engine.take_erasures(|h, at| erasures.push((h, at)));
    assert_eq!(
        erasures.last(),
        Some(&(hash, None)),
        "forgotten: a tombstone"
    );
    assert_eq!(engine.erased_count(), 0);
    assert!(matches!(
        engine.apply(&page("m4", "ann", "/pricing", t(0.9).millis()), now),
        Outcome::Rejected(_)
    ));
    // An event after the erasure starts the lead afresh.
    assert!(matches!(
        engine.apply(&page("m5", "ann", "/pricing", past), now),
        Outcome::Applied(_)
    ));
    let fresh = engine.lead("ann").unwrap();
    assert_eq!(fresh.seen.len(), 1, "nothing remembered from before");
}

/// Delivers the handoffs two partition engines send each other ("anon-*"
/// identities are `anons`', the rest `users'`) until none is left;
/// returns the outputs of acting on them.
fn deliver(users: &mut Engine, anons: &mut Engine) -> Vec<Output> {
    let mut outputs = Vec::new();
    loop {
        let mut pending = users.take_handoffs();
        pending.extend(anons.take_handoffs());
        if pending.is_empty() {
            return outputs;
        }
        for handoff in pending {
            let to = if handoff.destination().starts_with("anon-") {
                &mut *anons
            } else {
                &mut *users
            };
            if let Outcome::Applied(more) = to.apply_handoff(handoff) {
                outputs.extend(more);
            }
        }
    }
}

/// A lead's erasure when its identities live on other partitions: the
/// partition of the request hands it to the lead's, which hands the
/// forgetting of each merged identity to its own. Nothing of the lead is
/// left on either, and the late events of either identity are dropped.
#[test]
fn an_erasure_reaches_identities_held_by_other_partitions() {
    let rules = arc(example_rules());
    let now = Timestamp(i64::MAX / 2);
    let on = |anon: bool| -> leadscore::core::engine::Locality {
        Arc::new(move |id: &str| id.starts_with("anon-") == anon)
    };
    let mut users = Engine::new(rules.clone()).track_changes();
    users.set_locality(on(false));
    let mut anons = Engine::new(rules.clone()).track_changes();
    anons.set_locality(on(true));

    anons.apply(&page("m1", "anon-1", "/pricing", T0), now);
    let alias = Event {
        previous_id: Some("anon-1".into()),
        ..Event::new("m2", "ann", EventKind::Alias, Timestamp(T0 + 1000))
    };
    users.apply(&alias, now);
    deliver(&mut users, &mut anons);
    let merged = |users: &Engine| {
        users
            .lead("ann")
            .is_some_and(|l| l.merged.iter().any(|m| &*m.identity == "anon-1"))
    };
    assert!(merged(&users), "the anonymous history merged");
    assert_eq!(anons.resolve("anon-1"), "ann");

    // Erased by its anonymous id, on the anonymous id's partition.
    let at = Timestamp(T0 + DAY);
    assert_eq!(anons.apply(&erase("anon-1", at), now), Outcome::HandedOff);
    let outputs = deliver(&mut users, &mut anons);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].kind, OutputKind::LeadErased);
    assert_eq!(outputs[0].lead_id.as_deref(), Some("ann"));
    assert!(users.lead("ann").is_none());
    assert_eq!(anons.resolve("anon-1"), "anon-1", "the alias is gone");
    assert_eq!(users.resolve("anon-1"), "anon-1", "the alias is gone");

    // Tombstones for the lead and both records of the alias.
    let gone = |engine: &mut Engine| {
        let mut gone = BTreeSet::new();
        engine.take_changes(|id, change| {
            if matches!(change, leadscore::core::engine::StateChange::Gone) {
                gone.insert(id.to_string());
            }
        });
        gone
    };
    assert_eq!(
        gone(&mut users),
        BTreeSet::from(["ann".into(), "anon-1".into()])
    );
    assert_eq!(gone(&mut anons), BTreeSet::from(["anon-1".to_string()]));

    // Late events of either identity are dropped on their own partition.
    let late = page("m3", "anon-1", "/pricing", T0 + 2000);
    assert_eq!(anons.apply(&late, now), Outcome::Erased);
    let late = track("m4", "ann", "Demo Requested", T0 + 3000);
    assert_eq!(users.apply(&late, now), Outcome::Erased);
    assert!(deliver(&mut users, &mut anons).is_empty());
    assert!(users.lead("ann").is_none() && anons.lead("anon-1").is_none());
}
