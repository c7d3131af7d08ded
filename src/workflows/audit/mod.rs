//! Data audit: what an image data set holds and whether any accuracy figure on it means anything.
//!
//! - counts per split and class; image size, colour layout and bit depth; unreadable files;
//! - exact duplicates, by file bytes and by decoded pixels;
//! - near-duplicates: pHash (all eight flips/rotations) within a Hamming threshold, each
//!   candidate confirmed by normalised cross-correlation of the aligned brain-cropped thumbnails,
//!   linked transitively into groups;
//! - groups that mix classes (label conflicts) listed first, then by size;
//! - leakage: test images with a duplicate or near-duplicate in training;
//! - an exclusion list (`exclusions.json`) that evaluation and the validation split use;
//! - a contact sheet of the largest groups for checking by eye.
//!
//! The same near-duplicate search ([`near_duplicate_pairs`]) serves `train` (to keep each group
//! on one side of the validation split) and `evaluate` (to drop leaked test images).

pub mod fingerprint;
pub mod sheet;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::DisjointSet;
use crate::core::error::{Error, Result, sentence};
use crate::data::folder::ImageFolder;
use crate::imaging::{ImageInfo, decode_grey_with_info};
pub use fingerprint::{Fingerprint, correlation, fingerprint, phash_distance};

/// Near-duplicate criteria.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NearDuplicateCriteria {
    /// Largest pHash Hamming distance (best of eight orientations) for a candidate pair.
    pub max_distance: u32,
    /// Smallest normalised cross-correlation of the aligned thumbnails to confirm it.
    pub min_correlation: f32,
}

impl Default for NearDuplicateCriteria {
    /// Chosen from the inspection recorded in docs/data-audit.md.
    fn default() -> Self {
        Self {
            max_distance: 12,
            min_correlation: 0.90,
        }
    }
}

/// A confirmed near-duplicate pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub distance: u32,
    pub correlation: f32,
}

/// Decodes and fingerprints every sample (`None` for unreadable files).
pub fn fingerprint_folder(
    folder: &ImageFolder,
    progress: Option<&ProgressBar>,
) -> Vec<Option<Fingerprint>> {
    folder
        .samples
        .par_iter()
        .map(|s| {
            let fp = std::fs::read(&s.path)
                .ok()
                .and_then(|b| decode_grey_with_info(&b).ok())
                .map(|(img, _)| fingerprint(&img));
            if let Some(p) = progress {
                p.inc(1);
            }
            fp
        })
        .collect()
}

/// Confirmed near-duplicate pairs within `a` (when `b` is `None`, pairs `i < j`) or between `a`
/// and `b` (`a` index first).
pub fn near_duplicate_pairs(
    a: &[Option<Fingerprint>],
    b: Option<&[Option<Fingerprint>]>,
    criteria: NearDuplicateCriteria,
) -> Vec<Pair> {
    let other = b.unwrap_or(a);
    let mut pairs: Vec<Pair> = a
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, fa)| {
            let start = if b.is_none() { i + 1 } else { 0 };
            let fa = fa.as_ref();
            other[start.min(other.len())..]
                .iter()
                .enumerate()
                .filter_map(move |(dj, fb)| {
                    let (fa, fb) = (fa?, fb.as_ref()?);
                    let (distance, o) = phash_distance(fa, fb);
                    if distance > criteria.max_distance {
                        return None;
                    }
                    let correlation = correlation(fa, fb, o);
                    (correlation >= criteria.min_correlation).then_some(Pair {
                        a: i,
                        b: start + dj,
                        distance,
                        correlation,
                    })
                })
        })
        .collect();
    pairs.sort_by_key(|p| (p.a, p.b));
    pairs
}

/// Test-set indices that have an exact or near copy in training.
pub fn leaked_test_indices(
    train: &ImageFolder,
    test: &ImageFolder,
    criteria: Option<NearDuplicateCriteria>,
) -> Vec<usize> {
    let hashes: std::collections::HashSet<&str> =
        train.samples.iter().map(|s| s.sha256.as_str()).collect();
    let mut leaked: Vec<bool> = test
        .samples
        .iter()
        .map(|s| hashes.contains(s.sha256.as_str()))
        .collect();
    if let Some(c) = criteria {
        let ft = fingerprint_folder(test, None);
        let fr = fingerprint_folder(train, None);
        for p in near_duplicate_pairs(&ft, Some(&fr), c) {
            leaked[p.a] = true;
        }
    }
    leaked
        .iter()
        .enumerate()
        .filter_map(|(i, &l)| l.then_some(i))
        .collect()
}

/// Near-duplicate links within one folder, for the validation split.
pub fn near_duplicate_links(
    folder: &ImageFolder,
    criteria: NearDuplicateCriteria,
) -> Vec<(usize, usize)> {
    let fps = fingerprint_folder(folder, None);
    near_duplicate_pairs(&fps, None, criteria)
        .into_iter()
        .map(|p| (p.a, p.b))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassCount {
    pub class: String,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub split: String,
    pub images: usize,
    pub classes: Vec<ClassCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub split: String,
    pub class: String,
    /// Path relative to the audited root.
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DuplicateGroup {
    /// "exact" when every member has the same decoded pixels, else "near".
    pub kind: String,
    pub mixes_classes: bool,
    pub spans_splits: bool,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leakage {
    pub train_split: String,
    pub test_split: String,
    /// Test images with a byte-identical copy in training.
    pub exact: usize,
    /// Test images with an exact or near copy in training.
    pub total: usize,
    pub per_class: BTreeMap<String, usize>,
    pub test_images: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub root: String,
    pub splits: Vec<SplitSummary>,
    pub images: usize,
    pub unreadable: Vec<String>,
    /// "WxH" -> count, most common first.
    pub sizes: Vec<(String, usize)>,
    pub colors: BTreeMap<String, usize>,
    pub bits_per_channel: BTreeMap<u16, usize>,
    pub formats: BTreeMap<String, usize>,
    pub byte_identical_groups: usize,
    pub byte_identical_redundant_files: usize,
    pub pixel_identical_groups: usize,
    pub criteria: NearDuplicateCriteria,
    pub near_duplicate_pairs: usize,
    /// All groups of two or more images (exact and near), label conflicts first.
    pub groups: Vec<DuplicateGroup>,
    pub leakage: Option<Leakage>,
    pub seconds: f64,
}

/// The machine-readable list that `evaluate --exclusions` and `train --exclusions` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exclusions {
    pub criteria: NearDuplicateCriteria,
    /// Test images (relative to the audited root) that have a copy in training.
    pub leaked_test_images: Vec<String>,
    /// Every duplicate group, as paths relative to the audited root.
    pub groups: Vec<Vec<String>>,
}

/// Splits of an audit root: `ROOT/<split>/<class>/<file>` when every sub-folder holds folders,
/// else `ROOT/<class>/<file>` as one split.
fn splits_of(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let nested = !dirs.is_empty()
        && dirs.iter().all(|d| {
            std::fs::read_dir(d).is_ok_and(|mut it| it.any(|e| e.is_ok_and(|e| e.path().is_dir())))
        });
    Ok(if nested {
        dirs.into_iter()
            .map(|d| {
                (
                    d.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    d,
                )
            })
            .collect()
    } else {
        vec![(".".to_string(), root.to_path_buf())]
    })
}

fn is_named(split: &str, names: &[&str]) -> bool {
    names.iter().any(|n| split.eq_ignore_ascii_case(n))
}

struct Entry {
    split: usize,
    class: String,
    path: String,
    bytes_hash: String,
    pixels_hash: Option<String>,
    info: Option<ImageInfo>,
    fingerprint: Option<Fingerprint>,
    error: Option<String>,
}

/// Audits `root`; `progress` shows a bar while hashing.
pub fn audit(
    root: &Path,
    criteria: NearDuplicateCriteria,
    progress: bool,
) -> Result<(AuditReport, Exclusions)> {
    let started = Instant::now();
    let splits = splits_of(root)?;
    let folders: Vec<ImageFolder> = splits
        .iter()
        .map(|(_, p)| ImageFolder::scan(p))
        .collect::<Result<_>>()?;
    let entries = read_entries(root, &folders, progress);
    let mut copies = find_copies(&entries, criteria);
    let groups = duplicate_groups(&entries, &splits, &mut copies.sets);
    let (leakage, leaked_test_images) = find_leakage(&entries, &splits, &mut copies.sets);
    let layout = ImageLayout::of(&entries);
    let report = AuditReport {
        root: root.display().to_string(),
        splits: split_summaries(&splits, &folders),
        images: entries.len(),
        unreadable: entries.iter().filter_map(|e| e.error.clone()).collect(),
        sizes: layout.sizes,
        colors: layout.colors,
        bits_per_channel: layout.bits_per_channel,
        formats: layout.formats,
        byte_identical_groups: copies.byte_groups.len(),
        byte_identical_redundant_files: copies.byte_groups.iter().map(|m| m.len() - 1).sum(),
        pixel_identical_groups: copies.pixel_groups,
        criteria,
        near_duplicate_pairs: copies.near_pairs,
        groups,
        leakage,
        seconds: started.elapsed().as_secs_f64(),
    };
    let exclusions = Exclusions {
        criteria,
        leaked_test_images,
        groups: report
            .groups
            .iter()
            .map(|g| g.members.iter().map(|m| m.path.clone()).collect())
            .collect(),
    };
    Ok((report, exclusions))
}

/// Step 1: every file of every split, hashed, decoded and fingerprinted (in parallel).
fn read_entries(root: &Path, folders: &[ImageFolder], progress: bool) -> Vec<Entry> {
    let total: usize = folders.iter().map(|f| f.samples.len()).sum();
    let bar = if progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    let jobs: Vec<(usize, &ImageFolder, usize)> = folders
        .iter()
        .enumerate()
        .flat_map(|(s, f)| (0..f.samples.len()).map(move |i| (s, f, i)))
        .collect();
    let entries = jobs
        .par_iter()
        .map(|&(s, folder, i)| {
            let entry = read_entry(root, s, folder, i);
            bar.inc(1);
            entry
        })
        .collect();
    bar.finish_and_clear();
    entries
}

fn read_entry(root: &Path, split: usize, folder: &ImageFolder, i: usize) -> Entry {
    let sample = &folder.samples[i];
    let path = sample
        .path
        .strip_prefix(root)
        .unwrap_or(&sample.path)
        .to_string_lossy()
        .into_owned();
    let decoded = std::fs::read(&sample.path)
        .map_err(|e| e.to_string())
        .and_then(|b| decode_grey_with_info(&b).map_err(|e| sentence(&e)));
    let mut entry = Entry {
        split,
        class: folder.classes[sample.label].clone(),
        path,
        bytes_hash: sample.sha256.clone(),
        pixels_hash: None,
        info: None,
        fingerprint: None,
        error: None,
    };
    match decoded {
        Ok((img, info)) => {
            let mut h = Sha256::new();
            h.update(img.width().to_le_bytes());
            h.update(img.height().to_le_bytes());
            for p in img.as_raw() {
                h.update(p.to_le_bytes());
            }
            entry.pixels_hash = Some(hex::encode(h.finalize()));
            entry.fingerprint = Some(fingerprint(&img));
            entry.info = Some(info);
        }
        Err(e) => entry.error = Some(format!("{}: {e}", entry.path)),
    }
    entry
}

/// What step 2 found: copies by bytes, by pixels and near-duplicates, joined in `sets`.
struct Copies {
    sets: DisjointSet,
    byte_groups: Vec<Vec<usize>>,
    pixel_groups: usize,
    near_pairs: usize,
}

/// Step 2: exact groups by bytes and by pixels, and confirmed near pairs, all joined.
fn find_copies(entries: &[Entry], criteria: NearDuplicateCriteria) -> Copies {
    let mut sets = DisjointSet::new(entries.len());
    let mut by_bytes: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_pixels: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_bytes.entry(&e.bytes_hash).or_default().push(i);
        if let Some(h) = &e.pixels_hash {
            by_pixels.entry(h).or_default().push(i);
        }
    }
    for members in by_bytes.values().chain(by_pixels.values()) {
        sets.union_all(members);
    }
    let fps: Vec<Option<Fingerprint>> = entries.iter().map(|e| e.fingerprint.clone()).collect();
    let pairs = near_duplicate_pairs(&fps, None, criteria);
    for p in &pairs {
        sets.union(p.a, p.b);
    }
    Copies {
        sets,
        byte_groups: by_bytes.into_values().filter(|m| m.len() > 1).collect(),
        pixel_groups: by_pixels.values().filter(|m| m.len() > 1).count(),
        near_pairs: pairs.len(),
    }
}

/// Step 3: the groups of more than one file, label conflicts first, then by size.
fn duplicate_groups(
    entries: &[Entry],
    splits: &[(String, PathBuf)],
    sets: &mut DisjointSet,
) -> Vec<DuplicateGroup> {
    let mut grouped: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, root) in sets.roots().into_iter().enumerate() {
        grouped.entry(root).or_default().push(i);
    }
    let member = |i: usize| Member {
        split: splits[entries[i].split].0.clone(),
        class: entries[i].class.clone(),
        path: entries[i].path.clone(),
    };
    let mut groups: Vec<DuplicateGroup> = grouped
        .values()
        .filter(|m| m.len() > 1)
        .map(|m| {
            let first = &entries[m[0]];
            let exact = m.iter().all(|&i| {
                entries[i].pixels_hash.is_some() && entries[i].pixels_hash == first.pixels_hash
            });
            DuplicateGroup {
                kind: if exact { "exact" } else { "near" }.into(),
                mixes_classes: m.iter().any(|&i| entries[i].class != first.class),
                spans_splits: m.iter().any(|&i| entries[i].split != first.split),
                members: m.iter().map(|&i| member(i)).collect(),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.mixes_classes
            .cmp(&a.mixes_classes)
            .then(b.members.len().cmp(&a.members.len()))
    });
    groups
}

/// Step 4: test images with a copy (exact or near) in a training split, when the root has both.
fn find_leakage(
    entries: &[Entry],
    splits: &[(String, PathBuf)],
    sets: &mut DisjointSet,
) -> (Option<Leakage>, Vec<String>) {
    let train_split = splits
        .iter()
        .position(|(s, _)| is_named(s, &["Training", "train"]));
    let test_split = splits
        .iter()
        .position(|(s, _)| is_named(s, &["Testing", "test"]));
    let (Some(tr), Some(te)) = (train_split, test_split) else {
        return (None, Vec::new());
    };
    let roots = sets.roots();
    let train_bytes: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.split == tr)
        .map(|e| e.bytes_hash.as_str())
        .collect();
    let train_roots: std::collections::HashSet<usize> = (0..entries.len())
        .filter(|&i| entries[i].split == tr)
        .map(|i| roots[i])
        .collect();
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    let mut leaked = Vec::new();
    let (mut exact, mut test_images) = (0, 0);
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.split == te) {
        test_images += 1;
        if train_bytes.contains(e.bytes_hash.as_str()) {
            exact += 1;
        }
        if train_roots.contains(&roots[i]) {
            *per_class.entry(e.class.clone()).or_default() += 1;
            leaked.push(e.path.clone());
        }
    }
    let leakage = Leakage {
        train_split: splits[tr].0.clone(),
        test_split: splits[te].0.clone(),
        exact,
        total: leaked.len(),
        per_class,
        test_images,
    };
    (Some(leakage), leaked)
}

/// Step 5: sizes, colour layouts, bit depths and formats of the readable files.
struct ImageLayout {
    sizes: Vec<(String, usize)>,
    colors: BTreeMap<String, usize>,
    bits_per_channel: BTreeMap<u16, usize>,
    formats: BTreeMap<String, usize>,
}

impl ImageLayout {
    fn of(entries: &[Entry]) -> Self {
        let count = |f: &dyn Fn(&ImageInfo) -> String| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for info in entries.iter().filter_map(|e| e.info.as_ref()) {
                *m.entry(f(info)).or_default() += 1;
            }
            m
        };
        let mut sizes: Vec<(String, usize)> = count(&|i| format!("{}x{}", i.width, i.height))
            .into_iter()
            .collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut bits: BTreeMap<u16, usize> = BTreeMap::new();
        for info in entries.iter().filter_map(|e| e.info.as_ref()) {
            *bits.entry(info.bits_per_channel).or_default() += 1;
        }
        Self {
            sizes,
            colors: count(&|i| i.color.clone()),
            bits_per_channel: bits,
            formats: count(&|i| i.format.to_string()),
        }
    }
}

fn split_summaries(splits: &[(String, PathBuf)], folders: &[ImageFolder]) -> Vec<SplitSummary> {
    splits
        .iter()
        .zip(folders)
        .map(|((name, _), f)| SplitSummary {
            split: name.clone(),
            images: f.samples.len(),
            classes: f
                .classes
                .iter()
                .zip(f.class_counts())
                .map(|(c, k)| ClassCount {
                    class: c.clone(),
                    images: k,
                })
                .collect(),
        })
        .collect()
}

impl AuditReport {
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "audit of {} ({} images, {:.1} s)",
            self.root, self.images, self.seconds
        );
        for sp in &self.splits {
            let classes: Vec<String> = sp
                .classes
                .iter()
                .map(|c| format!("{} {}", c.class, c.images))
                .collect();
            let _ = writeln!(
                s,
                "  {}: {} images ({})",
                sp.split,
                sp.images,
                classes.join(", ")
            );
        }
        let _ = writeln!(s, "unreadable files: {}", self.unreadable.len());
        for u in &self.unreadable {
            let _ = writeln!(s, "  {u}");
        }
        let sizes: Vec<String> = self
            .sizes
            .iter()
            .take(6)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "sizes: {}{}",
            sizes.join(", "),
            if self.sizes.len() > 6 {
                format!(", ... ({} sizes)", self.sizes.len())
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "colour layouts: {:?}; bits per channel: {:?}; formats: {:?}",
            self.colors, self.bits_per_channel, self.formats
        );
        let _ = writeln!(
            s,
            "byte-identical: {} groups, {} redundant files; pixel-identical groups: {}",
            self.byte_identical_groups,
            self.byte_identical_redundant_files,
            self.pixel_identical_groups
        );
        let _ = writeln!(
            s,
            "near-duplicates (pHash distance <= {} in any of 8 orientations, confirmed by correlation >= {:.2}): {} pairs",
            self.criteria.max_distance, self.criteria.min_correlation, self.near_duplicate_pairs
        );
        let conflicts = self.groups.iter().filter(|g| g.mixes_classes).count();
        let spanning = self.groups.iter().filter(|g| g.spans_splits).count();
        let _ = writeln!(
            s,
            "duplicate groups (exact and near, transitive): {} ({} exact, {} near), {} span splits, {} mix classes (label conflicts)",
            self.groups.len(),
            self.groups.iter().filter(|g| g.kind == "exact").count(),
            self.groups.iter().filter(|g| g.kind == "near").count(),
            spanning,
            conflicts
        );
        for g in self.groups.iter().filter(|g| g.mixes_classes).take(20) {
            let m: Vec<String> = g
                .members
                .iter()
                .map(|m| format!("{} [{}]", m.path, m.class))
                .collect();
            let _ = writeln!(s, "  CONFLICT: {}", m.join(" | "));
        }
        if let Some(l) = &self.leakage {
            let per: Vec<String> = l
                .per_class
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "leakage: {} of {} {} images have a copy in {} ({} byte-identical, {} more near-duplicates): {}",
                l.total,
                l.test_images,
                l.test_split,
                l.train_split,
                l.exact,
                l.total - l.exact,
                per.join(", ")
            );
        }
        s
    }
}

/// Candidate pairs with a pHash distance in `distances` (before confirmation), with their
/// correlation: what a person inspects to choose the criteria. At most `limit`, spread evenly.
pub fn candidate_pairs(
    root: &Path,
    distances: std::ops::RangeInclusive<u32>,
    correlations: std::ops::RangeInclusive<f32>,
    limit: usize,
) -> Result<Vec<(Member, Member, u32, f32)>> {
    let splits = splits_of(root)?;
    let mut members = Vec::new();
    let mut fps = Vec::new();
    for (name, dir) in &splits {
        let folder = ImageFolder::scan(dir)?;
        fps.extend(fingerprint_folder(&folder, None));
        for s in &folder.samples {
            members.push(Member {
                split: name.clone(),
                class: folder.classes[s.label].clone(),
                path: s
                    .path
                    .strip_prefix(root)
                    .unwrap_or(&s.path)
                    .to_string_lossy()
                    .into_owned(),
            });
        }
    }
    let loose = NearDuplicateCriteria {
        max_distance: *distances.end(),
        min_correlation: -1.0,
    };
    let found: Vec<Pair> = near_duplicate_pairs(&fps, None, loose)
        .into_iter()
        .filter(|p| distances.contains(&p.distance) && correlations.contains(&p.correlation))
        .collect();
    let step = (found.len() / limit.max(1)).max(1);
    Ok(found
        .iter()
        .step_by(step)
        .take(limit)
        .map(|p| {
            (
                members[p.a].clone(),
                members[p.b].clone(),
                p.distance,
                p.correlation,
            )
        })
        .collect())
}

/// Reads an exclusion list written by `oncolens audit --exclusions`.
pub fn read_exclusions(path: &Path) -> Result<Exclusions> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::malformed(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_criteria_are_sane() {
        let c = NearDuplicateCriteria::default();
        assert!(c.max_distance < 32 && c.min_correlation > 0.5);
    }
}
