//! Any bytes through DICOM parsing and de-identification; what comes out must parse again
//! and say the identity was removed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = oncolens::imaging::dicom::parse(data) else {
        return;
    };
    let mut deid = oncolens::deid::Deidentifier::new(Some("fuzz"));
    if let Ok((clean, _)) = deid.deidentify(&obj) {
        let mut bytes = Vec::new();
        if clean.write_all(&mut bytes).is_ok() {
            let again = oncolens::imaging::dicom::parse(&bytes).expect("our output parses");
            assert_eq!(
                oncolens::imaging::dicom::text(&again, dicom_dictionary_std::tags::PATIENT_IDENTITY_REMOVED)
                    .as_deref(),
                Some("YES")
            );
        }
    }
});
