//! Evaluation on a labelled folder, leak-free by default: test images whose bytes also occur in
//! the training folder are excluded from the headline figures (and counted); the inflated
//! figure with them is reported on request.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::audit::{self, NearDuplicateCriteria};
use super::observe::observe;
use crate::core::error::{DatasetProblem, Error, Result};
use crate::data::folder::ImageFolder;
use crate::imaging::GreyImage;
use crate::inference::{Prediction, Predictor, Verdict, prediction_from};
use crate::metrics::calibration::{self, CoveragePoint};
use crate::metrics::classification::{self as metrics, Metrics};
use crate::metrics::presence::{self, PresenceFigures};
use crate::modelfile::ClassInfo;

pub use crate::core::DISCLAIMER;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: PathBuf,
    /// Training folder for the leak check; `None` looks for a `Training` folder beside `data`.
    pub train_data: Option<PathBuf>,
    pub include_leaks: bool,
    /// Also exclude near-duplicates of training images (found on the fly); `None`: exact copies only.
    pub near_duplicates: Option<NearDuplicateCriteria>,
    /// A saved exclusion list from `oncolens audit`, used instead of searching.
    pub exclusions: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeakCheck {
    /// Training folder compared against, if any was found.
    pub train_data: Option<String>,
    /// How copies were found.
    pub method: String,
    /// Test images with a copy in training, excluded from `leak_free`.
    pub excluded: usize,
    /// Of those, byte-identical copies.
    pub excluded_exact: usize,
    pub excluded_per_class: Vec<usize>,
    pub excluded_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    pub model: String,
    /// Test-time augmentation (flip and shift averaging) was on.
    pub tta: bool,
    /// The int8 engine computed the answers.
    #[serde(default)]
    pub int8: bool,
    pub model_architecture: String,
    pub oncolens_version: String,
    pub data: String,
    pub classes: Vec<ClassInfo>,
    pub images_found: usize,
    pub unreadable: Vec<String>,
    pub leak_check: LeakCheck,
    /// Figures on test images with no copy in training: the ones to quote.
    pub leak_free: Metrics,
    /// Figures with only byte-identical copies removed (what most published numbers do at best).
    pub exact_copies_removed: Metrics,
    /// Figures on every readable test image (inflated by leaked copies), with `--include-leaks`.
    pub with_leaks: Option<Metrics>,
    /// Calibration, selective prediction and the input check on the leak-free images.
    pub leak_free_trust: TrustFigures,
    /// The same with only byte-identical copies removed.
    pub exact_copies_removed_trust: TrustFigures,
    /// The same on every readable test image, with `--include-leaks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_leaks_trust: Option<TrustFigures>,
    pub note: String,
}

/// How the model's confidence and input check behave on real, labelled MRI slices.
#[derive(Debug, Clone, Serialize)]
pub struct TrustFigures {
    pub images: usize,
    /// Expected calibration error (15 bins) of the calibrated probabilities.
    pub ece: f64,
    /// Accuracy when answering only the most confident 90 % / 95 % of images.
    pub accuracy_at_90_coverage: Option<f64>,
    pub accuracy_at_95_coverage: Option<f64>,
    /// At the model's stored threshold: images answered (not "uncertain") and their accuracy.
    pub threshold: f32,
    pub answered: usize,
    pub answered_accuracy: Option<f64>,
    /// Real MRI slices the input check called "not a brain MRI slice" (wrongly), and which.
    pub input_check_rejected: Option<usize>,
    pub input_check_rejected_files: Vec<String>,
    /// Tumour or not, under the model's presence rule and under the most probable class
    /// (`None` for a model without a "No tumour" class).
    pub presence: Option<PresenceEvaluation>,
    /// The whole risk-coverage curve, most confident first.
    pub risk_coverage: Vec<CoveragePoint>,
}

/// The binary question "tumour or not" on a test set.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceEvaluation {
    /// The probability the model's rule needs to say "No tumour" (`None`: the model has no
    /// rule, and answers the most probable class).
    pub min_no_tumour_probability: Option<f32>,
    /// Under the answers given (the rule applied).
    pub answered: PresenceFigures,
    /// Under the most probable class.
    pub most_probable: PresenceFigures,
    /// Gliomas, and how many were called "No tumour" (answered / most probable class).
    pub gliomas: usize,
    pub gliomas_called_no_tumour: usize,
    pub gliomas_called_no_tumour_most_probable: usize,
    /// Four-class accuracy of the answers given (the tables above use the most probable class).
    pub answered_accuracy: f64,
}

impl PresenceEvaluation {
    fn compute(
        labels: &[usize],
        predictions: &[&Prediction],
        no_tumour: usize,
        glioma: Option<usize>,
    ) -> Self {
        let answered: Vec<usize> = predictions.iter().map(|p| p.class_index).collect();
        let most_probable: Vec<usize> = predictions
            .iter()
            .map(|p| presence::decide(&p.probabilities, no_tumour, 0.0))
            .collect();
        let gliomas_called = |decided: &[usize]| {
            labels
                .iter()
                .zip(decided)
                .filter(|(y, d)| Some(**y) == glioma && **d == no_tumour)
                .count()
        };
        let right = labels.iter().zip(&answered).filter(|(y, d)| y == d).count();
        Self {
            min_no_tumour_probability: predictions
                .iter()
                .find_map(|p| p.presence.as_ref())
                .map(|p| p.min_no_tumour_probability),
            answered: PresenceFigures::compute(labels, &answered, no_tumour),
            most_probable: PresenceFigures::compute(labels, &most_probable, no_tumour),
            gliomas: labels.iter().filter(|y| Some(**y) == glioma).count(),
            gliomas_called_no_tumour: gliomas_called(&answered),
            gliomas_called_no_tumour_most_probable: gliomas_called(&most_probable),
            answered_accuracy: right as f64 / labels.len().max(1) as f64,
        }
    }

    fn to_text(&self) -> String {
        let rule = match self.min_no_tumour_probability {
            Some(t) => format!(
                "\"No tumour\" only at p >= {t:.2} (the model's presence rule); four-class accuracy of these answers {:.1} %",
                self.answered_accuracy * 100.0
            ),
            None => "no presence rule: the most probable class is answered".into(),
        };
        let pct = |k: usize, n: usize| 100.0 * k as f64 / n.max(1) as f64;
        format!(
            "tumour or not, {rule}\n  answered:      {}\n  most probable: {}\n  gliomas called \"No tumour\": {} of {} ({:.1} %) answered, {} ({:.1} %) most probable\n",
            self.answered.to_text(),
            self.most_probable.to_text(),
            self.gliomas_called_no_tumour,
            self.gliomas,
            pct(self.gliomas_called_no_tumour, self.gliomas),
            self.gliomas_called_no_tumour_most_probable,
            pct(self.gliomas_called_no_tumour_most_probable, self.gliomas),
        )
    }
}

impl TrustFigures {
    fn compute(
        labels: &[usize],
        predictions: &[&Prediction],
        files: &[String],
        manifest: &crate::modelfile::Manifest,
    ) -> Self {
        let threshold = manifest.uncertainty_threshold;
        let checked = manifest.trust.is_some();
        let glioma = manifest.classes.iter().position(|c| c.id == "glioma_tumor");
        let probs: Vec<Vec<f32>> = predictions
            .iter()
            .map(|p| p.probabilities.clone())
            .collect();
        let curve = calibration::risk_coverage(&probs, labels);
        let bins = calibration::reliability(&probs, labels, calibration::ECE_BINS);
        let answered: Vec<bool> = predictions.iter().map(|p| !p.uncertain).collect();
        let n_answered = answered.iter().filter(|a| **a).count();
        let correct_answered = predictions
            .iter()
            .zip(labels)
            .filter(|(p, y)| !p.uncertain && p.class_index == **y)
            .count();
        let rejected: Vec<String> = predictions
            .iter()
            .zip(files)
            .filter(|(p, _)| p.verdict == Verdict::NotBrainMri)
            .map(|(_, f)| f.clone())
            .collect();
        Self {
            images: labels.len(),
            ece: calibration::expected_calibration_error(&bins),
            accuracy_at_90_coverage: calibration::accuracy_at_coverage(&curve, 0.9),
            accuracy_at_95_coverage: calibration::accuracy_at_coverage(&curve, 0.95),
            threshold,
            answered: n_answered,
            answered_accuracy: (n_answered > 0)
                .then(|| correct_answered as f64 / n_answered as f64),
            input_check_rejected: checked.then_some(rejected.len()),
            input_check_rejected_files: rejected,
            presence: manifest
                .no_tumour_index()
                .map(|no| PresenceEvaluation::compute(labels, predictions, no, glioma)),
            risk_coverage: curve,
        }
    }

    fn to_text(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0));
        let mut s = format!(
            "calibration: ECE {:.3} over {} images
selective prediction: accuracy {} at 90 % coverage, {} at 95 %; at the model's threshold ({:.2}) {} of {} answered, {} of them right
",
            self.ece,
            self.images,
            pct(self.accuracy_at_90_coverage),
            pct(self.accuracy_at_95_coverage),
            self.threshold,
            self.answered,
            self.images,
            pct(self.answered_accuracy),
        );
        match self.input_check_rejected {
            Some(n) => s.push_str(&format!(
                "input check: {n} of {} real MRI slices wrongly called \"not a brain MRI slice\" ({:.1} %)\n",
                self.images,
                100.0 * n as f64 / self.images.max(1) as f64
            )),
            None => s.push_str("input check: not fitted for this model\n"),
        }
        if let Some(p) = &self.presence {
            s.push_str(&p.to_text());
        }
        s
    }
}

/// A `Training` folder beside a `Testing` folder, if there is one.
pub fn sibling_training_folder(test: &Path) -> Option<PathBuf> {
    let parent = test.canonicalize().ok()?.parent()?.to_path_buf();
    ["Training", "training", "train"]
        .iter()
        .map(|n| parent.join(n))
        .find(|p| p.is_dir())
}

/// The model's class index of each class folder of `folder`, matched by id.
fn class_map(folder: &ImageFolder, model_ids: &[String], data: &Path) -> Result<Vec<usize>> {
    folder
        .classes
        .iter()
        .map(|c| {
            model_ids.iter().position(|m| m == c).ok_or_else(|| {
                Error::dataset(
                    data,
                    DatasetProblem::UnknownClass {
                        class: c.clone(),
                        model_classes: model_ids.to_vec(),
                    },
                )
            })
        })
        .collect()
}

/// Which test samples have a copy in training, and how that was decided: from a saved
/// exclusion list, else by searching the training folder (exact, and near when asked).
fn leaked_samples(
    opts: &EvalOptions,
    folder: &ImageFolder,
    train_folder: Option<&ImageFolder>,
) -> Result<(Vec<bool>, String)> {
    let mut leaked = vec![false; folder.samples.len()];
    let method = if let Some(list) = &opts.exclusions {
        let ex = audit::read_exclusions(list)?;
        for (i, flag) in leaked.iter_mut().enumerate() {
            let rel = folder.relative_path(i);
            *flag = ex
                .leaked_test_images
                .iter()
                .any(|p| Path::new(p).ends_with(&rel));
        }
        format!("exclusion list {}", list.display())
    } else if let Some(train) = train_folder {
        let criteria = opts.near_duplicates;
        for i in audit::leaked_test_indices(train, folder, criteria) {
            leaked[i] = true;
        }
        match criteria {
            Some(c) => format!(
                "byte-identical copies and near-duplicates (pHash distance <= {} in any orientation, correlation >= {:.2})",
                c.max_distance, c.min_correlation
            ),
            None => "byte-identical copies".into(),
        }
    } else {
        "none".into()
    };
    Ok((leaked, method))
}

pub fn evaluate(predictor: &Predictor, opts: &EvalOptions) -> Result<EvaluationReport> {
    let manifest = &predictor.manifest;
    let folder = ImageFolder::scan(&opts.data)?;
    let model_ids = manifest.class_ids();
    let class_map = class_map(&folder, &model_ids, &opts.data)?;
    let train_root = opts
        .train_data
        .clone()
        .or_else(|| sibling_training_folder(&opts.data));
    let train_folder = match &train_root {
        Some(root) => Some(ImageFolder::scan(root)?),
        None => {
            tracing::warn!(
                "no training folder given or found beside the test folder; the leak check is skipped"
            );
            None
        }
    };
    let train_hashes: HashSet<&str> = train_folder
        .iter()
        .flat_map(|f| f.samples.iter().map(|s| s.sha256.as_str()))
        .collect();
    let k = model_ids.len();
    let (leaked, method) = leaked_samples(opts, &folder, train_folder.as_ref())?;
    let mut excluded_per_class = vec![0; k];
    let mut excluded_files = Vec::new();
    let mut excluded_exact = 0;
    for (i, s) in folder.samples.iter().enumerate() {
        if leaked[i] {
            excluded_per_class[class_map[s.label]] += 1;
            excluded_files.push(folder.relative_path(i));
            excluded_exact += usize::from(train_hashes.contains(s.sha256.as_str()));
        }
    }
    let all: Vec<usize> = (0..folder.samples.len()).collect();
    let pre = &manifest.preprocessing;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(all.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (observed, skipped) = observe(
        predictor.compute(),
        pre,
        &folder,
        &all,
        Some(&bar),
        predictor.tta,
    );
    bar.finish_and_clear();
    let views: Vec<&GreyImage> = observed.iter().map(|o| &o.gate_view).collect();
    let findings = predictor.gate_findings(&views);
    let gate = predictor.gate().map(|g| &g.manifest);
    let predictions: Vec<Prediction> = observed
        .iter()
        .zip(&findings)
        .map(|(o, f)| {
            prediction_from(
                manifest,
                &o.logits,
                Some((&o.stats, o.size, &o.pooled)),
                gate.zip(f.as_ref()),
            )
        })
        .collect();
    let probs: Vec<Vec<f32>> = predictions
        .iter()
        .map(|p| p.probabilities.clone())
        .collect();
    let labels: Vec<usize> = observed.iter().map(|o| class_map[o.label]).collect();
    let (mut lf_labels, mut lf_probs, mut lf_preds, mut lf_files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ex_labels, mut ex_probs, mut ex_preds, mut ex_files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (((o, &l), p), pred) in observed.iter().zip(&labels).zip(&probs).zip(&predictions) {
        let idx = o.index;
        if !leaked[idx] {
            lf_labels.push(l);
            lf_probs.push(p.clone());
            lf_preds.push(pred);
            lf_files.push(folder.relative_path(idx));
        }
        if !train_hashes.contains(folder.samples[idx].sha256.as_str()) {
            ex_labels.push(l);
            ex_probs.push(p.clone());
            ex_preds.push(pred);
            ex_files.push(folder.relative_path(idx));
        }
    }
    let leak_free_trust = TrustFigures::compute(&lf_labels, &lf_preds, &lf_files, manifest);
    let exact_copies_removed_trust =
        TrustFigures::compute(&ex_labels, &ex_preds, &ex_files, manifest);
    let with_leaks_trust = opts.include_leaks.then(|| {
        let files: Vec<String> = observed
            .iter()
            .map(|o| folder.relative_path(o.index))
            .collect();
        let all: Vec<&Prediction> = predictions.iter().collect();
        TrustFigures::compute(&labels, &all, &files, manifest)
    });
    let exact_copies_removed = metrics::compute(&ex_labels, &ex_probs, &model_ids);
    let leak_free = metrics::compute(&lf_labels, &lf_probs, &model_ids);
    let with_leaks = opts
        .include_leaks
        .then(|| metrics::compute(&labels, &probs, &model_ids));
    Ok(EvaluationReport {
        model: manifest.name.clone(),
        tta: predictor.tta,
        int8: predictor.is_int8(),
        model_architecture: manifest.spec.architecture.name().into(),
        oncolens_version: env!("CARGO_PKG_VERSION").into(),
        data: opts.data.display().to_string(),
        classes: manifest.classes.clone(),
        images_found: folder.samples.len(),
        unreadable: skipped,
        leak_check: LeakCheck {
            train_data: train_root.map(|p| p.display().to_string()),
            method,
            excluded: excluded_files.len(),
            excluded_exact,
            excluded_per_class,
            excluded_files,
        },
        leak_free,
        exact_copies_removed,
        with_leaks,
        leak_free_trust,
        exact_copies_removed_trust,
        with_leaks_trust,
        note: DISCLAIMER.into(),
    })
}

impl EvaluationReport {
    pub fn to_text(&self) -> String {
        let names: Vec<String> = self.classes.iter().map(|c| c.display.clone()).collect();
        let mut s = format!(
            "model {} ({}{}{}) on {}\n{} images found, {} unreadable\n",
            self.model,
            self.model_architecture,
            if self.int8 { ", int8" } else { "" },
            if self.tta {
                ", test-time augmentation"
            } else {
                ""
            },
            self.data,
            self.images_found,
            self.unreadable.len()
        );
        match &self.leak_check.train_data {
            Some(t) => s.push_str(&format!(
                "leak check against {t} ({}): {} test images have a copy in training ({} byte-identical) and are excluded ({})\n",
                self.leak_check.method,
                self.leak_check.excluded,
                self.leak_check.excluded_exact,
                names
                    .iter()
                    .zip(&self.leak_check.excluded_per_class)
                    .map(|(n, c)| format!("{n} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => s.push_str("leak check: skipped (no training folder)\n"),
        }
        s.push_str("\n== leak-free (every copy in training excluded) ==\n");
        s.push_str(&self.leak_free.to_table(&names));
        s.push_str(&self.leak_free_trust.to_text());
        s.push_str("\n== byte-identical copies excluded only ==\n");
        s.push_str(&self.exact_copies_removed.to_table(&names));
        s.push_str(&self.exact_copies_removed_trust.to_text());
        if let Some(m) = &self.with_leaks {
            s.push_str("\n== with leaked copies included (inflated) ==\n");
            s.push_str(&m.to_table(&names));
            if let Some(t) = &self.with_leaks_trust {
                s.push_str(&t.to_text());
            }
        }
        s.push_str(&format!("\n{}\n", self.note));
        s
    }
}

impl EvaluationReport {
    /// The risk-coverage curves (leak-free and byte-copies-removed) as a PNG.
    pub fn draw_risk_coverage(&self, path: &Path) -> Result<()> {
        let curve = |f: &TrustFigures| -> Vec<(f64, f64)> {
            f.risk_coverage
                .iter()
                .map(|p| (p.coverage, p.risk))
                .collect()
        };
        let max_risk = self
            .leak_free_trust
            .risk_coverage
            .iter()
            .chain(&self.exact_copies_removed_trust.risk_coverage)
            .map(|p| p.risk)
            .fold(0.05, f64::max);
        crate::plot::XyChart {
            title: "Risk-coverage: answering only the most confident",
            x_label: "coverage (share of images answered)",
            y_label: "risk (error rate among answered)",
            x_range: (0.0, 1.0),
            y_range: (0.0, (max_risk * 1.1).min(1.0)),
            diagonal: false,
        }
        .draw(
            path,
            &[
                (
                    &format!("leak-free ({} images)", self.leak_free_trust.images),
                    curve(&self.leak_free_trust),
                ),
                (
                    &format!(
                        "byte copies removed ({} images)",
                        self.exact_copies_removed_trust.images
                    ),
                    curve(&self.exact_copies_removed_trust),
                ),
            ],
        )
    }

    /// The leak-free confusion matrix as a PNG.
    pub fn draw_confusion(&self, path: &Path) -> Result<()> {
        let names: Vec<String> = self.classes.iter().map(|c| c.display.clone()).collect();
        crate::plot::confusion_matrix(
            path,
            "Confusion matrix (leak-free)",
            &names,
            &self.leak_free.confusion,
        )
    }
}
