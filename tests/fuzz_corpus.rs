//! Replays the committed fuzzing corpora (`fuzz/corpus-ci/<target>/`, kept small: the inputs
//! that cover what the fuzzers reached, made from synthetic seeds) through the same checks the
//! fuzz targets run (`fuzz/checks.rs`), plus the shared DICOM files through the DICOM checks.
//! A finding fixed once stays fixed without libFuzzer in CI.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus-ci")
        .join(target);
    let found = files(&dir);
    assert!(
        found.len() >= 5,
        "{} holds {} inputs: the committed corpus is missing",
        dir.display(),
        found.len()
    );
    found
}

fn shared_dicom() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dicom");
    assert!(
        dir.is_dir(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        dir.display()
    );
    files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect()
}

fn replay(inputs: &[PathBuf], check: fn(&[u8])) {
    for path in inputs {
        let bytes = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{} fails its fuzz check", path.display());
        }
    }
}

#[test]
fn the_decode_corpus_and_the_shared_dicom_files_decode_within_bounds() {
    replay(&corpus("decode"), checks::decode);
    replay(&shared_dicom(), checks::decode);
}

#[test]
fn the_deidentify_corpus_and_the_shared_dicom_files_come_out_clean() {
    replay(&corpus("deidentify"), checks::deidentify);
    replay(&shared_dicom(), checks::deidentify);
}

#[test]
fn the_upload_corpus_is_read_within_the_limits() {
    replay(&corpus("upload"), checks::upload);
}
