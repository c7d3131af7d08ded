//! The analysis itself, run on a blocking thread: decode, pre-process, classify, Grad-CAM, and
//! the two PNGs the page shows (the scan, and the coloured heat-map with alpha for the overlay).

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgba, RgbaImage, imageops};

use crate::core::error::sentence;
use crate::imaging::Scan;
use crate::imaging::gate_view::gate_view;
use crate::inference::render::colour;
use crate::inference::{Explainer, Prediction, prediction_from};

/// Longest side of the stored display image.
pub const DISPLAY_SIDE: u32 = 1024;

pub struct Outcome {
    pub prediction: Prediction,
    pub image_png: Vec<u8>,
    pub heatmap_png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why an upload could not be analysed, as a sentence for the person who sent it.
#[derive(Debug)]
pub struct Rejected(pub String);

fn png(img: DynamicImage) -> Result<Vec<u8>, Rejected> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| Rejected(format!("the result image could not be encoded: {e}")))?;
    Ok(out.into_inner())
}

pub fn analyse(explainer: &Explainer, bytes: &[u8]) -> Result<Outcome, Rejected> {
    let scan = Scan::decode(bytes)
        .map_err(|e| Rejected(format!("The file could not be read: {}.", sentence(&e))))?;
    let grey = &scan.image;
    let explanation = explainer
        .explain(grey, None)
        .map_err(|e| Rejected(format!("The scan could not be analysed: {}.", e.sentence())))?;
    let finding = explainer
        .gate_findings(&[&gate_view(grey)])
        .into_iter()
        .next()
        .flatten();
    let prediction = prediction_from(
        &explainer.manifest,
        &explanation.logits,
        Some((&scan.stats(), grey.dimensions(), &explanation.pooled)),
        explainer.gate().map(|g| &g.manifest).zip(finding.as_ref()),
    );
    let (w, h) = grey.dimensions();
    let scale = (DISPLAY_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (dw, dh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let display = GrayImage::from_fn(w, h, |x, y| {
        Luma([(grey.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0) as u8])
    });
    let display = imageops::resize(&display, dw, dh, imageops::FilterType::Triangle);
    let map = imageops::resize(&explanation.map, dw, dh, imageops::FilterType::Triangle);
    let heat = RgbaImage::from_fn(dw, dh, |x, y| {
        let v = map.get_pixel(x, y).0[0].clamp(0.0, 1.0);
        let [r, g, b] = colour(v);
        Rgba([r, g, b, (v * 255.0) as u8])
    });
    Ok(Outcome {
        prediction,
        image_png: png(DynamicImage::ImageLuma8(display))?,
        heatmap_png: png(DynamicImage::ImageRgba8(heat))?,
        width: dw,
        height: dh,
    })
}
