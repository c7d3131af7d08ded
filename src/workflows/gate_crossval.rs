//! How well the input gate refuses kinds of image it has never seen (`oncolens gate
//! cross-validate`): the sources of the non-MRI folder are dealt into folds, a gate is trained
//! without each fold's sources, and the whole input check (image statistics, that gate, the
//! classifier's feature distance) is run on the images of the sources it never saw. Each image
//! is counted once, by the gate that did not train on its source, so the figures say what a
//! new collection of CTs or X-rays would meet; a fold never splits a source.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::gate_report::{Refusals, refusals};
use super::gate_train::{GateTrainOptions, fit_gate, source_of};
use crate::core::DISCLAIMER;
use crate::core::error::Result;
use crate::data::ImageFolder;
use crate::inference::Predictor;
use crate::runtime::LoadedGate;

/// One fold: the sources held out and the gate's threshold without them.
#[derive(Debug, Clone, Serialize)]
pub struct FoldReport {
    pub held_out_sources: Vec<String>,
    pub threshold: f32,
    pub validation_mri_refused: usize,
    pub validation_mri: usize,
    pub seconds: f64,
}

/// The cross-validation's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CrossValidationReport {
    pub model: String,
    pub non_mri_folder: String,
    pub folds: Vec<FoldReport>,
    /// Refusals of held-out-source images, per category.
    pub categories: Vec<Refusals>,
    /// Refusals per held-out source (`category/source`).
    pub sources: Vec<Refusals>,
    pub overall: Refusals,
    pub note: String,
}

/// Deals sources (with their image counts) into `k` folds of similar size: largest first, each
/// to the fold with the fewest images so far.
pub fn deal_sources(counts: &BTreeMap<String, usize>, k: usize) -> Vec<Vec<String>> {
    let mut sources: Vec<(&String, &usize)> = counts.iter().collect();
    sources.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut folds: Vec<(usize, Vec<String>)> = vec![(0, Vec::new()); k.max(1)];
    for (source, &n) in sources {
        if let Some(f) = folds.iter_mut().min_by_key(|f| f.0) {
            f.0 += n;
            f.1.push(source.clone());
        }
    }
    folds
        .into_iter()
        .map(|f| f.1)
        .filter(|f| !f.is_empty())
        .collect()
}

/// Runs the cross-validation with `folds` folds; each fold's gate is trained with `opts`
/// (its `hold_out` replaced) and measured inside `predictor`'s input check.
pub fn cross_validate(
    predictor: Predictor,
    opts: &GateTrainOptions,
    folds: usize,
) -> Result<CrossValidationReport> {
    let folder = ImageFolder::scan(&opts.non_mri)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in &folder.samples {
        *counts.entry(source_of(&s.path)).or_default() += 1;
    }
    let model = predictor.manifest.name.clone();
    let mut predictor = predictor;
    let mut fold_reports = Vec::new();
    let mut by_source: BTreeMap<(usize, String), Refusals> = BTreeMap::new();
    for held_out in deal_sources(&counts, folds) {
        let mut fold = opts.clone();
        fold.hold_out = held_out.clone();
        let trained = fit_gate(&fold)?;
        tracing::info!(
            "fold without {:?}: threshold {:.4}, trained in {:.0} s",
            held_out,
            trained.manifest.threshold,
            trained.seconds
        );
        fold_reports.push(FoldReport {
            held_out_sources: held_out.clone(),
            threshold: trained.manifest.threshold,
            validation_mri_refused: trained.manifest.validation_mri_refused,
            validation_mri: trained.validation_scores.len(),
            seconds: trained.seconds,
        });
        let gate = LoadedGate::from_parts(trained.manifest, &trained.trunk, "fold".into())?;
        predictor = predictor.with_gate(Some(gate));
        for (c, category) in folder.classes.iter().enumerate() {
            for source in &held_out {
                let paths: Vec<PathBuf> = folder
                    .samples
                    .iter()
                    .filter(|s| s.label == c && &source_of(&s.path) == source)
                    .map(|s| s.path.clone())
                    .collect();
                if !paths.is_empty() {
                    let group = format!("{category}/{source}");
                    by_source.insert((c, group.clone()), refusals(&predictor, &group, &paths));
                }
            }
        }
    }
    let mut categories: Vec<Refusals> = folder.classes.iter().map(|c| Refusals::new(c)).collect();
    let mut overall = Refusals::new("all non-MRI (held-out sources)");
    for ((c, _), r) in &by_source {
        categories[*c].absorb(r);
        overall.absorb(r);
    }
    Ok(CrossValidationReport {
        model,
        non_mri_folder: opts.non_mri.display().to_string(),
        folds: fold_reports,
        categories: categories.into_iter().map(Refusals::finish).collect(),
        sources: by_source.into_values().collect(),
        overall: overall.finish(),
        note: DISCLAIMER.into(),
    })
}

impl CrossValidationReport {
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "input checks of model {} with gates trained without the sources they are measured \
             on ({} folds), {}\n{}\n",
            self.model,
            self.folds.len(),
            self.non_mri_folder,
            Refusals::header("category")
        );
        for c in &self.categories {
            let _ = writeln!(s, "{}", c.row());
        }
        let _ = writeln!(
            s,
            "{}\n\n{}",
            self.overall.row(),
            Refusals::header("source")
        );
        for r in &self.sources {
            let _ = writeln!(s, "{}", r.row());
        }
        let _ = writeln!(
            s,
            "\nfolds (validation MRI slices refused by each fold's threshold):"
        );
        for f in &self.folds {
            let _ = writeln!(
                s,
                "  threshold {:.4}, {}/{} refused, without {}",
                f.threshold,
                f.validation_mri_refused,
                f.validation_mri,
                f.held_out_sources.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_never_split_a_source_and_stay_balanced() {
        let counts: BTreeMap<String, usize> =
            [("a", 238), ("b", 108), ("c", 68), ("d", 64), ("e", 22)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let folds = deal_sources(&counts, 3);
        assert_eq!(folds.len(), 3);
        let mut all: Vec<String> = folds.concat();
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        assert_eq!(folds[0], ["a"]);
        assert_eq!(deal_sources(&counts, 10).len(), 5);
    }
}
