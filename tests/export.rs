//! ONNX export: the bundled model's export runs in ONNX Runtime (from target/bench-venv, which
//! `scripts/bench-venv.sh` makes and `.ci/run` runs) and gives oncolens's probabilities to
//! within 1e-4 on real Testing slices (synthetic slices without the shared data).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn onnx_export_matches_oncolens_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let testing =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/brain-tumor-mri/Testing");
    let images = if testing.is_dir() {
        testing
    } else {
        let dir = tmp.path().join("images");
        common::write_folder(&dir, 4, 160, 3);
        dir
    };
    let onnx = tmp.path().join("model.onnx");
    let run = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["export", "--reference-count", "12", "--onnx"])
        .arg(&onnx)
        .arg("--reference-images")
        .arg(&images)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(bytes.len() > 1_000_000, "weights missing from the graph");
    // ModelProto starts with ir_version (field 1, varint).
    assert_eq!(bytes[0], 0x08);

    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv/bin/python");
    assert!(
        python.exists(),
        "target/bench-venv is missing: run scripts/bench-venv.sh (it installs ONNX Runtime from \
         PyPI; .ci/run does this)"
    );
    let check = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/onnx_check.py"))
        .arg(&onnx)
        .arg("1e-4")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("same top class for 12/12"), "{out}");
}
