//! Inference: a loaded model applied to scans through the stored pre-processing.
//!
//! [`Predictor`] is what `predict`, `evaluate`, the web app and the API use; it never re-implements
//! pre-processing, it calls the model file's [`Preprocessing`].

use std::path::Path;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::bundle::{self, Manifest};
use crate::data::image_io::{GreyImage, ImageInfo, decode_grey_with_info};
use crate::data::loader::batch_input;
use crate::error::{Error, Result};
use crate::evaluate::metrics::argmax;
use crate::model::Classifier;
use crate::preprocess::{Geometry, Preprocessing};
use crate::trust::calibration::softmax_with_temperature;
use crate::trust::{Compute, ImageStats, InputCheck, forward_rows};

/// Images per forward pass in batch inference.
pub const INFERENCE_BATCH: usize = 32;

/// Calibrated class probabilities for prepared images, in batches (logits divided by the
/// model's temperature before the softmax).
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

/// A `[n, k]` tensor as `n` rows.
pub fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, k] = t.dims();
    let v: Vec<f32> = t.into_data().try_to_vec().unwrap_or_default();
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}

/// What the answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A tumour type (or no tumour), confidently enough.
    Answer,
    /// The model is not confident: show "uncertain" with the probabilities.
    Uncertain,
    /// The input check says the image does not look like a brain MRI slice.
    NotBrainMri,
}

/// The answer for one scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub verdict: Verdict,
    /// Index of the most probable class.
    pub class_index: usize,
    pub class_id: String,
    pub class_name: String,
    /// Calibrated probability of the most probable class.
    pub confidence: f32,
    /// True when `confidence` is below the model's uncertainty threshold: show "uncertain", not
    /// a bare class name.
    pub uncertain: bool,
    /// Calibrated probability of every class, in the model's class order.
    pub probabilities: Vec<f32>,
    /// The input check (`None` when the model has no fitted check).
    pub input_check: Option<InputCheck>,
}

impl Prediction {
    /// The answer in a few words: the class, "uncertain (most likely X)" or "not a brain MRI
    /// slice".
    pub fn label(&self) -> String {
        match self.verdict {
            Verdict::Answer => self.class_name.clone(),
            Verdict::Uncertain => format!("uncertain (most likely {})", self.class_name),
            Verdict::NotBrainMri => "not a brain MRI slice".to_string(),
        }
    }

    /// Why the input check refused the image (empty when it did not).
    pub fn rejection_reasons(&self) -> &[String] {
        self.input_check.as_ref().map_or(&[], |c| &c.reasons)
    }
}

/// A decoded scan with what the file held (the input check looks at both).
pub struct Scan {
    pub image: GreyImage,
    pub info: ImageInfo,
}

impl Scan {
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        decode_grey_with_info(bytes).map(|(image, info)| Self { image, info })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes)
            .map_err(|reason| Error::UnreadableImage(format!("{}: {reason}", path.display())))
    }

    /// A decoded image whose file is unknown (treated as greyscale).
    pub fn from_grey(image: GreyImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            image,
            info: ImageInfo {
                format: "unknown",
                width,
                height,
                color: "L32F".into(),
                bits_per_channel: 32,
                colourfulness: 0.0,
            },
        }
    }

    pub fn stats(&self) -> ImageStats {
        ImageStats::of(&self.image, &self.info)
    }

    /// What the network and the input check take from a scan.
    pub fn prepared(&self, pre: &Preprocessing) -> PreparedScan {
        (
            pre.prepare(&self.image).0,
            self.stats(),
            self.image.dimensions(),
        )
    }
}

/// A scan ready for the network: prepared image, image statistics, original size.
pub type PreparedScan = (GreyImage, ImageStats, (u32, u32));

/// A model ready to answer.
pub struct Predictor {
    pub manifest: Manifest,
    model: Classifier,
    device: Device,
    /// Test-time augmentation: average the logits over flipped and shifted views.
    pub tta: bool,
    /// When set, the int8 engine computes the answers (Grad-CAM still uses the f32 model).
    int8: Option<crate::int8::Int8Engine>,
}

impl Predictor {
    pub fn load(path: &Path) -> Result<Self> {
        let device = Device::flex();
        let (manifest, model) = bundle::load(path, &device)?;
        Ok(Self {
            manifest,
            model,
            device,
            tta: false,
            int8: None,
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
            tta: false,
            int8: None,
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
            tta: false,
            int8: None,
        }
    }

    /// Switches test-time augmentation on or off.
    pub fn with_tta(mut self, tta: bool) -> Self {
        self.tta = tta;
        self
    }

    /// Switches the int8 engine on (with the model's stored calibration) or off.
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

    /// Whether answers come from the int8 engine.
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// What runs the network for this predictor (f32 model or int8 engine).
    pub fn compute(&self) -> Compute<'_> {
        match &self.int8 {
            Some(engine) => Compute::Int8(engine),
            None => Compute::F32(&self.model, &self.device),
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

    /// Predictions for decoded scans, in batches.
    pub fn predict_scans(&self, scans: &[Scan]) -> Vec<Prediction> {
        let pre = &self.manifest.preprocessing;
        let prepared: Vec<GreyImage> = scans.iter().map(|s| pre.prepare(&s.image).0).collect();
        let refs: Vec<&GreyImage> = prepared.iter().collect();
        let (logits, pooled) = forward_rows(self.compute(), &refs, pre, self.tta);
        scans
            .iter()
            .zip(logits)
            .zip(pooled)
            .map(|((scan, l), p)| {
                prediction_from(
                    &self.manifest,
                    &l,
                    Some((&scan.stats(), scan.image.dimensions(), &p)),
                )
            })
            .collect()
    }

    /// Predictions for decoded images whose files are unknown (treated as greyscale).
    pub fn predict_images(&self, images: &[GreyImage]) -> Vec<Prediction> {
        let scans: Vec<Scan> = images.iter().cloned().map(Scan::from_grey).collect();
        self.predict_scans(&scans)
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
            let prepared: Vec<std::result::Result<PreparedScan, String>> = chunk
                .par_iter()
                .map(|p| {
                    Scan::load(p)
                        .map(|s| s.prepared(pre))
                        .map_err(|e| e.to_string())
                })
                .collect();
            let ok: Vec<&GreyImage> = prepared
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|p| &p.0))
                .collect();
            let (logits, pooled) = forward_rows(self.compute(), &ok, pre, self.tta);
            let mut answers = logits.iter().zip(&pooled);
            for r in prepared {
                out.push(match r {
                    Ok((_, stats, size)) => answers
                        .next()
                        .map(|(l, p)| prediction_from(&self.manifest, l, Some((&stats, size, p))))
                        .ok_or_else(|| "no result from the network".to_string()),
                    Err(e) => Err(e),
                });
            }
        }
        out
    }

    /// Prediction for one file.
    pub fn predict_file(&self, path: &Path) -> Result<Prediction> {
        let scan = Scan::load(path)?;
        Ok(self.predict_scans(std::slice::from_ref(&scan)).remove(0))
    }
}

/// The answer for a scan's logits under a model's temperature, uncertainty threshold and input
/// check. `observed` carries the image statistics, the original size and the pooled features;
/// without it (or without a fitted check) no input check is made.
pub fn prediction_from(
    manifest: &Manifest,
    logits: &[f32],
    observed: Option<(&ImageStats, (u32, u32), &[f32])>,
) -> Prediction {
    let probabilities = softmax_with_temperature(logits, manifest.temperature());
    let class_index = argmax(&probabilities).min(manifest.classes.len().saturating_sub(1));
    let confidence = probabilities.get(class_index).copied().unwrap_or(0.0);
    let class = &manifest.classes[class_index];
    let input_check = match (&manifest.trust, observed) {
        (Some(trust), Some((stats, size, pooled))) => Some(trust.check(stats, size, pooled)),
        _ => None,
    };
    let uncertain = confidence < manifest.uncertainty_threshold;
    let verdict = if input_check
        .as_ref()
        .is_some_and(|c| !c.looks_like_brain_mri())
    {
        Verdict::NotBrainMri
    } else if uncertain {
        Verdict::Uncertain
    } else {
        Verdict::Answer
    };
    Prediction {
        verdict,
        class_index,
        class_id: class.id.clone(),
        class_name: class.display.clone(),
        confidence,
        uncertain,
        probabilities,
        input_check,
    }
}
