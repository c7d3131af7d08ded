//! Tumour presence: the binary question "tumour or not" behind the four classes.
//!
//! A tumour called "No tumour" is the worst error a decision-support tool can make, so besides
//! the four-class figures the project reports, for each decision rule, the sensitivity (tumour
//! slices not called "No tumour") and specificity (tumour-free slices called "No tumour"), each
//! with a 95 % Wilson interval, and how many gliomas were called "No tumour".

use serde::{Deserialize, Serialize};

use super::classification::wilson_interval;

/// Sensitivity and specificity of one decision rule for "tumour or not".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceFigures {
    /// Slices with a tumour (any class but "No tumour").
    pub tumours: usize,
    /// Tumour slices called "No tumour": the misses.
    pub tumours_called_no_tumour: usize,
    /// Share of tumour slices not called "No tumour".
    pub sensitivity: Option<f64>,
    pub sensitivity_ci: [f64; 2],
    /// Slices without a tumour.
    pub tumour_free: usize,
    /// Tumour-free slices called "No tumour".
    pub tumour_free_called_no_tumour: usize,
    /// Share of tumour-free slices called "No tumour".
    pub specificity: Option<f64>,
    pub specificity_ci: [f64; 2],
}

impl PresenceFigures {
    /// Figures of the decisions `decided` (class indices) against `labels`; `no_tumour` is the
    /// index of the "No tumour" class.
    pub fn compute(labels: &[usize], decided: &[usize], no_tumour: usize) -> Self {
        let (mut tumours, mut missed, mut free, mut cleared) = (0, 0, 0, 0);
        for (&y, &d) in labels.iter().zip(decided) {
            if y == no_tumour {
                free += 1;
                cleared += usize::from(d == no_tumour);
            } else {
                tumours += 1;
                missed += usize::from(d == no_tumour);
            }
        }
        let share = |k: usize, n: usize| (n > 0).then(|| k as f64 / n as f64);
        Self {
            tumours,
            tumours_called_no_tumour: missed,
            sensitivity: share(tumours - missed, tumours),
            sensitivity_ci: wilson_interval(tumours - missed, tumours),
            tumour_free: free,
            tumour_free_called_no_tumour: cleared,
            specificity: share(cleared, free),
            specificity_ci: wilson_interval(cleared, free),
        }
    }

    /// One line: "sensitivity 97.3 % (95.1-98.5, 12 of 450 tumours missed), specificity ...".
    pub fn to_text(&self) -> String {
        let part = |name: &str, v: Option<f64>, ci: [f64; 2], tail: String| match v {
            Some(v) => format!(
                "{name} {:.1} % ({:.1}-{:.1}, {tail})",
                v * 100.0,
                ci[0] * 100.0,
                ci[1] * 100.0
            ),
            None => format!("{name} - ({tail})"),
        };
        format!(
            "{}, {}",
            part(
                "sensitivity",
                self.sensitivity,
                self.sensitivity_ci,
                format!(
                    "{} of {} tumours called \"No tumour\"",
                    self.tumours_called_no_tumour, self.tumours
                )
            ),
            part(
                "specificity",
                self.specificity,
                self.specificity_ci,
                format!(
                    "{} of {} tumour-free slices called \"No tumour\"",
                    self.tumour_free_called_no_tumour, self.tumour_free
                )
            )
        )
    }
}

/// The class a rule that says "No tumour" only at `p(no tumour) >= threshold` decides for
/// `probabilities`: the most probable class, except that a most probable "No tumour" below the
/// threshold gives way to the most probable tumour type.
pub fn decide(probabilities: &[f32], no_tumour: usize, threshold: f32) -> usize {
    let best = |skip: Option<usize>| {
        probabilities
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    };
    let top = best(None);
    let p_no = probabilities.get(no_tumour).copied().unwrap_or(0.0);
    if top == no_tumour && p_no < threshold && probabilities.len() > 1 {
        best(Some(no_tumour))
    } else {
        top
    }
}

/// The `p(no tumour)` threshold at which calling "No tumour" has the lower expected cost when a
/// missed tumour costs `miss_cost` false alarms: "No tumour" is worth saying when
/// `p * 1 > (1 - p) * miss_cost`, i.e. `p > miss_cost / (1 + miss_cost)`. It holds for
/// calibrated probabilities, which is why the rule is fitted after temperature scaling.
pub fn threshold_for_miss_cost(miss_cost: f32) -> f32 {
    miss_cost / (1.0 + miss_cost)
}

/// Figures at each threshold of `thresholds`, for choosing and documenting a rule.
pub fn sweep(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    no_tumour: usize,
    thresholds: &[f32],
) -> Vec<(f32, PresenceFigures)> {
    thresholds
        .iter()
        .map(|&t| {
            let decided: Vec<usize> = probabilities
                .iter()
                .map(|p| decide(p, no_tumour, t))
                .collect();
            (t, PresenceFigures::compute(labels, &decided, no_tumour))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doubtful_no_tumour_gives_way_to_the_likeliest_tumour() {
        // Classes: glioma, meningioma, no tumour, pituitary.
        let p = [0.25, 0.05, 0.6, 0.1];
        assert_eq!(decide(&p, 2, 0.5), 2);
        assert_eq!(decide(&p, 2, 0.8), 0);
        // A confident "No tumour" stays; a tumour answer is never turned into "No tumour".
        assert_eq!(decide(&[0.02, 0.02, 0.9, 0.06], 2, 0.8), 2);
        assert_eq!(decide(&[0.1, 0.5, 0.3, 0.1], 2, 0.0), 1);
        assert_eq!(decide(&[0.1, 0.5, 0.3, 0.1], 2, 1.0), 1);
    }

    #[test]
    fn the_cost_rule_is_the_bayes_threshold() {
        assert!((threshold_for_miss_cost(1.0) - 0.5).abs() < 1e-6);
        assert!((threshold_for_miss_cost(9.0) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn figures_count_misses_and_clearances() {
        // Labels: 3 tumours (one called "No tumour"), 2 tumour-free (one cleared).
        let labels = [0, 1, 3, 2, 2];
        let decided = [0, 2, 3, 2, 0];
        let f = PresenceFigures::compute(&labels, &decided, 2);
        assert_eq!((f.tumours, f.tumours_called_no_tumour), (3, 1));
        assert_eq!((f.tumour_free, f.tumour_free_called_no_tumour), (2, 1));
        assert!((f.sensitivity.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((f.specificity.unwrap() - 0.5).abs() < 1e-12);
        assert!(f.sensitivity_ci[0] < 2.0 / 3.0 && f.sensitivity_ci[1] > 2.0 / 3.0);
        assert!(f.to_text().contains("1 of 3 tumours called \"No tumour\""));
        let none = PresenceFigures::compute(&[0, 1], &[0, 1], 2);
        assert_eq!(none.specificity, None);
        assert!(none.to_text().contains("specificity - (0 of 0"));
    }

    #[test]
    fn a_higher_threshold_never_misses_more_tumours() {
        let probs = vec![
            vec![0.3, 0.0, 0.7, 0.0],
            vec![0.1, 0.0, 0.85, 0.05],
            vec![0.02, 0.0, 0.97, 0.01],
            vec![0.4, 0.0, 0.6, 0.0],
        ];
        let labels = [0, 3, 2, 2];
        let s = sweep(&probs, &labels, 2, &[0.5, 0.8, 0.9, 0.99]);
        let missed: Vec<usize> = s.iter().map(|(_, f)| f.tumours_called_no_tumour).collect();
        let cleared: Vec<usize> = s
            .iter()
            .map(|(_, f)| f.tumour_free_called_no_tumour)
            .collect();
        assert_eq!(missed, [2, 1, 0, 0]);
        assert_eq!(cleared, [2, 1, 1, 0]);
    }
}
