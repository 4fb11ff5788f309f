//! `leadscore promote`: the live deployment hands its output topic over to
//! its shadow (new rules, `run --shadow`), partition by partition, exactly
//! once.
//!
//! Both deployments are stopped first. For each input partition the
//! cut-over offset is the further of the two groups' committed offsets;
//! each side is drained to it (processed up to it, and its identity and
//! account-update partitions to their ends), so that every input record
//! below the cut-over has its outputs from the old rules on the live topic
//! and every record from it on will have them from the new rules there.
//! One transaction then writes a handover record into both changelogs:
//! the shadow's says "promoted, publish to the live output topic", the
//! live's "retired" (a `run` that restores it refuses to start). The first
//! `run` of the promoted deployment (its configuration, as `promote` writes
//! it) publishes, per lead whose tier differs from the one the old rules
//! last published, a `threshold_crossed` from that tier to its own, in one
//! transaction with its changelog's "done" mark: a kill -9 anywhere
//! re-does a step from what was committed, with the same ids.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use serde::{Deserialize, Serialize};

use super::admin::partition_count;
use super::clients::{base_config, DeliveryContext, TransactionProducer, CLIENT_TIMEOUT};
use super::restore::read_to_end;
use super::{offsets, Reload, Shutdown};
use crate::codec::{HANDOVER_KEY, OUTLINE_KEY_PREFIX};
use crate::config::Config;
use crate::core::migration::{tier_under, RulesOutline, TierOutline};
use crate::core::output::Cause;
use crate::ops::status::Status;

/// The record a promotion writes into each partition of both changelogs,
/// under [`HANDOVER_KEY`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    pub role: Role,
    /// The deployment that published before the cut-over.
    pub live_group: String,
    pub live_changelog: String,
    /// The deployment that publishes from the cut-over on.
    pub promoted_group: String,
    /// The topic handed over.
    pub output_topic: String,
    /// Input partition to its cut-over offset.
    pub cut_over: BTreeMap<i32, i64>,
    /// In the promoted changelog: the cut-over crossings are published.
    #[serde(default)]
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Retired,
    Promoted,
}

impl Handover {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handover has only serializable fields")
    }

    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Handover> {
        serde_json::from_slice(bytes).context("unreadable handover record")
    }

    /// Why a `run` that restored this record (into a deployment
    /// publishing to `output_topic`) must not start; `None` when it may.
    pub fn refusal(&self, changelog: &str, output_topic: &str) -> Option<String> {
        match self.role {
            Role::Retired => Some(format!(
                "changelog {changelog} belongs to a retired deployment: `leadscore promote` \
                 handed its output topic {} over to group {} (cut-over offsets {:?}). Run the \
                 configuration promote wrote instead",
                self.output_topic, self.promoted_group, self.cut_over
            )),
            Role::Promoted if self.output_topic != output_topic => Some(format!(
                "changelog {changelog} was promoted to publish to {}, not {output_topic}: run \
                 the configuration `leadscore promote` wrote",
                self.output_topic
            )),
            Role::Promoted => None,
        }
    }
}

/// The handover records a task's restore found, by partition.
#[derive(Default)]
pub(super) struct Handovers(BTreeMap<i32, Handover>);

impl Handovers {
    /// Takes the record if it is a handover (`true`); other records are
    /// state for the caller.
    pub fn take(
        &mut self,
        (topic, partition, offset): (&str, i32, i64),
        key: &str,
        value: Option<&[u8]>,
    ) -> anyhow::Result<bool> {
        if key != HANDOVER_KEY {
            return Ok(false);
        }
        if let Some(value) = value {
            let handover = Handover::from_json(value)
                .with_context(|| format!("changelog {topic}/{partition} offset {offset}"))?;
            self.0.insert(partition, handover);
        }
        Ok(true)
    }

    /// Refuses a retired changelog, and a promoted one under another
    /// output topic.
    pub fn check(&self, topic: &str, output_topic: &str) -> anyhow::Result<()> {
        for (partition, handover) in &self.0 {
            if let Some(why) = handover.refusal(&format!("{topic}/{partition}"), output_topic) {
                bail!("{why}");
            }
        }
        Ok(())
    }

    /// The handover whose cut-over crossings `partition` still owes.
    pub fn owed(&self, partition: i32) -> Option<&Handover> {
        self.0.get(&partition).filter(|h| !h.done)
    }
}

impl Handover {
    /// Adds the cut-over crossings of `partition` (`crossings` of their
    /// cause, under the running rules' `fingerprint`) to what a restored
    /// task publishes first; returns this record marked done, to write
    /// with them.
    pub(super) fn cut_over(
        &self,
        (partition, fingerprint): (i32, &str),
        pending: &mut Option<Vec<crate::core::Output>>,
        crossings: impl FnOnce(&Cause) -> Vec<crate::core::Output>,
    ) -> Vec<u8> {
        let cause = Cause::RulesChanged(format!("{fingerprint}\x1fpromoted").into());
        let crossings = crossings(&cause);
        tracing::info!(
            partition,
            from = %self.live_group,
            crossings = crossings.len(),
            "promoted: publishing the cut-over crossings"
        );
        pending.get_or_insert_default().extend(crossings);
        Handover {
            done: true,
            ..self.clone()
        }
        .to_json()
    }
}

/// What a promotion did.
pub struct Promotion {
    pub cut_over: BTreeMap<i32, i64>,
    /// An earlier `promote` had already completed it.
    pub already_done: bool,
}

/// Promotes the shadow `shadow` (its configuration with the shadow's
/// names) over the deployment `live`, waiting up to `wait` for both
/// consumer groups to be empty (a member killed with static membership
/// stays until its session times out).
pub fn promote(
    live: (&Config, &Path),
    shadow: (&Config, &Path),
    wait: Duration,
) -> anyhow::Result<Promotion> {
    let (live, live_path) = live;
    let (shadow, shadow_path) = shadow;
    let base = base_config(&live.kafka);
    if live.kafka.input_topic != shadow.kafka.input_topic {
        bail!(
            "the live deployment reads {} and the shadow {}: a promotion hands over one input's \
             outputs",
            live.kafka.input_topic,
            shadow.kafka.input_topic
        );
    }
    let live_changelog = &live.kafka.changelog_topic;
    if let Some(done) = handover_of(&base, live_changelog)? {
        if done.role == Role::Retired && done.promoted_group == shadow.kafka.group_id {
            return Ok(Promotion {
                cut_over: done.cut_over,
                already_done: true,
            });
        }
        bail!(
            "{}",
            done.refusal(live_changelog, &live.kafka.output_topic)
                .unwrap_or_else(|| format!("changelog {live_changelog} was promoted already"))
        );
    }
    let input = &live.kafka.input_topic;
    let partitions = partition_count(&base, input)?
        .with_context(|| format!("input topic {input} does not exist"))?;
    let partitions: Vec<i32> = (0..partitions as i32).collect();
    for group in [&live.kafka.group_id, &shadow.kafka.group_id] {
        wait_until_empty(&base, group, wait)?;
    }
    let live_at = committed_input(&base, &live.kafka.group_id, input, &partitions)?;
    let shadow_at = committed_input(&base, &shadow.kafka.group_id, input, &partitions)?;
    let cut_over: BTreeMap<i32, i64> = partitions
        .iter()
        .map(|p| {
            let at = |side: &BTreeMap<i32, Option<i64>>| side.get(p).copied().flatten();
            (*p, at(&live_at).max(at(&shadow_at)).unwrap_or(0))
        })
        .collect();
    tracing::info!(
        ?cut_over,
        live = ?live_at,
        shadow = ?shadow_at,
        "cut-over offsets: each side is drained to them"
    );
    for (side, config, path) in [("live", live, live_path), ("shadow", shadow, shadow_path)] {
        drain(config, path, &cut_over).with_context(|| format!("draining the {side} side"))?;
        let reached = committed_input(&base, &config.kafka.group_id, input, &partitions)?;
        for (p, stop) in &cut_over {
            let at = reached.get(p).copied().flatten().unwrap_or(0);
            if at < *stop {
                bail!("the {side} side stopped at offset {at} of partition {p}, before the cut-over at {stop}");
            }
        }
    }
    let handover = |role, live_changelog: &String| Handover {
        role,
        live_group: live.kafka.group_id.clone(),
        live_changelog: live_changelog.clone(),
        promoted_group: shadow.kafka.group_id.clone(),
        output_topic: live.kafka.output_topic.clone(),
        cut_over: cut_over.clone(),
        done: false,
    };
    let mut promoted = vec![(
        shadow.kafka.changelog_topic.clone(),
        handover(Role::Promoted, live_changelog),
    )];
    let mut retired = vec![(
        live_changelog.clone(),
        handover(Role::Retired, live_changelog),
    )];
    // Accounts too, where both score them: the promoted account tasks
    // read the tiers the live ones last published.
    if live.rules.accounts.is_some() && shadow.rules.accounts.is_some() {
        let live_accounts = &live.kafka.account_changelog_topic;
        promoted.push((
            shadow.kafka.account_changelog_topic.clone(),
            handover(Role::Promoted, live_accounts),
        ));
        retired.push((
            live_accounts.clone(),
            handover(Role::Retired, live_accounts),
        ));
    }
    write_handover(
        &base,
        &format!("{}-promote", live.kafka.group_id),
        &promoted,
        &retired,
    )?;
    Ok(Promotion {
        cut_over,
        already_done: false,
    })
}

/// The handover record of `changelog`, if a promotion wrote one (it writes
/// one into every partition in one transaction; partition 0 is read).
fn handover_of(base: &rdkafka::ClientConfig, changelog: &str) -> anyhow::Result<Option<Handover>> {
    if partition_count(base, changelog)?.is_none() {
        return Ok(None);
    }
    let mut found = None;
    read_to_end(base, changelog, &[0], true, |_, key, value, _| {
        if key == HANDOVER_KEY {
            found = value.map(Handover::from_json).transpose()?;
        }
        Ok(())
    })?;
    Ok(found)
}

/// Waits until consumer group `group` has no members.
fn wait_until_empty(
    base: &rdkafka::ClientConfig,
    group: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let client: BaseConsumer = base.create().context("cannot create a group client")?;
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        let list = client
            .fetch_group_list(Some(group), CLIENT_TIMEOUT)
            .with_context(|| format!("cannot describe consumer group {group}"))?;
        let members: usize = list
            .groups()
            .iter()
            .filter(|g| g.name() == group)
            .map(|g| g.members().len())
            .sum();
        if members == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "consumer group {group} still has {members} member(s) after {} s: stop both \
                 deployments first (a member killed with static membership stays until its \
                 session.timeout.ms passes)",
                wait.as_secs()
            );
        }
        if !said {
            tracing::info!(
                group,
                members,
                "waiting for the group to empty (stop the deployment)"
            );
            said = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Group `group`'s committed offsets of `input`'s partitions.
fn committed_input(
    base: &rdkafka::ClientConfig,
    group: &str,
    input: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
    let mut config = base.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let client: BaseConsumer = config.create().context("cannot create a group client")?;
    let list: Vec<(String, i32)> = partitions.iter().map(|&p| (input.to_string(), p)).collect();
    Ok(offsets::committed(&client, &list)?
        .into_iter()
        .map(|((_, p), c)| (p, c.offset))
        .collect())
}

/// Runs the deployment `config` describes, on one stream thread, until
/// each input partition is processed up to `cut_over` and its internal
/// topics to their ends.
fn drain(config: &Config, path: &Path, cut_over: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.drain_to = Some(cut_over.clone());
    config.processing.threads = 1;
    let (_ask, queries) = std::sync::mpsc::sync_channel(1);
    super::run(
        &config,
        path,
        &Shutdown::default(),
        &Reload::default(),
        &Status::new(1),
        vec![queries],
    )
}

/// One transaction: each `promoted` record into every partition of its
/// changelog, then each `retired` one. Flushed in between, so that where
/// transactions leak a visible "retired" implies visible "promoted"s.
fn write_handover(
    base: &rdkafka::ClientConfig,
    transactional_id: &str,
    promoted: &[(String, Handover)],
    retired: &[(String, Handover)],
) -> anyhow::Result<()> {
    let mut config = base.clone();
    config
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true");
    let producer: TransactionProducer = config
        .create_with_context(DeliveryContext::default())
        .context("cannot create the handover producer")?;
    producer
        .init_transactions(CLIENT_TIMEOUT)
        .context("cannot initialise transactions")?;
    producer
        .begin_transaction()
        .context("cannot begin the handover transaction")?;
    for records in [promoted, retired] {
        for (topic, handover) in records {
            let partitions = partition_count(base, topic)?
                .with_context(|| format!("changelog {topic} does not exist"))?;
            let value = handover.to_json();
            for p in 0..partitions as i32 {
                let record = BaseRecord::to(topic)
                    .partition(p)
                    .key(HANDOVER_KEY)
                    .payload(&value);
                producer
                    .send(record)
                    .map_err(|(e, _)| e)
                    .with_context(|| format!("cannot write the handover to {topic}/{p}"))?;
            }
        }
        super::flush_promptly(&producer, CLIENT_TIMEOUT).context("cannot write the handover")?;
    }
    let (failures, last) = producer.context().take_failures();
    if failures > 0 {
        bail!(
            "{failures} handover records were not delivered: {}",
            last.unwrap_or_default()
        );
    }
    producer
        .commit_transaction(CLIENT_TIMEOUT)
        .context("cannot commit the handover")?;
    Ok(())
}

/// The tier the deployment whose changelog is `changelog` last published
/// for each lead (or account) of `partition`: its name, and where it lies
/// under `rules` (the running lead rules or account profile). `decode`
/// reads a state record's fingerprint and tier index (`None`: not a
/// state); the outline records beside the state name the tiers, which
/// `tiers_of` finds in an outline.
pub(super) fn published_tiers(
    (base, read_committed): (&rdkafka::ClientConfig, bool),
    (changelog, partition): (&str, i32),
    rules: &crate::core::Rules,
    tiers_of: impl Fn(&RulesOutline) -> Option<&Vec<TierOutline>>,
    decode: impl Fn(&[u8]) -> anyhow::Result<Option<(String, u8)>>,
) -> anyhow::Result<HashMap<String, (Arc<str>, usize)>> {
    let mut outlines: HashMap<String, RulesOutline> = HashMap::new();
    let mut tiers: HashMap<String, (String, u8)> = HashMap::new();
    read_to_end(
        base,
        changelog,
        &[partition],
        read_committed,
        |_, key, value, offset| {
            let at = || format!("changelog {changelog}/{partition} offset {offset}");
            if let Some(fingerprint) = key.strip_prefix(OUTLINE_KEY_PREFIX) {
                if let Some(value) = value {
                    let outline = RulesOutline::from_json(value).with_context(at)?;
                    outlines.insert(fingerprint.to_string(), outline);
                }
                return Ok(());
            }
            if key.starts_with('\0') {
                return Ok(());
            }
            match value.map(&decode).transpose().with_context(at)?.flatten() {
                Some(state) => {
                    tiers.insert(key.to_string(), state);
                }
                None => {
                    tiers.remove(key);
                }
            }
            Ok(())
        },
    )?;
    let mut named = HashMap::with_capacity(tiers.len());
    for (id, (fingerprint, tier)) in tiers {
        let tier = outlines
            .get(&fingerprint)
            .and_then(&tiers_of)
            .and_then(|tiers| tiers.get(usize::from(tier)))
            .with_context(|| {
                format!(
                    "changelog {changelog}/{partition} holds state of rules {fingerprint} with no \
                     outline of them: the tier published for {id} cannot be named"
                )
            })?;
        named.insert(id, (Arc::from(tier.name.as_str()), tier_under(tier, rules)));
    }
    Ok(named)
}
