//! A real S3 server for a test: Garage (`cargo install --locked garage`), one node with its
//! metadata and data in a temporary folder, on free loopback ports, stopped when dropped. The
//! test's bucket and access key are made through Garage's own command line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oncolens::objects::{ObjectsLocation, S3Credentials, S3Location};

pub const BUCKET: &str = "oncolens";
/// Garage's key ids are `GK` and 24 hex digits; its secrets 64 hex digits.
pub const ACCESS_KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET_ACCESS_KEY: &str =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub struct Garage {
    child: Child,
    config: PathBuf,
    pub s3_port: u16,
    dir: tempfile::TempDir,
}

/// Garage's binary: on the PATH, else where `cargo install` puts it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("garage"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let installed = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin/garage"));
    on_path
        .into_iter()
        .chain(installed)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `garage` binary on the PATH or in ~/.cargo/bin: the S3 tests need Garage \
                 (cargo install --locked garage; .ci/run installs it)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    /// Starts a one-node Garage and makes the bucket and key of [`Garage::location`]. The ports
    /// are free when chosen but another process may take one before Garage binds it; Garage then
    /// exits, and the start is tried again on fresh ports (three tries in all).
    pub fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(garage) => return garage,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "garage did not start in three tries:\n{}",
            failures.join("\n---\n")
        )
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let root = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{root}/meta\"\n\
                 data_dir = \"{root}/data\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{SECRET_ACCESS_KEY}\"\n\
                 [s3_api]\n\
                 s3_region = \"garage\"\n\
                 api_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\n\
                 api_bind_addr = \"127.0.0.1:{admin}\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("garage.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        let mut garage = Self {
            child,
            config,
            s3_port: s3,
            dir,
        };
        // `node id` reads the node's key from its metadata folder, so it can answer before the
        // server listens for RPC; `status` goes through RPC, so the layout waits for it. (CI once
        // failed here with "Connection refused" when the layout was assigned straight away.)
        let node = garage.retry("node id -q", |g| g.cli(&["node", "id", "-q"]))?;
        let node = node
            .split('@')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        garage.retry("status", |g| g.cli(&["status"]))?;
        garage.retry("layout assign", |g| {
            g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
        })?;
        garage.retry("layout apply", |g| {
            g.cli(&["layout", "apply", "--version", "1"])
        })?;
        garage.retry("bucket create", |g| g.cli(&["bucket", "create", BUCKET]))?;
        garage.cli_ok(&[
            "key",
            "import",
            "--yes",
            "-n",
            "oncolens",
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
        ]);
        garage.cli_ok(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "oncolens",
        ]);
        Ok(garage)
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("running garage");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("garage {}: {e}\n{}", args.join(" "), self.log()))
    }

    /// Runs `f` until it succeeds; an error at once (with Garage's log) if the server has
    /// exited, and after 30 s of failures.
    fn retry(
        &mut self,
        what: &str,
        f: impl Fn(&Self) -> Result<String, String>,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "garage exited ({status}) before {what}:\n{}",
                    self.log()
                ));
            }
            match f(self) {
                Ok(out) => return Ok(out),
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("garage {what} kept failing: {e}\n{}", self.log()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The `--objects` URL of the test bucket (credentials go in the environment).
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint={}&region=garage",
            self.endpoint()
        )
    }

    /// The test bucket under `prefix`, with the test's key.
    pub fn location(&self, prefix: &str) -> ObjectsLocation {
        ObjectsLocation::S3(S3Location {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint()),
            region: Some("garage".into()),
            credentials: Some(S3Credentials {
                access_key_id: ACCESS_KEY_ID.into(),
                secret_access_key: SECRET_ACCESS_KEY.into(),
            }),
        })
    }

    /// Environment of a process that reaches the bucket through `--objects` [`Garage::url`].
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
