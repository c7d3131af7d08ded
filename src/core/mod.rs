//! Layer 0: what every other layer may use and which itself uses nothing of oncolens.
//!
//! - [`error`]: the typed errors of each concern (decoding, data sets, model files, networks,
//!   int8, training, explanations, calibration, plots, storage, serving) and the umbrella
//!   [`Error`] the library's functions return;
//! - [`numeric`]: argmax, softmax with temperature, quantiles;
//! - [`disjoint_set`]: union-find, for grouping copies of the same image;
//! - [`files`]: atomic JSON writes and file checksums.

pub mod disjoint_set;
pub mod error;
pub mod files;
pub mod numeric;

pub use disjoint_set::DisjointSet;
pub use error::{Error, Result};

/// Shown wherever results are shown.
pub const DISCLAIMER: &str = "Research and decision-support tool, not a diagnostic device. Classes are tumour types \
(glioma, meningioma, pituitary, no tumour); nothing here indicates stage or grade.";
