//! Output events and snapshots as JSON: the field names other tools rely
//! on (`type`, `event_id`, `lead_id`, ... see README "Output").

use serde::Serialize;

use crate::core::account::AccountSnapshot;
use crate::core::engine::LeadSnapshot;
use crate::core::output::{Contribution, Output};
use crate::core::Timestamp;

#[derive(Serialize)]
struct ContributionJson<'a> {
    rule: &'a str,
    points: f64,
}

fn contributions(list: &[Contribution]) -> Vec<ContributionJson<'_>> {
    list.iter()
        .map(|c| ContributionJson {
            rule: &c.rule,
            points: c.points,
        })
        .collect()
}

/// Fields in the order the README documents; the lead's numbers are left
/// out of `lead_erased`, which has none. Written straight into one buffer:
/// ids, times and reasons are not formatted into strings of their own
/// first (`output_to_json` runs for nearly every event).
#[derive(Serialize)]
struct OutputJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: Displayed<&'a uuid::Uuid>,
    lead_id: Option<&'a str>,
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    engagement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grade: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<f64>,
    at: Displayed<Timestamp>,
    cause: &'static str,
    cause_event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contributions: Option<Contributions<'a>>,
    rules_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_stage: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<&'a [std::sync::Arc<str>]>,
}

/// A value written as a JSON string through its `Display`.
struct Displayed<T>(T);

impl<T: std::fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Contributions as `[{"rule": ..., "points": ...}]`, without a list of
/// their own.
struct Contributions<'a>(&'a [Contribution]);

impl Serialize for Contributions<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|c| ContributionJson {
            rule: &c.rule,
            points: c.points,
        }))
    }
}

pub fn output_to_json(output: &Output) -> String {
    let described = output.describes_lead();
    let numbers = |v| described.then_some(v);
    let json = OutputJson {
        kind: output.kind.as_str(),
        event_id: Displayed(&output.event_id),
        lead_id: output.lead_id.as_deref(),
        account_id: output.account_id.as_deref(),
        score: numbers(output.score),
        fit: numbers(output.fit),
        engagement: numbers(output.engagement),
        grade: described.then(|| output.grade.as_str()),
        tier: described.then_some(&*output.tier),
        previous_tier: described.then_some(&*output.previous_tier),
        direction: described.then(|| output.direction.as_str()),
        delta: numbers(output.delta),
        at: Displayed(output.at),
        cause: output.cause.kind(),
        cause_event_id: output.cause_event_id(),
        contributions: described.then_some(Contributions(&output.contributions)),
        rules_version: &output.rules_version,
        stage: output.stage.as_deref(),
        previous_stage: output
            .lifecycle
            .as_ref()
            .map(|l| l.previous_stage.as_deref()),
        reasons: output.lifecycle.as_ref().map(|l| &l.reasons[..]),
    };
    let mut bytes = Vec::with_capacity(OUTPUT_JSON_CAPACITY);
    serde_json::to_writer(&mut bytes, &json).expect("output JSON has only serializable fields");
    String::from_utf8(bytes).expect("serde_json writes UTF-8")
}

/// Most outputs fit: one allocation, no regrowth.
const OUTPUT_JSON_CAPACITY: usize = 768;

#[derive(Serialize)]
struct SnapshotJson<'a> {
    lead_id: &'a str,
    account_id: Option<&'a str>,
    score: f64,
    fit: f64,
    engagement: f64,
    grade: &'static str,
    tier: &'a str,
    as_of: String,
    last_event_at: String,
    contributions: Vec<ContributionJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifecycle: Option<serde_json::Value>,
}

/// A lead's lifecycle as JSON: stage, terminal, suppression, outcome.
pub fn lifecycle_json(life: &crate::core::lead::Lifecycle) -> serde_json::Value {
    serde_json::json!({
        "stage": life.stage.as_deref(),
        "stage_at": life.stage.as_ref().map(|_| life.stage_at.to_rfc3339()),
        "terminal": life.terminal,
        "suppressed_until": life.suppressed_until.map(|t| t.to_rfc3339()),
        "recycled_at": life.reset_at.map(|t| t.to_rfc3339()),
        "outcome": life.outcome.map(|o| serde_json::json!({
            "converted": o.converted,
            "at": o.at.to_rfc3339(),
        })),
    })
}

pub fn snapshot_to_json(s: &LeadSnapshot) -> String {
    let json = SnapshotJson {
        lead_id: &s.lead_id,
        account_id: s.account_id.as_deref(),
        score: s.score,
        fit: s.fit,
        engagement: s.engagement,
        grade: s.grade.as_str(),
        tier: &s.tier,
        as_of: s.as_of.to_rfc3339(),
        last_event_at: s.last_event_at.to_rfc3339(),
        contributions: contributions(&s.contributions),
        lifecycle: s.lifecycle.as_ref().map(lifecycle_json),
    };
    serde_json::to_string(&json).expect("snapshot JSON has only serializable fields")
}

#[derive(Serialize)]
struct AccountSnapshotJson<'a> {
    account_id: &'a str,
    score: f64,
    fit: f64,
    engagement: f64,
    committee: f64,
    grade: &'static str,
    tier: &'a str,
    members: usize,
    engaged_leads: usize,
    as_of: String,
    last_event_at: String,
    contributions: Vec<ContributionJson<'a>>,
}

/// An account's line in a `--snapshot` file: `account_id` and no `lead_id`.
pub fn account_snapshot_to_json(s: &AccountSnapshot) -> String {
    let json = AccountSnapshotJson {
        account_id: &s.account_id,
        score: s.score,
        fit: s.fit,
        engagement: s.engagement,
        committee: s.committee,
        grade: s.grade.as_str(),
        tier: &s.tier,
        members: s.members,
        engaged_leads: s.engaged_leads,
        as_of: s.as_of.to_rfc3339(),
        last_event_at: s.last_event_at.to_rfc3339(),
        contributions: contributions(&s.contributions),
    };
    serde_json::to_string(&json).expect("snapshot JSON has only serializable fields")
}
