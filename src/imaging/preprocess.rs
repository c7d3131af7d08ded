//! The one pre-processing pipeline: training, `predict`, the web app and the API all call
//! [`Preprocessing::run`] with the settings stored in the model file, so a scan reaches the
//! network as the same tensor whichever way it came in.
//!
//! Steps, in order: robust intensity rescale (percentiles to `[0, 1]`), optional light denoise,
//! crop to the brain (threshold + largest connected component + margin), pad to a square,
//! resize to the model's input size, optional CLAHE, then standardisation with the training
//! set's mean and standard deviation. Augmentation (training only) slots in before the last step;
//! see [`super::augment`].

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};
use imageproc::region_labelling::{Connectivity, connected_components};
use serde::{Deserialize, Serialize};

use super::decode::GreyImage;
use crate::core::error::SettingError;

/// All pre-processing settings, stored in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Side of the square network input, in pixels.
    pub input_size: u32,
    /// Intensities at these percentiles map to 0 and 1 (then clamped).
    pub rescale_percentiles: [f32; 2],
    /// Light Gaussian denoise before cropping (sigma in pixels of the original image).
    pub denoise_sigma: Option<f32>,
    /// Crop to the brain; `None` keeps the whole frame.
    pub crop: Option<BrainCrop>,
    /// Contrast-limited adaptive histogram equalisation at input size.
    pub clahe: Option<Clahe>,
    /// Standardisation applied last: `(x - mean) / std`, fitted on the training images.
    pub mean: f32,
    pub std: f32,
}

/// Crop-to-brain settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrainCrop {
    /// Margin added on each side, as a fraction of the component's larger side.
    pub margin: f32,
    /// Lower and upper clamp of the Otsu threshold (intensities in `[0, 1]`).
    pub threshold_range: [f32; 2],
    /// A largest component smaller than this fraction of the frame means "no brain found":
    /// the whole frame is kept.
    pub min_area_fraction: f32,
}

/// CLAHE settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clahe {
    /// Tiles per side.
    pub tiles: u32,
    /// Clip limit as a multiple of the mean histogram bin height.
    pub clip_limit: f32,
}

impl Default for BrainCrop {
    fn default() -> Self {
        Self {
            margin: 0.04,
            threshold_range: [0.04, 0.5],
            min_area_fraction: 0.02,
        }
    }
}

impl Default for Clahe {
    fn default() -> Self {
        Self {
            tiles: 8,
            clip_limit: 2.0,
        }
    }
}

impl Preprocessing {
    /// The default pipeline for a given input size; `mean`/`std` are refitted by training.
    pub fn new(input_size: u32) -> Self {
        Self {
            input_size,
            rescale_percentiles: [0.5, 99.5],
            denoise_sigma: None,
            crop: Some(BrainCrop::default()),
            clahe: None,
            mean: 0.0,
            std: 1.0,
        }
    }

    /// Checks the settings; a model file with impossible settings is refused at load.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |m: &str| Err(SettingError::new("pre-processing", m));
        if !(16..=1024).contains(&self.input_size) {
            return bad("input size must be between 16 and 1024");
        }
        let [lo, hi] = self.rescale_percentiles;
        if !((0.0..100.0).contains(&lo) && lo < hi && hi <= 100.0) {
            return bad("rescale percentiles must satisfy 0 <= low < high <= 100");
        }
        if !(self.std.is_finite() && self.std > 0.0 && self.mean.is_finite()) {
            return bad("standardisation needs a finite mean and a positive std");
        }
        if let Some(s) = self.denoise_sigma
            && !(s.is_finite() && s > 0.0 && s < 10.0)
        {
            return bad("denoise sigma must be in (0, 10)");
        }
        if let Some(c) = &self.clahe
            && (c.tiles == 0 || c.tiles > 32 || c.clip_limit <= 0.0)
        {
            return bad("CLAHE needs 1-32 tiles and a positive clip limit");
        }
        Ok(())
    }

    /// The deterministic part of the pipeline: a square `input_size` image in `[0, 1]`,
    /// and where it came from in the original frame.
    pub fn prepare(&self, original: &GreyImage) -> (GreyImage, Geometry) {
        let mut img = rescale_percentiles(original, self.rescale_percentiles);
        if let Some(sigma) = self.denoise_sigma {
            img = imageproc::filter::gaussian_blur_f32(&img, sigma);
        }
        let (w, h) = img.dimensions();
        let crop = match &self.crop {
            Some(c) => brain_bounding_box(&img, c).unwrap_or([0, 0, w, h]),
            None => [0, 0, w, h],
        };
        let [cx, cy, cw, ch] = crop;
        let side = cw.max(ch);
        let offset = [(side - cw) / 2, (side - ch) / 2];
        let mut square = GreyImage::new(side, side);
        let cropped = imageops::crop_imm(&img, cx, cy, cw, ch).to_image();
        imageops::replace(
            &mut square,
            &cropped,
            i64::from(offset[0]),
            i64::from(offset[1]),
        );
        let mut out = if side == self.input_size {
            square
        } else {
            imageops::resize(
                &square,
                self.input_size,
                self.input_size,
                FilterType::Triangle,
            )
        };
        if let Some(c) = &self.clahe {
            out = clahe(&out, c);
        }
        for p in out.pixels_mut() {
            p.0[0] = p.0[0].clamp(0.0, 1.0);
        }
        let geometry = Geometry {
            original_size: [w, h],
            crop,
            square_side: side,
            square_offset: offset,
            input_size: self.input_size,
        };
        (out, geometry)
    }

    /// Standardisation: the network's input values for a prepared (maybe augmented) image.
    pub fn standardize(&self, prepared: &GreyImage) -> Vec<f32> {
        let inv = 1.0 / self.std;
        prepared
            .pixels()
            .map(|p| (p.0[0] - self.mean) * inv)
            .collect()
    }

    /// The whole pipeline: original grey image -> network input (row-major, one channel).
    pub fn run(&self, original: &GreyImage) -> (Vec<f32>, Geometry) {
        let (prepared, geometry) = self.prepare(original);
        (self.standardize(&prepared), geometry)
    }
}

/// Where the network input came from in the original frame, so that maps computed on the input
/// (Grad-CAM) can be drawn back onto the original image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub original_size: [u32; 2],
    /// Crop box in the original frame: x, y, width, height.
    pub crop: [u32; 4],
    pub square_side: u32,
    /// Where the crop sits inside the padded square.
    pub square_offset: [u32; 2],
    pub input_size: u32,
}

impl Geometry {
    /// Maps a point of the network input (pixels) to the original frame; `None` when it falls
    /// in the padding.
    pub fn input_to_original(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        let scale = self.square_side as f32 / self.input_size as f32;
        let sx = x * scale - self.square_offset[0] as f32;
        let sy = y * scale - self.square_offset[1] as f32;
        let [cx, cy, cw, ch] = self.crop;
        if sx < 0.0 || sy < 0.0 || sx >= cw as f32 || sy >= ch as f32 {
            return None;
        }
        Some((sx + cx as f32, sy + cy as f32))
    }
}

impl Geometry {
    /// Maps a point of the original frame to the network input (pixels); `None` outside the
    /// crop.
    pub fn original_to_input(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        let [cx, cy, cw, ch] = self.crop;
        let (sx, sy) = (x - cx as f32, y - cy as f32);
        if sx < 0.0 || sy < 0.0 || sx >= cw as f32 || sy >= ch as f32 {
            return None;
        }
        let scale = self.input_size as f32 / self.square_side as f32;
        Some((
            (sx + self.square_offset[0] as f32) * scale,
            (sy + self.square_offset[1] as f32) * scale,
        ))
    }
}

/// Maps the given percentiles of the intensities to 0 and 1, clamping outside.
fn rescale_percentiles(img: &GreyImage, [lo_pct, hi_pct]: [f32; 2]) -> GreyImage {
    const BINS: usize = 4096;
    let mut hist = vec![0u32; BINS];
    for p in img.pixels() {
        let v = p.0[0];
        let b = if v.is_finite() {
            (v.clamp(0.0, 1.0) * (BINS - 1) as f32) as usize
        } else {
            0
        };
        hist[b] += 1;
    }
    let total = img.pixels().len() as f64;
    let quantile = |pct: f32| -> f32 {
        let target = total * f64::from(pct) / 100.0;
        let mut acc = 0f64;
        for (i, &c) in hist.iter().enumerate() {
            acc += f64::from(c);
            if acc >= target && acc > 0.0 {
                return i as f32 / (BINS - 1) as f32;
            }
        }
        1.0
    };
    let lo = quantile(lo_pct);
    let mut hi = quantile(hi_pct);
    if hi - lo < 1e-3 {
        hi = lo + 1e-3; // a flat image stays flat instead of blowing up noise
    }
    let scale = 1.0 / (hi - lo);
    GreyImage::from_fn(img.width(), img.height(), |x, y| {
        let v = img.get_pixel(x, y).0[0];
        let v = if v.is_finite() { v } else { 0.0 };
        Luma([((v - lo) * scale).clamp(0.0, 1.0)])
    })
}

/// Otsu's threshold of intensities in `[0, 1]` (256 bins).
pub fn otsu_threshold(img: &GreyImage) -> f32 {
    let mut hist = [0f64; 256];
    for p in img.pixels() {
        hist[(p.0[0].clamp(0.0, 1.0) * 255.0).round() as usize] += 1.0;
    }
    let total: f64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(i, c)| i as f64 * c).sum();
    let (mut w_bg, mut sum_bg, mut best, mut best_t) = (0.0, 0.0, -1.0, 0usize);
    for (t, &c) in hist.iter().enumerate() {
        w_bg += c;
        if w_bg == 0.0 {
            continue;
        }
        let w_fg = total - w_bg;
        if w_fg == 0.0 {
            break;
        }
        sum_bg += t as f64 * c;
        let m_bg = sum_bg / w_bg;
        let m_fg = (sum_all - sum_bg) / w_fg;
        let between = w_bg * w_fg * (m_bg - m_fg).powi(2);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    (best_t as f32 + 0.5) / 255.0
}

/// Bounding box (x, y, w, h) of the largest bright connected region, with margin; `None` when
/// no region is large enough to be a brain.
fn brain_bounding_box(img: &GreyImage, cfg: &BrainCrop) -> Option<[u32; 4]> {
    let (w, h) = img.dimensions();
    let threshold = otsu_threshold(img).clamp(cfg.threshold_range[0], cfg.threshold_range[1]);
    let mask = GrayImage::from_fn(w, h, |x, y| {
        Luma([if img.get_pixel(x, y).0[0] > threshold {
            255
        } else {
            0
        }])
    });
    let labels = connected_components(&mask, Connectivity::Eight, Luma([0u8]));
    let n_labels = labels.pixels().map(|p| p.0[0]).max().unwrap_or(0) as usize;
    if n_labels == 0 {
        return None;
    }
    let mut area = vec![0u64; n_labels + 1];
    for p in labels.pixels() {
        area[p.0[0] as usize] += 1;
    }
    let (best, &best_area) = area.iter().enumerate().skip(1).max_by_key(|(_, a)| **a)?;
    if (best_area as f64) < f64::from(cfg.min_area_fraction) * f64::from(w) * f64::from(h) {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in labels.enumerate_pixels() {
        if p.0[0] as usize == best {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    let margin = (cfg.margin * (x1 - x0 + 1).max(y1 - y0 + 1) as f32).round() as u32;
    let x0 = x0.saturating_sub(margin);
    let y0 = y0.saturating_sub(margin);
    let x1 = (x1 + margin).min(w - 1);
    let y1 = (y1 + margin).min(h - 1);
    Some([x0, y0, x1 - x0 + 1, y1 - y0 + 1])
}

/// Contrast-limited adaptive histogram equalisation with bilinear blending between tiles.
fn clahe(img: &GreyImage, cfg: &Clahe) -> GreyImage {
    const BINS: usize = 256;
    let (w, h) = img.dimensions();
    let tiles = cfg.tiles.min(w).min(h).max(1) as usize;
    let tile_w = w as f32 / tiles as f32;
    let tile_h = h as f32 / tiles as f32;
    let bin = |v: f32| (v.clamp(0.0, 1.0) * (BINS - 1) as f32).round() as usize;
    // One lookup table (cumulative, clipped histogram) per tile.
    let mut luts = vec![[0f32; BINS]; tiles * tiles];
    for ty in 0..tiles {
        for tx in 0..tiles {
            let (xs, xe) = (
                (tx as f32 * tile_w) as u32,
                (((tx + 1) as f32 * tile_w) as u32).min(w),
            );
            let (ys, ye) = (
                (ty as f32 * tile_h) as u32,
                (((ty + 1) as f32 * tile_h) as u32).min(h),
            );
            let mut hist = [0f32; BINS];
            for y in ys..ye {
                for x in xs..xe {
                    hist[bin(img.get_pixel(x, y).0[0])] += 1.0;
                }
            }
            let n = ((xe - xs) * (ye - ys)).max(1) as f32;
            let limit = (cfg.clip_limit * n / BINS as f32).max(1.0);
            let mut excess = 0.0;
            for c in hist.iter_mut() {
                if *c > limit {
                    excess += *c - limit;
                    *c = limit;
                }
            }
            let add = excess / BINS as f32;
            let lut = &mut luts[ty * tiles + tx];
            let mut acc = 0.0;
            for (i, c) in hist.iter().enumerate() {
                acc += c + add;
                lut[i] = acc / n;
            }
        }
    }
    GreyImage::from_fn(w, h, |x, y| {
        let b = bin(img.get_pixel(x, y).0[0]);
        // Position relative to tile centres.
        let fx = ((x as f32 + 0.5) / tile_w - 0.5).clamp(0.0, (tiles - 1) as f32);
        let fy = ((y as f32 + 0.5) / tile_h - 0.5).clamp(0.0, (tiles - 1) as f32);
        let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(tiles - 1), (y0 + 1).min(tiles - 1));
        let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
        let v = |tx: usize, ty: usize| luts[ty * tiles + tx][b];
        let top = v(x0, y0) * (1.0 - ax) + v(x1, y0) * ax;
        let bottom = v(x0, y1) * (1.0 - ax) + v(x1, y1) * ax;
        Luma([top * (1.0 - ay) + bottom * ay])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark frame with a bright "head" disc off-centre and a speck of noise in a corner.
    fn phantom() -> GreyImage {
        GreyImage::from_fn(200, 160, |x, y| {
            let (dx, dy) = (x as f32 - 120.0, y as f32 - 70.0);
            let v = if dx * dx + dy * dy < 40.0 * 40.0 {
                0.6 + 0.2 * ((x + y) % 7) as f32 / 7.0
            } else if x < 3 && y < 3 {
                0.9
            } else {
                0.01
            };
            Luma([v])
        })
    }

    #[test]
    fn crop_finds_the_brain_and_ignores_specks() {
        let cfg = BrainCrop::default();
        let img = rescale_percentiles(&phantom(), [0.5, 99.5]);
        let [x, y, w, h] = brain_bounding_box(&img, &cfg).unwrap();
        // Disc spans 80..160 x 30..110, plus a margin of ~3 px.
        assert!((76..=81).contains(&x), "x={x}");
        assert!((26..=31).contains(&y), "y={y}");
        assert!((80..=88).contains(&w) && (80..=88).contains(&h), "{w}x{h}");
    }

    #[test]
    fn prepare_gives_input_size_in_unit_range_and_geometry_maps_back() {
        let p = Preprocessing::new(64);
        let (img, geo) = p.prepare(&phantom());
        assert_eq!(img.dimensions(), (64, 64));
        assert!(img.pixels().all(|v| (0.0..=1.0).contains(&v.0[0])));
        // The centre of the input is the centre of the disc in the original frame.
        let (ox, oy) = geo.input_to_original(32.0, 32.0).unwrap();
        assert!(
            (ox - 120.0).abs() < 3.0 && (oy - 70.0).abs() < 3.0,
            "{ox},{oy}"
        );
    }

    #[test]
    fn blank_image_is_not_cropped_and_stays_finite() {
        let p = Preprocessing::new(32);
        let flat = GreyImage::from_pixel(50, 40, Luma([0.0]));
        let (x, geo) = p.run(&flat);
        assert_eq!(x.len(), 32 * 32);
        assert!(x.iter().all(|v| v.is_finite()));
        assert_eq!(geo.crop, [0, 0, 50, 40]);
    }

    #[test]
    fn clahe_and_denoise_are_applied_when_set() {
        let mut p = Preprocessing::new(48);
        let (plain, _) = p.prepare(&phantom());
        p.clahe = Some(Clahe::default());
        p.denoise_sigma = Some(0.8);
        p.validate().unwrap();
        let (enhanced, _) = p.prepare(&phantom());
        assert_ne!(plain.as_raw(), enhanced.as_raw());
        assert!(enhanced.pixels().all(|v| (0.0..=1.0).contains(&v.0[0])));
    }

    #[test]
    fn standardize_uses_stored_statistics() {
        let mut p = Preprocessing::new(16);
        p.mean = 0.25;
        p.std = 0.5;
        let img = GreyImage::from_pixel(16, 16, Luma([0.75]));
        assert!(p.standardize(&img).iter().all(|v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let mut p = Preprocessing::new(8);
        assert!(p.validate().is_err());
        p = Preprocessing::new(64);
        p.std = 0.0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn otsu_splits_two_levels() {
        let img = GreyImage::from_fn(20, 20, |x, _| Luma([if x < 10 { 0.1 } else { 0.8 }]));
        let t = otsu_threshold(&img);
        assert!(t > 0.1 && t < 0.8, "{t}");
    }
}
