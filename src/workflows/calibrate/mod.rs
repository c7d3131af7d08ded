//! Calibration: when the answer should not be a bare tumour type. Fits, on a model's own
//! training split, what the model file stores as its [`TrustProfile`]:
//!
//! - the temperature (temperature scaling on the validation split, so a probability of 0.8
//!   means right about 8 times in 10 on held-out slices) and the "uncertain" threshold;
//! - the input check: bounds on image statistics and the feature density
//!   ([`input_check_fit`]);
//! - the presence rule: the calibrated probability "No tumour" needs, from the weight given to a
//!   missed tumour ([`PresenceRule`]), with its sensitivity and specificity on validation.
//!
//! [`fit`] works on observations; [`calibrate_saved`] is the whole workflow for a saved model
//! (run at the end of `train`, or by `oncolens calibrate`), so `predict`, `evaluate`, the web
//! app and the API apply the same checks.

pub mod input_check_fit;

use std::path::Path;

use serde::Serialize;

use super::observe::{Observation, observe};
use crate::core::error::{CalibrationError, Result, SettingError};
use crate::core::files::write_json_atomic;
use crate::core::numeric::{quantile, softmax_with_temperature};
use crate::data::ImageFolder;
use crate::imaging::ImageStats;
use crate::metrics::calibration::{self, CalibrationReport};
use crate::metrics::presence::{self, PresenceFigures};
use crate::modelfile::bundle::{self, Mode, ModelSource};
use crate::modelfile::input_check::ImageBounds;
use crate::modelfile::{CalibrationSummary, PresenceRule, TrustProfile};
use crate::runtime::LoadedModel;
use input_check_fit::{
    SHRINKAGE_CANDIDATES, ShrinkageScore, fit_features, fit_features_choosing_shrinkage,
    fit_image_bounds,
};

/// Settings of [`fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Share of validation images answered (the rest "uncertain") at the fitted threshold.
    pub coverage: f64,
    /// Share of validation images whose feature distance stays below the OOD threshold.
    pub feature_quantile: f64,
    /// Shrinkage of the feature covariance towards a scaled identity; `None`: the candidate
    /// under which the validation features are most likely.
    pub shrinkage: Option<f32>,
    /// How many false alarms a missed tumour is weighed as: "No tumour" is said only at a
    /// calibrated probability of at least `miss_cost / (1 + miss_cost)`; 1 answers the most
    /// probable class.
    pub miss_cost: f32,
}

/// The default [`FitOptions::miss_cost`].
pub const DEFAULT_MISS_COST: f32 = 4.0;

/// Thresholds on p(no tumour) whose validation figures the calibration report lists.
pub const PRESENCE_SWEEP: [f32; 9] = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98];

impl FitOptions {
    /// Refuses shares outside 0.5-1 and a shrinkage outside (0, 1].
    pub fn validate(&self) -> std::result::Result<(), SettingError> {
        if !(0.5..=1.0).contains(&self.coverage) || !(0.5..=1.0).contains(&self.feature_quantile) {
            return Err(SettingError::new(
                "calibration setting",
                "--coverage and --feature-quantile must be between 0.5 and 1",
            ));
        }
        if self
            .shrinkage
            .is_some_and(|s| !(0.0..=1.0).contains(&s) || s == 0.0)
        {
            return Err(SettingError::new(
                "calibration setting",
                "--shrinkage must be in (0, 1]",
            ));
        }
        if !(1.0..=1000.0).contains(&self.miss_cost) {
            return Err(SettingError::new(
                "calibration setting",
                "--miss-cost must be between 1 (no extra weight) and 1000",
            ));
        }
        Ok(())
    }
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            coverage: 0.95,
            feature_quantile: 0.995,
            shrinkage: None,
            miss_cost: DEFAULT_MISS_COST,
        }
    }
}

/// Everything [`fit`] found, for the calibration report.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub calibration: CalibrationReport,
    pub uncertainty_threshold: f32,
    /// Training images the input check was fitted on.
    pub train_images: usize,
    /// The feature-distance threshold of the input check.
    pub feature_threshold: f32,
    /// Feature distances of the validation images, sorted.
    pub validation_distances: Vec<f32>,
    pub validation_rejected_by_image_checks: usize,
    /// The covariance shrinkage used.
    pub shrinkage: f32,
    /// Validation log-likelihood per shrinkage tried (empty when it was fixed).
    pub shrinkage_scores: Vec<ShrinkageScore>,
    /// The presence rule fitted (`None` for a model without a "No tumour" class).
    pub presence: Option<PresenceRule>,
    /// Validation figures at other thresholds on p(no tumour), to show what the rule trades.
    pub presence_sweep: Vec<(f32, PresenceFigures)>,
}

/// The presence rule for `miss_cost`, with its validation figures and the sweep around it.
fn fit_presence(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    no_tumour: usize,
    miss_cost: f32,
) -> (PresenceRule, Vec<(f32, PresenceFigures)>) {
    let threshold = presence::threshold_for_miss_cost(miss_cost);
    let figures_at = |t: f32| {
        let decided: Vec<usize> = probabilities
            .iter()
            .map(|p| presence::decide(p, no_tumour, t))
            .collect();
        PresenceFigures::compute(labels, &decided, no_tumour)
    };
    let rule = PresenceRule {
        no_tumour_class: no_tumour,
        miss_cost,
        min_no_tumour_probability: threshold,
        rule: format!(
            "\"No tumour\" only at a calibrated probability of at least {threshold:.2}: a missed \
             tumour weighs as {miss_cost} false alarms; below it the most probable tumour type is \
             answered"
        ),
        validation: figures_at(threshold),
        validation_most_probable: figures_at(0.0),
    };
    let sweep = presence::sweep(probabilities, labels, no_tumour, &PRESENCE_SWEEP);
    (rule, sweep)
}

/// Fits temperature, uncertainty threshold, image bounds and feature density: features and
/// image bounds on `train`, everything else on the held-out `validation` images.
///
/// `no_tumour` is the index of the "No tumour" class, for the presence rule.
pub fn fit(
    train: &[Observation],
    validation: &[Observation],
    classes: usize,
    no_tumour: Option<usize>,
    options: FitOptions,
) -> Result<(TrustProfile, f32, FitReport)> {
    if train.is_empty() || validation.is_empty() {
        return Err(CalibrationError::NoImages.into());
    }
    let val_logits: Vec<Vec<f32>> = validation.iter().map(|o| o.logits.clone()).collect();
    let val_labels: Vec<usize> = validation.iter().map(|o| o.label).collect();
    let report = calibration::calibrate(&val_logits, &val_labels);
    let val_probs: Vec<Vec<f32>> = val_logits
        .iter()
        .map(|l| softmax_with_temperature(l, report.temperature))
        .collect();
    let threshold = calibration::threshold_for_coverage(&val_probs, options.coverage);
    let (presence, presence_sweep) = match no_tumour {
        Some(no) => {
            let (rule, sweep) = fit_presence(&val_probs, &val_labels, no, options.miss_cost);
            (Some(rule), sweep)
        }
        None => (None, Vec::new()),
    };

    let stats: Vec<ImageStats> = train.iter().map(|o| o.stats).collect();
    let image_bounds: ImageBounds = fit_image_bounds(&stats);
    let feats: Vec<Vec<f32>> = train.iter().map(|o| o.pooled.clone()).collect();
    let labels: Vec<usize> = train.iter().map(|o| o.label).collect();
    let not_pd = || CalibrationError::NotPositiveDefinite;
    let (mut features, shrinkage_scores) = match options.shrinkage {
        Some(a) => (
            fit_features(&feats, &labels, classes, a).ok_or_else(not_pd)?,
            Vec::new(),
        ),
        None => {
            let val_feats: Vec<Vec<f32>> = validation.iter().map(|o| o.pooled.clone()).collect();
            fit_features_choosing_shrinkage(
                &feats,
                &labels,
                classes,
                (&val_feats, &val_labels),
                &SHRINKAGE_CANDIDATES,
            )
            .ok_or_else(not_pd)?
        }
    };
    let mut distances: Vec<f32> = validation
        .iter()
        .map(|o| features.distance(&o.pooled))
        .collect();
    distances.sort_by(f32::total_cmp);
    features.threshold = quantile(&distances, options.feature_quantile);
    features.threshold_rule = format!(
        "the {:.1}th percentile of the distances of {} validation images",
        options.feature_quantile * 100.0,
        distances.len()
    );
    let rejected_by_images = validation
        .iter()
        .filter(|o| !image_bounds.reasons(&o.stats, o.size).is_empty())
        .count();
    let profile_shrinkage = features.shrinkage;
    let feature_threshold = features.threshold;
    let profile = TrustProfile {
        temperature: report.temperature,
        calibration: CalibrationSummary {
            nll_before: report.nll_before,
            nll_after: report.nll_after,
            ece_before: report.ece_before,
            ece_after: report.ece_after,
        },
        uncertainty_rule: format!(
            "calibrated top-class probability below which {:.0} % of {} validation images fall",
            (1.0 - options.coverage) * 100.0,
            validation.len()
        ),
        image_bounds,
        features,
        fitted_on_train: train.len(),
        fitted_on_validation: validation.len(),
        presence: presence.clone(),
    };
    Ok((
        profile,
        threshold,
        FitReport {
            calibration: report,
            uncertainty_threshold: threshold,
            train_images: train.len(),
            feature_threshold,
            validation_distances: distances,
            validation_rejected_by_image_checks: rejected_by_images,
            shrinkage: profile_shrinkage,
            shrinkage_scores,
            presence,
            presence_sweep,
        },
    ))
}

impl FitReport {
    /// What was fitted, in a few lines, naming the files written into `dir`.
    pub fn to_text(&self, dir: &Path) -> String {
        let c = &self.calibration;
        let scores = if self.shrinkage_scores.is_empty() {
            String::new()
        } else {
            format!(
                ", chosen on validation; mean log-likelihood per candidate: {}",
                self.shrinkage_scores
                    .iter()
                    .map(|s| format!("{}: {:.1}", s.shrinkage, s.validation_log_likelihood))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let presence = match &self.presence {
            Some(rule) => {
                let mut s = format!(
                    "presence rule: {}\n  validation under the rule:      {}\n  validation, most probable class: {}\n  other thresholds on p(no tumour):\n",
                    rule.rule,
                    rule.validation.to_text(),
                    rule.validation_most_probable.to_text()
                );
                for (t, f) in &self.presence_sweep {
                    s.push_str(&format!("    {t:.2}: {}\n", f.to_text()));
                }
                s
            }
            None => "presence rule: none (the model has no \"No tumour\" class)\n".into(),
        };
        format!(
            "calibrated {} on {} validation images ({} training images for the input check)\n\
             temperature {:.3}: NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}\n\
             \"uncertain\" below a calibrated probability of {:.3}\n\
             input check: feature-distance threshold {:.2} (covariance shrinkage {}{scores}); {} validation images outside the image bounds\n\
             {presence}\
             wrote {} and {}",
            dir.display(),
            c.images,
            self.train_images,
            c.temperature,
            c.nll_before,
            c.nll_after,
            c.ece_before,
            c.ece_after,
            self.uncertainty_threshold,
            self.feature_threshold,
            self.shrinkage,
            self.validation_rejected_by_image_checks,
            dir.join(REPORT_FILE).display(),
            dir.join(RELIABILITY_PNG).display(),
        )
    }
}

/// Files [`calibrate_saved`] writes beside the model.
pub const REPORT_FILE: &str = "calibration.json";
pub const RELIABILITY_PNG: &str = "reliability.png";

/// Fits the trust profile of the model saved in `dir` on `train` / `validation` samples of
/// `folder`, stores it in the model file (weights untouched) and writes the calibration report
/// and reliability diagram beside it.
pub fn calibrate_saved(
    dir: &Path,
    folder: &ImageFolder,
    train: &[usize],
    validation: &[usize],
    options: FitOptions,
    progress: bool,
) -> Result<FitReport> {
    options.validate()?;
    let dir = bundle::model_dir(dir);
    let loaded = LoadedModel::open(&ModelSource::Directory(dir.clone()), Mode::Inference)?;
    let bar = if progress {
        indicatif::ProgressBar::new((train.len() + validation.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let pre = &loaded.manifest.preprocessing;
    let (train_obs, _) = observe(loaded.compute(), pre, folder, train, Some(&bar), false);
    let (val_obs, _) = observe(loaded.compute(), pre, folder, validation, Some(&bar), false);
    bar.finish_and_clear();
    let mut manifest = loaded.manifest.clone();
    let (profile, threshold, report) = fit(
        &train_obs,
        &val_obs,
        manifest.classes.len(),
        manifest.no_tumour_index(),
        options,
    )?;
    manifest.trust = Some(profile);
    manifest.uncertainty_threshold = threshold;
    bundle::rewrite_manifest(&dir, &manifest)?;
    write_json_atomic(&dir.join(REPORT_FILE), &report)?;
    let points = |bins: &[calibration::ReliabilityBin]| -> Vec<(f64, f64)> {
        bins.iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect()
    };
    let c = &report.calibration;
    crate::plot::XyChart {
        title: &format!(
            "Reliability on {} validation images (T = {:.2})",
            c.images, c.temperature
        ),
        x_label: "confidence (top-class probability)",
        y_label: "accuracy",
        x_range: (0.0, 1.0),
        y_range: (0.0, 1.0),
        diagonal: true,
    }
    .draw(
        &dir.join(RELIABILITY_PNG),
        &[
            (
                &format!("before (ECE {:.3})", c.ece_before),
                points(&c.bins_before),
            ),
            (
                &format!("after temperature scaling (ECE {:.3})", c.ece_after),
                points(&c.bins_after),
            ),
        ],
    )?;
    Ok(report)
}
