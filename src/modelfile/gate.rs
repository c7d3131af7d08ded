//! The input gate as it is stored: a directory with `gate.json` (the [`GateManifest`]: the kinds
//! of picture it tells apart with the reason shown for each, its threshold and how it was
//! chosen, the data it was trained on and its validation figures) and `gate.bpk` (the weights of
//! [`GateNet`]). A model file names its gate ([`GateLink`]); a model that names none uses the
//! gate compiled into the binary, so every model, old or new, is gated.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::weights::{load_embedded, save_weights};
use crate::core::error::{Detail, Error, ModelFileProblem, Result};
use crate::core::files::{sha256_file, write_json_atomic};
use crate::imaging::gate_view::GATE_SIDE;
use crate::model::gate::GateNet;

pub const GATE_FORMAT: &str = "oncolens-gate";
pub const GATE_FORMAT_VERSION: u32 = 1;
pub const GATE_MANIFEST_FILE: &str = "gate.json";
pub const GATE_WEIGHTS_FILE: &str = "gate.bpk";
/// The id of the one kind the gate lets through.
pub const BRAIN_MRI: &str = "brain_mri";

/// One kind of picture the gate knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateKind {
    /// Folder name of the kind's images (`head_ct`), or `brain_mri`, or `synthetic`.
    pub id: String,
    /// Why an image of this kind is refused, in words shown to the user.
    pub reason: String,
}

/// How the gate was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// MRI slices drawn per epoch.
    #[serde(default)]
    pub mri_per_epoch: usize,
    /// Real non-MRI images drawn per epoch, as a share of the MRI slices.
    pub negative_share: f32,
    /// Synthetic negatives made per epoch, as a share of the MRI slices.
    pub synthetic_share: f32,
    /// The augmentation, in words.
    pub augmentation: String,
}

/// What the gate was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateData {
    pub mri_root: String,
    /// Fingerprint of the MRI training folder.
    pub mri_fingerprint: String,
    /// MRI slices of the classifier's train split used as positives.
    pub mri_train: usize,
    /// MRI slices of the classifier's validation split, used for the threshold.
    pub mri_validation: usize,
    pub non_mri_root: String,
    /// Fingerprint of the non-MRI folder.
    pub non_mri_fingerprint: String,
    /// Real non-MRI images used, per kind.
    pub non_mri_images: BTreeMap<String, usize>,
    /// The non-MRI sources trained on (the file-name prefix before `__`).
    pub sources: Vec<String>,
    /// Sources left out of training (a cross-validation fold).
    #[serde(default)]
    pub held_out_sources: Vec<String>,
    /// The list of MRI-folder files that are not brain MRI, when one was given.
    #[serde(default)]
    pub not_mri_list: Option<String>,
    /// Files of the MRI folder trained on as negatives (listed as not brain MRI).
    #[serde(default)]
    pub not_mri_in_mri_folder: usize,
}

/// `gate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateManifest {
    pub format: String,
    pub format_version: u32,
    pub oncolens_version: String,
    pub name: String,
    pub created_unix: u64,
    /// Side of the square whole-frame view the network takes.
    pub input_side: u32,
    /// The kinds, in the network's output order; [`BRAIN_MRI`] first.
    pub kinds: Vec<GateKind>,
    /// An image whose brain-MRI probability is below this is refused.
    pub threshold: f32,
    /// How the threshold was chosen, in words.
    pub threshold_rule: String,
    pub training: GateTraining,
    pub data: GateData,
    /// Validation MRI slices the threshold refuses.
    pub validation_mri_refused: usize,
    pub weights_sha256: String,
}

impl GateManifest {
    /// Checks that the pieces agree with each other.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |problem| Err(Error::model(path, problem));
        if self.format != GATE_FORMAT {
            return bad(ModelFileProblem::NotAGate(self.format.clone()));
        }
        if self.format_version > GATE_FORMAT_VERSION {
            return bad(ModelFileProblem::NewerFormat {
                found: self.format_version,
                supported: GATE_FORMAT_VERSION,
            });
        }
        if self.input_side != GATE_SIDE {
            return bad(ModelFileProblem::Inconsistent(
                "the gate's view size is not the one this oncolens makes",
            ));
        }
        if self.kinds.len() < 2 || self.kinds[0].id != BRAIN_MRI {
            return bad(ModelFileProblem::Inconsistent(
                "a gate needs brain_mri first and at least one other kind",
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(ModelFileProblem::Inconsistent(
                "the gate's threshold must be in [0, 1]",
            ));
        }
        Ok(())
    }

    /// The finding for one image from the gate's probabilities (in [`Self::kinds`] order).
    pub fn finding(&self, probabilities: &[f32]) -> GateFinding {
        let score = probabilities.first().copied().unwrap_or(0.0);
        let (other, p) =
            probabilities
                .iter()
                .enumerate()
                .skip(1)
                .fold(
                    (0, f32::MIN),
                    |best, (i, &p)| if p > best.1 { (i, p) } else { best },
                );
        GateFinding {
            score,
            threshold: self.threshold,
            looks_like: self
                .kinds
                .get(other)
                .map_or_else(String::new, |k| k.id.clone()),
            looks_like_probability: p.max(0.0),
            // A NaN score is refused: the gate could not vouch for the image.
            refused: score.is_nan() || score < self.threshold,
        }
    }

    /// The reason shown for a refused finding: its most probable other kind's.
    pub fn reason_for(&self, finding: &GateFinding) -> &str {
        let index = self.kinds.iter().position(|k| k.id == finding.looks_like);
        self.reason(index.unwrap_or(usize::MAX))
    }

    /// The reason shown for kind `index` (the catch-all for an unknown index).
    pub fn reason(&self, index: usize) -> &str {
        self.kinds
            .get(index)
            .map_or("it does not look like a brain MRI slice", |k| &k.reason)
    }
}

/// The reason shown for a kind of picture, by its folder name.
pub fn default_reason(kind: &str) -> String {
    match kind {
        "head_ct" => "it looks like a CT slice, not an MRI".into(),
        "chest_xray" => "it looks like an X-ray (radiograph), not an MRI slice".into(),
        "other_mri" => "it looks like an MRI, but not of the head".into(),
        "other_medical" => {
            "it looks like another kind of medical image (fundus, endoscopy, ultrasound or \
             histology), not an MRI slice"
                .into()
        }
        "photos_docs" => "it looks like a photograph, document or diagram".into(),
        "synthetic" => "it looks like a blank frame, noise, a pattern or text, not a scan".into(),
        other => format!(
            "it looks like {} rather than a brain MRI slice",
            other.replace('_', " ")
        ),
    }
}

/// A kind of picture in a few words ("a head CT"), for the result page.
pub fn kind_display(kind: &str) -> String {
    match kind {
        BRAIN_MRI => "a brain MRI slice".into(),
        "head_ct" => "a head CT".into(),
        "chest_xray" => "a chest X-ray".into(),
        "other_mri" => "an MRI of another body part".into(),
        "other_medical" => "another kind of medical image".into(),
        "photos_docs" => "a photograph or document".into(),
        "synthetic" => "a blank frame, noise or a pattern".into(),
        other => other.replace('_', " "),
    }
}

/// The gate a model file names: a directory inside the model directory, and its weights'
/// checksum (a different gate put there is refused at load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateLink {
    /// Relative to the model directory, e.g. `gate`.
    pub dir: String,
    pub weights_sha256: String,
}

/// The gate's finding for one image: shown on the result page and in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateFinding {
    /// The gate's probability that the image is a brain MRI slice.
    pub score: f32,
    /// Below this the image is refused.
    pub threshold: f32,
    /// The most probable kind other than brain MRI, e.g. `head_ct`.
    pub looks_like: String,
    /// Its probability.
    pub looks_like_probability: f32,
    pub refused: bool,
}

/// Writes weights then manifest into `dir`; the manifest last and atomically.
pub fn save_gate(dir: &Path, net: &GateNet, manifest: &mut GateManifest) -> Result<()> {
    manifest.weights_sha256 = save_weights(net, dir, GATE_WEIGHTS_FILE)?;
    manifest.validate(dir)?;
    write_json_atomic(&dir.join(GATE_MANIFEST_FILE), manifest)
}

/// Reads and checks `gate.json` in `dir`.
pub fn read_gate_manifest(dir: &Path) -> Result<GateManifest> {
    let file = dir.join(GATE_MANIFEST_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::model(dir, ModelFileProblem::NoGateManifest),
        _ => Error::io(&file, e),
    })?;
    let manifest: GateManifest = serde_json::from_str(&text)
        .map_err(|e| Error::model(&file, ModelFileProblem::Malformed(e)))?;
    manifest.validate(&file)?;
    Ok(manifest)
}

/// Loads a gate directory for inference, checking that weights and manifest belong together
/// (and, with `expected_sha256`, that it is the gate a model file names).
pub fn load_gate(
    dir: &Path,
    expected_sha256: Option<&str>,
    device: &Device,
) -> Result<(GateManifest, GateNet)> {
    let manifest = read_gate_manifest(dir)?;
    let weights = dir.join(GATE_WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(Error::model(dir, ModelFileProblem::WeightsMissing));
    }
    let digest = sha256_file(&weights)?;
    if digest != manifest.weights_sha256 || expected_sha256.is_some_and(|e| e != digest) {
        return Err(Error::model(dir, ModelFileProblem::ChecksumMismatch));
    }
    let net = GateNet::new(manifest.kinds.len(), device)
        .try_load_file(&weights)
        .map_err(|e| Error::model(&weights, ModelFileProblem::WeightsDoNotFit(Detail::of(e))))?;
    Ok((manifest, net.valid()))
}

/// The gate compiled into the binary (committed under `models/gate/`), used by every model
/// whose file names no gate of its own.
const BUNDLED_GATE_MANIFEST: &str = include_str!("../../models/gate/gate.json");
const BUNDLED_GATE_WEIGHTS: &[u8] = include_bytes!("../../models/gate/gate.bpk");

/// Loads the bundled gate onto `device`.
pub fn load_bundled_gate(device: &Device) -> Result<(GateManifest, GateNet)> {
    let origin = Path::new("<bundled input gate>");
    let manifest: GateManifest = serde_json::from_str(BUNDLED_GATE_MANIFEST)
        .map_err(|e| Error::model(origin, ModelFileProblem::Malformed(e)))?;
    manifest.validate(origin)?;
    let net = load_embedded(
        GateNet::new(manifest.kinds.len(), device),
        BUNDLED_GATE_WEIGHTS,
        &manifest.weights_sha256,
        origin,
    )?;
    Ok((manifest, net.valid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(threshold: f32) -> GateManifest {
        let kind = |id: &str| GateKind {
            id: id.into(),
            reason: default_reason(id),
        };
        GateManifest {
            format: GATE_FORMAT.into(),
            format_version: GATE_FORMAT_VERSION,
            oncolens_version: "test".into(),
            name: "gate".into(),
            created_unix: 0,
            input_side: GATE_SIDE,
            kinds: vec![kind(BRAIN_MRI), kind("head_ct"), kind("photos_docs")],
            threshold,
            threshold_rule: String::new(),
            training: GateTraining {
                epochs: 1,
                batch_size: 2,
                learning_rate: 1e-3,
                seed: 1,
                mri_per_epoch: 2,
                negative_share: 1.0,
                synthetic_share: 0.0,
                augmentation: String::new(),
            },
            data: GateData {
                mri_root: String::new(),
                mri_fingerprint: String::new(),
                mri_train: 0,
                mri_validation: 0,
                non_mri_root: String::new(),
                non_mri_fingerprint: String::new(),
                non_mri_images: BTreeMap::new(),
                sources: Vec::new(),
                held_out_sources: Vec::new(),
                not_mri_list: None,
                not_mri_in_mri_folder: 0,
            },
            validation_mri_refused: 0,
            weights_sha256: String::new(),
        }
    }

    #[test]
    fn a_finding_names_the_most_probable_other_kind_and_refuses_below_the_threshold() {
        let m = manifest(0.3);
        let f = m.finding(&[0.2, 0.7, 0.1]);
        assert!(f.refused);
        assert_eq!(f.looks_like, "head_ct");
        assert_eq!(m.reason_for(&f), "it looks like a CT slice, not an MRI");
        let f = m.finding(&[0.9, 0.02, 0.08]);
        assert!(!f.refused);
        assert_eq!(f.looks_like, "photos_docs");
        assert!(m.finding(&[f32::NAN, 0.5, 0.5]).refused);
    }

    #[test]
    fn a_gate_without_brain_mri_first_or_with_a_bad_threshold_is_refused() {
        let path = Path::new("gate.json");
        assert!(manifest(0.3).validate(path).is_ok());
        let mut m = manifest(0.3);
        m.kinds.swap(0, 1);
        assert!(m.validate(path).is_err());
        assert!(manifest(1.5).validate(path).is_err());
        let mut m = manifest(0.3);
        m.input_side = 32;
        assert!(m.validate(path).is_err());
        assert_eq!(
            default_reason("knee_xray"),
            "it looks like knee xray rather than a brain MRI slice"
        );
    }
}
