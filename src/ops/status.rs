//! What the processing loop shares with the HTTP side: liveness, readiness
//! and a queue of lead queries it answers between batches (so answers are
//! always committed state, and the loop owns its state alone).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Status {
    started: Instant,
    /// Milliseconds since `started` when the loop last came round.
    heartbeat_ms: AtomicU64,
    /// Milliseconds since `started` (at least 1) when batches began to
    /// fail without one committing since; 0 while they commit.
    failing_since_ms: AtomicU64,
    ready: AtomicBool,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }
}

impl Status {
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the loop last came round.
    pub fn since_beat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// A batch failed (and will be retried): the loop comes round, but
    /// makes no progress until one commits.
    pub fn batch_failed(&self) {
        let ms = (self.started.elapsed().as_millis() as u64).max(1);
        let _ = self
            .failing_since_ms
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn batch_committed(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long batches have failed with none committed since.
    pub fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        (since > 0).then(|| Duration::from_millis(now.saturating_sub(since)))
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        metrics::gauge!(super::metrics::READY).set(f64::from(u8::from(ready)));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// What a query asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Lead,
    Account,
}

/// A request for one lead's (or account's) current state.
pub struct LeadQuery {
    pub subject: Subject,
    pub lead_id: String,
    pub reply: tokio::sync::oneshot::Sender<LeadAnswer>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeadAnswer {
    /// The lead's state, as the query API's JSON body.
    Found(serde_json::Value),
    /// Its partition is assigned here, and no such lead exists.
    Unknown { partition: i32 },
    /// Its partition is assigned to another instance.
    Elsewhere { partition: i32, assigned: Vec<i32> },
    /// Partitions are still being assigned or restored.
    NotReady,
}
