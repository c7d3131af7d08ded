//! The input gate loaded for inference: the model's own gate when its file names one, else the
//! gate compiled into the binary. It runs on the whole-frame views, in batches, on a plain
//! device (no autodiff graph is ever kept).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::compute::{INFERENCE_BATCH, rows};
use crate::core::error::Result;
use crate::core::numeric::softmax_with_temperature;
use crate::imaging::GreyImage;
use crate::imaging::gate_view::{GATE_SIDE, TONE_FEATURES, standardize_view, tone_features};
use crate::model::gate::GateNet;
use crate::modelfile::gate::{self, GateFinding, GateManifest};
use crate::modelfile::{Manifest, ModelSource, bundle};

/// The network inputs for views (already augmented when training): standardised pixels and
/// tone features.
pub fn gate_input(views: &[&GreyImage], device: &Device) -> (Tensor<4>, Tensor<2>) {
    let side = GATE_SIDE as usize;
    let (pixels, tone): (Vec<Vec<f32>>, Vec<Vec<f32>>) = views
        .par_iter()
        .map(|v| (standardize_view(v), tone_features(v)))
        .unzip();
    let n = views.len();
    (
        Tensor::from_data(TensorData::new(pixels.concat(), [n, 1, side, side]), device),
        Tensor::from_data(TensorData::new(tone.concat(), [n, TONE_FEATURES]), device),
    )
}

/// A gate ready to judge images.
pub struct LoadedGate {
    pub manifest: GateManifest,
    net: GateNet,
    device: Device,
    /// Where it came from, in words (a directory, or "bundled").
    pub origin: String,
}

impl LoadedGate {
    /// The gate in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_checked(dir, None)
    }

    /// The gate in `dir`, whose weights must have the checksum `expected` when given.
    fn open_checked(dir: &Path, expected: Option<&str>) -> Result<Self> {
        let device = Device::flex();
        let (manifest, net) = gate::load_gate(dir, expected, &device)?;
        Ok(Self::on_device(
            manifest,
            net,
            device,
            dir.display().to_string(),
        ))
    }

    /// The gate compiled into the binary.
    pub fn bundled() -> Result<Self> {
        let device = Device::flex();
        let (manifest, net) = gate::load_bundled_gate(&device)?;
        Ok(Self::on_device(manifest, net, device, "bundled".into()))
    }

    /// The gate a model uses: the one its file names, else the bundled one.
    pub fn for_model(manifest: &Manifest, source: &ModelSource) -> Result<Self> {
        match (&manifest.gate, source) {
            (Some(link), ModelSource::Directory(p)) => Self::open_checked(
                &bundle::model_dir(p).join(&link.dir),
                Some(&link.weights_sha256),
            ),
            _ => Self::bundled(),
        }
    }

    fn on_device(manifest: GateManifest, net: GateNet, device: Device, origin: String) -> Self {
        Self {
            manifest,
            net,
            device,
            origin,
        }
    }

    /// A gate already in memory (e.g. one just trained).
    pub fn from_parts(manifest: GateManifest, net: GateNet, origin: String) -> Self {
        Self::on_device(manifest, net, Device::flex(), origin)
    }

    /// The probability of each kind, in the manifest's order, for each view.
    pub fn probabilities(&self, views: &[&GreyImage]) -> Vec<Vec<f32>> {
        let mut out = Vec::with_capacity(views.len());
        for chunk in views.chunks(INFERENCE_BATCH) {
            let (x, tone) = gate_input(chunk, &self.device);
            out.extend(
                rows(self.net.forward(x, tone))
                    .iter()
                    .map(|l| softmax_with_temperature(l, 1.0)),
            );
        }
        out
    }

    /// The finding for each view.
    pub fn findings(&self, views: &[&GreyImage]) -> Vec<GateFinding> {
        self.probabilities(views)
            .iter()
            .map(|p| self.manifest.finding(p))
            .collect()
    }
}
