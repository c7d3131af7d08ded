//! Access control of the web app, tried as each kind of user and as an attacker: every route
//! with every role, sign-in with its cookie, lockout, CSRF, token revocation, session expiry,
//! the audit trail (and an edited entry found), encryption at rest, deletion and retention.

mod common;

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

use oncolens::security::{Role, accounts, tokens};
use oncolens::serve::ServeConfig;
use oncolens::serve::access::{Need, ROUTES};

const PASSWORD: &str = "correct horse battery staple";

struct Tokens {
    viewer: String,
    clinician: String,
    admin: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Accounts alice (admin), carol (clinician), victor (viewer), each with a token.
fn accounts_in(db: &Path) -> Tokens {
    runtime().block_on(async {
        let pool = oncolens::database::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mut made = Vec::new();
        for (name, role) in [
            ("victor", Role::Viewer),
            ("carol", Role::Clinician),
            ("alice", Role::Admin),
        ] {
            accounts::add(&pool, name, role, PASSWORD, 0).await.unwrap();
            made.push(
                tokens::create(&pool, name, None, "test", 0)
                    .await
                    .unwrap()
                    .1,
            );
        }
        Tokens {
            viewer: made[0].clone(),
            clinician: made[1].clone(),
            admin: made[2].clone(),
        }
    })
}

fn config(db: &Path) -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", db.display()),
        workers: 1,
        queue: 2,
        max_body_bytes: 4 * 1024 * 1024,
        ..Default::default()
    }
}

fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client holding a session of `name` (its cookie sent with every request), and the
/// session's CSRF token.
fn signed_in(base: &str, name: &str) -> (Client, String) {
    let r = no_redirects()
        .post(format!("{base}/login"))
        .form(&[("username", name), ("password", PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{name} signs in");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.split(';').next().unwrap().parse().unwrap());
    let client = Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = common::csrf_token(&client, &format!("{base}/"));
    (client, csrf)
}

fn png() -> Vec<u8> {
    common::pattern_png()
}

/// A real slice, so that the bundled gate answers and a heat-map is stored.
fn real_slice() -> Vec<u8> {
    std::fs::read(common::real_slice("glioma_tumor", 1)).unwrap()
}

fn upload_with_token(base: &str, token: &str, bytes: Vec<u8>) -> serde_json::Value {
    let r = Client::new()
        .post(format!("{base}/api/v1/analyses"))
        .bearer_auth(token)
        .multipart(
            multipart::Form::new().part("image", multipart::Part::bytes(bytes).file_name("s.jpg")),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().unwrap()
}

fn oncolens(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(args)
        .env_remove("ONCOLENS_KEY")
        .env_remove("ONCOLENS_KEY_FILE")
        .output()
        .unwrap()
}

#[test]
fn every_route_is_refused_to_every_role_below_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("routes.db");
    let t = accounts_in(&db);
    let base = format!("http://{}", common::start_server_with(config(&db)));
    let client = no_redirects();
    let callers: [(&str, Option<&str>, Option<Role>); 4] = [
        ("anonymous", None, None),
        ("viewer", Some(&t.viewer), Some(Role::Viewer)),
        ("clinician", Some(&t.clinician), Some(Role::Clinician)),
        ("admin", Some(&t.admin), Some(Role::Admin)),
    ];
    let mut checked = 0;
    for rule in ROUTES {
        let path = rule
            .path
            .replace("{id}", &"0".repeat(32))
            .replace("{key}", &"0".repeat(64));
        for (who, token, role) in &callers {
            let mut request = client.request(rule.method.clone(), format!("{base}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let status = request.send().unwrap().status();
            let what = format!("{} {} as {who}: {status}", rule.method, rule.path);
            match rule.need {
                Need::Public => assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::SEE_OTHER
                        || rule.path == "/login"
                        || rule.path == "/logout",
                    "{what}"
                ),
                Need::Role(needed) => match role {
                    None => assert!(
                        status == StatusCode::UNAUTHORIZED || status == StatusCode::SEE_OTHER,
                        "{what}"
                    ),
                    Some(r) if *r < needed => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{what}")
                    }
                    Some(_) => assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{what}"
                    ),
                },
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * 4);
    // A page asks an anonymous visitor to sign in, and comes back afterwards.
    let r = client.get(format!("{base}/history")).send().unwrap();
    assert_eq!(r.headers()["location"], "/login?next=/history");
    // A method no rule lists is not served, and nothing unrouted is revealed.
    let r = client
        .put(format!("{base}/history"))
        .bearer_auth(&t.admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn sign_in_sets_a_strict_cookie_that_rotates_ends_and_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("session.db");
    accounts_in(&db);
    let mut c = config(&db);
    c.sessions.idle = Duration::from_secs(2);
    let base = format!("http://{}", common::start_server_with(c));
    let client = no_redirects();
    let sign_in = || {
        client
            .post(format!("{base}/login"))
            .form(&[
                ("username", "carol"),
                ("password", PASSWORD),
                ("next", "/history"),
            ])
            .send()
            .unwrap()
    };
    let r = sign_in();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/history");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let with = |session: &str| {
        client
            .get(format!("{base}/history"))
            .header("cookie", session)
            .send()
            .unwrap()
    };
    let page = with(&session);
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().unwrap().contains("carol (clinician)"));
    // Each sign-in makes a new session id.
    let again = sign_in().headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(again.split(';').next().unwrap(), session);
    // Signing out ends the session on the server, not only in the browser.
    let r = client
        .post(format!("{base}/logout"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(with(&session).status(), StatusCode::SEE_OTHER);
    // Idle past the timeout: signed out.
    let fresh = again.split(';').next().unwrap().to_string();
    assert_eq!(with(&fresh).status(), StatusCode::OK);
    std::thread::sleep(Duration::from_secs(4));
    let expired = with(&fresh);
    assert_eq!(expired.status(), StatusCode::SEE_OTHER);
    assert!(
        expired.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
}

#[test]
fn repeated_failures_lock_the_account_and_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lock.db");
    let t = accounts_in(&db);
    let base = format!("http://{}", common::start_server_with(config(&db)));
    let client = no_redirects();
    let try_password = |password: &str| {
        client
            .post(format!("{base}/login"))
            .form(&[("username", "victor"), ("password", password)])
            .send()
            .unwrap()
    };
    for _ in 0..accounts::MAX_FAILED_LOGINS - 1 {
        assert_eq!(
            try_password("not the password").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        try_password("not the password").status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Locked: the right password is refused too.
    let r = try_password(PASSWORD);
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.text().unwrap().contains("locked"));
    // An unknown account is answered as a wrong password (no enumeration).
    let r = client
        .post(format!("{base}/login"))
        .form(&[("username", "nobody"), ("password", PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let audit: serde_json::Value = client
        .get(format!("{base}/api/v1/audit?actor=victor&action=session."))
        .bearer_auth(&t.admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{audit}");
    assert!(items.iter().all(|e| e["outcome"] == "denied"), "{audit}");
    assert!(items.iter().all(|e| e["address"] == "127.0.0.1"), "{audit}");
    assert_eq!(audit["verified"], true);
}

#[test]
fn writes_need_the_form_token_and_the_api_takes_no_cookie_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("csrf.db");
    let t = accounts_in(&db);
    let base = format!("http://{}", common::start_server_with(config(&db)));
    let id = upload_with_token(&base, &t.clinician, png())["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (carol, csrf) = signed_in(&base, "carol");
    let feedback = |token: Option<&str>| {
        let mut form = vec![("class_id", "glioma_tumor"), ("comment", "x")];
        if let Some(token) = token {
            form.push(("csrf", token));
        }
        carol
            .post(format!("{base}/analyses/{id}/feedback"))
            .form(&form)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(feedback(None), StatusCode::FORBIDDEN);
    assert_eq!(feedback(Some("forged")), StatusCode::FORBIDDEN);
    let upload = |token: &str| {
        carol
            .post(format!("{base}/"))
            .multipart(
                multipart::Form::new()
                    .text("csrf", token.to_string())
                    .part("image", multipart::Part::bytes(png()).file_name("s.png")),
            )
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(upload("forged"), StatusCode::FORBIDDEN);
    // The API refuses changes made with the browser's cookie.
    let r = carol
        .post(format!("{base}/api/v1/analyses/{id}/feedback"))
        .json(&serde_json::json!({"class_id": "glioma_tumor"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let stored: serde_json::Value = carol
        .get(format!("{base}/api/v1/analyses/{id}/feedback"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(stored["items"].as_array().unwrap().is_empty(), "{stored}");
    let list: serde_json::Value = carol
        .get(format!("{base}/api/v1/analyses"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "nothing else stored"
    );
    // With the token, the same form is saved.
    assert_eq!(feedback(Some(&csrf)), StatusCode::SEE_OTHER);
    assert_eq!(upload(&csrf), StatusCode::SEE_OTHER);
}

#[test]
fn a_revoked_token_stops_working_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("tokens.db");
    accounts_in(&db);
    let url = format!("sqlite://{}", db.display());
    let made = oncolens(&[
        "token",
        "create",
        "--user",
        "carol",
        "--database",
        &url,
        "--expires",
        "30",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8(made.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(token.starts_with("olt_"), "{token}");
    let base = format!("http://{}", common::start_server_with(config(&db)));
    let list = || {
        Client::new()
            .get(format!("{base}/api/v1/analyses"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(list(), StatusCode::OK);
    let revoked = oncolens(&["token", "revoke", &token, "--database", &url]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(list(), StatusCode::UNAUTHORIZED);
    // Not stored in the clear: the database holds its hash only.
    let bytes = std::fs::read(&db).unwrap();
    // `olt_<id>_<secret>`: the secret is base64url and may itself hold '_'.
    let secret = token.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 40, "{secret}");
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

/// Whether `haystack` holds any of the signatures of a stored image.
fn holds_an_image(haystack: &[u8]) -> Option<&'static str> {
    let signatures: [(&str, &[u8]); 4] = [
        ("PNG signature", b"\x89PNG\r\n\x1a\n"),
        ("PNG header chunk", b"IHDR"),
        ("JPEG JFIF header", b"JFIF\0"),
        ("JPEG Exif header", b"Exif\0\0"),
    ];
    signatures
        .iter()
        .find(|(_, s)| haystack.windows(s.len()).any(|w| w == *s))
        .map(|(name, _)| *name)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn stored_scans_are_encrypted_deleted_and_purged_with_an_audit_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("oncolens.db");
    let t = accounts_in(&db);
    let url = format!("sqlite://{}", db.display());
    let (mut server, base) = common::spawn_server_binary(&db, &[]);
    let client = Client::new();
    let a = upload_with_token(&base, &t.clinician, real_slice());
    let b = upload_with_token(&base, &t.clinician, real_slice());
    let id = a["id"].as_str().unwrap();
    let image = client
        .get(format!("{base}/api/v1/analyses/{id}/image"))
        .bearer_auth(&t.viewer)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(image.starts_with(b"\x89PNG"), "served decrypted");
    let _ = server.kill();
    let _ = server.wait();
    // Nothing in the data folder shows an image: not the database, its log, the key, or the
    // object store's files (three images for each of the two analyses).
    let files = files_under(&data);
    let objects = data.join("oncolens.db.objects");
    assert_eq!(
        files.iter().filter(|f| f.starts_with(&objects)).count(),
        6,
        "{files:?}"
    );
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(holds_an_image(&bytes), None, "{}", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("oncolens.db.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A new key: everything re-encrypted, still readable.
    let rotated = oncolens(&["key", "rotate", "--database", &url]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let (mut server, base) = common::spawn_server_binary(&db, &[]);
    let image = client
        .get(format!("{base}/api/v1/analyses/{id}/image"))
        .bearer_auth(&t.viewer)
        .send()
        .unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert!(image.bytes().unwrap().starts_with(b"\x89PNG"));

    // Deleting needs an admin, and removes the analysis for good.
    let delete = |token: &str| {
        client
            .delete(format!("{base}/api/v1/analyses/{id}"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(delete(&t.clinician), StatusCode::FORBIDDEN);
    assert_eq!(delete(&t.admin), StatusCode::NO_CONTENT);
    assert_eq!(delete(&t.admin), StatusCode::NOT_FOUND);
    let gone = client
        .get(format!("{base}/api/v1/analyses/{id}"))
        .bearer_auth(&t.admin)
        .send()
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(
        !objects.join("analyses").join(id).exists(),
        "its images went with it"
    );
    let _ = server.kill();
    let _ = server.wait();

    // Retention: analyses older than 0 days are all of them.
    let purged = oncolens(&["purge", "--older-than-days", "0", "--database", &url]);
    assert!(
        purged.status.success(),
        "{}",
        String::from_utf8_lossy(&purged.stderr)
    );
    assert!(String::from_utf8_lossy(&purged.stdout).starts_with("1 analyses"));
    let left: Vec<_> = files_under(&objects);
    assert!(left.is_empty(), "objects left after the purge: {left:?}");

    // The audit trail has each step, and verifies.
    let export = oncolens(&["audit-log", "export", "--database", &url]);
    let csv = String::from_utf8(export.stdout).unwrap();
    for needle in [
        "analysis.create",
        "analysis.export_image",
        "key.rotate",
        "analysis.delete",
        "retention.purge",
        "model.load",
    ] {
        assert!(csv.contains(needle), "{needle} missing:\n{csv}");
    }
    assert!(
        csv.contains(&format!("analysis.delete,{id},127.0.0.1,denied")),
        "{csv}"
    );
    assert!(csv.contains(b["id"].as_str().unwrap()));
    let verify = oncolens(&["audit-log", "verify", "--database", &url]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Someone with the database but not the key edits an entry: found, and named.
    runtime().block_on(async {
        let pool = oncolens::database::open(&url).await.unwrap();
        sqlx::query("DROP TRIGGER audit_log_append_only_update")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET actor = 'nobody' WHERE action = 'analysis.delete' AND outcome = 'ok'")
            .execute(&pool)
            .await
            .unwrap();
    });
    let verify = oncolens(&["audit-log", "verify", "--database", &url]);
    assert!(!verify.status.success());
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        stderr.contains("audit entry") && stderr.contains("edited"),
        "{stderr}"
    );
}

#[test]
fn the_cli_makes_accounts_with_strong_passwords_only() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("cli.db").display());
    let add = |name: &str, role: &str, password: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args([
                "user",
                "add",
                name,
                "--role",
                role,
                "--password-stdin",
                "--database",
                &url,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = add("dana", "admin", "password123");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("too weak"));
    assert!(
        !add("dana", "surgeon", PASSWORD).status.success(),
        "no such role"
    );
    assert!(add("dana", "admin", PASSWORD).status.success());
    assert!(!add("dana", "viewer", PASSWORD).status.success(), "taken");
    let listed = oncolens(&["user", "list", "--database", &url]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("dana\tadmin\tactive"));
    let disabled = oncolens(&["user", "disable", "dana", "--database", &url]);
    assert!(disabled.status.success());
    let listed = oncolens(&["user", "list", "--database", &url]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("dana\tadmin\tdisabled"));
    let trail = oncolens(&["audit-log", "export", "--database", &url]);
    let csv = String::from_utf8_lossy(&trail.stdout);
    for needle in [",user.add,dana,", ",user.disable,dana,"] {
        assert!(csv.contains(needle), "{needle} missing:\n{csv}");
    }
    assert!(
        oncolens(&["audit-log", "verify", "--database", &url])
            .status
            .success()
    );
}

#[test]
fn with_accounts_the_server_may_listen_beyond_loopback_and_is_not_unprotected() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("wide.db");
    accounts_in(&db);
    let port = common::free_port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["serve", "--bind", &format!("0.0.0.0:{port}"), "--database"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--allowed-host")
        .arg("127.0.0.1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let login = loop {
        if let Ok(r) = Client::new().get(format!("{base}/login")).send() {
            break r.text().unwrap();
        }
        assert!(started.elapsed().as_secs() < 60, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(login.contains("id=\"login-form\""));
    assert!(!login.contains("id=\"unprotected\""));
    let r = no_redirects().get(format!("{base}/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_openapi_description_lists_every_api_route_and_its_security() {
    let spec: serde_json::Value = serde_json::from_str(include_str!("../src/serve/openapi.json"))
        .expect("the OpenAPI description is JSON");
    for rule in ROUTES {
        if !rule.path.starts_with("/api/v1/") || rule.path == "/api/v1/openapi.json" {
            continue;
        }
        let method = rule.method.as_str().to_ascii_lowercase();
        let op = &spec["paths"][rule.path][&method];
        assert!(op.is_object(), "{method} {} is not described", rule.path);
        assert!(
            op["responses"]["401"].is_object() && op["responses"]["403"].is_object(),
            "{method} {}: 401 and 403 undescribed",
            rule.path
        );
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn over_https_the_session_cookie_is_secure() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("tls.db");
    accounts_in(&db);
    // A private CA and a certificate for 127.0.0.1 that it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_pem, key_pem) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let port = common::free_port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database",
        ])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--tls-cert")
        .arg(&cert_pem)
        .arg("--tls-key")
        .arg(&key_pem)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while client.get(format!("{base}/readyz")).send().is_err() {
        assert!(started.elapsed().as_secs() < 60, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = client
        .post(format!("{base}/login"))
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the same port gets no page.
    let plain = Client::new()
        .get(format!("http://127.0.0.1:{port}/login"))
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_server_purges_analyses_past_their_retention_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("retention.db");
    let t = accounts_in(&db);
    let url = format!("sqlite://{}", db.display());
    let (mut server, base) = common::spawn_server_binary(&db, &[]);
    let old = upload_with_token(&base, &t.clinician, png());
    let recent = upload_with_token(&base, &t.clinician, png());
    let _ = server.kill();
    let _ = server.wait();
    // One analysis made 40 days ago.
    runtime().block_on(async {
        let pool = oncolens::database::open(&url).await.unwrap();
        sqlx::query("UPDATE analyses SET created_unix = created_unix - 40 * 86400 WHERE id = $1")
            .bind(old["id"].as_str().unwrap())
            .execute(&pool)
            .await
            .unwrap();
    });
    let (mut server, base) = common::spawn_server_binary(&db, &["--retention-days", "30"]);
    let fetch = |id: &serde_json::Value| {
        Client::new()
            .get(format!("{base}/api/v1/analyses/{}", id.as_str().unwrap()))
            .bearer_auth(&t.viewer)
            .send()
            .unwrap()
            .status()
    };
    let started = std::time::Instant::now();
    while fetch(&old["id"]) != StatusCode::NOT_FOUND {
        assert!(started.elapsed().as_secs() < 30, "not purged");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fetch(&recent["id"]), StatusCode::OK);
    let audit: serde_json::Value = Client::new()
        .get(format!(
            "{base}/api/v1/audit?action=retention.&actor=system"
        ))
        .bearer_auth(&t.admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    let _ = server.kill();
    let _ = server.wait();
}
