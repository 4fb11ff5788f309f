//! History in, one row per decided lead out: the lead's outcome and what
//! each rule gave it at its decision time, replayed with the live engine.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::sync::Arc;

use crate::codec::{DecodeError, Decoder, Encoding};
use crate::core::{Event, Rules, Timestamp};
use crate::replay::{for_each_line, Replayer};

/// One message of a history as its source decoded it: the events it holds
/// (a batch holds several, each accepted or not), or why it was rejected
/// whole.
pub type Message = Result<Vec<Result<Event, DecodeError>>, String>;

/// Where a history's events come from: a file, a topic. `calibrate` reads
/// it more than once, and every pass must see the same messages in the
/// same order.
pub trait EventSource {
    /// How much one pass reads, in the units `read` reports progress in
    /// (bytes of a file, records of a topic).
    fn size(&self) -> u64;

    /// Hands every message, decoded by `decoder`, to `each` in order, and
    /// tells `progress` how much has been read so far.
    fn read(
        &mut self,
        decoder: &Decoder,
        each: &mut dyn FnMut(Message),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), HistoryError>;
}

/// Segment JSON lines, opened afresh by `open` for every pass.
pub struct JsonLines<F> {
    open: F,
    size: u64,
}

impl<F, R> JsonLines<F>
where
    F: FnMut() -> std::io::Result<R>,
    R: BufRead,
{
    /// `size`: the bytes one pass reads (for progress; 0 if unknown).
    pub fn new(open: F, size: u64) -> Self {
        JsonLines { open, size }
    }
}

impl<F, R> EventSource for JsonLines<F>
where
    F: FnMut() -> std::io::Result<R>,
    R: BufRead,
{
    fn size(&self) -> u64 {
        self.size
    }

    fn read(
        &mut self,
        decoder: &Decoder,
        each: &mut dyn FnMut(Message),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), HistoryError> {
        let input = (self.open)()?;
        let mut read = 0u64;
        for_each_line(input, |_, line, bytes| {
            read += bytes as u64;
            progress(read);
            each(line.and_then(|line| {
                decoder
                    .decode(line.as_bytes(), Encoding::Json)
                    .map_err(|e| e.to_string())
            }));
        })?;
        Ok(())
    }
}

/// One lead's known result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub lead_id: String,
    pub converted: bool,
    /// When the lead was judged (e.g. handed to sales). Later events are
    /// left out: they would leak the outcome into the score.
    pub decided_at: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("outcomes: {0}")]
    Csv(#[from] csv::Error),
    #[error("outcomes: no `{0}` column (expected lead_id,converted[,decided_at])")]
    MissingColumn(&'static str),
    #[error("outcomes line {line}: {reason}")]
    BadOutcome { line: u64, reason: String },
    #[error("outcomes: lead {0} is listed twice")]
    DuplicateLead(String),
    #[error("outcomes: no leads")]
    NoOutcomes,
    #[error(
        "no outcomes in the events: no lifecycle rule with `outcome` matched (add [[lifecycle]] \
         rules that record \"won\" and \"lost\", or pass --outcomes CSV)"
    )]
    NoOutcomesInEvents,
    #[error("cannot read events: {0}")]
    Events(#[from] std::io::Error),
    #[error("cannot read events: {0}")]
    Source(String),
}

/// Reads `lead_id,converted[,decided_at]`. `converted` is 1/0, true/false,
/// yes/no or won/lost; `decided_at` is RFC 3339 or empty.
pub fn read_outcomes(input: impl Read) -> Result<Vec<Outcome>, HistoryError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader.headers()?.clone();
    let column = |name: &'static str| headers.iter().position(|h| h == name);
    let id_column = column("lead_id").ok_or(HistoryError::MissingColumn("lead_id"))?;
    let converted_column = column("converted").ok_or(HistoryError::MissingColumn("converted"))?;
    let decided_column = column("decided_at");
    let mut outcomes = Vec::new();
    let mut seen = HashMap::new();
    for record in reader.records() {
        let record = record?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |reason: String| HistoryError::BadOutcome { line, reason };
        let lead_id = record.get(id_column).unwrap_or("").to_string();
        if lead_id.is_empty() {
            return Err(bad("empty lead_id".into()));
        }
        let text = record.get(converted_column).unwrap_or("");
        let converted = match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "won" | "converted" => true,
            "0" | "false" | "no" | "lost" => false,
            _ => {
                return Err(bad(format!(
                    "converted is {text:?}; use 1/0, true/false, yes/no or won/lost"
                )))
            }
        };
        let decided_at = match decided_column.and_then(|c| record.get(c)) {
            None | Some("") => None,
            Some(text) => Some(
                Timestamp::parse_rfc3339(text)
                    .ok_or_else(|| bad(format!("decided_at {text:?} is not an RFC 3339 time")))?,
            ),
        };
        if seen.insert(lead_id.clone(), ()).is_some() {
            return Err(HistoryError::DuplicateLead(lead_id));
        }
        outcomes.push(Outcome {
            lead_id,
            converted,
            decided_at,
        });
    }
    if outcomes.is_empty() {
        return Err(HistoryError::NoOutcomes);
    }
    Ok(outcomes)
}

/// The outcomes that lifecycle rules (`outcome = "won"` / `"lost"`)
/// recorded over `events`, one per lead that has one (its latest), in lead
/// id order. Each lead's decision time is just before the disposition that
/// recorded it: the disposition and anything later (sales' own activity)
/// would leak the outcome into the score.
pub fn outcomes_from_events(
    rules: &Rules,
    events: &mut dyn EventSource,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Outcome>, HistoryError> {
    let mut replayer = Replayer::new(rules, false);
    let decoder = Decoder::for_rules(rules);
    let mut each = |message: Message| {
        for event in message.into_iter().flatten().flatten() {
            let _ = replayer.feed(&event, &mut |_| {});
        }
    };
    events.read(&decoder, &mut each, progress)?;
    let at = replayer.watermark().unwrap_or(Timestamp::from_millis(0));
    let outcomes: Vec<Outcome> = replayer
        .engine()
        .snapshot(at)
        .into_iter()
        .filter_map(|lead| {
            let outcome = lead.lifecycle?.outcome?;
            Some(Outcome {
                lead_id: lead.lead_id,
                converted: outcome.converted,
                decided_at: Some(outcome.at.saturating_sub_ms(1)),
            })
        })
        .collect();
    if outcomes.is_empty() {
        return Err(HistoryError::NoOutcomesInEvents);
    }
    Ok(outcomes)
}

/// What a rule measures for a lead: a fit rule matched (1) or not (0); an
/// engagement rule's decayed, capped hits (its points divided by the
/// rule's points), so a new point value scales it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Fit(usize),
    Engagement(usize),
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub rule: Arc<str>,
    pub measure: Measure,
    /// The rule's points in the rules replayed.
    pub points: f64,
}

/// The features of a rule set: every fit rule, and every engagement rule
/// with non-zero points (with zero, its hits cannot be told from none).
pub fn features_of(rules: &Rules) -> Vec<Feature> {
    let fit = rules.fit.iter().enumerate().map(|(i, r)| Feature {
        rule: r.name.clone(),
        measure: Measure::Fit(i),
        points: r.points,
    });
    let engagement = rules
        .engagement
        .iter()
        .enumerate()
        .filter(|(_, r)| r.points != 0.0)
        .map(|(i, r)| Feature {
            rule: r.name.clone(),
            measure: Measure::Engagement(i),
            points: r.points,
        });
    fit.chain(engagement).collect()
}

#[derive(Debug, Clone)]
pub struct LeadRow {
    pub lead_id: String,
    pub converted: bool,
    pub decided_at: Timestamp,
    /// One value per feature, in [`History::features`] order.
    pub values: Vec<f64>,
    /// As the engine scored it at `decided_at`.
    pub score: f64,
    pub fit: f64,
    /// The highest tier the score and gates reach (no hysteresis history).
    pub tier: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    /// Events of a decided lead after its decision time, left out.
    pub after_decision: u64,
    /// Leads in the outcomes with no event at all (scored as empty).
    pub leads_without_events: usize,
    /// Leads scored at the default decision time, having none of their own.
    pub leads_without_decision_time: usize,
}

#[derive(Debug, Clone)]
pub struct History {
    pub features: Vec<Feature>,
    pub leads: Vec<LeadRow>,
    pub stats: HistoryStats,
    /// The decision time of leads without their own.
    pub default_decided_at: Timestamp,
}

/// Replays `events` under `rules` and measures every lead in `outcomes`
/// at its decision time (its own, else `at`, else the latest event time).
/// `progress` is told how much has been read so far.
pub fn replay_history(
    rules: &Rules,
    events: &mut dyn EventSource,
    outcomes: &[Outcome],
    at: Option<Timestamp>,
    progress: &mut dyn FnMut(u64),
) -> Result<History, HistoryError> {
    let decided: HashMap<&str, Option<Timestamp>> = outcomes
        .iter()
        .map(|o| (o.lead_id.as_str(), o.decided_at.or(at)))
        .collect();
    let mut replayer = Replayer::new(rules, false);
    let decoder = Decoder::for_rules(rules);
    let mut stats = HistoryStats::default();
    let mut each = |message: Message| {
        stats.lines += 1;
        let Ok(items) = message else {
            stats.rejected += 1;
            return;
        };
        for item in items {
            let Ok(event) = item else {
                stats.rejected += 1;
                continue;
            };
            stats.events += 1;
            let lead = replayer.engine().resolve(&event.lead_id);
            let too_late = decided
                .get(lead)
                .copied()
                .flatten()
                .is_some_and(|d| event.timestamp > d);
            if too_late {
                stats.after_decision += 1;
                continue;
            }
            if replayer.feed(&event, &mut |_| {}).is_err() {
                stats.rejected += 1;
            }
        }
    };
    events.read(&decoder, &mut each, progress)?;
    let default_decided_at = at
        .or(replayer.watermark())
        .unwrap_or(Timestamp::from_millis(0));

    let features = features_of(rules);
    let engine = replayer.engine();
    let rules = engine.rules().clone();
    let mut leads = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        stats.leads_without_decision_time += usize::from(outcome.decided_at.is_none());
        let decided_at = outcome.decided_at.unwrap_or(default_decided_at);
        let mut values = vec![0.0; features.len()];
        // With any identities merged in by `alias`.
        let state = engine
            .lead(engine.resolve(&outcome.lead_id))
            .map(|lead| lead.view(&rules));
        let (score, fit, tier) = match state {
            None => {
                stats.leads_without_events += 1;
                let score = rules.clamp(rules.settings.base);
                let grade = rules.grades.grade(0.0);
                let bits = |key: usize| rules.absent_trait_bits(key);
                (score, 0.0, rules.next_tier(0, score, grade, &bits))
            }
            Some(state) => {
                let fit = state.fit(&rules);
                let engagement = state.engagement_by_rule(&rules, decided_at);
                for (value, feature) in values.iter_mut().zip(&features) {
                    *value = match feature.measure {
                        Measure::Fit(i) => {
                            f64::from(u8::from(fit.matched.iter().any(|&m| usize::from(m) == i)))
                        }
                        Measure::Engagement(i) => engagement
                            .iter()
                            .find(|(rule, _)| *rule == i)
                            .map_or(0.0, |(_, points)| points / feature.points),
                    };
                }
                let eval = state.evaluate_with(&rules, &fit, decided_at);
                let bits = |key: usize| fit.bits(key);
                let tier = rules.next_tier(0, eval.score, eval.grade, &bits);
                (eval.score, eval.fit, tier)
            }
        };
        leads.push(LeadRow {
            lead_id: outcome.lead_id.clone(),
            converted: outcome.converted,
            decided_at,
            values,
            score,
            fit,
            tier,
        });
    }
    Ok(History {
        features,
        leads,
        stats,
        default_decided_at,
    })
}
