//! Layer 2: the network description. A network in inference form (batch norm already folded
//! into the convolutions) as a list of named layers in topological order. It knows nothing of
//! burn modules, architectures or file formats: each architecture describes itself here
//! ([`crate::model`]), and the back ends ([`crate::backend`]) read it, the ONNX writer and the
//! int8 engine alike, so there is one description of each network.

/// The name of the network's input: `[N, 1, S, S]`, the standardised grey image.
pub const INPUT: &str = "input";

/// One layer. Tensors are named; `input` names what a layer reads.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerOp {
    /// `weight` is `[out, in / groups, kh, kw]`, `pads` top, left, bottom, right.
    Conv {
        input: String,
        weight: Vec<f32>,
        bias: Vec<f32>,
        dims: [usize; 4],
        stride: [usize; 2],
        pads: [usize; 4],
        groups: usize,
    },
    /// `x @ W + b`, `weight` is `[in, out]`.
    Linear {
        input: String,
        weight: Vec<f32>,
        bias: Vec<f32>,
        dims: [usize; 2],
    },
    Relu {
        input: String,
    },
    /// `min(max(x, 0), 6)`.
    Relu6 {
        input: String,
    },
    Add {
        a: String,
        b: String,
    },
    /// Global average pool to `[N, C]`.
    GlobalAverage {
        input: String,
    },
    /// Square max pool, stride equal to its size, no padding (floor).
    MaxPool {
        input: String,
        size: usize,
    },
    /// `[N, C, H, W]` to `[N, C * H * W]` in that (channel-major) order.
    Flatten {
        input: String,
    },
    /// A grey input repeated to `channels` channels.
    Repeat {
        input: String,
        channels: usize,
    },
}

/// A network's layers in topological order; each output is named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    pub layers: Vec<(String, LayerOp)>,
    /// The logits.
    pub output: String,
    /// The last conv activation, whose global average the input check measures.
    pub features: String,
    /// Intermediate activations read besides the output (the input gate's taps), in order.
    pub taps: Vec<String>,
}

/// Records layers under fresh names while an architecture walks its modules.
#[derive(Debug, Default)]
pub struct NetworkBuilder {
    next: usize,
    layers: Vec<(String, LayerOp)>,
    features: String,
    taps: Vec<String>,
}

impl NetworkBuilder {
    fn push(&mut self, hint: &str, op: LayerOp) -> String {
        self.next += 1;
        let name = format!("{hint}_{}", self.next);
        self.layers.push((name.clone(), op));
        name
    }

    /// Adds a layer; returns the name of its output.
    pub fn layer(&mut self, op: LayerOp) -> String {
        let hint = match &op {
            LayerOp::Conv { .. } => "conv",
            LayerOp::Linear { .. } => "gemm",
            LayerOp::Relu { .. } => "relu",
            LayerOp::Relu6 { .. } => "clip",
            LayerOp::Add { .. } => "add",
            LayerOp::GlobalAverage { .. } => "gap",
            LayerOp::MaxPool { .. } => "maxpool",
            LayerOp::Flatten { .. } => "flatten",
            LayerOp::Repeat { .. } => "concat",
        };
        self.push(hint, op)
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.layer(LayerOp::Relu { input: x.into() })
    }

    pub fn relu6(&mut self, x: &str) -> String {
        self.layer(LayerOp::Relu6 { input: x.into() })
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.layer(LayerOp::Add {
            a: a.into(),
            b: b.into(),
        })
    }

    pub fn max_pool(&mut self, x: &str, size: usize) -> String {
        self.layer(LayerOp::MaxPool {
            input: x.into(),
            size,
        })
    }

    pub fn flatten(&mut self, x: &str) -> String {
        self.layer(LayerOp::Flatten { input: x.into() })
    }

    pub fn global_average(&mut self, x: &str) -> String {
        self.layer(LayerOp::GlobalAverage { input: x.into() })
    }

    /// Repeats a grey input to `channels` channels (none when `channels` is 1).
    pub fn repeat(&mut self, x: &str, channels: usize) -> String {
        if channels == 1 {
            return x.to_string();
        }
        self.layer(LayerOp::Repeat {
            input: x.into(),
            channels,
        })
    }

    /// Marks `x` as the last conv activation (see [`Network::features`]).
    pub fn mark_features(&mut self, x: &str) {
        self.features = x.to_string();
    }

    /// Marks `x` as a tap: an activation the caller reads besides the output.
    pub fn mark_tap(&mut self, x: &str) {
        self.taps.push(x.to_string());
    }

    /// The network whose logits are `output`.
    pub fn finish(self, output: String) -> Network {
        Network {
            layers: self.layers,
            output,
            features: self.features,
            taps: self.taps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_a_single_channel_is_not_repeated() {
        let mut b = NetworkBuilder::default();
        assert_eq!(b.repeat(INPUT, 1), INPUT);
        let r = b.relu(INPUT);
        let s = b.relu(&r);
        assert_ne!(r, s);
        b.mark_features(&s);
        let net = b.finish(s.clone());
        assert_eq!(net.layers.len(), 2);
        assert_eq!(net.features, s);
        assert_eq!(net.layers[1].1, LayerOp::Relu { input: r });
    }
}
