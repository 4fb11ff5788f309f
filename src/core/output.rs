//! What the engine publishes: score changes and threshold crossings, each
//! with a deterministic `event_id` so that a repeat (after a crash, an abort
//! or a replay) has the same id and content and subscribers can drop it.

use std::sync::Arc;

use uuid::Uuid;
use xxhash_rust::xxh3::Xxh3;

use crate::core::rules::{Grade, Rules};
use crate::core::time::Timestamp;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OutputKind {
    ScoreChanged,
    ThresholdCrossed,
    /// A disposition moved the lead's stage, recycled it or recorded an
    /// outcome.
    LifecycleChanged,
    /// The lead saw no event for `inactive_after` and sat in the lowest
    /// tier: it was dropped from state.
    LeadExpired,
    /// An erasure request removed the lead: subscribers erase it too.
    LeadErased,
}

impl OutputKind {
    pub const ALL: [OutputKind; 5] = [
        OutputKind::ScoreChanged,
        OutputKind::ThresholdCrossed,
        OutputKind::LifecycleChanged,
        OutputKind::LeadExpired,
        OutputKind::LeadErased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::ScoreChanged => "score_changed",
            OutputKind::ThresholdCrossed => "threshold_crossed",
            OutputKind::LifecycleChanged => "lifecycle_changed",
            OutputKind::LeadExpired => "lead_expired",
            OutputKind::LeadErased => "lead_erased",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One rule's share of a score, at the time of the output.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    pub rule: Arc<str>,
    pub points: f64,
}

/// Up or down: the tier's move when it moved, else the score's.
pub(crate) fn direction_of(tier: usize, previous: usize, delta: f64) -> Direction {
    if tier > previous || (tier == previous && delta >= 0.0) {
        Direction::Up
    } else {
        Direction::Down
    }
}

/// Publishes a `score_changed` and, when the tier moved, the
/// `threshold_crossed` beside it (the same numbers, its own id).
pub(crate) fn push_change(out: &mut Vec<Output>, changed: Output, crossed_id: Option<Uuid>) {
    let crossed = crossed_id.map(|event_id| Output {
        kind: OutputKind::ThresholdCrossed,
        event_id,
        ..changed.clone()
    });
    out.push(changed);
    out.extend(crossed);
}

/// Whom a handover from another deployment crosses (see
/// [`crate::core::Engine::handover_crossings`]): of `held` (an id and the
/// tier it holds under `rules`), in id order, each whose tier differs by
/// name from the one subscribers were last told (`published`: its name
/// and its index under `rules`; none: the lowest tier), with that name and
/// index.
pub(crate) fn handover_moves<'a>(
    rules: &Rules,
    held: impl Iterator<Item = (&'a str, u8)>,
    published: impl Fn(&str) -> Option<(Arc<str>, usize)>,
) -> Vec<(&'a str, Arc<str>, usize)> {
    let mut held: Vec<(&str, u8)> = held.collect();
    held.sort_unstable_by_key(|&(id, _)| id);
    held.into_iter()
        .filter_map(|(id, tier)| {
            let (name, index) = published(id).unwrap_or_else(|| (rules.tier_name(0).clone(), 0));
            (*name != **rules.tier_name(usize::from(tier))).then_some((id, name, index))
        })
        .collect()
}

/// Largest share first (by absolute value, then by name, so the order is
/// deterministic).
pub fn sort_largest_first(contributions: &mut [Contribution]) {
    contributions.sort_by(|a, b| largest_first((&a.rule, a.points), (&b.rule, b.points)));
}

/// The order of [`sort_largest_first`], on (rule name, points).
pub fn largest_first(a: (&Arc<str>, f64), b: (&Arc<str>, f64)) -> std::cmp::Ordering {
    b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(b.0))
}

/// Why an output happened: an input event, or decay reaching a due time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    Event(String),
    Decay(Timestamp),
    /// A history merged in from another partition, for the `alias` call
    /// with this message id (told apart from the call's own outputs).
    Merge(String),
    /// The rules changed (to these, by fingerprint) and the lead or
    /// account was re-scored in place.
    RulesChanged(Arc<str>),
}

impl Output {
    /// Whether the output describes the lead (score, tier, grade): all but
    /// `lead_erased`, after which nothing of the lead is left to describe.
    pub fn describes_lead(&self) -> bool {
        self.kind != OutputKind::LeadErased
    }
}

impl Cause {
    /// What the JSON and protobuf outputs call the cause.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Event(_) => "event",
            Cause::Decay(_) => "decay",
            Cause::Merge(_) => "merge",
            Cause::RulesChanged(_) => "rules_changed",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub kind: OutputKind,
    pub event_id: Uuid,
    /// The lead scored; `None` for an account's output.
    pub lead_id: Option<String>,
    /// The lead's account, or the account scored.
    pub account_id: Option<String>,
    pub at: Timestamp,
    pub cause: Cause,
    pub score: f64,
    pub fit: f64,
    pub engagement: f64,
    pub grade: Grade,
    pub tier: Arc<str>,
    pub previous_tier: Arc<str>,
    /// Up or down: the tier's move for a crossing, the score's otherwise.
    pub direction: Direction,
    /// Score minus the score of the lead's previous `score_changed`.
    pub delta: f64,
    pub contributions: Vec<Contribution>,
    pub rules_version: Arc<str>,
    /// Which score of the rules file (`[[scores]]`) the output is about;
    /// `None` for a file with one unnamed score.
    pub score_name: Option<Arc<str>>,
    /// The lead's lifecycle stage, if a disposition set one.
    pub stage: Option<Arc<str>>,
    /// For `lifecycle_changed`: the stage before and the rules that acted.
    pub lifecycle: Option<Box<crate::core::lead::LifecycleChange>>,
}

impl Output {
    pub fn cause_event_id(&self) -> Option<&str> {
        match &self.cause {
            Cause::Event(id) | Cause::Merge(id) => Some(id),
            Cause::Decay(_) | Cause::RulesChanged(_) => None,
        }
    }
}

/// The id of an output: a name-based UUID (version 8, the 128-bit xxh3
/// hash of what identifies the output: the score when the rules name
/// several, the lead, the output type, the cause), so every run that sees
/// the same input derives the same id. xxh3 rather than version 5's SHA-1:
/// ids need determinism, not secrecy, and an id is derived for every
/// output on the hot path.
pub fn output_id(score: Option<&str>, lead_id: &str, kind: OutputKind, cause: &Cause) -> Uuid {
    output_id_for(score, "lead", lead_id, kind, cause)
}

/// [`output_id`] for what `subject` (`lead` or `account`) names by `id`.
pub fn output_id_for(
    score: Option<&str>,
    subject: &str,
    id: &str,
    kind: OutputKind,
    cause: &Cause,
) -> Uuid {
    let mut hasher = Xxh3::new();
    hasher.update(b"leadscore.output.v1\x1f");
    if let Some(score) = score {
        // Only named scores: the ids of a file with one score stay what
        // they were before files could hold several.
        hasher.update(b"score\x1f");
        hasher.update(score.as_bytes());
        hasher.update(b"\x1f");
    }
    hasher.update(subject.as_bytes());
    hasher.update(b"\x1f");
    hasher.update(id.as_bytes());
    hasher.update(b"\x1f");
    hasher.update(kind.as_str().as_bytes());
    match cause {
        Cause::Event(message_id) => {
            hasher.update(b"\x1fevent\x1f");
            hasher.update(message_id.as_bytes());
        }
        Cause::Decay(due) => {
            hasher.update(b"\x1fdecay\x1f");
            hasher.update(&due.millis().to_be_bytes());
        }
        Cause::Merge(message_id) => {
            hasher.update(b"\x1fmerge\x1f");
            hasher.update(message_id.as_bytes());
        }
        Cause::RulesChanged(fingerprint) => {
            hasher.update(b"\x1frules\x1f");
            hasher.update(fingerprint.as_bytes());
        }
    }
    Uuid::new_v8(hasher.digest128().to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_ID: &str = "4130c89c-87e9-8385-834d-e3442f6d5f00";

    #[test]
    fn output_ids_are_stable_and_distinct() {
        let cause = Cause::Event("m1".into());
        let a = output_id(None, "lead-1", OutputKind::ScoreChanged, &cause);
        assert_eq!(
            a,
            output_id(None, "lead-1", OutputKind::ScoreChanged, &cause)
        );
        assert_ne!(
            a,
            output_id(None, "lead-1", OutputKind::ThresholdCrossed, &cause)
        );
        assert_ne!(
            a,
            output_id(None, "lead-2", OutputKind::ScoreChanged, &cause)
        );
        assert_ne!(
            a,
            output_id_for(None, "account", "lead-1", OutputKind::ScoreChanged, &cause)
        );
        let scored = |name| output_id(Some(name), "lead-1", OutputKind::ScoreChanged, &cause);
        assert_ne!(a, scored("self_serve"));
        assert_ne!(scored("self_serve"), scored("enterprise"));
        assert_ne!(
            a,
            output_id(
                None,
                "lead-1",
                OutputKind::ScoreChanged,
                &Cause::Decay(Timestamp(1))
            )
        );
        // Pinned: ids must not change between releases, or subscribers
        // would see repeats as new events.
        assert_eq!(a.to_string(), PINNED_ID);
        assert_eq!(a.get_version_num(), 8);
    }
}
