//! oncolens' side of the framework benchmark (`benches/run.sh` runs it beside PyTorch, Keras and
//! ONNX Runtime): times one network on this CPU and prints one JSON object.
//!
//! - `--mode train`: forward + backward + Adam steps at batch 32 on random input (no data
//!   loading or augmentation, as for the peers), images per second;
//! - `--mode infer`: batch-1 latency from an input tensor to probabilities (median and p95) and
//!   batch-32 throughput, in inference mode (no autodiff);
//! - `--mode onnx --onnx FILE`: writes the network as ONNX for the ONNX Runtime peer.
//!
//! Peak resident memory (VmHWM) is reported for the whole process, so run one mode per process.
//!
//! ```sh
//! cargo run --release --example bench -- --net paper-cnn --mode train
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, ValueEnum};
use oncolens::model::{Architecture, Classifier, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Train,
    Infer,
    /// As `infer`, with oncolens' int8 engine (calibrated on a few random inputs: the speed
    /// does not depend on the ranges).
    InferInt8,
    Onnx,
}

#[derive(Parser)]
struct Args {
    /// paper-cnn (3 input channels, as the seed), resnet-fine (the default model's network) or
    /// efficientnet-lite0 (3 channels).
    #[arg(long)]
    net: String,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 150)]
    input_size: usize,
    /// Timed training steps (after two warm-up steps).
    #[arg(long, default_value_t = 8)]
    train_steps: usize,
    /// Timed batch-1 runs (after five warm-up runs).
    #[arg(long, default_value_t = 50)]
    latency_runs: usize,
    /// Timed batch-32 runs (after one warm-up run).
    #[arg(long, default_value_t = 4)]
    batch_runs: usize,
    /// Where `--mode onnx` writes the model.
    #[arg(long)]
    onnx: Option<PathBuf>,
}

const BATCH: usize = 32;

fn spec(net: &str, input_size: usize) -> Result<ModelSpec> {
    let (arch, channels) = match net {
        "paper-cnn" => (Architecture::PaperCnn, 3),
        "resnet-fine" => (Architecture::ResnetFine, 1),
        "efficientnet-lite0" => (Architecture::EfficientnetLite0, 3),
        other => bail!("unknown network {other}"),
    };
    let mut spec = ModelSpec::new(arch, input_size, 4);
    spec.in_channels = channels;
    Ok(spec)
}

/// Standard-normal-ish input (what standardised slices look like), `[n, 1, size, size]`; the
/// network repeats the grey channel where it takes three.
fn input(n: usize, size: usize, device: &Device, rng: &mut ChaCha8Rng) -> Tensor<4> {
    let v: Vec<f32> = (0..n * size * size)
        .map(|_| rng.random_range(-1.7f32..1.7))
        .collect();
    Tensor::from_data(TensorData::new(v, [n, 1, size, size]), device)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Batch-1 latency (median, p95 over `runs` after 5 warm-up runs) and batch-32 throughput
/// (`batch_runs` after one warm-up run) of two closures.
fn time_inference(
    one: impl Fn() -> Result<()>,
    batch: impl Fn() -> Result<()>,
    runs: usize,
    batch_runs: usize,
) -> Result<serde_json::Value> {
    let timed = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        f()?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..5 {
        one()?;
    }
    let mut ms = (0..runs)
        .map(|_| timed(&one))
        .collect::<Result<Vec<f64>>>()?;
    ms.sort_by(f64::total_cmp);
    batch()?;
    let started = Instant::now();
    for _ in 0..batch_runs {
        batch()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "batch1_median_ms": percentile(&ms, 0.5),
        "batch1_p95_ms": percentile(&ms, 0.95),
        "latency_runs": runs,
        "batch32_images_per_s": (batch_runs * BATCH) as f64 / seconds,
    }))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let spec = spec(&a.net, a.input_size)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let base = Device::flex();
    let threads = rayon::current_num_threads();
    let out = match a.mode {
        Mode::Train => {
            let device = base.autodiff();
            device.seed(1);
            let mut model = Classifier::init(&spec, &device);
            let params = model.num_params();
            let mut optim: ModuleOptimizer = AdamConfig::new().init();
            let labels: Vec<usize> = (0..BATCH).map(|i| i % 4).collect();
            let x = input(BATCH, a.input_size, &device, &mut rng);
            let mut step = |model: Classifier| {
                let logits = model.forward(x.clone());
                let loss = oncolens::workflows::train::classification_loss(
                    logits, &labels, &[1.0; 4], 0.0,
                );
                let _: f32 = loss.clone().into_scalar();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                optim.step(1e-3, model, grads)
            };
            for _ in 0..2 {
                model = step(model);
            }
            let started = Instant::now();
            for _ in 0..a.train_steps {
                model = step(model);
            }
            let seconds = started.elapsed().as_secs_f64();
            serde_json::json!({
                "params_counted_by_burn": params,
                "train_images_per_s": (a.train_steps * BATCH) as f64 / seconds,
                "train_steps": a.train_steps,
            })
        }
        Mode::Infer => {
            let model = Classifier::init(&spec, &base);
            let size = a.input_size;
            let run = |x: Tensor<4>| -> Result<()> {
                let p: Vec<f32> = softmax(model.forward(x), 1)
                    .into_data()
                    .try_to_vec()
                    .unwrap_or_default();
                anyhow::ensure!(
                    p.len().is_multiple_of(4) && !p.is_empty(),
                    "no probabilities"
                );
                Ok(())
            };
            let one: Vec<f32> = input(1, size, &base, &mut rng)
                .into_data()
                .try_to_vec()
                .unwrap_or_default();
            let batch = input(BATCH, size, &base, &mut rng);
            time_inference(
                // From a plain vector, as an application holds a decoded scan.
                || {
                    run(Tensor::from_data(
                        TensorData::new(one.clone(), [1, 1, size, size]),
                        &base,
                    ))
                },
                || run(batch.clone()),
                a.latency_runs,
                a.batch_runs,
            )?
        }
        Mode::InferInt8 => {
            use rayon::prelude::*;
            let model = Classifier::init(&spec, &base);
            let mut engine = oncolens::backend::Int8Engine::new(&model.describe()?)?;
            let size = a.input_size;
            let sample = |rng: &mut ChaCha8Rng| -> Vec<f32> {
                input(1, size, &base, rng)
                    .into_data()
                    .try_to_vec()
                    .unwrap_or_default()
            };
            let calibration: Vec<Vec<f32>> = (0..4).map(|_| sample(&mut rng)).collect();
            engine.calibrate(&calibration, size)?;
            let probabilities = |x: &[f32]| -> Result<Vec<f32>> {
                let (logits, _) = engine.forward(x, size)?;
                Ok(oncolens::core::numeric::softmax_with_temperature(
                    &logits, 1.0,
                ))
            };
            let one = sample(&mut rng);
            let batch: Vec<Vec<f32>> = (0..BATCH).map(|_| sample(&mut rng)).collect();
            let mut out = time_inference(
                || probabilities(&one).map(|_| ()),
                || {
                    batch
                        .par_iter()
                        .map(|x| probabilities(x).map(|_| ()))
                        .collect::<Result<Vec<()>>>()?;
                    Ok(())
                },
                a.latency_runs,
                a.batch_runs,
            )?;
            out["int8_weight_bytes"] = engine.int8_weight_bytes().into();
            out
        }
        Mode::Onnx => {
            let path = a.onnx.context("--mode onnx needs --onnx FILE")?;
            let model = Classifier::init(&spec, &base);
            let (mut manifest, _) = oncolens::modelfile::bundle::load_default(
                &base,
                oncolens::modelfile::bundle::Mode::Inference,
            )?;
            manifest.name = format!("{}-benchmark", a.net);
            manifest.spec = spec.clone();
            let bytes = oncolens::backend::onnx::to_onnx(&manifest, &model)?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            serde_json::json!({ "onnx": path })
        }
    };
    let mut out = out;
    out["framework"] = if a.mode == Mode::InferInt8 {
        "oncolens int8 engine"
    } else {
        "oncolens (burn 0.22 flex)"
    }
    .into();
    out["net"] = a.net.clone().into();
    out["threads"] = threads.into();
    out["peak_rss_mib"] = peak_rss_mib().into();
    println!("{out}");
    Ok(())
}
