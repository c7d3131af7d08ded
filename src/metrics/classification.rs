//! Classification metrics: accuracy, per-class precision / recall / F1 / support, macro and
//! weighted averages, one-vs-rest ROC-AUC, confusion matrix. Pure functions over labels and
//! probabilities, so they are checked against hand-computed cases.

use serde::{Deserialize, Serialize};

use crate::core::numeric::argmax;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
    /// One-vs-rest ROC-AUC; `None` when the class has no positives or no negatives.
    pub roc_auc: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub images: usize,
    pub accuracy: f64,
    pub per_class: Vec<ClassMetrics>,
    pub macro_avg: Averages,
    pub weighted_avg: Averages,
    pub macro_roc_auc: Option<f64>,
    /// Rows: true class; columns: predicted class.
    pub confusion: Vec<Vec<usize>>,
    /// Percentile-bootstrap 95 % intervals (images resampled with replacement).
    #[serde(default)]
    pub ci95: Option<BootstrapIntervals>,
}

/// 95 % confidence intervals from [`BOOTSTRAP_RESAMPLES`] resamples of the test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapIntervals {
    pub resamples: usize,
    pub accuracy: [f64; 2],
    pub macro_f1: [f64; 2],
}

pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Accuracy and macro-F1 (over the classes present) from a confusion matrix.
fn accuracy_and_macro_f1(confusion: &[Vec<usize>]) -> (f64, f64) {
    let n: usize = confusion.iter().flatten().sum();
    let correct: usize = confusion.iter().enumerate().map(|(c, row)| row[c]).sum();
    let mut f1s = Vec::new();
    for (c, row) in confusion.iter().enumerate() {
        let support: usize = row.iter().sum();
        if support == 0 {
            continue;
        }
        let predicted: usize = confusion.iter().map(|r| r[c]).sum();
        let (p, r) = (ratio(row[c], predicted), ratio(row[c], support));
        f1s.push(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        });
    }
    let macro_f1 = if f1s.is_empty() {
        0.0
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    };
    (ratio(correct, n), macro_f1)
}

/// Percentile bootstrap of accuracy and macro-F1, seeded so a report repeats exactly.
pub fn bootstrap(
    labels: &[usize],
    predictions: &[usize],
    classes: usize,
    resamples: usize,
    seed: u64,
) -> Option<BootstrapIntervals> {
    use rand::{Rng, SeedableRng};
    let n = labels.len();
    if n < 2 || resamples == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut accs, mut f1s) = (Vec::with_capacity(resamples), Vec::with_capacity(resamples));
    let mut m = vec![vec![0usize; classes]; classes];
    for _ in 0..resamples {
        m.iter_mut().for_each(|r| r.iter_mut().for_each(|v| *v = 0));
        for _ in 0..n {
            let i = rng.random_range(0..n);
            m[labels[i]][predictions[i]] += 1;
        }
        let (a, f) = accuracy_and_macro_f1(&m);
        accs.push(a);
        f1s.push(f);
    }
    let interval = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        [at(0.025), at(0.975)]
    };
    Some(BootstrapIntervals {
        resamples,
        accuracy: interval(&mut accs),
        macro_f1: interval(&mut f1s),
    })
}

/// Wilson score interval (95 %) of a proportion `k / n`: sound for small `n` and for `k` at 0 or
/// `n`, where the normal approximation fails. `[0, 1]` when `n` is 0.
pub fn wilson_interval(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_964f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

pub fn confusion_matrix(
    labels: &[usize],
    predictions: &[usize],
    classes: usize,
) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&t, &p) in labels.iter().zip(predictions) {
        m[t][p] += 1;
    }
    m
}

/// Area under the ROC curve by the rank statistic (ties count one half).
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if positive[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// All metrics from true labels and per-image class probabilities.
pub fn compute(labels: &[usize], probabilities: &[Vec<f32>], classes: &[String]) -> Metrics {
    let k = classes.len();
    let predictions: Vec<usize> = probabilities.iter().map(|p| argmax(p)).collect();
    let confusion = confusion_matrix(labels, &predictions, k);
    let n = labels.len();
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    let mut per_class = Vec::with_capacity(k);
    for (c, class) in classes.iter().enumerate() {
        let tp = confusion[c][c];
        let support: usize = confusion[c].iter().sum();
        let predicted: usize = (0..k).map(|r| confusion[r][c]).sum();
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, support);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        let scores: Vec<f32> = probabilities.iter().map(|p| p[c]).collect();
        let positive: Vec<bool> = labels.iter().map(|&l| l == c).collect();
        per_class.push(ClassMetrics {
            class: class.clone(),
            precision,
            recall,
            f1,
            support,
            roc_auc: roc_auc(&scores, &positive),
        });
    }
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let mean = |f: fn(&ClassMetrics) -> f64| {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64
        }
    };
    let weighted = |f: fn(&ClassMetrics) -> f64| {
        if n == 0 {
            0.0
        } else {
            per_class
                .iter()
                .map(|m| f(m) * m.support as f64)
                .sum::<f64>()
                / n as f64
        }
    };
    let aucs: Vec<f64> = per_class.iter().filter_map(|m| m.roc_auc).collect();
    Metrics {
        images: n,
        accuracy: ratio(correct, n),
        macro_avg: Averages {
            precision: mean(|m| m.precision),
            recall: mean(|m| m.recall),
            f1: mean(|m| m.f1),
        },
        weighted_avg: Averages {
            precision: weighted(|m| m.precision),
            recall: weighted(|m| m.recall),
            f1: weighted(|m| m.f1),
        },
        macro_roc_auc: (aucs.len() == k && k > 0).then(|| aucs.iter().sum::<f64>() / k as f64),
        per_class,
        confusion,
        ci95: bootstrap(labels, &predictions, k, BOOTSTRAP_RESAMPLES, 0x5EED),
    }
}

impl Metrics {
    /// A readable table (classification report and confusion matrix).
    pub fn to_table(&self, display_names: &[String]) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let width = display_names
            .iter()
            .map(|d| d.len())
            .max()
            .unwrap_or(5)
            .max(12);
        let _ = writeln!(
            s,
            "{:width$}  precision  recall     f1  support  roc-auc",
            "class"
        );
        for (m, name) in self.per_class.iter().zip(display_names) {
            let auc = m.roc_auc.map_or("-".to_string(), |a| format!("{a:.3}"));
            let _ = writeln!(
                s,
                "{name:width$}  {:9.3}  {:6.3}  {:5.3}  {:7}  {auc:>7}",
                m.precision, m.recall, m.f1, m.support
            );
        }
        let auc = self
            .macro_roc_auc
            .map_or("-".to_string(), |a| format!("{a:.3}"));
        let _ = writeln!(
            s,
            "{:width$}  {:9.3}  {:6.3}  {:5.3}  {:7}  {auc:>7}",
            "macro avg",
            self.macro_avg.precision,
            self.macro_avg.recall,
            self.macro_avg.f1,
            self.images
        );
        let _ = writeln!(
            s,
            "{:width$}  {:9.3}  {:6.3}  {:5.3}  {:7}",
            "weighted avg",
            self.weighted_avg.precision,
            self.weighted_avg.recall,
            self.weighted_avg.f1,
            self.images
        );
        match &self.ci95 {
            Some(ci) => {
                let _ = writeln!(
                    s,
                    "\naccuracy: {:.4} (95 % CI {:.3}-{:.3}), macro-F1 {:.3} (95 % CI {:.3}-{:.3}); {} images, {} bootstrap resamples\n",
                    self.accuracy,
                    ci.accuracy[0],
                    ci.accuracy[1],
                    self.macro_avg.f1,
                    ci.macro_f1[0],
                    ci.macro_f1[1],
                    self.images,
                    ci.resamples
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "\naccuracy: {:.4} ({} images)\n",
                    self.accuracy, self.images
                );
            }
        }
        let _ = writeln!(s, "confusion matrix (rows: true class, columns: predicted)");
        let _ = write!(s, "{:width$}", "");
        for name in display_names {
            let _ = write!(s, " {:>11}", truncate(name, 11));
        }
        let _ = writeln!(s);
        for (row, name) in self.confusion.iter().zip(display_names) {
            let _ = write!(s, "{name:width$}");
            for v in row {
                let _ = write!(s, " {v:>11}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals_match_the_textbook() {
        // 8 of 10: 0.490 - 0.943 (Wilson 1927, as tabulated by Newcombe 1998).
        let [lo, hi] = wilson_interval(8, 10);
        assert!(
            (lo - 0.490).abs() < 1e-3 && (hi - 0.943).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson_interval(0, 20);
        assert!(lo == 0.0 && (hi - 0.161).abs() < 1e-3, "{hi}");
        assert_eq!(wilson_interval(0, 0), [0.0, 1.0]);
    }

    #[test]
    fn bootstrap_intervals_bracket_the_estimate_and_shrink_with_more_images() {
        // 80 % right, spread over two classes.
        let make = |n: usize| -> (Vec<usize>, Vec<usize>) {
            let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
            let preds = labels
                .iter()
                .enumerate()
                .map(|(i, &l)| if i % 5 == 0 { 1 - l } else { l })
                .collect();
            (labels, preds)
        };
        let (l, p) = make(50);
        let small = bootstrap(&l, &p, 2, 1000, 1).unwrap();
        assert!(
            small.accuracy[0] < 0.8 && small.accuracy[1] > 0.8,
            "{small:?}"
        );
        let (l, p) = make(1000);
        let large = bootstrap(&l, &p, 2, 1000, 1).unwrap();
        assert!(
            large.accuracy[0] < 0.8 && large.accuracy[1] > 0.8,
            "{large:?}"
        );
        let width = |ci: &BootstrapIntervals| ci.accuracy[1] - ci.accuracy[0];
        assert!(width(&large) * 3.0 < width(&small));
        assert_eq!(bootstrap(&l, &p, 2, 1000, 1), Some(large));
    }

    fn one_hot(k: usize, c: usize) -> Vec<f32> {
        (0..k)
            .map(|i| if i == c { 0.9 } else { 0.1 / (k - 1) as f32 })
            .collect()
    }

    #[test]
    fn hand_computed_three_class_case() {
        // true:  0 0 0 0 1 1 1 2 2 2
        // pred:  0 0 1 2 1 1 0 2 2 2
        let labels = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
        let preds = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2];
        let probs: Vec<Vec<f32>> = preds.iter().map(|&p| one_hot(3, p)).collect();
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = compute(&labels, &probs, &classes);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 1], vec![1, 2, 0], vec![0, 0, 3]]
        );
        assert!((m.accuracy - 0.7).abs() < 1e-12);
        // class a: tp 2, predicted 3, support 4 -> P 2/3, R 1/2, F1 4/7
        assert!((m.per_class[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[0].recall - 0.5).abs() < 1e-12);
        assert!((m.per_class[0].f1 - 4.0 / 7.0).abs() < 1e-12);
        // class c: tp 3, predicted 4, support 3 -> P 3/4, R 1, F1 6/7
        assert!((m.per_class[2].f1 - 6.0 / 7.0).abs() < 1e-12);
        // class b: P 2/3, R 2/3, F1 2/3
        let macro_f1 = (4.0 / 7.0 + 2.0 / 3.0 + 6.0 / 7.0) / 3.0;
        assert!((m.macro_avg.f1 - macro_f1).abs() < 1e-12);
        let weighted_f1 = (4.0 * 4.0 / 7.0 + 3.0 * 2.0 / 3.0 + 3.0 * 6.0 / 7.0) / 10.0;
        assert!((m.weighted_avg.f1 - weighted_f1).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 3);
    }

    #[test]
    fn roc_auc_matches_hand_counts() {
        // Positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) = 3/4.
        let auc = roc_auc(&[0.8, 0.4, 0.6, 0.2], &[true, true, false, false]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        // A tie counts one half.
        let auc = roc_auc(&[0.5, 0.5], &[true, false]).unwrap();
        assert!((auc - 0.5).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn perfect_classifier() {
        let labels = [0, 1, 1, 0];
        let probs: Vec<Vec<f32>> = labels.iter().map(|&c| one_hot(2, c)).collect();
        let m = compute(&labels, &probs, &["x".into(), "y".into()]);
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(m.macro_roc_auc, Some(1.0));
        let table = m.to_table(&["X".into(), "Y".into()]);
        assert!(table.contains("accuracy: 1.0000"));
    }

    #[test]
    fn class_never_predicted_has_zero_precision_not_nan() {
        let labels = [0, 1];
        let probs = vec![one_hot(2, 0), one_hot(2, 0)];
        let m = compute(&labels, &probs, &["x".into(), "y".into()]);
        assert_eq!(m.per_class[1].precision, 0.0);
        assert_eq!(m.per_class[1].f1, 0.0);
        assert!(m.macro_avg.f1.is_finite());
    }
}
