//! The model registry: versions a deployment knows (each copied into its models folder, named
//! by version), which one is served, and the safety gate in front of a promotion.
//!
//! - `register` copies a model file (with its split, calibration report and curves) into
//!   `MODELS/<version>/`, publishes it, sealed, to the deployment's object store
//!   (`models/<version>/`, [`ModelFiles`]), and records its parent, data and feedback
//!   fingerprints and metrics. A machine that does not hold a version's folder (another
//!   replica registered it) unpacks it from the object store into its own models folder when
//!   it first needs it; the seal (AES-GCM under the data key) also proves the files are the
//!   ones registered.
//! - `promote` evaluates the candidate and the version served now on the same held-out images
//!   (labelled folders, and the held-out items of feedback exports, never trained on) and
//!   refuses when the candidate's accuracy, or any class's recall, is lower by more than the
//!   margin. The comparison is stored with the promotion.
//! - `rollback` returns to the version promoted before.
//! - [`follow`] keeps a running service on the served version: it polls the registry and swaps
//!   the model between requests ([`ModelSlot`]), so no request is lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::database::Pool;
use serde::Serialize;

use super::feedback::{FeedbackManifest, ItemUse, MANIFEST};
use crate::core::error::{Error, RegistryError, Result};
use crate::data::ImageFolder;
use crate::inference::{Explainer, ModelSlot, Predictor};
use crate::modelfile::bundle::{self, MANIFEST_FILE, ModelSource};
use crate::objects::Objects;
use crate::security::audit_log::{self, Event};
use crate::security::keys::KeyRing;
use crate::store::registry::{self as rows, ModelVersion, Promotion};

/// Default largest drop in accuracy or in any class's recall that a promotion accepts.
pub const DEFAULT_MARGIN: f64 = 0.02;

/// The models folder of a database when none is given: beside it, `<database file>.models`.
pub fn default_models_dir(database_url: &str) -> PathBuf {
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.starts_with(":memory:"));
    match path {
        Some(p) => PathBuf::from(format!("{p}.models")),
        None => PathBuf::from("oncolens-models"),
    }
}

/// Where the registered versions' files are: sealed in the deployment's object store, which
/// every replica reads, and unpacked into this machine's models folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub objects: Objects,
    pub keys: Arc<KeyRing>,
    /// This machine's models folder (`<version>/` each).
    pub folder: PathBuf,
}

impl ModelFiles {
    fn key(version: &str, name: &str) -> String {
        format!("models/{version}/{name}")
    }

    /// Seals and writes the files of `dir` (version `version`) into the object store.
    async fn publish(&self, version: &str, dir: &Path) -> Result<()> {
        for name in model_files() {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let key = Self::key(version, name);
            self.objects.put(&key, self.keys.seal(&key, &bytes)).await?;
        }
        Ok(())
    }

    /// The folder of `version` on this machine, unpacked from the object store when it is not
    /// here yet (written beside, then moved into place).
    async fn fetch(&self, version: &str) -> Result<PathBuf> {
        let target = self.folder.join(version);
        if target.join(MANIFEST_FILE).is_file() {
            return Ok(target);
        }
        let staging = self.folder.join(format!(".{version}.partial"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::write(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::write(&staging, e))?;
        let mut found = 0;
        for name in model_files() {
            let key = Self::key(version, name);
            let Some(sealed) = self.objects.get(&key).await? else {
                continue;
            };
            let bytes = self.keys.open(&key, &sealed)?;
            let path = staging.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::write(&path, e))?;
            found += 1;
        }
        if found == 0 || !staging.join(MANIFEST_FILE).is_file() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RegistryError::NotPublished(version.to_string()).into());
        }
        match std::fs::rename(&staging, &target) {
            Ok(()) => {}
            // Another process of this machine unpacked it meanwhile.
            Err(_) if target.join(MANIFEST_FILE).is_file() => {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e) => return Err(Error::write(&target, e)),
        }
        tracing::info!(
            "model registry: unpacked version {version} from the {}",
            self.objects.name()
        );
        Ok(target)
    }
}

/// The files of a registered version: the model file and its companions.
fn model_files() -> impl Iterator<Item = &'static str> {
    [MANIFEST_FILE, bundle::WEIGHTS_FILE]
        .into_iter()
        .chain(COMPANION_FILES)
}

/// Files of a model folder copied into the registry besides the model file itself.
const COMPANION_FILES: [&str; 6] = [
    "split.json",
    "calibration.json",
    "history.csv",
    "finetune.json",
    "reliability.png",
    "loss.png",
];

/// Registers the model in `model_dir`: copies it into this machine's models folder
/// (`<version>/`), publishes it to the object store, and records it.
pub async fn register(
    db: &Pool,
    files: &ModelFiles,
    model_dir: &Path,
    now: i64,
) -> Result<ModelVersion> {
    let models_dir = files.folder.as_path();
    let dir = bundle::model_dir(model_dir);
    // Loading checks manifest and weights belong together.
    let (manifest, _) = bundle::load(&dir, &burn::tensor::Device::flex())?;
    let version = manifest.version();
    if rows::get(db, &version).await?.is_some() {
        return Err(RegistryError::AlreadyRegistered(version).into());
    }
    let target = models_dir.join(&version);
    std::fs::create_dir_all(&target).map_err(|e| Error::write(&target, e))?;
    let target = target.canonicalize().map_err(|e| Error::io(&target, e))?;
    for name in model_files() {
        let from = dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, target.join(name)).map_err(|e| Error::write(&target, e))?;
        }
    }
    files.publish(&version, &target).await?;
    let entry = ModelVersion {
        version,
        name: manifest.name.clone(),
        parent: manifest.parent.as_ref().map(|p| p.version.clone()),
        directory: target.display().to_string(),
        data_fingerprint: manifest.data.fingerprint.clone(),
        feedback_fingerprint: manifest.feedback.as_ref().map(|f| f.fingerprint.clone()),
        metrics: serde_json::json!({
            "validation": manifest.validation,
            "feedback": manifest.feedback,
        }),
        registered_unix: now,
    };
    rows::register(db, &entry).await?;
    Ok(entry)
}

/// The model the registry serves, or `fallback` (the server's own model) when none is promoted.
/// With `files`, a version registered on another machine is unpacked from the object store.
pub async fn served_source(
    db: &Pool,
    files: Option<&ModelFiles>,
    fallback: &ModelSource,
) -> Result<ModelSource> {
    match rows::served(db).await? {
        Some(p) => Ok(ModelSource::Directory(
            version_dir(db, files, &p.version).await?,
        )),
        None => Ok(fallback.clone()),
    }
}

/// The folder of a registered version: where it was registered, when this machine has it, else
/// unpacked from the object store.
async fn version_dir(db: &Pool, files: Option<&ModelFiles>, version: &str) -> Result<PathBuf> {
    let registered = rows::get(db, version)
        .await?
        .map(|v| PathBuf::from(v.directory))
        .ok_or_else(|| Error::from(RegistryError::UnknownVersion(version.to_string())))?;
    if registered.join(MANIFEST_FILE).is_file() {
        return Ok(registered);
    }
    match files {
        Some(files) => files.fetch(version).await,
        None => Err(
            RegistryError::NotHere(version.to_string(), registered.display().to_string()).into(),
        ),
    }
}

/// Labelled images to compare models on, with their class indices in the model's order.
#[derive(Debug, Clone)]
pub struct EvaluationSet {
    pub classes: Vec<String>,
    pub images: Vec<(PathBuf, usize)>,
    /// Where they came from, for the report.
    pub sources: Vec<String>,
}

impl EvaluationSet {
    /// The images of `dirs` for a model of `classes`: a feedback export gives its held-out
    /// items (never trained on); any other folder is `DIR/<class_id>/...`, whose classes must be
    /// the model's.
    pub fn from_dirs(dirs: &[PathBuf], classes: &[String]) -> Result<Self> {
        let mut images = Vec::new();
        let mut sources = Vec::new();
        for dir in dirs {
            let before = images.len();
            if dir.join(MANIFEST).is_file() {
                let m = FeedbackManifest::read(dir)?;
                for (path, class) in m.files(dir, ItemUse::Holdout) {
                    if let Some(i) = classes.iter().position(|c| *c == class) {
                        images.push((path, i));
                    }
                }
                sources.push(format!(
                    "{} held-out feedback items of {}",
                    images.len() - before,
                    dir.display()
                ));
            } else {
                let folder = ImageFolder::scan(dir)?;
                for s in &folder.samples {
                    let class = &folder.classes[s.label];
                    let i = classes.iter().position(|c| c == class).ok_or_else(|| {
                        RegistryError::ClassesDiffer {
                            candidate: folder.classes.join(", "),
                            served: classes.join(", "),
                        }
                    })?;
                    images.push((s.path.clone(), i));
                }
                sources.push(format!(
                    "{} images of {}",
                    images.len() - before,
                    dir.display()
                ));
            }
        }
        if images.is_empty() {
            let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(RegistryError::EmptyEvaluation(names.join(", ")).into());
        }
        Ok(Self {
            classes: classes.to_vec(),
            images,
            sources,
        })
    }
}

/// A model's figures on an evaluation set.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub version: String,
    pub name: String,
    pub accuracy: f64,
    /// Per class (model order); `None` for a class without images.
    pub recall: Vec<Option<f64>>,
    /// Images it could not read.
    pub unreadable: usize,
}

/// Accuracy and per-class recall of the model from `source` on `set` (the most probable class;
/// "uncertain" and the input check do not change it).
pub fn measure(source: &ModelSource, set: &EvaluationSet) -> Result<Figures> {
    let predictor = Predictor::open_source(source)?;
    let paths: Vec<PathBuf> = set.images.iter().map(|(p, _)| p.clone()).collect();
    let k = set.classes.len();
    let (mut hit, mut total) = (vec![0usize; k], vec![0usize; k]);
    let mut unreadable = 0;
    for (answer, (_, label)) in predictor.predict_files(&paths).into_iter().zip(&set.images) {
        total[*label] += 1;
        match answer {
            Ok(p) => hit[*label] += usize::from(p.class_index == *label),
            Err(_) => unreadable += 1,
        }
    }
    let n: usize = total.iter().sum();
    let m = &predictor.manifest;
    Ok(Figures {
        version: m.version(),
        name: m.name.clone(),
        accuracy: hit.iter().sum::<usize>() as f64 / n.max(1) as f64,
        recall: hit
            .iter()
            .zip(&total)
            .map(|(&h, &t)| (t > 0).then(|| h as f64 / t as f64))
            .collect(),
        unreadable,
    })
}

/// The candidate beside the served model on the same images, and the gate's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub images: usize,
    pub sources: Vec<String>,
    pub classes: Vec<String>,
    pub margin: f64,
    pub served: Figures,
    pub candidate: Figures,
    /// Why the candidate is refused (empty: accepted).
    pub refusals: Vec<String>,
}

impl Comparison {
    pub fn of(set: &EvaluationSet, served: Figures, candidate: Figures, margin: f64) -> Self {
        let mut refusals = Vec::new();
        if candidate.accuracy < served.accuracy - margin {
            refusals.push(format!(
                "accuracy {:.1} % is {:.1} points below the served model's {:.1} %",
                100.0 * candidate.accuracy,
                100.0 * (served.accuracy - candidate.accuracy),
                100.0 * served.accuracy
            ));
        }
        for (i, class) in set.classes.iter().enumerate() {
            if let (Some(c), Some(s)) = (candidate.recall[i], served.recall[i])
                && c < s - margin
            {
                refusals.push(format!(
                    "recall of {class} {:.1} % is {:.1} points below the served model's {:.1} %",
                    100.0 * c,
                    100.0 * (s - c),
                    100.0 * s
                ));
            }
        }
        Self {
            images: set.images.len(),
            sources: set.sources.clone(),
            classes: set.classes.clone(),
            margin,
            served,
            candidate,
            refusals,
        }
    }

    pub fn accepted(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The comparison as a table for the terminal.
    pub fn to_text(&self) -> String {
        let pct =
            |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{:.1} %", 100.0 * v));
        let mut out = format!(
            "held-out comparison on {} images ({}); margin {:.1} points\n\n{:<22} {:>16} {:>16}\n",
            self.images,
            self.sources.join("; "),
            100.0 * self.margin,
            "",
            format!("served {}", self.served.version),
            format!("candidate {}", self.candidate.version),
        );
        out.push_str(&format!(
            "{:<22} {:>16} {:>16}\n",
            "accuracy",
            pct(Some(self.served.accuracy)),
            pct(Some(self.candidate.accuracy))
        ));
        for (i, class) in self.classes.iter().enumerate() {
            out.push_str(&format!(
                "{:<22} {:>16} {:>16}\n",
                format!("recall {class}"),
                pct(self.served.recall[i]),
                pct(self.candidate.recall[i])
            ));
        }
        out.push('\n');
        if self.accepted() {
            out.push_str("accepted: no figure is lower by more than the margin\n");
        } else {
            for r in &self.refusals {
                out.push_str(&format!("refused: {r}\n"));
            }
        }
        out
    }
}

/// What [`promote`] is asked to do.
#[derive(Debug, Clone)]
pub struct PromoteOptions {
    pub version: String,
    /// Labelled folders and feedback exports to compare on.
    pub evaluation: Vec<PathBuf>,
    pub margin: f64,
    /// Who promotes (recorded and audited).
    pub by: String,
    /// The model served while none is promoted (the server's `--model`, else the bundled one).
    pub fallback: ModelSource,
    /// Only compare: nothing is recorded, whatever the outcome.
    pub dry_run: bool,
    /// The registry's files, for versions registered on another machine.
    pub files: Option<ModelFiles>,
}

/// Compares the registered candidate with the served model on the held-out images and promotes
/// it when the gate accepts; the comparison is returned either way ([`RegistryError::Refused`]
/// carries the reasons). With `dry_run` it only compares.
pub async fn promote(
    db: &Pool,
    keys: Option<&KeyRing>,
    opts: &PromoteOptions,
    now: i64,
) -> Result<Comparison> {
    let candidate_dir = version_dir(db, opts.files.as_ref(), &opts.version).await?;
    if rows::served(db)
        .await?
        .is_some_and(|p| p.version == opts.version)
    {
        return Err(RegistryError::AlreadyServed(opts.version.clone()).into());
    }
    let served = served_source(db, opts.files.as_ref(), &opts.fallback).await?;
    let candidate = ModelSource::Directory(candidate_dir);
    let (evaluation, margin) = (opts.evaluation.clone(), opts.margin);
    let comparison = tokio::task::spawn_blocking(move || -> Result<Comparison> {
        let served_manifest = bundle::manifest_of(&served)?;
        let candidate_manifest = bundle::manifest_of(&candidate)?;
        let classes = served_manifest.class_ids();
        if candidate_manifest.class_ids() != classes {
            return Err(RegistryError::ClassesDiffer {
                candidate: candidate_manifest.class_ids().join(", "),
                served: classes.join(", "),
            }
            .into());
        }
        let set = EvaluationSet::from_dirs(&evaluation, &classes)?;
        let s = measure(&served, &set)?;
        let c = measure(&candidate, &set)?;
        Ok(Comparison::of(&set, s, c, margin))
    })
    .await
    .map_err(|e| {
        Error::Registry(RegistryError::Refused(format!(
            "the evaluation failed: {e}"
        )))
    })??;
    let json = serde_json::to_value(&comparison).ok();
    if opts.dry_run {
        return Ok(comparison);
    }
    if !comparison.accepted() {
        audit(
            db,
            keys,
            Event::new(opts.by.clone(), "model.promote", opts.version.clone())
                .outcome(audit_log::Outcome::Denied)
                .detail(comparison.refusals.join("; ")),
            now,
        )
        .await;
        return Err(RegistryError::Refused(comparison.to_text()).into());
    }
    rows::promote(db, &opts.version, &opts.by, json.as_ref(), now).await?;
    audit(
        db,
        keys,
        Event::new(opts.by.clone(), "model.promote", opts.version.clone()).detail(format!(
            "accuracy {:.1} % -> {:.1} % on {} held-out images",
            100.0 * comparison.served.accuracy,
            100.0 * comparison.candidate.accuracy,
            comparison.images
        )),
        now,
    )
    .await;
    Ok(comparison)
}

/// Rolls back to the version promoted before; returns it (`None`: the server's own model).
pub async fn rollback(
    db: &Pool,
    keys: Option<&KeyRing>,
    by: &str,
    now: i64,
) -> Result<Option<Promotion>> {
    let before = rows::served(db).await?;
    let after = rows::rollback(db, now).await?;
    audit(
        db,
        keys,
        Event::new(
            by.to_string(),
            "model.rollback",
            before.map(|p| p.version).unwrap_or_default(),
        )
        .detail(format!(
            "now serving {}",
            after
                .as_ref()
                .map_or("the server's own model".to_string(), |p| p.version.clone())
        )),
        now,
    )
    .await;
    Ok(after)
}

async fn audit(db: &Pool, keys: Option<&KeyRing>, event: Event, now: i64) {
    let Some(keys) = keys else { return };
    if let Err(e) = audit_log::record(db, keys, &event, now).await {
        tracing::error!(
            "audit entry {} could not be recorded: {}",
            event.action,
            crate::core::error::sentence(&e)
        );
    }
}

/// How a following service loads each version.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The model served while none is promoted.
    pub fallback: ModelSource,
    pub tta: bool,
    pub int8: bool,
    /// How often the registry is read.
    pub interval: Duration,
    /// Records each switch in the audit trail.
    pub audit_keys: Option<Arc<KeyRing>>,
    /// The registry's files, for versions registered on another machine.
    pub files: Option<ModelFiles>,
}

/// Keeps `slot` on the registry's served version: reads the registry every interval and, when
/// the served version changed, loads it off the async runtime and swaps it in between requests.
/// A version that fails to load is logged and retried at the next change; the old one keeps
/// serving.
pub async fn follow(slot: Arc<ModelSlot>, db: Pool, opts: FollowOptions) {
    let mut failed: Option<String> = None;
    let fallback_version = match bundle::version_of(&opts.fallback) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("model registry: not followed: {}", e.sentence());
            return;
        }
    };
    loop {
        tokio::time::sleep(opts.interval).await;
        if let Err(e) = follow_once(&slot, &db, &opts, &fallback_version, &mut failed).await {
            tracing::warn!("model registry: {}", e.sentence());
        }
    }
}

/// One look at the registry (a single query while nothing changes); `Ok(true)` when the
/// model was switched.
pub async fn follow_once(
    slot: &ModelSlot,
    db: &Pool,
    opts: &FollowOptions,
    fallback_version: &str,
    failed: &mut Option<String>,
) -> Result<bool> {
    let wanted = rows::served(db)
        .await?
        .map_or_else(|| fallback_version.to_string(), |p| p.version);
    if wanted == slot.version() || failed.as_deref() == Some(wanted.as_str()) {
        return Ok(false);
    }
    let source = served_source(db, opts.files.as_ref(), &opts.fallback).await?;
    let (tta, int8) = (opts.tta, opts.int8);
    let load = source.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        Explainer::open_source(&load).and_then(|e| e.with_tta(tta).with_int8(int8))
    })
    .await
    .map_err(|e| Error::Registry(RegistryError::Refused(format!("loading failed: {e}"))))?;
    match loaded {
        Ok(explainer) => {
            let old = slot.replace(explainer);
            *failed = None;
            tracing::info!(
                "model registry: now serving {} (was {})",
                wanted,
                old.manifest.version()
            );
            if let Some(keys) = &opts.audit_keys {
                audit(
                    db,
                    Some(keys),
                    Event::new("system", "model.load", wanted.clone())
                        .detail(format!("switched from {}", old.manifest.version())),
                    now_unix(),
                )
                .await;
            }
            Ok(true)
        }
        Err(e) => {
            *failed = Some(wanted);
            Err(e)
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_folder_sits_beside_the_database() {
        assert_eq!(
            default_models_dir("sqlite://data/oncolens.db"),
            PathBuf::from("data/oncolens.db.models")
        );
        assert_eq!(
            default_models_dir("sqlite:x.db?mode=rwc"),
            PathBuf::from("x.db.models")
        );
        assert_eq!(
            default_models_dir("sqlite::memory:"),
            PathBuf::from("oncolens-models")
        );
    }

    fn figures(accuracy: f64, recall: [f64; 2]) -> Figures {
        Figures {
            version: "v".into(),
            name: "m".into(),
            accuracy,
            recall: recall.iter().map(|&r| Some(r)).collect(),
            unreadable: 0,
        }
    }

    #[test]
    fn gate_refuses_a_drop_in_accuracy_or_any_recall() {
        let set = EvaluationSet {
            classes: vec!["a".into(), "b".into()],
            images: vec![(PathBuf::from("x"), 0)],
            sources: vec![],
        };
        let ok = Comparison::of(
            &set,
            figures(0.8, [0.8, 0.8]),
            figures(0.79, [0.9, 0.79]),
            0.02,
        );
        assert!(ok.accepted(), "{}", ok.to_text());
        let worse = Comparison::of(
            &set,
            figures(0.8, [0.8, 0.8]),
            figures(0.7, [0.8, 0.8]),
            0.02,
        );
        assert_eq!(worse.refusals.len(), 1);
        let class = Comparison::of(
            &set,
            figures(0.8, [0.8, 0.8]),
            figures(0.85, [0.95, 0.7]),
            0.02,
        );
        assert_eq!(class.refusals.len(), 1, "{}", class.to_text());
        assert!(class.refusals[0].contains("recall of b"));
    }
}
