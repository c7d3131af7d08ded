//! The experiment behind the input gate (issue #14, docs/gate.md): which features of a frozen
//! ImageNet EfficientNet-Lite0 let a linear gate refuse non-MRI sources it never saw? It taps
//! the ends of stages 3 to 7 (per-channel mean and standard deviation) and the pooled head
//! features, and fits a gate on each set.
//!
//! Same protocol as `oncolens gate cross-validate`: the non-MRI sources are dealt into 3 folds
//! (`deal_sources`); for each fold a logistic regression (MRI against not MRI, each non-MRI
//! category weighted alike) is fitted on the MRI slices of the default model's train split,
//! the head CT slices listed inside Training, and the other folds' sources; its threshold
//! refuses at most 1 % of the default model's validation slices; it is measured on the fold's
//! images. A final fit on every source is measured on Testing (real slices wrongly refused,
//! listed CT slices rightly refused). Features run in burn (f32), without augmentation.
//!
//! ```sh
//! scripts/fetch-pretrained.sh
//! cargo run --release --example gate_pretrained -- ../shared/data target/pretrained/efficientnet-lite0-57934424.pth [SIDE]
//! ```
//!
//! `SIDE` (default 224) is the input size the frame is resized to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use oncolens::data::ImageFolder;
use oncolens::data::not_mri::NotMriList;
use oncolens::data::split::SplitFile;
use oncolens::imaging::decode::load_grey;
use oncolens::model::efficientnet::EfficientNetLite0;
use oncolens::workflows::gate_crossval::deal_sources;
use oncolens::workflows::gate_train::{fit_threshold, source_of};
use oncolens::workflows::import::load_efficientnet_lite0;
use rayon::prelude::*;

/// One image's pooled ImageNet features, with what it is.
#[derive(Clone)]
struct Item {
    features: Vec<f32>,
    /// `brain_mri`, or the non-MRI category.
    kind: String,
    source: String,
}

fn imagenet_input(paths: &[PathBuf], side: usize, device: &Device) -> Result<Tensor<4>> {
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let planes: Vec<Vec<f32>> = paths
        .par_iter()
        .map(|p| -> Result<Vec<f32>> {
            let grey = load_grey(p).with_context(|| p.display().to_string())?;
            let small = image::imageops::resize(
                &grey,
                side as u32,
                side as u32,
                image::imageops::FilterType::Triangle,
            );
            let mut data = vec![0f32; 3 * side * side];
            for (i, px) in small.pixels().enumerate() {
                for c in 0..3 {
                    data[c * side * side + i] = (px.0[0] - mean[c]) / std[c];
                }
            }
            Ok(data)
        })
        .collect::<Result<_>>()?;
    let n = planes.len();
    Ok(Tensor::from_data(
        TensorData::new(planes.concat(), [n, 3, side, side]),
        device,
    ))
}

/// Where the taps sit: the last block of stages 3 to 7 (1-based block counts) and the head.
const TAPS: [(&str, usize); 5] = [("s3", 5), ("s4", 8), ("s5", 11), ("s6", 15), ("s7", 16)];

/// Per-channel mean and standard deviation of an activation, per image.
fn mean_std(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    let flat = x.reshape([b, c, h * w]);
    let mean = flat.clone().mean_dim(2);
    let var = (flat.clone() * flat).mean_dim(2) - mean.clone() * mean.clone();
    let std = var.clamp_min(0.0).sqrt();
    Tensor::cat(vec![mean, std], 1).reshape([b, 2 * c])
}

fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let d = t.dims()[1];
    let flat: Vec<f32> = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(flat.chunks(d).map(<[f32]>::to_vec).collect())
}

/// Each image's taps: `s3`..`s7` (mean and std per channel) and `head` (mean of the 1,280
/// head features, the pooled features of the full network).
fn features(
    net: &EfficientNetLite0,
    paths: &[PathBuf],
    side: usize,
    device: &Device,
) -> Result<Vec<BTreeMap<String, Vec<f32>>>> {
    let mut out: Vec<BTreeMap<String, Vec<f32>>> = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(16) {
        let outputs = net.stage_outputs(imagenet_input(chunk, side, device)?, net.block_count());
        let mut maps = vec![BTreeMap::new(); chunk.len()];
        for (name, block) in TAPS {
            for (m, r) in maps.iter_mut().zip(rows(mean_std(outputs[block].clone()))?) {
                m.insert(name.to_string(), r);
            }
        }
        let head = net.head_activation(outputs[net.block_count()].clone());
        let [b, c, _, _] = head.dims();
        let pooled = head.mean_dim(3).mean_dim(2).reshape([b, c]);
        for (m, r) in maps.iter_mut().zip(rows(pooled)?) {
            m.insert("head".to_string(), r);
        }
        out.extend(maps);
        eprint!(".");
    }
    Ok(out)
}

/// Logistic regression by full-batch gradient descent on standardised features; returns the
/// weights, bias and standardisation.
struct Linear {
    w: Vec<f32>,
    b: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Linear {
    fn fit(x: &[&[f32]], y: &[f32], weight: &[f32]) -> Self {
        let d = x[0].len();
        let n = x.len() as f32;
        let mut mean = vec![0f32; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(*r) {
                *m += v / n;
            }
        }
        let mut std = vec![0f32; d];
        for r in x {
            for ((s, v), m) in std.iter_mut().zip(*r).zip(&mean) {
                *s += (v - m).powi(2) / n;
            }
        }
        for s in &mut std {
            *s = s.sqrt().max(1e-6);
        }
        let z: Vec<Vec<f32>> = x
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&mean)
                    .zip(&std)
                    .map(|((v, m), s)| (v - m) / s)
                    .collect()
            })
            .collect();
        let total: f32 = weight.iter().sum();
        let (mut w, mut b) = (vec![0f32; d], 0f32);
        let (lr, l2) = (0.5f32, 1e-3f32);
        for _ in 0..400 {
            let mut gw = vec![0f32; d];
            let mut gb = 0f32;
            for ((zi, yi), wi) in z.iter().zip(y).zip(weight) {
                let s = zi.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + b;
                let p = 1.0 / (1.0 + (-s).exp());
                let g = (p - yi) * wi / total;
                for (gwj, zij) in gw.iter_mut().zip(zi) {
                    *gwj += g * zij;
                }
                gb += g;
            }
            for (wj, gj) in w.iter_mut().zip(&gw) {
                *wj -= lr * (gj + l2 * *wj);
            }
            b -= lr * gb;
        }
        Self { w, b, mean, std }
    }

    /// Probability of brain MRI.
    fn score(&self, x: &[f32]) -> f32 {
        let s: f32 = x
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .zip(&self.w)
            .map(|(((v, m), s), w)| (v - m) / s * w)
            .sum::<f32>()
            + self.b;
        1.0 / (1.0 + (-s).exp())
    }
}

/// Fits on `train` (MRI positives and negatives), thresholds on `validation` MRI slices.
fn fit_gate(train: &[&Item], validation: &[&Item]) -> (Linear, f32) {
    let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for i in train.iter().filter(|i| i.kind != "brain_mri") {
        *per_kind.entry(&i.kind).or_default() += 1;
    }
    let positives = train.iter().filter(|i| i.kind == "brain_mri").count() as f32;
    let kinds = per_kind.len() as f32;
    let x: Vec<&[f32]> = train.iter().map(|i| i.features.as_slice()).collect();
    let y: Vec<f32> = train
        .iter()
        .map(|i| f32::from(u8::from(i.kind == "brain_mri")))
        .collect();
    // Negatives as heavy as positives in all, every category alike.
    let weight: Vec<f32> = train
        .iter()
        .map(|i| {
            if i.kind == "brain_mri" {
                1.0
            } else {
                positives / kinds / per_kind[i.kind.as_str()] as f32
            }
        })
        .collect();
    let linear = Linear::fit(&x, &y, &weight);
    let scores: Vec<f32> = validation
        .iter()
        .map(|i| linear.score(&i.features))
        .collect();
    let (threshold, _) = fit_threshold(&scores, 0.01);
    (linear, threshold)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let data = PathBuf::from(args.get(1).map_or("../shared/data", String::as_str));
    let pth = PathBuf::from(args.get(2).map_or(
        "target/pretrained/efficientnet-lite0-57934424.pth",
        String::as_str,
    ));
    let side: usize = args.get(3).map_or(Ok(224), |s| s.parse())?;
    let device = Device::flex();
    let (net, _, _) = load_efficientnet_lite0(&pth, &device)?;
    let net = net.valid();
    let listed = NotMriList::read(Path::new("data/brain-tumor-mri-not-mri.csv"))?;

    // MRI: the default model's split of Training; listed CT slices are negatives.
    let training = ImageFolder::scan(&data.join("brain-tumor-mri/Training"))?;
    let split = SplitFile::read(Path::new("models/default"))?.resolve(&training)?;
    let mut items: Vec<Item>;
    let mut roles: Vec<&str> = Vec::new();
    let mut paths = Vec::new();
    for (role, indices) in [("train", &split.train), ("validation", &split.validation)] {
        for &i in indices {
            let kind = listed.kind_of(&training, i).unwrap_or("brain_mri");
            paths.push((
                training.samples[i].path.clone(),
                kind.to_string(),
                "training-ct".to_string(),
            ));
            roles.push(if kind == "brain_mri" { role } else { "train" });
        }
    }
    let testing = ImageFolder::scan(&data.join("brain-tumor-mri/Testing"))?;
    for i in 0..testing.samples.len() {
        let kind = listed.kind_of(&testing, i).unwrap_or("brain_mri");
        paths.push((
            testing.samples[i].path.clone(),
            kind.to_string(),
            "testing".to_string(),
        ));
        roles.push("testing");
    }
    let non_mri = ImageFolder::scan(&data.join("non-mri"))?;
    for s in &non_mri.samples {
        paths.push((
            s.path.clone(),
            non_mri.classes[s.label].clone(),
            source_of(&s.path),
        ));
        roles.push("non_mri");
    }
    eprintln!("features of {} images at {side} px", paths.len());
    let files: Vec<PathBuf> = paths.iter().map(|(p, _, _)| p.clone()).collect();
    let started = std::time::Instant::now();
    let taps = features(&net, &files, side, &device)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "\n{seconds:.0} s ({:.1} ms an image in batches of 16)",
        1000.0 * seconds / files.len() as f64
    );
    let sets: [&[&str]; 9] = [
        &["head"],
        &["s7"],
        &["s6"],
        &["s5"],
        &["s4"],
        &["s3"],
        &["s4", "s5"],
        &["s3", "s4", "s5"],
        &["s5", "s6", "s7"],
    ];
    for set in sets {
        println!("\n== features {set:?} ==");
        items = taps
            .iter()
            .zip(&paths)
            .map(|(t, (_, kind, source))| Item {
                features: set.iter().flat_map(|k| t[*k].iter().copied()).collect(),
                kind: kind.clone(),
                source: source.clone(),
            })
            .collect();
        analyse(&items, &roles);
    }
    Ok(())
}

fn analyse(items: &[Item], roles: &[&str]) {
    let pick = |role: &str| -> Vec<&Item> {
        items
            .iter()
            .zip(roles)
            .filter(|(_, r)| **r == role)
            .map(|(i, _)| i)
            .collect()
    };
    let (train, validation, testing_items, negatives) = (
        pick("train"),
        pick("validation"),
        pick("testing"),
        pick("non_mri"),
    );

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &negatives {
        *counts.entry(n.source.clone()).or_default() += 1;
    }
    let folds = deal_sources(&counts, 3);
    let mut refused: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for fold in &folds {
        let mut fit_on: Vec<&Item> = train.clone();
        fit_on.extend(negatives.iter().filter(|n| !fold.contains(&n.source)));
        let (gate, threshold) = fit_gate(&fit_on, &validation);
        for n in negatives.iter().filter(|n| fold.contains(&n.source)) {
            let e = refused.entry(n.kind.clone()).or_default();
            e.0 += usize::from(gate.score(&n.features) < threshold);
            e.1 += 1;
        }
        println!("fold {fold:?}: threshold {threshold:.3}");
    }
    println!(
        "\nheld-out sources, refused (linear gate over ImageNet EfficientNet-Lite0 features):"
    );
    let (mut all_r, mut all_n) = (0, 0);
    for (kind, (r, n)) in &refused {
        println!(
            "  {kind:<14} {r:>4} / {n:<4} {:.1} %",
            100.0 * *r as f64 / *n as f64
        );
        all_r += r;
        all_n += n;
    }
    println!(
        "  {:<14} {all_r:>4} / {all_n:<4} {:.1} %",
        "all",
        100.0 * all_r as f64 / all_n as f64
    );

    let mut fit_on: Vec<&Item> = train.clone();
    fit_on.extend(negatives.iter());
    let (gate, threshold) = fit_gate(&fit_on, &validation);
    let real: Vec<&&Item> = testing_items
        .iter()
        .filter(|i| i.kind == "brain_mri")
        .collect();
    let ct: Vec<&&Item> = testing_items
        .iter()
        .filter(|i| i.kind != "brain_mri")
        .collect();
    let below = |v: &[&&Item]| {
        v.iter()
            .filter(|i| gate.score(&i.features) < threshold)
            .count()
    };
    println!(
        "\nfitted on every source (threshold {threshold:.3}): real Testing slices wrongly refused {} / {} ({:.1} %); listed CT slices in Testing refused {} / {}",
        below(&real),
        real.len(),
        100.0 * below(&real) as f64 / real.len() as f64,
        below(&ct),
        ct.len()
    );
}
