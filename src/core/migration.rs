//! Re-scoring kept state under changed rules, in place.
//!
//! State refers to rules, tiers and trait comparisons by position and
//! keeps engagement as decayed points, so it means something only under the
//! rules that wrote it. An outline of those rules (names, points, caps,
//! half-lives, comparisons; see [`RulesOutline`]) is kept beside the state,
//! and a [`Migration`] built from the outline and the new rules rewrites
//! state as if the new rules had written it. That is exact whenever the
//! state holds what the new rules need:
//!
//! - a rule's credit is `points × Σ decay(hit)`, so new points scale it by
//!   `new / old` (a capped window's raw total and cap scale alike, so a cap
//!   that moves with its points keeps every window's factor);
//! - fit, grades, tiers, gates, `base`, clamp, step and hysteresis are
//!   evaluated from kept bits and credits, so any change to them is free;
//! - a removed rule or comparison is dropped.
//!
//! What the state cannot answer needs the events again (a shadow run): a
//! new engagement rule, a changed condition or half-life, a comparison of a
//! trait no rule read before, a cap that moves other than with its points,
//! points given to a rule that had none. [`Migration::plan`] names each.

use serde::{Deserialize, Serialize};

use super::account::{AccountRules, AccountState};
use super::decay::HalfLife;
use super::fingerprint::{conditions_text, op};
use super::lead::{LeadState, TraitState};
use super::rules::{EngagementRule, Rules, TraitBits, TRAIT_KNOWN_BIT};

/// What kept state needs to know of the rules that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RulesOutline {
    pub version: String,
    pub fingerprint: String,
    pub leads: ProfileOutline,
    pub accounts: Option<AccountsOutline>,
    /// `[filters]`, as the fingerprint describes them (none: no filters,
    /// or an outline written before filters existed).
    #[serde(default)]
    pub filters: Option<String>,
}

/// Traits, tiers, fit rule names and engagement rules of one rule set, in
/// the order state refers to them by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileOutline {
    pub traits: Vec<TraitOutline>,
    pub tiers: Vec<TierOutline>,
    pub fit: Vec<String>,
    pub engagement: Vec<EngagementOutline>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraitOutline {
    pub name: String,
    /// Each comparison, described as the fingerprint describes it.
    pub comparisons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierOutline {
    pub name: String,
    pub min_score: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngagementOutline {
    pub name: String,
    pub points: f64,
    /// Cap points and window length.
    pub cap: Option<(f64, i64)>,
    /// The half-life in force; `None`: no decay.
    pub half_life_ms: Option<f64>,
    /// What the rule matches (call types, names, conditions, once).
    pub matches: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountsOutline {
    pub profile: ProfileOutline,
    /// How leads are linked to accounts from their email domain.
    pub links: String,
}

impl RulesOutline {
    pub fn of(rules: &Rules) -> RulesOutline {
        RulesOutline {
            version: rules.version.to_string(),
            fingerprint: rules.fingerprint(),
            leads: ProfileOutline::of(rules),
            accounts: rules.accounts.as_deref().map(|a| AccountsOutline {
                profile: ProfileOutline::of(&a.profile),
                links: links_of(a),
            }),
            filters: rules.filters.as_deref().map(|f| f.description.clone()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an outline has only serializable fields")
    }

    pub fn from_json(bytes: &[u8]) -> Result<RulesOutline, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl ProfileOutline {
    fn of(rules: &Rules) -> ProfileOutline {
        ProfileOutline {
            traits: rules
                .trait_keys
                .iter()
                .map(|k| TraitOutline {
                    name: k.name.clone(),
                    comparisons: k.ops.iter().map(op).collect(),
                })
                .collect(),
            tiers: rules
                .tiers
                .iter()
                .map(|t| TierOutline {
                    name: t.name.to_string(),
                    min_score: t.min_score,
                })
                .collect(),
            fit: rules.fit.iter().map(|f| f.name.to_string()).collect(),
            engagement: rules
                .engagement
                .iter()
                .enumerate()
                .map(|(index, rule)| EngagementOutline {
                    name: rule.name.to_string(),
                    points: rule.points,
                    cap: rule.cap.map(|c| (c.points, c.window_ms)),
                    half_life_ms: match rules.half_life_of(index) {
                        HalfLife::Millis(ms) => Some(ms),
                        HalfLife::Never | HalfLife::Inherit => None,
                    },
                    matches: matches_of(rule),
                })
                .collect(),
        }
    }
}

fn matches_of(rule: &EngagementRule) -> String {
    format!(
        "kinds={:?} names={:?} once={} [{}]",
        rule.kinds,
        rule.names,
        rule.once,
        conditions_text(&rule.conditions)
    )
}

fn links_of(accounts: &AccountRules) -> String {
    format!(
        "from_email_domain={} personal_domains={:?}",
        accounts.from_email_domain, accounts.personal_domains
    )
}

/// How state written under old rules reads under new ones.
#[derive(Clone, Debug)]
pub struct Migration {
    /// The fingerprint of the rules the state was written under.
    pub from: String,
    leads: ProfileMap,
    accounts: Option<ProfileMap>,
    /// Old lead fit rule index to new (an account member's department and
    /// seniority are lead fit rules).
    fit: Vec<Option<u16>>,
}

#[derive(Clone, Debug)]
struct ProfileMap {
    /// Per new trait key: the old key it reads, and per new comparison
    /// the old comparison slot.
    traits: Vec<(u16, Vec<u8>)>,
    /// Old tier index to new.
    tiers: Vec<u8>,
    /// Old engagement rule index to the new one and its points ratio.
    engagement: Vec<Option<(u16, f64)>>,
}

impl Migration {
    /// The migration from state written under `old` to `new`, or every
    /// reason the kept state cannot answer `new` (each a sentence).
    pub fn plan(old: &RulesOutline, new: &Rules) -> Result<Migration, Vec<String>> {
        let mut reasons = Vec::new();
        let leads = profile_map(&old.leads, new, "", &mut reasons);
        let accounts = match (&old.accounts, new.accounts.as_deref()) {
            (Some(was), Some(now)) => {
                if was.links != links_of(now) {
                    reasons.push(
                        "[accounts] links leads by email domain differently, and the kept \
                         state does not hold the domains"
                            .to_string(),
                    );
                }
                Some(profile_map(
                    &was.profile,
                    &now.profile,
                    "account ",
                    &mut reasons,
                ))
            }
            (None, Some(_)) => {
                reasons.push(
                    "[accounts] is new: account traits from group calls and email domains \
                     were not kept"
                        .to_string(),
                );
                None
            }
            (_, None) => None,
        };
        if old.filters.as_deref() != new.filters.as_deref().map(|f| f.description.as_str()) {
            reasons.push(
                "[filters] changed: which past events they keep out of scores cannot be told \
                 from the kept state"
                    .to_string(),
            );
        }
        if !reasons.is_empty() {
            return Err(reasons);
        }
        Ok(Migration {
            from: old.fingerprint.clone(),
            leads,
            accounts,
            fit: old
                .leads
                .fit
                .iter()
                .map(|name| {
                    new.fit
                        .iter()
                        .position(|f| *f.name == **name)
                        .map(|i| i as u16)
                })
                .collect(),
        })
    }

    /// The lead (and every history merged into it) as the new rules would
    /// hold it.
    pub fn lead(&self, state: LeadState) -> LeadState {
        self.leads.lead(state)
    }

    /// The account as the new rules would hold it. Its members keep their
    /// old numbers until their leads, re-scored, send new ones.
    pub fn account(&self, mut state: AccountState) -> AccountState {
        if let Some(map) = &self.accounts {
            let profile = std::mem::replace(&mut state.profile, LeadState::new(state.clock));
            state.profile = map.lead(profile);
            state.tier = map.tier(state.tier);
        }
        for member in &mut state.members {
            let remap = |index: Option<u16>| {
                index.and_then(|i| self.fit.get(usize::from(i)).copied().flatten())
            };
            member.department = remap(member.department);
            member.seniority = remap(member.seniority);
        }
        state
    }
}

impl ProfileMap {
    fn tier(&self, old: u8) -> u8 {
        self.tiers.get(usize::from(old)).copied().unwrap_or(0)
    }

    fn lead(&self, mut state: LeadState) -> LeadState {
        let traits: Vec<TraitState> = self
            .traits
            .iter()
            .enumerate()
            .filter_map(|(new_key, (old_key, slots))| {
                let kept = state.traits.iter().find(|t| t.key == *old_key)?;
                let bit = |slot: u8| (kept.bits >> (u32::from(slot) + 1)) & 1;
                let bits = slots
                    .iter()
                    .enumerate()
                    .fold(kept.bits & TRAIT_KNOWN_BIT, |bits, (slot, &old_slot)| {
                        bits | (bit(old_slot) << (slot + 1)) as TraitBits
                    });
                Some(TraitState {
                    key: new_key as u16,
                    bits,
                    set_at: kept.set_at,
                })
            })
            .collect();
        state.traits = traits.into_boxed_slice();
        let rule = |old: u16| self.engagement.get(usize::from(old)).copied().flatten();
        state.credits = std::mem::take(&mut state.credits)
            .into_vec()
            .into_iter()
            .filter_map(|mut c| {
                let (new, ratio) = rule(c.rule)?;
                c.rule = new;
                c.credit.value *= ratio;
                Some(c)
            })
            .collect();
        state.windows = std::mem::take(&mut state.windows)
            .into_vec()
            .into_iter()
            .filter_map(|mut w| {
                let (new, ratio) = rule(w.rule)?;
                w.rule = new;
                w.raw *= ratio;
                w.credit.value *= ratio;
                Some(w)
            })
            .collect();
        state.tier = self.tier(state.tier);
        state.merged = std::mem::take(&mut state.merged)
            .into_vec()
            .into_iter()
            .map(|mut history| {
                history.state = self.lead(history.state);
                history
            })
            .collect();
        state
    }
}

/// Relative tolerance for "the cap moved with its points".
const SCALED_CAP_TOLERANCE: f64 = 1e-9;

fn profile_map(
    old: &ProfileOutline,
    new: &Rules,
    what: &str,
    reasons: &mut Vec<String>,
) -> ProfileMap {
    let mut traits = Vec::new();
    for key in &new.trait_keys {
        let Some(old_key) = old.traits.iter().position(|t| t.name == key.name) else {
            reasons.push(format!(
                "{what}trait \"{}\" is read now but was not before: the kept state has no \
                 comparison of its values",
                key.name
            ));
            continue;
        };
        let mut slots = Vec::new();
        for comparison in key.ops.iter().map(op) {
            match old.traits[old_key]
                .comparisons
                .iter()
                .position(|c| *c == comparison)
            {
                Some(slot) => slots.push(slot as u8),
                None => reasons.push(format!(
                    "{what}trait \"{}\" is compared in a new way ({comparison}): the kept \
                     state holds the results of the old comparisons, not the values",
                    key.name
                )),
            }
        }
        traits.push((old_key as u16, slots));
    }

    let tiers = old
        .tiers
        .iter()
        .map(|tier| tier_under(tier, new) as u8)
        .collect();

    let half_life_ms = |index: usize| match new.half_life_of(index) {
        HalfLife::Millis(ms) => Some(ms),
        HalfLife::Never | HalfLife::Inherit => None,
    };
    let mut engagement: Vec<Option<(u16, f64)>> = vec![None; old.engagement.len()];
    let mut taken = vec![false; old.engagement.len()];
    for (index, rule) in new.engagement.iter().enumerate() {
        let matches = matches_of(rule);
        let by_name = old.engagement.iter().position(|o| *o.name == *rule.name);
        // A rule renamed and otherwise kept still reads its old credit.
        let renamed = || {
            old.engagement.iter().enumerate().position(|(i, o)| {
                !taken[i]
                    && o.matches == matches
                    && o.half_life_ms == half_life_ms(index)
                    && !new.engagement.iter().any(|n| *n.name == *o.name)
            })
        };
        let Some(old_index) = by_name.or_else(renamed) else {
            reasons.push(format!(
                "{what}engagement rule \"{}\" is new: the events it would have matched are \
                 not kept",
                rule.name
            ));
            continue;
        };
        taken[old_index] = true;
        let was = &old.engagement[old_index];
        let name = &rule.name;
        if was.matches != matches {
            reasons.push(format!(
                "{what}engagement rule \"{name}\" matches other events now: past events are \
                 not kept"
            ));
            continue;
        }
        if was.half_life_ms != half_life_ms(index) {
            reasons.push(format!(
                "{what}engagement rule \"{name}\" decays at another half-life: its hits' \
                 times are not kept"
            ));
            continue;
        }
        if was.points == 0.0 && rule.points != 0.0 {
            reasons.push(format!(
                "{what}engagement rule \"{name}\" gives points and gave none: its hits were \
                 not kept"
            ));
            continue;
        }
        let ratio = if was.points == 0.0 {
            0.0
        } else {
            rule.points / was.points
        };
        let cap = rule.cap.map(|c| (c.points, c.window_ms));
        let cap_scales = match (was.cap, cap) {
            (None, None) => true,
            (Some((was_points, was_window)), Some((points, window))) => {
                let expected = was_points * ratio.abs();
                was_window == window
                    && (points - expected).abs() <= SCALED_CAP_TOLERANCE * points.abs().max(1.0)
            }
            _ => false,
        };
        if !cap_scales {
            reasons.push(format!(
                "{what}engagement rule \"{name}\" has a cap that changed other than with its \
                 points (by {ratio}): past hits per window are not kept"
            ));
            continue;
        }
        engagement[old_index] = Some((index as u16, ratio));
    }
    ProfileMap {
        traits,
        tiers,
        engagement,
    }
}

/// Where a tier of older rules lies under `new`: the tier of the same
/// name or, for a tier gone, the highest new tier that asks no more.
pub fn tier_under(old: &TierOutline, new: &Rules) -> usize {
    let by_name = new.tiers.iter().position(|t| *t.name == *old.name);
    let by_score = || {
        new.tiers
            .iter()
            .rposition(|t| t.min_score <= old.min_score)
            .unwrap_or(0)
    };
    by_name.unwrap_or_else(by_score)
}
