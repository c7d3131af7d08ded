//! `oncolens deidentify`: the PHI of a fixture is listed before and none of it survives in the
//! bytes written; one check per action code of PS3.15 Table E.1-1 (X, Z, D, K, U); UIDs and
//! references consistent across a study; the pseudonym key; Burned In Annotation refused.
//! The output is also read by DCMTK's dcmdump, an independent parser.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::dicom::*;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use oncolens::imaging::dicom::{parse, text};

fn deidentify(inputs: &[&Path], out: &Path, key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncolens"));
    cmd.arg("deidentify").args(inputs).arg("--out").arg(out);
    cmd.env_remove("ONCOLENS_PSEUDONYM_KEY");
    if let Some(k) = key {
        cmd.env("ONCOLENS_PSEUDONYM_KEY", k);
    }
    cmd.output().unwrap()
}

fn written(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn dcmdump(path: &Path) -> String {
    let out = Command::new("dcmdump")
        .arg(path)
        .output()
        .expect("dcmdump not found: install DCMTK (Debian package dcmtk)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn no_phi_survives_and_each_action_code_does_what_the_standard_says() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = phi_fixture(dir.path(), None);
    let before = std::fs::read(&inputs[0]).unwrap();
    for (_, _, value) in PHI {
        assert!(contains(&before, value), "fixture lacks {value}");
    }
    let out = dir.path().join("out");
    let run = deidentify(&[&inputs[0], &inputs[1]], &out, None);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let files = written(&out);
    assert_eq!(files.len(), 2);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for (_, _, value) in PHI {
            assert!(
                !contains(&bytes, value),
                "{value} survived in {}",
                f.display()
            );
        }
        for original in ["1.2.826.0.1.3680043.99", "DOE", "CHECKER"] {
            assert!(!contains(&bytes, original), "{original} survived");
        }
        assert!(
            !f.to_string_lossy().contains("DOE"),
            "file name keeps the patient"
        );
        let dump = dcmdump(f);
        assert!(dump.contains("PatientIdentityRemoved") && dump.contains("[YES]"));
        assert!(dump.contains("113100"), "{dump}");
    }
    let objs: Vec<_> = files
        .iter()
        .map(|f| parse(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    let first = objs
        .iter()
        .find(|o| text(o, tags::INSTANCE_NUMBER).as_deref() == Some("1"))
        .unwrap();
    let second = objs
        .iter()
        .find(|o| text(o, tags::INSTANCE_NUMBER).as_deref() == Some("2"))
        .unwrap();
    // Z: present and empty.
    for tag in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::STUDY_DATE,
        tags::ACCESSION_NUMBER,
    ] {
        assert!(first.get(tag).is_some(), "{tag} removed instead of emptied");
        assert_eq!(text(first, tag), None, "{tag} not emptied");
    }
    // X: gone (table rows and the private block).
    for tag in [
        Tag(0x0010, 0x1000),
        tags::INSTITUTION_NAME,
        tags::PATIENT_ADDRESS,
        tags::IMAGE_COMMENTS,
        Tag(0x0009, 0x0010),
        Tag(0x0009, 0x1001),
    ] {
        assert!(first.get(tag).is_none(), "{tag} kept");
    }
    // D: a dummy value in the sequence item.
    let observers = first
        .get(tags::VERIFYING_OBSERVER_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        text(&observers[0], tags::VERIFYING_OBSERVER_NAME).as_deref(),
        Some("ANONYMOUS")
    );
    // K: modality and pixels unchanged.
    assert_eq!(text(first, tags::MODALITY).as_deref(), Some("MR"));
    let pixels = |o: &InMemDicomObject| {
        o.get(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    let original = parse(&before).unwrap();
    assert_eq!(pixels(first), pixels(&original));
    // U: new UIDs, the same study and series for both, the reference pointing at the new
    // UID of the first slice, and the file meta agreeing.
    let uid = |o: &InMemDicomObject, t| text(o, t).unwrap();
    assert!(uid(first, tags::STUDY_INSTANCE_UID).starts_with("2.25."));
    assert_eq!(
        uid(first, tags::STUDY_INSTANCE_UID),
        uid(second, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(
        uid(first, tags::SERIES_INSTANCE_UID),
        uid(second, tags::SERIES_INSTANCE_UID)
    );
    assert_ne!(
        uid(first, tags::SOP_INSTANCE_UID),
        uid(second, tags::SOP_INSTANCE_UID)
    );
    let refs = second
        .get(tags::REFERENCED_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        uid(&refs[0], tags::REFERENCED_SOP_INSTANCE_UID),
        uid(first, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(
        uid(&refs[0], tags::REFERENCED_SOP_CLASS_UID),
        MR_IMAGE_STORAGE,
        "standard UIDs are kept"
    );
    assert_eq!(
        first
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0'),
        uid(first, tags::SOP_INSTANCE_UID)
    );
    // The de-identified files are still analysable.
    let f = oncolens::imaging::Scan::load_frames(&files[0]).unwrap();
    assert_eq!(f.len(), 1);
}

#[test]
fn a_pseudonym_key_gives_the_same_uids_and_patient_key_on_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = phi_fixture(dir.path(), None);
    let run = |name: &str, key: Option<&str>| {
        let out = dir.path().join(name);
        let r = deidentify(&[&inputs[0]], &out, key);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let files = written(&out);
        parse(&std::fs::read(&files[0]).unwrap()).unwrap()
    };
    let a = run("a", Some("hospital-secret"));
    let b = run("b", Some("hospital-secret"));
    let c = run("c", Some("other-secret"));
    let d = run("d", None);
    let e = run("e", None);
    let study = |o: &InMemDicomObject| text(o, tags::STUDY_INSTANCE_UID).unwrap();
    assert_eq!(study(&a), study(&b));
    assert_ne!(study(&a), study(&c));
    assert_ne!(study(&d), study(&e), "without a key, runs are not linkable");
    let patient = text(&a, tags::PATIENT_ID).unwrap();
    assert!(patient.starts_with("ONC-"), "{patient}");
    assert_eq!(text(&b, tags::PATIENT_ID).unwrap(), patient);
    assert_ne!(text(&c, tags::PATIENT_ID).unwrap(), patient);
    assert_eq!(text(&d, tags::PATIENT_ID), None);
}

#[test]
fn burned_in_annotation_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = phi_fixture(dir.path(), Some("YES"));
    let out = dir.path().join("out");
    let run = deidentify(&[&inputs[0]], &out, None);
    assert!(!run.status.success());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("Burned In Annotation"), "{stdout}");
    assert!(written(&out).is_empty());
    // "NO" is fine.
    let dir2 = tempfile::tempdir().unwrap();
    let inputs = phi_fixture(dir2.path(), Some("NO"));
    let run = deidentify(&[&inputs[0]], &dir2.path().join("out"), None);
    assert!(run.status.success());
}

#[test]
fn a_multi_valued_sop_instance_uid_is_refused() {
    // What the deidentify fuzz target found: two values as the data set's SOP Instance UID,
    // each replaced, the pair written into the file meta (unreadable) and the output's name.
    let spec = MrSpec::default();
    let mut obj = encode(mr_dataset(&spec), &spec, EXPLICIT_LE);
    obj.put(dicom_core::DataElement::new(
        tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::dicom_value!(
            Strs,
            [
                "1.2.826.0.1.3680043.99.1.1.1",
                "1.2.826.0.1.3680043.99.1.1.2"
            ]
        ),
    ));
    let refused = oncolens::deid::Deidentifier::new(Some("k")).deidentify(&obj);
    let Err(e) = refused else {
        panic!("a data set with two SOP Instance UIDs was de-identified")
    };
    assert!(
        oncolens::core::error::sentence(&e).contains("SOP Instance UID"),
        "{}",
        oncolens::core::error::sentence(&e)
    );
}
