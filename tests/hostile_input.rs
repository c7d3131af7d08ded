//! A corpus of hostile and broken uploads, each sent to the single-slice and the batch API:
//! every one gets a 4xx with a plain sentence, nothing is stored, and the server goes on
//! serving (a good scan is analysed afterwards).

mod common;

use std::io::{Cursor, Write};

use common::dicom::*;
use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

fn png(side: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(side, side, |x, y| image::Luma([((x ^ y) % 251) as u8]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(side: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(side, side, |x, y| image::Luma([((x + y) % 251) as u8]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A PNG whose header declares `side` x `side` pixels, the rest of the file being tiny.
fn png_declaring(side: u32) -> Vec<u8> {
    let mut bytes = png(8);
    // IHDR's width and height follow the 8-byte signature, the chunk length and its type.
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    bytes
}

fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        out.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        out.write_all(bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn dicom(spec: &MrSpec) -> Vec<u8> {
    let mut out = Vec::new();
    encode(mr_dataset(spec), spec, EXPLICIT_LE)
        .write_all(&mut out)
        .unwrap();
    out
}

/// (what, file name, bytes)
fn corpus() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let good_png = png(64);
    let good_jpeg = jpeg(64);
    let good_dicom = dicom(&MrSpec::default());
    let mut corrupt_png = good_png.clone();
    let middle = corrupt_png.len() / 2;
    corrupt_png[middle..middle + 16].fill(0xA5);
    let mut flipped_crc = good_png.clone();
    flipped_crc[29] ^= 0xFF;
    let mut jpeg_garbage = good_jpeg[..200].to_vec();
    jpeg_garbage.extend(std::iter::repeat_n(0x5A, 2000));
    let mut png_then_zip = good_png[..good_png.len() / 2].to_vec();
    png_then_zip.extend(zip_of(&[("a.png", good_png.clone())]));
    let mut html_as_jpeg = b"<html><script>alert(1)</script>".to_vec();
    html_as_jpeg.extend(vec![b' '; 500]);
    vec![
        ("an empty file", "empty.png", Vec::new()),
        ("zero bytes", "zeros.png", vec![0; 4096]),
        ("a lone PNG signature", "sig.png", good_png[..8].to_vec()),
        (
            "a truncated PNG",
            "cut.png",
            good_png[..good_png.len() / 3].to_vec(),
        ),
        ("a PNG with corrupt image data", "corrupt.png", corrupt_png),
        (
            "a PNG whose header checksum is wrong",
            "crc.png",
            flipped_crc,
        ),
        (
            "a PNG declaring 60000 x 60000 pixels",
            "bomb.png",
            png_declaring(60_000),
        ),
        (
            "a PNG declaring 0 x 0 pixels",
            "nothing.png",
            png_declaring(0),
        ),
        (
            "a truncated JPEG",
            "cut.jpg",
            good_jpeg[..good_jpeg.len() / 2].to_vec(),
        ),
        ("a JPEG header and garbage", "garbage.jpg", jpeg_garbage),
        (
            "half a PNG with a zip after it",
            "polyglot.png",
            png_then_zip,
        ),
        ("HTML named .jpg", "page.jpg", html_as_jpeg),
        (
            "a GIF",
            "anim.gif",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
        ),
        (
            "a PDF named .png",
            "doc.png",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec(),
        ),
        (
            "a truncated DICOM file",
            "cut.dcm",
            good_dicom[..good_dicom.len() / 2].to_vec(),
        ),
        ("a DICOM preamble and nothing", "empty.dcm", {
            let mut v = vec![0u8; 128];
            v.extend(b"DICM");
            v
        }),
        (
            "a CT DICOM image",
            "ct.dcm",
            dicom(&MrSpec {
                modality: "CT",
                ..MrSpec::default()
            }),
        ),
        (
            "a DICOM image marked as having burned-in annotation",
            "burned.dcm",
            dicom(&MrSpec {
                burned_in: Some("YES"),
                ..MrSpec::default()
            }),
        ),
        ("a zip signature and garbage", "broken.zip", {
            let mut v = b"PK\x03\x04".to_vec();
            v.extend(vec![0xEE; 300]);
            v
        }),
        ("a zip of nothing", "nothing.zip", zip_of(&[])),
        (
            "a zip bomb",
            "bomb.zip",
            zip_of(&[("zeros.png", vec![0u8; 6 * 1024 * 1024])]),
        ),
    ]
}

fn count(client: &Client, base: &str) -> usize {
    let list: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    list["items"].as_array().unwrap().len()
}

#[test]
fn every_hostile_upload_gets_a_plain_4xx_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        common::start_server(&tmp.path().join("hostile.db"), 1, 2, 4 * 1024 * 1024)
    );
    let client = Client::new();
    for (what, name, bytes) in corpus() {
        for route in ["/api/v1/analyses", "/api/v1/batches"] {
            let r = client
                .post(format!("{base}{route}"))
                .multipart(multipart::Form::new().part(
                    "image",
                    multipart::Part::bytes(bytes.clone()).file_name(name),
                ))
                .send()
                .unwrap();
            let status = r.status();
            let body: serde_json::Value = r
                .json()
                .unwrap_or_else(|e| panic!("{what} to {route}: not JSON ({e})"));
            let message = body["error"].as_str().unwrap_or_default();
            assert!(
                status.is_client_error(),
                "{what} to {route}: {status} {body}"
            );
            assert!(
                message.len() > 10
                    && !message.contains("panicked")
                    && !message.contains("RUST_BACKTRACE")
                    && !message.contains("Error {"),
                "{what} to {route}: {message:?}"
            );
        }
    }
    // Requests malformed as such.
    let malformed: Vec<(&str, reqwest::blocking::RequestBuilder)> = vec![
        (
            "multipart without a boundary",
            client
                .post(format!("{base}/api/v1/analyses"))
                .header("content-type", "multipart/form-data")
                .body("--x\r\n"),
        ),
        (
            "a form instead of multipart",
            client
                .post(format!("{base}/api/v1/analyses"))
                .form(&[("image", "x")]),
        ),
        (
            "JSON instead of multipart",
            client
                .post(format!("{base}/api/v1/batches"))
                .json(&serde_json::json!({"image": "aGVsbG8="})),
        ),
        (
            "a multipart body cut in the middle",
            client
                .post(format!("{base}/api/v1/analyses"))
                .header("content-type", "multipart/form-data; boundary=XyZ")
                .body("--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\u{89}PNG"),
        ),
        (
            "a header of 100 kB",
            client
                .get(format!("{base}/api/v1/analyses"))
                .header("x-padding", "a".repeat(100 * 1024)),
        ),
    ];
    for (what, request) in malformed {
        let r = request.send().unwrap();
        assert!(r.status().is_client_error(), "{what}: {}", r.status());
    }
    assert_eq!(count(&client, &base), 0, "a refused upload was stored");
    // The server is unharmed: ready, and a good scan is analysed.
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ok = client
        .post(format!("{base}/api/v1/analyses"))
        .multipart(multipart::Form::new().part(
            "image",
            multipart::Part::bytes(png(128)).file_name("ok.png"),
        ))
        .send()
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(count(&client, &base), 1);
}
