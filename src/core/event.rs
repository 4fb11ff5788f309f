//! The event model the core scores: one tracking call, already decoded and
//! validated at the edge (`codec`), with nested objects flattened into
//! dotted keys (`page.path`, `company.employees`).

use crate::core::time::Timestamp;

/// A scalar property, trait or context value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Always finite: the codecs reject NaN and infinities.
    Number(f64),
    Text(Box<str>),
}

impl Value {
    /// Null and the empty string count as "not known" (Segment clients send
    /// both for a cleared field).
    pub fn is_known(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Text(t) => !t.trim().is_empty(),
            _ => true,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Numbers, and text that parses as a number ("5000"): trait values
    /// from forms are often strings.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Text(t) => t.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.into())
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

/// Flattened key/value pairs in the order the message had them.
///
/// A vector, not a map: messages carry a handful of fields and rules look up
/// fewer still, so a linear scan beats hashing and keeps decoding cheap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(pub Vec<(Box<str>, Value)>);

impl Fields {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev() // a repeated key: the last one wins, as in JSON objects
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: impl Into<Box<str>>, value: Value) {
        self.0.push((key.into(), value));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl<K: Into<Box<str>>, V: Into<Value>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Fields(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The Segment call types. `screen` is the mobile twin of `page`. `erase`
/// is leadscore's own: forget the lead (an erasure request).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
    Erase,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Track,
        EventKind::Page,
        EventKind::Screen,
        EventKind::Identify,
        EventKind::Group,
        EventKind::Alias,
        EventKind::Erase,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Identify => "identify",
            EventKind::Group => "group",
            EventKind::Alias => "alias",
            EventKind::Erase => "erase",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One validated tracking call.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The idempotency key (`messageId`).
    pub message_id: String,
    /// `userId` when known, otherwise `anonymousId`.
    pub lead_id: String,
    pub kind: EventKind,
    /// The `track` event name or the `page` / `screen` name.
    pub name: Option<String>,
    pub timestamp: Timestamp,
    pub properties: Fields,
    pub context: Fields,
    /// Lead traits: `identify` traits and `context.traits`. For `group`
    /// calls, the account's traits.
    pub traits: Fields,
    /// `groupId` of a `group` call, or an explicit `account_id`.
    pub account_id: Option<String>,
    /// `previousId` of an `alias` call: the identity merged into `lead_id`.
    pub previous_id: Option<String>,
}

impl Event {
    /// A minimal event, for tests and examples.
    pub fn new(message_id: &str, lead_id: &str, kind: EventKind, timestamp: Timestamp) -> Self {
        Event {
            message_id: message_id.to_string(),
            lead_id: lead_id.to_string(),
            kind,
            name: None,
            timestamp,
            properties: Fields::default(),
            context: Fields::default(),
            traits: Fields::default(),
            account_id: None,
            previous_id: None,
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn with_property(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(key, value.into());
        self
    }

    pub fn with_trait(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.traits.insert(key, value.into());
        self
    }

    pub fn with_context(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.context.insert(key, value.into());
        self
    }
}
