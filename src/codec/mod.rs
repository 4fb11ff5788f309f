//! Wire formats at the edge: Segment-spec JSON and protobuf in, core
//! [`Event`](crate::core::Event)s out; core outputs to JSON or protobuf.
//! The core never sees serde_json or prost types.

pub mod account;
pub mod identity;
pub mod output;
pub mod proto;
pub mod segment;
mod state_writer;

use foldhash::HashMap;

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
    pub properties: KeptKeys,
    pub context: KeptKeys,
    pub traits: KeptKeys,
}

impl FieldFilter {
    /// The fields `rules` read, plus those the engine itself uses (`email`
    /// for `email_domain`, the explicit `account_id`, `context.groupId`).
    pub fn for_rules(rules: &crate::core::Rules) -> FieldFilter {
        use crate::core::rules::{EventField, EMAIL_DOMAIN_TRAIT};
        let mut f = FieldFilter::default();
        let conditions = rules
            .engagement
            .iter()
            .flat_map(|r| &r.conditions)
            .chain(rules.lifecycle.iter().flat_map(|r| &r.conditions));
        {
            for c in conditions {
                match &c.field {
                    EventField::Property(k) => f.properties.add(k),
                    EventField::Context(k) => f.context.add(k),
                    EventField::Trait(k) => f.traits.add(k),
                    EventField::Name => {}
                }
            }
        }
        for key in &rules.trait_keys {
            f.traits.add(&key.name);
            if key.name == EMAIL_DOMAIN_TRAIT {
                f.traits.add("email");
            }
        }
        if let Some(accounts) = rules.accounts.as_deref() {
            // Group traits feed account fit; a work email may name the account.
            for key in &accounts.profile.trait_keys {
                f.traits.add(&key.name);
            }
            if accounts.from_email_domain {
                f.traits.add("email");
                f.traits.add(EMAIL_DOMAIN_TRAIT);
            }
        }
        f.traits.add("account_id");
        f.properties.add("account_id");
        f.context.add("groupId");
        if let Some(filters) = rules.filters.as_deref() {
            if filters.reads_user_agent() {
                f.context.add("userAgent");
            }
            if filters.reads_ip() {
                f.context.add("ip");
            }
        }
        // `context.traits.X` carries lead traits too.
        for t in f.traits.list.clone() {
            f.context.add(&format!("traits.{t}"));
        }
        f
    }
}

/// The flattened keys of one section to keep. The decoder asks, for every
/// key of a message, whether `prefix.key` is kept or leads to something
/// kept: a lookup by the two parts as they come, with nothing joined and
/// no scan of the list (which cost a tenth of `replay` on traits-heavy
/// traffic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeptKeys {
    /// In the order added.
    pub list: Vec<String>,
    /// By prefix ("" at the top), then key: for every `prefix.key` that
    /// is a kept key (`true`) or a dotted start of one (`false`), at every
    /// dot where the two parts may meet.
    by_prefix: HashMap<Box<str>, HashMap<Box<str>, bool>>,
}

impl KeptKeys {
    pub fn add(&mut self, key: &str) {
        if self.list.iter().any(|k| k == key) {
            return;
        }
        self.list.push(key.to_string());
        let ends = key
            .match_indices('.')
            .map(|(i, _)| i)
            .chain(std::iter::once(key.len()));
        for end in ends {
            let joined = &key[..end];
            let whole = end == key.len();
            let splits = joined.match_indices('.').map(|(i, _)| i);
            for (prefix, rest) in std::iter::once(("", joined))
                .chain(splits.map(|i| (&joined[..i], &joined[i + 1..])))
            {
                let entry = self
                    .by_prefix
                    .entry(prefix.into())
                    .or_default()
                    .entry(rest.into())
                    .or_insert(false);
                *entry |= whole;
            }
        }
    }

    /// Whether the flattened key `prefix.key` (just `key` at the top) is
    /// kept.
    pub fn keeps(&self, prefix: &str, key: &str) -> bool {
        self.lookup(prefix, key) == Some(true)
    }

    /// Whether `prefix.key` is kept or some kept key lies below it.
    pub fn wants(&self, prefix: &str, key: &str) -> bool {
        self.lookup(prefix, key).is_some()
    }

    /// Whether the whole flattened key `path` is kept.
    pub fn keeps_path(&self, path: &str) -> bool {
        self.keeps("", path)
    }

    fn lookup(&self, prefix: &str, key: &str) -> Option<bool> {
        self.by_prefix.get(prefix)?.get(key).copied()
    }
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
        Decoder::for_scores(std::slice::from_ref(rules))
    }

    /// A decoder that keeps what any of a file's scores reads.
    pub fn for_scores(scores: &[crate::core::Rules]) -> Decoder {
        let mut keep = FieldFilter::default();
        for rules in scores {
            let one = FieldFilter::for_rules(rules);
            for (mine, theirs) in [
                (&mut keep.properties, &one.properties),
                (&mut keep.context, &one.context),
                (&mut keep.traits, &one.traits),
            ] {
                for key in &theirs.list {
                    mine.add(key);
                }
            }
        }
        Decoder {
            limits: Limits::default(),
            keep: Some(keep),
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

/// The changelog key of the record `leadscore promote` writes into every
/// partition of both deployments' changelogs (see `kafka::promote`).
pub const HANDOVER_KEY: &str = "\u{0}leadscore-handover\u{0}";

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
        let mut kept = KeptKeys::default();
        kept.add("page.path");
        kept.add("ip");
        assert!(kept.keeps("", "ip"));
        assert!(kept.keeps("page", "path"));
        assert!(kept.keeps_path("page.path"));
        assert!(!kept.keeps("page", "pat"));
        assert!(!kept.keeps("", "page"));
        assert!(kept.wants("", "page"));
        assert!(!kept.wants("", "pag"));
        assert!(kept.wants("", "ip"));
        assert!(!kept.wants("", "i"));
        let mut deep = KeptKeys::default();
        deep.add("a.b.c");
        assert!(deep.wants("a", "b"));
        assert!(!deep.keeps("a", "b"));
        assert!(!deep.wants("a", "c"));
        assert!(deep.keeps("a.b", "c"));
        // A literal dotted key at the top reads the same as nested objects.
        assert!(deep.keeps("", "a.b.c"));
        assert!(deep.keeps("a", "b.c"));
        assert!(deep.wants("", "a.b"));
        assert!(!deep.wants("a.b.c", "d"));
    }

    /// The lookups answer what a scan of the list answers, for every
    /// split of every key and of its starts.
    #[test]
    fn kept_keys_agree_with_a_scan_of_the_list() {
        let list = [
            "page.path",
            "ip",
            "company.size.band",
            "company",
            "a.b",
            "traits.email",
        ];
        let mut kept = KeptKeys::default();
        for k in list {
            kept.add(k);
        }
        let probes = [
            "",
            "page",
            "page.path",
            "page.pat",
            "ip",
            "i",
            "company",
            "company.size",
            "company.size.band",
            "company.size.band.x",
            "a",
            "a.b",
            "a.b.c",
            "traits",
            "traits.email",
            "x.y",
        ];
        for joined in probes {
            let splits = std::iter::once(("", joined)).chain(
                joined
                    .match_indices('.')
                    .map(|(i, _)| (&joined[..i], &joined[i + 1..])),
            );
            for (prefix, key) in splits {
                let scan_keeps = list.contains(&joined);
                let scan_below = list
                    .iter()
                    .any(|k| k.strip_prefix(joined).is_some_and(|r| r.starts_with('.')));
                assert_eq!(kept.keeps(prefix, key), scan_keeps, "{prefix:?} {key:?}");
                assert_eq!(
                    kept.wants(prefix, key),
                    scan_keeps || scan_below,
                    "{prefix:?} {key:?}"
                );
            }
        }
    }
}
