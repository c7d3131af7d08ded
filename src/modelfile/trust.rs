//! What a model file stores to decide between an answer, "uncertain" and "not a brain MRI
//! slice": the temperature, how it was fitted, and the input check.

use serde::{Deserialize, Serialize};

use super::gate::GateFinding;
use super::input_check::{FeatureDensity, ImageBounds};
use crate::imaging::ImageStats;

/// What a model file stores to decide between an answer, "uncertain" and "not a brain MRI".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustProfile {
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
    /// Validation figures before and after temperature scaling.
    pub calibration: CalibrationSummary,
    /// How the uncertainty threshold was chosen, in words.
    pub uncertainty_rule: String,
    pub image_bounds: ImageBounds,
    pub features: FeatureDensity,
    /// Images the profile was fitted on.
    pub fitted_on_train: usize,
    pub fitted_on_validation: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// The input check's finding for one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputCheck {
    /// Why the image does not look like a brain MRI slice; empty when it does.
    pub reasons: Vec<String>,
    /// Mahalanobis distance of the image's features to the nearest training class.
    pub feature_distance: Option<f32>,
    /// The distance above which an image is out of distribution.
    pub feature_threshold: Option<f32>,
    /// The input gate's finding (`None` when no gate ran).
    #[serde(default)]
    pub gate: Option<GateFinding>,
}

impl InputCheck {
    pub fn looks_like_brain_mri(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Reason given when only the feature distance is out of range.
pub const OUT_OF_DISTRIBUTION: &str =
    "its content is far from every training slice (out of the training distribution)";

impl TrustProfile {
    /// Runs the input check on an image's statistics and pooled features.
    pub fn check(&self, stats: &ImageStats, size: (u32, u32), pooled: &[f32]) -> InputCheck {
        let mut reasons = self.image_bounds.reasons(stats, size);
        let distance = self.features.distance(pooled);
        if distance > self.features.threshold {
            reasons.push(OUT_OF_DISTRIBUTION.to_string());
        }
        InputCheck {
            reasons,
            feature_distance: distance.is_finite().then_some(distance),
            feature_threshold: Some(self.features.threshold),
            gate: None,
        }
    }
}
