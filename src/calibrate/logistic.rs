//! L2-regularised logistic regression by Newton's method (IRLS).
//!
//! Features are standardised before fitting so one penalty is fair to a
//! 0/1 fit rule and to a count of page views alike; the intercept is not
//! penalised. The weights are returned in the original units.

use nalgebra::{DMatrix, DVector};

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub intercept: f64,
    /// Log-odds per unit of each feature.
    pub weights: Vec<f64>,
    pub iterations: usize,
}

impl Model {
    /// The linear predictor without the intercept: what rule points sum to.
    pub fn points(&self, row: &[f64]) -> f64 {
        self.weights.iter().zip(row).map(|(w, x)| w * x).sum()
    }

    pub fn log_odds(&self, row: &[f64]) -> f64 {
        self.intercept + self.points(row)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// Penalty on the squared standardised weights (the ridge strength).
    pub l2: f64,
    pub max_iterations: usize,
    /// Stop when no standardised weight moves by more than this.
    pub tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            l2: 1.0,
            max_iterations: 100,
            tolerance: 1e-10,
        }
    }
}

/// Fits `labels` on `rows` (every row as long as the first). Columns that
/// never vary get weight 0: the data says nothing about them.
pub fn fit(rows: &[&[f64]], labels: &[bool], options: FitOptions) -> Model {
    assert_eq!(rows.len(), labels.len(), "one label per row");
    let n = rows.len();
    let d = rows.first().map_or(0, |r| r.len());
    let (mean, scale) = standardisation(rows, d);
    let varying: Vec<usize> = (0..d).filter(|&j| scale[j] > 0.0).collect();
    let k = varying.len() + 1; // column 0 is the intercept

    let x = DMatrix::from_fn(n, k, |i, c| {
        if c == 0 {
            1.0
        } else {
            let j = varying[c - 1];
            (rows[i][j] - mean[j]) / scale[j]
        }
    });
    let y = DVector::from_iterator(n, labels.iter().map(|&l| f64::from(u8::from(l))));
    let mut penalty = DVector::from_element(k, options.l2);
    penalty[0] = 0.0;

    let objective = |beta: &DVector<f64>| -> f64 {
        let eta = &x * beta;
        let loss: f64 = eta
            .iter()
            .zip(y.iter())
            .map(|(&e, &t)| softplus(e) - t * e)
            .sum();
        loss + 0.5 * beta.component_mul(&penalty).dot(beta)
    };

    let mut beta = DVector::zeros(k);
    let mut current = objective(&beta);
    let mut iterations = 0;
    while iterations < options.max_iterations {
        iterations += 1;
        let eta = &x * &beta;
        let p = eta.map(sigmoid);
        let w = p.map(|p| (p * (1.0 - p)).max(1e-12));
        let gradient = x.transpose() * (&p - &y) + beta.component_mul(&penalty);
        let weighted = DMatrix::from_fn(n, k, |i, c| x[(i, c)] * w[i]);
        let mut hessian = x.transpose() * weighted;
        for c in 0..k {
            hessian[(c, c)] += penalty[c];
        }
        let Some(cholesky) = hessian.cholesky() else {
            break; // only when a column is all but constant; keep the last good weights
        };
        let step = cholesky.solve(&gradient);
        // Newton's step, halved until the objective does not get worse.
        let mut t = 1.0;
        let mut next = &beta - &step * t;
        let mut value = objective(&next);
        while value > current && t > 1e-6 {
            t *= 0.5;
            next = &beta - &step * t;
            value = objective(&next);
        }
        let moved = (&step * t).amax();
        beta = next;
        current = value;
        if moved < options.tolerance {
            break;
        }
    }

    let mut weights = vec![0.0; d];
    let mut intercept = beta[0];
    for (c, &j) in varying.iter().enumerate() {
        weights[j] = beta[c + 1] / scale[j];
        intercept -= weights[j] * mean[j];
    }
    Model {
        intercept,
        weights,
        iterations,
    }
}

fn standardisation(rows: &[&[f64]], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; d];
    for row in rows {
        for (m, x) in mean.iter_mut().zip(row.iter()) {
            *m += x / n;
        }
    }
    let mut scale = vec![0.0; d];
    for row in rows {
        for j in 0..d {
            scale[j] += (row[j] - mean[j]).powi(2) / n;
        }
    }
    for s in &mut scale {
        *s = if *s > 1e-18 { s.sqrt() } else { 0.0 };
    }
    (mean, scale)
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// ln(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logit(p: f64) -> f64 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn one_binary_feature_without_penalty_gives_the_two_group_log_odds() {
        // Group x=0: 30 of 100 converted; group x=1: 80 of 100.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (x, converted, total) in [(0.0, 30, 100), (1.0, 80, 100)] {
            for i in 0..total {
                rows.push(vec![x]);
                labels.push(i < converted);
            }
        }
        let rows: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let options = FitOptions {
            l2: 0.0,
            ..FitOptions::default()
        };
        let model = fit(&rows, &labels, options);
        assert!((model.intercept - logit(0.3)).abs() < 1e-9, "{model:?}");
        assert!(
            (model.weights[0] - (logit(0.8) - logit(0.3))).abs() < 1e-9,
            "{model:?}"
        );
    }

    #[test]
    fn recovers_known_weights_from_simulated_data() {
        let truth = [1.5, -2.0, 0.0, 0.25];
        let intercept = -0.5;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..40_000 {
            let row = vec![
                f64::from(u8::from(rng.bool())),
                rng.f64() * 2.0,
                rng.f64(),
                f64::from(rng.u8(0..10)),
            ];
            let log_odds = intercept + truth.iter().zip(&row).map(|(w, x)| w * x).sum::<f64>();
            labels.push(rng.f64() < sigmoid(log_odds));
            rows.push(row);
        }
        let rows: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let model = fit(&rows, &labels, FitOptions::default());
        for (got, want) in model.weights.iter().zip(truth) {
            assert!((got - want).abs() < 0.08, "weights {model:?} vs {truth:?}");
        }
        assert!((model.intercept - intercept).abs() < 0.1, "{model:?}");
    }

    #[test]
    fn a_stronger_penalty_shrinks_the_weights_and_constant_columns_get_zero() {
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![f64::from(u8::from(i % 2 == 0)), 5.0])
            .collect();
        let labels: Vec<bool> = (0..200).map(|i| i % 2 == 0 || i % 7 == 0).collect();
        let rows: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let weak = fit(&rows, &labels, FitOptions::default());
        let strong = fit(
            &rows,
            &labels,
            FitOptions {
                l2: 100.0,
                ..FitOptions::default()
            },
        );
        assert!(weak.weights[0] > strong.weights[0] && strong.weights[0] > 0.0);
        assert_eq!((weak.weights[1], strong.weights[1]), (0.0, 0.0));
        assert!(weak.weights[0].is_finite(), "separable data stays finite");
    }
}
