//! Transport security of the web app, tried as an attacker on loopback would: the security
//! headers on every kind of response, cross-site writes refused with nothing stored, foreign
//! `Host` headers refused, and no listening beyond loopback without accounts.

mod common;

use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

fn png() -> Vec<u8> {
    common::pattern_png()
}

fn upload_form() -> multipart::Form {
    multipart::Form::new().part("image", multipart::Part::bytes(png()).file_name("scan.png"))
}

fn stored(client: &Client, base: &str) -> usize {
    let list: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    list["items"].as_array().unwrap().len()
}

#[test]
fn every_response_carries_the_security_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        common::start_server(&tmp.path().join("h.db"), 1, 2, 1024 * 1024)
    );
    let client = Client::new();
    for path in [
        "/",
        "/history",
        "/api/v1/model",
        "/static/app.js",
        "/nope",
        "/metrics",
    ] {
        let r = client.get(format!("{base}{path}")).send().unwrap();
        let h = r.headers();
        let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(
            h.get("x-content-type-options").unwrap(),
            "nosniff",
            "{path}"
        );
        assert_eq!(h.get("x-frame-options").unwrap(), "DENY", "{path}");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer", "{path}");
    }
    // The pages need no inline script or style, so the policy breaks nothing.
    let page = client
        .get(format!("{base}/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        !page.contains("style=\"") && !page.contains("<script>"),
        "{page}"
    );
    assert!(page.contains("Unprotected: no accounts yet"));
}

#[test]
fn cross_site_writes_are_refused_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server(&tmp.path().join("c.db"), 1, 2, 1024 * 1024);
    let base = format!("http://{addr}");
    let client = Client::new();
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = client
            .post(format!("{base}/api/v1/analyses"))
            .header(name, value)
            .multipart(upload_form())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let body: serde_json::Value = r.json().unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("another site"),
            "{body}"
        );
        let page = client
            .post(format!("{base}/"))
            .header(name, value)
            .multipart(upload_form())
            .send()
            .unwrap();
        assert_eq!(page.status(), StatusCode::FORBIDDEN, "{name}: {value}");
    }
    assert_eq!(stored(&client, &base), 0, "a refused upload was stored");
    // The same origin, as the browser sends it for the app's own pages, and non-browser
    // clients (no Origin) are served.
    let same = client
        .post(format!("{base}/api/v1/analyses"))
        .header("origin", format!("http://{addr}"))
        .multipart(upload_form())
        .send()
        .unwrap();
    assert_eq!(same.status(), StatusCode::CREATED);
    // What Chromium sends for the app's own form under `Referrer-Policy: no-referrer`.
    let own_form = client
        .post(format!("{base}/api/v1/analyses"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .multipart(upload_form())
        .send()
        .unwrap();
    assert_eq!(own_form.status(), StatusCode::CREATED);
    let id = same.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Forged feedback from another site is refused too.
    let forged = client
        .post(format!("{base}/analyses/{id}/feedback"))
        .header("origin", "https://evil.example")
        .form(&[("class_id", "glioma_tumor"), ("comment", "forged")])
        .send()
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let feedback: serde_json::Value = client
        .get(format!("{base}/api/v1/analyses/{id}/feedback"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        feedback["items"].as_array().unwrap().is_empty(),
        "{feedback}"
    );
    assert_eq!(stored(&client, &base), 2);
}

#[test]
fn a_foreign_host_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "http://{}",
        common::start_server(&tmp.path().join("host.db"), 1, 2, 1024 * 1024)
    );
    let client = Client::new();
    let r = client
        .get(format!("{base}/api/v1/model"))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let ok = client
        .get(format!("{base}/api/v1/model"))
        .header("host", "localhost")
        .send()
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[test]
fn binding_beyond_loopback_without_accounts_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args(["serve", "--bind", bind, "--database"])
            .arg(format!("sqlite://{}", tmp.path().join("b.db").display()))
            .env_remove("ONCOLENS_MODEL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bind} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("reachable from other machines"), "{err}");
    }
}
