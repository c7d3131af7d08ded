//! The feedback loop through the server: feedback over the API and the page (confirm, correct,
//! not assessable, who gave it), the review queue's order, the agreement statistics, the
//! export's layout and manifest, and a promoted version switched in under concurrent uploads
//! without losing one.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};

fn post_feedback(base: &str, id: &str, body: Value) -> (u16, Value) {
    let r = Client::new()
        .post(format!("{base}/api/v1/analyses/{id}/feedback"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn get(base: &str, path: &str) -> Value {
    let r = Client::new().get(format!("{base}{path}")).send().unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().unwrap()
}

#[test]
fn feedback_through_api_and_page_orders_the_queue_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("feedback.db");
    let base = format!("http://{}", common::start_server(&db, 2, 8, 8 << 20));
    let mut ids = Vec::new();
    let slices: Vec<PathBuf> = [
        ("glioma_tumor", 1),
        ("meningioma_tumor", 1),
        ("no_tumor", 1),
        ("pituitary_tumor", 1),
        ("glioma_tumor", 10),
    ]
    .iter()
    .map(|(class, n)| common::real_slice(class, *n))
    .collect();
    for (n, path) in slices.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let (status, a) = common::upload_api(&base, &format!("Jane Doe {n}.jpg"), bytes);
        assert_eq!(status, 201, "{a}");
        ids.push(a["id"].as_str().unwrap().to_string());
    }

    // The queue: every analysis, highest entropy first.
    let queue = get(&base, "/api/v1/review?limit=10");
    assert_eq!(queue["pending"], 5);
    let entropies: Vec<f64> = queue["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["entropy_bits"].as_f64().unwrap())
        .collect();
    assert_eq!(entropies.len(), 5);
    assert!(
        entropies.windows(2).all(|w| w[0] >= w[1]),
        "not most informative first: {entropies:?}"
    );
    for item in queue["items"].as_array().unwrap() {
        let p: Vec<f64> = item["analysis"]["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["probability"].as_f64().unwrap())
            .collect();
        let h: f64 = p.iter().filter(|&&x| x > 0.0).map(|x| -x * x.log2()).sum();
        assert!((h - item["entropy_bits"].as_f64().unwrap()).abs() < 1e-3);
    }

    // Over the API: a confirmation without a class, a correction, "not assessable".
    let predicted: Vec<String> = ids
        .iter()
        .map(|id| {
            get(&base, &format!("/api/v1/analyses/{id}"))["class_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (s, r) = post_feedback(&base, &ids[0], json!({"comment": "agree"}));
    assert_eq!((s, r["verdict"].as_str()), (201, Some("confirmed")), "{r}");
    let other = if predicted[1] == "meningioma_tumor" {
        "glioma_tumor"
    } else {
        "meningioma_tumor"
    };
    let (s, r) = post_feedback(&base, &ids[1], json!({"class_id": other}));
    assert_eq!((s, r["verdict"].as_str()), (201, Some("corrected")), "{r}");
    let (s, r) = post_feedback(
        &base,
        &ids[2],
        json!({"verdict": "not_assessable", "comment": "motion"}),
    );
    assert_eq!(
        (s, r["verdict"].as_str()),
        (201, Some("not_assessable")),
        "{r}"
    );
    // Verdicts that do not fit: refused, nothing stored.
    for bad in [
        json!({"verdict": "not_assessable", "class_id": "no_tumor"}),
        json!({"verdict": "corrected", "class_id": predicted[3]}),
        json!({"verdict": "corrected"}),
        json!({"verdict": "maybe"}),
        json!({"class_id": "stage_2"}),
    ] {
        let (s, r) = post_feedback(&base, &ids[3], bad.clone());
        assert_eq!(s, 422, "{bad} -> {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let listed = get(&base, &format!("/api/v1/analyses/{}/feedback", ids[3]));
    assert!(listed["items"].as_array().unwrap().is_empty());
    let given = get(&base, &format!("/api/v1/analyses/{}/feedback", ids[2]));
    assert_eq!(given["items"][0]["given_by"], "local");
    assert_eq!(given["items"][0]["class_id"], "");

    // Through the page, from the queue: back to the queue.
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{base}/review"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("2 analyses have no feedback yet"), "{page}");
    let csrf = common::csrf_of(&page).unwrap();
    let current = page
        .split("data-analysis=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let r = client
        .post(format!("{base}/analyses/{current}/feedback"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("class_id", "pituitary_tumor"),
            ("next", "/review"),
            ("comment", ""),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/review?saved=1");
    assert_eq!(get(&base, "/api/v1/review")["pending"], 1);

    let agreement = get(&base, "/api/v1/feedback/agreement");
    assert_eq!(agreement["items"], 4);
    assert_eq!(agreement["not_assessable"], 1);
    assert_eq!(
        agreement["confirmed"].as_u64().unwrap() + agreement["corrected"].as_u64().unwrap(),
        3
    );
    let stats = client
        .get(format!("{base}/admin/feedback"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(stats.contains("id=\"agreement-rate\""), "{stats}");

    // The export: DIR/<class>/<id>.png at the scan's own size, a manifest, no identifiers.
    let out = tmp.path().join("export");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["feedback", "export", "--database"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--out")
        .arg(&out)
        .env_remove("ONCOLENS_MODEL")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let summary = String::from_utf8_lossy(&status.stdout);
    assert!(
        summary.contains("1 \"not assessable\" listed only"),
        "{summary}"
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let items = manifest["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let version = get(&base, "/api/v1/model")["version"]
        .as_str()
        .unwrap()
        .to_string();
    for item in items {
        assert_eq!(item["model_version"], version.as_str());
        assert_eq!(item["given_by"], "local");
        if item["verdict"] == "not_assessable" {
            assert!(item["file"].is_null() && item["use"] == "listed", "{item}");
            continue;
        }
        let file = out.join(item["file"].as_str().unwrap());
        assert_eq!(
            file.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap(),
            item["given_class"].as_str().unwrap()
        );
        assert!(["train", "holdout"].contains(&item["use"].as_str().unwrap()));
        assert_eq!(item["image"], "decoded");
        // The scan at its own resolution: the uploaded JPEG's size, 8 bits, grey.
        let img = image::open(&file).unwrap();
        let n = ids
            .iter()
            .position(|i| i == item["analysis_id"].as_str().unwrap())
            .unwrap();
        let original = image::open(&slices[n]).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (original.width(), original.height())
        );
        assert_eq!(img.color(), image::ColorType::L8);
    }
    let text = std::fs::read_to_string(out.join("manifest.csv")).unwrap()
        + &std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(!text.contains("Jane Doe"), "file names are not exported");
    assert!(
        !text.contains("motion") && !text.contains("agree"),
        "comments are not exported"
    );
    let agreement_file: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("agreement.json")).unwrap())
            .unwrap();
    assert_eq!(agreement_file["items"], 4);
    // The layout `train` and `evaluate` read: one folder per class of the model.
    let folders: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders.len(), 4, "{folders:?}");
}

/// A tiny model on synthetic slices, different per seed.
fn tiny_model(data: &Path, out: &Path, seed: u64) -> PathBuf {
    common::train_model(
        data,
        out,
        oncolens::modelfile::TrainConfig {
            architecture: oncolens::model::Architecture::ResnetMini,
            input_size: 32,
            epochs: 1,
            batch_size: 16,
            validation_fraction: 0.25,
            seed,
            ..Default::default()
        },
    );
    out.to_path_buf()
}

#[test]
fn a_promoted_version_is_switched_in_under_load_without_losing_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_folder(&data, 12, 48, 3);
    let first = tiny_model(&data, &tmp.path().join("first"), 1);
    let second = tiny_model(&data, &tmp.path().join("second"), 2);
    let db = tmp.path().join("switch.db");
    let url = format!("sqlite://{}", db.display());
    let addr = common::start_server_with(oncolens::serve::ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: url.clone(),
        model: oncolens::modelfile::ModelSource::Directory(first.clone()),
        workers: 2,
        queue: 64,
        registry_poll: Duration::from_millis(200),
        ..Default::default()
    });
    let base = format!("http://{addr}");
    let version_of = |dir: &Path| {
        oncolens::modelfile::bundle::read_manifest(dir)
            .unwrap()
            .version()
    };
    let (v1, v2) = (version_of(&first), version_of(&second));
    assert_ne!(v1, v2);
    assert_eq!(get(&base, "/api/v1/model")["version"], v1.as_str());

    // The second version is registered "on another machine": published to the deployment's
    // object store (the server's folder beside the database) and then gone from that
    // machine's models folder, so the server must unpack it from the store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(oncolens::database::open(&url)).unwrap();
    let elsewhere = tmp.path().join("models-elsewhere");
    rt.block_on(async {
        let files = oncolens::workflows::registry::ModelFiles {
            objects: oncolens::objects::Objects::open(
                &oncolens::objects::ObjectsLocation::default_for(&url).unwrap(),
            )
            .await
            .unwrap(),
            keys: std::sync::Arc::new(
                oncolens::security::keys::KeyRing::load_or_create(
                    &oncolens::security::keys::KeySource::for_database(&url, None, None),
                )
                .unwrap(),
            ),
            folder: elsewhere.clone(),
        };
        oncolens::workflows::registry::register(&pool, &files, &second, 1).await
    })
    .unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();

    // Four clients upload without pause while the second version is promoted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(c);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let png = common::png_of(&common::slice(0, 48, &mut rng));
                    let (status, a) = common::upload_api(&base, "s.png", png);
                    assert_eq!(status, 201, "an upload failed during the switch: {a}");
                    acknowledged.push((
                        a["id"].as_str().unwrap().to_string(),
                        a["model"]["version"].as_str().unwrap().to_string(),
                    ));
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(oncolens::store::registry::promote(
        &pool, &v2, "admin", None, 2,
    ))
    .unwrap();
    let started = Instant::now();
    while get(&base, "/api/v1/model")["version"] != v2.as_str() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not switch"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It was unpacked into the server's own models folder, beside its database.
    assert!(
        tmp.path()
            .join("switch.db.models")
            .join(&v2)
            .join(oncolens::modelfile::MANIFEST_FILE)
            .is_file()
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acknowledged: Vec<(String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();

    // Every acknowledged analysis is stored, once, under the version that made it; both
    // versions answered.
    let mut seen = std::collections::HashSet::new();
    for (id, version) in &acknowledged {
        assert!(seen.insert(id.clone()), "analysis {id} acknowledged twice");
        let stored = get(&base, &format!("/api/v1/analyses/{id}"));
        assert_eq!(stored["model"]["version"], version.as_str());
    }
    let by_version = |v: &str| acknowledged.iter().filter(|(_, x)| x == v).count();
    assert!(
        by_version(&v1) > 0 && by_version(&v2) > 0,
        "v1 {} v2 {}",
        by_version(&v1),
        by_version(&v2)
    );
    let stored: i64 = rt
        .block_on(sqlx::query_scalar("SELECT COUNT(*) FROM analyses").fetch_one(&pool))
        .unwrap();
    assert_eq!(stored as usize, acknowledged.len());

    // A rollback returns to the model the server started with.
    rt.block_on(oncolens::store::registry::rollback(&pool, 3))
        .unwrap();
    let started = Instant::now();
    while get(&base, "/api/v1/model")["version"] != v1.as_str() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the rollback was not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
