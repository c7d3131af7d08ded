//! Synthetic images that are not brain MRI slices, made here (nothing downloaded): flat fields,
//! noise, grey and colour gradients, text-like pages (dark on light and light on dark),
//! checkerboards, stripes and a colour "photo" of shapes. Used by the input-check tests and by
//! `examples/non_mri_set.rs`, which writes the measured set.

#![allow(dead_code)]

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `(kind, image)` pairs, `per_kind` of each kind, deterministic for a seed.
pub fn synthetic_non_mri(per_kind: usize, seed: u64) -> Vec<(&'static str, DynamicImage)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..per_kind {
        let w = rng.random_range(180..520);
        let h = rng.random_range(180..520);
        let level = rng.random_range(0..=255u8);
        out.push((
            "flat",
            DynamicImage::ImageLuma8(GrayImage::from_pixel(w, h, Luma([level]))),
        ));
        out.push(("noise", noise(w, h, &mut rng)));
        out.push(("grey-gradient", grey_gradient(w, h, &mut rng)));
        out.push(("colour-gradient", colour_gradient(w, h, &mut rng)));
        out.push(("text-dark-on-light", text_like(w, h, false, &mut rng)));
        out.push(("text-light-on-dark", text_like(w, h, true, &mut rng)));
        out.push(("checkerboard", checkerboard(w, h, &mut rng)));
        out.push(("colour-shapes", colour_shapes(w, h, &mut rng)));
    }
    out
}

fn noise(w: u32, h: u32, rng: &mut ChaCha8Rng) -> DynamicImage {
    let (mean, spread) = (
        rng.random_range(40.0..200.0f32),
        rng.random_range(10.0..80.0f32),
    );
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |_, _| {
        Luma([(mean + rng.random_range(-spread..spread)).clamp(0.0, 255.0) as u8])
    }))
}

fn grey_gradient(w: u32, h: u32, rng: &mut ChaCha8Rng) -> DynamicImage {
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (c, s) = (angle.cos(), angle.sin());
    let norm = (w as f32).hypot(h as f32);
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
        let t = ((x as f32 * c + y as f32 * s) / norm + 1.0) / 2.0;
        Luma([(t * 255.0) as u8])
    }))
}

fn colour_gradient(w: u32, h: u32, rng: &mut ChaCha8Rng) -> DynamicImage {
    let a: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(0.0..255.0));
    let b: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(0.0..255.0));
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        let t = (x as f32 / w as f32 + y as f32 / h as f32) / 2.0;
        Rgb([0, 1, 2].map(|i| (a[i] + t * (b[i] - a[i])) as u8))
    }))
}

/// Lines of glyph-sized dark (or light) marks on a page, like a scanned letter or a screenshot.
fn text_like(w: u32, h: u32, light_on_dark: bool, rng: &mut ChaCha8Rng) -> DynamicImage {
    let (paper, ink) = if light_on_dark {
        (15u8, 230u8)
    } else {
        (245u8, 20u8)
    };
    let mut img = GrayImage::from_pixel(w, h, Luma([paper]));
    let line = rng.random_range(12..24u32);
    let glyph = line * 6 / 10;
    let mut y = line;
    while y + line < h.saturating_sub(line) {
        let mut x = rng.random_range(8..20u32);
        let end = w.saturating_sub(rng.random_range(8..60u32));
        while x + glyph < end {
            if rng.random_bool(0.85) {
                // A glyph: a few strokes inside its box.
                for _ in 0..rng.random_range(2..4) {
                    let vertical = rng.random_bool(0.5);
                    let (x0, y0) = (
                        x + rng.random_range(0..glyph / 2),
                        y + rng.random_range(0..glyph / 2),
                    );
                    let len = rng.random_range(glyph / 2..glyph);
                    for t in 0..len {
                        for k in 0..2 {
                            let (px, py) = if vertical {
                                (x0 + k, y0 + t)
                            } else {
                                (x0 + t, y0 + k)
                            };
                            if px < w && py < h {
                                img.put_pixel(px, py, Luma([ink]));
                            }
                        }
                    }
                }
            }
            x += glyph + 2;
        }
        y += line;
    }
    DynamicImage::ImageLuma8(img)
}

fn checkerboard(w: u32, h: u32, rng: &mut ChaCha8Rng) -> DynamicImage {
    let cell = rng.random_range(8..48u32);
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x / cell + y / cell) % 2 == 0 {
            230
        } else {
            25
        }])
    }))
}

/// Coloured discs and boxes on a coloured background: a stand-in for a photo or a chart.
fn colour_shapes(w: u32, h: u32, rng: &mut ChaCha8Rng) -> DynamicImage {
    let bg = [0, 1, 2].map(|_| rng.random_range(60..230u8));
    let mut img = RgbImage::from_pixel(w, h, Rgb(bg));
    for _ in 0..rng.random_range(3..9) {
        let colour = [0, 1, 2].map(|_| rng.random_range(0..=255u8));
        let (cx, cy) = (rng.random_range(0..w) as f32, rng.random_range(0..h) as f32);
        let r = rng.random_range(10.0..(w.min(h) as f32 / 3.0));
        let disc = rng.random_bool(0.5);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let inside = if disc {
                dx * dx + dy * dy < r * r
            } else {
                dx.abs() < r && dy.abs() < r / 2.0
            };
            if inside {
                *p = Rgb(colour);
            }
        }
    }
    DynamicImage::ImageRgb8(img)
}
