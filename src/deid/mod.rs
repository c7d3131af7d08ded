//! Layer 2: de-identification of DICOM objects (PS3.15 Annex E, Basic Application Level
//! Confidentiality Profile).
//!
//! Overview: a [`Deidentifier`] walks every element of an object, sequences item by item, and
//! applies the action of the standard's table ([`profile::TABLE`]): remove (X), empty (Z),
//! dummy (D), keep (K) or replace a UID (U). UIDs are replaced by `2.25.` UIDs derived with
//! SHA-256 from a per-run salt, or from a pseudonym key, so that the study, series, frame of
//! reference and every reference between instances stay consistent. Attributes the table does
//! not list fall to [`fallback_action`], stricter than the standard: private attributes,
//! overlays and curves are removed, other person names emptied, other dates and times
//! removed, other non-standard UIDs replaced. Images marked Burned In Annotation = YES are
//! refused: their pixels may carry names.
//!
//! The result says what was done in Patient Identity Removed (0012,0062), De-identification
//! Method (0012,0063) and its code sequence (0012,0064: DCM 113100).

pub mod profile;

use std::collections::HashMap;

use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR, header::Header};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use sha2::{Digest, Sha256};

use crate::core::error::DeidError;
use crate::imaging::dicom::text;
pub use profile::Action;

/// Implementation Class UID written in the file meta of every object oncolens writes.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.247965334800992123843346481287758298899";
/// Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "ONCOLENS_0_1";
/// Prefix of standard UIDs (SOP classes, transfer syntaxes, coding schemes): never replaced.
const STANDARD_UID_ROOT: &str = "1.2.840.10008.";
/// The dummy value for person names and texts the table replaces with D.
pub const DUMMY_NAME: &str = "ANONYMOUS";

/// The action for an attribute the table does not list.
pub fn fallback_action(tag: Tag, vr: VR) -> Action {
    let group = tag.group();
    if group % 2 == 1 {
        return Action::Remove; // private attributes
    }
    if (0x5000..=0x50FF).contains(&group) || (0x6000..=0x60FF).contains(&group) {
        return Action::Remove; // curves and overlays: they can draw names on the image
    }
    match vr {
        VR::PN => Action::Empty,
        VR::DA | VR::DT | VR::TM => Action::Remove,
        VR::UI => Action::Uid,
        _ => Action::Keep,
    }
}

/// What one object's de-identification did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeidReport {
    pub removed: usize,
    pub emptied: usize,
    pub replaced: usize,
    pub uids_replaced: usize,
}

/// De-identifies objects with consistent UID replacement across all objects it sees.
pub struct Deidentifier {
    salt: [u8; 32],
    pseudonym_key: Option<String>,
    uids: HashMap<String, String>,
}

impl Deidentifier {
    /// With a pseudonym key, UIDs and the patient pseudonym are the same on every run (the
    /// same study de-identified twice gets the same UIDs, and a patient keeps one pseudonym);
    /// without one, UIDs are consistent within this run only and the patient is left empty.
    pub fn new(pseudonym_key: Option<&str>) -> Self {
        let salt: [u8; 32] = match pseudonym_key {
            Some(key) => Sha256::digest(format!("oncolens-uid\0{key}")).into(),
            None => rand::random(),
        };
        Self {
            salt,
            pseudonym_key: pseudonym_key.map(str::to_string),
            uids: HashMap::new(),
        }
    }

    /// The replacement of `uid`: `2.25.` and 128 bits of SHA-256(salt, uid) in decimal.
    pub fn uid(&mut self, uid: &str) -> String {
        let uid = uid.trim_end_matches('\0').trim();
        if let Some(u) = self.uids.get(uid) {
            return u.clone();
        }
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(uid.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let new = format!("2.25.{}", u128::from_be_bytes(bytes));
        self.uids.insert(uid.to_string(), new.clone());
        new
    }

    /// The patient's pseudonym under the key (`None` without a key).
    pub fn patient_pseudonym(&self, patient_id: &str) -> Option<String> {
        let key = self.pseudonym_key.as_ref()?;
        let digest = Sha256::new()
            .chain_update(b"oncolens-patient\0")
            .chain_update(key.as_bytes())
            .chain_update(b"\0")
            .chain_update(patient_id.trim().as_bytes())
            .finalize();
        Some(format!("ONC-{}", hex::encode(&digest[..8]).to_uppercase()))
    }

    /// A de-identified copy of `obj`, or why it cannot be made.
    pub fn deidentify(
        &mut self,
        obj: &DefaultDicomObject,
    ) -> Result<(DefaultDicomObject, DeidReport), DeidError> {
        if text(obj, tags::BURNED_IN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("YES")) {
            return Err(DeidError::BurnedIn);
        }
        let patient_id = text(obj, tags::PATIENT_ID).unwrap_or_default();
        let mut report = DeidReport::default();
        let mut clean = self.clean(obj, &mut report);
        clean.put(DataElement::new(
            tags::PATIENT_IDENTITY_REMOVED,
            VR::CS,
            PrimitiveValue::from("YES"),
        ));
        clean.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            PrimitiveValue::from("oncolens: DICOM PS3.15 Basic Profile"),
        ));
        let code = InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("113100")),
            DataElement::new(
                tags::CODING_SCHEME_DESIGNATOR,
                VR::SH,
                PrimitiveValue::from("DCM"),
            ),
            DataElement::new(
                tags::CODE_MEANING,
                VR::LO,
                PrimitiveValue::from("Basic Application Confidentiality Profile"),
            ),
        ]);
        clean.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![code], Length::UNDEFINED),
        ));
        if let Some(pseudonym) = self.patient_pseudonym(&patient_id) {
            for tag in [tags::PATIENT_ID, tags::PATIENT_NAME] {
                let vr = if tag == tags::PATIENT_NAME {
                    VR::PN
                } else {
                    VR::LO
                };
                clean.put(DataElement::new(
                    tag,
                    vr,
                    PrimitiveValue::from(pseudonym.as_str()),
                ));
            }
        }
        let sop_class = text(obj, tags::SOP_CLASS_UID)
            .unwrap_or_else(|| obj.meta().media_storage_sop_class_uid().to_string());
        // The file meta is checked by every reader: a malformed class UID (seen in fuzzed
        // input) would make the output unreadable, so it is refused here.
        if !is_valid_uid(&sop_class) {
            return Err(DeidError::Meta(
                format!("the SOP Class UID {sop_class:?} is not a valid UID").into(),
            ));
        }
        let sop_instance = text(&clean, tags::SOP_INSTANCE_UID)
            .unwrap_or_else(|| self.uid(obj.meta().media_storage_sop_instance_uid()));
        // One UID, not several (a fuzzed file had "a\b", whose replacements went into the file
        // meta and the output's name).
        if !is_valid_uid(&sop_instance) {
            return Err(DeidError::Meta(
                "the SOP Instance UID is not one valid UID".into(),
            ));
        }
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(obj.meta().transfer_syntax().trim_end_matches('\0'))
            .media_storage_sop_class_uid(sop_class.as_str())
            .media_storage_sop_instance_uid(sop_instance.as_str())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| DeidError::Meta(Box::new(e)))?;
        let out = clean.with_exact_meta(meta);
        // dicom-rs 0.10 can write an object it has read into bytes that it cannot read back (the
        // deidentify fuzz target found an item length past the end after a fuzzed unknown
        // element); what is handed on must read back.
        let mut bytes = Vec::new();
        out.write_all(&mut bytes)
            .map_err(|e| DeidError::Encode(Box::new(e)))?;
        crate::imaging::dicom::parse(&bytes).map_err(|e| {
            DeidError::Encode(
                format!(
                    "the de-identified object does not read back: {}",
                    crate::core::error::sentence(&e)
                )
                .into(),
            )
        })?;
        Ok((out, report))
    }

    /// The data set with every element's action applied (sequences recursively).
    fn clean(&mut self, obj: &InMemDicomObject, report: &mut DeidReport) -> InMemDicomObject {
        let mut out = InMemDicomObject::new_empty();
        for elem in obj.iter() {
            let tag = elem.tag();
            let vr = elem.vr();
            let action = profile::table_action(tag).unwrap_or_else(|| fallback_action(tag, vr));
            match action {
                Action::Remove => report.removed += 1,
                Action::Empty => {
                    report.emptied += 1;
                    out.put(empty_element(tag, vr));
                }
                Action::Keep | Action::Dummy if vr == VR::SQ => {
                    if let Some(items) = elem.items() {
                        let cleaned: Vec<InMemDicomObject> =
                            items.iter().map(|i| self.clean(i, report)).collect();
                        out.put(DataElement::new(
                            tag,
                            VR::SQ,
                            DataSetSequence::new(cleaned, Length::UNDEFINED),
                        ));
                    }
                }
                Action::Keep => {
                    out.put(elem.clone());
                }
                Action::Dummy => {
                    report.replaced += 1;
                    out.put(DataElement::new(tag, vr, dummy_value(vr)));
                }
                Action::Uid => {
                    let value = elem.to_multi_str().map(|v| v.to_vec()).unwrap_or_default();
                    let replaced: Vec<String> = value
                        .iter()
                        .map(|u| {
                            let u = u.trim_end_matches('\0').trim();
                            if u.is_empty() || u.starts_with(STANDARD_UID_ROOT) {
                                u.to_string()
                            } else {
                                report.uids_replaced += 1;
                                self.uid(u)
                            }
                        })
                        .collect();
                    out.put(DataElement::new(
                        tag,
                        VR::UI,
                        PrimitiveValue::Strs(replaced.into()),
                    ));
                }
            }
        }
        out
    }
}

/// A UID as PS3.5 9.1 defines it: at most 64 characters, digits in dot-separated components,
/// no leading zero in a component of more than one digit.
pub fn is_valid_uid(uid: &str) -> bool {
    let uid = uid.trim_end_matches('\0');
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

fn empty_element(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    if vr == VR::SQ {
        DataElement::new(
            tag,
            VR::SQ,
            DataSetSequence::<InMemDicomObject>::new(Vec::new(), Length::UNDEFINED),
        )
    } else {
        DataElement::new(tag, vr, Value::Primitive(PrimitiveValue::Empty))
    }
}

fn dummy_value(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => PrimitiveValue::from("19000101"),
        VR::TM => PrimitiveValue::from("000000"),
        VR::DT => PrimitiveValue::from("19000101000000"),
        VR::IS | VR::DS => PrimitiveValue::from("0"),
        _ => PrimitiveValue::from(DUMMY_NAME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_checked_and_replacements_are_valid() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_valid_uid("1.2.840.10008.1.2\0"));
        for bad in ["", "1..2", "1.02", "1.2a", &"1".repeat(65)] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
        let mut d = Deidentifier::new(Some("k"));
        let u = d.uid("1.2.3");
        assert!(is_valid_uid(&u), "{u}");
        assert_eq!(u, d.uid("1.2.3"));
        assert_ne!(u, d.uid("1.2.4"));
    }
}
