//! The input gate as it is stored: a directory with `gate.json` (the [`GateManifest`]: the kinds
//! of picture it tells apart with the reason shown for each, the frozen ImageNet trunk it reads
//! features from with its int8 ranges, the linear head over those features, its threshold and
//! how it was chosen, the data it was trained on and its validation figures) and `gate.bpk` (the
//! trunk's weights, [`EfficientNetTrunk`]). A model file names its gate ([`GateLink`]); a model
//! that names none uses the gate compiled into the binary, so every model, old or new, is gated.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::Int8Calibration;
use super::weights::{load_embedded, save_weights};
use crate::core::error::{Detail, Error, ModelFileProblem, Result};
use crate::core::files::{sha256_file, write_json_atomic};
use crate::imaging::gate_view::GATE_SIDE;
use crate::model::efficientnet::EfficientNetTrunk;

pub const GATE_FORMAT: &str = "oncolens-gate";
/// Version 2: frozen ImageNet trunk + linear head. Version 1 (a small CNN trained from scratch)
/// is no longer read: it let most head CTs of an unseen collection through (docs/gate.md).
pub const GATE_FORMAT_VERSION: u32 = 2;
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

/// How the gate's head was fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateTraining {
    pub seed: u64,
    /// Augmented copies made of every training image, beside the image itself.
    pub augmented_copies: usize,
    /// Synthetic negatives made, as a share of the MRI slices.
    pub synthetic_share: f32,
    /// L2 penalty on the head's weights (standardised features).
    pub l2: f32,
    /// Full-batch gradient steps.
    pub iterations: usize,
    /// The head's weighted cross-entropy on its training features at the end.
    pub final_loss: f32,
    /// The augmentation, in words.
    pub augmentation: String,
}

/// The frozen network the gate reads its features from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateBackbone {
    /// In words, with where the weights come from.
    pub name: String,
    /// Inverted-residual blocks kept after the stem.
    pub blocks: usize,
    /// Blocks (1-based) whose outputs are read: per-channel mean and standard deviation.
    pub taps: Vec<usize>,
    /// The view's grey values become `(v - input_mean) / input_std` (ImageNet's statistics).
    pub input_mean: f32,
    pub input_std: f32,
    /// The int8 activation ranges the trunk runs with (the features the head was fitted on).
    pub int8: Int8Calibration,
}

/// Two logistic regressions over the standardised features. The brain-MRI score comes from
/// `screen`, brain MRI against everything else (`softmax` of its two rows): one boundary
/// shaped by every kind of negative generalises to a kind it has not seen (a new CT
/// collection) far better than the MRI row of a per-kind model (held-out CT 55 % against 32 %
/// refused, measured on the first gate's offset views: docs/gate.md). What a refused image looks like comes from `weights`/`bias`, one
/// row per kind (multinomial).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateHead {
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
    /// Rows: brain MRI, not brain MRI.
    pub screen_weights: Vec<Vec<f32>>,
    pub screen_bias: Vec<f32>,
}

fn softmax_rows(weights: &[Vec<f32>], bias: &[f32], z: &[f32]) -> Vec<f32> {
    let logits: Vec<f32> = weights
        .iter()
        .zip(bias)
        .map(|(w, b)| w.iter().zip(z).map(|(w, z)| w * z).sum::<f32>() + b)
        .collect();
    crate::core::numeric::softmax_with_temperature(&logits, 1.0)
}

impl GateHead {
    /// The probability of each kind for one feature vector: brain MRI from the screen, the
    /// rest shared out in the proportions of the per-kind model.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        let z: Vec<f32> = features
            .iter()
            .zip(&self.feature_mean)
            .zip(&self.feature_std)
            .map(|((v, m), s)| (v - m) / s)
            .collect();
        let mri = softmax_rows(&self.screen_weights, &self.screen_bias, &z)
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        let others = softmax_rows(
            self.weights.get(1..).unwrap_or_default(),
            self.bias.get(1..).unwrap_or_default(),
            &z,
        );
        std::iter::once(mri)
            .chain(others.into_iter().map(|p| p * (1.0 - mri)))
            .collect()
    }
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
    pub backbone: GateBackbone,
    pub head: GateHead,
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
        if self.format_version < GATE_FORMAT_VERSION {
            return bad(ModelFileProblem::Inconsistent(
                "this is a version-1 gate (a small CNN), which this oncolens no longer reads: \
                 train a new one with `oncolens gate train`",
            ));
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
        let (head, dim) = (&self.head, self.head.feature_mean.len());
        if head.weights.len() != self.kinds.len()
            || head.bias.len() != self.kinds.len()
            || head.feature_std.len() != dim
            || head.weights.iter().any(|w| w.len() != dim)
            || head.screen_weights.len() != 2
            || head.screen_bias.len() != 2
            || head.screen_weights.iter().any(|w| w.len() != dim)
            || !head.feature_std.iter().all(|s| s.is_finite() && *s > 0.0)
        {
            return bad(ModelFileProblem::Inconsistent(
                "the gate's head does not fit its kinds or its features",
            ));
        }
        if self.backbone.taps.is_empty()
            || self
                .backbone
                .taps
                .iter()
                .any(|&t| t == 0 || t > self.backbone.blocks)
            || !(self.backbone.input_std.is_finite() && self.backbone.input_std > 0.0)
        {
            return bad(ModelFileProblem::Inconsistent(
                "the gate's taps must be blocks of its trunk",
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
pub fn save_gate(dir: &Path, trunk: &EfficientNetTrunk, manifest: &mut GateManifest) -> Result<()> {
    manifest.weights_sha256 = save_weights(trunk, dir, GATE_WEIGHTS_FILE)?;
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
) -> Result<(GateManifest, EfficientNetTrunk)> {
    let manifest = read_gate_manifest(dir)?;
    let weights = dir.join(GATE_WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(Error::model(dir, ModelFileProblem::WeightsMissing));
    }
    let digest = sha256_file(&weights)?;
    if digest != manifest.weights_sha256 || expected_sha256.is_some_and(|e| e != digest) {
        return Err(Error::model(dir, ModelFileProblem::ChecksumMismatch));
    }
    let trunk = EfficientNetTrunk::new(manifest.backbone.blocks, device)
        .try_load_file(&weights)
        .map_err(|e| Error::model(&weights, ModelFileProblem::WeightsDoNotFit(Detail::of(e))))?;
    Ok((manifest, trunk))
}

/// The gate compiled into the binary (committed under `models/gate/`), used by every model
/// whose file names no gate of its own.
const BUNDLED_GATE_MANIFEST: &str = include_str!("../../models/gate/gate.json");
const BUNDLED_GATE_WEIGHTS: &[u8] = include_bytes!("../../models/gate/gate.bpk");

/// Loads the bundled gate onto `device`.
pub fn load_bundled_gate(device: &Device) -> Result<(GateManifest, EfficientNetTrunk)> {
    let origin = Path::new("<bundled input gate>");
    let manifest: GateManifest = serde_json::from_str(BUNDLED_GATE_MANIFEST)
        .map_err(|e| Error::model(origin, ModelFileProblem::Malformed(e)))?;
    manifest.validate(origin)?;
    let trunk = load_embedded(
        EfficientNetTrunk::new(manifest.backbone.blocks, device),
        BUNDLED_GATE_WEIGHTS,
        &manifest.weights_sha256,
        origin,
    )?;
    Ok((manifest, trunk))
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
            backbone: GateBackbone {
                name: "trunk".into(),
                blocks: 2,
                taps: vec![1, 2],
                input_mean: 0.449,
                input_std: 0.226,
                int8: Int8Calibration {
                    activations: Vec::new(),
                    rule: String::new(),
                    images: 0,
                    top1_agreement: 1.0,
                    max_probability_difference: 0.0,
                },
            },
            head: GateHead {
                feature_mean: vec![0.0, 1.0],
                feature_std: vec![1.0, 2.0],
                weights: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, 0.0]],
                bias: vec![0.0; 3],
                screen_weights: vec![vec![1.0, 0.0], vec![-1.0, 0.0]],
                screen_bias: vec![0.0; 2],
            },
            kinds: vec![kind(BRAIN_MRI), kind("head_ct"), kind("photos_docs")],
            threshold,
            threshold_rule: String::new(),
            training: GateTraining {
                seed: 1,
                augmented_copies: 1,
                synthetic_share: 0.0,
                l2: 1e-3,
                iterations: 1,
                final_loss: 0.0,
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
    fn the_score_comes_from_the_screen_and_the_rest_from_the_per_kind_model() {
        let m = manifest(0.3);
        // z = (2, 0): screen logits (2, -2); per-kind logits of the others (0, -2).
        let p = m.head.probabilities(&[2.0, 1.0]);
        let mri = 1.0 / (1.0 + (-4f32).exp());
        let ct = 1.0 / (1.0 + (-2f32).exp());
        let expected = [mri, (1.0 - mri) * ct, (1.0 - mri) * (1.0 - ct)];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
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
        let mut m = manifest(0.3);
        m.format_version = 1;
        assert!(m.validate(path).is_err());
        let mut m = manifest(0.3);
        m.head.weights.pop();
        assert!(m.validate(path).is_err());
        let mut m = manifest(0.3);
        m.backbone.taps = vec![3];
        assert!(m.validate(path).is_err());
        assert_eq!(
            default_reason("knee_xray"),
            "it looks like knee xray rather than a brain MRI slice"
        );
    }
}
