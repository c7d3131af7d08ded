//! Writes the synthetic part of the non-MRI set the input check is measured on
//! (`scripts/non-mri-set.sh` adds the images that registry packages ship, and inverted copies of
//! real slices).
//!
//! cargo run --release --example non_mri_set -- OUT_DIR [PER_KIND] [--invert-from DIR --invert N]

#[path = "../tests/common/non_mri.rs"]
mod non_mri;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().ok_or_else(|| {
        anyhow::anyhow!("usage: non_mri_set OUT_DIR [PER_KIND] [--invert-from DIR --invert N]")
    })?);
    let per_kind: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    std::fs::create_dir_all(&out)?;
    let images = non_mri::synthetic_non_mri(per_kind, 2026);
    for (i, (kind, img)) in images.iter().enumerate() {
        img.save(out.join(format!("synthetic-{kind}-{i:03}.png")))?;
    }
    let mut written = images.len();
    // Inverted real slices: the same anatomy, but light background and dark tissue.
    if let Some(pos) = args.iter().position(|a| a == "--invert-from") {
        let dir = PathBuf::from(&args[pos + 1]);
        let n: usize = args
            .iter()
            .position(|a| a == "--invert")
            .and_then(|p| args.get(p + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        let mut files: Vec<PathBuf> = walk(&dir);
        files.sort();
        let step = (files.len() / n.max(1)).max(1);
        for (k, f) in files.iter().step_by(step).take(n).enumerate() {
            let mut img = image::open(f)?.to_luma8();
            image::imageops::invert(&mut img);
            img.save(out.join(format!("inverted-mri-{k:03}.png")))?;
            written += 1;
        }
    }
    println!("wrote {written} images to {}", out.display());
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("png"))
            {
                out.push(p);
            }
        }
    }
    out
}
