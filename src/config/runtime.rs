//! The `[kafka]` and `[processing]` sections: where the stream processor
//! reads and writes, and how it commits. Every key can be overridden by an
//! environment variable `LEADSCORE_<SECTION>_<KEY>` (e.g.
//! `LEADSCORE_KAFKA_TRANSACTIONAL_ID`), so one file serves every instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers` for every client.
    #[serde(default = "default_bootstrap_servers")]
    pub bootstrap_servers: String,
    /// Consumer group: run more instances with the same group to scale out.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Stable per instance, so a restarted instance fences its dead
    /// predecessor at once. Default: `<group_id>-<HOSTNAME>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Static group membership (KIP-345): the consumer's
    /// `group.instance.id`, stable per instance and unique in the group, so
    /// an instance restarted after a crash takes its partitions straight
    /// back instead of waiting out its dead self's session; one gone for
    /// good still loses them after `session.timeout.ms`. Default: the
    /// transactional id (so setting that per instance sets both); `""`
    /// for dynamic membership.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Tracking events, keyed by lead id.
    #[serde(default = "default_input_topic")]
    pub input_topic: String,
    /// Score changes and threshold crossings.
    #[serde(default = "default_output_topic")]
    pub output_topic: String,
    /// Messages that could not be decoded or validated, with the reason.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Events `[filters]` kept out of scores, with the reason; none by
    /// default (they are only counted).
    #[serde(default)]
    pub filtered_topic: Option<String>,
    /// Compacted topic of lead state, partitioned like the input.
    #[serde(default = "default_changelog_topic")]
    pub changelog_topic: String,
    /// With `[accounts]`: leads' account updates, keyed by account id (an
    /// internal topic, partitioned like the input).
    #[serde(default = "default_account_updates_topic")]
    pub account_updates_topic: String,
    /// With `[accounts]`: compacted topic of account state, partitioned
    /// like the account updates.
    #[serde(default = "default_account_changelog_topic")]
    pub account_changelog_topic: String,
    /// Internal topic through which partitions hand each other the
    /// histories and later events of identities `alias` joined across
    /// partitions; partitioned like the input. Default:
    /// `<group_id>-identities`: internal to one consumer group, so a second
    /// group on the same input (new rules, say) keeps its own.
    #[serde(default)]
    pub identity_topic: Option<String>,
    /// How producers chose the input partition of a lead id:
    /// `murmur2_random` (Java clients, Kafka Connect) or `consistent_random`
    /// (librdkafka's default). Merges across partitions and the query API's
    /// answer for a lead held elsewhere depend on it.
    #[serde(default = "default_partitioner")]
    pub input_partitioner: Partitioner,
    /// Create missing topics at start-up (the changelog compacted, with the
    /// input's partition count).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions for an input topic created at start-up.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for topics created at start-up (-1: the broker's
    /// default).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Any librdkafka property, passed to every client (SASL, TLS,
    /// timeouts...). These win over leadscore's own settings.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        all_defaults()
    }
}

impl KafkaSettings {
    pub fn identity_topic(&self) -> String {
        self.identity_topic
            .clone()
            .unwrap_or_else(|| format!("{}-identities", self.group_id))
    }

    pub fn transactional_id(&self) -> String {
        self.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "0".to_string());
            format!("{}-{host}", self.group_id)
        })
    }

    /// A shadow of this deployment (`run --shadow`): the same input, and
    /// everything else its own: `-shadow` after the group, the output,
    /// dead-letter, filtered, changelog and account topics, and the
    /// explicit transactional, instance and identity-topic names (the
    /// defaults follow the group). It rebuilds state from the input's
    /// beginning without touching what the live deployment publishes.
    pub fn shadow(&mut self) {
        let shadow = |name: &mut String| name.push_str("-shadow");
        shadow(&mut self.group_id);
        shadow(&mut self.output_topic);
        shadow(&mut self.dead_letter_topic);
        shadow(&mut self.changelog_topic);
        shadow(&mut self.account_updates_topic);
        shadow(&mut self.account_changelog_topic);
        for name in [
            &mut self.filtered_topic,
            &mut self.transactional_id,
            &mut self.identity_topic,
        ] {
            if let Some(name) = name.as_mut() {
                shadow(name);
            }
        }
        if let Some(id) = self.group_instance_id.as_mut().filter(|id| !id.is_empty()) {
            shadow(id);
        }
    }

    /// `run --score NAME`: the group, changelogs, account and identity
    /// topics, transactional and instance ids get `-NAME` (the defaults
    /// follow the group); input, output, dead-letter and filtered topics
    /// are the file's.
    pub fn for_score(&mut self, name: &str) {
        let own = |id: &mut String| {
            id.push('-');
            id.push_str(name);
        };
        own(&mut self.group_id);
        own(&mut self.changelog_topic);
        own(&mut self.account_updates_topic);
        own(&mut self.account_changelog_topic);
        for id in [&mut self.transactional_id, &mut self.identity_topic] {
            if let Some(id) = id.as_mut() {
                own(id);
            }
        }
        if let Some(id) = self.group_instance_id.as_mut().filter(|id| !id.is_empty()) {
            own(id);
        }
    }

    /// The consumer's `group.instance.id`; `None` for dynamic membership.
    pub fn group_instance_id(&self) -> Option<String> {
        match &self.group_instance_id {
            Some(id) if id.is_empty() => None,
            Some(id) => Some(id.clone()),
            None => Some(self.transactional_id()),
        }
    }
}

fn default_bootstrap_servers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group_id() -> String {
    "leadscore".into()
}
fn default_input_topic() -> String {
    "tracking-events".into()
}
fn default_output_topic() -> String {
    "lead-scores".into()
}
fn default_dead_letter_topic() -> String {
    "leadscore-dead-letter".into()
}
fn default_account_updates_topic() -> String {
    "leadscore-account-updates".into()
}
fn default_account_changelog_topic() -> String {
    "leadscore-account-changelog".into()
}
fn default_changelog_topic() -> String {
    "leadscore-changelog".into()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    -1
}

/// Delivery guarantee of the stream processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs, changelog and offsets commit in one Kafka transaction.
    ExactlyOnce,
    /// No transactions (for brokers without them): outputs are acknowledged
    /// before the changelog, the changelog before the offsets; repeats keep
    /// their `event_id`.
    AtLeastOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    Json,
    Protobuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingSettings {
    #[serde(default = "default_guarantee")]
    pub guarantee: Guarantee,
    /// A batch closes after this long (or at `max_batch` messages).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Encoding of input messages without a `content-type` header.
    #[serde(default = "default_content_type")]
    pub default_content_type: String,
    #[serde(default = "default_output_encoding")]
    pub output_encoding: OutputEncoding,
    /// How long a transaction may stay open before the broker aborts it.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Longest accepted input message.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// What decay timers follow once a partition is read to its end.
    #[serde(default = "default_timer_clock")]
    pub timer_clock: TimerClock,
    /// The largest dead-letter record written (key, value and headers):
    /// a larger original value goes to the dead-letter topic truncated,
    /// with its size and SHA-256 in headers. Keep it under the producer's
    /// `message.max.bytes` and the dead-letter topic's `max.message.bytes`.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: usize,
    /// A batch that fails this many times in a row is retried one message
    /// at a time, and a message that fails alone this many times in a row
    /// is dead-lettered (reason `poison`) instead of retried forever.
    /// 0: retry forever.
    #[serde(default = "default_poison_after_attempts")]
    pub poison_after_attempts: u32,
    /// Stream threads in this process: each is a member of the consumer
    /// group with its own consumer, producer and transactional id
    /// (`<transactional_id>-<n>` when there are several), holding some of
    /// the partitions. One per core the instance is given.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

/// The clock that fires decay-driven changes (tier cool-downs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerClock {
    /// Event time while catching up, the wall clock once a partition is
    /// read to its end: a lead cools down on time even when no event comes.
    Wall,
    /// Always the partition's latest event time, never the wall clock: for
    /// backfills of historical events, where the wall clock would cool
    /// leads down before their later history arrives. Reproduces `replay`
    /// exactly; an idle partition then publishes no cool-downs.
    EventTime,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        all_defaults()
    }
}

fn default_dead_letter_max_bytes() -> usize {
    // librdkafka's message.max.bytes is 1,000,000.
    900_000
}
fn default_poison_after_attempts() -> u32 {
    5
}
fn default_threads() -> usize {
    1
}
fn default_guarantee() -> Guarantee {
    Guarantee::ExactlyOnce
}
fn default_commit_interval_ms() -> u64 {
    100
}
fn default_max_batch() -> usize {
    10_000
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_output_encoding() -> OutputEncoding {
    OutputEncoding::Json
}
fn default_transaction_timeout_ms() -> u64 {
    10_000
}
fn default_timer_clock() -> TimerClock {
    TimerClock::Wall
}
fn default_max_message_bytes() -> usize {
    256 * 1024
}

/// The `[http]` section: metrics, health and the query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/v1/...`; loopback
    /// by default. `"0.0.0.0:9464"` in a container. `""` turns it off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, `/v1/...` requires `Authorization: Bearer <token>`.
    /// Metrics and probes stay open.
    #[serde(default)]
    pub token: Option<String>,
    /// `/healthz` fails when the processing loop has not come round for
    /// this long.
    #[serde(default = "default_stuck_after_ms")]
    pub stuck_after_ms: u64,
    /// Connections served at once; one more is closed as soon as it is
    /// accepted. Each lives at most 30 s and must send its request headers
    /// within 5 s, so idle connections free their slots soon.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    256
}

impl Default for HttpSettings {
    fn default() -> Self {
        all_defaults()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    Murmur2Random,
    ConsistentRandom,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_partitioner() -> Partitioner {
    Partitioner::Murmur2Random
}
fn default_stuck_after_ms() -> u64 {
    120_000
}

/// The `[logging]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// `text` for people, `json` (one object per line) for log pipelines.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `leadscore=debug,rdkafka=warn`.
    /// `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        all_defaults()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

/// A section with every field at its serde default: what an absent
/// section means.
fn all_defaults<T: serde::de::DeserializeOwned>() -> T {
    toml::Value::Table(toml::Table::new())
        .try_into()
        .expect("every field has a default")
}

/// Applies `LEADSCORE_<SECTION>_<KEY>` variables to a section's raw table.
/// A value that reads as a TOML number, boolean or quoted string is taken
/// as such; anything else as a plain string.
pub(super) fn apply_env(
    section: &str,
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Vec<String> {
    let prefix = format!("LEADSCORE_{}_", section.to_ascii_uppercase());
    let mut applied = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(&prefix) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        table.insert(key, parsed);
        applied.push(name.clone());
    }
    applied
}
