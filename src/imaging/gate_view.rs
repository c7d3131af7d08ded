//! What the input gate looks at: the whole frame, area-averaged to a small square and
//! standardised per image. It is independent of any classifier's pre-processing (no crop to
//! the brain, no training-set statistics), so one gate serves every model.

use image::imageops;

use super::decode::GreyImage;

/// Side of the gate's square view, in pixels: enough to see the texture of the brain (a CT's
/// is flat, an MRI's shows grey and white matter), a rib cage or a knee joint; small enough
/// that the gate costs a few milliseconds (its first convolution has stride 2).
pub const GATE_SIDE: u32 = 128;

/// The frame squeezed to `GATE_SIDE` x `GATE_SIDE` by area averaging (every source pixel
/// counts, so thin bright structures such as a CT skull survive).
pub fn gate_view(image: &GreyImage) -> GreyImage {
    imageops::thumbnail(image, GATE_SIDE, GATE_SIDE)
}

/// The gate's input values: zero mean and unit standard deviation over the view, so scanner
/// gain and window do not matter, only what the picture shows.
pub fn standardize_view(view: &GreyImage) -> Vec<f32> {
    let values: Vec<f32> = view.pixels().map(|p| p.0[0]).collect();
    let n = values.len().max(1) as f32;
    let mean = values.iter().sum::<f32>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    // A flat frame has no spread: it becomes all zeros, not a division by zero.
    let inv = 1.0 / var.sqrt().max(1e-3);
    values.into_iter().map(|v| (v - mean) * inv).collect()
}

/// Bins of the tone histogram the gate sees beside the picture.
pub const HISTOGRAM_BINS: usize = 16;
/// Length of [`tone_features`]: the histogram, then the shares of near-black and near-white.
pub const TONE_FEATURES: usize = HISTOGRAM_BINS + 2;

/// The view's tone distribution: a 16-bin histogram of its `[0, 1]` values and the shares of
/// near-black (<= 0.02) and near-white (>= 0.98) pixels. A brain-windowed CT has a narrow grey
/// brain and saturated bone; an MRI slice a broad, smooth spread. Convolutions with global
/// pooling see this only indirectly.
pub fn tone_features(view: &GreyImage) -> Vec<f32> {
    let mut out = [0f32; TONE_FEATURES];
    let n = (view.width() * view.height()).max(1) as f32;
    for p in view.pixels() {
        let v = p.0[0].clamp(0.0, 1.0);
        let bin = ((v * HISTOGRAM_BINS as f32) as usize).min(HISTOGRAM_BINS - 1);
        out[bin] += 1.0;
        if v <= 0.02 {
            out[HISTOGRAM_BINS] += 1.0;
        }
        if v >= 0.98 {
            out[HISTOGRAM_BINS + 1] += 1.0;
        }
    }
    // Shares, scaled so a typical bin is of order one like the other inputs.
    out.iter().map(|c| 4.0 * c / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_is_square_whatever_the_frame() {
        let img = GreyImage::from_fn(300, 120, |x, _| image::Luma([x as f32 / 300.0]));
        let view = gate_view(&img);
        assert_eq!(view.dimensions(), (GATE_SIDE, GATE_SIDE));
        // Left to right the ramp survives.
        assert!(view.get_pixel(0, 10).0[0] < view.get_pixel(63, 10).0[0]);
    }

    #[test]
    fn standardised_views_have_zero_mean_and_unit_spread() {
        let img = GreyImage::from_fn(64, 64, |x, y| image::Luma([((x * y) % 7) as f32 / 7.0]));
        let v = standardize_view(&img);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3);
        let flat = standardize_view(&GreyImage::from_pixel(64, 64, image::Luma([0.5])));
        assert!(flat.iter().all(|x| x.abs() < 1e-6));
    }

    #[test]
    fn tone_features_count_saturated_pixels() {
        let img = GreyImage::from_fn(64, 64, |x, _| image::Luma([if x < 16 { 1.0 } else { 0.4 }]));
        let t = tone_features(&img);
        assert_eq!(t.len(), TONE_FEATURES);
        assert!((t[HISTOGRAM_BINS + 1] - 1.0).abs() < 1e-6); // a quarter white, times 4
        assert!((t[6] - 3.0).abs() < 1e-6); // 0.4 falls in bin 6
        assert_eq!(t[HISTOGRAM_BINS], 0.0);
    }
}
