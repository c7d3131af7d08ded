//! Layer-by-layer trace of a forward pass, for the Keras-style `model summary`.
//!
//! The architectures call [`Trace::record`] after each layer in their one forward path; when
//! tracing is off this costs nothing, so the summary always describes the network that runs.

use burn::tensor::Tensor;

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerRow {
    pub name: String,
    pub kind: String,
    /// Output shape without the batch dimension.
    pub output_shape: Vec<usize>,
    pub params: usize,
}

/// Collects [`LayerRow`]s when enabled.
#[derive(Debug, Default)]
pub struct Trace(Option<Vec<LayerRow>>);

impl Trace {
    pub fn off() -> Self {
        Trace(None)
    }

    pub fn on() -> Self {
        Trace(Some(Vec::new()))
    }

    pub fn record<const D: usize>(
        &mut self,
        name: &str,
        kind: &str,
        output: &Tensor<D>,
        params: usize,
    ) {
        if let Some(rows) = &mut self.0 {
            rows.push(LayerRow {
                name: name.to_string(),
                kind: kind.to_string(),
                output_shape: output.dims()[1..].to_vec(),
                params,
            });
        }
    }

    pub fn rows(self) -> Vec<LayerRow> {
        self.0.unwrap_or_default()
    }
}
