//! The networks. Model code is free of backend specifics: it runs on whatever [`Device`] it is
//! given (flex on CPU today; CUDA or wgpu behind cargo features).
//!
//! Every architecture splits into `features` (input -> last convolutional activation) and `head`
//! (that activation -> class logits), so explanation methods can differentiate the class score
//! with respect to the last conv layer.

pub mod paper_cnn;
pub mod resnet;
pub mod trace;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use paper_cnn::PaperCnn;
pub use resnet::ResnetMini;
pub use trace::{LayerRow, Trace};

/// Architecture names, as written on the command line and in model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// The seed project's plain CNN (4.4 M parameters, 2.3 GFLOP per image).
    PaperCnn,
    /// Residual network with batch norm and global average pooling (the default).
    ResnetMini,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::PaperCnn => "paper-cnn",
            Architecture::ResnetMini => "resnet-mini",
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

    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
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

/// A classifier of any shipped architecture.
#[derive(Module, Debug)]
pub enum Classifier {
    PaperCnn(PaperCnn),
    ResnetMini(ResnetMini),
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
            Architecture::ResnetMini => Classifier::ResnetMini(ResnetMini::new(
                spec.in_channels,
                spec.num_classes,
                spec.dropout,
                device,
            )),
        }
    }

    /// `[batch, 1, size, size]` standardised grey input -> last conv activation.
    pub fn features(&self, x: Tensor<4>, trace: &mut Trace) -> Tensor<4> {
        match self {
            Classifier::PaperCnn(m) => m.features(self.adapt_channels(x), trace),
            Classifier::ResnetMini(m) => m.features(x, trace),
        }
    }

    /// Last conv activation -> logits `[batch, classes]`.
    pub fn head(&self, features: Tensor<4>, trace: &mut Trace) -> Tensor<2> {
        match self {
            Classifier::PaperCnn(m) => m.head(features, trace),
            Classifier::ResnetMini(m) => m.head(features, trace),
        }
    }

    /// Logits for a batch.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut trace = Trace::off();
        let features = self.features(x, &mut trace);
        self.head(features, &mut trace)
    }

    /// Repeats a grey channel when the first layer was built for three (ImageNet-style input).
    fn adapt_channels(&self, x: Tensor<4>) -> Tensor<4> {
        let expected = match self {
            Classifier::PaperCnn(m) => m.in_channels(),
            Classifier::ResnetMini(_) => 1,
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
