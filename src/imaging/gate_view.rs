//! What the input gate looks at: the whole frame, resized to a square and normalised with
//! fixed (ImageNet) statistics. It is independent of any classifier's pre-processing (no crop to
//! the brain, no training-set statistics), so one gate serves every model.

use image::imageops;

use super::decode::GreyImage;

/// Side of the gate's square view, in pixels: the input size its ImageNet trunk was trained
/// at. Smaller views cost less but lose what tells a CT from an MRI (at 160 px the unseen-CT
/// refusals fell from 96 % to 77 %, docs/gate.md).
pub const GATE_SIDE: u32 = 224;

/// The frame squeezed to `GATE_SIDE` x `GATE_SIDE` with a triangle (bilinear) filter, whose
/// support widens with the scale factor, so every source pixel still counts when shrinking.
///
/// Not `imageops::thumbnail`: on float images it adds its integer rounding offset (half of one)
/// to every pixel, so each view was half the intensity range too bright. The gate trained on
/// such views refused 55 % of an unseen head-CT collection; on true views, 95 % (docs/gate.md).
pub fn gate_view(image: &GreyImage) -> GreyImage {
    imageops::resize(image, GATE_SIDE, GATE_SIDE, imageops::FilterType::Triangle)
}

/// The trunk's input values for a view: `(v - mean) / std` with ImageNet's grey statistics, so
/// that the frozen features see what they were trained on.
pub fn normalize_view(view: &GreyImage, mean: f32, std: f32) -> Vec<f32> {
    let inv = 1.0 / std;
    view.pixels().map(|p| (p.0[0] - mean) * inv).collect()
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
    fn the_view_keeps_the_frame_s_intensities() {
        // A frame larger and one smaller than the view, a flat grey and a ramp.
        for (w, h) in [(512, 400), (150, 180)] {
            let flat = GreyImage::from_pixel(w, h, image::Luma([0.3]));
            let view = gate_view(&flat);
            assert!(view.pixels().all(|p| (p.0[0] - 0.3).abs() < 1e-4));
            let ramp = GreyImage::from_fn(w, h, |x, _| image::Luma([x as f32 / (w - 1) as f32]));
            let view = gate_view(&ramp);
            let mean = view.pixels().map(|p| p.0[0]).sum::<f32>() / view.pixels().len() as f32;
            assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
            assert!(view.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
        }
    }

    #[test]
    fn views_are_normalised_with_the_given_statistics() {
        let img = GreyImage::from_pixel(4, 4, image::Luma([0.5]));
        let v = normalize_view(&img, 0.25, 0.5);
        assert_eq!(v.len(), 16);
        assert!(v.iter().all(|x| (x - 0.5).abs() < 1e-6));
    }
}
