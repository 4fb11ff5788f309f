//! Exponential decay of engagement points.
//!
//! Each contribution decays from its own event time:
//! `value(T) = Σ points_i · 2^(-(T - t_i) / half_life)`. An accumulator keeps
//! that sum as one number referred to an anchor time, so adding an event in
//! any order gives the same value (up to float rounding, ~1e-15 relative).

use crate::core::time::{Timestamp, MS_PER_DAY};

#[derive(Copy, Clone, Debug, PartialEq)]
pub enum HalfLife {
    /// Use the global half-life (only meaningful on a rule).
    Inherit,
    /// No decay: points keep their full value.
    Never,
    /// Half-life in milliseconds; always > 0.
    Millis(f64),
}

impl HalfLife {
    pub fn days(days: f64) -> HalfLife {
        HalfLife::Millis(days * MS_PER_DAY as f64)
    }

    /// The factor a value shrinks by over `elapsed_ms` (grows, for negative
    /// elapsed time).
    pub fn factor(self, elapsed_ms: i64) -> f64 {
        match self {
            HalfLife::Millis(h) => (-(elapsed_ms as f64) / h).exp2(),
            HalfLife::Never | HalfLife::Inherit => 1.0,
        }
    }

    pub fn millis(self) -> Option<f64> {
        match self {
            HalfLife::Millis(h) => Some(h),
            _ => None,
        }
    }
}

/// A decaying sum, stored as its value at `anchor`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Decaying {
    pub anchor: Timestamp,
    pub value: f64,
}

impl Decaying {
    pub fn new(points: f64, at: Timestamp) -> Self {
        Decaying {
            anchor: at,
            value: points,
        }
    }

    /// Adds `points` earned at `at`. The anchor moves forward only, so the
    /// stored value never needs to grow by more than one factor of rounding.
    pub fn add(&mut self, points: f64, at: Timestamp, half_life: HalfLife) {
        if at >= self.anchor {
            self.value = self.value * half_life.factor(at.millis() - self.anchor.millis()) + points;
            self.anchor = at;
        } else {
            self.value += points * half_life.factor(self.anchor.millis() - at.millis());
        }
    }

    pub fn merge(&mut self, other: &Decaying, half_life: HalfLife) {
        self.add(other.value, other.anchor, half_life);
    }

    /// The decayed value at `t`.
    pub fn at(&self, t: Timestamp, half_life: HalfLife) -> f64 {
        self.value * half_life.factor(t.millis() - self.anchor.millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = MS_PER_DAY;

    #[test]
    fn halves_after_one_half_life() {
        let h = HalfLife::days(7.0);
        let acc = Decaying::new(40.0, Timestamp(0));
        assert!((acc.at(Timestamp(7 * DAY), h) - 20.0).abs() < 1e-12);
        assert!((acc.at(Timestamp(14 * DAY), h) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn never_keeps_full_value() {
        let acc = Decaying::new(40.0, Timestamp(0));
        assert_eq!(acc.at(Timestamp(1000 * DAY), HalfLife::Never), 40.0);
    }

    #[test]
    fn adding_out_of_order_gives_the_same_sum() {
        let h = HalfLife::days(3.0);
        let mut forward = Decaying::new(10.0, Timestamp(0));
        forward.add(5.0, Timestamp(DAY), h);
        let mut backward = Decaying::new(5.0, Timestamp(DAY));
        backward.add(10.0, Timestamp(0), h);
        let t = Timestamp(5 * DAY);
        assert!((forward.at(t, h) - backward.at(t, h)).abs() < 1e-12);
        let expected = 10.0 * (-5.0f64 / 3.0).exp2() + 5.0 * (-4.0f64 / 3.0).exp2();
        assert!((forward.at(t, h) - expected).abs() < 1e-12);
    }
}
