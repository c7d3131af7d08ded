//! `paper-cnn`: the seed project's Keras network, layer for layer (valid padding, ReLU,
//! dropout 0.3). 4,447,044 parameters at 150x150 with 3 input channels; 4,446,468 with one.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::describe;
use super::trace::Trace;
use crate::core::error::NetworkError;
use crate::ir::NetworkBuilder;

#[derive(Module, Debug)]
pub struct PaperCnn {
    in_channels: usize,
    convs: Vec<Conv2d>,
    pool: MaxPool2d,
    dropout: Dropout,
    dense1: Linear,
    dense2: Linear,
    output: Linear,
}

/// Conv widths in order; a max-pool follows the convs whose index is listed in `POOL_AFTER`.
const WIDTHS: [usize; 9] = [32, 64, 64, 64, 128, 128, 128, 128, 256];
const POOL_AFTER: [usize; 4] = [1, 3, 6, 8];

/// Spatial side after the conv stack for a square input of `input_size`.
pub fn feature_side(input_size: usize) -> usize {
    let mut side = input_size;
    for i in 0..WIDTHS.len() {
        side = side.saturating_sub(2);
        if POOL_AFTER.contains(&i) {
            side /= 2;
        }
    }
    side
}

/// He-normal: keeps ReLU activations alive through deep residual stacks.
pub fn he_init() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: false,
    }
}

/// Glorot-uniform, Keras' default and so the seed's: with He init the 6400x512 dense layer
/// starts with logits large enough to make the first Adam steps jump (seen as a collapse to a
/// constant ln(K) loss); the gradient-norm clip in training guards the rest.
fn glorot() -> Initializer {
    Initializer::XavierUniform { gain: 1.0 }
}

impl PaperCnn {
    pub fn new(in_channels: usize, num_classes: usize, input_size: usize, device: &Device) -> Self {
        let mut convs = Vec::new();
        let mut c_in = in_channels;
        for &c_out in &WIDTHS {
            convs.push(
                Conv2dConfig::new([c_in, c_out], [3, 3])
                    .with_initializer(glorot())
                    .init(device),
            );
            c_in = c_out;
        }
        let side = feature_side(input_size).max(1);
        let dense = |i, o| {
            LinearConfig::new(i, o)
                .with_initializer(glorot())
                .init(device)
        };
        Self {
            in_channels,
            convs,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            dropout: DropoutConfig::new(0.3).init(),
            dense1: dense(side * side * 256, 512),
            dense2: dense(512, 512),
            output: dense(512, num_classes),
        }
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The conv stack up to the last convolution's activation (the Grad-CAM layer).
    pub fn features(&self, x: Tensor<4>, trace: &mut Trace) -> Tensor<4> {
        let mut x = x;
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            x = relu(conv.forward(x));
            trace.record(
                &format!("conv{}", i + 1),
                "Conv2D 3x3 + ReLU",
                &x,
                conv.num_params(),
            );
            if i == last {
                break;
            }
            // Seed order: Drop after conv2's pool, after conv4 (before and after its pool), after
            // conv7's pool.
            if i == 3 {
                x = self.dropout.forward(x);
            }
            if POOL_AFTER.contains(&i) {
                x = self.pool.forward(x);
                trace.record(&format!("pool{}", i + 1), "MaxPool2D 2x2", &x, 0);
                x = self.dropout.forward(x);
            }
        }
        x
    }

    /// Valid 3x3 convs centre output `j` on input `j + 1`; 2x2 pools on `2j + 0.5`.
    pub fn feature_alignment(&self) -> super::FeatureAlignment {
        let mut a = super::FeatureAlignment::IDENTITY;
        for i in 0..self.convs.len() {
            a = a.then(1.0, 1.0);
            if i + 1 < self.convs.len() && POOL_AFTER.contains(&i) {
                a = a.then(2.0, 0.5);
            }
        }
        a
    }

    /// The same computation in the network description (dropout is the identity at inference).
    pub fn describe(&self, g: &mut NetworkBuilder, input: &str) -> Result<String, NetworkError> {
        let mut x = input.to_string();
        for (i, conv) in self.convs.iter().enumerate() {
            let y = describe::conv(g, &x, conv, None)?;
            x = g.relu(&y);
            if i + 1 == self.convs.len() {
                g.mark_features(&x);
            }
            if POOL_AFTER.contains(&i) {
                // The pool after the last conv belongs to the head, same place in the graph.
                x = g.max_pool(&x, 2);
            }
        }
        let flat = g.flatten(&x);
        let d1 = describe::linear(g, &flat, &self.dense1);
        let d1 = g.relu(&d1);
        let d2 = describe::linear(g, &d1, &self.dense2);
        let d2 = g.relu(&d2);
        Ok(describe::linear(g, &d2, &self.output))
    }

    /// From the last conv activation to class logits.
    pub fn head(&self, features: Tensor<4>, trace: &mut Trace) -> Tensor<2> {
        let x = self.pool.forward(features);
        trace.record("pool9", "MaxPool2D 2x2", &x, 0);
        let x = self.dropout.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        trace.record("flatten", "Flatten", &x, 0);
        let x = relu(self.dense1.forward(x));
        trace.record("dense1", "Dense + ReLU", &x, self.dense1.num_params());
        let x = relu(self.dense2.forward(x));
        trace.record("dense2", "Dense + ReLU", &x, self.dense2.num_params());
        let x = self.dropout.forward(x);
        let x = self.output.forward(x);
        trace.record("logits", "Dense", &x, self.output.num_params());
        x
    }
}
