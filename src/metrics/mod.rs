//! Layer 1: figures computed from labels, probabilities and logits, with no model in sight.
//!
//! - [`classification`]: accuracy, per-class precision / recall / F1, macro and weighted
//!   averages, one-vs-rest ROC-AUC, confusion matrices, bootstrap intervals;
//! - [`calibration`]: temperature scaling (fit and NLL), expected calibration error and
//!   reliability bins, the risk-coverage curve of selective prediction;
//! - [`presence`]: tumour or not: sensitivity and specificity of a decision rule, and the rule
//!   that says "No tumour" only when its probability is high enough.

pub mod calibration;
pub mod classification;
pub mod presence;

pub use classification::Metrics;
