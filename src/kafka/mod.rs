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
mod poison;
mod processor;
mod records;
mod restore;

pub use processor::{run, Shutdown};

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// Waits until every record `producer` holds is delivered or has failed,
/// serving delivery reports meanwhile.
///
/// `rdkafka`'s own `flush` (and `commit_transaction`, which begins with
/// it) polls in fixed 100 ms slices whenever a record is still in flight,
/// so every flush cost at least 100 ms however fast the broker answered;
/// that was most of a batch's time in `leadscore run`. This one checks
/// again after each millisecond. Call it before `commit_transaction`: that
/// then finds nothing left to flush.
pub fn flush_promptly<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // A zero timeout only nudges librdkafka to send what lingers now.
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                producer.poll(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether librdkafka accepts every `[kafka.properties]` entry (names and
/// values), without connecting: `check` reports a typo before `run` would.
/// `Err` names the first entry refused, and why.
pub fn check_properties(kafka: &crate::config::KafkaSettings) -> Result<(), (String, String)> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    // One at a time, so the error names its entry; some properties are
    // judged only with the others (e.g. a mechanism and its credentials).
    for (key, value) in &kafka.properties {
        config.set(key, value);
        if let Err(e) = config.create_native_config() {
            return Err((key.clone(), format!("[kafka.properties] \"{key}\": {e}")));
        }
    }
    Ok(())
}
pub use records::headers;
