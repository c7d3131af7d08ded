//! Three `oncolens serve` replicas on one PostgreSQL and one S3 bucket (a real Garage) behind
//! Debian's nginx: concurrent uploads
//! through nginx for 60 s while one replica is killed (SIGKILL, as a crash) and restarted.
//! Every acknowledged analysis must be stored exactly once and readable from every replica;
//! a session made through one replica and a token work on all of them; the bucket holds each
//! stored analysis's images once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::garage::Garage;
use common::postgres::{Postgres, is_root};
use oncolens::security::keys::KeyRing;
use oncolens::security::{Role, accounts, tokens};
use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

const PASSWORD: &str = "correct horse battery staple";
const LOAD: Duration = Duration::from_secs(60);

struct Replica {
    port: u16,
    child: Option<Child>,
}

fn spawn_replica(port: u16, url: &str, key: &Path, garage: &Garage) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database",
            url,
        ])
        .arg("--key-file")
        .arg(key)
        .args(["--workers", "1", "--queue", "8"])
        .args(["--objects", &garage.url("replicas")])
        .envs(garage.env())
        .env_remove("ONCOLENS_MODEL")
        .env_remove("ONCOLENS_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("oncolens serve starts");
    wait_ready(&format!("http://127.0.0.1:{port}"));
    child
}

fn wait_ready(base: &str) {
    let started = Instant::now();
    loop {
        let ok = Client::new()
            .get(format!("{base}/readyz"))
            .send()
            .map(|r| r.status() == StatusCode::OK)
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{base} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no nginx: this test needs Debian's `nginx` package (.ci/run installs it)")
        })
}

/// nginx in the foreground with its configuration, logs and temp files in `dir`, in front of
/// `upstreams`; returns it and its port.
fn start_nginx(dir: &Path, upstreams: &[u16]) -> (Child, u16) {
    let port = common::free_port();
    let servers: String = upstreams
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    // As root, nginx's workers would switch to `nobody`, who cannot write the temp folders.
    let user = if is_root() { "user root root;" } else { "" };
    let conf = include_str!("../docs/deployment/nginx-test.conf.in")
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@USER@", user)
        .replace("@SERVERS@", &servers)
        .replace("@PORT@", &port.to_string());
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    wait_ready(&format!("http://127.0.0.1:{port}"));
    (child, port)
}

fn png(seed: u64) -> Vec<u8> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    common::png_of(&common::slice((seed % 3) as usize, 96, &mut rng))
}

#[test]
fn three_replicas_behind_nginx_lose_and_repeat_nothing_when_one_dies() {
    let pg = Postgres::start();
    let garage = Garage::start();
    let url = pg.database("replicas");
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("data.key");
    KeyRing::create_file(&key).unwrap();
    let token = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = oncolens::database::open(&url).await.unwrap();
        accounts::add(&pool, "carol", Role::Clinician, PASSWORD, 0)
            .await
            .unwrap();
        tokens::create(&pool, "carol", None, "load", 0)
            .await
            .unwrap()
            .1
    });

    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            let port = common::free_port();
            Replica {
                port,
                child: Some(spawn_replica(port, &url, &key, &garage)),
            }
        })
        .collect();
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let nginx_dir = tmp.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let (mut nginx, nginx_port) = start_nginx(&nginx_dir, &ports);
    let front = format!("http://127.0.0.1:{nginx_port}");

    // The load: four clients uploading through nginx until LOAD has passed.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<u16>::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (stop, acknowledged, refused) =
                (stop.clone(), acknowledged.clone(), refused.clone());
            let (front, token) = (front.clone(), token.clone());
            std::thread::spawn(move || {
                let client = Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let form = multipart::Form::new().part(
                        "image",
                        multipart::Part::bytes(png(c * 100_000 + n))
                            .file_name(format!("client{c}-{n}.png")),
                    );
                    match client
                        .post(format!("{front}/api/v1/analyses"))
                        .bearer_auth(&token)
                        .multipart(form)
                        .send()
                    {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            let v: serde_json::Value = r.json().unwrap();
                            acknowledged
                                .lock()
                                .unwrap()
                                .push(v["id"].as_str().unwrap().to_string());
                        }
                        Ok(r) => refused.lock().unwrap().push(r.status().as_u16()),
                        Err(_) => refused.lock().unwrap().push(0),
                    }
                }
            })
        })
        .collect();

    // A third of the way in, replica 1 dies; two thirds in, it comes back.
    std::thread::sleep(LOAD / 3);
    let killed_at = acknowledged.lock().unwrap().len();
    let mut victim = replicas[1].child.take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    std::thread::sleep(LOAD / 3);
    let during_outage = acknowledged.lock().unwrap().len() - killed_at;
    replicas[1].child = Some(spawn_replica(replicas[1].port, &url, &key, &garage));
    std::thread::sleep(LOAD.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    eprintln!(
        "{} analyses acknowledged in {:.0} s ({during_outage} while a replica was down), {} not \
         acknowledged: {refused:?}",
        acknowledged.len(),
        started.elapsed().as_secs_f64(),
        refused.len()
    );
    assert!(
        acknowledged.len() >= 30,
        "too few analyses: {acknowledged:?}"
    );
    assert!(
        during_outage > 0,
        "nothing was acknowledged while a replica was down"
    );

    // Stored exactly once: no id twice among the acknowledged, and each id one row.
    let mut unique = acknowledged.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "an id was acknowledged twice"
    );
    let (counts, objects) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = oncolens::database::open(&url).await.unwrap();
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, COUNT(*) FROM analyses GROUP BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let bucket = oncolens::objects::Objects::open(&garage.location("replicas"))
            .await
            .unwrap();
        (counts, bucket.list("analyses").await.unwrap())
    });
    for id in &acknowledged {
        let n = counts.iter().find(|(i, _)| i == id).map(|(_, n)| *n);
        assert_eq!(n, Some(1), "analysis {id} stored {n:?} times");
    }
    // Rows beyond the acknowledged ones come only from requests cut off with the replica.
    let extra = counts.len() - acknowledged.len();
    assert!(
        extra <= refused.len(),
        "{extra} stored analyses were never answered, but only {} requests failed",
        refused.len()
    );

    // Display, heat-map and source image of each stored analysis; a request cut off between
    // its images and its row may leave its own, no more.
    assert!(
        objects.len() >= 3 * counts.len() && objects.len() <= 3 * (counts.len() + refused.len()),
        "{} objects for {} stored analyses and {} failed requests",
        objects.len(),
        counts.len(),
        refused.len()
    );

    // Readable from every replica, by the token and by a session made on another replica.
    let sign_in = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{}/login", ports[0]))
        .form(&[("username", "carol"), ("password", PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(sign_in.status(), StatusCode::SEE_OTHER);
    let cookie = sign_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let client = Client::new();
    for port in &ports {
        let base = format!("http://127.0.0.1:{port}");
        for id in acknowledged.iter().step_by(7) {
            let r = client
                .get(format!("{base}/api/v1/analyses/{id}"))
                .bearer_auth(&token)
                .send()
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{id} on replica {port}");
            let heatmap = client
                .get(format!("{base}/api/v1/analyses/{id}/heatmap"))
                .bearer_auth(&token)
                .send()
                .unwrap();
            assert_eq!(
                heatmap.status(),
                StatusCode::OK,
                "{id}'s heat-map on {port}"
            );
            assert!(heatmap.bytes().unwrap().starts_with(b"\x89PNG"));
        }
        let page = client
            .get(format!("{base}/analyses/{}", acknowledged[0]))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "the session on replica {port}"
        );
    }

    let _ = nginx.kill();
    let _ = nginx.wait();
    for r in &mut replicas {
        if let Some(mut c) = r.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
