//! The DICOM reader against real third-party files (`../shared/data/dicom`, see its
//! SOURCE.md) and synthetic objects written here in every encoding it supports; `predict` on
//! DICOM files and series.

mod common;

use std::path::Path;
use std::process::Command;

use common::dicom::*;
use oncolens::imaging::Scan;
use oncolens::imaging::dicom::WindowUsed;

/// Reads a file into frames, or the error's sentence.
fn frames(path: &Path) -> Result<Vec<Scan>, String> {
    Scan::load_frames(path).map_err(|e| e.sentence())
}

fn manifest_rows() -> Vec<(String, String, String)> {
    let dir = shared_dicom();
    let mut reader = csv::Reader::from_path(dir.join("manifest.csv")).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[4].to_string(), r[7].to_string())
        })
        .collect()
}

#[test]
fn every_shared_file_is_read_or_refused_with_its_reason() {
    let dir = shared_dicom();
    let rows = manifest_rows();
    assert_eq!(rows.len(), 70);
    for (category, file, header) in rows {
        let parts: Vec<&str> = header.split('|').collect();
        let (modality, syntax) = (parts[0], parts[1]);
        let expected_frames: usize = parts[3].trim_start_matches("frames=").parse().unwrap();
        let got = frames(&dir.join(&file));
        let category = category.split('/').next().unwrap();
        match category {
            _ if syntax.starts_with("JPEG-LS") => {
                let e = got.err().unwrap_or_else(|| panic!("{file} decoded"));
                assert!(
                    e.contains("JPEG-LS") && e.contains("cannot be decoded"),
                    "{file}: {e}"
                );
            }
            "brain_mr_series" | "transfer_syntaxes" | "multiframe_mr" => {
                let f = got.unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(f.len(), expected_frames, "{file}");
                let d = f[0].dicom.as_ref().unwrap();
                assert_eq!(d.modality, "MR");
                assert!(!d.series_instance_uid.is_empty(), "{file}");
                // A real picture: not flat, within [0, 1].
                let px: Vec<f32> = f[0].image.pixels().map(|p| p.0[0]).collect();
                let mean = px.iter().sum::<f32>() / px.len() as f32;
                assert!((0.02..0.9).contains(&mean), "{file}: mean {mean}");
                assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
            }
            "monochrome1" | "non_mr" => {
                let e = got.err().unwrap_or_else(|| panic!("{file} was accepted"));
                if modality == "SR" {
                    assert!(e.contains("holds no image"), "{file}: {e}");
                } else {
                    assert!(e.contains(&format!("modality {modality}")), "{file}: {e}");
                }
            }
            "broken" => match file.as_str() {
                // The meta group is whole without the preamble; the image is complete.
                "broken/brain_010_no_preamble.dcm" => assert_eq!(got.unwrap().len(), 1),
                // openjp2 decodes all ten frames of this short-by-8-bytes stream.
                "broken/emri_small_jpeg_2k_lossless_too_short.dcm" => {}
                _ => {
                    let e = got.err().unwrap_or_else(|| panic!("{file} was accepted"));
                    assert!(
                        e.contains("truncated")
                            || e.contains("no DICOM file meta")
                            || e.contains("not a PNG, JPEG or DICOM"),
                        "{file}: {e}"
                    );
                }
            },
            other => panic!("unexpected category {other}"),
        }
    }
}

/// Largest pixel difference between two decoded frames.
fn max_difference(a: &Scan, b: &Scan) -> f32 {
    assert_eq!(a.image.dimensions(), b.image.dimensions());
    a.image
        .pixels()
        .zip(b.image.pixels())
        .map(|(p, q)| (p.0[0] - q.0[0]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_same_image_in_every_lossless_syntax_decodes_to_the_same_pixels() {
    let dir = shared_dicom().join("transfer_syntaxes");
    for (folder, reference, others) in [
        (
            "MR_small",
            "MR_small.dcm",
            &[
                "MR_small_implicit.dcm",
                "MR_small_bigendian.dcm",
                "MR_small_expb.dcm",
                "MR_small_RLE.dcm",
                "MR_small_jp2klossless.dcm",
                "MR_small_padded.dcm",
            ][..],
        ),
        (
            "siemens_epi_mosaic",
            "1_explicit_le.dcm",
            &[
                "2_implicit_le.dcm",
                "3_explicit_be.dcm",
                "4_rle.dcm",
                "5_jpeg_lossless_sv1_dcmtk.dcm",
                "6_jpeg_lossless_sv1_gdcm.dcm",
                "9_jpeg2000_lossless.dcm",
            ][..],
        ),
    ] {
        let r = frames(&dir.join(folder).join(reference)).unwrap();
        for o in others {
            let f = frames(&dir.join(folder).join(o)).unwrap();
            let d = max_difference(&r[0], &f[0]);
            assert!(d < 1e-6, "{folder}/{o} differs from {reference} by {d}");
        }
    }
    // Lossy JPEG 2000 stays close to its lossless twin.
    let lossless = frames(&dir.join("MR2_shoulder/MR2_J2KR.dcm")).unwrap();
    let lossy = frames(&dir.join("MR2_shoulder/MR2_J2KI.dcm")).unwrap();
    let mean_diff = lossless[0]
        .image
        .pixels()
        .zip(lossy[0].image.pixels())
        .map(|(p, q)| (p.0[0] - q.0[0]).abs())
        .sum::<f32>()
        / (1024.0 * 1024.0);
    assert!(mean_diff < 0.01, "{mean_diff}");
}

#[test]
fn synthetic_mr_reads_back_in_every_encoding_it_can_be_written_in() {
    let dir = tempfile::tempdir().unwrap();
    let spec = MrSpec {
        window: Some((500.0, 1000.0)),
        ..MrSpec::default()
    };
    let expected = |x: u16, y: u16| {
        let v = f64::from(stored_value(&spec, x, y, 0));
        // LINEAR window of PS3.3 C.11.2.1.2 with centre 500 and width 1000.
        (((v - 499.5) / 999.0) + 0.5).clamp(0.0, 1.0) as f32
    };
    for ts in [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE, RLE] {
        let path = write_mr(&dir.path().join(format!("{ts}.dcm")), &spec, ts);
        let f = frames(&path).unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert_eq!(f.len(), 1);
        for (x, y) in [(0, 0), (32, 32), (20, 30), (50, 32)] {
            let got = f[0].image.get_pixel(u32::from(x), u32::from(y)).0[0];
            assert!((got - expected(x, y)).abs() < 1e-4, "{ts} ({x},{y}): {got}");
        }
        assert!(matches!(
            f[0].dicom.as_ref().unwrap().window,
            WindowUsed::File { .. }
        ));
    }
    // JPEG baseline is 8-bit and lossy.
    let spec8 = MrSpec {
        bits: 8,
        ..MrSpec::default()
    };
    let path = write_mr(&dir.path().join("jpeg.dcm"), &spec8, JPEG_BASELINE);
    let f = frames(&path).unwrap();
    let d = f[0].dicom.as_ref().unwrap();
    assert!(
        d.transfer_syntax.starts_with("JPEG Baseline"),
        "{}",
        d.transfer_syntax
    );
    let native = frames(&write_mr(
        &dir.path().join("native8.dcm"),
        &spec8,
        EXPLICIT_LE,
    ))
    .unwrap();
    let mean_diff = f[0]
        .image
        .pixels()
        .zip(native[0].image.pixels())
        .map(|(p, q)| (p.0[0] - q.0[0]).abs())
        .sum::<f32>()
        / 4096.0;
    assert!(mean_diff < 0.03, "JPEG differs by {mean_diff} on average");
}

#[test]
fn rescale_percentile_window_monochrome1_and_frames() {
    let dir = tempfile::tempdir().unwrap();
    // Signed 16-bit with a rescale and no window: the percentile window spans the real values.
    let spec = MrSpec {
        signed: true,
        slope: 2.0,
        intercept: -1000.0,
        ..MrSpec::default()
    };
    let f = frames(&write_mr(&dir.path().join("s.dcm"), &spec, EXPLICIT_LE)).unwrap();
    match &f[0].dicom.as_ref().unwrap().window {
        WindowUsed::Percentile { low, high } => {
            assert_eq!(*low, -1000.0, "background is 0 stored, -1000 real");
            assert!(*high > 600.0 && *high <= 1000.0, "{high}");
        }
        w => panic!("{w:?}"),
    }
    assert_eq!(f[0].image.get_pixel(0, 0).0[0], 0.0);
    let centre = f[0].image.get_pixel(40, 32).0[0];
    // MONOCHROME1: the same values, inverted.
    let inverted = MrSpec {
        photometric: "MONOCHROME1",
        ..spec.clone()
    };
    let g = frames(&write_mr(
        &dir.path().join("m1.dcm"),
        &inverted,
        EXPLICIT_LE,
    ))
    .unwrap();
    assert_eq!(g[0].image.get_pixel(0, 0).0[0], 1.0);
    assert!((g[0].image.get_pixel(40, 32).0[0] - (1.0 - centre)).abs() < 1e-6);
    // Multi-frame: one scan per frame, numbered.
    let multi = MrSpec {
        frames: 3,
        ..MrSpec::default()
    };
    let m = frames(&write_mr(&dir.path().join("mf.dcm"), &multi, RLE)).unwrap();
    let numbers: Vec<u32> = m.iter().map(|s| s.dicom.as_ref().unwrap().frame).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    assert!(
        Scan::load(&dir.path().join("mf.dcm")).is_err(),
        "one-scan load of 3 frames"
    );
    // Another modality written the same way is refused by name.
    let ct = MrSpec {
        modality: "CT",
        ..MrSpec::default()
    };
    let e = frames(&write_mr(&dir.path().join("ct.dcm"), &ct, EXPLICIT_LE)).unwrap_err();
    assert!(e.contains("modality CT"), "{e}");
}

fn predict_json(inputs: &[&Path]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .arg("predict")
        .args(inputs)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn predict_answers_every_slice_and_sums_up_each_series() {
    let dir = shared_dicom();
    let series = dir.join("brain_mr_series");
    let multi = dir.join("multiframe_mr/emri_small.dcm");
    let ct = dir.join("non_mr/CT_small.dcm");
    let v = predict_json(&[&series, &multi, &ct]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 20 + 10 + 1);
    let ct_row = results.last().unwrap();
    assert!(
        ct_row["error"].as_str().unwrap().contains("modality CT"),
        "{ct_row}"
    );
    let frames: Vec<u64> = results[20..30]
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, (0..10).collect::<Vec<u64>>());
    let summaries = v["series"].as_array().unwrap();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    let brain = &summaries[0];
    assert_eq!(brain["slices"], 20);
    assert_eq!(brain["series_description"], "FSE PD AXIAL OBL");
    let analysed = brain["analysed"].as_u64().unwrap();
    let refused = brain["refused"].as_u64().unwrap();
    assert_eq!(analysed + refused, 20);
    let votes: u64 = brain["votes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(votes, analysed - brain["uncertain"].as_u64().unwrap());
    let call = &brain["most_probable"];
    let support = call["supporting_slices"].as_array().unwrap();
    assert!(!support.is_empty());
    // Every supporting slice really says that class.
    for s in support {
        let row = results[..20]
            .iter()
            .find(|r| r["dicom"]["sop_instance_uid"] == s["sop_instance_uid"])
            .unwrap();
        assert_eq!(row["prediction"]["class_id"], call["class_id"]);
        assert_eq!(row["prediction"]["verdict"], "answer");
    }
    assert!(brain["rule"].as_str().unwrap().len() > 20);
}

#[test]
fn explain_draws_a_map_for_a_dicom_slice_and_numbers_frames() {
    let dir = shared_dicom();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .arg("explain")
        .arg(dir.join("brain_mr_series/brain_010.dcm"))
        .arg(dir.join("multiframe_mr/emri_small.dcm"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(stdout.contains("brain_010.dcm\tGrad-CAM of"), "{stdout}");
    assert!(out.path().join("brain_010.overlay.png").is_file());
    // Ten frames, each answered on a line of its own (drawn or refused).
    for k in 1..=10 {
        assert!(
            stdout.contains(&format!("emri_small.dcm#{k}\t")),
            "{stdout}"
        );
    }
}

#[test]
fn a_small_file_cannot_declare_its_way_to_gigabytes() {
    // RLE of a 64x64 frame, but a header claiming 200 frames of 4096 x 4096.
    let dir = tempfile::tempdir().unwrap();
    let spec = MrSpec::default();
    let mut ds = mr_dataset(&spec);
    ds.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::ROWS,
        dicom_core::VR::US,
        dicom_core::value::PrimitiveValue::from(4096u16),
    ));
    ds.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::COLUMNS,
        dicom_core::VR::US,
        dicom_core::value::PrimitiveValue::from(4096u16),
    ));
    ds.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::NUMBER_OF_FRAMES,
        dicom_core::VR::IS,
        dicom_core::value::PrimitiveValue::from("200"),
    ));
    let path = dir.path().join("bomb.dcm");
    encode(ds, &spec, RLE).write_to_file(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
    let e = frames(&path).unwrap_err();
    assert!(
        e.contains("would need") && e.contains("the limit is 128 MiB"),
        "{e}"
    );
}

#[test]
fn a_corrupt_rle_segment_is_refused_not_a_crash() {
    // A valid RLE frame whose segment is then made of PackBits no-ops: it decodes to no bytes
    // at all. dicom-transfer-syntax-registry 0.10 indexes past the end of it and panics (the
    // decode fuzz target found this); reading the file must refuse it with a sentence.
    let dir = tempfile::tempdir().unwrap();
    let spec = MrSpec {
        bits: 8,
        ..MrSpec::default()
    };
    let path = write_mr(&dir.path().join("rle.dcm"), &spec, RLE);
    let mut bytes = std::fs::read(&path).unwrap();
    // The RLE header of a one-segment frame: 1 segment, starting at byte 64 of the fragment.
    let header = [1u8, 0, 0, 0, 64, 0, 0, 0];
    let at = bytes
        .windows(8)
        .position(|w| w == header)
        .expect("the RLE header");
    let fragment_len = u32::from_le_bytes(bytes[at - 4..at].try_into().unwrap()) as usize;
    bytes[at + 64..at + fragment_len].fill(0x80);
    std::fs::write(&path, &bytes).unwrap();
    let e = frames(&path).unwrap_err();
    assert!(e.contains("pixel data"), "{e}");
}
