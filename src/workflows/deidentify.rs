//! `oncolens deidentify`: DICOM files de-identified into a folder, each named by its new SOP
//! Instance UID (input names can hold patient names), with one line per file saying what
//! happened.

use std::path::{Path, PathBuf};

use crate::core::error::{DeidError, Error, Result};
use crate::data::folder::collect_image_files;
use crate::deid::{DeidReport, Deidentifier};
use crate::imaging::dicom::{is_dicom, parse};

/// What happened to one input file.
#[derive(Debug)]
pub struct DeidOutcome {
    pub input: PathBuf,
    /// The file written and what was changed, or why none was written.
    pub result: Result<(PathBuf, DeidReport)>,
}

/// De-identifies the DICOM files among `inputs` (folders searched recursively) into `out`.
/// UIDs stay consistent across all files of the run; with `pseudonym_key`, also across runs.
pub fn deidentify_files(
    inputs: &[PathBuf],
    out: &Path,
    pseudonym_key: Option<&str>,
) -> Result<Vec<DeidOutcome>> {
    let files = collect_image_files(inputs)?;
    std::fs::create_dir_all(out).map_err(|e| Error::write(out, e))?;
    let mut deid = Deidentifier::new(pseudonym_key);
    Ok(files
        .into_iter()
        .map(|input| {
            let result = deidentify_file(&mut deid, &input, out);
            DeidOutcome { input, result }
        })
        .collect())
}

fn deidentify_file(
    deid: &mut Deidentifier,
    input: &Path,
    out: &Path,
) -> Result<(PathBuf, DeidReport)> {
    let bytes = std::fs::read(input).map_err(|e| Error::io(input, e))?;
    let failed = |source: DeidError| Error::Deid {
        path: input.to_path_buf(),
        source,
    };
    if !is_dicom(&bytes) {
        return Err(failed(DeidError::Dicom(
            crate::core::error::DicomError::NoFileMeta,
        )));
    }
    let obj = parse(&bytes).map_err(|e| failed(e.into()))?;
    let (clean, report) = deid.deidentify(&obj).map_err(failed)?;
    let name = format!("{}.dcm", clean.meta().media_storage_sop_instance_uid());
    let path = out.join(name.trim_end_matches('\0'));
    let mut encoded = Vec::new();
    clean
        .write_all(&mut encoded)
        .map_err(|e| failed(DeidError::Encode(Box::new(e))))?;
    // Written beside, then renamed: a crash leaves no half file under the final name.
    let tmp = path.with_extension("dcm.tmp");
    std::fs::write(&tmp, encoded).map_err(|e| Error::write(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::write(&path, e))?;
    Ok((path, report))
}
