//! Reading and writing the model file: a directory holding `model.json` (the [`Manifest`]) and
//! `weights.bpk` (burn's burnpack weights). The manifest carries the SHA-256 of the weights, so a
//! mismatched pair is refused at load; the bundled default model is compiled into the binary.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;

use super::manifest::Manifest;
use super::weights::{load_embedded, save_weights};
use crate::core::error::{Detail, Error, ModelFileProblem, Result};
use crate::core::files::{sha256_file, write_json_atomic};
use crate::model::Classifier;

pub const MANIFEST_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "weights.bpk";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model directory (or its `model.json`).
    Directory(PathBuf),
    /// The default model compiled into the binary.
    Bundled,
}

impl ModelSource {
    /// `path`, else the bundled default model.
    pub fn from_option(path: Option<&Path>) -> Self {
        match path {
            Some(p) => ModelSource::Directory(p.to_path_buf()),
            None => ModelSource::Bundled,
        }
    }
}

impl From<Option<PathBuf>> for ModelSource {
    fn from(path: Option<PathBuf>) -> Self {
        path.map_or(ModelSource::Bundled, ModelSource::Directory)
    }
}

/// Accepts the model directory or its `model.json`.
pub fn model_dir(path: &Path) -> PathBuf {
    if path.file_name().is_some_and(|n| n == MANIFEST_FILE) {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// Writes weights then manifest into `dir` (created if needed). The manifest is written last and
/// atomically, so a crash mid-save never leaves a manifest pointing at other weights.
pub fn save(dir: &Path, model: &Classifier, manifest: &mut Manifest) -> Result<()> {
    manifest.weights_sha256 = save_weights(model, dir, WEIGHTS_FILE)?;
    write_json_atomic(&dir.join(MANIFEST_FILE), manifest)
}

/// Reads and checks a manifest without loading weights.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let dir = model_dir(path);
    let file = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::model(&dir, ModelFileProblem::NoManifest),
        _ => Error::io(&file, e),
    })?;
    let mut manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::model(&file, ModelFileProblem::Malformed(e)))?;
    manifest.validate(&file)?;
    manifest.unpack(&file)?;
    Ok(manifest)
}

/// Inference mode for gradients: dropout and batch-norm statistics frozen (as in `valid()`), but
/// the parameters stay on `device`, which may be an autodiff device (Grad-CAM differentiates a
/// class score with respect to an activation).
struct FreezeTrainingFlags;

impl burn::module::ModuleMapper for FreezeTrainingFlags {
    fn map_flag(
        &mut self,
        flag: burn::module::Param<burn::module::Flag>,
    ) -> burn::module::Param<burn::module::Flag> {
        flag.with_value(false)
    }
}

/// How a loaded network will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain inference (`valid()`): no autodiff.
    Inference,
    /// Inference behaviour on an autodiff device, for explanations.
    Gradients,
}

fn finish(model: Classifier, mode: Mode) -> Classifier {
    match mode {
        Mode::Inference => model.valid(),
        // Grad-CAM differentiates with respect to an activation, never the weights: tracked
        // weights would be parents of every request's graph, and burn's autodiff merges graphs
        // that share a parent, so concurrent requests ended up in one graph, where one
        // request's backward pass (graph lock, then the global lock) and another's next step
        // (global lock, then graph lock) deadlocked the server.
        Mode::Gradients => model.map(&mut FreezeTrainingFlags).no_grad(),
    }
}

/// Loads manifest and weights onto `device` for inference, checking that they belong together.
pub fn load(path: &Path, device: &Device) -> Result<(Manifest, Classifier)> {
    load_with_mode(path, device, Mode::Inference)
}

/// [`load`] for a given [`Mode`].
pub fn load_with_mode(path: &Path, device: &Device, mode: Mode) -> Result<(Manifest, Classifier)> {
    let (manifest, model) = load_trainable(path, device)?;
    Ok((manifest, finish(model, mode)))
}

/// Loads manifest and weights onto `device` as they were trained (dropout and batch-norm
/// statistics in training behaviour on an autodiff device): where fine-tuning starts.
pub fn load_trainable(path: &Path, device: &Device) -> Result<(Manifest, Classifier)> {
    let dir = model_dir(path);
    let manifest = read_manifest(&dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(Error::model(&dir, ModelFileProblem::WeightsMissing));
    }
    let digest = sha256_file(&weights)?;
    if digest != manifest.weights_sha256 {
        return Err(Error::model(&dir, ModelFileProblem::ChecksumMismatch));
    }
    let model = Classifier::init(&manifest.spec, device)
        .try_load_file(&weights)
        .map_err(|e| Error::model(&weights, ModelFileProblem::WeightsDoNotFit(Detail::of(e))))?;
    Ok((manifest, model))
}

/// The default model, committed under `models/default/` and compiled into the binary so that
/// `predict` (and later `serve`) work on a fresh clone with no other setup.
const DEFAULT_MANIFEST: &str = include_str!("../../models/default/model.json");
/// How errors name the bundled model.
const DEFAULT_ORIGIN: &str = "<bundled default model>";
const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../models/default/weights.bpk");

/// The model card of the bundled default model (Markdown).
pub const DEFAULT_MODEL_CARD: &str = include_str!("../../docs/model-card.md");

/// The weights checksum of the bundled default model, parsed once (the default manifest
/// carries the input check's packed covariance).
fn default_weights_sha() -> Option<&'static str> {
    static DEFAULT_SHA: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DEFAULT_SHA
        .get_or_init(|| {
            serde_json::from_str::<serde_json::Value>(DEFAULT_MANIFEST)
                .ok()
                .and_then(|v| v["weights_sha256"].as_str().map(str::to_string))
        })
        .as_deref()
}

/// Whether `manifest` is the bundled default model's (its weights checksum matches).
pub fn is_default_model(manifest: &Manifest) -> bool {
    default_weights_sha() == Some(manifest.weights_sha256.as_str())
}

/// The version of the model at `source` (first 12 hex digits of its weights' SHA-256), from
/// its manifest alone.
pub fn version_of(source: &ModelSource) -> Result<String> {
    match source {
        ModelSource::Directory(d) => Ok(read_manifest(d)?.version()),
        ModelSource::Bundled => default_weights_sha()
            .map(|s| s.chars().take(12).collect())
            .ok_or_else(|| {
                Error::model(
                    Path::new(DEFAULT_ORIGIN),
                    ModelFileProblem::Inconsistent("the bundled manifest has no weights checksum"),
                )
            }),
    }
}

/// The manifest of the model at `source`, without its weights.
pub fn manifest_of(source: &ModelSource) -> Result<Manifest> {
    match source {
        ModelSource::Directory(d) => read_manifest(d),
        ModelSource::Bundled => default_manifest(),
    }
}

/// The bundled default model's manifest, without its weights.
pub fn default_manifest() -> Result<Manifest> {
    let origin = Path::new(DEFAULT_ORIGIN);
    let mut manifest: Manifest = serde_json::from_str(DEFAULT_MANIFEST)
        .map_err(|e| Error::model(origin, ModelFileProblem::Malformed(e)))?;
    manifest.validate(origin)?;
    manifest.unpack(origin)?;
    Ok(manifest)
}

/// Loads the bundled default model onto `device`.
pub fn load_default(device: &Device, mode: Mode) -> Result<(Manifest, Classifier)> {
    let origin = Path::new(DEFAULT_ORIGIN);
    let manifest = default_manifest()?;
    let model = load_embedded(
        Classifier::init(&manifest.spec, device),
        DEFAULT_WEIGHTS,
        &manifest.weights_sha256,
        origin,
    )?;
    Ok((manifest, finish(model, mode)))
}

/// Loads a model from `source` onto `device` for `mode`.
pub fn load_from(
    source: &ModelSource,
    device: &Device,
    mode: Mode,
) -> Result<(Manifest, Classifier)> {
    match source {
        ModelSource::Directory(p) => load_with_mode(p, device, mode),
        ModelSource::Bundled => load_default(device, mode),
    }
}

/// Writes a manifest whose weights are already in `dir` (after calibration or quantisation;
/// the weights stay untouched), checking it first.
pub fn rewrite_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    manifest.validate(dir)?;
    write_json_atomic(&dir.join(MANIFEST_FILE), manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts float parameters and those tracked by autodiff.
    #[derive(Default)]
    struct Tracked {
        params: usize,
        tracked: usize,
    }

    impl burn::module::ModuleVisitor for Tracked {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.params += 1;
            self.tracked += usize::from(param.val().is_require_grad());
        }
    }

    #[test]
    fn a_model_loaded_for_gradients_tracks_no_weight() {
        let device = Device::flex().autodiff();
        let (_, model) = load_default(&device, Mode::Gradients).unwrap();
        let mut count = Tracked::default();
        model.visit(&mut count);
        assert!(count.params > 10, "{} parameters", count.params);
        assert_eq!(count.tracked, 0, "weights on the autodiff graph");
    }
}
