//! Explanations: Grad-CAM of a class at the network's last convolutional block, drawn back onto
//! the original image through the pre-processing geometry (crop, padding, resize).
//!
//! Grad-CAM (Selvaraju et al. 2017): the class score is differentiated with respect to the last
//! conv activation `A` (burn autodiff, on a leaf copy of `A` so only the head is in the graph);
//! channel weights are the spatial means of that gradient, and the map is
//! `ReLU(sum_k w_k A_k)`, normalised to `[0, 1]`.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::bundle::{self, Manifest, Mode};
use crate::data::image_io::GreyImage;
use crate::error::{Error, Result};
use crate::evaluate::metrics::argmax;
use crate::inference::rows;
use crate::model::{Classifier, Trace};
use crate::preprocess::Geometry;
use crate::trust::calibration::softmax_with_temperature;
use crate::trust::{Compute, forward_rows};

/// A model loaded for explanations (autodiff device, inference behaviour).
pub struct Explainer {
    pub manifest: Manifest,
    model: Classifier,
    device: Device,
    /// Class probabilities from test-time augmentation (the map stays on the image itself).
    pub tta: bool,
    /// Class probabilities from the int8 engine (the map still needs the f32 model's gradients).
    int8: Option<crate::int8::Int8Engine>,
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
    /// `path`, else `$ONCOLENS_MODEL`, else the bundled default model.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let device = Device::flex().autodiff();
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ONCOLENS_MODEL").map(Into::into));
        let (manifest, model) = match path {
            Some(p) => bundle::load_with_mode(&p, &device, Mode::Gradients)?,
            None => bundle::load_default(&device, Mode::Gradients)?,
        };
        Ok(Self {
            manifest,
            model,
            device,
            tta: false,
            int8: None,
        })
    }

    pub fn with_tta(mut self, tta: bool) -> Self {
        self.tta = tta;
        self
    }

    /// Whether answers come from the int8 engine.
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// Answers from the int8 engine (as `Predictor::with_int8`), maps from the f32 model.
    pub fn with_int8(mut self, on: bool) -> Result<Self> {
        self.int8 = if on {
            Some(crate::int8::Int8Engine::for_model(
                &self.manifest,
                &self.model,
            )?)
        } else {
            None
        };
        Ok(self)
    }

    /// Grad-CAM of `class` (default: the predicted class) for a decoded scan.
    pub fn explain(&self, image: &GreyImage, class: Option<usize>) -> Result<Explanation> {
        let pre = &self.manifest.preprocessing;
        let k = self.manifest.classes.len();
        if let Some(c) = class
            && c >= k
        {
            return Err(Error::Config(format!(
                "class index {c} is out of range (model has {k} classes)"
            )));
        }
        let (prepared, geometry) = pre.prepare(image);
        let input = pre.standardize(&prepared);
        let s = pre.input_size as usize;
        let x = Tensor::<4>::from_data(TensorData::new(input, [1, 1, s, s]), &self.device);
        let mut trace = Trace::off();
        // A leaf copy of the activation: the gradient stops here.
        let features = self.model.features(x, &mut trace).detach().require_grad();
        let logits = self.model.head(features.clone(), &mut trace);
        // The answer: the int8 engine's when on, else the f32 network's (averaged over the TTA
        // views when on); the map below always comes from the f32 forward pass.
        let mut logit_row = rows(logits.clone().detach()).remove(0);
        let mut int8_pooled = None;
        let answer = match &self.int8 {
            Some(engine) => Some(Compute::Int8(engine)),
            None if self.tta => Some(Compute::F32(&self.model, &self.device)),
            None => None,
        };
        if let Some(compute) = answer {
            let (l, p) = forward_rows(compute, &[&prepared], pre, self.tta);
            if let Some(l) = l.into_iter().next() {
                logit_row = l;
            }
            if self.int8.is_some() {
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
        let gradient = features
            .grad(&grads)
            .ok_or_else(|| Error::Config("no gradient reached the last conv layer".into()))?;
        let [_, channels, h, w] = features.dims();
        let a: Vec<f32> = features
            .detach()
            .into_data()
            .try_to_vec()
            .unwrap_or_default();
        let g: Vec<f32> = gradient.into_data().try_to_vec().unwrap_or_default();
        if a.len() != channels * h * w || g.len() != a.len() || h == 0 || w == 0 {
            return Err(Error::Config("unexpected activation shape".into()));
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
        let align = self.model.feature_alignment();
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

/// A perceptually ordered blue-to-red colour for `v` in `[0, 1]` (a "turbo"-like ramp).
pub fn colour(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    // Piecewise-linear through dark blue, cyan, yellow, red.
    let stops = [
        (0.0, [30.0, 20.0, 120.0]),
        (0.35, [40.0, 180.0, 230.0]),
        (0.65, [250.0, 220.0, 40.0]),
        (1.0, [200.0, 20.0, 20.0]),
    ];
    for pair in stops.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            return [0, 1, 2].map(|i| (ca[i] + t * (cb[i] - ca[i])) as u8);
        }
    }
    [200, 20, 20]
}

/// The map alone, coloured.
pub fn heatmap_image(map: &GreyImage) -> RgbImage {
    RgbImage::from_fn(map.width(), map.height(), |x, y| {
        Rgb(colour(map.get_pixel(x, y).0[0]))
    })
}

/// The scan in grey with the coloured map blended over it (`opacity` at the map's peak).
pub fn overlay_image(original: &GreyImage, map: &GreyImage, opacity: f32) -> RgbImage {
    RgbImage::from_fn(original.width(), original.height(), |x, y| {
        let g = original.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0;
        let m = map.get_pixel(x, y).0[0];
        let a = (opacity * m).clamp(0.0, 1.0);
        let c = colour(m);
        Rgb([0, 1, 2].map(|i| (g * (1.0 - a) + f32::from(c[i]) * a) as u8))
    })
}

/// The map as an 8-bit grey image (for storage and the API).
pub fn map_to_grey8(map: &GreyImage) -> GrayImage {
    GrayImage::from_fn(map.width(), map.height(), |x, y| {
        Luma([(map.get_pixel(x, y).0[0] * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_blue_to_red() {
        let lo = colour(0.0);
        let hi = colour(1.0);
        assert!(lo[2] > lo[0] && hi[0] > hi[2]);
        let map = GreyImage::from_fn(4, 4, |x, _| Luma([x as f32 / 3.0]));
        let grey = GreyImage::from_pixel(4, 4, Luma([0.5]));
        let o = overlay_image(&grey, &map, 0.6);
        // Where the map is zero the scan shows through unchanged.
        assert_eq!(o.get_pixel(0, 0).0, [127, 127, 127]);
        assert_ne!(o.get_pixel(3, 0).0, [127, 127, 127]);
    }
}
