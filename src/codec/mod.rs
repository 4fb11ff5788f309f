//! Wire formats at the edge: Segment-spec JSON and protobuf in, core
//! [`Event`](crate::core::Event)s out; core outputs to JSON or protobuf.
//! The core never sees serde_json or prost types.

pub mod output;
pub mod proto;
pub mod segment;

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

/// Decodes one message in the given encoding. A Segment `batch` envelope
/// yields one result per item, so one bad item does not sink the others.
pub fn decode(
    bytes: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<Vec<Result<crate::core::Event, DecodeError>>, DecodeError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::Oversized {
            size: bytes.len(),
            max: limits.max_message_bytes,
        });
    }
    match encoding {
        Encoding::Json => segment::decode(bytes, limits),
        Encoding::Protobuf => proto::decode_event(bytes, limits).map(|e| vec![Ok(e)]),
    }
}
