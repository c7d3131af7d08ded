//! `model.json`: what a model is. Architecture, input size and channels, classes, the full
//! pre-processing, the training settings, the data fingerprint, validation figures, the
//! oncolens version, the trust profile, int8 ranges and the SHA-256 of the weights.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gate::GateLink;
use super::int8::Int8Calibration;
use super::training::TrainConfig;
use super::trust::TrustProfile;
use crate::core::error::{Error, ModelFileProblem, Result};
use crate::imaging::Preprocessing;
use crate::model::ModelSpec;

pub const FORMAT: &str = "oncolens-model";
pub const FORMAT_VERSION: u32 = 1;

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
    /// `ImageFolder::fingerprint` of the training folder.
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
    pub int8: Option<Int8Calibration>,
    /// The input gate this model uses; `None`: the gate compiled into the binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateLink>,
    /// The model this one was fine-tuned from (`None`: trained from scratch or ImageNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentModel>,
    /// The clinicians' feedback it was fine-tuned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackProvenance>,
    pub weights_sha256: String,
}

/// The model a fine-tuned model started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentModel {
    pub name: String,
    /// Its version (first 12 hex digits of its weights' SHA-256).
    pub version: String,
    pub weights_sha256: String,
}

/// The feedback a model was fine-tuned on (`oncolens feedback export`'s folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackProvenance {
    pub root: String,
    /// SHA-256 over the sorted file hashes of the items trained on.
    pub fingerprint: String,
    /// Items trained on, per class (model class order).
    pub class_counts: Vec<usize>,
    /// Items kept out of training for the promotion check, and items validated on.
    pub held_out: usize,
    pub validation: usize,
    /// Original training images replayed beside the feedback (so that it does not forget).
    pub replayed: usize,
}

impl Manifest {
    /// Checks that the pieces agree with each other.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |problem| Err(Error::model(path, problem));
        if self.format != FORMAT {
            return bad(ModelFileProblem::NotAModel(self.format.clone()));
        }
        if self.format_version > FORMAT_VERSION {
            return bad(ModelFileProblem::NewerFormat {
                found: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if let Err(e) = self.spec.validate() {
            return bad(ModelFileProblem::Setting(e));
        }
        if let Err(e) = self.preprocessing.validate() {
            return bad(ModelFileProblem::Setting(e));
        }
        if self.classes.len() != self.spec.num_classes {
            return bad(ModelFileProblem::ClassCount {
                count: self.classes.len(),
                classes: self.spec.num_classes,
            });
        }
        if self.preprocessing.input_size as usize != self.spec.input_size {
            return bad(ModelFileProblem::Inconsistent(
                "pre-processing and network disagree on the input size",
            ));
        }
        if !(0.0..=1.0).contains(&self.uncertainty_threshold) {
            return bad(ModelFileProblem::Inconsistent(
                "uncertainty threshold must be in [0, 1]",
            ));
        }
        Ok(())
    }

    /// Decodes the stored parts of the trust profile that are kept packed in the file.
    pub(crate) fn unpack(&mut self, path: &Path) -> Result<()> {
        if let Some(t) = &mut self.trust {
            if !t.features.unpack() {
                return Err(Error::model(path, ModelFileProblem::CorruptFeatureModel));
            }
            if !(t.temperature.is_finite() && t.temperature > 0.0) {
                return Err(Error::model(path, ModelFileProblem::BadTemperature));
            }
            if let Some(rule) = &t.presence
                && (rule.no_tumour_class >= self.classes.len()
                    || !(0.0..=1.0).contains(&rule.min_no_tumour_probability))
            {
                return Err(Error::model(
                    path,
                    ModelFileProblem::Inconsistent(
                        "the presence rule names no class of the model or a threshold outside [0, 1]",
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The model's version: the first 12 hex digits of its weights' SHA-256 (what analyses
    /// record and the registry is keyed by).
    pub fn version(&self) -> String {
        self.weights_sha256.chars().take(12).collect()
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

    /// The class that means "no tumour" (display name "No tumour"), if the model has one: a
    /// series summary calls a series for a tumour type before it calls it tumour-free.
    pub fn no_tumour_index(&self) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| c.display.eq_ignore_ascii_case("No tumour"))
    }
}
