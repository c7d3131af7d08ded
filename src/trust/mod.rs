//! Trust: when the answer should not be a bare tumour type.
//!
//! - [`calibration`]: temperature scaling fitted on the validation split, so a probability of
//!   0.8 means right about 8 times in 10 on held-out slices; expected calibration error and
//!   reliability bins; the risk-coverage curve of selective prediction.
//! - [`input_check`]: "does this look like a brain MRI slice?" from image statistics and a
//!   feature-space (Mahalanobis) distance to the training classes.
//!
//! Everything is fitted by [`fit`] (at the end of `train`, or by `oncolens calibrate` on an
//! existing model) and stored in the model file as a [`TrustProfile`], so `predict`, `evaluate`,
//! the web app and the API apply the same checks.

pub mod calibration;
pub mod input_check;

use burn::tensor::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::ImageFolder;
use crate::data::image_io::GreyImage;
use crate::data::loader::batch_input;
use crate::error::{Error, Result};
use crate::inference::{INFERENCE_BATCH, PreparedScan, Scan};
use crate::model::Classifier;
use crate::preprocess::Preprocessing;

pub use calibration::CalibrationReport;
pub use input_check::{FeatureDensity, ImageBounds, ImageStats, ShrinkageScore};

/// What a model file stores to decide between an answer, "uncertain" and "not a brain MRI".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustProfile {
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
    /// Validation figures before and after temperature scaling.
    pub calibration: CalibrationSummary,
    /// How the uncertainty threshold was chosen, in words.
    pub uncertainty_rule: String,
    pub image_bounds: ImageBounds,
    pub features: FeatureDensity,
    /// Images the profile was fitted on.
    pub fitted_on_train: usize,
    pub fitted_on_validation: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// The input check's finding for one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputCheck {
    /// Why the image does not look like a brain MRI slice; empty when it does.
    pub reasons: Vec<String>,
    /// Mahalanobis distance of the image's features to the nearest training class.
    pub feature_distance: Option<f32>,
    /// The distance above which an image is out of distribution.
    pub feature_threshold: Option<f32>,
}

impl InputCheck {
    pub fn looks_like_brain_mri(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Reason given when only the feature distance is out of range.
pub const OUT_OF_DISTRIBUTION: &str =
    "its content is far from every training slice (out of the training distribution)";

impl TrustProfile {
    /// Runs the input check on an image's statistics and pooled features.
    pub fn check(&self, stats: &ImageStats, size: (u32, u32), pooled: &[f32]) -> InputCheck {
        let mut reasons = self.image_bounds.reasons(stats, size);
        let distance = self.features.distance(pooled);
        if distance > self.features.threshold {
            reasons.push(OUT_OF_DISTRIBUTION.to_string());
        }
        InputCheck {
            reasons,
            feature_distance: distance.is_finite().then_some(distance),
            feature_threshold: Some(self.features.threshold),
        }
    }
}

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
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            coverage: 0.95,
            feature_quantile: 0.995,
            shrinkage: None,
        }
    }
}

/// Logits, pooled features and image statistics of one image of a folder.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Index in the folder's samples.
    pub index: usize,
    pub logits: Vec<f32>,
    pub pooled: Vec<f32>,
    pub stats: ImageStats,
    /// Original width and height.
    pub size: (u32, u32),
    pub label: usize,
}

/// Decodes `indices` of `folder` and runs the network over them. Unreadable files are returned
/// apart as "path: reason".
pub fn observe(
    compute: Compute<'_>,
    pre: &Preprocessing,
    folder: &ImageFolder,
    indices: &[usize],
    progress: Option<&indicatif::ProgressBar>,
    tta: bool,
) -> (Vec<Observation>, Vec<String>) {
    let mut out = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for chunk in indices.chunks(4 * INFERENCE_BATCH) {
        let decoded: Vec<std::result::Result<(usize, PreparedScan), String>> = chunk
            .par_iter()
            .map(|&i| {
                let r = Scan::load(&folder.samples[i].path)
                    .map(|s| (i, s.prepared(pre)))
                    .map_err(|e| e.to_string());
                if let Some(p) = progress {
                    p.inc(1);
                }
                r
            })
            .collect();
        let ok: Vec<_> = decoded
            .into_iter()
            .filter_map(|r| r.map_err(|e| skipped.push(e)).ok())
            .collect();
        let images: Vec<&GreyImage> = ok.iter().map(|(_, d)| &d.0).collect();
        let (logits, pooled) = forward_rows(compute, &images, pre, tta);
        for ((&(index, (_, stats, size)), l), p) in ok.iter().zip(logits).zip(pooled) {
            out.push(Observation {
                index,
                logits: l,
                pooled: p,
                stats,
                size,
                label: folder.samples[index].label,
            });
        }
    }
    (out, skipped)
}

/// Test-time augmentation views: the image itself, its mirror image, and both shifted by
/// [`TTA_SHIFT`] of the side (diagonally, opposite ways), the flips and shifts training used.
pub const TTA_VIEWS: usize = 4;
pub const TTA_SHIFT: f32 = 0.03;

fn tta_view(img: &GreyImage, view: usize) -> GreyImage {
    let (w, h) = img.dimensions();
    let shift = |img: &GreyImage, d: i64| {
        let d = (d as f32 * TTA_SHIFT * w.max(h) as f32).round() as i64;
        GreyImage::from_fn(w, h, |x, y| {
            let (sx, sy) = (x as i64 - d, y as i64 - d);
            if sx < 0 || sy < 0 || sx >= w as i64 || sy >= h as i64 {
                image::Luma([0.0])
            } else {
                *img.get_pixel(sx as u32, sy as u32)
            }
        })
    };
    match view {
        0 => img.clone(),
        1 => image::imageops::flip_horizontal(img),
        2 => shift(img, 1),
        _ => shift(&image::imageops::flip_horizontal(img), -1),
    }
}

/// What runs the network: burn's f32 model, or oncolens' int8 engine.
#[derive(Clone, Copy)]
pub enum Compute<'a> {
    F32(&'a Classifier, &'a Device),
    Int8(&'a crate::int8::Int8Engine),
}

impl Compute<'_> {
    /// Logits and pooled features, as rows, for at most [`INFERENCE_BATCH`] prepared images.
    fn rows(&self, images: &[&GreyImage], pre: &Preprocessing) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        match self {
            Compute::F32(model, device) => {
                let (l, p) = model.forward_with_pooled(batch_input(images, pre, None, device));
                (crate::inference::rows(l), crate::inference::rows(p))
            }
            Compute::Int8(engine) => {
                let size = pre.input_size as usize;
                images
                    .par_iter()
                    .map(|img| {
                        // Engines reach a Compute only through `with_calibration`, so the one
                        // error `forward` has (no activation ranges) cannot happen here.
                        engine
                            .forward(&pre.standardize(img), size)
                            .expect("the int8 engine of a predictor is calibrated")
                    })
                    .unzip()
            }
        }
    }
}

/// Logits and pooled last-conv features, as rows, for prepared images. With `tta` the logits
/// are the mean over [`TTA_VIEWS`] views; the pooled features (for the input check, which was
/// fitted on plain views) are always those of the image itself.
pub fn forward_rows(
    compute: Compute<'_>,
    images: &[&GreyImage],
    pre: &Preprocessing,
    tta: bool,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (mut logits, mut pooled) = (Vec::new(), Vec::new());
    for chunk in images.chunks(INFERENCE_BATCH) {
        let (mut l, p) = compute.rows(chunk, pre);
        if tta {
            for view in 1..TTA_VIEWS {
                let views: Vec<GreyImage> = chunk.iter().map(|img| tta_view(img, view)).collect();
                let refs: Vec<&GreyImage> = views.iter().collect();
                let (extra, _) = compute.rows(&refs, pre);
                for (row, e) in l.iter_mut().zip(extra) {
                    row.iter_mut().zip(e).for_each(|(a, b)| *a += b);
                }
            }
            for row in &mut l {
                row.iter_mut().for_each(|v| *v /= TTA_VIEWS as f32);
            }
        }
        logits.extend(l);
        pooled.extend(p);
    }
    (logits, pooled)
}

/// Everything [`fit`] found, for the calibration report.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub calibration: CalibrationReport,
    pub uncertainty_threshold: f32,
    /// Feature distances of the validation images, sorted.
    pub validation_distances: Vec<f32>,
    pub validation_rejected_by_image_checks: usize,
    /// The covariance shrinkage used.
    pub shrinkage: f32,
    /// Validation log-likelihood per shrinkage tried (empty when it was fixed).
    pub shrinkage_scores: Vec<ShrinkageScore>,
}

/// Fits temperature, uncertainty threshold, image bounds and feature density: features and
/// image bounds on `train`, everything else on the held-out `validation` images.
pub fn fit(
    train: &[Observation],
    validation: &[Observation],
    classes: usize,
    options: FitOptions,
) -> Result<(TrustProfile, f32, FitReport)> {
    if train.is_empty() || validation.is_empty() {
        return Err(Error::Config(
            "calibration needs training and validation images".into(),
        ));
    }
    let val_logits: Vec<Vec<f32>> = validation.iter().map(|o| o.logits.clone()).collect();
    let val_labels: Vec<usize> = validation.iter().map(|o| o.label).collect();
    let report = calibration::calibrate(&val_logits, &val_labels);
    let val_probs: Vec<Vec<f32>> = val_logits
        .iter()
        .map(|l| calibration::softmax_with_temperature(l, report.temperature))
        .collect();
    let threshold = calibration::threshold_for_coverage(&val_probs, options.coverage);

    let stats: Vec<ImageStats> = train.iter().map(|o| o.stats).collect();
    let image_bounds = ImageBounds::fit(&stats);
    let feats: Vec<Vec<f32>> = train.iter().map(|o| o.pooled.clone()).collect();
    let labels: Vec<usize> = train.iter().map(|o| o.label).collect();
    let not_pd = || Error::Config("the feature covariance is not positive definite".into());
    let (mut features, shrinkage_scores) = match options.shrinkage {
        Some(a) => (
            FeatureDensity::fit(&feats, &labels, classes, a).ok_or_else(not_pd)?,
            Vec::new(),
        ),
        None => {
            let val_feats: Vec<Vec<f32>> = validation.iter().map(|o| o.pooled.clone()).collect();
            FeatureDensity::fit_choosing_shrinkage(
                &feats,
                &labels,
                classes,
                (&val_feats, &val_labels),
                &input_check::SHRINKAGE_CANDIDATES,
            )
            .ok_or_else(not_pd)?
        }
    };
    let mut distances: Vec<f32> = validation
        .iter()
        .map(|o| features.distance(&o.pooled))
        .collect();
    distances.sort_by(f32::total_cmp);
    features.threshold = input_check::quantile(&distances, options.feature_quantile);
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
    };
    Ok((
        profile,
        threshold,
        FitReport {
            calibration: report,
            uncertainty_threshold: threshold,
            validation_distances: distances,
            validation_rejected_by_image_checks: rejected_by_images,
            shrinkage: profile_shrinkage,
            shrinkage_scores,
        },
    ))
}

/// Files [`calibrate_saved`] writes beside the model.
pub const REPORT_FILE: &str = "calibration.json";
pub const RELIABILITY_PNG: &str = "reliability.png";

/// Fits the trust profile of the model saved in `dir` on `train` / `validation` samples of
/// `folder`, stores it in the model file (weights untouched) and writes the calibration report
/// and reliability diagram beside it.
pub fn calibrate_saved(
    dir: &std::path::Path,
    folder: &ImageFolder,
    train: &[usize],
    validation: &[usize],
    options: FitOptions,
    progress: bool,
) -> Result<FitReport> {
    let device = Device::flex();
    let dir = crate::bundle::model_dir(dir);
    let (mut manifest, model) = crate::bundle::load(&dir, &device)?;
    let bar = if progress {
        indicatif::ProgressBar::new((train.len() + validation.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let pre = manifest.preprocessing.clone();
    let compute = Compute::F32(&model, &device);
    let (train_obs, _) = observe(compute, &pre, folder, train, Some(&bar), false);
    let (val_obs, _) = observe(compute, &pre, folder, validation, Some(&bar), false);
    bar.finish_and_clear();
    let (profile, threshold, report) = fit(&train_obs, &val_obs, manifest.classes.len(), options)?;
    manifest.trust = Some(profile);
    manifest.uncertainty_threshold = threshold;
    manifest.validate(&dir)?;
    crate::bundle::write_json_atomic(&dir.join(crate::bundle::MANIFEST_FILE), &manifest)?;
    crate::bundle::write_json_atomic(&dir.join(REPORT_FILE), &report)?;
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
