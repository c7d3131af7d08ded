//! ONNX export (`oncolens export --onnx`), for ONNX Runtime and other deployment runtimes: the
//! network description ([`crate::ir`]) written as an ONNX graph.
//!
//! The graph takes the network input exactly as [`crate::imaging::Preprocessing`] produces it
//! (`[N, 1, S, S]`, standardised grey; pre-processing stays in oncolens or must be
//! re-implemented from `model.json`) and returns the calibrated class probabilities `[N, K]`
//! (logits divided by the model's temperature, then softmax). Batch norm is already folded into
//! the convolutions; grey input is repeated to three channels when the network takes three.
//! Opset 13. The protobuf is written directly (ONNX's message layout is small and stable), so
//! no code generator or C library is needed.

use crate::core::error::Result;
use crate::ir::{self, LayerOp, Network};
use crate::model::Classifier;
use crate::modelfile::Manifest;

pub const OPSET: i64 = 13;
/// ONNX IR version matching opset 13.
const IR_VERSION: i64 = 7;
pub const INPUT_NAME: &str = ir::INPUT;
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
}

/// A node attribute.
enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
}

impl Attr {
    fn encode(&self) -> Pb {
        // AttributeProto: name 1, i 3, ints 8, type 20 (INT 2, INTS 7).
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
        }
        p
    }
}

/// A graph under construction: nodes in topological order and float initializers.
#[derive(Default)]
struct OnnxGraph {
    nodes: Vec<Pb>,
    initializers: Vec<Pb>,
    next: usize,
}

impl OnnxGraph {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Adds a float constant; returns its name.
    fn constant(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
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

    /// Adds a node writing `output`.
    fn node_named(&mut self, op: &str, inputs: &[&str], attrs: &[Attr], output: &str) {
        // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
        let mut n = Pb::default();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, output);
        n.string(3, output);
        n.string(4, op);
        for a in attrs {
            n.message(5, a.encode());
        }
        self.nodes.push(n);
    }

    /// Adds a node with a fresh output name; returns it.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.node_named(op, inputs, attrs, &output);
        output
    }

    /// Writes one layer of the description so that its output carries `name`.
    fn layer(&mut self, name: &str, op: &LayerOp) {
        match op {
            LayerOp::Conv {
                input,
                weight,
                bias,
                dims,
                stride,
                pads,
                groups,
            } => {
                let w = self.constant("conv_w", dims, weight);
                let b = self.constant("conv_b", &[dims[0]], bias);
                self.node_named(
                    "Conv",
                    &[input, &w, &b],
                    &[
                        Attr::Ints("kernel_shape", vec![dims[2] as i64, dims[3] as i64]),
                        Attr::Ints("strides", stride.iter().map(|&s| s as i64).collect()),
                        // ONNX: [x1_begin, x2_begin, x1_end, x2_end] = top, left, bottom, right.
                        Attr::Ints("pads", pads.iter().map(|&p| p as i64).collect()),
                        Attr::Ints("dilations", vec![1, 1]),
                        Attr::Int("group", *groups as i64),
                    ],
                    name,
                );
            }
            LayerOp::Linear {
                input,
                weight,
                bias,
                dims,
            } => {
                // burn's `[in, out]` weights are Gemm's B untransposed.
                let w = self.constant("fc_w", dims, weight);
                let b = self.constant("fc_b", &[dims[1]], bias);
                self.node_named("Gemm", &[input, &w, &b], &[], name);
            }
            LayerOp::Relu { input } => self.node_named("Relu", &[input], &[], name),
            LayerOp::Relu6 { input } => {
                // Opset 13 takes Clip's bounds as inputs.
                let lo = self.constant("zero", &[], &[0.0]);
                let hi = self.constant("six", &[], &[6.0]);
                self.node_named("Clip", &[input, &lo, &hi], &[], name);
            }
            LayerOp::Add { a, b } => self.node_named("Add", &[a, b], &[], name),
            LayerOp::GlobalAverage { input } => {
                let pooled = self.node("GlobalAveragePool", &[input], &[]);
                self.node_named("Flatten", &[&pooled], &[Attr::Int("axis", 1)], name);
            }
            LayerOp::MaxPool { input, size } => self.node_named(
                "MaxPool",
                &[input],
                &[
                    Attr::Ints("kernel_shape", vec![*size as i64; 2]),
                    Attr::Ints("strides", vec![*size as i64; 2]),
                ],
                name,
            ),
            LayerOp::Flatten { input } => {
                self.node_named("Flatten", &[input], &[Attr::Int("axis", 1)], name)
            }
            LayerOp::Repeat { input, channels } => {
                let inputs: Vec<&str> = std::iter::repeat_n(input.as_str(), *channels).collect();
                self.node_named("Concat", &inputs, &[Attr::Int("axis", 1)], name);
            }
        }
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

/// The ONNX bytes of a network description: input [`INPUT_NAME`] `[N, 1, S, S]`, output
/// [`OUTPUT_NAME`] `[N, classes]`, the softmax of the logits divided by `temperature`.
pub fn network_to_onnx(
    network: &Network,
    name: &str,
    input_size: usize,
    classes: usize,
    temperature: f32,
) -> Vec<u8> {
    let mut g = OnnxGraph::default();
    for (out, op) in &network.layers {
        g.layer(out, op);
    }
    let t = g.constant("temperature", &[], &[temperature]);
    let scaled = g.node("Div", &[&network.output, &t], &[]);
    let probs = g.node("Softmax", &[&scaled], &[Attr::Int("axis", 1)]);
    // The graph's output must carry the declared name.
    g.node_named("Identity", &[&probs], &[], OUTPUT_NAME);
    g.encode(name, input_size, classes)
}

/// The ONNX bytes of a loaded model (inference mode) with its manifest's temperature.
pub fn to_onnx(manifest: &Manifest, model: &Classifier) -> Result<Vec<u8>> {
    Ok(network_to_onnx(
        &model.describe()?,
        &manifest.name,
        manifest.spec.input_size,
        manifest.classes.len(),
        manifest.temperature(),
    ))
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
