//! The residual networks. A stride-2 stem, four residual stages (basic blocks with batch norm),
//! global average pooling and one linear layer; about 1.2 M parameters.
//!
//! - `resnet-mini`: every stage halves the resolution (output stride 32: a 5x5 last map at
//!   150 px), ~0.2 GFLOP per 150x150 image against 2.3 GFLOP for `paper-cnn`.
//! - `resnet-fine`: the same weights' shapes, but the last stage keeps the resolution (output
//!   stride 16: a 10x10 last map at 150 px), so Grad-CAM can point at a tumour rather than a
//!   quarter of the head, for ~1.6x the compute.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::describe;
use super::paper_cnn::he_init;
use super::trace::Trace;
use crate::core::error::NetworkError;
use crate::ir::NetworkBuilder;

/// Channels of the stem and of each stage.
pub const STEM_WIDTH: usize = 24;
pub const STAGE_WIDTHS: [usize; 4] = [32, 64, 128, 256];

fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(he_init())
        .init(device)
}

/// conv-bn-relu-conv-bn plus a (projected when the shape changes) shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Projection>,
}

/// 1x1 strided conv + BN: the shortcut when a block changes shape.
#[derive(Module, Debug)]
pub struct Projection {
    conv: Conv2d,
    bn: BatchNorm,
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| Projection {
            conv: conv(c_in, c_out, 1, stride, device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv(c_in, c_out, 3, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv(c_out, c_out, 3, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut,
        }
    }

    fn shortcut_strided(&self) -> bool {
        self.conv1.stride != [1, 1]
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.shortcut {
            Some(p) => p.bn.forward(p.conv.forward(x.clone())),
            None => x.clone(),
        };
        let y = relu(self.bn1.forward(self.conv1.forward(x)));
        let y = self.bn2.forward(self.conv2.forward(y));
        relu(y + identity)
    }
}

#[derive(Module, Debug)]
pub struct ResnetMini {
    stem: Conv2d,
    stem_bn: BatchNorm,
    stages: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    output: Linear,
}

impl ResnetMini {
    /// `last_stride` 2 builds `resnet-mini`, 1 builds `resnet-fine`.
    pub fn new(
        in_channels: usize,
        num_classes: usize,
        dropout: f64,
        last_stride: usize,
        device: &Device,
    ) -> Self {
        let mut stages = Vec::new();
        let mut c_in = STEM_WIDTH;
        for (i, &c_out) in STAGE_WIDTHS.iter().enumerate() {
            let stride = if i + 1 == STAGE_WIDTHS.len() {
                last_stride
            } else {
                2
            };
            stages.push(BasicBlock::new(c_in, c_out, stride, device));
            c_in = c_out;
        }
        Self {
            stem: conv(in_channels, STEM_WIDTH, 3, 2, device),
            stem_bn: BatchNormConfig::new(STEM_WIDTH).init(device),
            stages,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            output: LinearConfig::new(c_in, num_classes).init(device),
        }
    }

    /// Stem and residual stages: the last stage's activation is the Grad-CAM layer.
    pub fn features(&self, x: Tensor<4>, trace: &mut Trace) -> Tensor<4> {
        let mut x = relu(self.stem_bn.forward(self.stem.forward(x)));
        trace.record(
            "stem",
            "Conv2D 3x3/2 + BN + ReLU",
            &x,
            self.stem.num_params() + self.stem_bn.num_params(),
        );
        for (i, block) in self.stages.iter().enumerate() {
            x = block.forward(x);
            trace.record(
                &format!("stage{}", i + 1),
                if block.shortcut_strided() {
                    "Residual block /2"
                } else {
                    "Residual block /1"
                },
                &x,
                block.num_params(),
            );
        }
        x
    }

    /// Every 3x3 conv has padding 1, so a stride-2 layer centres output `j` on input `2j`.
    pub fn feature_alignment(&self) -> super::FeatureAlignment {
        let strided = 1 + self.stages.iter().filter(|b| b.shortcut_strided()).count();
        (0..strided).fold(super::FeatureAlignment::IDENTITY, |a, _| a.then(2.0, 0.0))
    }

    /// The same computation in the network description (batch norm folded into the convolutions).
    pub fn describe(&self, g: &mut NetworkBuilder, input: &str) -> Result<String, NetworkError> {
        let stem = describe::conv(g, input, &self.stem, Some(&self.stem_bn))?;
        let mut x = g.relu(&stem);
        for block in &self.stages {
            let identity = match &block.shortcut {
                Some(p) => describe::conv(g, &x, &p.conv, Some(&p.bn))?,
                None => x.clone(),
            };
            let y = describe::conv(g, &x, &block.conv1, Some(&block.bn1))?;
            let y = g.relu(&y);
            let y = describe::conv(g, &y, &block.conv2, Some(&block.bn2))?;
            let sum = g.add(&y, &identity);
            x = g.relu(&sum);
        }
        g.mark_features(&x);
        let pooled = g.global_average(&x);
        Ok(describe::linear(g, &pooled, &self.output))
    }

    pub fn head(&self, features: Tensor<4>, trace: &mut Trace) -> Tensor<2> {
        super::pooled_linear_head(features, &self.pool, &self.dropout, &self.output, trace)
    }
}
