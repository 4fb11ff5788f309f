//! Wire formats at the edge: Segment-spec JSON and protobuf in, core
//! [`Event`](crate::core::Event)s out; core outputs to JSON or protobuf.
//! The core never sees serde_json or prost types.

pub mod account;
pub mod identity;
pub mod output;
pub mod proto;
pub mod segment;

use crate::core::{Event, EventKind, Timestamp};

/// Why an input message could not become an event. Every variant says
/// enough to fix the sender; none panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {size} bytes, over the limit of {max}")]
    Oversized { size: usize, max: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("unsupported message type \"{0}\"")]
    UnsupportedType(String),
    #[error("unsupported content type \"{0}\"")]
    UnsupportedContentType(String),
}

impl DecodeError {
    /// A short, bounded label for metrics and dead-letter headers.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Protobuf(_) => "invalid_protobuf",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::UnsupportedType(_) => "unsupported_type",
            DecodeError::UnsupportedContentType(_) => "unsupported_content_type",
        }
    }
}

/// Bounds on what one message may carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Nesting depth of properties, traits and context objects.
    pub max_depth: usize,
    /// Flattened fields per message.
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 256 * 1024,
            max_depth: 16,
            max_fields: 1024,
        }
    }
}

/// The encodings leadscore reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// The `content-type` header value for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }

    /// Reads a `content-type` header (parameters such as `; charset=utf-8`
    /// are ignored).
    pub fn from_content_type(value: &str) -> Result<Encoding, DecodeError> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" | "application/vnd.segment+json" => Ok(Encoding::Json),
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => Ok(Encoding::Protobuf),
            _ => Err(DecodeError::UnsupportedContentType(value.to_string())),
        }
    }
}

/// Which flattened fields of a message the rules read, per section. The
/// decoder keeps only these: an event then costs no allocation for the
/// dozens of fields (library, user agent, campaign ids...) no rule looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldFilter {
    pub properties: Vec<String>,
    pub context: Vec<String>,
    pub traits: Vec<String>,
}

impl FieldFilter {
    /// The fields `rules` read, plus those the engine itself uses (`email`
    /// for `email_domain`, the explicit `account_id`, `context.groupId`).
    pub fn for_rules(rules: &crate::core::Rules) -> FieldFilter {
        use crate::core::rules::{EventField, EMAIL_DOMAIN_TRAIT};
        let mut f = FieldFilter::default();
        let add = |list: &mut Vec<String>, key: &str| {
            if !list.iter().any(|k| k == key) {
                list.push(key.to_string());
            }
        };
        let conditions = rules
            .engagement
            .iter()
            .flat_map(|r| &r.conditions)
            .chain(rules.lifecycle.iter().flat_map(|r| &r.conditions));
        {
            for c in conditions {
                match &c.field {
                    EventField::Property(k) => add(&mut f.properties, k),
                    EventField::Context(k) => add(&mut f.context, k),
                    EventField::Trait(k) => add(&mut f.traits, k),
                    EventField::Name => {}
                }
            }
        }
        for key in &rules.trait_keys {
            add(&mut f.traits, &key.name);
            if key.name == EMAIL_DOMAIN_TRAIT {
                add(&mut f.traits, "email");
            }
        }
        if let Some(accounts) = rules.accounts.as_deref() {
            // Group traits feed account fit; a work email may name the account.
            for key in &accounts.profile.trait_keys {
                add(&mut f.traits, &key.name);
            }
            if accounts.from_email_domain {
                add(&mut f.traits, "email");
                add(&mut f.traits, EMAIL_DOMAIN_TRAIT);
            }
        }
        add(&mut f.traits, "account_id");
        add(&mut f.properties, "account_id");
        add(&mut f.context, "groupId");
        if let Some(filters) = rules.filters.as_deref() {
            if filters.reads_user_agent() {
                add(&mut f.context, "userAgent");
            }
            if filters.reads_ip() {
                add(&mut f.context, "ip");
            }
        }
        // `context.traits.X` carries lead traits too.
        for t in f.traits.clone() {
            add(&mut f.context, &format!("traits.{t}"));
        }
        f
    }
}

/// Whether the flattened key `prefix.key` (just `key` at the top) is kept.
pub(crate) fn keeps(list: &[String], prefix: &str, key: &str) -> bool {
    list.iter().any(|k| rest_after(k, prefix, key) == Some(""))
}

/// Whether some kept key lies below `prefix.key`, so the object is worth
/// descending into.
pub(crate) fn keeps_below(list: &[String], prefix: &str, key: &str) -> bool {
    list.iter()
        .any(|k| rest_after(k, prefix, key).is_some_and(|rest| rest.starts_with('.')))
}

/// What follows `prefix.key` in `k`, if `k` starts with it.
fn rest_after<'k>(k: &'k str, prefix: &str, key: &str) -> Option<&'k str> {
    let rest = if prefix.is_empty() {
        k
    } else {
        k.strip_prefix(prefix)?.strip_prefix('.')?
    };
    rest.strip_prefix(key)
}

/// Turns message bytes into events: bounds on what a message may carry,
/// and (optionally) the fields to keep.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    pub limits: Limits,
    /// `None` keeps every field.
    pub keep: Option<FieldFilter>,
}

impl Decoder {
    /// Keeps every field: for tools and tests that look at whole events.
    pub fn keep_all() -> Decoder {
        Decoder::default()
    }

    /// Keeps what `rules` read.
    pub fn for_rules(rules: &crate::core::Rules) -> Decoder {
        Decoder {
            limits: Limits::default(),
            keep: Some(FieldFilter::for_rules(rules)),
        }
    }

    /// Decodes one message in the given encoding. A Segment `batch`
    /// envelope yields one result per item, so one bad item does not sink
    /// the others.
    pub fn decode(
        &self,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<Vec<Result<crate::core::Event, DecodeError>>, DecodeError> {
        if bytes.len() > self.limits.max_message_bytes {
            return Err(DecodeError::Oversized {
                size: bytes.len(),
                max: self.limits.max_message_bytes,
            });
        }
        let items = match encoding {
            Encoding::Json => segment::decode(bytes, self)?,
            Encoding::Protobuf => vec![Ok(proto::decode_event(bytes, self)?)],
        };
        Ok(items
            .into_iter()
            .map(|item| item.and_then(refuse_reserved_ids))
            .collect())
    }
}

/// Changelog keys of rules outline records (see `core::migration`) start
/// with this: a NUL, which no lead or account id may start with.
pub const OUTLINE_KEY_PREFIX: &str = "\u{0}leadscore-rules\u{0}";

/// The changelog key of the outline of the rules with `fingerprint`.
pub fn outline_key(fingerprint: &str) -> String {
    format!("{OUTLINE_KEY_PREFIX}{fingerprint}")
}

/// The erasure request a tombstone on the input topic makes: a record
/// with the lead id as its key and no value. Its time is the record's
/// timestamp (`at`); its message id, `erase:<key>:<ms>`, is what an `erase`
/// call must carry to ask the same with the same output ids.
pub fn erasure_request(key: &[u8], at: Option<Timestamp>) -> Result<Event, DecodeError> {
    let lead_id = std::str::from_utf8(key)
        .ok()
        .filter(|k| !k.trim().is_empty() && !k.starts_with('\0'))
        .ok_or(DecodeError::InvalidField {
            field: "key",
            reason: "a tombstone erases the lead its key names: a UTF-8 lead id".into(),
        })?;
    let at = at.ok_or(DecodeError::MissingField("timestamp"))?;
    Ok(Event::new(
        &format!("erase:{lead_id}:{}", at.millis()),
        lead_id,
        EventKind::Erase,
        at,
    ))
}

/// Changelog keys of remembered erasures start with this; the rest is the
/// erased identity's hash in hex (see `core::engine::identity_hash`), the
/// value the erasure's time in milliseconds as decimal text.
pub const ERASURE_KEY_PREFIX: &str = "\u{0}leadscore-erased\u{0}";

/// The changelog key of the erasure of the identity with `hash`.
pub fn erasure_key(hash: u64) -> String {
    format!("{ERASURE_KEY_PREFIX}{hash:016x}")
}

/// The hash an erasure key names, if `key` is one.
pub fn erasure_of_key(key: &str) -> Option<Result<u64, DecodeError>> {
    let hex = key.strip_prefix(ERASURE_KEY_PREFIX)?;
    Some(
        u64::from_str_radix(hex, 16).map_err(|_| DecodeError::InvalidField {
            field: "key",
            reason: format!("{hex:?} is not an identity hash"),
        }),
    )
}

/// Changelog keys that start with a NUL are leadscore's own (rules
/// outlines, erasures): no lead or account id may start with one.
fn refuse_reserved_ids(event: crate::core::Event) -> Result<crate::core::Event, DecodeError> {
    let reserved = |id: Option<&str>| id.is_some_and(|id| id.starts_with('\0'));
    for (field, id) in [
        ("userId", Some(event.lead_id.as_str())),
        ("groupId", event.account_id.as_deref()),
        ("previousId", event.previous_id.as_deref()),
    ] {
        if reserved(id) {
            return Err(DecodeError::InvalidField {
                field,
                reason: "an id may not start with a NUL character".to_string(),
            });
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_filters_match_whole_segments() {
        let list = vec!["page.path".to_string(), "ip".to_string()];
        assert!(keeps(&list, "", "ip"));
        assert!(keeps(&list, "page", "path"));
        assert!(!keeps(&list, "page", "pat"));
        assert!(!keeps(&list, "", "page"));
        assert!(keeps_below(&list, "", "page"));
        assert!(!keeps_below(&list, "", "pag"));
        assert!(!keeps_below(&list, "", "ip"));
        let deep = vec!["a.b.c".to_string()];
        assert!(keeps_below(&deep, "a", "b"));
        assert!(!keeps_below(&deep, "a", "c"));
        assert!(keeps(&deep, "a.b", "c"));
    }
}
