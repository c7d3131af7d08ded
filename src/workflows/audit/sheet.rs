//! Contact sheet: one row per duplicate group (largest first), thumbnails side by side with
//! their split and class, so a person can check the matches by eye.

use std::path::Path;

use image::{Rgb, RgbImage, imageops};
use plotters::prelude::*;

use super::Member;
use crate::core::error::{Error, Result};
use crate::imaging::load_grey;

const THUMB: u32 = 112;
const CAPTION: u32 = 18;
const PAD: u32 = 6;

/// Draws up to `max_rows` groups with up to `max_per_row` members each. `root` resolves the
/// members' relative paths. `titles` label each row (e.g. "exact, spans splits").
pub fn contact_sheet(
    path: &Path,
    root: &Path,
    rows: &[(String, Vec<Member>)],
    max_per_row: usize,
) -> Result<()> {
    let cols = rows
        .iter()
        .map(|(_, m)| m.len().min(max_per_row))
        .max()
        .unwrap_or(1) as u32;
    let row_h = THUMB + 2 * CAPTION + PAD;
    let (w, h) = (cols * (THUMB + PAD) + PAD, rows.len() as u32 * row_h + PAD);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (r, (_, members)) in rows.iter().enumerate() {
        for (c, m) in members.iter().take(max_per_row).enumerate() {
            let (x, y) = (
                PAD + c as u32 * (THUMB + PAD),
                PAD + r as u32 * row_h + 2 * CAPTION,
            );
            if let Ok(grey) = load_grey(&root.join(&m.path)) {
                let thumb = imageops::resize(&grey, THUMB, THUMB, imageops::FilterType::Triangle);
                for (tx, ty, p) in thumb.enumerate_pixels() {
                    let v = (p.0[0].clamp(0.0, 1.0) * 255.0) as u8;
                    canvas.put_pixel(x + tx, y + ty, Rgb([v, v, v]));
                }
            }
        }
    }
    let mut buf = canvas.into_raw();
    {
        let root_area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: &dyn std::fmt::Debug| Error::write_debug(path, e);
        crate::plot::ensure_font()?;
        for (r, (title, members)) in rows.iter().enumerate() {
            let y0 = (PAD + r as u32 * row_h) as i32;
            root_area
                .draw(&Text::new(
                    title.clone(),
                    (PAD as i32, y0),
                    ("sans-serif", 14).into_font(),
                ))
                .map_err(|e| err(&e))?;
            for (c, m) in members.iter().take(max_per_row).enumerate() {
                let x = (PAD + c as u32 * (THUMB + PAD)) as i32;
                let class: String = m.class.chars().take(14).collect();
                let split: String = m.split.chars().take(8).collect();
                root_area
                    .draw(&Text::new(
                        format!("{split}/{class}"),
                        (x, y0 + CAPTION as i32),
                        ("sans-serif", 12).into_font(),
                    ))
                    .map_err(|e| err(&e))?;
            }
        }
        root_area.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::write_debug(path, "sheet buffer size"))?;
    img.save(path).map_err(|e| Error::write(path, e))
}

/// Sheet rows for candidate pairs (as [`super::candidate_pairs`] returns them): three pairs a
/// row, numbered in order, each titled with its distance and correlation.
pub fn pair_rows(pairs: &[(Member, Member, u32, f32)]) -> Vec<(String, Vec<Member>)> {
    pairs
        .chunks(3)
        .enumerate()
        .map(|(r, chunk)| {
            let title = chunk
                .iter()
                .enumerate()
                .map(|(k, (_, _, d, c))| format!("#{} d={d} r={c:.2}", r * 3 + k + 1))
                .collect::<Vec<_>>()
                .join("      ");
            (
                title,
                chunk
                    .iter()
                    .flat_map(|(x, y, _, _)| [x.clone(), y.clone()])
                    .collect(),
            )
        })
        .collect()
}

/// Sheet rows for the first `count` duplicate groups of an audit, titled with their size and
/// kind, and whether they span splits or mix classes.
pub fn group_rows(groups: &[super::DuplicateGroup], count: usize) -> Vec<(String, Vec<Member>)> {
    groups
        .iter()
        .take(count)
        .map(|g| {
            let mut title = format!("{} members, {}", g.members.len(), g.kind);
            if g.spans_splits {
                title.push_str(", spans splits");
            }
            if g.mixes_classes {
                title.push_str(", LABEL CONFLICT");
            }
            (title, g.members.clone())
        })
        .collect()
}
