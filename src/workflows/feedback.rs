//! The clinicians' feedback as training data (`oncolens feedback export`): the confirmed and
//! corrected scans as an image folder `DIR/<class_id>/<analysis_id>.png`, the layout `train`,
//! `evaluate` and `finetune` read, with `manifest.json` (and `manifest.csv` for people) naming
//! for each item the analysis, the model version, the predicted and the given class, who gave
//! it and when, and `agreement.json` (how often the clinicians agreed with the model, per class
//! and per month).
//!
//! - De-identified: the images are the pixels the network saw, as PNG without metadata, named
//!   by the random analysis id; no file name, DICOM attribute or comment leaves the database.
//! - "Not assessable" items are listed in the manifest, never exported as a class.
//! - A stable share of the items (by a hash of the analysis id, so an item held out once is
//!   held out in every later export) is marked `holdout`: `finetune` never trains on them, and
//!   the promotion check evaluates on them.

use std::path::{Path, PathBuf};

use crate::database::Pool;
use crate::objects::Objects;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, RegistryError, Result};
use crate::core::files::write_json_atomic;
use crate::security::keys::KeyRing;
use crate::store::{self, FeedbackVerdict};

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_CSV: &str = "manifest.csv";
/// The agreement between model and clinicians over the exported feedback.
pub const AGREEMENT: &str = "agreement.json";
pub const FORMAT: &str = "oncolens-feedback";
/// Default share of items held out of fine-tuning for the promotion check.
pub const DEFAULT_HOLDOUT: f64 = 0.2;

/// What an exported item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemUse {
    /// Fine-tuning may train on it.
    Train,
    /// Kept out of training: the promotion check evaluates on it.
    Holdout,
    /// "Not assessable": listed, no image, no class.
    Listed,
}

/// One item of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedItem {
    pub analysis_id: String,
    /// The image, relative to the export folder (`<class_id>/<analysis_id>.png`).
    pub file: Option<String>,
    /// SHA-256 of the image file.
    pub sha256: Option<String>,
    /// `decoded` (the scan at its resolution and bit depth) or `display` (analyses stored
    /// before the decoded scan was kept: the shown image, at most 1024 px a side).
    pub image: Option<String>,
    pub model_name: String,
    pub model_version: String,
    pub predicted_class: String,
    pub verdict: FeedbackVerdict,
    pub given_class: String,
    pub given_by: String,
    pub given_unix: i64,
    #[serde(rename = "use")]
    pub use_: ItemUse,
}

/// `manifest.json` of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackManifest {
    pub format: String,
    pub format_version: u32,
    pub exported_unix: i64,
    /// The class ids of the model the feedback was given on.
    pub classes: Vec<String>,
    pub holdout_fraction: f64,
    pub items: Vec<ExportedItem>,
}

impl FeedbackManifest {
    /// Reads `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(RegistryError::NoFeedbackManifest(dir.display().to_string()).into());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::malformed(&path, e))
    }

    /// The items for `use_`.
    pub fn items_for(&self, use_: ItemUse) -> impl Iterator<Item = &ExportedItem> {
        self.items.iter().filter(move |i| i.use_ == use_)
    }

    /// The image files of the items for `use_`, with their class ids.
    pub fn files(&self, dir: &Path, use_: ItemUse) -> Vec<(PathBuf, String)> {
        self.items
            .iter()
            .filter(|i| i.use_ == use_)
            .filter_map(|i| Some((dir.join(i.file.as_ref()?), i.given_class.clone())))
            .collect()
    }

    /// SHA-256 over the sorted image hashes of the items for `use_`: what a model trained on
    /// them records.
    pub fn fingerprint(&self, use_: ItemUse) -> String {
        let mut hashes: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.use_ == use_)
            .filter_map(|i| i.sha256.as_deref())
            .collect();
        hashes.sort_unstable();
        let mut h = Sha256::new();
        for x in hashes {
            h.update(x.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Whether an analysis is held out at `fraction`: from a hash of its id, so stable across exports.
pub fn is_held_out(analysis_id: &str, fraction: f64) -> bool {
    let digest = Sha256::digest(analysis_id.as_bytes());
    let v = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    f64::from(v) / f64::from(u32::MAX) < fraction
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub train: usize,
    pub holdout: usize,
    pub not_assessable: usize,
    /// Items whose image is the display image (stored before the decoded scan was kept).
    pub display_only: usize,
    /// Items skipped because the class given is not one of the model's.
    pub unknown_class: usize,
}

impl ExportReport {
    pub fn describe(&self) -> String {
        format!(
            "exported {} items to train on and {} held out for the promotion check into {}; {} \"not assessable\" listed only{}{}",
            self.train,
            self.holdout,
            self.dir.display(),
            self.not_assessable,
            if self.display_only > 0 {
                format!(
                    "; {} from before the decoded scan was kept (display image)",
                    self.display_only
                )
            } else {
                String::new()
            },
            if self.unknown_class > 0 {
                format!(
                    "; {} skipped: class not among the model's",
                    self.unknown_class
                )
            } else {
                String::new()
            },
        )
    }
}

/// Exports the latest feedback of every analysis in `db` into `out` for a model of `classes`.
/// The folder is written beside `out` and moved into place at the end; an earlier export at
/// `out` is replaced, any other non-empty folder refused.
pub async fn export(
    db: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    out: &Path,
    classes: &[String],
    holdout_fraction: f64,
    now: i64,
) -> Result<ExportReport> {
    let occupied = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if occupied && !out.join(MANIFEST).is_file() {
        return Err(Error::write(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the folder is not empty and holds no earlier export",
            ),
        ));
    }
    let staging = staging_dir(out);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::write(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| Error::write(&staging, e))?;
    for c in classes {
        let d = staging.join(c);
        std::fs::create_dir_all(&d).map_err(|e| Error::write(&d, e))?;
    }
    let mut report = ExportReport {
        dir: out.to_path_buf(),
        train: 0,
        holdout: 0,
        not_assessable: 0,
        display_only: 0,
        unknown_class: 0,
    };
    let mut items = Vec::new();
    let latest = store::feedback::feedback_items(db).await?;
    let agreement = store::Agreement::of(&latest, classes);
    for f in latest {
        let mut item = ExportedItem {
            analysis_id: f.analysis_id.clone(),
            file: None,
            sha256: None,
            image: None,
            model_name: f.model_name,
            model_version: f.model_version,
            predicted_class: f.predicted_class,
            verdict: f.verdict,
            given_class: f.given_class,
            given_by: f.given_by,
            given_unix: f.given_unix,
            use_: ItemUse::Listed,
        };
        if f.verdict == FeedbackVerdict::NotAssessable {
            report.not_assessable += 1;
            items.push(item);
            continue;
        }
        if !classes.contains(&item.given_class) {
            report.unknown_class += 1;
            continue;
        }
        let Some((png, decoded)) =
            store::feedback::training_image(db, objects, keys, &f.analysis_id).await?
        else {
            continue; // deleted between the two queries
        };
        let relative = format!("{}/{}.png", item.given_class, f.analysis_id);
        let path = staging.join(&relative);
        std::fs::write(&path, &png).map_err(|e| Error::write(&path, e))?;
        item.sha256 = Some(hex::encode(Sha256::digest(&png)));
        item.file = Some(relative);
        item.image = Some(if decoded { "decoded" } else { "display" }.into());
        report.display_only += usize::from(!decoded);
        item.use_ = if is_held_out(&f.analysis_id, holdout_fraction) {
            report.holdout += 1;
            ItemUse::Holdout
        } else {
            report.train += 1;
            ItemUse::Train
        };
        items.push(item);
    }
    let manifest = FeedbackManifest {
        format: FORMAT.into(),
        format_version: 1,
        exported_unix: now,
        classes: classes.to_vec(),
        holdout_fraction,
        items,
    };
    write_json_atomic(&staging.join(MANIFEST), &manifest)?;
    write_csv(&staging.join(MANIFEST_CSV), &manifest)?;
    write_json_atomic(&staging.join(AGREEMENT), &agreement)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::write(out, e))?;
    }
    std::fs::rename(&staging, out).map_err(|e| Error::write(out, e))?;
    Ok(report)
}

fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "feedback".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.partial"))
}

fn write_csv(path: &Path, m: &FeedbackManifest) -> Result<()> {
    let mut text = String::from(
        "analysis_id,file,model_name,model_version,predicted_class,verdict,given_class,given_by,given_unix,use\n",
    );
    for i in &m.items {
        let fields = [
            i.analysis_id.as_str(),
            i.file.as_deref().unwrap_or(""),
            &i.model_name,
            &i.model_version,
            &i.predicted_class,
            i.verdict.as_str(),
            &i.given_class,
            &i.given_by,
            &i.given_unix.to_string(),
            match i.use_ {
                ItemUse::Train => "train",
                ItemUse::Holdout => "holdout",
                ItemUse::Listed => "listed",
            },
        ];
        let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        text.push_str(&quoted.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::write(path, e))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_share_is_stable_and_near_the_fraction() {
        let ids: Vec<String> = (0..2000).map(|i| format!("{i:032x}")).collect();
        let held = ids.iter().filter(|id| is_held_out(id, 0.2)).count();
        assert!((300..500).contains(&held), "{held} of 2000 held out");
        assert!(
            ids.iter()
                .all(|id| is_held_out(id, 0.2) == is_held_out(id, 0.2))
        );
        assert!(!ids.iter().any(|id| is_held_out(id, 0.0)));
    }
}
