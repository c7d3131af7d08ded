//! The one model loader: a model file loaded onto a device, with the choices of how it answers
//! (f32 or int8, with or without test-time augmentation). `Predictor` and `Explainer` both hold
//! one; nothing else opens model files for inference.

use burn::tensor::Device;

use super::compute::Compute;
use crate::backend::Int8Engine;
use crate::core::error::Result;
use crate::model::Classifier;
use crate::modelfile::Manifest;
use crate::modelfile::bundle::{self, Mode, ModelSource};

/// A loaded model and how it runs.
pub struct LoadedModel {
    pub manifest: Manifest,
    model: Classifier,
    device: Device,
    mode: Mode,
    /// Test-time augmentation: average the logits over flipped and shifted views.
    pub tta: bool,
    /// When set, the int8 engine computes the answers (Grad-CAM still uses the f32 model).
    int8: Option<Int8Engine>,
}

impl LoadedModel {
    /// Loads `source` for `mode`: on burn's CPU device, an autodiff one for [`Mode::Gradients`].
    pub fn open(source: &ModelSource, mode: Mode) -> Result<Self> {
        let device = match mode {
            Mode::Inference => Device::flex(),
            Mode::Gradients => Device::flex().autodiff(),
        };
        let (manifest, model) = bundle::load_from(source, &device, mode)?;
        Ok(Self::from_parts(manifest, model, device, mode))
    }

    /// A model already in memory (e.g. the best epoch of a training run).
    pub fn from_parts(manifest: Manifest, model: Classifier, device: Device, mode: Mode) -> Self {
        Self {
            manifest,
            model,
            device,
            mode,
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
            Some(Int8Engine::for_model(&self.manifest, &self.model)?)
        } else {
            None
        };
        Ok(self)
    }

    /// Whether answers come from the int8 engine.
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }

    pub fn int8_engine(&self) -> Option<&Int8Engine> {
        self.int8.as_ref()
    }

    /// What runs the network for the answers (f32 model or int8 engine).
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

    pub fn mode(&self) -> Mode {
        self.mode
    }
}
