//! The one tokio runtime of the library.
//!
//! The sync engine needs a runtime for its background work, and async exports need one
//! to run on. Foreign callers have none, so the library owns one, created on first use
//! and shared by every open store: a phone must not grow a thread pool per store.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::error::OutpostError;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, created once. Two workers: sync is I/O-bound, and a phone's
/// cores belong to the UI.
pub(crate) fn runtime() -> Result<&'static Runtime, OutpostError> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("outpost-sync")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| OutpostError::Internal {
            detail: format!("could not start the sync runtime: {e}"),
        })
}
