//! Reading one side of `leadscore diff` from Kafka: a deployment's state
//! (its changelog, as a restore reads it) and what it published (its
//! output topic).

use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::admin::partition_count;
use super::clients::base_config;
use super::restore::read_to_end;
use crate::codec::proto::{decode_changelog, ChangelogValue};
use crate::config::Config;
use crate::core::engine::LeadSnapshot;
use crate::core::{Engine, Timestamp};
use crate::diff::PublishedOutput;

/// One deployment, as `diff` compares it.
pub struct Side {
    pub version: String,
    pub leads: Vec<LeadSnapshot>,
    pub outputs: Vec<PublishedOutput>,
}

/// The deployment `config` describes (its `[kafka]` topics, its rules), as
/// of `at`: every lead its changelog holds, decayed to `at`, and the
/// outputs its output topic holds (committed ones) of the score it runs
/// (the scores of a file of several publish to one topic).
pub fn read_side(config: &Config, at: Timestamp) -> anyhow::Result<Side> {
    let kafka = &config.kafka;
    let base = base_config(kafka);
    let rules = Arc::new(config.rules.clone());
    let stamp = rules.stamp();
    let mut engine = Engine::new(rules.clone());
    let changelog = &kafka.changelog_topic;
    let partitions = |topic: &str| -> anyhow::Result<Vec<i32>> {
        let n = partition_count(&base, topic)?
            .with_context(|| format!("topic {topic} does not exist"))?;
        Ok((0..n as i32).collect())
    };
    read_to_end(
        &base,
        changelog,
        &partitions(changelog)?,
        true,
        |partition, key, value, offset| {
            if key.starts_with('\0') {
                return Ok(()); // rules outlines, erasures
            }
            let Some(value) = value else {
                engine.forget_lead(key);
                return Ok(());
            };
            match decode_changelog(value)
                .with_context(|| format!("changelog {changelog}/{partition} offset {offset}"))?
            {
                ChangelogValue::Lead {
                    state,
                    rules: written,
                } => {
                    if !written.readable_by(&stamp) {
                        bail!(
                        "changelog {changelog} holds state scored by rules {:?}, not by {:?} of \
                         this file: give diff the file the deployment runs (a deployment re-scored \
                         in place writes its records again at its next restart)",
                        written.version,
                        stamp.version
                    );
                    }
                    engine.restore_lead(key, state);
                }
                ChangelogValue::AliasOf(target) => engine.restore_alias(key, &target),
            }
            Ok(())
        },
    )?;
    engine.advance(at);
    let leads = engine.snapshot(at);
    let score = config.running_score.as_ref().map(|s| s.name.as_str());
    let mut outputs = Vec::new();
    let output = &kafka.output_topic;
    read_to_end(
        &base,
        output,
        &partitions(output)?,
        true,
        |_, _, value, _| {
            let Some(value) = value else { return Ok(()) };
            let published = match serde_json::from_slice::<serde_json::Value>(value) {
                Ok(json) if json["score_name"].as_str() != score => return Ok(()),
                Ok(json) => PublishedOutput {
                    kind: json["type"].as_str().unwrap_or_default().to_string(),
                    tier: json["tier"].as_str().unwrap_or_default().to_string(),
                    direction: json["direction"].as_str().unwrap_or_default().to_string(),
                    at: json["at"]
                        .as_str()
                        .and_then(Timestamp::parse_rfc3339)
                        .unwrap_or(Timestamp(0)),
                },
                Err(_) => {
                    use prost::Message as _;
                    let Ok(event) = crate::codec::proto::wire::ScoreEvent::decode(value) else {
                        return Ok(()); // neither encoding: not an output of ours
                    };
                    if Some(event.score_name.as_str()).filter(|s| !s.is_empty()) != score {
                        return Ok(());
                    }
                    PublishedOutput {
                        kind: event.r#type,
                        tier: event.tier,
                        direction: event.direction,
                        at: Timestamp(event.at_ms),
                    }
                }
            };
            if published.kind.is_empty() {
                return Ok(());
            }
            outputs.push(published);
            Ok(())
        },
    )?;
    Ok(Side {
        version: rules.version.to_string(),
        leads,
        outputs,
    })
}
