//! Weights files shared by the model file and the input gate: written through a temporary
//! file with their checksum returned, and weights compiled into the binary checked and loaded.

use std::path::Path;

use burn::module::Module;
use sha2::{Digest, Sha256};

use crate::core::error::{Detail, Error, ModelFileProblem, Result};
use crate::core::files::sha256_file;

/// Writes `module`'s weights to `dir/file` (`dir` created if needed) through a temporary file
/// renamed into place, and returns their SHA-256 for the manifest written after them.
pub fn save_weights<M: Module + Clone>(module: &M, dir: &Path, file: &str) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let weights = dir.join(file);
    let tmp = dir.join(format!("{file}.tmp"));
    module
        .clone()
        .save_file(&tmp)
        .map_err(|e| Error::write_debug(&tmp, e))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::write(&weights, e))?;
    sha256_file(&weights)
}

/// Weights compiled into the binary, checked against the manifest's `sha256`, loaded into
/// `module` (`origin` names them in errors).
pub fn load_embedded<M: Module>(module: M, bytes: &[u8], sha256: &str, origin: &Path) -> Result<M> {
    if hex::encode(Sha256::digest(bytes)) != sha256 {
        return Err(Error::model(origin, ModelFileProblem::ChecksumMismatch));
    }
    let record =
        burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec()))
            .map_err(|e| Error::model(origin, ModelFileProblem::WeightsDoNotFit(Detail::of(e))))?;
    module
        .try_load_record(record)
        .map_err(|e| Error::model(origin, ModelFileProblem::WeightsDoNotFit(Detail::of(e))))
}
