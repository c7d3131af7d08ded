//! The attribute table: DICOM PS3.15 Annex E, Table E.1-1, Basic Application Level
//! Confidentiality Profile column, for the attributes an MR image (and its references) can
//! carry. Each row is the standard's tag and action code; where the standard gives a choice
//! (X/Z, Z/D, X/Z/D, X/Z/U*), the row holds the choice made here and why is in
//! [`Action`]'s docs. Attributes the table does not list fall to the rules in
//! [`super::fallback_action`], which are stricter than the standard (they remove what the
//! table might have missed).

use dicom_core::Tag;

/// An action code of PS3.15 Table E.1-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// D: replace with a non-empty dummy value consistent with the VR (type 1 attributes).
    Dummy,
    /// Z: replace with an empty value (type 2 attributes the IOD needs present).
    Empty,
    /// X: remove. Choices "X/Z", "X/D", "X/Z/D" take X unless the MR IOD needs the attribute
    /// present, as the standard allows.
    Remove,
    /// K: keep (sequences are still cleaned item by item).
    Keep,
    /// U: replace a UID with one derived consistently (the same input UID gives the same
    /// output within a run, and across runs with the same pseudonym key).
    Uid,
}

use Action::*;

/// (group, element, action): PS3.15 Table E.1-1 Basic Profile, the rows that apply to the
/// image objects this tool reads and writes.
pub const TABLE: &[(u16, u16, Action)] = &[
    // File meta and SOP common.
    (0x0002, 0x0003, Uid),    // Media Storage SOP Instance UID
    (0x0004, 0x1511, Uid),    // Referenced SOP Instance UID in File
    (0x0008, 0x0012, Remove), // Instance Creation Date (X/D)
    (0x0008, 0x0013, Remove), // Instance Creation Time (X/Z/D)
    (0x0008, 0x0014, Uid),    // Instance Creator UID
    (0x0008, 0x0015, Remove), // Instance Coercion DateTime
    (0x0008, 0x0018, Uid),    // SOP Instance UID
    (0x0008, 0x0020, Empty),  // Study Date
    (0x0008, 0x0021, Remove), // Series Date (X/D)
    (0x0008, 0x0022, Remove), // Acquisition Date (X/Z)
    (0x0008, 0x0023, Empty),  // Content Date (Z/D; type 2 in the MR Image module)
    (0x0008, 0x0024, Remove), // Overlay Date
    (0x0008, 0x0025, Remove), // Curve Date
    (0x0008, 0x002A, Remove), // Acquisition DateTime (X/Z/D)
    (0x0008, 0x0030, Empty),  // Study Time
    (0x0008, 0x0031, Remove), // Series Time (X/D)
    (0x0008, 0x0032, Remove), // Acquisition Time (X/Z)
    (0x0008, 0x0033, Empty),  // Content Time (Z/D)
    (0x0008, 0x0034, Remove), // Overlay Time
    (0x0008, 0x0035, Remove), // Curve Time
    (0x0008, 0x0050, Empty),  // Accession Number
    (0x0008, 0x0080, Remove), // Institution Name (X/Z/D)
    (0x0008, 0x0081, Remove), // Institution Address
    (0x0008, 0x0082, Remove), // Institution Code Sequence (X/Z/D)
    (0x0008, 0x0090, Empty),  // Referring Physician's Name
    (0x0008, 0x0092, Remove), // Referring Physician's Address
    (0x0008, 0x0094, Remove), // Referring Physician's Telephone Numbers
    (0x0008, 0x0096, Remove), // Referring Physician Identification Sequence
    (0x0008, 0x0201, Remove), // Timezone Offset From UTC
    (0x0008, 0x1010, Remove), // Station Name (X/Z/D)
    (0x0008, 0x1030, Remove), // Study Description
    (0x0008, 0x103E, Remove), // Series Description
    (0x0008, 0x1040, Remove), // Institutional Department Name
    (0x0008, 0x1048, Remove), // Physician(s) of Record
    (0x0008, 0x1049, Remove), // Physician(s) of Record Identification Sequence
    (0x0008, 0x1050, Remove), // Performing Physician's Name
    (0x0008, 0x1052, Remove), // Performing Physician Identification Sequence
    (0x0008, 0x1060, Remove), // Name of Physician(s) Reading Study
    (0x0008, 0x1062, Remove), // Physician(s) Reading Study Identification Sequence
    (0x0008, 0x1070, Remove), // Operators' Name (X/Z/D)
    (0x0008, 0x1072, Remove), // Operator Identification Sequence (X/D)
    (0x0008, 0x1080, Remove), // Admitting Diagnoses Description
    (0x0008, 0x1084, Remove), // Admitting Diagnoses Code Sequence
    (0x0008, 0x1110, Remove), // Referenced Study Sequence (X/Z)
    (0x0008, 0x1111, Remove), // Referenced Performed Procedure Step Sequence (X/Z/D)
    (0x0008, 0x1120, Remove), // Referenced Patient Sequence
    (0x0008, 0x1140, Keep),   // Referenced Image Sequence (X/Z/U*: kept, its UIDs replaced)
    (0x0008, 0x1155, Uid),    // Referenced SOP Instance UID
    (0x0008, 0x1195, Uid),    // Transaction UID
    (0x0008, 0x2111, Remove), // Derivation Description
    (0x0008, 0x3010, Uid),    // Irradiation Event UID
    (0x0008, 0x4000, Remove), // Identifying Comments
    // Patient.
    (0x0010, 0x0010, Empty),  // Patient's Name
    (0x0010, 0x0020, Empty),  // Patient ID
    (0x0010, 0x0021, Remove), // Issuer of Patient ID
    (0x0010, 0x0030, Empty),  // Patient's Birth Date
    (0x0010, 0x0032, Remove), // Patient's Birth Time
    (0x0010, 0x0040, Empty),  // Patient's Sex
    (0x0010, 0x0050, Remove), // Patient's Insurance Plan Code Sequence
    (0x0010, 0x1000, Remove), // Other Patient IDs
    (0x0010, 0x1001, Remove), // Other Patient Names
    (0x0010, 0x1002, Remove), // Other Patient IDs Sequence
    (0x0010, 0x1005, Remove), // Patient's Birth Name
    (0x0010, 0x1010, Remove), // Patient's Age
    (0x0010, 0x1020, Remove), // Patient's Size
    (0x0010, 0x1030, Remove), // Patient's Weight
    (0x0010, 0x1040, Remove), // Patient's Address
    (0x0010, 0x1060, Remove), // Patient's Mother's Birth Name
    (0x0010, 0x1080, Remove), // Military Rank
    (0x0010, 0x1081, Remove), // Branch of Service
    (0x0010, 0x1090, Remove), // Medical Record Locator
    (0x0010, 0x1100, Remove), // Referenced Patient Photo Sequence
    (0x0010, 0x2000, Remove), // Medical Alerts
    (0x0010, 0x2110, Remove), // Allergies
    (0x0010, 0x2150, Remove), // Country of Residence
    (0x0010, 0x2152, Remove), // Region of Residence
    (0x0010, 0x2154, Remove), // Patient's Telephone Numbers
    (0x0010, 0x2155, Remove), // Patient's Telecom Information
    (0x0010, 0x2160, Remove), // Ethnic Group
    (0x0010, 0x2180, Remove), // Occupation
    (0x0010, 0x21A0, Remove), // Smoking Status
    (0x0010, 0x21B0, Remove), // Additional Patient History
    (0x0010, 0x21C0, Remove), // Pregnancy Status
    (0x0010, 0x21D0, Remove), // Last Menstrual Date
    (0x0010, 0x21F0, Remove), // Patient's Religious Preference
    (0x0010, 0x2203, Remove), // Patient's Sex Neutered (X/Z)
    (0x0010, 0x2297, Remove), // Responsible Person
    (0x0010, 0x2299, Remove), // Responsible Organization
    (0x0010, 0x4000, Remove), // Patient Comments
    // Equipment and acquisition.
    (0x0018, 0x0010, Empty),  // Contrast/Bolus Agent (Z/D)
    (0x0018, 0x1000, Remove), // Device Serial Number (X/Z/D)
    (0x0018, 0x1002, Uid),    // Device UID
    (0x0018, 0x1004, Remove), // Plate ID
    (0x0018, 0x1005, Remove), // Generator ID
    (0x0018, 0x1007, Remove), // Cassette ID
    (0x0018, 0x1008, Remove), // Gantry ID
    (0x0018, 0x1030, Remove), // Protocol Name (X/D)
    (0x0018, 0x1200, Remove), // Date of Last Calibration
    (0x0018, 0x1201, Remove), // Time of Last Calibration
    (0x0018, 0x1400, Remove), // Acquisition Device Processing Description (X/D)
    (0x0018, 0x4000, Remove), // Acquisition Comments
    (0x0018, 0x700A, Remove), // Detector ID (X/D)
    (0x0018, 0x9424, Remove), // Acquisition Protocol Description
    (0x0018, 0x9516, Remove), // Start Acquisition DateTime (X/D)
    (0x0018, 0x9517, Remove), // End Acquisition DateTime (X/D)
    (0x0018, 0xA003, Remove), // Contribution Description
    // Study, series, frame of reference.
    (0x0020, 0x000D, Uid),    // Study Instance UID
    (0x0020, 0x000E, Uid),    // Series Instance UID
    (0x0020, 0x0010, Empty),  // Study ID
    (0x0020, 0x0052, Uid),    // Frame of Reference UID
    (0x0020, 0x0200, Uid),    // Synchronization Frame of Reference UID
    (0x0020, 0x3401, Remove), // Modifying Device ID
    (0x0020, 0x3404, Remove), // Modifying Device Manufacturer
    (0x0020, 0x3406, Remove), // Modified Image Description
    (0x0020, 0x4000, Remove), // Image Comments
    (0x0020, 0x9158, Remove), // Frame Comments
    (0x0020, 0x9161, Uid),    // Concatenation UID
    (0x0020, 0x9164, Uid),    // Dimension Organization UID
    (0x0028, 0x1199, Uid),    // Palette Color Lookup Table UID
    (0x0028, 0x1214, Uid),    // Large Palette Color Lookup Table UID
    (0x0028, 0x4000, Remove), // Image Presentation Comments
    // Requests, visits and procedure steps.
    (0x0032, 0x0012, Remove), // Study ID Issuer
    (0x0032, 0x1020, Remove), // Scheduled Study Location
    (0x0032, 0x1021, Remove), // Scheduled Study Location AE Title
    (0x0032, 0x1030, Remove), // Reason for Study
    (0x0032, 0x1032, Remove), // Requesting Physician
    (0x0032, 0x1033, Remove), // Requesting Service
    (0x0032, 0x1060, Remove), // Requested Procedure Description (X/Z)
    (0x0032, 0x1064, Remove), // Requested Procedure Code Sequence
    (0x0032, 0x1070, Remove), // Requested Contrast Agent
    (0x0032, 0x4000, Remove), // Study Comments
    (0x0038, 0x0004, Remove), // Referenced Patient Alias Sequence
    (0x0038, 0x0010, Remove), // Admission ID
    (0x0038, 0x0060, Remove), // Service Episode ID
    (0x0038, 0x0061, Remove), // Issuer of Service Episode ID
    (0x0038, 0x0062, Remove), // Service Episode Description
    (0x0038, 0x0300, Remove), // Current Patient Location
    (0x0038, 0x0400, Remove), // Patient's Institution Residence
    (0x0038, 0x0500, Remove), // Patient State
    (0x0038, 0x4000, Remove), // Visit Comments
    (0x0040, 0x0001, Remove), // Scheduled Station AE Title
    (0x0040, 0x0002, Remove), // Scheduled Procedure Step Start Date
    (0x0040, 0x0003, Remove), // Scheduled Procedure Step Start Time
    (0x0040, 0x0004, Remove), // Scheduled Procedure Step End Date
    (0x0040, 0x0005, Remove), // Scheduled Procedure Step End Time
    (0x0040, 0x0006, Remove), // Scheduled Performing Physician's Name
    (0x0040, 0x0007, Remove), // Scheduled Procedure Step Description
    (0x0040, 0x000B, Remove), // Scheduled Performing Physician Identification Sequence
    (0x0040, 0x0010, Remove), // Scheduled Station Name
    (0x0040, 0x0011, Remove), // Scheduled Procedure Step Location
    (0x0040, 0x0012, Remove), // Pre-Medication
    (0x0040, 0x0241, Remove), // Performed Station AE Title
    (0x0040, 0x0242, Remove), // Performed Station Name
    (0x0040, 0x0243, Remove), // Performed Location
    (0x0040, 0x0244, Remove), // Performed Procedure Step Start Date
    (0x0040, 0x0245, Remove), // Performed Procedure Step Start Time
    (0x0040, 0x0250, Remove), // Performed Procedure Step End Date
    (0x0040, 0x0251, Remove), // Performed Procedure Step End Time
    (0x0040, 0x0253, Remove), // Performed Procedure Step ID
    (0x0040, 0x0254, Remove), // Performed Procedure Step Description
    (0x0040, 0x0275, Remove), // Request Attributes Sequence
    (0x0040, 0x0280, Remove), // Comments on the Performed Procedure Step
    (0x0040, 0x0555, Remove), // Acquisition Context Sequence
    (0x0040, 0x050A, Remove), // Specimen Accession Number
    (0x0040, 0x1001, Remove), // Requested Procedure ID
    (0x0040, 0x1004, Remove), // Patient Transport Arrangements
    (0x0040, 0x1005, Remove), // Requested Procedure Location
    (0x0040, 0x1010, Remove), // Names of Intended Recipients of Results
    (0x0040, 0x1011, Remove), // Intended Recipients of Results Identification Sequence
    (0x0040, 0x1102, Remove), // Person's Address
    (0x0040, 0x1103, Remove), // Person's Telephone Numbers
    (0x0040, 0x1104, Remove), // Person's Telecom Information
    (0x0040, 0x1400, Remove), // Requested Procedure Comments
    (0x0040, 0x2001, Remove), // Reason for the Imaging Service Request
    (0x0040, 0x2008, Remove), // Order Entered By
    (0x0040, 0x2009, Remove), // Order Enterer's Location
    (0x0040, 0x2010, Remove), // Order Callback Phone Number
    (0x0040, 0x2016, Empty),  // Placer Order Number / Imaging Service Request
    (0x0040, 0x2017, Empty),  // Filler Order Number / Imaging Service Request
    (0x0040, 0x2400, Remove), // Imaging Service Request Comments
    (0x0040, 0x3001, Remove), // Confidentiality Constraint on Patient Data Description
    (0x0040, 0x4023, Uid),    // Referenced General Purpose Scheduled Procedure Step Transaction UID
    (0x0040, 0xA027, Remove), // Verifying Organization
    (0x0040, 0xA073, Dummy),  // Verifying Observer Sequence
    (0x0040, 0xA075, Dummy),  // Verifying Observer Name
    (0x0040, 0xA078, Remove), // Author Observer Sequence
    (0x0040, 0xA07A, Remove), // Participant Sequence
    (0x0040, 0xA07C, Remove), // Custodial Organization Sequence
    (0x0040, 0xA088, Empty),  // Verifying Observer Identification Code Sequence
    (0x0040, 0xA123, Dummy),  // Person Name
    (0x0040, 0xA124, Uid),    // UID
    (0x0040, 0xA730, Remove), // Content Sequence (of objects read as input)
    (0x0040, 0xDB0C, Uid),    // Template Extension Organization UID
    (0x0040, 0xDB0D, Uid),    // Template Extension Creator UID
    (0x0070, 0x0084, Empty),  // Content Creator's Name
    (0x0070, 0x0086, Remove), // Content Creator's Identification Code Sequence
    (0x0088, 0x0140, Uid),    // Storage Media File-set UID
    (0x3006, 0x0024, Uid),    // Referenced Frame of Reference UID
    (0x3006, 0x00C2, Uid),    // Related Frame of Reference UID
    (0x0400, 0x0100, Remove), // Digital Signature UID
    (0x0400, 0x0402, Remove), // Referenced Digital Signature Sequence
    (0x0400, 0x0403, Remove), // Referenced SOP Instance MAC Sequence
    (0x0400, 0x0404, Remove), // MAC
    (0x0400, 0x0550, Remove), // Modified Attributes Sequence
    (0x0400, 0x0561, Remove), // Original Attributes Sequence
    (0xFFFA, 0xFFFA, Remove), // Digital Signatures Sequence
    (0xFFFC, 0xFFFC, Remove), // Data Set Trailing Padding
];

/// The table's action for a tag, if it lists the tag.
pub fn table_action(tag: Tag) -> Option<Action> {
    TABLE
        .iter()
        .find(|(g, e, _)| Tag(*g, *e) == tag)
        .map(|(_, _, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_tag_once() {
        let mut tags: Vec<(u16, u16)> = TABLE.iter().map(|(g, e, _)| (*g, *e)).collect();
        tags.sort();
        let before = tags.len();
        tags.dedup();
        assert_eq!(tags.len(), before);
        assert_eq!(table_action(Tag(0x0010, 0x0010)), Some(Action::Empty));
        assert_eq!(table_action(Tag(0x0008, 0x0060)), None);
    }
}
