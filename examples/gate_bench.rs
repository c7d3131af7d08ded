//! What the input gate costs per image, side by side with the classifier in one run (the
//! machines are noisy, so the figure that counts is the ratio): for each of N slices, batch 1,
//! the gate alone (whole-frame view + network) and the classifier's forward pass (pre-processing
//! + network), each timed on the same decoded image, alternating. Prints JSON.
//!
//! ```sh
//! cargo build --release --example gate_bench
//! target/release/examples/gate_bench ../shared/data/brain-tumor-mri/Testing/glioma_tumor 200 [KERNEL]
//! ```
//!
//! `KERNEL` (`portable`, `avx2` or `vnni`) picks the int8 engine's matrix-product kernel; by
//! default the CPU's best. The JSON names the kernel that ran.

use std::time::Instant;

use oncolens::backend::int8::gemm::{self, Kernel};
use oncolens::imaging::gate_view::gate_view;
use oncolens::imaging::{PreparedScan, Scan};
use oncolens::inference::Predictor;
use oncolens::runtime::forward_rows;

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: gate_bench DIR [N]"))?;
    let n: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let kernel = match args.next().as_deref() {
        None => gemm::kernel(),
        Some("portable") => gemm::prefer(Kernel::Portable),
        Some("avx2") => gemm::prefer(Kernel::Avx2),
        Some("vnni") => gemm::prefer(Kernel::Vnni),
        Some(other) => anyhow::bail!("unknown kernel {other:?}: portable, avx2 or vnni"),
    };
    let predictor = Predictor::load_default()?;
    let gate = predictor
        .gate()
        .ok_or_else(|| anyhow::anyhow!("the default model has no gate"))?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.truncate(n);
    let scans: Vec<Scan> = files
        .iter()
        .map(|f| Scan::load(f))
        .collect::<Result<_, _>>()?;
    let pre = &predictor.manifest.preprocessing;
    let (mut gate_ms, mut classifier_ms) = (Vec::new(), Vec::new());
    for (i, scan) in scans.iter().cycle().take(scans.len() + 10).enumerate() {
        let t = Instant::now();
        let view = gate_view(&scan.image);
        let finding = gate.findings(&[&view]);
        let g = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let prepared: PreparedScan = scan.prepared(pre);
        let (logits, _) = forward_rows(predictor.compute(), &[&prepared.image], pre, false);
        let c = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box((finding, logits));
        if i >= 10 {
            // The first ten warm the caches and thread pools.
            gate_ms.push(g);
            classifier_ms.push(c);
        }
    }
    let gate_median = quantile(&mut gate_ms, 0.5);
    let classifier_median = quantile(&mut classifier_ms, 0.5);
    println!(
        "{}",
        serde_json::json!({
            "images": scans.len(),
            "threads": rayon::current_num_threads(),
            "int8_kernel": format!("{kernel:?}"),
            "gate_ms_median": gate_median,
            "gate_ms_p95": quantile(&mut gate_ms, 0.95),
            "classifier_ms_median": classifier_median,
            "classifier_ms_p95": quantile(&mut classifier_ms, 0.95),
            "gate_over_classifier": gate_median / classifier_median,
        })
    );
    Ok(())
}
