//! # oncolens
//!
//! Brain MRI slice classification by tumour type (glioma, meningioma, pituitary, no tumour) with
//! leak-free evaluation and one pre-processing pipeline shared by training and inference.
//! A research and decision-support tool, not a diagnostic device; classes are tumour types,
//! never stages or grades.
//!
//! ## Layers
//!
//! Each module imports only from the layers below it (`tests/layers.rs` fails the build's tests
//! otherwise), so each can be read, tested and replaced on its own:
//!
//! | layer | modules | what they hold |
//! |---|---|---|
//! | 0 | [`core`] | typed errors, numeric helpers, union-find, atomic files |
//! | 1 | [`imaging`], [`metrics`], [`plot`] | one image (PNG, JPEG and DICOM decoding, statistics, pre-processing, augmentation); figures from labels and probabilities; PNG charts |
//! | 2 | [`data`], [`ir`], [`deid`], [`database`] | data sets (folders, splits, batching); the network description; DICOM de-identification; the SQL database, opened and migrated |
//! | 3 | [`model`], [`objects`], [`security`] | the architectures, each describing itself in the `ir`; the object store (a folder or S3) of scans and heat-maps; accounts, sessions, tokens, the audit trail, the data key |
//! | 4 | [`modelfile`] | the model file's plain data types, and reading/writing it |
//! | 5 | [`backend`], [`store`] | back ends over the `ir`: ONNX writer, int8 engine; the stored analyses, feedback and model registry |
//! | 6 | [`runtime`] | the one model loader; f32/int8 forward passes, TTA |
//! | 7 | [`inference`] | answers (`Predictor`) and Grad-CAM (`Explainer`) |
//! | 8 | [`workflows`] | audit, train, calibrate, quantize, evaluate, export, import |
//! | 9 | [`serve`] | the web app and JSON API |
//!
//! The command line (`src/main.rs`, `src/cli/`) sits on top as a thin shell.
//!
//! Features: `cuda` and `wgpu` add GPU devices through burn; the default build is CPU only
//! (burn's `flex` backend).

pub mod core;
pub mod imaging;
pub mod metrics;
pub mod plot;

pub mod data;
pub mod database;
pub mod deid;
pub mod ir;

pub mod model;
pub mod objects;
pub mod security;

pub mod modelfile;

pub mod backend;
pub mod store;

pub mod runtime;

pub mod inference;

pub mod workflows;

pub mod serve;

pub use crate::core::error::{Error, Result};
