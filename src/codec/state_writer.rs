//! Lead changelog records written straight from the state: the bytes
//! prost writes for [`super::proto::lead_state_to_wire`]'s message, without
//! building that message first (its vectors and strings cost an
//! allocation each, for every record `run` writes). Fields follow the
//! proto3 rules prost follows: in tag order, and a scalar at its default
//! value (0, 0.0, false, "") left out. Lengths are computed first, so a
//! record is written into one buffer of its exact size. The rare lifecycle
//! part still goes through the generated type.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use super::proto::lifecycle_to_wire;
use crate::core::decay::Decaying;
use crate::core::filters::MarkKind;
use crate::core::lead::{CapWindow, LeadState, RuleCredit, SeenId, TraitState};
use crate::core::RulesStamp;

/// `ChangelogRecord { kind: Lead(state) }`, encoded.
pub(super) fn changelog_lead_record(state: &LeadState, rules: &RulesStamp) -> Vec<u8> {
    let len = lead_state_len(state, rules);
    let mut record = Vec::with_capacity(nested_len(1, len));
    message_header(1, len, &mut record);
    write_lead_state(state, rules, &mut record);
    debug_assert_eq!(record.len(), nested_len(1, len));
    record
}

/// `LeadStateRecord`, encoded (no length prefix).
pub(super) fn lead_state_record(state: &LeadState, rules: &RulesStamp) -> Vec<u8> {
    let mut record = Vec::with_capacity(lead_state_len(state, rules));
    write_lead_state(state, rules, &mut record);
    record
}

fn write_lead_state(state: &LeadState, rules: &RulesStamp, buf: &mut Vec<u8>) {
    string(1, &rules.version, buf);
    varint(2, state.clock.millis() as u64, buf);
    varint(3, u64::from(state.tier), buf);
    double(4, state.last_emitted_score, buf);
    for t in state.traits.iter() {
        message_header(5, trait_len(t), buf);
        write_trait(t, buf);
    }
    for c in state.credits.iter() {
        message_header(6, credit_len(c), buf);
        write_credit(c, buf);
    }
    for w in state.windows.iter() {
        message_header(7, window_len(w), buf);
        write_window(w, buf);
    }
    for s in &state.seen {
        message_header(8, seen_len(s), buf);
        write_seen(s, buf);
    }
    if let Some(account) = &state.account {
        string(9, &account.id, buf);
        varint(10, account.set_at.millis() as u64, buf);
    }
    if let Some(due) = state.due {
        varint(11, 1, buf);
        varint(12, due.millis() as u64, buf);
    }
    varint(13, state.position as u64, buf);
    if state.account.as_ref().is_some_and(|a| a.from_email) {
        varint(14, 1, buf);
    }
    for m in state.merged.iter() {
        let nested = lead_state_len(&m.state, rules);
        message_header(15, string_len(1, &m.identity) + nested_len(2, nested), buf);
        string(1, &m.identity, buf);
        message_header(2, nested, buf);
        write_lead_state(&m.state, rules, buf);
    }
    string(16, &rules.fingerprint, buf);
    if let Some(life) = state.life() {
        encode_key(17, WireType::LengthDelimited, buf);
        lifecycle_to_wire(life)
            .encode_length_delimited(buf)
            .expect("a Vec grows");
    }
    if let Some(filter) = state.filter_state() {
        for mark in &filter.marks {
            let send = mark.kind == MarkKind::Send;
            let (filter, at) = (u64::from(mark.filter), mark.at.millis() as u64);
            message_header(18, mark_len(send, filter, at), buf);
            varint(1, u64::from(send), buf);
            varint(2, filter, buf);
            varint(3, at, buf);
        }
    }
}

/// The encoded length of what [`write_lead_state`] writes.
fn lead_state_len(state: &LeadState, rules: &RulesStamp) -> usize {
    let mut len = string_len(1, &rules.version)
        + varint_len(2, state.clock.millis() as u64)
        + varint_len(3, u64::from(state.tier))
        + fixed_len(state.last_emitted_score != 0.0, 8);
    len += state
        .traits
        .iter()
        .map(|t| nested_len(5, trait_len(t)))
        .sum::<usize>();
    len += state
        .credits
        .iter()
        .map(|c| nested_len(6, credit_len(c)))
        .sum::<usize>();
    len += state
        .windows
        .iter()
        .map(|w| nested_len(7, window_len(w)))
        .sum::<usize>();
    len += state
        .seen
        .iter()
        .map(|s| nested_len(8, seen_len(s)))
        .sum::<usize>();
    if let Some(account) = &state.account {
        len += string_len(9, &account.id) + varint_len(10, account.set_at.millis() as u64);
        len += varint_len(14, u64::from(account.from_email));
    }
    if let Some(due) = state.due {
        len += varint_len(11, 1) + varint_len(12, due.millis() as u64);
    }
    len += varint_len(13, state.position as u64);
    for m in state.merged.iter() {
        let nested = lead_state_len(&m.state, rules);
        len += nested_len(15, string_len(1, &m.identity) + nested_len(2, nested));
    }
    len += string_len(16, &rules.fingerprint);
    if let Some(life) = state.life() {
        len += nested_len(17, lifecycle_to_wire(life).encoded_len());
    }
    if let Some(filter) = state.filter_state() {
        for mark in &filter.marks {
            let send = mark.kind == MarkKind::Send;
            let at = mark.at.millis() as u64;
            len += nested_len(18, mark_len(send, u64::from(mark.filter), at));
        }
    }
    len
}

fn mark_len(send: bool, filter: u64, at: u64) -> usize {
    varint_len(1, u64::from(send)) + varint_len(2, filter) + varint_len(3, at)
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        nested_len(tag, value.len())
    }
}

fn trait_len(t: &TraitState) -> usize {
    varint_len(1, u64::from(t.key))
        + fixed_len(t.bits != 0, 4)
        + varint_len(3, t.set_at.millis() as u64)
}

fn write_trait(t: &TraitState, buf: &mut Vec<u8>) {
    varint(1, u64::from(t.key), buf);
    if t.bits != 0 {
        encode_key(2, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&t.bits.to_le_bytes());
    }
    varint(3, t.set_at.millis() as u64, buf);
}

fn decaying_len(d: &Decaying) -> usize {
    varint_len(1, d.anchor.millis() as u64) + fixed_len(d.value != 0.0, 8)
}

fn write_decaying(tag: u32, d: &Decaying, buf: &mut Vec<u8>) {
    message_header(tag, decaying_len(d), buf);
    varint(1, d.anchor.millis() as u64, buf);
    double(2, d.value, buf);
}

fn nested_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn credit_len(c: &RuleCredit) -> usize {
    varint_len(1, u64::from(c.rule)) + nested_len(2, decaying_len(&c.credit))
}

fn write_credit(c: &RuleCredit, buf: &mut Vec<u8>) {
    varint(1, u64::from(c.rule), buf);
    write_decaying(2, &c.credit, buf);
}

fn window_len(w: &CapWindow) -> usize {
    // An int32 is written as its sign-extended 64 bits.
    varint_len(1, u64::from(w.rule))
        + varint_len(2, i64::from(w.window) as u64)
        + fixed_len(w.raw != 0.0, 8)
        + nested_len(4, decaying_len(&w.credit))
}

fn write_window(w: &CapWindow, buf: &mut Vec<u8>) {
    varint(1, u64::from(w.rule), buf);
    varint(2, i64::from(w.window) as u64, buf);
    double(3, w.raw, buf);
    write_decaying(4, &w.credit, buf);
}

fn seen_len(s: &SeenId) -> usize {
    fixed_len(s.id != 0, 8) + varint_len(2, s.at.millis() as u64)
}

fn write_seen(s: &SeenId, buf: &mut Vec<u8>) {
    if s.id != 0 {
        encode_key(1, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&s.id.to_le_bytes());
    }
    varint(2, s.at.millis() as u64, buf);
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

/// A fixed32 or fixed64 field (or a double) with its key, when present.
fn fixed_len(present: bool, bytes: usize) -> usize {
    // Every fixed-width field here has a tag below 16: a one-byte key.
    if present {
        1 + bytes
    } else {
        0
    }
}

fn varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn double(tag: u32, value: f64, buf: &mut Vec<u8>) {
    if value != 0.0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn string(tag: u32, value: &str, buf: &mut Vec<u8>) {
    if !value.is_empty() {
        message_header(tag, value.len(), buf);
        buf.extend_from_slice(value.as_bytes());
    }
}

fn message_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec::proto::{lead_state_to_wire, wire};
    use crate::core::filters::{FilterMark, FilterState};
    use crate::core::lead::{AccountLink, Lifecycle, MergedHistory, Rare, SalesOutcome};
    use crate::core::time::Timestamp;

    /// What the generated types write: the oracle.
    fn by_prost(state: &LeadState, rules: &RulesStamp) -> Vec<u8> {
        let lead = wire::changelog_record::Kind::Lead(lead_state_to_wire(state, rules));
        wire::ChangelogRecord { kind: Some(lead) }.encode_to_vec()
    }

    fn assert_written_as_prost_writes(state: &LeadState, rules: &RulesStamp) {
        assert_eq!(
            changelog_lead_record(state, rules),
            by_prost(state, rules),
            "{state:?}"
        );
        assert_eq!(
            lead_state_record(state, rules),
            lead_state_to_wire(state, rules).encode_to_vec()
        );
    }

    #[test]
    fn sample_leads_are_written_byte_for_byte_as_prost_writes_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml");
        let config = crate::config::load(&path, &[]).unwrap();
        let rules = &config.rules;
        let lines = crate::sample::generate(&crate::sample::SampleConfig {
            leads: 800,
            seed: 17,
            anonymous_share: 0.2,
            sales_share: 0.2,
            ..Default::default()
        });
        let mut replayer = crate::replay::Replayer::new(rules, false);
        let mut ids = std::collections::BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["userId", "anonymousId"] {
                if let Some(id) = v[field].as_str() {
                    ids.insert(id.to_string());
                }
            }
            replayer.feed_line(i as u64 + 1, line, &mut |_| {}, &mut |_| {});
        }
        let stamp = rules.stamp();
        let (mut leads, mut merged, mut lifecycle, mut accounts, mut due) = (0, 0, 0, 0, 0);
        for id in &ids {
            let Some(state) = replayer.engine().lead(id) else {
                continue;
            };
            assert_written_as_prost_writes(state, &stamp);
            leads += 1;
            merged += usize::from(!state.merged.is_empty());
            lifecycle += usize::from(state.life().is_some());
            accounts += usize::from(state.account.is_some());
            due += usize::from(state.due.is_some());
        }
        // The sample covers every part of a record but filter marks (below).
        assert!(leads >= 800, "{leads} leads");
        assert!(merged > 10 && lifecycle > 10 && accounts > 100 && due > 10);
    }

    #[test]
    fn edge_values_are_written_byte_for_byte_as_prost_writes_them() {
        let stamp = RulesStamp {
            version: String::new(),
            fingerprint: "f".repeat(200),
        };
        let decaying = |anchor: i64, value: f64| Decaying {
            anchor: Timestamp(anchor),
            value,
        };
        let mut state = LeadState::new(Timestamp(i64::MIN));
        state.tier = u8::MAX;
        state.last_emitted_score = -0.0;
        state.position = -1;
        state.due = Some(Timestamp(0));
        state.traits = vec![
            TraitState {
                key: 0,
                bits: 0,
                set_at: Timestamp(0),
            },
            TraitState {
                key: u16::MAX,
                bits: u32::MAX,
                set_at: Timestamp(-5),
            },
        ]
        .into();
        state.credits = vec![
            RuleCredit {
                rule: 0,
                credit: decaying(0, 0.0),
            },
            RuleCredit {
                rule: 300,
                credit: decaying(i64::MAX, f64::NAN),
            },
        ]
        .into();
        state.windows = vec![
            CapWindow {
                rule: 0,
                window: 0,
                raw: 0.0,
                credit: decaying(0, -0.0),
            },
            CapWindow {
                rule: 7,
                window: -1,
                raw: -3.5,
                credit: decaying(-1, f64::INFINITY),
            },
            CapWindow {
                rule: 1,
                window: i32::MAX,
                raw: 1e300,
                credit: decaying(1, 1e-300),
            },
        ]
        .into();
        state.seen = vec![
            SeenId {
                id: 0,
                at: Timestamp(0),
            },
            SeenId {
                id: u64::MAX,
                at: Timestamp(i64::MIN),
            },
        ];
        state.account = Some(AccountLink {
            id: "".into(),
            set_at: Timestamp(0),
            from_email: true,
        });
        state.rare = Some(Box::new(Rare {
            life: Some(Lifecycle {
                stage: Some("é".repeat(100).into()),
                stage_at: Timestamp(3),
                terminal: true,
                suppressed_until: Some(Timestamp(0)),
                reset_at: None,
                outcome: Some(SalesOutcome {
                    converted: false,
                    at: Timestamp(-2),
                }),
            }),
            filter: FilterState {
                marks: vec![
                    FilterMark {
                        kind: MarkKind::Send,
                        filter: 0,
                        at: Timestamp(0),
                    },
                    FilterMark {
                        kind: MarkKind::Hit,
                        filter: u16::MAX,
                        at: Timestamp(9),
                    },
                ],
            },
        }));
        let inner = state.clone();
        state.merged = vec![MergedHistory {
            identity: "anon-1".into(),
            state: inner,
        }]
        .into();
        assert_written_as_prost_writes(&state, &stamp);
        assert_written_as_prost_writes(&LeadState::new(Timestamp(0)), &stamp);
        let mut default_life = LeadState::new(Timestamp(1));
        default_life.rare = Some(Box::default());
        default_life.life_mut();
        assert_written_as_prost_writes(&default_life, &stamp);
    }
}
