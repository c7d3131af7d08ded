//! End to end on synthetic data: train -> model file -> evaluate (leak-free) -> predict.

mod common;

use std::sync::atomic::AtomicBool;

use oncolens::data::ImageFolder;
use oncolens::data::loader::{batch_input, prepare_samples};
use oncolens::inference::Predictor;
use oncolens::model::Architecture;
use oncolens::modelfile::TrainConfig;
use oncolens::workflows::evaluate::{EvalOptions, evaluate};
use oncolens::workflows::train::{TrainOptions, train};

fn quick_config(arch: Architecture, input_size: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        architecture: arch,
        input_size,
        epochs,
        batch_size: 16,
        learning_rate: 2e-3,
        patience: epochs,
        validation_fraction: 0.2,
        seed: 7,
        ..Default::default()
    }
}

#[test]
fn train_evaluate_predict_beats_chance_and_skips_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("my data");
    let training = root.join("Training");
    let testing = root.join("Testing");
    let train_files = common::write_folder(&training, 40, 64, 1);
    common::write_folder(&testing, 15, 64, 2);
    // A truncated JPEG and a non-image with an image name: reported and skipped.
    let good = std::fs::read(&train_files[0]).unwrap();
    std::fs::write(
        training.join("bright blob").join("cut (1).jpg"),
        &good[..good.len() / 2],
    )
    .unwrap();
    std::fs::write(training.join("no_blob").join("notes (2).png"), b"not a png").unwrap();
    // One test image is a byte copy of a training image: a leak to exclude.
    std::fs::copy(
        &train_files[5],
        testing.join("bright blob").join("leaked copy.png"),
    )
    .unwrap();

    let out = tmp.path().join("model out");
    let report = common::train_model(
        &training,
        &out,
        quick_config(Architecture::ResnetMini, 48, 8),
    );
    assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
    assert!(report.skipped.iter().any(|s| s.contains("cut (1).jpg")));
    assert!(report.skipped.iter().any(|s| s.contains("notes (2).png")));
    let best = report
        .history
        .iter()
        .find(|r| r.epoch == report.best_epoch)
        .unwrap();
    assert!(
        best.val_accuracy >= 0.8,
        "validation accuracy {} (chance 0.33)",
        best.val_accuracy
    );
    for f in [
        "model.json",
        "weights.bpk",
        "history.csv",
        "history.json",
        "split.json",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    let predictor = Predictor::load(&out).unwrap();
    assert_eq!(
        predictor.manifest.class_ids(),
        vec!["bright blob", "dark blob", "no_blob"]
    );
    assert_eq!(predictor.manifest.data.skipped.len(), 2);
    let eval = evaluate(
        &predictor,
        &EvalOptions {
            data: testing.clone(),
            train_data: None,
            include_leaks: true,
            // Synthetic slices all share one layout, so only byte copies count here; the audit
            // tests cover near-duplicates.
            near_duplicates: None,
            exclusions: None,
            progress: false,
        },
    )
    .unwrap();
    // The Training folder beside Testing is found and the copy excluded.
    assert_eq!(eval.leak_check.excluded, 1);
    assert_eq!(eval.leak_check.excluded_per_class, vec![1, 0, 0]);
    assert_eq!(eval.leak_free.images, 45);
    assert_eq!(eval.with_leaks.as_ref().unwrap().images, 46);
    assert!(
        eval.leak_free.accuracy >= 0.8,
        "test accuracy {}",
        eval.leak_free.accuracy
    );
    assert!(eval.to_text().contains("not a diagnostic device"));

    // Predict on a file with spaces and brackets in its path.
    let p = predictor
        .predict_file(&testing.join("dark blob").join("scan (1).png"))
        .unwrap();
    assert_eq!(p.probabilities.len(), 3);
    assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(
        predictor
            .predict_file(&training.join("no_blob").join("notes (2).png"))
            .is_err()
    );
}

#[test]
fn predict_feeds_the_network_exactly_what_training_fed_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_folder(&data, 6, 80, 3);
    let out = tmp.path().join("m");
    let mut cfg = quick_config(Architecture::ResnetMini, 40, 1);
    cfg.clahe = true;
    cfg.denoise = true;
    common::train_model(&data, &out, cfg);
    let predictor = Predictor::load(&out).unwrap();
    let pre = &predictor.manifest.preprocessing;
    assert!(
        pre.clahe.is_some() && pre.denoise_sigma.is_some(),
        "settings recorded in the model"
    );
    let folder = ImageFolder::scan(&data).unwrap();
    let all: Vec<usize> = (0..folder.samples.len()).collect();
    // Training path: cached preparation, then an un-augmented batch.
    let prepared = prepare_samples(&folder, &all, pre, None);
    let refs: Vec<_> = prepared.images.iter().collect();
    let device = burn::tensor::Device::flex();
    let train_input: Vec<f32> = batch_input(&refs, pre, None, &device)
        .into_data()
        .try_to_vec()
        .unwrap();
    // Predict path: the predictor's own input for each file.
    let per_image = 40 * 40;
    for (k, &i) in prepared.sample_indices.iter().enumerate() {
        let img = oncolens::imaging::load_grey(&folder.samples[i].path).unwrap();
        let (predict_input, _) = predictor.input(&img);
        assert_eq!(
            &train_input[k * per_image..(k + 1) * per_image],
            predict_input.as_slice()
        );
    }
}

#[test]
fn both_architectures_learn_from_initialisation_without_collapsing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_folder(&data, 20, 96, 4);
    for (arch, size, epochs) in [
        (Architecture::PaperCnn, 96, 8),
        (Architecture::ResnetMini, 48, 4),
    ] {
        let out = tmp.path().join(arch.name());
        let mut cfg = quick_config(arch, size, epochs);
        cfg.learning_rate = 1e-3;
        cfg.batch_size = 8;
        let report = common::train_model(&data, &out, cfg);
        let first = report.history.first().unwrap().train_loss;
        let last = report.history.last().unwrap().train_loss;
        let chance = (3f64).ln();
        assert!(
            last < first && last < 0.9 * chance,
            "{}: loss {first:.3} -> {last:.3} (ln 3 = {chance:.3})",
            arch.name()
        );
        // A collapsed network answers every input the same way.
        let predictor = Predictor::load(&out).unwrap();
        let folder = ImageFolder::scan(&data).unwrap();
        let imgs: Vec<_> = folder
            .samples
            .iter()
            .take(60)
            .step_by(7)
            .map(|s| oncolens::imaging::load_grey(&s.path).unwrap())
            .collect();
        let preds = predictor.predict_images(&imgs);
        let spread = preds
            .iter()
            .map(|p| p.probabilities[0])
            .fold((1f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
        assert!(
            spread.1 - spread.0 > 0.1,
            "{}: outputs do not depend on the input {spread:?}",
            arch.name()
        );
    }
}

#[test]
fn interrupted_training_leaves_a_checkpoint_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_folder(&data, 10, 48, 5);
    let out = tmp.path().join("m");
    let mut opts = TrainOptions {
        data: data.clone(),
        out: out.clone(),
        config: quick_config(Architecture::ResnetMini, 32, 2),
        resume: false,
        progress: false,
        near_duplicates: None,
    };
    let _one_at_a_time = common::training_lock();
    // Ctrl-C before the first batch: stops at once, checkpoint written.
    let report = train(&opts, &AtomicBool::new(true)).unwrap();
    assert!(report.interrupted);
    assert!(out.join("checkpoint/last.bpk").is_file());
    // Resume runs the planned epochs; then extend by one more.
    opts.resume = true;
    let report = train(&opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(report.history.len(), 2);
    opts.config.epochs = 3;
    let report = train(&opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        report.history.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Other settings may not change on resume.
    opts.config.learning_rate = 0.1;
    let err = train(&opts, &AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only --epochs may change"), "{err}");
    assert!(Predictor::load(&out).is_ok());
}
