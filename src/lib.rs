//! # oncolens
//!
//! Brain MRI slice classification by tumour type (glioma, meningioma, pituitary, no tumour) with
//! leak-free evaluation and one pre-processing pipeline shared by training and inference.
//! A research and decision-support tool, not a diagnostic device; classes are tumour types,
//! never stages or grades.
//!
//! Layout, in the order data flows:
//! - [`data`]: decoding scans (PNG/JPEG, 8/16-bit, grey/RGB/RGBA), image-folder data sets,
//!   leak-free stratified splits, augmentation and batching;
//! - [`preprocess`]: the pipeline stored in every model file (rescale, crop to the brain, resize,
//!   optional CLAHE and denoise, standardisation);
//! - [`model`]: the networks (`paper-cnn`, the seed's CNN; `resnet-mini` and `resnet-fine`,
//!   residual networks), free of backend specifics;
//! - [`train`]: the training loop, checkpoints, history and curves;
//! - [`bundle`]: the self-describing model file; [`import`]: ImageNet weights from PyTorch files;
//! - [`inference`]: [`inference::Predictor`], used by `predict`, `evaluate` and serving;
//! - [`evaluate`]: metrics and leak-free reports; [`plot`]: PNG figures;
//! - [`audit`]: duplicates, near-duplicates, leakage and balance of a data set;
//! - [`trust`]: calibration (temperature scaling), selective prediction ("uncertain") and the
//!   input check that refuses images that do not look like brain MRI slices;
//! - [`explain`]: Grad-CAM heat-maps drawn back onto the original scan;
//! - [`export`]: ONNX export of trained models;
//! - [`serve`]: the web app and JSON API (`oncolens serve`).
//!
//! Features: `cuda` and `wgpu` add GPU devices through burn; the default build is CPU only
//! (burn's `flex` backend).

pub mod audit;
pub mod bundle;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod export;
pub mod import;
pub mod inference;
pub mod int8;
pub mod model;
pub mod plot;
pub mod preprocess;
pub mod serve;
pub mod train;
pub mod trust;

pub use error::{Error, Result};
