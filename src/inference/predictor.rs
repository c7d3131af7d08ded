//! Inference: a loaded model applied to scans through the stored pre-processing.
//!
//! [`Predictor`] is what `predict`, `evaluate`, the web app and the API use; it never
//! re-implements pre-processing, it calls the model file's [`Preprocessing`].

use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, NetworkError, Result};
use crate::core::numeric::{argmax, softmax_with_temperature};
use crate::data::loader::prepare_files;
use rayon::prelude::*;

use crate::imaging::dicom::DicomSource;
use crate::imaging::{Geometry, GreyImage, ImageStats, PreparedScan, Scan};
use crate::modelfile::{
    GateFinding, GateManifest, InputCheck, Manifest, Mode, ModelSource, OUT_OF_DISTRIBUTION,
    PresenceFinding,
};
use crate::runtime::{INFERENCE_BATCH, LoadedGate, LoadedModel, forward_rows};

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
    /// Index of the class answered: the most probable one, except that a "No tumour" below the
    /// model's presence rule gives way to the most probable tumour type (see `presence`).
    pub class_index: usize,
    pub class_id: String,
    pub class_name: String,
    /// Calibrated probability of the class answered.
    pub confidence: f32,
    /// True when `confidence` is below the model's uncertainty threshold: show "uncertain", not
    /// a bare class name.
    pub uncertain: bool,
    /// Calibrated probability of every class, in the model's class order.
    pub probabilities: Vec<f32>,
    /// The input check (`None` when the model has no fitted check).
    pub input_check: Option<InputCheck>,
    /// What the model's rule for saying "No tumour" found (`None` when it has no such rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceFinding>,
}

impl Prediction {
    /// The answer in a few words: the class, "uncertain (most likely X)" or "not a brain MRI
    /// slice".
    pub fn label(&self) -> String {
        match self.verdict {
            Verdict::NotBrainMri => "not a brain MRI slice".to_string(),
            _ if self.no_tumour_withheld() => {
                format!("tumour not ruled out (most likely {})", self.class_name)
            }
            Verdict::Answer => self.class_name.clone(),
            Verdict::Uncertain => format!("uncertain (most likely {})", self.class_name),
        }
    }

    /// True when "No tumour" was the most probable class but below the probability the
    /// model's presence rule asks for, so the answer is a tumour type.
    pub fn no_tumour_withheld(&self) -> bool {
        self.presence.as_ref().is_some_and(|p| p.no_tumour_withheld)
    }

    /// Why "No tumour" was not said, in words (`None` when it was not withheld).
    pub fn presence_note(&self) -> Option<String> {
        self.presence
            .as_ref()
            .filter(|p| p.no_tumour_withheld)
            .map(PresenceFinding::explanation)
    }

    /// Why the input check refused the image (empty when it did not).
    pub fn rejection_reasons(&self) -> &[String] {
        self.input_check.as_ref().map_or(&[], |c| &c.reasons)
    }
}

/// The answer for one slice of a file: which DICOM frame it is (`None` for PNG and JPEG).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomSource>,
    pub prediction: Prediction,
}

/// A slice made ready for the network, and the DICOM frame it is.
type PreparedSlice = (PreparedScan, Option<DicomSource>);

/// A model ready to answer.
pub struct Predictor {
    loaded: LoadedModel,
}

impl Deref for Predictor {
    type Target = LoadedModel;

    fn deref(&self) -> &LoadedModel {
        &self.loaded
    }
}

impl Predictor {
    /// Opens `source` for plain inference.
    pub fn open_source(source: &ModelSource) -> Result<Self> {
        LoadedModel::open(source, Mode::Inference).map(Self::new)
    }

    /// The model directory at `path`, else the bundled default model.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        Self::open_source(&ModelSource::from_option(path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::open(Some(path))
    }

    /// The bundled default model.
    pub fn load_default() -> Result<Self> {
        Self::open(None)
    }

    pub fn new(loaded: LoadedModel) -> Self {
        Self { loaded }
    }

    /// Switches test-time augmentation on or off.
    pub fn with_tta(mut self, tta: bool) -> Self {
        self.loaded = self.loaded.with_tta(tta);
        self
    }

    /// Replaces the input gate (e.g. with one trained on a cross-validation fold).
    pub fn with_gate(mut self, gate: Option<LoadedGate>) -> Self {
        self.loaded = self.loaded.with_gate(gate);
        self
    }

    /// Switches the int8 engine on (with the model's stored calibration) or off.
    pub fn with_int8(mut self, on: bool) -> Result<Self> {
        self.loaded = self.loaded.with_int8(on)?;
        Ok(self)
    }

    /// The exact network input for a scan: what training fed the network for the same file.
    pub fn input(&self, image: &GreyImage) -> (Vec<f32>, Geometry) {
        self.manifest.preprocessing.run(image)
    }

    /// Answers for prepared scans, in batches.
    pub fn predict_prepared(&self, prepared: &[PreparedScan]) -> Vec<Prediction> {
        let images: Vec<&GreyImage> = prepared.iter().map(|p| &p.image).collect();
        let (logits, pooled) = forward_rows(
            self.compute(),
            &images,
            &self.manifest.preprocessing,
            self.tta,
        );
        let views: Vec<&GreyImage> = prepared.iter().map(|p| &p.gate_view).collect();
        let findings = self.gate_findings(&views);
        let gate = self.gate().map(|g| &g.manifest);
        prepared
            .iter()
            .zip(logits)
            .zip(pooled)
            .zip(findings)
            .map(|(((scan, l), p), f)| {
                prediction_from(
                    &self.manifest,
                    &l,
                    Some((&scan.stats, scan.original_size, &p)),
                    gate.zip(f.as_ref()),
                )
            })
            .collect()
    }

    /// Predictions for decoded scans, in batches.
    pub fn predict_scans(&self, scans: &[Scan]) -> Vec<Prediction> {
        let pre = &self.manifest.preprocessing;
        let prepared: Vec<PreparedScan> = scans.iter().map(|s| s.prepared(pre)).collect();
        self.predict_prepared(&prepared)
    }

    /// Predictions for decoded images whose files are unknown (treated as greyscale).
    pub fn predict_images(&self, images: &[GreyImage]) -> Vec<Prediction> {
        let scans: Vec<Scan> = images.iter().cloned().map(Scan::from_grey).collect();
        self.predict_scans(&scans)
    }

    /// Predictions for many files: decoding and pre-processing run in parallel, inference in
    /// batches; an unreadable file gets its error, the others still get answers.
    pub fn predict_files(&self, paths: &[PathBuf]) -> Vec<Result<Prediction>> {
        let pre = &self.manifest.preprocessing;
        let mut out = Vec::with_capacity(paths.len());
        // Chunks bound memory: a decoded 512x512 scan is 1 MiB of f32.
        for chunk in paths.chunks(4 * INFERENCE_BATCH) {
            let (mut ok, mut slots) = (Vec::new(), Vec::new());
            for r in prepare_files(chunk, None, |scan| scan.prepared(pre)) {
                slots.push(r.map(|p| ok.push(p)));
            }
            let mut answers = self.predict_prepared(&ok).into_iter();
            for slot in slots {
                out.push(
                    slot.and_then(|()| {
                        answers.next().ok_or(Error::Network(NetworkError::NoOutput))
                    }),
                );
            }
        }
        out
    }

    /// Answers for every slice of many files: one per PNG or JPEG, one per frame of a DICOM
    /// object (with the frame's identifiers, for [`super::series::summarise_series`]). An
    /// unreadable or refused file gets its error, the others still get answers.
    pub fn predict_file_slices(&self, paths: &[PathBuf]) -> Vec<Result<Vec<SliceAnswer>>> {
        let pre = &self.manifest.preprocessing;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(INFERENCE_BATCH) {
            let decoded: Vec<Result<Vec<PreparedSlice>>> = chunk
                .par_iter()
                .map(|p| {
                    Scan::load_frames(p).map(|scans| {
                        scans
                            .into_iter()
                            .map(|s| (s.prepared(pre), s.dicom))
                            .collect()
                    })
                })
                .collect();
            out.extend(decoded.into_iter().map(|file| {
                file.map(|slices| {
                    let (prepared, sources): (Vec<PreparedScan>, Vec<Option<DicomSource>>) =
                        slices.into_iter().unzip();
                    let mut answers = Vec::with_capacity(prepared.len());
                    for (batch, sources) in prepared
                        .chunks(INFERENCE_BATCH)
                        .zip(sources.chunks(INFERENCE_BATCH))
                    {
                        answers.extend(self.predict_prepared(batch).into_iter().zip(sources).map(
                            |(prediction, dicom)| SliceAnswer {
                                dicom: dicom.clone(),
                                prediction,
                            },
                        ));
                    }
                    answers
                })
            }));
        }
        out
    }

    /// Prediction for one file.
    pub fn predict_file(&self, path: &Path) -> Result<Prediction> {
        let scan = Scan::load(path)?;
        Ok(self.predict_scans(std::slice::from_ref(&scan)).remove(0))
    }
}

/// The answer for a scan's logits under a model's temperature, uncertainty threshold, input
/// check and input gate. `observed` carries the image statistics, the original size and the
/// pooled features; without it (or without a fitted check) no input check is made. `gate` is
/// the gate's finding for the scan with the gate's manifest (for the reason in words).
///
/// The reasons come in order of cost and certainty: the image statistics, then the gate, then
/// the classifier's own feature distance.
pub fn prediction_from(
    manifest: &Manifest,
    logits: &[f32],
    observed: Option<(&ImageStats, (u32, u32), &[f32])>,
    gate: Option<(&GateManifest, &GateFinding)>,
) -> Prediction {
    let probabilities = softmax_with_temperature(logits, manifest.temperature());
    let rule = manifest.trust.as_ref().and_then(|t| t.presence.as_ref());
    let (class_index, presence) = match rule {
        Some(rule) => {
            let (class, finding) = rule.decide(&probabilities);
            (class, Some(finding))
        }
        None => (argmax(&probabilities), None),
    };
    let class_index = class_index.min(manifest.classes.len().saturating_sub(1));
    let confidence = probabilities.get(class_index).copied().unwrap_or(0.0);
    let class = &manifest.classes[class_index];
    let mut input_check = match (&manifest.trust, observed) {
        (Some(trust), Some((stats, size, pooled))) => Some(trust.check(stats, size, pooled)),
        _ => None,
    };
    if let Some((gate, finding)) = gate {
        let check = input_check.get_or_insert_with(InputCheck::default);
        if finding.refused {
            let at = check
                .reasons
                .iter()
                .position(|r| r == OUT_OF_DISTRIBUTION)
                .unwrap_or(check.reasons.len());
            check
                .reasons
                .insert(at, gate.reason_for(finding).to_string());
        }
        check.gate = Some(finding.clone());
    }
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
        presence,
    }
}
