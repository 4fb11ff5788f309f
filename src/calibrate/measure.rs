//! How well scores rank converted leads above the rest, and what a score
//! threshold would mean for a sales team.

/// Area under the ROC curve: the chance that a converted lead outscores
/// one that did not (ties count half). `None` when one class is missing.
pub fn auc(scores: &[f64], converted: &[bool]) -> Option<f64> {
    let positives = converted.iter().filter(|&&c| c).count();
    let negatives = converted.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann-Whitney U from average ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if converted[k] {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// The ROC curve as (false positive rate, true positive rate) points, one
/// per distinct score from the highest down, starting at (0, 0).
pub fn roc_curve(scores: &[f64], converted: &[bool]) -> Vec<(f64, f64)> {
    let positives = converted.iter().filter(|&&c| c).count().max(1) as f64;
    let negatives = (converted.len() as f64 - positives).max(1.0);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut curve = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (n, &k) in order.iter().enumerate() {
        if converted[k] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order
            .get(n + 1)
            .is_none_or(|&next| scores[next] != scores[k]);
        if last_of_tie {
            curve.push((fp / negatives, tp / positives));
        }
    }
    curve
}

/// Leads and conversions among some group of leads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    pub leads: usize,
    pub converted: usize,
}

impl Tally {
    pub fn rate(&self) -> Option<f64> {
        (self.leads > 0).then(|| self.converted as f64 / self.leads as f64)
    }

    fn add(&mut self, converted: bool) {
        self.leads += 1;
        self.converted += usize::from(converted);
    }
}

/// A range of scores, `low <= score <= high` for deciles (the scores seen)
/// or `low <= score < high` for fixed-width bands.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub low: f64,
    pub high: f64,
    pub tally: Tally,
}

/// Ten groups of (nearly) equal size from the lowest scores up. Leads with
/// equal scores stay in one group, so groups may differ in size.
pub fn deciles(scores: &[f64], converted: &[bool]) -> Vec<Band> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut bands: Vec<Band> = Vec::new();
    let n = order.len();
    let mut start = 0;
    for d in 1..=10 {
        let mut end = (n * d / 10).max(start);
        // Extend over ties so one score never spans two deciles.
        while end > start && end < n && scores[order[end]] == scores[order[end - 1]] {
            end += 1;
        }
        if end == start {
            continue;
        }
        let mut tally = Tally::default();
        for &k in &order[start..end] {
            tally.add(converted[k]);
        }
        bands.push(Band {
            low: scores[order[start]],
            high: scores[order[end - 1]],
            tally,
        });
        start = end;
    }
    bands
}

/// Fixed-width score bands from `low` to `high` (the last band includes
/// `high`); scores outside fall into the nearest band.
pub fn bands(scores: &[f64], converted: &[bool], low: f64, high: f64, count: usize) -> Vec<Band> {
    let width = (high - low) / count as f64;
    let mut bands: Vec<Band> = (0..count)
        .map(|i| Band {
            low: low + width * i as f64,
            high: low + width * (i + 1) as f64,
            tally: Tally::default(),
        })
        .collect();
    for (&s, &c) in scores.iter().zip(converted) {
        let i = ((s - low) / width).floor().clamp(0.0, (count - 1) as f64) as usize;
        bands[i].tally.add(c);
    }
    bands
}

/// What sending every lead at or above `threshold` to sales would mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub threshold: f64,
    pub sent: Tally,
    /// Share of all conversions among the leads sent.
    pub recall: f64,
}

pub fn cut(scores: &[f64], converted: &[bool], threshold: f64) -> Cut {
    let mut sent = Tally::default();
    for (&s, &c) in scores.iter().zip(converted) {
        if s >= threshold {
            sent.add(c);
        }
    }
    let all = converted.iter().filter(|&&c| c).count().max(1);
    Cut {
        threshold,
        sent,
        recall: sent.converted as f64 / all as f64,
    }
}

/// The lowest threshold (so the most leads) at which the leads sent still
/// convert at `precision` or better.
pub fn threshold_for_precision(scores: &[f64], converted: &[bool], precision: f64) -> Option<Cut> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut best = None;
    let mut tally = Tally::default();
    for (n, &k) in order.iter().enumerate() {
        tally.add(converted[k]);
        let last_of_tie = order
            .get(n + 1)
            .is_none_or(|&next| scores[next] != scores[k]);
        if last_of_tie && tally.rate().is_some_and(|r| r >= precision) {
            best = Some(scores[k]);
        }
    }
    best.map(|t| cut(scores, converted, t))
}

/// The highest threshold that sends at least `capacity` leads (more when
/// leads tie at the threshold), or every lead when there are fewer.
pub fn threshold_for_capacity(scores: &[f64], converted: &[bool], capacity: usize) -> Option<Cut> {
    if scores.is_empty() || capacity == 0 {
        return None;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[capacity.min(sorted.len()) - 1];
    Some(cut(scores, converted, threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties_half() {
        assert_eq!(
            auc(&[1.0, 2.0, 3.0, 4.0], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auc(&[4.0, 3.0, 2.0, 1.0], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auc(&[1.0, 1.0], &[false, true]), Some(0.5));
        // Pairs (pos, neg): (3,1) win, (3,2) win, (1.5,1) win, (1.5,2) loss.
        assert_eq!(
            auc(&[3.0, 1.5, 1.0, 2.0], &[true, true, false, false]),
            Some(0.75)
        );
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn roc_area_by_trapezoids_equals_auc() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4];
        let converted = [false, false, true, true, true, false, false, true];
        let curve = roc_curve(&scores, &converted);
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
        let area: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auc(&scores, &converted).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn deciles_cover_every_lead_once_and_keep_ties_together() {
        let scores: Vec<f64> = (0..95).map(|i| f64::from(i / 3)).collect();
        let converted: Vec<bool> = (0..95).map(|i| i % 4 == 0).collect();
        let d = deciles(&scores, &converted);
        assert_eq!(d.iter().map(|b| b.tally.leads).sum::<usize>(), 95);
        assert_eq!(d.iter().map(|b| b.tally.converted).sum::<usize>(), 24);
        for pair in d.windows(2) {
            assert!(pair[0].high < pair[1].low, "{pair:?}");
        }
    }

    #[test]
    fn thresholds_for_precision_and_capacity() {
        let scores = [90.0, 80.0, 70.0, 60.0, 50.0, 40.0];
        let converted = [true, true, false, true, false, false];
        let p = threshold_for_precision(&scores, &converted, 0.75).unwrap();
        assert_eq!((p.threshold, p.sent.leads, p.sent.converted), (60.0, 4, 3));
        assert_eq!(p.recall, 1.0);
        assert!(threshold_for_precision(&scores, &converted, 1.01).is_none());
        let c = threshold_for_capacity(&scores, &converted, 2).unwrap();
        assert_eq!((c.threshold, c.sent.leads), (80.0, 2));
        let all = threshold_for_capacity(&scores, &converted, 100).unwrap();
        assert_eq!(all.sent.leads, 6);
    }

    #[test]
    fn fixed_bands_put_out_of_range_scores_at_the_ends() {
        let b = bands(
            &[-5.0, 0.0, 9.9, 10.0, 100.0, 130.0],
            &[false; 6],
            0.0,
            100.0,
            10,
        );
        let counts: Vec<usize> = b.iter().map(|b| b.tally.leads).collect();
        assert_eq!(counts, [3, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
