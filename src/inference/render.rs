//! Heat-maps as pictures: the colour ramp, the map alone, the map over the scan, and the 8-bit
//! grey map that is stored.

use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::imaging::GreyImage;

/// A perceptually ordered blue-to-red colour for `v` in `[0, 1]` (a "turbo"-like ramp).
pub fn colour(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    // Piecewise-linear through dark blue, cyan, yellow, red.
    let stops = [
        (0.0, [30.0, 20.0, 120.0]),
        (0.35, [40.0, 180.0, 230.0]),
        (0.65, [250.0, 220.0, 40.0]),
        (1.0, [200.0, 20.0, 20.0]),
    ];
    for pair in stops.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            return [0, 1, 2].map(|i| (ca[i] + t * (cb[i] - ca[i])) as u8);
        }
    }
    [200, 20, 20]
}

/// The map alone, coloured.
pub fn heatmap_image(map: &GreyImage) -> RgbImage {
    RgbImage::from_fn(map.width(), map.height(), |x, y| {
        Rgb(colour(map.get_pixel(x, y).0[0]))
    })
}

/// The scan in grey with the coloured map blended over it (`opacity` at the map's peak).
pub fn overlay_image(original: &GreyImage, map: &GreyImage, opacity: f32) -> RgbImage {
    RgbImage::from_fn(original.width(), original.height(), |x, y| {
        let g = original.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0;
        let m = map.get_pixel(x, y).0[0];
        let a = (opacity * m).clamp(0.0, 1.0);
        let c = colour(m);
        Rgb([0, 1, 2].map(|i| (g * (1.0 - a) + f32::from(c[i]) * a) as u8))
    })
}

/// The map as an 8-bit grey image (for storage and the API).
pub fn map_to_grey8(map: &GreyImage) -> GrayImage {
    GrayImage::from_fn(map.width(), map.height(), |x, y| {
        Luma([(map.get_pixel(x, y).0[0] * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_blue_to_red() {
        let lo = colour(0.0);
        let hi = colour(1.0);
        assert!(lo[2] > lo[0] && hi[0] > hi[2]);
        let map = GreyImage::from_fn(4, 4, |x, _| Luma([x as f32 / 3.0]));
        let grey = GreyImage::from_pixel(4, 4, Luma([0.5]));
        let o = overlay_image(&grey, &map, 0.6);
        // Where the map is zero the scan shows through unchanged.
        assert_eq!(o.get_pixel(0, 0).0, [127, 127, 127]);
        assert_ne!(o.get_pixel(3, 0).0, [127, 127, 127]);
    }
}
