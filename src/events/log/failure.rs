//! [`LastError`]: the last error an event log met while it ran (a failed write or sync, a lost
//! database connection), kept for the admin status.
//!
//! Set where the log reports an error (beside its `tracing` event), never on the publish path
//! otherwise: it costs nothing until something fails. The last one is kept, not cleared once
//! the log works again: an operator looking at the status sees that something failed, and what.

use std::sync::{Arc, Mutex};

/// The last error of one event log; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// Keeps `error`, as `what: error`, in place of the one before.
    pub(crate) fn set(&self, what: &str, error: &dyn std::fmt::Display) {
        *self.lock() = Some(format!("{what}: {error}"));
    }

    /// The last error kept, if any.
    pub(crate) fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Set whole or not at all: poisoning is harmless.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
