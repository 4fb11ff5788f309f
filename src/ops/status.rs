//! What the processing loop shares with the HTTP side: liveness, readiness
//! and a queue of lead queries it answers between batches (so answers are
//! always committed state, and the loop owns its state alone).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The health of the stream threads, each in its own slot: the process is
/// live while every thread comes round, and ready when every thread has
/// its partitions restored.
pub struct Status {
    started: Instant,
    threads: Vec<ThreadStatus>,
}

#[derive(Default)]
struct ThreadStatus {
    /// Milliseconds since `started` when the loop last came round.
    heartbeat_ms: AtomicU64,
    /// Milliseconds since `started` (at least 1) when batches began to
    /// fail without one committing since; 0 while they commit.
    failing_since_ms: AtomicU64,
    ready: AtomicBool,
    /// The client call the thread is inside, if any, and since when
    /// (milliseconds since `started`).
    call: Mutex<Option<(&'static str, u64)>>,
    /// What the thread holds, for the process-wide gauges.
    leads: AtomicU64,
    accounts: AtomicU64,
    partitions: AtomicU64,
}

impl Default for Status {
    fn default() -> Self {
        Status::new(1)
    }
}

/// What one stream thread holds, summed over threads into the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub leads: usize,
    pub accounts: usize,
    pub partitions: usize,
}

impl Status {
    pub fn new(threads: usize) -> Self {
        Status {
            started: Instant::now(),
            threads: (0..threads.max(1))
                .map(|_| ThreadStatus::default())
                .collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn beat(&self, thread: usize) {
        self.threads[thread]
            .heartbeat_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the slowest thread last came round.
    pub fn since_beat(&self) -> Duration {
        let now = self.now_ms();
        let oldest = self
            .threads
            .iter()
            .map(|t| t.heartbeat_ms.load(Ordering::Relaxed))
            .min()
            .unwrap_or(now);
        Duration::from_millis(now.saturating_sub(oldest))
    }

    /// A batch failed (and will be retried): the loop comes round, but
    /// makes no progress until one commits.
    pub fn batch_failed(&self, thread: usize) {
        let ms = self.now_ms().max(1);
        let _ = self.threads[thread].failing_since_ms.compare_exchange(
            0,
            ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn batch_committed(&self, thread: usize) {
        self.threads[thread]
            .failing_since_ms
            .store(0, Ordering::Relaxed);
    }

    /// How long batches have failed, on the thread failing longest, with
    /// none committed there since.
    pub fn failing_for(&self) -> Option<Duration> {
        let now = self.now_ms();
        self.threads
            .iter()
            .map(|t| t.failing_since_ms.load(Ordering::Relaxed))
            .filter(|&since| since > 0)
            .min()
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
    }

    /// Marks `thread` as inside the client call `name` until the guard
    /// is dropped (see [`Status::overdue_call`]).
    pub fn calling(&self, thread: usize, name: &'static str) -> InCall<'_> {
        let slot = &self.threads[thread];
        *slot.call.lock().unwrap_or_else(|e| e.into_inner()) = Some((name, self.now_ms()));
        InCall { slot }
    }

    /// A client call that has gone on longer than `limit`, on the thread
    /// inside one longest: its name and how long.
    pub fn overdue_call(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        let now = self.now_ms();
        self.threads
            .iter()
            .filter_map(|t| *t.call.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|(name, since)| (name, Duration::from_millis(now.saturating_sub(since))))
            .filter(|(_, for_)| *for_ > limit)
            .max_by_key(|(_, for_)| *for_)
    }

    pub fn set_ready(&self, thread: usize, ready: bool) {
        self.threads[thread].ready.store(ready, Ordering::Relaxed);
        metrics::gauge!(super::metrics::READY).set(f64::from(u8::from(self.is_ready())));
    }

    pub fn is_ready(&self) -> bool {
        self.threads.iter().all(|t| t.ready.load(Ordering::Relaxed))
    }

    /// Records what `thread` holds and sets the process-wide gauges.
    pub fn set_held(&self, thread: usize, held: Held) {
        let slot = &self.threads[thread];
        slot.leads.store(held.leads as u64, Ordering::Relaxed);
        slot.accounts.store(held.accounts as u64, Ordering::Relaxed);
        slot.partitions
            .store(held.partitions as u64, Ordering::Relaxed);
        let sum = |of: fn(&ThreadStatus) -> &AtomicU64| -> f64 {
            self.threads
                .iter()
                .map(|t| of(t).load(Ordering::Relaxed))
                .sum::<u64>() as f64
        };
        metrics::gauge!(super::metrics::LEADS).set(sum(|t| &t.leads));
        metrics::gauge!(super::metrics::ACCOUNTS).set(sum(|t| &t.accounts));
        metrics::gauge!(super::metrics::PARTITIONS).set(sum(|t| &t.partitions));
    }
}

/// A thread inside a client call (see [`Status::calling`]); dropping it
/// ends the call.
pub struct InCall<'a> {
    slot: &'a ThreadStatus,
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        *self.slot.call.lock().unwrap_or_else(|e| e.into_inner()) = None;
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

impl LeadAnswer {
    /// The answer of the process from the answers of its stream threads:
    /// the thread holding the lead's partition knows it; the others say
    /// where it belongs. A process that runs several scores has a thread
    /// that knows it per score: their answers come as a list, in the
    /// order of the threads (the scores' order in the file).
    pub fn combine(answers: Vec<LeadAnswer>) -> LeadAnswer {
        let mut found = Vec::new();
        let mut combined: Option<LeadAnswer> = None;
        for answer in answers {
            if let LeadAnswer::Found(body) = answer {
                found.push(body);
                continue;
            }
            combined = Some(match (combined, answer) {
                (None, answer) => answer,
                (Some(LeadAnswer::Found(_)), _) | (_, LeadAnswer::Found(_)) => {
                    unreachable!("found answers are collected apart")
                }
                (Some(LeadAnswer::NotReady), _) | (_, LeadAnswer::NotReady) => LeadAnswer::NotReady,
                (Some(unknown @ LeadAnswer::Unknown { .. }), _)
                | (_, unknown @ LeadAnswer::Unknown { .. }) => unknown,
                (
                    Some(LeadAnswer::Elsewhere {
                        partition,
                        mut assigned,
                    }),
                    LeadAnswer::Elsewhere { assigned: more, .. },
                ) => {
                    assigned.extend(more);
                    assigned.sort_unstable();
                    assigned.dedup();
                    LeadAnswer::Elsewhere {
                        partition,
                        assigned,
                    }
                }
            });
        }
        match found.len() {
            0 => combined.unwrap_or(LeadAnswer::NotReady),
            1 => LeadAnswer::Found(found.remove(0)),
            _ => LeadAnswer::Found(serde_json::Value::Array(found)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elsewhere(partition: i32, assigned: &[i32]) -> LeadAnswer {
        LeadAnswer::Elsewhere {
            partition,
            assigned: assigned.to_vec(),
        }
    }

    #[test]
    fn the_thread_holding_the_partition_answers_for_the_process() {
        let found = LeadAnswer::Found(serde_json::json!({"lead_id": "a"}));
        for answers in [
            vec![elsewhere(3, &[0, 1]), found.clone()],
            vec![found.clone(), elsewhere(3, &[0, 1])],
            vec![LeadAnswer::Unknown { partition: 2 }, found.clone()],
        ] {
            assert_eq!(LeadAnswer::combine(answers), found);
        }
        assert_eq!(
            LeadAnswer::combine(vec![
                elsewhere(2, &[0, 1]),
                LeadAnswer::Unknown { partition: 2 }
            ]),
            LeadAnswer::Unknown { partition: 2 }
        );
        assert_eq!(
            LeadAnswer::combine(vec![elsewhere(5, &[1, 0]), elsewhere(5, &[3, 2])]),
            elsewhere(5, &[0, 1, 2, 3])
        );
        assert_eq!(
            LeadAnswer::combine(vec![LeadAnswer::NotReady, elsewhere(5, &[1])]),
            LeadAnswer::NotReady
        );
        assert_eq!(LeadAnswer::combine(vec![]), LeadAnswer::NotReady);
        // Several scores: one answer per score, in order.
        let other = LeadAnswer::Found(serde_json::json!({"lead_id": "a", "score_name": "b"}));
        assert_eq!(
            LeadAnswer::combine(vec![
                found.clone(),
                LeadAnswer::Unknown { partition: 2 },
                other
            ]),
            LeadAnswer::Found(serde_json::json!([
                {"lead_id": "a"},
                {"lead_id": "a", "score_name": "b"}
            ]))
        );
    }

    #[test]
    fn the_process_is_ready_and_live_only_when_every_thread_is() {
        let status = Status::new(2);
        assert!(!status.is_ready());
        status.set_ready(0, true);
        assert!(!status.is_ready());
        status.set_ready(1, true);
        assert!(status.is_ready());
        assert_eq!(status.failing_for(), None);
        status.batch_failed(1);
        assert!(status.failing_for().is_some());
        status.batch_committed(1);
        assert_eq!(status.failing_for(), None);
    }

    #[test]
    fn a_call_is_overdue_only_while_it_lasts_past_the_limit() {
        let status = Status::new(2);
        let limit = Duration::from_millis(30);
        let call = status.calling(1, "commit_transaction");
        assert_eq!(status.overdue_call(limit), None);
        std::thread::sleep(Duration::from_millis(60));
        let (name, for_) = status.overdue_call(limit).expect("overdue");
        assert_eq!(name, "commit_transaction");
        assert!(for_ >= Duration::from_millis(60));
        drop(call);
        assert_eq!(status.overdue_call(limit), None);
    }
}
