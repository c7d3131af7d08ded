//! Data in: decoding scans, image-folder data sets, leak-free splits, augmentation and batching.

pub mod augment;
pub mod folder;
pub mod image_io;
pub mod loader;
pub mod split;

pub use folder::{ImageFolder, Sample, display_name};
pub use image_io::{GreyImage, decode_grey, load_grey};
