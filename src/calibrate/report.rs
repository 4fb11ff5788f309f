//! The calibration report: a markdown summary, two SVG charts and a
//! per-lead CSV of both rule sets' scores.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::measure::{self, Band};
use super::suggest::mean_and_sd;
use super::{Calibration, Scored};

fn percent(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

pub fn markdown(c: &Calibration, rules_name: &str) -> String {
    let mut out = String::new();
    let h = &c.history;
    let leads = h.leads.len();
    let converted = c.labels.iter().filter(|&&l| l).count();
    let _ = writeln!(out, "# leadscore calibration report\n");
    let _ = writeln!(
        out,
        "Rules `{rules_name}` (version `{}`) replayed over {} event lines ({} events, {} rejected, {} after their lead's decision left out).",
        c.current.version, h.stats.lines, h.stats.events, h.stats.rejected, h.stats.after_decision
    );
    let _ = write!(
        out,
        "{leads} decided leads, {converted} converted ({}); {} had no events.",
        percent(Some(converted as f64 / leads.max(1) as f64)),
        h.stats.leads_without_events,
    );
    if h.stats.leads_without_decision_time > 0 {
        let _ = write!(
            out,
            " {} leads without a decision time are scored at {}.",
            h.stats.leads_without_decision_time, h.default_decided_at
        );
    }
    let _ = writeln!(out, "\n");

    let _ = writeln!(out, "## Quality\n");
    let _ = writeln!(
        out,
        "| rules | AUC, all leads | {}-fold cross-validated AUC |",
        c.options.folds
    );
    let _ = writeln!(out, "|---|---|---|");
    let cv = &c.cross_validation;
    let (rules_mean, rules_sd) = mean_and_sd(&cv.rules_auc);
    let (model_mean, model_sd) = mean_and_sd(&cv.model_auc);
    let _ = writeln!(
        out,
        "| current (`{}`) | {:.3} | – (nothing fitted) |",
        c.current.version, c.current.auc
    );
    let _ = writeln!(
        out,
        "| suggested (`{}`) | {:.3} | {:.3} ± {:.3} |",
        c.suggested.version, c.suggested.auc, rules_mean, rules_sd
    );
    let _ = writeln!(
        out,
        "| the regression itself (unrounded, unclamped) | – | {model_mean:.3} ± {model_sd:.3} |\n"
    );
    let _ = writeln!(
        out,
        "Cross-validation fits the weights on {} of {} folds (stratified by outcome) and scores the held-out fold with the rules those weights give. The suggested file replays to the scores its weights predict within {:.4} points.\n",
        cv.folds - 1,
        cv.folds,
        c.max_replay_gap
    );

    for (title, scored) in [("suggested", &c.suggested), ("current", &c.current)] {
        let _ = writeln!(out, "## Conversion by score decile, {title} rules\n");
        let _ = writeln!(out, "| decile | scores | leads | converted | rate |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (i, band) in measure::deciles(&scored.scores, &c.labels)
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "| {} | {:.1} – {:.1} | {} | {} | {} |",
                i + 1,
                band.low,
                band.high,
                band.tally.leads,
                band.tally.converted,
                percent(band.tally.rate())
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Tiers: the funnel\n");
    let _ = writeln!(
        out,
        "A lead counts in the highest tier its score and gates reach at its decision time. Suggested minimums keep each tier's share of leads, so sales sees as many leads as before, chosen better.\n"
    );
    let _ = writeln!(
        out,
        "| tier | min score (current → suggested) | leads at or above, current | conversion | leads at or above, suggested | conversion | share of all conversions, suggested | from the tier below, suggested |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let funnel_current = funnel(&c.current, &c.labels);
    let funnel_suggested = funnel(&c.suggested, &c.labels);
    for (i, name) in c.suggested.tier_names.iter().enumerate() {
        let (cur, sug) = (funnel_current[i], funnel_suggested[i]);
        let step = if i == 0 {
            "–".to_string()
        } else {
            percent(
                (funnel_suggested[i - 1].leads > 0)
                    .then(|| sug.leads as f64 / funnel_suggested[i - 1].leads as f64),
            )
        };
        let _ = writeln!(
            out,
            "| {name} | {} → {} | {} | {} | {} | {} | {} | {step} |",
            c.current.tier_minimums[i],
            c.suggested.tier_minimums[i],
            cur.leads,
            percent(cur.rate()),
            sug.leads,
            percent(sug.rate()),
            percent(Some(sug.converted as f64 / converted.max(1) as f64)),
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "## Thresholds: what each would send to sales (suggested rules)\n"
    );
    let _ = writeln!(
        out,
        "| score at least | leads sent | converted | precision | share of all conversions |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let (low, high) = range_of(&c.suggested.scores);
    for step in 1..10 {
        let threshold = (low + (high - low) * step as f64 / 10.0).round();
        let cut = measure::cut(&c.suggested.scores, &c.labels, threshold);
        let _ = writeln!(
            out,
            "| {threshold} | {} | {} | {} | {} |",
            cut.sent.leads,
            cut.sent.converted,
            percent(cut.sent.rate()),
            percent(Some(cut.recall))
        );
    }
    let _ = writeln!(out);
    if let Some(target) = c.options.target_precision {
        match measure::threshold_for_precision(&c.suggested.scores, &c.labels, target) {
            Some(cut) => {
                let _ = writeln!(
                    out,
                    "**Suggested threshold for {} precision: score ≥ {:.1}** — {} leads, {} converting ({}), {} of all conversions.\n",
                    percent(Some(target)), cut.threshold, cut.sent.leads, cut.sent.converted,
                    percent(cut.sent.rate()), percent(Some(cut.recall))
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "No threshold reaches {} precision on this history.\n",
                    percent(Some(target))
                );
            }
        }
    }
    if let Some(capacity) = c.options.capacity {
        if let Some(cut) = measure::threshold_for_capacity(&c.suggested.scores, &c.labels, capacity)
        {
            let _ = writeln!(
                out,
                "**Suggested threshold for a capacity of {capacity} leads: score ≥ {:.1}** — {} leads, {} converting ({}), {} of all conversions.\n",
                cut.threshold, cut.sent.leads, cut.sent.converted, percent(cut.sent.rate()),
                percent(Some(cut.recall))
            );
        }
    }

    let s = &c.suggestion;
    let _ = writeln!(out, "## Suggested weights\n");
    let _ = writeln!(
        out,
        "Every lead starts at `base = {}`. Each {:.1} points double the odds of converting; a score of {:.1} means even odds. Engagement points are per hit before decay and caps; fit points are per match.\n",
        s.base,
        s.points_to_double_odds(),
        s.even_odds_score()
    );
    let _ = writeln!(out, "| rule | kind | current points | suggested points | log-odds per hit or match | leads it touched |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (i, f) in c.history.features.iter().enumerate() {
        let kind = match f.measure {
            super::history::Measure::Fit(_) => "fit",
            super::history::Measure::Engagement(_) => "engagement",
        };
        let touched = c
            .history
            .leads
            .iter()
            .filter(|l| l.values[i] != 0.0)
            .count();
        let _ = writeln!(
            out,
            "| {} | {kind} | {} | {} | {:+.3} | {touched} |",
            f.rule, f.points, s.points[i], s.model.weights[i]
        );
    }
    let _ = writeln!(
        out,
        "\nReview before deploying: a rule that touched few leads has a weight with a wide error, and a rule that is negative here may still be right to keep (a policy, not a prediction)."
    );
    out
}

fn funnel(scored: &Scored, labels: &[bool]) -> Vec<measure::Tally> {
    let mut at_or_above = vec![measure::Tally::default(); scored.tier_names.len()];
    for (&tier, &converted) in scored.tiers.iter().zip(labels) {
        for t in &mut at_or_above[..=tier] {
            t.leads += 1;
            t.converted += usize::from(converted);
        }
    }
    at_or_above
}

fn range_of(scores: &[f64]) -> (f64, f64) {
    let low = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let high = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if low.is_finite() && high > low {
        (low, high)
    } else {
        (0.0, 100.0)
    }
}

/// Bars: leads per score band; line: conversion rate per band.
pub fn bands_svg(scored: &Scored, labels: &[bool]) -> Result<String, String> {
    let (low, high) = range_of(&scored.scores);
    let bands: Vec<Band> = measure::bands(&scored.scores, labels, low, high, 10);
    let most = bands
        .iter()
        .map(|b| b.tally.leads)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Leads and conversion rate by score band ({})",
                    scored.version
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(64)
            .build_cartesian_2d(low..high, 0.0..most * 1.1)
            .map_err(|e| e.to_string())?
            .set_secondary_coord(low..high, 0.0..1.0);
        chart
            .configure_mesh()
            .x_desc("score")
            .y_desc("leads")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .disable_x_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .configure_secondary_axes()
            .y_desc("conversion rate")
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bands.iter().map(|b| {
                let gap = (b.high - b.low) * 0.05;
                Rectangle::new(
                    [(b.low + gap, 0.0), (b.high - gap, b.tally.leads as f64)],
                    BLUE.mix(0.35).filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label("leads")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLUE.mix(0.35).filled())
            });
        let rates: Vec<(f64, f64)> = bands
            .iter()
            .filter_map(|b| b.tally.rate().map(|r| ((b.low + b.high) / 2.0, r)))
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(rates.clone(), RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("conversion rate")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED.stroke_width(2)));
        chart
            .draw_secondary_series(rates.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// ROC curves of both rule sets, with the diagonal of a coin toss.
pub fn roc_svg(current: &Scored, suggested: &Scored, labels: &[bool]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("ROC curve", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(|e| e.to_string())?;
        for (scored, color, what) in [(current, BLUE, "current"), (suggested, RED, "suggested")] {
            let curve = thinned(measure::roc_curve(&scored.scores, labels));
            chart
                .draw_series(LineSeries::new(curve, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{what} (AUC {:.3})", scored.auc))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Drops points closer than a pixel or so to the last one kept: the curve
/// looks the same and the file stays small.
fn thinned(curve: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::new();
    let last = curve.last().copied();
    for p in curve {
        let far = kept
            .last()
            .is_none_or(|k| (p.0 - k.0).abs() + (p.1 - k.1).abs() >= 0.002);
        if far {
            kept.push(p);
        }
    }
    if let Some(last) = last {
        if kept.last() != Some(&last) {
            kept.push(last);
        }
    }
    kept
}

/// `lead_id,converted,decided_at,current_score,suggested_score`.
pub fn scores_csv(c: &Calibration) -> String {
    let mut out = String::from("lead_id,converted,decided_at,current_score,suggested_score\n");
    for (i, lead) in c.history.leads.iter().enumerate() {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            lead.lead_id,
            u8::from(lead.converted),
            lead.decided_at,
            c.current.scores[i],
            c.suggested.scores[i]
        );
    }
    out
}
