//! The web app and API over real HTTP on loopback: upload, fetch, list, images, feedback, pages,
//! and every error path.

mod common;

use std::io::Cursor;

use common::start_server as start;
use rand::SeedableRng;
use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

fn png_bytes(size: u32, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    common::png_of(&common::slice(0, size, &mut rng))
}

fn upload(
    client: &Client,
    base: &str,
    path: &str,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::blocking::Response {
    let part = multipart::Part::bytes(bytes).file_name(name.to_string());
    let mut form = multipart::Form::new();
    if !path.starts_with("/api/") {
        // A page's form carries its CSRF token first.
        form = form.text("csrf", common::csrf_token(client, &format!("{base}/")));
    }
    client
        .post(format!("{base}{path}"))
        .multipart(form.part("image", part))
        .send()
        .unwrap()
}

/// The HTML result page of the analysis `a` (its API answer).
fn result_page(client: &Client, base: &str, a: &serde_json::Value) -> String {
    client
        .get(format!("{base}/analyses/{}", a["id"].as_str().unwrap()))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn api_round_trip_and_error_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        start(&tmp.path().join("db.sqlite"), 2, 8, 2 * 1024 * 1024)
    );
    let client = Client::new();

    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["status"], "ready");

    // Create.
    let r = upload(
        &client,
        &base,
        "/api/v1/analyses",
        "scan (1).png",
        png_bytes(300, 1),
    );
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let a: serde_json::Value = r.json().unwrap();
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/analyses/{id}"));
    assert_eq!(a["filename"], "scan (1).png");
    let probs = a["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 4);
    let total: f64 = probs
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-3);
    assert!(
        a["note"]
            .as_str()
            .unwrap()
            .contains("not a diagnostic device")
    );
    let label = a["label"].as_str().unwrap();
    // The label follows the verdict (a synthetic slice may fail the input check).
    match a["verdict"].as_str().unwrap() {
        _ if a["presence"]["no_tumour_withheld"] == true => {
            assert_eq!(label, "Tumour not ruled out")
        }
        "answer" => assert_eq!(label, a["class_name"].as_str().unwrap()),
        "uncertain" => assert_eq!(label, "Uncertain"),
        "not_brain_mri" => {
            assert_eq!(label, "Not a brain MRI slice");
            assert!(!a["input_reasons"].as_array().unwrap().is_empty());
        }
        other => panic!("unknown verdict {other}"),
    }

    // Fetch, list, images.
    let again: serde_json::Value = client
        .get(format!("{base}{location}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again["class_id"], a["class_id"]);
    let list: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses?limit=10"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["items"][0]["id"], id.as_str());
    let scan = client
        .get(format!("{base}/api/v1/analyses/{id}/image"))
        .send()
        .unwrap();
    assert_eq!(scan.headers()["content-type"], "image/png");
    let scan = image::load_from_memory(&scan.bytes().unwrap()).unwrap();
    assert_eq!((scan.width(), scan.height()), (300, 300));
    let heat = client
        .get(format!("{base}/api/v1/analyses/{id}/heatmap"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let heat = image::load_from_memory(&heat).unwrap();
    assert_eq!(
        (heat.width(), heat.height(), heat.color().has_alpha()),
        (300, 300, true)
    );

    // Feedback: a correction is stored; bad class and missing body are refused.
    let other = if a["class_id"] == "glioma_tumor" {
        "no_tumor"
    } else {
        "glioma_tumor"
    };
    let r = client
        .post(format!("{base}/api/v1/analyses/{id}/feedback"))
        .json(&serde_json::json!({"class_id": other, "comment": "see prior scan"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["verdict"],
        "corrected"
    );
    let r = client
        .post(format!("{base}/api/v1/analyses/{id}/feedback"))
        .json(&serde_json::json!({"class_id": "stage_2"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json::<serde_json::Value>().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("Unknown class")
    );
    let r = client
        .post(format!("{base}/api/v1/analyses/{id}/feedback"))
        .body("nope")
        .send()
        .unwrap();
    assert!(r.status().is_client_error());
    let fb: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses/{id}/feedback"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(fb["items"].as_array().unwrap().len(), 1);
    assert_eq!(fb["items"][0]["comment"], "see prior scan");

    // Error paths: each a plain sentence, nothing stored.
    let r = upload(
        &client,
        &base,
        "/api/v1/analyses",
        "notes.png",
        b"not an image at all".to_vec(),
    );
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json::<serde_json::Value>().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("could not be read")
    );
    let jpeg = {
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 64, image::Luma([90])))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    };
    let r = upload(
        &client,
        &base,
        "/api/v1/analyses",
        "cut.jpg",
        jpeg[..jpeg.len() / 2].to_vec(),
    );
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json::<serde_json::Value>().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("truncated")
    );
    // Over the 2 MiB limit: refused with 413, or (a race inherent to refusing an upload
    // mid-stream) the connection is closed before the client reads the answer.
    let part = multipart::Part::bytes(vec![0u8; 3 * 1024 * 1024]).file_name("big.png");
    match client
        .post(format!("{base}/api/v1/analyses"))
        .multipart(multipart::Form::new().part("image", part))
        .send()
    {
        Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.is_body() || e.is_request(), "{e}"),
    }
    let r = client
        .post(format!("{base}/api/v1/analyses"))
        .multipart(multipart::Form::new().text("note", "no file"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for path in [
        "/api/v1/analyses/0123456789abcdef0123456789abcdef",
        "/api/v1/analyses/../etc",
        "/api/v1/analyses/x/image",
    ] {
        assert_eq!(
            client.get(format!("{base}{path}")).send().unwrap().status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let list: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "failed uploads stored nothing"
    );

    // OpenAPI and metrics.
    let spec: serde_json::Value = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(spec["paths"]["/api/v1/analyses"]["post"].is_object());
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .contains("oncolens_http_requests_total{route=\"/api/v1/analyses\",status=\"201\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("oncolens_inference_duration_seconds_count"));
    assert!(metrics.contains("oncolens_inference_queue_depth 0"));
}

#[test]
fn pages_upload_show_feedback_and_history_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("app.db");
    let base = format!("http://{}", start(&db, 2, 8, 50 * 1024 * 1024));
    let client = no_redirects();
    let index = client
        .get(format!("{base}/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        index.contains("id=\"upload-form\"") && index.contains("Decision support, not a diagnosis")
    );
    assert!(
        !index.contains("http://") && !index.contains("https://"),
        "no external assets"
    );

    let r = upload(&client, &base, "/", "slice.png", png_bytes(200, 2));
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page_path = r.headers()["location"].to_str().unwrap().to_string();
    let page = client
        .get(format!("{base}{page_path}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("id=\"probabilities\""));
    // The heat-map with its toggle, or (the synthetic slice refused by the gate) a note why
    // there is none: exactly one of them.
    assert!(page.contains("id=\"heatmap-toggle\"") != page.contains("id=\"no-heatmap\""));
    for name in ["Glioma", "Meningioma", "No tumour", "Pituitary"] {
        assert!(page.contains(name), "{name} missing");
    }
    assert!(!page.to_lowercase().contains("stage 1"));

    let csrf = common::csrf_of(&page).expect("the feedback form carries a CSRF token");
    let r = client
        .post(format!("{base}{page_path}/feedback"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("class_id", "pituitary_tumor"),
            ("comment", "<b>checked</b>"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = client
        .get(format!("{base}{page_path}?feedback=saved"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("your feedback was saved"));
    assert!(
        page.contains("&lt;b&gt;checked") && !page.contains("<b>checked"),
        "comments are escaped"
    );

    let r = upload(&client, &base, "/", "bad.png", b"garbage".to_vec());
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().unwrap().contains("could not be read"));

    let history = client
        .get(format!("{base}/history"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        history.contains("slice.png")
            && history.contains(page_path.trim_start_matches("/analyses/"))
    );
    assert!(
        client
            .get(format!("{base}/model"))
            .send()
            .unwrap()
            .text()
            .unwrap()
            .contains("tumour types")
    );

    // A second server on the same database sees the stored analysis.
    let base2 = format!("http://{}", start(&db, 1, 1, 1024 * 1024));
    let again = client.get(format!("{base2}{page_path}")).send().unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        start(&tmp.path().join("q.db"), 1, 0, 50 * 1024 * 1024)
    );
    let big = png_bytes(1400, 3);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (base, big) = (base.clone(), big.clone());
            std::thread::spawn(move || {
                let r = upload(&Client::new(), &base, "/api/v1/analyses", "big.png", big);
                (
                    r.status(),
                    r.headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string()),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results.iter().any(|(s, _)| *s == StatusCode::CREATED),
        "{results:?}"
    );
    let busy: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "{results:?}");
    assert!(busy.iter().all(|(_, retry)| retry.as_deref() == Some("2")));
}

#[test]
fn sigterm_finishes_the_analysis_in_flight_then_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("stop.db");
    let (mut server, base) = common::spawn_server_binary(&db, &[]);
    let big = png_bytes(1600, 4);
    let upload_thread = {
        let base = base.clone();
        std::thread::spawn(move || {
            upload(&Client::new(), &base, "/api/v1/analyses", "late.png", big)
        })
    };
    // Let the request reach the server, then ask it to stop.
    std::thread::sleep(std::time::Duration::from_millis(150));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = upload_thread.join().unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the analysis in flight was finished"
    );
    let id = r.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // It was stored: a new server on the same database has it.
    let base2 = format!("http://{}", start(&db, 1, 1, 1024 * 1024));
    assert_eq!(
        Client::new()
            .get(format!("{base2}/api/v1/analyses/{id}"))
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[test]
fn an_image_that_is_not_a_brain_mri_gets_no_tumour_type() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        start(&tmp.path().join("db.sqlite"), 1, 4, 8 * 1024 * 1024)
    );
    let client = Client::new();
    let (kind, img) = common::non_mri::synthetic_non_mri(1, 5)
        .into_iter()
        .find(|(k, _)| *k == "colour-shapes")
        .unwrap();
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    let r = upload(
        &client,
        &base,
        "/api/v1/analyses",
        "holiday.png",
        bytes.into_inner(),
    );
    assert_eq!(r.status(), StatusCode::CREATED, "{kind}");
    let a: serde_json::Value = r.json().unwrap();
    assert_eq!(a["verdict"], "not_brain_mri", "{a}");
    assert_eq!(a["label"], "Not a brain MRI slice");
    let reasons = a["input_reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("colour picture")),
        "{reasons:?}"
    );
    let page = result_page(&client, &base, &a);
    assert!(page.contains("Not a brain MRI slice"), "{page}");
    assert!(page.contains("MRI slices are greyscale"));
    // The input gate's second opinion is in the JSON and on the page.
    let gate = &a["gate"];
    let score = gate["brain_mri_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{gate}");
    assert!(gate["threshold"].as_f64().unwrap() > 0.0, "{gate}");
    assert!(
        gate["looks_most_like_name"].as_str().unwrap().len() > 3,
        "{gate}"
    );
    assert!(page.contains("id=\"gate-score\""), "{page}");
    // No Grad-CAM layer over a refused image.
    assert!(!page.contains("id=\"heatmap\""), "{page}");
    assert!(page.contains("id=\"no-heatmap\""), "{page}");
}

/// A glioma the bundled model finds most like "No tumour" (68 %), but below the 80 % its
/// presence rule asks: the API and the page say "Tumour not ruled out", with the rule in words,
/// and never "No tumour"; a confident tumour-free slice states the rule instead.
#[test]
fn a_doubtful_no_tumour_is_shown_as_tumour_not_ruled_out() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        start(&tmp.path().join("db.sqlite"), 1, 4, 8 * 1024 * 1024)
    );
    let client = Client::new();
    let bytes = std::fs::read(common::real_slice("glioma_tumor", 15)).unwrap();
    let r = upload(&client, &base, "/api/v1/analyses", "glioma.jpg", bytes);
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: serde_json::Value = r.json().unwrap();
    assert_eq!(a["label"], "Tumour not ruled out", "{a}");
    assert_ne!(a["class_id"], "no_tumor", "{a}");
    let presence = &a["presence"];
    assert_eq!(presence["no_tumour_withheld"], true, "{a}");
    let needed = presence["min_no_tumour_probability"].as_f64().unwrap();
    let p_no = a["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["class_id"] == "no_tumor")
        .unwrap()["probability"]
        .as_f64()
        .unwrap();
    assert!(p_no < needed, "{a}");
    assert!((1.0 - presence["tumour_probability"].as_f64().unwrap() - p_no).abs() < 1e-4);
    let page = result_page(&client, &base, &a);
    assert!(page.contains(">Tumour not ruled out</h1>"), "{page}");
    assert!(
        page.contains("before it calls a slice tumour-free"),
        "{page}"
    );

    // A tumour-free slice the model is sure of is called "No tumour", with the rule stated.
    let bytes = std::fs::read(common::real_slice("no_tumor", 10)).unwrap();
    let a: serde_json::Value = upload(&client, &base, "/api/v1/analyses", "healthy.jpg", bytes)
        .json()
        .unwrap();
    assert_eq!(a["label"], "No tumour", "{a}");
    assert_eq!(a["presence"]["no_tumour_withheld"], false, "{a}");
    let page = result_page(&client, &base, &a);
    assert!(page.contains("id=\"presence-rule\""), "{page}");
    assert!(
        page.contains("only when &quot;No tumour&quot; reaches 80 %")
            || page.contains("only when \"No tumour\" reaches 80 %"),
        "{page}"
    );
}

#[test]
fn the_model_page_shows_the_model_card_and_the_trust_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        start(&tmp.path().join("db.sqlite"), 1, 2, 1024 * 1024)
    );
    let page = Client::new()
        .get(format!("{base}/model"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("id=\"model-card\""), "{page}");
    assert!(page.contains("Known failure modes"));
    assert!(page.contains("<table>"), "the card's tables are rendered");
    assert!(page.contains("temperature scaling"));
    assert!(page.contains("Not a brain MRI slice") || page.contains("not a brain MRI slice"));
    let api: serde_json::Value = Client::new()
        .get(format!("{base}/api/v1/model"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(api["calibration"]["temperature"].as_f64().unwrap() > 0.0);
    // The rule for saying "No tumour" is on the page and in the API, with validation figures.
    assert!(page.contains("id=\"presence-rule\""), "{page}");
    let rule = &api["presence_rule"];
    assert!(
        (rule["min_no_tumour_probability"].as_f64().unwrap() - 0.8).abs() < 1e-6,
        "{rule}"
    );
    assert!(
        rule["validation"]["tumours"].as_u64().unwrap() > 0,
        "{rule}"
    );
    assert_eq!(api["precision"], "f32");
    assert!(
        api["int8_calibration"]["top1_agreement_with_f32"]
            .as_f64()
            .unwrap()
            > 0.95,
        "the bundled model carries int8 ranges"
    );
    assert!(
        api["input_check"]["feature_distance_threshold"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let gate = &api["input_gate"];
    assert_eq!(gate["origin"], "bundled", "{gate}");
    assert_eq!(gate["kinds"][0]["id"], "brain_mri", "{gate}");
    assert!(
        gate["threshold_rule"]
            .as_str()
            .unwrap()
            .contains("validation")
    );
}

#[test]
fn an_int8_server_answers_with_the_int8_engine_and_still_draws_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server_with(oncolens::serve::ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", tmp.path().join("int8.db").display()),
        int8: true,
        ..Default::default()
    });
    let base = format!("http://{addr}");
    let api: serde_json::Value = Client::new()
        .get(format!("{base}/api/v1/model"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(api["precision"], "int8");
    let client = Client::new();
    let r = upload(
        &client,
        &base,
        "/api/v1/analyses",
        "scan.png",
        png_bytes(300, 1),
    );
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: serde_json::Value = r.json().unwrap();
    let total: f64 = a["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-3);
    let heatmap = client
        .get(format!(
            "{base}/api/v1/analyses/{}/heatmap",
            a["id"].as_str().unwrap()
        ))
        .send()
        .unwrap();
    assert_eq!(heatmap.status(), 200);
}
