//! `predict`'s answers as a table, JSON or CSV.

use std::path::PathBuf;

use anyhow::Result;
use oncolens::core::DISCLAIMER;
use oncolens::inference::{Prediction, Verdict};
use oncolens::modelfile::Manifest;

use super::args::Format;

/// One input file and its answer (or why it has none).
pub type Answer = (PathBuf, oncolens::Result<Prediction>);

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
    let items: Vec<serde_json::Value> = results
        .iter()
        .map(|(f, r)| match r {
            Ok(p) => serde_json::json!({"file": f, "prediction": p}),
            Err(e) => serde_json::json!({"file": f, "error": e.sentence()}),
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": manifest.name,
            "note": DISCLAIMER,
            "results": items,
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
    w.write_record(&header)?;
    for (f, r) in results {
        let mut row = vec![f.display().to_string()];
        match r {
            Ok(p) => {
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
            }
            Err(e) => {
                row.extend(std::iter::repeat_n(
                    String::new(),
                    4 + manifest.classes.len() + 2,
                ));
                row.push(e.sentence());
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
    for (f, r) in results {
        match r {
            Ok(p) => {
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
                println!("{}\t{label}\t{probs}{gate}", f.display());
            }
            Err(e) => println!("{}\terror: {}", f.display(), e.sentence()),
        }
    }
    eprintln!("{DISCLAIMER}");
}
