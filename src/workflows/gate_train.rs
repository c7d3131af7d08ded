//! Training the input gate with outlier exposure (`oncolens gate train`). The gate is a linear
//! head over mid-level features of a frozen ImageNet network (EfficientNet-Lite0's stem and
//! first 11 blocks; per-channel mean and standard deviation after blocks 5, 8 and 11): such
//! generic features tell an unseen CT collection from MRI far better than a network learnt from
//! 2,400 slices (docs/gate.md). Positives are the MRI slices of a classifier's train split;
//! negatives the images of a folder of non-MRI categories (one folder per category, the source
//! named by the file-name prefix before `__`) plus synthetic negatives. In the fit every
//! category weighs the same and, within a category, every source the same, so that one large
//! source (one knee, one CT collection) cannot stand for its category. Each image also enters
//! in augmented copies, turned by a random multiple of 90 degrees and flipped, then jittered in
//! geometry and tone: the shared head CTs all face the same way, and orientation must not be
//! what tells CT from MRI.
//!
//! The trunk runs on the int8 engine with ranges calibrated here, and the head is fitted on
//! those int8 features: what inference computes. The threshold on the brain-MRI probability is
//! the quantile of the validation split's slices that refuses at most the asked share of them
//! (1 % by default).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::imageops;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::core::error::{DatasetProblem, Error, Result};
use crate::data::folder::ImageFolder;
use crate::data::loader::prepare_files;
use crate::data::not_mri::NotMriList;
use crate::data::split::held_out_split;
use crate::imaging::GreyImage;
use crate::imaging::augment::{Augmentation, sample_rng};
use crate::imaging::gate_view::{GATE_SIDE, gate_view};
use crate::imaging::synthetic::{SyntheticKind, synthetic};
use crate::model::efficientnet::EfficientNetTrunk;
use crate::modelfile::gate::{
    self, BRAIN_MRI, GATE_FORMAT, GATE_FORMAT_VERSION, GateBackbone, GateData, GateHead, GateKind,
    GateManifest, GateTraining, default_reason, save_gate,
};
use crate::runtime::gate::GateFeatures;
use crate::workflows::import::load_efficientnet_lite0;

/// Blocks of EfficientNet-Lite0 the trunk keeps, and the blocks it reads (ends of stages 3, 4
/// and 5). Measured in docs/gate.md: these mid-level taps refused 96 % of an unseen CT
/// collection; the network's last features, 69 %.
pub const TRUNK_BLOCKS: usize = 11;
pub const TRUNK_TAPS: [usize; 3] = [5, 8, 11];
/// ImageNet's mean and standard deviation, averaged over its three channels (a grey view feeds
/// all three).
pub const IMAGENET_GREY_MEAN: f32 = 0.449;
pub const IMAGENET_GREY_STD: f32 = 0.226;
/// Views the int8 ranges are calibrated on (half MRI slices, half negatives).
const CALIBRATION_VIEWS: usize = 96;

/// Where the gate's frozen trunk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateBackboneSource {
    /// The trunk of the gate compiled into the binary.
    Bundled,
    /// The trunk of a gate directory.
    Gate(PathBuf),
    /// EfficientNet-Lite0 ImageNet weights (`scripts/fetch-pretrained.sh`).
    ImagenetWeights(PathBuf),
}

impl GateBackboneSource {
    /// A `.pth` file is ImageNet weights, a directory a gate.
    pub fn from_path(path: &Path) -> Self {
        if path.is_dir() {
            Self::Gate(path.to_path_buf())
        } else {
            Self::ImagenetWeights(path.to_path_buf())
        }
    }

    /// The trunk, its taps and input statistics, and a description.
    fn load(&self, device: &Device) -> Result<(EfficientNetTrunk, Vec<usize>, f32, f32, String)> {
        let reuse = |(m, trunk): (GateManifest, EfficientNetTrunk)| {
            let b = m.backbone;
            (trunk, b.taps, b.input_mean, b.input_std, b.name)
        };
        Ok(match self {
            Self::Bundled => reuse(gate::load_bundled_gate(device)?),
            Self::Gate(dir) => reuse(gate::load_gate(dir, None, device)?),
            Self::ImagenetWeights(pth) => {
                let (net, _, _) = load_efficientnet_lite0(pth, device)?;
                (
                    net.trunk(TRUNK_BLOCKS),
                    TRUNK_TAPS.to_vec(),
                    IMAGENET_GREY_MEAN,
                    IMAGENET_GREY_STD,
                    format!(
                        "EfficientNet-Lite0 with ImageNet weights ({}), stem and blocks 1-{TRUNK_BLOCKS}, frozen",
                        pth.file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                    ),
                )
            }
        })
    }
}

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
    pub backbone: GateBackboneSource,
    pub seed: u64,
    /// Augmented copies of every image, beside the image itself.
    pub augmented_copies: usize,
    /// Synthetic negatives, as a share of the MRI slices.
    pub synthetic_share: f32,
    /// L2 penalty of the head.
    pub l2: f32,
    /// Gradient steps of the head's fit.
    pub iterations: usize,
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
            backbone: GateBackboneSource::Bundled,
            seed: 17,
            // Both off: measured on held-out sources (docs/gate.md), augmented copies and
            // synthetic negatives each made the gate refuse less of what it never saw.
            augmented_copies: 0,
            synthetic_share: 0.0,
            l2: 1e-3,
            iterations: 400,
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
    pub trunk: EfficientNetTrunk,
    /// Brain-MRI probability of each validation slice.
    pub validation_scores: Vec<f32>,
    pub seconds: f64,
}

/// One image of the head's fit: a view (original, augmented copy or synthetic), what it is,
/// and the group it is balanced in.
#[derive(Clone, Copy)]
enum Item {
    /// Positive `i`, copy `c` (0: the original).
    Mri(usize, usize),
    /// Negative `i`, copy `c`.
    Real(usize, usize),
    /// A synthetic negative of this kind made from positive `i`.
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
    let device = Device::flex();
    let (trunk, taps, input_mean, input_std, backbone_name) = opts.backbone.load(&device)?;
    let mut features = GateFeatures::uncalibrated(&trunk, &taps, input_mean, input_std)?;

    // int8 ranges from MRI slices and negatives alike, picked evenly.
    let every = |n: usize| (n / (CALIBRATION_VIEWS / 2)).max(1);
    let mut calibration_views: Vec<&GreyImage> = positives
        .iter()
        .step_by(every(positives.len()))
        .take(CALIBRATION_VIEWS / 2)
        .collect();
    calibration_views.extend(
        negatives
            .iter()
            .step_by(every(negatives.len()))
            .take(CALIBRATION_VIEWS / 2)
            .map(|n| &n.view),
    );
    let int8 = features.calibrate(&calibration_views)?;

    let mut items: Vec<Item> = Vec::new();
    for c in 0..=opts.augmented_copies {
        items.extend((0..positives.len()).map(|i| Item::Mri(i, c)));
        items.extend((0..negatives.len()).map(|i| Item::Real(i, c)));
    }
    let n_syn = (opts.synthetic_share * positives.len() as f32).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    items.extend((0..n_syn).map(|_| {
        let kind = SyntheticKind::ALL[rng.random_range(0..SyntheticKind::ALL.len())];
        Item::Synthetic(kind, rng.random_range(0..positives.len()))
    }));
    let augmentation = gate_augmentation();
    if opts.progress {
        tracing::info!("gate: features of {} views", items.len());
    }
    // (features, kind, balancing group) per item; views are made and dropped one at a time.
    let rows: Vec<(Vec<f32>, usize, (usize, String))> = items
        .par_iter()
        .enumerate()
        .map(|(j, item)| {
            let mut rng = sample_rng(opts.seed, 1, j);
            let (view, kind, group) = match *item {
                Item::Mri(i, c) => (
                    copy(&positives[i], c, &augmentation, &mut rng),
                    0,
                    (0, String::new()),
                ),
                Item::Real(i, c) => {
                    let n = &negatives[i];
                    (
                        copy(&n.view, c, &augmentation, &mut rng),
                        n.kind,
                        (n.kind, n.source.clone()),
                    )
                }
                Item::Synthetic(kind, i) => {
                    let label = if kind == SyntheticKind::CtLookAlike {
                        ct_kind
                    } else {
                        synthetic_kind
                    };
                    let img = synthetic(kind, GATE_SIDE, Some(&positives[i]), &mut rng);
                    (
                        Cow::Owned(augment(&augmentation, &img, &mut rng)),
                        label,
                        (label, SYNTHETIC.to_string()),
                    )
                }
            };
            let f = features.of(&[&view])?.pop().unwrap_or_default();
            Ok((f, kind, group))
        })
        .collect::<Result<_>>()?;
    let weights = item_weights(&rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>());
    let x: Vec<&[f32]> = rows.iter().map(|r| r.0.as_slice()).collect();
    let y: Vec<usize> = rows.iter().map(|r| r.1).collect();
    let (mut head, final_loss) = fit_head(&x, &y, &weights, kinds.len(), opts.l2, opts.iterations);
    let not_mri: Vec<usize> = y.iter().map(|&k| usize::from(k != 0)).collect();
    let (screen, _) = fit_head(&x, &not_mri, &weights, 2, opts.l2, opts.iterations);
    head.screen_weights = screen.weights;
    head.screen_bias = screen.bias;
    if opts.progress {
        tracing::info!("gate: head fitted, weighted loss {final_loss:.4}");
    }

    let mut sources: Vec<String> = negatives.iter().map(|n| n.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut non_mri_images = BTreeMap::new();
    for n in &negatives {
        *non_mri_images
            .entry(kinds[n.kind].id.clone())
            .or_insert(0usize) += 1;
    }
    let refs: Vec<&GreyImage> = validation.iter().collect();
    let scores: Vec<f32> = features
        .of(&refs)?
        .iter()
        .map(|f| head.probabilities(f)[0])
        .collect();
    let (threshold, refused) = fit_threshold(&scores, opts.max_refused);
    let manifest = GateManifest {
        format: GATE_FORMAT.into(),
        format_version: GATE_FORMAT_VERSION,
        oncolens_version: env!("CARGO_PKG_VERSION").into(),
        name: format!(
            "gate-efficientnet-lite0-trunk{}-{GATE_SIDE}px",
            trunk.block_count()
        ),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        input_side: GATE_SIDE,
        backbone: GateBackbone {
            name: backbone_name,
            blocks: trunk.block_count(),
            taps,
            input_mean,
            input_std,
            int8,
        },
        head,
        kinds,
        threshold,
        threshold_rule: format!(
            "refuse below the brain-MRI probability that refuses at most {:.1} % of the {} \
             validation slices of the classifier's split ({} refused)",
            100.0 * opts.max_refused,
            scores.len(),
            refused
        ),
        training: GateTraining {
            seed: opts.seed,
            augmented_copies: opts.augmented_copies,
            synthetic_share: opts.synthetic_share,
            l2: opts.l2,
            iterations: opts.iterations,
            final_loss,
            augmentation: augmentation_in_words(opts),
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
        validation_mri_refused: refused,
        weights_sha256: String::new(),
    };
    Ok(TrainedGate {
        manifest,
        trunk,
        validation_scores: scores,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Copy `c` of a view: the view itself for 0, else an augmented one.
fn copy<'a>(
    view: &'a GreyImage,
    c: usize,
    a: &Augmentation,
    rng: &mut impl Rng,
) -> Cow<'a, GreyImage> {
    if c == 0 {
        Cow::Borrowed(view)
    } else {
        Cow::Owned(augment(a, view, rng))
    }
}

/// What was augmented, and how, for the manifest: the copies and the synthetic negatives are
/// augmented, the originals never.
fn augmentation_in_words(opts: &GateTrainOptions) -> String {
    const HOW: &str = "turned by a random multiple of 90 degrees and flipped, then rotation \
                       +-15 degrees, scale 0.8-1.2, shift 8 %, brightness 0.1, contrast 0.25, \
                       gamma 0.35";
    match (opts.augmented_copies > 0, opts.synthetic_share > 0.0) {
        (true, _) => format!("copies {HOW}"),
        (false, true) => format!("synthetic negatives only, {HOW}"),
        (false, false) => "none: every image once, as it is".into(),
    }
}

/// Fit weights: the MRI slices (group kind 0) weigh as much as all negatives together; among
/// the negatives every kind the same, within a kind every source the same.
fn item_weights(groups: &[(usize, String)]) -> Vec<f32> {
    let mut per_kind: BTreeMap<usize, BTreeMap<&str, usize>> = BTreeMap::new();
    for (kind, source) in groups {
        *per_kind
            .entry(*kind)
            .or_default()
            .entry(source.as_str())
            .or_default() += 1;
    }
    let negative_kinds = per_kind.keys().filter(|&&k| k != 0).count().max(1);
    groups
        .iter()
        .map(|(kind, source)| {
            let sources = &per_kind[kind];
            let share = if *kind == 0 {
                1.0
            } else {
                1.0 / negative_kinds as f64
            };
            (share / (sources.len() * sources[source.as_str()]) as f64) as f32
        })
        .collect()
}

/// Multinomial logistic regression by full-batch gradient descent on standardised features,
/// weighted; returns the head and its final weighted cross-entropy.
fn fit_head(
    x: &[&[f32]],
    y: &[usize],
    weight: &[f32],
    kinds: usize,
    l2: f32,
    iterations: usize,
) -> (GateHead, f32) {
    let d = x.first().map_or(0, |r| r.len());
    let n = x.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for r in x {
        for ((m, q), &v) in mean.iter_mut().zip(sq.iter_mut()).zip(*r) {
            *m += f64::from(v);
            *q += f64::from(v) * f64::from(v);
        }
    }
    let feature_mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
    let feature_std: Vec<f32> = mean
        .iter()
        .zip(&sq)
        .map(|(m, q)| ((q / n - (m / n) * (m / n)).max(0.0).sqrt() as f32).max(1e-6))
        .collect();
    let z: Vec<Vec<f32>> = x
        .par_iter()
        .map(|r| {
            r.iter()
                .zip(&feature_mean)
                .zip(&feature_std)
                .map(|((v, m), s)| (v - m) / s)
                .collect()
        })
        .collect();
    let total: f32 = weight.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut w = vec![vec![0f32; d]; kinds];
    let mut b = vec![0f32; kinds];
    let lr = 0.5f32;
    let mut loss = 0f32;
    for _ in 0..iterations {
        // Per chunk of samples: gradient of weights and bias, and the loss.
        let (gw, gb, l) = z
            .par_chunks(256)
            .zip(y.par_chunks(256))
            .zip(weight.par_chunks(256))
            .map(|((zs, ys), ws)| {
                let mut gw = vec![vec![0f32; d]; kinds];
                let mut gb = vec![0f32; kinds];
                let mut l = 0f32;
                for ((zi, &yi), &wi) in zs.iter().zip(ys).zip(ws) {
                    let logits: Vec<f32> = w
                        .iter()
                        .zip(&b)
                        .map(|(wk, bk)| wk.iter().zip(zi).map(|(a, c)| a * c).sum::<f32>() + bk)
                        .collect();
                    let p = crate::core::numeric::softmax_with_temperature(&logits, 1.0);
                    l -= wi * p[yi].max(1e-12).ln();
                    for k in 0..kinds {
                        let g = (p[k] - f32::from(u8::from(k == yi))) * wi / total;
                        gb[k] += g;
                        for (gj, zj) in gw[k].iter_mut().zip(zi) {
                            *gj += g * zj;
                        }
                    }
                }
                (gw, gb, l)
            })
            .reduce(
                || (vec![vec![0f32; d]; kinds], vec![0f32; kinds], 0f32),
                |(mut a, mut ab, al), (c, cb, cl)| {
                    for (ak, ck) in a.iter_mut().zip(&c) {
                        ak.iter_mut().zip(ck).for_each(|(x, y)| *x += y);
                    }
                    ab.iter_mut().zip(&cb).for_each(|(x, y)| *x += y);
                    (a, ab, al + cl)
                },
            );
        for (wk, gk) in w.iter_mut().zip(&gw) {
            for (wj, gj) in wk.iter_mut().zip(gk) {
                *wj -= lr * (gj + l2 * *wj);
            }
        }
        b.iter_mut().zip(&gb).for_each(|(bk, g)| *bk -= lr * g);
        loss = l / total;
    }
    (
        GateHead {
            feature_mean,
            feature_std,
            weights: w,
            bias: b,
            screen_weights: Vec::new(),
            screen_bias: Vec::new(),
        },
        loss,
    )
}

/// Trains a gate and writes it to `opts.out`.
pub fn train_gate(opts: &GateTrainOptions) -> Result<TrainedGate> {
    let mut trained = fit_gate(opts)?;
    save_gate(&opts.out, &trained.trunk, &mut trained.manifest)?;
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
        ..Augmentation::default()
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
    fn the_manifest_says_what_was_augmented() {
        let mut o = GateTrainOptions::new("m".into(), "s".into(), "n".into(), "o".into());
        assert!(augmentation_in_words(&o).starts_with("none"));
        o.synthetic_share = 0.3;
        assert!(augmentation_in_words(&o).starts_with("synthetic negatives only"));
        o.augmented_copies = 1;
        assert!(augmentation_in_words(&o).starts_with("copies turned"));
    }

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
    fn mri_weighs_as_much_as_all_negatives_and_every_kind_and_source_alike() {
        let g = |kind, source: &str| (kind, source.to_string());
        // MRI: 4 slices; kind 1: one source of 3 images; kind 2: sources of 1 and 4 images.
        let groups = vec![
            g(0, ""),
            g(0, ""),
            g(0, ""),
            g(0, ""),
            g(1, "a"),
            g(1, "a"),
            g(1, "a"),
            g(2, "b"),
            g(2, "c"),
            g(2, "c"),
            g(2, "c"),
            g(2, "c"),
        ];
        let w = item_weights(&groups);
        let share = |f: &dyn Fn(&(usize, String)) -> bool| -> f32 {
            groups
                .iter()
                .zip(&w)
                .filter(|(x, _)| f(x))
                .map(|(_, w)| w)
                .sum()
        };
        assert!((share(&|x| x.0 == 0) - 1.0).abs() < 1e-6);
        assert!((share(&|x| x.0 == 1) - 0.5).abs() < 1e-6);
        assert!((share(&|x| x.1 == "b") - 0.25).abs() < 1e-6);
        assert!((share(&|x| x.1 == "c") - 0.25).abs() < 1e-6);
    }

    #[test]
    fn the_head_learns_a_separable_problem() {
        // Kind k sits at feature k = 3; the others at 0.
        let rows: Vec<Vec<f32>> = (0..60)
            .map(|i| {
                let k = i % 3;
                (0..3)
                    .map(|j| if j == k { 3.0 } else { 0.0 } + (i as f32 * 0.37).sin() * 0.1)
                    .collect()
            })
            .collect();
        let x: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let y: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let (head, loss) = fit_head(&x, &y, &[1.0; 60], 3, 1e-3, 200);
        assert!(loss < 0.2, "loss {loss}");
        // The screen: kind 0 against the rest.
        let rest: Vec<usize> = y.iter().map(|&k| usize::from(k != 0)).collect();
        let (screen, _) = fit_head(&x, &rest, &[1.0; 60], 2, 1e-3, 200);
        let mut head = head;
        head.screen_weights = screen.weights;
        head.screen_bias = screen.bias;
        for (r, &k) in rows.iter().zip(&y) {
            let p = head.probabilities(r);
            assert!(p[k] > 0.7, "{p:?} for kind {k}");
        }
    }
}
