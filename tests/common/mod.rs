//! Synthetic MRI-like data made by the tests: a grey "head" ellipse on black, with texture
//! noise; the class decides whether it holds a bright blob, a dark blob or neither. The classes
//! survive flips and rotations, like tumour types do, so the normal augmentation applies.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const CLASSES: [&str; 3] = ["bright blob", "dark blob", "no_blob"];

/// One synthetic slice of `size` pixels for `class` (index into [`CLASSES`]).
pub fn slice(class: usize, size: u32, rng: &mut ChaCha8Rng) -> GrayImage {
    let c = size as f32 / 2.0;
    let (rx, ry) = (
        size as f32 * rng.random_range(0.34..0.42),
        size as f32 * rng.random_range(0.38..0.46),
    );
    let shift = (rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0));
    let blob_x = c + rng.random_range(-rx * 0.45..rx * 0.45);
    let blob_y = c + rng.random_range(-ry * 0.45..ry * 0.45);
    let blob_r = size as f32 * rng.random_range(0.07..0.1);
    GrayImage::from_fn(size, size, |x, y| {
        let (dx, dy) = ((x as f32 - c - shift.0) / rx, (y as f32 - c - shift.1) / ry);
        if dx * dx + dy * dy > 1.0 {
            return Luma([rng.random_range(0..6)]);
        }
        let mut v: f32 = 90.0 + rng.random_range(-25.0..25.0);
        let (bx, by) = (x as f32 - blob_x, y as f32 - blob_y);
        if bx * bx + by * by < blob_r * blob_r {
            match class {
                0 => v = 235.0 + rng.random_range(-15.0..15.0),
                1 => v = 25.0 + rng.random_range(-10.0..10.0),
                _ => {}
            }
        }
        Luma([v.clamp(0.0, 255.0) as u8])
    })
}

/// Writes `per_class` slices per class under `root/<class>/`, PNG and JPEG mixed, with spaces and
/// brackets in the file names. Returns the files written.
pub fn write_folder(root: &Path, per_class: usize, size: u32, seed: u64) -> Vec<PathBuf> {
    write_folder_named(root, &CLASSES, per_class, size, seed)
}

/// [`write_folder`] with other folder names for the three classes (say `no_tumor` for the
/// third, whose slices hold no blob, so that the model gets a "No tumour" class).
pub fn write_folder_named(
    root: &Path,
    names: &[&str; 3],
    per_class: usize,
    size: u32,
    seed: u64,
) -> Vec<PathBuf> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut files = Vec::new();
    for (label, class) in names.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = slice(label, size, &mut rng);
            let (name, format) = if i % 3 == 0 {
                (format!("scan ({i}).jpg"), image::ImageFormat::Jpeg)
            } else {
                (format!("scan ({i}).png"), image::ImageFormat::Png)
            };
            let path = dir.join(name);
            img.save_with_format(&path, format).unwrap();
            files.push(path);
        }
    }
    files
}

/// Starts `oncolens serve` (bundled model, SQLite at `db`) on a free loopback port in a thread of
/// its own; returns its address.
pub fn start_server(
    db: &Path,
    workers: usize,
    queue: usize,
    max_body_bytes: usize,
) -> std::net::SocketAddr {
    start_server_with(oncolens::serve::ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", db.display()),
        model: oncolens::modelfile::ModelSource::Bundled,
        max_body_bytes,
        workers,
        queue,
        ..Default::default()
    })
}

/// Starts a server with `config` (bind to port 0 for a free one); returns its address.
pub fn start_server_with(config: oncolens::serve::ServeConfig) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let state = oncolens::serve::AppState::new(&config).await.unwrap();
            oncolens::serve::spawn_background(&state, &config);
            let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let limits = config.limits;
            let app = oncolens::serve::router(state);
            oncolens::serve::http::run(listener, app, limits, std::future::pending()).await;
        });
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("server started")
}

pub mod dicom;
pub mod garage;
pub mod non_mri;
pub mod postgres;

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the `oncolens serve` binary (bundled model, SQLite at `db`) on a free loopback port
/// with `extra` arguments and waits until it is ready; returns the process and its base URL.
pub fn spawn_server_binary(db: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database",
        ])
        .arg(format!("sqlite://{}", db.display()))
        .args(extra)
        .env_remove("ONCOLENS_MODEL")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while reqwest::blocking::Client::new()
        .get(format!("{base}/readyz"))
        .send()
        .is_err()
    {
        assert!(started.elapsed().as_secs() < 60, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (child, base)
}

/// burn's device RNG is global: a training that runs beside another in the same test binary
/// does not get the initialisation its seed promises (a flaky "learns from initialisation" test
/// showed it). Every training of a test holds this lock, so they run one at a time.
pub fn training_lock() -> std::sync::MutexGuard<'static, ()> {
    static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TRAINING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Trains `config` on `data` into `out` (no near-duplicate search, no progress bars).
pub fn train_model(
    data: &Path,
    out: &Path,
    config: oncolens::modelfile::TrainConfig,
) -> oncolens::workflows::train::TrainReport {
    let opts = oncolens::workflows::train::TrainOptions {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        config,
        resume: false,
        progress: false,
        near_duplicates: None,
    };
    let _one_at_a_time = training_lock();
    oncolens::workflows::train::train(&opts, &std::sync::atomic::AtomicBool::new(false))
        .expect("training runs")
}

/// The CSRF token of the forms on the page at `url` (the hidden `csrf` field).
pub fn csrf_token(client: &reqwest::blocking::Client, url: &str) -> String {
    let page = client.get(url).send().unwrap().text().unwrap();
    csrf_of(&page).unwrap_or_else(|| panic!("no CSRF token on {url}:\n{page}"))
}

/// The CSRF token in a page's HTML, if it has a form.
pub fn csrf_of(page: &str) -> Option<String> {
    let rest = page.split("name=\"csrf\" value=\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// A real slice of the shared data (`Testing/<class>/image(<n>).jpg`); fails saying what to
/// install when the data is missing.
pub fn real_slice(class: &str, n: usize) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../shared/data/brain-tumor-mri/Testing/{class}/image({n}).jpg"
    ));
    assert!(
        path.is_file(),
        "{} is missing: this test needs the shared data (../shared/data, see its SOURCE.md)",
        path.display()
    );
    path
}

/// Uploads `bytes` as file `name` to `POST /api/v1/analyses` (no credentials: an open server)
/// and returns the status and the JSON answer.
pub fn upload_api(base: &str, name: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    let part = reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_string());
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}/api/v1/analyses"))
        .multipart(reqwest::blocking::multipart::Form::new().part("image", part))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// `img` as PNG bytes.
pub fn png_of(img: &GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A 96 x 96 grey pattern as PNG: a valid upload that no model mistakes for a brain slice.
pub fn pattern_png() -> Vec<u8> {
    png_of(&GrayImage::from_fn(96, 96, |x, y| {
        Luma([((x * y) % 200) as u8])
    }))
}
