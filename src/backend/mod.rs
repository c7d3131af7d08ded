//! Layer 5: back ends over the network description ([`crate::ir`]): the ONNX writer
//! ([`onnx`]) and oncolens' own int8 engine ([`int8`]). Both read the same description, so each
//! architecture is written once.

pub mod int8;
pub mod onnx;

pub use int8::Int8Engine;
