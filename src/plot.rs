//! Layer 1: PNG figures: the training curves (accuracy and loss, train vs validation) and the confusion
//! matrix. Text is drawn with a system TrueType font (DejaVu Sans from Debian's
//! `fonts-dejavu-core`, or any font given to [`prefer_font`], as the CLI's `--font` does).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::core::error::{Error, Result};

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// A font file to try before the system candidates (the CLI's `--font` / `$ONCOLENS_FONT`).
static PREFERRED: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Uses `path` for text in figures when it can be read; call before the first figure.
pub fn prefer_font(path: &Path) {
    let _ = PREFERRED.set(path.to_path_buf());
}

/// Registers a font with plotters once; an error names what to install.
pub fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = PREFERRED
            .get()
            .into_iter()
            .map(|p| p.as_path())
            .chain(FONT_CANDIDATES.iter().map(Path::new))
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                "no TrueType font found (install fonts-dejavu-core, or give one with --font or $ONCOLENS_FONT)"
                    .to_string()
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file could not be parsed".to_string())
    })
    .clone()
    .map_err(Error::Font)
}

fn draw_err(path: &Path, e: impl std::fmt::Debug) -> Error {
    Error::write_debug(path, e)
}

/// One line chart of `series` (name, colour index, values per epoch).
pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, &[f64])],
) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let values = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(0.0), hi.max(lo + 1e-3) * 1.05)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..n as f64, lo..hi)
        .map_err(|e| draw_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .draw()
        .map_err(|e| draw_err(path, e))?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, v)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(e, y)| ((e + 1) as f64, *y)),
                colour.stroke_width(2),
            ))
            .map_err(|e| draw_err(path, e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(path, e))?;
    root.present().map_err(|e| draw_err(path, e))
}

/// Confusion matrix as a heat-map grid with counts; rows are true classes.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    names: &[String],
    matrix: &[Vec<usize>],
) -> Result<()> {
    ensure_font()?;
    let k = names.len();
    let cell = 110i32;
    let (left, top) = (150i32, 70i32);
    let size = (
        (left + cell * k as i32 + 30) as u32,
        (top + cell * k as i32 + 60) as u32,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let text = |s: &str, x: i32, y: i32, px: i32| {
        Text::new(s.to_string(), (x, y), ("sans-serif", px).into_font())
    };
    root.draw(&text(title, 10, 10, 22))
        .map_err(|e| draw_err(path, e))?;
    root.draw(&text("rows: true class, columns: predicted", 10, 38, 15))
        .map_err(|e| draw_err(path, e))?;
    for (r, row) in matrix.iter().enumerate().take(k) {
        let row_total: usize = row.iter().sum::<usize>().max(1);
        for (c, &count) in row.iter().enumerate().take(k) {
            let share = count as f64 / row_total as f64;
            let shade = (255.0 * (1.0 - 0.85 * share)) as u8;
            let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(shade, shade, 255).filled(),
            ))
            .map_err(|e| draw_err(path, e))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| draw_err(path, e))?;
            let colour = if share > 0.55 { WHITE } else { BLACK };
            root.draw(&Text::new(
                format!("{count}"),
                (x + cell / 2 - 14, y + cell / 2 - 10),
                ("sans-serif", 22).into_font().color(&colour),
            ))
            .map_err(|e| draw_err(path, e))?;
        }
        root.draw(&text(
            &names[r],
            8,
            top + r as i32 * cell + cell / 2 - 8,
            16,
        ))
        .map_err(|e| draw_err(path, e))?;
    }
    for (c, name) in names.iter().enumerate() {
        root.draw(&text(
            name,
            left + c as i32 * cell + 6,
            top + cell * k as i32 + 12,
            15,
        ))
        .map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))
}

/// Points joined by lines on fixed axes: reliability diagrams (confidence vs accuracy, with the
/// diagonal of perfect calibration) and risk-coverage curves.
pub struct XyChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Draw the dashed line y = x ("perfectly calibrated").
    pub diagonal: bool,
}

impl XyChart<'_> {
    pub fn draw(&self, path: &Path, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
        ensure_font()?;
        let root = BitMapBackend::new(path, (700, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                self.x_range.0..self.x_range.1,
                self.y_range.0..self.y_range.1,
            )
            .map_err(|e| draw_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .draw()
            .map_err(|e| draw_err(path, e))?;
        if self.diagonal {
            let (lo, hi) = (
                self.x_range.0.max(self.y_range.0),
                self.x_range.1.min(self.y_range.1),
            );
            chart
                .draw_series(DashedLineSeries::new(
                    [(lo, lo), (hi, hi)],
                    6,
                    4,
                    BLACK.mix(0.5).stroke_width(1),
                ))
                .map_err(|e| draw_err(path, e))?
                .label("perfectly calibrated")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        let colours = [RED, BLUE, GREEN, MAGENTA];
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| draw_err(path, e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            if points.len() <= 30 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| draw_err(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(path, e))?;
        root.present().map_err(|e| draw_err(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_png() {
        if ensure_font().is_err() {
            // The font is a system package; .ci/run installs it. Without it, the error says so.
            let err = line_chart(Path::new("/nonexistent/x.png"), "t", "y", &[]).unwrap_err();
            assert!(err.to_string().contains("font"), "{err}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        line_chart(
            &p,
            "Loss",
            "loss",
            &[
                ("train", &[1.0, 0.5, 0.3]),
                ("validation", &[1.1, 0.7, 0.6]),
            ],
        )
        .unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (800, 500));
        let q = dir.path().join("cm.png");
        confusion_matrix(
            &q,
            "Confusion",
            &["A".into(), "B".into()],
            &[vec![3, 1], vec![0, 4]],
        )
        .unwrap();
        assert!(image::open(&q).is_ok());
    }
}
