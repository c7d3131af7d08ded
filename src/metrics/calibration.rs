//! Calibration and selective prediction: temperature scaling (Guo et al. 2017) fitted on held-out
//! logits, expected calibration error, reliability bins, and the risk-coverage curve of "answer
//! only when confident".

use serde::{Deserialize, Serialize};

use crate::core::numeric::{argmax, softmax_with_temperature};

/// Bins of the expected calibration error (equal width over confidence).
pub const ECE_BINS: usize = 15;

/// Mean negative log-likelihood of `labels` under `logits / temperature`.
pub fn nll(logits: &[Vec<f32>], labels: &[usize], temperature: f32) -> f64 {
    if logits.is_empty() {
        return 0.0;
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| {
            let p = softmax_with_temperature(l, temperature);
            -f64::from(p.get(y).copied().unwrap_or(0.0).max(1e-12)).ln()
        })
        .sum();
    total / logits.len() as f64
}

/// The temperature minimising the NLL of held-out logits: golden-section search over
/// `log T` in `[ln 0.05, ln 20]` (the NLL is unimodal in T for a fixed set of logits).
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let f = |log_t: f64| nll(logits, labels, log_t.exp() as f32);
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean top-class probability of the images in the bin.
    pub confidence: f64,
    /// Share of them whose top class is right.
    pub accuracy: f64,
}

/// Reliability bins over the top-class probability.
pub fn reliability(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    bins: usize,
) -> Vec<ReliabilityBin> {
    let mut sums = vec![(0usize, 0f64, 0usize); bins];
    for (p, &y) in probabilities.iter().zip(labels) {
        let top = argmax(p);
        let conf = f64::from(p[top]);
        let b = ((conf * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += conf;
        sums[b].2 += usize::from(top == y);
    }
    sums.iter()
        .enumerate()
        .map(|(i, &(n, conf, correct))| ReliabilityBin {
            lower: i as f64 / bins as f64,
            upper: (i + 1) as f64 / bins as f64,
            count: n,
            confidence: if n > 0 { conf / n as f64 } else { 0.0 },
            accuracy: if n > 0 {
                correct as f64 / n as f64
            } else {
                0.0
            },
        })
        .collect()
}

/// Expected calibration error: the count-weighted mean gap between confidence and accuracy.
pub fn expected_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.confidence - b.accuracy).abs())
        .sum::<f64>()
        / n as f64
}

/// One point of a risk-coverage curve: answering only the `coverage` most confident share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoveragePoint {
    pub coverage: f64,
    /// Error rate among the answered images.
    pub risk: f64,
    /// The lowest confidence still answered.
    pub threshold: f32,
}

/// The risk-coverage curve, most confident first: point `k` answers the `k + 1` most confident
/// images.
pub fn risk_coverage(probabilities: &[Vec<f32>], labels: &[usize]) -> Vec<CoveragePoint> {
    let mut scored: Vec<(f32, bool)> = probabilities
        .iter()
        .zip(labels)
        .map(|(p, &y)| {
            let top = argmax(p);
            (p[top], top == y)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = scored.len();
    let mut errors = 0usize;
    scored
        .iter()
        .enumerate()
        .map(|(i, &(conf, correct))| {
            errors += usize::from(!correct);
            CoveragePoint {
                coverage: (i + 1) as f64 / n as f64,
                risk: errors as f64 / (i + 1) as f64,
                threshold: conf,
            }
        })
        .collect()
}

/// Accuracy when answering the most confident `coverage` share (the nearest point at or above it).
pub fn accuracy_at_coverage(curve: &[CoveragePoint], coverage: f64) -> Option<f64> {
    curve
        .iter()
        .find(|p| p.coverage >= coverage - 1e-9)
        .map(|p| 1.0 - p.risk)
}

/// The confidence threshold that answers `coverage` of held-out images: the confidence of the
/// last image inside that share.
pub fn threshold_for_coverage(probabilities: &[Vec<f32>], coverage: f64) -> f32 {
    let mut conf: Vec<f32> = probabilities.iter().map(|p| p[argmax(p)]).collect();
    if conf.is_empty() {
        return 0.0;
    }
    conf.sort_by(|a, b| b.total_cmp(a));
    let k = ((coverage.clamp(0.0, 1.0) * conf.len() as f64).ceil() as usize).clamp(1, conf.len());
    conf[k - 1]
}

/// Calibration of a model on a held-out set, before and after temperature scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub images: usize,
    pub temperature: f32,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
    pub bins_before: Vec<ReliabilityBin>,
    pub bins_after: Vec<ReliabilityBin>,
}

/// Fits the temperature on held-out logits and reports what it changed.
pub fn calibrate(logits: &[Vec<f32>], labels: &[usize]) -> CalibrationReport {
    let temperature = fit_temperature(logits, labels);
    let probs = |t: f32| -> Vec<Vec<f32>> {
        logits
            .iter()
            .map(|l| softmax_with_temperature(l, t))
            .collect()
    };
    let bins_before = reliability(&probs(1.0), labels, ECE_BINS);
    let bins_after = reliability(&probs(temperature), labels, ECE_BINS);
    CalibrationReport {
        images: logits.len(),
        temperature,
        nll_before: nll(logits, labels, 1.0),
        nll_after: nll(logits, labels, temperature),
        ece_before: expected_calibration_error(&bins_before),
        ece_after: expected_calibration_error(&bins_after),
        bins_before,
        bins_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Logits of a classifier that is right 70 % of the time but says so with huge margins.
    fn overconfident(n: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let y = rng.random_range(0..3);
            let guess = if rng.random_bool(0.7) { y } else { (y + 1) % 3 };
            let mut l = vec![0.0f32; 3];
            l[guess] = 8.0 + rng.random_range(-1.0..1.0);
            logits.push(l);
            labels.push(y);
        }
        (logits, labels)
    }

    #[test]
    fn temperature_scaling_cures_overconfidence() {
        let (logits, labels) = overconfident(600);
        let r = calibrate(&logits, &labels);
        assert!(r.temperature > 2.0, "T = {}", r.temperature);
        assert!(r.nll_after < r.nll_before);
        assert!(r.ece_before > 0.25, "{}", r.ece_before);
        assert!(r.ece_after < 0.05, "{}", r.ece_after);
        // A right-every-time classifier stays sharp.
        let sure: Vec<Vec<f32>> = labels
            .iter()
            .map(|&y| (0..3).map(|c| if c == y { 3.0 } else { 0.0 }).collect())
            .collect();
        assert!(fit_temperature(&sure, &labels) < 1.0);
    }

    #[test]
    fn ece_matches_a_hand_computed_case() {
        // Two images at 0.9 (one right), two at 0.6 (both right).
        let p = vec![
            vec![0.9, 0.1],
            vec![0.9, 0.1],
            vec![0.6, 0.4],
            vec![0.4, 0.6],
        ];
        let y = [0, 1, 0, 1];
        let bins = reliability(&p, &y, 10);
        // |0.9 - 0.5| * 2/4 + |0.6 - 1.0| * 2/4 = 0.4
        assert!((expected_calibration_error(&bins) - 0.4).abs() < 1e-6);
    }

    #[test]
    fn risk_falls_as_coverage_shrinks_when_confidence_means_something() {
        let p = vec![
            vec![0.95, 0.05],
            vec![0.9, 0.1],
            vec![0.2, 0.8],
            vec![0.6, 0.4],
            vec![0.45, 0.55],
        ];
        let y = [0, 0, 1, 1, 0]; // the two least confident are wrong
        let curve = risk_coverage(&p, &y);
        assert_eq!(curve.len(), 5);
        assert_eq!(curve[2].risk, 0.0);
        assert!((curve[4].risk - 0.4).abs() < 1e-9);
        assert_eq!(accuracy_at_coverage(&curve, 0.6), Some(1.0));
        assert!((threshold_for_coverage(&p, 0.6) - 0.8).abs() < 1e-6);
    }
}
