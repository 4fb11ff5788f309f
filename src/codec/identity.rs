//! Handoffs between partition engines as protobuf
//! (`proto/leadscore/v1/identity.proto`): the records of the internal topic
//! that completes `alias` merges across input partitions.

use prost::Message;

use super::proto::{
    event_from_wire, event_to_wire, lead_state_from_wire, lead_state_to_wire, wire,
};
use super::{DecodeError, Decoder};
use crate::core::handoff::Handoff;
use crate::core::{RulesStamp, Timestamp};

pub fn encode_handoff(handoff: &Handoff, rules: &RulesStamp) -> Vec<u8> {
    use wire::identity_record::Kind;
    let kind = match handoff {
        Handoff::MergeRequest {
            from,
            into,
            cause,
            at,
            ..
        } => Kind::MergeRequest(wire::MergeRequest {
            from: from.to_string(),
            into: into.to_string(),
            cause_event_id: cause.to_string(),
            at_ms: at.millis(),
        }),
        Handoff::History {
            from,
            into,
            state,
            cause,
            at,
            ..
        } => Kind::History(wire::History {
            from: from.to_string(),
            into: into.to_string(),
            state: Some(lead_state_to_wire(state, rules)),
            cause_event_id: cause.to_string(),
            at_ms: at.millis(),
        }),
        Handoff::Event {
            into,
            via,
            event,
            position,
            ..
        } => Kind::Event(wire::ForwardedEvent {
            into: into.to_string(),
            via: via.to_string(),
            event: Some(event_to_wire(event)),
            has_position: position.is_some(),
            position: position.unwrap_or(0),
        }),
        Handoff::Erase {
            lead, at, cause, ..
        } => Kind::Erase(wire::EraseLead {
            lead: lead.to_string(),
            at_ms: at.millis(),
            cause_event_id: cause.to_string(),
        }),
        Handoff::Forget {
            identity, lead, at, ..
        } => Kind::Forget(wire::ForgetIdentity {
            identity: identity.to_string(),
            at_ms: at.millis(),
            lead: lead.to_string(),
        }),
    };
    wire::IdentityRecord {
        hops: handoff.hops(),
        kind: Some(kind),
    }
    .encode_to_vec()
}

/// Reads a handoff back. A history written under other rules (its rule
/// indexes would mean other rules) is refused, naming those rules.
pub fn decode_handoff(
    bytes: &[u8],
    decoder: &Decoder,
    rules: &RulesStamp,
) -> Result<Handoff, DecodeError> {
    use wire::identity_record::Kind;
    let record =
        wire::IdentityRecord::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let hops = record.hops;
    match record.kind.ok_or(DecodeError::MissingField("kind"))? {
        Kind::MergeRequest(r) => Ok(Handoff::MergeRequest {
            from: r.from.into(),
            into: r.into.into(),
            cause: r.cause_event_id.into(),
            at: Timestamp(r.at_ms),
            hops,
        }),
        Kind::History(r) => {
            let state = r.state.ok_or(DecodeError::MissingField("state"))?;
            let (state, written_by) = lead_state_from_wire(state)?;
            if !written_by.readable_by(rules) {
                return Err(DecodeError::InvalidField {
                    field: "state",
                    reason: format!(
                        "written under rules version {:?} (fingerprint {:?}), these are {:?} \
                         (fingerprint {:?})",
                        written_by.version,
                        written_by.fingerprint,
                        rules.version,
                        rules.fingerprint
                    ),
                });
            }
            Ok(Handoff::History {
                from: r.from.into(),
                into: r.into.into(),
                state,
                cause: r.cause_event_id.into(),
                at: Timestamp(r.at_ms),
                hops,
            })
        }
        Kind::Event(r) => {
            let event = r.event.ok_or(DecodeError::MissingField("event"))?;
            Ok(Handoff::Event {
                into: r.into.into(),
                via: r.via.into(),
                event: event_from_wire(event, decoder)?,
                position: r.has_position.then_some(r.position),
                hops,
            })
        }
        Kind::Erase(r) => Ok(Handoff::Erase {
            lead: r.lead.into(),
            at: Timestamp(r.at_ms),
            cause: r.cause_event_id.into(),
            hops,
        }),
        Kind::Forget(r) => Ok(Handoff::Forget {
            identity: r.identity.into(),
            lead: r.lead.into(),
            at: Timestamp(r.at_ms),
            hops,
        }),
    }
}
