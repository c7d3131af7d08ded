//! Fitting the input check: bounds on the image statistics of the training images, and the
//! class means and shrunk shared covariance of their pooled features, the shrinkage chosen by
//! the likelihood of held-out validation features.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::core::numeric::quantile;
use crate::imaging::ImageStats;
use crate::modelfile::input_check::{Bounds, FeatureDensity, ImageBounds};

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
        let means = self
            .means
            .iter()
            .map(|m| m.iter().map(|&v| v as f32).collect())
            .collect();
        Some(FeatureDensity::from_factor(means, packed, shrinkage))
    }
}

/// The range covering all but the most extreme 0.2 % of the training images on each
/// checked side, widened by a tenth of that range (slack for scanners the data lacks).
/// Colourfulness also gets an absolute floor of slack: the shared data is greyscale, but
/// a JPEG of a grey scan may carry faint chroma.
pub fn fit_image_bounds(stats: &[ImageStats]) -> ImageBounds {
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
    ImageBounds {
        colourfulness: colour,
        aspect: fit(|s| s.aspect, true, true),
        contrast: fit(|s| s.contrast, true, false),
        dark_border: fit(|s| s.dark_border, true, false),
        brightness: fit(|s| s.brightness, true, true),
    }
}

/// Fits class means and the pooled within-class covariance, shrunk towards a scaled identity.
pub fn fit_features(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    shrinkage: f32,
) -> Option<FeatureDensity> {
    Moments::of(features, labels, classes)?.density(shrinkage)
}

/// Fits on the training features and picks, among `candidates`, the shrinkage under which
/// the held-out validation features are most likely (each under its own class's Gaussian):
/// the covariance that generalises best to unseen slices, chosen without the test set.
pub fn fit_features_choosing_shrinkage(
    features: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    validation: (&[Vec<f32>], &[usize]),
    candidates: &[f32],
) -> Option<(FeatureDensity, Vec<ShrinkageScore>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{GreyImage, ImageInfo};
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
        let fitted = fit_features(&feats, &labels, 2, 0.0).unwrap();
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
        let (plenty, scores) = fit_features_choosing_shrinkage(
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
        let (scarce, scores) = fit_features_choosing_shrinkage(
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
        let density = fit_features(&train, &vec![0; train.len()], 1, 0.01).unwrap();
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
        let bounds = fit_image_bounds(&[s; 20]);
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
}
