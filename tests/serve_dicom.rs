//! DICOM through the web app and API: a series (a zip, several files) gets an analysis per
//! slice and a summary per series; nothing identifying from DICOM reaches the database or
//! the answers.

mod common;

use std::io::Write;
use std::path::Path;

use common::dicom::*;
use reqwest::blocking::{Client, multipart};

fn post(base: &str, path: &str, files: &[(String, Vec<u8>)]) -> reqwest::blocking::Response {
    let mut form = multipart::Form::new();
    for (name, bytes) in files {
        form = form.part(
            "image",
            multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
        );
    }
    Client::new()
        .post(format!("{base}{path}"))
        .multipart(form)
        .send()
        .unwrap()
}

fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        for (name, bytes) in files {
            z.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    out.into_inner()
}

fn read(path: &Path) -> (String, Vec<u8>) {
    (
        path.file_name().unwrap().to_string_lossy().into_owned(),
        std::fs::read(path).unwrap(),
    )
}

#[test]
fn a_series_gives_a_result_per_slice_and_a_summary_and_a_page() {
    let shared = shared_dicom();
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        common::start_server(&dir.path().join("db.sqlite"), 1, 4, 8 * 1024 * 1024)
    );
    let slices: Vec<(String, Vec<u8>)> = (2..=7)
        .map(|i| read(&shared.join(format!("brain_mr_series/brain_{i:03}.dcm"))))
        .collect();
    let ct = read(&shared.join("non_mr/CT_small.dcm"));
    let r = post(
        &base,
        "/api/v1/batches",
        &[("series.zip".into(), zip_of(&slices)), ct],
    );
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["slices"], 6);
    assert_eq!(v["results"].as_array().unwrap().len(), 6);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["error"].as_str().unwrap().contains("modality CT"));
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["slices"], 6);
    let ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    if let Some(call) = series[0]["most_probable"].as_object() {
        for s in call["supporting_slices"].as_array().unwrap() {
            assert!(ids.contains(&s["slice"].as_str().unwrap()), "{s}");
        }
    }
    // The batch reads back the same, and its page shows the strip and the summary.
    let again: serde_json::Value = Client::new()
        .get(format!("{base}{location}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again["series"], v["series"]);
    let page = Client::new()
        .get(format!("{base}{}", v["links"]["page"].as_str().unwrap()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(page.matches("<li class=\"slice").count(), 6);
    assert!(page.contains("Series 1 (MR)"), "{page}");
    assert!(page.contains("modality CT"));
    // One analysis takes one slice: a multi-frame object is sent to the batches.
    let multi = read(&shared.join("multiframe_mr/emri_small.dcm"));
    let r = post(&base, "/api/v1/analyses", std::slice::from_ref(&multi));
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("/api/v1/batches"),
        "{e}"
    );
    let r = post(&base, "/api/v1/batches", &[multi]);
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["slices"], 10);
    assert!(
        v["results"][3]["filename"]
            .as_str()
            .unwrap()
            .contains("frame 4 of 10")
    );
    // The upload form: a single PNG-less DICOM slice goes to its result page.
    let r = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/"))
        .header("Origin", base.clone())
        .multipart(
            multipart::Form::new()
                .text(
                    "csrf",
                    common::csrf_token(&Client::new(), &format!("{base}/")),
                )
                .part(
                    "image",
                    multipart::Part::bytes(slices[0].1.clone()).file_name("x.dcm"),
                ),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/analyses/")
    );
    // A zip that unpacks beyond the upload limit is refused, nothing stored.
    let bomb = zip_of(&[("zeros.dcm".into(), vec![0u8; 9 * 1024 * 1024])]);
    assert!(bomb.len() < 1024 * 1024);
    let r = post(&base, "/api/v1/batches", &[("bomb.zip".into(), bomb)]);
    assert_eq!(r.status(), 413);
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn nothing_identifying_from_dicom_is_stored_or_answered() {
    let dir = tempfile::tempdir().unwrap();
    let files = phi_fixture(dir.path(), None);
    let db = dir.path().join("db.sqlite");
    let base = format!(
        "http://{}",
        common::start_server(&db, 1, 4, 8 * 1024 * 1024)
    );
    let uploads: Vec<(String, Vec<u8>)> = files.iter().map(|f| read(f)).collect();
    for (_, bytes) in &uploads {
        for (_, _, value) in PHI {
            assert!(contains(bytes, value), "the fixture lacks {value}");
        }
    }
    let mut answers = Vec::new();
    let r = post(&base, "/api/v1/batches", &uploads);
    assert_eq!(r.status(), 201);
    let batch: serde_json::Value = r.json().unwrap();
    answers.push(batch.to_string());
    let r = post(&base, "/api/v1/analyses", &uploads[..1]);
    assert_eq!(r.status(), 201);
    answers.push(r.text().unwrap());
    for path in [
        "/api/v1/analyses".to_string(),
        batch["links"]["page"].as_str().unwrap().to_string(),
        "/history".to_string(),
    ] {
        answers.push(
            Client::new()
                .get(format!("{base}{path}"))
                .send()
                .unwrap()
                .text()
                .unwrap(),
        );
    }
    // Everything stored: the database file, its write-ahead log and shared memory, and the
    // object store's files beside it.
    fn read_all(path: &std::path::Path, into: &mut Vec<u8>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                read_all(&entry.unwrap().path(), into);
            }
        } else {
            into.extend(std::fs::read(path).unwrap());
        }
    }
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.sqlite")
        {
            read_all(&p, &mut stored);
        }
    }
    assert!(stored.len() > 10_000, "the database holds the analyses");
    let originals = ["1.2.826.0.1.3680043.99", "DOE_JANE", "synthetic T1"];
    for (_, _, value) in PHI.iter().map(|(t, v, s)| (t, v, *s)).chain(
        originals
            .iter()
            .map(|s| (&dicom_core::Tag(0, 0), &dicom_core::VR::UN, *s)),
    ) {
        assert!(!contains(&stored, value), "{value} is in the database");
        for a in &answers {
            assert!(!a.contains(value), "{value} is in an answer");
        }
    }
    // Pixels that may show names are neither analysed nor stored.
    let burned = phi_fixture(&dir.path().join("b"), Some("YES"));
    let r = post(&base, "/api/v1/analyses", &[read(&burned[0])]);
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("Burned In Annotation"),
        "{e}"
    );
}
