//! The records leadscore writes: outputs, dead letters, changelog entries.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::codec::output::output_to_json;
use crate::codec::proto::encode_output;
use crate::config::OutputEncoding;
use crate::core::Output;

/// Header names on leadscore's records.
pub mod headers {
    /// Output type: `score_changed` or `threshold_crossed`.
    pub const EVENT_TYPE: &str = "event_type";
    /// The output's deterministic id: a repeat has the same one.
    pub const EVENT_ID: &str = "event_id";
    /// Encoding of the value (also read on input).
    pub const CONTENT_TYPE: &str = "content-type";
    /// Dead letters: why the message was not scored (human text).
    pub const DLQ_REASON: &str = "leadscore.dlq.reason";
    /// Dead letters: a short, stable reason code.
    pub const DLQ_REASON_CODE: &str = "leadscore.dlq.reason_code";
    pub const DLQ_SOURCE_TOPIC: &str = "leadscore.dlq.source_topic";
    pub const DLQ_SOURCE_PARTITION: &str = "leadscore.dlq.source_partition";
    pub const DLQ_SOURCE_OFFSET: &str = "leadscore.dlq.source_offset";
    /// Dead letters from a batch envelope: the 1-based item that failed.
    pub const DLQ_BATCH_ITEM: &str = "leadscore.dlq.batch_item";
}

pub(crate) fn output_value(output: &Output, encoding: OutputEncoding) -> Vec<u8> {
    match encoding {
        OutputEncoding::Json => output_to_json(output).into_bytes(),
        OutputEncoding::Protobuf => encode_output(output),
    }
}

pub(crate) fn output_headers(output: &Output, encoding: OutputEncoding) -> OwnedHeaders {
    let content_type = match encoding {
        OutputEncoding::Json => "application/json",
        OutputEncoding::Protobuf => "application/x-protobuf",
    };
    let id = output.event_id.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(output.kind.as_str()),
        })
        .insert(Header {
            key: headers::EVENT_ID,
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(content_type),
        })
}

/// Why a message goes to the dead-letter topic, and where it came from.
pub(crate) struct DeadLetter<'a> {
    pub reason_code: &'static str,
    pub reason: String,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub item: Option<usize>,
}

/// The original headers plus the dead-letter headers.
pub(crate) fn dead_letter_headers(
    original: Option<&impl Headers>,
    dl: &DeadLetter<'_>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = original {
        for h in original.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let partition = dl.partition.to_string();
    let offset = dl.offset.to_string();
    out = out
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(dl.reason.as_str()),
        })
        .insert(Header {
            key: headers::DLQ_REASON_CODE,
            value: Some(dl.reason_code),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_TOPIC,
            value: Some(dl.topic),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    if let Some(item) = dl.item {
        let item = item.to_string();
        out = out.insert(Header {
            key: headers::DLQ_BATCH_ITEM,
            value: Some(item.as_str()),
        });
    }
    out
}

/// Reads a header as text, by case-insensitive name.
pub(crate) fn header_text<'h>(headers: Option<&'h impl Headers>, name: &str) -> Option<&'h str> {
    headers?
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
