//! The command line as a user runs it: exit codes and messages.

mod common;

use std::process::Command;

fn oncolens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oncolens"))
}

/// `predict --model MODEL INPUT` exits non-zero and says `expected` on stderr.
fn predict_fails(model: &std::path::Path, input: &std::path::Path, expected: &str) {
    let out = oncolens()
        .args(["predict", "--model"])
        .arg(model)
        .arg(input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expected), "{err}");
}

#[test]
fn model_summary_reports_the_seed_parameter_count() {
    let out = oncolens()
        .args(["model", "summary", "--arch", "paper-cnn", "--channels", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Total params: 4,447,044"), "{text}");
    assert!(text.contains("256x10x10"));
    let out = oncolens()
        .args([
            "model",
            "summary",
            "--arch",
            "paper-cnn",
            "--input-size",
            "64",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 94"));
}

#[test]
fn missing_or_broken_models_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.png");
    image::GrayImage::from_pixel(32, 32, image::Luma([100]))
        .save(&img)
        .unwrap();
    predict_fails(tmp.path(), &img, "no model.json here");

    std::fs::write(
        tmp.path().join("model.json"),
        "{\"format\": \"oncolens-model\"}",
    )
    .unwrap();
    predict_fails(tmp.path(), &img, "missing a piece");
}

#[test]
fn train_then_predict_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("Training");
    common::write_folder(&data, 8, 48, 9);
    let model = tmp.path().join("model");
    let out = oncolens()
        .args([
            "train",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--quiet",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("epoch   1"));

    let out = oncolens()
        .args(["predict", "--format", "json", "--model"])
        .arg(&model)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 24);
    assert!(
        json["note"]
            .as_str()
            .unwrap()
            .contains("not a diagnostic device")
    );

    let out = oncolens()
        .args(["predict", "--format", "csv", "--model"])
        .arg(&model)
        .arg(tmp.path().join("nope.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // int8: refused until quantised, then close to f32 on the same images.
    let int8_refused = oncolens()
        .args(["predict", "--int8", "--model"])
        .arg(&model)
        .arg(&data)
        .output()
        .unwrap();
    assert!(!int8_refused.status.success());
    assert!(String::from_utf8_lossy(&int8_refused.stderr).contains("oncolens quantize"));
    let out = oncolens()
        .args(["quantize", "--images", "12", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("agrees with f32"));
    let probabilities = |extra: &[&str]| -> Vec<Vec<f64>> {
        let out = oncolens()
            .args(["predict", "--format", "json"])
            .args(extra)
            .arg("--model")
            .arg(&model)
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["prediction"]["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (f32_p, int8_p) = (probabilities(&[]), probabilities(&["--int8"]));
    assert_eq!(int8_p.len(), 24);
    let worst = f32_p
        .iter()
        .flatten()
        .zip(int8_p.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 0.1, "int8 probabilities differ from f32 by {worst}");

    // A tampered weights file is refused.
    let weights = model.join("weights.bpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&weights, bytes).unwrap();
    predict_fails(&model, &data, "checksum");
}

#[test]
fn predict_uses_the_bundled_model_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("slice (1).png");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    common::slice(0, 256, &mut rng).save(&img).unwrap();
    let out = oncolens()
        .args(["predict", "--format", "json"])
        .arg(&img)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &json["results"][0]["prediction"];
    let probs: Vec<f64> = p["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 4);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-3);
    let names = ["Glioma", "Meningioma", "No tumour", "Pituitary"];
    assert!(names.contains(&p["class_name"].as_str().unwrap()), "{p}");
    // Tumour types, never stages.
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        ["stage 1", "stage 2", "stage 3", "stage i"]
            .iter()
            .all(|s| !text.contains(s))
    );

    // On the real data when it is present: a glioma test slice is classified by the bundled model.
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/brain-tumor-mri/Testing/pituitary_tumor");
    assert!(
        real.is_dir(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        real.display()
    );
    {
        let out = oncolens()
            .args(["predict", "--format", "csv"])
            .arg(&real)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), 74);
        let pituitary = rows
            .iter()
            .filter(|r| r.split(',').nth(1) == Some("pituitary_tumor"))
            .count();
        assert!(
            pituitary * 2 > rows.len(),
            "{pituitary} of {} pituitary slices recognised",
            rows.len()
        );
    }
}
