//! Inference: a loaded model applied to scans through the stored pre-processing.
//!
//! [`Predictor`] is what `predict`, `evaluate`, the web app and the API use; it never re-implements
//! pre-processing, it calls the model file's [`Preprocessing`].

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::bundle::{self, Manifest};
use crate::data::image_io::{GreyImage, load_grey};
use crate::data::loader::batch_input;
use crate::error::Result;
use crate::evaluate::metrics::argmax;
use crate::model::Classifier;
use crate::preprocess::{Geometry, Preprocessing};

/// Images per forward pass in batch inference.
pub const INFERENCE_BATCH: usize = 32;

/// Class probabilities for prepared images, in batches.
pub fn probabilities(
    model: &Classifier,
    images: &[&GreyImage],
    pre: &Preprocessing,
    device: &Device,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(INFERENCE_BATCH) {
        let x = batch_input(chunk, pre, None, device);
        out.extend(rows(softmax(model.forward(x), 1)));
    }
    out
}

/// A `[n, k]` tensor as `n` rows.
pub fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, k] = t.dims();
    let v: Vec<f32> = t.into_data().try_to_vec().unwrap_or_default();
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}

/// The answer for one scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index of the most probable class.
    pub class_index: usize,
    pub class_id: String,
    pub class_name: String,
    /// Probability of the most probable class.
    pub confidence: f32,
    /// True when `confidence` is below the model's uncertainty threshold: show "uncertain", not
    /// a bare class name.
    pub uncertain: bool,
    /// Probability of every class, in the model's class order.
    pub probabilities: Vec<f32>,
}

/// A model ready to answer.
pub struct Predictor {
    pub manifest: Manifest,
    model: Classifier,
    device: Device,
}

impl Predictor {
    pub fn load(path: &Path) -> Result<Self> {
        let device = Device::flex();
        let (manifest, model) = bundle::load(path, &device)?;
        Ok(Self {
            manifest,
            model,
            device,
        })
    }

    /// The bundled default model.
    pub fn load_default() -> Result<Self> {
        let device = Device::flex();
        let (manifest, model) = bundle::load_default(&device, bundle::Mode::Inference)?;
        Ok(Self {
            manifest,
            model,
            device,
        })
    }

    /// `path`, else the `ONCOLENS_MODEL` environment variable, else the bundled default.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        match path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ONCOLENS_MODEL").map(Into::into))
        {
            Some(p) => Self::load(&p),
            None => Self::load_default(),
        }
    }

    pub fn from_parts(manifest: Manifest, model: Classifier, device: Device) -> Self {
        Self {
            manifest,
            model,
            device,
        }
    }

    pub fn model(&self) -> &Classifier {
        &self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The exact network input for a scan: what training fed the network for the same file.
    pub fn input(&self, image: &GreyImage) -> (Vec<f32>, Geometry) {
        self.manifest.preprocessing.run(image)
    }

    /// Predictions for decoded scans.
    pub fn predict_images(&self, images: &[GreyImage]) -> Vec<Prediction> {
        let pre = &self.manifest.preprocessing;
        let prepared: Vec<GreyImage> = images.iter().map(|img| pre.prepare(img).0).collect();
        let refs: Vec<&GreyImage> = prepared.iter().collect();
        probabilities(&self.model, &refs, pre, &self.device)
            .into_iter()
            .map(|p| self.to_prediction(p))
            .collect()
    }

    /// Predictions for many files: decoding and pre-processing run in parallel, inference in
    /// batches; an unreadable file gets its error, the others still get answers.
    pub fn predict_files(
        &self,
        paths: &[std::path::PathBuf],
    ) -> Vec<std::result::Result<Prediction, String>> {
        use rayon::prelude::*;
        let pre = &self.manifest.preprocessing;
        let mut out = Vec::with_capacity(paths.len());
        // Chunks bound memory: a decoded 512x512 scan is 1 MiB of f32.
        for chunk in paths.chunks(4 * INFERENCE_BATCH) {
            let prepared: Vec<std::result::Result<GreyImage, String>> = chunk
                .par_iter()
                .map(|p| {
                    load_grey(p)
                        .map(|img| pre.prepare(&img).0)
                        .map_err(|e| e.to_string())
                })
                .collect();
            let ok: Vec<&GreyImage> = prepared.iter().filter_map(|r| r.as_ref().ok()).collect();
            let mut probs = probabilities(&self.model, &ok, pre, &self.device).into_iter();
            for r in prepared {
                out.push(match r {
                    Ok(_) => probs
                        .next()
                        .map(|p| self.to_prediction(p))
                        .ok_or_else(|| "no result from the network".to_string()),
                    Err(e) => Err(e),
                });
            }
        }
        out
    }

    /// Prediction for one file.
    pub fn predict_file(&self, path: &Path) -> Result<Prediction> {
        let img = load_grey(path)?;
        Ok(self.predict_images(std::slice::from_ref(&img)).remove(0))
    }

    pub fn to_prediction(&self, probabilities: Vec<f32>) -> Prediction {
        prediction_from(&self.manifest, probabilities)
    }
}

/// The answer for class probabilities under a model's classes and uncertainty threshold.
pub fn prediction_from(manifest: &Manifest, probabilities: Vec<f32>) -> Prediction {
    let class_index = argmax(&probabilities).min(manifest.classes.len().saturating_sub(1));
    let confidence = probabilities.get(class_index).copied().unwrap_or(0.0);
    let class = &manifest.classes[class_index];
    Prediction {
        class_index,
        class_id: class.id.clone(),
        class_name: class.display.clone(),
        confidence,
        uncertain: confidence < manifest.uncertainty_threshold,
        probabilities,
    }
}
