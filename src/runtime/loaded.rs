//! The one model loader: a model file loaded onto a device, with the choices of how it answers
//! (f32 or int8, with or without test-time augmentation). `Predictor` and `Explainer` both hold
//! one; nothing else opens model files for inference.

use burn::module::Module;
use burn::tensor::Device;

use super::compute::Compute;
use super::gate::LoadedGate;
use crate::backend::Int8Engine;
use crate::core::error::Result;
use crate::imaging::GreyImage;
use crate::model::Classifier;
use crate::modelfile::bundle::{self, Mode, ModelSource};
use crate::modelfile::{GateFinding, Manifest};

/// A loaded model and how it runs.
pub struct LoadedModel {
    pub manifest: Manifest,
    /// The network for every pass that needs no gradient, on a plain device. Forward passes on
    /// an autodiff device record a graph that only a backward pass frees: run there without
    /// one, each analysis would leave its activations behind (4.7 MB each for resnet-fine).
    model: Classifier,
    device: Device,
    /// With [`Mode::Gradients`]: the same weights on an autodiff device, for Grad-CAM.
    gradients: Option<(Classifier, Device)>,
    /// Test-time augmentation: average the logits over flipped and shifted views.
    pub tta: bool,
    /// When set, the int8 engine computes the answers (Grad-CAM still uses the f32 model).
    int8: Option<Int8Engine>,
    /// The input gate: the model's own, else the bundled one (`None` only for a model built
    /// in memory, e.g. during training).
    gate: Option<LoadedGate>,
}

impl LoadedModel {
    /// Loads `source` on burn's CPU device; for [`Mode::Gradients`] also on an autodiff one
    /// (sharing the weights).
    pub fn open(source: &ModelSource, mode: Mode) -> Result<Self> {
        match mode {
            Mode::Inference => {
                let device = Device::flex();
                let (manifest, model) = bundle::load_from(source, &device, mode)?;
                let gate = LoadedGate::for_model(&manifest, source)?;
                Ok(Self::from_parts(manifest, model, device).with_gate(Some(gate)))
            }
            Mode::Gradients => {
                let autodiff = Device::flex().autodiff();
                let (manifest, gradients) = bundle::load_from(source, &autodiff, mode)?;
                // The plain view of the same weights (no copy).
                let model = gradients.valid();
                let gate = LoadedGate::for_model(&manifest, source)?;
                let mut loaded =
                    Self::from_parts(manifest, model, Device::flex()).with_gate(Some(gate));
                loaded.gradients = Some((gradients, autodiff));
                Ok(loaded)
            }
        }
    }

    /// A model already in memory on a plain device (e.g. the best epoch of a training run).
    pub fn from_parts(manifest: Manifest, model: Classifier, device: Device) -> Self {
        Self {
            manifest,
            model,
            device,
            gradients: None,
            tta: false,
            int8: None,
            gate: None,
        }
    }

    /// Replaces the input gate (`oncolens ... --gate DIR`, or none).
    pub fn with_gate(mut self, gate: Option<LoadedGate>) -> Self {
        self.gate = gate;
        self
    }

    pub fn gate(&self) -> Option<&LoadedGate> {
        self.gate.as_ref()
    }

    /// The gate's finding for each whole-frame view (all `None` without a gate).
    pub fn gate_findings(&self, views: &[&GreyImage]) -> Vec<Option<GateFinding>> {
        match &self.gate {
            Some(g) => g.findings(views).into_iter().map(Some).collect(),
            None => vec![None; views.len()],
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

    /// The network on an autodiff device and that device (only with [`Mode::Gradients`]).
    pub fn gradients(&self) -> Option<(&Classifier, &Device)> {
        self.gradients.as_ref().map(|(m, d)| (m, d))
    }
}
