//! Layer 7: answers and explanations for scans. [`Predictor`] gives the class, "uncertain" or
//! "not a brain MRI slice" with the input check's reasons ([`predictor`]); [`Explainer`] adds
//! Grad-CAM on top of the same answer ([`explain`]); [`render`] turns maps into pictures.

pub mod explain;
pub mod predictor;
pub mod render;

pub use explain::{Explainer, Explanation};
pub use predictor::{Prediction, Predictor, Verdict, prediction_from};
