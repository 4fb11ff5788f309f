//! `leadscore diff`: what a shadow deployment's rules (`run --shadow`)
//! would change against the live deployment's, from both states and both
//! output topics: how many leads each tier holds under each, the leads
//! whose tier differs, the largest movers with both explanations, and what
//! each published over the last days.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::core::engine::LeadSnapshot;
use crate::core::Timestamp;

/// One output as the diff counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedOutput {
    pub kind: String,
    pub tier: String,
    pub direction: String,
    pub at: Timestamp,
}

/// Both sides, compared.
pub struct Diff {
    pub live_version: String,
    pub shadow_version: String,
    pub at: Timestamp,
    /// Per tier name (in the live rules' order, then the shadow's new
    /// ones): leads in it under live and under shadow.
    pub tiers: Vec<(String, usize, usize)>,
    /// Leads both hold, whose tier differs.
    pub tier_changes: usize,
    /// Of those: (live tier, shadow tier) and how many.
    pub moves: BTreeMap<(String, String), usize>,
    pub leads_compared: usize,
    pub only_live: usize,
    pub only_shadow: usize,
    /// The leads whose score moves most, both snapshots.
    pub movers: Vec<(LeadSnapshot, LeadSnapshot)>,
    /// Over the window: outputs by type, and upward crossings by tier.
    pub published: [BTreeMap<String, usize>; 2],
    pub window_days: f64,
}

impl Diff {
    pub fn of(
        live: (&str, &[LeadSnapshot], &[PublishedOutput]),
        shadow: (&str, &[LeadSnapshot], &[PublishedOutput]),
        tier_order: &[String],
        at: Timestamp,
        window_days: f64,
        movers: usize,
    ) -> Diff {
        let by_id = |leads: &[LeadSnapshot]| -> BTreeMap<String, LeadSnapshot> {
            leads
                .iter()
                .map(|l| (l.lead_id.clone(), l.clone()))
                .collect()
        };
        let (l, s) = (by_id(live.1), by_id(shadow.1));
        let mut names: Vec<String> = tier_order.to_vec();
        for lead in l.values().chain(s.values()) {
            if !names.iter().any(|n| **n == *lead.tier) {
                names.push(lead.tier.to_string());
            }
        }
        let count = |map: &BTreeMap<String, LeadSnapshot>, tier: &str| {
            map.values().filter(|lead| &*lead.tier == tier).count()
        };
        let tiers = names
            .iter()
            .map(|t| (t.clone(), count(&l, t), count(&s, t)))
            .collect();
        let mut moves = BTreeMap::new();
        let mut pairs = Vec::new();
        for (id, a) in &l {
            if let Some(b) = s.get(id) {
                if a.tier != b.tier {
                    *moves
                        .entry((a.tier.to_string(), b.tier.to_string()))
                        .or_insert(0) += 1;
                }
                pairs.push((a.clone(), b.clone()));
            }
        }
        let leads_compared = pairs.len();
        let tier_changes = moves.values().sum();
        pairs.sort_by(|(a1, b1), (a2, b2)| {
            (b2.score - a2.score)
                .abs()
                .total_cmp(&(b1.score - a1.score).abs())
                .then_with(|| a1.lead_id.cmp(&a2.lead_id))
        });
        pairs.truncate(movers);
        let since = at.saturating_sub_ms((window_days * 86_400_000.0) as i64);
        let published = [live.2, shadow.2].map(|outputs| {
            let mut counts = BTreeMap::new();
            for o in outputs.iter().filter(|o| o.at >= since && o.at <= at) {
                *counts.entry(o.kind.clone()).or_insert(0) += 1;
                if o.kind == "threshold_crossed" && o.direction == "up" {
                    *counts
                        .entry(format!("crossed up into {}", o.tier))
                        .or_insert(0) += 1;
                }
            }
            counts
        });
        let ids_l: BTreeSet<&String> = l.keys().collect();
        let ids_s: BTreeSet<&String> = s.keys().collect();
        Diff {
            live_version: live.0.to_string(),
            shadow_version: shadow.0.to_string(),
            at,
            tiers,
            tier_changes,
            moves,
            leads_compared,
            only_live: ids_l.difference(&ids_s).count(),
            only_shadow: ids_s.difference(&ids_l).count(),
            movers: pairs,
            published,
            window_days,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# leadscore diff: live `{}` against shadow `{}`\n",
            self.live_version, self.shadow_version
        );
        let _ = writeln!(
            out,
            "As of {}. {} leads held by both; {} only live, {} only in the shadow \
             (a shadow still catching up, or history the input no longer holds).\n",
            self.at.to_rfc3339(),
            self.leads_compared,
            self.only_live,
            self.only_shadow
        );
        let _ = writeln!(out, "## Leads per tier\n");
        let _ = writeln!(
            out,
            "| tier | live | shadow | change |\n|---|---:|---:|---:|"
        );
        for (tier, a, b) in &self.tiers {
            let _ = writeln!(out, "| {tier} | {a} | {b} | {:+} |", *b as i64 - *a as i64);
        }
        let _ = writeln!(
            out,
            "\n## Leads whose tier differs: {}\n",
            self.tier_changes
        );
        if !self.moves.is_empty() {
            let _ = writeln!(out, "| live tier | shadow tier | leads |\n|---|---|---:|");
            for ((from, to), n) in &self.moves {
                let _ = writeln!(out, "| {from} | {to} | {n} |");
            }
        }
        let _ = writeln!(out, "\n## Largest movers\n");
        let _ = writeln!(
            out,
            "| lead | live score (tier) | shadow score (tier) | live: largest shares | shadow: largest shares |\n|---|---:|---:|---|---|"
        );
        let why = |lead: &LeadSnapshot| {
            lead.contributions
                .iter()
                .take(3)
                .map(|c| format!("{} {:+.1}", c.rule, c.points))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (a, b) in &self.movers {
            let _ = writeln!(
                out,
                "| {} | {:.1} ({}) | {:.1} ({}) | {} | {} |",
                a.lead_id,
                a.score,
                a.tier,
                b.score,
                b.tier,
                why(a),
                why(b)
            );
        }
        let _ = writeln!(
            out,
            "\n## Published over the last {} days\n",
            self.window_days
        );
        let kinds: BTreeSet<&String> = self.published.iter().flat_map(|p| p.keys()).collect();
        let _ = writeln!(out, "| output | live | shadow |\n|---|---:|---:|");
        for kind in kinds {
            let n = |i: usize| self.published[i].get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "| {kind} | {} | {} |", n(0), n(1));
        }
        out
    }

    /// Leads per tier under each rule set, side by side.
    pub fn tiers_svg(&self) -> Result<String, String> {
        let most = self
            .tiers
            .iter()
            .map(|(_, a, b)| (*a).max(*b))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let n = self.tiers.len().max(1) as f64;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (900, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    format!(
                        "Leads per tier: {} (live) and {} (shadow)",
                        self.live_version, self.shadow_version
                    ),
                    ("sans-serif", 20),
                )
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..n, 0.0..most * 1.1)
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = self.tiers.iter().map(|t| t.0.clone()).collect();
            chart
                .configure_mesh()
                .x_labels(names.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    if (x - x.floor() - 0.5).abs() < 0.26 {
                        names.get(i).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc("leads")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .disable_x_mesh()
                .draw()
                .map_err(|e| e.to_string())?;
            for (side, color) in [(0usize, BLUE.mix(0.45)), (1, RED.mix(0.45))] {
                chart
                    .draw_series(self.tiers.iter().enumerate().map(|(i, (_, a, b))| {
                        let x = i as f64 + 0.1 + 0.4 * side as f64;
                        let v = if side == 0 { *a } else { *b } as f64;
                        Rectangle::new([(x, 0.0), (x + 0.38, v)], color.filled())
                    }))
                    .map_err(|e| e.to_string())?
                    .label(if side == 0 { "live" } else { "shadow" })
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }
}
