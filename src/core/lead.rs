//! Per-lead state and the pure operations on it: traits, engagement
//! credits (with caps, once-rules and decay), dedup memory and evaluation.
//!
//! Everything a lead's score depends on is kept in a form where the order in
//! which events arrive does not matter: traits keep the value with the
//! latest event time, credits are decaying sums, once-rules keep the
//! earliest hit, and caps scale each fixed window's total. Only the tier,
//! which has hysteresis, remembers the path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::FixedState;
use smallvec::SmallVec;

use crate::core::decay::{Decaying, HalfLife};
use crate::core::event::{Event, Fields};
use crate::core::filters::FilterState;
use crate::core::output::{largest_first, Contribution};
use crate::core::rules::{Grade, Rules, Settings, TraitBits, EMAIL_DOMAIN_TRAIT};
use crate::core::time::Timestamp;

/// One trait's comparison results (see [`crate::core::rules::TraitKey`]) and
/// the event time of the value they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TraitState {
    pub key: u16,
    pub bits: TraitBits,
    pub set_at: Timestamp,
}

/// The decayed credit of one (uncapped) engagement rule. For a once-rule,
/// the points of its earliest hit, anchored at that hit.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleCredit {
    pub rule: u16,
    pub credit: Decaying,
}

/// A capped rule's hits within one fixed window. The window credits at most
/// the cap: every hit in it is scaled by `min(1, cap / |raw|)`.
#[derive(Clone, Debug, PartialEq)]
pub struct CapWindow {
    pub rule: u16,
    /// Window index since the epoch; config keeps windows at least a
    /// minute long, so 32 bits last until the year 6000.
    pub window: i32,
    pub raw: f64,
    pub credit: Decaying,
}

impl CapWindow {
    /// The factor each hit in the window is credited at: 1 under the rule's
    /// cap, `cap / |raw|` over it.
    fn scale(&self, rules: &Rules) -> f64 {
        let cap = rules.engagement[usize::from(self.rule)]
            .cap
            .map_or(f64::INFINITY, |c| c.points);
        if self.raw.abs() <= cap {
            1.0
        } else {
            cap / self.raw.abs()
        }
    }
}

/// A remembered input message id (its 64-bit hash) with its event time.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenId {
    pub id: u64,
    pub at: Timestamp,
}

/// The account a lead belongs to, and the event time that said so.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountLink {
    pub id: Box<str>,
    pub set_at: Timestamp,
    /// Derived from the lead's work email domain; an explicit link (a
    /// `group` call, an `account_id`) always wins over one of these.
    pub from_email: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeadState {
    /// Latest event time (or decay due time) applied; evaluations happen here.
    pub clock: Timestamp,
    /// Index into the rules' tiers.
    pub tier: u8,
    /// Score carried by the lead's last `score_changed` output (0 before any).
    pub last_emitted_score: f64,
    // Boxed slices, not vectors: they grow rarely (a new trait, a rule's
    // first hit), and across millions of leads the spare capacity and the
    // third word of a Vec would cost more than the occasional reallocation.
    pub traits: Box<[TraitState]>,
    pub credits: Box<[RuleCredit]>,
    pub windows: Box<[CapWindow]>,
    pub seen: Vec<SeenId>,
    pub account: Option<AccountLink>,
    /// When decay alone will next change the tier, if it will.
    pub due: Option<Timestamp>,
    /// The highest input position (partition offset) applied, or -1.
    pub position: i64,
    /// Histories of identities merged in from other partitions, kept apart
    /// (see [`LeadState::take_history`]); evaluation sees them folded in.
    pub merged: Box<[MergedHistory]>,
    /// What few leads have (a lifecycle, velocity filter marks), in one
    /// allocation: the others pay one pointer.
    pub rare: Option<Box<Rare>>,
}

/// The parts of a lead's state that most leads never have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rare {
    /// Set by lifecycle rules.
    pub life: Option<Lifecycle>,
    /// What velocity filters (`[filters]`) remember.
    pub filter: FilterState,
}

/// Where a lead stands with sales, as lifecycle rules set it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lifecycle {
    pub stage: Option<Arc<str>>,
    /// Event time of the disposition that set the stage (the latest wins).
    pub stage_at: Timestamp,
    /// The stage ends alerting (a customer): no upward crossing.
    pub terminal: bool,
    /// No upward crossing is published before this time.
    pub suppressed_until: Option<Timestamp>,
    /// Engagement from events before this time no longer counts.
    pub reset_at: Option<Timestamp>,
    pub outcome: Option<SalesOutcome>,
}

/// What sales made of the lead, and when: `calibrate`'s label.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SalesOutcome {
    pub converted: bool,
    pub at: Timestamp,
}

/// What one disposition changed, for its `lifecycle_changed` output.
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleChange {
    pub previous_stage: Option<Arc<str>>,
    /// The lifecycle rules that matched, in file order.
    pub reasons: Vec<Arc<str>>,
}

impl Lifecycle {
    /// The later of two records of the same person (histories merged):
    /// the latest stage, the longest suppression and reset, the latest
    /// outcome.
    fn combine(&mut self, other: &Lifecycle) {
        if other.stage.is_some() && (other.stage_at, &other.stage) > (self.stage_at, &self.stage) {
            self.stage = other.stage.clone();
            self.stage_at = other.stage_at;
            self.terminal = other.terminal;
        }
        self.suppressed_until = self.suppressed_until.max(other.suppressed_until);
        self.reset_at = self.reset_at.max(other.reset_at);
        if let Some(theirs) = other.outcome {
            if self
                .outcome
                .is_none_or(|mine| (theirs.at, theirs.converted) > (mine.at, mine.converted))
            {
                self.outcome = Some(theirs);
            }
        }
    }
}

/// The history of an identity `alias`ed into a lead whose events live on
/// another input partition. Its position counts in that identity's own
/// partition, so a copy handed over again, or an event forwarded again, is
/// recognised by position alone.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedHistory {
    pub identity: Box<str>,
    pub state: LeadState,
}

/// A lead's traits read against the rules: each trait key's bits (fit
/// rules and tier gates look them up many times per evaluation), the fit
/// points and the fit rules that gave them, in file order. None of it
/// moves with time, so one read serves a lead's evaluation, tier, due time,
/// contributions and account share.
#[derive(Clone, Debug)]
pub struct Fit {
    // Inline sizes for typical rules: a fit is read for every lead scored
    // and moved along with what else was read of it.
    bits: SmallVec<[TraitBits; 16]>,
    pub points: f64,
    /// The fit rules that count, by index.
    pub matched: SmallVec<[u16; 12]>,
}

impl Fit {
    pub fn bits(&self, key: usize) -> TraitBits {
        self.bits[key]
    }

    /// Every fit and engagement rule's share, largest first (by absolute
    /// value, then by name, so the order is deterministic), from these
    /// fit rules and `engagement` points per rule.
    pub fn contributions(&self, rules: &Rules, engagement: &[(usize, f64)]) -> Vec<Contribution> {
        self.top_contributions(rules, engagement, usize::MAX)
    }

    /// The first `limit` of [`Fit::contributions`] (an output carries a
    /// few): ordered by reference, so only those kept are copied.
    pub fn top_contributions(
        &self,
        rules: &Rules,
        engagement: &[(usize, f64)],
        limit: usize,
    ) -> Vec<Contribution> {
        let mut all: SmallVec<[(&Arc<str>, f64); 24]> = SmallVec::new();
        all.extend(self.matched.iter().map(|&i| {
            let rule = &rules.fit[usize::from(i)];
            (&rule.name, rule.points)
        }));
        all.extend((engagement.iter()).map(|&(i, points)| (&rules.engagement[i].name, points)));
        all.sort_by(|(a_rule, a), (b_rule, b)| largest_first((a_rule, *a), (b_rule, *b)));
        all.iter()
            .take(limit)
            .map(|&(rule, points)| Contribution {
                rule: rule.clone(),
                points,
            })
            .collect()
    }
}

/// A lead's fit points and the fit rules that gave them (as in [`Fit`]).
type FitPoints = (f64, SmallVec<[u16; 12]>);

/// Fit points and matched rules already read, by trait bits (the only
/// thing a fit depends on under fixed rules). Leads share few combinations
/// of comparison bits, so most reads become one hash lookup instead of a
/// pass over every fit rule. Valid for one rule set: an engine keeps one
/// beside its rules.
#[derive(Clone, Debug, Default)]
pub struct FitMemo {
    known: HashMap<Box<[TraitBits]>, FitPoints, FixedState>,
}

impl FitMemo {
    /// Beyond this many combinations (traits that hold free-form values
    /// compared to many literals) the memo starts over, so it stays small.
    const MOST_REMEMBERED: usize = 4096;

    fn points_and_matches(&mut self, rules: &Rules, bits: &[TraitBits]) -> FitPoints {
        if let Some(known) = self.known.get(bits) {
            return known.clone();
        }
        let read = fit_points_and_matches(rules, bits);
        if self.known.len() >= Self::MOST_REMEMBERED {
            self.known.clear();
        }
        self.known.insert(bits.into(), read.clone());
        read
    }
}

/// The fit points of a lead with trait `bits`, and the fit rules that
/// gave them.
fn fit_points_and_matches(rules: &Rules, bits: &[TraitBits]) -> FitPoints {
    let mut points = 0.0;
    let mut matched = SmallVec::new();
    rules.for_each_fit_match(bits, |index| {
        points += rules.fit[index].points;
        matched.push(index as u16);
    });
    (points, matched)
}

/// Engagement points per rule, in rule order; most leads hit few rules.
pub type EngagementByRule = SmallVec<[(usize, f64); 8]>;

/// A lead's numbers at one point in time.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub fit: f64,
    pub engagement: f64,
    pub score: f64,
    pub grade: Grade,
}

impl Evaluation {
    /// The numbers of a lead with `fit` and `engagement`.
    pub fn of(rules: &Rules, fit: &Fit, engagement: f64) -> Evaluation {
        Evaluation {
            fit: fit.points,
            engagement,
            score: rules.clamp(rules.settings.base + fit.points + engagement),
            grade: rules.grades.grade(fit.points),
        }
    }
}

impl LeadState {
    pub fn new(clock: Timestamp) -> Self {
        LeadState {
            clock,
            tier: 0,
            last_emitted_score: 0.0,
            traits: Box::default(),
            credits: Box::default(),
            windows: Box::default(),
            seen: Vec::new(),
            account: None,
            due: None,
            position: -1,
            merged: Box::default(),
            rare: None,
        }
    }

    /// Where the lead stands with sales, if a lifecycle rule has acted.
    pub fn life(&self) -> Option<&Lifecycle> {
        self.rare.as_deref()?.life.as_ref()
    }

    pub fn life_mut(&mut self) -> &mut Lifecycle {
        self.rare
            .get_or_insert_default()
            .life
            .get_or_insert_default()
    }

    /// What velocity filters remember of the lead, if anything.
    pub fn filter_state(&self) -> Option<&FilterState> {
        self.rare.as_deref().map(|r| &r.filter)
    }

    /// Takes the velocity filters' marks out (to judge an event); give
    /// them back with [`LeadState::put_filter_state`].
    pub fn take_filter_state(&mut self) -> FilterState {
        self.rare
            .as_deref_mut()
            .map(|r| std::mem::take(&mut r.filter))
            .unwrap_or_default()
    }

    pub fn put_filter_state(&mut self, marks: FilterState) {
        if marks.marks.is_empty() && self.rare.as_ref().is_none_or(|r| r.life.is_none()) {
            self.rare = None;
        } else {
            self.rare.get_or_insert_default().filter = marks;
        }
    }

    /// The lead with every merged history folded in: what evaluation,
    /// timers and accounts see. Borrowed (free) for a lead without any.
    pub fn view(&self, rules: &Rules) -> Cow<'_, LeadState> {
        if self.merged.is_empty() {
            return Cow::Borrowed(self);
        }
        // Built in vectors and boxed once; the dedup memory is left out
        // (evaluation never reads it).
        let mut traits = self.traits.to_vec();
        let mut credits = self.credits.to_vec();
        let mut windows = Vec::with_capacity(
            self.windows.len()
                + self
                    .merged
                    .iter()
                    .map(|h| h.state.windows.len())
                    .sum::<usize>(),
        );
        windows.extend_from_slice(&self.windows);
        let mut combined = LeadState {
            clock: self.clock,
            tier: self.tier,
            last_emitted_score: self.last_emitted_score,
            traits: Box::default(),
            credits: Box::default(),
            windows: Box::default(),
            seen: Vec::new(),
            account: self.merged_account().cloned(),
            due: self.due,
            position: self.position,
            merged: Box::default(),
            rare: self.life().map(|life| {
                Box::new(Rare {
                    life: Some(life.clone()),
                    filter: FilterState::default(),
                })
            }),
        };
        for history in self.merged.iter() {
            let other = &history.state;
            combine_traits(&mut traits, &other.traits);
            combine_credits(rules, &mut credits, &other.credits);
            // Each history keeps its own cap windows, so a cap limits one
            // identity's hits in a window: a window closed and folded in
            // one history cannot be re-capped together with another's, and
            // keeping them apart makes the sum independent of when each
            // history arrived.
            windows.extend_from_slice(&other.windows);
            combined.clock = combined.clock.max(other.clock);
            if let Some(theirs) = other.life() {
                combined.life_mut().combine(theirs);
            }
        }
        combined.traits = traits.into_boxed_slice();
        combined.credits = credits.into_boxed_slice();
        combined.windows = windows.into_boxed_slice();
        Cow::Owned(combined)
    }

    /// The account link of the lead with its merged histories, as
    /// [`LeadState::view`] holds it, without building the view: as
    /// [`LeadState::link_account`] and
    /// [`LeadState::link_account_from_email`] decide between two links, an
    /// explicit link wins over one from an email domain, then the later,
    /// then the larger id.
    pub fn merged_account(&self) -> Option<&AccountLink> {
        std::iter::once(&self.account)
            .chain(self.merged.iter().map(|h| &h.state.account))
            .flatten()
            .max_by(|a, b| (!a.from_email, a.set_at, &a.id).cmp(&(!b.from_email, b.set_at, &b.id)))
    }

    /// Whether an upward crossing is held back at `at`: the lead holds a
    /// terminal stage, or a disposition suppressed alerts until later.
    pub fn suppresses_up(&self, at: Timestamp) -> bool {
        self.life()
            .is_some_and(|l| l.terminal || l.suppressed_until.is_some_and(|until| at < until))
    }

    /// The latest event time of any of the lead's histories, from the
    /// dedup memory (every applied event is remembered; the newest id is
    /// never pruned).
    pub fn last_event_at(&self) -> Option<Timestamp> {
        let own = self.seen.iter().map(|s| s.at).max();
        self.merged
            .iter()
            .filter_map(|m| m.state.last_event_at())
            .fold(own, |a, b| a.max(Some(b)))
    }

    /// When the lead expires, if `inactive_after` is set and it sits in
    /// the lowest tier.
    pub fn expires_at(&self, rules: &Rules) -> Option<Timestamp> {
        let inactive = rules.settings.inactive_after_ms?;
        (self.tier == 0)
            .then(|| self.last_event_at())
            .flatten()
            .map(|last| last.saturating_add_ms(inactive))
    }

    /// Engagement from events before this time no longer counts.
    pub fn reset_at(&self) -> Option<Timestamp> {
        self.life().and_then(|l| l.reset_at)
    }

    /// Applies the lifecycle rules `event` (at `t`) matches. A reset clears
    /// every history's engagement; the stage takes the latest event time.
    /// `None` when no rule matched or nothing changed.
    pub fn apply_lifecycle(
        &mut self,
        rules: &Rules,
        event: &Event,
        t: Timestamp,
    ) -> Option<LifecycleChange> {
        let mut reasons = Vec::new();
        let mut changed = false;
        let previous_stage = self.life().and_then(|l| l.stage.clone());
        for rule in rules.lifecycle.iter().filter(|r| r.matches(event)) {
            reasons.push(rule.name.clone());
            let life = self.life_mut();
            if let Some(stage) = &rule.stage {
                if life.stage.is_none() || t >= life.stage_at {
                    changed |= life.stage.as_ref() != Some(stage) || life.terminal != rule.terminal;
                    life.stage = Some(stage.clone());
                    life.stage_at = t;
                    life.terminal = rule.terminal;
                }
            }
            if let Some(ms) = rule.suppress_ms {
                let until = t.saturating_add_ms(ms);
                if life.suppressed_until.is_none_or(|u| u < until) {
                    life.suppressed_until = Some(until);
                    changed = true;
                }
            }
            if let Some(converted) = rule.outcome {
                if life
                    .outcome
                    .is_none_or(|o| (t, converted) > (o.at, o.converted))
                {
                    life.outcome = Some(SalesOutcome { converted, at: t });
                    changed = true;
                }
            }
            if rule.reset {
                if life.reset_at.is_none_or(|r| r < t) {
                    life.reset_at = Some(t);
                }
                changed = true;
                self.clear_engagement();
            }
        }
        changed.then_some(LifecycleChange {
            previous_stage,
            reasons,
        })
    }

    /// Recycling: every history's engagement dropped, fit kept.
    fn clear_engagement(&mut self) {
        self.credits = Box::default();
        self.windows = Box::default();
        for history in self.merged.iter_mut() {
            history.state.clear_engagement();
        }
    }

    /// Whether the history held of `identity` already covers `position`
    /// (of that identity's partition).
    pub fn covers(&self, identity: &str, position: i64) -> bool {
        self.merged
            .iter()
            .any(|m| *m.identity == *identity && m.state.position >= position)
    }

    /// Takes `identity`'s history (and the histories it holds in turn),
    /// each unless what is held of it already covers as much: a copy
    /// handed over again changes nothing, and a later copy that covers more
    /// replaces an earlier one. Returns whether anything changed.
    pub fn take_history(&mut self, identity: &str, mut state: LeadState) -> bool {
        let mut changed = false;
        for nested in std::mem::take(&mut state.merged).into_vec() {
            changed |= self.take_history(&nested.identity, nested.state);
        }
        // A history that arrives after the lead was recycled, all of it
        // from before the recycle, is cleared as it would have been had it
        // arrived first (merges across partitions arrive when they arrive).
        if let Some(reset) = self.reset_at() {
            if state.last_event_at().is_some_and(|last| last < reset) {
                state.clear_engagement();
            }
        }
        let clock = state.clock;
        match self.merged.iter_mut().find(|m| *m.identity == *identity) {
            Some(held) if held.state.position >= state.position => return changed,
            Some(held) => held.state = state,
            None => push_compact(
                &mut self.merged,
                MergedHistory {
                    identity: identity.into(),
                    state,
                },
            ),
        }
        self.clock = self.clock.max(clock);
        true
    }

    /// The history held of `identity`, started empty at `clock` if none.
    pub fn history_mut(&mut self, identity: &str, clock: Timestamp) -> &mut LeadState {
        let index = match self.merged.iter().position(|m| *m.identity == *identity) {
            Some(index) => index,
            None => {
                push_compact(
                    &mut self.merged,
                    MergedHistory {
                        identity: identity.into(),
                        state: LeadState::new(clock),
                    },
                );
                self.merged.len() - 1
            }
        };
        &mut self.merged[index].state
    }

    pub fn trait_bits(&self, rules: &Rules, key: usize) -> TraitBits {
        self.traits
            .iter()
            .find(|t| usize::from(t.key) == key)
            .map_or_else(|| rules.absent_trait_bits(key), |t| t.bits)
    }

    /// Takes the traits an event carries; per trait, the value with the
    /// latest event time wins (ties: the larger bit pattern, so the result
    /// does not depend on arrival order). A null value clears a trait.
    pub fn apply_traits(&mut self, rules: &Rules, traits: &Fields, at: Timestamp) {
        if traits.is_empty() {
            return;
        }
        for (key, trait_key) in rules.trait_keys.iter().enumerate() {
            let value = if trait_key.name == EMAIL_DOMAIN_TRAIT {
                match traits
                    .get(EMAIL_DOMAIN_TRAIT)
                    .or_else(|| traits.get("email"))
                {
                    Some(v) => Some(email_domain_value(v)),
                    None => continue,
                }
            } else {
                match traits.get(&trait_key.name) {
                    Some(v) => Some(v.clone()),
                    None => continue,
                }
            };
            let bits = rules.trait_bits(key, value.as_ref());
            let key = key as u16;
            match self.traits.iter_mut().find(|t| t.key == key) {
                Some(existing) => {
                    if (at, bits) > (existing.set_at, existing.bits) {
                        existing.bits = bits;
                        existing.set_at = at;
                    }
                }
                None => push_compact(
                    &mut self.traits,
                    TraitState {
                        key,
                        bits,
                        set_at: at,
                    },
                ),
            }
        }
    }

    /// Links the lead to an account; among explicit links the latest event
    /// time wins, and any explicit link wins over one from the email domain.
    pub fn link_account(&mut self, account_id: &str, at: Timestamp) {
        let newer = match &self.account {
            Some(link) if !link.from_email => (at, account_id) > (link.set_at, link.id.as_ref()),
            _ => true,
        };
        if newer {
            self.account = Some(AccountLink {
                id: account_id.into(),
                set_at: at,
                from_email: false,
            });
        }
    }

    /// Links the lead to the account its work email's domain names, unless
    /// an explicit link exists; the latest event time wins.
    pub fn link_account_from_email(&mut self, account_id: &str, at: Timestamp) {
        let newer = match &self.account {
            Some(link) if !link.from_email => false,
            Some(link) => (at, account_id) > (link.set_at, link.id.as_ref()),
            None => true,
        };
        if newer {
            self.account = Some(AccountLink {
                id: account_id.into(),
                set_at: at,
                from_email: true,
            });
        }
    }

    /// Credits engagement rule `rule` for a hit at `at`.
    pub fn credit(&mut self, rules: &Rules, rule: usize, at: Timestamp) {
        let spec = &rules.engagement[rule];
        let half_life = rules.half_life_of(rule);
        let rule_key = rule as u16;
        if let Some(cap) = spec.cap {
            let window = window_index(at, cap.window_ms);
            match self
                .windows
                .iter_mut()
                .find(|w| w.rule == rule_key && w.window == window)
            {
                Some(w) => {
                    w.raw += spec.points;
                    w.credit.add(spec.points, at, half_life);
                }
                None => push_compact(
                    &mut self.windows,
                    CapWindow {
                        rule: rule_key,
                        window,
                        raw: spec.points,
                        credit: Decaying::new(spec.points, at),
                    },
                ),
            }
            return;
        }
        match self.credits.iter_mut().find(|c| c.rule == rule_key) {
            Some(c) if spec.once => {
                if at < c.credit.anchor {
                    c.credit = Decaying::new(spec.points, at);
                }
            }
            Some(c) => c.credit.add(spec.points, at, half_life),
            None => push_compact(
                &mut self.credits,
                RuleCredit {
                    rule: rule_key,
                    credit: Decaying::new(spec.points, at),
                },
            ),
        }
    }

    /// Folds cap windows that ended before `closed_before` into plain
    /// credits. No event can land in them any more (it would be too late),
    /// so their scale is final; this only bounds memory.
    pub fn fold_closed_windows(&mut self, rules: &Rules, closed_before: Timestamp) {
        let window_end = |w: &CapWindow| {
            let cap = rules.engagement[usize::from(w.rule)]
                .cap
                .expect("cap windows exist only for capped rules");
            (i64::from(w.window) + 1).saturating_mul(cap.window_ms)
        };
        if !self
            .windows
            .iter()
            .any(|w| window_end(w) <= closed_before.millis())
        {
            return;
        }
        let (closed, open): (Vec<CapWindow>, Vec<CapWindow>) = std::mem::take(&mut self.windows)
            .into_vec()
            .into_iter()
            .partition(|w| window_end(w) <= closed_before.millis());
        self.windows = open.into_boxed_slice();
        for w in closed {
            let rule = usize::from(w.rule);
            let scaled = Decaying::new(w.credit.value * w.scale(rules), w.credit.anchor);
            let half_life = rules.half_life_of(rule);
            match self.credits.iter_mut().find(|c| c.rule == w.rule) {
                Some(c) => c.credit.merge(&scaled, half_life),
                None => push_compact(
                    &mut self.credits,
                    RuleCredit {
                        rule: w.rule,
                        credit: scaled,
                    },
                ),
            }
        }
    }

    /// Remembers a message id; false if it was already seen (a duplicate).
    pub fn remember(&mut self, id: u64, at: Timestamp, settings: &Settings) -> bool {
        if self.seen.iter().any(|s| s.id == id) {
            return false;
        }
        self.seen.push(SeenId { id, at });
        self.prune_seen(settings);
        true
    }

    fn prune_seen(&mut self, settings: &Settings) {
        let newest = self
            .seen
            .iter()
            .map(|s| s.at)
            .max()
            .unwrap_or(self.clock)
            .max(self.clock);
        let horizon = newest.saturating_sub_ms(settings.dedup_window_ms);
        self.seen.retain(|s| s.at >= horizon);
        if self.seen.len() > settings.dedup_max_ids {
            self.seen.sort_by_key(|s| (s.at, s.id));
            let excess = self.seen.len() - settings.dedup_max_ids;
            self.seen.drain(..excess);
        }
    }

    /// Engagement points per rule at `at` (rules with no credit left out).
    pub fn engagement_by_rule(&self, rules: &Rules, at: Timestamp) -> EngagementByRule {
        self.engagement_and_rules(rules, at).1
    }

    /// The engagement at `at` (exactly [`LeadState::engagement_at`]) and
    /// its points per rule, from one decay of each credit and window.
    pub fn engagement_and_rules(&self, rules: &Rules, at: Timestamp) -> (f64, EngagementByRule) {
        let mut by_rule = EngagementByRule::new();
        let mut add = |rule: usize, points: f64| match by_rule.iter_mut().find(|(r, _)| *r == rule)
        {
            Some((_, p)) => *p += points,
            None => by_rule.push((rule, points)),
        };
        let total = self.sum_engagement(rules, at, |rule, points, _| add(rule, points));
        by_rule.sort_unstable_by_key(|(r, _)| *r);
        (total, by_rule)
    }

    fn credit_at(rules: &Rules, credit: &RuleCredit, at: Timestamp) -> f64 {
        credit
            .credit
            .at(at, rules.half_life_of(usize::from(credit.rule)))
    }

    fn window_at(rules: &Rules, window: &CapWindow, at: Timestamp) -> f64 {
        let rule = usize::from(window.rule);
        window.scale(rules) * window.credit.at(at, rules.half_life_of(rule))
    }

    /// [`LeadState::engagement_at`] with a bound on its rounding (see
    /// [`RoundedEngagement`]). Each term is off by a few units in the last
    /// place, more the more half-lives it decayed over (its exponent is
    /// rounded too); each addition by one unit of the running sum; the
    /// bound is four times their total, doubled for the millisecond
    /// before (where no term is more than twice as large).
    fn engagement_with_rounding(&self, rules: &Rules, at: Timestamp) -> RoundedEngagement {
        let (mut fading, mut size, mut terms_rounding) = (0.0f64, 0.0f64, 0.0f64);
        let sum = self.sum_engagement(rules, at, |rule, points, anchor| {
            size += points.abs();
            if let Some(h) = rules.half_life_of(rule).millis() {
                fading += points;
                let half_lives = (at.millis() - anchor.millis()).abs() as f64 / h;
                terms_rounding += points.abs() * (8.0 + half_lives);
            }
        });
        let additions = (self.credits.len() + self.windows.len() + 1) as f64;
        RoundedEngagement {
            sum,
            fading,
            rounding: 2.0 * 4.0 * UNIT_ROUNDOFF * (terms_rounding + additions * size),
        }
    }

    pub fn engagement_at(&self, rules: &Rules, at: Timestamp) -> f64 {
        self.sum_engagement(rules, at, |_, _, _| {})
    }

    /// The engagement at `at`, every credit's and window's points passed
    /// to `each` (with its rule and anchor) as they are added: the one
    /// summation every engagement reading uses, so all agree to the bit.
    fn sum_engagement(
        &self,
        rules: &Rules,
        at: Timestamp,
        mut each: impl FnMut(usize, f64, Timestamp),
    ) -> f64 {
        let mut credits = 0.0;
        for c in self.credits.iter() {
            let points = Self::credit_at(rules, c, at);
            each(usize::from(c.rule), points, c.credit.anchor);
            credits += points;
        }
        let mut windows = 0.0;
        for w in self.windows.iter() {
            let points = Self::window_at(rules, w, at);
            each(usize::from(w.rule), points, w.credit.anchor);
            windows += points;
        }
        credits + windows
    }

    /// The lead's traits read against the rules (see [`Fit`]).
    pub fn fit(&self, rules: &Rules) -> Fit {
        self.read_fit(rules, None)
    }

    /// [`LeadState::fit`], looked up in `memo` (or added to it).
    pub fn fit_remembered(&self, rules: &Rules, memo: &mut FitMemo) -> Fit {
        self.read_fit(rules, Some(memo))
    }

    fn read_fit(&self, rules: &Rules, memo: Option<&mut FitMemo>) -> Fit {
        let mut bits: SmallVec<[TraitBits; 16]> =
            SmallVec::from_slice(rules.absent_trait_bits_all());
        // Reversed, so that the first entry of a key wins, as in
        // `trait_bits`.
        for t in self.traits.iter().rev() {
            bits[usize::from(t.key)] = t.bits;
        }
        let (points, matched) = match memo {
            Some(memo) => memo.points_and_matches(rules, &bits),
            None => fit_points_and_matches(rules, &bits),
        };
        Fit {
            bits,
            points,
            matched,
        }
    }

    pub fn evaluate(&self, rules: &Rules, at: Timestamp) -> Evaluation {
        self.evaluate_with(rules, &self.fit(rules), at)
    }

    /// [`LeadState::evaluate`] with the fit already read (it does not
    /// change with time).
    pub fn evaluate_with(&self, rules: &Rules, fit: &Fit, at: Timestamp) -> Evaluation {
        Evaluation::of(rules, fit, self.engagement_at(rules, at))
    }

    /// The tier the lead would move to at `at` from the tier it holds.
    pub fn tier_at(&self, rules: &Rules, eval: &Evaluation) -> usize {
        self.tier_with(rules, &self.fit(rules), eval)
    }

    /// [`LeadState::tier_at`] with the fit already read.
    pub fn tier_with(&self, rules: &Rules, fit: &Fit, eval: &Evaluation) -> usize {
        rules.next_tier(usize::from(self.tier), eval.score, eval.grade, &|key| {
            fit.bits(key)
        })
    }

    /// Every fit and engagement rule's share at `at`, largest first (by
    /// absolute value, then by name, so the order is deterministic).
    pub fn contributions(&self, rules: &Rules, at: Timestamp) -> Vec<Contribution> {
        self.fit(rules)
            .contributions(rules, &self.engagement_by_rule(rules, at))
    }

    /// When the lead next needs a look without an event: decay moving it
    /// out of its tier, or a suppression lapsing (an upward crossing held
    /// back is then published). While a crossing is held back, only the
    /// lapse counts. `fit` is the lead's, `now` its evaluation at `from`,
    /// `points` its engagement points per rule then, if worked out.
    pub fn next_due(
        &self,
        rules: &Rules,
        fit: &Fit,
        from: Timestamp,
        now: &Evaluation,
        points: Option<&[(usize, f64)]>,
    ) -> Option<Timestamp> {
        let lapse = self
            .life()
            .and_then(|l| l.suppressed_until)
            .filter(|until| *until > from);
        let held =
            self.suppresses_up(from) && self.tier_with(rules, fit, now) > usize::from(self.tier);
        let decay = if held {
            None
        } else {
            self.next_change_due_with(rules, fit, from, now, points)
        };
        match (decay, lapse) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        }
    }

    /// When decay alone will next move the lead out of its tier, searched
    /// from `from`. Assumes the score moves one way as points decay (true
    /// when all credits share a sign); with mixed signs the answer is a due
    /// time at which the tier has changed, not necessarily the first.
    pub fn next_change_due(&self, rules: &Rules, from: Timestamp) -> Option<Timestamp> {
        let fit = self.fit(rules);
        let now = self.evaluate_with(rules, &fit, from);
        self.next_change_due_with(rules, &fit, from, &now, None)
    }

    /// [`LeadState::next_change_due`] with the fit already read, the
    /// evaluation at `from`, `now`, and (if worked out) the engagement
    /// points per rule then, `points`.
    pub fn next_change_due_with(
        &self,
        rules: &Rules,
        fit: &Fit,
        from: Timestamp,
        now: &Evaluation,
        points: Option<&[(usize, f64)]>,
    ) -> Option<Timestamp> {
        // Points that never fade do not move the score.
        let (mut fading, mut has_negative) = (false, false);
        let credits = self.credits.iter().map(|c| (c.rule, c.credit.value));
        let windows = self.windows.iter().map(|w| (w.rule, w.raw));
        for (rule, value) in credits.chain(windows) {
            if rules.half_life_of(usize::from(rule)).millis().is_some() {
                fading = true;
                has_negative |= value < 0.0;
            }
        }
        if !fading || (self.tier == 0 && !has_negative) {
            // Nothing fades, or decaying positive points only lower the score.
            return None;
        }
        let tier = usize::from(self.tier);
        let changed = |t: Timestamp| {
            let eval = if t == from {
                *now
            } else {
                self.evaluate_with(rules, fit, t)
            };
            self.tier_with(rules, fit, &eval) != tier
        };
        if let Some(due) = self.monotone_due(rules, fit, from, points, &changed) {
            return due;
        }
        let longest_half_life = self
            .credits
            .iter()
            .map(|c| usize::from(c.rule))
            .chain(self.windows.iter().map(|w| usize::from(w.rule)))
            .filter_map(|rule| rules.half_life_of(rule).millis())
            .fold(0.0f64, f64::max);
        // After 64 half-lives engagement is below 1e-19 of what it was.
        let mut hi = from.saturating_add_ms((64.0 * longest_half_life) as i64);
        if !changed(hi) {
            return None;
        }
        let mut lo = from;
        while hi.millis() - lo.millis() > crate::core::time::MS_PER_SECOND {
            let mid = Timestamp(lo.millis() + (hi.millis() - lo.millis()) / 2);
            if changed(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// The common case solved directly: the points of each half-life add
    /// up to one sign, the same for all, so the score moves one way (down
    /// as positive points fade, up as negative ones do) and the tier
    /// changes when `base + fit + Σ vₕ·2^(-Δt/h)` passes one line: the
    /// tier's minimum less the hysteresis going down, the next tier's
    /// minimum going up. One half-life gives `Δt` in closed form; several
    /// are solved by Newton's method. The instant is then checked against
    /// the tier itself, to the millisecond. `None` when the case does not
    /// apply (or the check fails): the search then decides. `points`: the
    /// engagement points per rule at `from`, if worked out (the estimate
    /// needs them only roughly: the check is what is exact).
    fn monotone_due(
        &self,
        rules: &Rules,
        fit: &Fit,
        from: Timestamp,
        points: Option<&[(usize, f64)]>,
        changed: &dyn Fn(Timestamp) -> bool,
    ) -> Option<Option<Timestamp>> {
        const MOST_HALF_LIVES: usize = 8;
        // (half-life, points at `from`) per distinct half-life.
        let mut fading = [(0.0f64, 0.0f64); MOST_HALF_LIVES];
        let mut distinct = 0;
        let mut constant = rules.settings.base + fit.points;
        let mut by_rule: SmallVec<[(usize, f64); 16]> = SmallVec::new();
        let by_rule = match points {
            Some(points) => points,
            None => {
                let at = |value: f64, anchor: Timestamp, h: HalfLife| {
                    value * h.factor(from.millis() - anchor.millis())
                };
                let credits = self.credits.iter().map(|c| {
                    let rule = usize::from(c.rule);
                    (
                        rule,
                        at(c.credit.value, c.credit.anchor, rules.half_life_of(rule)),
                    )
                });
                let windows = self.windows.iter().map(|w| {
                    let rule = usize::from(w.rule);
                    let value = w.credit.value * w.scale(rules);
                    (rule, at(value, w.credit.anchor, rules.half_life_of(rule)))
                });
                by_rule.extend(credits.chain(windows));
                &by_rule
            }
        };
        for &(rule, now) in by_rule {
            let Some(h) = rules.half_life_of(rule).millis() else {
                constant += now;
                continue;
            };
            match fading[..distinct].iter_mut().find(|(hl, _)| *hl == h) {
                Some((_, points)) => *points += now,
                None if distinct < MOST_HALF_LIVES => {
                    fading[distinct] = (h, now);
                    distinct += 1;
                }
                None => return None,
            }
        }
        let fading = &mut fading[..distinct];
        let falling = fading.iter().all(|&(_, v)| v >= 0.0);
        let rising = fading.iter().all(|&(_, v)| v <= 0.0);
        let tier = usize::from(self.tier);
        // The line the score crosses, and how far the fading points must
        // shrink (in size) for it to.
        let target = if falling {
            let line = rules.tiers[tier].min_score - rules.settings.hysteresis;
            line - constant
        } else if rising {
            let grade = rules.grades.grade(fit.points);
            let bits = |key| fit.bits(key);
            let next = (tier + 1..rules.tiers.len()).find(|&i| rules.gates_pass(i, grade, &bits));
            for (_, v) in fading.iter_mut() {
                *v = -*v;
            }
            next.map_or(0.0, |next| constant - rules.tiers[next].min_score)
        } else {
            return None;
        };
        if changed(from) {
            return None; // already moving: leave it to the search
        }
        if target <= 0.0 || (falling && tier == 0) {
            return Some(None); // the score never reaches a line
        }
        let (shortest, longest) = (fading.iter())
            .fold((f64::INFINITY, 0.0f64), |(s, l), &(h, _)| {
                (s.min(h), l.max(h))
            });
        let total: f64 = fading.iter().map(|&(_, v)| v).sum();
        if total <= target {
            return None; // past the line in the same tier (a gate): the search decides
        }
        // Σ vₕ·2^(-Δ/h) is a sum of exponentials: its log is convex, so
        // Newton's steps on it approach the root from below.
        let mut elapsed = 0.0f64;
        for _ in 0..64 {
            let (sum, rate) = fading.iter().fold((0.0, 0.0), |(sum, rate), &(h, v)| {
                let now = v * (-elapsed / h).exp2();
                (sum + now, rate + now / h)
            });
            if sum <= target || rate <= 0.0 {
                break;
            }
            let step = (sum / target).log2() * sum / rate;
            elapsed += step;
            if !elapsed.is_finite() || elapsed > 64.0 * longest {
                return None;
            }
            if step < 0.25 {
                break;
            }
        }
        let mut due = from.saturating_add_ms(elapsed.ceil() as i64);
        // Float rounding can leave the estimate a few milliseconds off
        // either way: the due time is the first millisecond in another tier.
        let at_due = self.engagement_with_rounding(rules, due);
        let eval_due = Evaluation::of(rules, fit, at_due.sum);
        if self.tier_with(rules, fit, &eval_due) != tier {
            let before = due.saturating_sub_ms(1);
            if before <= from
                || at_due.tier_holds_before(rules, fit, falling, (shortest, longest), &|s| {
                    self.tier_with(
                        rules,
                        fit,
                        &Evaluation {
                            score: s,
                            ..eval_due
                        },
                    ) == tier
                })
            {
                return Some(Some(due));
            }
            for _ in 0..1000 {
                let before = due.saturating_sub_ms(1);
                if before <= from || !changed(before) {
                    return Some(Some(due));
                }
                due = before;
            }
        } else {
            for _ in 0..1000 {
                due = due.saturating_add_ms(1);
                if changed(due) {
                    return Some(Some(due));
                }
            }
        }
        None
    }
}

/// The largest relative error of one rounded float operation, 2^-53.
const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// A lead's engagement at one time, summed exactly as
/// [`LeadState::engagement_at`] sums it, with what bounds the rounding in
/// that sum: a due time's millisecond is then often settled without
/// evaluating the millisecond before it.
struct RoundedEngagement {
    sum: f64,
    /// The part of `sum` that fades.
    fading: f64,
    /// A bound on how far the computed score (base, fit and `sum`) can
    /// be from the exact score of the same stored points, here and one
    /// millisecond earlier.
    rounding: f64,
}

impl RoundedEngagement {
    /// Whether the lead's computed score one millisecond earlier surely
    /// keeps its tier (`holds`, given a score), from the exact score's
    /// bounds alone: every half-life's points have one sign (`falling`:
    /// positive, else negative), so over that millisecond the exact score
    /// moves the one way by between (2^(1/h) - 1) times what fades, for
    /// the longest and the shortest half-life h (in milliseconds) among
    /// those that fade. The tier is a nondecreasing function of the
    /// clamped score, so holding at both ends of the interval means
    /// holding inside it. `false` when unsure.
    fn tier_holds_before(
        &self,
        rules: &Rules,
        fit: &Fit,
        falling: bool,
        (shortest, longest): (f64, f64),
        holds: &dyn Fn(f64) -> bool,
    ) -> bool {
        let score = rules.settings.base + fit.points + self.sum;
        // Two more additions: base and fit, then the engagement.
        let rounding = self.rounding
            + 2.0
                * 4.0
                * UNIT_ROUNDOFF
                * (rules.settings.base.abs() + fit.points.abs() + score.abs());
        let size = self.fading.abs();
        // For 0 < x ≤ 1: x·ln 2 ≤ 2^x - 1 ≤ 2x·ln 2.
        if !(shortest >= 1.0 && longest.is_finite()) {
            return false;
        }
        let (slowest, fastest) = (0.69 / longest, 1.39 / shortest);
        let least = slowest * (size - 2.0 * rounding).max(0.0) - fastest * 2.0 * rounding;
        let most = fastest * (size + 2.0 * rounding);
        let (low, high) = if falling {
            (
                score + least - 2.0 * rounding,
                score + most + 2.0 * rounding,
            )
        } else {
            (
                score - most - 2.0 * rounding,
                score - least + 2.0 * rounding,
            )
        };
        low <= high && holds(rules.clamp(low)) && holds(rules.clamp(high))
    }
}

/// Per trait, the value with the latest event time (ties: the larger bit
/// pattern), as [`LeadState::apply_traits`] keeps it.
fn combine_traits(mine: &mut Vec<TraitState>, other: &[TraitState]) {
    for t in other {
        match mine.iter_mut().find(|m| m.key == t.key) {
            Some(m) => {
                if (t.set_at, t.bits) > (m.set_at, m.bits) {
                    *m = t.clone();
                }
            }
            None => mine.push(t.clone()),
        }
    }
}

/// Decaying sums add up; a once-rule keeps its earliest hit.
fn combine_credits(rules: &Rules, mine: &mut Vec<RuleCredit>, other: &[RuleCredit]) {
    for c in other {
        let rule = usize::from(c.rule);
        match mine.iter_mut().find(|m| m.rule == c.rule) {
            Some(m) if rules.engagement[rule].once => {
                if c.credit.anchor < m.credit.anchor {
                    m.credit = c.credit;
                }
            }
            Some(m) => m.credit.merge(&c.credit, rules.half_life_of(rule)),
            None => mine.push(c.clone()),
        }
    }
}

/// Pushes without spare capacity: these lists grow rarely (a new trait, a
/// rule's first hit) and there are many leads, so slack would dominate.
fn push_compact<T>(list: &mut Box<[T]>, item: T) {
    let mut grown = std::mem::take(list).into_vec();
    grown.reserve_exact(1);
    grown.push(item);
    *list = grown.into_boxed_slice();
}

/// The index of the fixed cap window holding `at`.
fn window_index(at: Timestamp, window_ms: i64) -> i32 {
    let index = at.millis().div_euclid(window_ms);
    i32::try_from(index).unwrap_or(if index < 0 { i32::MIN } else { i32::MAX })
}

/// `email` → its domain, lowercased; anything without an `@` is unknown.
fn email_domain_value(email: &crate::core::event::Value) -> crate::core::event::Value {
    use crate::core::event::Value;
    match email.as_text().and_then(|e| e.rsplit_once('@')) {
        Some((_, domain)) if !domain.trim().is_empty() => {
            Value::Text(domain.trim().to_ascii_lowercase().into())
        }
        _ => match email {
            Value::Text(t) if !t.contains('@') && t.contains('.') => {
                // Already a bare domain (an `email_domain` trait).
                Value::Text(t.trim().to_ascii_lowercase().into())
            }
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_rules;
    use crate::core::event::Value;

    /// The merged account link is the one folding every history's link
    /// into the lead's with `link_account` / `link_account_from_email`
    /// gives, whatever the order of the histories.
    #[test]
    fn the_merged_account_link_is_the_folded_one_in_any_order() {
        let links = [
            None,
            Some(("b", 5, false)),
            Some(("a", 5, false)),
            Some(("c", 9, true)),
            Some(("c", 3, false)),
            Some(("d", 9, true)),
            Some(("a", 1, true)),
        ];
        let state = |link: Option<(&str, i64, bool)>| {
            let mut lead = LeadState::new(Timestamp(0));
            lead.account = link.map(|(id, at, from_email)| AccountLink {
                id: id.into(),
                set_at: Timestamp(at),
                from_email,
            });
            lead
        };
        for own in links {
            for rotate in 0..links.len() {
                let mut others = links.to_vec();
                others.rotate_left(rotate);
                others.truncate(4);
                let mut lead = state(own);
                let mut folded = state(own);
                for (i, other) in others.iter().enumerate() {
                    lead.merged = lead
                        .merged
                        .iter()
                        .cloned()
                        .chain([MergedHistory {
                            identity: format!("id{i}").into(),
                            state: state(*other),
                        }])
                        .collect();
                    if let Some((id, at, from_email)) = other {
                        if *from_email {
                            folded.link_account_from_email(id, Timestamp(*at));
                        } else {
                            folded.link_account(id, Timestamp(*at));
                        }
                    }
                }
                assert_eq!(
                    lead.merged_account(),
                    folded.account.as_ref(),
                    "{own:?} with {others:?}"
                );
            }
        }
    }

    /// Every lead is one allocation of this size: past 224 bytes the
    /// allocator's next size class is 256, 32 bytes more for every lead.
    #[test]
    fn a_lead_state_fits_its_allocation_size_class() {
        assert!(
            std::mem::size_of::<LeadState>() <= 224,
            "{} bytes",
            std::mem::size_of::<LeadState>()
        );
    }

    /// A fit read through a memo shared by many leads is the fit read
    /// afresh, whatever traits each has, including after the memo starts
    /// over.
    #[test]
    fn remembered_fits_are_the_fits_read_afresh() {
        let text = std::fs::read_to_string("config/leadscore.toml").unwrap();
        let rules = parse_rules(&text, Path::new("leadscore.toml")).unwrap();
        let values = |key: &str| -> Vec<Value> {
            let texts: &[&str] = match key {
                "title" => &[
                    "VP Sales",
                    "Head of Growth",
                    "Marketing Director",
                    "Student",
                    "CEO",
                ],
                "department" => &["marketing", "Sales", "engineering", "growth"],
                "country" => &["US", "DE", "IN", "united kingdom"],
                _ => &["x", "enterprise", "gmail.com", "acme.io"],
            };
            let mut all: Vec<Value> = texts.iter().map(|t| Value::Text((*t).into())).collect();
            all.extend([Value::Null, Value::Number(12.0), Value::Number(4000.0)]);
            all
        };
        let mut seed = 11u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut memo = FitMemo::default();
        let mut distinct = std::collections::HashSet::new();
        for lead in 0..3000 {
            let mut state = LeadState::new(Timestamp(0));
            let mut fields = Vec::new();
            for key in &rules.trait_keys {
                if next(3) > 0 {
                    let choices = values(&key.name);
                    fields.push((
                        key.name.as_str().into(),
                        choices[next(choices.len())].clone(),
                    ));
                }
            }
            state.apply_traits(&rules, &Fields(fields), Timestamp(lead));
            let fresh = state.fit(&rules);
            let remembered = state.fit_remembered(&rules, &mut memo);
            assert_eq!(fresh.points.to_bits(), remembered.points.to_bits());
            assert_eq!(fresh.matched, remembered.matched);
            assert_eq!(fresh.bits, remembered.bits);
            distinct.insert(fresh.bits.to_vec());
            if lead % 1000 == 999 {
                memo.known.clear(); // as when it is full
            }
        }
        assert!(distinct.len() > 50, "{} combinations", distinct.len());
        assert!(memo.known.len() <= distinct.len());
    }

    /// One rule, one half-life, a tier at 50: the closed form applies.
    fn rules(base: f64) -> Rules {
        parse_rules(
            &format!(
                r#"
version = "v1"
[scoring]
half_life = "10d"
base = {base}
hysteresis = 5
[grades]
A = 40
B = 25
C = 10
[[tiers]]
name = "cold"
min_score = 0
[[tiers]]
name = "hot"
min_score = 50
[[engagement]]
name = "demo"
points = 40
type = "track"
event = "Demo Requested"
"#
            ),
            Path::new("rules.toml"),
        )
        .unwrap()
    }

    #[test]
    fn decay_is_due_when_the_tier_first_changes_whatever_the_base() {
        for base in [-20.0, 0.0, 15.0] {
            let rules = rules(base);
            let mut lead = LeadState::new(Timestamp(0));
            // Enough hits to clear the line with this base.
            for hit in 0..4 {
                lead.credit(&rules, 0, Timestamp(hit * 1000));
            }
            lead.clock = Timestamp(3000);
            lead.tier = lead.tier_at(&rules, &lead.evaluate(&rules, lead.clock)) as u8;
            assert_eq!(lead.tier, 1, "base {base}: starts hot");
            let due = lead.next_change_due(&rules, lead.clock).unwrap();
            let tier_at = |t: i64| lead.tier_at(&rules, &lead.evaluate(&rules, Timestamp(t)));
            assert_eq!(
                tier_at(due.millis()),
                0,
                "base {base}: cold at the due time"
            );
            assert_eq!(
                tier_at(due.millis() - 1),
                1,
                "base {base}: still hot a millisecond before it"
            );
        }
    }

    /// Several half-lives (and points that never fade): Newton's steps on
    /// the log of what fades find the first millisecond in another tier,
    /// down as positive points fade and up as negative ones do, for hits
    /// spread in many ways.
    #[test]
    fn decay_over_several_half_lives_is_due_when_the_tier_first_changes() {
        let rules = parse_rules(
            r#"
version = "v1"
[scoring]
half_life = "10d"
base = -5
hysteresis = 3
[grades]
A = 40
B = 25
C = 10
[[tiers]]
name = "cold"
min_score = 0
[[tiers]]
name = "warm"
min_score = 30
[[tiers]]
name = "hot"
min_score = 60
[[engagement]]
name = "demo"
points = 25
type = "track"
event = "Demo Requested"
[[engagement]]
name = "visit"
points = 6
half_life = "36h"
type = "page"
[[engagement]]
name = "webinar"
points = 12
half_life = "90d"
type = "track"
event = "Webinar Attended"
[[engagement]]
name = "signed_up"
points = 40
half_life = "none"
type = "track"
event = "Signed Up"
[[engagement]]
name = "careers_page"
points = -12
half_life = "5d"
type = "track"
event = "Careers Page Viewed"
[[engagement]]
name = "job_board"
points = -7
half_life = "12d"
type = "track"
event = "Job Board Visited"
"#,
            Path::new("rules.toml"),
        )
        .unwrap();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut checked = [0; 2];
        // Positive points fading (the score falls), then negative points
        // fading over points that never do (it rises).
        let falling = [0, 1, 2, 3];
        let rising = [3, 4, 5];
        for case in 0..600 {
            let hits: &[usize] = if case % 2 == 0 { &falling } else { &rising };
            let mut lead = LeadState::new(Timestamp(0));
            let mut at = 0;
            for _ in 0..(2 + next(12)) {
                at += next(3 * crate::core::time::MS_PER_DAY as u64) as i64;
                let rule = hits[next(hits.len() as u64) as usize];
                lead.credit(&rules, rule, Timestamp(at));
            }
            lead.clock = Timestamp(at);
            lead.tier = lead.tier_at(&rules, &lead.evaluate(&rules, lead.clock)) as u8;
            let tier_at = |t: i64| lead.tier_at(&rules, &lead.evaluate(&rules, Timestamp(t)));
            let Some(due) = lead.next_change_due(&rules, lead.clock) else {
                for day in 0..1000 {
                    let t = at + day * crate::core::time::MS_PER_DAY;
                    assert_eq!(usize::from(lead.tier), tier_at(t), "never moves");
                }
                continue;
            };
            assert_ne!(
                usize::from(lead.tier),
                tier_at(due.millis()),
                "moved at {due}"
            );
            assert_eq!(
                usize::from(lead.tier),
                tier_at(due.millis() - 1),
                "not a millisecond earlier than {due}"
            );
            checked[case % 2] += 1;
        }
        assert!(
            checked.iter().all(|&n| n > 80),
            "{checked:?} leads with a due time"
        );
    }
}
