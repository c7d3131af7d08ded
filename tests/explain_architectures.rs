//! Grad-CAM on every shipped architecture (a file of its own: these trainings share burn's
//! global RNG, and the localisation test in explain.rs must not).

mod common;

use oncolens::imaging::GreyImage;
use oncolens::inference::Explainer;
use oncolens::model::Architecture;
use oncolens::modelfile::TrainConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Every shipped architecture exposes its last conv block to Grad-CAM, and the map comes back
/// at the original size, in [0, 1], for every class.
#[test]
fn grad_cam_works_for_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_folder(&data, 8, 100, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let scan: GreyImage =
        image::DynamicImage::ImageLuma8(common::slice(0, 130, &mut rng)).to_luma32f();
    for (architecture, channels) in [
        (Architecture::PaperCnn, 3),
        (Architecture::ResnetMini, 1),
        (Architecture::ResnetFine, 1),
        (Architecture::EfficientnetLite0, 3),
    ] {
        let config = TrainConfig {
            architecture,
            in_channels: channels,
            input_size: 96,
            epochs: 1,
            batch_size: 8,
            validation_fraction: 0.25,
            seed: 1,
            ..Default::default()
        };
        let out =
            common::train_model(&data, &tmp.path().join(architecture.name()), config).model_dir;
        let explainer = Explainer::open(Some(&out)).unwrap();
        for class in 0..3 {
            let e = explainer.explain(&scan, Some(class)).unwrap();
            assert_eq!(e.map.dimensions(), (130, 130), "{}", architecture.name());
            assert!(
                e.map.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])),
                "{}: map outside [0, 1]",
                architecture.name()
            );
            assert_eq!(e.class_index, class);
            assert!((e.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
    }
}
