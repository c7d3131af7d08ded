//! Image-folder data sets: `ROOT/<class>/<file>`, class names from the folder names (sorted).
//!
//! Scanning reads every file once to hash it (SHA-256 of the bytes): the hash groups
//! byte-identical copies so that splits and evaluation stay leak-free, and the hashes together
//! make the data fingerprint stored in a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::core::error::{DatasetProblem, Error, Result};
use crate::imaging::scan::is_scan_file;

/// One image file and its class.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`ImageFolder::classes`].
    pub label: usize,
    /// SHA-256 of the file bytes, hex.
    pub sha256: String,
}

/// A scanned image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Folder names, sorted: the class ids.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl ImageFolder {
    /// Scans `root`: each sub-folder is a class, each image file in it a sample.
    pub fn scan(root: &Path) -> Result<Self> {
        let dataset_err = |problem| Error::dataset(root, problem);
        let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
        let mut classes: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            if entry.path().is_dir() {
                match entry.file_name().into_string() {
                    Ok(name) if !name.starts_with('.') => classes.push(name),
                    Ok(_) => {}
                    Err(name) => {
                        return Err(dataset_err(DatasetProblem::NonUtf8ClassName(name)));
                    }
                }
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(dataset_err(DatasetProblem::NoClassFolders));
        }
        let mut files: Vec<(PathBuf, usize)> = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_scan_file(p))
                .collect();
            paths.sort();
            files.extend(paths.into_iter().map(|p| (p, label)));
        }
        if files.is_empty() {
            return Err(dataset_err(DatasetProblem::NoImages));
        }
        let samples = files
            .into_par_iter()
            .map(|(path, label)| {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let sha256 = hex::encode(Sha256::digest(&bytes));
                Ok(Sample {
                    path,
                    label,
                    sha256,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    /// Number of samples per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            counts[s.label] += 1;
        }
        counts
    }

    /// A digest of the class names and of every (class, file name, content hash), order-free:
    /// two folders with the same fingerprint hold the same labelled images.
    pub fn fingerprint(&self) -> String {
        let mut lines: Vec<String> = self
            .samples
            .iter()
            .map(|s| {
                let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned());
                format!(
                    "{}\t{}\t{}",
                    self.classes[s.label],
                    name.unwrap_or_default(),
                    s.sha256
                )
            })
            .collect();
        lines.sort();
        let mut h = Sha256::new();
        for c in &self.classes {
            h.update(c.as_bytes());
            h.update(b"\n");
        }
        for l in lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Content hash -> indices of the samples with those exact bytes.
    pub fn exact_duplicate_groups(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            groups.entry(s.sha256.as_str()).or_default().push(i);
        }
        groups
    }

    /// Path of a sample relative to the root, for reports.
    pub fn relative_path(&self, index: usize) -> String {
        let p = &self.samples[index].path;
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }
}

/// Human name of a class folder: `glioma_tumor` -> "Glioma", `no_tumor` -> "No tumour".
pub fn display_name(class_id: &str) -> String {
    let lower = class_id.to_ascii_lowercase();
    let base = lower
        .strip_suffix("_tumor")
        .or_else(|| lower.strip_suffix("_tumour"))
        .unwrap_or(&lower);
    if base == "no" || lower == "notumor" || lower == "no_tumour" || lower == "healthy" {
        return "No tumour".to_string();
    }
    let spaced = base.replace(['_', '-'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => class_id.to_string(),
    }
}

/// Files under `inputs`: files as given, folders searched recursively (sorted) for PNG, JPEG
/// and DICOM ([`is_scan_file`]).
pub fn collect_image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_scan_file(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if input.exists() {
            out.push(input.clone());
        } else {
            return Err(Error::io(
                input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "does not exist"),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(display_name("glioma_tumor"), "Glioma");
        assert_eq!(display_name("meningioma_tumor"), "Meningioma");
        assert_eq!(display_name("pituitary_tumor"), "Pituitary");
        assert_eq!(display_name("no_tumor"), "No tumour");
        assert_eq!(display_name("notumor"), "No tumour");
        assert_eq!(display_name("some_class"), "Some class");
    }

    #[test]
    fn scan_sorts_classes_and_finds_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [
            ("b_class", "x (1).png"),
            ("a_class", "gg (2).PNG"),
            ("a_class", "notes.txt"),
        ] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            let img = image::GrayImage::from_pixel(16, 16, image::Luma([7]));
            if file.ends_with("txt") {
                std::fs::write(dir.path().join(class).join(file), "hi").unwrap();
            } else {
                img.save_with_format(dir.path().join(class).join(file), image::ImageFormat::Png)
                    .unwrap();
            }
        }
        let folder = ImageFolder::scan(dir.path()).unwrap();
        assert_eq!(folder.classes, vec!["a_class", "b_class"]);
        assert_eq!(folder.samples.len(), 2);
        assert_eq!(folder.class_counts(), vec![1, 1]);
        // Same bytes in both classes: one hash group of two.
        assert_eq!(folder.exact_duplicate_groups().len(), 1);
        assert_eq!(folder.fingerprint().len(), 64);
    }

    #[test]
    fn empty_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageFolder::scan(dir.path()).unwrap_err().sentence();
        assert!(err.contains("no class folders"), "{err}");
    }
}
