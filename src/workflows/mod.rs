//! Layer 8: workflows, each a whole job over data and model files, built from the layers below.
//! Within this layer a workflow may use another (train uses audit, calibrate and import;
//! evaluate uses audit), never in a circle.
//!
//! - [`audit`]: duplicates, near-duplicates, leakage and balance of a data set;
//! - [`batch_jobs`]: batch inference over an archive shared by workers through the job queue;
//! - [`train`]: the training loop, checkpoints, history and curves; fine-tuning on feedback;
//! - [`feedback`]: clinicians' feedback exported as an image folder with a manifest;
//! - [`registry`]: model versions, the promotion gate, rollback, and following the served
//!   version in a running service;
//! - [`calibrate`]: temperature, "uncertain" threshold and input check of a saved model;
//! - [`quantize`]: int8 activation ranges of a saved model;
//! - [`evaluate`]: leak-free evaluation reports;
//! - [`deidentify`]: DICOM files de-identified into a folder;
//! - [`export`]: ONNX files and reference outputs;
//! - [`gate_report`]: how well the input gate refuses what is not a brain MRI slice;
//! - [`gate_crossval`]: the gate measured on non-MRI sources it was not trained on;
//! - [`gate_train`]: training the input gate with outlier exposure, and its threshold;
//! - [`import`]: ImageNet weights from PyTorch files;
//! - [`pacs`]: the PACS watcher over DICOMweb (QIDO-RS, WADO-RS, STOW-RS of an SR and a
//!   Grad-CAM secondary capture);
//! - [`observe`]: a model run over a labelled folder (shared by calibrate and evaluate).

pub mod audit;
pub mod batch_jobs;
pub mod calibrate;
pub mod deidentify;
pub mod evaluate;
pub mod export;
pub mod feedback;
pub mod gate_crossval;
pub mod gate_report;
pub mod gate_train;
pub mod import;
pub mod observe;
pub mod pacs;
pub mod quantize;
pub mod registry;
pub mod train;
