//! The analysis itself, run on a blocking thread: decode, pre-process, classify, Grad-CAM, and
//! the two PNGs the page shows (the scan, and the coloured heat-map with alpha for the overlay).

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgba, RgbaImage, imageops};

use axum::body::Bytes;

use crate::core::error::sentence;
use crate::imaging::Scan;
use crate::imaging::dicom::{DicomSource, declared_frames, is_dicom};
use crate::inference::render::colour;
use crate::inference::{Explainer, Prediction};

/// Longest side of the stored display image.
pub const DISPLAY_SIDE: u32 = 1024;

pub struct Outcome {
    pub prediction: Prediction,
    pub image_png: Vec<u8>,
    pub heatmap_png: Vec<u8>,
    /// The scan as decoded, at its resolution and bit depth, for training on feedback.
    pub source_png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why an upload could not be analysed, as a sentence for the person who sent it.
#[derive(Debug)]
pub struct Rejected(pub String);

fn png(img: DynamicImage) -> Result<Vec<u8>, Rejected> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| Rejected(format!("the result image could not be encoded: {e}")))?;
    Ok(out.into_inner())
}

/// Most slices one upload may hold: each is classified and explained in turn within the
/// request timeout (about 0.3 s a slice on two cores).
pub const MAX_UPLOAD_SLICES: usize = 64;

/// One slice of an upload and what became of it.
pub struct SliceOutcome {
    /// The name stored and shown: the file's name for PNG and JPEG; for DICOM a description
    /// free of identifiers (file names of DICOM exports often hold the patient's name).
    pub name: String,
    pub dicom: Option<DicomSource>,
    pub result: Result<Outcome, Rejected>,
}

/// The name a DICOM slice is stored under: its instance number and frame, nothing else.
pub fn dicom_slice_name(d: &DicomSource) -> String {
    let instance = d
        .instance_number
        .map_or_else(|| "?".to_string(), |n| n.to_string());
    if d.frames > 1 {
        format!(
            "DICOM {} image {instance}, frame {} of {}",
            d.modality,
            d.frame + 1,
            d.frames
        )
    } else {
        format!("DICOM {} image {instance}", d.modality)
    }
}

/// Most files one upload may hold (after a zip is opened).
pub const MAX_UPLOAD_FILES: usize = 1000;

/// Why a whole upload is refused: an HTTP status and a sentence.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl Refused {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The uploaded files with every zip replaced by its files (at most `max_unpacked` bytes
/// unpacked), checked against [`MAX_UPLOAD_SLICES`] (and one slice when `single_only`), then
/// every slice analysed.
pub fn analyse_upload(
    explainer: &Explainer,
    uploads: Vec<(String, Bytes)>,
    max_unpacked: usize,
    single_only: bool,
) -> Result<Vec<SliceOutcome>, Refused> {
    let files = unpack_upload(uploads, max_unpacked, single_only)?;
    Ok(analyse_files(explainer, &files))
}

/// The uploaded files with every zip replaced by its files, checked against the limits.
pub fn unpack_upload(
    uploads: Vec<(String, Bytes)>,
    max_unpacked: usize,
    single_only: bool,
) -> Result<Vec<(String, Bytes)>, Refused> {
    let mut files = Vec::new();
    for (name, bytes) in uploads {
        if bytes.starts_with(b"PK\x03\x04") {
            files.extend(unzip(&bytes, max_unpacked)?);
        } else {
            files.push((name, bytes));
        }
    }
    if files.is_empty() {
        return Err(Refused::new(400, "The zip file holds no files."));
    }
    let slices = count_slices(&files);
    if slices > MAX_UPLOAD_SLICES {
        return Err(Refused::new(
            413,
            format!(
                "The upload holds {slices} slices; at most {MAX_UPLOAD_SLICES} are analysed at once."
            ),
        ));
    }
    if single_only && slices > 1 {
        return Err(Refused::new(
            422,
            format!(
                "The upload holds {slices} slices; send several slices to /api/v1/batches, which answers each and sums up each series."
            ),
        ));
    }
    Ok(files)
}

/// The files of a zip, at most `max_bytes` unpacked in all (a zip bomb stops there).
fn unzip(bytes: &[u8], max_bytes: usize) -> Result<Vec<(String, Bytes)>, Refused> {
    use std::io::Read;
    let bad =
        |e: zip::result::ZipError| Refused::new(400, format!("The zip file cannot be read: {e}."));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    let mut out = Vec::new();
    let mut total = 0usize;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        let name = entry.name().map_err(bad)?.to_string();
        let hidden = name
            .split('/')
            .any(|part| part.starts_with('.') || part == "__MACOSX");
        if entry.is_dir() || hidden || name.ends_with("DICOMDIR") {
            continue;
        }
        let mut data = Vec::new();
        let room = max_bytes.saturating_sub(total);
        (&mut entry)
            .take(room as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| Refused::new(400, format!("The zip file cannot be read: {e}.")))?;
        total += data.len();
        if data.len() > room {
            return Err(Refused::new(
                413,
                format!(
                    "The zip file unpacks to more than {} MB.",
                    max_bytes / (1024 * 1024)
                ),
            ));
        }
        if data.is_empty() {
            continue;
        }
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        out.push((base, Bytes::from(data)));
        if out.len() > MAX_UPLOAD_FILES {
            return Err(Refused::new(
                413,
                format!("The zip file holds more than {MAX_UPLOAD_FILES} files."),
            ));
        }
    }
    Ok(out)
}

/// Every slice of the uploaded files, analysed in order: one per PNG or JPEG, one per frame of
/// a DICOM object. A file that cannot be read, or a DICOM image whose pixels may show names
/// (Burned In Annotation = YES), gets one refused entry.
pub fn analyse_files(explainer: &Explainer, files: &[(String, Bytes)]) -> Vec<SliceOutcome> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        let scans = match Scan::decode_frames(bytes) {
            Ok(s) => s,
            Err(e) => {
                let dicom = is_dicom(bytes);
                out.push(SliceOutcome {
                    name: if dicom {
                        "DICOM file".into()
                    } else {
                        name.clone()
                    },
                    dicom: None,
                    result: Err(Rejected(format!(
                        "The file could not be read: {}.",
                        sentence(&e)
                    ))),
                });
                continue;
            }
        };
        for scan in scans {
            let name = scan
                .dicom
                .as_ref()
                .map_or_else(|| name.clone(), dicom_slice_name);
            let result = if scan
                .dicom
                .as_ref()
                .is_some_and(|d| d.burned_in_annotation == Some(true))
            {
                Err(Rejected(
                    "The image is marked Burned In Annotation = YES: its pixels may show names                      or dates, so oncolens does not analyse or store it."
                        .into(),
                ))
            } else {
                analyse_scan(explainer, &scan)
            };
            out.push(SliceOutcome {
                name,
                dicom: scan.dicom,
                result,
            });
        }
    }
    out
}

/// The number of slices in the uploaded files without analysing them (frames counted from
/// the DICOM header), to refuse an upload over [`MAX_UPLOAD_SLICES`] before the work.
fn count_slices(files: &[(String, Bytes)]) -> usize {
    files
        .iter()
        .map(|(_, b)| {
            if is_dicom(b) {
                declared_frames(b).map_or(1, |n| n as usize)
            } else {
                1
            }
        })
        .sum()
}

/// Classifies and explains one decoded slice, and draws the two PNGs the page shows.
pub fn analyse_scan(explainer: &Explainer, scan: &Scan) -> Result<Outcome, Rejected> {
    let grey = &scan.image;
    let (prediction, explanation) = explainer
        .analyse(scan)
        .map_err(|e| Rejected(format!("The scan could not be analysed: {}.", e.sentence())))?;
    let (w, h) = grey.dimensions();
    let scale = (DISPLAY_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (dw, dh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let display = GrayImage::from_fn(w, h, |x, y| {
        Luma([(grey.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0) as u8])
    });
    let display = imageops::resize(&display, dw, dh, imageops::FilterType::Triangle);
    let map = imageops::resize(&explanation.map, dw, dh, imageops::FilterType::Triangle);
    let heat = RgbaImage::from_fn(dw, dh, |x, y| {
        let v = map.get_pixel(x, y).0[0].clamp(0.0, 1.0);
        let [r, g, b] = colour(v);
        Rgba([r, g, b, (v * 255.0) as u8])
    });
    Ok(Outcome {
        prediction,
        source_png: png(source_image(scan))?,
        image_png: png(DynamicImage::ImageLuma8(display))?,
        heatmap_png: png(DynamicImage::ImageRgba8(heat))?,
        width: dw,
        height: dh,
    })
}

/// The decoded scan as a grey image of its own bit depth: 8 bits for 8-bit files, 16 for
/// deeper ones (DICOM), so that training on feedback sees what the network saw. PNG holds no
/// metadata here: nothing but pixels is kept.
fn source_image(scan: &Scan) -> DynamicImage {
    let grey = &scan.image;
    let (w, h) = grey.dimensions();
    let value = |x, y| grey.get_pixel(x, y).0[0].clamp(0.0, 1.0);
    if scan.info.bits_per_channel <= 8 {
        DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
            Luma([(value(x, y) * 255.0).round() as u8])
        }))
    } else {
        DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(w, h, |x, y| {
            Luma([(value(x, y) * 65535.0).round() as u16])
        }))
    }
}
