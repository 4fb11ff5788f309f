//! What the engine publishes: score changes and threshold crossings, each
//! with a deterministic `event_id` so that a repeat (after a crash, an abort
//! or a replay) has the same id and content and subscribers can drop it.

use std::sync::Arc;

use uuid::Uuid;

use crate::core::rules::Grade;
use crate::core::time::Timestamp;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OutputKind {
    ScoreChanged,
    ThresholdCrossed,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::ScoreChanged => "score_changed",
            OutputKind::ThresholdCrossed => "threshold_crossed",
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

/// Why an output happened: an input event, or decay reaching a due time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    Event(String),
    Decay(Timestamp),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub kind: OutputKind,
    pub event_id: Uuid,
    pub lead_id: String,
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
}

impl Output {
    pub fn cause_event_id(&self) -> Option<&str> {
        match &self.cause {
            Cause::Event(id) => Some(id),
            Cause::Decay(_) => None,
        }
    }
}

/// Namespace of leadscore's version-5 output ids.
const OUTPUT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6164_7363_6f72_6501_0000_0000_0001);

/// The id of an output: a name-based UUID over what identifies it (the
/// lead, the output type, the cause), so every run that sees the same input
/// derives the same id.
pub fn output_id(lead_id: &str, kind: OutputKind, cause: &Cause) -> Uuid {
    let cause = match cause {
        Cause::Event(message_id) => format!("event:{message_id}"),
        Cause::Decay(due) => format!("decay:{}", due.millis()),
    };
    let name = format!("lead\u{1f}{lead_id}\u{1f}{}\u{1f}{cause}", kind.as_str());
    Uuid::new_v5(&OUTPUT_ID_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ids_are_stable_and_distinct() {
        let cause = Cause::Event("m1".into());
        let a = output_id("lead-1", OutputKind::ScoreChanged, &cause);
        assert_eq!(a, output_id("lead-1", OutputKind::ScoreChanged, &cause));
        assert_ne!(a, output_id("lead-1", OutputKind::ThresholdCrossed, &cause));
        assert_ne!(a, output_id("lead-2", OutputKind::ScoreChanged, &cause));
        assert_ne!(
            a,
            output_id(
                "lead-1",
                OutputKind::ScoreChanged,
                &Cause::Decay(Timestamp(1))
            )
        );
    }
}
