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

/// An output as one JSON object, fields in the order the README documents;
/// the lead's numbers are left out of `lead_erased`, which has none.
///
/// Written by hand into one pre-sized buffer: this runs for nearly every
/// event, and through serde it cost more than decoding the event (a map
/// serializer, a string per id and time, and serde_json's byte-by-byte
/// escaping of strings that almost never need it). Numbers, and the rare
/// string that needs escaping, still go through serde_json, so the bytes
/// are the same as its.
pub fn output_to_json(output: &Output) -> String {
    let mut json = JsonObject::with_capacity(OUTPUT_JSON_CAPACITY);
    json.str("type", output.kind.as_str());
    json.display("event_id", &output.event_id);
    json.opt_str("lead_id", output.lead_id.as_deref());
    json.opt_str("account_id", output.account_id.as_deref());
    if output.describes_lead() {
        json.number("score", output.score);
        json.number("fit", output.fit);
        json.number("engagement", output.engagement);
        json.str("grade", output.grade.as_str());
        json.str("tier", &output.tier);
        json.str("previous_tier", &output.previous_tier);
        json.str("direction", output.direction.as_str());
        json.number("delta", output.delta);
    }
    json.display("at", &output.at);
    json.str("cause", output.cause.kind());
    json.opt_str("cause_event_id", output.cause_event_id());
    if output.describes_lead() {
        json.key("contributions");
        json.buf.push(b'[');
        for (i, c) in output.contributions.iter().enumerate() {
            if i > 0 {
                json.buf.push(b',');
            }
            json.buf.extend_from_slice(b"{\"rule\":");
            json.string(&c.rule);
            json.buf.extend_from_slice(b",\"points\":");
            json.float(c.points);
            json.buf.push(b'}');
        }
        json.buf.push(b']');
    }
    json.str("rules_version", &output.rules_version);
    if let Some(score_name) = output.score_name.as_deref() {
        json.str("score_name", score_name);
    }
    if let Some(stage) = output.stage.as_deref() {
        json.str("stage", stage);
    }
    if let Some(life) = &output.lifecycle {
        json.opt_str("previous_stage", life.previous_stage.as_deref());
        json.key("reasons");
        json.buf.push(b'[');
        for (i, reason) in life.reasons.iter().enumerate() {
            if i > 0 {
                json.buf.push(b',');
            }
            json.string(reason);
        }
        json.buf.push(b']');
    }
    json.finish()
}

/// Most outputs fit: one allocation, no regrowth.
const OUTPUT_JSON_CAPACITY: usize = 768;

/// A JSON object written field by field.
struct JsonObject {
    buf: Vec<u8>,
}

impl JsonObject {
    fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(b'{');
        JsonObject { buf }
    }

    /// `"name":`, after a comma unless it is the first field. Names are
    /// literals of this file: none needs escaping.
    fn key(&mut self, name: &'static str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &'static str, value: &str) {
        self.key(name);
        self.string(value);
    }

    fn opt_str(&mut self, name: &'static str, value: Option<&str>) {
        self.key(name);
        match value {
            Some(value) => self.string(value),
            None => self.buf.extend_from_slice(b"null"),
        }
    }

    fn number(&mut self, name: &'static str, value: f64) {
        self.key(name);
        self.float(value);
    }

    /// A value's `Display`, as a string (ids and times: nothing to escape
    /// in either).
    fn display(&mut self, name: &'static str, value: &dyn std::fmt::Display) {
        use std::io::Write as _;
        self.key(name);
        self.buf.push(b'"');
        write!(self.buf, "{value}").expect("writing to a Vec cannot fail");
        self.buf.push(b'"');
    }

    fn string(&mut self, value: &str) {
        let plain = value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        if plain {
            self.buf.push(b'"');
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.push(b'"');
        } else {
            serde_json::to_writer(&mut self.buf, value).expect("a string serialises");
        }
    }

    /// As serde_json writes an `f64` (`null` when not finite).
    fn float(&mut self, value: f64) {
        serde_json::to_writer(&mut self.buf, &value).expect("a number serialises");
    }

    fn finish(mut self) -> String {
        self.buf.push(b'}');
        String::from_utf8(self.buf).expect("built from UTF-8 strings")
    }
}

#[derive(Serialize)]
struct SnapshotJson<'a> {
    lead_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    score_name: Option<&'a str>,
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
        score_name: s.score_name.as_deref(),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    score_name: Option<&'a str>,
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
        score_name: s.score_name.as_deref(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::output_to_json;
    use crate::core::lead::LifecycleChange;
    use crate::core::output::{Cause, Contribution, Direction, Output, OutputKind};
    use crate::core::rules::Grade;
    use crate::core::Timestamp;

    /// The serde form `output_to_json` replaced: what it must write, byte
    /// for byte.
    #[derive(Serialize)]
    struct Reference<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        event_id: String,
        lead_id: Option<&'a str>,
        account_id: Option<&'a str>,
        #[serde(flatten)]
        numbers: Option<Numbers<'a>>,
        at: String,
        cause: &'static str,
        cause_event_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contributions: Option<Vec<ReferenceContribution<'a>>>,
        rules_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        score_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stage: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_stage: Option<Option<&'a str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasons: Option<Vec<&'a str>>,
    }

    #[derive(Serialize)]
    struct Numbers<'a> {
        score: f64,
        fit: f64,
        engagement: f64,
        grade: &'static str,
        tier: &'a str,
        previous_tier: &'a str,
        direction: &'static str,
        delta: f64,
    }

    #[derive(Serialize)]
    struct ReferenceContribution<'a> {
        rule: &'a str,
        points: f64,
    }

    fn reference(output: &Output) -> String {
        let described = output.describes_lead();
        serde_json::to_string(&Reference {
            kind: output.kind.as_str(),
            event_id: output.event_id.to_string(),
            lead_id: output.lead_id.as_deref(),
            account_id: output.account_id.as_deref(),
            numbers: described.then(|| Numbers {
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
            contributions: described.then(|| {
                output
                    .contributions
                    .iter()
                    .map(|c| ReferenceContribution {
                        rule: &c.rule,
                        points: c.points,
                    })
                    .collect()
            }),
            rules_version: &output.rules_version,
            score_name: output.score_name.as_deref(),
            stage: output.stage.as_deref(),
            previous_stage: output
                .lifecycle
                .as_ref()
                .map(|l| l.previous_stage.as_deref()),
            reasons: output
                .lifecycle
                .as_ref()
                .map(|l| l.reasons.iter().map(|r| &**r).collect()),
        })
        .unwrap()
    }

    /// Text with what JSON must escape (quotes, backslashes, control
    /// characters) and what it must not (non-ASCII, `/`, DEL).
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{0,12}",
            proptest::collection::vec(
                prop_oneof![
                    Just('"'),
                    Just('\\'),
                    Just('\n'),
                    Just('\u{1}'),
                    Just('\u{1f}'),
                    Just('\u{7f}'),
                    Just('/'),
                    Just('é'),
                    Just('😀'),
                    Just('a'),
                ],
                0..8
            )
            .prop_map(|cs| cs.into_iter().collect()),
        ]
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6..1e6f64,
            Just(0.0),
            Just(-0.0),
            Just(1e21),
            Just(1.5e-7),
            Just(f64::NAN),
            Just(f64::INFINITY),
        ]
    }

    fn output() -> impl Strategy<Value = Output> {
        let kinds = prop::sample::select(OutputKind::ALL.to_vec());
        let cause = prop_oneof![
            text().prop_map(Cause::Event),
            text().prop_map(Cause::Merge),
            Just(Cause::Decay(Timestamp(0))),
            text().prop_map(|t| Cause::RulesChanged(t.into())),
        ];
        let lifecycle = proptest::option::of(
            (
                proptest::option::of(text()),
                proptest::collection::vec(text(), 0..3),
            )
                .prop_map(|(previous, reasons)| {
                    Box::new(LifecycleChange {
                        previous_stage: previous.map(Arc::from),
                        reasons: reasons.into_iter().map(Arc::from).collect(),
                    })
                }),
        );
        (
            (
                kinds,
                any::<u128>(),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            (-9_000_000_000_000i64..9_000_000_000_000i64, cause),
            (number(), number(), number(), number()),
            (text(), text(), any::<bool>()),
            proptest::collection::vec((text(), number()), 0..6),
            (
                text(),
                proptest::option::of(text()),
                proptest::option::of(text()),
                lifecycle,
            ),
        )
            .prop_map(
                |(
                    (kind, id, lead_id, account_id),
                    (at, cause),
                    (score, fit, engagement, delta),
                    (tier, previous_tier, up),
                    contributions,
                    (rules_version, score_name, stage, lifecycle),
                )| Output {
                    kind,
                    event_id: uuid::Uuid::from_u128(id),
                    lead_id,
                    account_id,
                    at: Timestamp(at),
                    cause,
                    score,
                    fit,
                    engagement,
                    grade: Grade::B,
                    tier: tier.into(),
                    previous_tier: previous_tier.into(),
                    direction: if up { Direction::Up } else { Direction::Down },
                    delta,
                    contributions: contributions
                        .into_iter()
                        .map(|(rule, points)| Contribution {
                            rule: rule.into(),
                            points,
                        })
                        .collect(),
                    rules_version: rules_version.into(),
                    score_name: score_name.map(Arc::from),
                    stage: stage.map(Arc::from),
                    lifecycle,
                },
            )
    }

    proptest! {
        // A failure names its case; no regressions file at the crate's top.
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn outputs_are_written_as_serde_wrote_them(output in output()) {
            let written = output_to_json(&output);
            prop_assert_eq!(&written, &reference(&output));
            prop_assert!(serde_json::from_str::<serde_json::Value>(&written).is_ok());
        }
    }
}
