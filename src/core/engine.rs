//! The partition engine: every lead of one partition (or of a whole replay)
//! with its dedup memory and decay timers.
//!
//! `apply` and `advance` are the only ways state changes; both take "now"
//! as a parameter and return the outputs they caused, which the caller
//! publishes. Given the same rules and the same events in the same order, the
//! state and the outputs (ids included) are the same in every run.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::core::account::{AccountUpdate, Member};
use crate::core::event::{Event, EventKind, Value};
use crate::core::lead::{Evaluation, LeadState};
use crate::core::output::{
    direction_of, output_id, push_change, Cause, Contribution, Output, OutputKind,
};
use crate::core::rules::EMAIL_DOMAIN_TRAIT;
use crate::core::rules::{Grade, Rules};
use crate::core::time::Timestamp;

/// What became of one input event.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Applied; these outputs follow (possibly none).
    Applied(Vec<Output>),
    /// Its message id was already applied to this lead: nothing changed.
    Duplicate,
    /// The lead's state already includes this input position (a redelivery
    /// after a crash): nothing changed.
    AlreadyApplied,
    Rejected(Rejection),
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "event time is {age_ms} ms in the past, beyond the allowed lateness of {allowed_ms} ms"
    )]
    TooLate { age_ms: i64, allowed_ms: i64 },
    #[error(
        "event time is {ahead_ms} ms in the future, beyond the allowed skew of {allowed_ms} ms"
    )]
    TooFarInFuture { ahead_ms: i64, allowed_ms: i64 },
}

impl Rejection {
    /// A short, bounded label for metrics and dead-letter headers.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::TooLate { .. } => "too_late",
            Rejection::TooFarInFuture { .. } => "too_far_in_future",
        }
    }
}

/// A lead's state as seen from outside, at one point in time.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadSnapshot {
    pub lead_id: String,
    pub account_id: Option<String>,
    pub as_of: Timestamp,
    pub fit: f64,
    pub engagement: f64,
    pub score: f64,
    pub grade: Grade,
    pub tier: Arc<str>,
    /// All contributions, largest first.
    pub contributions: Vec<Contribution>,
    /// The latest event (or decay) time applied to the lead.
    pub last_event_at: Timestamp,
}

pub struct Engine {
    rules: Arc<Rules>,
    /// Boxed so the map's table stays small: it is sized in powers of two,
    /// and every empty slot would otherwise cost a whole lead state.
    leads: HashMap<Box<str>, Box<LeadState>>,
    /// (due time, lead id) for every lead whose tier decay will change.
    timers: BTreeSet<(Timestamp, Box<str>)>,
    /// Identities merged by `alias` calls, to the lead they now belong to:
    /// an anonymous event that arrives after its alias still lands on the
    /// right lead, so the result does not depend on arrival order.
    aliases: HashMap<Box<str>, Box<str>>,
    /// The latest event time applied: lateness is measured against it, so a
    /// backlog processed hours late is not rejected for being old.
    watermark: Option<Timestamp>,
    /// Leads and aliases changed since the last `take_changes`, when
    /// tracking is on (the stream processor writes them to its changelog).
    changes: Option<Changes>,
    /// What leads' accounts need to hear, when the rules score accounts;
    /// drained by `take_account_updates`.
    account_updates: Vec<AccountUpdate>,
}

#[derive(Default)]
struct Changes {
    leads: BTreeSet<Box<str>>,
    aliases: Vec<(Box<str>, Box<str>)>,
}

/// A change to persist, as reported by [`Engine::take_changes`].
pub enum StateChange<'a> {
    /// The lead's state is now this.
    Lead(&'a LeadState),
    /// The identity now belongs to another lead (its own state is gone).
    AliasOf(&'a str),
}

impl Engine {
    pub fn new(rules: Arc<Rules>) -> Self {
        Engine {
            rules,
            leads: HashMap::new(),
            timers: BTreeSet::new(),
            aliases: HashMap::new(),
            watermark: None,
            changes: None,
            account_updates: Vec::new(),
        }
    }

    /// Records which leads change, for [`Engine::take_changes`].
    pub fn track_changes(mut self) -> Self {
        self.changes = Some(Changes::default());
        self
    }

    /// Calls `each` for every lead and alias changed since the last call,
    /// leads in id order, and forgets them.
    pub fn take_changes(&mut self, mut each: impl FnMut(&str, StateChange<'_>)) {
        let Some(changes) = self.changes.as_mut() else {
            return;
        };
        let changes = std::mem::take(changes);
        for (from, to) in &changes.aliases {
            each(from, StateChange::AliasOf(to));
        }
        for id in &changes.leads {
            if let Some(lead) = self.leads.get(id) {
                each(id, StateChange::Lead(lead));
            }
        }
    }

    /// Puts back a lead's state read from a changelog.
    pub fn restore_lead(&mut self, lead_id: &str, state: LeadState) {
        self.aliases.remove(lead_id);
        if let Some(old) = self.leads.get(lead_id) {
            if let Some(due) = old.due {
                self.timers.remove(&(due, lead_id.into()));
            }
        }
        if let Some(due) = state.due {
            self.timers.insert((due, lead_id.into()));
        }
        self.watermark = self.watermark.max(Some(state.clock));
        self.leads.insert(lead_id.into(), Box::new(state));
    }

    /// Puts back an alias read from a changelog.
    pub fn restore_alias(&mut self, from: &str, to: &str) {
        if let Some(old) = self.leads.remove(from) {
            if let Some(due) = old.due {
                self.timers.remove(&(due, from.into()));
            }
        }
        self.aliases.insert(from.into(), to.into());
    }

    /// The latest event time applied (or restored).
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    pub fn lead_count(&self) -> usize {
        self.leads.len()
    }

    pub fn lead(&self, lead_id: &str) -> Option<&LeadState> {
        self.leads.get(lead_id).map(|lead| &**lead)
    }

    /// Number of message ids held for dedup, over all leads.
    pub fn remembered_ids(&self) -> usize {
        self.leads.values().map(|l| l.seen.len()).sum()
    }

    /// Heap bytes the dedup memory takes, over all leads (capacity, not
    /// just length): lets benchmarks report state size with and without it.
    pub fn remembered_id_bytes(&self) -> usize {
        self.leads
            .values()
            .map(|l| l.seen.capacity() * std::mem::size_of::<crate::core::lead::SeenId>())
            .sum()
    }

    /// Account updates since the last call, in the order they happened.
    pub fn take_account_updates(&mut self) -> Vec<AccountUpdate> {
        std::mem::take(&mut self.account_updates)
    }

    /// The lead an identity belongs to, following `alias` merges.
    pub fn resolve<'a>(&'a self, id: &'a str) -> &'a str {
        resolve_in(&self.aliases, id)
    }

    /// The earliest time at which `advance` has something to do.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// Applies one event. It is rejected if it lies further in the future
    /// than the allowed skew from `now` (the processing clock), or further
    /// behind the engine's watermark (the latest event time applied) than
    /// the allowed lateness. Scores are evaluated at the lead's own clock,
    /// the latest event time it has seen, so outputs do not depend on when
    /// the event was processed.
    pub fn apply(&mut self, event: &Event, now: Timestamp) -> Outcome {
        self.apply_from(event, now, None)
    }

    /// [`Engine::apply`] for an event read from a log at `position` (a
    /// partition offset). A lead remembers the highest position applied to
    /// it, so an event redelivered after a crash is recognised even where
    /// the dedup memory or the broker's transactions cannot be trusted.
    pub fn apply_from(&mut self, event: &Event, now: Timestamp, position: Option<i64>) -> Outcome {
        let rules = &*self.rules;
        let settings = &rules.settings;
        let t = event.timestamp;
        if let (Some(allowed_ms), Some(watermark)) = (settings.allowed_lateness_ms, self.watermark)
        {
            let age_ms = watermark.millis().saturating_sub(t.millis());
            if age_ms > allowed_ms {
                return Outcome::Rejected(Rejection::TooLate { age_ms, allowed_ms });
            }
        }
        let ahead_ms = t.millis().saturating_sub(now.millis());
        if ahead_ms > settings.max_future_skew_ms {
            return Outcome::Rejected(Rejection::TooFarInFuture {
                ahead_ms,
                allowed_ms: settings.max_future_skew_ms,
            });
        }
        let id_hash = xxh3_64(event.message_id.as_bytes());

        let resolved = resolve_in(&self.aliases, &event.lead_id);
        let lead_id: Cow<str> = if resolved == event.lead_id {
            Cow::Borrowed(&event.lead_id)
        } else {
            Cow::Owned(resolved.to_string())
        };
        if let (Some(position), Some(lead)) = (position, self.leads.get(lead_id.as_ref())) {
            if position <= lead.position {
                return Outcome::AlreadyApplied;
            }
        }
        let mut absorbed = None;
        let mut absorbed_id: Option<Box<str>> = None;
        if event.kind == EventKind::Alias {
            if let Some(previous) = event.previous_id.as_deref() {
                let seen = self
                    .leads
                    .get(lead_id.as_ref())
                    .is_some_and(|l| l.seen.iter().any(|s| s.id == id_hash));
                if seen {
                    return Outcome::Duplicate;
                }
                let previous: Box<str> = self.resolve(previous).into();
                if *previous != *lead_id {
                    absorbed = self.leads.remove(&previous);
                    absorbed_id = Some(previous.clone());
                    if let Some(due) = absorbed.as_ref().and_then(|p| p.due) {
                        self.timers.remove(&(due, previous.clone()));
                    }
                    if let Some(changes) = self.changes.as_mut() {
                        changes
                            .aliases
                            .push((previous.clone(), lead_id.as_ref().into()));
                    }
                    self.aliases.insert(previous, lead_id.as_ref().into());
                }
            }
        }

        let lead = match self.leads.get_mut(lead_id.as_ref()) {
            Some(lead) => lead,
            None => self
                .leads
                .entry(lead_id.as_ref().into())
                .or_insert_with(|| Box::new(LeadState::new(t))),
        };
        if let Some(position) = position {
            lead.position = lead.position.max(position);
        }
        if let Some(changes) = self.changes.as_mut() {
            if !changes.leads.contains(lead_id.as_ref()) {
                changes.leads.insert(lead_id.as_ref().into());
            }
        }
        let watermark = self.watermark.map_or(t, |w| w.max(t));
        self.watermark = Some(watermark);
        if !lead.remember(id_hash, t, settings) {
            return Outcome::Duplicate;
        }
        let due_before = lead.due;
        let account_before = lead.account.as_ref().map(|a| a.id.clone());
        let mut outputs = Vec::new();
        advance_lead(rules, &lead_id, lead, t, &mut outputs);

        let cause = Cause::Event(event.message_id.clone());
        let accounts = rules.accounts.as_deref();
        if let Some(previous) = absorbed {
            if let (Some(_), Some(link)) = (accounts, previous.account.as_ref()) {
                // The merged identity's share moves to the lead it joined.
                self.account_updates.push(AccountUpdate::Member {
                    account_id: link.id.clone(),
                    lead_id: absorbed_id.clone().unwrap_or_default(),
                    member: None,
                    at: t,
                    cause: cause.clone(),
                });
            }
            lead.absorb(rules, *previous);
        }
        if let Some(accounts) = accounts.filter(|a| a.from_email_domain) {
            if event.kind != EventKind::Group {
                let domain = event
                    .traits
                    .get(EMAIL_DOMAIN_TRAIT)
                    .or_else(|| event.traits.get("email"))
                    .and_then(Value::as_text)
                    .map(|e| e.rsplit_once('@').map_or(e, |(_, d)| d));
                if let Some(account) = domain.and_then(|d| accounts.account_of_domain(d)) {
                    lead.link_account_from_email(&account, t);
                }
            }
        }
        if event.kind != EventKind::Group {
            // Group traits describe the account, not the person.
            lead.apply_traits(rules, &event.traits, t);
        }
        if let Some(account_id) = &event.account_id {
            lead.link_account(account_id, t);
        }
        rules.for_each_matching_rule(event, |rule| lead.credit(rules, rule, t));
        lead.clock = lead.clock.max(t);
        if let Some(allowed_ms) = settings.allowed_lateness_ms {
            lead.fold_closed_windows(rules, watermark.saturating_sub_ms(allowed_ms));
        }
        emit(rules, &lead_id, lead, cause.clone(), &mut outputs);
        lead.due = lead.next_change_due(rules, lead.clock);
        let due_after = lead.due;
        if accounts.is_some() {
            let account_after = lead.account.as_ref().map(|a| a.id.clone());
            if let Some(left) = account_before.filter(|b| Some(b) != account_after.as_ref()) {
                self.account_updates.push(AccountUpdate::Member {
                    account_id: left,
                    lead_id: lead_id.as_ref().into(),
                    member: None,
                    at: lead.clock,
                    cause: cause.clone(),
                });
            }
            if let Some(account_id) = account_after {
                self.account_updates.push(AccountUpdate::Member {
                    account_id: account_id.clone(),
                    lead_id: lead_id.as_ref().into(),
                    member: Some(Member::of_lead(rules, &lead_id, lead)),
                    at: lead.clock,
                    cause: cause.clone(),
                });
            }
            if let (EventKind::Group, Some(account_id)) = (event.kind, &event.account_id) {
                if !event.traits.is_empty() {
                    self.account_updates.push(AccountUpdate::Traits {
                        account_id: account_id.as_str().into(),
                        traits: event.traits.clone(),
                        at: t,
                        cause,
                    });
                }
            }
        }
        reschedule(&mut self.timers, &lead_id, due_before, due_after);
        Outcome::Applied(outputs)
    }

    /// Publishes what decay alone changes up to `now`: tier drops (or rises,
    /// as negative points fade) of leads that saw no event, in due-time order.
    pub fn advance(&mut self, now: Timestamp) -> Vec<Output> {
        let rules = &*self.rules;
        let mut outputs = Vec::new();
        while let Some((due, lead_id)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(lead) = self.leads.get_mut(&lead_id) else {
                debug_assert!(false, "timer for a lead that is gone");
                continue;
            };
            advance_lead(rules, &lead_id, lead, due, &mut outputs);
            reschedule(&mut self.timers, &lead_id, None, lead.due);
            if let Some(changes) = self.changes.as_mut() {
                changes.leads.insert(lead_id);
            }
        }
        outputs
    }

    /// The lead's numbers and explanation at `at` (not before its clock).
    pub fn explain(&self, lead_id: &str, at: Timestamp) -> Option<LeadSnapshot> {
        self.leads
            .get(lead_id)
            .map(|lead| snapshot_of(&self.rules, lead_id, lead, at))
    }

    /// Every lead at `at`, ordered by lead id. Call `advance(at)` first for
    /// tiers that include decay up to `at`.
    pub fn snapshot(&self, at: Timestamp) -> Vec<LeadSnapshot> {
        let mut ids: Vec<&Box<str>> = self.leads.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| snapshot_of(&self.rules, id, &self.leads[id], at))
            .collect()
    }
}

fn resolve_in<'a>(aliases: &'a HashMap<Box<str>, Box<str>>, mut id: &'a str) -> &'a str {
    if aliases.is_empty() {
        return id;
    }
    // Aliases never form a cycle (see `apply`), but bound the walk anyway.
    for _ in 0..16 {
        match aliases.get(id) {
            Some(next) => id = next,
            None => break,
        }
    }
    id
}

fn snapshot_of(rules: &Rules, lead_id: &str, lead: &LeadState, at: Timestamp) -> LeadSnapshot {
    let at = at.max(lead.clock);
    let eval = lead.evaluate(rules, at);
    LeadSnapshot {
        lead_id: lead_id.to_string(),
        account_id: lead.account.as_ref().map(|a| a.id.to_string()),
        as_of: at,
        fit: eval.fit,
        engagement: eval.engagement,
        score: eval.score,
        grade: eval.grade,
        tier: rules.tier_name(usize::from(lead.tier)).clone(),
        contributions: lead.contributions(rules, at),
        last_event_at: lead.clock,
    }
}

/// Moves `id`'s timer from `before` to `after` (either may be none).
pub(crate) fn reschedule(
    timers: &mut BTreeSet<(Timestamp, Box<str>)>,
    lead_id: &str,
    before: Option<Timestamp>,
    after: Option<Timestamp>,
) {
    if before == after {
        return;
    }
    if let Some(due) = before {
        timers.remove(&(due, lead_id.into()));
    }
    if let Some(due) = after {
        timers.insert((due, lead_id.into()));
    }
}

/// Fires the lead's decay due times up to `until`, one at a time, each
/// evaluated at its own due time.
fn advance_lead(
    rules: &Rules,
    lead_id: &str,
    lead: &mut LeadState,
    until: Timestamp,
    outputs: &mut Vec<Output>,
) {
    // Each firing changes the tier, and tiers are few: the bound only
    // guards against a float edge case looping.
    for _ in 0..=2 * rules.tiers.len() {
        let Some(due) = lead.due.filter(|due| *due <= until) else {
            return;
        };
        lead.clock = lead.clock.max(due);
        emit(rules, lead_id, lead, Cause::Decay(due), outputs);
        lead.due = lead.next_change_due(rules, lead.clock);
    }
    lead.due = None;
}

/// Evaluates the lead at its clock and emits `score_changed` (score moved
/// by at least the step, or the tier changed) and `threshold_crossed`.
fn emit(rules: &Rules, lead_id: &str, lead: &mut LeadState, cause: Cause, out: &mut Vec<Output>) {
    let at = lead.clock;
    let eval: Evaluation = lead.evaluate(rules, at);
    let previous = usize::from(lead.tier);
    let tier = lead.tier_at(rules, &eval);
    let delta = eval.score - lead.last_emitted_score;
    if tier == previous && delta.abs() < rules.settings.step {
        return;
    }
    let mut contributions = lead.contributions(rules, at);
    contributions.truncate(rules.settings.top_contributions);
    let direction = direction_of(tier, previous, delta);
    let changed = Output {
        kind: OutputKind::ScoreChanged,
        event_id: output_id(lead_id, OutputKind::ScoreChanged, &cause),
        lead_id: Some(lead_id.to_string()),
        account_id: lead.account.as_ref().map(|a| a.id.to_string()),
        at,
        cause: cause.clone(),
        score: eval.score,
        fit: eval.fit,
        engagement: eval.engagement,
        grade: eval.grade,
        tier: rules.tier_name(tier).clone(),
        previous_tier: rules.tier_name(previous).clone(),
        direction,
        delta,
        contributions,
        rules_version: rules.version.clone(),
    };
    let crossed_id =
        (tier != previous).then(|| output_id(lead_id, OutputKind::ThresholdCrossed, &cause));
    push_change(out, changed, crossed_id);
    lead.tier = tier as u8;
    lead.last_emitted_score = eval.score;
}
