//! The web app in real headless Chromium (Debian's `chromium` + `chromium-driver`), driven over
//! WebDriver: upload a scan, read the class and probabilities, toggle the heat-map, send
//! feedback, open the history, and see a colour photo refused as "not a brain MRI slice"; sign
//! in as a viewer and as an admin and see each role's pages. Screenshots go to
//! `target/browser-artifacts/`.
//! Without Chromium the test fails and says what to install; it is never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser(profile: &Path) -> (fantoccini::Client, Driver) {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} not found: install Debian's {package} (apt-get install chromium chromium-driver); .ci/run does this"
        );
    }
    let port = common::free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session with headless Chromium");
    (client, driver)
}

async fn wait_for(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Opens the upload page, chooses `file` in the picker and presses Analyse.
async fn upload_through_the_form(c: &fantoccini::Client, base: &str, file: &Path) {
    c.goto(base).await.unwrap();
    wait_for(c, "#image")
        .await
        .send_keys(&file.display().to_string())
        .await
        .unwrap();
    c.find(Locator::Css("#analyse"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_read_toggle_feedback_history_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server(&tmp.path().join("web.db"), 2, 8, 50 * 1024 * 1024);
    let base = format!("http://{addr}");
    // A real slice: the bundled input gate refuses synthetic ones.
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/brain-tumor-mri/Testing/glioma_tumor/image(1).jpg");
    assert!(
        real.is_file(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        real.display()
    );
    let scan = tmp.path().join("patient scan (1).jpg");
    std::fs::copy(&real, &scan).unwrap();
    let junk = tmp.path().join("notes.png");
    std::fs::write(&junk, b"this is not an image").unwrap();
    let (c, _driver) = browser(&tmp.path().join("profile")).await;
    let out = artifacts();

    // A file that is not an image: a plain sentence, no navigation.
    upload_through_the_form(&c, &base, &junk).await;
    let started = Instant::now();
    loop {
        // The form is sent as it is; the server answers with the form and the reason.
        let error = match c.find(Locator::Css("#error")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if error.contains("could not be read") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no error shown; error {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A scan: the result page shows the class in words and every probability.
    upload_through_the_form(&c, &base, &scan).await;
    let label = wait_for(&c, "#label").await.text().await.unwrap();
    assert!(
        [
            "Glioma",
            "Meningioma",
            "No tumour",
            "Pituitary",
            "Uncertain",
            "Tumour not ruled out",
        ]
        .contains(&label.as_str()),
        "{label}"
    );
    let rows = c.find_all(Locator::Css("#probabilities tr")).await.unwrap();
    assert_eq!(rows.len(), 4);
    let page_url = c.current_url().await.unwrap();
    assert!(page_url.path().starts_with("/analyses/"));
    assert!(
        c.source()
            .await
            .unwrap()
            .contains("Decision support, not a diagnosis")
    );
    std::fs::write(out.join("result.png"), c.screenshot().await.unwrap()).unwrap();

    // Heat-map: on by default, off with the toggle, opacity follows the slider.
    let heat = c.find(Locator::Css("#heatmap")).await.unwrap();
    assert!(heat.is_displayed().await.unwrap());
    c.find(Locator::Css("#heatmap-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(!heat.is_displayed().await.unwrap());
    c.find(Locator::Css("#heatmap-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.execute(
        "const s = document.getElementById('heatmap-opacity'); s.value = 25; s.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    let opacity = c
        .execute(
            "return document.getElementById('heatmap').style.opacity;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(opacity.as_str(), Some("0.25"));

    // Feedback: correct the class with a comment.
    let select = c.find(Locator::Css("#feedback-class")).await.unwrap();
    select.select_by_value("meningioma_tumor").await.unwrap();
    c.find(Locator::Css("#feedback-comment"))
        .await
        .unwrap()
        .send_keys("dural tail visible")
        .await
        .unwrap();
    c.find(Locator::Css("#feedback-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = wait_for(&c, "#notice").await.text().await.unwrap();
    assert!(notice.contains("saved"), "{notice}");
    let list = wait_for(&c, "#feedback-list").await.text().await.unwrap();
    assert!(
        list.contains("meningioma_tumor") && list.contains("dural tail visible"),
        "{list}"
    );

    // History lists it and re-opens it.
    c.goto(&format!("{base}/history")).await.unwrap();
    let table = wait_for(&c, "#history").await.text().await.unwrap();
    assert!(table.contains("patient scan (1).jpg"), "{table}");
    std::fs::write(out.join("history.png"), c.screenshot().await.unwrap()).unwrap();
    c.find(Locator::LinkText("patient scan (1).jpg"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, "#label").await;
    assert_eq!(c.current_url().await.unwrap().path(), page_url.path());

    // A colour photo gets no tumour type: the page says why.
    let photo = tmp.path().join("holiday.png");
    common::non_mri::synthetic_non_mri(1, 9)
        .into_iter()
        .find(|(k, _)| *k == "colour-shapes")
        .unwrap()
        .1
        .save(&photo)
        .unwrap();
    upload_through_the_form(&c, &base, &photo).await;
    let label = wait_for(&c, "#label").await.text().await.unwrap();
    assert_eq!(label, "Not a brain MRI slice");
    let reasons = wait_for(&c, "#input-reasons").await.text().await.unwrap();
    assert!(reasons.contains("colour picture"), "{reasons}");
    std::fs::write(out.join("not-mri.png"), c.screenshot().await.unwrap()).unwrap();

    // A head CT is greyscale with a dark background, so only the input gate can tell: the
    // page says it looks like a CT and shows the gate's score.
    let ct_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/non-mri/head_ct");
    assert!(
        ct_dir.is_dir(),
        "{} is missing: this test needs the shared non-MRI set (see its SOURCE.md)",
        ct_dir.display()
    );
    let mut cts: Vec<PathBuf> = std::fs::read_dir(&ct_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cts.sort();
    // The page is under test, not the gate's rate (docs/gate.md): the first CT it refuses.
    let predictor = oncolens::inference::Predictor::load_default().unwrap();
    let refused_ct = cts
        .iter()
        .find(|f| {
            predictor
                .predict_file(f)
                .unwrap()
                .rejection_reasons()
                .iter()
                .any(|r| r.contains("CT"))
        })
        .expect("the gate refuses none of the shared head CTs");
    let ct = tmp.path().join("head scan.png");
    std::fs::copy(refused_ct, &ct).unwrap();
    upload_through_the_form(&c, &base, &ct).await;
    let label = wait_for(&c, "#label").await.text().await.unwrap();
    assert_eq!(label, "Not a brain MRI slice");
    let reasons = wait_for(&c, "#input-reasons").await.text().await.unwrap();
    assert!(reasons.contains("looks like a CT slice"), "{reasons}");
    let gate = wait_for(&c, "#gate-score").await.text().await.unwrap();
    assert!(
        gate.contains("brain-MRI score") && gate.contains("refused"),
        "{gate}"
    );
    // No heat-map is drawn over a refused image.
    assert!(c.find(Locator::Css("#heatmap")).await.is_err());
    wait_for(&c, "#no-heatmap").await;
    std::fs::write(out.join("head-ct.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();
}

/// A zip of a DICOM series through the upload form: the batch page shows the series summary
/// and a strip with a class and a heat-map per slice.
#[tokio::test(flavor = "multi_thread")]
async fn a_dicom_series_through_the_form_shows_its_summary_and_strip() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server(&tmp.path().join("web.db"), 2, 8, 50 * 1024 * 1024);
    let base = format!("http://{addr}");
    let series = common::dicom::shared_dicom().join("brain_mr_series");
    let zip_path = tmp.path().join("series.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for i in 8..=12 {
            let name = format!("brain_{i:03}.dcm");
            z.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(&std::fs::read(series.join(&name)).unwrap())
                .unwrap();
        }
        z.finish().unwrap();
    }
    let (c, _driver) = browser(&tmp.path().join("profile")).await;
    upload_through_the_form(&c, &base, &zip_path).await;
    wait_for(&c, "#strip").await;
    let slices = c.find_all(Locator::Css("#strip .slice")).await.unwrap();
    assert_eq!(slices.len(), 5);
    let summary = wait_for(&c, "#series-1").await.text().await.unwrap();
    assert!(summary.contains("5 slices"), "{summary}");
    assert!(summary.contains("Series 1 (MR)"), "{summary}");
    let first = slices[0].text().await.unwrap();
    assert!(first.contains("DICOM MR image 8"), "{first}");
    let heatmaps = c
        .find_all(Locator::Css("#strip .slice-heatmap"))
        .await
        .unwrap();
    let refused = c
        .find_all(Locator::Css("#strip .verdict-not_brain_mri"))
        .await
        .unwrap();
    assert_eq!(heatmaps.len() + refused.len(), 5);
    std::fs::write(
        artifacts().join("dicom-series.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    // Each slice opens its own result page.
    slices[0]
        .find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, "#label").await;
    c.close().await.unwrap();
}

async fn sign_in_through_the_form(c: &fantoccini::Client, base: &str, name: &str, password: &str) {
    c.goto(&format!("{base}/history")).await.unwrap();
    // Not signed in: the page asks for it, and comes back afterwards.
    wait_for(c, "#login-form").await;
    c.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_shows_each_role_its_own_pages_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("roles.db");
    let password = "correct horse battery staple";
    {
        let pool = oncolens::database::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        use oncolens::security::{Role, accounts};
        accounts::add(&pool, "alice", Role::Admin, password, 0)
            .await
            .unwrap();
        accounts::add(&pool, "victor", Role::Viewer, password, 0)
            .await
            .unwrap();
    }
    let addr = common::start_server(&db, 1, 2, 8 * 1024 * 1024);
    let base = format!("http://{addr}");
    let (c, _driver) = browser(&tmp.path().join("profile")).await;
    let out = artifacts();

    // A wrong password: said so, still on the sign-in page.
    sign_in_through_the_form(&c, &base, "victor", "not the password at all").await;
    let error = wait_for(&c, "#error").await.text().await.unwrap();
    assert!(error.contains("Wrong name or password"), "{error}");

    // The viewer: the history, no upload form, no admin pages.
    sign_in_through_the_form(&c, &base, "victor", password).await;
    let who = wait_for(&c, "#signed-in-as").await.text().await.unwrap();
    assert_eq!(who, "victor (viewer)");
    assert!(c.current_url().await.unwrap().path().ends_with("/history"));
    assert!(c.find(Locator::Css("#nav-audit")).await.is_err());
    c.goto(&base).await.unwrap();
    wait_for(&c, "#read-only").await;
    assert!(c.find(Locator::Css("#upload-form")).await.is_err());
    assert!(c.find(Locator::Css("#unprotected")).await.is_err());
    c.goto(&format!("{base}/admin/audit")).await.unwrap();
    let refused = wait_for(&c, "#error").await.text().await.unwrap();
    assert!(refused.contains("needs the admin role"), "{refused}");
    std::fs::write(
        out.join("viewer-refused.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, "#login-form").await;

    // The admin: the upload form and the audit trail, which verifies and shows the sign-ins.
    sign_in_through_the_form(&c, &base, "alice", password).await;
    let who = wait_for(&c, "#signed-in-as").await.text().await.unwrap();
    assert_eq!(who, "alice (admin)");
    c.goto(&base).await.unwrap();
    wait_for(&c, "#upload-form").await;
    c.find(Locator::Css("#nav-audit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let chain = wait_for(&c, "#chain").await.text().await.unwrap();
    assert!(chain.contains("The chain verifies"), "{chain}");
    let table = c
        .find(Locator::Css("#audit"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "session.sign_in",
        "victor",
        "alice",
        "denied",
        "session.sign_out",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    std::fs::write(out.join("admin-audit.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();
}

/// The number in "N analyses have no feedback yet" on the review page.
async fn pending_on_page(c: &fantoccini::Client) -> u64 {
    let text = wait_for(c, "#queue-count").await.text().await.unwrap();
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"))
}

/// The count on the review page now; `None` while the page is reloading (the element found
/// may be gone before its text is read).
async fn pending_now(c: &fantoccini::Client) -> Option<u64> {
    let count = c.find(Locator::Css("#queue-count")).await.ok()?;
    let text = count.text().await.ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Waits until the review page shows `n` pending analyses (after a key sent the form).
async fn wait_for_pending(c: &fantoccini::Client, n: u64) {
    let started = Instant::now();
    loop {
        if pending_now(c).await == Some(n) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the queue did not go down to {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn review_queue_takes_verdicts_from_the_keyboard_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server(&tmp.path().join("review.db"), 2, 8, 8 << 20);
    let base = format!("http://{addr}");
    for (class, n) in [("glioma_tumor", 1), ("no_tumor", 1), ("pituitary_tumor", 1)] {
        let bytes = std::fs::read(common::real_slice(class, n)).unwrap();
        let base = base.clone();
        let (status, a) =
            tokio::task::spawn_blocking(move || common::upload_api(&base, "scan.jpg", bytes))
                .await
                .unwrap();
        assert_eq!(status, 201, "{a}");
    }
    let queue: serde_json::Value = reqwest::get(format!("{base}/api/v1/review"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order: Vec<String> = queue["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["analysis"]["id"].as_str().unwrap().to_string())
        .collect();
    let (c, _driver) = browser(&tmp.path().join("profile")).await;
    let out = artifacts();

    c.goto(&format!("{base}/review")).await.unwrap();
    assert_eq!(pending_on_page(&c).await, 3);
    // The most informative first, as the API orders them.
    let shown = wait_for(&c, "#review-item")
        .await
        .attr("data-analysis")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown, order[0]);
    std::fs::write(out.join("review-queue.png"), c.screenshot().await.unwrap()).unwrap();
    // c: confirm; 2: the second class; n: not assessable. Typing in the comment box is not a key.
    let body = c.find(Locator::Css("body")).await.unwrap();
    body.send_keys("c").await.unwrap();
    wait_for_pending(&c, 2).await;
    wait_for(&c, "#notice").await;
    let comment = c.find(Locator::Css("#review-comment")).await.unwrap();
    comment.send_keys("cnn").await.unwrap();
    assert_eq!(
        pending_on_page(&c).await,
        2,
        "keys typed in the comment sent nothing"
    );
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("2")
        .await
        .unwrap();
    wait_for_pending(&c, 1).await;
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("n")
        .await
        .unwrap();
    wait_for(&c, "#queue-empty").await;

    let verdict = |id: String| {
        let base = base.clone();
        async move {
            let v: serde_json::Value =
                reqwest::get(format!("{base}/api/v1/analyses/{id}/feedback"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            v["items"][0].clone()
        }
    };
    let first = verdict(order[0].clone()).await;
    assert_eq!(first["verdict"], "confirmed", "{first}");
    let second = verdict(order[1].clone()).await;
    assert_eq!(second["class_id"], "meningioma_tumor", "{second}");
    assert_eq!(second["comment"], "cnn");
    assert_eq!(verdict(order[2].clone()).await["verdict"], "not_assessable");

    // The admin page counts them.
    c.goto(&format!("{base}/admin/feedback")).await.unwrap();
    let table = wait_for(&c, "#agreement").await.text().await.unwrap();
    assert!(table.contains("Not assessable 1"), "{table}");
    std::fs::write(
        out.join("feedback-stats.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
}
