//! Training the input gate with outlier exposure (`oncolens gate train`): positives are the
//! MRI slices of a classifier's train split, negatives the images of a folder of non-MRI
//! categories (one folder per category, the source named by the file-name prefix before `__`)
//! plus synthetic negatives made on the fly. Each epoch draws the real negatives balanced over
//! categories and, within a category, over sources, so that one large source (one knee, one CT
//! collection) cannot stand for its category. Every image is turned by a random multiple of
//! 90 degrees and flipped, then jittered in geometry and tone: the shared head CTs all face the
//! same way, and orientation must not be what tells CT from MRI.
//!
//! The threshold on the brain-MRI probability is the quantile of the validation split's
//! slices that refuses at most the asked share of them (1 % by default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, decay::WeightDecayConfig};
use burn::tensor::Device;
use image::imageops;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::train::classification_loss;
use crate::core::error::{DatasetProblem, Error, Result, TrainingError};
use crate::data::folder::ImageFolder;
use crate::data::loader::prepare_files;
use crate::data::not_mri::NotMriList;
use crate::data::split::held_out_split;
use crate::imaging::GreyImage;
use crate::imaging::augment::{Augmentation, sample_rng};
use crate::imaging::gate_view::{GATE_SIDE, gate_view};
use crate::imaging::synthetic::{SyntheticKind, synthetic};
use crate::model::gate::GateNet;
use crate::modelfile::gate::{
    BRAIN_MRI, GATE_FORMAT, GATE_FORMAT_VERSION, GateData, GateKind, GateManifest, GateTraining,
    default_reason, save_gate,
};
use crate::runtime::LoadedGate;
use crate::runtime::gate::gate_input;

/// The kind synthetic negatives are labelled with (the CT look-alike goes to `head_ct` when
/// the non-MRI folder has that category).
pub const SYNTHETIC: &str = "synthetic";

/// What to train on and where to write.
#[derive(Debug, Clone)]
pub struct GateTrainOptions {
    /// The classifier's training folder (class folders of MRI slices).
    pub mri: PathBuf,
    /// A model directory whose `split.json` says which MRI slices are validation.
    pub split_from: PathBuf,
    /// A folder of categories of images that are not brain MRI.
    pub non_mri: PathBuf,
    pub out: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// MRI slices drawn per epoch (a fresh random subset each epoch; all when larger than
    /// the train split). The shares below are of this number.
    pub mri_per_epoch: usize,
    pub negative_share: f32,
    pub synthetic_share: f32,
    /// Sources of the non-MRI folder left out of training.
    pub hold_out: Vec<String>,
    /// The share of validation MRI slices the threshold may refuse.
    pub max_refused: f64,
    /// Use at most this many MRI slices of the train split (tests); `None`: all.
    pub max_mri: Option<usize>,
    /// Files of the MRI folder that are not brain MRI (`data/brain-tumor-mri-not-mri.csv`):
    /// trained on as negatives of their kind, never as positives or validation slices.
    pub not_mri: Option<PathBuf>,
    pub progress: bool,
}

impl GateTrainOptions {
    pub fn new(mri: PathBuf, split_from: PathBuf, non_mri: PathBuf, out: PathBuf) -> Self {
        Self {
            mri,
            split_from,
            non_mri,
            out,
            epochs: 30,
            batch_size: 32,
            learning_rate: 2e-3,
            seed: 17,
            mri_per_epoch: 1500,
            negative_share: 1.0,
            synthetic_share: 0.3,
            hold_out: Vec::new(),
            max_refused: 0.01,
            max_mri: None,
            not_mri: None,
            progress: false,
        }
    }
}

/// The source of a non-MRI file: its file-name prefix before `__` (the shared set's naming),
/// else the whole stem.
pub fn source_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.split_once("__") {
        Some((source, _)) => source.to_string(),
        None => name,
    }
}

/// A non-MRI image: its view, kind index and source.
struct Negative {
    view: GreyImage,
    kind: usize,
    source: String,
}

/// What a trained gate is, with the figures of its training.
pub struct TrainedGate {
    pub manifest: GateManifest,
    pub net: GateNet,
    /// Brain-MRI probability of each validation slice.
    pub validation_scores: Vec<f32>,
    pub seconds: f64,
}

/// One training item of an epoch.
#[derive(Clone, Copy)]
enum Item {
    Mri(usize),
    Real(usize),
    Synthetic(SyntheticKind, usize),
}

fn views_of(paths: &[PathBuf], what: &str) -> Result<Vec<GreyImage>> {
    let mut out = Vec::with_capacity(paths.len());
    for r in prepare_files(paths, None, |scan| gate_view(&scan.image)) {
        match r {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!("{what}: skipped: {}", e.sentence()),
        }
    }
    Ok(out)
}

/// Decodes the (file, kind, source) negatives into their views, in parallel; unreadable files
/// are skipped with a warning.
fn negatives_of(wanted: Vec<(PathBuf, usize, String)>) -> Vec<Negative> {
    let paths: Vec<&Path> = wanted.iter().map(|(p, _, _)| p.as_path()).collect();
    let views = prepare_files(&paths, None, |scan| gate_view(&scan.image));
    wanted
        .into_iter()
        .zip(views)
        .filter_map(|((_, kind, source), view)| match view {
            Ok(view) => Some(Negative { view, kind, source }),
            Err(e) => {
                tracing::warn!("non-MRI: skipped: {}", e.sentence());
                None
            }
        })
        .collect()
}

/// Trains a gate on `opts` (nothing is written; see [`train_gate`]).
pub fn fit_gate(opts: &GateTrainOptions) -> Result<TrainedGate> {
    let started = std::time::Instant::now();
    let (mri, split) = held_out_split(&opts.split_from, &opts.mri)?;
    let listed = match &opts.not_mri {
        Some(p) => NotMriList::read(p)?,
        None => NotMriList::default(),
    };
    let is_mri = |i: &usize| listed.kind_of(&mri, *i).is_none();
    let mut train_idx: Vec<usize> = split.train.iter().copied().filter(is_mri).collect();
    if let Some(max) = opts.max_mri {
        train_idx.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed));
        train_idx.truncate(max);
    }
    let validation_idx: Vec<usize> = split.validation.iter().copied().filter(is_mri).collect();
    let paths = |idx: &[usize]| -> Vec<PathBuf> {
        idx.iter().map(|&i| mri.samples[i].path.clone()).collect()
    };
    let positives = views_of(&paths(&train_idx), "MRI")?;
    let validation = views_of(&paths(&validation_idx), "MRI validation")?;
    let folder = ImageFolder::scan(&opts.non_mri)?;
    let mut kinds = vec![GateKind {
        id: BRAIN_MRI.into(),
        reason: String::new(),
    }];
    for c in &folder.classes {
        kinds.push(GateKind {
            id: c.clone(),
            reason: default_reason(c),
        });
    }
    kinds.push(GateKind {
        id: SYNTHETIC.into(),
        reason: default_reason(SYNTHETIC),
    });
    let synthetic_kind = kinds.len() - 1;
    let ct_kind = kinds
        .iter()
        .position(|k| k.id == "head_ct")
        .unwrap_or(synthetic_kind);
    // (file, kind, source) of every real negative: the non-MRI folder's, then the MRI folder's
    // own non-MRI files, as one more source of their kind (whatever split they fell in: they
    // were never brain MRI).
    let mut wanted: Vec<(PathBuf, usize, String)> = folder
        .samples
        .iter()
        .map(|s| (s.path.clone(), s.label + 1, source_of(&s.path)))
        .collect();
    let mri_source = format!(
        "{}-not-mri",
        mri.root
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    for i in 0..mri.samples.len() {
        let Some(kind) = listed.kind_of(&mri, i) else {
            continue;
        };
        let Some(k) = kinds.iter().position(|g| g.id == kind) else {
            return Err(Error::dataset(
                &opts.mri,
                DatasetProblem::BadNotMriList(format!(
                    "kind {kind:?} is not a category of {}",
                    opts.non_mri.display()
                )),
            ));
        };
        wanted.push((mri.samples[i].path.clone(), k, mri_source.clone()));
    }
    wanted.retain(|(_, _, source)| !opts.hold_out.contains(source));
    let negatives = negatives_of(wanted);
    let listed_in_mri = negatives.iter().filter(|n| n.source == mri_source).count();
    if positives.len() < 2 || validation.is_empty() || negatives.is_empty() {
        return Err(Error::dataset(&opts.non_mri, DatasetProblem::TooFewImages));
    }
    let weights = balanced_weights(&negatives);

    let device = Device::flex().autodiff();
    device.seed(opts.seed);
    let mut net = GateNet::new(kinds.len(), &device);
    let mut optim: ModuleOptimizer = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
        .init();
    let augmentation = gate_augmentation();
    let n_mri = opts.mri_per_epoch.clamp(1, positives.len());
    let n_neg = (opts.negative_share * n_mri as f32).round() as usize;
    let n_syn = (opts.synthetic_share * n_mri as f32).round() as usize;
    let class_weights = vec![1.0; kinds.len()];
    let total_steps = opts.epochs * (n_mri + n_neg + n_syn).div_ceil(opts.batch_size);
    let mut step = 0usize;
    for epoch in 0..opts.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ ((epoch as u64 + 1) * 0x9E37));
        let mut mri_order: Vec<usize> = (0..positives.len()).collect();
        mri_order.shuffle(&mut rng);
        let mut items: Vec<Item> = mri_order[..n_mri].iter().map(|&i| Item::Mri(i)).collect();
        let pick = WeightedIndex::new(&weights)
            .map_err(|_| Error::dataset(&opts.non_mri, DatasetProblem::TooFewImages))?;
        items.extend((0..n_neg).map(|_| Item::Real(pick.sample(&mut rng))));
        items.extend((0..n_syn).map(|_| {
            let kind = SyntheticKind::ALL[rng.random_range(0..SyntheticKind::ALL.len())];
            Item::Synthetic(kind, rng.random_range(0..positives.len()))
        }));
        items.shuffle(&mut rng);
        let (mut loss_sum, mut seen) = (0.0, 0usize);
        for (b, batch) in items.chunks(opts.batch_size).enumerate() {
            if batch.len() < 2 {
                continue; // batch norm needs two samples
            }
            let (views, labels): (Vec<GreyImage>, Vec<usize>) = batch
                .par_iter()
                .enumerate()
                .map(|(j, item)| {
                    let mut rng = sample_rng(opts.seed, epoch, b * opts.batch_size + j);
                    let (img, label) = match *item {
                        Item::Mri(i) => (positives[i].clone(), 0),
                        Item::Real(i) => (negatives[i].view.clone(), negatives[i].kind),
                        Item::Synthetic(kind, i) => {
                            let label = if kind == SyntheticKind::CtLookAlike {
                                ct_kind
                            } else {
                                synthetic_kind
                            };
                            (
                                synthetic(kind, GATE_SIDE, Some(&positives[i]), &mut rng),
                                label,
                            )
                        }
                    };
                    (augment(&augmentation, &img, &mut rng), label)
                })
                .unzip();
            let refs: Vec<&GreyImage> = views.iter().collect();
            let (x, tone) = gate_input(&refs, &device);
            let loss = classification_loss(net.forward(x, tone), &labels, &class_weights, 0.05);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(TrainingError::Diverged {
                    loss: value,
                    epoch: epoch + 1,
                    step: b,
                }
                .into());
            }
            let t = step as f64 / total_steps.max(1) as f64;
            let lr = opts.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            step += 1;
            loss_sum += value * batch.len() as f64;
            seen += batch.len();
        }
        if opts.progress {
            tracing::info!(
                "gate epoch {}/{}: loss {:.4}",
                epoch + 1,
                opts.epochs,
                loss_sum / seen.max(1) as f64
            );
        }
    }

    let net = net.valid();
    let mut sources: Vec<String> = negatives.iter().map(|n| n.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut non_mri_images = BTreeMap::new();
    for n in &negatives {
        *non_mri_images
            .entry(kinds[n.kind].id.clone())
            .or_insert(0usize) += 1;
    }
    let mut manifest = GateManifest {
        format: GATE_FORMAT.into(),
        format_version: GATE_FORMAT_VERSION,
        oncolens_version: env!("CARGO_PKG_VERSION").into(),
        name: format!("gate-cnn-{GATE_SIDE}px"),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        input_side: GATE_SIDE,
        kinds,
        threshold: 0.5,
        threshold_rule: String::new(),
        training: GateTraining {
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            learning_rate: opts.learning_rate,
            seed: opts.seed,
            mri_per_epoch: n_mri,
            negative_share: opts.negative_share,
            synthetic_share: opts.synthetic_share,
            augmentation: "random multiple of 90 degrees and flip, then rotation +-15 degrees, \
                           scale 0.8-1.2, shift 8 %, brightness 0.1, contrast 0.25, gamma 0.35"
                .into(),
        },
        data: GateData {
            mri_root: opts.mri.display().to_string(),
            mri_fingerprint: mri.fingerprint(),
            mri_train: positives.len(),
            mri_validation: validation.len(),
            non_mri_root: opts.non_mri.display().to_string(),
            non_mri_fingerprint: folder.fingerprint(),
            non_mri_images,
            sources,
            held_out_sources: opts.hold_out.clone(),
            not_mri_list: opts.not_mri.as_ref().map(|p| p.display().to_string()),
            not_mri_in_mri_folder: listed_in_mri,
        },
        validation_mri_refused: 0,
        weights_sha256: String::new(),
    };
    let loaded = LoadedGate::from_parts(manifest.clone(), net.clone(), String::new());
    let refs: Vec<&GreyImage> = validation.iter().collect();
    let scores: Vec<f32> = loaded.probabilities(&refs).iter().map(|p| p[0]).collect();
    let (threshold, refused) = fit_threshold(&scores, opts.max_refused);
    manifest.threshold = threshold;
    manifest.validation_mri_refused = refused;
    manifest.threshold_rule = format!(
        "refuse below the brain-MRI probability that refuses at most {:.1} % of the {} \
         validation slices of the classifier's split ({} refused)",
        100.0 * opts.max_refused,
        scores.len(),
        refused
    );
    Ok(TrainedGate {
        manifest,
        net,
        validation_scores: scores,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Trains a gate and writes it to `opts.out`.
pub fn train_gate(opts: &GateTrainOptions) -> Result<TrainedGate> {
    let mut trained = fit_gate(opts)?;
    save_gate(&opts.out, &trained.net, &mut trained.manifest)?;
    Ok(trained)
}

/// The largest threshold that refuses at most `max_share` of `scores` (refused: below it),
/// and how many it refuses.
pub fn fit_threshold(scores: &[f32], max_share: f64) -> (f32, usize) {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let allowed = (max_share * sorted.len() as f64).floor() as usize;
    let Some(&threshold) = sorted.get(allowed) else {
        return (0.0, 0);
    };
    let refused = sorted.iter().filter(|&&s| s < threshold).count();
    (threshold, refused)
}

/// Drawing weights: every category the same share, within it every source the same share.
fn balanced_weights(negatives: &[Negative]) -> Vec<f64> {
    let mut per_kind: BTreeMap<usize, BTreeMap<&str, usize>> = BTreeMap::new();
    for n in negatives {
        *per_kind
            .entry(n.kind)
            .or_default()
            .entry(n.source.as_str())
            .or_default() += 1;
    }
    negatives
        .iter()
        .map(|n| {
            let sources = &per_kind[&n.kind];
            1.0 / (per_kind.len() * sources.len() * sources[n.source.as_str()]) as f64
        })
        .collect()
}

fn gate_augmentation() -> Augmentation {
    Augmentation {
        rotation_degrees: 15.0,
        scale_range: [0.8, 1.2],
        shift_fraction: 0.08,
        horizontal_flip: true,
        brightness: 0.1,
        contrast: 0.25,
        gamma: 0.35,
        erase_probability: 0.0,
    }
}

/// A random multiple of 90 degrees and a flip, then the usual jitter.
fn augment(a: &Augmentation, img: &GreyImage, rng: &mut impl Rng) -> GreyImage {
    let turned = match rng.random_range(0..4) {
        1 => imageops::rotate90(img),
        2 => imageops::rotate180(img),
        3 => imageops::rotate270(img),
        _ => img.clone(),
    };
    let turned = if rng.random_bool(0.5) {
        imageops::flip_vertical(&turned)
    } else {
        turned
    };
    a.apply(&turned, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_the_prefix_before_the_double_underscore() {
        assert_eq!(
            source_of(Path::new("x/head_ct/Hemorrhage-CT__a_b.png")),
            "Hemorrhage-CT"
        );
        assert_eq!(source_of(Path::new("x/own/scan.png")), "scan.png");
    }

    #[test]
    fn the_threshold_refuses_at_most_the_asked_share() {
        let scores: Vec<f32> = (0..200).map(|i| i as f32 / 200.0).collect();
        let (t, refused) = fit_threshold(&scores, 0.01);
        assert_eq!(refused, 2);
        assert!((t - 0.01).abs() < 1e-6);
        assert_eq!(fit_threshold(&[], 0.01), (0.0, 0));
    }

    #[test]
    fn every_category_and_source_draws_the_same_share() {
        let neg = |kind, source: &str| Negative {
            view: GreyImage::new(1, 1),
            kind,
            source: source.into(),
        };
        // Kind 1: one source of 3 images; kind 2: sources of 1 and 4 images.
        let n = vec![
            neg(1, "a"),
            neg(1, "a"),
            neg(1, "a"),
            neg(2, "b"),
            neg(2, "c"),
            neg(2, "c"),
            neg(2, "c"),
            neg(2, "c"),
        ];
        let w = balanced_weights(&n);
        let share = |f: &dyn Fn(&Negative) -> bool| -> f64 {
            n.iter().zip(&w).filter(|(x, _)| f(x)).map(|(_, w)| w).sum()
        };
        assert!((share(&|x| x.kind == 1) - 0.5).abs() < 1e-9);
        assert!((share(&|x| x.source == "b") - 0.25).abs() < 1e-9);
        assert!((share(&|x| x.source == "c") - 0.25).abs() < 1e-9);
    }
}
