//! The Kafka edge: the stream processor (`leadscore run`), its changelog
//! restore, topic set-up and the records it writes.
//!
//! Delivery guarantees, and where they stop holding:
//!
//! - `exactly_once` (default): per batch, one Kafka transaction holds the
//!   outputs, the dead-letter records, the changelog records of every lead
//!   the batch touched and the consumer offsets (KIP-447, with the group's
//!   metadata). On brokers with full transaction support a `read_committed`
//!   subscriber sees every output once, across crashes and rebalances.
//! - On any broker, transactions or not (`at_least_once`), state stays
//!   exact: a lead remembers the highest input offset applied to it, so a
//!   redelivered event is never applied twice; outputs are acknowledged
//!   before the changelog records of their batch are sent, so a visible
//!   changelog record implies its outputs are visible too. Repeated outputs
//!   carry the same deterministic `event_id` and content.
//! - The same holds for the identity topic, through which partitions hand
//!   each other the histories of identities `alias` joined across
//!   partitions (see [`crate::core::handoff`]): a handoff seen twice, or
//!   from an aborted transaction, is recognised by the position it covers.

mod admin;
mod processor;
mod records;
mod restore;

pub use processor::{run, Shutdown};

/// Whether librdkafka accepts every `[kafka.properties]` entry (names and
/// values), without connecting: `check` reports a typo before `run` would.
pub fn check_properties(kafka: &crate::config::KafkaSettings) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
        .create_native_config()
        .map(|_| ())
        .map_err(|e| format!("[kafka.properties]: {e}"))
}
pub use records::headers;
