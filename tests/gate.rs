//! `oncolens gate evaluate`: the input gate's refusals per category, with intervals, and the
//! real MRI slices it wrongly refuses.

use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, img: image::DynamicImage) {
    std::fs::create_dir_all(dir).unwrap();
    img.save(dir.join(name)).unwrap();
}

#[test]
fn gate_evaluate_counts_refusals_per_category_and_wrong_refusals_of_real_slices() {
    let testing =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/brain-tumor-mri/Testing");
    assert!(
        testing.is_dir(),
        "{} is missing: this test needs the shared data set (see its SOURCE.md)",
        testing.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let non_mri = tmp.path().join("non-mri");
    for i in 0..6u8 {
        let flat = image::GrayImage::from_pixel(200, 200, image::Luma([20 + 30 * i]));
        write(&non_mri.join("flat"), &format!("{i}.png"), flat.into());
        let colour = image::RgbImage::from_fn(240, 180, |x, y| {
            image::Rgb([(x + 40 * u32::from(i)) as u8, (y * 2) as u8, 200])
        });
        write(&non_mri.join("colour"), &format!("{i}.png"), colour.into());
    }
    // Eight real slices, two of each class.
    let mri = tmp.path().join("mri");
    for class in [
        "glioma_tumor",
        "meningioma_tumor",
        "no_tumor",
        "pituitary_tumor",
    ] {
        let mut files: Vec<_> = std::fs::read_dir(testing.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir_all(mri.join(class)).unwrap();
        for f in files.iter().take(2) {
            std::fs::copy(f, mri.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    let json = tmp.path().join("gate.json");
    let out = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["gate", "evaluate", "--data"])
        .arg(&non_mri)
        .arg("--mri")
        .arg(&mri)
        .arg("--json")
        .arg(&json)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("95 % interval") && text.contains("wrongly refused"),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let categories = report["categories"].as_array().unwrap();
    let names: Vec<&str> = categories
        .iter()
        .map(|c| c["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["colour", "flat"]);
    for c in categories {
        assert_eq!(c["images"], 6, "{c}");
        assert_eq!(
            c["refused"], 6,
            "every {} image is refused: {c}",
            c["group"]
        );
        let [lo, hi] = [
            c["interval_95"][0].as_f64().unwrap(),
            c["interval_95"][1].as_f64().unwrap(),
        ];
        assert!(lo > 0.5 && hi == 1.0, "{c}");
    }
    let reasons = report["non_mri_overall"]["reasons"].as_object().unwrap();
    assert!(
        reasons.keys().any(|r| r.contains("colour picture")),
        "{reasons:?}"
    );
    assert!(reasons.keys().any(|r| r.contains("blank")), "{reasons:?}");
    let wrong = &report["mri_wrongly_refused"];
    assert_eq!(wrong["images"], 8, "{wrong}");
    assert!(wrong["refused"].as_u64().unwrap() <= 1, "{wrong}");
}

fn shared(rel: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    assert!(
        p.is_dir(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        p.display()
    );
    p
}

/// The first `n` files (sorted) of a folder.
fn first_files(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// The files of `data/brain-tumor-mri-not-mri.csv` (head CT slices inside the MRI set).
fn listed_not_mri() -> std::collections::HashSet<String> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/brain-tumor-mri-not-mri.csv");
    std::fs::read_to_string(list)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit_once(',').map(|(f, _)| f.to_string()))
        .collect()
}

#[test]
fn synthetic_negatives_are_refused_with_reasons() {
    use oncolens::imaging::synthetic::{SyntheticKind, synthetic};
    use rand::SeedableRng;
    let predictor = oncolens::inference::Predictor::load_default().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mri = oncolens::imaging::load_grey(
        &first_files(&shared("brain-tumor-mri/Testing/glioma_tumor"), 1)[0],
    )
    .unwrap();
    let mri = image::imageops::resize(&mri, 256, 256, image::imageops::FilterType::Triangle);
    for kind in SyntheticKind::ALL {
        let n = 8;
        let images: Vec<_> = (0..n)
            .map(|_| synthetic(kind, 256, Some(&mri), &mut rng))
            .collect();
        let answers = predictor.predict_images(&images);
        let refused = answers
            .iter()
            .filter(|p| p.verdict == oncolens::inference::Verdict::NotBrainMri)
            .inspect(|p| assert!(!p.rejection_reasons().is_empty(), "{kind:?}: {p:?}"))
            .count();
        // The CT look-alike is the hardest on purpose (measured: see docs/gate.md).
        let needed = if kind == SyntheticKind::CtLookAlike {
            n / 2
        } else {
            n
        };
        assert!(
            refused >= needed,
            "{kind:?}: {refused} of {n} refused: {:?}",
            answers
                .iter()
                .map(|p| p.input_check.clone())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn shared_non_mri_images_are_refused_in_every_category_with_the_gates_reason() {
    let predictor = oncolens::inference::Predictor::load_default().unwrap();
    let root = shared("non-mri");
    // category, words the gate's reason has, refusals needed of the first 20 (measured on all
    // the category's images: docs/gate.md).
    for (category, words, needed) in [
        ("head_ct", "CT", 15),
        ("chest_xray", "", 19),
        ("other_mri", "", 19),
        ("other_medical", "", 19),
        ("photos_docs", "", 19),
    ] {
        let files = first_files(&root.join(category), 20);
        let mut refused = 0;
        let mut with_words = 0;
        for f in &files {
            let p = predictor.predict_file(f).unwrap();
            let gate = p.input_check.as_ref().and_then(|c| c.gate.clone()).unwrap();
            assert!(gate.looks_like != "brain_mri", "{gate:?}");
            if p.verdict == oncolens::inference::Verdict::NotBrainMri {
                refused += 1;
                let reasons = p.rejection_reasons().join("; ");
                assert!(!reasons.is_empty(), "{}", f.display());
                with_words += usize::from(reasons.contains(words));
            }
        }
        assert!(
            refused >= needed,
            "{category}: {refused} of {} refused",
            files.len()
        );
        assert!(
            with_words * 10 >= refused * 9,
            "{category}: {with_words} of {refused} say {words:?}"
        );
    }
}

#[test]
fn real_mri_slices_pass_the_gate_and_listed_ct_slices_do_not() {
    let predictor = oncolens::inference::Predictor::load_default().unwrap();
    let testing = shared("brain-tumor-mri/Testing");
    let listed = listed_not_mri();
    let (mut real, mut refused) = (0, Vec::new());
    for class in [
        "glioma_tumor",
        "meningioma_tumor",
        "no_tumor",
        "pituitary_tumor",
    ] {
        for f in first_files(&testing.join(class), 12) {
            let key = format!(
                "Testing/{class}/{}",
                f.file_name().unwrap().to_string_lossy()
            );
            if listed.contains(&key) {
                continue;
            }
            real += 1;
            let p = predictor.predict_file(&f).unwrap();
            let gate = p.input_check.as_ref().and_then(|c| c.gate.clone()).unwrap();
            if gate.refused {
                refused.push(key);
            }
        }
    }
    // Measured on all 358 real Testing slices: docs/gate.md.
    assert!(
        refused.len() * 10 <= real,
        "{} of {real} refused: {refused:?}",
        refused.len()
    );
    // The head CTs found inside Testing are refused.
    let mut ct_refused = 0;
    for key in &listed {
        if let Some(rel) = key.strip_prefix("Testing/") {
            let p = predictor.predict_file(&testing.join(rel)).unwrap();
            ct_refused += usize::from(p.verdict == oncolens::inference::Verdict::NotBrainMri);
        }
    }
    assert!(
        ct_refused >= 15,
        "{ct_refused} of the listed Testing CT slices refused"
    );
}

#[test]
fn gate_train_writes_a_gate_that_gate_evaluate_and_the_model_use() {
    let tmp = tempfile::tempdir().unwrap();
    // A tiny MRI folder (real slices) with its split file, and a tiny non-MRI folder.
    let mri = tmp.path().join("mri");
    let testing = shared("brain-tumor-mri/Testing");
    let mut validation = Vec::new();
    let mut listed = String::from("file,kind\n");
    for class in ["glioma_tumor", "no_tumor"] {
        std::fs::create_dir_all(mri.join(class)).unwrap();
        for (i, f) in first_files(&testing.join(class), 12).iter().enumerate() {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(f, mri.join(class).join(&name)).unwrap();
            if i < 3 {
                validation.push(format!("{class}/{name}"));
            }
            if class == "no_tumor" && i == 5 {
                // Pretend this train-split slice is a CT found in the data set.
                listed.push_str(&format!("mri/{class}/{name},head_ct\n"));
            }
        }
    }
    let list = tmp.path().join("not-mri.csv");
    std::fs::write(&list, listed).unwrap();
    let split_dir = tmp.path().join("model");
    std::fs::create_dir_all(&split_dir).unwrap();
    std::fs::write(
        split_dir.join("split.json"),
        serde_json::json!({ "train": 18, "validation": validation }).to_string(),
    )
    .unwrap();
    let non_mri = tmp.path().join("non-mri");
    let shared_non_mri = shared("non-mri");
    for category in ["head_ct", "photos_docs"] {
        std::fs::create_dir_all(non_mri.join(category)).unwrap();
        for f in first_files(&shared_non_mri.join(category), 6) {
            std::fs::copy(&f, non_mri.join(category).join(f.file_name().unwrap())).unwrap();
        }
    }
    let gate = tmp.path().join("gate");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args(args)
            .env_remove("ONCOLENS_MODEL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let text = run(&[
        &os("gate"),
        &os("train"),
        &os("--mri"),
        mri.as_os_str(),
        &os("--split-from"),
        split_dir.as_os_str(),
        &os("--non-mri"),
        non_mri.as_os_str(),
        &os("--out"),
        gate.as_os_str(),
        &os("--iterations"),
        &os("50"),
        &os("--hold-out"),
        &os("tessdoc"),
        &os("--not-mri-list"),
        list.as_os_str(),
    ]);
    assert!(text.contains("threshold"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gate.join("gate.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = manifest["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["brain_mri", "head_ct", "photos_docs", "synthetic"]);
    // The listed slice left the positives and joined the head CTs.
    assert_eq!(manifest["data"]["mri_train"], 17);
    assert_eq!(manifest["data"]["not_mri_in_mri_folder"], 1);
    assert_eq!(manifest["data"]["mri_validation"], 6);
    assert_eq!(manifest["data"]["held_out_sources"][0], "tessdoc");
    assert!(
        !manifest["data"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "tessdoc"),
        "{manifest}"
    );
    let t = manifest["threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t), "{t}");
    // The trunk came from the bundled gate, with its taps and int8 ranges; the head has a row
    // per kind over every tap's mean and spread.
    assert_eq!(manifest["backbone"]["taps"], serde_json::json!([5, 8, 11]));
    assert!(
        manifest["backbone"]["int8"]["activations"]
            .as_array()
            .unwrap()
            .len()
            > 10
    );
    let rows = manifest["head"]["weights"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].as_array().unwrap().len(), 2 * (40 + 80 + 112));
    // Evaluating with that gate names it in the report.
    let text = run(&[
        &os("gate"),
        &os("evaluate"),
        &os("--data"),
        non_mri.as_os_str(),
        &os("--gate"),
        gate.as_os_str(),
    ]);
    assert!(text.contains(&*gate.to_string_lossy()), "{text}");
    // A corrupted gate is refused with a clear message, not used.
    std::fs::write(gate.join("gate.bpk"), b"not weights").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["gate", "evaluate", "--data"])
        .arg(&non_mri)
        .arg("--gate")
        .arg(&gate)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum"), "{err}");
}
