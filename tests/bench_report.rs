//! benches/report.py turns one benchmark run into the Markdown table of docs/benchmarks.md: the
//! ratios it prints must be oncolens' speed over the peer's, for each measure.

use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, json: serde_json::Value) {
    std::fs::write(dir.join(format!("{name}.json")), json.to_string()).unwrap();
}

#[test]
fn the_report_prints_absolute_figures_and_ratios_against_each_peer() {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "python3 is missing: install Debian's python3 (benches/report.py needs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for net in ["paper-cnn", "resnet-fine"] {
        write(
            d,
            &format!("{net}-train-oncolens"),
            serde_json::json!({"framework": "oncolens (burn 0.22 flex)", "train_images_per_s": 10.0, "peak_rss_mib": 100.0}),
        );
        write(
            d,
            &format!("{net}-infer-oncolens"),
            serde_json::json!({"framework": "oncolens (burn 0.22 flex)", "batch1_median_ms": 20.0, "batch1_p95_ms": 25.0, "batch32_images_per_s": 40.0, "peak_rss_mib": 50.0}),
        );
        write(
            d,
            &format!("{net}-infer-oncolens-int8"),
            serde_json::json!({"framework": "oncolens int8 engine", "batch1_median_ms": 5.0, "batch1_p95_ms": 6.0, "batch32_images_per_s": 160.0, "peak_rss_mib": 25.0}),
        );
        write(
            d,
            &format!("{net}-train-torch"),
            serde_json::json!({"framework": "PyTorch 2.15.0", "params": 1000, "train_images_per_s": 20.0, "peak_rss_mib": 900.0}),
        );
        write(
            d,
            &format!("{net}-infer-torch"),
            serde_json::json!({"framework": "PyTorch 2.15.0", "forward_gflop": 2.0, "batch1_median_ms": 10.0, "batch1_p95_ms": 12.0, "batch32_images_per_s": 80.0, "peak_rss_mib": 600.0}),
        );
        write(
            d,
            &format!("{net}-infer-ort"),
            serde_json::json!({"framework": "ONNX Runtime 1.32.0", "batch1_median_ms": 4.0, "batch1_p95_ms": 5.0, "batch32_images_per_s": 100.0, "peak_rss_mib": 150.0}),
        );
    }
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report.py"))
        .arg(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // f32 vs PyTorch: training 10/20, latency 10/20 ms, throughput 40/80, memory 600/50.
    assert!(
        text.contains("| PyTorch 2.15.0 | 0.50x | 0.50x | 0.50x | 12.00x |"),
        "{text}"
    );
    // int8 vs ONNX Runtime: latency 4/5 ms, throughput 160/100, memory 150/25; no training.
    assert!(
        text.contains("| ONNX Runtime 1.32.0 | - | 0.80x | 1.60x | 6.00x |"),
        "{text}"
    );
    // GFLOP/s: 2 GFLOP forward x 40 images/s = 80 GFLOP/s for oncolens' batch-32 inference;
    // training 3 x 2 x 10 = 60.
    assert!(text.contains("| 60.0 ("), "{text}");
    assert!(text.contains("| 80.0 ("), "{text}");
    assert_eq!(text.matches("### ").count(), 2);
}
