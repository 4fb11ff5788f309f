//! `leadscore replay`: the live engine over a file of events, with event
//! time as the clock. A backtest, a what-if of a rules change, and the
//! reference the stream processor's outputs are checked against.
//!
//! The clock is the watermark, the latest event time read so far: before
//! each event, decay timers due by then fire, exactly as they would in the
//! live processor. Lateness is not enforced unless asked for, since a file
//! may be in any order; dedup then remembers every message id.

use std::io::BufRead;
use std::sync::Arc;

use crate::codec::{Decoder, Encoding};
use crate::core::account::{AccountEngine, AccountSnapshot};
use crate::core::engine::LeadSnapshot;
use crate::core::{Engine, Event, Outcome, Output, OutputKind, Rejection, Rules, Timestamp};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub lines: u64,
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub score_changes: u64,
    pub crossings: u64,
    pub lifecycle_changes: u64,
    /// Leads erased (`lead_erased` outputs).
    pub erasures: u64,
    /// Events dropped because their lead was erased after their time.
    pub dropped_erased: u64,
    /// Events `[filters]` kept out of scores, by reason.
    pub filtered: std::collections::BTreeMap<&'static str, u64>,
}

/// A line (or batch item) that did not become a scored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    pub line: u64,
    /// 1-based item within a batch envelope, when the line was one.
    pub item: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for RejectedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.item {
            Some(item) => write!(f, "line {} item {}: {}", self.line, item, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

pub struct Replayer {
    /// One per score of the rules file, in file order; each sees every
    /// event and answers to its own rules alone.
    scorers: Vec<Scorer>,
    watermark: Option<Timestamp>,
    /// `--at`: the replay's "now". Events further past it than the rules'
    /// `max_future_skew` are rejected, as the live processor rejects events
    /// from beyond its wall clock, so that one bad timestamp cannot move
    /// the clock past it.
    until: Option<Timestamp>,
    decoder: Decoder,
    pub stats: ReplayStats,
}

/// One score's engines.
struct Scorer {
    engine: Engine,
    /// When the rules score accounts: fed the lead engine's updates at once
    /// (the stream processor will route them through a topic instead).
    accounts: Option<AccountEngine>,
}

impl Scorer {
    /// Hands the lead engine's account updates to the account engine.
    fn route_account_updates(&mut self, stats: &mut ReplayStats, emit: &mut dyn FnMut(&Output)) {
        let updates = self.engine.take_account_updates();
        let Some(accounts) = self.accounts.as_mut() else {
            return;
        };
        for update in &updates {
            for output in accounts.apply(update) {
                stats.count(&output);
                emit(&output);
            }
        }
    }

    /// Fires lead and account decay due by `now`.
    fn advance(&mut self, now: Timestamp, stats: &mut ReplayStats, emit: &mut dyn FnMut(&Output)) {
        let accounts = self.accounts.as_mut().map(|a| a.advance(now));
        for output in self
            .engine
            .advance(now)
            .iter()
            .chain(accounts.iter().flatten())
        {
            stats.count(output);
            emit(output);
        }
    }
}

impl Replayer {
    /// `enforce_lateness`: reject events older than the rules' allowed
    /// lateness behind the watermark, as the live processor would.
    pub fn new(rules: &Rules, enforce_lateness: bool) -> Self {
        Replayer::of_scores(std::slice::from_ref(rules), enforce_lateness)
    }

    /// A replay of every score of a rules file (`[[scores]]`), each as a
    /// replay of a file holding only it would score it: outputs of one
    /// event come score by score, in file order.
    pub fn of_scores(scores: &[Rules], enforce_lateness: bool) -> Self {
        assert!(!scores.is_empty(), "a rules file holds at least one score");
        let scorers = scores
            .iter()
            .map(|rules| {
                let mut rules = rules.clone();
                if !enforce_lateness {
                    // Any age is accepted, so every message id must be
                    // remembered for a late copy to be recognised: offline,
                    // memory allows it.
                    rules.settings.allowed_lateness_ms = None;
                    rules.settings.dedup_window_ms = i64::MAX;
                    rules.settings.dedup_max_ids = usize::MAX;
                }
                let rules = Arc::new(rules);
                Scorer {
                    accounts: AccountEngine::new(rules.clone()),
                    engine: Engine::new(rules),
                }
            })
            .collect();
        Replayer {
            scorers,
            watermark: None,
            until: None,
            decoder: Decoder::for_scores(scores),
            stats: ReplayStats::default(),
        }
    }

    /// Replays up to `at`: events more than the allowed future skew past
    /// it are rejected as too far in the future; those within the skew are
    /// applied (and the snapshot is then as of the latest of them).
    pub fn until(mut self, at: Timestamp) -> Self {
        self.until = Some(at);
        self
    }

    /// The lead engine of the file's first score.
    pub fn engine(&self) -> &Engine {
        &self.scorers[0].engine
    }

    /// The account engine of the file's first score.
    pub fn accounts(&self) -> Option<&AccountEngine> {
        self.scorers[0].accounts.as_ref()
    }

    /// Every account's state at `at`, score by score (none without account
    /// rules); call after [`Replayer::finish`] for tiers that include
    /// decay up to `at`.
    pub fn account_snapshot(&self, at: Timestamp) -> Vec<AccountSnapshot> {
        self.scorers
            .iter()
            .filter_map(|s| s.accounts.as_ref())
            .flat_map(|a| a.snapshot(at))
            .collect()
    }

    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    /// Decodes and applies one line of JSON; outputs go to `emit`, lines or
    /// items that are not scored to `reject`.
    pub fn feed_line(
        &mut self,
        line_number: u64,
        line: &str,
        emit: &mut dyn FnMut(&Output),
        reject: &mut dyn FnMut(RejectedLine),
    ) {
        self.stats.lines += 1;
        let decoded = match self.decoder.decode(line.as_bytes(), Encoding::Json) {
            Ok(items) => items,
            Err(e) => {
                self.stats.rejected += 1;
                reject(RejectedLine {
                    line: line_number,
                    item: None,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let batch = decoded.len() > 1;
        for (index, item) in decoded.into_iter().enumerate() {
            let item_number = batch.then_some(index + 1);
            match item {
                Ok(event) => {
                    if let Err(reason) = self.feed(&event, emit) {
                        reject(RejectedLine {
                            line: line_number,
                            item: item_number,
                            reason,
                        });
                    }
                }
                Err(e) => {
                    self.stats.rejected += 1;
                    reject(RejectedLine {
                        line: line_number,
                        item: item_number,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Applies one event at the watermark; `Err` carries a rejection reason.
    /// The event counts in the statistics as the first score took it (the
    /// others share its identity, dedup and lateness settings, so take it
    /// alike, unless a velocity filter watches rules they score apart).
    pub fn feed(&mut self, event: &Event, emit: &mut dyn FnMut(&Output)) -> Result<(), String> {
        self.stats.events += 1;
        if let Some(until) = self.until {
            let allowed_ms = self.engine().rules().settings.max_future_skew_ms;
            let ahead_ms = event.timestamp.millis().saturating_sub(until.millis());
            if ahead_ms > allowed_ms {
                self.stats.rejected += 1;
                return Err(format!(
                    "{} (--at {until})",
                    Rejection::TooFarInFuture {
                        ahead_ms,
                        allowed_ms
                    }
                ));
            }
        }
        let now = self
            .watermark
            .map_or(event.timestamp, |w| w.max(event.timestamp));
        self.watermark = Some(now);
        let mut first = None;
        for scorer in &mut self.scorers {
            scorer.advance(now, &mut self.stats, emit);
            let outcome = scorer.engine.apply(event, now);
            let outputs = match &outcome {
                Outcome::Applied(outputs) | Outcome::Filtered { outputs, .. } => &outputs[..],
                _ => &[],
            };
            for output in outputs {
                self.stats.count(output);
                emit(output);
            }
            scorer.route_account_updates(&mut self.stats, emit);
            first.get_or_insert(outcome);
        }
        match first.expect("at least one score") {
            Outcome::Applied(_) => {
                self.stats.applied += 1;
                Ok(())
            }
            Outcome::Duplicate | Outcome::AlreadyApplied => {
                self.stats.duplicates += 1;
                Ok(())
            }
            Outcome::Erased => {
                self.stats.dropped_erased += 1;
                Ok(())
            }
            Outcome::Filtered { reason, .. } => {
                *self.stats.filtered.entry(reason.as_str()).or_default() += 1;
                Ok(())
            }
            Outcome::HandedOff => unreachable!("one engine holds every lead in a replay"),
            Outcome::Rejected(r) => {
                self.stats.rejected += 1;
                Err(r.to_string())
            }
        }
    }

    /// Fires decay up to `at` (default: the watermark) and returns every
    /// lead's state as of then, score by score. `at` before the watermark
    /// is an error: the state already includes later events.
    pub fn finish(
        &mut self,
        at: Option<Timestamp>,
        emit: &mut dyn FnMut(&Output),
    ) -> Result<(Timestamp, Vec<LeadSnapshot>), String> {
        // Events within the allowed skew past `until` were applied.
        let at = at.map(|at| match self.watermark {
            Some(w) if self.until == Some(at) => at.max(w),
            _ => at,
        });
        let at = match (at, self.watermark) {
            (Some(at), Some(w)) if at < w => {
                return Err(format!(
                    "--at {at} is before the latest event time {w}; it must not be earlier"
                ))
            }
            (Some(at), _) => at,
            (None, Some(w)) => w,
            (None, None) => return Ok((Timestamp(0), Vec::new())),
        };
        let mut leads = Vec::new();
        for scorer in &mut self.scorers {
            scorer.advance(at, &mut self.stats, emit);
            // Leads that expired by then leave their accounts, as they do
            // before every later event.
            scorer.route_account_updates(&mut self.stats, emit);
            leads.extend(scorer.engine.snapshot(at));
        }
        Ok((at, leads))
    }
}

impl ReplayStats {
    fn count(&mut self, output: &Output) {
        match output.kind {
            OutputKind::ScoreChanged => self.score_changes += 1,
            OutputKind::ThresholdCrossed => self.crossings += 1,
            OutputKind::LifecycleChanged | OutputKind::LeadExpired => self.lifecycle_changes += 1,
            OutputKind::LeadErased => self.erasures += 1,
        }
    }
}

/// Runs a whole JSON-lines input through a [`Replayer`]; a line that is
/// not UTF-8 is rejected like any bad line, and the replay goes on.
pub fn replay_lines<R: BufRead>(
    replayer: &mut Replayer,
    input: R,
    emit: &mut dyn FnMut(&Output),
    reject: &mut dyn FnMut(RejectedLine),
) -> std::io::Result<()> {
    for_each_line(input, |number, line, _| match line {
        Ok(line) => replayer.feed_line(number, line, emit, reject),
        Err(reason) => {
            replayer.stats.lines += 1;
            replayer.stats.rejected += 1;
            reject(RejectedLine {
                line: number,
                item: None,
                reason,
            });
        }
    })
}

/// Reads `input` line by line as bytes, so that a line that is not UTF-8
/// is that line's problem rather than the end of the file: `each` gets
/// the line's 1-based number, its text without the line ending (or why it
/// has none) and the bytes it took. Blank lines are skipped.
pub fn for_each_line<R: BufRead>(
    mut input: R,
    mut each: impl FnMut(u64, Result<&str, String>, usize),
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut number = 0u64;
    loop {
        buffer.clear();
        let read = input.read_until(b'\n', &mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let bytes = buffer
            .strip_suffix(b"\n")
            .map_or(&buffer[..], |b| b.strip_suffix(b"\r").unwrap_or(b));
        match std::str::from_utf8(bytes) {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => each(number, Ok(line), read),
            Err(e) => each(
                number,
                Err(format!(
                    "not UTF-8 (invalid byte at column {})",
                    e.valid_up_to() + 1
                )),
                read,
            ),
        }
    }
}
