//! "Does this look like a brain MRI slice?": simple image statistics with bounds fitted on the
//! training images, and a feature-space distance (Mahalanobis, Lee et al. 2018) between the
//! network's pooled last-conv features and the training classes, with a threshold fitted on
//! held-out slices. Each failed check gives a reason in plain words.

use base64::Engine;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::data::image_io::{GreyImage, ImageInfo};

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

/// Accepted range of one statistic (`None`: no bound on that side).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

impl Bounds {
    fn contains(&self, v: f32) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// Bounds on the image statistics, fitted on training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageBounds {
    pub colourfulness: Bounds,
    pub aspect: Bounds,
    pub contrast: Bounds,
    pub dark_border: Bounds,
    pub brightness: Bounds,
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

impl ImageBounds {
    /// The range covering all but the most extreme 0.2 % of the training images on each
    /// checked side, widened by a tenth of that range (slack for scanners the data lacks).
    /// Colourfulness also gets an absolute floor of slack: the shared data is greyscale, but
    /// a JPEG of a grey scan may carry faint chroma.
    pub fn fit(stats: &[ImageStats]) -> Self {
        let fit = |f: fn(&ImageStats) -> f32, low: bool, high: bool| {
            let v: Vec<f32> = stats.iter().map(f).collect();
            let (lo, hi) = (quantile(&v, 0.002), quantile(&v, 0.998));
            let slack = 0.1 * (hi - lo);
            Bounds {
                min: low.then_some(lo - slack),
                max: high.then_some(hi + slack),
            }
        };
        let mut colour = fit(|s| s.colourfulness, false, true);
        colour.max = colour.max.map(|m| m.max(0.04));
        Self {
            colourfulness: colour,
            aspect: fit(|s| s.aspect, true, true),
            contrast: fit(|s| s.contrast, true, false),
            dark_border: fit(|s| s.dark_border, true, false),
            brightness: fit(|s| s.brightness, true, true),
        }
    }

    /// Reasons, in plain words, why `s` is unlike the training slices (empty: nothing odd).
    pub fn reasons(&self, s: &ImageStats, size: (u32, u32)) -> Vec<String> {
        let mut out = Vec::new();
        if !self.contrast.contains(s.contrast) {
            out.push("it is blank or nearly uniform".to_string());
        }
        if !self.colourfulness.contains(s.colourfulness) {
            out.push("it is a colour picture; MRI slices are greyscale".to_string());
        }
        if !self.aspect.contains(s.aspect) {
            out.push(format!(
                "its shape ({} x {} pixels) is unlike an MRI slice",
                size.0, size.1
            ));
        }
        if !self.dark_border.contains(s.dark_border) {
            out.push(
                "it lacks the dark background around the head that MRI slices have (an inverted \
                 image, a photo or a screenshot?)"
                    .to_string(),
            );
        }
        if !self.brightness.contains(s.brightness) && out.is_empty() {
            out.push("its overall brightness is unlike an MRI slice".to_string());
        }
        out
    }
}

/// Class-conditional Gaussians with a shared covariance over pooled features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDensity {
    pub dimension: usize,
    /// Per-class mean feature vectors.
    pub means: Vec<Vec<f32>>,
    /// Lower-triangular Cholesky factor of the (shrunk) shared covariance, rows packed, as
    /// little-endian f32 in base64: compact and exact.
    pub cholesky_base64: String,
    /// Weight of the identity (scaled to the mean variance) mixed into the covariance.
    pub shrinkage: f32,
    /// How the shrinkage was chosen, in words.
    #[serde(default)]
    pub shrinkage_rule: String,
    /// Distances above this are out of distribution.
    pub threshold: f32,
    /// How the threshold was chosen, in words.
    pub threshold_rule: String,
    #[serde(skip)]
    cholesky: Vec<f32>,
}

/// Shrinkage values tried when the choice is left to the validation images.
pub const SHRINKAGE_CANDIDATES: [f32; 10] = [0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99];

/// Mean held-out log-likelihood of the validation features at one shrinkage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShrinkageScore {
    pub shrinkage: f32,
    /// Mean log-density of each validation feature vector under its own class's Gaussian.
    pub validation_log_likelihood: f64,
}

/// Class means and the pooled within-class covariance of training features.
struct Moments {
    means: Vec<Vec<f64>>,
    cov: DMatrix<f64>,
}

impl Moments {
    fn of(features: &[Vec<f32>], labels: &[usize], classes: usize) -> Option<Self> {
        let d = features.first()?.len();
        let mut means = vec![vec![0f64; d]; classes];
        let mut counts = vec![0usize; classes];
        for (f, &y) in features.iter().zip(labels) {
            counts[y] += 1;
            for (m, v) in means[y].iter_mut().zip(f) {
                *m += f64::from(*v);
            }
        }
        for (m, &n) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= n.max(1) as f64);
        }
        let mut cov = DMatrix::<f64>::zeros(d, d);
        for (f, &y) in features.iter().zip(labels) {
            let diff =
                DVector::from_iterator(d, f.iter().zip(&means[y]).map(|(v, m)| f64::from(*v) - m));
            cov.ger(1.0, &diff, &diff, 1.0);
        }
        cov /= (features.len().saturating_sub(classes)).max(1) as f64;
        Some(Self { means, cov })
    }

    /// The density with the covariance shrunk towards the identity scaled to the mean variance.
    fn density(&self, shrinkage: f32) -> Option<FeatureDensity> {
        let d = self.cov.nrows();
        let mean_var = self.cov.trace() / d as f64;
        let a = f64::from(shrinkage);
        let shrunk =
            &self.cov * (1.0 - a) + DMatrix::<f64>::identity(d, d) * (a * mean_var.max(1e-12));
        let l = shrunk.cholesky()?.l();
        let mut packed = Vec::with_capacity(d * (d + 1) / 2);
        for i in 0..d {
            for j in 0..=i {
                packed.push(l[(i, j)] as f32);
            }
        }
        let bytes: Vec<u8> = packed.iter().flat_map(|v| v.to_le_bytes()).collect();
        Some(FeatureDensity {
            dimension: d,
            means: self
                .means
                .iter()
                .map(|m| m.iter().map(|&v| v as f32).collect())
                .collect(),
            cholesky_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            shrinkage,
            shrinkage_rule: format!("fixed at {shrinkage}"),
            threshold: f32::MAX, // set by the caller; JSON has no infinity
            threshold_rule: String::new(),
            cholesky: packed,
        })
    }
}

impl FeatureDensity {
    /// Fits class means and the pooled within-class covariance, shrunk towards a scaled identity.
    pub fn fit(
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
        shrinkage: f32,
    ) -> Option<Self> {
        Moments::of(features, labels, classes)?.density(shrinkage)
    }

    /// Fits on the training features and picks, among `candidates`, the shrinkage under which
    /// the held-out validation features are most likely (each under its own class's Gaussian):
    /// the covariance that generalises best to unseen slices, chosen without the test set.
    pub fn fit_choosing_shrinkage(
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
        validation: (&[Vec<f32>], &[usize]),
        candidates: &[f32],
    ) -> Option<(Self, Vec<ShrinkageScore>)> {
        let moments = Moments::of(features, labels, classes)?;
        let mut scores = Vec::new();
        let mut best: Option<(f64, FeatureDensity)> = None;
        for &a in candidates {
            let Some(density) = moments.density(a) else {
                continue; // not positive definite at this shrinkage
            };
            let (feats, ys) = validation;
            let ll = feats
                .iter()
                .zip(ys)
                .map(|(f, &y)| density.log_likelihood(f, y))
                .sum::<f64>()
                / feats.len().max(1) as f64;
            scores.push(ShrinkageScore {
                shrinkage: a,
                validation_log_likelihood: ll,
            });
            if best.as_ref().is_none_or(|(b, _)| ll > *b) {
                best = Some((ll, density));
            }
        }
        let (_, mut density) = best?;
        density.shrinkage_rule = format!(
            "the most likely for {} held-out validation images among {} candidates",
            validation.0.len(),
            scores.len()
        );
        Some((density, scores))
    }

    /// Log-density of `f` under class `class`'s Gaussian.
    pub fn log_likelihood(&self, f: &[f32], class: usize) -> f64 {
        let d = self.dimension;
        let Some(mean) = self.means.get(class) else {
            return f64::NEG_INFINITY;
        };
        if f.len() != d || self.cholesky.len() != d * (d + 1) / 2 {
            return f64::NEG_INFINITY;
        }
        let mut log_det = 0.0;
        let mut row = 0;
        for i in 0..d {
            log_det += 2.0 * f64::from(self.cholesky[row + i]).ln();
            row += i + 1;
        }
        -0.5 * (self.quadratic_form(f, mean)
            + log_det
            + d as f64 * (2.0 * std::f64::consts::PI).ln())
    }

    /// Decodes the stored factor (after deserialising); false when it does not fit the dimension.
    pub fn unpack(&mut self) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.cholesky_base64)
        else {
            return false;
        };
        let d = self.dimension;
        if bytes.len() != 4 * d * (d + 1) / 2 || self.means.iter().any(|m| m.len() != d) {
            return false;
        }
        self.cholesky = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        true
    }

    /// The smallest Mahalanobis distance from `f` to a class mean.
    pub fn distance(&self, f: &[f32]) -> f32 {
        let d = self.dimension;
        if f.len() != d || self.cholesky.len() != d * (d + 1) / 2 {
            return f32::INFINITY;
        }
        let best = self
            .means
            .iter()
            .map(|mean| self.quadratic_form(f, mean))
            .fold(f64::INFINITY, f64::min);
        best.sqrt() as f32
    }

    /// (f - mean)' S^-1 (f - mean), by forward substitution with the Cholesky factor of S.
    fn quadratic_form(&self, f: &[f32], mean: &[f32]) -> f64 {
        let d = self.dimension;
        let mut y = vec![0f64; d];
        let mut row = 0;
        let mut q = 0f64;
        for i in 0..d {
            let dot: f64 = self.cholesky[row..row + i]
                .iter()
                .zip(&y[..i])
                .map(|(l, y)| f64::from(*l) * y)
                .sum();
            y[i] = (f64::from(f[i] - mean[i]) - dot) / f64::from(self.cholesky[row + i]);
            q += y[i] * y[i];
            row += i + 1;
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn grey_info(w: u32, h: u32) -> ImageInfo {
        ImageInfo {
            format: "PNG",
            width: w,
            height: h,
            color: "L8".into(),
            bits_per_channel: 8,
            colourfulness: 0.0,
        }
    }

    #[test]
    fn mahalanobis_matches_the_closed_form_and_survives_a_round_trip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Two classes in 3-D, axis variances 1, 4, 9.
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        for i in 0..4000 {
            let c = i % 2;
            let offset = if c == 0 { 0.0 } else { 10.0 };
            let g = |rng: &mut ChaCha8Rng| {
                // Sum of uniforms: near-Gaussian, unit variance.
                (0..12).map(|_| rng.random_range(0.0..1.0f32)).sum::<f32>() - 6.0
            };
            feats.push(vec![
                offset + g(&mut rng),
                2.0 * g(&mut rng),
                3.0 * g(&mut rng),
            ]);
            labels.push(c);
        }
        let fitted = FeatureDensity::fit(&feats, &labels, 2, 0.0).unwrap();
        let mut density: FeatureDensity =
            serde_json::from_str(&serde_json::to_string(&fitted).unwrap()).unwrap();
        assert!(density.unpack());
        // (0, 4, 0) from class 0's mean: distance 4 / 2 = 2.
        let d = density.distance(&[0.0, 4.0, 0.0]);
        assert!((d - 2.0).abs() < 0.1, "{d}");
        // Nearest class wins: (10, 0, 3) is 1 away from class 1.
        let d = density.distance(&[10.0, 0.0, 3.0]);
        assert!((d - 1.0).abs() < 0.1, "{d}");
        assert_eq!(density.distance(&[1.0]), f32::INFINITY);
    }

    /// Gaussian samples of `d` dimensions with standard deviation `scale(i)` on axis `i`.
    fn gaussian_rows(
        rng: &mut ChaCha8Rng,
        n: usize,
        d: usize,
        scale: impl Fn(usize) -> f32,
    ) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|i| {
                        let g = (0..12).map(|_| rng.random_range(0.0..1.0f32)).sum::<f32>() - 6.0;
                        g * scale(i)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn validation_picks_little_shrinkage_for_plenty_of_data_and_much_for_scarce_data() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Plenty of samples, axis scales 1..20: the sample covariance is right, the identity
        // is wrong.
        let scale = |i: usize| 1.0 + i as f32;
        let train = gaussian_rows(&mut rng, 3000, 20, scale);
        let val = gaussian_rows(&mut rng, 500, 20, scale);
        let (plenty, scores) = FeatureDensity::fit_choosing_shrinkage(
            &train,
            &vec![0; train.len()],
            1,
            (&val, &vec![0; val.len()]),
            &SHRINKAGE_CANDIDATES,
        )
        .unwrap();
        assert_eq!(scores.len(), SHRINKAGE_CANDIDATES.len());
        assert!(plenty.shrinkage <= 0.05, "{scores:?}");
        assert!(
            plenty
                .shrinkage_rule
                .contains("500 held-out validation images")
        );
        // Scarce samples of an isotropic Gaussian in 60 dimensions: the sample covariance is
        // nearly singular, the identity is right.
        let train = gaussian_rows(&mut rng, 70, 60, |_| 1.0);
        let val = gaussian_rows(&mut rng, 200, 60, |_| 1.0);
        let (scarce, scores) = FeatureDensity::fit_choosing_shrinkage(
            &train,
            &vec![0; train.len()],
            1,
            (&val, &vec![0; val.len()]),
            &SHRINKAGE_CANDIDATES,
        )
        .unwrap();
        assert!(scarce.shrinkage >= 0.5, "{scores:?}");
        // The chosen one is the best scored.
        let best = scores
            .iter()
            .max_by(|a, b| {
                a.validation_log_likelihood
                    .total_cmp(&b.validation_log_likelihood)
            })
            .unwrap();
        assert_eq!(best.shrinkage, scarce.shrinkage);
    }

    #[test]
    fn log_likelihood_matches_the_standard_normal_density() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let train = gaussian_rows(&mut rng, 20000, 2, |_| 1.0);
        let density = FeatureDensity::fit(&train, &vec![0; train.len()], 1, 0.01).unwrap();
        // log N(0; 0, I) in 2-D = -ln(2 pi).
        let ll = density.log_likelihood(&[0.0, 0.0], 0);
        assert!(
            (ll + (2.0 * std::f64::consts::PI).ln()).abs() < 0.05,
            "{ll}"
        );
        assert_eq!(density.log_likelihood(&[0.0, 0.0], 5), f64::NEG_INFINITY);
    }

    #[test]
    fn image_statistics_tell_a_head_on_black_from_flat_inverted_and_colour_images() {
        let head = GreyImage::from_fn(100, 100, |x, y| {
            let (dx, dy) = (x as f32 - 50.0, y as f32 - 50.0);
            Luma([if dx * dx + dy * dy < 1600.0 {
                0.4 + ((x * 7 + y * 13) % 10) as f32 / 30.0
            } else {
                0.0
            }])
        });
        let s = ImageStats::of(&head, &grey_info(100, 100));
        assert!(s.dark_border > 0.99 && s.contrast > 0.1, "{s:?}");
        let bounds = ImageBounds::fit(&[s; 20]);
        assert!(bounds.reasons(&s, (100, 100)).is_empty());

        let inverted = GreyImage::from_fn(100, 100, |x, y| Luma([1.0 - head.get_pixel(x, y).0[0]]));
        let r = bounds.reasons(&ImageStats::of(&inverted, &grey_info(100, 100)), (100, 100));
        assert!(r.iter().any(|m| m.contains("dark background")), "{r:?}");

        let flat = GreyImage::from_pixel(100, 100, Luma([0.0]));
        let r = bounds.reasons(&ImageStats::of(&flat, &grey_info(100, 100)), (100, 100));
        assert!(r.iter().any(|m| m.contains("blank")), "{r:?}");

        let mut info = grey_info(300, 100);
        info.colourfulness = 0.3;
        let wide = GreyImage::from_fn(300, 100, |x, y| head.get_pixel(x % 100, y).to_owned());
        let r = bounds.reasons(&ImageStats::of(&wide, &info), (300, 100));
        assert!(r.iter().any(|m| m.contains("colour")), "{r:?}");
        assert!(r.iter().any(|m| m.contains("300 x 100")), "{r:?}");
    }

    #[test]
    fn quantiles() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
