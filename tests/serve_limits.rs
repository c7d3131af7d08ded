//! The server's limits and timeouts, each tried as a misbehaving client would: slow headers,
//! idle keep-alive, slow bodies, too many or too large headers, oversized and unknown JSON,
//! uploads under the wrong field name, out-of-range paging, framework errors, and images whose
//! decoded size is out of bounds. Every error comes back as the documented JSON.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use oncolens::serve::{HttpLimits, ServeConfig};
use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

fn server(request_timeout: Duration) -> (tempfile::TempDir, SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let addr = common::start_server_with(ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", tmp.path().join("limits.db").display()),
        workers: 2,
        queue: 4,
        limits: HttpLimits {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            request_timeout,
            ..Default::default()
        },
        ..Default::default()
    });
    (tmp, addr)
}

/// Reads until the server closes the connection (or `limit` passes); returns what arrived and
/// how long the connection stayed open.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

fn error_json(r: reqwest::blocking::Response) -> (StatusCode, String) {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content type {content_type:?}"
    );
    let body: serde_json::Value = r.json().unwrap();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_string();
    (status, message)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    common::png_of(&image::GrayImage::from_pixel(
        width,
        height,
        image::Luma([40]),
    ))
}

#[test]
fn a_client_trickling_headers_is_cut_off_while_others_are_served() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let trickle = std::thread::spawn(move || {
        // One header line every 500 ms, never the blank line that ends them.
        let started = Instant::now();
        for i in 0..40 {
            if slow
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        started.elapsed()
    });
    // Meanwhile a normal client is answered, while the slow one is still connected.
    std::thread::sleep(Duration::from_millis(300));
    let r = Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        !trickle.is_finished(),
        "the normal request waited until the slow client was gone"
    );
    let open_for = trickle.join().unwrap();
    assert!(
        open_for < HEADER_TIMEOUT + Duration::from_secs(2),
        "the slow client stayed connected for {open_for:?}"
    );
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (got, open_for) = read_until_closed(&mut stream, Duration::from_secs(15));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        open_for < HEADER_TIMEOUT + Duration::from_secs(2),
        "idle for {open_for:?} before the server closed it"
    );
}

/// Sends the head of a multipart upload of `len` bytes, then one byte every `pause`.
fn trickle_upload(addr: SocketAddr, len: usize, pause: Duration) -> (String, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/analyses HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {len}\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..len {
            if writer.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(pause);
        }
    });
    read_until_closed(&mut stream, Duration::from_secs(20))
}

#[test]
fn an_upload_body_that_arrives_too_slowly_gets_408() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    // Never idle for long, but far too slow in all: 100 bytes at 5 a second.
    let (got, open_for) = trickle_upload(addr, 100, Duration::from_millis(200));
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.contains("application/json") && got.contains("\"error\""),
        "{got}"
    );
    assert!(
        open_for < BODY_TIMEOUT + Duration::from_secs(2),
        "{open_for:?}"
    );
}

#[test]
fn a_request_is_stopped_at_the_whole_request_timeout() {
    let request_timeout = Duration::from_secs(1);
    let (_tmp, addr) = server(request_timeout);
    let (got, open_for) = trickle_upload(addr, 100, Duration::from_millis(100));
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"error\""), "{got}");
    assert!(
        open_for < request_timeout + Duration::from_secs(2),
        "{open_for:?}"
    );
}

#[test]
fn too_many_or_too_large_headers_get_431() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: 1\r\n"));
    }
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n",
        "a".repeat(20_000)
    );
    for head in [many, big] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(b"\r\n");
        let (got, _) = read_until_closed(&mut stream, Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    }
}

#[test]
fn json_bodies_are_small_and_strict_and_every_error_is_json() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let base = format!("http://{addr}");
    let client = Client::new();
    let form = multipart::Form::new().part(
        "image",
        multipart::Part::bytes(png(256, 256)).file_name("scan.png"),
    );
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/analyses"))
        .multipart(form)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let feedback = format!(
        "{base}/api/v1/analyses/{}/feedback",
        created["id"].as_str().unwrap()
    );

    // 45 KB of JSON: too large for feedback.
    let big = serde_json::json!({"class_id": "glioma_tumor", "comment": "a".repeat(45_000)});
    let (status, _) = error_json(client.post(&feedback).json(&big).send().unwrap());
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown fields are refused and named.
    let odd = serde_json::json!({"class_id": "glioma_tumor", "admin": true});
    let (status, message) = error_json(client.post(&feedback).json(&odd).send().unwrap());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("admin"), "{message}");
    // Not JSON at all, and the wrong content type.
    let (status, _) = error_json(
        client
            .post(&feedback)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = error_json(client.post(&feedback).body("class_id=x").send().unwrap());
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Unknown route and method.
    let (status, _) = error_json(client.get(format!("{base}/nope")).send().unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = error_json(
        client
            .delete(format!("{base}/api/v1/model"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn uploads_only_in_the_image_field_and_paging_within_range() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let base = format!("http://{addr}");
    let client = Client::new();
    let form = multipart::Form::new().part(
        "file",
        multipart::Part::bytes(png(64, 64)).file_name("scan.png"),
    );
    let (status, message) = error_json(
        client
            .post(format!("{base}/api/v1/analyses"))
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("\"image\""), "{message}");
    for query in [
        "limit=0",
        "limit=201",
        "offset=-1",
        "limit=abc",
        "color=red",
    ] {
        let (status, _) = error_json(
            client
                .get(format!("{base}/api/v1/analyses?{query}"))
                .send()
                .unwrap(),
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    let ok = client
        .get(format!("{base}/api/v1/analyses?limit=200&offset=0"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

/// The 8192 x 8192 one-colour PNG that is analysed in bounded memory: `tests/memory.rs`.
#[test]
fn an_image_too_large_to_decode_is_refused_with_the_reason() {
    let (_tmp, addr) = server(Duration::from_secs(60));
    let base = format!("http://{addr}");
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // 16-bit RGBA, 8192 x 4200: 262 MiB decoded, over the limit.
    let rgba = image::ImageBuffer::<image::Rgba<u16>, _>::new(8192, 4200);
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba16(rgba)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    let form = multipart::Form::new().part(
        "image",
        multipart::Part::bytes(bytes.into_inner()).file_name("deep.png"),
    );
    let (status, message) = error_json(
        client
            .post(format!("{base}/api/v1/analyses"))
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("MiB to decode"), "{message}");
}
