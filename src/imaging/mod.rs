//! Layer 1: single images. Decoding scans into one grey `f32` channel ([`decode`] for PNG and
//! JPEG, [`dicom`] for DICOM frames), their
//! statistics ([`stats`]), a decoded scan and its prepared form ([`scan`]), the pre-processing stored in every model file ([`preprocess`]) and
//! training-time augmentation ([`augment`]). Nothing here knows about data sets or networks.

pub mod augment;
pub mod decode;
pub mod dicom;
mod dicom_lengths;
pub mod gate_view;
pub mod preprocess;
pub mod scan;
pub mod stats;
pub mod synthetic;

pub use decode::{GreyImage, ImageInfo, decode_grey, decode_grey_with_info, load_grey};
pub use preprocess::{Geometry, Preprocessing};
pub use scan::{PreparedScan, Scan};
pub use stats::ImageStats;
