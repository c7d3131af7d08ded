//! Export for other runtimes (`oncolens export`): the ONNX file, and reference inputs with
//! oncolens' own probabilities for checking the export in another runtime
//! (`benches/onnx_check.py`).

use std::path::{Path, PathBuf};

use crate::backend::onnx;
use crate::core::error::{Error, Result};
use crate::core::files::write_json_atomic;
use crate::data::folder::collect_image_files;
use crate::imaging::Scan;
use crate::inference::Predictor;

/// Writes the ONNX graph of the predictor's model to `path`; returns its size in bytes.
pub fn write_onnx(predictor: &Predictor, path: &Path) -> Result<usize> {
    let bytes = onnx::to_onnx(&predictor.manifest, predictor.model())?;
    std::fs::write(path, &bytes).map_err(|e| Error::write(path, e))?;
    Ok(bytes.len())
}

/// Network inputs and probabilities of up to `count` images spread over `dir`, written beside
/// `onnx_path` (`.input.f32`, `.probabilities.f32`, `.reference.json`); returns how many.
pub fn write_reference(
    predictor: &Predictor,
    dir: &Path,
    count: usize,
    onnx_path: &Path,
) -> Result<usize> {
    let files = collect_image_files(&[dir.to_path_buf()])?;
    let step = (files.len() / count.max(1)).max(1);
    let chosen: Vec<PathBuf> = files.into_iter().step_by(step).take(count).collect();
    let (mut inputs, mut probs, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for f in &chosen {
        let scan = Scan::load(f)?;
        let (input, _) = predictor.input(&scan.image);
        let p = predictor
            .predict_scans(std::slice::from_ref(&scan))
            .remove(0);
        inputs.extend(input);
        probs.extend(p.probabilities);
        names.push(f.display().to_string());
    }
    let base = onnx_path.display().to_string();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (suffix, values) in [("input.f32", &inputs), ("probabilities.f32", &probs)] {
        let path = PathBuf::from(format!("{base}.{suffix}"));
        std::fs::write(&path, f32_bytes(values)).map_err(|e| Error::write(&path, e))?;
    }
    let s = predictor.manifest.spec.input_size;
    write_json_atomic(
        Path::new(&format!("{base}.reference.json")),
        &serde_json::json!({
            "count": chosen.len(),
            "input_shape": [chosen.len(), 1, s, s],
            "classes": predictor.manifest.class_ids(),
            "files": names,
        }),
    )?;
    Ok(chosen.len())
}
