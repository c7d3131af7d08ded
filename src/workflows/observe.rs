//! Running a model over images of a labelled folder: the logits, pooled features and image
//! statistics that calibration and evaluation work from.

use std::path::Path;

use indicatif::ProgressBar;

use crate::data::ImageFolder;
use crate::data::loader::prepare_files;
use crate::imaging::{GreyImage, ImageStats, PreparedScan, Preprocessing};
use crate::runtime::{Compute, INFERENCE_BATCH, forward_rows};

/// Logits, pooled features and image statistics of one image of a folder.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Index in the folder's samples.
    pub index: usize,
    pub logits: Vec<f32>,
    pub pooled: Vec<f32>,
    pub stats: ImageStats,
    /// Original width and height.
    pub size: (u32, u32),
    pub label: usize,
    /// The whole frame as the input gate sees it.
    pub gate_view: GreyImage,
}

/// Decodes `indices` of `folder` and runs the network over them. Unreadable files are returned
/// apart, each as a sentence naming the file.
pub fn observe(
    compute: Compute<'_>,
    pre: &Preprocessing,
    folder: &ImageFolder,
    indices: &[usize],
    progress: Option<&ProgressBar>,
    tta: bool,
) -> (Vec<Observation>, Vec<String>) {
    let mut out = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for chunk in indices.chunks(4 * INFERENCE_BATCH) {
        let paths: Vec<&Path> = chunk
            .iter()
            .map(|&i| folder.samples[i].path.as_path())
            .collect();
        let mut ok: Vec<(usize, PreparedScan)> = Vec::with_capacity(chunk.len());
        for (&i, r) in chunk
            .iter()
            .zip(prepare_files(&paths, progress, |scan| scan.prepared(pre)))
        {
            match r {
                Ok(p) => ok.push((i, p)),
                Err(e) => skipped.push(e.sentence()),
            }
        }
        let images: Vec<&GreyImage> = ok.iter().map(|(_, p)| &p.image).collect();
        let (logits, pooled) = forward_rows(compute, &images, pre, tta);
        for (((index, scan), l), p) in ok.into_iter().zip(logits).zip(pooled) {
            out.push(Observation {
                index,
                logits: l,
                pooled: p,
                stats: scan.stats,
                size: scan.original_size,
                label: folder.samples[index].label,
                gate_view: scan.gate_view,
            });
        }
    }
    (out, skipped)
}
