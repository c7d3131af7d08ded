//! Any bytes through the one decoding step of uploads, `predict` and the PACS watcher: PNG,
//! JPEG or DICOM (every frame). It may refuse; it must not panic, hang or run out of memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scans) = oncolens::imaging::Scan::decode_frames(data) {
        for s in scans {
            assert!(s.image.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
        }
    }
});
