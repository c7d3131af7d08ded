//! The input gate's network: a small CNN over the 128 x 128 whole-frame view that says what kind
//! of picture an image is (a brain MRI slice, a head CT, a chest X-ray, ...). About 100 k
//! parameters and 16 M multiply-adds an image; beside the convolutions it sees the view's tone
//! histogram, so it adds a few milliseconds to an analysis. It is
//! independent of the classifier: one gate serves every model.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::paper_cnn::he_init;
use crate::imaging::gate_view::TONE_FEATURES;

/// Conv widths; the first has stride 2, each but the last is followed by a 2 x 2 max-pool.
const WIDTHS: [usize; 4] = [16, 32, 64, 128];

#[derive(Module, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, device: &Device) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .with_initializer(he_init())
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct GateNet {
    blocks: Vec<ConvBn>,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    dropout: Dropout,
    output: Linear,
}

impl GateNet {
    /// A freshly initialised gate for `kinds` kinds of picture (seed the device first for
    /// reproducible weights).
    pub fn new(kinds: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = 1;
        for (i, &c_out) in WIDTHS.iter().enumerate() {
            // The first convolution reads the full-resolution view (fine texture: grey and
            // white matter against the flat brain of a CT) at stride 2.
            let (kernel, stride) = if i == 0 { (5, 2) } else { (3, 1) };
            blocks.push(ConvBn::new(c_in, c_out, kernel, stride, device));
            c_in = c_out;
        }
        Self {
            blocks,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(0.2).init(),
            output: LinearConfig::new(c_in + TONE_FEATURES, kinds)
                .with_initializer(he_init())
                .init(device),
        }
    }

    /// `[batch, 1, side, side]` standardised views and `[batch, TONE_FEATURES]` tone features
    /// -> one logit per kind.
    pub fn forward(&self, mut x: Tensor<4>, tone: Tensor<2>) -> Tensor<2> {
        let last = self.blocks.len() - 1;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i < last {
                x = self.pool.forward(x);
            }
        }
        let pooled: Tensor<2> = self.gap.forward(x).flatten(1, 3);
        let joined = Tensor::cat(vec![pooled, tone], 1);
        self.output.forward(self.dropout.forward(joined))
    }

    /// Number of kinds the gate tells apart.
    pub fn kinds(&self) -> usize {
        self.output.weight.dims()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_logit_per_kind_for_each_view() {
        let device = Device::flex();
        let net = GateNet::new(7, &device);
        let x = Tensor::<4>::zeros([3, 1, 128, 128], &device);
        let tone = Tensor::<2>::zeros([3, TONE_FEATURES], &device);
        assert_eq!(net.forward(x, tone).dims(), [3, 7]);
        assert_eq!(net.kinds(), 7);
        assert!(net.num_params() < 150_000, "{}", net.num_params());
    }
}
