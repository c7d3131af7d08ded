//! Images inside an MRI data set that are not brain MRI (the Brain Tumor Classification set
//! holds head CT slices among its "no tumour" and tumour slices): a reviewed list, one row per
//! file, `file,kind`, where `file` is relative to the data set's root and starts with the
//! folder (`Training/no_tumor/image(33).jpg`) and `kind` is a gate kind (`head_ct`). The gate
//! trains on the listed files as negatives instead of positives, and its reports leave them out
//! of the real MRI slices they count.

use std::collections::BTreeMap;
use std::path::Path;

use super::folder::ImageFolder;
use crate::core::error::{DatasetProblem, Error, Result};

/// The list, by file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NotMriList {
    kinds: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Row {
    file: String,
    kind: String,
}

impl NotMriList {
    /// Reads a `file,kind` CSV.
    pub fn read(path: &Path) -> Result<Self> {
        let bad =
            |e: csv::Error| Error::dataset(path, DatasetProblem::BadNotMriList(e.to_string()));
        let mut reader = csv::Reader::from_path(path).map_err(bad)?;
        let mut kinds = BTreeMap::new();
        for row in reader.deserialize::<Row>() {
            let row = row.map_err(bad)?;
            kinds.insert(row.file.replace('\\', "/"), row.kind);
        }
        Ok(Self { kinds })
    }

    /// The listed kind of sample `index` of `folder` (matched as `<folder name>/<relative
    /// path>`), if listed.
    pub fn kind_of(&self, folder: &ImageFolder, index: usize) -> Option<&str> {
        let name = folder.root.file_name()?.to_string_lossy();
        let key = format!("{name}/{}", folder.relative_path(index).replace('\\', "/"));
        self.kinds.get(&key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_files_are_found_by_folder_and_relative_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("Training");
        std::fs::create_dir_all(root.join("no_tumor")).unwrap();
        for name in ["image(33).png", "image (7).png"] {
            image::GrayImage::from_pixel(8, 8, image::Luma([9]))
                .save(root.join("no_tumor").join(name))
                .unwrap();
        }
        let list_path = tmp.path().join("list.csv");
        std::fs::write(
            &list_path,
            "file,kind\nTraining/no_tumor/image(33).png,head_ct\nTesting/no_tumor/image (7).png,head_ct\n",
        )
        .unwrap();
        let list = NotMriList::read(&list_path).unwrap();
        assert_eq!(list.len(), 2);
        let folder = ImageFolder::scan(&root).unwrap();
        let kinds: Vec<Option<&str>> = (0..folder.samples.len())
            .map(|i| list.kind_of(&folder, i))
            .collect();
        let listed = folder
            .samples
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| k.is_some())
            .map(|(s, _)| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        // Only the Training entry matches this folder.
        assert_eq!(listed, ["image(33).png"]);
    }
}
