//! Synthetic DICOM written with dicom-rs for the tests: an MR "head" (a bright ellipse with a
//! gradient) in the encodings the reader supports, with the attributes a test asks for.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
pub const RLE: &str = "1.2.840.10008.1.2.5";
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
pub const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";

/// What a synthetic MR object holds.
#[derive(Clone)]
pub struct MrSpec {
    pub side: u16,
    pub frames: u16,
    pub bits: u16,
    pub signed: bool,
    pub photometric: &'static str,
    pub slope: f64,
    pub intercept: f64,
    pub window: Option<(f64, f64)>,
    pub modality: &'static str,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub instance: i32,
    pub burned_in: Option<&'static str>,
}

impl Default for MrSpec {
    fn default() -> Self {
        Self {
            side: 64,
            frames: 1,
            bits: 16,
            signed: false,
            photometric: "MONOCHROME2",
            slope: 1.0,
            intercept: 0.0,
            window: None,
            modality: "MR",
            study_uid: "1.2.826.0.1.3680043.99.1".into(),
            series_uid: "1.2.826.0.1.3680043.99.1.1".into(),
            sop_uid: "1.2.826.0.1.3680043.99.1.1.1".into(),
            instance: 1,
            burned_in: None,
        }
    }
}

/// The stored value of pixel (x, y) of `frame`: 0 outside the head, a gradient inside that
/// also moves with the frame, at most 1000 for 16-bit and 250 for 8-bit objects.
pub fn stored_value(spec: &MrSpec, x: u16, y: u16, frame: u16) -> i32 {
    let c = f64::from(spec.side) / 2.0;
    let (dx, dy) = (
        (f64::from(x) - c) / (c * 0.8),
        (f64::from(y) - c) / (c * 0.9),
    );
    if dx * dx + dy * dy > 1.0 {
        return 0;
    }
    let top = if spec.bits == 8 { 250.0 } else { 1000.0 };
    let v = top * (0.3 + 0.6 * f64::from(x) / f64::from(spec.side)) + 5.0 * f64::from(frame);
    v.min(top) as i32
}

fn str_el(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// The native (uncompressed, little endian) pixel bytes of all frames.
pub fn native_pixels(spec: &MrSpec) -> Vec<u8> {
    let mut out = Vec::new();
    for f in 0..spec.frames {
        for y in 0..spec.side {
            for x in 0..spec.side {
                let v = stored_value(spec, x, y, f);
                if spec.bits == 8 {
                    out.push(v as u8);
                } else if spec.signed {
                    out.extend_from_slice(&(v as i16).to_le_bytes());
                } else {
                    out.extend_from_slice(&(v as u16).to_le_bytes());
                }
            }
        }
    }
    out
}

/// The data set of an MR image as `spec` says, native pixel data.
pub fn mr_dataset(spec: &MrSpec) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter([
        str_el(tags::SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE),
        str_el(tags::SOP_INSTANCE_UID, VR::UI, &spec.sop_uid),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_uid),
        str_el(tags::SERIES_INSTANCE_UID, VR::UI, &spec.series_uid),
        str_el(tags::MODALITY, VR::CS, spec.modality),
        str_el(tags::SERIES_DESCRIPTION, VR::LO, "synthetic T1"),
        str_el(tags::INSTANCE_NUMBER, VR::IS, &spec.instance.to_string()),
        str_el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, spec.photometric),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(spec.side)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(spec.side)),
        DataElement::new(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(spec.bits),
        ),
        DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(if spec.bits == 8 { 8u16 } else { 12u16 }),
        ),
        DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(if spec.bits == 8 { 7u16 } else { 11u16 }),
        ),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(u16::from(spec.signed)),
        ),
        str_el(tags::RESCALE_SLOPE, VR::DS, &spec.slope.to_string()),
        str_el(tags::RESCALE_INTERCEPT, VR::DS, &spec.intercept.to_string()),
    ]);
    if spec.frames > 1 {
        obj.put(str_el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            &spec.frames.to_string(),
        ));
    }
    if let Some((c, w)) = spec.window {
        obj.put(str_el(tags::WINDOW_CENTER, VR::DS, &c.to_string()));
        obj.put(str_el(tags::WINDOW_WIDTH, VR::DS, &w.to_string()));
    }
    if let Some(b) = spec.burned_in {
        obj.put(str_el(tags::BURNED_IN_ANNOTATION, VR::CS, b));
    }
    // Words as words, so that a big-endian encoding swaps them.
    let bytes = native_pixels(spec);
    let value = if spec.bits == 8 {
        PrimitiveValue::from(bytes)
    } else {
        let words: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        PrimitiveValue::U16(words.into())
    };
    let vr = if spec.bits == 8 { VR::OB } else { VR::OW };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, value));
    obj
}

/// A Part 10 object of `dataset` in transfer syntax `ts` (native ones and RLE written here,
/// JPEG baseline through dicom-pixeldata's encoder).
pub fn encode(mut dataset: InMemDicomObject, spec: &MrSpec, ts: &str) -> DefaultDicomObject {
    if ts == RLE {
        let pixels = native_pixels(spec);
        let frame_bytes = pixels.len() / usize::from(spec.frames);
        let fragments: Vec<Vec<u8>> = pixels
            .chunks(frame_bytes)
            .map(|f| rle_frame(f, spec.bits))
            .collect();
        dataset.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), fragments)),
        ));
    }
    let sop_uid = spec.sop_uid.clone();
    let meta_ts = if ts == JPEG_BASELINE { EXPLICIT_LE } else { ts };
    let mut obj = dataset
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(meta_ts)
                .media_storage_sop_class_uid(MR_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop_uid.as_str()),
        )
        .unwrap();
    if ts == JPEG_BASELINE {
        use dicom_pixeldata::Transcode;
        let target = TransferSyntaxRegistry.get(JPEG_BASELINE).unwrap();
        obj.transcode(target).unwrap();
    }
    obj
}

/// One frame in DICOM RLE (PS3.5 Annex G): one segment per byte plane, most significant
/// first, each PackBits-coded as literal runs of at most 128 bytes.
fn rle_frame(frame: &[u8], bits: u16) -> Vec<u8> {
    let bytes_per_sample = usize::from(bits / 8);
    let planes: Vec<Vec<u8>> = (0..bytes_per_sample)
        .rev()
        .map(|b| {
            frame
                .iter()
                .skip(b)
                .step_by(bytes_per_sample)
                .copied()
                .collect()
        })
        .collect();
    let segments: Vec<Vec<u8>> = planes
        .iter()
        .map(|plane| {
            let mut seg = Vec::new();
            for run in plane.chunks(128) {
                seg.push((run.len() - 1) as u8);
                seg.extend_from_slice(run);
            }
            if seg.len() % 2 == 1 {
                seg.push(0x80); // a no-op byte keeps the segment even
            }
            seg
        })
        .collect();
    let mut header = vec![0u8; 64];
    header[0..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for (i, s) in segments.iter().enumerate() {
        header[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        offset += s.len() as u32;
    }
    let mut out = header;
    for s in segments {
        out.extend(s);
    }
    out
}

/// Writes a synthetic MR object to `path`.
pub fn write_mr(path: &Path, spec: &MrSpec, ts: &str) -> PathBuf {
    encode(mr_dataset(spec), spec, ts)
        .write_to_file(path)
        .unwrap();
    path.to_path_buf()
}

/// An item of a sequence.
pub fn sequence(items: Vec<InMemDicomObject>) -> Value<InMemDicomObject> {
    Value::from(DataSetSequence::new(items, Length::UNDEFINED))
}

/// The shared DICOM folder, or a failure saying what to fetch.
pub fn shared_dicom() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dicom");
    assert!(
        dir.join("manifest.csv").is_file(),
        "{} is missing: these tests need the shared DICOM files (see its SOURCE.md)",
        dir.display()
    );
    dir
}

/// Attributes with identifying values put into the fixture: (tag, VR, value).
pub const PHI: &[(Tag, VR, &str)] = &[
    (tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
    (tags::PATIENT_ID, VR::LO, "MRN-4711-0815"),
    (tags::PATIENT_BIRTH_DATE, VR::DA, "19610412"),
    (tags::PATIENT_ADDRESS, VR::LO, "12 Elm Street Springfield"),
    (Tag(0x0010, 0x1000), VR::LO, "OLD-ID-99231"), // Other Patient IDs (retired, still sent)
    (tags::ACCESSION_NUMBER, VR::SH, "ACC77123"),
    (tags::STUDY_DATE, VR::DA, "20240917"),
    (tags::SERIES_DATE, VR::DA, "20240917"),
    (tags::STUDY_TIME, VR::TM, "142233"),
    (tags::INSTITUTION_NAME, VR::LO, "St Elsewhere Hospital"),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, "HOUSE^GREGORY"),
    (tags::OPERATORS_NAME, VR::PN, "TECH^TINA"),
    (tags::STATION_NAME, VR::SH, "MRSCANNER7"),
    (tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-558812"),
    (tags::STUDY_ID, VR::SH, "STUDY4242"),
    (tags::STUDY_DESCRIPTION, VR::LO, "Brain for JANE DOE"),
    (tags::IMAGE_COMMENTS, VR::LT, "call Jane at 555-0199"),
    (Tag(0x0009, 0x0010), VR::LO, "ACMEPRIVATE"),
    (Tag(0x0009, 0x1001), VR::LO, "SECRET-PRIVATE-VALUE"),
    (tags::CONTENT_CREATOR_NAME, VR::PN, "MAKER^MAX"),
];

/// A two-slice study with PHI everywhere, the second slice referring to the first.
pub fn phi_fixture(dir: &Path, burned_in: Option<&'static str>) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for i in 1..=2 {
        let spec = MrSpec {
            sop_uid: format!("1.2.826.0.1.3680043.99.1.1.{i}"),
            instance: i,
            burned_in,
            ..MrSpec::default()
        };
        let mut ds = mr_dataset(&spec);
        for (tag, vr, value) in PHI {
            ds.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*value)));
        }
        // A sequence whose item holds a reference (U inside K) and a name (D).
        let reference = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(MR_IMAGE_STORAGE),
            ),
            DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2.826.0.1.3680043.99.1.1.1"),
            ),
        ]);
        ds.put(DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            sequence(vec![reference]),
        ));
        let observer = InMemDicomObject::from_element_iter([DataElement::new(
            tags::VERIFYING_OBSERVER_NAME,
            VR::PN,
            PrimitiveValue::from("CHECKER^CHARLIE"),
        )]);
        ds.put(DataElement::new(
            tags::VERIFYING_OBSERVER_SEQUENCE,
            VR::SQ,
            sequence(vec![observer]),
        ));
        let path = dir.join(format!("DOE_JANE_{i}.dcm"));
        encode(ds, &spec, EXPLICIT_LE).write_to_file(&path).unwrap();
        out.push(path);
    }
    out
}
