//! Image statistics that brain MRI slices keep in a narrow range (the input check bounds them).

use serde::{Deserialize, Serialize};

use super::decode::{GreyImage, ImageInfo};

/// Statistics of a decoded image that MRI slices keep in a narrow range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    /// Mean per-pixel spread between colour channels (0 for greyscale).
    pub colourfulness: f32,
    /// Width / height.
    pub aspect: f32,
    /// Standard deviation of the intensities.
    pub contrast: f32,
    /// Share of the outer frame (4 % of each side) darker than 15 % of the bright level: the
    /// background around the head.
    pub dark_border: f32,
    /// Mean intensity relative to the bright level (99th percentile).
    pub brightness: f32,
}

impl ImageStats {
    pub fn of(image: &GreyImage, info: &ImageInfo) -> Self {
        let (w, h) = image.dimensions();
        let px: Vec<f32> = image.pixels().map(|p| p.0[0]).collect();
        let n = px.len().max(1) as f32;
        let mean = px.iter().sum::<f32>() / n;
        let contrast = (px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        let mut sorted = px.clone();
        sorted.sort_by(f32::total_cmp);
        let bright = sorted
            .get(((sorted.len() as f32 * 0.99) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
            .max(1e-3);
        let frame_x = ((w as f32 * 0.04).ceil() as u32).max(1);
        let frame_y = ((h as f32 * 0.04).ceil() as u32).max(1);
        let (mut dark, mut frame) = (0usize, 0usize);
        for (x, y, p) in image.enumerate_pixels() {
            if x < frame_x
                || x >= w.saturating_sub(frame_x)
                || y < frame_y
                || y >= h.saturating_sub(frame_y)
            {
                frame += 1;
                dark += usize::from(p.0[0] < 0.15 * bright);
            }
        }
        Self {
            colourfulness: info.colourfulness,
            aspect: w as f32 / h.max(1) as f32,
            contrast,
            dark_border: dark as f32 / frame.max(1) as f32,
            brightness: mean / bright,
        }
    }
}
