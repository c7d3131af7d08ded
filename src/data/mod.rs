//! Layer 2: data sets. Image-folder data sets ([`folder`]), leak-free stratified splits and the
//! `split.json` a trained model keeps ([`split`]), and the step from files to network input:
//! parallel decode-and-prepare and batching ([`loader`]); files of an MRI set that are not brain
//! MRI ([`not_mri`]).

pub mod folder;
pub mod loader;
pub mod not_mri;
pub mod split;

pub use folder::{ImageFolder, Sample, display_name};
