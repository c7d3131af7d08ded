//! Load test of a running `oncolens serve` from loopback: N clients upload the same scan in a
//! loop for a fixed time; prints throughput, latency percentiles and every non-201 answer.
//!
//! ```sh
//! target/release/oncolens serve --queue 64 --database sqlite:///tmp/load.db &
//! cargo run --release --example loadtest -- http://127.0.0.1:8080 scan.jpg 32 60
//! ```

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, multipart};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: loadtest BASE_URL IMAGE CLIENTS SECONDS");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_string();
    let bytes = std::fs::read(&args[2]).expect("image file readable");
    let clients: usize = args[3].parse().expect("CLIENTS is a number");
    let seconds: u64 = args[4].parse().expect("SECONDS is a number");
    assert!(
        base.starts_with("http://127.") || base.starts_with("http://localhost"),
        "loopback only"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (base, bytes) = (base.clone(), bytes.clone());
            std::thread::spawn(move || {
                let client = Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("client");
                let mut results = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let form = multipart::Form::new().part(
                        "image",
                        multipart::Part::bytes(bytes.clone()).file_name("scan.jpg"),
                    );
                    let status = match client
                        .post(format!("{base}/api/v1/analyses"))
                        .multipart(form)
                        .send()
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    results.push((status, t.elapsed().as_secs_f64()));
                }
                results
            })
        })
        .collect();
    let mut all: Vec<(u16, f64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let wall = started.elapsed().as_secs_f64();
    let ok: Vec<f64> = all
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, l)| *l)
        .collect();
    let errors = all.len() - ok.len();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut lat = ok.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize] * 1000.0
        }
    };
    println!(
        "clients {clients}, {wall:.1} s: {} requests, {} created, {errors} errors",
        all.len(),
        ok.len()
    );
    println!("throughput {:.2} analyses/s", ok.len() as f64 / wall);
    println!(
        "latency ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    let mut codes: std::collections::BTreeMap<u16, usize> = Default::default();
    for (s, _) in &all {
        *codes.entry(*s).or_default() += 1;
    }
    println!("status codes: {codes:?}");
    if errors > 0 {
        std::process::exit(1);
    }
}
