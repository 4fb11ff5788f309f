//! Compiled, validated scoring rules: what the config layer builds from the
//! TOML file and the engine runs. Construction is the config layer's job;
//! everything here assumes the invariants `config` checked (tiers ascending,
//! grade thresholds ordered, half-lives positive, names unique).

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use crate::core::decay::HalfLife;
use crate::core::event::{Event, EventKind, Value};

/// Lead grade from fit alone: A is best.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grade {
    A,
    B,
    C,
    D,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
        }
    }

    pub fn parse(text: &str) -> Option<Grade> {
        match text {
            "A" => Some(Grade::A),
            "B" => Some(Grade::B),
            "C" => Some(Grade::C),
            "D" => Some(Grade::D),
            _ => None,
        }
    }
}

/// Minimum fit for grades A, B and C; anything lower is D.
#[derive(Clone, Debug, PartialEq)]
pub struct GradeThresholds {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl GradeThresholds {
    pub fn grade(&self, fit: f64) -> Grade {
        if fit >= self.a {
            Grade::A
        } else if fit >= self.b {
            Grade::B
        } else if fit >= self.c {
            Grade::C
        } else {
            Grade::D
        }
    }
}

/// How a condition compares a value. Text comparisons ignore ASCII case:
/// marketing data spells "VP", "Vp" and "vp" alike.
#[derive(Clone, Debug)]
pub enum Op {
    Equals(Value),
    OneOf(Vec<Value>),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
    /// `at_least` inclusive, `below` exclusive; numbers or numeric text.
    Range {
        at_least: Option<f64>,
        below: Option<f64>,
    },
    /// `exists = true`: the value is known (not null, not empty).
    Exists(bool),
}

impl Op {
    pub fn matches(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| v.is_known());
        match self {
            Op::Exists(expected) => value.is_some() == *expected,
            Op::Equals(expected) => value.is_some_and(|v| values_equal(v, expected)),
            Op::OneOf(options) => value.is_some_and(|v| options.iter().any(|o| values_equal(v, o))),
            Op::Prefix(p) => text_of(value).is_some_and(|t| starts_with_ignore_case(t, p)),
            Op::Suffix(s) => text_of(value).is_some_and(|t| ends_with_ignore_case(t, s)),
            Op::Contains(s) => text_of(value).is_some_and(|t| contains_ignore_case(t, s)),
            Op::Regex(re) => text_of(value).is_some_and(|t| re.is_match(t)),
            Op::Range { at_least, below } => value.and_then(Value::as_number).is_some_and(|n| {
                at_least.is_none_or(|lo| n >= lo) && below.is_none_or(|hi| n < hi)
            }),
        }
    }
}

fn text_of(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_text)
}

fn values_equal(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Text(a), Value::Text(b)) => a.eq_ignore_ascii_case(b),
        (Value::Number(a), Value::Number(b)) => a == b,
        (Value::Text(_), Value::Number(b)) => actual.as_number() == Some(*b),
        (Value::Bool(a), Value::Bool(b)) => a == b,
        _ => false,
    }
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn contains_ignore_case(text: &str, needle: &str) -> bool {
    let (hay, needle) = (text.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Where an engagement condition reads its value.
#[derive(Clone, Debug, PartialEq)]
pub enum EventField {
    /// The `track` event name or the page / screen name.
    Name,
    Property(String),
    Context(String),
    Trait(String),
}

impl EventField {
    /// `event` / `name`, `properties.X`, `context.X`, `traits.X`.
    pub fn parse(path: &str) -> Option<EventField> {
        if path == "event" || path == "name" {
            return Some(EventField::Name);
        }
        let (section, key) = path.split_once('.')?;
        if key.is_empty() {
            return None;
        }
        match section {
            "properties" => Some(EventField::Property(key.to_string())),
            "context" => Some(EventField::Context(key.to_string())),
            "traits" => Some(EventField::Trait(key.to_string())),
            _ => None,
        }
    }

    fn read<'e>(&self, event: &'e Event, name: &'e Option<Value>) -> Option<&'e Value> {
        match self {
            EventField::Name => name.as_ref(),
            EventField::Property(k) => event.properties.get(k),
            EventField::Context(k) => event.context.get(k),
            EventField::Trait(k) => event.traits.get(k),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EventCondition {
    pub field: EventField,
    pub op: Op,
    pub negate: bool,
}

/// A lead trait that some fit rule or tier gate reads, with every
/// comparison made on it. A lead stores, per trait, only which of these
/// comparisons its current value passes (one bit each), not the value: that
/// keeps lead state small and free of personal data such as emails.
#[derive(Clone, Debug)]
pub struct TraitKey {
    pub name: String,
    /// At most [`MAX_OPS_PER_TRAIT`]; slot `s` is stored in bit `s + 1`.
    pub ops: Vec<Op>,
}

/// One trait's comparison results: bit 0 says the value is known, bit
/// `s + 1` that comparison `s` passes. 32 bits keep lead state small.
pub type TraitBits = u32;
pub const TRAIT_KNOWN_BIT: TraitBits = 1;
pub const MAX_OPS_PER_TRAIT: usize = TraitBits::BITS as usize - 1;

/// A fit condition: comparison `slot` of trait `key`.
#[derive(Clone, Debug)]
pub struct TraitCondition {
    pub key: usize,
    pub slot: usize,
    pub negate: bool,
}

/// A [`TraitCondition`] as fit reads it: the comparison's bit of the
/// trait's bits, and the answer it wants there.
#[derive(Clone, Copy, Debug)]
struct FitCheck {
    key: u32,
    bit: TraitBits,
    want: TraitBits,
}

impl FitCheck {
    fn of(condition: &TraitCondition) -> FitCheck {
        let bit = 1 << (condition.slot + 1);
        FitCheck {
            key: condition.key as u32,
            bit,
            want: if condition.negate { 0 } else { bit },
        }
    }

    fn holds(&self, bits: &[TraitBits]) -> bool {
        bits[self.key as usize] & self.bit == self.want
    }
}

#[derive(Clone, Debug)]
pub struct FitRule {
    pub name: Arc<str>,
    pub points: f64,
    /// Rules sharing a group are alternatives: only the first match (in
    /// file order) counts, so "VP" does not also score as "manager".
    pub group: Option<Arc<str>>,
    pub conditions: Vec<TraitCondition>,
}

/// A cap: at most `points` (in absolute value) credited per fixed window of
/// `window_ms`, windows aligned to the Unix epoch.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Cap {
    pub points: f64,
    pub window_ms: i64,
}

#[derive(Clone, Debug)]
pub struct EngagementRule {
    pub name: Arc<str>,
    pub points: f64,
    /// Call types it applies to; empty means all but `alias`.
    pub kinds: Vec<EventKind>,
    /// Event or page names (compared ignoring ASCII case); empty means any.
    pub names: Vec<String>,
    pub conditions: Vec<EventCondition>,
    pub cap: Option<Cap>,
    pub once: bool,
    pub half_life: HalfLife,
}

impl EngagementRule {
    fn matches(&self, event: &Event, name: &Option<Value>) -> bool {
        self.conditions
            .iter()
            .all(|c| c.op.matches(c.field.read(event, name)) != c.negate)
    }
}

/// A sales or CRM disposition and what it does to the lead: a `track`
/// "Deal Won", an `identify` with a `lifecycle_stage` trait, and so on.
#[derive(Clone, Debug)]
pub struct LifecycleRule {
    pub name: Arc<str>,
    /// Call types it applies to; empty means all but `alias`.
    pub kinds: Vec<EventKind>,
    /// Event or page names (compared ignoring ASCII case); empty means any.
    pub names: Vec<String>,
    pub conditions: Vec<EventCondition>,
    /// The stage the lead moves to.
    pub stage: Option<Arc<str>>,
    /// The stage ends alerting: no upward crossing is published while the
    /// lead holds it (a customer).
    pub terminal: bool,
    /// Engagement cleared (recycling): history before the event no longer
    /// counts; fit is kept.
    pub reset: bool,
    /// Upward crossings are held back this long after the event.
    pub suppress_ms: Option<i64>,
    /// Records a sales outcome: converted (`true`) or not.
    pub outcome: Option<bool>,
}

impl LifecycleRule {
    pub fn matches(&self, event: &Event) -> bool {
        let kind_ok = if self.kinds.is_empty() {
            !matches!(event.kind, EventKind::Alias | EventKind::Erase)
        } else {
            self.kinds.contains(&event.kind)
        };
        let name_ok = self.names.is_empty()
            || event
                .name
                .as_deref()
                .is_some_and(|n| self.names.iter().any(|m| m.eq_ignore_ascii_case(n)));
        if !(kind_ok && name_ok) {
            return false; // most events: no allocation below
        }
        let name_value = event.name.as_deref().map(Value::from);
        self.conditions
            .iter()
            .all(|c| c.op.matches(c.field.read(event, &name_value)) != c.negate)
    }
}

/// A named tier and what it takes to enter it.
#[derive(Clone, Debug)]
pub struct Tier {
    pub name: Arc<str>,
    pub min_score: f64,
    pub min_grade: Option<Grade>,
    /// Every one of these traits must be known.
    pub require_all_traits: Vec<usize>,
    /// At least one of these traits must be known (when not empty).
    pub require_any_trait: Vec<usize>,
}

/// Engine-wide settings that are part of the rules (they change results).
#[derive(Clone, Debug)]
pub struct Settings {
    pub half_life: HalfLife,
    /// Points every lead starts with, before fit and engagement: the
    /// intercept that `calibrate` derives, so a fitted model's negative
    /// side is not lost to the clamp.
    pub base: f64,
    pub clamp: Option<(f64, f64)>,
    /// Minimum score movement that produces a `score_changed` output.
    pub step: f64,
    /// A lead leaves a tier only when its score falls this far below the
    /// tier's minimum.
    pub hysteresis: f64,
    pub top_contributions: usize,
    /// Events further than this behind the engine's watermark (the latest
    /// event time applied) are rejected; `None` accepts any age (replay
    /// does this by default).
    pub allowed_lateness_ms: Option<i64>,
    pub max_future_skew_ms: i64,
    /// How long a message id is remembered per lead, in event time.
    pub dedup_window_ms: i64,
    /// At most this many ids are remembered per lead; the oldest go first.
    pub dedup_max_ids: usize,
    /// A lead in the lowest tier with no event for this long is dropped
    /// from state; `None` keeps every lead.
    pub inactive_after_ms: Option<i64>,
    /// Publish a `lead_expired` output when a lead is dropped.
    pub announce_expiry: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            half_life: HalfLife::days(30.0),
            base: 0.0,
            clamp: Some((0.0, 100.0)),
            step: 5.0,
            hysteresis: 5.0,
            top_contributions: 5,
            allowed_lateness_ms: Some(7 * crate::core::time::MS_PER_DAY),
            max_future_skew_ms: 10 * 60 * 1000,
            dedup_window_ms: 8 * crate::core::time::MS_PER_DAY,
            dedup_max_ids: 1000,
            inactive_after_ms: None,
            announce_expiry: false,
        }
    }
}

/// The trait that the core derives from `email`: the part after `@`,
/// lowercased. Fit rules and account association read it.
pub const EMAIL_DOMAIN_TRAIT: &str = "email_domain";

/// The whole validated rule set.
#[derive(Clone, Debug)]
pub struct Rules {
    pub version: Arc<str>,
    /// The score's name when the file holds several (`[[scores]]`): each
    /// is scored by rules of its own, and its outputs say which it is.
    pub score_name: Option<Arc<str>>,
    pub settings: Settings,
    pub grades: GradeThresholds,
    pub tiers: Vec<Tier>,
    pub fit: Vec<FitRule>,
    pub engagement: Vec<EngagementRule>,
    /// Lead traits that some rule or gate reads; a lead stores only these.
    pub trait_keys: Vec<TraitKey>,
    /// The bits of a trait the lead has never had.
    absent_bits: Vec<TraitBits>,
    /// Engagement rules by call type and lowercased name, then those that
    /// match any name of that call type: each event checks only candidates.
    by_name: Vec<HashMap<String, Vec<usize>>>,
    any_name: Vec<Vec<usize>>,
    /// Each fit rule's group, numbered (`None`: no group), and how many
    /// groups there are: fit is computed without comparing group names.
    fit_groups: Vec<Option<usize>>,
    group_count: usize,
    /// Every fit rule's conditions in one list, rule after rule
    /// (`fit_spans`: where each rule's conditions end), so reading a
    /// lead's fit follows no pointer per rule.
    fit_checks: Vec<FitCheck>,
    fit_spans: Vec<u32>,
    /// Account scoring, when the rules file has an `[accounts]` section.
    pub accounts: Option<Arc<crate::core::account::AccountRules>>,
    /// Dispositions, in file order (each that matches acts, in order).
    pub lifecycle: Vec<LifecycleRule>,
    /// Bot and scanner traffic kept out of scores (`[filters]`).
    pub filters: Option<Arc<crate::core::filters::Filters>>,
}

impl Rules {
    /// Builds the lookup indexes. `trait_keys` must already contain every
    /// key that a fit condition or tier gate refers to by index.
    pub fn new(
        version: &str,
        settings: Settings,
        grades: GradeThresholds,
        tiers: Vec<Tier>,
        fit: Vec<FitRule>,
        engagement: Vec<EngagementRule>,
        trait_keys: Vec<TraitKey>,
    ) -> Self {
        debug_assert!(trait_keys.iter().all(|k| k.ops.len() <= MAX_OPS_PER_TRAIT));
        let absent_bits = trait_keys
            .iter()
            .map(|k| compare_all(&k.ops, None))
            .collect();
        let mut by_name = vec![HashMap::<String, Vec<usize>>::new(); EventKind::ALL.len()];
        let mut any_name = vec![Vec::new(); EventKind::ALL.len()];
        for (index, rule) in engagement.iter().enumerate() {
            let kinds: Vec<EventKind> = if rule.kinds.is_empty() {
                EventKind::ALL
                    .into_iter()
                    .filter(|k| !matches!(k, EventKind::Alias | EventKind::Erase))
                    .collect()
            } else {
                rule.kinds.clone()
            };
            for kind in kinds {
                if rule.names.is_empty() {
                    any_name[kind.index()].push(index);
                } else {
                    for name in &rule.names {
                        by_name[kind.index()]
                            .entry(name.to_ascii_lowercase())
                            .or_default()
                            .push(index);
                    }
                }
            }
        }
        let mut group_names: Vec<&str> = Vec::new();
        let fit_groups = fit
            .iter()
            .map(|rule| {
                rule.group.as_deref().map(|group| {
                    group_names
                        .iter()
                        .position(|g| *g == group)
                        .unwrap_or_else(|| {
                            group_names.push(group);
                            group_names.len() - 1
                        })
                })
            })
            .collect();
        let group_count = group_names.len();
        let mut fit_checks = Vec::new();
        let mut fit_spans = Vec::with_capacity(fit.len());
        for rule in &fit {
            fit_checks.extend(rule.conditions.iter().map(FitCheck::of));
            fit_spans.push(fit_checks.len() as u32);
        }
        Rules {
            version: version.into(),
            score_name: None,
            settings,
            grades,
            tiers,
            fit,
            engagement,
            trait_keys,
            absent_bits,
            by_name,
            any_name,
            fit_groups,
            group_count,
            fit_checks,
            fit_spans,
            accounts: None,
            lifecycle: Vec::new(),
            filters: None,
        }
    }

    pub fn trait_index(&self, key: &str) -> Option<usize> {
        self.trait_keys.iter().position(|k| k.name == key)
    }

    /// The stored form of trait `key` having `value` (`None`: unknown).
    pub fn trait_bits(&self, key: usize, value: Option<&Value>) -> TraitBits {
        compare_all(&self.trait_keys[key].ops, value)
    }

    pub fn absent_trait_bits(&self, key: usize) -> TraitBits {
        self.absent_bits[key]
    }

    /// Every trait key's bits for an unknown value, by key.
    pub fn absent_trait_bits_all(&self) -> &[TraitBits] {
        &self.absent_bits
    }

    /// Calls `hit` with the index of every engagement rule the event
    /// matches. Only rules for the event's call type and name are checked.
    pub fn for_each_matching_rule(&self, event: &Event, mut hit: impl FnMut(usize)) {
        let kind = event.kind.index();
        let name_value = event.name.as_deref().map(Value::from);
        let mut check = |index: usize| {
            if self.engagement[index].matches(event, &name_value) {
                hit(index);
            }
        };
        self.any_name[kind].iter().copied().for_each(&mut check);
        if let Some(name) = &event.name {
            let by_name = &self.by_name[kind];
            if !by_name.is_empty() {
                let hits = with_ascii_lowercase(name, |lower| by_name.get(lower));
                if let Some(hits) = hits {
                    hits.iter().copied().for_each(&mut check);
                }
            }
        }
    }

    /// Calls `hit` with each fit rule that counts, in file order: its
    /// conditions hold (`bits`: the lead's trait bits by key) and no
    /// earlier rule of its group counted.
    pub(crate) fn for_each_fit_match(&self, bits: &[TraitBits], mut hit: impl FnMut(usize)) {
        // Groups taken, as bits (a long list of groups spills to a vector).
        let mut taken_small = 0u64;
        let mut taken_large = vec![
            false;
            if self.group_count > 64 {
                self.group_count
            } else {
                0
            }
        ];
        let mut start = 0;
        // Numbered by `Rules::new`, in step with `fit`.
        for (index, (&end, &group)) in self.fit_spans.iter().zip(&self.fit_groups).enumerate() {
            let checks = &self.fit_checks[start..end as usize];
            start = end as usize;
            if let Some(g) = group {
                let taken = if taken_large.is_empty() {
                    taken_small & (1 << g) != 0
                } else {
                    taken_large[g]
                };
                if taken {
                    continue;
                }
            }
            if checks.iter().all(|c| c.holds(bits)) {
                if let Some(g) = group {
                    if taken_large.is_empty() {
                        taken_small |= 1 << g;
                    } else {
                        taken_large[g] = true;
                    }
                }
                hit(index);
            }
        }
    }

    pub fn clamp(&self, score: f64) -> f64 {
        match self.settings.clamp {
            Some((lo, hi)) => score.clamp(lo, hi),
            None => score,
        }
    }

    /// Whether the lead passes the tier's qualification gates.
    pub fn gates_pass(&self, tier: usize, grade: Grade, bits: &dyn Fn(usize) -> TraitBits) -> bool {
        let tier = &self.tiers[tier];
        let known = |k: &usize| bits(*k) & TRAIT_KNOWN_BIT != 0;
        tier.min_grade.is_none_or(|min| grade <= min)
            && tier.require_all_traits.iter().all(known)
            && (tier.require_any_trait.is_empty() || tier.require_any_trait.iter().any(known))
    }

    /// The tier a lead moves to from `current` at `score`: up to the highest
    /// tier it qualifies for; down only once the score falls `hysteresis`
    /// below the minimum of the tier it holds (or a gate stops passing).
    pub fn next_tier(
        &self,
        current: usize,
        score: f64,
        grade: Grade,
        bits: &dyn Fn(usize) -> TraitBits,
    ) -> usize {
        let qualifies = |i: usize, min: f64| score >= min && self.gates_pass(i, grade, bits);
        let plain = (1..self.tiers.len())
            .rev()
            .find(|&i| qualifies(i, self.tiers[i].min_score))
            .unwrap_or(0);
        if plain >= current {
            return plain;
        }
        (plain + 1..=current)
            .rev()
            .find(|&i| qualifies(i, self.tiers[i].min_score - self.settings.hysteresis))
            .unwrap_or(plain)
    }

    pub fn tier_name(&self, tier: usize) -> &Arc<str> {
        &self.tiers[tier].name
    }

    /// The half-life in force for an engagement rule.
    pub fn half_life_of(&self, rule: usize) -> HalfLife {
        match self.engagement[rule].half_life {
            HalfLife::Inherit => self.settings.half_life,
            own => own,
        }
    }
}

/// Runs `f` on `text` lowercased, without allocating for short text.
fn with_ascii_lowercase<R>(text: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buffer = [0u8; 64];
    if !text.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(text);
    }
    if text.len() <= buffer.len() {
        let buffer = &mut buffer[..text.len()];
        buffer.copy_from_slice(text.as_bytes());
        buffer.make_ascii_lowercase();
        // Lowercasing ASCII bytes keeps UTF-8 valid.
        return f(std::str::from_utf8(buffer).expect("valid UTF-8"));
    }
    f(&text.to_ascii_lowercase())
}

fn compare_all(ops: &[Op], value: Option<&Value>) -> TraitBits {
    let known = value.is_some_and(Value::is_known);
    ops.iter()
        .enumerate()
        .fold(TraitBits::from(known), |bits, (slot, op)| {
            bits | (TraitBits::from(op.matches(value)) << (slot + 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ops_ignore_ascii_case() {
        let v = Value::from("VP of Marketing");
        assert!(Op::Prefix("vp".into()).matches(Some(&v)));
        assert!(Op::Suffix("MARKETING".into()).matches(Some(&v)));
        assert!(Op::Contains("of mark".into()).matches(Some(&v)));
        assert!(!Op::Contains("sales".into()).matches(Some(&v)));
        assert!(Op::Equals(Value::from("vp of marketing")).matches(Some(&v)));
        assert!(!Op::Prefix("marketing".into()).matches(Some(&v)));
    }

    #[test]
    fn range_reads_numbers_and_numeric_text() {
        let op = Op::Range {
            at_least: Some(200.0),
            below: Some(1000.0),
        };
        assert!(op.matches(Some(&Value::Number(200.0))));
        assert!(op.matches(Some(&Value::from(" 500 "))));
        assert!(!op.matches(Some(&Value::Number(1000.0))));
        assert!(!op.matches(Some(&Value::from("lots"))));
        assert!(!op.matches(None));
    }

    #[test]
    fn exists_treats_null_and_empty_as_unknown() {
        assert!(Op::Exists(false).matches(None));
        assert!(Op::Exists(false).matches(Some(&Value::Null)));
        assert!(Op::Exists(false).matches(Some(&Value::from("  "))));
        assert!(Op::Exists(true).matches(Some(&Value::Bool(false))));
    }

    #[test]
    fn one_of_and_equals_compare_numbers_numerically() {
        let op = Op::OneOf(vec![Value::Number(1.0), Value::from("two")]);
        assert!(op.matches(Some(&Value::from("1"))));
        assert!(op.matches(Some(&Value::from("TWO"))));
        assert!(!op.matches(Some(&Value::Bool(true))));
    }

    #[test]
    fn event_field_paths() {
        assert_eq!(EventField::parse("event"), Some(EventField::Name));
        assert_eq!(
            EventField::parse("context.page.path"),
            Some(EventField::Context("page.path".into()))
        );
        assert_eq!(EventField::parse("properties."), None);
        assert_eq!(EventField::parse("userId"), None);
    }
}
