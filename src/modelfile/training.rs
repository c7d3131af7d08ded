//! Training settings: what `train` was asked to do, as the model file records it.

use serde::{Deserialize, Serialize};

use crate::core::error::SettingError;
use crate::imaging::augment::Augmentation;
use crate::model::Architecture;

/// How the minority class (no_tumor has half the images of the others) is compensated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Cross-entropy weighted by inverse class frequency (default).
    WeightedLoss,
    /// Each epoch draws samples with probability inverse to their class frequency.
    Sampling,
    /// No compensation.
    None,
}

/// Learning-rate schedule over the planned epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Cosine decay to 1 % of the base rate, per step.
    Cosine,
    /// Multiply by 0.1 at 50 % and 75 % of the epochs.
    Step,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub architecture: Architecture,
    pub input_size: usize,
    pub in_channels: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 weight decay folded into Adam (0 = off).
    pub weight_decay: f64,
    pub label_smoothing: f32,
    pub schedule: Schedule,
    /// Stop after this many epochs without a lower validation loss.
    pub patience: usize,
    pub validation_fraction: f64,
    pub seed: u64,
    pub balance: Balance,
    /// `None` trains without augmentation.
    pub augmentation: Option<Augmentation>,
    /// Clip the global gradient norm (guards against the early blow-ups seen on plain CNNs).
    pub grad_clip_norm: Option<f32>,
    pub dropout: f64,
    /// Pre-processing switches (the rest of the pipeline is fixed by `Preprocessing::new`).
    pub clahe: bool,
    pub denoise: bool,
    /// Use at most this many training images per class (quick experiments and tests).
    pub max_per_class: Option<usize>,
    /// Start from imported ImageNet weights (`oncolens import-weights`; EfficientNet-Lite0).
    #[serde(default)]
    pub pretrained: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::ResnetMini,
            input_size: 150,
            in_channels: 1,
            epochs: 20,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            label_smoothing: 0.0,
            schedule: Schedule::Cosine,
            patience: 6,
            validation_fraction: 0.15,
            seed: 42,
            balance: Balance::WeightedLoss,
            augmentation: Some(Augmentation::default()),
            grad_clip_norm: Some(5.0),
            dropout: 0.2,
            clahe: false,
            denoise: false,
            max_per_class: None,
            pretrained: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |m: &str| Err(SettingError::new("training setting", m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return bad("batch size must be between 1 and 4096");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning rate must be positive");
        }
        if !(0.0..0.5).contains(&self.validation_fraction) || self.validation_fraction == 0.0 {
            return bad("validation fraction must be in (0, 0.5)");
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad("label smoothing must be in [0, 0.5)");
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return bad("weight decay must be in [0, 1)");
        }
        if self.pretrained.is_some() {
            if self.architecture != Architecture::EfficientnetLite0 {
                return bad("pretrained weights are available for efficientnet-lite0 only");
            }
            if self.in_channels != 3 {
                return bad("ImageNet weights take 3 input channels: add --channels 3");
            }
        }
        Ok(())
    }

    /// Learning rate at `progress` in `[0, 1]` of the planned training.
    pub fn learning_rate_at(&self, progress: f64) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        match self.schedule {
            Schedule::Constant => self.learning_rate,
            Schedule::Cosine => {
                let floor = 0.01 * self.learning_rate;
                floor
                    + (self.learning_rate - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::Step => {
                self.learning_rate
                    * if p >= 0.75 {
                        0.01
                    } else if p >= 0.5 {
                        0.1
                    } else {
                        1.0
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut c = TrainConfig::default();
        assert!((c.learning_rate_at(0.0) - 1e-3).abs() < 1e-12);
        assert!((c.learning_rate_at(1.0) - 1e-5).abs() < 1e-12);
        assert!(c.learning_rate_at(0.5) < 6e-4 && c.learning_rate_at(0.5) > 4e-4);
        c.schedule = Schedule::Step;
        assert_eq!(c.learning_rate_at(0.6), 1e-4);
        c.schedule = Schedule::Constant;
        assert_eq!(c.learning_rate_at(0.9), 1e-3);
    }

    #[test]
    fn bad_settings_are_refused() {
        let c = TrainConfig {
            epochs: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = TrainConfig {
            validation_fraction: 0.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        assert!(TrainConfig::default().validate().is_ok());
    }
}
