//! The model file: a directory holding `model.json` (what the model is) and `weights.bpk`
//! (burn's burnpack weights). `model.json` records the architecture, input size and channels,
//! classes, the full pre-processing, the training settings, the data fingerprint, metrics and the
//! oncolens version, plus the SHA-256 of the weights so a mismatched pair is refused at load.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{Classifier, ModelSpec};
use crate::preprocess::Preprocessing;
use crate::train::config::TrainConfig;
use crate::trust::TrustProfile;

pub const FORMAT: &str = "oncolens-model";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "weights.bpk";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Folder name in the training data, e.g. `glioma_tumor`.
    pub id: String,
    /// Name shown to people, e.g. "Glioma". A tumour type, never a stage or grade.
    pub display: String,
}

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataProvenance {
    pub root: String,
    /// [`crate::data::ImageFolder::fingerprint`] of the training folder.
    pub fingerprint: String,
    pub train_images: usize,
    pub validation_images: usize,
    /// Files that could not be read and were skipped.
    pub skipped: Vec<String>,
    pub class_counts: Vec<usize>,
    /// How the validation split kept copies apart.
    #[serde(default)]
    pub split_grouping: String,
}

/// Validation figures of the saved weights (the best epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationSummary {
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub oncolens_version: String,
    pub name: String,
    pub created_unix: u64,
    pub spec: ModelSpec,
    pub classes: Vec<ClassInfo>,
    pub preprocessing: Preprocessing,
    pub training: TrainConfig,
    pub data: DataProvenance,
    pub validation: Option<ValidationSummary>,
    /// Below this (calibrated) top-class probability a result is shown as "uncertain".
    pub uncertainty_threshold: f32,
    /// Temperature, input check and how they were fitted; `None` in models not yet calibrated
    /// (`oncolens calibrate` adds it).
    #[serde(default)]
    pub trust: Option<TrustProfile>,
    /// Activation ranges for the int8 engine; `None` until `oncolens quantize` fits them.
    #[serde(default)]
    pub int8: Option<crate::int8::Int8Calibration>,
    pub weights_sha256: String,
}

impl Manifest {
    /// Checks that the pieces agree with each other.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::model(
                path,
                format!("not an oncolens model (format {:?})", self.format),
            ));
        }
        if self.format_version > FORMAT_VERSION {
            return Err(Error::model(
                path,
                format!(
                    "model format version {} is newer than this oncolens understands ({FORMAT_VERSION})",
                    self.format_version
                ),
            ));
        }
        self.spec.validate().map_err(|e| Error::model(path, e))?;
        self.preprocessing
            .validate()
            .map_err(|e| Error::model(path, e))?;
        if self.classes.len() != self.spec.num_classes {
            return Err(Error::model(
                path,
                format!(
                    "{} class names for a {}-class network",
                    self.classes.len(),
                    self.spec.num_classes
                ),
            ));
        }
        if self.preprocessing.input_size as usize != self.spec.input_size {
            return Err(Error::model(
                path,
                "pre-processing and network disagree on the input size",
            ));
        }
        if !(0.0..=1.0).contains(&self.uncertainty_threshold) {
            return Err(Error::model(
                path,
                "uncertainty threshold must be in [0, 1]",
            ));
        }
        Ok(())
    }

    /// Decodes the stored parts of the trust profile that are kept packed in the file.
    fn unpack(&mut self, path: &Path) -> Result<()> {
        if let Some(t) = &mut self.trust {
            if !t.features.unpack() {
                return Err(Error::model(
                    path,
                    "the input check's feature model is corrupt (wrong size)",
                ));
            }
            if !(t.temperature.is_finite() && t.temperature > 0.0) {
                return Err(Error::model(path, "the temperature must be positive"));
            }
        }
        Ok(())
    }

    /// The temperature logits are divided by (1 before calibration).
    pub fn temperature(&self) -> f32 {
        self.trust.as_ref().map_or(1.0, |t| t.temperature)
    }

    pub fn display_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.display.clone()).collect()
    }

    pub fn class_ids(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.id.clone()).collect()
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

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// Writes weights then manifest into `dir` (created if needed). The manifest is written last and
/// atomically, so a crash mid-save never leaves a manifest pointing at other weights.
pub fn save(dir: &Path, model: &Classifier, manifest: &mut Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    let weights = dir.join(WEIGHTS_FILE);
    let tmp_weights = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    model
        .clone()
        .save_file(&tmp_weights)
        .map_err(|e| Error::output(&tmp_weights, format!("{e:?}")))?;
    std::fs::rename(&tmp_weights, &weights).map_err(|e| Error::output(&weights, e))?;
    manifest.weights_sha256 = sha256_file(&weights)?;
    write_json_atomic(&dir.join(MANIFEST_FILE), manifest)
}

/// Reads and checks a manifest without loading weights.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let dir = model_dir(path);
    let file = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::model(
            &dir,
            format!("no {MANIFEST_FILE} here; is this a model directory?"),
        ),
        _ => Error::io(&file, e),
    })?;
    let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        Error::model(
            &file,
            format!("{MANIFEST_FILE} is missing a piece or malformed: {e}"),
        )
    })?;
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
        Mode::Gradients => model.map(&mut FreezeTrainingFlags),
    }
}

/// Loads manifest and weights onto `device` for inference, checking that they belong together.
pub fn load(path: &Path, device: &Device) -> Result<(Manifest, Classifier)> {
    load_with_mode(path, device, Mode::Inference)
}

/// [`load`] for a given [`Mode`].
pub fn load_with_mode(path: &Path, device: &Device, mode: Mode) -> Result<(Manifest, Classifier)> {
    let dir = model_dir(path);
    let manifest = read_manifest(&dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(Error::model(&dir, format!("{WEIGHTS_FILE} is missing")));
    }
    let digest = sha256_file(&weights)?;
    if digest != manifest.weights_sha256 {
        return Err(Error::model(
            &dir,
            format!("{WEIGHTS_FILE} does not match {MANIFEST_FILE} (checksum differs)"),
        ));
    }
    let model = Classifier::init(&manifest.spec, device)
        .try_load_file(&weights)
        .map_err(|e| {
            Error::model(
                &weights,
                format!("weights do not fit the architecture: {e:?}"),
            )
        })?;
    Ok((manifest, finish(model, mode)))
}

/// The default model, committed under `models/default/` and compiled into the binary so that
/// `predict` (and later `serve`) work on a fresh clone with no other setup.
const DEFAULT_MANIFEST: &str = include_str!("../models/default/model.json");
const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../models/default/weights.bpk");

/// The model card of the bundled default model (Markdown).
pub const DEFAULT_MODEL_CARD: &str = include_str!("../docs/model-card.md");

/// Whether `manifest` is the bundled default model's (its weights checksum matches).
pub fn is_default_model(manifest: &Manifest) -> bool {
    // Parsed once: the default manifest carries the input check's packed covariance.
    static DEFAULT_SHA: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DEFAULT_SHA
        .get_or_init(|| {
            serde_json::from_str::<serde_json::Value>(DEFAULT_MANIFEST)
                .ok()
                .and_then(|v| v["weights_sha256"].as_str().map(str::to_string))
        })
        .as_deref()
        == Some(manifest.weights_sha256.as_str())
}

/// Loads the bundled default model onto `device`.
pub fn load_default(device: &Device, mode: Mode) -> Result<(Manifest, Classifier)> {
    let origin = Path::new("<bundled default model>");
    let mut manifest: Manifest = serde_json::from_str(DEFAULT_MANIFEST)
        .map_err(|e| Error::model(origin, format!("{MANIFEST_FILE}: {e}")))?;
    manifest.validate(origin)?;
    manifest.unpack(origin)?;
    if hex::encode(Sha256::digest(DEFAULT_WEIGHTS)) != manifest.weights_sha256 {
        return Err(Error::model(
            origin,
            "weights do not match the manifest (checksum differs)",
        ));
    }
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(
        DEFAULT_WEIGHTS.to_vec(),
    ))
    .map_err(|e| Error::model(origin, format!("{e:?}")))?;
    let model = Classifier::init(&manifest.spec, device)
        .try_load_record(record)
        .map_err(|e| {
            Error::model(
                origin,
                format!("weights do not fit the architecture: {e:?}"),
            )
        })?;
    Ok((manifest, finish(model, mode)))
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::output(path, e))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::output(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::output(path, e))
}
