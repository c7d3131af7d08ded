//! Running a network over prepared images: burn's f32 model or the int8 engine, in batches,
//! with or without test-time augmentation.

use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::tta::{TTA_VIEWS, tta_view};
use crate::backend::Int8Engine;
use crate::core::numeric::softmax_with_temperature;
use crate::data::loader::batch_input;
use crate::imaging::{GreyImage, Preprocessing};
use crate::model::Classifier;

/// Images per forward pass in batch inference.
pub const INFERENCE_BATCH: usize = 32;

/// A `[n, k]` tensor as `n` rows.
pub fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, k] = t.dims();
    let v: Vec<f32> = t.into_data().try_to_vec().unwrap_or_default();
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}

/// Calibrated class probabilities for prepared images from the f32 model, in batches (logits
/// divided by `temperature` before the softmax).
pub fn probabilities(
    model: &Classifier,
    images: &[&GreyImage],
    pre: &Preprocessing,
    device: &Device,
    temperature: f32,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(INFERENCE_BATCH) {
        let x = batch_input(chunk, pre, None, device);
        out.extend(
            rows(model.forward(x))
                .iter()
                .map(|l| softmax_with_temperature(l, temperature)),
        );
    }
    out
}

/// What runs the network: burn's f32 model, or oncolens' int8 engine.
#[derive(Clone, Copy)]
pub enum Compute<'a> {
    F32(&'a Classifier, &'a Device),
    Int8(&'a Int8Engine),
}

impl Compute<'_> {
    /// Logits and pooled features, as rows, for at most [`INFERENCE_BATCH`] prepared images.
    fn rows(&self, images: &[&GreyImage], pre: &Preprocessing) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        match self {
            Compute::F32(model, device) => {
                let (l, p) = model.forward_with_pooled(batch_input(images, pre, None, device));
                (rows(l), rows(p))
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
