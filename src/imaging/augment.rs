//! Training-time augmentation: random rotation, scale/shift, horizontal flip, brightness,
//! contrast and gamma jitter, and random erasing of a small rectangle; optionally what differs
//! between MRI collections ([`Augmentation::collection_shift`]): a smooth bias field (coil
//! inhomogeneity), blur, noise and JPEG re-compression. Applied to the prepared `[0, 1]` image
//! before standardisation, never at inference. Deterministic: each (seed, epoch, sample) pair
//! gets its own random stream, so a run repeats exactly whatever the thread count; settings
//! left at 0 draw nothing from it, so older models' runs repeat as they were.

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
    /// Largest log-amplitude of a smooth multiplicative bias field (intensities times
    /// `exp(b(x, y))`, `b` a random quadratic over the image with `|b|` up to this): the slow
    /// brightness ramps of receive coils, which differ between scanners. 0: none.
    #[serde(default)]
    pub bias_field: f32,
    /// Probability of a Gaussian blur, with sigma drawn from 0.3 pixels to `blur_sigma`
    /// (thicker slices, other reconstruction kernels, upsampled images).
    #[serde(default)]
    pub blur_probability: f32,
    #[serde(default)]
    pub blur_sigma: f32,
    /// Largest standard deviation of additive Gaussian noise (drawn per image from 0 to this).
    #[serde(default)]
    pub noise: f32,
    /// Probability of a JPEG re-compression at a quality drawn from `jpeg_quality` (published
    /// collections are often JPEGs of other JPEGs).
    #[serde(default)]
    pub jpeg_probability: f32,
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: [u8; 2],
}

fn default_jpeg_quality() -> [u8; 2] {
    [30, 90]
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
            // The collection-shift steps stay off by default (`collection_shift` turns them on).
            ..Self::none()
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
    /// Every step off: `apply` returns the image as it was (bar the warp's black last row and
    /// column).
    pub fn none() -> Self {
        Self {
            rotation_degrees: 0.0,
            scale_range: [1.0, 1.0],
            shift_fraction: 0.0,
            horizontal_flip: false,
            brightness: 0.0,
            contrast: 0.0,
            gamma: 0.0,
            erase_probability: 0.0,
            bias_field: 0.0,
            blur_probability: 0.0,
            blur_sigma: 0.0,
            noise: 0.0,
            jpeg_probability: 0.0,
            jpeg_quality: default_jpeg_quality(),
        }
    }

    /// The default augmentation plus what differs between MRI collections: a bias field of up
    /// to +-0.3 in log intensity, blur (sigma up to 1.2 pixels) on a third of the images, noise
    /// up to 0.03 of the range, and JPEG re-compression (quality 30-90) on a third.
    pub fn collection_shift() -> Self {
        Self {
            bias_field: 0.3,
            blur_probability: 0.33,
            blur_sigma: 1.2,
            noise: 0.03,
            jpeg_probability: 0.33,
            ..Self::default()
        }
    }

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
        self.apply_collection_shift(&mut out, rng);
        out
    }

    /// The bias field, blur, noise and JPEG steps, in that order (the order a scan meets them:
    /// coil, reconstruction, receiver, publication). Each draws from `rng` only when enabled.
    fn apply_collection_shift(&self, out: &mut GreyImage, rng: &mut impl Rng) {
        let (w, h) = out.dimensions();
        if self.bias_field > 0.0 {
            let c: [f32; 5] = std::array::from_fn(|_| rng.random_range(-1.0f32..=1.0));
            let amplitude = rng.random_range(0.0..=self.bias_field);
            let field = |x: u32, y: u32| {
                let u = 2.0 * x as f32 / (w.max(2) - 1) as f32 - 1.0;
                let v = 2.0 * y as f32 / (h.max(2) - 1) as f32 - 1.0;
                c[0] * u + c[1] * v + c[2] * u * v + c[3] * (u * u - 0.5) + c[4] * (v * v - 0.5)
            };
            // |field| <= 1 + 1 + 1 + 0.5 + 0.5 = 4 on the square, so |b| <= amplitude.
            let scale = amplitude / 4.0;
            for (x, y, p) in out.enumerate_pixels_mut() {
                p.0[0] = (p.0[0] * (field(x, y) * scale).exp()).clamp(0.0, 1.0);
            }
        }
        if self.blur_probability > 0.0 && rng.random_bool(self.blur_probability.into()) {
            let sigma = rng.random_range(0.3..=self.blur_sigma.max(0.3));
            *out = imageproc::filter::gaussian_blur_f32(out, sigma);
        }
        if self.noise > 0.0 {
            let sd = rng.random_range(0.0..=self.noise);
            for p in out.pixels_mut() {
                // Box-Muller: one standard normal from two uniforms.
                let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                p.0[0] = (p.0[0] + sd * z).clamp(0.0, 1.0);
            }
        }
        if self.jpeg_probability > 0.0 && rng.random_bool(self.jpeg_probability.into()) {
            let [lo, hi] = self.jpeg_quality;
            let quality = rng.random_range(lo.clamp(1, 100)..=hi.clamp(lo.clamp(1, 100), 100));
            if let Some(decoded) = jpeg_round_trip(out, quality) {
                *out = decoded;
            }
        }
    }
}

/// `img` through a JPEG encoder at `quality` and back (`None` if either step fails, which for
/// an in-memory 8-bit grey image it should not).
fn jpeg_round_trip(img: &GreyImage, quality: u8) -> Option<GreyImage> {
    let bytes: Vec<u8> = img
        .pixels()
        .map(|p| (p.0[0].clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let grey = image::GrayImage::from_raw(img.width(), img.height(), bytes)?;
    let mut encoded = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, quality)
        .encode_image(&grey)
        .ok()?;
    let decoded = image::load_from_memory_with_format(&encoded, image::ImageFormat::Jpeg)
        .ok()?
        .to_luma8();
    if decoded.dimensions() != img.dimensions() {
        return None;
    }
    Some(GreyImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([decoded.get_pixel(x, y).0[0] as f32 / 255.0])
    }))
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
        let out = Augmentation::none().apply(&img(), &mut sample_rng(3, 0, 0));
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

    /// Only the collection-shift steps, at their `collection_shift` strengths.
    fn shift_only() -> Augmentation {
        let shift = Augmentation::collection_shift();
        Augmentation {
            bias_field: shift.bias_field,
            blur_probability: shift.blur_probability,
            blur_sigma: shift.blur_sigma,
            noise: shift.noise,
            jpeg_probability: shift.jpeg_probability,
            ..Augmentation::none()
        }
    }

    #[test]
    fn collection_shift_is_deterministic_per_seed_and_stays_in_range() {
        let aug = Augmentation::collection_shift();
        let a = aug.apply(&img(), &mut sample_rng(7, 2, 9));
        let b = aug.apply(&img(), &mut sample_rng(7, 2, 9));
        assert_eq!(a.as_raw(), b.as_raw());
        let others = (0..8)
            .filter(|s| aug.apply(&img(), &mut sample_rng(*s, 2, 9)).as_raw() != a.as_raw())
            .count();
        assert!(
            others >= 7,
            "only {others} of 8 other seeds changed the image"
        );
        assert!(a.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
    }

    #[test]
    fn settings_left_at_zero_leave_the_random_stream_as_it_was() {
        // A model trained before the collection-shift steps repeats exactly: with them at 0
        // nothing more is drawn, so the next value from the stream is the same.
        let mut before = sample_rng(11, 0, 3);
        let mut after = sample_rng(11, 0, 3);
        let old = Augmentation::default();
        let _ = old.apply(&img(), &mut before);
        let _ = old.apply(&img(), &mut after);
        assert_eq!(before.random::<u64>(), after.random::<u64>());
        let mut shifted = sample_rng(11, 0, 3);
        let _ = Augmentation::collection_shift().apply(&img(), &mut shifted);
        assert_ne!(
            shifted.random::<u64>(),
            sample_rng(11, 0, 3).random::<u64>()
        );
    }

    #[test]
    fn each_shift_step_does_what_it_says() {
        let flat = GreyImage::from_pixel(32, 32, Luma([0.5f32]));
        // The warp (identity here) leaves the last row and column black: they are left out.
        let spread = |i: &GreyImage| {
            let v: Vec<f32> = i
                .enumerate_pixels()
                .filter(|(x, y, _)| *x < 31 && *y < 31)
                .map(|(_, _, p)| p.0[0])
                .collect();
            let max = v.iter().cloned().fold(f32::MIN, f32::max);
            let min = v.iter().cloned().fold(f32::MAX, f32::min);
            max - min
        };
        // The strongest of 20 draws of `aug` on the flat image.
        let strongest = |aug: Augmentation| {
            (0..20)
                .map(|s| aug.apply(&flat, &mut sample_rng(s, 0, 0)))
                .max_by(|a, b| spread(a).total_cmp(&spread(b)))
                .unwrap()
        };
        // Bias field alone: a smooth ramp, no neighbouring pixels far apart.
        let field = strongest(Augmentation {
            blur_probability: 0.0,
            noise: 0.0,
            jpeg_probability: 0.0,
            ..shift_only()
        });
        assert!(spread(&field) > 0.01, "no field: spread {}", spread(&field));
        assert!(spread(&field) <= 0.5 * ((0.3f32).exp() - (-0.3f32).exp()) + 1e-4);
        let steps =
            (1..31).map(|x| (field.get_pixel(x, 16).0[0] - field.get_pixel(x - 1, 16).0[0]).abs());
        let step = steps.fold(0.0, f32::max);
        assert!(step < 0.02, "the field is not smooth: step {step}");
        // Noise alone: a flat image gets grain around its level.
        let grainy = strongest(Augmentation {
            bias_field: 0.0,
            blur_probability: 0.0,
            jpeg_probability: 0.0,
            ..shift_only()
        });
        assert!(spread(&grainy) > 0.02);
        let mean = grainy
            .enumerate_pixels()
            .filter(|(x, y, _)| *x < 31 && *y < 31)
            .map(|(_, _, p)| p.0[0])
            .sum::<f32>()
            / 961.0;
        assert!((mean - 0.5).abs() < 0.01, "noise moved the mean to {mean}");
        // Blur alone, always on: a sharp edge gets soft.
        let edge = GreyImage::from_fn(32, 32, |x, _| Luma([if x < 16 { 0.0 } else { 1.0 }]));
        let blur = Augmentation {
            bias_field: 0.0,
            noise: 0.0,
            jpeg_probability: 0.0,
            blur_probability: 1.0,
            ..shift_only()
        };
        let soft = blur.apply(&edge, &mut sample_rng(1, 0, 0));
        let v = soft.get_pixel(15, 16).0[0];
        assert!(v > 0.01 && v < 0.5, "edge pixel {v} after blur");
        // JPEG alone, always on: 8-bit levels and blocking, close to the original.
        let jpeg = Augmentation {
            bias_field: 0.0,
            noise: 0.0,
            blur_probability: 0.0,
            jpeg_probability: 1.0,
            jpeg_quality: [30, 30],
            ..shift_only()
        };
        let src = img();
        let out = jpeg.apply(&src, &mut sample_rng(1, 0, 0));
        assert!(
            out.pixels()
                .all(|p| ((p.0[0] * 255.0).round() - p.0[0] * 255.0).abs() < 1e-3)
        );
        let diff: f32 = out
            .pixels()
            .zip(src.pixels())
            .map(|(a, b)| (a.0[0] - b.0[0]).abs())
            .sum::<f32>()
            / 1600.0;
        assert!(diff > 0.001 && diff < 0.15, "mean JPEG change {diff}");
    }
}
