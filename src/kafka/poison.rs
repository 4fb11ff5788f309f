//! When a failed batch is retried, and when a message that keeps failing
//! is dead-lettered instead: a pure policy the processing loop consults.
//!
//! A batch that fails `attempts` times in a row is narrowed down: retried
//! in halves, the half that fails halved again at once, until the message
//! failing for reasons of its own (its outputs too large for their topic,
//! say) is alone, while the messages around it go through. A single
//! message that fails `attempts` times in a row is poison: its next attempt
//! dead-letters it (reason `poison`) instead of processing it, and the
//! rest goes on. Where every message fails (a topic the broker refuses to
//! write), each is dead-lettered in turn: with `attempts = 0` nothing is,
//! and the batch is retried until the broker accepts it.

/// A message's place: topic, partition, offset.
pub(crate) type Position = (String, i32, i64);

#[derive(Debug)]
pub(crate) struct Retries {
    attempts: u32,
    /// Failed attempts in a row.
    failures: u32,
    /// While narrowing down a failed batch: the most messages a batch may
    /// hold, and how many of the failed batch's messages are still to go.
    narrowing: Option<(usize, usize)>,
    /// The message to dead-letter on its next attempt, with why.
    poison: Option<(Position, String)>,
}

impl Retries {
    pub(crate) fn new(attempts: u32) -> Self {
        Retries {
            attempts,
            failures: 0,
            narrowing: None,
            poison: None,
        }
    }

    /// How many messages the next batch may hold.
    pub(crate) fn batch_limit(&self, max_batch: usize) -> usize {
        self.narrowing
            .map_or(max_batch, |(limit, _)| limit.min(max_batch))
    }

    /// A batch of the messages at `positions` failed with `error`.
    pub(crate) fn failed(&mut self, positions: &[Position], error: &str) {
        if self.attempts == 0 {
            return;
        }
        self.failures += 1;
        let half = positions.len().div_ceil(2).max(1);
        match (&mut self.narrowing, positions) {
            (None, _) => {
                if self.failures >= self.attempts {
                    self.failures = 0;
                    self.narrowing = Some((half, positions.len().max(1)));
                }
            }
            (Some(_), [alone]) => {
                if self.failures >= self.attempts {
                    self.failures = 0;
                    self.poison = Some((
                        alone.clone(),
                        format!(
                            "processing failed {} times in a row: {error}",
                            self.attempts
                        ),
                    ));
                }
            }
            // Already known to fail: one more failure halves it again.
            (Some((limit, _)), _) => {
                self.failures = 0;
                *limit = half;
            }
        }
    }

    /// A batch of the messages at `positions` committed.
    pub(crate) fn committed<'a>(
        &mut self,
        positions: impl ExactSizeIterator<Item = (&'a str, i32, i64)>,
    ) {
        self.failures = 0;
        if let Some((_, left)) = &mut self.narrowing {
            *left = left.saturating_sub(positions.len());
            if *left == 0 {
                self.narrowing = None;
            }
        }
        if let Some(((topic, partition, offset), _)) = &self.poison {
            let mut positions = positions;
            if positions.any(|(t, p, o)| t == topic && p == *partition && o == *offset) {
                // Dead-lettered in this batch: the culprit is found, and
                // the rest of the failed batch goes in whole batches again
                // (a second culprit is narrowed down in its turn).
                self.poison = None;
                self.narrowing = None;
            }
        }
    }

    /// Why the message at `position` is to be dead-lettered, if it is.
    pub(crate) fn poison(&self, topic: &str, partition: i32, offset: i64) -> Option<&str> {
        self.poison
            .as_ref()
            .filter(|((t, p, o), _)| t == topic && *p == partition && *o == offset)
            .map(|(_, reason)| reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Position {
        ("in".to_string(), 0, offset)
    }

    fn batch(offsets: std::ops::Range<i64>) -> Vec<Position> {
        offsets.map(at).collect()
    }

    fn commit(r: &mut Retries, positions: &[Position]) {
        r.committed(positions.iter().map(|(t, p, o)| (t.as_str(), *p, *o)));
    }

    /// Runs batches over offsets `0..n` where `bad` always fails, as the
    /// loop would (each batch as large as the policy allows, a failed one
    /// retried from its start); returns what was dead-lettered and the
    /// failed attempts.
    fn run(r: &mut Retries, n: i64, bad: i64, max_batch: usize) -> (Vec<i64>, usize) {
        let (mut next, mut dead, mut failures) = (0, Vec::new(), 0);
        while next < n {
            let size = r.batch_limit(max_batch) as i64;
            let positions = batch(next..(next + size).min(n));
            let fails = positions
                .iter()
                .any(|(t, p, o)| *o == bad && r.poison(t, *p, *o).is_none());
            if fails {
                failures += 1;
                assert!(failures < 100, "no end to the retries");
                r.failed(&positions, "too large");
            } else {
                dead.extend(
                    positions
                        .iter()
                        .filter(|(t, p, o)| r.poison(t, *p, *o).is_some())
                        .map(|p| p.2),
                );
                commit(r, &positions);
                next += positions.len() as i64;
            }
        }
        (dead, failures)
    }

    #[test]
    fn a_failing_batch_is_narrowed_to_its_culprit_which_alone_is_dead_lettered() {
        let mut r = Retries::new(3);
        let (dead, failures) = run(&mut r, 1000, 637, 1000);
        assert_eq!(dead, [637]);
        // 3 of the whole batch, one per halving, 3 of the culprit alone.
        assert!(failures <= 3 + 10 + 3, "{failures} failed attempts");
        assert_eq!(r.batch_limit(1000), 1000, "back to whole batches");
    }

    #[test]
    fn the_culprit_is_found_wherever_it_is() {
        for bad in [0, 1, 2, 499, 500, 998, 999] {
            let mut r = Retries::new(2);
            assert_eq!(run(&mut r, 1000, bad, 300).0, [bad], "culprit at {bad}");
        }
    }

    #[test]
    fn a_batch_that_fails_fewer_times_than_attempts_is_retried_whole() {
        let mut r = Retries::new(3);
        let whole = batch(0..10);
        r.failed(&whole, "timeout");
        r.failed(&whole, "timeout");
        commit(&mut r, &whole);
        r.failed(&whole, "timeout");
        assert_eq!(r.batch_limit(500), 500);
        assert_eq!(r.poison("in", 0, 0), None);
    }

    #[test]
    fn zero_attempts_retries_forever() {
        let mut r = Retries::new(0);
        for _ in 0..100 {
            r.failed(&[at(1)], "refused");
        }
        assert_eq!(r.batch_limit(500), 500);
        assert_eq!(r.poison("in", 0, 1), None);
    }
}
