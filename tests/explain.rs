//! Grad-CAM points at what decides the class: on synthetic slices whose class is "a bright blob
//! at a random spot" vs "the same head without it", the map's peak falls inside the blob.

mod common;

use image::Luma;
use oncolens::imaging::GreyImage;
use oncolens::inference::Explainer;
use oncolens::model::Architecture;
use oncolens::modelfile::TrainConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: u32 = 128;

/// A textured head, with a bright blob at a random spot when `with_blob`. Both classes come from
/// the same generator, so the blob is the only thing that tells them apart: both carry bright
/// speckles of the blob's intensity, so the intensity histogram (and with it the percentile
/// rescaling of pre-processing) does not give the class away. Returns the image and the blob
/// (x, y, r).
fn head_slice(rng: &mut ChaCha8Rng, with_blob: bool) -> (image::GrayImage, (f32, f32, f32)) {
    let size = SIZE as f32;
    let c = size / 2.0;
    let (bx, by) = (
        c + rng.random_range(-0.22..0.22) * size,
        c + rng.random_range(-0.25..0.25) * size,
    );
    let r = size * 0.1;
    let img = image::GrayImage::from_fn(SIZE, SIZE, |x, y| {
        let (dx, dy) = (
            (x as f32 - c) / (0.4 * size),
            (y as f32 - c) / (0.45 * size),
        );
        if dx * dx + dy * dy > 1.0 {
            return Luma([rng.random_range(0..6)]);
        }
        let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
        let v: f32 = if (with_blob && d2 < r * r) || rng.random_bool(0.05) {
            225.0 + rng.random_range(-15.0..15.0)
        } else {
            95.0 + rng.random_range(-25.0..25.0)
        };
        Luma([v as u8])
    });
    (img, (bx, by, r))
}

fn train_blob_model(dir: &std::path::Path, architecture: Architecture) -> std::path::PathBuf {
    let data = dir.join("data");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (class, with_blob) in [("blob", true), ("none", false)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..48 {
            let img = head_slice(&mut rng, with_blob).0;
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let config = TrainConfig {
        architecture,
        input_size: SIZE as usize,
        epochs: 10,
        batch_size: 16,
        learning_rate: 2e-3,
        patience: 10,
        validation_fraction: 0.2,
        seed: 3,
        ..Default::default()
    };
    common::train_model(&data, &dir.join("model"), config).model_dir
}

/// Held-out blob images (of `n`) whose Grad-CAM peak (at the original size) lies in the blob.
fn peaks_in_blob(model: &std::path::Path, n: usize) -> usize {
    let explainer = Explainer::open(Some(model)).unwrap();
    let blob_class = explainer
        .manifest
        .class_ids()
        .iter()
        .position(|c| c == "blob")
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut inside = 0;
    for _ in 0..n {
        let (img, (bx, by, r)) = head_slice(&mut rng, true);
        let grey: GreyImage = image::DynamicImage::ImageLuma8(img).to_luma32f();
        let e = explainer.explain(&grey, Some(blob_class)).unwrap();
        assert_eq!(e.map.dimensions(), (SIZE, SIZE));
        let (mut best, mut at) = (f32::MIN, (0, 0));
        for (x, y, p) in e.map.enumerate_pixels() {
            if p.0[0] > best {
                (best, at) = (p.0[0], (x, y));
            }
        }
        let d2 = (at.0 as f32 + 0.5 - bx).powi(2) + (at.1 as f32 + 0.5 - by).powi(2);
        if d2 <= r * r {
            inside += 1;
        }
        if std::env::var_os("ONCOLENS_DEBUG_CAM").is_some() {
            eprintln!(
                "blob ({bx:.0},{by:.0}) r {r:.0}  peak {at:?}  p(blob) {:.2}",
                e.probabilities[blob_class]
            );
        }
    }
    inside
}

#[test]
fn grad_cam_peak_falls_inside_the_deciding_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let model = train_blob_model(tmp.path(), Architecture::ResnetFine);
    let n = 40;
    let inside = peaks_in_blob(&model, n);
    // The figure docs/explainability.md reports (`-- --show-output` prints it).
    println!("Grad-CAM peak inside the deciding blob in {inside} of {n} held-out images");
    // A map with the wrong sign, from the wrong layer or misplaced by the crop geometry puts
    // the peak in the blob (3 % of the image) far less often. Measured 40 of 40 with
    // resnet-fine; 22 of 40 before the map was aligned with the receptive-field centres (half
    // a cell off), 0 of 40 when the speckles were missing and percentile rescaling gave the
    // class away through the whole head's brightness. Seeds 3 to 7 all pass alone. The test
    // trains in a process of its own (no other training test in this file): burn's device RNG
    // is global, and a concurrent training would change this network's initialisation.
    assert!(
        inside * 10 >= n * 9,
        "peak inside the blob in only {inside} of {n}"
    );
}

/// A file of the shared data set (the test fails with what to install when it is missing).
fn shared_file(rel: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    assert!(
        p.is_file(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        p.display()
    );
    p
}

#[test]
fn explain_command_writes_heatmap_and_overlay_at_original_size() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("scan (1).jpg");
    std::fs::copy(
        shared_file("brain-tumor-mri/Testing/glioma_tumor/image(1).jpg"),
        &img,
    )
    .unwrap();
    let size = image::image_dimensions(&img).unwrap();
    let out = tmp.path().join("maps");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["explain", "--class", "glioma_tumor", "--out"])
        .arg(&out)
        .arg(&img)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("Grad-CAM of Glioma"));
    for f in ["scan (1).heatmap.png", "scan (1).overlay.png"] {
        let png = image::open(out.join(f)).unwrap();
        assert_eq!((png.width(), png.height()), size, "{f}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["explain", "--class", "stage_2", "--out"])
        .arg(&out)
        .arg(&img)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown class"));
}

#[test]
fn explain_draws_no_map_on_an_image_the_gate_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = tmp.path().join("xray.png");
    std::fs::copy(
        shared_file("non-mri/chest_xray/covid-19-image-repository__png_006f3a8a.png"),
        &ct,
    )
    .unwrap();
    let out = tmp.path().join("maps");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["explain", "--out"])
        .arg(&out)
        .arg(&ct)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(run.status.success());
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("not a brain MRI slice") && text.contains("X-ray"),
        "{text}"
    );
    assert!(!out.join("xray.heatmap.png").exists());
}

/// Grad-CAM from many threads at once on one shared model finishes, and each thread gets the
/// map it would get alone. (burn's autodiff merged the graphs of concurrent requests through
/// the shared head weights and could deadlock: a server hung under load.)
#[test]
fn concurrent_explanations_on_one_model_neither_hang_nor_mix() {
    let explainer = std::sync::Arc::new(Explainer::open(None).unwrap());
    let slices: Vec<GreyImage> = [("glioma_tumor", 1), ("no_tumor", 1), ("pituitary_tumor", 1)]
        .iter()
        .map(|(class, n)| oncolens::imaging::load_grey(&common::real_slice(class, *n)).unwrap())
        .collect();
    let alone: Vec<Vec<f32>> = slices
        .iter()
        .map(|s| explainer.explain(s, None).unwrap().map.into_raw())
        .collect();
    let (done, finished) = std::sync::mpsc::channel();
    for t in 0..4 {
        let (explainer, slices, alone, done) = (
            explainer.clone(),
            slices.clone(),
            alone.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            for i in 0..12 {
                let n = (t + i) % slices.len();
                let map = explainer.explain(&slices[n], None).unwrap().map.into_raw();
                assert!(map == alone[n], "thread {t}: slice {n} got another map");
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..4 {
        finished
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("a thread failed or hung: concurrent Grad-CAM deadlocked");
    }
}
