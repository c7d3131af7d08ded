//! Synthetic images that are not brain MRI slices, for training the input gate (outlier
//! exposure): flat frames, noise, gradients, stripes, text-like pages, inverted MRI, and a
//! crude CT look-alike made from an MRI slice (bright skull ring, flat grey brain). They teach
//! the gate what "not a scan" and "not MRI contrast" look like beyond the few real sources.

use image::{GrayImage, Luma};
use imageproc::distance_transform::Norm;
use imageproc::filter::gaussian_blur_f32;
use imageproc::morphology::erode;
use rand::Rng;

use super::decode::GreyImage;

/// Kinds of synthetic negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticKind {
    Flat,
    Noise,
    Gradient,
    Stripes,
    TextPage,
    InvertedMri,
    /// Looks like a brain-windowed CT: what a CT slice differs from an MRI slice in.
    CtLookAlike,
}

impl SyntheticKind {
    pub const ALL: [SyntheticKind; 7] = [
        SyntheticKind::Flat,
        SyntheticKind::Noise,
        SyntheticKind::Gradient,
        SyntheticKind::Stripes,
        SyntheticKind::TextPage,
        SyntheticKind::InvertedMri,
        SyntheticKind::CtLookAlike,
    ];

    /// Whether this kind is made from a real MRI view.
    pub fn needs_mri(self) -> bool {
        matches!(
            self,
            SyntheticKind::InvertedMri | SyntheticKind::CtLookAlike
        )
    }
}

/// A synthetic negative of `kind`, `side` x `side`, values in `[0, 1]`. `mri` (a view of a
/// real training slice of the same side) is used by the kinds that start from one.
pub fn synthetic(
    kind: SyntheticKind,
    side: u32,
    mri: Option<&GreyImage>,
    rng: &mut impl Rng,
) -> GreyImage {
    let s = side as f32;
    match (kind, mri) {
        (SyntheticKind::Flat, _) => {
            let level: f32 = rng.random();
            let amplitude = rng.random_range(0.0..0.03);
            GreyImage::from_fn(side, side, |_, _| {
                Luma([(level + amplitude * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0)])
            })
        }
        (SyntheticKind::Noise, _) => {
            let raw = GreyImage::from_fn(side, side, |_, _| Luma([rng.random::<f32>()]));
            let sigma = rng.random_range(0.0..4.0);
            let img = if sigma > 0.5 {
                gaussian_blur_f32(&raw, sigma)
            } else {
                raw
            };
            stretch(img)
        }
        (SyntheticKind::Gradient, _) => {
            let angle = rng.random_range(0.0..std::f32::consts::TAU);
            let radial = rng.random_bool(0.4);
            let (cx, cy) = (rng.random_range(0.0..s), rng.random_range(0.0..s));
            let (dx, dy) = (angle.cos(), angle.sin());
            stretch(GreyImage::from_fn(side, side, |x, y| {
                let (x, y) = (x as f32, y as f32);
                let v = if radial {
                    ((x - cx).powi(2) + (y - cy).powi(2)).sqrt()
                } else {
                    x * dx + y * dy
                };
                Luma([v])
            }))
        }
        (SyntheticKind::Stripes, _) => {
            let period = rng.random_range(3.0..s / 2.0);
            let checker = rng.random_bool(0.5);
            let angle = rng.random_range(0.0..std::f32::consts::PI);
            let (dx, dy) = (angle.cos(), angle.sin());
            GreyImage::from_fn(side, side, |x, y| {
                let (x, y) = (x as f32, y as f32);
                let a = ((x * dx + y * dy) / period).floor() as i64;
                let b = ((y * dx - x * dy) / period).floor() as i64;
                let on = if checker {
                    (a + b) % 2 == 0
                } else {
                    a % 2 == 0
                };
                Luma([if on { 0.9 } else { 0.1 }])
            })
        }
        (SyntheticKind::TextPage, _) => text_page(side, rng),
        (SyntheticKind::InvertedMri, Some(m)) => {
            GreyImage::from_fn(side, side, |x, y| Luma([1.0 - m.get_pixel(x, y).0[0]]))
        }
        (SyntheticKind::CtLookAlike, Some(m)) => ct_look_alike(m, rng),
        // Without a slice to start from, noise stands in.
        (SyntheticKind::InvertedMri | SyntheticKind::CtLookAlike, None) => {
            synthetic(SyntheticKind::Noise, side, None, rng)
        }
    }
}

/// Rescales to `[0, 1]` (a constant image stays as it is).
fn stretch(mut img: GreyImage) -> GreyImage {
    let (lo, hi) = img.pixels().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
        (lo.min(p.0[0]), hi.max(p.0[0]))
    });
    if hi - lo > 1e-6 {
        for p in img.pixels_mut() {
            p.0[0] = (p.0[0] - lo) / (hi - lo);
        }
    }
    img
}

/// Dark "words" in lines on a light page (or the reverse, like a screenshot in dark mode).
fn text_page(side: u32, rng: &mut impl Rng) -> GreyImage {
    let dark_mode = rng.random_bool(0.2);
    let (paper, ink) = if dark_mode { (0.1, 0.85) } else { (0.95, 0.1) };
    let mut img = GreyImage::from_pixel(side, side, Luma([paper]));
    let line_height = rng.random_range(3..=8u32);
    let gap = rng.random_range(1..=4u32);
    let margin = rng.random_range(1..=side / 8);
    let mut y = margin;
    while y + line_height < side - margin / 2 {
        let mut x = margin;
        while x < side - margin {
            let word = rng.random_range(2..=12u32).min(side - margin - x);
            for yy in y..y + line_height.saturating_sub(1) {
                for xx in x..x + word {
                    if rng.random_bool(0.7) {
                        img.put_pixel(xx, yy, Luma([ink]));
                    }
                }
            }
            x += word + rng.random_range(2..=4);
        }
        y += line_height + gap;
    }
    img
}

/// A CT look-alike: the head of an MRI view with its rim turned into a bright bone ring and
/// its inside flattened to the narrow grey range of brain-windowed CT.
fn ct_look_alike(mri: &GreyImage, rng: &mut impl Rng) -> GreyImage {
    let (w, h) = mri.dimensions();
    let head = GrayImage::from_fn(w, h, |x, y| {
        Luma([if mri.get_pixel(x, y).0[0] > 0.12 {
            255
        } else {
            0
        }])
    });
    let thickness = rng.random_range(1..=(w / 24).max(1) as u8);
    let inside = erode(&head, Norm::LInf, thickness);
    let soft = gaussian_blur_f32(mri, rng.random_range(0.8..2.0));
    let (base, spread) = (rng.random_range(0.25..0.45), rng.random_range(0.05..0.2));
    let bone = rng.random_range(0.85..1.0);
    GreyImage::from_fn(w, h, |x, y| {
        let v = if inside.get_pixel(x, y).0[0] > 0 {
            base + spread * soft.get_pixel(x, y).0[0]
        } else if head.get_pixel(x, y).0[0] > 0 {
            bone
        } else {
            0.0
        };
        Luma([v])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn disc() -> GreyImage {
        GreyImage::from_fn(64, 64, |x, y| {
            let d = ((x as f32 - 32.0).powi(2) + (y as f32 - 32.0).powi(2)).sqrt();
            Luma([if d < 25.0 {
                0.3 + 0.5 * (d / 25.0)
            } else {
                0.0
            }])
        })
    }

    #[test]
    fn every_kind_makes_a_unit_range_image_of_the_side() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mri = disc();
        for kind in SyntheticKind::ALL {
            let img = synthetic(kind, 64, Some(&mri), &mut rng);
            assert_eq!(img.dimensions(), (64, 64), "{kind:?}");
            assert!(
                img.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])),
                "{kind:?} leaves [0, 1]"
            );
        }
    }

    #[test]
    fn the_ct_look_alike_has_a_bright_rim_and_a_flat_inside() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let ct = synthetic(SyntheticKind::CtLookAlike, 64, Some(&disc()), &mut rng);
        // The rim of the disc (radius 25) is bone-bright, the centre mid-grey, outside black.
        assert!(ct.get_pixel(32 + 24, 32).0[0] > 0.8);
        let centre = ct.get_pixel(32, 32).0[0];
        assert!((0.2..0.7).contains(&centre), "{centre}");
        assert_eq!(ct.get_pixel(1, 1).0[0], 0.0);
    }
}
