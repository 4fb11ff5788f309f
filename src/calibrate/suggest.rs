//! From a fitted model to rule points a person can read, and back into a
//! rules file that `check` accepts.
//!
//! The model's log-odds are a weighted sum of the same features the rules
//! score, so points are the weights times one scale, and `scoring.base`
//! takes the shift. The scale maps the 1st to 99th percentile of the
//! training leads onto the clamp range: scores spread over the range, and
//! only the extremes are clamped (which would tie them).

use toml_edit::{value, DocumentMut, Item};
use xxhash_rust::xxh3::xxh3_64;

use super::history::{Feature, LeadRow, Measure};
use super::logistic::{self, FitOptions, Model};
use super::measure;
use crate::core::Rules;

/// Points and base as written to the rules file (rounded to one decimal).
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub model: Model,
    pub base: f64,
    /// One per feature.
    pub points: Vec<f64>,
    /// Score points per unit of log-odds.
    pub scale: f64,
}

impl Suggestion {
    /// The score the suggested rules give a lead with these feature values.
    pub fn score(&self, values: &[f64], clamp: Option<(f64, f64)>) -> f64 {
        let raw = self.base
            + self
                .points
                .iter()
                .zip(values)
                .map(|(p, x)| p * x)
                .sum::<f64>();
        match clamp {
            Some((lo, hi)) => raw.clamp(lo, hi),
            None => raw,
        }
    }

    /// Points that double a lead's odds of converting.
    pub fn points_to_double_odds(&self) -> f64 {
        self.scale * std::f64::consts::LN_2
    }

    /// The score at which the model gives even odds.
    pub fn even_odds_score(&self) -> f64 {
        self.base - self.scale * self.model.intercept
    }
}

fn round1(x: f64) -> f64 {
    let r = (x * 10.0).round() / 10.0;
    if r == 0.0 {
        0.0 // no "-0" in the rules file
    } else {
        r
    }
}

/// The score range the scale maps onto: the clamp, or 0..100 without one.
pub fn target_range(rules: &Rules) -> (f64, f64) {
    rules.settings.clamp.unwrap_or((0.0, 100.0))
}

pub fn suggest(leads: &[&LeadRow], options: FitOptions, range: (f64, f64)) -> Suggestion {
    let rows: Vec<&[f64]> = leads.iter().map(|l| l.values.as_slice()).collect();
    let labels: Vec<bool> = leads.iter().map(|l| l.converted).collect();
    let model = logistic::fit(&rows, &labels, options);
    let mut sums: Vec<f64> = rows.iter().map(|r| model.points(r)).collect();
    sums.sort_by(f64::total_cmp);
    let quantile = |q: f64| sums[((sums.len() - 1) as f64 * q).round() as usize];
    let (low, high) = (quantile(0.01), quantile(0.99));
    let scale = if high > low {
        (range.1 - range.0) / (high - low)
    } else {
        1.0 // nothing separates the leads; any scale ranks them alike
    };
    let points = model.weights.iter().map(|w| round1(w * scale)).collect();
    Suggestion {
        base: round1(range.0 - scale * low),
        points,
        scale,
        model,
    }
}

/// Out-of-sample quality: per fold, the rules suggested from the other
/// folds score the held-out leads.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossValidation {
    pub folds: usize,
    /// AUC of the suggested rules' scores (rounded points, clamped).
    pub rules_auc: Vec<f64>,
    /// AUC of the model's raw log-odds, before points are rounded and
    /// scores clamped: what the rules file gives away.
    pub model_auc: Vec<f64>,
}

pub fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Folds stratified by outcome, leads placed by a hash of their id: the
/// same input always gives the same folds.
pub fn fold_of(leads: &[LeadRow], folds: usize) -> Vec<usize> {
    let mut fold = vec![0; leads.len()];
    for class in [false, true] {
        let mut members: Vec<usize> = (0..leads.len())
            .filter(|&i| leads[i].converted == class)
            .collect();
        members.sort_by_key(|&i| (xxh3_64(leads[i].lead_id.as_bytes()), i));
        for (n, i) in members.into_iter().enumerate() {
            fold[i] = n % folds;
        }
    }
    fold
}

pub fn cross_validate(
    leads: &[LeadRow],
    folds: usize,
    options: FitOptions,
    range: (f64, f64),
    clamp: Option<(f64, f64)>,
    progress: &mut dyn FnMut(usize),
) -> CrossValidation {
    let fold = fold_of(leads, folds);
    let mut result = CrossValidation {
        folds,
        rules_auc: Vec::new(),
        model_auc: Vec::new(),
    };
    for k in 0..folds {
        let train: Vec<&LeadRow> = leads
            .iter()
            .zip(&fold)
            .filter(|(_, &f)| f != k)
            .map(|(l, _)| l)
            .collect();
        let test: Vec<&LeadRow> = leads
            .iter()
            .zip(&fold)
            .filter(|(_, &f)| f == k)
            .map(|(l, _)| l)
            .collect();
        let suggestion = suggest(&train, options, range);
        let labels: Vec<bool> = test.iter().map(|l| l.converted).collect();
        let scores: Vec<f64> = test
            .iter()
            .map(|l| suggestion.score(&l.values, clamp))
            .collect();
        let log_odds: Vec<f64> = test
            .iter()
            .map(|l| suggestion.model.log_odds(&l.values))
            .collect();
        if let (Some(r), Some(m)) = (
            measure::auc(&scores, &labels),
            measure::auc(&log_odds, &labels),
        ) {
            result.rules_auc.push(r);
            result.model_auc.push(m);
        }
        progress(k + 1);
    }
    result
}

/// A threshold on `new` values that keeps the share of leads at or above
/// it that `old_threshold` had on `old` values: the new weights change who
/// is in a grade or tier, not how many.
pub fn same_share_threshold(old: &[f64], old_threshold: f64, new: &[f64]) -> f64 {
    let share = old.iter().filter(|&&v| v >= old_threshold).count();
    let mut sorted = new.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    match sorted.get(share.wrapping_sub(1)) {
        // Rounded down, so every lead counted is still at or above it.
        Some(&v) if share > 0 => (v * 10.0).floor() / 10.0,
        _ => (sorted.first().copied().unwrap_or(0.0) * 10.0).floor() / 10.0 + 0.1,
    }
}

/// Grade and tier minimums for the suggested rules, each keeping its
/// current share of leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// A, B, C.
    pub grades: [f64; 3],
    /// One per tier; the lowest tier's is unchanged.
    pub tiers: Vec<f64>,
}

pub fn thresholds(
    rules: &Rules,
    leads: &[LeadRow],
    new_fit: &[f64],
    new_score: &[f64],
) -> Thresholds {
    let old_fit: Vec<f64> = leads.iter().map(|l| l.fit).collect();
    let old_score: Vec<f64> = leads.iter().map(|l| l.score).collect();
    let g = &rules.grades;
    let a = same_share_threshold(&old_fit, g.a, new_fit);
    let b = same_share_threshold(&old_fit, g.b, new_fit).min(a);
    let c = same_share_threshold(&old_fit, g.c, new_fit).min(b);
    let mut tiers = vec![rules.tiers[0].min_score];
    for tier in &rules.tiers[1..] {
        let previous = *tiers.last().expect("lowest tier pushed first");
        let t = same_share_threshold(&old_score, tier.min_score, new_score);
        // Tiers must rise; a tier no lead reaches sits just above the last.
        tiers.push(if t > previous {
            t
        } else {
            round1(previous + 0.1)
        });
    }
    Thresholds {
        grades: [a, b, c],
        tiers,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the rules file does not parse as TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    #[error("the rules file has no {what} `{name}`")]
    Missing { what: &'static str, name: String },
}

/// The rules file `source` with the suggested points, base, grade and tier
/// minimums and version; comments and layout are kept. With `score`, the
/// suggestions go to that `[[scores]]` entry: its `[scores.scoring]` base,
/// grades, tiers, engagement and fit rules. A score that shares the file's
/// fit rules gets copies of them with its suggested points
/// (`shared_fit = false`), so the other scores keep theirs.
pub fn rewrite_rules(
    source: &str,
    score: Option<&str>,
    features: &[Feature],
    suggestion: &Suggestion,
    thresholds: &Thresholds,
    version: &str,
    note: &str,
) -> Result<String, WriteError> {
    let mut doc: DocumentMut = source.parse()?;
    doc["version"] = value(version);
    let rules = match score {
        None => doc.as_table_mut(),
        Some(name) => score_entry(&mut doc, name, features)?,
    };
    if rules.get("scoring").is_none() {
        rules["scoring"] = toml_edit::table();
    }
    rules["scoring"]["base"] = value(suggestion.base);
    if rules.get("grades").is_none() {
        rules["grades"] = toml_edit::table();
    }
    rules["grades"]["A"] = value(thresholds.grades[0]);
    rules["grades"]["B"] = value(thresholds.grades[1]);
    rules["grades"]["C"] = value(thresholds.grades[2]);
    if let Some(tiers) = rules
        .get_mut("tiers")
        .and_then(Item::as_array_of_tables_mut)
    {
        for (tier, min) in tiers.iter_mut().zip(&thresholds.tiers) {
            tier["min_score"] = value(*min);
        }
    }
    for (feature, &points) in features.iter().zip(&suggestion.points) {
        let section = section_of(feature);
        let rule = rules
            .get_mut(section)
            .and_then(Item::as_array_of_tables_mut)
            .and_then(|rules| {
                rules
                    .iter_mut()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(&feature.rule))
            })
            .ok_or_else(|| WriteError::Missing {
                what: if section == "fit" {
                    "fit rule"
                } else {
                    "engagement rule"
                },
                name: feature.rule.to_string(),
            })?;
        rule["points"] = value(points);
        // A cap counts hits: it scales with the points so it still binds
        // at the same number of hits.
        if points != 0.0 {
            let ratio = (points / feature.points).abs();
            if let Some(cap) = rule.get_mut("cap").and_then(Item::as_table_like_mut) {
                if let Some(old) = cap
                    .get("points")
                    .and_then(Item::as_value)
                    .and_then(value_as_f64)
                {
                    // Three decimals: within a thousandth of a point of exact.
                    let scaled = ((old * ratio * 1000.0).round() / 1000.0).max(0.001);
                    cap.insert("points", value(scaled));
                }
            }
        }
    }
    let mut text = doc.to_string();
    text.insert_str(0, note);
    Ok(text)
}

fn section_of(feature: &Feature) -> &'static str {
    match feature.measure {
        Measure::Fit(_) => "fit",
        Measure::Engagement(_) => "engagement",
    }
}

/// The `[[scores]]` entry named `name`, its shared fit rules made its own
/// when a suggestion changes their points.
fn score_entry<'d>(
    doc: &'d mut DocumentMut,
    name: &str,
    features: &[Feature],
) -> Result<&'d mut toml_edit::Table, WriteError> {
    let shared_fit = doc
        .get("fit")
        .and_then(Item::as_array_of_tables)
        .cloned()
        .unwrap_or_default();
    let missing = || WriteError::Missing {
        what: "score",
        name: name.to_string(),
    };
    let entry = doc
        .get_mut("scores")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|scores| {
            scores
                .iter_mut()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .ok_or_else(missing)?;
    let shares_fit = entry
        .get("shared_fit")
        .and_then(Item::as_bool)
        .unwrap_or(true);
    let calibrates_shared = features.iter().any(|f| {
        section_of(f) == "fit"
            && shared_fit
                .iter()
                .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(&*f.rule))
    });
    if shares_fit && calibrates_shared {
        let mut own = toml_edit::ArrayOfTables::new();
        for rule in shared_fit.iter() {
            let mut rule = rule.clone();
            // Written where the score is, not where the shared rule was.
            rule.set_position(None);
            own.push(rule);
        }
        if let Some(mine) = entry.get("fit").and_then(Item::as_array_of_tables) {
            for rule in mine.iter() {
                own.push(rule.clone());
            }
        }
        entry["shared_fit"] = value(false);
        entry["fit"] = Item::ArrayOfTables(own);
    }
    Ok(entry)
}

fn value_as_f64(v: &toml_edit::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}
