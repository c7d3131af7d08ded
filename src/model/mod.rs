//! Layer 3: the networks. Model code is free of backend specifics: it runs on whatever [`Device`] it is
//! given (flex on CPU today; CUDA or wgpu behind cargo features).
//!
//! Every architecture splits into `features` (input -> last convolutional activation) and `head`
//! (that activation -> class logits), so explanation methods can differentiate the class score
//! with respect to the last conv layer.

pub mod describe;
pub mod efficientnet;
pub mod paper_cnn;
pub mod resnet;
pub mod trace;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::core::error::{NetworkError, SettingError};
use crate::ir::{self, Network, NetworkBuilder};

pub use efficientnet::EfficientNetLite0;
pub use paper_cnn::PaperCnn;
pub use resnet::ResnetMini;
pub use trace::{LayerRow, Trace};

/// Architecture names, as written on the command line and in model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// The seed project's plain CNN (4.4 M parameters, 2.3 GFLOP per image).
    PaperCnn,
    /// Residual network with batch norm and global average pooling, output stride 32.
    ResnetMini,
    /// `resnet-mini` with a stride-1 last stage (output stride 16): finer Grad-CAM maps.
    ResnetFine,
    /// EfficientNet-Lite0 (4.7 M parameters with an ImageNet head), for fine-tuning from
    /// ImageNet weights (`oncolens import-weights`).
    #[value(name = "efficientnet-lite0")]
    #[serde(rename = "efficientnet-lite0")]
    EfficientnetLite0,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::PaperCnn => "paper-cnn",
            Architecture::ResnetMini => "resnet-mini",
            Architecture::ResnetFine => "resnet-fine",
            Architecture::EfficientnetLite0 => "efficientnet-lite0",
        }
    }
}

/// Everything needed to build a network before loading its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Channels the network takes; grey input is repeated when this is 3.
    pub in_channels: usize,
    pub input_size: usize,
    pub num_classes: usize,
    /// Dropout before the classifier (`resnet-mini`; `paper-cnn` uses the seed's 0.3 throughout).
    pub dropout: f64,
}

impl ModelSpec {
    pub fn new(architecture: Architecture, input_size: usize, num_classes: usize) -> Self {
        Self {
            architecture,
            in_channels: 1,
            input_size,
            num_classes,
            dropout: 0.2,
        }
    }

    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |m: String| Err(SettingError::new("network", m));
        if self.in_channels != 1 && self.in_channels != 3 {
            return bad(format!(
                "in_channels must be 1 or 3, not {}",
                self.in_channels
            ));
        }
        if self.num_classes < 2 {
            return bad("a classifier needs at least two classes".into());
        }
        if self.architecture == Architecture::PaperCnn
            && paper_cnn::feature_side(self.input_size) == 0
        {
            return bad(format!(
                "paper-cnn needs an input of at least 94 pixels, not {}",
                self.input_size
            ));
        }
        if !(32..=1024).contains(&self.input_size) {
            return bad(format!(
                "input size {} is outside 32..=1024",
                self.input_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)".into());
        }
        Ok(())
    }
}

/// Where the cells of the last conv activation sit on the network input: cell `i` is centred
/// on input pixel `offset + stride * i` (pixel indices). Grad-CAM uses it to draw a map where
/// the network looked; naive resizing puts a stride-2 stack's cells half a cell off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureAlignment {
    pub stride: f32,
    pub offset: f32,
}

impl FeatureAlignment {
    pub const IDENTITY: Self = Self {
        stride: 1.0,
        offset: 0.0,
    };

    /// Followed by a layer whose output `j` is centred on its input `stride * j + offset`.
    pub fn then(self, stride: f32, offset: f32) -> Self {
        Self {
            stride: self.stride * stride,
            offset: self.stride * offset + self.offset,
        }
    }

    /// The continuous feature-grid coordinate of input pixel `x`.
    pub fn to_feature(self, x: f32) -> f32 {
        (x - self.offset) / self.stride
    }
}

/// Global average pooling, dropout and the linear classifier: the head both residual networks
/// and EfficientNet-Lite0 end with.
pub(crate) fn pooled_linear_head(
    features: Tensor<4>,
    pool: &burn::nn::pool::AdaptiveAvgPool2d,
    dropout: &burn::nn::Dropout,
    output: &burn::nn::Linear,
    trace: &mut Trace,
) -> Tensor<2> {
    let x: Tensor<2> = pool.forward(features).flatten(1, 3);
    trace.record("gap", "GlobalAvgPool", &x, 0);
    let x = output.forward(dropout.forward(x));
    trace.record("logits", "Dropout + Dense", &x, output.num_params());
    x
}

/// A classifier of any shipped architecture.
// Built once per process and moved rarely: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    PaperCnn(PaperCnn),
    ResnetMini(ResnetMini),
    EfficientnetLite0(EfficientNetLite0),
}

impl Classifier {
    /// A freshly initialised network (seed the device first for reproducible weights).
    pub fn init(spec: &ModelSpec, device: &Device) -> Self {
        match spec.architecture {
            Architecture::PaperCnn => Classifier::PaperCnn(PaperCnn::new(
                spec.in_channels,
                spec.num_classes,
                spec.input_size,
                device,
            )),
            // One module type for both: the weights have the same shapes, only a stride differs.
            Architecture::ResnetMini | Architecture::ResnetFine => {
                Classifier::ResnetMini(ResnetMini::new(
                    spec.in_channels,
                    spec.num_classes,
                    spec.dropout,
                    if spec.architecture == Architecture::ResnetFine {
                        1
                    } else {
                        2
                    },
                    device,
                ))
            }
            Architecture::EfficientnetLite0 => Classifier::EfficientnetLite0(
                EfficientNetLite0::new(spec.in_channels, spec.num_classes, spec.dropout, device),
            ),
        }
    }

    /// `[batch, 1, size, size]` standardised grey input -> last conv activation.
    pub fn features(&self, x: Tensor<4>, trace: &mut Trace) -> Tensor<4> {
        match self {
            Classifier::PaperCnn(m) => m.features(self.adapt_channels(x), trace),
            Classifier::ResnetMini(m) => m.features(x, trace),
            Classifier::EfficientnetLite0(m) => m.features(self.adapt_channels(x), trace),
        }
    }

    /// Last conv activation -> logits `[batch, classes]`.
    pub fn head(&self, features: Tensor<4>, trace: &mut Trace) -> Tensor<2> {
        match self {
            Classifier::PaperCnn(m) => m.head(features, trace),
            Classifier::ResnetMini(m) => m.head(features, trace),
            Classifier::EfficientnetLite0(m) => m.head(features, trace),
        }
    }

    /// Where the last conv activation's cells sit on the input.
    pub fn feature_alignment(&self) -> FeatureAlignment {
        match self {
            Classifier::PaperCnn(m) => m.feature_alignment(),
            Classifier::ResnetMini(m) => m.feature_alignment(),
            Classifier::EfficientnetLite0(m) => m.feature_alignment(),
        }
    }

    /// This network in the network description (inference behaviour, batch norm folded),
    /// reading [`ir::INPUT`].
    pub fn describe(&self) -> Result<Network, NetworkError> {
        let mut g = NetworkBuilder::default();
        let output = match self {
            Classifier::PaperCnn(m) => {
                let x = g.repeat(ir::INPUT, m.in_channels());
                m.describe(&mut g, &x)?
            }
            Classifier::ResnetMini(m) => m.describe(&mut g, ir::INPUT)?,
            Classifier::EfficientnetLite0(m) => {
                let x = g.repeat(ir::INPUT, m.in_channels());
                m.describe(&mut g, &x)?
            }
        };
        Ok(g.finish(output))
    }

    /// Logits for a batch.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut trace = Trace::off();
        let features = self.features(x, &mut trace);
        self.head(features, &mut trace)
    }

    /// Logits and the global average of the last conv activation (the features the input
    /// check measures distances in), for a batch.
    pub fn forward_with_pooled(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let mut trace = Trace::off();
        let features = self.features(x, &mut trace);
        let [b, c, _, _] = features.dims();
        let pooled = features.clone().mean_dim(3).mean_dim(2).reshape([b, c]);
        (self.head(features, &mut trace), pooled)
    }

    /// Repeats a grey channel when the first layer was built for three (ImageNet-style input).
    fn adapt_channels(&self, x: Tensor<4>) -> Tensor<4> {
        let expected = match self {
            Classifier::PaperCnn(m) => m.in_channels(),
            Classifier::ResnetMini(_) => 1,
            Classifier::EfficientnetLite0(m) => m.in_channels(),
        };
        let [_, c, _, _] = x.dims();
        if c == 1 && expected == 3 {
            x.repeat_dim(1, 3)
        } else {
            x
        }
    }
}

/// Keras-style summary of an architecture: one row per layer, output shapes from a real forward
/// pass of a zero batch.
pub fn summary(spec: &ModelSpec, device: &Device) -> (Vec<LayerRow>, usize) {
    let model = Classifier::init(spec, device);
    let total = model.num_params();
    let x = Tensor::<4>::zeros([1, 1, spec.input_size, spec.input_size], device);
    let mut trace = Trace::on();
    let features = model.features(x, &mut trace);
    model.head(features, &mut trace);
    (trace.rows(), total)
}

/// [`summary`] as a Keras-style table: a header line, one line per layer, the total.
pub fn summary_table(spec: &ModelSpec, device: &Device) -> String {
    use std::fmt::Write;
    let (rows, total) = summary(spec, device);
    let mut out = String::new();
    let s = spec.input_size;
    let _ = writeln!(
        out,
        "Model: {} ({}x{s}x{s} input, {} classes)",
        spec.architecture.name(),
        spec.in_channels,
        spec.num_classes
    );
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:<18} {:>12}",
        "layer", "type", "output shape", "params"
    );
    let _ = writeln!(out, "{}", "-".repeat(69));
    for r in rows {
        let shape = r
            .output_shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let _ = writeln!(
            out,
            "{:<10} {:<26} {:<18} {:>12}",
            r.name,
            r.kind,
            shape,
            group_digits(r.params)
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(69));
    let _ = writeln!(out, "Total params: {}", group_digits(total));
    out
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_cnn_has_the_seed_parameter_count() {
        let device = Device::flex();
        let mut spec = ModelSpec::new(Architecture::PaperCnn, 150, 4);
        spec.in_channels = 3;
        let (rows, total) = summary(&spec, &device);
        assert_eq!(total, 4_447_044);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), total);
        assert_eq!(rows.last().unwrap().output_shape, vec![4]);
        let conv9 = rows.iter().find(|r| r.name == "conv9").unwrap();
        assert_eq!(conv9.output_shape, vec![256, 10, 10]);
        spec.in_channels = 1;
        assert_eq!(summary(&spec, &device).1, 4_446_468);
    }

    #[test]
    fn resnet_mini_is_small_and_rows_add_up() {
        let device = Device::flex();
        let spec = ModelSpec::new(Architecture::ResnetMini, 150, 4);
        let (rows, total) = summary(&spec, &device);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), total);
        assert!(total < 2_000_000, "{total}");
        assert_eq!(
            rows.iter()
                .find(|r| r.name == "stage4")
                .unwrap()
                .output_shape,
            vec![256, 5, 5]
        );
        let fine = ModelSpec::new(Architecture::ResnetFine, 150, 4);
        let (rows, fine_total) = summary(&fine, &device);
        assert_eq!(fine_total, total);
        let stage4 = rows.iter().find(|r| r.name == "stage4").unwrap();
        assert_eq!(stage4.output_shape, vec![256, 10, 10]);
        assert_eq!(stage4.kind, "Residual block /1");
        let device = Device::flex();
        let align = |spec: &ModelSpec| Classifier::init(spec, &device).feature_alignment();
        // 3x3 convs with padding 1: output j of a stride-2 layer is centred on input 2j.
        assert_eq!(
            align(&fine),
            FeatureAlignment {
                stride: 16.0,
                offset: 0.0
            }
        );
        assert_eq!(
            align(&spec),
            FeatureAlignment {
                stride: 32.0,
                offset: 0.0
            }
        );
        // Valid 3x3 convs shift by one pixel, 2x2 pools centre between two: worked by hand.
        let paper = ModelSpec::new(Architecture::PaperCnn, 150, 4);
        assert_eq!(
            align(&paper),
            FeatureAlignment {
                stride: 8.0,
                offset: 37.5
            }
        );
    }

    #[test]
    fn efficientnet_lite0_has_the_reference_parameter_count() {
        let device = Device::flex();
        let mut spec = ModelSpec::new(Architecture::EfficientnetLite0, 224, 1000);
        spec.in_channels = 3;
        let (rows, total) = summary(&spec, &device);
        // timm's efficientnet_lite0 and the PyTorch port: 4,652,008 learnable parameters; burn
        // also counts batch norm's running mean and variance (2 x 21,008 channels).
        assert_eq!(total, 4_652_008 + 2 * 21_008);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), total);
        let head = rows.iter().find(|r| r.name == "head_conv").unwrap();
        assert_eq!(head.output_shape, vec![1280, 7, 7]);
        assert_eq!(
            Classifier::init(&spec, &device).feature_alignment(),
            FeatureAlignment {
                stride: 32.0,
                offset: 0.0
            }
        );
    }

    #[test]
    fn digits_are_grouped_in_threes() {
        assert_eq!(group_digits(4_447_044), "4,447,044");
        assert_eq!(group_digits(999), "999");
    }

    #[test]
    fn specs_are_checked() {
        assert!(
            ModelSpec::new(Architecture::PaperCnn, 64, 4)
                .validate()
                .is_err()
        );
        assert!(
            ModelSpec::new(Architecture::ResnetMini, 64, 1)
                .validate()
                .is_err()
        );
        assert!(
            ModelSpec::new(Architecture::ResnetMini, 64, 4)
                .validate()
                .is_ok()
        );
    }
}
