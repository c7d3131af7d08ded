//! Batch inference shared through the job queue of a real PostgreSQL: a worker is killed
//! (SIGKILL) in the middle of a job; two more workers finish the archive, the dead worker's job
//! among it once its lease has run out, and every file is answered exactly once.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::postgres::Postgres;

const FILES: usize = 40;
const QUEUE: &str = "archive";

/// A worker process, killed if the test ends before it does.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(url: &str, name: &str, dir: &Path, out: &Path) -> Worker {
    Worker(
        Command::new(env!("CARGO_BIN_EXE_oncolens"))
            .args([
                "predict", "--format", "json", "--jobs", url, "--queue", QUEUE,
            ])
            .args(["--worker", name, "--lease-s", "2", "--job-files", "4"])
            .arg(dir)
            .env_remove("ONCOLENS_MODEL")
            .stdout(std::fs::File::create(out.join(format!("{name}.json"))).unwrap())
            .stderr(std::fs::File::create(out.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("oncolens predict starts"),
    )
}

async fn jobs(pool: &oncolens::database::Pool) -> Vec<(String, String, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT job_key, state, attempts, lease_owner FROM jobs WHERE queue = $1 ORDER BY id",
    )
    .bind(QUEUE)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[test]
fn a_killed_workers_job_is_taken_over_and_every_file_is_answered_once() {
    let pg = Postgres::start();
    let url = pg.database("jobs");
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    for i in 0..FILES {
        let png = common::png_of(&common::slice(i % 3, 96, &mut rng));
        std::fs::write(archive.join(format!("slice-{i:03}.png")), png).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(oncolens::database::open(&url)).unwrap();

    // Worker A runs until it has finished a job and holds another, then dies.
    let mut a = worker(&url, "A", &archive, tmp.path());
    let started = Instant::now();
    let held = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "worker A never got going: {}",
            std::fs::read_to_string(tmp.path().join("A.log")).unwrap_or_default()
        );
        let now = rt.block_on(jobs(&pool));
        let done = now.iter().filter(|j| j.1 == "done").count();
        let mine = now
            .iter()
            .find(|j| j.1 == "running" && j.3.as_deref() == Some("A"));
        if let (true, Some(job)) = (done >= 1, mine) {
            a.0.kill().unwrap();
            a.0.wait().unwrap();
            // The kill may have come between a completion and the next claim: only a job
            // still running under A's name is one it died holding.
            let after = rt.block_on(jobs(&pool));
            if let Some(j) = after.iter().find(|j| j.0 == job.0 && j.1 == "running") {
                break j.0.clone();
            }
            a = worker(&url, "A", &archive, tmp.path());
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // B and C take what is left, A's job once its lease has run out.
    drop(a);
    let mut rest: Vec<Worker> = ["B", "C"]
        .iter()
        .map(|n| worker(&url, n, &archive, tmp.path()))
        .collect();
    for (name, child) in ["B", "C"].iter().zip(&mut rest) {
        let status = child.0.wait().unwrap();
        let log = std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap();
        assert!(status.success(), "worker {name}: {log}");
        eprintln!("{log}");
    }

    let after = rt.block_on(jobs(&pool));
    assert_eq!(after.len(), FILES / 4);
    assert!(after.iter().all(|j| j.1 == "done"), "{after:?}");
    let taken_over = after.iter().find(|j| j.0 == held).unwrap();
    assert_eq!(
        taken_over.2, 2,
        "claimed by A, then by another: {taken_over:?}"
    );
    assert!(
        matches!(taken_over.3.as_deref(), Some("B" | "C")),
        "{taken_over:?}"
    );
    // Each of B and C reports the whole archive, each file once, A's share included.
    for name in ["B", "C"] {
        let out: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let mut files: Vec<String> = out["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(r["prediction"]["class_id"].is_string(), "{r}");
                r["file"].as_str().unwrap().to_string()
            })
            .collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), FILES, "{name}: {files:?}");
    }
    let (b, c) = (
        std::fs::read_to_string(tmp.path().join("B.log")).unwrap(),
        std::fs::read_to_string(tmp.path().join("C.log")).unwrap(),
    );
    assert!(
        [&b, &c].iter().any(|l| l.contains("1 taken over")),
        "B: {b}\nC: {c}"
    );
}
