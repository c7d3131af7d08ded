//! From files to network input: decode and prepare images once (in parallel), then build
//! batches, augmented for training or plain for validation and inference.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use rayon::prelude::*;

use super::folder::ImageFolder;
use crate::core::error::Result;
use crate::imaging::augment::{Augmentation, sample_rng};
use crate::imaging::{GreyImage, Preprocessing, Scan};

/// Prepared (pre-processed, not yet standardised) images of some samples of a folder.
#[derive(Debug, Default)]
pub struct PreparedImages {
    pub images: Vec<GreyImage>,
    pub labels: Vec<usize>,
    /// Index of each image in the folder's samples.
    pub sample_indices: Vec<usize>,
    /// Unreadable files: "path: reason".
    pub skipped: Vec<String>,
}

/// Decodes `paths` in parallel and maps each scan with `take`: the one decode-and-prepare step
/// of training, calibration, evaluation and inference. Each file gets its own result.
pub fn prepare_files<P: AsRef<Path> + Sync, T: Send>(
    paths: &[P],
    progress: Option<&ProgressBar>,
    take: impl Fn(Scan) -> T + Sync,
) -> Vec<Result<T>> {
    paths
        .par_iter()
        .map(|p| {
            let r = Scan::load(p.as_ref()).map(&take);
            if let Some(bar) = progress {
                bar.inc(1);
            }
            r
        })
        .collect()
}

/// Decodes and prepares `indices` of `folder`; unreadable files are reported and skipped.
pub fn prepare_samples(
    folder: &ImageFolder,
    indices: &[usize],
    pre: &Preprocessing,
    progress: Option<&ProgressBar>,
) -> PreparedImages {
    let paths: Vec<&Path> = indices
        .iter()
        .map(|&i| folder.samples[i].path.as_path())
        .collect();
    let results = prepare_files(&paths, progress, |scan| pre.prepare(&scan.image).0);
    let mut out = PreparedImages::default();
    for (&i, r) in indices.iter().zip(results) {
        match r {
            Ok(img) => {
                out.images.push(img);
                out.labels.push(folder.samples[i].label);
                out.sample_indices.push(i);
            }
            Err(e) => {
                let reason = e.sentence();
                tracing::warn!("skipped unreadable file: {reason}");
                out.skipped.push(reason);
            }
        }
    }
    out
}

/// Mean and standard deviation of all pixels of the prepared images.
pub fn fit_standardization(images: &[GreyImage]) -> (f32, f32) {
    let (sum, sum_sq, n) = images
        .par_iter()
        .map(|img| {
            img.pixels().fold((0f64, 0f64, 0u64), |(s, q, n), p| {
                let v = f64::from(p.0[0]);
                (s + v, q + v * v, n + 1)
            })
        })
        .reduce(|| (0.0, 0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    if n == 0 {
        return (0.0, 1.0);
    }
    let mean = sum / n as f64;
    let var = (sum_sq / n as f64 - mean * mean).max(0.0);
    (mean as f32, var.sqrt().max(1e-3) as f32)
}

/// How a batch is augmented: settings, run seed, epoch and each image's position in the data set
/// (so the random stream of an image does not depend on batch composition).
pub struct AugmentPlan<'a> {
    pub augmentation: &'a Augmentation,
    pub seed: u64,
    pub epoch: usize,
    pub ids: &'a [usize],
}

/// Standardised input `[batch, 1, size, size]` for prepared images.
pub fn batch_input(
    images: &[&GreyImage],
    pre: &Preprocessing,
    augment: Option<AugmentPlan<'_>>,
    device: &Device,
) -> Tensor<4> {
    let size = pre.input_size as usize;
    let pixels: Vec<f32> = match &augment {
        Some(plan) => images
            .par_iter()
            .zip(plan.ids.par_iter())
            .flat_map_iter(|(img, &id)| {
                let mut rng = sample_rng(plan.seed, plan.epoch, id);
                pre.standardize(&plan.augmentation.apply(img, &mut rng))
            })
            .collect(),
        None => images
            .par_iter()
            .flat_map_iter(|img| pre.standardize(img))
            .collect(),
    };
    Tensor::from_data(
        TensorData::new(pixels, [images.len(), 1, size, size]),
        device,
    )
}

/// Class indices as an integer tensor.
pub fn batch_targets(labels: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(data, [labels.len()]), device)
}
