//! `efficientnet-lite0`: EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for CPUs and
//! accelerators: ReLU6, no squeeze-and-excitation, fixed 32-channel stem and 1280-channel head).
//! 4,652,008 parameters with the 1000-class ImageNet head, 3-channel input (grey is repeated).
//!
//! Field names follow the PyTorch port's state dict after a fixed renaming (see
//! `oncolens import-weights`), so ImageNet weights load tensor for tensor. Convolutions use symmetric
//! padding (`k / 2`); batch norm uses the port's epsilon of 1e-3.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu6;

use super::describe;
use super::paper_cnn::he_init;
use super::trace::Trace;
use crate::core::error::NetworkError;
use crate::ir::NetworkBuilder;

/// (expansion, kernel, stride, output channels, repeats) of the seven stages.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];
pub const STEM_WIDTH: usize = 32;
pub const HEAD_WIDTH: usize = 1280;
const BN_EPSILON: f64 = 1e-3;

fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(he_init())
        .init(device)
}

fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPSILON)
        .init(device)
}

/// Inverted residual block: 1x1 expansion, depthwise kxk, 1x1 linear projection, with an
/// identity shortcut when the shape is kept.
#[derive(Module, Debug)]
pub struct MbConv {
    expand: Option<Conv2d>,
    expand_bn: Option<BatchNorm>,
    depthwise: Conv2d,
    depthwise_bn: BatchNorm,
    project: Conv2d,
    project_bn: BatchNorm,
    residual: bool,
    stride: usize,
}

impl MbConv {
    fn new(
        c_in: usize,
        c_out: usize,
        expansion: usize,
        kernel: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        let mid = c_in * expansion;
        Self {
            expand: (expansion != 1).then(|| conv(c_in, mid, 1, 1, 1, device)),
            expand_bn: (expansion != 1).then(|| bn(mid, device)),
            depthwise: conv(mid, mid, kernel, stride, mid, device),
            depthwise_bn: bn(mid, device),
            project: conv(mid, c_out, 1, 1, 1, device),
            project_bn: bn(c_out, device),
            residual: stride == 1 && c_in == c_out,
            stride,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let (Some(c), Some(b)) = (&self.expand, &self.expand_bn) {
            y = relu6(b.forward(c.forward(y)));
        }
        let y = relu6(self.depthwise_bn.forward(self.depthwise.forward(y)));
        let y = self.project_bn.forward(self.project.forward(y));
        if self.residual { y + x } else { y }
    }
}

#[derive(Module, Debug)]
pub struct EfficientNetLite0 {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<MbConv>,
    head_conv: Conv2d,
    head_bn: BatchNorm,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    output: Linear,
}

impl EfficientNetLite0 {
    pub fn new(in_channels: usize, num_classes: usize, dropout: f64, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = STEM_WIDTH;
        for &(expansion, kernel, stride, c_out, repeats) in &STAGES {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                blocks.push(MbConv::new(c_in, c_out, expansion, kernel, s, device));
                c_in = c_out;
            }
        }
        Self {
            stem: conv(in_channels, STEM_WIDTH, 3, 2, 1, device),
            stem_bn: bn(STEM_WIDTH, device),
            blocks,
            head_conv: conv(c_in, HEAD_WIDTH, 1, 1, 1, device),
            head_bn: bn(HEAD_WIDTH, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            output: LinearConfig::new(HEAD_WIDTH, num_classes).init(device),
        }
    }

    /// The same network with a fresh classifier for `num_classes` (fine-tuning from ImageNet).
    pub fn with_new_head(mut self, num_classes: usize, device: &Device) -> Self {
        self.output = LinearConfig::new(HEAD_WIDTH, num_classes).init(device);
        self
    }

    pub fn in_channels(&self) -> usize {
        self.stem.weight.dims()[1]
    }

    /// Stem, inverted-residual blocks and the 1x1 head conv: the head conv's activation is the
    /// Grad-CAM layer.
    pub fn features(&self, x: Tensor<4>, trace: &mut Trace) -> Tensor<4> {
        let mut x = relu6(self.stem_bn.forward(self.stem.forward(x)));
        trace.record(
            "stem",
            "Conv2D 3x3/2 + BN + ReLU6",
            &x,
            self.stem.num_params() + self.stem_bn.num_params(),
        );
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            trace.record(
                &format!("block{}", i + 1),
                if block.stride == 2 {
                    "MBConv /2"
                } else {
                    "MBConv"
                },
                &x,
                block.num_params(),
            );
        }
        let x = relu6(self.head_bn.forward(self.head_conv.forward(x)));
        trace.record(
            "head_conv",
            "Conv2D 1x1 + BN + ReLU6",
            &x,
            self.head_conv.num_params() + self.head_bn.num_params(),
        );
        x
    }

    /// The activations after the stem and after each inverted-residual block, up to and
    /// including block `blocks` (1-based; 0 is the stem alone): the taps a gate over
    /// intermediate ImageNet features reads, without running the rest of the network.
    pub fn stage_outputs(&self, x: Tensor<4>, blocks: usize) -> Vec<Tensor<4>> {
        let mut x = relu6(self.stem_bn.forward(self.stem.forward(x)));
        let mut out = vec![x.clone()];
        for block in self.blocks.iter().take(blocks) {
            x = block.forward(x);
            out.push(x.clone());
        }
        out
    }

    /// The head convolution's activation computed from the last block's output.
    pub fn head_activation(&self, last_block: Tensor<4>) -> Tensor<4> {
        relu6(self.head_bn.forward(self.head_conv.forward(last_block)))
    }

    /// Number of inverted-residual blocks.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn head(&self, features: Tensor<4>, trace: &mut Trace) -> Tensor<2> {
        super::pooled_linear_head(features, &self.pool, &self.dropout, &self.output, trace)
    }

    /// The same computation in the network description (batch norm folded into the convolutions).
    pub fn describe(&self, g: &mut NetworkBuilder, input: &str) -> Result<String, NetworkError> {
        let stem = describe::conv(g, input, &self.stem, Some(&self.stem_bn))?;
        let mut x = g.relu6(&stem);
        for b in &self.blocks {
            x = b.describe(g, &x)?;
        }
        let h = describe::conv(g, &x, &self.head_conv, Some(&self.head_bn))?;
        let h = g.relu6(&h);
        g.mark_features(&h);
        let pooled = g.global_average(&h);
        Ok(describe::linear(g, &pooled, &self.output))
    }

    /// Every strided layer has padding `k / 2`, so it centres output `j` on input `2j`.
    pub fn feature_alignment(&self) -> super::FeatureAlignment {
        let strided = 1 + self.blocks.iter().filter(|b| b.stride == 2).count();
        (0..strided).fold(super::FeatureAlignment::IDENTITY, |a, _| a.then(2.0, 0.0))
    }
}

/// The first blocks of an ImageNet EfficientNet-Lite0, frozen: what the input gate reads its
/// features from. Mid-level features (textures, edges, tone) tell a CT or a knee from a brain
/// MRI better than the last ones, which are tuned to ImageNet's objects (docs/gate.md), and the
/// network stops where the gate stops reading.
#[derive(Module, Debug)]
pub struct EfficientNetTrunk {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<MbConv>,
}

impl EfficientNetTrunk {
    /// An untrained trunk of `blocks` blocks (the shape a stored one is loaded into).
    pub fn new(blocks: usize, device: &Device) -> Self {
        EfficientNetLite0::new(3, 1, 0.0, device).trunk(blocks)
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The trunk in the network description, with the outputs of blocks `taps` (1-based)
    /// marked as taps. It reads the grey input repeated to three channels; its "logits" are
    /// the last tap.
    pub fn describe(&self, taps: &[usize]) -> Result<crate::ir::Network, NetworkError> {
        let mut g = NetworkBuilder::default();
        let input = g.repeat(crate::ir::INPUT, self.stem.weight.dims()[1]);
        let stem = describe::conv(&mut g, &input, &self.stem, Some(&self.stem_bn))?;
        let mut x = g.relu6(&stem);
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.describe(&mut g, &x)?;
            if taps.contains(&(i + 1)) {
                g.mark_tap(&x);
            }
        }
        g.mark_features(&x);
        Ok(g.finish(x))
    }
}

impl MbConv {
    fn describe(&self, g: &mut NetworkBuilder, x: &str) -> Result<String, NetworkError> {
        let mut y = x.to_string();
        if let (Some(c), Some(n)) = (&self.expand, &self.expand_bn) {
            let e = describe::conv(g, &y, c, Some(n))?;
            y = g.relu6(&e);
        }
        let d = describe::conv(g, &y, &self.depthwise, Some(&self.depthwise_bn))?;
        let d = g.relu6(&d);
        let p = describe::conv(g, &d, &self.project, Some(&self.project_bn))?;
        Ok(if self.residual { g.add(&p, x) } else { p })
    }
}

impl EfficientNetLite0 {
    /// Its stem and first `blocks` blocks.
    pub fn trunk(self, blocks: usize) -> EfficientNetTrunk {
        EfficientNetTrunk {
            stem: self.stem,
            stem_bn: self.stem_bn,
            blocks: self.blocks.into_iter().take(blocks).collect(),
        }
    }
}
