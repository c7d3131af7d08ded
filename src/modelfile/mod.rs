//! Layer 4: the model file. Plain data types, each in a file of its own, and the code that reads
//! and writes them; nothing here runs a network or fits anything from images.
//!
//! - [`manifest`]: `model.json`, what a model is ([`Manifest`]);
//! - [`training`]: the training settings it records ([`TrainConfig`]);
//! - [`trust`]: temperature, calibration figures, the input check and the rule for saying
//!   "No tumour" ([`TrustProfile`], [`PresenceRule`]);
//! - [`input_check`]: the stored image bounds and feature density the input check evaluates;
//! - [`gate`]: the input gate's own files and the finding it gives ([`GateManifest`]);
//! - [`int8`]: activation ranges for the int8 engine ([`Int8Calibration`]);
//! - [`weights`]: writing weights files and loading weights compiled into the binary;
//! - [`bundle`]: loading and saving model directories and the bundled default model.

pub mod bundle;
pub mod gate;
pub mod input_check;
pub mod int8;
pub mod manifest;
pub mod training;
pub mod trust;
pub mod weights;

pub use bundle::{MANIFEST_FILE, Mode, ModelSource, WEIGHTS_FILE};
pub use gate::{GateFinding, GateLink, GateManifest};
pub use int8::{Int8Calibration, QParams};
pub use manifest::{
    ClassInfo, DataProvenance, FeedbackProvenance, Manifest, ParentModel, ValidationSummary,
};
pub use training::{Balance, Schedule, TrainConfig};
pub use trust::{
    CalibrationSummary, InputCheck, OUT_OF_DISTRIBUTION, PresenceFinding, PresenceRule,
    TrustProfile,
};
