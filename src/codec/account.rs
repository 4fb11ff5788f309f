//! Account updates and account state as protobuf
//! (`proto/leadscore/v1/account.proto`): the records of the internal topic
//! that carries leads' shares to their accounts' partitions, and of the
//! accounts' changelog.

use prost::Message;

use super::proto::{fields, fields_to_wire, trait_state_to_wire, wire};
use super::DecodeError;
use crate::core::account::{AccountState, AccountUpdate, Member};
use crate::core::decay::{Decaying, HalfLife};
use crate::core::lead::TraitState;
use crate::core::output::Cause;
use crate::core::{RulesStamp, Timestamp};

fn member_to_wire(m: &Member) -> wire::MemberRecord {
    wire::MemberRecord {
        lead_id: m.lead_id.to_string(),
        fit: m.fit,
        engagement: m
            .engagement
            .iter()
            .map(|(h, sum)| wire::DecayingSum {
                half_life_ms: h.millis().unwrap_or(0.0),
                sum: Some(wire::Decaying {
                    anchor_ms: sum.anchor.millis(),
                    value: sum.value,
                }),
            })
            .collect(),
        has_department: m.department.is_some(),
        department: m.department.map_or(0, u32::from),
        has_seniority: m.seniority.is_some(),
        seniority: m.seniority.map_or(0, u32::from),
    }
}

fn index(v: u32, field: &'static str) -> Result<u16, DecodeError> {
    u16::try_from(v).map_err(|_| DecodeError::InvalidField {
        field,
        reason: format!("index {v} out of range"),
    })
}

fn member_from_wire(r: wire::MemberRecord) -> Result<Member, DecodeError> {
    let engagement = r
        .engagement
        .into_iter()
        .map(|e| {
            let half_life = if e.half_life_ms > 0.0 {
                HalfLife::Millis(e.half_life_ms)
            } else {
                HalfLife::Never
            };
            let sum = e.sum.unwrap_or_default();
            (
                half_life,
                Decaying {
                    anchor: Timestamp(sum.anchor_ms),
                    value: sum.value,
                },
            )
        })
        .collect();
    Ok(Member {
        lead_id: r.lead_id.into(),
        fit: r.fit,
        engagement,
        department: r
            .has_department
            .then(|| index(r.department, "department"))
            .transpose()?,
        seniority: r
            .has_seniority
            .then(|| index(r.seniority, "seniority"))
            .transpose()?,
    })
}

fn cause_parts(cause: &Cause) -> (String, i64, String) {
    match cause {
        Cause::Event(id) | Cause::Merge(id) => (id.clone(), 0, String::new()),
        Cause::Decay(due) => (String::new(), due.millis(), String::new()),
        Cause::RulesChanged(fingerprint) => (String::new(), 0, fingerprint.to_string()),
    }
}

pub fn encode_account_update(update: &AccountUpdate) -> Vec<u8> {
    let (account_id, at, cause, kind) = match update {
        AccountUpdate::Member {
            account_id,
            lead_id,
            member,
            erased,
            at,
            cause,
        } => (
            account_id,
            at,
            cause,
            wire::account_update_record::Kind::Member(wire::MemberChange {
                lead_id: lead_id.to_string(),
                member: member.as_ref().map(member_to_wire),
                erased: *erased,
            }),
        ),
        AccountUpdate::Traits {
            account_id,
            traits,
            at,
            cause,
        } => (
            account_id,
            at,
            cause,
            wire::account_update_record::Kind::Traits(wire::AccountTraits {
                traits: fields_to_wire(traits),
            }),
        ),
    };
    let (cause_event_id, cause_due_ms, cause_rules_changed) = cause_parts(cause);
    wire::AccountUpdateRecord {
        account_id: account_id.to_string(),
        at_ms: at.millis(),
        cause_event_id,
        cause_due_ms,
        kind: Some(kind),
        cause_rules_changed,
    }
    .encode_to_vec()
}

pub fn decode_account_update(bytes: &[u8]) -> Result<AccountUpdate, DecodeError> {
    let r = wire::AccountUpdateRecord::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let cause = if !r.cause_rules_changed.is_empty() {
        Cause::RulesChanged(r.cause_rules_changed.into())
    } else if r.cause_event_id.is_empty() {
        Cause::Decay(Timestamp(r.cause_due_ms))
    } else {
        Cause::Event(r.cause_event_id)
    };
    let account_id = r.account_id.into();
    let at = Timestamp(r.at_ms);
    match r.kind {
        Some(wire::account_update_record::Kind::Member(m)) => Ok(AccountUpdate::Member {
            account_id,
            lead_id: m.lead_id.into(),
            member: m.member.map(member_from_wire).transpose()?,
            erased: m.erased,
            at,
            cause,
        }),
        Some(wire::account_update_record::Kind::Traits(t)) => Ok(AccountUpdate::Traits {
            account_id,
            traits: fields(t.traits, "traits", None)?,
            at,
            cause,
        }),
        None => Err(DecodeError::InvalidField {
            field: "kind",
            reason: "an account update names neither a member nor traits".into(),
        }),
    }
}

/// An account's state as a changelog record.
pub fn encode_account_state(state: &AccountState, rules: &RulesStamp) -> Vec<u8> {
    wire::AccountStateRecord {
        rules_version: rules.version.clone(),
        rules_fingerprint: rules.fingerprint.clone(),
        clock_ms: state.clock.millis(),
        tier: u32::from(state.tier),
        last_emitted_score: state.last_emitted_score,
        traits: state
            .profile
            .traits
            .iter()
            .map(trait_state_to_wire)
            .collect(),
        members: state.members.iter().map(member_to_wire).collect(),
        has_due: state.due.is_some(),
        due_ms: state.due.map_or(0, Timestamp::millis),
        position: state.position,
        last_update_ms: state.last_update.millis(),
    }
    .encode_to_vec()
}

/// An account's state and the rules it was written under.
pub fn decode_account_state(bytes: &[u8]) -> Result<(AccountState, RulesStamp), DecodeError> {
    let r = wire::AccountStateRecord::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let traits = r
        .traits
        .into_iter()
        .map(|t| {
            Ok(TraitState {
                key: index(t.key, "traits")?,
                bits: t.bits,
                set_at: Timestamp(t.set_at_ms),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let members = r
        .members
        .into_iter()
        .map(member_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let tier = u8::try_from(r.tier).map_err(|_| DecodeError::InvalidField {
        field: "tier",
        reason: format!("{} out of range", r.tier),
    })?;
    let mut state = AccountState::restored(
        Timestamp(r.clock_ms),
        tier,
        r.last_emitted_score,
        traits,
        members,
        r.has_due.then_some(Timestamp(r.due_ms)),
        r.position,
    );
    if r.last_update_ms != 0 {
        state.last_update = Timestamp(r.last_update_ms);
    }
    Ok((
        state,
        RulesStamp {
            version: r.rules_version,
            fingerprint: r.rules_fingerprint,
        },
    ))
}
