//! One function per subcommand: open what it needs through the library, run the workflow,
//! print the result. No model, data or image logic lives here.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use oncolens::data::folder::collect_image_files;
use oncolens::data::split::held_out_split;
use oncolens::imaging::Scan;
use oncolens::inference::render::{heatmap_image, overlay_image};
use oncolens::inference::{Explainer, Predictor, Verdict};
use oncolens::model::ModelSpec;
use oncolens::modelfile::MANIFEST_FILE;
use oncolens::modelfile::bundle::model_dir;
use oncolens::runtime::LoadedGate;
use oncolens::workflows::audit::{self, NearDuplicateCriteria, sheet};
use oncolens::workflows::calibrate::{FitOptions, calibrate_saved};
use oncolens::workflows::evaluate::{self, EvalOptions};
use oncolens::workflows::train::{TrainOptions, train};
use oncolens::workflows::{deidentify, export, gate_crossval, gate_train, import, quantize};
use oncolens::{backend, core::files::write_json_atomic};

use super::args::*;
use super::output;

pub fn serve(a: ServeArgs) -> Result<()> {
    let config = a.config()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(oncolens::serve::serve(config))?;
    Ok(())
}

pub fn train_model(a: TrainArgs) -> Result<()> {
    let opts = TrainOptions::from(&a);
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
    let started = Instant::now();
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

pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    let options = FitOptions::from(&a);
    options.validate()?;
    let dir = model_dir(&a.model);
    let (folder, split) = held_out_split(&dir, &a.data)
        .context("calibration must use the images training held out (train writes split.json)")?;
    let report = calibrate_saved(
        &dir,
        &folder,
        &split.train,
        &split.validation,
        options,
        a.progress(),
    )?;
    println!("{}", report.to_text(&dir));
    Ok(())
}

pub fn quantize_model(a: QuantizeArgs) -> Result<()> {
    let dir = model_dir(&a.model);
    let r = quantize::quantize_saved(&dir, &a.data, a.images)?;
    println!(
        "quantised {} layers of {}; activation ranges from {} validation images ({:.1} s)\n\
         on those images the int8 engine agrees with f32 on the top class for {:.1} %, \
         largest probability difference {:.4}\n\
         int8 weights {:.2} MB (f32 weights file {:.2} MB)\nwrote {}",
        r.quantised_layers,
        dir.display(),
        r.calibration.images,
        r.seconds,
        100.0 * r.calibration.top1_agreement,
        r.calibration.max_probability_difference,
        r.int8_weight_bytes as f64 / 1e6,
        r.f32_weights_file_bytes as f64 / 1e6,
        dir.join(MANIFEST_FILE).display()
    );
    Ok(())
}

pub fn evaluate_model(a: EvaluateArgs) -> Result<()> {
    let predictor = Predictor::open_source(&model_source(&a.model))?
        .with_tta(a.tta)
        .with_int8(a.int8)?;
    let report = evaluate::evaluate(&predictor, &EvalOptions::from(&a))?;
    print!("{}", report.to_text());
    if let Some(path) = &a.json {
        write_json_atomic(path, &report)?;
    }
    if let Some(path) = &a.risk_coverage_png {
        report.draw_risk_coverage(path)?;
    }
    if let Some(path) = &a.confusion_png {
        report.draw_confusion(path)?;
    }
    Ok(())
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let mut source = model_source(&a.model);
    if let Some(database) = &a.registry {
        source = tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(async {
                let db = oncolens::database::open(database).await?;
                oncolens::workflows::registry::served_source(&db, None, &source).await
            })?;
    }
    let predictor = Arc::new(
        Predictor::open_source(&source)?
            .with_tta(a.tta)
            .with_int8(a.int8)?,
    );
    let files = collect_image_files(&a.inputs)?;
    let results: Vec<output::Answer> = match &a.jobs {
        Some(database) => predict_shared(&a, database, predictor.clone(), &files)?,
        None => {
            let predictions = predictor.predict_file_slices(&files);
            let predictions = predictions.into_iter().map(|p| p.map_err(|e| e.sentence()));
            files.into_iter().zip(predictions).collect()
        }
    };
    output::print(a.format, &predictor.manifest, &results)?;
    if results.iter().all(|(_, r)| r.is_err()) && !results.is_empty() {
        bail!("no input could be read");
    }
    Ok(())
}

/// `predict --jobs`: this worker's share of the archive, then every worker's answers.
fn predict_shared(
    a: &PredictArgs,
    database: &str,
    predictor: Arc<Predictor>,
    files: &[std::path::PathBuf],
) -> Result<Vec<output::Answer>> {
    use oncolens::store::jobs::JobQueue;
    use oncolens::workflows::batch_jobs::{self, WorkerOptions};
    // Absolute paths: the same archive mounted at the same place names the same jobs
    // wherever the command runs from.
    let files: Vec<std::path::PathBuf> = files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let jobs = batch_jobs::jobs_of(&files, a.job_files);
    let queue_name = a
        .queue
        .clone()
        .unwrap_or_else(|| batch_jobs::default_queue(&predictor.manifest.version(), &jobs));
    let worker = a
        .worker
        .clone()
        .unwrap_or_else(oncolens::store::jobs::worker_name);
    let options = WorkerOptions {
        lease: std::time::Duration::from_secs(a.lease_s.max(1)),
        ..WorkerOptions::default()
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let db = oncolens::database::open(database)
            .await
            .with_context(|| format!("opening the job queue's database {database}"))?;
        let queue = JobQueue::new(db, &queue_name, &worker, options.lease);
        let report = batch_jobs::work(&queue, predictor, &jobs, &options).await?;
        let (answers, failed) = batch_jobs::results(&queue).await?;
        let progress = queue.progress().await?;
        eprintln!(
            "worker {worker} on queue {queue_name}: {} jobs ({} files) in {:.1} s, {} taken \
             over from a worker that stopped, {} lost to another; the queue: {} of {} jobs done, \
             {} failed",
            report.jobs,
            report.files,
            started.elapsed().as_secs_f64(),
            report.taken_over,
            report.lost,
            progress.done,
            progress.total(),
            progress.failed
        );
        for (key, error) in &failed {
            eprintln!("job {key} failed: {error}");
        }
        Ok(answers)
    })
}

pub fn export_model(a: ExportArgs) -> Result<()> {
    let predictor = Predictor::open_source(&model_source(&a.model))?;
    let bytes = export::write_onnx(&predictor, &a.onnx)?;
    println!(
        "wrote {} ({bytes} bytes, ONNX opset {}): input `{}` [N, 1, {s}, {s}], output `{}` [N, {}]",
        a.onnx.display(),
        backend::onnx::OPSET,
        backend::onnx::INPUT_NAME,
        backend::onnx::OUTPUT_NAME,
        predictor.manifest.classes.len(),
        s = predictor.manifest.spec.input_size,
    );
    if let Some(dir) = &a.reference_images {
        let n = export::write_reference(&predictor, dir, a.reference_count, &a.onnx)?;
        println!("wrote reference inputs and probabilities of {n} images beside it");
    }
    Ok(())
}

pub fn import_weights(a: ImportArgs) -> Result<()> {
    let note = import::import_efficientnet_lite0(&a.from, &a.out)?;
    println!(
        "imported {} tensors of {} from {} (sha256 {}) into {}; tensor digest {}",
        note.tensors_loaded,
        note.architecture,
        note.source_file,
        note.source_sha256,
        a.out.join(import::IMPORTED_WEIGHTS).display(),
        note.tensors_sha256
    );
    Ok(())
}

pub fn audit_data(a: AuditArgs) -> Result<()> {
    if let Some(spec) = &a.inspect {
        return inspect_pairs(&a, spec);
    }
    let (report, exclusions) =
        audit::audit(&a.root, NearDuplicateCriteria::from(&a), a.progress())?;
    print!("{}", report.to_text());
    if let Some(p) = &a.json {
        write_json_atomic(p, &report)?;
    }
    if let Some(p) = &a.exclusions {
        write_json_atomic(p, &exclusions)?;
    }
    if let Some(p) = &a.sheet {
        let rows = sheet::group_rows(&report.groups, a.sheet_groups);
        sheet::contact_sheet(p, &a.root, &rows, 8)?;
    }
    Ok(())
}

/// `audit --inspect LO HI PNG`: candidate pairs for choosing the criteria by eye.
fn inspect_pairs(a: &AuditArgs, spec: &[String]) -> Result<()> {
    let lo: u32 = spec[0].parse().context("LO must be a number")?;
    let hi: u32 = spec[1].parse().context("HI must be a number")?;
    let (cmin, cmax) = (a.inspect_correlation[0], a.inspect_correlation[1]);
    let pairs = audit::candidate_pairs(&a.root, lo..=hi, cmin..=cmax, 24)?;
    for (x, y, d, c) in &pairs {
        println!("distance {d}\tcorrelation {c:.3}\t{}\t{}", x.path, y.path);
    }
    sheet::contact_sheet(Path::new(&spec[2]), &a.root, &sheet::pair_rows(&pairs), 6)?;
    Ok(())
}

pub fn explain(a: ExplainArgs) -> Result<()> {
    let explainer = Explainer::open_source(&model_source(&a.model))?;
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
        let frames = match Scan::load_frames(path) {
            Ok(f) => f,
            Err(err) => {
                failures += 1;
                println!("{}\terror: {}", path.display(), err.sentence());
                continue;
            }
        };
        let count = frames.len();
        for (i, scan) in frames.into_iter().enumerate() {
            // A frame of a multi-frame DICOM object is named `file#k` and written as
            // `<name>.frame<k>.*.png`.
            let frame = (count > 1).then_some(i + 1);
            let shown = match frame {
                Some(k) => format!("{}#{k}", path.display()),
                None => path.display().to_string(),
            };
            match explain_one(&explainer, &a, (path, &shown), frame, scan, class) {
                Ok(None) => {}
                Ok(Some((e, over))) => println!(
                    "{shown}\tGrad-CAM of {} (p = {:.3})\t{}",
                    names[e.class_index],
                    e.probabilities[e.class_index],
                    over.display()
                ),
                Err(err) => {
                    failures += 1;
                    println!("{shown}\terror: {err:#}");
                }
            }
        }
    }
    if failures == a.images.len() {
        bail!("no image could be explained");
    }
    Ok(())
}

/// Grad-CAM of one file, written as `<name>.heatmap.png` and `<name>.overlay.png`; `None`
/// (with the reason printed) when the input gate refuses the image: a map drawn on a CT or a
/// photo would look like evidence it is not.
fn explain_one(
    explainer: &Explainer,
    a: &ExplainArgs,
    (path, shown): (&Path, &str),
    frame: Option<usize>,
    scan: Scan,
    class: Option<usize>,
) -> Result<Option<(oncolens::inference::Explanation, std::path::PathBuf)>> {
    let prediction = explainer
        .predict_scans(std::slice::from_ref(&scan))
        .remove(0);
    if prediction.verdict == Verdict::NotBrainMri {
        println!(
            "{shown}\tnot a brain MRI slice: {}; no map drawn",
            prediction.rejection_reasons().join("; ")
        );
        return Ok(None);
    }
    let img = scan.image;
    let e = explainer.explain(&img, class)?;
    let mut stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    if let Some(k) = frame {
        stem = format!("{stem}.frame{k}");
    }
    let heat = a.out.join(format!("{stem}.heatmap.png"));
    let over = a.out.join(format!("{stem}.overlay.png"));
    heatmap_image(&e.map)
        .save(&heat)
        .with_context(|| format!("writing {}", heat.display()))?;
    overlay_image(&img, &e.map, a.opacity)
        .save(&over)
        .with_context(|| format!("writing {}", over.display()))?;
    Ok(Some((e, over)))
}

pub fn model_summary(a: SummaryArgs) -> Result<()> {
    let spec = ModelSpec::from(&a);
    spec.validate()?;
    print!(
        "{}",
        oncolens::model::summary_table(&spec, &burn::tensor::Device::flex())
    );
    Ok(())
}

pub fn gate_evaluate(a: GateEvaluateArgs) -> Result<()> {
    let mut predictor = Predictor::open_source(&model_source(&a.model))?;
    if let Some(dir) = &a.gate {
        predictor = predictor.with_gate(Some(LoadedGate::open(dir)?));
    }
    let report = oncolens::workflows::gate_report::gate_report(&predictor, &(&a).into())?;
    print!("{}", report.to_text());
    if let Some(path) = &a.json {
        write_json_atomic(path, &report)?;
    }
    Ok(())
}

pub fn gate_train(a: GateTrainArgs) -> Result<()> {
    let opts = a.training.options(a.out.clone(), a.hold_out.clone());
    let trained = gate_train::train_gate(&opts)?;
    let m = &trained.manifest;
    println!(
        "gate written to {} in {:.0} s: {} kinds, threshold {:.4} ({})",
        a.out.display(),
        trained.seconds,
        m.kinds.len(),
        m.threshold,
        m.threshold_rule
    );
    Ok(())
}

pub fn gate_cross_validate(a: GateCrossValidateArgs) -> Result<()> {
    let predictor = Predictor::open_source(&model_source(&a.model))?;
    let opts = a.training.options(std::path::PathBuf::new(), Vec::new());
    let report = gate_crossval::cross_validate(predictor, &opts, a.folds)?;
    print!("{}", report.to_text());
    if let Some(path) = &a.json {
        write_json_atomic(path, &report)?;
    }
    Ok(())
}

pub fn deidentify(a: DeidentifyArgs) -> Result<()> {
    let outcomes = deidentify::deidentify_files(&a.inputs, &a.out, a.keep_pseudonym.as_deref())?;
    let mut written = 0;
    for o in &outcomes {
        match &o.result {
            Ok((path, r)) => {
                written += 1;
                println!(
                    "{}\t-> {}\t{} removed, {} emptied, {} replaced, {} UIDs replaced",
                    o.input.display(),
                    path.display(),
                    r.removed,
                    r.emptied,
                    r.replaced,
                    r.uids_replaced
                );
            }
            Err(e) => println!("{}\trefused: {}", o.input.display(), e.sentence()),
        }
    }
    eprintln!(
        "{written} of {} files de-identified into {}",
        outcomes.len(),
        a.out.display()
    );
    if written == 0 && !outcomes.is_empty() {
        bail!("no file could be de-identified");
    }
    Ok(())
}

pub fn pacs_watch(a: PacsWatchArgs) -> Result<()> {
    let mut options = a.connection.options(&a.url, a.once)?;
    let keys = oncolens::security::keys::KeyRing::load_or_create(&a.key.source(&a.database))?;
    options.audit_keys = Some(std::sync::Arc::new(keys));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let db = oncolens::database::open(&a.database).await?;
        // The registry's promoted version, and every later one, as the web app serves them.
        let fallback = model_source(&a.model);
        let source = oncolens::workflows::registry::served_source(&db, None, &fallback).await?;
        let slot = std::sync::Arc::new(oncolens::inference::ModelSlot::new(
            Explainer::open_source(&source)?,
        ));
        if !a.once {
            tokio::spawn(oncolens::workflows::registry::follow(
                slot.clone(),
                db.clone(),
                oncolens::workflows::registry::FollowOptions {
                    fallback,
                    tta: false,
                    int8: false,
                    interval: std::time::Duration::from_secs(30),
                    audit_keys: options.audit_keys.clone(),
                    files: None,
                },
            ));
        }
        oncolens::workflows::pacs::watch(slot, db, options)
            .await
            .map_err(oncolens::Error::from)
    })?;
    println!("{}", report.describe());
    Ok(())
}
