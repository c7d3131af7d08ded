//! Training: leak-free split, cached pre-processing, augmentation, class-balanced loss, Adam with
//! a learning-rate schedule, early stopping on validation loss keeping the best weights,
//! `--resume`, and a usable checkpoint after Ctrl-C.
//!
//! Output directory:
//! - `model.json` + `weights.bpk`: the best model so far (a complete, loadable model file);
//! - `checkpoint/`: last weights, optimizer state and loop state, for `--resume`;
//! - `history.csv`, `history.json`, `accuracy.png`, `loss.png`: per-epoch metrics and curves;
//! - `split.json`: which files went to validation.

pub mod finetune;
pub mod history;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, decay::WeightDecayConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::audit::{NearDuplicateCriteria, near_duplicate_links};
use super::calibrate::{FitOptions, calibrate_saved};
use crate::core::error::{DatasetProblem, Detail, Error, ModelFileProblem, Result, TrainingError};
use crate::core::files::write_json_atomic;
use crate::core::numeric::argmax;
use crate::data::folder::{ImageFolder, display_name};
use crate::data::loader::{
    AugmentPlan, PreparedImages, batch_input, fit_standardization, prepare_samples,
};
use crate::data::split::{SPLIT_FILE, Split, SplitFile, group_ids, stratified_group_split};
use crate::imaging::{GreyImage, Preprocessing};
use crate::metrics::classification::{self, Metrics};
use crate::model::{Architecture, Classifier, ModelSpec};
use crate::modelfile::bundle;
use crate::modelfile::manifest::{FORMAT, FORMAT_VERSION};
use crate::modelfile::{
    Balance, ClassInfo, DataProvenance, Manifest, TrainConfig, ValidationSummary,
};
use crate::runtime::{probabilities, rows};
use history::EpochRecord;

/// The training settings, as the model file records them.
pub use crate::modelfile::training as config;

/// What to train on and where to write.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub config: TrainConfig,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Show progress bars.
    pub progress: bool,
    /// Keep near-duplicates (as the data audit finds them) on one side of the validation split;
    /// byte-identical copies are always kept together.
    pub near_duplicates: Option<NearDuplicateCriteria>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub interrupted: bool,
    pub model_dir: PathBuf,
    pub skipped: Vec<String>,
}

/// Loop state saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    config: TrainConfig,
    data_fingerprint: String,
    preprocessing: Preprocessing,
    epochs_done: usize,
    history: Vec<EpochRecord>,
    best_val_loss: f64,
    best_epoch: usize,
    epochs_since_best: usize,
}

impl LoopState {
    /// Adds a finished epoch; true when its validation loss is the lowest so far.
    fn push(&mut self, record: EpochRecord) -> bool {
        let best = record.val_loss < self.best_val_loss;
        if best {
            self.best_val_loss = record.val_loss;
            self.best_epoch = record.epoch;
            self.epochs_since_best = 0;
        } else {
            self.epochs_since_best += 1;
        }
        self.history.push(record);
        self.epochs_done += 1;
        best
    }
}

const CHECKPOINT_DIR: &str = "checkpoint";

/// Cross-entropy with per-class weights and label smoothing, averaged by the weights.
pub fn classification_loss(
    logits: Tensor<2>,
    labels: &[usize],
    class_weights: &[f32],
    smoothing: f32,
) -> Tensor<1> {
    let [n, k] = logits.dims();
    let device = logits.device();
    let off = smoothing / k as f32;
    let mut targets = vec![off; n * k];
    let mut weights = Vec::with_capacity(n);
    for (i, &l) in labels.iter().enumerate() {
        targets[i * k + l] += 1.0 - smoothing;
        weights.push(class_weights.get(l).copied().unwrap_or(1.0));
    }
    let total: f32 = weights.iter().sum::<f32>().max(f32::EPSILON);
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [n, k]), &device);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), &device);
    let per_sample: Tensor<1> = (log_softmax(logits, 1) * targets)
        .sum_dim(1)
        .squeeze_dim(1)
        .neg();
    (per_sample * weights).sum().div_scalar(total)
}

/// Inverse-frequency class weights normalised to mean 1 over samples.
pub fn inverse_frequency_weights(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l] += 1;
    }
    let n = labels.len() as f32;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (classes as f32 * c as f32)
            }
        })
        .collect()
}

fn progress_bar(show: bool, len: u64, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Keeps at most `max` samples per class of `indices`, chosen by seed.
fn limit_per_class(indices: &[usize], folder: &ImageFolder, max: usize, seed: u64) -> Vec<usize> {
    let mut shuffled = indices.to_vec();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED));
    let mut taken = vec![0usize; folder.classes.len()];
    let mut out: Vec<usize> = shuffled
        .into_iter()
        .filter(|&i| {
            let l = folder.samples[i].label;
            taken[l] += 1;
            taken[l] <= max
        })
        .collect();
    out.sort_unstable();
    out
}

/// Runs training as configured. `stop` (set by Ctrl-C) ends the run after the current batch and
/// leaves a usable checkpoint.
pub fn train(opts: &TrainOptions, stop: &AtomicBool) -> Result<TrainReport> {
    let cfg = &opts.config;
    cfg.validate()?;
    let folder = ImageFolder::scan(&opts.data)?;
    let k = folder.classes.len();
    if k < 2 {
        return Err(Error::dataset(&opts.data, DatasetProblem::TooFewClasses));
    }
    let spec = ModelSpec {
        architecture: cfg.architecture,
        in_channels: cfg.in_channels,
        input_size: cfg.input_size,
        num_classes: k,
        dropout: cfg.dropout,
    };
    spec.validate()?;
    let fingerprint = folder.fingerprint();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::write(&opts.out, e))?;
    let ckpt_dir = opts.out.join(CHECKPOINT_DIR);
    let resumed = if opts.resume {
        Some(read_checkpoint_state(&ckpt_dir, cfg, &fingerprint)?)
    } else {
        None
    };

    let (split, links) = split_folder(opts, &folder)?;
    let data = prepare_data(opts, &folder, &split, resumed.as_ref())?;

    let base_device = Device::flex();
    let device = base_device.clone().autodiff();
    let (mut model, mut optim, mut state) =
        start_or_resume(opts, &spec, &data, &fingerprint, resumed, &device)?;
    state.config = cfg.clone();
    let template = manifest_template(opts, &folder, &spec, &data, &fingerprint, links);

    let class_weights = match cfg.balance {
        Balance::WeightedLoss => inverse_frequency_weights(&data.train.labels, k),
        Balance::Sampling | Balance::None => vec![1.0; k],
    };
    let steps_per_epoch = data.train.images.len().div_ceil(cfg.batch_size);
    let mut interrupted = false;
    let mut stopped_early = false;
    while state.epochs_done < cfg.epochs {
        let epoch = state.epochs_done; // zero-based
        let pass = EpochPass {
            cfg,
            spec: &spec,
            data: &data,
            class_weights: &class_weights,
            steps_per_epoch,
            progress: opts.progress,
        };
        let (trained, outcome) = pass.run(epoch, model, &mut optim, &device, stop)?;
        model = trained;
        if outcome.interrupted {
            interrupted = true;
            save_checkpoint(&ckpt_dir, &model, &optim, &state)?;
            break;
        }
        // Validation on the plain (non-autodiff) model.
        let eval_model = model.valid();
        let (val_loss, val_metrics) = validate(&eval_model, &data, &folder, &base_device);
        let record = outcome.record(epoch, val_loss, &val_metrics);
        tracing::info!("{}", record.line());
        if state.push(record) {
            let mut manifest = template.clone();
            manifest.validation = Some(ValidationSummary {
                epoch: epoch + 1,
                loss: val_loss,
                accuracy: val_metrics.accuracy,
                macro_f1: val_metrics.macro_avg.f1,
            });
            bundle::save(&opts.out, &eval_model, &mut manifest)?;
        }
        save_checkpoint(&ckpt_dir, &model, &optim, &state)?;
        history::write(&opts.out, &state.history)?;
        if state.epochs_since_best >= cfg.patience {
            stopped_early = true;
            tracing::info!(
                "early stop: no lower validation loss for {} epochs; best epoch {}",
                cfg.patience,
                state.best_epoch
            );
            break;
        }
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    history::write(&opts.out, &state.history)?;
    if interrupted {
        tracing::warn!(
            "interrupted: the best weights so far are saved but not calibrated; `oncolens calibrate` fits the temperature and input check"
        );
    } else if state.best_epoch > 0 {
        calibrate_best(opts, &folder, &split)?;
    }
    Ok(TrainReport {
        history: state.history,
        best_epoch: state.best_epoch,
        stopped_early,
        interrupted,
        model_dir: opts.out.clone(),
        skipped: data.skipped,
    })
}

/// A fresh network (ImageNet weights when asked) with a new optimizer and loop state, or the
/// checkpoint's weights, optimizer state and loop state for `--resume`.
fn start_or_resume(
    opts: &TrainOptions,
    spec: &ModelSpec,
    data: &TrainingData,
    fingerprint: &str,
    resumed: Option<LoopState>,
    device: &Device,
) -> Result<(Classifier, ModuleOptimizer, LoopState)> {
    let cfg = &opts.config;
    let k = spec.num_classes;
    let ckpt_dir = opts.out.join(CHECKPOINT_DIR);
    device.seed(cfg.seed);
    let mut model = match &cfg.pretrained {
        Some(weights) => Classifier::EfficientnetLite0(
            super::import::pretrained_efficientnet_lite0(weights, k, cfg.dropout, device)?,
        ),
        None => Classifier::init(spec, device),
    };
    let mut optim = optimizer(cfg);
    let state = match resumed {
        Some(state) => {
            model = model
                .try_load_file(ckpt_dir.join("last.bpk"))
                .map_err(|e| {
                    Error::model(
                        &ckpt_dir,
                        ModelFileProblem::Checkpoint(Detail::of(e).into()),
                    )
                })?;
            optim = optim.load(ckpt_dir.join("optimizer.bpk")).map_err(|e| {
                Error::model(
                    &ckpt_dir,
                    ModelFileProblem::Checkpoint(Detail::of(e).into()),
                )
            })?;
            device.seed(cfg.seed.wrapping_add(state.epochs_done as u64));
            state
        }
        None => LoopState {
            config: cfg.clone(),
            data_fingerprint: fingerprint.to_string(),
            preprocessing: data.pre.clone(),
            epochs_done: 0,
            history: Vec::new(),
            best_val_loss: f64::MAX, // JSON has no infinity
            best_epoch: 0,
            epochs_since_best: 0,
        },
    };
    Ok((model, optim, state))
}

/// The loop state of the checkpoint in `dir`, refused unless it was trained on the same data
/// with the same settings (only the number of epochs may change).
fn read_checkpoint_state(dir: &Path, cfg: &TrainConfig, fingerprint: &str) -> Result<LoopState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: LoopState = serde_json::from_str(&text)
        .map_err(|e| Error::model(dir, ModelFileProblem::Checkpoint(e.into())))?;
    if state.data_fingerprint != fingerprint {
        return Err(TrainingError::ResumeOtherData.into());
    }
    let mut comparable = state.config.clone();
    comparable.epochs = cfg.epochs;
    if &comparable != cfg {
        return Err(TrainingError::ResumeOtherSettings.into());
    }
    Ok(state)
}

/// The leak-free validation split (then the optional per-class limit), written to
/// `split.json`; also the number of near-duplicate links that kept groups together.
fn split_folder(opts: &TrainOptions, folder: &ImageFolder) -> Result<(Split, usize)> {
    let cfg = &opts.config;
    let labels: Vec<usize> = folder.samples.iter().map(|s| s.label).collect();
    let links = match opts.near_duplicates {
        Some(criteria) => near_duplicate_links(folder, criteria),
        None => Vec::new(),
    };
    let groups = group_ids(folder, &links);
    let mut split = stratified_group_split(&labels, &groups, cfg.validation_fraction, cfg.seed);
    if let Some(max) = cfg.max_per_class {
        let val_max = ((max as f64) * cfg.validation_fraction / (1.0 - cfg.validation_fraction))
            .ceil() as usize;
        split = Split {
            train: limit_per_class(&split.train, folder, max, cfg.seed),
            validation: limit_per_class(&split.validation, folder, val_max.max(1), cfg.seed),
        };
    }
    SplitFile::of(folder, &split).write(&opts.out.join(SPLIT_FILE))?;
    Ok((split, links.len()))
}

/// The prepared images of both sides of the split and the pre-processing that made them.
struct TrainingData {
    train: PreparedImages,
    validation: PreparedImages,
    pre: Preprocessing,
    /// Unreadable files, as sentences.
    skipped: Vec<String>,
}

/// Pre-processes every image once (augmentation works on the cached prepared images) and fits
/// the standardisation on the training side (or takes the checkpoint's).
fn prepare_data(
    opts: &TrainOptions,
    folder: &ImageFolder,
    split: &Split,
    resumed: Option<&LoopState>,
) -> Result<TrainingData> {
    let cfg = &opts.config;
    let mut pre = Preprocessing::new(cfg.input_size as u32);
    if cfg.clahe {
        pre.clahe = Some(Default::default());
    }
    if cfg.denoise {
        pre.denoise_sigma = Some(0.8);
    }
    let bar = progress_bar(
        opts.progress,
        (split.train.len() + split.validation.len()) as u64,
        "preparing".into(),
    );
    let train = prepare_samples(folder, &split.train, &pre, Some(&bar));
    let validation = prepare_samples(folder, &split.validation, &pre, Some(&bar));
    bar.finish_and_clear();
    let skipped: Vec<String> = train
        .skipped
        .iter()
        .chain(&validation.skipped)
        .cloned()
        .collect();
    if train.images.is_empty() || validation.images.is_empty() {
        return Err(Error::dataset(&opts.data, DatasetProblem::TooFewImages));
    }
    match resumed {
        Some(state) => pre = state.preprocessing.clone(),
        None => {
            let (mean, std) = fit_standardization(&train.images);
            pre.mean = mean;
            pre.std = std;
        }
    }
    Ok(TrainingData {
        train,
        validation,
        pre,
        skipped,
    })
}

fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    AdamConfig::new()
        .with_weight_decay(
            (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)),
        )
        .with_grad_clipping(cfg.grad_clip_norm.map(GradientClippingConfig::Norm))
        .init()
}

/// Everything of the model file but the validation figures of the epoch that is saved.
fn manifest_template(
    opts: &TrainOptions,
    folder: &ImageFolder,
    spec: &ModelSpec,
    data: &TrainingData,
    fingerprint: &str,
    links: usize,
) -> Manifest {
    let provenance = DataProvenance {
        root: opts.data.display().to_string(),
        fingerprint: fingerprint.to_string(),
        train_images: data.train.images.len(),
        validation_images: data.validation.images.len(),
        skipped: data.skipped.clone(),
        class_counts: folder.class_counts(),
        split_grouping: match opts.near_duplicates {
            Some(c) => format!(
                "byte-identical files and near-duplicates (pHash distance <= {}, correlation >= {:.2}; {links} links) kept on one side",
                c.max_distance, c.min_correlation,
            ),
            None => "byte-identical files kept on one side".into(),
        },
    };
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        oncolens_version: env!("CARGO_PKG_VERSION").into(),
        name: format!("{}-{}px", spec.architecture.name(), spec.input_size),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        spec: spec.clone(),
        classes: folder
            .classes
            .iter()
            .map(|id| ClassInfo {
                id: id.clone(),
                display: display_name(id),
            })
            .collect(),
        preprocessing: data.pre.clone(),
        training: opts.config.clone(),
        data: provenance,
        validation: None,
        // Until calibration fits one, flag answers no more likely than a coin toss between the
        // top two classes.
        uncertainty_threshold: 0.5,
        trust: None,
        int8: None,
        gate: None,
        parent: None,
        feedback: None,
        weights_sha256: String::new(),
    }
}

/// One pass over the training images.
struct EpochPass<'a> {
    cfg: &'a TrainConfig,
    spec: &'a ModelSpec,
    data: &'a TrainingData,
    class_weights: &'a [f32],
    steps_per_epoch: usize,
    progress: bool,
}

/// What an epoch's pass measured.
struct EpochOutcome {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    learning_rate: f64,
    seconds: f64,
    interrupted: bool,
}

impl EpochOutcome {
    /// The history row of zero-based `epoch` with its validation figures.
    fn record(&self, epoch: usize, val_loss: f64, val: &Metrics) -> EpochRecord {
        self.record_figures(epoch, val_loss, val.accuracy, val.macro_avg.f1)
    }

    /// [`Self::record`] from the validation figures themselves.
    fn record_figures(
        &self,
        epoch: usize,
        val_loss: f64,
        val_accuracy: f64,
        val_macro_f1: f64,
    ) -> EpochRecord {
        EpochRecord {
            epoch: epoch + 1,
            learning_rate: self.learning_rate,
            train_loss: self.loss_sum / self.seen.max(1) as f64,
            train_accuracy: self.correct as f64 / self.seen.max(1) as f64,
            val_loss,
            val_accuracy,
            val_macro_f1,
            seconds: self.seconds,
            images_per_second: self.seen as f64 / self.seconds.max(1e-9),
        }
    }
}

impl EpochPass<'_> {
    fn run(
        &self,
        epoch: usize,
        mut model: Classifier,
        optim: &mut ModuleOptimizer,
        device: &Device,
        stop: &AtomicBool,
    ) -> Result<(Classifier, EpochOutcome)> {
        let (cfg, set) = (self.cfg, &self.data.train);
        let k = self.class_weights.len();
        let order = epoch_order(set, cfg, epoch, k);
        let bar = progress_bar(
            self.progress,
            set.images.len() as u64,
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let total_steps = (cfg.epochs * self.steps_per_epoch).max(1);
        let started = Instant::now();
        let mut out = EpochOutcome {
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            learning_rate: cfg.learning_rate,
            seconds: 0.0,
            interrupted: false,
        };
        for (step, batch) in order.chunks(cfg.batch_size).enumerate() {
            if stop.load(Ordering::SeqCst) {
                out.interrupted = true;
                break;
            }
            if batch.len() < 2 && self.spec.architecture != Architecture::PaperCnn {
                continue; // batch norm needs two samples
            }
            let lr = cfg.learning_rate_at(
                (epoch * self.steps_per_epoch + step) as f64 / total_steps as f64,
            );
            out.learning_rate = lr;
            let images: Vec<&GreyImage> = batch.iter().map(|&i| &set.images[i]).collect();
            let labels: Vec<usize> = batch.iter().map(|&i| set.labels[i]).collect();
            let plan = cfg.augmentation.as_ref().map(|a| AugmentPlan {
                augmentation: a,
                seed: cfg.seed,
                epoch,
                ids: batch,
            });
            let x = batch_input(&images, &self.data.pre, plan, device);
            let logits = model.forward(x);
            let loss = classification_loss(
                logits.clone(),
                &labels,
                self.class_weights,
                cfg.label_smoothing,
            );
            let loss_value: f64 = f64::from(loss.clone().into_scalar::<f32>());
            if !loss_value.is_finite() {
                return Err(TrainingError::Diverged {
                    loss: loss_value,
                    epoch: epoch + 1,
                    step,
                }
                .into());
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            out.correct += rows(logits.detach())
                .iter()
                .zip(&labels)
                .filter(|(p, l)| argmax(p) == **l)
                .count();
            out.loss_sum += loss_value * batch.len() as f64;
            out.seen += batch.len();
            bar.inc(batch.len() as u64);
            bar.set_message(format!(
                "loss {:.4} acc {:.3}",
                out.loss_sum / out.seen as f64,
                out.correct as f64 / out.seen as f64
            ));
        }
        bar.finish_and_clear();
        out.seconds = started.elapsed().as_secs_f64();
        Ok((model, out))
    }
}

/// Validation loss (unweighted) and metrics of the plain model.
fn validate(
    model: &Classifier,
    data: &TrainingData,
    folder: &ImageFolder,
    device: &Device,
) -> (f64, Metrics) {
    let set = &data.validation;
    let refs: Vec<&GreyImage> = set.images.iter().collect();
    let probs = probabilities(model, &refs, &data.pre, device, 1.0);
    let weights = vec![1.0; folder.classes.len()];
    let loss = mean_nll(&probs, &set.labels, &weights);
    (
        loss,
        classification::compute(&set.labels, &probs, &folder.classes),
    )
}

/// Fits temperature, "uncertain" threshold and input check of the saved best model.
fn calibrate_best(opts: &TrainOptions, folder: &ImageFolder, split: &Split) -> Result<()> {
    calibrate_best_on(
        &opts.out,
        folder,
        &split.train,
        &split.validation,
        opts.progress,
    )
}

/// Fits temperature, "uncertain" threshold and input check of the model saved in `dir` on the
/// `train` and `validation` samples of `folder`.
fn calibrate_best_on(
    dir: &Path,
    folder: &ImageFolder,
    train: &[usize],
    validation: &[usize],
    progress: bool,
) -> Result<()> {
    let report = calibrate_saved(
        dir,
        folder,
        train,
        validation,
        FitOptions::default(),
        progress,
    )?;
    tracing::info!(
        "calibrated on {} validation images: temperature {:.2}, ECE {:.3} -> {:.3}, uncertain below {:.2}",
        report.calibration.images,
        report.calibration.temperature,
        report.calibration.ece_before,
        report.calibration.ece_after,
        report.uncertainty_threshold
    );
    Ok(())
}

/// Sample order of one epoch: a seeded shuffle, or class-balanced draws.
fn epoch_order(set: &PreparedImages, cfg: &TrainConfig, epoch: usize, k: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(epoch as u64));
    let n = set.images.len();
    match cfg.balance {
        Balance::Sampling => {
            let w = inverse_frequency_weights(&set.labels, k);
            let per_sample: Vec<f32> = set.labels.iter().map(|&l| w[l]).collect();
            match WeightedIndex::new(&per_sample) {
                Ok(dist) => (0..n).map(|_| dist.sample(&mut rng)).collect(),
                Err(_) => (0..n).collect(),
            }
        }
        _ => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            order
        }
    }
}

/// Mean negative log-likelihood of the true classes.
fn mean_nll(probs: &[Vec<f32>], labels: &[usize], weights: &[f32]) -> f64 {
    let (mut s, mut w) = (0f64, 0f64);
    for (p, &l) in probs.iter().zip(labels) {
        let wi = f64::from(weights[l]);
        s -= wi * f64::from(p[l].max(1e-7)).ln();
        w += wi;
    }
    if w > 0.0 { s / w } else { f64::NAN }
}

fn save_checkpoint(
    dir: &Path,
    model: &Classifier,
    optim: &ModuleOptimizer,
    state: &LoopState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let tmp = dir.join("last.bpk.tmp");
    model
        .clone()
        .save_file(&tmp)
        .map_err(|e| Error::write_debug(&tmp, e))?;
    std::fs::rename(&tmp, dir.join("last.bpk")).map_err(|e| Error::write(dir, e))?;
    let tmp = dir.join("optimizer.bpk.tmp");
    optim.save(&tmp).map_err(|e| Error::write_debug(&tmp, e))?;
    std::fs::rename(&tmp, dir.join("optimizer.bpk")).map_err(|e| Error::write(dir, e))?;
    write_json_atomic(&dir.join("state.json"), state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_matches_hand_computation() {
        let device = Device::flex();
        // Two samples, two classes, logits [0, ln 3] -> p = [0.25, 0.75].
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 0.0, 3f32.ln()], [2, 2]),
            &device,
        );
        let plain =
            classification_loss(logits.clone(), &[1, 0], &[1.0, 1.0], 0.0).into_scalar::<f32>();
        let expected = (-(0.75f32.ln()) - 0.25f32.ln()) / 2.0;
        assert!((plain - expected).abs() < 1e-5, "{plain} vs {expected}");
        // Weight 3 on class 0: (3 * -ln .25 + 1 * -ln .75) / 4.
        let weighted =
            classification_loss(logits.clone(), &[1, 0], &[3.0, 1.0], 0.0).into_scalar::<f32>();
        let expected = (3.0 * -(0.25f32.ln()) - 0.75f32.ln()) / 4.0;
        assert!((weighted - expected).abs() < 1e-5);
        // Smoothing 0.2 on one sample of class 1: targets 0.1 / 0.9.
        let one = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 3f32.ln()], [1, 2]), &device);
        let smooth = classification_loss(one, &[1], &[1.0, 1.0], 0.2).into_scalar::<f32>();
        let expected = -(0.1 * 0.25f32.ln() + 0.9 * 0.75f32.ln());
        assert!((smooth - expected).abs() < 1e-5);
    }

    #[test]
    fn inverse_frequency() {
        let w = inverse_frequency_weights(&[0, 0, 0, 1], 2);
        assert!((w[0] - 4.0 / 6.0).abs() < 1e-6 && (w[1] - 2.0).abs() < 1e-6);
    }
}
