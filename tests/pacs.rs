//! `oncolens pacs watch` against a real Orthanc (Debian's `orthanc` and `orthanc-dicomweb`,
//! started here on loopback with a temporary storage folder, DICOMweb on and HTTP basic
//! authentication): one `--once` answers each MR series with an SR and a Grad-CAM secondary
//! capture series in its study, read back through DICOMweb and checked with DCMTK and by
//! parsing; a second run processes nothing new; a series that cannot be read is recorded as
//! failed; an unreachable PACS is retried, then a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::dicom::*;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use oncolens::imaging::dicom::{parse, text};
use reqwest::blocking::Client;

const USER: &str = "oncolens";
const PASSWORD: &str = "secret-for-tests";
const ORTHANC: &str = "/usr/sbin/Orthanc";
const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

struct Orthanc {
    child: Child,
    port: u16,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Orthanc {
    fn start(dir: &Path) -> Self {
        assert!(
            Path::new(ORTHANC).is_file() && Path::new(DICOMWEB_PLUGIN).is_file(),
            "Orthanc with its DICOMweb plugin is needed: install the Debian packages orthanc and orthanc-dicomweb"
        );
        let port = common::free_port();
        let storage = dir.join("orthanc-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = serde_json::json!({
            "Name": "oncolens-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": port,
            "DicomServerEnabled": false,
            "DicomPort": common::free_port(),
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": true,
            "RegisteredUsers": { USER: PASSWORD },
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/" },
        });
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let child = Command::new(ORTHANC)
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let o = Orthanc { child, port };
        let started = Instant::now();
        while o.get("/system").is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Orthanc did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Result<reqwest::blocking::Response, reqwest::Error> {
        Client::new()
            .get(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()?
            .error_for_status()
    }

    fn upload(&self, file: &Path) {
        let r = Client::new()
            .post(self.url("/instances"))
            .basic_auth(USER, Some(PASSWORD))
            .body(std::fs::read(file).unwrap())
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "upload of {}: {}",
            file.display(),
            r.status()
        );
    }

    fn instance_count(&self) -> usize {
        let v: serde_json::Value = self.get("/statistics").unwrap().json().unwrap();
        v["CountInstances"].as_u64().unwrap() as usize
    }

    /// QIDO-RS: (modality, series UID) of every series of a study.
    fn series_of(&self, study: &str) -> Vec<(String, String)> {
        let v: Vec<serde_json::Value> = self
            .get(&format!("/dicom-web/studies/{study}/series"))
            .unwrap()
            .json()
            .unwrap();
        v.iter()
            .map(|s| {
                (
                    s["00080060"]["Value"][0].as_str().unwrap().to_string(),
                    s["0020000E"]["Value"][0].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// WADO-RS: every instance of a series, split from its multipart/related answer.
    fn retrieve(&self, study: &str, series: &str) -> Vec<Vec<u8>> {
        let r = Client::new()
            .get(self.url(&format!("/dicom-web/studies/{study}/series/{series}")))
            .basic_auth(USER, Some(PASSWORD))
            .header("Accept", "multipart/related; type=\"application/dicom\"")
            .send()
            .unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let body = r.bytes().unwrap().to_vec();
        let delimiter = format!("--{boundary}");
        let mut parts = Vec::new();
        let mut rest = &body[..];
        while let Some(start) = find(rest, delimiter.as_bytes()) {
            rest = &rest[start + delimiter.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let head_end = find(rest, b"\r\n\r\n").unwrap() + 4;
            let end = find(&rest[head_end..], delimiter.as_bytes()).unwrap();
            parts.push(rest[head_end..head_end + end - 2].to_vec());
            rest = &rest[head_end + end..];
        }
        parts
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn watch(url: &str, db: &Path, password: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["pacs", "watch", "--once", "--url", url, "--pacs-user", USER])
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .env("ONCOLENS_PACS_PASSWORD", password)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap()
}

fn tool(name: &str, file: &Path) -> String {
    let out = Command::new(name)
        .arg(file)
        .output()
        .unwrap_or_else(|_| panic!("{name} not found: install DCMTK (Debian package dcmtk)"));
    assert!(
        out.status.success(),
        "{name} refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uid(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    text(o, tag).unwrap_or_default()
}

#[test]
fn watch_answers_each_mr_series_into_its_study_once() {
    let dir = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(dir.path());
    let shared = shared_dicom();
    // A real brain series (four slices), a synthetic one full of PHI, and an MR the reader
    // cannot decode (JPEG-LS).
    let real: Vec<PathBuf> = (8..=11)
        .map(|i| shared.join(format!("brain_mr_series/brain_{i:03}.dcm")))
        .collect();
    for f in &real {
        orthanc.upload(f);
    }
    let phi = phi_fixture(&dir.path().join("phi"), None);
    for f in &phi {
        orthanc.upload(f);
    }
    orthanc.upload(&shared.join("transfer_syntaxes/MR_small/MR_small_jpeg_ls_lossless.dcm"));
    let before = orthanc.instance_count();
    assert_eq!(before, 7);

    let db = dir.path().join("state.sqlite");
    let url = orthanc.url("/dicom-web");
    let run = watch(&url, &db, PASSWORD);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(
            "3 MR series found: 2 analysed, 0 skipped (done, parked or waiting), 1 failed"
        ),
        "{stdout}"
    );
    // Each series answered or failed is in the audit trail, named by its key, not its UIDs.
    let trail = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["audit-log", "export", "--database"])
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&trail.stdout);
    assert_eq!(
        csv.matches(",pacs-watcher,pacs.answer,").count(),
        3,
        "{csv}"
    );
    assert_eq!(csv.matches(",failed,").count(), 1, "{csv}");
    assert!(
        !csv.contains("1.2.826.0.1.3680043"),
        "a UID in the trail: {csv}"
    );

    // The real series' study now holds an SR and a secondary-capture series.
    let source: Vec<InMemDicomObject> = real
        .iter()
        .map(|f| parse(&std::fs::read(f).unwrap()).unwrap().into_inner())
        .collect();
    let study = uid(&source[0], tags::STUDY_INSTANCE_UID);
    let series = orthanc.series_of(&study);
    let sr_series = &series
        .iter()
        .find(|(m, _)| m == "SR")
        .expect("an SR series")
        .1;
    let sc_series = &series
        .iter()
        .find(|(m, _)| m == "OT")
        .expect("a Grad-CAM series")
        .1;
    let sr_bytes = orthanc.retrieve(&study, sr_series);
    assert_eq!(sr_bytes.len(), 1);
    let sr_path = dir.path().join("sr.dcm");
    std::fs::write(&sr_path, &sr_bytes[0]).unwrap();
    tool("dcmdump", &sr_path);
    let tree = tool("dsrdump", &sr_path);
    for expected in [
        "Comprehensive SR Document",
        "Algorithm Name",
        "Algorithm Version",
        "Series finding",
        "Decision rule",
        "Input gate",
        "Probability of Glioma",
        "Intended use",
    ] {
        assert!(
            tree.contains(expected),
            "{expected} missing from the SR:\n{tree}"
        );
    }
    assert_eq!(tree.matches("Slice result").count(), 4, "{tree}");
    let sr = parse(&sr_bytes[0]).unwrap();
    assert_eq!(uid(&sr, tags::STUDY_INSTANCE_UID), study);
    assert_eq!(
        uid(&sr, tags::PATIENT_ID),
        uid(&source[0], tags::PATIENT_ID),
        "filed with its patient"
    );
    // The evidence lists exactly the source instances.
    let evidence = sr
        .get(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(uid(&evidence[0], tags::STUDY_INSTANCE_UID), study);
    let ref_series = evidence[0]
        .get(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        uid(&ref_series[0], tags::SERIES_INSTANCE_UID),
        uid(&source[0], tags::SERIES_INSTANCE_UID)
    );
    let mut referenced: Vec<String> = ref_series[0]
        .get(tags::REFERENCED_SOP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|i| uid(i, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    let mut expected: Vec<String> = source
        .iter()
        .map(|o| uid(o, tags::SOP_INSTANCE_UID))
        .collect();
    referenced.sort();
    expected.sort();
    assert_eq!(referenced, expected);
    // The IHE AI Results equipment identification.
    let equipment = sr
        .get(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let purpose = equipment[0]
        .get(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(uid(&purpose[0], tags::CODE_MEANING), "Processing Algorithm");
    assert_eq!(uid(&purpose[0], tags::CODING_SCHEME_DESIGNATOR), "99IHE");
    assert_eq!(uid(&purpose[1], tags::CODE_VALUE), "109102");
    assert_eq!(
        uid(&equipment[0], tags::MANUFACTURER_MODEL_NAME),
        "resnet-fine-150px"
    );
    assert!(!uid(&equipment[0], tags::SOFTWARE_VERSIONS).is_empty());

    // The Grad-CAM series: derived, not for diagnosis, pointing at its source slices.
    let captures = orthanc.retrieve(&study, sc_series);
    assert!(!captures.is_empty() && captures.len() <= 4);
    let sc_path = dir.path().join("sc.dcm");
    std::fs::write(&sc_path, &captures[0]).unwrap();
    let dump = tool("dcmdump", &sc_path);
    assert!(dump.contains("DERIVED\\SECONDARY"), "{dump}");
    assert!(dump.contains("BurnedInAnnotation"));
    let sc = parse(&captures[0]).unwrap();
    assert!(uid(&sc, tags::DERIVATION_DESCRIPTION).contains("not for diagnosis"));
    let src = sc
        .get(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert!(expected.contains(&uid(&src[0], tags::REFERENCED_SOP_INSTANCE_UID)));

    // The PHI study's results carry only what files them: none of the source's other
    // identifying attributes travel into the SR.
    let phi_study = "1.2.826.0.1.3680043.99.1";
    let phi_series = orthanc.series_of(phi_study);
    let phi_sr = &phi_series
        .iter()
        .find(|(m, _)| m == "SR")
        .expect("an SR for the PHI study")
        .1;
    let phi_sr_bytes = orthanc.retrieve(phi_study, phi_sr).remove(0);
    let filed = [
        "DOE^JANE",
        "MRN-4711-0815",
        "19610412",
        "ACC77123",
        "HOUSE^GREGORY",
        "STUDY4242",
        "20240917",
        "142233",
    ];
    let not_for_filing: Vec<&str> = PHI
        .iter()
        .map(|(_, _, v)| *v)
        .filter(|v| !filed.contains(v))
        .collect();
    // Address, other IDs, institution, operators, station, device, comments, private tags...
    assert_eq!(not_for_filing.len(), 11, "{not_for_filing:?}");
    for value in not_for_filing {
        assert!(
            find(&phi_sr_bytes, value.as_bytes()).is_none(),
            "{value} travelled into the SR"
        );
    }

    // A second run finds the same series and does nothing; the failure waits for its retry.
    let again = watch(&url, &db, PASSWORD);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 MR series found: 0 analysed, 3 skipped"),
        "{stdout}"
    );
    let after_first = orthanc.instance_count();
    assert!(after_first > before);
    assert_eq!(orthanc.instance_count(), after_first);

    // The failure is recorded with its reason, under a key that is no UID (in the database
    // file or its write-ahead log, whichever holds it now).
    let mut state =
        std::fs::read(&db).unwrap_or_else(|e| panic!("no state database at {}: {e}", db.display()));
    // The write-ahead log exists only until a checkpoint folds it into the file: absent is
    // fine, any other error fails.
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    match std::fs::read(&wal) {
        Ok(bytes) => state.extend(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot read {}: {e}", wal.display()),
    }
    assert!(
        find(&state, b"JPEG-LS").is_some(),
        "the failure's reason is stored"
    );
    assert!(
        find(&state, study.as_bytes()).is_none(),
        "no UID in the state"
    );

    // Wrong credentials: the PACS's answer, clearly.
    let denied = watch(&url, &dir.path().join("other.sqlite"), "wrong");
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("HTTP 401"), "{stderr}");
}

#[test]
fn an_unreachable_pacs_is_retried_then_named_in_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/dicom-web", common::free_port());
    let started = Instant::now();
    let run = watch(&url, &dir.path().join("state.sqlite"), PASSWORD);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("attempt 1 of 4"), "{stderr}");
    assert!(stderr.contains("the PACS cannot be reached"), "{stderr}");
    // Three waits of 0.5, 1 and 2 s between the four attempts.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_server_runs_the_watcher_and_shows_failed_series() {
    let dir = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(dir.path());
    let shared = shared_dicom();
    orthanc.upload(&shared.join("brain_mr_series/brain_012.dcm"));
    orthanc.upload(&shared.join("transfer_syntaxes/MR_small/MR_small_jpeg_ls_lossless.dcm"));
    let url = orthanc.url("/dicom-web");
    let (mut server, base) = common::spawn_server_binary(
        &dir.path().join("db.sqlite"),
        &[
            "--pacs-url",
            &url,
            "--pacs-user",
            USER,
            "--pacs-password",
            PASSWORD,
            "--pacs-interval",
            "1",
        ],
    );
    let started = Instant::now();
    let page = loop {
        let page = Client::new()
            .get(format!("{base}/pacs"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if page.contains("1 series answered") && page.contains("JPEG-LS") {
            break page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the watcher did not answer: {page}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The page names the PACS (its slashes escaped as HTML).
    assert!(
        page.contains(&format!("127.0.0.1:{}", orthanc.port)),
        "{page}"
    );
    assert!(page.contains("failed"), "{page}");
    // A person releases the failed series from the page (a same-origin form post): it is
    // tried again at once, so its attempts count restarts at 1.
    let key = page
        .split("action=\"/pacs/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    assert_eq!(key.len(), 64);
    let r = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/pacs/{key}/retry"))
        .header("Origin", base.clone())
        .form(&[("csrf", common::csrf_of(&page).unwrap())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = Client::new()
        .post(format!("{base}/pacs/{}/retry", "0".repeat(64)))
        .header("Origin", base.clone())
        .form(&[("csrf", common::csrf_of(&page).unwrap())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let _ = server.kill();
    let _ = server.wait();
    let study = text(
        &parse(&std::fs::read(shared.join("brain_mr_series/brain_012.dcm")).unwrap()).unwrap(),
        tags::STUDY_INSTANCE_UID,
    )
    .unwrap();
    assert!(orthanc.series_of(&study).iter().any(|(m, _)| m == "SR"));
}

#[test]
fn two_watchers_on_one_database_answer_each_series_once() {
    let dir = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(dir.path());
    let shared = shared_dicom();
    let mut files: Vec<PathBuf> = (8..=11)
        .map(|i| shared.join(format!("brain_mr_series/brain_{i:03}.dcm")))
        .collect();
    files.extend(phi_fixture(&dir.path().join("phi"), None));
    for f in &files {
        orthanc.upload(f);
    }
    let studies: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| {
            uid(
                &parse(&std::fs::read(f).unwrap()).unwrap(),
                tags::STUDY_INSTANCE_UID,
            )
        })
        .collect();
    assert_eq!(studies.len(), 2);
    // The database exists before the watchers start, as it does under replicas.
    let db = dir.path().join("shared.sqlite");
    let database = format!("sqlite://{}", db.display());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(oncolens::database::open(&database))
        .unwrap();

    // Two watchers at once, as on two replicas: each series is claimed by one of them.
    let url = orthanc.url("/dicom-web");
    let watchers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_oncolens"))
                .args([
                    "pacs",
                    "watch",
                    "--once",
                    "--url",
                    &url,
                    "--pacs-user",
                    USER,
                ])
                .args(["--database", &database])
                .env("ONCOLENS_PACS_PASSWORD", PASSWORD)
                .env_remove("ONCOLENS_MODEL")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut analysed = 0;
    for w in watchers {
        let out = w.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = stdout
            .split("found: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no poll report in {stdout}"));
        analysed += n;
    }
    assert_eq!(analysed, 2, "the two series were analysed once in all");
    for study in &studies {
        let reports: Vec<_> = orthanc
            .series_of(study)
            .into_iter()
            .filter(|(modality, _)| modality == "SR")
            .collect();
        assert_eq!(reports.len(), 1, "one report in study {study}: {reports:?}");
        assert_eq!(orthanc.retrieve(study, &reports[0].1).len(), 1);
    }
}
