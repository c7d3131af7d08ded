//! ONNX export of trained models (`oncolens export --onnx`), for ONNX Runtime and other
//! deployment runtimes.
//!
//! The exported graph takes the network input exactly as [`crate::preprocess::Preprocessing`]
//! produces it (`[N, 1, S, S]`, standardised grey; pre-processing stays in oncolens or must be
//! re-implemented from `model.json`) and returns the calibrated class probabilities `[N, K]`
//! (logits divided by the model's temperature, then softmax). Batch norm is folded into the
//! preceding convolution; grey input is repeated to three channels when the network takes three.
//! Opset 13. The protobuf is written directly (ONNX's message layout is small and stable), so
//! no code generator or C library is needed.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};

use crate::bundle::Manifest;
use crate::error::{Error, Result};
use crate::model::Classifier;

pub const OPSET: i64 = 13;
/// ONNX IR version matching opset 13.
const IR_VERSION: i64 = 7;
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "probabilities";

/// Protobuf wire-format writer: just what ONNX messages need.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// A node attribute.
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

impl Attr {
    fn encode(&self) -> Pb {
        // AttributeProto: name 1, f 2, i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7).
        let mut p = Pb::default();
        match self {
            Attr::Int(name, v) => {
                p.string(1, name);
                p.int(3, *v);
                p.int(20, 2);
            }
            Attr::Ints(name, vs) => {
                p.string(1, name);
                for v in vs {
                    p.int(8, *v);
                }
                p.int(20, 7);
            }
            Attr::Float(name, v) => {
                p.string(1, name);
                p.float(2, *v);
                p.int(20, 1);
            }
        }
        p
    }
}

/// One layer of a network in inference form (batch norm folded), as the ONNX graph records it:
/// the same walk over the network feeds ONNX export and oncolens' own int8 engine
/// ([`crate::int8`]). Tensors are named; `input` names what a layer reads.
#[derive(Debug, Clone)]
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
    /// `weight` is `[in, out]`.
    Linear {
        input: String,
        weight: Vec<f32>,
        bias: Vec<f32>,
        dims: [usize; 2],
    },
    Relu {
        input: String,
    },
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
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub layers: Vec<(String, LayerOp)>,
    /// The logits.
    pub output: String,
    /// The last conv activation, whose global average the input check measures.
    pub features: String,
}

/// The inference-form layers of a loaded model.
pub fn network(model: &Classifier) -> Result<Network> {
    let mut g = OnnxGraph::default();
    let output = model.export_onnx(&mut g, INPUT_NAME)?;
    Ok(Network {
        layers: g.layers,
        output,
        features: g.features,
    })
}

/// A graph under construction: nodes in topological order, float initializers, and the same
/// layers in structured form.
#[derive(Default)]
pub struct OnnxGraph {
    nodes: Vec<Pb>,
    initializers: Vec<Pb>,
    next: usize,
    layers: Vec<(String, LayerOp)>,
    features: String,
}

fn tensor_values(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

impl OnnxGraph {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Adds a float constant; returns its name.
    pub fn constant(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        // TensorProto: dims 1, data_type 2 (FLOAT = 1), name 8, raw_data 9.
        let mut t = Pb::default();
        for d in dims {
            t.int(1, *d as i64);
        }
        t.int(2, 1);
        t.string(8, &name);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.bytes(9, &raw);
        self.initializers.push(t);
        name
    }

    /// Adds a node with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let output = self.fresh(&op.to_lowercase());
        // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
        let mut n = Pb::default();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, &output);
        n.string(3, &output);
        n.string(4, op);
        for a in attrs {
            n.message(5, a.encode());
        }
        self.nodes.push(n);
        output
    }

    /// A convolution, with the batch norm that follows it folded in:
    /// `w' = w * g / sqrt(v + eps)`, `b' = beta + (b - mean) * g / sqrt(v + eps)`.
    pub fn conv(&mut self, x: &str, conv: &Conv2d, bn: Option<&BatchNorm>) -> Result<String> {
        let dims = conv.weight.val().dims();
        let mut w: Vec<f32> = conv
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let out_channels = dims[0];
        let mut b: Vec<f32> = match &conv.bias {
            Some(bias) => tensor_values(bias.val()),
            None => vec![0.0; out_channels],
        };
        if let Some(bn) = bn {
            let gamma = tensor_values(bn.gamma.val());
            let beta = tensor_values(bn.beta.val());
            let mean = tensor_values(bn.running_mean.value());
            let var = tensor_values(bn.running_var.value());
            let per_out = w.len() / out_channels;
            for o in 0..out_channels {
                let scale = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
                w[o * per_out..(o + 1) * per_out]
                    .iter_mut()
                    .for_each(|v| *v *= scale);
                b[o] = beta[o] + (b[o] - mean[o]) * scale;
            }
        }
        let pads = match conv.padding {
            PaddingConfig2d::Valid => [0, 0, 0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Same => {
                return Err(Error::Config(
                    "ONNX export: 'same' padding is not supported".into(),
                ));
            }
        };
        let weight = self.constant("conv_w", &dims, &w);
        let bias = self.constant("conv_b", &[out_channels], &b);
        let out = self.node(
            "Conv",
            &[x, &weight, &bias],
            &[
                Attr::Ints("kernel_shape", vec![dims[2] as i64, dims[3] as i64]),
                Attr::Ints("strides", conv.stride.iter().map(|&s| s as i64).collect()),
                // ONNX: [x1_begin, x2_begin, x1_end, x2_end] = top, left, bottom, right.
                Attr::Ints("pads", pads.iter().map(|&p| p as i64).collect()),
                Attr::Ints(
                    "dilations",
                    conv.dilation.iter().map(|&d| d as i64).collect(),
                ),
                Attr::Int("group", conv.groups as i64),
            ],
        );
        self.layers.push((
            out.clone(),
            LayerOp::Conv {
                input: x.to_string(),
                weight: w,
                bias: b,
                dims: [dims[0], dims[1], dims[2], dims[3]],
                stride: conv.stride,
                pads,
                groups: conv.groups,
            },
        ));
        Ok(out)
    }

    /// `x @ W + b` (burn keeps linear weights as `[in, out]`, which is Gemm's B untransposed).
    pub fn linear(&mut self, x: &str, linear: &Linear) -> String {
        let dims = linear.weight.val().dims();
        let w: Vec<f32> = linear
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let b = match &linear.bias {
            Some(bias) => tensor_values(bias.val()),
            None => vec![0.0; dims[1]],
        };
        let weight = self.constant("fc_w", &dims, &w);
        let bias = self.constant("fc_b", &[dims[1]], &b);
        let out = self.node("Gemm", &[x, &weight, &bias], &[]);
        self.record(
            &out,
            LayerOp::Linear {
                input: x.to_string(),
                weight: w,
                bias: b,
                dims: [dims[0], dims[1]],
            },
        )
    }

    fn record(&mut self, out: &str, op: LayerOp) -> String {
        self.layers.push((out.to_string(), op));
        out.to_string()
    }

    /// Marks `x` as the last conv activation (see [`Network::features`]).
    pub fn mark_features(&mut self, x: &str) {
        self.features = x.to_string();
    }

    pub fn relu(&mut self, x: &str) -> String {
        let out = self.node("Relu", &[x], &[]);
        self.record(&out, LayerOp::Relu { input: x.into() })
    }

    /// Square max pool, stride equal to its size, no padding (floor).
    pub fn max_pool(&mut self, x: &str, size: usize) -> String {
        let out = self.node(
            "MaxPool",
            &[x],
            &[
                Attr::Ints("kernel_shape", vec![size as i64; 2]),
                Attr::Ints("strides", vec![size as i64; 2]),
            ],
        );
        self.record(
            &out,
            LayerOp::MaxPool {
                input: x.into(),
                size,
            },
        )
    }

    pub fn flatten(&mut self, x: &str) -> String {
        let out = self.node("Flatten", &[x], &[Attr::Int("axis", 1)]);
        self.record(&out, LayerOp::Flatten { input: x.into() })
    }

    /// ReLU6 as Clip(0, 6) (opset 13 takes the bounds as inputs).
    pub fn relu6(&mut self, x: &str) -> String {
        let lo = self.constant("zero", &[], &[0.0]);
        let hi = self.constant("six", &[], &[6.0]);
        let out = self.node("Clip", &[x, &lo, &hi], &[]);
        self.record(&out, LayerOp::Relu6 { input: x.into() })
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        let out = self.node("Add", &[a, b], &[]);
        self.record(
            &out,
            LayerOp::Add {
                a: a.into(),
                b: b.into(),
            },
        )
    }

    /// Global average pool then flatten to `[N, C]`.
    pub fn global_average(&mut self, x: &str) -> String {
        let pooled = self.node("GlobalAveragePool", &[x], &[]);
        let out = self.node("Flatten", &[&pooled], &[Attr::Int("axis", 1)]);
        self.record(&out, LayerOp::GlobalAverage { input: x.into() })
    }

    fn encode(self, name: &str, input_size: usize, classes: usize) -> Vec<u8> {
        let value_info = |name: &str, dims: &[Option<usize>]| {
            // ValueInfoProto { name 1, type 2: TypeProto { tensor_type 1: { elem_type 1,
            // shape 2: { dim 1: { dim_value 1 | dim_param 2 } } } } }
            let mut shape = Pb::default();
            for d in dims {
                let mut dim = Pb::default();
                match d {
                    Some(v) => dim.int(1, *v as i64),
                    None => dim.string(2, "batch"),
                }
                shape.message(1, dim);
            }
            let mut tensor = Pb::default();
            tensor.int(1, 1);
            tensor.message(2, shape);
            let mut ty = Pb::default();
            ty.message(1, tensor);
            let mut vi = Pb::default();
            vi.string(1, name);
            vi.message(2, ty);
            vi
        };
        let mut graph = Pb::default();
        for n in self.nodes {
            graph.message(1, n);
        }
        graph.string(2, name);
        for t in self.initializers {
            graph.message(5, t);
        }
        graph.message(
            11,
            value_info(
                INPUT_NAME,
                &[None, Some(1), Some(input_size), Some(input_size)],
            ),
        );
        graph.message(12, value_info(OUTPUT_NAME, &[None, Some(classes)]));
        let mut opset = Pb::default();
        opset.string(1, "");
        opset.int(2, OPSET);
        let mut model = Pb::default();
        model.int(1, IR_VERSION);
        model.string(2, "oncolens");
        model.string(3, env!("CARGO_PKG_VERSION"));
        model.message(7, graph);
        model.message(8, opset);
        model.0
    }
}

/// The ONNX bytes of a loaded model (inference mode) with its manifest's temperature.
pub fn to_onnx(manifest: &Manifest, model: &Classifier) -> Result<Vec<u8>> {
    let mut g = OnnxGraph::default();
    let logits = model.export_onnx(&mut g, INPUT_NAME)?;
    let t = g.constant("temperature", &[], &[manifest.temperature()]);
    let scaled = g.node("Div", &[&logits, &t], &[]);
    let probs = g.node("Softmax", &[&scaled], &[Attr::Int("axis", 1)]);
    // The graph's output must carry the declared name.
    let _ = g.node("Identity", &[&probs], &[]);
    if let Some(last) = g.nodes.last_mut() {
        let mut n = Pb::default();
        n.string(1, &probs);
        n.string(2, OUTPUT_NAME);
        n.string(3, OUTPUT_NAME);
        n.string(4, "Identity");
        *last = n;
    }
    Ok(g.encode(
        &manifest.name,
        manifest.spec.input_size,
        manifest.classes.len(),
    ))
}

/// Repeats a grey input to `channels` channels (ImageNet-style first layers).
pub fn adapt_channels(g: &mut OnnxGraph, x: &str, channels: usize) -> String {
    if channels == 1 {
        return x.to_string();
    }
    let inputs: Vec<&str> = std::iter::repeat_n(x, channels).collect();
    let out = g.node("Concat", &inputs, &[Attr::Int("axis", 1)]);
    g.record(
        &out,
        LayerOp::Repeat {
            input: x.into(),
            channels,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let mut p = Pb::default();
        p.varint(1);
        p.varint(300);
        p.varint(u64::MAX);
        assert_eq!(&p.0[..3], &[0x01, 0xAC, 0x02]);
        assert_eq!(p.0.len(), 3 + 10);
        let mut k = Pb::default();
        k.string(4, "Relu");
        assert_eq!(k.0, [0x22, 4, b'R', b'e', b'l', b'u']);
        let mut i = Pb::default();
        i.int(1, -1);
        assert_eq!(i.0.len(), 11, "negative int64 takes ten bytes");
    }
}
