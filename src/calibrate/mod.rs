//! `leadscore calibrate`: weights and thresholds from a lead history.
//!
//! The history is replayed with the live engine, so each rule's share of a
//! lead's score at its decision time is exactly what production would have
//! computed; a logistic regression over those shares says how much each
//! rule is worth; the result is written back as a rules file and replayed
//! again, so the report describes the file, not an approximation of it.

pub mod history;
pub mod logistic;
pub mod measure;
pub mod report;
pub mod suggest;

use std::path::Path;

use crate::config::ConfigError;
use crate::config::{parse_scores, score_named};
use crate::core::{Rules, Timestamp};
use history::{replay_history, EventSource, History, HistoryError, Measure, Outcome};
use logistic::FitOptions;
use suggest::{CrossValidation, Suggestion, Thresholds, WriteError};

#[derive(Debug, Clone)]
pub struct Options {
    pub folds: usize,
    pub fit: FitOptions,
    /// Version for the suggested rules; default `<current>-calibrated`.
    pub version: Option<String>,
    /// Decision time for leads whose outcome has none.
    pub at: Option<Timestamp>,
    pub target_precision: Option<f64>,
    pub capacity: Option<usize>,
    /// The score to calibrate, of a file with several (`[[scores]]`).
    pub score: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            folds: 5,
            fit: FitOptions::default(),
            version: None,
            at: None,
            target_precision: None,
            capacity: None,
            score: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Rules(#[from] ConfigError),
    #[error("{0}")]
    Score(String),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("cannot write the suggested rules: {0}")]
    Write(#[from] WriteError),
    #[error("the suggested rules do not pass `check` (a leadscore bug): {0}")]
    Suggested(ConfigError),
    #[error("calibration needs converted and unconverted leads; the outcomes have {converted} converted of {leads}")]
    OneClass { leads: usize, converted: usize },
    #[error(
        "--folds must be at least 2 and at most the number of leads in the smaller class ({0})"
    )]
    Folds(usize),
}

/// One rule set's scores of the decided leads.
#[derive(Debug, Clone)]
pub struct Scored {
    pub version: String,
    pub scores: Vec<f64>,
    pub tiers: Vec<usize>,
    pub tier_names: Vec<String>,
    pub tier_minimums: Vec<f64>,
    pub auc: f64,
}

impl Scored {
    fn of(rules: &Rules, history: &History) -> Scored {
        let scores: Vec<f64> = history.leads.iter().map(|l| l.score).collect();
        let labels: Vec<bool> = history.leads.iter().map(|l| l.converted).collect();
        Scored {
            version: rules.version.to_string(),
            auc: measure::auc(&scores, &labels).unwrap_or(0.5),
            scores,
            tiers: history.leads.iter().map(|l| l.tier).collect(),
            tier_names: rules.tiers.iter().map(|t| t.name.to_string()).collect(),
            tier_minimums: rules.tiers.iter().map(|t| t.min_score).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Calibration {
    pub history: History,
    pub labels: Vec<bool>,
    pub current: Scored,
    /// The suggested rules file, replayed.
    pub suggested: Scored,
    pub suggestion: Suggestion,
    pub thresholds: Thresholds,
    pub cross_validation: CrossValidation,
    /// The suggested rules file's text.
    pub suggested_rules: String,
    /// Largest gap between the scores the model's points predict and the
    /// scores the written file replays to (rounding of caps only).
    pub max_replay_gap: f64,
    pub options: Options,
}

/// What `calibrate` reports as it goes (for a progress bar).
pub enum Progress {
    /// How much of the events replay `pass` has read (1: current rules,
    /// 2: suggested), in [`EventSource::size`]'s units.
    Replay { pass: u8, done: u64 },
    /// Cross-validation folds done.
    Folds { done: usize, of: usize },
}

/// The rules of the score to calibrate: the file's only one, or the one
/// `score` names.
pub fn score_of(
    rules_source: &str,
    rules_path: &Path,
    score: Option<&str>,
) -> Result<Rules, CalibrateError> {
    let scores = parse_scores(rules_source, rules_path)?;
    Ok(score_named(scores, score).map_err(CalibrateError::Score)?.1)
}

pub fn calibrate(
    rules_source: &str,
    rules_path: &Path,
    events: &mut dyn EventSource,
    outcomes: &[Outcome],
    options: Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibration, CalibrateError> {
    let rules = score_of(rules_source, rules_path, options.score.as_deref())?;
    let converted = outcomes.iter().filter(|o| o.converted).count();
    let smaller_class = converted.min(outcomes.len() - converted);
    if smaller_class == 0 {
        return Err(CalibrateError::OneClass {
            leads: outcomes.len(),
            converted,
        });
    }
    if options.folds < 2 || options.folds > smaller_class {
        return Err(CalibrateError::Folds(smaller_class));
    }
    let history = replay_history(&rules, events, outcomes, options.at, &mut |done| {
        progress(Progress::Replay { pass: 1, done })
    })?;
    let labels: Vec<bool> = history.leads.iter().map(|l| l.converted).collect();
    let current = Scored::of(&rules, &history);

    let range = suggest::target_range(&rules);
    let clamp = rules.settings.clamp;
    let all: Vec<&history::LeadRow> = history.leads.iter().collect();
    let suggestion = suggest::suggest(&all, options.fit, range);
    let folds = options.folds;
    let cross_validation = suggest::cross_validate(
        &history.leads,
        folds,
        options.fit,
        range,
        clamp,
        &mut |done| progress(Progress::Folds { done, of: folds }),
    );

    let predicted: Vec<f64> = history
        .leads
        .iter()
        .map(|l| suggestion.score(&l.values, clamp))
        .collect();
    let new_fit: Vec<f64> = history
        .leads
        .iter()
        .map(|l| {
            history
                .features
                .iter()
                .zip(&suggestion.points)
                .zip(&l.values)
                .filter(|((f, _), _)| matches!(f.measure, Measure::Fit(_)))
                .map(|((_, p), x)| p * x)
                .sum()
        })
        .collect();
    let thresholds = suggest::thresholds(&rules, &history.leads, &new_fit, &predicted);
    let version = options
        .version
        .clone()
        .unwrap_or_else(|| format!("{}-calibrated", rules.version));
    let (cv_mean, _) = suggest::mean_and_sd(&cross_validation.rules_auc);
    let note = format!(
        "# Weights, base, grade and tier minimums suggested by `leadscore calibrate`\n\
         # from {} decided leads ({} converted), starting from `{}`{}.\n\
         # AUC {:.3} on those leads; {}-fold cross-validated AUC {:.3}.\n\n",
        history.leads.len(),
        converted,
        rules.version,
        options
            .score
            .as_deref()
            .map(|name| format!(" (score `{name}`; the others are as they were)"))
            .unwrap_or_default(),
        measure::auc(&predicted, &labels).unwrap_or(0.5),
        folds,
        cv_mean
    );
    let suggested_rules = suggest::rewrite_rules(
        rules_source,
        options.score.as_deref(),
        &history.features,
        &suggestion,
        &thresholds,
        &version,
        &note,
    )?;
    let new_rules = match parse_scores(&suggested_rules, rules_path) {
        Ok(scores) => {
            score_named(scores, options.score.as_deref())
                .map_err(CalibrateError::Score)?
                .1
        }
        Err(e) => return Err(CalibrateError::Suggested(e)),
    };
    let replayed = replay_history(&new_rules, events, outcomes, options.at, &mut |done| {
        progress(Progress::Replay { pass: 2, done })
    })?;
    let suggested = Scored::of(&new_rules, &replayed);
    let max_replay_gap = predicted
        .iter()
        .zip(&suggested.scores)
        .map(|(p, s)| (p - s).abs())
        .fold(0.0, f64::max);
    Ok(Calibration {
        history,
        labels,
        current,
        suggested,
        suggestion,
        thresholds,
        cross_validation,
        suggested_rules,
        max_replay_gap,
        options,
    })
}
