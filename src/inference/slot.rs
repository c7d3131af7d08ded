//! The model a long-running service answers with, replaceable while it runs. Each analysis
//! takes the current model once ([`ModelSlot::current`]) and finishes on it, so a switch to a
//! new version never interrupts or loses a request: the old model is dropped when the last
//! analysis holding it ends.

use std::sync::{Arc, RwLock};

use super::Explainer;

pub struct ModelSlot {
    current: RwLock<Arc<Explainer>>,
}

impl ModelSlot {
    pub fn new(explainer: Explainer) -> Self {
        Self {
            current: RwLock::new(Arc::new(explainer)),
        }
    }

    /// The model new work should use.
    pub fn current(&self) -> Arc<Explainer> {
        // A poisoned lock still holds a whole Arc: replacing it is a single store.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the model for work that starts from now on; returns the one it replaced.
    pub fn replace(&self, explainer: Explainer) -> Arc<Explainer> {
        let new = Arc::new(explainer);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *guard, new)
    }

    /// The version (first 12 hex digits of the weights' SHA-256) of the current model.
    pub fn version(&self) -> String {
        self.current().manifest.version()
    }
}
