//! Segment-spec JSON (`track`, `page`, `screen`, `identify`, `group`,
//! `alias`, and the `batch` envelope) as Segment and RudderStack clients
//! emit it. Nested objects are flattened into dotted keys while parsing, so
//! no intermediate JSON tree is built.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{DecodeError, Limits};
use crate::core::event::{Event, EventKind, Fields, Value};
use crate::core::time::Timestamp;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "id")]
    message_id: Option<String>,
    #[serde(default, deserialize_with = "id")]
    user_id: Option<String>,
    #[serde(default, deserialize_with = "id")]
    anonymous_id: Option<String>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "id")]
    group_id: Option<String>,
    #[serde(default, deserialize_with = "id")]
    previous_id: Option<String>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    original_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    received_at: Option<Cow<'a, str>>,
    properties: Option<RawObject<'a>>,
    traits: Option<RawObject<'a>>,
    context: Option<RawObject<'a>>,
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
}

/// An object kept as raw JSON until the limits are known, then flattened.
struct RawObject<'a>(&'a RawValue);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(RawObject)
    }
}

/// Decodes one JSON message: a single call, or a `batch` envelope whose
/// items each decode on their own (the envelope's `context` applies to
/// every item, under the item's own).
pub fn decode(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<Result<Event, DecodeError>>, DecodeError> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(json_error)?;
    if let Some(items) = &wire.batch {
        let shared_context = match &wire.context {
            Some(raw) => flatten(raw, limits, "context")?,
            None => Fields::default(),
        };
        return Ok(items
            .iter()
            .map(|item| {
                let wire: Wire = serde_json::from_str(item.get()).map_err(json_error)?;
                if wire.batch.is_some() {
                    return Err(DecodeError::InvalidField {
                        field: "batch",
                        reason: "batches do not nest".into(),
                    });
                }
                to_event(wire, &shared_context, limits)
            })
            .collect());
    }
    Ok(vec![to_event(wire, &Fields::default(), limits)])
}

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Json(e.to_string())
}

fn to_event(wire: Wire, shared_context: &Fields, limits: &Limits) -> Result<Event, DecodeError> {
    let kind_text = wire.kind.ok_or(DecodeError::MissingField("type"))?;
    let kind = EventKind::parse(&kind_text)
        .ok_or_else(|| DecodeError::UnsupportedType(kind_text.chars().take(64).collect()))?;
    let message_id = wire
        .message_id
        .filter(|id| !id.is_empty())
        .ok_or(DecodeError::MissingField("messageId"))?;
    let lead_id = wire
        .user_id
        .filter(|id| !id.is_empty())
        .or_else(|| wire.anonymous_id.filter(|id| !id.is_empty()))
        .ok_or(DecodeError::MissingField("userId or anonymousId"))?;
    let time_text = wire
        .timestamp
        .or(wire.original_timestamp)
        .or(wire.received_at)
        .ok_or(DecodeError::MissingField("timestamp"))?;
    let timestamp =
        Timestamp::parse_rfc3339(&time_text).ok_or_else(|| DecodeError::InvalidField {
            field: "timestamp",
            reason: format!(
                "\"{}\" is not an RFC 3339 time with an offset, such as 2026-11-25T10:00:00Z",
                time_text.chars().take(64).collect::<String>()
            ),
        })?;

    let name = match kind {
        EventKind::Track => Some(
            wire.event
                .filter(|e| !e.trim().is_empty())
                .ok_or(DecodeError::MissingField("event"))?
                .into_owned(),
        ),
        EventKind::Page | EventKind::Screen => wire.name.map(Cow::into_owned),
        _ => None,
    };

    let properties = match &wire.properties {
        Some(raw) => flatten(raw, limits, "properties")?,
        None => Fields::default(),
    };
    let mut traits = match &wire.traits {
        Some(raw) => flatten(raw, limits, "traits")?,
        None => Fields::default(),
    };
    let mut context = shared_context.clone();
    if let Some(raw) = &wire.context {
        context.0.extend(flatten(raw, limits, "context")?.0);
    }
    // `context.traits` carries the user's traits on any call; they count as
    // lead traits, under any traits the call carries itself.
    if context.iter().any(|(k, _)| k.starts_with("traits.")) {
        let (from_context, rest): (Vec<_>, Vec<_>) = context
            .0
            .into_iter()
            .partition(|(k, _)| k.starts_with("traits."));
        context = Fields(rest);
        let mut merged: Vec<(Box<str>, Value)> = from_context
            .into_iter()
            .map(|(k, v)| (k["traits.".len()..].into(), v))
            .collect();
        merged.extend(traits.0);
        traits = Fields(merged);
    }
    if properties.len() + traits.len() + context.len() > limits.max_fields {
        return Err(DecodeError::InvalidField {
            field: "properties",
            reason: format!("more than {} fields in one message", limits.max_fields),
        });
    }

    let account_id = match kind {
        EventKind::Group => Some(
            wire.group_id
                .filter(|g| !g.is_empty())
                .ok_or(DecodeError::MissingField("groupId"))?,
        ),
        _ => explicit_account(&traits, &context, &properties),
    };
    let previous_id = match kind {
        EventKind::Alias => Some(
            wire.previous_id
                .filter(|p| !p.is_empty())
                .ok_or(DecodeError::MissingField("previousId"))?,
        ),
        _ => None,
    };
    Ok(Event {
        message_id,
        lead_id,
        kind,
        name,
        timestamp,
        properties,
        context,
        traits,
        account_id,
        previous_id,
    })
}

/// An explicit account on a non-group call: `account_id` in the traits or
/// properties, or Segment's `context.groupId`.
fn explicit_account(traits: &Fields, context: &Fields, properties: &Fields) -> Option<String> {
    [
        traits.get("account_id"),
        properties.get("account_id"),
        context.get("groupId"),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| match v {
        Value::Text(t) if !t.trim().is_empty() => Some(t.to_string()),
        Value::Number(n) => Some(format_number_id(*n)),
        _ => None,
    })
}

fn format_number_id(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn flatten(raw: &RawObject, limits: &Limits, field: &'static str) -> Result<Fields, DecodeError> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw.0.get());
    let result = Flattener {
        out: &mut out,
        prefix: "",
        depth: 0,
        limits,
    }
    .deserialize(&mut de);
    match result {
        Ok(true) => Ok(Fields(out)),
        Ok(false) => Err(DecodeError::InvalidField {
            field,
            reason: "expected an object".into(),
        }),
        Err(e) => Err(DecodeError::InvalidField {
            field,
            reason: e.to_string(),
        }),
    }
}

/// Writes every scalar under `prefix` into `out`. Returns whether the value
/// was an object or null (what the top level must be).
struct Flattener<'o> {
    out: &'o mut Vec<(Box<str>, Value)>,
    prefix: &'o str,
    depth: usize,
    limits: &'o Limits,
}

impl Flattener<'_> {
    fn push(self, value: Value) -> bool {
        self.out.push((self.prefix.into(), value));
        false
    }

    fn child<'c>(&'c mut self, prefix: &'c str) -> Flattener<'c> {
        Flattener {
            out: self.out,
            prefix,
            depth: self.depth + 1,
            limits: self.limits,
        }
    }

    fn check_room<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= self.limits.max_depth {
            return Err(E::custom(format!(
                "nested deeper than {} levels",
                self.limits.max_depth
            )));
        }
        if self.out.len() >= self.limits.max_fields {
            return Err(E::custom(format!(
                "more than {} fields",
                self.limits.max_fields
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flattener<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flattener<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        Ok(self.push(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        Ok(self.push(Value::Number(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        Ok(self.push(Value::Number(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        if !v.is_finite() {
            return Err(E::custom("non-finite number"));
        }
        Ok(self.push(Value::Number(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(self.push(Value::Text(v.into())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        if self.depth == 0 {
            return Ok(true); // `"properties": null` is an empty object
        }
        Ok(self.push(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            self.check_room()?;
            let full = if self.prefix.is_empty() {
                key.0.into_owned()
            } else {
                format!("{}.{}", self.prefix, key.0)
            };
            map.next_value_seed(self.child(&full))?;
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<bool, A::Error> {
        let mut index = 0usize;
        loop {
            self.check_room()?;
            let key = format!("{}.{index}", self.prefix);
            if seq.next_element_seed(self.child(&key))?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(false)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Ids may be strings or numbers (`"userId": 42`); null means absent.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct IdVisitor;
    impl Visitor<'_> for IdVisitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or number id")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(IdVisitor)
}
