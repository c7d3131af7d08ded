//! Leak-free, stratified, seeded validation split.
//!
//! Samples are first joined into groups (byte-identical files, plus any extra links such as the
//! data audit's near-duplicates); a whole group always lands on one side, so the validation score
//! is never measured on a copy of a training image.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::folder::ImageFolder;
use crate::core::DisjointSet;
use crate::core::error::{DatasetProblem, Error, Result};
use crate::core::files::write_json_atomic;

/// The file beside a trained model naming its validation images.
pub const SPLIT_FILE: &str = "split.json";

/// Indices into the folder's samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// Group id of every sample: byte-identical files share a group, and so do the extra `links`.
pub fn group_ids(folder: &ImageFolder, links: &[(usize, usize)]) -> Vec<usize> {
    let n = folder.samples.len();
    let mut sets = DisjointSet::new(n);
    for members in folder.exact_duplicate_groups().values() {
        sets.union_all(members);
    }
    for &(a, b) in links {
        if a < n && b < n {
            sets.union(a, b);
        }
    }
    sets.roots()
}

/// Splits off about `fraction` of each class for validation, whole groups at a time.
pub fn stratified_group_split(
    labels: &[usize],
    groups: &[usize],
    fraction: f64,
    seed: u64,
) -> Split {
    let n_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    // Group -> members; a group's class is that of its first member (groups do not mix classes
    // in sane data; the audit reports those that do).
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = Split {
        train: Vec::new(),
        validation: Vec::new(),
    };
    for class in 0..n_classes {
        let mut class_groups: Vec<&Vec<usize>> =
            members.values().filter(|m| labels[m[0]] == class).collect();
        class_groups.shuffle(&mut rng);
        let class_total: usize = class_groups.iter().map(|m| m.len()).sum();
        let target = (class_total as f64 * fraction).round() as usize;
        let mut taken = 0;
        for (k, m) in class_groups.iter().enumerate() {
            // Keep at least one group for training.
            let last = k + 1 == class_groups.len();
            if taken < target && !last {
                split.validation.extend(m.iter().copied());
                taken += m.len();
            } else {
                split.train.extend(m.iter().copied());
            }
        }
    }
    split.train.sort_unstable();
    split.validation.sort_unstable();
    split
}

/// `split.json`: how many images trained the model and which files (relative to the training
/// folder) were held out; calibration and quantisation must use the images training held out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFile {
    #[serde(default)]
    pub train: usize,
    pub validation: Vec<String>,
}

impl SplitFile {
    pub fn of(folder: &ImageFolder, split: &Split) -> Self {
        Self {
            train: split.train.len(),
            validation: split
                .validation
                .iter()
                .map(|&i| folder.relative_path(i))
                .collect(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }

    /// Reads the split file of the model in `model_dir`.
    pub fn read(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join(SPLIT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::malformed(&path, e))
    }

    /// The split in `folder`: the listed files are the validation set, all others trained.
    pub fn resolve(&self, folder: &ImageFolder) -> Result<Split> {
        let held_out: std::collections::HashSet<&str> =
            self.validation.iter().map(String::as_str).collect();
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for i in 0..folder.samples.len() {
            if held_out.contains(folder.relative_path(i).as_str()) {
                validation.push(i);
            } else {
                train.push(i);
            }
        }
        if validation.len() != held_out.len() {
            return Err(Error::dataset(
                &folder.root,
                DatasetProblem::SplitMismatch {
                    missing: held_out.len() - validation.len(),
                    listed: held_out.len(),
                },
            ));
        }
        Ok(Split { train, validation })
    }
}

/// The training folder at `data` and the train / validation indices the model in `model_dir`
/// was trained with (from its `split.json`).
pub fn held_out_split(model_dir: &Path, data: &Path) -> Result<(ImageFolder, Split)> {
    let file = SplitFile::read(model_dir)?;
    let folder = ImageFolder::scan(data)?;
    let split = file.resolve(&folder)?;
    Ok((folder, split))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_never_straddle_and_classes_are_stratified() {
        // 3 classes of 40; samples 2k and 2k+1 are copies of each other.
        let labels: Vec<usize> = (0..120).map(|i| i / 40).collect();
        let groups: Vec<usize> = (0..120).map(|i| i / 2).collect();
        let split = stratified_group_split(&labels, &groups, 0.25, 7);
        assert_eq!(split.train.len() + split.validation.len(), 120);
        for c in 0..3 {
            let v = split.validation.iter().filter(|&&i| labels[i] == c).count();
            assert_eq!(v, 10, "class {c}");
        }
        for &v in &split.validation {
            assert!(!split.train.iter().any(|&t| groups[t] == groups[v]));
        }
        // Seeded: same seed, same split; another seed, another split.
        assert_eq!(split, stratified_group_split(&labels, &groups, 0.25, 7));
        assert_ne!(split, stratified_group_split(&labels, &groups, 0.25, 8));
    }

    #[test]
    fn a_class_keeps_training_data_even_when_tiny() {
        let labels = vec![0, 0, 1];
        let groups = vec![0, 1, 2];
        let split = stratified_group_split(&labels, &groups, 0.9, 1);
        assert!(split.train.contains(&2));
    }
}
