//! What a model file stores to decide between an answer, "uncertain" and "not a brain MRI
//! slice": the temperature, how it was fitted, the input check, and when the model may say
//! "No tumour" ([`PresenceRule`]).

use serde::{Deserialize, Serialize};

use super::gate::GateFinding;
use super::input_check::{FeatureDensity, ImageBounds};
use crate::imaging::ImageStats;
use crate::metrics::presence::{self, PresenceFigures};

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
    /// When "No tumour" may be said (`None`: the most probable class, as in models calibrated
    /// before the rule existed, or a model without a "No tumour" class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceRule>,
}

/// The model says "No tumour" only when that is likely enough: a missed tumour is the worst
/// error a decision-support tool can make, so it is weighed as `miss_cost` false alarms, and a
/// most probable "No tumour" below `min_no_tumour_probability` gives way to the most probable
/// tumour type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRule {
    /// The "No tumour" class's index.
    pub no_tumour_class: usize,
    /// How many false alarms one missed tumour is weighed as.
    pub miss_cost: f32,
    /// The calibrated probability "No tumour" needs (`miss_cost / (1 + miss_cost)`).
    pub min_no_tumour_probability: f32,
    /// The rule in words, for the model card and the result page.
    pub rule: String,
    /// On the validation split, under this rule and under the plain most probable class.
    pub validation: PresenceFigures,
    pub validation_most_probable: PresenceFigures,
}

/// What the presence rule did for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceFinding {
    /// Calibrated probability that the slice shows a tumour of any type (1 - p(no tumour)).
    pub tumour_probability: f32,
    /// The probability "No tumour" needs under the model's rule.
    pub min_no_tumour_probability: f32,
    /// "No tumour" was the most probable class but not probable enough: the answer is the most
    /// probable tumour type instead.
    pub no_tumour_withheld: bool,
}

impl PresenceFinding {
    /// The rule and what it did, in a sentence for the result page, the API and `predict`.
    pub fn explanation(&self) -> String {
        let (p_no, needed) = (
            (1.0 - self.tumour_probability) * 100.0,
            self.min_no_tumour_probability * 100.0,
        );
        if self.no_tumour_withheld {
            format!(
                "\"No tumour\" was the most probable class at {p_no:.0} %, below the {needed:.0} % \
                 this model needs before it calls a slice tumour-free (a missed tumour weighs more \
                 than a false alarm), so the most probable tumour type is shown instead"
            )
        } else {
            format!(
                "This model calls a slice tumour-free only when \"No tumour\" reaches {needed:.0} % \
                 (a missed tumour weighs more than a false alarm); here it is {p_no:.0} %"
            )
        }
    }
}

impl PresenceRule {
    /// The class the rule decides for calibrated `probabilities`, and what it did.
    pub fn decide(&self, probabilities: &[f32]) -> (usize, PresenceFinding) {
        let class = presence::decide(
            probabilities,
            self.no_tumour_class,
            self.min_no_tumour_probability,
        );
        let p_no = probabilities
            .get(self.no_tumour_class)
            .copied()
            .unwrap_or(0.0);
        let most_probable = presence::decide(probabilities, self.no_tumour_class, 0.0);
        (
            class,
            PresenceFinding {
                tumour_probability: 1.0 - p_no,
                min_no_tumour_probability: self.min_no_tumour_probability,
                no_tumour_withheld: class != most_probable,
            },
        )
    }
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
