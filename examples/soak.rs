//! Soak test of `oncolens serve`: starts the server binary on loopback with a fresh database,
//! sends analyses one after another and records the server's resident memory (from /proc) and
//! each analysis's latency over time. Writes `soak.csv` (per block of analyses), `rss.png`,
//! `latency.png` and `summary.json` into the output folder and prints the summary.
//!
//! ```sh
//! cargo build --release --bin oncolens --example soak
//! target/release/examples/soak --server target/release/oncolens --analyses 10000 \
//!     --image "../shared/data/brain-tumor-mri/Training/glioma_tumor/gg (1).jpg" --out target/soak
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, multipart};

/// Analyses per row of the CSV and point of the plots.
const BLOCK: usize = 100;
/// Analyses before the reference ("after warm-up") is taken.
const WARM_UP: usize = 200;

struct Options {
    server: PathBuf,
    analyses: usize,
    image: PathBuf,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        server: PathBuf::from("target/release/oncolens"),
        analyses: 10_000,
        image: PathBuf::from("../shared/data/brain-tumor-mri/Training/glioma_tumor/gg (1).jpg"),
        out: PathBuf::from("target/soak"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--server" => o.server = value.into(),
            "--analyses" => o.analyses = value.parse().expect("--analyses takes a number"),
            "--image" => o.image = value.into(),
            "--out" => o.out = value.into(),
            other => panic!("unknown option {other} (--server, --analyses, --image, --out)"),
        }
    }
    o
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc readable");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("VmRSS in /proc status")
        / 1024.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = options();
    std::fs::create_dir_all(&o.out).expect("output folder");
    let bytes = std::fs::read(&o.image).expect("image readable");
    let db = o.out.join("soak.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = Command::new(&o.server)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database",
        ])
        .arg(format!("sqlite://{}", db.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("server binary runs");
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let started = Instant::now();
    while client.get(format!("{base}/readyz")).send().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = server.id();
    let start_rss = rss_mib(pid);
    let mut rows = vec![(0usize, start_rss, f64::NAN, f64::NAN)];
    let mut block_ms = Vec::with_capacity(BLOCK);
    let mut failures = 0usize;
    let run = Instant::now();
    for i in 1..=o.analyses {
        let form = multipart::Form::new().part(
            "image",
            multipart::Part::bytes(bytes.clone()).file_name("scan.jpg"),
        );
        let t = Instant::now();
        let ok = client
            .post(format!("{base}/api/v1/analyses"))
            .multipart(form)
            .send()
            .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED);
        block_ms.push(t.elapsed().as_secs_f64() * 1e3);
        failures += usize::from(!ok);
        if i % BLOCK == 0 {
            let p95 = {
                let mut v = block_ms.clone();
                v.sort_by(f64::total_cmp);
                v[(v.len() * 95 / 100).min(v.len() - 1)]
            };
            rows.push((i, rss_mib(pid), median(&mut block_ms), p95));
            block_ms.clear();
            if i % (10 * BLOCK) == 0 {
                let last = rows[rows.len() - 1];
                eprintln!(
                    "{i} analyses: RSS {:.1} MiB, median {:.1} ms",
                    last.1, last.2
                );
            }
        }
    }
    let seconds = run.elapsed().as_secs_f64();
    let _ = server.kill();
    let _ = server.wait();

    write_outputs(&o.out, &rows, start_rss, failures, seconds, o.analyses);
}

fn write_outputs(
    out: &Path,
    rows: &[(usize, f64, f64, f64)],
    start_rss: f64,
    failures: usize,
    seconds: f64,
    analyses: usize,
) {
    let mut csv = String::from("analyses,rss_mib,median_ms,p95_ms\n");
    for (n, rss, med, p95) in rows {
        csv.push_str(&format!("{n},{rss:.1},{med:.2},{p95:.2}\n"));
    }
    std::fs::write(out.join("soak.csv"), csv).expect("soak.csv written");
    let warm = rows
        .iter()
        .find(|r| r.0 >= WARM_UP)
        .copied()
        .unwrap_or(rows[rows.len() - 1]);
    let last = rows[rows.len() - 1];
    let blocks: Vec<&(usize, f64, f64, f64)> = rows.iter().filter(|r| r.0 > 0).collect();
    let first_latency =
        blocks.iter().take(5).map(|r| r.2).sum::<f64>() / 5f64.min(blocks.len() as f64);
    let last_latency =
        blocks.iter().rev().take(5).map(|r| r.2).sum::<f64>() / 5f64.min(blocks.len() as f64);
    let max_rss = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let summary = serde_json::json!({
        "analyses": analyses,
        "failures": failures,
        "seconds": seconds,
        "rss_mib_at_start": start_rss,
        "rss_mib_after_warm_up": warm.1,
        "warm_up_analyses": warm.0,
        "rss_mib_at_end": last.1,
        "rss_mib_max": max_rss,
        "rss_growth_after_warm_up_mib": last.1 - warm.1,
        "median_ms_first_500": first_latency,
        "median_ms_last_500": last_latency,
        "latency_change": last_latency / first_latency - 1.0,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("json") + "\n",
    )
    .expect("summary.json written");
    println!("{}", serde_json::to_string_pretty(&summary).expect("json"));

    let n = analyses as f64;
    let rss: Vec<(f64, f64)> = rows.iter().map(|r| (r.0 as f64, r.1)).collect();
    oncolens::plot::XyChart {
        title: &format!("oncolens serve: resident memory over {analyses} analyses"),
        x_label: "analyses",
        y_label: "RSS (MiB)",
        x_range: (0.0, n),
        y_range: (0.0, (max_rss * 1.3).max(100.0)),
        diagonal: false,
    }
    .draw(&out.join("rss.png"), &[("RSS", rss)])
    .expect("rss.png drawn");
    let median: Vec<(f64, f64)> = blocks.iter().map(|r| (r.0 as f64, r.2)).collect();
    let p95: Vec<(f64, f64)> = blocks.iter().map(|r| (r.0 as f64, r.3)).collect();
    let top = blocks.iter().map(|r| r.3).fold(0.0, f64::max);
    oncolens::plot::XyChart {
        title: &format!("oncolens serve: latency per analysis, blocks of {BLOCK}"),
        x_label: "analyses",
        y_label: "latency (ms)",
        x_range: (0.0, n),
        y_range: (0.0, top * 1.3),
        diagonal: false,
    }
    .draw(
        &out.join("latency.png"),
        &[("median", median), ("95th percentile", p95)],
    )
    .expect("latency.png drawn");
}
