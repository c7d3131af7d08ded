//! Typed errors, one enum per concern, each carrying what it is about (a path, a setting, a
//! layer) and the error that caused it as its `source`. The umbrella [`Error`] is what library
//! functions return; the CLI and the web layer add context at their edges and show the whole
//! chain ([`sentence`]).
//!
//! Convention: a variant's message says what failed; the cause is its `source`, not repeated in
//! the message, so `anyhow`'s `{:#}` and [`sentence`] print each part once.

use std::path::PathBuf;

/// Boxed cause from another crate.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A cause from a crate whose errors only implement `Debug` (burn's recorders and stores).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Detail(pub String);

impl Detail {
    pub fn of(e: impl std::fmt::Debug) -> Self {
        Detail(format!("{e:?}"))
    }
}

/// An error and its causes joined into one sentence: "a: b: c".
pub fn sentence(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Why image bytes could not be decoded; each message is fit to show the person who sent them.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a PNG, JPEG or DICOM file (unrecognised file content)")]
    UnknownFormat,
    #[error("{0} images are not supported; use PNG or JPEG")]
    UnsupportedFormat(&'static str),
    #[error("the JPEG file is truncated (no end-of-image marker)")]
    TruncatedJpeg,
    #[error("cannot read the image header")]
    Header(#[source] image::ImageError),
    #[error("the image is too large ({width}x{height} pixels)")]
    TooLarge { width: u32, height: u32 },
    #[error(
        "the image ({width}x{height} pixels) would need {mebibytes} MiB to decode; the limit is 256 MiB"
    )]
    TooMuchMemory {
        width: u32,
        height: u32,
        mebibytes: u64,
    },
    #[error("the image is too small ({width}x{height} pixels)")]
    TooSmall { width: u32, height: u32 },
    #[error("the image cannot be decoded")]
    Corrupt(#[source] image::ImageError),
    #[error("DICOM")]
    Dicom(#[source] DicomError),
    #[error(
        "the DICOM object holds {0} frames; read it frame by frame (predict, explain and the web app do)"
    )]
    MultiFrame(u32),
}

/// Why a DICOM file cannot be analysed; each message is fit to show the person who sent it.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error(
        "no DICOM file meta information (no \"DICM\" header); only DICOM Part 10 files are read"
    )]
    NoFileMeta,
    #[error("the file cannot be parsed (truncated or malformed)")]
    Parse(#[source] Cause),
    #[error(
        "the element ({group:04X},{element:04X}) declares {declared} bytes but only {remaining} \
         follow: the file is truncated or malformed"
    )]
    DeclaredBeyondEnd {
        group: u16,
        element: u16,
        declared: u64,
        remaining: u64,
    },
    #[error("a {sop_class} object holds no image; only MR images can be analysed")]
    NotAnImage { sop_class: String },
    #[error(
        "modality {modality} ({sop_class}): oncolens analyses MR images only (its classifier and input gate know brain MRI)"
    )]
    NotMr { modality: String, sop_class: String },
    #[error(
        "transfer syntax {name} ({uid}) cannot be decoded by this build; send it uncompressed, RLE, JPEG or JPEG 2000"
    )]
    UnsupportedTransferSyntax { name: String, uid: String },
    #[error("the image size {columns}x{rows} is out of range")]
    BadSize { rows: i64, columns: i64 },
    #[error(
        "the pixel data ({columns}x{rows}, {frames} frames) would need {mebibytes} MiB to decode; the limit is 128 MiB"
    )]
    TooMuchMemory {
        rows: i64,
        columns: i64,
        frames: i64,
        mebibytes: u64,
    },
    #[error("the pixel data cannot be decoded (truncated or corrupt)")]
    Pixels(#[source] Cause),
    #[error("the pixel data holds no frame")]
    NoFrames,
}

/// What went wrong talking to a PACS over DICOMweb. Messages name the step, never a URL
/// path (it holds study and series UIDs).
#[derive(Debug, thiserror::Error)]
pub enum PacsError {
    #[error("the HTTP client cannot be set up")]
    Client(#[source] Cause),
    #[error("{what}: the PACS cannot be reached")]
    Unreachable {
        what: &'static str,
        #[source]
        source: Cause,
    },
    #[error("{what}: the PACS answered HTTP {status}")]
    Status { what: &'static str, status: u16 },
    #[error("{0}: the PACS's answer cannot be read")]
    BadResponse(&'static str, #[source] Cause),
    #[error("the watcher's database")]
    State(#[source] Cause),
    #[error("{0}")]
    Analysis(String),
}

/// Why a DICOM object cannot be de-identified.
#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error(
        "the image is marked Burned In Annotation = YES: its pixels may show names or dates, which de-identification cannot remove"
    )]
    BurnedIn,
    #[error("the file meta information cannot be written")]
    Meta(#[source] Cause),
    #[error("the de-identified object cannot be encoded")]
    Encode(#[source] Cause),
    #[error(transparent)]
    Dicom(#[from] DicomError),
}

/// What is wrong with a data folder.
#[derive(Debug, thiserror::Error)]
pub enum DatasetProblem {
    #[error("no class folders found (expected ROOT/<class>/<image files>)")]
    NoClassFolders,
    #[error("no PNG, JPEG or DICOM files in the class folders")]
    NoImages,
    #[error("class folder name {0:?} is not valid UTF-8")]
    NonUtf8ClassName(std::ffi::OsString),
    #[error("training needs at least two class folders")]
    TooFewClasses,
    #[error("the list of images that are not brain MRI cannot be read (file,kind rows): {0}")]
    BadNotMriList(String),
    #[error("not enough readable images for a training and a validation set")]
    TooFewImages,
    #[error("class folder {class:?} is not one of the model's classes {model_classes:?}")]
    UnknownClass {
        class: String,
        model_classes: Vec<String>,
    },
    #[error(
        "{missing} of the {listed} validation images in split.json are not in it; is this the training folder?"
    )]
    SplitMismatch { missing: usize, listed: usize },
}

/// What is wrong with a model file (`model.json` + `weights.bpk`) or a weights file.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileProblem {
    #[error("not an oncolens model (format {0:?})")]
    NotAModel(String),
    #[error("model format version {found} is newer than this oncolens understands ({supported})")]
    NewerFormat { found: u32, supported: u32 },
    #[error("no model.json here; is this a model directory?")]
    NoManifest,
    #[error("not an oncolens input gate (format {0:?})")]
    NotAGate(String),
    #[error("no gate.json here; is this an input gate directory?")]
    NoGateManifest,
    #[error("model.json is missing a piece or malformed")]
    Malformed(#[source] serde_json::Error),
    #[error("weights.bpk is missing")]
    WeightsMissing,
    #[error("the weights do not match model.json (checksum differs)")]
    ChecksumMismatch,
    #[error("the weights do not fit the architecture")]
    WeightsDoNotFit(#[source] Detail),
    #[error("the input check's feature model is corrupt (wrong size)")]
    CorruptFeatureModel,
    #[error("the temperature must be positive")]
    BadTemperature,
    #[error("{0}")]
    Inconsistent(&'static str),
    #[error("{count} class names for a {classes}-class network")]
    ClassCount { count: usize, classes: usize },
    #[error("invalid setting")]
    Setting(#[source] SettingError),
    #[error("the checkpoint cannot be read")]
    Checkpoint(#[source] Cause),
    #[error("not a usable weights file")]
    Weights(#[source] Cause),
    #[error("not a readable {0} state dict")]
    NotAStateDict(&'static str, #[source] Cause),
    #[error("tensors that do not fit {0}: {1:?}")]
    MisfitTensors(&'static str, Vec<String>),
    #[error("parameters missing from the file: {0:?}")]
    MissingParameters(Vec<String>),
    #[error("the file has tensors {0} does not (e.g. {1}); is it another network?")]
    ForeignTensor(&'static str, String),
}

/// An invalid setting: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {message}")]
pub struct SettingError {
    /// "network", "pre-processing", "training setting", ...
    pub what: &'static str,
    pub message: String,
}

impl SettingError {
    pub fn new(what: &'static str, message: impl Into<String>) -> Self {
        Self {
            what,
            message: message.into(),
        }
    }
}

/// A network that cannot be described in (or run from) the network description.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("layer input {0} is not defined")]
    UndefinedInput(String),
    #[error("'same' padding is not supported")]
    SamePadding,
    #[error("dilated convolutions are not supported")]
    Dilation,
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("the network returned no result")]
    NoOutput,
}

/// The int8 engine.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    #[error(
        "model {0} has no int8 calibration; run `oncolens quantize --model DIR --data TRAINING`"
    )]
    NoCalibration(String),
    #[error(
        "int8 calibration has {ranges} activation ranges, the network {layers} quantised layers (recalibrate with `oncolens quantize`)"
    )]
    RangeCount { ranges: usize, layers: usize },
    #[error("the int8 engine is not calibrated (run `oncolens quantize`)")]
    NotCalibrated,
    #[error("int8 calibration needs images")]
    NoImages,
    #[error("the network cannot run in the int8 engine")]
    Network(#[source] NetworkError),
}

/// Training.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error(
        "training diverged (loss {loss}) at epoch {epoch}, step {step}; lower the learning rate"
    )]
    Diverged {
        loss: f64,
        epoch: usize,
        step: usize,
    },
    #[error("--resume: the data folder differs from the one the checkpoint was trained on")]
    ResumeOtherData,
    #[error("--resume: settings differ from the checkpoint's (only --epochs may change)")]
    ResumeOtherSettings,
}

/// Grad-CAM.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("class index {class} is out of range (model has {classes} classes)")]
    ClassOutOfRange { class: usize, classes: usize },
    #[error("no gradient reached the last conv layer")]
    NoGradient,
    #[error("the model was not loaded for gradients")]
    NoAutodiff,
    #[error("unexpected activation shape")]
    ActivationShape,
}

/// Fitting temperature, thresholds and the input check.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration needs training and validation images")]
    NoImages,
    #[error("the feature covariance is not positive definite")]
    NotPositiveDefinite,
}

/// The web app's database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Query(#[from] sqlx::Error),
    #[error("database: migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: a stored field is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("database: a stored value is not valid: {0}")]
    Corrupt(String),
    #[error(
        "{0:?} is no database URL this server knows: give sqlite://PATH or postgres://USER@HOST/DATABASE"
    )]
    UnknownUrl(String),
}

/// The object store (scans, heat-maps): a folder or an S3 bucket.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error(
        "{0:?} is no object store this server knows: give a folder (PATH or file:///PATH), \
         s3://BUCKET[?endpoint=URL&region=NAME] or memory:"
    )]
    UnknownUrl(String),
    #[error(
        "a database server needs --objects (or $ONCOLENS_OBJECTS): an S3 bucket, or a folder \
         every replica shares; a folder of this machine's own would hide scans from the others"
    )]
    NotGiven,
    #[error("object store {store}: cannot {operation} {key}")]
    Operation {
        store: String,
        operation: &'static str,
        key: String,
        // Boxed: the crate's error is large, and every Result of the library carries this.
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("object store {store}: cannot open it")]
    Open {
        store: String,
        #[source]
        source: Cause,
    },
    #[error("object store {store}: {key} is missing (the database names it)")]
    Missing { store: String, key: String },
}

/// The model registry and the feedback loop around it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model version {0:?} is registered (`oncolens model list` shows them)")]
    UnknownVersion(String),
    #[error(
        "model version {0} was registered on another machine ({1} is not here); give this \
         command the deployment's object store (--objects) to unpack it from there"
    )]
    NotHere(String, String),
    #[error("model version {0} is not in the object store (registered before the store was used?)")]
    NotPublished(String),
    #[error("model version {0} is registered already")]
    AlreadyRegistered(String),
    #[error("model version {0} is the one served already")]
    AlreadyServed(String),
    #[error("no version is promoted: nothing to roll back")]
    NothingToRollBack,
    #[error("the candidate's classes ({candidate}) differ from the served model's ({served})")]
    ClassesDiffer { candidate: String, served: String },
    #[error("promotion refused: {0}")]
    Refused(String),
    #[error("the evaluation set {0} holds no usable image")]
    EmptyEvaluation(String),
    #[error("the feedback folder {0} has no manifest.json (`oncolens feedback export` writes one)")]
    NoFeedbackManifest(String),
    #[error("the feedback holds no confirmed or corrected item to train on")]
    NoFeedback,
}

/// Accounts, passwords, sessions and API tokens.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("there is no account named {0:?}")]
    NoSuchUser(String),
    #[error("an account named {0:?} exists already")]
    UserExists(String),
    #[error("{0:?} is not a role (admin, clinician or viewer)")]
    NoSuchRole(String),
    #[error("account names are 1 to 64 letters, digits, '.', '_' or '-' ({0:?} is not)")]
    BadName(String),
    #[error("the password is too weak: {0}")]
    WeakPassword(String),
    #[error("the password could not be hashed")]
    Hash(String),
    #[error("the account {0:?} is disabled")]
    Disabled(String),
    #[error("there is no token {0:?}")]
    NoSuchToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The append-only audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit entry {seq}: {problem}")]
    Broken { seq: i64, problem: String },
    #[error("the audit trail's head: {0}")]
    Head(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The key that encrypts stored scans (AES-256-GCM) and signs the audit trail's head.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write the key file {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("the key file {0} is malformed: {1}")]
    Malformed(PathBuf, String),
    #[error("the key file {0} can be read by other users (mode {1:o}); make it 0600")]
    Permissions(PathBuf, u32),
    #[error("ONCOLENS_KEY is not 32 bytes in base64")]
    BadEnvironmentKey,
    #[error(
        "a database server keeps no key file beside it: give every replica the same key with --key-file or ONCOLENS_KEY (`oncolens key new` makes one)"
    )]
    NotGiven,
    #[error("stored data is encrypted with a key this server does not have (key id {0})")]
    UnknownKey(String),
    #[error("stored data failed authentication: it was altered, or belongs elsewhere ({0})")]
    Tampered(String),
    #[error("stored data is not encrypted ({0})")]
    Plaintext(String),
}

/// Starting and running the web server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error("the server stopped")]
    Server(#[source] std::io::Error),
    #[error("model loading failed")]
    ModelLoading(#[source] Cause),
}

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("cannot read the image {path}")]
    UnreadableImage {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("data folder {path}")]
    Dataset {
        path: PathBuf,
        #[source]
        problem: DatasetProblem,
    },
    #[error("model {path}")]
    ModelFile {
        path: PathBuf,
        #[source]
        problem: ModelFileProblem,
    },
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error("{path} is malformed")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("network description")]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Int8(#[from] Int8Error),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    #[error("plot: no usable font ({0})")]
    Font(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("PACS")]
    Pacs(#[from] PacsError),
    #[error("cannot de-identify {path}")]
    Deid {
        path: PathBuf,
        #[source]
        source: DeidError,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn write(path: impl Into<PathBuf>, source: impl Into<Cause>) -> Self {
        Error::Write {
            path: path.into(),
            source: source.into(),
        }
    }

    /// A write whose cause only implements `Debug` (burn's recorders).
    pub fn write_debug(path: impl Into<PathBuf>, cause: impl std::fmt::Debug) -> Self {
        Self::write(path, Detail::of(cause))
    }

    pub fn model(path: impl Into<PathBuf>, problem: ModelFileProblem) -> Self {
        Error::ModelFile {
            path: path.into(),
            problem,
        }
    }

    pub fn dataset(path: impl Into<PathBuf>, problem: DatasetProblem) -> Self {
        Error::Dataset {
            path: path.into(),
            problem,
        }
    }

    pub fn unreadable_image(path: impl Into<PathBuf>, source: DecodeError) -> Self {
        Error::UnreadableImage {
            path: path.into(),
            source,
        }
    }

    pub fn malformed(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Malformed {
            path: path.into(),
            source,
        }
    }

    /// This error and its causes in one sentence.
    pub fn sentence(&self) -> String {
        sentence(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentence_names_each_cause_once() {
        let e = Error::unreadable_image("scan.jpg", DecodeError::TruncatedJpeg);
        assert_eq!(
            e.sentence(),
            "cannot read the image scan.jpg: the JPEG file is truncated (no end-of-image marker)"
        );
        let e = Error::model("m", ModelFileProblem::ChecksumMismatch);
        assert_eq!(
            e.sentence(),
            "model m: the weights do not match model.json (checksum differs)"
        );
    }
}
