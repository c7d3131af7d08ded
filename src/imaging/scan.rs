//! A decoded scan with what its file held, and the scan made ready for a network.

use std::path::Path;

use super::decode::{GreyImage, ImageInfo, decode_grey_with_info};
use super::gate_view::gate_view;
use super::preprocess::Preprocessing;
use super::stats::ImageStats;
use crate::core::error::{DecodeError, Error, Result};

/// A decoded scan with what the file held (the input check looks at both).
pub struct Scan {
    pub image: GreyImage,
    pub info: ImageInfo,
}

/// A scan ready for the network: the prepared image, the statistics of the original and its size.
#[derive(Debug, Clone)]
pub struct PreparedScan {
    pub image: GreyImage,
    pub stats: ImageStats,
    /// Width and height of the original.
    pub original_size: (u32, u32),
    /// The whole frame as the input gate sees it.
    pub gate_view: GreyImage,
}

impl Scan {
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        decode_grey_with_info(bytes).map(|(image, info)| Self { image, info })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes).map_err(|e| Error::unreadable_image(path, e))
    }

    /// A decoded image whose file is unknown (treated as greyscale).
    pub fn from_grey(image: GreyImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            image,
            info: ImageInfo {
                format: "unknown",
                width,
                height,
                color: "L32F".into(),
                bits_per_channel: 32,
                colourfulness: 0.0,
            },
        }
    }

    pub fn stats(&self) -> ImageStats {
        ImageStats::of(&self.image, &self.info)
    }

    /// What the network and the input check take from a scan.
    pub fn prepared(&self, pre: &Preprocessing) -> PreparedScan {
        PreparedScan {
            image: pre.prepare(&self.image).0,
            stats: self.stats(),
            original_size: self.image.dimensions(),
            gate_view: gate_view(&self.image),
        }
    }
}
