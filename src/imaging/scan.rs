//! A decoded scan with what its file held, and the scan made ready for a network.

use std::path::Path;

use super::decode::{GreyImage, ImageInfo, decode_grey_with_info};
use super::dicom::{DicomSource, is_dicom, read_dicom};
use super::gate_view::gate_view;
use super::preprocess::Preprocessing;
use super::stats::ImageStats;
use crate::core::error::{DecodeError, Error, Result};

/// DICOM file extensions scanned in folders (files without an extension are sniffed).
pub const DICOM_EXTENSIONS: [&str; 2] = ["dcm", "dicom"];

/// Whether a file in a folder is taken as a scan: a PNG or JPEG by its extension, a DICOM file
/// by its extension, or a file without an extension that starts like DICOM (PACS exports often
/// name files `IM0001`).
pub fn is_scan_file(path: &Path) -> bool {
    if super::decode::has_image_extension(path) {
        return true;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) => DICOM_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)),
        None => {
            use std::io::Read;
            let mut head = [0u8; 132];
            std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && &head[128..132] == b"DICM"
        }
    }
}

/// A decoded scan with what the file held (the input check looks at both).
#[derive(Debug)]
pub struct Scan {
    pub image: GreyImage,
    pub info: ImageInfo,
    /// For a DICOM frame: its identifiers (study, series, instance, frame) and how it was read.
    pub dicom: Option<DicomSource>,
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
    /// One scan from PNG, JPEG or single-frame DICOM bytes (a multi-frame object is an error:
    /// use [`Scan::decode_frames`]).
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        let mut frames = Self::decode_frames(bytes)?;
        match frames.len() {
            1 => Ok(frames.remove(0)),
            n => Err(DecodeError::MultiFrame(n as u32)),
        }
    }

    /// Every slice a file holds: one for PNG and JPEG, one per frame for DICOM.
    pub fn decode_frames(bytes: &[u8]) -> std::result::Result<Vec<Self>, DecodeError> {
        if is_dicom(bytes) {
            let dicom = read_dicom(bytes).map_err(DecodeError::Dicom)?;
            let info = dicom.info;
            return Ok(dicom
                .frames
                .into_iter()
                .map(|f| Self {
                    image: f.image,
                    info: info.clone(),
                    dicom: Some(f.source),
                })
                .collect());
        }
        decode_grey_with_info(bytes).map(|(image, info)| {
            vec![Self {
                image,
                info,
                dicom: None,
            }]
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes).map_err(|e| Error::unreadable_image(path, e))
    }

    /// [`Scan::decode_frames`] of a file.
    pub fn load_frames(path: &Path) -> Result<Vec<Self>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode_frames(&bytes).map_err(|e| Error::unreadable_image(path, e))
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
            dicom: None,
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
