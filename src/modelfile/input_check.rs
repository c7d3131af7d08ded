//! The input check as the model file stores it: bounds on image statistics, and class-
//! conditional Gaussians over the network's pooled last-conv features (Mahalanobis distance,
//! Lee et al. 2018) with a threshold. Each failed check gives a reason in plain words. The
//! fitting lives with calibration (`workflows::calibrate`).

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::imaging::ImageStats;

/// Accepted range of one statistic (`None`: no bound on that side).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

impl Bounds {
    fn contains(&self, v: f32) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// Bounds on the image statistics, fitted on training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBounds {
    pub colourfulness: Bounds,
    pub aspect: Bounds,
    pub contrast: Bounds,
    pub dark_border: Bounds,
    pub brightness: Bounds,
}

impl ImageBounds {
    /// Reasons, in plain words, why `s` is unlike the training slices (empty: nothing odd).
    pub fn reasons(&self, s: &ImageStats, size: (u32, u32)) -> Vec<String> {
        let mut out = Vec::new();
        if !self.contrast.contains(s.contrast) {
            out.push("it is blank or nearly uniform".to_string());
        }
        if !self.colourfulness.contains(s.colourfulness) {
            out.push("it is a colour picture; MRI slices are greyscale".to_string());
        }
        if !self.aspect.contains(s.aspect) {
            out.push(format!(
                "its shape ({} x {} pixels) is unlike an MRI slice",
                size.0, size.1
            ));
        }
        if !self.dark_border.contains(s.dark_border) {
            out.push(
                "it lacks the dark background around the head that MRI slices have (an inverted \
                 image, a photo or a screenshot?)"
                    .to_string(),
            );
        }
        if !self.brightness.contains(s.brightness) && out.is_empty() {
            out.push("its overall brightness is unlike an MRI slice".to_string());
        }
        out
    }
}

/// Class-conditional Gaussians with a shared covariance over pooled features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDensity {
    pub dimension: usize,
    /// Per-class mean feature vectors.
    pub means: Vec<Vec<f32>>,
    /// Lower-triangular Cholesky factor of the (shrunk) shared covariance, rows packed, as
    /// little-endian f32 in base64: compact and exact.
    pub cholesky_base64: String,
    /// Weight of the identity (scaled to the mean variance) mixed into the covariance.
    pub shrinkage: f32,
    /// How the shrinkage was chosen, in words.
    #[serde(default)]
    pub shrinkage_rule: String,
    /// Distances above this are out of distribution.
    pub threshold: f32,
    /// How the threshold was chosen, in words.
    pub threshold_rule: String,
    #[serde(skip)]
    cholesky: Vec<f32>,
}

impl FeatureDensity {
    /// A density from class means and the packed rows of the lower-triangular Cholesky factor
    /// of the shared covariance; threshold unset (the caller fits it).
    pub fn from_factor(means: Vec<Vec<f32>>, packed_cholesky: Vec<f32>, shrinkage: f32) -> Self {
        let bytes: Vec<u8> = packed_cholesky
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Self {
            dimension: means.first().map_or(0, Vec::len),
            means,
            cholesky_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            shrinkage,
            shrinkage_rule: format!("fixed at {shrinkage}"),
            threshold: f32::MAX, // JSON has no infinity
            threshold_rule: String::new(),
            cholesky: packed_cholesky,
        }
    }

    /// Log-density of `f` under class `class`'s Gaussian.
    pub fn log_likelihood(&self, f: &[f32], class: usize) -> f64 {
        let d = self.dimension;
        let Some(mean) = self.means.get(class) else {
            return f64::NEG_INFINITY;
        };
        if f.len() != d || self.cholesky.len() != d * (d + 1) / 2 {
            return f64::NEG_INFINITY;
        }
        let mut log_det = 0.0;
        let mut row = 0;
        for i in 0..d {
            log_det += 2.0 * f64::from(self.cholesky[row + i]).ln();
            row += i + 1;
        }
        -0.5 * (self.quadratic_form(f, mean)
            + log_det
            + d as f64 * (2.0 * std::f64::consts::PI).ln())
    }

    /// Decodes the stored factor (after deserialising); false when it does not fit the dimension.
    pub fn unpack(&mut self) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.cholesky_base64)
        else {
            return false;
        };
        let d = self.dimension;
        if bytes.len() != 4 * d * (d + 1) / 2 || self.means.iter().any(|m| m.len() != d) {
            return false;
        }
        self.cholesky = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        true
    }

    /// The smallest Mahalanobis distance from `f` to a class mean.
    pub fn distance(&self, f: &[f32]) -> f32 {
        let d = self.dimension;
        if f.len() != d || self.cholesky.len() != d * (d + 1) / 2 {
            return f32::INFINITY;
        }
        let best = self
            .means
            .iter()
            .map(|mean| self.quadratic_form(f, mean))
            .fold(f64::INFINITY, f64::min);
        best.sqrt() as f32
    }

    /// (f - mean)' S^-1 (f - mean), by forward substitution with the Cholesky factor of S.
    fn quadratic_form(&self, f: &[f32], mean: &[f32]) -> f64 {
        let d = self.dimension;
        let mut y = vec![0f64; d];
        let mut row = 0;
        let mut q = 0f64;
        for i in 0..d {
            let dot: f64 = self.cholesky[row..row + i]
                .iter()
                .zip(&y[..i])
                .map(|(l, y)| f64::from(*l) * y)
                .sum();
            y[i] = (f64::from(f[i] - mean[i]) - dot) / f64::from(self.cholesky[row + i]);
            q += y[i] * y[i];
            row += i + 1;
        }
        q
    }
}
