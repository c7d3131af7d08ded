//! Explanations: Grad-CAM of a class at the network's last convolutional block, drawn back onto
//! the original image through the pre-processing geometry (crop, padding, resize).
//!
//! Grad-CAM (Selvaraju et al. 2017): the class score is differentiated with respect to the last
//! conv activation `A` (burn autodiff, on a leaf copy of `A` so only the head is in the graph);
//! channel weights are the spatial means of that gradient, and the map is
//! `ReLU(sum_k w_k A_k)`, normalised to `[0, 1]`.

use std::ops::Deref;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use image::Luma;

use super::predictor::{Prediction, Predictor, prediction_from};
use crate::core::error::{ExplainError, Result};
use crate::core::numeric::{argmax, softmax_with_temperature};
use crate::imaging::gate_view::gate_view;
use crate::imaging::{Geometry, GreyImage, Scan};
use crate::model::Trace;
use crate::modelfile::{Mode, ModelSource};
use crate::runtime::{Compute, LoadedModel, forward_rows, rows};

/// A model loaded for explanations (autodiff device, inference behaviour). Its answers are the
/// predictor's: with test-time augmentation or the int8 engine when those are on, while the map
/// always comes from the f32 network's gradients.
pub struct Explainer {
    predictor: Predictor,
}

impl Deref for Explainer {
    type Target = Predictor;

    fn deref(&self) -> &Predictor {
        &self.predictor
    }
}

/// Grad-CAM of one image.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Class logits and calibrated probabilities (the same as the predictor's).
    pub logits: Vec<f32>,
    pub probabilities: Vec<f32>,
    /// Global average of the last conv activation (what the input check measures).
    pub pooled: Vec<f32>,
    /// The class explained.
    pub class_index: usize,
    /// Grad-CAM on the network input grid (`input_size` square), in `[0, 1]`.
    pub input_map: GreyImage,
    /// Grad-CAM at the original image size, in `[0, 1]`; zero outside the brain crop.
    pub map: GreyImage,
    pub geometry: Geometry,
}

impl Explainer {
    /// Opens `source` on an autodiff device.
    pub fn open_source(source: &ModelSource) -> Result<Self> {
        let loaded = LoadedModel::open(source, Mode::Gradients)?;
        Ok(Self {
            predictor: Predictor::new(loaded),
        })
    }

    /// The model directory at `path`, else the bundled default model.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        Self::open_source(&ModelSource::from_option(path))
    }

    pub fn with_tta(mut self, tta: bool) -> Self {
        self.predictor = self.predictor.with_tta(tta);
        self
    }

    /// Answers from the int8 engine (as `Predictor::with_int8`), maps from the f32 model.
    pub fn with_int8(mut self, on: bool) -> Result<Self> {
        self.predictor = self.predictor.with_int8(on)?;
        Ok(self)
    }

    /// The answer for a decoded scan and the Grad-CAM of its class, the input gate and check
    /// applied as [`Predictor`] applies them: what the web app and the PACS watcher show.
    pub fn analyse(&self, scan: &Scan) -> Result<(Prediction, Explanation)> {
        let grey = &scan.image;
        let explanation = self.explain(grey, None)?;
        let finding = self
            .gate_findings(&[&gate_view(grey)])
            .into_iter()
            .next()
            .flatten();
        let prediction = prediction_from(
            &self.manifest,
            &explanation.logits,
            Some((&scan.stats(), grey.dimensions(), &explanation.pooled)),
            self.gate().map(|g| &g.manifest).zip(finding.as_ref()),
        );
        Ok((prediction, explanation))
    }

    /// Grad-CAM of `class` (default: the predicted class) for a decoded scan.
    pub fn explain(&self, image: &GreyImage, class: Option<usize>) -> Result<Explanation> {
        let pre = &self.manifest.preprocessing;
        let k = self.manifest.classes.len();
        if let Some(c) = class
            && c >= k
        {
            return Err(ExplainError::ClassOutOfRange {
                class: c,
                classes: k,
            }
            .into());
        }
        let (prepared, geometry) = pre.prepare(image);
        let input = pre.standardize(&prepared);
        let s = pre.input_size as usize;
        let (model, device) = (self.model(), self.device());
        let (head_model, autodiff) = self.gradients().ok_or(ExplainError::NoAutodiff)?;
        let x = Tensor::<4>::from_data(TensorData::new(input, [1, 1, s, s]), device);
        let mut trace = Trace::off();
        // The convolutional part runs on the plain device (an autodiff forward pass without a
        // backward one would leave its graph behind); its output becomes a leaf on the autodiff
        // device, so only the head is differentiated, and its graph is consumed by `backward`.
        let activation = model.features(x, &mut trace);
        let features = Tensor::<4>::from_data(activation.into_data(), autodiff).require_grad();
        let logits = head_model.head(features.clone(), &mut trace);
        // The answer: the int8 engine's when on, else the f32 network's (averaged over the TTA
        // views when on); the map below always comes from the f32 forward pass.
        let mut logit_row = rows(logits.clone().detach()).remove(0);
        let mut int8_pooled = None;
        let answer = match self.int8_engine() {
            Some(engine) => Some(Compute::Int8(engine)),
            None if self.tta => Some(Compute::F32(model, device)),
            None => None,
        };
        if let Some(compute) = answer {
            let (l, p) = forward_rows(compute, &[&prepared], pre, self.tta);
            if let Some(l) = l.into_iter().next() {
                logit_row = l;
            }
            if self.is_int8() {
                int8_pooled = p.into_iter().next();
            }
        }
        let probabilities = softmax_with_temperature(&logit_row, self.manifest.temperature());
        let [_, c, fh, fw] = features.dims();
        let f32_pooled = rows(
            features
                .clone()
                .detach()
                .mean_dim(3)
                .mean_dim(2)
                .reshape([1, c]),
        )
        .remove(0);
        let pooled = int8_pooled.unwrap_or(f32_pooled);
        debug_assert!(fh * fw > 0);
        let class_index = class.unwrap_or_else(|| argmax(&probabilities));
        let grads = logits.narrow(1, class_index, 1).sum().backward();
        let gradient = features.grad(&grads).ok_or(ExplainError::NoGradient)?;
        let [_, channels, h, w] = features.dims();
        let a: Vec<f32> = features
            .detach()
            .into_data()
            .try_to_vec()
            .unwrap_or_default();
        let g: Vec<f32> = gradient.into_data().try_to_vec().unwrap_or_default();
        if a.len() != channels * h * w || g.len() != a.len() || h == 0 || w == 0 {
            return Err(ExplainError::ActivationShape.into());
        }
        let hw = h * w;
        let mut cam = vec![0f32; hw];
        for c in 0..channels {
            let weight = g[c * hw..(c + 1) * hw].iter().sum::<f32>() / hw as f32;
            for (p, v) in cam.iter_mut().enumerate() {
                *v += weight * a[c * hw + p];
            }
        }
        let max = cam.iter().copied().fold(0f32, f32::max);
        let cam: Vec<f32> = cam
            .iter()
            .map(|v| if max > 0.0 { v.max(0.0) / max } else { 0.0 })
            .collect();
        // Each input pixel samples the map where its receptive-field centre grid puts it.
        let align = model.feature_alignment();
        let input_map = GreyImage::from_fn(s as u32, s as u32, |x, y| {
            Luma([bilinear(
                &cam,
                (w, h),
                align.to_feature(x as f32),
                align.to_feature(y as f32),
            )])
        });
        let [ow, oh] = geometry.original_size;
        let map = GreyImage::from_fn(ow, oh, |x, y| {
            let v = geometry
                .original_to_input(x as f32 + 0.5, y as f32 + 0.5)
                .map_or(0.0, |(ix, iy)| {
                    let (ix, iy) = ((ix as u32).min(s as u32 - 1), (iy as u32).min(s as u32 - 1));
                    input_map.get_pixel(ix, iy).0[0]
                });
            Luma([v])
        });
        Ok(Explanation {
            logits: logit_row,
            probabilities,
            pooled,
            class_index,
            input_map,
            map,
            geometry,
        })
    }
}

/// Bilinear sample of a row-major `w x h` map at continuous cell coordinates (cell centres at
/// integers), clamped at the edges.
fn bilinear(map: &[f32], (w, h): (usize, usize), u: f32, v: f32) -> f32 {
    let u = u.clamp(0.0, (w - 1) as f32);
    let v = v.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (u.floor() as usize, v.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (u - x0 as f32, v - y0 as f32);
    let at = |x: usize, y: usize| map[y * w + x];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}
