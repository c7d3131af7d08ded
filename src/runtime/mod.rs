//! Layer 6: running networks. The one model loader ([`LoadedModel`]: f32 or int8, with or
//! without test-time augmentation), batched forward passes that return logits and the pooled
//! features the input check measures ([`compute`]), and the augmentation views ([`tta`]).

pub mod compute;
pub mod gate;
pub mod loaded;
pub mod tta;

pub use compute::{Compute, INFERENCE_BATCH, forward_rows, probabilities, rows};
pub use gate::LoadedGate;
pub use loaded::LoadedModel;
pub use tta::{TTA_SHIFT, TTA_VIEWS};
