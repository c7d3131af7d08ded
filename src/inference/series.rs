//! Series summaries: the answers for the slices of one DICOM series in one verdict.
//!
//! A tumour shows in a minority of the slices of a series (those that cut through it), so a
//! majority vote would call most tumour series "No tumour", the worst error this tool can
//! make. The rule instead: the series is called for the tumour type that the most confidently
//! answered slices call, provided at least [`MIN_SUPPORTING_SLICES`] slices call it (all of
//! them, for a series with fewer confident answers); failing that, for "No tumour" when some
//! slices were answered; with no confident answer at all, it has no call. Slices the input
//! gate or check refused, and uncertain ones, never vote; they are counted.
//!
//! A model without a "No tumour" class (a test model, say) gets the plain majority.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::predictor::{Prediction, Verdict};
use crate::imaging::dicom::DicomSource;
use crate::modelfile::Manifest;

/// Slices of the same tumour type needed to call a series for it.
pub const MIN_SUPPORTING_SLICES: usize = 2;

/// One slice of a series and its answer, as the summary is given it.
pub struct SeriesSlice<'a> {
    /// What names the slice: its file in `predict`, its analysis id in the server.
    pub slice: &'a str,
    pub source: &'a DicomSource,
    pub prediction: &'a Prediction,
}

/// A slice a series call rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupportingSlice {
    /// The slice's name as the summary was given it ([`SeriesSlice::slice`]).
    pub slice: String,
    pub sop_instance_uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_number: Option<i64>,
    pub frame: u32,
    pub confidence: f32,
}

/// What a series is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesCall {
    pub class_id: String,
    pub class_name: String,
    /// The slices that call this class, in series order.
    pub supporting_slices: Vec<SupportingSlice>,
    /// Mean calibrated probability of the class over its supporting slices.
    pub mean_confidence: f32,
}

/// The summary of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub modality: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_description: Option<String>,
    /// Slices received (frames of multi-frame objects count one each).
    pub slices: usize,
    /// Slices the model answered (confidently or not).
    pub analysed: usize,
    /// Of those, the ones whose answer is "uncertain".
    pub uncertain: usize,
    /// Slices the input gate or check refused.
    pub refused: usize,
    /// Confident answers per class id (every class listed, zeros included).
    pub votes: BTreeMap<String, usize>,
    /// The series' class and the slices that support it; `None` without a confident answer.
    pub most_probable: Option<SeriesCall>,
    /// The rule that made the call, in a sentence.
    pub rule: String,
}

/// Summaries of the series among `slices`, in the order each series first appears.
pub fn summarise_series(manifest: &Manifest, slices: &[SeriesSlice<'_>]) -> Vec<SeriesSummary> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&SeriesSlice<'_>>> = BTreeMap::new();
    for s in slices {
        let uid = s.source.series_instance_uid.as_str();
        if !groups.contains_key(uid) {
            order.push(uid);
        }
        groups.entry(uid).or_default().push(s);
    }
    order
        .into_iter()
        .map(|uid| summarise_one(manifest, &groups[uid]))
        .collect()
}

fn summarise_one(manifest: &Manifest, slices: &[&SeriesSlice<'_>]) -> SeriesSummary {
    let mut slices = slices.to_vec();
    slices.sort_by_key(|s| (s.source.instance_number, s.source.frame));
    let first = slices[0].source;
    let mut votes: BTreeMap<String, usize> =
        manifest.classes.iter().map(|c| (c.id.clone(), 0)).collect();
    let mut by_class: Vec<Vec<&SeriesSlice<'_>>> = vec![Vec::new(); manifest.classes.len()];
    let (mut analysed, mut uncertain, mut refused) = (0, 0, 0);
    for s in &slices {
        match s.prediction.verdict {
            Verdict::NotBrainMri => refused += 1,
            Verdict::Uncertain => {
                analysed += 1;
                uncertain += 1;
            }
            Verdict::Answer => {
                analysed += 1;
                if let Some(group) = by_class.get_mut(s.prediction.class_index) {
                    group.push(s);
                    *votes.entry(s.prediction.class_id.clone()).or_default() += 1;
                }
            }
        }
    }
    let confident: usize = by_class.iter().map(Vec::len).sum();
    let no_tumour = manifest.no_tumour_index();
    // Most votes first; ties go to the higher mean confidence.
    let strength = |i: usize| {
        let g = &by_class[i];
        let mean = g.iter().map(|s| s.prediction.confidence).sum::<f32>() / g.len().max(1) as f32;
        (g.len(), mean)
    };
    let best_of = |candidates: Vec<usize>| {
        candidates
            .into_iter()
            .filter(|&i| !by_class[i].is_empty())
            .max_by(|&a, &b| {
                let (na, ma) = strength(a);
                let (nb, mb) = strength(b);
                na.cmp(&nb).then(ma.total_cmp(&mb))
            })
    };
    let needed = MIN_SUPPORTING_SLICES.min(confident).max(1);
    let (call, rule) = match no_tumour {
        Some(none) => {
            let tumour = best_of((0..by_class.len()).filter(|&i| i != none).collect())
                .filter(|&i| by_class[i].len() >= needed);
            match tumour {
                Some(i) => (
                    Some(i),
                    format!(
                        "called for the tumour type that most confidently answered slices show \
                         ({} of {confident}; at least {needed} needed)",
                        by_class[i].len()
                    ),
                ),
                None if confident > 0 => (
                    Some(none),
                    format!(
                        "no tumour type is shown by {needed} or more confidently answered \
                         slices, so the series is called for no tumour ({} of {confident} \
                         slices say so)",
                        by_class[none].len()
                    ),
                ),
                None => (None, no_call_rule(analysed)),
            }
        }
        None => match best_of((0..by_class.len()).collect()) {
            Some(i) => (
                Some(i),
                format!(
                    "majority of the confidently answered slices ({} of {confident})",
                    by_class[i].len()
                ),
            ),
            None => (None, no_call_rule(analysed)),
        },
    };
    let most_probable = call.map(|i| {
        let support = &by_class[i];
        SeriesCall {
            class_id: manifest.classes[i].id.clone(),
            class_name: manifest.classes[i].display.clone(),
            supporting_slices: support
                .iter()
                .map(|s| SupportingSlice {
                    slice: s.slice.to_string(),
                    sop_instance_uid: s.source.sop_instance_uid.clone(),
                    instance_number: s.source.instance_number,
                    frame: s.source.frame,
                    confidence: s.prediction.confidence,
                })
                .collect(),
            mean_confidence: strength(i).1,
        }
    });
    SeriesSummary {
        series_instance_uid: first.series_instance_uid.clone(),
        study_instance_uid: first.study_instance_uid.clone(),
        modality: first.modality.clone(),
        series_description: first.series_description.clone(),
        slices: slices.len(),
        analysed,
        uncertain,
        refused,
        votes,
        most_probable,
        rule,
    }
}

fn no_call_rule(analysed: usize) -> String {
    if analysed == 0 {
        "no slice of the series was analysed (all were refused)".into()
    } else {
        "no slice was answered confidently, so the series has no call".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::dicom::WindowUsed;

    fn manifest() -> Manifest {
        serde_json::from_str(include_str!("../../models/default/model.json")).unwrap()
    }

    fn source(series: &str, instance: i64) -> DicomSource {
        DicomSource {
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: series.into(),
            sop_instance_uid: format!("{series}.{instance}"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            modality: "MR".into(),
            series_description: None,
            series_number: None,
            instance_number: Some(instance),
            frame: 0,
            frames: 1,
            transfer_syntax: "Explicit VR Little Endian".into(),
            photometric_interpretation: "MONOCHROME2".into(),
            window: WindowUsed::Percentile {
                low: 0.0,
                high: 1.0,
            },
            burned_in_annotation: None,
        }
    }

    fn prediction(m: &Manifest, class_id: &str, verdict: Verdict) -> Prediction {
        let i = m.classes.iter().position(|c| c.id == class_id).unwrap();
        let mut probabilities = vec![0.05; m.classes.len()];
        probabilities[i] = 0.85;
        Prediction {
            verdict,
            class_index: i,
            class_id: class_id.into(),
            class_name: m.classes[i].display.clone(),
            confidence: 0.85,
            uncertain: verdict == Verdict::Uncertain,
            probabilities,
            input_check: None,
            presence: None,
        }
    }

    /// Summary of one series whose slices say `calls` (class id, verdict), in instance order.
    fn summary(calls: &[(&str, Verdict)]) -> SeriesSummary {
        let m = manifest();
        let sources: Vec<DicomSource> = (0..calls.len())
            .map(|i| source("9.9", i as i64 + 1))
            .collect();
        let predictions: Vec<Prediction> =
            calls.iter().map(|(c, v)| prediction(&m, c, *v)).collect();
        let slices: Vec<SeriesSlice<'_>> = sources
            .iter()
            .zip(&predictions)
            .map(|(source, prediction)| SeriesSlice {
                slice: "f.dcm",
                source,
                prediction,
            })
            .collect();
        let mut all = summarise_series(&m, &slices);
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    const A: Verdict = Verdict::Answer;

    #[test]
    fn a_tumour_in_a_few_slices_wins_over_a_tumour_free_majority() {
        let mut calls = vec![("no_tumor", A); 7];
        calls.extend([("glioma_tumor", A); 3]);
        let s = summary(&calls);
        let call = s.most_probable.unwrap();
        assert_eq!(call.class_id, "glioma_tumor");
        let instances: Vec<_> = call
            .supporting_slices
            .iter()
            .map(|x| x.instance_number.unwrap())
            .collect();
        assert_eq!(instances, vec![8, 9, 10]);
        assert_eq!((s.slices, s.analysed, s.refused), (10, 10, 0));
        assert_eq!(s.votes["no_tumor"], 7);
        assert_eq!(s.votes["pituitary_tumor"], 0);
    }

    #[test]
    fn one_tumour_slice_is_not_enough_in_a_series_but_is_for_a_lone_slice() {
        let mut calls = vec![("no_tumor", A); 9];
        calls.push(("meningioma_tumor", A));
        let s = summary(&calls);
        assert_eq!(s.most_probable.unwrap().class_id, "no_tumor");
        let s = summary(&[("meningioma_tumor", A)]);
        assert_eq!(s.most_probable.unwrap().class_id, "meningioma_tumor");
    }

    #[test]
    fn refused_and_uncertain_slices_do_not_vote() {
        let s = summary(&[
            ("glioma_tumor", Verdict::NotBrainMri),
            ("glioma_tumor", Verdict::NotBrainMri),
            ("glioma_tumor", Verdict::Uncertain),
        ]);
        assert!(s.most_probable.is_none());
        assert_eq!((s.analysed, s.uncertain, s.refused), (1, 1, 2));
        assert!(
            s.rule.contains("no slice was answered confidently"),
            "{}",
            s.rule
        );
        let s = summary(&[("no_tumor", Verdict::NotBrainMri)]);
        assert!(s.rule.contains("all were refused"), "{}", s.rule);
    }
}
