//! The feedback loop end to end on a synthetic domain shift: a model trained on "hospital A"
//! loses accuracy on "hospital B" (another contrast, a bias field, more noise, softer edges);
//! corrections on hospital-B scans are stored as feedback, exported, fine-tuned on with a
//! replay of hospital A, and the new version passes the promotion gate while a worse one is
//! refused.

mod common;

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use oncolens::model::Architecture;
use oncolens::modelfile::{ModelSource, TrainConfig};
use oncolens::security::keys::KeyRing;
use oncolens::store::{self, AnalysisRecord, FeedbackVerdict, NewFeedback, StoredImages};
use oncolens::workflows::feedback::{self, FeedbackManifest, ItemUse};
use oncolens::workflows::registry::{self, EvaluationSet, PromoteOptions};
use oncolens::workflows::train::finetune::{FinetuneOptions, finetune};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Hospital B's look of a hospital-A slice: brighter mid-tones (gamma 0.6), a left-to-right
/// bias field (as a receive coil gives), stronger noise and a blur (another resolution).
fn hospital_b(img: &GrayImage, rng: &mut ChaCha8Rng) -> GrayImage {
    let blurred = imageproc::filter::gaussian_blur_f32(img, 1.2);
    let w = img.width() as f32;
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let v = f32::from(blurred.get_pixel(x, y).0[0]) / 255.0;
        let bias = 0.7 + 0.6 * x as f32 / w;
        let noisy = v.powf(0.6) * bias + rng.random_range(-0.08..0.08);
        Luma([(noisy.clamp(0.0, 1.0) * 255.0).round() as u8])
    })
}

/// `per_class` slices per class under `root/<class>/`, in hospital A's look or B's.
fn write_domain(root: &Path, per_class: usize, seed: u64, b: bool) -> Vec<(PathBuf, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (label, class) in common::CLASSES.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let mut img = common::slice(label, 64, &mut rng);
            if b {
                img = hospital_b(&img, &mut rng);
            }
            let path = dir.join(format!("{i}.png"));
            img.save(&path).unwrap();
            out.push((path, label));
        }
    }
    out
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        architecture: Architecture::ResnetMini,
        input_size: 48,
        epochs,
        batch_size: 16,
        learning_rate: 2e-3,
        patience: epochs,
        validation_fraction: 0.2,
        seed: 11,
        ..Default::default()
    }
}

fn accuracy(model: &Path, set: &EvaluationSet) -> f64 {
    registry::measure(&ModelSource::Directory(model.to_path_buf()), set)
        .unwrap()
        .accuracy
}

/// Stores each hospital-B slice as an analysis by `model` with a clinician's verdict: the
/// true class (a correction where the model was wrong), every 25th "not assessable".
async fn store_feedback(
    db: &oncolens::database::Pool,
    objects: &oncolens::objects::Objects,
    keys: &KeyRing,
    model: &Path,
    slices: &[(PathBuf, usize)],
) {
    let predictor = oncolens::inference::Predictor::load(model).unwrap();
    let classes = predictor.manifest.class_ids();
    let paths: Vec<PathBuf> = slices.iter().map(|(p, _)| p.clone()).collect();
    let answers = predictor.predict_files(&paths);
    for (i, ((path, label), answer)) in slices.iter().zip(answers).enumerate() {
        let p = answer.unwrap();
        let id = format!("{:032x}", i + 1);
        let png = std::fs::read(path).unwrap();
        let record = AnalysisRecord {
            id: id.clone(),
            created_unix: 1_790_000_000 + i as i64,
            filename: format!("{i}.png"),
            model_name: predictor.manifest.name.clone(),
            model_version: predictor.manifest.version(),
            class_id: p.class_id.clone(),
            class_name: p.class_name.clone(),
            confidence: f64::from(p.confidence),
            uncertain: p.uncertain,
            verdict: "answer".into(),
            input_reasons: vec![],
            gate: None,
            presence: p.presence.clone(),
            probabilities: p.probabilities.clone(),
            width: 64,
            height: 64,
        };
        let images = StoredImages {
            display_png: &png,
            heatmap_png: &png,
            source_png: Some(&png),
        };
        store::insert_analysis(db, objects, keys, &record, images)
            .await
            .unwrap();
        let (verdict, class) = if i % 25 == 24 {
            (FeedbackVerdict::NotAssessable, "")
        } else if classes[*label] == p.class_id {
            (FeedbackVerdict::Confirmed, classes[*label].as_str())
        } else {
            (FeedbackVerdict::Corrected, classes[*label].as_str())
        };
        let fb = NewFeedback {
            analysis_id: &id,
            verdict,
            class_id: class,
            comment: "",
            given_by: "dr-b",
        };
        store::feedback::insert_feedback(db, keys, &fb, 1_790_100_000 + i as i64)
            .await
            .unwrap();
    }
}

#[test]
fn finetune_on_corrections_recovers_a_domain_shift_and_passes_the_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let a_train = tmp.path().join("A/Training");
    let a_test = tmp.path().join("A/Testing");
    let b_pool = tmp.path().join("B/feedback");
    let b_test = tmp.path().join("B/Testing");
    write_domain(&a_train, 60, 1, false);
    write_domain(&a_test, 60, 2, false);
    let b_slices = write_domain(&b_pool, 110, 3, true);
    write_domain(&b_test, 60, 4, true);

    let parent = tmp.path().join("parent");
    common::train_model(&a_train, &parent, config(12));
    let classes: Vec<String> = common::CLASSES.iter().map(|c| c.to_string()).collect();
    let on_a = EvaluationSet::from_dirs(std::slice::from_ref(&a_test), &classes).unwrap();
    let on_b = EvaluationSet::from_dirs(std::slice::from_ref(&b_test), &classes).unwrap();
    let (parent_a, parent_b) = (accuracy(&parent, &on_a), accuracy(&parent, &on_b));
    eprintln!("parent: hospital A {parent_a:.3}, hospital B {parent_b:.3}");
    assert!(
        parent_a - parent_b >= 0.15,
        "the synthetic shift must cost accuracy to test adaptation (A {parent_a:.3}, B {parent_b:.3})"
    );

    // Feedback through the store, exported as the loop exports it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db_path = tmp.path().join("hospital-b.db");
    let url = format!("sqlite://{}", db_path.display());
    let export = tmp.path().join("export");
    let (db, keys) = rt.block_on(async {
        let db = oncolens::database::open(&url).await.unwrap();
        let keys = KeyRing::load_or_create(&oncolens::security::keys::KeySource::for_database(
            &url, None, None,
        ))
        .unwrap();
        let objects = oncolens::objects::Objects::open(
            &oncolens::objects::ObjectsLocation::default_for(&url).unwrap(),
        )
        .await
        .unwrap();
        store_feedback(&db, &objects, &keys, &parent, &b_slices).await;
        let report = feedback::export(&db, &objects, &keys, &export, &classes, 0.2, 1_790_200_000)
            .await
            .unwrap();
        eprintln!("{}", report.describe());
        (db, keys)
    });
    let manifest = FeedbackManifest::read(&export).unwrap();
    let trainable = manifest.files(&export, ItemUse::Train).len();
    assert!(trainable >= 200, "{trainable} corrections to train on");

    let child = tmp.path().join("child");
    let report = {
        let _one_at_a_time = common::training_lock();
        finetune(
            &FinetuneOptions {
                model: parent.clone(),
                feedback: export.clone(),
                data: Some(a_train.clone()),
                out: child.clone(),
                epochs: 8,
                learning_rate: 5e-4,
                replay_ratio: 1.0,
                seed: 5,
                progress: false,
            },
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap()
    };
    let (child_a, child_b) = (accuracy(&child, &on_a), accuracy(&child, &on_b));
    let recovered = (child_b - parent_b) / (parent_a - parent_b);
    eprintln!(
        "fine-tuned (epoch {} kept): hospital A {child_a:.3}, hospital B {child_b:.3}; {:.0} % of the shift's loss recovered",
        report.best_epoch,
        100.0 * recovered
    );
    assert!(recovered >= 0.6, "recovered {:.0} %", 100.0 * recovered);
    assert!(
        child_a >= parent_a - 0.02,
        "hospital A dropped from {parent_a:.3} to {child_a:.3}"
    );
    // The new version describes itself: parent, feedback, calibration.
    let m = oncolens::modelfile::bundle::read_manifest(&child).unwrap();
    let p = oncolens::modelfile::bundle::read_manifest(&parent).unwrap();
    assert_eq!(m.parent.as_ref().unwrap().version, p.version());
    let fb = m.feedback.as_ref().unwrap();
    assert_eq!(
        fb.class_counts.iter().sum::<usize>() + fb.validation,
        trainable
    );
    assert_eq!(fb.fingerprint, manifest.fingerprint(ItemUse::Train));
    assert!(m.trust.is_some(), "re-calibrated");
    assert_eq!(m.preprocessing, p.preprocessing, "same pre-processing");

    // The registry: the fine-tuned version passes the gate on hospital B's held-out images;
    // a barely trained one is refused against it.
    let worse = tmp.path().join("worse");
    common::train_model(&a_train, &worse, config(1));
    let models = tmp.path().join("models");
    rt.block_on(async {
        let eval = vec![b_test.clone(), export.clone(), a_test.clone()];
        let fallback = ModelSource::Directory(parent.clone());
        let files = registry::ModelFiles {
            objects: oncolens::objects::Objects::in_memory(),
            keys: std::sync::Arc::new(
                KeyRing::load_or_create(&oncolens::security::keys::KeySource::Ephemeral).unwrap(),
            ),
            folder: models.clone(),
        };
        let child_v = registry::register(&db, &files, &child, 1).await.unwrap();
        let worse_v = registry::register(&db, &files, &worse, 2).await.unwrap();
        assert_eq!(child_v.parent.as_deref(), Some(p.version().as_str()));
        let promote = |version: &str| PromoteOptions {
            version: version.to_string(),
            evaluation: eval.clone(),
            margin: 0.02,
            by: "admin".into(),
            fallback: fallback.clone(),
            dry_run: false,
            files: Some(files.clone()),
        };
        let accepted = registry::promote(&db, Some(&keys), &promote(&child_v.version), 3)
            .await
            .unwrap();
        eprintln!("{}", accepted.to_text());
        assert!(accepted.candidate.accuracy > accepted.served.accuracy);
        assert_eq!(
            store::registry::served(&db).await.unwrap().unwrap().version,
            child_v.version
        );
        let refused = registry::promote(&db, Some(&keys), &promote(&worse_v.version), 4).await;
        let text = format!("{}", refused.unwrap_err());
        eprintln!("{text}");
        assert!(text.contains("refused"), "{text}");
        assert_eq!(
            store::registry::served(&db).await.unwrap().unwrap().version,
            child_v.version,
            "a refused promotion changes nothing"
        );
        // `predict --registry` answers with the promoted version, as the server does.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args(["predict", "--format", "json", "--registry", &url])
            .arg(&b_slices[0].0)
            .env_remove("ONCOLENS_MODEL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["model_version"], child_v.version.as_str());
        // Both decisions are in the audit trail.
        let entries = oncolens::security::audit_log::list(
            &db,
            &oncolens::security::audit_log::Filter::default(),
        )
        .await
        .unwrap();
        let promotions: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "model.promote")
            .map(|e| e.outcome.clone())
            .collect();
        assert_eq!(promotions.len(), 2, "{promotions:?}");
    });
}
