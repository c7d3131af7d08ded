//! Files written so that a crash never leaves half of one behind, and checksums.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// Writes `value` as pretty JSON to a temporary file beside `path`, then renames it over `path`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::write(path, e))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::write(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::write(path, e))
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}
