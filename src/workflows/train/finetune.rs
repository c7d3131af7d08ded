//! Fine-tuning on clinicians' feedback (`oncolens finetune`): the model continues training
//! from its own weights on the feedback images plus a replay of its original training images
//! (rehearsal, so that it does not forget the domain it was trained on), with the model's own
//! pre-processing unchanged, then is re-calibrated (temperature, "uncertain" threshold, input
//! check, and int8 ranges when the parent had them) and written as a new version whose model
//! file names its parent and the feedback it used.
//!
//! Which images play which part:
//! - feedback items marked `holdout` in the export are never touched (the promotion check
//!   evaluates on them);
//! - of the other feedback items, a stratified 15 % validates, the rest trains;
//! - original images: a seeded sample of the parent's training side, `replay_ratio` per
//!   feedback image, trains beside them; the parent's validation side (from its `split.json`)
//!   validates.
//!
//! The epoch kept is the one with the lowest validation loss, averaged with equal weight over
//! the two domains (the feedback and the original data), so that neither the few feedback
//! images nor the many original ones decide alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::history::{self, EpochRecord};
use super::{
    EpochPass, TrainingData, calibrate_best_on, inverse_frequency_weights, mean_nll, optimizer,
};
use crate::core::error::{DatasetProblem, Error, RegistryError, Result};
use crate::core::files::write_json_atomic;
use crate::core::numeric::argmax;
use crate::data::folder::{ImageFolder, Sample};
use crate::data::loader::{prepare_files, prepare_samples};
use crate::data::split::{SplitFile, group_ids, stratified_group_split};
use crate::imaging::GreyImage;
use crate::modelfile::bundle::{self, Mode, ModelSource};
use crate::modelfile::{
    Balance, DataProvenance, FeedbackProvenance, Manifest, ParentModel, ValidationSummary,
};
use crate::runtime::{LoadedModel, probabilities};
use crate::workflows::feedback::{FeedbackManifest, ItemUse};

/// Share of the trainable feedback items kept for validation.
const FEEDBACK_VALIDATION: f64 = 0.15;

/// What to fine-tune and how.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// The model to continue from.
    pub model: PathBuf,
    /// A feedback export.
    pub feedback: PathBuf,
    /// The original training folder (default: the one the model file names, if it exists).
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Original images replayed per feedback image.
    pub replay_ratio: f64,
    pub seed: u64,
    pub progress: bool,
}

/// Accuracy on each domain's validation images.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DomainFigures {
    pub loss: f64,
    /// On the feedback validation images.
    pub feedback_accuracy: f64,
    /// On the original validation images (`None` without original data).
    pub original_accuracy: Option<f64>,
    /// Macro-averaged F1 over both domains' validation images.
    pub macro_f1: f64,
}

/// How a fine-tuning run went (also written as `finetune.json` beside the model).
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub parent: ParentModel,
    pub feedback_train: usize,
    pub feedback_validation: usize,
    pub feedback_held_out: usize,
    pub replayed: usize,
    pub original_validation: usize,
    /// The parent on the validation images, before any step.
    pub before: DomainFigures,
    /// The kept epoch (0: no epoch beat the parent, whose weights are kept).
    pub best_epoch: usize,
    pub after: DomainFigures,
    pub history: Vec<EpochRecord>,
    /// Feedback images trained on that the model's input gate refuses: the gate is a network
    /// of its own, trained with non-MRI images, and is not fine-tuned here; many refusals say
    /// the hospital's scans need the gate retrained (`oncolens gate train`) as well.
    pub gate_refused_feedback: usize,
    pub interrupted: bool,
    #[serde(skip)]
    pub model_dir: PathBuf,
}

/// The validation images of both domains, prepared, with the index where the original ones
/// start.
struct Validation {
    images: Vec<GreyImage>,
    labels: Vec<usize>,
    feedback_count: usize,
}

impl Validation {
    /// Loss (the mean of the two domains' NLL) and each domain's accuracy of `model`.
    fn measure(
        &self,
        model: &crate::model::Classifier,
        pre: &crate::imaging::Preprocessing,
        device: &Device,
        classes: &[String],
    ) -> DomainFigures {
        let refs: Vec<&GreyImage> = self.images.iter().collect();
        let probs = probabilities(model, &refs, pre, device, 1.0);
        let k = probs.first().map_or(0, Vec::len);
        let ones = vec![1.0; k];
        let split = self.feedback_count;
        let accuracy = |p: &[Vec<f32>], l: &[usize]| {
            p.iter().zip(l).filter(|(p, l)| argmax(p) == **l).count() as f64 / l.len().max(1) as f64
        };
        let (fp, op) = probs.split_at(split);
        let (fl, ol) = self.labels.split_at(split);
        let feedback_loss = mean_nll(fp, fl, &ones);
        let (loss, original_accuracy) = if ol.is_empty() {
            (feedback_loss, None)
        } else {
            (
                0.5 * (feedback_loss + mean_nll(op, ol, &ones)),
                Some(accuracy(op, ol)),
            )
        };
        DomainFigures {
            loss,
            feedback_accuracy: accuracy(fp, fl),
            original_accuracy,
            macro_f1: crate::metrics::classification::compute(&self.labels, &probs, classes)
                .macro_avg
                .f1,
        }
    }
}

/// Runs the fine-tuning; `stop` (Ctrl-C) ends it after the current batch with the best
/// weights so far saved and calibrated.
pub fn finetune(opts: &FinetuneOptions, stop: &AtomicBool) -> Result<FinetuneReport> {
    let parent_dir = bundle::model_dir(&opts.model);
    let base_device = Device::flex();
    let device = base_device.clone().autodiff();
    let (parent, mut model) = bundle::load_trainable(&parent_dir, &device)?;
    let classes = parent.class_ids();
    let feedback = FeedbackManifest::read(&opts.feedback)?;

    // One folder in memory: the original images first, then the feedback images.
    let original = original_data(opts, &parent, &parent_dir)?;
    let mut folder = ImageFolder {
        root: opts.feedback.clone(),
        classes: classes.clone(),
        samples: Vec::new(),
    };
    let (mut replay_pool, mut original_validation) = (Vec::new(), Vec::new());
    if let Some(OriginalData {
        folder: orig,
        train,
        validation,
    }) = &original
    {
        if orig.classes != classes {
            return Err(RegistryError::ClassesDiffer {
                candidate: orig.classes.join(", "),
                served: classes.join(", "),
            }
            .into());
        }
        folder.samples.extend(orig.samples.iter().cloned());
        replay_pool.clone_from(train);
        original_validation.clone_from(validation);
    }
    let first_feedback = folder.samples.len();
    for item in feedback.items_for(ItemUse::Train) {
        let Some(file) = &item.file else { continue };
        let class = &item.given_class;
        let label = classes.iter().position(|c| c == class).ok_or_else(|| {
            RegistryError::ClassesDiffer {
                candidate: feedback.classes.join(", "),
                served: classes.join(", "),
            }
        })?;
        folder.samples.push(Sample {
            // Byte-identical copies (the same scan uploaded twice) stay on one side.
            sha256: item
                .sha256
                .clone()
                .unwrap_or_else(|| item.analysis_id.clone()),
            path: opts.feedback.join(file),
            label,
        });
    }
    let feedback_indices: Vec<usize> = (first_feedback..folder.samples.len()).collect();
    if feedback_indices.is_empty() {
        return Err(RegistryError::NoFeedback.into());
    }

    // Feedback: stratified validation share; copies of one scan stay on one side.
    let labels: Vec<usize> = feedback_indices
        .iter()
        .map(|&i| folder.samples[i].label)
        .collect();
    let sub = ImageFolder {
        root: folder.root.clone(),
        classes: classes.clone(),
        samples: feedback_indices
            .iter()
            .map(|&i| folder.samples[i].clone())
            .collect(),
    };
    let groups = group_ids(&sub, &[]);
    let fsplit = stratified_group_split(&labels, &groups, FEEDBACK_VALIDATION, opts.seed);
    let feedback_train: Vec<usize> = fsplit.train.iter().map(|&j| feedback_indices[j]).collect();
    let feedback_val: Vec<usize> = fsplit
        .validation
        .iter()
        .map(|&j| feedback_indices[j])
        .collect();

    // Replay: a seeded sample of the original training side.
    replay_pool.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed ^ 0x8E91A7));
    let replay_count =
        ((feedback_train.len() as f64) * opts.replay_ratio.max(0.0)).round() as usize;
    replay_pool.truncate(replay_count.min(replay_pool.len()));
    replay_pool.sort_unstable();

    let pre = parent.preprocessing.clone();
    let bar = super::progress_bar(
        opts.progress,
        (feedback_train.len() + replay_pool.len() + feedback_val.len() + original_validation.len())
            as u64,
        "preparing".into(),
    );
    let train_indices: Vec<usize> = replay_pool.iter().chain(&feedback_train).copied().collect();
    let train_set = prepare_samples(&folder, &train_indices, &pre, Some(&bar));
    let fval = prepare_samples(&folder, &feedback_val, &pre, Some(&bar));
    let oval = prepare_samples(&folder, &original_validation, &pre, Some(&bar));
    bar.finish_and_clear();
    if train_set.images.is_empty() {
        return Err(Error::dataset(&opts.feedback, DatasetProblem::TooFewImages));
    }
    let validation = Validation {
        feedback_count: fval.images.len(),
        images: fval.images.iter().chain(&oval.images).cloned().collect(),
        labels: fval.labels.iter().chain(&oval.labels).copied().collect(),
    };
    let validation_indices: Vec<usize> = feedback_val
        .iter()
        .chain(&original_validation)
        .copied()
        .collect();

    let mut cfg = parent.training.clone();
    cfg.epochs = opts.epochs.max(1);
    cfg.learning_rate = opts.learning_rate;
    cfg.seed = opts.seed;
    cfg.patience = cfg.epochs;
    cfg.pretrained = None;
    cfg.validate()?;
    let data = TrainingData {
        train: train_set,
        validation: Default::default(),
        pre: pre.clone(),
        skipped: fval.skipped.iter().chain(&oval.skipped).cloned().collect(),
    };
    let k = classes.len();
    let class_weights = match cfg.balance {
        Balance::WeightedLoss => inverse_frequency_weights(&data.train.labels, k),
        Balance::Sampling | Balance::None => vec![1.0; k],
    };

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::write(&opts.out, e))?;
    let parent_ref = ParentModel {
        name: parent.name.clone(),
        version: parent.version(),
        weights_sha256: parent.weights_sha256.clone(),
    };
    let template = Manifest {
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        training: cfg.clone(),
        data: DataProvenance {
            root: original
                .as_ref()
                .map_or_else(String::new, |o| o.folder.root.display().to_string()),
            train_images: data.train.images.len(),
            validation_images: validation.images.len(),
            skipped: data.skipped.clone(),
            ..parent.data.clone()
        },
        validation: None,
        trust: None,
        int8: None,
        parent: Some(parent_ref.clone()),
        feedback: Some(FeedbackProvenance {
            root: opts.feedback.display().to_string(),
            fingerprint: feedback.fingerprint(ItemUse::Train),
            class_counts: (0..k)
                .map(|c| {
                    feedback_train
                        .iter()
                        .filter(|&&i| folder.samples[i].label == c)
                        .count()
                })
                .collect(),
            held_out: feedback.files(&opts.feedback, ItemUse::Holdout).len(),
            validation: fval.images.len(),
            replayed: replay_pool.len(),
        }),
        ..parent.clone()
    };

    let before = validation.measure(&model.valid(), &pre, &base_device, &classes);
    tracing::info!(
        "parent {}: validation loss {:.4}, feedback accuracy {:.3}{}",
        parent_ref.version,
        before.loss,
        before.feedback_accuracy,
        before
            .original_accuracy
            .map_or_else(String::new, |a| format!(", original accuracy {a:.3}"))
    );
    // Until an epoch beats it, the parent's weights are the best.
    let save = |m: &crate::model::Classifier, epoch: usize, f: &DomainFigures| -> Result<()> {
        let mut manifest = template.clone();
        manifest.validation = Some(ValidationSummary {
            epoch,
            loss: f.loss,
            accuracy: f
                .original_accuracy
                .map_or(f.feedback_accuracy, |o| 0.5 * (o + f.feedback_accuracy)),
            macro_f1: f.macro_f1,
        });
        bundle::save(&opts.out, m, &mut manifest)
    };
    save(&model.valid(), 0, &before)?;
    let (mut best_loss, mut best_epoch, mut after) = (before.loss, 0, before);
    let mut optim = optimizer(&cfg);
    let steps_per_epoch = data.train.images.len().div_ceil(cfg.batch_size);
    let mut records = Vec::new();
    let mut interrupted = false;
    device.seed(cfg.seed);
    for epoch in 0..cfg.epochs {
        let pass = EpochPass {
            cfg: &cfg,
            spec: &parent.spec,
            data: &data,
            class_weights: &class_weights,
            steps_per_epoch,
            progress: opts.progress,
        };
        let (trained, outcome) = pass.run(epoch, model, &mut optim, &device, stop)?;
        model = trained;
        if outcome.interrupted {
            interrupted = true;
            break;
        }
        let eval = model.valid();
        let figures = validation.measure(&eval, &pre, &base_device, &classes);
        let record = outcome.record_figures(
            epoch,
            figures.loss,
            figures
                .original_accuracy
                .map_or(figures.feedback_accuracy, |o| {
                    0.5 * (o + figures.feedback_accuracy)
                }),
            figures.macro_f1,
        );
        tracing::info!(
            "{} (feedback {:.3}{})",
            record.line(),
            figures.feedback_accuracy,
            figures
                .original_accuracy
                .map_or_else(String::new, |a| format!(", original {a:.3}"))
        );
        records.push(record);
        if figures.loss < best_loss {
            (best_loss, best_epoch, after) = (figures.loss, epoch + 1, figures);
            save(&eval, epoch + 1, &figures)?;
        }
        history::write(&opts.out, &records)?;
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    // Calibration on the same split: input check on the training side, temperature and
    // threshold on the validation side of both domains.
    calibrate_best_on(
        &opts.out,
        &folder,
        &train_indices,
        &validation_indices,
        opts.progress,
    )?;
    if parent.int8.is_some() {
        let paths: Vec<&Path> = validation_indices
            .iter()
            .map(|&i| folder.samples[i].path.as_path())
            .collect();
        crate::workflows::quantize::quantize_on(&opts.out, &paths)?;
    }
    // The split in the original folder, for `evaluate`'s leak check and later calibrations.
    if let Some(OriginalData { folder: orig, .. }) = &original {
        let in_original = |v: &[usize]| -> Vec<usize> {
            v.iter().copied().filter(|&i| i < first_feedback).collect()
        };
        SplitFile::of(
            orig,
            &crate::data::split::Split {
                train: in_original(&train_indices),
                validation: in_original(&validation_indices),
            },
        )
        .write(&opts.out.join(crate::data::split::SPLIT_FILE))?;
    }
    let gate_refused_feedback = gate_refusals(&opts.out, &folder, &feedback_train)?;
    if gate_refused_feedback > 0 {
        tracing::warn!(
            "the input gate refuses {gate_refused_feedback} of the {} feedback images trained on",
            feedback_train.len()
        );
    }
    let report = FinetuneReport {
        parent: parent_ref,
        feedback_train: feedback_train.len(),
        feedback_validation: fval.images.len(),
        feedback_held_out: feedback.files(&opts.feedback, ItemUse::Holdout).len(),
        replayed: replay_pool.len(),
        original_validation: oval.images.len(),
        before,
        best_epoch,
        after,
        history: records,
        gate_refused_feedback,
        interrupted,
        model_dir: opts.out.clone(),
    };
    write_json_atomic(&opts.out.join("finetune.json"), &report)?;
    Ok(report)
}

/// How many of `indices` the input gate of the model in `dir` refuses.
fn gate_refusals(dir: &Path, folder: &ImageFolder, indices: &[usize]) -> Result<usize> {
    let loaded = LoadedModel::open(&ModelSource::Directory(dir.to_path_buf()), Mode::Inference)?;
    let pre = &loaded.manifest.preprocessing;
    let paths: Vec<&Path> = indices
        .iter()
        .map(|&i| folder.samples[i].path.as_path())
        .collect();
    let views: Vec<GreyImage> = prepare_files(&paths, None, |scan| scan.prepared(pre).gate_view)
        .into_iter()
        .filter_map(std::result::Result::ok)
        .collect();
    let refs: Vec<&GreyImage> = views.iter().collect();
    Ok(loaded
        .gate_findings(&refs)
        .iter()
        .filter(|f| f.as_ref().is_some_and(|f| f.refused))
        .count())
}

/// The original training folder with the parent's train and validation sides, or `None`
/// when there is none to replay (then only the feedback trains and validates).
fn original_data(
    opts: &FinetuneOptions,
    parent: &Manifest,
    parent_dir: &Path,
) -> Result<Option<OriginalData>> {
    let root = match &opts.data {
        Some(d) => d.clone(),
        None => {
            let named = PathBuf::from(&parent.data.root);
            if !named.is_dir() {
                tracing::warn!(
                    "the original training folder {} is not here: fine-tuning on feedback alone may forget; give --data",
                    named.display()
                );
                return Ok(None);
            }
            named
        }
    };
    let folder = ImageFolder::scan(&root)?;
    let split = match SplitFile::read(parent_dir) {
        Ok(file) => file.resolve(&folder)?,
        Err(_) => {
            // No split recorded: hold out a stratified share, copies together.
            let labels: Vec<usize> = folder.samples.iter().map(|s| s.label).collect();
            let groups = group_ids(&folder, &[]);
            stratified_group_split(&labels, &groups, 0.15, opts.seed)
        }
    };
    Ok(Some(OriginalData {
        folder,
        train: split.train,
        validation: split.validation,
    }))
}

/// The parent's training folder and its two sides.
struct OriginalData {
    folder: ImageFolder,
    train: Vec<usize>,
    validation: Vec<usize>,
}
