//! How well the input gate (today: the model's input check) tells brain MRI slices from
//! everything else (`oncolens gate evaluate`): the share of images refused as "not a brain MRI
//! slice" in each category of a folder of non-MRI images, with Wilson 95 % intervals and the
//! reasons given, and the share of real MRI slices wrongly refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::core::DISCLAIMER;
use crate::core::error::Result;
use crate::data::ImageFolder;
use crate::data::not_mri::NotMriList;
use crate::inference::{Predictor, Verdict};
use crate::metrics::classification::wilson_interval;

/// What to measure on.
#[derive(Debug, Clone)]
pub struct GateOptions {
    /// A folder of categories, each a folder of images that are not brain MRI slices.
    pub non_mri: PathBuf,
    /// A folder of class folders of real brain MRI slices (e.g. Testing), to count false refusals.
    pub mri: Option<PathBuf>,
    /// Files of the MRI folder that are not brain MRI (a `file,kind` list): counted apart.
    pub not_mri: Option<PathBuf>,
}

/// Refusals in one group of images.
#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    pub group: String,
    pub images: usize,
    pub refused: usize,
    pub rate: f64,
    /// Wilson 95 % interval of `rate`.
    pub interval_95: [f64; 2],
    /// How often each reason was given (an image may have several).
    pub reasons: BTreeMap<String, usize>,
    /// Files that could not be read (not counted in `images`).
    pub unreadable: usize,
}

impl Refusals {
    pub(crate) fn new(group: &str) -> Self {
        Self {
            group: group.to_string(),
            images: 0,
            refused: 0,
            rate: 0.0,
            interval_95: [0.0, 1.0],
            reasons: BTreeMap::new(),
            unreadable: 0,
        }
    }

    pub(crate) fn finish(mut self) -> Self {
        self.rate = self.refused as f64 / self.images.max(1) as f64;
        self.interval_95 = wilson_interval(self.refused, self.images);
        self
    }

    /// One table row: group, images, refused, rate and interval.
    pub fn row(&self) -> String {
        format!(
            "{:<28} {:>6} {:>8} {:>7.1} %   {:>5.1} - {:>5.1} %",
            self.group,
            self.images,
            self.refused,
            100.0 * self.rate,
            100.0 * self.interval_95[0],
            100.0 * self.interval_95[1]
        )
    }

    /// The table's header line.
    pub fn header(first: &str) -> String {
        format!(
            "{:<28} {:>6} {:>8} {:>9}   {}",
            first, "images", "refused", "rate", "95 % interval"
        )
    }

    pub(crate) fn absorb(&mut self, other: &Refusals) {
        self.images += other.images;
        self.refused += other.refused;
        self.unreadable += other.unreadable;
        for (r, n) in &other.reasons {
            *self.reasons.entry(r.clone()).or_default() += n;
        }
    }
}

/// The gate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub model: String,
    /// The gate's name and where it came from.
    pub gate: Option<String>,
    pub non_mri_folder: String,
    /// Per category of the non-MRI folder, in folder order.
    pub categories: Vec<Refusals>,
    pub non_mri_overall: Refusals,
    /// Real MRI slices wrongly refused, when an MRI folder was given.
    pub mri_wrongly_refused: Option<Refusals>,
    /// Files of the MRI folder listed as not brain MRI, and how many of them were refused.
    pub mri_listed_not_mri: Option<Refusals>,
    pub note: String,
}

/// Runs the predictor's gate over `paths`, counting refusals.
pub(crate) fn refusals(predictor: &Predictor, group: &str, paths: &[PathBuf]) -> Refusals {
    let mut out = Refusals::new(group);
    for result in predictor.predict_files(paths) {
        match result {
            Ok(p) => {
                out.images += 1;
                if p.verdict == Verdict::NotBrainMri {
                    out.refused += 1;
                    for r in p.rejection_reasons() {
                        *out.reasons.entry(reason_kind(r)).or_default() += 1;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("{}", e.sentence());
                out.unreadable += 1;
            }
        }
    }
    out.finish()
}

/// A reason without the figures of one image (`its shape (512 x 86 pixels) is ...` ->
/// `its shape is ...`), so that the same reason is counted once.
fn reason_kind(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(open) = rest.find(" (") {
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        let inside = &rest[open + 2..open + close];
        out.push_str(&rest[..open]);
        if !inside.chars().any(|c| c.is_ascii_digit()) {
            out.push_str(&rest[open..open + close + 1]);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn paths_of(folder: &ImageFolder, class: usize) -> Vec<PathBuf> {
    folder
        .samples
        .iter()
        .filter(|s| s.label == class)
        .map(|s| s.path.clone())
        .collect()
}

/// Measures the gate of `predictor` on `opts`.
pub fn gate_report(predictor: &Predictor, opts: &GateOptions) -> Result<GateReport> {
    let folder = ImageFolder::scan(&opts.non_mri)?;
    let categories: Vec<Refusals> = folder
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| refusals(predictor, c, &paths_of(&folder, i)))
        .collect();
    let mut overall = Refusals::new("all non-MRI");
    for c in &categories {
        overall.absorb(c);
    }
    let listed = match &opts.not_mri {
        Some(p) => NotMriList::read(p)?,
        None => NotMriList::default(),
    };
    let (mri_wrongly_refused, mri_listed_not_mri) = match &opts.mri {
        Some(dir) => {
            let mri = ImageFolder::scan(dir)?;
            let (mut real, mut other) = (Vec::new(), Vec::new());
            for (i, s) in mri.samples.iter().enumerate() {
                match listed.kind_of(&mri, i) {
                    None => real.push(s.path.clone()),
                    Some(_) => other.push(s.path.clone()),
                }
            }
            let other =
                (!other.is_empty()).then(|| refusals(predictor, "listed as not brain MRI", &other));
            (Some(refusals(predictor, &display(dir), &real)), other)
        }
        None => (None, None),
    };
    Ok(GateReport {
        model: predictor.manifest.name.clone(),
        gate: predictor
            .gate()
            .map(|g| format!("{} ({})", g.manifest.name, g.origin)),
        non_mri_folder: display(&opts.non_mri),
        categories,
        non_mri_overall: overall.finish(),
        mri_wrongly_refused,
        mri_listed_not_mri,
        note: DISCLAIMER.into(),
    })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

impl GateReport {
    /// A table: refused per category with intervals, then the real slices refused.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let row = Refusals::row;
        let mut s = format!(
            "input checks of model {} with gate {} on {}\n{}\n",
            self.model,
            self.gate.as_deref().unwrap_or("(none)"),
            self.non_mri_folder,
            Refusals::header("category"),
        );
        for c in &self.categories {
            let _ = writeln!(s, "{}", row(c));
        }
        let _ = writeln!(s, "{}", row(&self.non_mri_overall));
        if let Some(m) = &self.mri_wrongly_refused {
            let _ = writeln!(s, "real MRI slices wrongly refused:\n{}", row(m));
        }
        if let Some(m) = &self.mri_listed_not_mri {
            let _ = writeln!(
                s,
                "files of the MRI folder that are not brain MRI (refused is right):\n{}",
                row(m)
            );
        }
        let mut reasons: Vec<(&String, &usize)> = self.non_mri_overall.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        if !reasons.is_empty() {
            let _ = writeln!(s, "reasons given for the non-MRI images:");
            for (r, n) in reasons {
                let _ = writeln!(s, "  {n:>5}  {r}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_counted_without_the_figures_of_one_image() {
        assert_eq!(
            reason_kind("its shape (512 x 86 pixels) is unlike an MRI slice"),
            "its shape is unlike an MRI slice"
        );
        let kept = "it lacks the dark background (an inverted image, a photo or a screenshot?)";
        assert_eq!(reason_kind(kept), kept);
    }
}
