//! The input gate loaded for inference: the model's own gate when its file names one, else the
//! gate compiled into the binary. Its frozen ImageNet trunk runs on the int8 engine with the
//! ranges stored beside it (the features its head was fitted on), one view per task.

use std::path::Path;

use burn::tensor::Device;
use rayon::prelude::*;

use crate::backend::int8::Int8Engine;
use crate::core::error::Result;
use crate::imaging::GreyImage;
use crate::imaging::gate_view::{GATE_SIDE, normalize_view};
use crate::model::efficientnet::EfficientNetTrunk;
use crate::modelfile::gate::{self, GateBackbone, GateFinding, GateManifest};
use crate::modelfile::{Manifest, ModelSource, bundle};

/// The gate's trunk on the int8 engine: views in, tap statistics out.
pub struct GateFeatures {
    engine: Int8Engine,
    mean: f32,
    std: f32,
    int8: bool,
}

impl GateFeatures {
    /// The trunk with `backbone`'s taps and int8 ranges.
    pub fn new(trunk: &EfficientNetTrunk, backbone: &GateBackbone) -> Result<Self> {
        let engine =
            Int8Engine::new(&trunk.describe(&backbone.taps)?)?.with_calibration(&backbone.int8)?;
        Ok(Self {
            engine,
            mean: backbone.input_mean,
            std: backbone.input_std,
            int8: true,
        })
    }

    /// The trunk in f32, before its int8 ranges are known (training calibrates it with
    /// [`Self::calibrate`]).
    pub fn uncalibrated(
        trunk: &EfficientNetTrunk,
        taps: &[usize],
        mean: f32,
        std: f32,
    ) -> Result<Self> {
        Ok(Self {
            engine: Int8Engine::new(&trunk.describe(taps)?)?,
            mean,
            std,
            int8: false,
        })
    }

    /// Fits the int8 ranges on `views` and switches to int8.
    pub fn calibrate(&mut self, views: &[&GreyImage]) -> Result<crate::modelfile::Int8Calibration> {
        let inputs: Vec<Vec<f32>> = views
            .iter()
            .map(|v| normalize_view(v, self.mean, self.std))
            .collect();
        let calibration = self.engine.calibrate(&inputs, GATE_SIDE as usize)?;
        self.int8 = true;
        Ok(calibration)
    }

    /// The per-channel mean and standard deviation of each tap, per view.
    pub fn of(&self, views: &[&GreyImage]) -> Result<Vec<Vec<f32>>> {
        views
            .par_iter()
            .map(|v| {
                let x = normalize_view(v, self.mean, self.std);
                Ok(self
                    .engine
                    .tap_statistics(&x, GATE_SIDE as usize, self.int8)?)
            })
            .collect()
    }
}

/// A gate ready to judge images.
pub struct LoadedGate {
    pub manifest: GateManifest,
    features: GateFeatures,
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
        let (manifest, trunk) = gate::load_gate(dir, expected, &Device::flex())?;
        Self::from_parts(manifest, &trunk, dir.display().to_string())
    }

    /// The gate compiled into the binary.
    pub fn bundled() -> Result<Self> {
        let (manifest, trunk) = gate::load_bundled_gate(&Device::flex())?;
        Self::from_parts(manifest, &trunk, "bundled".into())
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

    /// A gate from its manifest and trunk (e.g. one just trained).
    pub fn from_parts(
        manifest: GateManifest,
        trunk: &EfficientNetTrunk,
        origin: String,
    ) -> Result<Self> {
        let features = GateFeatures::new(trunk, &manifest.backbone)?;
        Ok(Self {
            manifest,
            features,
            origin,
        })
    }

    /// The probability of each kind, in the manifest's order, for each view. A view the trunk
    /// cannot run on (none today: every view has the gate's size) gets NaN, which refuses it.
    pub fn probabilities(&self, views: &[&GreyImage]) -> Vec<Vec<f32>> {
        match self.features.of(views) {
            Ok(rows) => rows
                .iter()
                .map(|f| self.manifest.head.probabilities(f))
                .collect(),
            Err(e) => {
                tracing::error!("input gate: {}", e.sentence());
                vec![vec![f32::NAN; self.manifest.kinds.len()]; views.len()]
            }
        }
    }

    /// The finding for each view.
    pub fn findings(&self, views: &[&GreyImage]) -> Vec<GateFinding> {
        self.probabilities(views)
            .iter()
            .map(|p| self.manifest.finding(p))
            .collect()
    }
}
