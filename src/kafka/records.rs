//! The records leadscore writes: outputs, dead letters, changelog entries.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use sha2::Digest as _;

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
    /// Filtered events: why they are not a person's (`user_agent`, ...).
    pub const FILTER_REASON: &str = "leadscore.filter.reason";
    /// Filtered events from a batch envelope: the 1-based item filtered.
    pub const FILTER_BATCH_ITEM: &str = "leadscore.filter.batch_item";
    /// Dead letters from a batch envelope: the 1-based item that failed.
    pub const DLQ_BATCH_ITEM: &str = "leadscore.dlq.batch_item";
    /// Dead letters too large to keep whole: what was cut (`value`, and
    /// `key` or `headers` where those alone were too large).
    pub const DLQ_TRUNCATED: &str = "leadscore.dlq.truncated";
    /// Truncated dead letters: the original value's length in bytes.
    pub const DLQ_ORIGINAL_BYTES: &str = "leadscore.dlq.original_bytes";
    /// Truncated dead letters: the original value's SHA-256, in hex.
    pub const DLQ_ORIGINAL_SHA256: &str = "leadscore.dlq.original_sha256";
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

/// Room kept in a dead letter for the reason headers and the record's own
/// framing; the reason text is cut to fit in it.
const DEAD_LETTER_OVERHEAD: usize = 4096;
const MAX_REASON_BYTES: usize = 2048;

/// What of an original message fits in a dead letter of `max_bytes`.
#[derive(Debug, PartialEq)]
pub(crate) struct Fitted<'m> {
    pub key: Option<&'m [u8]>,
    pub value: Option<&'m [u8]>,
    pub keep_headers: bool,
    /// Set when anything was cut: what, and the original value's length
    /// and SHA-256.
    pub truncated: Option<(String, usize, String)>,
}

/// Cuts an original message down to a dead letter of at most `max_bytes`,
/// so that the dead-letter path never fails for size: the key and the
/// original headers stay unless they alone take more than a quarter of
/// the room, and the value gets what is left.
pub(crate) fn fit_dead_letter<'m>(
    key: Option<&'m [u8]>,
    value: Option<&'m [u8]>,
    headers_bytes: usize,
    max_bytes: usize,
) -> Fitted<'m> {
    let room = max_bytes.saturating_sub(DEAD_LETTER_OVERHEAD);
    let mut cut = Vec::new();
    let key = key.map(|k| {
        if k.len() > room / 4 {
            cut.push("key");
            &k[..room / 4]
        } else {
            k
        }
    });
    let keep_headers = headers_bytes <= room / 4;
    if !keep_headers {
        cut.push("headers");
    }
    let left = room - key.map_or(0, <[u8]>::len) - if keep_headers { headers_bytes } else { 0 };
    let original = value;
    let value = value.map(|v| if v.len() > left { &v[..left] } else { v });
    if value.map(<[u8]>::len) != original.map(<[u8]>::len) {
        cut.insert(0, "value");
    }
    let truncated = (!cut.is_empty()).then(|| {
        let original = original.unwrap_or_default();
        let digest = sha2::Sha256::digest(original);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        (cut.join(","), original.len(), hex)
    });
    Fitted {
        key,
        value,
        keep_headers,
        truncated,
    }
}

/// The bytes of a message's headers, names and values.
pub(crate) fn headers_bytes(headers: Option<&impl Headers>) -> usize {
    headers.map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    })
}

/// The original headers (where they fit) plus the dead-letter headers.
pub(crate) fn dead_letter_headers(
    original: Option<&impl Headers>,
    dl: &DeadLetter<'_>,
    fitted: &Fitted<'_>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = original.filter(|_| fitted.keep_headers) {
        for h in original.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let mut reason_end = dl.reason.len().min(MAX_REASON_BYTES);
    while !dl.reason.is_char_boundary(reason_end) {
        reason_end -= 1;
    }
    let reason = &dl.reason[..reason_end];
    let partition = dl.partition.to_string();
    let offset = dl.offset.to_string();
    out = out
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(reason),
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
    if let Some((what, bytes, sha256)) = &fitted.truncated {
        let bytes = bytes.to_string();
        out = out
            .insert(Header {
                key: headers::DLQ_TRUNCATED,
                value: Some(what.as_str()),
            })
            .insert(Header {
                key: headers::DLQ_ORIGINAL_BYTES,
                value: Some(bytes.as_str()),
            })
            .insert(Header {
                key: headers::DLQ_ORIGINAL_SHA256,
                value: Some(sha256.as_str()),
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

/// A record's timestamp, if the producer or broker gave it one.
pub(crate) fn record_time(
    message: &impl rdkafka::message::Message,
) -> Option<crate::core::Timestamp> {
    message
        .timestamp()
        .to_millis()
        .filter(|ms| *ms > 0)
        .map(crate::core::Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_fits_whatever_the_original_size() {
        let value = vec![b'x'; 1_020_162];
        let key = b"lead-1".as_slice();
        let fitted = fit_dead_letter(Some(key), Some(&value), 40, 900_000);
        assert_eq!(fitted.key, Some(key));
        assert!(fitted.keep_headers);
        let kept = fitted.value.unwrap().len();
        assert_eq!(kept, 900_000 - DEAD_LETTER_OVERHEAD - key.len() - 40);
        let (what, bytes, sha256) = fitted.truncated.unwrap();
        assert_eq!((what.as_str(), bytes), ("value", 1_020_162));
        assert_eq!(sha256.len(), 64);
        // The digest is of the whole original (FIPS 180-2's "abc" vector).
        let fitted = fit_dead_letter(None, Some(b"abc".as_slice()), 0, DEAD_LETTER_OVERHEAD + 1);
        assert_eq!(fitted.value, Some(b"a".as_slice()));
        assert_eq!(
            fitted.truncated.unwrap().2,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        // Small messages go whole.
        let fitted = fit_dead_letter(Some(key), Some(b"{}".as_slice()), 40, 900_000);
        assert_eq!(fitted.value, Some(b"{}".as_slice()));
        assert_eq!(fitted.truncated, None);

        // A key or headers too large for the room are cut or dropped too.
        let huge_key = vec![b'k'; 500_000];
        let fitted = fit_dead_letter(Some(&huge_key), Some(&value), 400_000, 900_000);
        let total = fitted.key.unwrap().len() + fitted.value.unwrap().len();
        assert!(total <= 900_000 - DEAD_LETTER_OVERHEAD);
        assert!(!fitted.keep_headers);
        assert_eq!(fitted.truncated.unwrap().0, "value,key,headers");
    }
}
