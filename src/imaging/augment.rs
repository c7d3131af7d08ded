//! Training-time augmentation: random rotation, scale/shift, horizontal flip, brightness,
//! contrast and gamma jitter, and random erasing of a small rectangle. Applied to the prepared `[0, 1]` image before standardisation, never at
//! inference. Deterministic: each (seed, epoch, sample) pair gets its own random stream, so a run
//! repeats exactly whatever the thread count.

use image::Luma;
use image::imageops;
use imageproc::geometric_transformations::{Interpolation, Projection, warp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::decode::GreyImage;

/// Augmentation settings (stored with the training settings in the model file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Maximum rotation either way, degrees.
    pub rotation_degrees: f32,
    /// Zoom range (1 = none).
    pub scale_range: [f32; 2],
    /// Maximum shift either way, as a fraction of the side.
    pub shift_fraction: f32,
    pub horizontal_flip: bool,
    /// Maximum additive brightness change (intensities in `[0, 1]`).
    pub brightness: f32,
    /// Maximum relative contrast change around the image mean.
    pub contrast: f32,
    /// Maximum change of log(gamma): intensities become `v^gamma` (MRI sequences and scanners
    /// differ in their tone curve more than in linear contrast). 0 in models trained before it.
    #[serde(default)]
    pub gamma: f32,
    /// Probability of filling one random rectangle (2-8 % of the image) with the image mean, so
    /// no single region can carry the decision alone. 0 in models trained before it.
    #[serde(default)]
    pub erase_probability: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            rotation_degrees: 15.0,
            scale_range: [0.9, 1.1],
            shift_fraction: 0.05,
            horizontal_flip: true,
            brightness: 0.1,
            contrast: 0.15,
            gamma: 0.25,
            erase_probability: 0.25,
        }
    }
}

/// The random stream for one sample in one epoch.
pub fn sample_rng(seed: u64, epoch: usize, index: usize) -> ChaCha8Rng {
    // SplitMix-style mixing keeps neighbouring (epoch, index) pairs far apart.
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

impl Augmentation {
    /// A randomly transformed copy of `img`, same size.
    pub fn apply(&self, img: &GreyImage, rng: &mut impl Rng) -> GreyImage {
        let (w, h) = img.dimensions();
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let angle = rng
            .random_range(-self.rotation_degrees..=self.rotation_degrees)
            .to_radians();
        let scale = rng.random_range(self.scale_range[0]..=self.scale_range[1]);
        let tx = rng.random_range(-self.shift_fraction..=self.shift_fraction) * w as f32;
        let ty = rng.random_range(-self.shift_fraction..=self.shift_fraction) * h as f32;
        let projection = Projection::translate(cx + tx, cy + ty)
            * Projection::rotate(angle)
            * Projection::scale(scale, scale)
            * Projection::translate(-cx, -cy);
        let mut out = warp(img, &projection, Interpolation::Bilinear, Luma([0.0f32]));
        if self.horizontal_flip && rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        let brightness = rng.random_range(-self.brightness..=self.brightness);
        let contrast = 1.0 + rng.random_range(-self.contrast..=self.contrast);
        let mean = out.pixels().map(|p| p.0[0]).sum::<f32>() / (w * h).max(1) as f32;
        let gamma = if self.gamma > 0.0 {
            rng.random_range(-self.gamma..=self.gamma).exp()
        } else {
            1.0
        };
        for p in out.pixels_mut() {
            let v = ((p.0[0] - mean) * contrast + mean + brightness).clamp(0.0, 1.0);
            p.0[0] = if gamma == 1.0 { v } else { v.powf(gamma) };
        }
        if self.erase_probability > 0.0 && rng.random_bool(self.erase_probability.into()) {
            let area = rng.random_range(0.02..0.08) * (w * h) as f32;
            let aspect: f32 = rng.random_range(0.5f32..2.0);
            let ew = ((area * aspect).sqrt() as u32).clamp(1, w);
            let eh = ((area / aspect).sqrt() as u32).clamp(1, h);
            let (x0, y0) = (rng.random_range(0..=w - ew), rng.random_range(0..=h - eh));
            let fill = out.pixels().map(|p| p.0[0]).sum::<f32>() / (w * h).max(1) as f32;
            for y in y0..y0 + eh {
                for x in x0..x0 + ew {
                    out.put_pixel(x, y, Luma([fill]));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> GreyImage {
        GreyImage::from_fn(40, 40, |x, y| Luma([((x * 7 + y * 3) % 40) as f32 / 40.0]))
    }

    #[test]
    fn same_seed_same_result_other_seed_differs() {
        let aug = Augmentation::default();
        let a = aug.apply(&img(), &mut sample_rng(1, 0, 5));
        let b = aug.apply(&img(), &mut sample_rng(1, 0, 5));
        let c = aug.apply(&img(), &mut sample_rng(1, 1, 5));
        assert_eq!(a.as_raw(), b.as_raw());
        assert_ne!(a.as_raw(), c.as_raw());
        assert_eq!(a.dimensions(), (40, 40));
        assert!(a.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
    }

    #[test]
    fn zero_augmentation_is_identity() {
        let aug = Augmentation {
            rotation_degrees: 0.0,
            scale_range: [1.0, 1.0],
            shift_fraction: 0.0,
            horizontal_flip: false,
            brightness: 0.0,
            contrast: 0.0,
            gamma: 0.0,
            erase_probability: 0.0,
        };
        let out = aug.apply(&img(), &mut sample_rng(3, 0, 0));
        let src = img();
        // The last row and column fall outside the bilinear footprint and are filled black,
        // like everything a rotation brings into view.
        for y in 0..39 {
            for x in 0..39 {
                let (a, b) = (out.get_pixel(x, y).0[0], src.get_pixel(x, y).0[0]);
                assert!((a - b).abs() < 1e-4, "({x},{y}): {a} vs {b}");
            }
        }
    }
}
