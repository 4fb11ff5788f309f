//! Account-level scoring: leads roll up into the account they belong to.
//!
//! The lead side (the [`crate::core::Engine`]) sends an [`AccountUpdate`]
//! whenever a lead's share of its account changes: a [`Member`] holds what
//! the account needs of the lead (its fit, its engagement as a few decaying
//! sums, its department and seniority) and replaces the previous one, so
//! an update applied twice changes nothing and the result does not depend
//! on which partition or instance the lead lives on. The account side (the
//! [`AccountEngine`]) keeps, per account, its own traits (from `group`
//! calls), its members, and its tier:
//!
//! ```text
//! account score = clamp( base + account fit
//!                        + Σ_leads min(lead engagement, lead_engagement_cap)
//!                        + buying committee )
//! buying committee = per_engaged_lead · min(engaged leads, max_engaged_leads)
//!                  + per_department · distinct departments among them
//!                  + per_seniority · distinct seniorities among them
//! ```
//!
//! where a lead is engaged while its own score is at least
//! `engaged_lead_score`. Everything is a function of time through decay, so
//! accounts cool down (and cross tiers down) with no event, like leads.

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::HashMap;
use smallvec::SmallVec;

use crate::core::decay::{Decaying, HalfLife};
use crate::core::engine::{cancel, pop_due, reschedule};
use crate::core::event::Fields;
use crate::core::lead::{Fit, LeadState};
use crate::core::output::{
    direction_of, handover_moves, output_id_for, push_change, sort_largest_first, Cause,
    Contribution, Output, OutputKind,
};
use crate::core::rules::{Grade, Rules};
use crate::core::time::Timestamp;

#[derive(Clone, Debug, PartialEq)]
pub struct Committee {
    pub per_engaged_lead: f64,
    pub max_engaged_leads: usize,
    pub per_department: f64,
    pub per_seniority: f64,
}

/// The `[accounts]` section, compiled.
#[derive(Clone, Debug)]
pub struct AccountRules {
    /// Account fit rules, grades and tiers (and the account traits they
    /// read), as a rule set of their own with no engagement rules; its
    /// `settings.base` is the account base.
    pub profile: Rules,
    pub from_email_domain: bool,
    /// Lowercase domains that never form an account.
    pub personal_domains: Vec<String>,
    pub lead_engagement_cap: f64,
    pub engaged_lead_score: f64,
    pub committee: Committee,
    pub department_group: Option<Arc<str>>,
    pub seniority_group: Option<Arc<str>>,
}

impl AccountRules {
    /// The account a work email's domain names, when domains form accounts
    /// and this one is not a free mail provider's.
    pub fn account_of_domain(&self, domain: &str) -> Option<String> {
        let domain = domain.trim().to_ascii_lowercase();
        let usable = self.from_email_domain
            && domain.contains('.')
            && !self.personal_domains.contains(&domain);
        usable.then_some(domain)
    }
}

/// A lead's share of its account, as of the lead's latest event.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub lead_id: Box<str>,
    /// The lead's fit points (with the lead base, they decide whether the
    /// lead counts as engaged).
    pub fit: f64,
    /// The lead's engagement, one decaying sum per half-life.
    pub engagement: Box<[(HalfLife, Decaying)]>,
    /// Index of the lead fit rule matched in the department group.
    pub department: Option<u16>,
    /// Index of the lead fit rule matched in the seniority group.
    pub seniority: Option<u16>,
}

impl Member {
    /// The lead's share as an account member at `at`, from its fit and
    /// its engagement points per rule then.
    pub fn of_lead(
        rules: &Rules,
        lead_id: &str,
        at: Timestamp,
        fit: &Fit,
        engagement_by_rule: &[(usize, f64)],
    ) -> Member {
        let mut engagement: SmallVec<[(HalfLife, Decaying); 4]> = SmallVec::new();
        for &(rule, points) in engagement_by_rule {
            let half_life = rules.half_life_of(rule);
            match engagement.iter_mut().find(|(h, _)| *h == half_life) {
                Some((_, sum)) => sum.value += points,
                None => engagement.push((half_life, Decaying::new(points, at))),
            }
        }
        let in_group = |group: Option<&Arc<str>>| -> Option<u16> {
            let group = group?;
            fit.matched
                .iter()
                .find(|&&i| rules.fit[usize::from(i)].group.as_ref() == Some(group))
                .copied()
        };
        let accounts = rules.accounts.as_deref();
        Member {
            lead_id: lead_id.into(),
            fit: fit.points,
            engagement: Box::from(engagement.as_slice()),
            department: accounts.and_then(|a| in_group(a.department_group.as_ref())),
            seniority: accounts.and_then(|a| in_group(a.seniority_group.as_ref())),
        }
    }

    pub fn engagement_at(&self, t: Timestamp) -> f64 {
        self.engagement.iter().map(|(h, sum)| sum.at(t, *h)).sum()
    }

    /// The lead's own score at `t`.
    pub fn lead_score_at(&self, rules: &Rules, t: Timestamp) -> f64 {
        rules.clamp(rules.settings.base + self.fit + self.engagement_at(t))
    }

    fn longest_half_life_ms(&self) -> Option<f64> {
        self.engagement
            .iter()
            .filter_map(|(h, _)| h.millis())
            .reduce(f64::max)
    }
}

/// What the lead side tells the account side.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountUpdate {
    /// The lead's share of the account now; `None`: it left the account.
    Member {
        account_id: Box<str>,
        lead_id: Box<str>,
        member: Option<Member>,
        /// It left because it was erased: the account's tier is derived
        /// afresh from what remains, without the hysteresis that kept it
        /// where the lead's past share may have put it.
        erased: bool,
        at: Timestamp,
        cause: Cause,
    },
    /// Traits from a `group` call: they describe the account.
    Traits {
        account_id: Box<str>,
        traits: Fields,
        at: Timestamp,
        cause: Cause,
    },
}

impl AccountUpdate {
    pub fn account_id(&self) -> &str {
        match self {
            AccountUpdate::Member { account_id, .. } | AccountUpdate::Traits { account_id, .. } => {
                account_id
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AccountState {
    /// Latest update time applied (or decay due time).
    pub clock: Timestamp,
    pub tier: u8,
    pub last_emitted_score: f64,
    /// Holds the account's traits (only its trait list is used; its clock
    /// stays 0).
    pub profile: LeadState,
    pub members: Vec<Member>,
    pub due: Option<Timestamp>,
    /// The highest update position (offset in the topic that carries
    /// updates) applied, or -1: a redelivered update is recognised.
    pub position: i64,
    /// The latest update time applied (decay due times aside): expiry
    /// counts from it.
    pub last_update: Timestamp,
}

/// An account's numbers at one point in time.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountEvaluation {
    pub fit: f64,
    pub engagement: f64,
    pub committee: f64,
    pub score: f64,
    pub grade: Grade,
    pub engaged_leads: usize,
}

impl AccountState {
    fn new(clock: Timestamp) -> Self {
        AccountState {
            clock,
            tier: 0,
            last_emitted_score: 0.0,
            profile: LeadState::new(Timestamp(0)),
            members: Vec::new(),
            due: None,
            position: -1,
            last_update: clock,
        }
    }

    /// A restored account: its traits, members and tier as recorded.
    pub fn restored(
        clock: Timestamp,
        tier: u8,
        last_emitted_score: f64,
        traits: Vec<crate::core::lead::TraitState>,
        members: Vec<Member>,
        due: Option<Timestamp>,
        position: i64,
    ) -> Self {
        let mut profile = LeadState::new(Timestamp(0));
        profile.traits = traits.into_boxed_slice();
        // Kept in lead id order, each lead once (as updates keep them).
        let mut members = members;
        members.sort_by(|a, b| a.lead_id.cmp(&b.lead_id));
        members.dedup_by(|a, b| a.lead_id == b.lead_id);
        AccountState {
            clock,
            tier,
            last_emitted_score,
            profile,
            members,
            due,
            position,
            last_update: clock,
        }
    }

    /// When the account expires under `[events] inactive_after`: an account
    /// no lead belongs to any more, in the lowest tier, is dropped that
    /// long after its latest update. Nothing can change it meanwhile (no
    /// member's engagement decays), so the time is fixed by its history.
    pub fn expires_at(&self, rules: &Rules) -> Option<Timestamp> {
        let inactive = rules.settings.inactive_after_ms?;
        (self.members.is_empty() && self.tier == 0)
            .then(|| self.last_update.saturating_add_ms(inactive))
    }

    /// The next time the account needs attention: a decay change (or a
    /// look-ahead of its search, on from `from`) or expiry.
    fn next_due(&self, rules: &Rules, from: Timestamp) -> Option<Timestamp> {
        match (self.next_change_due(rules, from), self.expires_at(rules)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Each member's capped engagement at `t`, in member order.
    pub fn member_engagement(&self, accounts: &AccountRules, t: Timestamp) -> Vec<f64> {
        self.members
            .iter()
            .map(|m| m.engagement_at(t).min(accounts.lead_engagement_cap))
            .collect()
    }

    pub fn evaluate(&self, rules: &Rules, t: Timestamp) -> AccountEvaluation {
        // One decay per member for both its capped share and its own
        // score (what `member_engagement` and `lead_score_at` compute).
        // -0.0: adding it changes no sum, not even an empty one's sign.
        self.evaluate_members(
            rules,
            -0.0,
            self.members.iter().map(|m| (m, m.engagement_at(t))),
        )
    }

    /// The account's numbers at one time from its members' own engagement
    /// then: `passive`, the summed shares of members who cannot count as
    /// engaged and are under the cap, and each other member with its own.
    fn evaluate_members<'m>(
        &self,
        rules: &Rules,
        passive: f64,
        shares: impl Iterator<Item = (&'m Member, f64)>,
    ) -> AccountEvaluation {
        let accounts = rules.accounts.as_deref().expect("account rules");
        let profile = &accounts.profile;
        let fit = self.profile.fit(profile).points;
        let mut engaged = 0;
        let mut departments: Vec<u16> = Vec::new();
        let mut seniorities: Vec<u16> = Vec::new();
        let engagement: f64 = passive
            + shares
                .map(|(m, own)| {
                    if rules.clamp(rules.settings.base + m.fit + own) >= accounts.engaged_lead_score
                    {
                        engaged += 1;
                        if let Some(d) = m.department.filter(|d| !departments.contains(d)) {
                            departments.push(d);
                        }
                        if let Some(s) = m.seniority.filter(|s| !seniorities.contains(s)) {
                            seniorities.push(s);
                        }
                    }
                    own.min(accounts.lead_engagement_cap)
                })
                .sum::<f64>();
        let c = &accounts.committee;
        let committee = c.per_engaged_lead * engaged.min(c.max_engaged_leads) as f64
            + c.per_department * departments.len() as f64
            + c.per_seniority * seniorities.len() as f64;
        AccountEvaluation {
            fit,
            engagement,
            committee,
            score: profile.clamp(profile.settings.base + fit + engagement + committee),
            grade: profile.grades.grade(fit),
            engaged_leads: engaged,
        }
    }

    fn tier_at(&self, rules: &Rules, eval: &AccountEvaluation, tiering: Tiering) -> usize {
        let profile = &rules.accounts.as_deref().expect("account rules").profile;
        let from = match tiering {
            Tiering::Held => usize::from(self.tier),
            // From the lowest tier up: as high as the score qualifies
            // for, no higher.
            Tiering::Afresh => 0,
        };
        profile.next_tier(from, eval.score, eval.grade, &|key| {
            self.profile.trait_bits(profile, key)
        })
    }

    /// Account fit rules, members (capped engagement) and the committee,
    /// largest first.
    pub fn contributions(&self, rules: &Rules, t: Timestamp) -> Vec<Contribution> {
        self.top_contributions(rules, t, &self.evaluate(rules, t), usize::MAX)
    }

    /// The first `limit` of [`AccountState::contributions`], `eval` being
    /// the account's evaluation at `t`. Only members that can be among
    /// them are named: an account has hundreds.
    pub fn top_contributions(
        &self,
        rules: &Rules,
        t: Timestamp,
        eval: &AccountEvaluation,
        limit: usize,
    ) -> Vec<Contribution> {
        let accounts = rules.accounts.as_deref().expect("account rules");
        let profile = &accounts.profile;
        let fit = self.profile.fit(profile);
        // "lead {id}" names order as the ids do, so the members sorted by
        // their own (size, id) hold every member of the overall first
        // `limit` among their first `limit`.
        let mut members: Vec<(f64, &str)> = self
            .members
            .iter()
            .zip(self.member_engagement(accounts, t))
            .map(|(m, points)| (points + 0.0, &*m.lead_id)) // no "-0" for a faded lead
            .collect();
        let largest_first =
            |a: &(f64, &str), b: &(f64, &str)| b.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(b.1));
        if members.len() > limit {
            members.select_nth_unstable_by(limit, largest_first);
            members.truncate(limit);
        }
        // The account's fit rules, as a lead's (its profile has no
        // engagement rules).
        let mut all = fit.contributions(profile, &[]);
        all.extend(members.into_iter().map(|(points, lead_id)| Contribution {
            rule: format!("lead {lead_id}").into(),
            points,
        }));
        if eval.committee != 0.0 {
            all.push(Contribution {
                rule: "buying_committee".into(),
                points: eval.committee,
            });
        }
        sort_largest_first(&mut all);
        all.truncate(limit);
        all
    }

    /// When decay alone next moves the account to another tier, or a
    /// *look-ahead*: a time to search on from. Scores are not monotone in
    /// time (a lead leaving the committee drops points at once), so the
    /// search probes a grid of 64 steps from the account's clock through
    /// ten of the longest half-lives and narrows the first change down to
    /// the second. Accounts hear from their members far more often than a
    /// step (days), and every update starts the search again, so it probes
    /// one step at a time: the next grid point after `from` (the clock, or
    /// a look-ahead reached) if the account has not moved by then, to look
    /// again when the clock reaches it; the due time of the change within
    /// that step if it has. A look-ahead publishes nothing
    /// ([`fire_due`] tells it from a change: the tier has not moved); the
    /// chain of them meets the change exactly where one search through the
    /// whole grid would.
    pub fn next_change_due(&self, rules: &Rules, from: Timestamp) -> Option<Timestamp> {
        let tier = usize::from(self.tier);
        // A share that never decays is a constant, whatever its sign: it
        // cannot make the score rise as time passes.
        let any_negative = self.members.iter().any(|m| {
            m.engagement
                .iter()
                .any(|(h, sum)| sum.value < 0.0 && h.millis().is_some())
        });
        if tier == 0 && !any_negative {
            return None; // only falling, and there is no lower tier
        }
        let longest = self
            .members
            .iter()
            .filter_map(Member::longest_half_life_ms)
            .reduce(f64::max)?;
        const STEPS: i64 = 64;
        const PRECISION_MS: i64 = 1000;
        let horizon = (longest * 10.0) as i64;
        let step = (horizon / STEPS).max(PRECISION_MS);
        let grid = |k: i64| self.clock.saturating_add_ms(step * k);
        let reached = (from.millis() - self.clock.millis()).max(0) / step;
        if reached >= STEPS {
            return None;
        }
        // Every share only fading, the score only falls: if the account
        // has not left its tier by the end of the grid, it never does.
        if !any_negative && !self.moves_at(rules, grid(STEPS)) {
            return None;
        }
        let next = grid(reached + 1);
        if !self.moves_at(rules, next) {
            return (reached + 1 < STEPS).then_some(next);
        }
        // From the last probe that did not move to the one that did,
        // narrowed to the second (due times stay deterministic) by probes
        // that decay each half-life once, not each member's.
        let probe = Probe::new(self, rules, from.max(self.clock));
        let moved =
            |t: Timestamp| self.tier_at(rules, &probe.evaluate(rules, t), Tiering::Held) != tier;
        let (mut lo, mut hi) = (grid(reached).millis(), next.millis());
        while hi - lo > PRECISION_MS {
            let mid = lo + (hi - lo) / 2;
            if moved(Timestamp(mid)) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(Timestamp(hi))
    }

    /// Whether the account is in another tier at `at` than the one it
    /// holds: a due time reached is a change, not a look-ahead.
    fn moves_at(&self, rules: &Rules, at: Timestamp) -> bool {
        self.tier_at(rules, &self.evaluate(rules, at), Tiering::Held) != usize::from(self.tier)
    }
}

/// The members' engagement at `from`, summed per distinct half-life, so
/// that an evaluation at a later time decays once per half-life rather
/// than once per member, and members that can only fade (no negative
/// share, under the cap, not engaged: so never engaged later) count as
/// one sum: narrowing a change to the second
/// ([`AccountState::next_change_due`]) evaluates an account some twenty
/// times, and accounts have hundreds of people. Equal to
/// [`AccountState::evaluate`] up to float rounding (sums in another
/// order); due times only need to be deterministic, and the change at a
/// due time is evaluated exactly.
struct Probe<'a> {
    account: &'a AccountState,
    from: Timestamp,
    half_lives: Vec<HalfLife>,
    /// The fading members' values, per half-life.
    passive: Vec<f64>,
    /// The other members, by index.
    active: Vec<usize>,
    /// Active member `k`'s value for half-life `h` at
    /// `values[k * half_lives + h]`.
    values: Vec<f64>,
}

impl<'a> Probe<'a> {
    fn new(account: &'a AccountState, rules: &Rules, from: Timestamp) -> Probe<'a> {
        let accounts = rules.accounts.as_deref().expect("account rules");
        let mut half_lives: Vec<HalfLife> = Vec::new();
        for m in &account.members {
            for (h, _) in m.engagement.iter() {
                if !half_lives.contains(h) {
                    half_lives.push(*h);
                }
            }
        }
        let n = half_lives.len();
        let mut passive = vec![0.0; n];
        let mut active = Vec::new();
        let mut values = Vec::new();
        let mut own = vec![0.0; n];
        for (i, m) in account.members.iter().enumerate() {
            own.fill(0.0);
            for (h, sum) in m.engagement.iter() {
                let slot = half_lives.iter().position(|x| x == h).unwrap_or_default();
                own[slot] += sum.at(from, *h);
            }
            let total: f64 = own.iter().sum();
            let fades = own.iter().all(|v| *v >= 0.0)
                && total <= accounts.lead_engagement_cap
                && rules.clamp(rules.settings.base + m.fit + total) < accounts.engaged_lead_score;
            if fades {
                passive.iter_mut().zip(&own).for_each(|(p, v)| *p += v);
            } else {
                active.push(i);
                values.extend_from_slice(&own);
            }
        }
        Probe {
            account,
            from,
            half_lives,
            passive,
            active,
            values,
        }
    }

    /// The account's numbers at `t`, no earlier than `from`.
    fn evaluate(&self, rules: &Rules, t: Timestamp) -> AccountEvaluation {
        let elapsed = t.millis() - self.from.millis();
        let factors: Vec<f64> = self.half_lives.iter().map(|h| h.factor(elapsed)).collect();
        let n = factors.len();
        let decayed =
            |values: &[f64]| -> f64 { values.iter().zip(&factors).map(|(v, f)| v * f).sum() };
        let members = &self.account.members;
        self.account.evaluate_members(
            rules,
            decayed(&self.passive),
            self.active
                .iter()
                .enumerate()
                .map(|(k, &i)| (&members[i], decayed(&self.values[k * n..(k + 1) * n]))),
        )
    }
}

/// An account as seen from outside, at one point in time.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountSnapshot {
    pub account_id: String,
    /// The score's name when the rules file holds several.
    pub score_name: Option<Arc<str>>,
    pub as_of: Timestamp,
    pub fit: f64,
    pub engagement: f64,
    pub committee: f64,
    pub score: f64,
    pub grade: Grade,
    pub tier: Arc<str>,
    pub members: usize,
    pub engaged_leads: usize,
    pub contributions: Vec<Contribution>,
    pub last_event_at: Timestamp,
}

/// Every account's state, fed by [`AccountUpdate`]s.
pub struct AccountEngine {
    rules: Arc<Rules>,
    accounts: HashMap<Box<str>, Box<AccountState>>,
    timers: BTreeSet<(Timestamp, Box<str>)>,
    /// Accounts changed (or dropped) since the last `take_changes`, when
    /// tracking is on.
    changes: Option<BTreeSet<Box<str>>>,
}

impl AccountEngine {
    /// `None` when the rules score no accounts.
    pub fn new(rules: Arc<Rules>) -> Option<Self> {
        rules.accounts.as_ref()?;
        Some(AccountEngine {
            rules,
            accounts: HashMap::default(),
            timers: BTreeSet::new(),
            changes: None,
        })
    }

    /// Records which accounts change, for a changelog.
    pub fn track_changes(mut self) -> Self {
        self.changes = Some(BTreeSet::new());
        self
    }

    /// Calls `each` with every account changed since the last call: its
    /// state, or `None` where it was dropped (a tombstone).
    pub fn take_changes(&mut self, mut each: impl FnMut(&str, Option<&AccountState>)) {
        let Some(changes) = self.changes.as_mut() else {
            return;
        };
        for id in std::mem::take(changes) {
            each(&id, self.accounts.get(&id).map(|a| &**a));
        }
    }

    /// Puts back an account read from a changelog.
    pub fn restore_account(&mut self, account_id: &str, state: AccountState) {
        if let Some(old) = self.accounts.get(account_id).and_then(|a| a.due) {
            cancel(&mut self.timers, old, account_id);
        }
        if let Some(due) = state.due {
            self.timers.insert((due, account_id.into()));
        }
        self.accounts.insert(account_id.into(), Box::new(state));
    }

    /// Forgets an account (a changelog tombstone).
    pub fn forget_account(&mut self, account_id: &str) {
        if let Some(old) = self.accounts.remove(account_id) {
            if let Some(due) = old.due {
                cancel(&mut self.timers, due, account_id);
            }
        }
    }

    /// The earliest time at which `advance` has something to do.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.timers.first().map(|(due, _)| *due)
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id).map(|a| &**a)
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn apply(&mut self, update: &AccountUpdate) -> Vec<Output> {
        self.apply_from(update, None).unwrap_or_default()
    }

    /// [`AccountEngine::apply`] for an update read from a log at
    /// `position`; `None` when the account already holds that position.
    pub fn apply_from(
        &mut self,
        update: &AccountUpdate,
        position: Option<i64>,
    ) -> Option<Vec<Output>> {
        let rules = self.rules.clone();
        let rules = &*rules;
        let profile = &rules.accounts.as_deref().expect("account rules").profile;
        let (account_id, at, cause) = match update {
            AccountUpdate::Member {
                account_id,
                at,
                cause,
                ..
            }
            | AccountUpdate::Traits {
                account_id,
                at,
                cause,
                ..
            } => (account_id, *at, cause),
        };
        if let (Some(position), Some(account)) = (position, self.accounts.get(account_id)) {
            if position <= account.position {
                return None;
            }
        }
        let mut outputs = Vec::new();
        // Expired by then: dropped first, as a timer would have, so the
        // update finds a fresh account.
        if let Some(account) = self.accounts.get_mut(account_id) {
            if account.expires_at(rules).is_some_and(|e| e <= at) {
                fire_due(rules, account_id, account, at, &mut outputs);
                self.expire(account_id);
            }
        }
        let account = self
            .accounts
            .entry(account_id.clone())
            .or_insert_with(|| Box::new(AccountState::new(at)));
        if let Some(position) = position {
            account.position = account.position.max(position);
        }
        if let Some(changes) = self.changes.as_mut() {
            changes.insert(account_id.clone());
        }
        let due_before = account.due;
        fire_due(rules, account_id, account, at, &mut outputs);
        account.last_update = account.last_update.max(at);
        match update {
            AccountUpdate::Member {
                lead_id, member, ..
            } => {
                // Members are kept in lead id order, each lead once.
                let found = account
                    .members
                    .binary_search_by(|m| m.lead_id.as_ref().cmp(lead_id.as_ref()));
                match (found, member) {
                    (Ok(i), Some(member)) => account.members[i] = member.clone(),
                    (Ok(i), None) => {
                        account.members.remove(i);
                    }
                    (Err(i), Some(member)) => account.members.insert(i, member.clone()),
                    (Err(_), None) => {}
                }
            }
            AccountUpdate::Traits { traits, .. } => {
                account.profile.apply_traits(profile, traits, at);
            }
        }
        account.clock = account.clock.max(at);
        // One lead event can send an account both its traits and a member
        // update: their outputs need ids of their own.
        let subject = match update {
            AccountUpdate::Member { .. } => ACCOUNT,
            AccountUpdate::Traits { .. } => ACCOUNT_TRAITS,
        };
        // Every lead of an account sends a share when the rules change:
        // each share's outputs need ids of their own.
        let cause = match (update, cause) {
            (AccountUpdate::Member { lead_id, .. }, Cause::RulesChanged(fingerprint)) => {
                Cause::RulesChanged(format!("{fingerprint}\x1f{lead_id}").into())
            }
            _ => cause.clone(),
        };
        let tiering = match update {
            AccountUpdate::Member { erased: true, .. } => Tiering::Afresh,
            _ => Tiering::Held,
        };
        emit(
            rules,
            account_id,
            account,
            subject,
            cause,
            tiering,
            &mut outputs,
        );
        account.due = account.next_due(rules, account.clock);
        reschedule(&mut self.timers, account_id, due_before, account.due);
        if account.members.is_empty() && account.profile.traits.is_empty() {
            // Nothing left of it (a lead passed through on its way to
            // another account): dropped, so its having existed does not
            // depend on the order events arrived in.
            if let Some(due) = account.due {
                cancel(&mut self.timers, due, account_id);
            }
            self.accounts.remove(account_id);
        }
        Some(outputs)
    }

    /// Drops an expired account: its timer, and a tombstone for the
    /// changelog.
    fn expire(&mut self, account_id: &str) {
        if let Some(account) = self.accounts.remove(account_id) {
            if let Some(due) = account.due {
                cancel(&mut self.timers, due, account_id);
            }
            if let Some(changes) = self.changes.as_mut() {
                changes.insert(account_id.into());
            }
        }
    }

    /// [`crate::core::Engine::rescore`] for accounts: each re-evaluated
    /// under the engine's rules, in account id order.
    pub fn rescore(&mut self, cause: &Cause) -> Vec<Output> {
        let rules = &*self.rules;
        let mut ids: Vec<Box<str>> = self.accounts.keys().cloned().collect();
        ids.sort_unstable();
        let mut outputs = Vec::new();
        for account_id in ids {
            let Some(account) = self.accounts.get_mut(&account_id) else {
                continue;
            };
            let due_before = account.due;
            emit(
                rules,
                &account_id,
                account,
                ACCOUNT,
                cause.clone(),
                Tiering::Held,
                &mut outputs,
            );
            account.due = account.next_due(rules, account.clock);
            reschedule(&mut self.timers, &account_id, due_before, account.due);
            if let Some(changes) = self.changes.as_mut() {
                changes.insert(account_id);
            }
        }
        outputs
    }

    /// The crossings that hand subscribers over from another deployment,
    /// as [`crate::core::Engine::handover_crossings`] does for leads: for
    /// each account whose tier here differs from the one the other last
    /// published (an account it never published counts as in the lowest
    /// tier), a `threshold_crossed` from that tier to this one, with
    /// `cause`. State is not changed. In account id order.
    pub fn handover_crossings(
        &self,
        published: impl Fn(&str) -> Option<(Arc<str>, usize)>,
        cause: &Cause,
    ) -> Vec<Output> {
        let rules = &*self.rules;
        let profile = &rules.accounts.as_deref().expect("account rules").profile;
        let held = self.accounts.iter().map(|(id, a)| (&**id, a.tier));
        handover_moves(profile, held, published)
            .into_iter()
            .map(|(account_id, previous_name, previous)| {
                let account = &self.accounts[account_id];
                let eval = account.evaluate(rules, account.clock);
                let kind = OutputKind::ThresholdCrossed;
                Output {
                    previous_tier: previous_name,
                    direction: direction_of(usize::from(account.tier), previous, 0.0),
                    ..account_output(rules, (ACCOUNT, account_id), account, &eval, kind, cause)
                }
            })
            .collect()
    }

    /// Publishes what decay alone changes up to `now`.
    pub fn advance(&mut self, now: Timestamp) -> Vec<Output> {
        let rules = self.rules.clone();
        let rules = &*rules;
        let mut outputs = Vec::new();
        while let Some((due, account_id)) = pop_due(&mut self.timers, now) {
            let Some(account) = self.accounts.get_mut(&account_id) else {
                continue;
            };
            fire_due(rules, &account_id, account, due, &mut outputs);
            if let Some(changes) = self.changes.as_mut() {
                changes.insert(account_id.clone());
            }
            if account.expires_at(rules).is_some_and(|e| e <= due) {
                account.due = None;
                self.expire(&account_id);
            } else if let Some(next) = account.due {
                self.timers.insert((next, account_id));
            }
        }
        outputs
    }

    /// The account's numbers and explanation at `at` (not before its clock).
    pub fn explain(&self, account_id: &str, at: Timestamp) -> Option<AccountSnapshot> {
        self.accounts
            .get(account_id)
            .map(|a| snapshot_of(&self.rules, account_id, a, at))
    }

    /// Every account at `at`, ordered by id. Call `advance(at)` first for
    /// tiers that include decay up to `at`.
    pub fn snapshot(&self, at: Timestamp) -> Vec<AccountSnapshot> {
        let mut ids: Vec<&Box<str>> = self.accounts.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| snapshot_of(&self.rules, id, &self.accounts[id], at))
            .collect()
    }
}

fn snapshot_of(
    rules: &Rules,
    account_id: &str,
    a: &AccountState,
    at: Timestamp,
) -> AccountSnapshot {
    let at = at.max(a.clock);
    let eval = a.evaluate(rules, at);
    let profile = &rules.accounts.as_deref().expect("account rules").profile;
    AccountSnapshot {
        account_id: account_id.to_string(),
        score_name: rules.score_name.clone(),
        as_of: at,
        fit: eval.fit,
        engagement: eval.engagement,
        committee: eval.committee,
        score: eval.score,
        grade: eval.grade,
        tier: profile.tier_name(usize::from(a.tier)).clone(),
        members: a.members.len(),
        engaged_leads: eval.engaged_leads,
        contributions: a.contributions(rules, at),
        last_event_at: a.clock,
    }
}

/// Fires the account's decay due times up to `until`.
fn fire_due(
    rules: &Rules,
    account_id: &str,
    account: &mut AccountState,
    until: Timestamp,
    outputs: &mut Vec<Output>,
) {
    let tiers = rules
        .accounts
        .as_deref()
        .map_or(0, |a| a.profile.tiers.len());
    let mut changes = 0;
    loop {
        let Some(due) = account.due.filter(|due| *due <= until) else {
            return;
        };
        if !account.moves_at(rules, due) {
            if account.expires_at(rules).is_some_and(|e| e <= due) {
                return; // the caller drops it
            }
            // A look-ahead: the search goes on from there (at most one
            // per grid step, so this ends).
            account.due = account.next_due(rules, due);
            continue;
        }
        changes += 1;
        if changes > 2 * tiers {
            break;
        }
        account.clock = account.clock.max(due);
        emit(
            rules,
            account_id,
            account,
            ACCOUNT,
            Cause::Decay(due),
            Tiering::Held,
            outputs,
        );
        account.due = account.next_due(rules, account.clock);
        if account.expires_at(rules).is_some_and(|e| e <= due) {
            return; // the caller drops it
        }
    }
    account.due = None;
}

/// Output id subjects: an account's outputs from member updates and decay,
/// and from its traits.
const ACCOUNT: &str = "account";
const ACCOUNT_TRAITS: &str = "account traits";

/// How an account's tier follows its score.
#[derive(Clone, Copy)]
enum Tiering {
    /// With hysteresis: a tier is left only once the score falls below its
    /// minimum by `hysteresis`.
    Held,
    /// The tier the score qualifies for now, whatever tier was held: after
    /// an erasure, whose lead's past share may be all that held it.
    Afresh,
}

/// An account's output of `kind`, at its clock: its numbers (`eval`, its
/// evaluation then), its top contributions, and the tier it holds (as both
/// tiers: the caller says what moved).
fn account_output(
    rules: &Rules,
    (subject, account_id): (&str, &str),
    account: &AccountState,
    eval: &AccountEvaluation,
    kind: OutputKind,
    cause: &Cause,
) -> Output {
    let profile = &rules.accounts.as_deref().expect("account rules").profile;
    let at = account.clock;
    let contributions =
        account.top_contributions(rules, at, eval, profile.settings.top_contributions);
    let tier = profile.tier_name(usize::from(account.tier)).clone();
    let delta = eval.score - account.last_emitted_score;
    Output {
        kind,
        event_id: output_id_for(
            rules.score_name.as_deref(),
            subject,
            account_id,
            kind,
            cause,
        ),
        lead_id: None,
        account_id: Some(account_id.to_string()),
        at,
        cause: cause.clone(),
        score: eval.score,
        fit: eval.fit,
        engagement: eval.engagement,
        grade: eval.grade,
        tier: tier.clone(),
        previous_tier: tier,
        direction: direction_of(0, 0, delta),
        delta,
        contributions,
        rules_version: rules.version.clone(),
        score_name: rules.score_name.clone(),
        stage: None,
        lifecycle: None,
    }
}

fn emit(
    rules: &Rules,
    account_id: &str,
    account: &mut AccountState,
    subject: &str,
    cause: Cause,
    tiering: Tiering,
    out: &mut Vec<Output>,
) {
    let profile = &rules.accounts.as_deref().expect("account rules").profile;
    let at = account.clock;
    let eval = account.evaluate(rules, at);
    let previous = usize::from(account.tier);
    let tier = account.tier_at(rules, &eval, tiering);
    let delta = eval.score - account.last_emitted_score;
    if tier == previous && delta.abs() < profile.settings.step {
        return;
    }
    let changed = Output {
        tier: profile.tier_name(tier).clone(),
        previous_tier: profile.tier_name(previous).clone(),
        direction: direction_of(tier, previous, delta),
        ..account_output(
            rules,
            (subject, account_id),
            account,
            &eval,
            OutputKind::ScoreChanged,
            &cause,
        )
    };
    let crossed_id = (tier != previous).then(|| {
        output_id_for(
            rules.score_name.as_deref(),
            subject,
            account_id,
            OutputKind::ThresholdCrossed,
            &cause,
        )
    });
    push_change(out, changed, crossed_id);
    account.tier = tier as u8;
    account.last_emitted_score = eval.score;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time::MS_PER_DAY;

    fn example_rules() -> Rules {
        crate::config::load_rules(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/leadscore.toml"
        )))
        .expect("example rules")
    }

    /// Members with shares of several half-lives (one that never
    /// decays), anchored at different times, some negative.
    fn account(members: usize) -> AccountState {
        let t0 = Timestamp(1_764_547_200_000);
        let half_lives = [HalfLife::days(7.0), HalfLife::days(30.0), HalfLife::Never];
        let mut account = AccountState::new(t0);
        for i in 0..members {
            let engagement: Vec<(HalfLife, Decaying)> = (0..=i % 3)
                .map(|k| {
                    let points = ((i * 7 + k * 13) % 40) as f64 - 8.0;
                    let at = t0.saturating_add_ms((i as i64 * 5 + k as i64) * MS_PER_DAY / 3);
                    (half_lives[(i + k) % 3], Decaying::new(points, at))
                })
                .collect();
            account.members.push(Member {
                lead_id: format!("lead-{i}").into(),
                fit: (i % 4) as f64 * 10.0,
                engagement: engagement.into_boxed_slice(),
                department: Some((i % 3) as u16),
                seniority: Some((i % 2) as u16),
            });
        }
        account.clock = t0.saturating_add_ms(40 * MS_PER_DAY);
        account
    }

    /// The first contributions, worked out from the members that can be
    /// among them, are the first of the whole list, ties in size included.
    #[test]
    fn top_contributions_are_the_first_of_all_contributions() {
        let rules = example_rules();
        for members in [0, 1, 5, 40, 300] {
            let mut account = account(members);
            // Ties in size: members with equal shares, told apart by id.
            for m in account.members.iter_mut().step_by(4) {
                m.engagement = Box::new([(HalfLife::Never, Decaying::new(7.0, Timestamp(0)))]);
            }
            for t in [
                account.clock,
                account.clock.saturating_add_ms(20 * MS_PER_DAY),
            ] {
                let all = account.contributions(&rules, t);
                let eval = account.evaluate(&rules, t);
                for limit in [0, 1, 3, 5, 10, 1000] {
                    let top = account.top_contributions(&rules, t, &eval, limit);
                    assert_eq!(
                        top,
                        all[..limit.min(all.len())],
                        "{members} members, {limit}"
                    );
                }
            }
        }
    }

    /// The search for the next change with every probe a full, exact
    /// evaluation; probes walked in order when a share
    /// can grow back, halved otherwise.
    fn next_change_by_exact_probes(account: &AccountState, rules: &Rules) -> Option<Timestamp> {
        let tier = usize::from(account.tier);
        let from = account.clock;
        let longest = account
            .members
            .iter()
            .filter_map(Member::longest_half_life_ms)
            .reduce(f64::max)?;
        let step = ((longest * 10.0) as i64 / 64).max(1000);
        let moved = |t: Timestamp| {
            account.tier_at(rules, &account.evaluate(rules, t), Tiering::Held) != tier
        };
        let probe = |k: i64| from.saturating_add_ms(step * k);
        let narrow = |mut lo: i64, mut hi: i64| {
            while hi - lo > 1000 {
                let mid = lo + (hi - lo) / 2;
                if moved(Timestamp(mid)) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Timestamp(hi)
        };
        let rises = account.members.iter().any(|m| {
            m.engagement
                .iter()
                .any(|(h, sum)| sum.value < 0.0 && h.millis().is_some())
        });
        if rises {
            let first = (1..=64).find(|k| moved(probe(*k)))?;
            return Some(narrow(probe(first - 1).millis(), probe(first).millis()));
        }
        if !moved(probe(64)) {
            return None;
        }
        let (mut quiet, mut changed) = (0, 64);
        while changed - quiet > 1 {
            let mid = quiet + (changed - quiet) / 2;
            if moved(probe(mid)) {
                changed = mid;
            } else {
                quiet = mid;
            }
        }
        Some(narrow(probe(quiet).millis(), probe(changed).millis()))
    }

    #[test]
    fn the_probed_search_finds_the_change_exact_probes_find() {
        let rules = example_rules();
        let t0 = Timestamp(1_764_547_200_000);
        let half_lives = [
            HalfLife::days(7.0),
            HalfLife::days(30.0),
            HalfLife::days(3.0),
        ];
        let mut rng = fastrand::Rng::with_seed(21);
        let (mut found, mut walked) = (0, 0);
        // Some members also hold a share that never decays, of either sign
        // (an unsubscribe's -20): the score still only falls.
        for case in 0..300 {
            let members = 1 + case % 60;
            let mut account = AccountState::new(t0);
            for i in 0..members {
                let mut engagement: Vec<(HalfLife, Decaying)> = (0..rng.usize(1..=3))
                    .map(|k| {
                        let at = t0.saturating_add_ms(rng.i64(0..20 * MS_PER_DAY));
                        // One in eight shares negative (a careers page).
                        let points = if rng.u8(0..8) == 0 {
                            -rng.f64() * 15.0
                        } else {
                            rng.f64() * 45.0
                        };
                        (half_lives[k], Decaying::new(points, at))
                    })
                    .collect();
                if rng.bool() {
                    let points = rng.f64() * 50.0 - 30.0;
                    engagement.push((HalfLife::Never, Decaying::new(points, t0)));
                }
                account.members.push(Member {
                    lead_id: format!("lead-{i}").into(),
                    fit: rng.u8(0..5) as f64 * 10.0,
                    engagement: engagement.into_boxed_slice(),
                    department: Some(rng.u16(0..4)),
                    seniority: Some(rng.u16(0..3)),
                });
            }
            account.clock = t0.saturating_add_ms(20 * MS_PER_DAY);
            let eval = account.evaluate(&rules, account.clock);
            account.tier = account.tier_at(&rules, &eval, Tiering::Afresh) as u8;
            let expected = next_change_by_exact_probes(&account, &rules);
            // Look-aheads followed as the timers would: each is a time the
            // account has not moved by.
            let mut from = account.clock;
            let windowed = loop {
                match account.next_change_due(&rules, from) {
                    Some(at) if !account.moves_at(&rules, at) => {
                        assert!(at > from, "case {case}: the search moves on");
                        from = at;
                    }
                    due => break due,
                }
            };
            assert_eq!(windowed, expected, "case {case}, {members} members");
            if let Some(due) = expected {
                // To the second: moved at the due time, not a second before.
                assert!(account.moves_at(&rules, due), "case {case}");
                let before = due.saturating_sub_ms(1000);
                assert!(!account.moves_at(&rules, before), "case {case}");
            }
            found += usize::from(expected.is_some());
            let rises = account.members.iter().any(|m| {
                m.engagement
                    .iter()
                    .any(|(h, sum)| sum.value < 0.0 && h.millis().is_some())
            });
            walked += usize::from(rises && expected.is_some());
        }
        assert!(found > 100, "only {found} accounts change tier");
        assert!(walked > 30, "only {walked} changes found by the walk");
    }

    #[test]
    fn a_probe_evaluates_as_the_account_does() {
        let rules = example_rules();
        for members in [1, 5, 40] {
            let account = account(members);
            let probe = Probe::new(&account, &rules, account.clock);
            if members == 40 {
                // Both kinds: fading members summed, the others one by one.
                assert!(
                    !probe.active.is_empty() && probe.active.len() < members,
                    "{} active",
                    probe.active.len()
                );
            }
            for days in [0, 1, 3, 10, 45, 200] {
                let t = account.clock.saturating_add_ms(days * MS_PER_DAY + 1234);
                let exact = account.evaluate(&rules, t);
                let probed = probe.evaluate(&rules, t);
                assert!(
                    (exact.score - probed.score).abs() < 1e-9
                        && (exact.engagement - probed.engagement).abs() < 1e-9,
                    "{members} members, {days} days: {exact:?} vs {probed:?}"
                );
                assert_eq!(
                    (exact.engaged_leads, exact.committee, exact.grade),
                    (probed.engaged_leads, probed.committee, probed.grade)
                );
            }
        }
    }
}
