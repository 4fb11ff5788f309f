//! Segment-spec JSON (`track`, `page`, `screen`, `identify`, `group`,
//! `alias`, and the `batch` envelope) as Segment and RudderStack clients
//! emit it. Nested objects are flattened into dotted keys while parsing, so
//! no intermediate JSON tree is built.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{DecodeError, Decoder, KeptKeys, Limits};
use crate::core::event::{Event, EventKind, Fields, Value};
use crate::core::time::Timestamp;

/// The fields of one message that leadscore reads; the rest (integrations,
/// version, channel, sentAt...) is skipped without being kept.
#[derive(Default)]
struct Wire<'a> {
    kind: Option<Cow<'a, str>>,
    message_id: Option<String>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    event: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    group_id: Option<String>,
    previous_id: Option<String>,
    timestamp: Option<Cow<'a, str>>,
    original_timestamp: Option<Cow<'a, str>>,
    received_at: Option<Cow<'a, str>>,
    properties: Fields,
    traits: Fields,
    context: Fields,
    batch: Option<Vec<&'a RawValue>>,
}

/// A field that is not what the spec says, found while parsing.
type Problem = Option<(&'static str, String)>;

/// Parses a message in one pass, flattening `properties`, `traits` and
/// `context` as they are read, within `limits`.
struct WireSeed<'l> {
    decoder: &'l Decoder,
    problem: &'l mut Problem,
}

impl<'de> DeserializeSeed<'de> for WireSeed<'_> {
    type Value = Wire<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Wire<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WireSeed<'_> {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Segment message object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Text>()? {
            let text = |map: &mut A| {
                map.next_value::<Option<Text<'de>>>()
                    .map(|t| t.map(|t| t.0))
            };
            match key.0.as_ref() {
                "type" => w.kind = text(&mut map)?,
                "event" => w.event = text(&mut map)?,
                "name" => w.name = text(&mut map)?,
                "timestamp" => w.timestamp = text(&mut map)?,
                "originalTimestamp" => w.original_timestamp = text(&mut map)?,
                "receivedAt" => w.received_at = text(&mut map)?,
                "messageId" => w.message_id = map.next_value::<Id>()?.0,
                "userId" => w.user_id = map.next_value::<Id>()?.0,
                "anonymousId" => w.anonymous_id = map.next_value::<Id>()?.0,
                "groupId" => w.group_id = map.next_value::<Id>()?.0,
                "previousId" => w.previous_id = map.next_value::<Id>()?.0,
                "properties" => w.properties = self.flat(&mut map, "properties")?,
                "traits" => w.traits = self.flat(&mut map, "traits")?,
                "context" => w.context = self.flat(&mut map, "context")?,
                "batch" => w.batch = map.next_value()?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(w)
    }
}

impl WireSeed<'_> {
    fn flat<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: &'static str,
    ) -> Result<Fields, A::Error> {
        let mut out = Vec::new();
        let mut trouble = None;
        let keep = self.decoder.keep.as_ref().map(|k| match field {
            "properties" => &k.properties,
            "traits" => &k.traits,
            _ => &k.context,
        });
        let is_object = map.next_value_seed(Flattener {
            out: &mut out,
            prefix: "",
            depth: 0,
            limits: &self.decoder.limits,
            keep,
            trouble: &mut trouble,
        });
        if let Some(reason) = trouble {
            // The flattener stopped the parse on purpose; say why.
            self.problem.get_or_insert((field, reason));
            return Err(de::Error::custom("limit exceeded"));
        }
        if !is_object? {
            self.problem
                .get_or_insert((field, "expected an object".to_string()));
        }
        Ok(Fields(out))
    }
}

/// Decodes one JSON message: a single call, or a `batch` envelope whose
/// items each decode on their own (the envelope's `context` applies to
/// every item, under the item's own).
pub fn decode(
    bytes: &[u8],
    decoder: &Decoder,
) -> Result<Vec<Result<Event, DecodeError>>, DecodeError> {
    let limits = &decoder.limits;
    let wire = parse(bytes, decoder)?;
    if let Some(items) = &wire.batch {
        return Ok(items
            .iter()
            .map(|item| {
                let item_wire = parse(item.get().as_bytes(), decoder)?;
                if item_wire.batch.is_some() {
                    return Err(DecodeError::InvalidField {
                        field: "batch",
                        reason: "batches do not nest".into(),
                    });
                }
                to_event(item_wire, &wire.context, limits)
            })
            .collect());
    }
    Ok(vec![to_event(wire, &Fields::default(), limits)])
}

fn parse<'a>(bytes: &'a [u8], decoder: &Decoder) -> Result<Wire<'a>, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut problem: Problem = None;
    let result = WireSeed {
        decoder,
        problem: &mut problem,
    }
    .deserialize(&mut de)
    .and_then(|wire| de.end().map(|()| wire));
    match (problem, result) {
        (Some((field, reason)), _) => Err(DecodeError::InvalidField { field, reason }),
        (None, Ok(wire)) => Ok(wire),
        (None, Err(e)) => Err(json_error(e)),
    }
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

    let properties = wire.properties;
    let mut traits = wire.traits;
    let mut context = if shared_context.is_empty() {
        wire.context
    } else {
        let mut merged = shared_context.clone();
        merged.0.extend(wire.context.0);
        merged
    };
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

/// Writes every scalar under `prefix` into `out`. Returns whether the value
/// was an object or null (what the top level must be).
struct Flattener<'o> {
    out: &'o mut Vec<(Box<str>, Value)>,
    prefix: &'o str,
    depth: usize,
    limits: &'o Limits,
    /// Flattened keys to keep (`None`: all).
    keep: Option<&'o KeptKeys>,
    /// Why the flattener stopped the parse, when it did.
    trouble: &'o mut Option<String>,
}

impl Flattener<'_> {
    fn push(self, value: Value) -> bool {
        if self.keep.is_none_or(|kept| kept.keeps_path(self.prefix)) {
            self.out.push((self.prefix.into(), value));
        }
        false
    }

    /// Whether `key` under this prefix is kept or leads to something kept.
    fn wants(&self, key: &str) -> bool {
        self.keep.is_none_or(|kept| kept.wants(self.prefix, key))
    }

    fn child<'c>(&'c mut self, prefix: &'c str) -> Flattener<'c> {
        Flattener {
            out: self.out,
            prefix,
            depth: self.depth + 1,
            limits: self.limits,
            keep: self.keep,
            trouble: self.trouble,
        }
    }

    fn check_room<E: de::Error>(&mut self) -> Result<(), E> {
        let trouble = if self.depth >= self.limits.max_depth {
            format!("nested deeper than {} levels", self.limits.max_depth)
        } else if self.out.len() >= self.limits.max_fields {
            format!("more than {} fields", self.limits.max_fields)
        } else {
            return Ok(());
        };
        *self.trouble = Some(trouble);
        Err(E::custom("limit exceeded"))
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
            *self.trouble = Some("non-finite number".into());
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
        while let Some(key) = map.next_key::<Text>()? {
            if !self.wants(&key.0) {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
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
            if !self.wants(&index.to_string()) {
                if seq.next_element::<de::IgnoredAny>()?.is_none() {
                    break;
                }
                index += 1;
                continue;
            }
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

/// A string, borrowed from the input when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// Ids may be strings or numbers (`"userId": 42`); null means absent.
struct Id(Option<String>);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or number id")
            }
            fn visit_str<E>(self, v: &str) -> Result<Id, E> {
                Ok(Id(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Id, E> {
                Ok(Id(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Id, E> {
                Ok(Id(Some(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Id, E> {
                Ok(Id(None))
            }
            fn visit_none<E>(self) -> Result<Id, E> {
                Ok(Id(None))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}
