//! The int8 activation ranges a model file stores (`oncolens quantize` fits them; the int8
//! engine in `backend::int8` uses them).

use serde::{Deserialize, Serialize};

/// How a tensor's real values map to `u8`: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// Covers `[lo, hi]` (widened to include 0, so that zero padding is exact).
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }

    pub fn quantize(&self, x: f32) -> u8 {
        self.quantize_with(1.0 / self.scale, x)
    }

    /// [`Self::quantize`] with `1 / scale` computed once. Round half up after clamping (all
    /// values are then non-negative): no libm call.
    #[inline(always)]
    pub fn quantize_with(&self, inv_scale: f32, x: f32) -> u8 {
        ((x * inv_scale + f32::from(self.zero_point)).clamp(0.0, 255.0) + 0.5) as u8
    }
}

/// The calibrated activation ranges stored with a model (`model.json`, `int8`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Calibration {
    /// One per quantised layer input, in network order.
    pub activations: Vec<QParams>,
    /// How the ranges were found, in words.
    pub rule: String,
    pub images: usize,
    /// Share of the calibration images whose top class the int8 engine agrees on with f32.
    pub top1_agreement: f64,
    /// Largest absolute difference of a calibrated probability on those images.
    pub max_probability_difference: f32,
}
