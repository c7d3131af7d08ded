//! Calibration, "uncertain", the presence rule and the input check, end to end: training fits
//! them and stores them in the model file; prediction refuses images that are not brain MRI
//! slices, with reasons, says "No tumour" only when the rule allows, and keeps answering real
//! (or, without the shared data, synthetic) slices.

mod common;

use std::io::Cursor;
use std::path::Path;

use common::non_mri::synthetic_non_mri;
use image::{DynamicImage, ImageFormat};
use oncolens::imaging::Scan;
use oncolens::inference::{Predictor, Verdict};
use oncolens::model::Architecture;
use oncolens::modelfile::TrainConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn encoded(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Every synthetic non-MRI kind is refused with a reason; returns how many were checked.
fn assert_non_mri_refused(predictor: &Predictor) -> usize {
    let images = synthetic_non_mri(2, 77);
    for (kind, img) in &images {
        let scan = Scan::decode(&encoded(img, ImageFormat::Png)).unwrap();
        let p = predictor
            .predict_scans(std::slice::from_ref(&scan))
            .remove(0);
        assert_eq!(
            p.verdict,
            Verdict::NotBrainMri,
            "{kind} was answered: {p:?}"
        );
        assert!(!p.rejection_reasons().is_empty(), "{kind}: no reason given");
        assert_eq!(p.label(), "not a brain MRI slice");
    }
    images.len()
}

#[test]
fn training_fits_calibration_and_an_input_check_that_refuses_non_mri() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The third class (no blob) is named as the tumour-free class, so a presence rule is fitted.
    common::write_folder_named(&data, &["bright blob", "dark blob", "no_tumor"], 36, 64, 21);
    let config = TrainConfig {
        architecture: Architecture::ResnetMini,
        input_size: 64,
        epochs: 8,
        batch_size: 16,
        learning_rate: 2e-3,
        patience: 8,
        validation_fraction: 0.25,
        seed: 5,
        ..Default::default()
    };
    let out = common::train_model(&data, &tmp.path().join("model"), config).model_dir;
    for f in ["calibration.json", "reliability.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The model's own input check is under test: the bundled gate, which knows real brain
    // MRI, would (rightly) refuse these synthetic slices before it.
    let predictor = Predictor::load(&out).unwrap().with_gate(None);
    let trust = predictor.manifest.trust.clone().expect("no trust profile");
    assert!(trust.temperature > 0.0 && trust.temperature.is_finite());
    assert!(trust.features.threshold.is_finite() && trust.features.threshold > 0.0);
    let threshold = predictor.manifest.uncertainty_threshold;
    assert!((0.0..=1.0).contains(&threshold));

    assert_non_mri_refused(&predictor);

    // Fresh slices from the training distribution are answered (or uncertain), not refused.
    let mut rng = ChaCha8Rng::seed_from_u64(1234);
    let n = 30;
    let scans: Vec<Scan> = (0..n)
        .map(|i| {
            let img = DynamicImage::ImageLuma8(common::slice(i % 3, 64, &mut rng));
            Scan::decode(&encoded(&img, ImageFormat::Png)).unwrap()
        })
        .collect();
    let predictions = predictor.predict_scans(&scans);
    let mut refused = 0;
    for p in &predictions {
        refused += usize::from(p.verdict == Verdict::NotBrainMri);
        assert_eq!(p.uncertain, p.confidence < threshold);
        let sum: f32 = p.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4);
    }
    assert!(
        refused * 10 <= n,
        "{refused} of {n} in-distribution slices refused"
    );

    // The presence rule: fitted with the default weight of a missed tumour, and obeyed.
    let rule = trust.presence.clone().expect("no presence rule fitted");
    assert_eq!(rule.no_tumour_class, 2);
    assert!((rule.min_no_tumour_probability - 0.8).abs() < 1e-6);
    let v = &rule.validation;
    assert_eq!(v.tumours + v.tumour_free, trust.fitted_on_validation);
    assert!(v.tumours_called_no_tumour <= rule.validation_most_probable.tumours_called_no_tumour);
    let doubtful = |p: &[f32]| p[2] < 0.8 && p[2] > p[0] && p[2] > p[1];
    let mut saw_no_tumour = false;
    for p in &predictions {
        let finding = p.presence.clone().expect("no presence finding");
        if p.class_index == 2 {
            saw_no_tumour = true;
            assert!(p.probabilities[2] >= 0.8, "{:?}", p.probabilities);
        }
        assert_eq!(finding.no_tumour_withheld, doubtful(&p.probabilities));
        assert_eq!(p.no_tumour_withheld(), p.presence_note().is_some());
        if finding.no_tumour_withheld {
            assert!(
                p.label().starts_with("tumour not ruled out"),
                "{}",
                p.label()
            );
        }
    }
    assert!(
        saw_no_tumour,
        "no slice without a blob was called tumour-free"
    );

    // `calibrate --miss-cost` refits the rule: 1 answers the most probable class; a weight
    // below 1 is refused with the reason, and the model file stays as it was.
    let calibrate = |cost: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args(["calibrate", "--quiet", "--miss-cost", cost, "--model"])
            .arg(&out)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap()
    };
    let manifest = || std::fs::read_to_string(out.join("model.json")).unwrap();
    let before = manifest();
    let refused = calibrate("0.5");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--miss-cost"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(manifest(), before);
    let done = calibrate("1");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains(
        "presence rule: \"No tumour\" only at a calibrated probability of at least 0.50"
    ));
    let refitted = Predictor::load(&out).unwrap().with_gate(None);
    let rule = refitted
        .manifest
        .trust
        .as_ref()
        .unwrap()
        .presence
        .clone()
        .unwrap();
    assert!((rule.min_no_tumour_probability - 0.5).abs() < 1e-6);
    assert_eq!(rule.validation, rule.validation_most_probable);
}

/// The bundled model on the shared data (when present): real test slices pass the input check,
/// synthetic non-MRI images do not.
#[test]
fn bundled_model_accepts_real_slices_and_refuses_non_mri() {
    let predictor = Predictor::load_default().unwrap();
    assert!(
        predictor.manifest.trust.is_some(),
        "the bundled model is not calibrated"
    );
    assert_non_mri_refused(&predictor);
    let testing =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/brain-tumor-mri/Testing");
    assert!(
        testing.is_dir(),
        "{} is missing: this test needs the shared data set (../shared/data/brain-tumor-mri, \
         see its SOURCE.md)",
        testing.display()
    );
    let mut files = Vec::new();
    for class in [
        "glioma_tumor",
        "meningioma_tumor",
        "no_tumor",
        "pituitary_tumor",
    ] {
        let mut in_class: Vec<_> = std::fs::read_dir(testing.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        in_class.sort();
        files.extend(in_class.into_iter().step_by(7).take(15));
    }
    // Head CT slices found inside Testing (data/brain-tumor-mri-not-mri.csv) are not real MRI
    // slices: refusing them is right.
    let listed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/brain-tumor-mri-not-mri.csv"),
    )
    .unwrap();
    files.retain(|f| {
        let key = format!(
            "Testing/{}/{}",
            f.parent().unwrap().file_name().unwrap().to_string_lossy(),
            f.file_name().unwrap().to_string_lossy()
        );
        !listed.lines().any(|l| l.starts_with(&format!("{key},")))
    });
    let results = predictor.predict_files(&files);
    let refused: Vec<_> = files
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.as_ref().unwrap().verdict == Verdict::NotBrainMri)
        .map(|(f, _)| f.display().to_string())
        .collect();
    // Measured on the whole Testing folder with the input gate (docs/gate.md): more than the
    // target of 2 % of real slices are refused (issue #14 stays open on it); more than one in
    // eight of this sample would be a regression.
    assert!(
        refused.len() * 8 <= files.len(),
        "{} of {} real slices refused: {refused:?}",
        refused.len(),
        files.len()
    );
}
