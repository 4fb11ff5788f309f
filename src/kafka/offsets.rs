//! What leadscore commits with an offset: the partition's event-time
//! watermark and the group generation it was committed in.

use std::collections::BTreeMap;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::core::Timestamp;

use super::clients::CLIENT_TIMEOUT;

/// Where a partition's processing resumes after a restore.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Resume {
    /// From the committed offset (or the first record, with no watermark
    /// yet, when nothing is committed), where the watermark was this.
    At(Option<Timestamp>),
    /// From the committed offset; its watermark was not recorded.
    Unknown,
}

/// What the group's committed offset of one topic-partition says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Committed {
    /// `None` when the group has committed nothing there.
    pub offset: Option<i64>,
    pub resume: Resume,
    /// The group generation it was committed in, where recorded.
    pub generation: Option<i32>,
}

const WATERMARK_METADATA: &str = "leadscore-watermark=";
const GENERATION_METADATA: &str = ";generation=";

/// The metadata committed with an offset: the partition's event-time
/// watermark, and the group generation it was committed in (a restarted
/// static member that finds its own generation took its partitions back
/// without a rebalance).
pub(super) fn commit_metadata(watermark: Option<Timestamp>, generation: Option<i32>) -> String {
    let mut metadata = WATERMARK_METADATA.to_string();
    if let Some(w) = watermark {
        metadata.push_str(&w.millis().to_string());
    }
    if let Some(g) = generation {
        metadata.push_str(&format!("{GENERATION_METADATA}{g}"));
    }
    metadata
}

fn parse_watermark_metadata(metadata: &str) -> Resume {
    let watermark = metadata
        .split_once(GENERATION_METADATA)
        .map_or(metadata, |(w, _)| w);
    match watermark.strip_prefix(WATERMARK_METADATA) {
        Some("") => Resume::At(None),
        Some(ms) => ms
            .parse()
            .map_or(Resume::Unknown, |ms| Resume::At(Some(Timestamp(ms)))),
        None => Resume::Unknown,
    }
}

fn parse_generation_metadata(metadata: &str) -> Option<i32> {
    metadata
        .split_once(GENERATION_METADATA)
        .and_then(|(_, g)| g.parse().ok())
}

/// What the group's committed offsets say about `partitions`.
pub(super) fn committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), Committed>> {
    let mut list = TopicPartitionList::new();
    for (topic, p) in partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(list, CLIENT_TIMEOUT)
        .context("cannot read committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let committed = match e.offset() {
                Offset::Offset(offset) => Committed {
                    offset: Some(offset),
                    resume: parse_watermark_metadata(e.metadata()),
                    generation: parse_generation_metadata(e.metadata()),
                },
                _ => Committed {
                    offset: None,
                    resume: Resume::At(None),
                    generation: None,
                },
            };
            ((e.topic().to_string(), e.partition()), committed)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_metadata_round_trips() {
        let at = Timestamp(1_764_547_200_123);
        for generation in [None, Some(0), Some(17)] {
            let with_time = commit_metadata(Some(at), generation);
            assert_eq!(parse_watermark_metadata(&with_time), Resume::At(Some(at)));
            assert_eq!(parse_generation_metadata(&with_time), generation);
            let without = commit_metadata(None, generation);
            assert_eq!(parse_watermark_metadata(&without), Resume::At(None));
            assert_eq!(parse_generation_metadata(&without), generation);
        }
        // As committed before generations were recorded.
        assert_eq!(
            parse_watermark_metadata("leadscore-watermark=1764547200123"),
            Resume::At(Some(at))
        );
        assert_eq!(
            parse_generation_metadata("leadscore-watermark=1764547200123"),
            None
        );
        assert_eq!(parse_watermark_metadata(""), Resume::Unknown);
        assert_eq!(
            parse_watermark_metadata("leadscore-watermark=soon"),
            Resume::Unknown
        );
    }
}
