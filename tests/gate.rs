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
