//! Memory of a real `oncolens serve` process, read from /proc: flat over hundreds of analyses,
//! and the worst admissible upload within the per-analysis budget the server plans with.

mod common;

use std::process::Child;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

const MIB: f64 = 1024.0 * 1024.0;

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (child, base) = common::spawn_server_binary(&dir.path().join("memory.db"), extra);
    Server {
        child,
        base,
        _dir: dir,
    }
}

/// `VmRSS` or `VmHWM` (peak) of a process, bytes.
fn memory(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024.0
}

fn upload(client: &Client, base: &str, bytes: Vec<u8>) -> StatusCode {
    let form =
        multipart::Form::new().part("image", multipart::Part::bytes(bytes).file_name("scan.png"));
    client
        .post(format!("{base}/api/v1/analyses"))
        .multipart(form)
        .send()
        .unwrap()
        .status()
}

/// A head-like slice: a textured ellipse on black.
fn slice_png(size: u32) -> Vec<u8> {
    let c = size as f32 / 2.0;
    let img = image::GrayImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (
            (x as f32 - c) / (0.4 * size as f32),
            (y as f32 - c) / (0.45 * size as f32),
        );
        image::Luma([if dx * dx + dy * dy < 1.0 {
            (80 + (x * 7 + y * 13) % 60) as u8
        } else {
            (x + y) as u8 % 4
        }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn resident_memory_stays_flat_over_hundreds_of_analyses() {
    let server = spawn_server(&["--workers", "2"]);
    let client = Client::new();
    let scan = slice_png(512);
    let pid = server.child.id();
    let (warm_up, total) = (50, 300);
    let mut after_warm_up = 0.0;
    for i in 0..total {
        assert_eq!(
            upload(&client, &server.base, scan.clone()),
            StatusCode::CREATED
        );
        if i + 1 == warm_up {
            after_warm_up = memory(pid, "VmRSS");
        }
    }
    let end = memory(pid, "VmRSS");
    let growth = (end - after_warm_up) / MIB;
    println!(
        "RSS after {warm_up} analyses {:.1} MiB, after {total} {:.1} MiB ({growth:+.1} MiB)",
        after_warm_up / MIB,
        end / MIB
    );
    // Before the fix every analysis left 4.7 MB behind: 250 more would add over 1 GB.
    assert!(
        growth < 20.0,
        "RSS grew by {growth:.1} MiB over {} analyses",
        total - warm_up
    );
}

#[test]
fn the_worst_admissible_upload_stays_within_the_analysis_budget() {
    let server = spawn_server(&["--workers", "2"]);
    let client = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let pid = server.child.id();
    assert_eq!(
        upload(&client, &server.base, slice_png(512)),
        StatusCode::CREATED
    );
    let before = memory(pid, "VmHWM");
    // The 8192 x 8192 one-colour PNG that took 1.7 GB before decoding was bounded.
    let flat = image::GrayImage::from_pixel(8192, 8192, image::Luma([40]));
    let mut flat_png = std::io::Cursor::new(Vec::new());
    flat.write_to(&mut flat_png, image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        upload(&client, &server.base, flat_png.into_inner()),
        StatusCode::CREATED
    );
    let flat_used = (memory(pid, "VmHWM") - before) / MIB;
    println!("8192 x 8192 one-colour PNG: {flat_used:.0} MiB above the idle peak");
    assert!(flat_used <= oncolens::serve::ANALYSIS_PEAK_BYTES as f64 / MIB);
    // 16-bit RGBA, 8192 x 4096: exactly the 256 MiB the decoder may take, the most expensive
    // image the server accepts.
    let worst = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(8192, 4096, |x, y| {
        image::Rgba([(x * 8) as u16, (y * 16) as u16, 0, 65535])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba16(worst)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    let bytes = bytes.into_inner();
    let body_mib = bytes.len() as f64 / MIB;
    assert_eq!(
        upload(&client, &server.base, bytes.clone()),
        StatusCode::CREATED
    );
    let peak = memory(pid, "VmHWM");
    let used = (peak - before) / MIB;
    let budget = oncolens::serve::ANALYSIS_PEAK_BYTES as f64 / MIB;
    println!(
        "worst admissible upload ({body_mib:.0} MiB body): peak RSS {:.0} MiB, {used:.0} MiB above the idle peak (budget {budget:.0} MiB + body)",
        peak / MIB
    );
    assert!(
        used <= budget + body_mib,
        "one analysis took {used:.0} MiB, the budget is {budget:.0} MiB + the body"
    );
    // Both workers on the worst upload at once: the whole process stays within the default
    // budget of 1.5 GiB.
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (client, base, bytes) = (client.clone(), server.base.clone(), bytes.clone());
            std::thread::spawn(move || upload(&client, &base, bytes))
        })
        .collect();
    for h in both {
        assert_eq!(h.join().unwrap(), StatusCode::CREATED);
    }
    let peak_both = memory(pid, "VmHWM") / MIB;
    let default_budget = oncolens::serve::budget::DEFAULT_MEMORY_BUDGET as f64 / MIB;
    println!(
        "two worst uploads at once: peak RSS {peak_both:.0} MiB (budget {default_budget:.0} MiB)"
    );
    assert!(peak_both <= default_budget, "peak RSS {peak_both:.0} MiB");
}
