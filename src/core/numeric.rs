//! Small numeric helpers shared by the network runtimes, metrics and calibration.

/// Index of the largest probability (first one on ties).
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// Softmax of `logits / temperature`, computed stably.
pub fn softmax_with_temperature(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| ((l - max) / t).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn softmax_is_stable_and_sharpens_below_one() {
        let p = softmax_with_temperature(&[1000.0, 1000.0], 1.0);
        assert!((p[0] - 0.5).abs() < 1e-6);
        let cold = softmax_with_temperature(&[1.0, 0.0], 0.5);
        let warm = softmax_with_temperature(&[1.0, 0.0], 2.0);
        assert!(cold[0] > warm[0]);
    }

    #[test]
    fn quantile_is_nearest_rank() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
