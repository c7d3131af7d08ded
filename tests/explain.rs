//! Grad-CAM points at what decides the class: on synthetic slices whose class is "a bright blob
//! somewhere" vs "no blob", the map is hotter over the blob than over the rest of the head more
//! often than chance.

mod common;

use std::sync::atomic::AtomicBool;

use image::Luma;
use oncolens::data::image_io::GreyImage;
use oncolens::explain::Explainer;
use oncolens::model::Architecture;
use oncolens::train::config::TrainConfig;
use oncolens::train::{TrainOptions, train};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A head with a bright blob at a random spot; returns the image and the blob (x, y, r).
fn blob_slice(rng: &mut ChaCha8Rng, size: u32) -> (image::GrayImage, (f32, f32, f32)) {
    let c = size as f32 / 2.0;
    let (bx, by) = (
        c + rng.random_range(-0.22..0.22) * size as f32,
        c + rng.random_range(-0.25..0.25) * size as f32,
    );
    let r = size as f32 * 0.09;
    let img = image::GrayImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (
            (x as f32 - c) / (0.4 * size as f32),
            (y as f32 - c) / (0.45 * size as f32),
        );
        if dx * dx + dy * dy > 1.0 {
            return Luma([2]);
        }
        let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
        let v: f32 = if d2 < r * r {
            235.0
        } else {
            95.0 + rng.random_range(-25.0..25.0)
        };
        Luma([v as u8])
    });
    (img, (bx, by, r))
}

#[test]
fn grad_cam_is_hotter_over_the_deciding_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (class, with_blob) in [("blob", true), ("none", false)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..40 {
            let img = if with_blob {
                blob_slice(&mut rng, 128).0
            } else {
                common::slice(2, 128, &mut rng)
            };
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let out = tmp.path().join("model");
    let config = TrainConfig {
        architecture: Architecture::ResnetMini,
        input_size: 128,
        epochs: 12,
        batch_size: 16,
        learning_rate: 2e-3,
        patience: 12,
        validation_fraction: 0.2,
        seed: 3,
        ..Default::default()
    };
    let opts = TrainOptions {
        data,
        out: out.clone(),
        config,
        resume: false,
        progress: false,
        near_duplicates: None,
    };
    train(&opts, &AtomicBool::new(false)).unwrap();

    let explainer = Explainer::open(Some(&out)).unwrap();
    let blob_class = explainer
        .manifest
        .class_ids()
        .iter()
        .position(|c| c == "blob")
        .unwrap();
    let (mut hotter, n) = (0, 30);
    for _ in 0..n {
        let (img, (bx, by, r)) = blob_slice(&mut rng, 128);
        let grey: GreyImage = image::DynamicImage::ImageLuma8(img).to_luma32f();
        let e = explainer.explain(&grey, Some(blob_class)).unwrap();
        assert_eq!(e.map.dimensions(), (128, 128));
        let (mut inside, mut n_in, mut outside, mut n_out) = (0f32, 0, 0f32, 0);
        for (x, y, p) in e.map.enumerate_pixels() {
            let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
            let head = grey.get_pixel(x, y).0[0] > 0.05;
            if d2 < r * r {
                inside += p.0[0];
                n_in += 1;
            } else if head {
                outside += p.0[0];
                n_out += 1;
            }
        }
        if inside / n_in as f32 > outside / n_out.max(1) as f32 {
            hotter += 1;
        }
    }
    // Chance is about one half; a map with the wrong sign or from the wrong layer scores far
    // below it. Measured 21 of 30 with resnet-mini, whose last block is only 4x4 at this input
    // size: too coarse for the 90 %-peak-in-blob criterion of the explainability issue, which
    // needs a finer last block.
    assert!(
        hotter * 10 >= n * 6,
        "map hotter over the blob in only {hotter} of {n} images"
    );
}

#[test]
fn explain_command_writes_heatmap_and_overlay_at_original_size() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("scan (1).png");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    common::slice(0, 200, &mut rng).save(&img).unwrap();
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
        assert_eq!((png.width(), png.height()), (200, 200), "{f}");
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
