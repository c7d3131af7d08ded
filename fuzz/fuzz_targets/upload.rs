//! Any bytes as the body of a multipart upload (as a browser or client sends to `POST /`,
//! `/api/v1/analyses` and `/api/v1/batches`): the multipart parser, the field checks, and the
//! zip unpacking with its limits. It may refuse with a 4xx; it must not panic, hang, answer 5xx
//! or hand on more than the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_UNPACKED: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    // A fixed boundary, so that the fuzzer learns it from the seeds.
    let content_type = "multipart/form-data; boundary=XyZzY";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(oncolens::serve::parse_upload(
        content_type,
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
});
