//! The results written back into the study: a Comprehensive SR stating the series summary,
//! every slice's class, probabilities and input-gate verdict, and the model's identity; and a
//! Secondary Capture series of Grad-CAM overlays, marked derived and not for diagnosis.
//!
//! Both copy from the source only what files them in the same patient and study (the
//! [`FILING_ATTRIBUTES`]); nothing else of the source (institution, operators, devices,
//! comments, private attributes) is carried over. Codes of the private scheme `99ONCOLENS`
//! name the concepts the standard has no code for; the algorithm is identified as in TID 4019
//! (DCM 111001 Algorithm Name, 111003 Algorithm Version), and the Contributing Equipment
//! Sequence names oncolens with the IHE AI Results purpose "Processing Algorithm" (99IHE
//! Newcode1) and DCM 109102 "Processing Equipment".

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use image::RgbImage;

use crate::core::DISCLAIMER;
use crate::deid::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::imaging::dicom::DicomSource;
use crate::inference::{Prediction, SeriesSummary, Verdict};
use crate::modelfile::Manifest;

pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// The private coding scheme of oncolens' concepts.
pub const SCHEME: &str = "99ONCOLENS";
/// Series numbers of the results, high so they sort after the acquisitions.
pub const SR_SERIES_NUMBER: i32 = 9901;
pub const SC_SERIES_NUMBER: i32 = 9902;
/// Series descriptions of the results (the Modality filter of the search, MR, keeps them out of
/// the series the watcher analyses).
pub const SR_SERIES_DESCRIPTION: &str = "oncolens AI result (research, not for diagnosis)";
pub const SC_SERIES_DESCRIPTION: &str = "oncolens Grad-CAM (derived, not for diagnosis)";

/// Patient and study attributes copied into the results so the PACS files them with the
/// source study, and nothing more.
pub const FILING_ATTRIBUTES: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
];

/// One analysed slice of the source series.
pub struct SliceResult<'a> {
    pub source: &'a DicomSource,
    pub prediction: &'a Prediction,
    /// The Grad-CAM overlay, for slices the checks did not refuse.
    pub overlay: Option<RgbImage>,
}

fn el(tag: Tag, vr: VR, v: impl Into<String>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v.into()))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A fresh UID (`2.25.` and 128 random bits).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

/// The date and time now (UTC), as DICOM DA and TM.
fn now() -> (String, String) {
    // "YYYY-MM-DDTHH:MM:SSZ"
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let digits = |range: std::ops::Range<usize>| -> String {
        t.get(range)
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect()
    };
    (digits(0..10), digits(11..19))
}

/// The attributes every result object shares: filing, equipment, series.
fn common(
    source: &InMemDicomObject,
    manifest: &Manifest,
    series_uid: &str,
    series_number: i32,
    description: &str,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    for &tag in FILING_ATTRIBUTES {
        match source.get(tag) {
            Some(e) => {
                obj.put(e.clone());
            }
            None => {
                let vr = if tag == tags::STUDY_INSTANCE_UID {
                    VR::UI
                } else {
                    VR::LO
                };
                obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
            }
        }
    }
    let (date, time) = now();
    let version = env!("CARGO_PKG_VERSION");
    let model_version = manifest.version();
    obj.put(el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid));
    obj.put(el(tags::SERIES_NUMBER, VR::IS, series_number.to_string()));
    obj.put(el(tags::SERIES_DESCRIPTION, VR::LO, description));
    obj.put(el(tags::CONTENT_DATE, VR::DA, date.clone()));
    obj.put(el(tags::CONTENT_TIME, VR::TM, time.clone()));
    obj.put(el(tags::SERIES_DATE, VR::DA, date));
    obj.put(el(tags::SERIES_TIME, VR::TM, time));
    obj.put(el(tags::MANUFACTURER, VR::LO, "oncolens project"));
    obj.put(el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "oncolens"));
    obj.put(el(tags::SOFTWARE_VERSIONS, VR::LO, version));
    obj.put(el(tags::INSTANCE_NUMBER, VR::IS, "1"));
    let mut equipment = InMemDicomObject::from_element_iter([
        el(tags::MANUFACTURER, VR::LO, "oncolens project"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, manifest.name.clone()),
        el(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            format!("oncolens {version}; weights {model_version}"),
        ),
        el(
            tags::CONTRIBUTION_DESCRIPTION,
            VR::ST,
            "Brain MRI tumour-type classification with Grad-CAM. Research and decision support, not a diagnostic device.",
        ),
    ]);
    // IHE AI Results names the purpose "Processing Algorithm" with its own placeholder code;
    // DCM 109102 says the same in the standard's terms for readers that know only DCM.
    equipment.put(seq(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![
            code("Newcode1", "99IHE", "Processing Algorithm"),
            code("109102", "DCM", "Processing Equipment"),
        ],
    ));
    obj.put(seq(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, vec![equipment]));
    obj
}

fn part10(obj: InMemDicomObject, sop_class: &str, sop_uid: &str) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_LE)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    obj.with_exact_meta(meta)
        .write_all(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A content item: relationship, value type, concept and its value elements.
fn item(
    relationship: &str,
    value_type: &str,
    concept: InMemDicomObject,
    value: Vec<DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    let mut i = InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        el(tags::VALUE_TYPE, VR::CS, value_type),
    ]);
    i.put(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]));
    for v in value {
        i.put(v);
    }
    i
}

fn text_item(relationship: &str, concept: InMemDicomObject, value: &str) -> InMemDicomObject {
    item(
        relationship,
        "TEXT",
        concept,
        vec![el(tags::TEXT_VALUE, VR::UT, value)],
    )
}

fn num_item(concept: InMemDicomObject, value: f64, unit: (&str, &str)) -> InMemDicomObject {
    let mut measured = InMemDicomObject::from_element_iter([el(
        tags::NUMERIC_VALUE,
        VR::DS,
        format!("{value:.4}"),
    )]);
    measured.put(seq(
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code(unit.0, "UCUM", unit.1)],
    ));
    item(
        "CONTAINS",
        "NUM",
        concept,
        vec![seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured])],
    )
}

fn reference(s: &DicomSource) -> InMemDicomObject {
    let mut r = InMemDicomObject::from_element_iter([
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            s.sop_class_uid.clone(),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            s.sop_instance_uid.clone(),
        ),
    ]);
    if s.frames > 1 {
        r.put(el(
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            (s.frame + 1).to_string(),
        ));
    }
    r
}

fn verdict_words(p: &Prediction) -> &'static str {
    match p.verdict {
        Verdict::NotBrainMri => "not a brain MRI slice",
        // "No tumour" was likeliest but below the model's presence rule: the class is the most
        // probable tumour type, and the reader must not take the slice as tumour-free.
        _ if p.no_tumour_withheld() => "tumour not ruled out",
        Verdict::Answer => "answer",
        Verdict::Uncertain => "uncertain",
    }
}

/// The Comprehensive SR for one analysed series: (SOP Instance UID, Part 10 bytes).
pub fn structured_report(
    source: &InMemDicomObject,
    manifest: &Manifest,
    summary: &SeriesSummary,
    slices: &[SliceResult<'_>],
) -> Result<(String, Vec<u8>), String> {
    let sop_uid = new_uid();
    let mut obj = common(
        source,
        manifest,
        &new_uid(),
        SR_SERIES_NUMBER,
        SR_SERIES_DESCRIPTION,
    );
    obj.put(el(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR));
    obj.put(el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.clone()));
    obj.put(el(tags::MODALITY, VR::CS, "SR"));
    obj.put(seq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    ));
    obj.put(seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new()));
    obj.put(el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    obj.put(el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    obj.put(el(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    obj.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    obj.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code(
            "REPORT",
            SCHEME,
            "Brain MRI tumour-type classification (decision support)",
        )],
    ));
    // The evidence: every source instance, in its study and series.
    let mut instances: Vec<InMemDicomObject> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in slices {
        if seen.insert(s.source.sop_instance_uid.clone()) {
            instances.push(InMemDicomObject::from_element_iter([
                el(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    s.source.sop_class_uid.clone(),
                ),
                el(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    s.source.sop_instance_uid.clone(),
                ),
            ]));
        }
    }
    let mut series = InMemDicomObject::from_element_iter([el(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        summary.series_instance_uid.clone(),
    )]);
    series.put(seq(tags::REFERENCED_SOP_SEQUENCE, instances));
    let mut study = InMemDicomObject::from_element_iter([el(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        summary.study_instance_uid.clone(),
    )]);
    study.put(seq(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));
    obj.put(seq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![study],
    ));

    let model_version = manifest.version();
    let call = summary.most_probable.as_ref().map_or_else(
        || "no call: no slice was answered confidently".to_string(),
        |c| {
            format!(
                "{} ({} supporting slices, mean probability {:.1} %)",
                c.class_name,
                c.supporting_slices.len(),
                c.mean_confidence * 100.0
            )
        },
    );
    let mut content = vec![
        text_item(
            "HAS OBS CONTEXT",
            code("111001", "DCM", "Algorithm Name"),
            &manifest.name,
        ),
        text_item(
            "HAS OBS CONTEXT",
            code("111003", "DCM", "Algorithm Version"),
            &format!(
                "oncolens {}; weights {model_version}",
                env!("CARGO_PKG_VERSION")
            ),
        ),
        text_item("CONTAINS", code("USE", SCHEME, "Intended use"), DISCLAIMER),
        text_item(
            "CONTAINS",
            code("SERIESCALL", SCHEME, "Series finding"),
            &call,
        ),
        text_item(
            "CONTAINS",
            code("RULE", SCHEME, "Decision rule"),
            &summary.rule,
        ),
        num_item(
            code("ANALYSED", SCHEME, "Slices analysed"),
            summary.analysed as f64,
            ("{slices}", "slices"),
        ),
        num_item(
            code("UNCERTAIN", SCHEME, "Slices uncertain"),
            summary.uncertain as f64,
            ("{slices}", "slices"),
        ),
        num_item(
            code("REFUSED", SCHEME, "Slices refused by the input checks"),
            summary.refused as f64,
            ("{slices}", "slices"),
        ),
    ];
    for s in slices {
        let p = s.prediction;
        let mut children = vec![
            item(
                "CONTAINS",
                "IMAGE",
                code("SOURCE", SCHEME, "Source image"),
                vec![seq(
                    tags::REFERENCED_SOP_SEQUENCE,
                    vec![reference(s.source)],
                )],
            ),
            text_item(
                "CONTAINS",
                code("VERDICT", SCHEME, "Verdict"),
                verdict_words(p),
            ),
            text_item(
                "CONTAINS",
                code("CLASS", SCHEME, "Class answered"),
                &p.class_name,
            ),
        ];
        for (c, prob) in manifest.classes.iter().zip(&p.probabilities) {
            children.push(num_item(
                code(
                    &format!("P-{}", c.id.chars().take(12).collect::<String>()),
                    SCHEME,
                    &format!("Probability of {}", c.display),
                ),
                f64::from(*prob),
                ("1", "no units"),
            ));
        }
        if let Some(g) = p.input_check.as_ref().and_then(|c| c.gate.as_ref()) {
            children.push(text_item(
                "CONTAINS",
                code("GATE", SCHEME, "Input gate"),
                &format!(
                    "brain-MRI score {:.3} (refused below {:.3}){}",
                    g.score,
                    g.threshold,
                    if g.refused { ": refused" } else { "" }
                ),
            ));
        }
        if !p.rejection_reasons().is_empty() {
            children.push(text_item(
                "CONTAINS",
                code("REASONS", SCHEME, "Why the slice was refused"),
                &p.rejection_reasons().join("; "),
            ));
        }
        let mut container = item(
            "CONTAINS",
            "CONTAINER",
            code("SLICE", SCHEME, "Slice result"),
            vec![el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE")],
        );
        container.put(seq(tags::CONTENT_SEQUENCE, children));
        content.push(container);
    }
    obj.put(seq(tags::CONTENT_SEQUENCE, content));
    Ok((sop_uid.clone(), part10(obj, COMPREHENSIVE_SR, &sop_uid)?))
}

/// The Grad-CAM overlays as a Secondary Capture series, one instance per slice with a map.
pub fn heatmap_captures(
    source: &InMemDicomObject,
    manifest: &Manifest,
    slices: &[SliceResult<'_>],
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let series_uid = new_uid();
    let mut out = Vec::new();
    for (n, s) in slices.iter().enumerate() {
        let Some(overlay) = &s.overlay else { continue };
        let sop_uid = new_uid();
        let mut obj = common(
            source,
            manifest,
            &series_uid,
            SC_SERIES_NUMBER,
            SC_SERIES_DESCRIPTION,
        );
        obj.put(el(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE));
        obj.put(el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.clone()));
        obj.put(el(tags::INSTANCE_NUMBER, VR::IS, (n + 1).to_string()));
        obj.put(el(tags::MODALITY, VR::CS, "OT"));
        obj.put(el(tags::CONVERSION_TYPE, VR::CS, "WSD"));
        obj.put(el(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"));
        obj.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"));
        obj.put(el(
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            format!(
                "Grad-CAM heat-map of oncolens model {} ({}) over the source slice; where the model looked, not a finding. Research and decision support, not for diagnosis.",
                manifest.name,
                s.prediction.class_name
            ),
        ));
        obj.put(el(
            tags::IMAGE_COMMENTS,
            VR::LT,
            format!("NOT FOR DIAGNOSIS. oncolens: {}", s.prediction.label()),
        ));
        obj.put(seq(tags::SOURCE_IMAGE_SEQUENCE, vec![reference(s.source)]));
        let (w, h) = overlay.dimensions();
        obj.put(el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
        // 8-bit RGB, interleaved; the overlay is at most WORKING_SIDE a side, within u16.
        for (tag, value) in [
            (tags::SAMPLES_PER_PIXEL, 3),
            (tags::PLANAR_CONFIGURATION, 0),
            (tags::ROWS, h as u16),
            (tags::COLUMNS, w as u16),
            (tags::BITS_ALLOCATED, 8),
            (tags::BITS_STORED, 8),
            (tags::HIGH_BIT, 7),
            (tags::PIXEL_REPRESENTATION, 0),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        }
        let mut pixels = overlay.as_raw().clone();
        if pixels.len() % 2 == 1 {
            pixels.push(0);
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(pixels),
        ));
        out.push((sop_uid.clone(), part10(obj, SECONDARY_CAPTURE, &sop_uid)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_a_dicom_date_and_time() {
        let (date, time) = super::now();
        assert_eq!((date.len(), time.len()), (8, 6), "{date} {time}");
        assert!(date.starts_with("20"), "{date}");
        assert!(date.chars().chain(time.chars()).all(|c| c.is_ascii_digit()));
    }
}
