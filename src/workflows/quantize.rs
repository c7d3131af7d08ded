//! int8 post-training quantisation of a saved model (`oncolens quantize`): activation ranges
//! calibrated on the model's own validation images, checked against f32 on the same images and
//! stored in `model.json` (the weights stay untouched).

use std::path::Path;
use std::time::Instant;

use crate::backend::Int8Engine;
use crate::core::error::{Error, Result};
use crate::data::loader::prepare_files;
use crate::data::split::held_out_split;
use crate::modelfile::bundle::{self, Mode, ModelSource};
use crate::modelfile::{Int8Calibration, WEIGHTS_FILE};
use crate::runtime::LoadedModel;

/// What a quantisation did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub calibration: Int8Calibration,
    pub quantised_layers: usize,
    pub int8_weight_bytes: usize,
    pub f32_weights_file_bytes: u64,
    pub seconds: f64,
}

/// Quantises the model in `model_dir`, calibrating on at most `images` of the validation images
/// of its split (spread over the classes by order) in the training folder `data`.
pub fn quantize_saved(model_dir: &Path, data: &Path, images: usize) -> Result<QuantizeReport> {
    let dir = bundle::model_dir(model_dir);
    let (folder, split) = held_out_split(&dir, data)?;
    // Every k-th validation image: the split is stratified, so the classes stay mixed.
    let step = (split.validation.len() / images.max(1)).max(1);
    let paths: Vec<&Path> = split
        .validation
        .iter()
        .step_by(step)
        .take(images)
        .map(|&i| folder.samples[i].path.as_path())
        .collect();
    quantize_on(&dir, &paths)
}

/// Quantises the model in `model_dir`, calibrating the activation ranges on `paths` (images
/// the model was not trained on).
pub fn quantize_on(model_dir: &Path, paths: &[&Path]) -> Result<QuantizeReport> {
    let dir = bundle::model_dir(model_dir);
    let loaded = LoadedModel::open(&ModelSource::Directory(dir.clone()), Mode::Inference)?;
    let pre = &loaded.manifest.preprocessing;
    let inputs: Vec<Vec<f32>> = prepare_files(paths, None, |scan| {
        pre.standardize(&scan.prepared(pre).image)
    })
    .into_iter()
    .filter_map(|r| {
        r.map_err(|e| tracing::warn!("skipped for int8 calibration: {}", e.sentence()))
            .ok()
    })
    .collect();
    let network = loaded.model().describe().map_err(Error::Network)?;
    let mut engine = Int8Engine::new(&network)?;
    let started = Instant::now();
    let calibration = engine.calibrate(&inputs, pre.input_size as usize)?;
    let seconds = started.elapsed().as_secs_f64();
    let f32_weights_file_bytes = std::fs::metadata(dir.join(WEIGHTS_FILE)).map_or(0, |m| m.len());
    let mut manifest = loaded.manifest.clone();
    manifest.int8 = Some(calibration.clone());
    bundle::rewrite_manifest(&dir, &manifest)?;
    Ok(QuantizeReport {
        calibration,
        quantised_layers: engine.quantised_layers(),
        int8_weight_bytes: engine.int8_weight_bytes(),
        f32_weights_file_bytes,
        seconds,
    })
}
