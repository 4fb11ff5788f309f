//! Operating the stream processor: Prometheus metrics, health probes and
//! the query API, all served over HTTP beside the processing loop.

pub mod http;
pub mod metrics;
pub mod partitioner;
pub mod status;
