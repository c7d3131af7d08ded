//! Per-epoch metrics: CSV and JSON files, and the two training-curve plots of the seed
//! (accuracy and loss, train vs validation).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::core::files::write_json_atomic;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

impl EpochRecord {
    pub fn line(&self) -> String {
        format!(
            "epoch {:3}  lr {:.2e}  train loss {:.4} acc {:.4}  val loss {:.4} acc {:.4} macro-F1 {:.4}  {:.0} s ({:.1} img/s)",
            self.epoch,
            self.learning_rate,
            self.train_loss,
            self.train_accuracy,
            self.val_loss,
            self.val_accuracy,
            self.val_macro_f1,
            self.seconds,
            self.images_per_second
        )
    }
}

/// Writes `history.csv`, `history.json`, `accuracy.png` and `loss.png` into `dir`. A plot that
/// cannot be drawn (no font installed) is a warning, not a failed run.
pub fn write(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv = String::from(
        "epoch,learning_rate,train_loss,train_accuracy,val_loss,val_accuracy,val_macro_f1,seconds,images_per_second\n",
    );
    for r in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{:.3},{:.3}\n",
            r.epoch,
            r.learning_rate,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            r.val_macro_f1,
            r.seconds,
            r.images_per_second
        ));
    }
    let csv_path = dir.join("history.csv");
    std::fs::write(&csv_path, csv).map_err(|e| Error::write(&csv_path, e))?;
    write_json_atomic(&dir.join("history.json"), &history)?;
    let col = |f: fn(&EpochRecord) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    let plots = [
        crate::plot::line_chart(
            &dir.join("accuracy.png"),
            "Accuracy",
            "accuracy",
            &[
                ("train", &col(|r| r.train_accuracy)),
                ("validation", &col(|r| r.val_accuracy)),
            ],
        ),
        crate::plot::line_chart(
            &dir.join("loss.png"),
            "Loss",
            "cross-entropy",
            &[
                ("train", &col(|r| r.train_loss)),
                ("validation", &col(|r| r.val_loss)),
            ],
        ),
    ];
    for p in plots {
        if let Err(e) = p {
            tracing::warn!("training curve not drawn: {e}");
        }
    }
    Ok(())
}
