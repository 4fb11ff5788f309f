//! Protobuf (`proto/leadscore/v1`) to and from core types.

use prost::Message;

use super::{DecodeError, Decoder, KeptKeys};
use crate::core::decay::Decaying;
use crate::core::event::{Event, EventKind, Fields, Value};
use crate::core::filters::{FilterMark, FilterState, MarkKind};
use crate::core::lead::{
    AccountLink, CapWindow, LeadState, Lifecycle, MergedHistory, Rare, RuleCredit, SalesOutcome,
    SeenId, TraitState,
};
use crate::core::output::Output;
use crate::core::time::Timestamp;
use crate::core::RulesStamp;

/// The generated wire types. A changelog record is a lead's state or an
/// alias: boxing the state would cost an allocation per record written
/// and read, for a size only the alias variant would save.
#[allow(clippy::large_enum_variant)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/leadscore.v1.rs"));
}

pub fn decode_event(bytes: &[u8], decoder: &Decoder) -> Result<Event, DecodeError> {
    let msg =
        wire::TrackingEvent::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    event_from_wire(msg, decoder)
}

pub(crate) fn event_from_wire(
    msg: wire::TrackingEvent,
    decoder: &Decoder,
) -> Result<Event, DecodeError> {
    let limits = &decoder.limits;
    use wire::CallType;
    let kind = match CallType::try_from(msg.r#type) {
        Ok(CallType::Track) => EventKind::Track,
        Ok(CallType::Page) => EventKind::Page,
        Ok(CallType::Screen) => EventKind::Screen,
        Ok(CallType::Identify) => EventKind::Identify,
        Ok(CallType::Group) => EventKind::Group,
        Ok(CallType::Alias) => EventKind::Alias,
        Ok(CallType::Erase) => EventKind::Erase,
        Ok(CallType::Unspecified) => return Err(DecodeError::MissingField("type")),
        Err(_) => return Err(DecodeError::UnsupportedType(msg.r#type.to_string())),
    };
    let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
    let message_id = non_empty(msg.message_id).ok_or(DecodeError::MissingField("message_id"))?;
    let lead_id = non_empty(msg.user_id)
        .or_else(|| non_empty(msg.anonymous_id))
        .ok_or(DecodeError::MissingField("user_id or anonymous_id"))?;
    if msg.timestamp_ms == 0 {
        return Err(DecodeError::MissingField("timestamp_ms"));
    }
    if msg.properties.len() + msg.traits.len() + msg.context.len() > limits.max_fields {
        return Err(DecodeError::InvalidField {
            field: "properties",
            reason: format!("more than {} fields in one message", limits.max_fields),
        });
    }
    let keep = decoder.keep.as_ref();
    let properties = fields(msg.properties, "properties", keep.map(|k| &k.properties))?;
    let context = fields(msg.context, "context", keep.map(|k| &k.context))?;
    let traits = fields(msg.traits, "traits", keep.map(|k| &k.traits))?;
    let name = match kind {
        EventKind::Track => Some(non_empty(msg.event).ok_or(DecodeError::MissingField("event"))?),
        EventKind::Page | EventKind::Screen => non_empty(msg.name),
        _ => None,
    };
    let account_id = match kind {
        EventKind::Group => {
            Some(non_empty(msg.group_id).ok_or(DecodeError::MissingField("group_id"))?)
        }
        _ => traits
            .get("account_id")
            .or_else(|| properties.get("account_id"))
            .and_then(Value::as_text)
            .filter(|t| !t.trim().is_empty())
            .map(str::to_string),
    };
    let previous_id = match kind {
        EventKind::Alias => {
            Some(non_empty(msg.previous_id).ok_or(DecodeError::MissingField("previous_id"))?)
        }
        _ => None,
    };
    Ok(Event {
        message_id,
        lead_id,
        kind,
        name,
        timestamp: Timestamp(msg.timestamp_ms),
        properties,
        context,
        traits,
        account_id,
        previous_id,
    })
}

pub(crate) fn fields(
    map: std::collections::HashMap<String, wire::Value>,
    field: &'static str,
    keep: Option<&KeptKeys>,
) -> Result<Fields, DecodeError> {
    let mut pairs: Vec<(Box<str>, Value)> = Vec::new();
    for (key, value) in map {
        if keep.is_some_and(|kept| !kept.keeps_path(&key)) {
            continue;
        }
        let value = match value.kind {
            Some(wire::value::Kind::Text(t)) => Value::Text(t.into()),
            Some(wire::value::Kind::Number(n)) if n.is_finite() => Value::Number(n),
            Some(wire::value::Kind::Number(_)) => {
                return Err(DecodeError::InvalidField {
                    field,
                    reason: format!("`{key}` is not a finite number"),
                })
            }
            Some(wire::value::Kind::Boolean(b)) => Value::Bool(b),
            Some(wire::value::Kind::Null(_)) | None => Value::Null,
        };
        pairs.push((key.into(), value));
    }
    // Map order on the wire is unspecified; sort for deterministic state.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Fields(pairs))
}

/// The protobuf form of an event, for producers and tests.
/// Fields as a protobuf map of values.
pub(crate) fn fields_to_wire(f: &Fields) -> std::collections::HashMap<String, wire::Value> {
    f.iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::Text(t) => wire::value::Kind::Text(t.to_string()),
                Value::Number(n) => wire::value::Kind::Number(*n),
                Value::Bool(b) => wire::value::Kind::Boolean(*b),
                Value::Null => wire::value::Kind::Null(true),
            };
            (k.to_string(), wire::Value { kind: Some(kind) })
        })
        .collect()
}

pub fn event_to_wire(event: &Event) -> wire::TrackingEvent {
    use wire::CallType;
    let map = fields_to_wire;
    let (r#type, event_name, name) = match event.kind {
        EventKind::Track => (
            CallType::Track,
            event.name.clone().unwrap_or_default(),
            String::new(),
        ),
        EventKind::Page => (
            CallType::Page,
            String::new(),
            event.name.clone().unwrap_or_default(),
        ),
        EventKind::Screen => (
            CallType::Screen,
            String::new(),
            event.name.clone().unwrap_or_default(),
        ),
        EventKind::Identify => (CallType::Identify, String::new(), String::new()),
        EventKind::Group => (CallType::Group, String::new(), String::new()),
        EventKind::Alias => (CallType::Alias, String::new(), String::new()),
        EventKind::Erase => (CallType::Erase, String::new(), String::new()),
    };
    wire::TrackingEvent {
        r#type: r#type as i32,
        message_id: event.message_id.clone(),
        user_id: event.lead_id.clone(),
        anonymous_id: String::new(),
        event: event_name,
        name,
        timestamp_ms: event.timestamp.millis(),
        properties: map(&event.properties),
        traits: map(&event.traits),
        context: map(&event.context),
        group_id: match event.kind {
            EventKind::Group => event.account_id.clone().unwrap_or_default(),
            _ => String::new(),
        },
        previous_id: event.previous_id.clone().unwrap_or_default(),
    }
}

pub fn encode_output(output: &Output) -> Vec<u8> {
    let described = output.describes_lead();
    let text = |s: &str| {
        if described {
            s.to_string()
        } else {
            String::new()
        }
    };
    wire::ScoreEvent {
        r#type: output.kind.as_str().to_string(),
        event_id: output.event_id.to_string(),
        lead_id: output.lead_id.clone().unwrap_or_default(),
        account_id: output.account_id.clone().unwrap_or_default(),
        score: output.score,
        fit: output.fit,
        engagement: output.engagement,
        grade: text(output.grade.as_str()),
        tier: text(&output.tier),
        previous_tier: text(&output.previous_tier),
        direction: text(output.direction.as_str()),
        delta: output.delta,
        at_ms: output.at.millis(),
        cause_event_id: output.cause_event_id().unwrap_or_default().to_string(),
        contributions: output
            .contributions
            .iter()
            .map(|c| wire::Contribution {
                rule: c.rule.to_string(),
                points: c.points,
            })
            .collect(),
        rules_version: output.rules_version.to_string(),
        score_name: output.score_name.as_deref().unwrap_or_default().to_string(),
        cause: output.cause.kind().to_string(),
        stage: output.stage.as_deref().unwrap_or_default().to_string(),
        previous_stage: output
            .lifecycle
            .as_ref()
            .and_then(|l| l.previous_stage.as_deref())
            .unwrap_or_default()
            .to_string(),
        reasons: output
            .lifecycle
            .as_ref()
            .map(|l| l.reasons.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default(),
    }
    .encode_to_vec()
}

pub(crate) fn trait_state_to_wire(t: &TraitState) -> wire::TraitState {
    wire::TraitState {
        key: u32::from(t.key),
        bits: t.bits,
        set_at_ms: t.set_at.millis(),
    }
}

/// A lead's state as a changelog record.
pub fn encode_lead_state(state: &LeadState, rules: &RulesStamp) -> Vec<u8> {
    super::state_writer::lead_state_record(state, rules)
}

pub(crate) fn lead_state_to_wire(state: &LeadState, rules: &RulesStamp) -> wire::LeadStateRecord {
    let decaying = |d: &Decaying| wire::Decaying {
        anchor_ms: d.anchor.millis(),
        value: d.value,
    };
    wire::LeadStateRecord {
        rules_version: rules.version.clone(),
        rules_fingerprint: rules.fingerprint.clone(),
        clock_ms: state.clock.millis(),
        tier: u32::from(state.tier),
        last_emitted_score: state.last_emitted_score,
        traits: state.traits.iter().map(trait_state_to_wire).collect(),
        credits: state
            .credits
            .iter()
            .map(|c| wire::RuleCredit {
                rule: u32::from(c.rule),
                credit: Some(decaying(&c.credit)),
            })
            .collect(),
        windows: state
            .windows
            .iter()
            .map(|w| wire::CapWindow {
                rule: u32::from(w.rule),
                window: w.window,
                raw: w.raw,
                credit: Some(decaying(&w.credit)),
            })
            .collect(),
        seen: state
            .seen
            .iter()
            .map(|s| wire::SeenId {
                id: s.id,
                at_ms: s.at.millis(),
            })
            .collect(),
        account_id: state
            .account
            .as_ref()
            .map(|a| a.id.to_string())
            .unwrap_or_default(),
        account_set_at_ms: state.account.as_ref().map_or(0, |a| a.set_at.millis()),
        account_from_email: state.account.as_ref().is_some_and(|a| a.from_email),
        has_due: state.due.is_some(),
        due_ms: state.due.map_or(0, Timestamp::millis),
        position: state.position,
        merged: state
            .merged
            .iter()
            .map(|m| wire::MergedHistory {
                identity: m.identity.to_string(),
                state: Some(lead_state_to_wire(&m.state, rules)),
            })
            .collect(),
        lifecycle: state.life().map(lifecycle_to_wire),
        filter_marks: state
            .filter_state()
            .map(|f| {
                f.marks
                    .iter()
                    .map(|m| wire::FilterMark {
                        send: m.kind == MarkKind::Send,
                        filter: u32::from(m.filter),
                        at_ms: m.at.millis(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub(crate) fn lifecycle_to_wire(life: &Lifecycle) -> wire::LifecycleRecord {
    use wire::lifecycle_record::Outcome;
    wire::LifecycleRecord {
        stage: life.stage.as_deref().unwrap_or_default().to_string(),
        stage_at_ms: life.stage_at.millis(),
        terminal: life.terminal,
        suppressed: life.suppressed_until.is_some(),
        suppressed_until_ms: life.suppressed_until.map_or(0, Timestamp::millis),
        reset: life.reset_at.is_some(),
        reset_at_ms: life.reset_at.map_or(0, Timestamp::millis),
        outcome: match life.outcome {
            None => Outcome::Unspecified,
            Some(o) if o.converted => Outcome::Converted,
            Some(_) => Outcome::NotConverted,
        } as i32,
        outcome_at_ms: life.outcome.map_or(0, |o| o.at.millis()),
    }
}

fn lifecycle_from_wire(r: wire::LifecycleRecord) -> Lifecycle {
    use wire::lifecycle_record::Outcome;
    let outcome = match Outcome::try_from(r.outcome) {
        Ok(Outcome::Converted) => Some(true),
        Ok(Outcome::NotConverted) => Some(false),
        _ => None,
    };
    Lifecycle {
        stage: (!r.stage.is_empty()).then(|| r.stage.into()),
        stage_at: Timestamp(r.stage_at_ms),
        terminal: r.terminal,
        suppressed_until: r.suppressed.then_some(Timestamp(r.suppressed_until_ms)),
        reset_at: r.reset.then_some(Timestamp(r.reset_at_ms)),
        outcome: outcome.map(|converted| SalesOutcome {
            converted,
            at: Timestamp(r.outcome_at_ms),
        }),
    }
}

/// One changelog record's value.
pub enum ChangelogValue {
    Lead { state: LeadState, rules: RulesStamp },
    AliasOf(String),
}

pub fn encode_changelog(
    change: &crate::core::engine::StateChange<'_>,
    rules: &RulesStamp,
) -> Vec<u8> {
    use crate::core::engine::StateChange;
    let kind = match change {
        StateChange::Lead(state) => {
            return super::state_writer::changelog_lead_record(state, rules)
        }
        StateChange::AliasOf(target) => wire::changelog_record::Kind::AliasOf(target.to_string()),
        // A tombstone has no value: callers send none (see `is_tombstone`).
        StateChange::Gone => return Vec::new(),
    };
    wire::ChangelogRecord { kind: Some(kind) }.encode_to_vec()
}

pub fn decode_changelog(bytes: &[u8]) -> Result<ChangelogValue, DecodeError> {
    let record =
        wire::ChangelogRecord::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    match record.kind {
        Some(wire::changelog_record::Kind::Lead(lead)) => {
            let (state, rules) = lead_state_from_wire(lead)?;
            Ok(ChangelogValue::Lead { state, rules })
        }
        Some(wire::changelog_record::Kind::AliasOf(target)) => Ok(ChangelogValue::AliasOf(target)),
        None => Err(DecodeError::MissingField("kind")),
    }
}

/// Reads a changelog record back; the rules it was written under come
/// with it, so the caller can refuse state from other rules.
pub fn decode_lead_state(bytes: &[u8]) -> Result<(LeadState, RulesStamp), DecodeError> {
    let r =
        wire::LeadStateRecord::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    lead_state_from_wire(r)
}

pub(crate) fn lead_state_from_wire(
    r: wire::LeadStateRecord,
) -> Result<(LeadState, RulesStamp), DecodeError> {
    let decaying = |d: Option<wire::Decaying>| {
        let d = d.unwrap_or_default();
        Decaying {
            anchor: Timestamp(d.anchor_ms),
            value: d.value,
        }
    };
    let narrow = |v: u32, what: &'static str| {
        u16::try_from(v).map_err(|_| DecodeError::InvalidField {
            field: what,
            reason: format!("index {v} out of range"),
        })
    };
    let mut state = LeadState {
        clock: Timestamp(r.clock_ms),
        tier: u8::try_from(r.tier).map_err(|_| DecodeError::InvalidField {
            field: "tier",
            reason: format!("{} out of range", r.tier),
        })?,
        last_emitted_score: r.last_emitted_score,
        traits: r
            .traits
            .into_iter()
            .map(|t| {
                Ok(TraitState {
                    key: narrow(t.key, "traits")?,
                    bits: t.bits,
                    set_at: Timestamp(t.set_at_ms),
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        credits: r
            .credits
            .into_iter()
            .map(|c| {
                Ok(RuleCredit {
                    rule: narrow(c.rule, "credits")?,
                    credit: decaying(c.credit),
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        windows: r
            .windows
            .into_iter()
            .map(|w| {
                Ok(CapWindow {
                    rule: narrow(w.rule, "windows")?,
                    window: w.window,
                    raw: w.raw,
                    credit: decaying(w.credit),
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        seen: r
            .seen
            .into_iter()
            .map(|s| SeenId {
                id: s.id,
                at: Timestamp(s.at_ms),
            })
            .collect(),
        account: (!r.account_id.is_empty()).then(|| AccountLink {
            id: r.account_id.into(),
            set_at: Timestamp(r.account_set_at_ms),
            from_email: r.account_from_email,
        }),
        due: r.has_due.then_some(Timestamp(r.due_ms)),
        position: r.position,
        merged: r
            .merged
            .into_iter()
            .map(|m| {
                let state = m.state.ok_or(DecodeError::MissingField("merged.state"))?;
                Ok(MergedHistory {
                    identity: m.identity.into(),
                    state: lead_state_from_wire(state)?.0,
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        rare: None,
    };
    let life = r.lifecycle.map(lifecycle_from_wire);
    let filter = {
        let marks = r
            .filter_marks
            .into_iter()
            .map(|m| {
                Ok(FilterMark {
                    kind: if m.send {
                        MarkKind::Send
                    } else {
                        MarkKind::Hit
                    },
                    filter: narrow(m.filter, "filter_marks")?,
                    at: Timestamp(m.at_ms),
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        FilterState { marks }
    };
    if life.is_some() || !filter.marks.is_empty() {
        state.rare = Some(Box::new(Rare { life, filter }));
    }
    Ok((
        state,
        RulesStamp {
            version: r.rules_version,
            fingerprint: r.rules_fingerprint,
        },
    ))
}
