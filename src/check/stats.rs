//! Small statistics over run history: least-squares line fits (resource use
//! against item count, extrapolated to the declared volume) and percentiles.

/// A least-squares line `y = intercept + slope * x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearFit {
    pub slope: f64,
    pub intercept: f64,
    /// How many points the fit used.
    pub n: usize,
}

impl LinearFit {
    /// Fits a line through `points` (x, y). `None` with fewer than two
    /// points, non-finite values, or when every x is the same (no slope can
    /// be told).
    pub fn fit(points: &[(f64, f64)]) -> Option<LinearFit> {
        let n = points.len();
        if n < 2 || points.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
            return None;
        }
        let nf = n as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
        let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        // Relative threshold: x values that are all equal up to rounding.
        if sxx <= f64::EPSILON * (mx * mx).max(1.0) * nf {
            return None;
        }
        let slope = sxy / sxx;
        Some(LinearFit {
            slope,
            intercept: my - slope * mx,
            n,
        })
    }

    /// The fitted value at `x`.
    pub fn predict(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `values`; `None` when
/// empty.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// `part / whole` in percent, rounded down; 0 when `whole` is 0.
pub fn percent(part: f64, whole: f64) -> u64 {
    if whole <= 0.0 || !part.is_finite() {
        return 0;
    }
    (part / whole * 100.0).max(0.0).floor() as u64
}
