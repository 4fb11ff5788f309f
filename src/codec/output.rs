//! Output events and snapshots as JSON: the field names other tools rely
//! on (`type`, `event_id`, `lead_id`, ... see README "Output").

use serde::Serialize;

use crate::core::account::AccountSnapshot;
use crate::core::engine::LeadSnapshot;
use crate::core::output::{Contribution, Output};

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

#[derive(Serialize)]
struct OutputJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: String,
    lead_id: Option<&'a str>,
    account_id: Option<&'a str>,
    #[serde(flatten)]
    numbers: Option<NumbersJson<'a>>,
    at: String,
    cause: &'static str,
    cause_event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contributions: Option<Vec<ContributionJson<'a>>>,
    rules_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_stage: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<&'a str>>,
}

/// What an output says of the lead; `lead_erased` has none of it.
#[derive(Serialize)]
struct NumbersJson<'a> {
    score: f64,
    fit: f64,
    engagement: f64,
    grade: &'static str,
    tier: &'a str,
    previous_tier: &'a str,
    direction: &'static str,
    delta: f64,
}

pub fn output_to_json(output: &Output) -> String {
    let described = output.describes_lead();
    let json = OutputJson {
        kind: output.kind.as_str(),
        event_id: output.event_id.to_string(),
        lead_id: output.lead_id.as_deref(),
        account_id: output.account_id.as_deref(),
        numbers: described.then(|| NumbersJson {
            score: output.score,
            fit: output.fit,
            engagement: output.engagement,
            grade: output.grade.as_str(),
            tier: &output.tier,
            previous_tier: &output.previous_tier,
            direction: output.direction.as_str(),
            delta: output.delta,
        }),
        at: output.at.to_rfc3339(),
        cause: output.cause.kind(),
        cause_event_id: output.cause_event_id(),
        contributions: described.then(|| contributions(&output.contributions)),
        rules_version: &output.rules_version,
        stage: output.stage.as_deref(),
        previous_stage: output
            .lifecycle
            .as_ref()
            .map(|l| l.previous_stage.as_deref()),
        reasons: output
            .lifecycle
            .as_ref()
            .map(|l| l.reasons.iter().map(|r| &**r).collect()),
    };
    serde_json::to_string(&json).expect("output JSON has only serializable fields")
}

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
