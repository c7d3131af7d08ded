#![allow(dead_code)] // each fuzz target uses one of these; the corpus replay uses all
//! What each fuzz target asserts, shared by the targets (`fuzz/fuzz_targets/`) and by the
//! replay of the committed corpora in the tests (`tests/fuzz_corpus.rs`), so that both check
//! the same thing.

/// libfuzzer-sys installs a panic hook that aborts at any panic, even one the library catches
/// on purpose (around the third-party pixel codecs, which panic on some corrupt data). The
/// default hook is put back: a panic that escapes the library still aborts, at the fuzz
/// target's boundary, and is reported as a crash.
fn let_caught_panics_be() {
    #[cfg(fuzzing)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| drop(std::panic::take_hook()));
    }
}

/// Any bytes through the one decoding step of uploads, `predict` and the PACS watcher: PNG,
/// JPEG or DICOM (every frame). It may refuse; it must not panic, and every pixel is in [0, 1].
pub fn decode(data: &[u8]) {
    let_caught_panics_be();
    if let Ok(scans) = oncolens::imaging::Scan::decode_frames(data) {
        for s in scans {
            assert!(s.image.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
        }
    }
}

/// Any bytes through DICOM parsing and de-identification; what comes out must parse again and
/// say the identity was removed.
pub fn deidentify(data: &[u8]) {
    let_caught_panics_be();
    let Ok(obj) = oncolens::imaging::dicom::parse(data) else {
        return;
    };
    let mut deid = oncolens::deid::Deidentifier::new(Some("fuzz"));
    if let Ok((clean, _)) = deid.deidentify(&obj) {
        let mut bytes = Vec::new();
        if clean.write_all(&mut bytes).is_ok() {
            let again = oncolens::imaging::dicom::parse(&bytes).expect("our output parses");
            assert_eq!(
                oncolens::imaging::dicom::text(
                    &again,
                    dicom_dictionary_std::tags::PATIENT_IDENTITY_REMOVED
                )
                .as_deref(),
                Some("YES")
            );
        }
    }
}

/// Largest unpacked upload the `upload` check allows.
pub const MAX_UNPACKED: usize = 1024 * 1024;

/// Any bytes as the body of a multipart upload (boundary `XyZzY`): the parser, the field checks
/// and the zip unpacking with its limits. It may refuse with a 4xx; it must not panic, answer
/// 5xx, or hand on more than the limits allow.
pub fn upload(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(oncolens::serve::parse_upload(
        "multipart/form-data; boundary=XyZzY",
        bytes::Bytes::copy_from_slice(data),
        MAX_UNPACKED,
    ));
    match result {
        Ok(files) => {
            assert!(!files.is_empty() && files.len() <= 1000);
            let total: usize = files.iter().map(|(_, b)| b.len()).sum();
            assert!(total <= data.len().max(MAX_UNPACKED));
        }
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.message),
    }
}
