//! The data audit finds exactly the duplicates planted in a synthetic set: exact copies,
//! re-encoded and resized copies, mirrored/rotated copies with changed contrast, and a label
//! conflict, without merging distinct images.

use std::collections::BTreeSet;
use std::path::Path;

use image::{GrayImage, ImageFormat, Luma, imageops};
use oncolens::workflows::audit::{NearDuplicateCriteria, audit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A head-shaped slice with random smooth "anatomy": distinct seeds give distinct pictures.
fn anatomy(seed: u64) -> GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bumps: Vec<(f32, f32, f32, f32)> = (0..7)
        .map(|_| {
            (
                rng.random_range(30.0..98.0),
                rng.random_range(25.0..103.0),
                rng.random_range(5.0..16.0),
                rng.random_range(-0.45..0.45),
            )
        })
        .collect();
    GrayImage::from_fn(128, 128, |x, y| {
        let (dx, dy) = ((x as f32 - 64.0) / 46.0, (y as f32 - 64.0) / 54.0);
        if dx * dx + dy * dy > 1.0 {
            return Luma([3]);
        }
        let mut v = 0.45;
        for &(bx, by, s, a) in &bumps {
            let d2 = (x as f32 - bx).powi(2) + (y as f32 - by).powi(2);
            v += a * (-d2 / (2.0 * s * s)).exp();
        }
        Luma([(v.clamp(0.05, 1.0) * 255.0) as u8])
    })
}

fn save(img: &GrayImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    match format {
        ImageFormat::Jpeg => {
            let mut f = std::fs::File::create(path).unwrap();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 70)
                .encode_image(img)
                .unwrap();
        }
        _ => img.save_with_format(path, format).unwrap(),
    }
}

fn contrast(img: &GrayImage, gain: f32, offset: f32) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let v = img.get_pixel(x, y).0[0] as f32 / 255.0;
        Luma([((v * gain + offset).clamp(0.0, 1.0) * 255.0) as u8])
    })
}

#[test]
fn audit_finds_exactly_the_planted_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tr = root.join("Training");
    let te = root.join("Testing");
    // Distinct images: 10 in training, 4 in testing, two classes.
    for i in 0..10u64 {
        save(
            &anatomy(100 + i),
            &tr.join(["alpha", "beta"][i as usize % 2])
                .join(format!("d ({i}).png")),
            ImageFormat::Png,
        );
    }
    for i in 0..4u64 {
        save(
            &anatomy(200 + i),
            &te.join(["alpha", "beta"][i as usize % 2])
                .join(format!("t ({i}).png")),
            ImageFormat::Png,
        );
    }
    // A: byte-identical copy across splits.
    let a = tr.join("alpha/a.png");
    save(&anatomy(1), &a, ImageFormat::Png);
    std::fs::create_dir_all(te.join("alpha")).unwrap();
    std::fs::copy(&a, te.join("alpha/a copy.png")).unwrap();
    // B: re-encoded as JPEG and resized, across splits.
    let b = anatomy(2);
    save(&b, &tr.join("beta/b.png"), ImageFormat::Png);
    save(&b, &tr.join("beta/b reencoded.jpg"), ImageFormat::Jpeg);
    save(
        &imageops::resize(&b, 96, 96, imageops::FilterType::Triangle),
        &te.join("beta/b small.png"),
        ImageFormat::Png,
    );
    // C: mirrored with more contrast, and rotated, inside training.
    let c = anatomy(3);
    save(&c, &tr.join("alpha/c.png"), ImageFormat::Png);
    save(
        &contrast(&imageops::flip_horizontal(&c), 1.2, 0.05),
        &tr.join("alpha/c mirrored.png"),
        ImageFormat::Png,
    );
    save(
        &imageops::rotate90(&c),
        &tr.join("alpha/c rotated.png"),
        ImageFormat::Png,
    );
    // D: the same picture under two labels.
    let d = tr.join("alpha/d.png");
    save(&anatomy(4), &d, ImageFormat::Png);
    std::fs::copy(&d, tr.join("beta/d.png")).unwrap();
    // An unreadable file is listed, not fatal.
    std::fs::write(tr.join("beta/broken.jpg"), b"\xFF\xD8\xFF garbage").unwrap();

    let (report, exclusions) = audit(root, NearDuplicateCriteria::default(), false).unwrap();
    let groups: BTreeSet<BTreeSet<String>> = report
        .groups
        .iter()
        .map(|g| g.members.iter().map(|m| m.path.clone()).collect())
        .collect();
    let expected: BTreeSet<BTreeSet<String>> = [
        vec!["Training/alpha/a.png", "Testing/alpha/a copy.png"],
        vec![
            "Training/beta/b.png",
            "Training/beta/b reencoded.jpg",
            "Testing/beta/b small.png",
        ],
        vec![
            "Training/alpha/c.png",
            "Training/alpha/c mirrored.png",
            "Training/alpha/c rotated.png",
        ],
        vec!["Training/alpha/d.png", "Training/beta/d.png"],
    ]
    .iter()
    .map(|g| g.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(groups, expected, "{}", report.to_text());
    // The label conflict is listed first; exact vs near is told apart.
    assert!(report.groups[0].mixes_classes);
    assert_eq!(
        report.groups.iter().filter(|g| g.kind == "exact").count(),
        2
    );
    assert_eq!(report.byte_identical_groups, 2);
    assert_eq!(report.unreadable.len(), 1);
    let leak = report.leakage.as_ref().unwrap();
    assert_eq!((leak.exact, leak.total, leak.test_images), (1, 2, 6));
    let mut leaked = exclusions.leaked_test_images.clone();
    leaked.sort();
    assert_eq!(
        leaked,
        vec!["Testing/alpha/a copy.png", "Testing/beta/b small.png"]
    );
    assert_eq!(
        report.splits.iter().map(|s| s.images).sum::<usize>(),
        report.images
    );
    assert!(report.to_text().contains("CONFLICT"));

    // The sheet is drawn for a person to check.
    let rows: Vec<_> = report
        .groups
        .iter()
        .map(|g| (g.kind.clone(), g.members.clone()))
        .collect();
    if oncolens::plot::ensure_font().is_ok() {
        let sheet = root.join("sheet.png");
        oncolens::workflows::audit::sheet::contact_sheet(&sheet, root, &rows, 8).unwrap();
        assert!(image::open(&sheet).unwrap().width() > 300);
    }
}
