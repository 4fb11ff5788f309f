//! The partition engine: every lead of one partition (or of a whole replay)
//! with its dedup memory and decay timers.
//!
//! `apply` and `advance` are the only ways state changes; both take "now"
//! as a parameter and return the outputs they caused, which the caller
//! publishes. Given the same rules and the same events in the same order, the
//! state and the outputs (ids included) are the same in every run.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::HashMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::core::account::{AccountUpdate, Member};
use crate::core::event::{Event, EventKind, Value};
use crate::core::filters::FilterReason;
use crate::core::handoff::{Handoff, MAX_HOPS};
use crate::core::lead::{EngagementByRule, Evaluation, Fit, FitMemo, LeadState};
use crate::core::output::{
    direction_of, handover_moves, output_id, push_change, Cause, Contribution, Output, OutputKind,
};
use crate::core::prefetch::{prefetch, prefetch_all};
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
    /// Its lead is held by another partition's engine: passed on as a
    /// [`Handoff`] (see [`Engine::take_handoffs`]).
    HandedOff,
    /// Its lead was erased after the event's time: dropped (an event that
    /// arrives late must not bring an erased lead back).
    Erased,
    /// Not a person's (`[filters]`): not scored. `outputs` are what the
    /// event's time made due for its lead first (decay, expiry).
    Filtered {
        reason: FilterReason,
        outputs: Vec<Output>,
    },
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
    #[error("handed between partitions {hops} times: contradictory alias calls form a loop")]
    AliasLoop { hops: u32 },
}

impl Rejection {
    /// A short, bounded label for metrics and dead-letter headers.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::TooLate { .. } => "too_late",
            Rejection::TooFarInFuture { .. } => "too_far_in_future",
            Rejection::AliasLoop { .. } => "alias_loop",
        }
    }
}

/// A lead's state as seen from outside, at one point in time.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadSnapshot {
    pub lead_id: String,
    /// The score's name when the rules file holds several.
    pub score_name: Option<Arc<str>>,
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
    /// Where the lead stands with sales (lifecycle rules), if anywhere.
    pub lifecycle: Option<crate::core::lead::Lifecycle>,
}

pub struct Engine {
    rules: Arc<Rules>,
    /// Boxed so the map's table stays small: it is sized in powers of two,
    /// and every empty slot would otherwise cost a whole lead state.
    leads: HashMap<Box<str>, Box<LeadState>>,
    /// (due time, lead id) for every lead whose tier decay will change.
    timers: BTreeSet<(Timestamp, Box<str>)>,
    /// Leads were restored (or dropped) since the timers were last built:
    /// restoring leaves them alone (a lead may be restored many times over,
    /// each time its own tree search), and they are built again from the
    /// leads' due times, in one pass, before anything reads them.
    timers_stale: bool,
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
    /// Whether an identity's events come to this engine; `None`: all do
    /// (one engine for everything, as in `replay`).
    locality: Option<Locality>,
    /// Work for other partitions' engines; drained by `take_handoffs`.
    handoffs: Vec<Handoff>,
    /// Identities erased, by [`identity_hash`] (never the id itself), with
    /// the erasure's time: their events from no later than that are
    /// dropped. Kept while such an event could still be accepted, i.e. until
    /// the watermark passes the erasure by the allowed lateness.
    erased: HashMap<u64, Timestamp>,
    /// The same, oldest first, for forgetting them.
    erased_by_time: BTreeSet<(Timestamp, u64)>,
    /// Fit readings by trait bits, under `rules`.
    fits: FitMemo,
}

/// Whether an identity's events come to this engine's input partition.
pub type Locality = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Default)]
struct Changes {
    leads: BTreeSet<Box<str>>,
    /// Every lead held changed (a re-score): `leads` is not kept then.
    all_leads: bool,
    aliases: Vec<(Box<str>, Box<str>)>,
    /// Leads and aliases dropped from state (expired, erased): a
    /// tombstone each.
    gone: BTreeSet<Box<str>>,
    /// Erasures remembered (`Some`) or forgotten (`None`) since.
    erasures: BTreeMap<u64, Option<Timestamp>>,
}

/// The hash an erased identity is remembered by: the id itself is gone
/// with the lead. 64 bits: two ids collide with probability 2^-64 per pair,
/// and a collision would only drop a late event of the other identity, from
/// before the erasure, within the lateness window.
pub fn identity_hash(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// A change to persist, as reported by [`Engine::take_changes`].
pub enum StateChange<'a> {
    /// The lead's state is now this.
    Lead(&'a LeadState),
    /// The identity now belongs to another lead (its own state is gone).
    AliasOf(&'a str),
    /// The lead (or alias) was dropped from state (it expired or was
    /// erased): a tombstone.
    Gone,
}

impl Engine {
    pub fn new(rules: Arc<Rules>) -> Self {
        Engine {
            rules,
            leads: HashMap::default(),
            timers: BTreeSet::new(),
            timers_stale: false,
            aliases: HashMap::default(),
            watermark: None,
            changes: None,
            account_updates: Vec::new(),
            locality: None,
            handoffs: Vec::new(),
            erased: HashMap::default(),
            erased_by_time: BTreeSet::new(),
            fits: FitMemo::default(),
        }
    }

    /// Makes this the engine of one input partition among several: an
    /// `alias` whose other identity is not `local` is completed through
    /// [`Handoff`]s.
    pub fn set_locality(&mut self, local: Locality) {
        self.locality = Some(local);
    }

    fn is_local(&self, id: &str) -> bool {
        self.locality.as_ref().is_none_or(|local| local(id))
    }

    /// Handoffs for other partitions' engines since the last call, in the
    /// order they happened.
    pub fn take_handoffs(&mut self) -> Vec<Handoff> {
        std::mem::take(&mut self.handoffs)
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
        // Erasures wait for `take_erasures`.
        let erasures = std::mem::take(&mut changes.erasures);
        let changes = std::mem::replace(
            changes,
            Changes {
                erasures,
                ..Changes::default()
            },
        );
        for (from, to) in &changes.aliases {
            each(from, StateChange::AliasOf(to));
        }
        for id in &changes.gone {
            // Unless it came back (a new event) or became an alias since.
            if !self.leads.contains_key(id) && !self.aliases.contains_key(id) {
                each(id, StateChange::Gone);
            }
        }
        if changes.all_leads {
            let mut leads: Vec<(&Box<str>, &Box<LeadState>)> = self.leads.iter().collect();
            leads.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (id, lead) in leads {
                each(id, StateChange::Lead(lead));
            }
            return;
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
        self.timers_stale = true;
        self.watermark = self.watermark.max(Some(state.clock));
        self.leads.insert(lead_id.into(), Box::new(state));
    }

    /// Forgets a lead a changelog tombstone says was dropped.
    pub fn forget_lead(&mut self, lead_id: &str) {
        if self.leads.remove(lead_id).is_some() {
            self.timers_stale = true;
        }
    }

    /// Calls `each` for every erasure remembered (`Some(time)`) or
    /// forgotten (`None`) since the last call, by identity hash.
    pub fn take_erasures(&mut self, mut each: impl FnMut(u64, Option<Timestamp>)) {
        if let Some(changes) = self.changes.as_mut() {
            for (hash, at) in std::mem::take(&mut changes.erasures) {
                each(hash, at);
            }
        }
    }

    /// Puts back an erasure read from a changelog (`None`: forgotten).
    pub fn restore_erasure(&mut self, hash: u64, at: Option<Timestamp>) {
        if let Some(old) = self.erased.remove(&hash) {
            self.erased_by_time.remove(&(old, hash));
        }
        if let Some(at) = at {
            self.erased.insert(hash, at);
            self.erased_by_time.insert((at, hash));
        }
    }

    /// Identities whose erasure is remembered.
    pub fn erased_count(&self) -> usize {
        self.erased.len()
    }

    /// Whether `id` was erased at or after `t`.
    fn is_erased(&self, id: &str, t: Timestamp) -> bool {
        !self.erased.is_empty()
            && self
                .erased
                .get(&identity_hash(id))
                .is_some_and(|&at| t <= at)
    }

    fn remember_erasure(&mut self, id: &str, at: Timestamp) {
        let hash = identity_hash(id);
        if let Some(&old) = self.erased.get(&hash) {
            if old >= at {
                return;
            }
            self.erased_by_time.remove(&(old, hash));
        }
        self.erased.insert(hash, at);
        self.erased_by_time.insert((at, hash));
        if let Some(changes) = self.changes.as_mut() {
            changes.erasures.insert(hash, Some(at));
        }
    }

    /// Forgets erasures no event can match any more: one from before an
    /// erasure is rejected as too late once the watermark is the allowed
    /// lateness past it.
    fn forget_old_erasures(&mut self) {
        let (Some(allowed_ms), Some(watermark)) =
            (self.rules.settings.allowed_lateness_ms, self.watermark)
        else {
            return;
        };
        let horizon = watermark.saturating_sub_ms(allowed_ms);
        while let Some(&(at, hash)) = self.erased_by_time.first() {
            if at >= horizon {
                break;
            }
            self.erased_by_time.pop_first();
            self.erased.remove(&hash);
            if let Some(changes) = self.changes.as_mut() {
                changes.erasures.insert(hash, None);
            }
        }
    }

    /// Drops the alias `id` (a tombstone for the changelog).
    fn drop_alias(&mut self, id: &str) {
        if self.aliases.remove(id).is_some() {
            if let Some(changes) = self.changes.as_mut() {
                changes.gone.insert(id.into());
            }
        }
    }

    /// An erasure request for `id` at `at`: the lead `id` belongs to is
    /// erased, here or, held elsewhere, by its partition (a handoff).
    fn erase(
        &mut self,
        id: &str,
        at: Timestamp,
        cause: &str,
        position: Option<i64>,
        hops: u32,
    ) -> Outcome {
        let target: Box<str> = self.resolve(id).into();
        let held = self.leads.get(&*target);
        if let (Some(position), Some(lead)) = (position, held) {
            // Read again after a restart, the lead having come back since
            // (an event after the erasure): the erasure is behind it.
            if lead.position >= position || lead.covers(id, position) {
                return Outcome::AlreadyApplied;
            }
        }
        let known = held.is_some() || *target != *id;
        if !known
            && self
                .erased
                .get(&identity_hash(id))
                .is_some_and(|&erased| erased >= at)
        {
            return Outcome::AlreadyApplied;
        }
        self.remember_erasure(id, at);
        self.drop_alias(id);
        if !self.is_local(&target) {
            self.handoffs.push(Handoff::Erase {
                lead: target,
                at,
                cause: cause.into(),
                hops,
            });
            return Outcome::HandedOff;
        }
        if *target != *id {
            return self.erase(&target, at, cause, None, hops);
        }
        Outcome::Applied(self.erase_lead(&target, at, cause, hops))
    }

    /// Removes `lead_id` and everything of it: its state (dedup memory,
    /// merged histories), its timer, its share of its account, the
    /// identities merged into it (here, and through handoffs where they
    /// are held elsewhere). Publishes `lead_erased`.
    fn erase_lead(&mut self, lead_id: &str, at: Timestamp, cause: &str, hops: u32) -> Vec<Output> {
        self.remember_erasure(lead_id, at);
        let mut identities: BTreeSet<Box<str>> = self
            .aliases
            .keys()
            .filter(|k| resolve_in(&self.aliases, k) == lead_id)
            .cloned()
            .collect();
        let state = self.leads.remove(lead_id);
        if let Some(state) = &state {
            if let Some(due) = state.due {
                debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
                cancel(&mut self.timers, due, lead_id);
            }
            identities.extend(state.merged.iter().map(|m| m.identity.clone()));
            if let (Some(_), Some(link)) = (self.rules.accounts.as_deref(), state.account.as_ref())
            {
                self.account_updates.push(AccountUpdate::Member {
                    account_id: link.id.clone(),
                    lead_id: lead_id.into(),
                    member: None,
                    erased: true,
                    at,
                    cause: Cause::Event(cause.to_string()),
                });
            }
        }
        if let Some(changes) = self.changes.as_mut() {
            changes.leads.remove(lead_id);
            changes.gone.insert(lead_id.into());
        }
        for identity in identities {
            self.drop_alias(&identity);
            if self.is_local(&identity) {
                self.remember_erasure(&identity, at);
            } else {
                self.handoffs.push(Handoff::Forget {
                    identity,
                    lead: lead_id.into(),
                    at,
                    hops,
                });
            }
        }
        vec![erased_output(
            &self.rules,
            lead_id,
            state.as_deref(),
            at,
            cause,
        )]
    }

    /// `identity` belonged to `lead`, erased at `at` by another partition:
    /// it and the local identities merged through it are forgotten.
    fn forget_identity(&mut self, identity: &str, lead: &str, at: Timestamp, hops: u32) {
        self.remember_erasure(identity, at);
        let through: Vec<Box<str>> = self
            .aliases
            .keys()
            .filter(|k| &***k == identity || resolve_in(&self.aliases, k) == lead)
            .cloned()
            .collect();
        for id in through {
            self.drop_alias(&id);
            if self.is_local(&id) {
                self.remember_erasure(&id, at);
            } else {
                self.handoffs.push(Handoff::Forget {
                    identity: id,
                    lead: lead.into(),
                    at,
                    hops,
                });
            }
        }
    }

    /// Drops `lead_id` from state at `at` (it expired): its timer, its
    /// share of its account, a tombstone for the changelog, and a
    /// `lead_expired` output if the rules announce expiry.
    fn expire(&mut self, lead_id: &str, at: Timestamp, outputs: &mut Vec<Output>) {
        let rules = &*self.rules;
        let Some(lead) = self.leads.remove(lead_id) else {
            return;
        };
        if let Some(due) = lead.due {
            debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
            cancel(&mut self.timers, due, lead_id);
        }
        if rules.settings.announce_expiry {
            outputs.push(expired_output(rules, lead_id, &lead, at));
        }
        if rules.accounts.is_some() {
            if let Some(link) = lead.view(rules).account.as_ref() {
                self.account_updates.push(AccountUpdate::Member {
                    account_id: link.id.clone(),
                    lead_id: lead_id.into(),
                    member: None,
                    erased: false,
                    at,
                    cause: Cause::Decay(at),
                });
            }
        }
        if let Some(changes) = self.changes.as_mut() {
            changes.leads.remove(lead_id);
            changes.gone.insert(lead_id.into());
        }
    }

    /// Before an event at `t` for `lead_id`: if the lead has been inactive
    /// long enough to expire by then, its due decay fires and it expires
    /// first, so the event finds a fresh lead, exactly as when a timer
    /// expired it before the event arrived (whichever comes first depends
    /// on other leads' events, not on this lead's history).
    fn expire_before(&mut self, lead_id: &str, t: Timestamp) -> Vec<Output> {
        let rules = self.rules.clone();
        let rules = &*rules;
        let Some(inactive) = rules.settings.inactive_after_ms else {
            return Vec::new();
        };
        let Some(lead) = self.leads.get_mut(lead_id) else {
            return Vec::new();
        };
        if lead
            .last_event_at()
            .is_none_or(|last| last.saturating_add_ms(inactive) > t)
        {
            return Vec::new();
        }
        let mut outputs = Vec::new();
        let due_before = lead.due;
        if let Some(at) = advance_lead(rules, &mut self.fits, lead_id, lead, t, &mut outputs) {
            self.expire(lead_id, at, &mut outputs);
        } else {
            let due = lead.due;
            debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
            reschedule(&mut self.timers, lead_id, due_before, due);
        }
        outputs
    }

    /// Puts back an alias read from a changelog.
    pub fn restore_alias(&mut self, from: &str, to: &str) {
        if self.leads.remove(from).is_some() {
            self.timers_stale = true;
        }
        self.aliases.insert(from.into(), to.into());
    }

    /// Builds the timers again from the leads' due times if leads were
    /// restored or dropped since they were last built. Events and
    /// `advance` do it first; a restore calls it when done, so that
    /// `next_due` need not look at every lead until then.
    pub fn fresh_timers(&mut self) {
        if std::mem::take(&mut self.timers_stale) {
            self.timers = (self.leads.iter())
                .filter_map(|(id, lead)| lead.due.map(|due| (due, id.clone())))
                .collect();
        }
    }

    /// The latest event time applied (or restored).
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    /// Sets the watermark to what it was at the input position processing
    /// resumes from. Restored leads may be ahead of that position (their
    /// state written by a batch whose offsets were never committed): the
    /// latest of their clocks would then be a watermark from the future,
    /// firing decay for the leads behind before their own events come
    /// again, and judging lateness against a time not yet reached.
    pub fn resume_watermark(&mut self, watermark: Option<Timestamp>) {
        self.watermark = watermark;
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
        if self.timers_stale {
            return self.leads.values().filter_map(|lead| lead.due).min();
        }
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
        self.fresh_timers();
        if event.kind == EventKind::Erase {
            // Never refused, however late: the request stands.
            return self.erase(
                &event.lead_id,
                event.timestamp,
                &event.message_id,
                position,
                0,
            );
        }
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
        if self.is_erased(&event.lead_id, t) {
            return Outcome::Erased;
        }
        if let Some(reason) = rules.filters.as_deref().and_then(|f| f.judge_event(event)) {
            return Outcome::Filtered {
                reason,
                outputs: Vec::new(),
            };
        }
        let id_hash = xxh3_64(event.message_id.as_bytes());

        let resolved = resolve_in(&self.aliases, &event.lead_id);
        if resolved != event.lead_id {
            // An identity merged into another lead: its event joins its
            // own history there, here or on the lead's partition.
            let resolved: Box<str> = resolved.into();
            return self.take_forwarded(&resolved, &event.lead_id, event, position, 0);
        }
        let lead_id = event.lead_id.as_str();
        if let (Some(position), Some(lead)) = (position, self.leads.get(lead_id)) {
            if position <= lead.position {
                // Applied before a restart: the watermark moves on as it
                // did then, so later decisions (lateness, decay on event
                // time) are the same.
                self.watermark = self.watermark.max(Some(t));
                return Outcome::AlreadyApplied;
            }
        }
        let mut absorbed = None;
        if event.kind == EventKind::Alias {
            let seen = self
                .leads
                .get(lead_id)
                .is_some_and(|l| l.seen.iter().any(|s| s.id == id_hash));
            if seen {
                return Outcome::Duplicate;
            }
            absorbed = self.join(event, lead_id);
        }

        let expired = self.expire_before(lead_id, t);
        if self.watermark.is_none_or(|w| t > w) && !self.erased_by_time.is_empty() {
            self.watermark = Some(t);
            self.forget_old_erasures();
        }
        let rules = &*self.rules;
        let settings = &rules.settings;
        let lead = self.leads.get_mut(lead_id);
        let lead = match lead {
            Some(lead) => lead,
            None => self
                .leads
                .entry(lead_id.into())
                .or_insert_with(|| Box::new(LeadState::new(t))),
        };
        if let Some(position) = position {
            lead.position = lead.position.max(position);
        }
        let watermark = self.watermark.map_or(t, |w| w.max(t));
        self.watermark = Some(watermark);
        if !lead.remember(id_hash, t, settings) {
            return Outcome::Duplicate;
        }
        if let Some(reason) = judge_velocity(rules, lead, event, t) {
            if let Some(changes) = self.changes.as_mut() {
                changes.leads.insert(lead_id.into());
            }
            return Outcome::Filtered {
                reason,
                outputs: expired,
            };
        }
        let before = Before::of(rules, lead);
        let mut outputs = expired;
        advance_lead(rules, &mut self.fits, lead_id, lead, t, &mut outputs);

        let cause = Cause::Event(event.message_id.clone());
        if let Some((identity, state)) = absorbed {
            lead.take_history(&identity, state);
        }
        let life_change = if rules.lifecycle.is_empty() {
            None
        } else {
            lead.apply_lifecycle(rules, event, t)
        };
        let reset_at = lead.reset_at();
        take_event(rules, lead, event, t, watermark, reset_at);
        lead.clock = lead.clock.max(t);
        let read = emit(
            rules,
            &mut self.fits,
            lead_id,
            lead,
            cause.clone(),
            &mut outputs,
        );
        if let Some(change) = life_change {
            outputs.push(lifecycle_output(
                rules, lead_id, lead, &read, change, &cause,
            ));
        }
        self.settle(lead_id, before, read, cause.clone());
        if let (EventKind::Group, Some(account_id), Some(_)) =
            (event.kind, &event.account_id, self.rules.accounts.as_ref())
        {
            if !event.traits.is_empty() {
                self.account_updates.push(AccountUpdate::Traits {
                    account_id: account_id.as_str().into(),
                    traits: event.traits.clone(),
                    at: t,
                    cause,
                });
            }
        }
        Outcome::Applied(outputs)
    }

    /// Acts on a [`Handoff`] from another partition's engine (read from the
    /// internal topic). The event of a forwarded event was judged (late,
    /// future) where it came in.
    pub fn apply_handoff(&mut self, handoff: Handoff) -> Outcome {
        self.fresh_timers();
        let hops = handoff.hops();
        if hops > MAX_HOPS {
            return Outcome::Rejected(Rejection::AliasLoop { hops });
        }
        // What this engine passes on from here counts one hop more.
        let hops = hops + 1;
        match handoff {
            Handoff::MergeRequest {
                from,
                into,
                cause,
                at,
                ..
            } => self.hand_over(from, into, cause, at, hops),
            Handoff::History {
                from,
                into,
                state,
                cause,
                at,
                ..
            } => self.take_history(from, into, state, cause, at, hops),
            Handoff::Event {
                into,
                via,
                event,
                position,
                ..
            } => self.take_forwarded(&into, &via, &event, position, hops),
            Handoff::Erase {
                lead, at, cause, ..
            } => self.erase(&lead, at, &cause, None, hops),
            Handoff::Forget {
                identity, lead, at, ..
            } => {
                self.forget_identity(&identity, &lead, at, hops);
                Outcome::Applied(Vec::new())
            }
        }
    }

    /// An `alias` call said its `previousId` is `into`: the identity it
    /// resolves to joins `into`. Held here: its state is returned, to be
    /// kept as a history of `into`; held elsewhere: its partition is asked
    /// to hand it over.
    fn join(&mut self, event: &Event, into: &str) -> Option<(Box<str>, LeadState)> {
        let previous: Box<str> = self.resolve(event.previous_id.as_deref()?).into();
        if *previous == *into {
            return None;
        }
        if !self.is_local(&previous) {
            self.record_alias(&previous, into);
            self.handoffs.push(Handoff::MergeRequest {
                from: previous,
                into: into.into(),
                cause: event.message_id.as_str().into(),
                at: event.timestamp,
                hops: 0,
            });
            return None;
        }
        let state = self.detach(&previous, into, &event.message_id, event.timestamp)?;
        Some((previous, state))
    }

    /// `from` was aliased into `into`, held elsewhere: hand `from`'s
    /// history over and send its later events after it. `hops` here and
    /// below: what a handoff passed on from this engine carries.
    fn hand_over(
        &mut self,
        from: Box<str>,
        into: Box<str>,
        cause: Box<str>,
        at: Timestamp,
        hops: u32,
    ) -> Outcome {
        let holder: Box<str> = self.resolve(&from).into();
        if holder == into {
            return Outcome::AlreadyApplied;
        }
        if !self.is_local(&holder) {
            self.handoffs.push(Handoff::MergeRequest {
                from: holder,
                into,
                cause,
                at,
                hops,
            });
            return Outcome::HandedOff;
        }
        let Some(state) = self.detach(&holder, &into, &cause, at) else {
            return Outcome::Applied(Vec::new());
        };
        let history = Handoff::History {
            from: holder,
            into,
            state,
            cause,
            at,
            hops,
        };
        if self.is_local(history.destination()) {
            return self.apply_handoff(history);
        }
        self.handoffs.push(history);
        Outcome::HandedOff
    }

    /// `identity`, held here, now belongs to `into`: the alias is recorded,
    /// and its state (if any) taken out with its timer, its account told
    /// that it left (its share moves to the lead it joined).
    fn detach(
        &mut self,
        identity: &str,
        into: &str,
        cause: &str,
        at: Timestamp,
    ) -> Option<LeadState> {
        self.record_alias(identity, into);
        let state = self.leads.remove(identity)?;
        if let Some(due) = state.due {
            debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
            cancel(&mut self.timers, due, identity);
        }
        if let (Some(_), Some(link)) = (self.rules.accounts.as_deref(), state.account.as_ref()) {
            self.account_updates.push(AccountUpdate::Member {
                account_id: link.id.clone(),
                lead_id: identity.into(),
                member: None,
                erased: false,
                at,
                cause: Cause::Event(cause.to_string()),
            });
        }
        Some(*state)
    }

    fn record_alias(&mut self, identity: &str, into: &str) {
        if let Some(changes) = self.changes.as_mut() {
            changes.aliases.push((identity.into(), into.into()));
        }
        self.aliases.insert(identity.into(), into.into());
    }

    /// Takes the history of `from` into the lead `into` resolves to.
    fn take_history(
        &mut self,
        from: Box<str>,
        into: Box<str>,
        state: LeadState,
        cause: Box<str>,
        at: Timestamp,
        hops: u32,
    ) -> Outcome {
        let target: Box<str> = self.resolve(&into).into();
        if !self.is_local(&target) {
            self.handoffs.push(Handoff::History {
                from,
                into: target,
                state,
                cause,
                at,
                hops,
            });
            return Outcome::HandedOff;
        }
        if self
            .leads
            .get(&target)
            .is_some_and(|lead| lead.covers(&from, state.position))
        {
            return Outcome::AlreadyApplied;
        }
        if !self.leads.contains_key(&target) && self.is_erased(&target, at) {
            return Outcome::Erased;
        }
        let rules = &*self.rules;
        let lead = self
            .leads
            .entry(target.clone())
            .or_insert_with(|| Box::new(LeadState::new(at)));
        let before = Before::of(rules, lead);
        let mut outputs = Vec::new();
        advance_lead(
            rules,
            &mut self.fits,
            &target,
            lead,
            at.max(lead.clock),
            &mut outputs,
        );
        lead.take_history(&from, state);
        let cause = Cause::Merge(cause.to_string());
        let read = emit(
            rules,
            &mut self.fits,
            &target,
            lead,
            cause.clone(),
            &mut outputs,
        );
        self.settle(&target, before, read, cause);
        Outcome::Applied(outputs)
    }

    /// An event of an identity merged into `into`: added to the history
    /// `via` of the lead `into` resolves to.
    fn take_forwarded(
        &mut self,
        into: &str,
        via: &str,
        event: &Event,
        position: Option<i64>,
        hops: u32,
    ) -> Outcome {
        let target: Box<str> = self.resolve(into).into();
        if !self.is_local(&target) {
            self.handoffs.push(Handoff::Event {
                into: target,
                via: via.into(),
                event: event.clone(),
                position,
                hops,
            });
            return Outcome::HandedOff;
        }
        let t = event.timestamp;
        if let (Some(position), Some(lead)) = (position, self.leads.get(&target)) {
            if lead.covers(via, position) {
                return Outcome::AlreadyApplied;
            }
        }
        if self.is_erased(&target, t) || self.is_erased(via, t) {
            return Outcome::Erased;
        }
        let expired = self.expire_before(&target, t);
        let rules = &*self.rules;
        let settings = &rules.settings;
        let watermark = self.watermark.map_or(t, |w| w.max(t));
        self.watermark = Some(watermark);
        let lead = self
            .leads
            .entry(target.clone())
            .or_insert_with(|| Box::new(LeadState::new(t)));
        let id_hash = xxh3_64(event.message_id.as_bytes());
        let history = lead.history_mut(via, t);
        if !history.remember(id_hash, t, settings) {
            return Outcome::Duplicate;
        }
        if let Some(position) = position {
            history.position = history.position.max(position);
        }
        if let Some(reason) = judge_velocity(rules, history, event, t) {
            if let Some(changes) = self.changes.as_mut() {
                changes.leads.insert(target.clone());
            }
            return Outcome::Filtered {
                reason,
                outputs: expired,
            };
        }
        let absorbed = match event.kind {
            EventKind::Alias => self.join(event, &target),
            _ => None,
        };
        let rules = &*self.rules;
        let Some(lead) = self.leads.get_mut(&target) else {
            return Outcome::Applied(Vec::new());
        };
        let before = Before::of(rules, lead);
        let mut outputs = expired;
        advance_lead(rules, &mut self.fits, &target, lead, t, &mut outputs);
        if let Some((identity, state)) = absorbed {
            lead.take_history(&identity, state);
        }
        // Dispositions act first: a recycle clears what came before the
        // event, not the event's own engagement.
        let life_change = if rules.lifecycle.is_empty() {
            None
        } else {
            lead.apply_lifecycle(rules, event, t)
        };
        let reset_at = lead.reset_at();
        let history = lead.history_mut(via, t);
        take_event(rules, history, event, t, watermark, reset_at);
        lead.clock = lead.clock.max(t);
        let cause = Cause::Event(event.message_id.clone());
        let read = emit(
            rules,
            &mut self.fits,
            &target,
            lead,
            cause.clone(),
            &mut outputs,
        );
        if let Some(change) = life_change {
            outputs.push(lifecycle_output(
                rules, &target, lead, &read, change, &cause,
            ));
        }
        self.settle(&target, before, read, cause);
        Outcome::Applied(outputs)
    }

    /// After `lead_id` changed and was emitted (`read`): its next due time,
    /// its timer, the changelog and its account.
    fn settle(&mut self, lead_id: &str, before: Before, read: Reading, cause: Cause) {
        let Some(lead) = self.leads.get_mut(lead_id) else {
            return;
        };
        let before_due = before.due;
        settle_lead(
            &self.rules,
            (&mut self.changes, &mut self.account_updates),
            lead_id,
            lead,
            before,
            &read,
            cause,
        );
        let due = lead.due;
        debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
        reschedule(&mut self.timers, lead_id, before_due, due);
    }

    /// Re-evaluates every lead under the engine's rules after their state
    /// was migrated to them (see [`crate::core::migration`]): publishes
    /// what moved by `step` or changed tier, with `cause`, and records
    /// every lead as changed (its changelog record names the new rules)
    /// and its account share as updated. In lead id order, so a repeat
    /// publishes the same outputs.
    ///
    /// Every lead is visited once, so the leads are walked in place
    /// (sorted references, no lookups), every one marked changed at once,
    /// and the timers built again in one pass.
    pub fn rescore(&mut self, cause: &Cause) -> Vec<Output> {
        let rules = self.rules.clone();
        let rules = &*rules;
        // The map's slots are read in its order, once: what follows
        // touches each lead's id and state only through these pointers.
        let mut leads: Vec<(u128, &str, &mut LeadState)> = self
            .leads
            .iter_mut()
            .map(|(id, lead)| (0, &**id, &mut **lead))
            .collect();
        for i in 0..leads.len() {
            if let Some((_, id, _)) = leads.get(i + 16) {
                prefetch(*id);
            }
            leads[i].0 = id_prefix(leads[i].1);
        }
        sort_by_id(&mut leads);
        if let Some(changes) = self.changes.as_mut() {
            changes.all_leads = true;
        }
        let mut outputs = Vec::new();
        let mut timers = Vec::with_capacity(leads.len());
        if rules.accounts.is_some() {
            self.account_updates.reserve(leads.len());
        }
        for i in 0..leads.len() {
            // Leads come in id order, scattered over the heap: ask for the
            // boxes of those a few places ahead (their state first, then,
            // once that is in, what it points to).
            if let Some((_, id, ahead)) = leads.get(i + 8) {
                prefetch_all(&**ahead);
                prefetch(*id);
            }
            if let Some((_, _, ahead)) = leads.get(i + 4) {
                prefetch_all(&*ahead.credits);
                prefetch_all(&*ahead.windows);
                prefetch_all(&*ahead.traits);
                if let Some(account) = &ahead.account {
                    prefetch(&*account.id);
                }
            }
            let (_, lead_id, lead) = &mut leads[i];
            // Re-scoring moves no lead between accounts.
            let before = Before {
                due: lead.due,
                account: None,
            };
            let read = emit(
                rules,
                &mut self.fits,
                lead_id,
                lead,
                cause.clone(),
                &mut outputs,
            );
            settle_lead(
                rules,
                (&mut self.changes, &mut self.account_updates),
                lead_id,
                lead,
                before,
                &read,
                cause.clone(),
            );
            if let Some(due) = lead.due {
                timers.push((due, Box::from(*lead_id)));
            }
        }
        // Pushed in id order: a stable sort by due time leaves them in
        // (due, id) order, which the set's own sort then only checks.
        radsort::sort_by_key(&mut timers, |(due, _)| due.millis());
        self.timers = timers.into_iter().collect();
        self.timers_stale = false;
        outputs
    }

    /// The crossings that hand subscribers over from another deployment
    /// (`leadscore promote`): for each lead whose tier here differs from
    /// the one the other deployment last published (`published`: its tier
    /// name and, for the direction, that tier's index under these rules;
    /// `None` for a lead it never published, which subscribers know in
    /// the lowest tier), a `threshold_crossed` from that tier to this
    /// one, with `cause`. State is not changed: from here on the lead's
    /// outputs are exactly what these rules publish anyway. In lead id
    /// order, so a repeat publishes the same outputs.
    pub fn handover_crossings(
        &self,
        published: impl Fn(&str) -> Option<(Arc<str>, usize)>,
        cause: &Cause,
    ) -> Vec<Output> {
        let rules = &*self.rules;
        let held = self.leads.iter().map(|(id, lead)| (&**id, lead.tier));
        handover_moves(rules, held, published)
            .into_iter()
            .map(|(lead_id, previous_name, previous)| {
                let lead = &self.leads[lead_id];
                let view = lead.view(rules);
                let eval = view.evaluate(rules, lead.clock);
                let mut contributions = view.contributions(rules, lead.clock);
                contributions.truncate(rules.settings.top_contributions);
                Output {
                    previous_tier: previous_name,
                    direction: direction_of(usize::from(lead.tier), previous, 0.0),
                    contributions,
                    ..lead_output(
                        rules,
                        OutputKind::ThresholdCrossed,
                        lead_id,
                        &view,
                        &eval,
                        lead.clock,
                        cause.clone(),
                    )
                }
            })
            .collect()
    }

    /// Publishes what decay alone changes up to `now`: tier drops (or rises,
    /// as negative points fade) of leads that saw no event, in due-time order.
    pub fn advance(&mut self, now: Timestamp) -> Vec<Output> {
        self.fresh_timers();
        let rules = self.rules.clone();
        let rules = &*rules;
        let mut outputs = Vec::new();
        while let Some((due, lead_id)) = pop_due(&mut self.timers, now) {
            let Some(lead) = self.leads.get_mut(&lead_id) else {
                debug_assert!(false, "timer for a lead that is gone");
                continue;
            };
            if let Some(at) = advance_lead(rules, &mut self.fits, &lead_id, lead, due, &mut outputs)
            {
                lead.due = None;
                self.expire(&lead_id, at, &mut outputs);
                continue;
            }
            debug_assert!(!self.timers_stale, "timers read before they were rebuilt");
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

/// [`Engine::settle`] for a lead held apart from the engine's map (all
/// but its timer): its next due time, the changelog and its account.
fn settle_lead(
    rules: &Rules,
    (changes, account_updates): (&mut Option<Changes>, &mut Vec<AccountUpdate>),
    lead_id: &str,
    lead: &mut LeadState,
    before: Before,
    read: &Reading,
    cause: Cause,
) {
    let due = due_of(rules, lead, read);
    let view = read.view(lead);
    let account_after = rules
        .accounts
        .as_ref()
        .and_then(|_| view.account.as_ref().map(|a| a.id.clone()));
    let member = (rules.accounts.is_some() && account_after.is_some()).then(|| {
        let at = view.clock;
        let engagement = read.engagement_by_rule(rules, view, at);
        Member::of_lead(rules, lead_id, at, &read.fit, &engagement)
    });
    lead.due = due;
    if let Some(changes) = changes.as_mut() {
        if !changes.all_leads && !changes.leads.contains(lead_id) {
            changes.leads.insert(lead_id.into());
        }
    }
    if rules.accounts.is_some() {
        let at = lead.clock;
        if let Some(left) = before.account.filter(|b| Some(b) != account_after.as_ref()) {
            account_updates.push(AccountUpdate::Member {
                account_id: left,
                lead_id: lead_id.into(),
                member: None,
                erased: false,
                at,
                cause: cause.clone(),
            });
        }
        if let (Some(account_id), Some(member)) = (account_after, member) {
            account_updates.push(AccountUpdate::Member {
                account_id,
                lead_id: lead_id.into(),
                member: Some(member),
                erased: false,
                at,
                cause,
            });
        }
    }
}

/// The first 16 bytes of `id`, big-endian and zero-padded: comparing these
/// first, and the whole ids only when they tie, orders ids as strings while
/// reading most ids' bytes once.
fn id_prefix(id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = id.len().min(16);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}

/// Sorts `(id_prefix(id), id, _)` entries by id, comparing prefixes
/// alone and whole ids only within a run of equal prefixes (ids longer
/// than the prefix may share it).
fn sort_by_id<T>(entries: &mut [(u128, &str, T)]) {
    // A radix sort: ids that share a scheme ("lead-000123") differ in a few
    // bytes of the prefix, and bytes every id shares cost nothing.
    radsort::sort_by_key(entries, |(prefix, _, _)| *prefix);
    for run in entries.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| a.1.cmp(b.1));
        }
    }
}

/// What [`Engine::settle`] compares a changed lead with.
struct Before {
    due: Option<Timestamp>,
    account: Option<Box<str>>,
}

impl Before {
    fn of(rules: &Rules, lead: &LeadState) -> Before {
        Before {
            due: lead.due,
            // Only accounts read it; a merged lead's view is not free.
            account: rules
                .accounts
                .as_ref()
                .and_then(|_| lead.merged_account().map(|a| a.id.clone())),
        }
    }
}

/// What one event says about its lead: traits, account links, rule hits.
fn take_event(
    rules: &Rules,
    lead: &mut LeadState,
    event: &Event,
    t: Timestamp,
    watermark: Timestamp,
    reset_at: Option<Timestamp>,
) {
    if let Some(accounts) = rules.accounts.as_deref().filter(|a| a.from_email_domain) {
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
    // An event from before a recycle that arrives after it earns nothing.
    if reset_at.is_none_or(|reset| t >= reset) {
        rules.for_each_matching_rule(event, |rule| lead.credit(rules, rule, t));
    }
    lead.clock = lead.clock.max(t);
    if let Some(allowed_ms) = rules.settings.allowed_lateness_ms {
        lead.fold_closed_windows(rules, watermark.saturating_sub_ms(allowed_ms));
    }
}

/// The velocity filters' verdict on an event for `state` (a lead, or a
/// history of one), which remembers the event's hits and sends.
fn judge_velocity(
    rules: &Rules,
    state: &mut LeadState,
    event: &Event,
    t: Timestamp,
) -> Option<FilterReason> {
    let filters = rules.filters.as_deref().filter(|f| f.has_velocity())?;
    let mut matched = Vec::new();
    rules.for_each_matching_rule(event, |rule| matched.push(rule));
    let mut marks = state.take_filter_state();
    let reason = filters.judge_velocity(&mut marks, event, &matched, t);
    state.put_filter_state(marks);
    reason
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
    let lead = lead.view(rules);
    let at = at.max(lead.clock);
    let eval = lead.evaluate(rules, at);
    LeadSnapshot {
        lead_id: lead_id.to_string(),
        score_name: rules.score_name.clone(),
        account_id: lead.account.as_ref().map(|a| a.id.to_string()),
        as_of: at,
        fit: eval.fit,
        engagement: eval.engagement,
        score: eval.score,
        grade: eval.grade,
        tier: rules.tier_name(usize::from(lead.tier)).clone(),
        contributions: lead.contributions(rules, at),
        last_event_at: lead.clock,
        lifecycle: lead.life().cloned(),
    }
}

/// A timer's key as `(due, id)`, owned or borrowed, ordered as the owned
/// tuple is: a timer is found and removed by a borrowed id, with no
/// allocation for the lookup.
trait TimerKey {
    fn parts(&self) -> (Timestamp, &str);
}

impl TimerKey for (Timestamp, Box<str>) {
    fn parts(&self) -> (Timestamp, &str) {
        (self.0, &self.1)
    }
}

impl TimerKey for (Timestamp, &str) {
    fn parts(&self) -> (Timestamp, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn TimerKey + 'a> for (Timestamp, Box<str>) {
    fn borrow(&self) -> &(dyn TimerKey + 'a) {
        self
    }
}

impl PartialEq for dyn TimerKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn TimerKey + '_ {}

impl PartialOrd for dyn TimerKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn TimerKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// Removes `id`'s timer at `due`, if there is one.
pub(crate) fn cancel(timers: &mut BTreeSet<(Timestamp, Box<str>)>, due: Timestamp, id: &str) {
    timers.remove(&(due, id) as &dyn TimerKey);
}

/// Takes the earliest timer if it is due by `now`.
pub(crate) fn pop_due(
    timers: &mut BTreeSet<(Timestamp, Box<str>)>,
    now: Timestamp,
) -> Option<(Timestamp, Box<str>)> {
    if timers.first()?.0 > now {
        return None;
    }
    timers.pop_first()
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
        cancel(timers, due, lead_id);
    }
    if let Some(due) = after {
        timers.insert((due, lead_id.into()));
    }
}

/// Fires the lead's decay due times up to `until`, one at a time, each
/// evaluated at its own due time.
fn advance_lead(
    rules: &Rules,
    fits: &mut FitMemo,
    lead_id: &str,
    lead: &mut LeadState,
    until: Timestamp,
    outputs: &mut Vec<Output>,
) -> Option<Timestamp> {
    // Each firing changes the tier, and tiers are few: the bound only
    // guards against a float edge case looping.
    for _ in 0..=2 * rules.tiers.len() + 1 {
        let due = lead.due.filter(|due| *due <= until)?;
        lead.clock = lead.clock.max(due);
        let read = emit(rules, fits, lead_id, lead, Cause::Decay(due), outputs);
        if let Some(at) = lead.expires_at(rules).filter(|at| *at <= due) {
            return Some(at); // the caller drops it
        }
        lead.due = due_of(rules, lead, &read);
    }
    lead.due = None;
    None
}

/// The lead's next due time: decay, a hold lapsing, or expiry.
fn due_of(rules: &Rules, lead: &LeadState, read: &Reading) -> Option<Timestamp> {
    let next = read.next_due(rules, read.view(lead));
    match (next, lead.expires_at(rules)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `lead_expired` output: the lead's last numbers, at its expiry.
fn expired_output(rules: &Rules, lead_id: &str, lead: &LeadState, at: Timestamp) -> Output {
    let view = lead.view(rules);
    let eval = view.evaluate(rules, at);
    Output {
        direction: crate::core::output::Direction::Down,
        ..lead_output(
            rules,
            OutputKind::LeadExpired,
            lead_id,
            &view,
            &eval,
            at,
            Cause::Decay(at),
        )
    }
}

/// An output of `kind` about the lead whose (merged) state is `view`, with
/// its numbers `eval` at `at`: its tier as the tier and the one before, the
/// direction of the score's move since the last `score_changed`, and no
/// contributions. Each kind sets what it says otherwise.
fn lead_output(
    rules: &Rules,
    kind: OutputKind,
    lead_id: &str,
    view: &LeadState,
    eval: &Evaluation,
    at: Timestamp,
    cause: Cause,
) -> Output {
    let tier = rules.tier_name(usize::from(view.tier)).clone();
    let delta = eval.score - view.last_emitted_score;
    Output {
        kind,
        event_id: output_id(rules.score_name.as_deref(), lead_id, kind, &cause),
        lead_id: Some(lead_id.to_string()),
        account_id: view.account.as_ref().map(|a| a.id.to_string()),
        at,
        cause,
        score: eval.score,
        fit: eval.fit,
        engagement: eval.engagement,
        grade: eval.grade,
        tier: tier.clone(),
        previous_tier: tier,
        direction: direction_of(0, 0, delta),
        delta,
        contributions: Vec::new(),
        rules_version: rules.version.clone(),
        score_name: rules.score_name.clone(),
        stage: view.life().and_then(|l| l.stage.clone()),
        lifecycle: None,
    }
}

/// The `lead_erased` output. It names the lead and the request, and no
/// numbers: there is nothing left of the lead to describe.
fn erased_output(
    rules: &Rules,
    lead_id: &str,
    lead: Option<&LeadState>,
    at: Timestamp,
    request: &str,
) -> Output {
    let cause = Cause::Event(request.to_string());
    let lowest = rules.tier_name(0).clone();
    Output {
        kind: OutputKind::LeadErased,
        event_id: output_id(
            rules.score_name.as_deref(),
            lead_id,
            OutputKind::LeadErased,
            &cause,
        ),
        lead_id: Some(lead_id.to_string()),
        account_id: lead.and_then(|lead| lead.merged_account().map(|a| a.id.to_string())),
        at,
        cause,
        score: 0.0,
        fit: 0.0,
        engagement: 0.0,
        grade: Grade::D,
        tier: lowest.clone(),
        previous_tier: lowest,
        direction: crate::core::output::Direction::Down,
        delta: 0.0,
        contributions: Vec::new(),
        rules_version: rules.version.clone(),
        score_name: rules.score_name.clone(),
        stage: None,
        lifecycle: None,
    }
}

/// Evaluates the lead at its clock and emits `score_changed` (score moved
/// by at least the step, or the tier changed) and `threshold_crossed`.
///
/// Returns what it read of the lead, for what follows (due time, account
/// share).
fn emit(
    rules: &Rules,
    fits: &mut FitMemo,
    lead_id: &str,
    lead: &mut LeadState,
    cause: Cause,
    out: &mut Vec<Output>,
) -> Reading {
    let at = lead.clock;
    let view = lead.view(rules);
    let fit = view.fit_remembered(rules, fits);
    // Per rule, the engagement is for the account share and the
    // contributions: worked out with the total when the share will be
    // needed, else only if there is an output.
    let (engagement, mut engagement_by_rule) = if rules.accounts.is_some() && view.account.is_some()
    {
        let (total, by_rule) = view.engagement_and_rules(rules, at);
        (total, Some(by_rule))
    } else {
        (view.engagement_at(rules, at), None)
    };
    let eval = Evaluation::of(rules, &fit, engagement);
    let previous = usize::from(lead.tier);
    let mut tier = view.tier_with(rules, &fit, &eval);
    if tier > previous && view.suppresses_up(at) {
        // Held below until the suppression lapses (a timer is due then)
        // or for good while the stage is terminal; the score still moves.
        tier = previous;
    }
    let delta = eval.score - lead.last_emitted_score;
    if tier == previous && delta.abs() < rules.settings.step {
        return Reading {
            fit,
            at,
            eval,
            engagement_by_rule,
            merged: owned(view),
        };
    }
    let by_rule = engagement_by_rule.get_or_insert_with(|| view.engagement_by_rule(rules, at));
    let contributions = fit.top_contributions(rules, by_rule, rules.settings.top_contributions);
    let changed = Output {
        tier: rules.tier_name(tier).clone(),
        previous_tier: rules.tier_name(previous).clone(),
        direction: direction_of(tier, previous, delta),
        contributions,
        ..lead_output(
            rules,
            OutputKind::ScoreChanged,
            lead_id,
            &view,
            &eval,
            at,
            cause.clone(),
        )
    };
    let crossed_id = (tier != previous).then(|| {
        output_id(
            rules.score_name.as_deref(),
            lead_id,
            OutputKind::ThresholdCrossed,
            &cause,
        )
    });
    let mut merged = owned(view);
    push_change(out, changed, crossed_id);
    for lead in std::iter::once(lead).chain(merged.as_deref_mut()) {
        lead.tier = tier as u8;
        lead.last_emitted_score = eval.score;
    }
    Reading {
        fit,
        at,
        eval,
        engagement_by_rule,
        merged,
    }
}

/// The view of a lead with merged histories, which is built for it.
fn owned(view: Cow<'_, LeadState>) -> Option<Box<LeadState>> {
    match view {
        Cow::Owned(merged) => Some(Box::new(merged)),
        Cow::Borrowed(_) => None,
    }
}

/// What [`emit`] read of a lead, for the rest of its settling (which does
/// not change what it read): its fit, its evaluation and (if worked out)
/// engagement per rule at `at`, and its view if it has merged histories
/// (tier and last score as the emit left them).
struct Reading {
    fit: Fit,
    at: Timestamp,
    eval: Evaluation,
    engagement_by_rule: Option<EngagementByRule>,
    /// Boxed: a reading is passed along by value, and most leads have no
    /// merged histories.
    merged: Option<Box<LeadState>>,
}

impl Reading {
    /// The lead with its merged histories folded in (see
    /// [`LeadState::view`]), `lead` being the one read.
    fn view<'a>(&'a self, lead: &'a LeadState) -> &'a LeadState {
        self.merged.as_deref().unwrap_or(lead)
    }

    /// The engagement points per rule of `view` (the lead as it is now) at
    /// `at`: the ones read, if they were worked out for that time.
    fn engagement_by_rule<'a>(
        &'a self,
        rules: &Rules,
        view: &LeadState,
        at: Timestamp,
    ) -> Cow<'a, [(usize, f64)]> {
        match self.engagement_by_rule.as_ref().filter(|_| at == self.at) {
            Some(read) => Cow::Borrowed(read),
            None => Cow::Owned(view.engagement_by_rule(rules, at).to_vec()),
        }
    }

    /// The lead's next due time from its (merged) clock, `view` being the
    /// lead as it is now.
    fn next_due(&self, rules: &Rules, view: &LeadState) -> Option<Timestamp> {
        let from = view.clock;
        let now = if from == self.at {
            self.eval
        } else {
            view.evaluate_with(rules, &self.fit, from)
        };
        let points = (self.engagement_by_rule.as_deref()).filter(|_| from == self.at);
        view.next_due(rules, &self.fit, from, &now, points)
    }
}

/// The `lifecycle_changed` output of a disposition: the lead's numbers and
/// tier after the event, its stage before and after, the rules that acted.
fn lifecycle_output(
    rules: &Rules,
    lead_id: &str,
    lead: &LeadState,
    read: &Reading,
    change: crate::core::lead::LifecycleChange,
    cause: &Cause,
) -> Output {
    // Right after the emit: the lead is as it read it.
    let engagement = read.engagement_by_rule(rules, read.view(lead), read.at);
    let contributions =
        (read.fit).top_contributions(rules, &engagement, rules.settings.top_contributions);
    Output {
        contributions,
        lifecycle: Some(Box::new(change)),
        ..lead_output(
            rules,
            OutputKind::LifecycleChanged,
            lead_id,
            read.view(lead),
            &read.eval,
            read.at,
            cause.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ordering by `id_prefix`, then by the whole id on a tie (as
    /// `sort_by_id` does), is the ids' order as strings: short ids, shared
    /// prefixes longer than the prefix, NUL bytes and multi-byte
    /// characters included.
    #[test]
    fn ids_ordered_by_prefix_then_whole_are_in_string_order() {
        let ids = [
            "",
            "a",
            "a\0",
            "a\0\0",
            "ab",
            "lead-0000000000001",
            "lead-0000000000002",
            "lead-000000000000",
            "lead-00000000000010",
            "zé",
            "z",
            "é",
            "\u{10ffff}",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmno\0",
        ];
        let mut by_prefix: Vec<&str> = ids.to_vec();
        by_prefix.sort_by(|a, b| id_prefix(a).cmp(&id_prefix(b)).then_with(|| a.cmp(b)));
        let mut by_string = ids.to_vec();
        by_string.sort();
        assert_eq!(by_prefix, by_string);
        // Every order of the ids comes out sorted.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut entries: Vec<(u128, &str, ())> =
                ids.iter().map(|id| (id_prefix(id), *id, ())).collect();
            rng.shuffle(&mut entries);
            sort_by_id(&mut entries);
            let sorted: Vec<&str> = entries.iter().map(|e| e.1).collect();
            assert_eq!(sorted, by_string);
        }
    }

    /// Restoring leaves the timers alone, and they are built from the
    /// leads' due times before anything reads them: a lead restored twice
    /// is due once, at its last state's time; a dropped one not at all.
    #[test]
    fn timers_are_built_from_the_restored_leads_due_times() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadscore.toml");
        let rules = crate::config::load_rules(std::path::Path::new(file)).unwrap();
        let mut engine = Engine::new(Arc::new(rules));
        let due_at = |due| LeadState {
            due: Some(Timestamp(due)),
            ..LeadState::new(Timestamp(0))
        };
        engine.restore_lead("a", due_at(500));
        engine.restore_lead("b", due_at(300));
        engine.restore_lead("a", due_at(700)); // a later record of "a"
        engine.restore_lead("c", due_at(100));
        engine.forget_lead("c");
        engine.restore_lead("d", due_at(200));
        engine.restore_alias("d", "b");
        assert_eq!(engine.next_due(), Some(Timestamp(300)));
        assert!(engine.advance(Timestamp(250)).is_empty());
        assert!(!engine.timers_stale);
        let timers: Vec<(i64, &str)> = (engine.timers.iter())
            .map(|(due, id)| (due.millis(), &**id))
            .collect();
        assert_eq!(timers, [(300, "b"), (700, "a")]);
        assert_eq!(engine.next_due(), Some(Timestamp(300)));
    }

    /// A borrowed `(due, id)` finds the owned key it equals, and no other:
    /// both order by due time, then id.
    #[test]
    fn a_timer_is_cancelled_by_a_borrowed_id_and_popped_when_due() {
        let mut timers: BTreeSet<(Timestamp, Box<str>)> = BTreeSet::new();
        for (due, id) in [(5, "b"), (5, "a"), (9, "a"), (5, "c")] {
            timers.insert((Timestamp(due), id.into()));
        }
        cancel(&mut timers, Timestamp(5), "b");
        cancel(&mut timers, Timestamp(7), "a"); // none there
        let left: Vec<(i64, &str)> = timers.iter().map(|(t, id)| (t.millis(), &**id)).collect();
        assert_eq!(left, [(5, "a"), (5, "c"), (9, "a")]);
        let popped = |timers: &mut BTreeSet<_>, now| {
            pop_due(timers, Timestamp(now)).map(|(t, id): (Timestamp, Box<str>)| (t.millis(), id))
        };
        assert_eq!(popped(&mut timers, 5), Some((5, "a".into())));
        assert_eq!(popped(&mut timers, 5), Some((5, "c".into())));
        assert_eq!(popped(&mut timers, 8), None);
        assert_eq!(popped(&mut timers, 9), Some((9, "a".into())));
        assert!(timers.is_empty());
    }
}
