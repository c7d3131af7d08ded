//! DICOM files read into grey frames, with the identifiers that group them into series.
//!
//! Overview: [`is_dicom`] sniffs the bytes; [`read_dicom`] parses a Part 10 file with
//! `dicom-object`, refuses what is not an MR image (another modality, or an object without
//! pixels such as a structured report or a presentation state) with the reason, decodes the
//! pixel data with `dicom-pixeldata` (native, deflate, RLE, JPEG baseline/extended/lossless and
//! JPEG 2000; JPEG-LS has no pure-Rust decoder and is refused by name) and turns every frame
//! into one grey image in `[0, 1]`:
//!
//! 1. the modality LUT (rescale slope and intercept) gives real values, in `f32`, so 12- and
//!    16-bit data, signed or not, keep their full range;
//! 2. the file's own window (centre/width, with its VOI LUT function) maps them to `[0, 1]`;
//!    a file without one gets a robust window from the 0.5th to the 99.5th percentile of the
//!    frame, so that one hot pixel does not darken the picture;
//! 3. MONOCHROME1 (white is low) is inverted, so that every frame reads as MONOCHROME2.
//!
//! Every frame of a multi-frame object is a slice of its own ([`DicomFrame::frame`]).

use std::io::Cursor;

use dicom_core::Tag;
use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::{StandardSopClassDictionary, tags};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{PixelDecoder, VoiLutFunction, WindowLevel};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::{Deserialize, Serialize};

use super::decode::{
    GreyImage, ImageInfo, MAX_DECODED_BYTES, MAX_SIDE, WORKING_SIDE, colourfulness,
};
use crate::core::error::DicomError;

/// Where DICOM puts its magic: after a 128-byte preamble.
const PREAMBLE: usize = 128;

/// Largest memory all frames of one object may take decoded, as stored samples and again as
/// `f32` grey planes (each counted alone): half the PNG/JPEG limit, since both are held.
pub const MAX_DICOM_DECODED_BYTES: u64 = MAX_DECODED_BYTES / 2;

/// Modalities accepted: the classifier and its gate know brain MR only.
pub const ACCEPTED_MODALITY: &str = "MR";

/// Whether bytes look like DICOM: "DICM" after the preamble, a file meta group at the very start
/// (a file whose preamble was stripped), or a bare data set starting with group 0008 (which
/// [`parse`] refuses with [`DicomError::NoFileMeta`], a clearer answer than "unknown format").
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(PREAMBLE..PREAMBLE + 4) == Some(b"DICM")
        || bytes.starts_with(b"DICM")
        || starts_with_meta_group(bytes)
        || (bytes.len() > 8 && bytes[0..2] == [0x08, 0x00])
}

/// A file meta group element (0002,xxxx) in explicit VR little endian, as every Part 10 file
/// starts once the preamble and "DICM" are cut off.
fn starts_with_meta_group(bytes: &[u8]) -> bool {
    bytes.len() > 8
        && bytes[0..2] == [0x02, 0x00]
        && bytes[4].is_ascii_uppercase()
        && bytes[5].is_ascii_uppercase()
}

/// Which window turned the frame's values into grey levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum WindowUsed {
    /// Window Center / Window Width stored in the file.
    File {
        centre: f64,
        width: f64,
        function: String,
    },
    /// No window in the file: the 0.5th to 99.5th percentile of the frame.
    Percentile { low: f64, high: f64 },
}

/// What a frame came from: the identifiers a series summary groups by, and how it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DicomSource {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_number: Option<i64>,
    /// 0-based frame of a multi-frame object (0 for single-frame ones).
    pub frame: u32,
    pub frames: u32,
    pub transfer_syntax: String,
    pub photometric_interpretation: String,
    pub window: WindowUsed,
    /// Burned In Annotation (0028,0301): `Some(true)` when the pixels carry text such as names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burned_in_annotation: Option<bool>,
}

/// One frame of a DICOM object as a grey image.
#[derive(Debug, Clone)]
pub struct DicomFrame {
    pub image: GreyImage,
    pub source: DicomSource,
}

/// A DICOM object read into its frames.
#[derive(Debug, Clone)]
pub struct DicomImage {
    pub frames: Vec<DicomFrame>,
    /// What the file held, in the terms the input check uses for PNG and JPEG.
    pub info: ImageInfo,
}

/// Parses a DICOM Part 10 file (with or without its preamble) into an object.
pub fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, DicomError> {
    parse_up_to(bytes, true)
}

/// The number of frames a DICOM file declares (1 when it says none), read from its header
/// only: the pixel data is neither read nor decoded.
pub fn declared_frames(bytes: &[u8]) -> Result<u32, DicomError> {
    let header = parse_up_to(bytes, false)?;
    Ok(int(&header, tags::NUMBER_OF_FRAMES)
        .unwrap_or(1)
        .clamp(1, i64::from(u32::MAX)) as u32)
}

/// [`parse`], with the pixel data (`with_pixels`) or stopping before it.
fn parse_up_to(bytes: &[u8], with_pixels: bool) -> Result<DefaultDicomObject, DicomError> {
    let body: std::borrow::Cow<[u8]> = if bytes.get(PREAMBLE..PREAMBLE + 4) == Some(b"DICM") {
        bytes[PREAMBLE..].into()
    } else if bytes.starts_with(b"DICM") {
        bytes.into()
    } else if starts_with_meta_group(bytes) {
        // The preamble and magic were stripped; the meta group is intact.
        [b"DICM".as_slice(), bytes].concat().into()
    } else {
        return Err(DicomError::NoFileMeta);
    };
    // The parser allocates each value at its declared length: lengths past the end are
    // refused first (the inflate bound: the decoder's, twice).
    super::dicom_lengths::check_declared_lengths(body.as_ref(), 2 * MAX_DICOM_DECODED_BYTES)?;
    let read = |b: &[u8]| {
        // Reading stops after the pixel data: what may follow (padding, signatures) is not
        // needed to analyse or de-identify.
        let options = OpenFileOptions::new().read_preamble(dicom_object::file::ReadPreamble::Never);
        let options = if with_pixels {
            options.read_to(tags::PIXEL_DATA)
        } else {
            options.read_until(tags::PIXEL_DATA)
        };
        options.from_reader(Cursor::new(b))
    };
    match read(body.as_ref()) {
        Ok(obj) => Ok(obj),
        // Some writers pad the file with zero bytes after the pixel data, which do not parse
        // as elements; the object before them is whole.
        Err(e) => match without_zero_padding(body.as_ref()) {
            Some(trimmed) => read(trimmed).map_err(|_| DicomError::Parse(Box::new(e))),
            None => Err(DicomError::Parse(Box::new(e))),
        },
    }
}

/// The bytes up to the end of a native (7FE0,0010) Pixel Data element when only zero bytes
/// follow it; `None` otherwise.
fn without_zero_padding(bytes: &[u8]) -> Option<&[u8]> {
    let tag = [0xE0, 0x7F, 0x10, 0x00];
    let at = bytes.windows(4).rposition(|w| w == tag)?;
    let header = bytes.get(at..at + 12)?;
    let (len_at, header_len) = match &header[4..6] {
        b"OW" | b"OB" => (8, 12),
        _ => (4, 8),
    };
    let len = u32::from_le_bytes(header[len_at..len_at + 4].try_into().ok()?);
    if len == u32::MAX {
        return None;
    }
    let end = at + header_len + len as usize;
    let rest = bytes.get(end..)?;
    (!rest.is_empty() && rest.iter().all(|&b| b == 0)).then(|| &bytes[..end])
}

/// Reads a DICOM file into grey frames, refusing what is not an MR image.
pub fn read_dicom(bytes: &[u8]) -> Result<DicomImage, DicomError> {
    let obj = parse(bytes)?;
    read_object(&obj)
}

/// Text of an attribute, trimmed; `None` when absent or empty.
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

/// Name of a SOP class UID ("MR Image Storage"), else the UID itself.
pub fn sop_class_name(uid: &str) -> String {
    StandardSopClassDictionary
        .by_uid(uid.trim_end_matches('\0'))
        .map_or_else(|| uid.to_string(), |e| e.name.to_string())
}

/// Name of a transfer syntax UID, else the UID itself.
pub fn transfer_syntax_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid.trim_end_matches('\0'))
        .map_or_else(|| uid.to_string(), |ts| ts.name().to_string())
}

/// The grey frames of a parsed object.
pub fn read_object(obj: &DefaultDicomObject) -> Result<DicomImage, DicomError> {
    let sop_class_uid = text(obj, tags::SOP_CLASS_UID)
        .unwrap_or_else(|| obj.meta().media_storage_sop_class_uid().to_string());
    if obj.get(tags::PIXEL_DATA).is_none() && obj.get(tags::FLOAT_PIXEL_DATA).is_none() {
        return Err(DicomError::NotAnImage {
            sop_class: sop_class_name(&sop_class_uid),
        });
    }
    let modality = text(obj, tags::MODALITY).unwrap_or_default();
    if modality != ACCEPTED_MODALITY {
        return Err(DicomError::NotMr {
            modality: if modality.is_empty() {
                "none stated".into()
            } else {
                modality
            },
            sop_class: sop_class_name(&sop_class_uid),
        });
    }
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let ts_name = transfer_syntax_name(&ts_uid);
    match TransferSyntaxRegistry.get(&ts_uid) {
        Some(ts) if ts.can_decode_all() => {}
        _ => {
            return Err(DicomError::UnsupportedTransferSyntax {
                name: ts_name,
                uid: ts_uid,
            });
        }
    }
    let rows = int(obj, tags::ROWS).unwrap_or(0);
    let columns = int(obj, tags::COLUMNS).unwrap_or(0);
    let frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
    let bits_allocated = int(obj, tags::BITS_ALLOCATED).unwrap_or(16).max(1);
    let bits_stored = int(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    if !(8..=i64::from(MAX_SIDE)).contains(&rows) || !(8..=i64::from(MAX_SIDE)).contains(&columns) {
        return Err(DicomError::BadSize { rows, columns });
    }
    // All frames are held decoded (the stored samples) and as f32 grey planes: both are
    // bounded, so a small compressed file cannot declare its way to gigabytes.
    let decoded = (rows * columns * frames * samples * ((bits_allocated + 7) / 8)) as u64;
    let grey = (rows * columns * frames) as u64 * 4;
    if decoded > MAX_DICOM_DECODED_BYTES || grey > MAX_DICOM_DECODED_BYTES {
        return Err(DicomError::TooMuchMemory {
            rows,
            columns,
            frames,
            mebibytes: decoded.max(grey).div_ceil(1024 * 1024),
        });
    }
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let base = DicomSource {
        study_instance_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        sop_class_uid,
        modality,
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        series_number: int(obj, tags::SERIES_NUMBER),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        frame: 0,
        frames: frames as u32,
        transfer_syntax: ts_name,
        photometric_interpretation: photometric.clone(),
        window: WindowUsed::Percentile {
            low: 0.0,
            high: 0.0,
        },
        burned_in_annotation: text(obj, tags::BURNED_IN_ANNOTATION)
            .map(|s| s.eq_ignore_ascii_case("YES")),
    };
    // The codecs are third-party code run on data a client sent; one of them (the RLE
    // decoder of dicom-transfer-syntax-registry 0.10) indexes out of bounds on some corrupt
    // segments (found by the decode fuzz target). A panic there is this file's fault, so it
    // becomes this file's error, not the caller's crash.
    let decoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
            .map_err(|_| {
                DicomError::Pixels("the pixel data decoder failed on corrupt data".into())
            })?;
    let pixels = decoded.map_err(|e| DicomError::Pixels(Box::new(e)))?;
    let mut out = Vec::with_capacity(frames as usize);
    let mut colour = 0.0f32;
    for frame in 0..pixels.number_of_frames() {
        let (image, window, c) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| grey_frame(&pixels, frame)))
                .map_err(|_| {
                    DicomError::Pixels("the pixel data converter failed on corrupt data".into())
                })??;
        colour = colour.max(c);
        let mut source = base.clone();
        source.frame = frame;
        source.window = window;
        out.push(DicomFrame { image, source });
    }
    if out.is_empty() {
        return Err(DicomError::NoFrames);
    }
    let info = ImageInfo {
        format: "DICOM",
        width: columns as u32,
        height: rows as u32,
        color: photometric,
        bits_per_channel: bits_stored.clamp(1, 32) as u16,
        colourfulness: colour,
    };
    Ok(DicomImage { frames: out, info })
}

/// One frame as grey `[0, 1]`, the window used and how colourful the frame is.
fn grey_frame(
    pixels: &dicom_pixeldata::DecodedPixelData<'_>,
    frame: u32,
) -> Result<(GreyImage, WindowUsed, f32), DicomError> {
    let pixel_err = |e: dicom_pixeldata::Error| DicomError::Pixels(Box::new(e));
    let (w, h) = (pixels.columns(), pixels.rows());
    let monochrome = pixels.photometric_interpretation().is_monochrome();
    let (image, window, colour) = if monochrome {
        // Modality LUT only: real values as f32.
        let values: Vec<f32> = pixels.to_vec_frame(frame).map_err(pixel_err)?;
        let file_window = pixels
            .window()
            .ok()
            .flatten()
            .and_then(|ws| ws.get(frame as usize).or(ws.first()).copied())
            .filter(|wl| wl.width.is_finite() && wl.center.is_finite() && wl.width > 0.0);
        let function = pixels
            .voi_lut_function()
            .ok()
            .flatten()
            .and_then(|fs| fs.first().copied())
            .unwrap_or_default();
        let (map, window): (Box<dyn Fn(f32) -> f32>, WindowUsed) = match file_window {
            Some(wl) => (
                Box::new(move |v| voi(f64::from(v), wl, function) as f32),
                WindowUsed::File {
                    centre: wl.center,
                    width: wl.width,
                    function: voi_function_name(function).into(),
                },
            ),
            None => {
                let (low, high) = percentile_window(&values);
                let span = (high - low).max(f64::EPSILON);
                (
                    Box::new(move |v| ((f64::from(v) - low) / span).clamp(0.0, 1.0) as f32),
                    WindowUsed::Percentile { low, high },
                )
            }
        };
        let invert = pixels.photometric_interpretation().to_string() == "MONOCHROME1";
        let grey: Vec<f32> = values
            .iter()
            .map(|&v| {
                let g = map(v);
                if invert { 1.0 - g } else { g }
            })
            .collect();
        let image = GreyImage::from_raw(w, h, grey).ok_or(DicomError::NoFrames)?;
        (image, window, 0.0)
    } else {
        // Colour (RGB, YBR): the crate converts to RGB, then to luma like a colour PNG.
        let img = pixels.to_dynamic_image(frame).map_err(pixel_err)?;
        let colour = colourfulness(&img);
        (
            img.to_luma32f(),
            WindowUsed::Percentile {
                low: 0.0,
                high: 255.0,
            },
            colour,
        )
    };
    let image = if w.max(h) > WORKING_SIDE {
        let scale = f64::from(WORKING_SIDE) / f64::from(w.max(h));
        let side = |s: u32| ((f64::from(s) * scale).round() as u32).max(1);
        image::imageops::resize(
            &image,
            side(w),
            side(h),
            image::imageops::FilterType::Triangle,
        )
    } else {
        image
    };
    Ok((image, window, colour))
}

/// The keyword of a VOI LUT function, as (0028,1056) spells it.
fn voi_function_name(f: VoiLutFunction) -> &'static str {
    match f {
        VoiLutFunction::Linear => "LINEAR",
        VoiLutFunction::LinearExact => "LINEAR_EXACT",
        VoiLutFunction::Sigmoid => "SIGMOID",
    }
}

/// The VOI LUT functions of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1
/// (SIGMOID), with output in `[0, 1]`.
fn voi(x: f64, wl: WindowLevel, function: VoiLutFunction) -> f64 {
    let (c, w) = (wl.center, wl.width);
    let y = match function {
        VoiLutFunction::Linear => {
            let w1 = (w - 1.0).max(1.0);
            if x <= c - 0.5 - w1 / 2.0 {
                0.0
            } else if x > c - 0.5 + w1 / 2.0 {
                1.0
            } else {
                (x - (c - 0.5)) / w1 + 0.5
            }
        }
        VoiLutFunction::LinearExact => (x - c) / w + 0.5,
        VoiLutFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
    };
    y.clamp(0.0, 1.0)
}

/// The 0.5th and 99.5th percentile of the values (from at most ~65 000 samples).
fn percentile_window(values: &[f32]) -> (f64, f64) {
    let step = (values.len() / 65_536).max(1);
    let mut sample: Vec<f32> = values
        .iter()
        .step_by(step)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sample.is_empty() {
        return (0.0, 1.0);
    }
    sample.sort_by(f32::total_cmp);
    let at = |q: f64| f64::from(sample[((sample.len() - 1) as f64 * q).round() as usize]);
    let (low, high) = (at(0.005), at(0.995));
    if high > low {
        (low, high)
    } else {
        // A flat frame: its single value maps to black.
        (low, low + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_the_standard() {
        let wl = WindowLevel {
            center: 100.0,
            width: 51.0,
        };
        let f = VoiLutFunction::Linear;
        assert_eq!(voi(74.0, wl, f), 0.0);
        assert_eq!(voi(125.0, wl, f), 1.0);
        assert!((voi(99.5, wl, f) - 0.5).abs() < 1e-9);
        let s = voi(100.0, wl, VoiLutFunction::Sigmoid);
        assert!((s - 0.5).abs() < 1e-9);
    }

    #[test]
    fn percentile_window_ignores_a_hot_pixel() {
        let mut v: Vec<f32> = (0..10_000).map(|i| (i % 1000) as f32).collect();
        v[17] = 1.0e6;
        let (low, high) = percentile_window(&v);
        assert!(
            low < 10.0 && (990.0..=1000.0).contains(&high),
            "{low} {high}"
        );
        assert_eq!(percentile_window(&[5.0; 64]), (5.0, 6.0));
    }

    #[test]
    fn a_file_declaring_more_than_it_holds_is_refused_before_parsing() {
        // A 26 kB file whose element after the pixel data declares 2 GB (what the decode fuzz
        // target found): refused with the reason, nothing allocated at that size.
        let ts = b"1.2.840.10008.1.2\0";
        let mut file = vec![0u8; PREAMBLE];
        file.extend(b"DICM");
        file.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        file.extend((8 + ts.len() as u32).to_le_bytes());
        file.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        file.extend((ts.len() as u16).to_le_bytes());
        file.extend(ts);
        file.extend([0xE0, 0x7F, 0x10, 0x00]);
        file.extend(16u32.to_le_bytes());
        file.extend([0u8; 16]);
        file.extend([0x42, 0x02, 0xCB, 0xE2]);
        file.extend(0x7EDB_41BAu32.to_le_bytes());
        file.extend(vec![0u8; 26_000]);
        match parse(&file) {
            Err(DicomError::DeclaredBeyondEnd {
                group: 0x0242,
                element: 0xE2CB,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sniffing() {
        let mut part10 = vec![0u8; 128];
        part10.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00\xc8\x00\x00\x00");
        assert!(is_dicom(&part10));
        assert!(is_dicom(&part10[128..]));
        assert!(is_dicom(&part10[132..]));
        assert!(!is_dicom(b"\x89PNG\r\n\x1a\n...."));
        assert!(!is_dicom(b""));
        assert!(matches!(
            parse(b"plain text, not DICOM"),
            Err(DicomError::NoFileMeta)
        ));
    }
}
