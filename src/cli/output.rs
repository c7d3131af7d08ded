//! `predict`'s answers as a table, JSON or CSV.

use anyhow::Result;
use oncolens::core::DISCLAIMER;
use oncolens::inference::series::SeriesSlice;
use oncolens::inference::{Prediction, SeriesSummary, SliceAnswer, Verdict, summarise_series};
use oncolens::modelfile::Manifest;

use super::args::Format;

/// One input file and its answers, one per slice (or why it has none).
pub type Answer = oncolens::workflows::batch_jobs::FileAnswers;

/// Every slice with the file it came from: what the table and CSV print a row for.
fn slices(results: &[Answer]) -> impl Iterator<Item = (String, Result<&SliceAnswer, String>)> {
    results.iter().flat_map(|(f, r)| {
        let file = f.display().to_string();
        let rows: Vec<(String, Result<&SliceAnswer, String>)> = match r {
            Ok(answers) => answers
                .iter()
                .map(|a| (slice_name(&file, a), Ok(a)))
                .collect(),
            Err(e) => vec![(file, Err(e.clone()))],
        };
        rows
    })
}

/// `file`, or `file#frame` (1-based) for a frame of a multi-frame DICOM object.
fn slice_name(file: &str, a: &SliceAnswer) -> String {
    match &a.dicom {
        Some(d) if d.frames > 1 => format!("{file}#{}", d.frame + 1),
        _ => file.to_string(),
    }
}

/// The series summaries of the DICOM slices among the results.
pub fn series(manifest: &Manifest, results: &[Answer]) -> Vec<SeriesSummary> {
    let names: Vec<(String, &SliceAnswer)> = results
        .iter()
        .filter_map(|(f, r)| Some((f.display().to_string(), r.as_ref().ok()?)))
        .flat_map(|(f, answers)| answers.iter().map(move |a| (f.clone(), a)))
        .collect();
    let slices: Vec<SeriesSlice<'_>> = names
        .iter()
        .filter_map(|(file, a)| {
            Some(SeriesSlice {
                slice: file,
                source: a.dicom.as_ref()?,
                prediction: &a.prediction,
            })
        })
        .collect();
    summarise_series(manifest, &slices)
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Answer => "answer",
        Verdict::Uncertain => "uncertain",
        Verdict::NotBrainMri => "not_brain_mri",
    }
}

pub fn print(format: Format, manifest: &Manifest, results: &[Answer]) -> Result<()> {
    match format {
        Format::Json => json(manifest, results),
        Format::Csv => csv(manifest, results),
        Format::Table => {
            table(manifest, results);
            Ok(())
        }
    }
}

fn json(manifest: &Manifest, results: &[Answer]) -> Result<()> {
    let mut items: Vec<serde_json::Value> = Vec::new();
    for (f, r) in results {
        match r {
            Ok(answers) => items.extend(answers.iter().map(|a| match &a.dicom {
                Some(d) => serde_json::json!({"file": f, "frame": d.frame, "dicom": d, "prediction": a.prediction}),
                None => serde_json::json!({"file": f, "prediction": a.prediction}),
            })),
            Err(e) => items.push(serde_json::json!({"file": f, "error": e})),
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": manifest.name,
            "model_version": manifest.version(),
            "note": DISCLAIMER,
            "results": items,
            "series": series(manifest, results),
        }))?
    );
    Ok(())
}

fn csv(manifest: &Manifest, results: &[Answer]) -> Result<()> {
    let mut w = csv::Writer::from_writer(std::io::stdout());
    let mut header: Vec<String> = ["file", "class", "confidence", "uncertain", "verdict"]
        .map(String::from)
        .to_vec();
    header.extend(manifest.class_ids().iter().map(|c| format!("p_{c}")));
    header.push("not_mri_reasons".into());
    header.push("gate_brain_mri_score".into());
    header.push("error".into());
    header.extend(["series_instance_uid", "sop_instance_uid", "frame"].map(String::from));
    // Last, so that readers of the earlier columns by position keep working.
    header.push("no_tumour_withheld".into());
    w.write_record(&header)?;
    for (f, r) in slices(results) {
        let mut row = vec![f];
        match r {
            Ok(a) => {
                let p = &a.prediction;
                row.extend([
                    p.class_id.clone(),
                    format!("{:.4}", p.confidence),
                    p.uncertain.to_string(),
                    verdict_name(p.verdict).into(),
                ]);
                row.extend(p.probabilities.iter().map(|v| format!("{v:.4}")));
                row.push(p.rejection_reasons().join("; "));
                row.push(gate_score(p).map_or_else(String::new, |g| format!("{g:.4}")));
                row.push(String::new());
                match &a.dicom {
                    Some(d) => row.extend([
                        d.series_instance_uid.clone(),
                        d.sop_instance_uid.clone(),
                        d.frame.to_string(),
                    ]),
                    None => row.extend([String::new(), String::new(), String::new()]),
                }
                row.push(
                    p.presence
                        .as_ref()
                        .map_or_else(String::new, |f| f.no_tumour_withheld.to_string()),
                );
            }
            Err(e) => {
                row.extend(std::iter::repeat_n(
                    String::new(),
                    4 + manifest.classes.len() + 2,
                ));
                row.push(e);
                row.extend([String::new(), String::new(), String::new(), String::new()]);
            }
        }
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

/// The input gate's brain-MRI score, when a gate ran.
fn gate_score(p: &Prediction) -> Option<f32> {
    p.input_check.as_ref()?.gate.as_ref().map(|g| g.score)
}

fn table(manifest: &Manifest, results: &[Answer]) {
    let names = manifest.display_names();
    for (f, r) in slices(results) {
        match r {
            Ok(a) => {
                let p = &a.prediction;
                let mut label = p.label();
                if p.verdict == Verdict::NotBrainMri {
                    label = format!("{label}: {}", p.rejection_reasons().join("; "));
                }
                let probs = names
                    .iter()
                    .zip(&p.probabilities)
                    .map(|(n, v)| format!("{n} {:.1}%", v * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ");
                let gate = gate_score(p)
                    .map(|g| format!("\tgate: brain MRI {:.1}%", g * 100.0))
                    .unwrap_or_default();
                println!("{f}\t{label}\t{probs}{gate}");
            }
            Err(e) => println!("{f}\terror: {e}"),
        }
    }
    for s in series(manifest, results) {
        let call = s.most_probable.as_ref().map_or_else(
            || "no call".to_string(),
            |c| {
                format!(
                    "{} ({} supporting slices, mean {:.1}%)",
                    c.class_name,
                    c.supporting_slices.len(),
                    c.mean_confidence * 100.0
                )
            },
        );
        println!(
            "series {}{}: {call}; {} slices, {} analysed ({} uncertain), {} refused; {}",
            s.series_instance_uid,
            s.series_description
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            s.slices,
            s.analysed,
            s.uncertain,
            s.refused,
            s.rule
        );
    }
    eprintln!("{DISCLAIMER}");
}
