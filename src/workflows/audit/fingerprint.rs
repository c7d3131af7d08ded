//! Per-image fingerprints for duplicate search: a DCT perceptual hash (pHash) in all eight
//! flips/rotations, and a small normalised thumbnail for the confirming correlation check.
//!
//! Both are computed on the brain-cropped grey image (the same crop as the model's
//! pre-processing), so copies that were re-encoded, resized or re-framed still line up. Mirrored
//! and rotated copies are common in the shared data (a mirrored copy sits ~32 bits away in one
//! orientation), hence the eight orientations.

use crate::imaging::{GreyImage, Preprocessing};

/// Side of the image the DCT runs on.
const HASH_SIDE: usize = 32;
/// Side of the thumbnail compared by correlation.
pub const THUMB_SIDE: usize = 48;

/// The eight symmetries of the square: (transpose, flip x, flip y).
pub const ORIENTATIONS: usize = 8;

/// Fingerprint of one image.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    /// pHash of each orientation; index 0 is the image as stored.
    pub phash: [u64; ORIENTATIONS],
    /// Brain-cropped thumbnail in `[0, 1]` (as stored), for the correlation check.
    pub thumb: Vec<f32>,
}

/// Maps output pixel (x, y) of orientation `o` to the source pixel of a `side`-square.
fn oriented(o: usize, x: usize, y: usize, side: usize) -> (usize, usize) {
    let (mut x, mut y) = (x, y);
    if o & 4 != 0 {
        std::mem::swap(&mut x, &mut y);
    }
    if o & 1 != 0 {
        x = side - 1 - x;
    }
    if o & 2 != 0 {
        y = side - 1 - y;
    }
    (x, y)
}

/// Square `side` image in orientation `o`.
fn orient(pixels: &[f32], side: usize, o: usize) -> Vec<f32> {
    let mut out = vec![0.0; side * side];
    for y in 0..side {
        for x in 0..side {
            let (sx, sy) = oriented(o, x, y, side);
            out[y * side + x] = pixels[sy * side + sx];
        }
    }
    out
}

fn dct_basis() -> Vec<f32> {
    let n = HASH_SIDE;
    let mut m = vec![0.0; 8 * n];
    for k in 0..8 {
        for i in 0..n {
            m[k * n + i] = (std::f32::consts::PI / n as f32 * (i as f32 + 0.5) * k as f32).cos();
        }
    }
    m
}

/// 64-bit pHash: lowest 8x8 DCT frequencies, each bit "above the median (DC excluded)".
fn phash(pixels: &[f32], basis: &[f32]) -> u64 {
    let n = HASH_SIDE;
    // Rows then columns, keeping only the 8 lowest frequencies.
    let mut rows = vec![0.0f32; n * 8];
    for y in 0..n {
        for k in 0..8 {
            rows[y * 8 + k] = (0..n).map(|x| pixels[y * n + x] * basis[k * n + x]).sum();
        }
    }
    let mut coef = [0.0f32; 64];
    for v in 0..8 {
        for u in 0..8 {
            coef[v * 8 + u] = (0..n).map(|y| rows[y * 8 + u] * basis[v * n + y]).sum();
        }
    }
    let mut ac: Vec<f32> = coef[1..].to_vec();
    ac.sort_by(f32::total_cmp);
    let median = (ac[31] + ac[32]) / 2.0;
    coef.iter()
        .enumerate()
        .fold(0u64, |h, (i, &c)| if c > median { h | (1 << i) } else { h })
}

fn resized(img: &GreyImage, side: usize) -> Vec<f32> {
    let r = image::imageops::resize(
        img,
        side as u32,
        side as u32,
        image::imageops::FilterType::Triangle,
    );
    r.into_raw()
}

/// Fingerprint of a decoded grey image.
pub fn fingerprint(img: &GreyImage) -> Fingerprint {
    // The model pipeline's rescale and brain crop, at a size big enough for both uses.
    let (cropped, _) = Preprocessing::new(64).prepare(img);
    let basis = dct_basis();
    let small = resized(&cropped, HASH_SIDE);
    let mut phashes = [0u64; ORIENTATIONS];
    for (o, h) in phashes.iter_mut().enumerate() {
        *h = phash(&orient(&small, HASH_SIDE, o), &basis);
    }
    let thumb = resized(&cropped, THUMB_SIDE);
    Fingerprint {
        phash: phashes,
        thumb,
    }
}

/// Smallest Hamming distance between `a` as stored and `b` in any orientation, and that
/// orientation.
pub fn phash_distance(a: &Fingerprint, b: &Fingerprint) -> (u32, usize) {
    (0..ORIENTATIONS)
        .map(|o| ((a.phash[0] ^ b.phash[o]).count_ones(), o))
        .min()
        .unwrap_or((64, 0))
}

/// Pixels darker than this (after the percentile rescale) count as background.
const FOREGROUND: f32 = 0.08;

/// Pearson correlation of `a` with `b` turned to orientation `o`, over the pixels where both
/// show tissue: 1 means the same picture up to brightness and contrast. Background is left out
/// because every head silhouette looks alike; what must match is the anatomy inside. Returns 0
/// when the two barely overlap.
pub fn correlation(a: &Fingerprint, b: &Fingerprint, o: usize) -> f32 {
    let turned = orient(&b.thumb, THUMB_SIDE, o);
    let pairs: Vec<(f32, f32)> = a
        .thumb
        .iter()
        .zip(&turned)
        .filter(|(x, y)| **x > FOREGROUND && **y > FOREGROUND)
        .map(|(x, y)| (*x, *y))
        .collect();
    if pairs.len() * 4 < a.thumb.len() {
        return 0.0;
    }
    let n = pairs.len() as f32;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (mx / n, my / n);
    let (mut sxy, mut sxx, mut syy) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in &pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    if sxx <= 1e-9 || syy <= 1e-9 {
        return 0.0;
    }
    sxy / (sxx.sqrt() * syy.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    fn scan(seed: u32) -> GreyImage {
        GreyImage::from_fn(120, 100, |x, y| {
            let (dx, dy) = (x as f32 - 60.0, y as f32 - 50.0);
            if dx * dx / 1600.0 + dy * dy / 1600.0 > 1.0 {
                return Luma([0.0]);
            }
            let v = ((x * 7 + y * 13 + seed * 31) % 17) as f32 / 17.0 * 0.3
                + if (x / 12 + y / 9 + seed).is_multiple_of(3) {
                    0.5
                } else {
                    0.2
                };
            Luma([v])
        })
    }

    #[test]
    fn mirrored_and_rotated_copies_match_distinct_images_do_not() {
        let a = fingerprint(&scan(1));
        let mirrored = fingerprint(&image::imageops::flip_horizontal(&scan(1)));
        let rotated = fingerprint(&image::imageops::rotate90(&scan(1)));
        let other = fingerprint(&scan(2));
        for copy in [&mirrored, &rotated] {
            let (d, o) = phash_distance(&a, copy);
            assert!(d <= 4, "distance {d}");
            assert!(correlation(&a, copy, o) > 0.95);
        }
        let (d, o) = phash_distance(&a, &other);
        assert!(
            d > 10 || correlation(&a, &other, o) < 0.9,
            "distinct images matched: {d}"
        );
    }

    #[test]
    fn orientations_are_the_eight_symmetries() {
        let px: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let all: std::collections::HashSet<Vec<u32>> = (0..8)
            .map(|o| orient(&px, 3, o).iter().map(|v| *v as u32).collect())
            .collect();
        assert_eq!(all.len(), 8);
    }
}
