//! Layer 7: answers and explanations for scans. [`Predictor`] gives the class, "uncertain" or
//! "not a brain MRI slice" with the input check's reasons ([`predictor`]); [`Explainer`] adds
//! Grad-CAM on top of the same answer ([`explain`]); [`render`] turns maps into pictures;
//! [`series`] sums up the slices of a DICOM series; [`slot`] holds the model a service
//! answers with and lets it be replaced while the service runs.

pub mod explain;
pub mod predictor;
pub mod render;
pub mod series;
pub mod slot;

pub use explain::{Explainer, Explanation};
pub use predictor::{Prediction, Predictor, SliceAnswer, Verdict, prediction_from};
pub use series::{SeriesSummary, summarise_series};
pub use slot::ModelSlot;
