//! The one error type foreign code sees, and the one place core errors map into it.
//!
//! Kotlin and Swift get one exception/error type with a case per situation an app can
//! act on (`OutpostException.InvalidData`, `OutpostError.Closed`, ...). Core errors,
//! panics and callback failures all end up here, so the mapping is reviewed in one spot.

use std::any::Any;

/// Everything that can go wrong in a call to Outpost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum OutpostError {
    /// The collection name breaks `[a-z][a-z0-9_]{0,63}`.
    #[error("invalid collection name {name:?}")]
    InvalidCollection { name: String },
    /// The collection is valid but not declared in the config.
    #[error("unknown collection {name:?}: declare it in the config")]
    UnknownCollection { name: String },
    /// The record id is empty, longer than 128 characters or holds control characters.
    #[error("invalid record id: 1-128 characters, no control characters")]
    InvalidRecordId,
    /// Not valid JSON, not a JSON object, too large or too deep, or an unusable field.
    #[error("invalid data: {detail}")]
    InvalidData { detail: String },
    /// The config is unusable (a collection declared twice, a bad key or server URL).
    #[error("invalid config: {detail}")]
    InvalidConfig { detail: String },
    /// No live record (or open conflict) with that id.
    #[error("{collection}/{id} not found")]
    NotFound { collection: String, id: String },
    /// A CRDT operation on a field holding something else, or a malformed CRDT value.
    #[error("CRDT error: {detail}")]
    Crdt { detail: String },
    /// The database was written by a newer version of Outpost.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The key does not open this database (or the file is not an Outpost database).
    #[error("the database cannot be opened with this key")]
    WrongKey,
    /// A key was given to a build without encryption support.
    #[error("this build has no encryption support")]
    EncryptionUnavailable,
    /// `close()` was called; open the store again to use it.
    #[error("the store is closed")]
    Closed,
    /// A long query was interrupted by `close()`.
    #[error("the operation was interrupted")]
    Interrupted,
    /// SQLite or file-system failure.
    #[error("database error: {detail}")]
    Database { detail: String },
    /// The database holds the data of another user than `OutpostConfig.user_id` (None:
    /// data written without a user id). Nothing was read or changed. Sign that user out
    /// (open with `user_id = holder`, then `sign_out`), or `delete_database`.
    #[error("the database holds the data of another user ({holder:?}); sign them out first")]
    WrongUser { holder: Option<String> },
    /// `sign_out` was to sync first, and these edits are still not on the server
    /// (attached files not yet uploaded count as edits). Nothing was removed; the store
    /// stays open. Ask the user: try again later, sign out keeping them
    /// (`KeepUnsynced`), or handle the rejected and conflicted ones.
    #[error(
        "{pending} waiting, {failed} rejected and {conflicts} conflicted edits are not on the server"
    )]
    UnsyncedEdits {
        pending: u64,
        failed: u64,
        conflicts: u64,
    },
    /// `delete_database` on a database that is open in this process.
    #[error("the database {path} is open; close it first")]
    StillOpen { path: String },
    /// An attachment file could not be read or written (a missing source file, a full
    /// disk).
    #[error("file error: {detail}")]
    File { detail: String },
    /// Sync could not run at all (not a sync outcome: those are in `SyncReport`).
    #[error("sync error: {detail}")]
    Sync { detail: String },
    /// A `Transaction` was used after its body returned. Nothing was read or changed:
    /// use the handle only inside the body it was given to.
    #[error("the transaction has ended; use its handle only inside its body")]
    TransactionEnded,
    /// A call on the store from inside one of its own transaction bodies, which would wait
    /// for that transaction to end, forever. Nothing was read or changed: inside the body,
    /// use its `Transaction`.
    #[error("called from inside a transaction of this store; use the transaction instead")]
    InTransaction,
    /// A callback (listener, token provider) threw. Only ever seen by Rust, which logs it.
    #[error("callback failed: {detail}")]
    Callback { detail: String },
    /// A bug in Outpost: a panic caught at the boundary. The store stays usable.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl From<outpost_core::Error> for OutpostError {
    fn from(e: outpost_core::Error) -> OutpostError {
        use outpost_core::Error as E;
        match e {
            E::InvalidCollection(name) => OutpostError::InvalidCollection { name },
            E::UnknownCollection(name) => OutpostError::UnknownCollection { name },
            E::InvalidRecordId => OutpostError::InvalidRecordId,
            E::InvalidData(detail) => OutpostError::InvalidData { detail },
            E::InvalidConfig(detail) => OutpostError::InvalidConfig { detail },
            E::NotFound { collection, id } => OutpostError::NotFound { collection, id },
            E::Crdt(detail) => OutpostError::Crdt { detail },
            E::SchemaTooNew { found, supported } => OutpostError::SchemaTooNew { found, supported },
            E::WrongKey => OutpostError::WrongKey,
            E::EncryptionUnavailable => OutpostError::EncryptionUnavailable,
            E::Closed => OutpostError::Closed,
            E::Interrupted => OutpostError::Interrupted,
            E::Database(detail) => OutpostError::Database { detail },
            E::WrongUser { holder } => OutpostError::WrongUser { holder },
            E::UnsyncedEdits {
                pending,
                failed,
                conflicts,
            } => OutpostError::UnsyncedEdits {
                pending,
                failed,
                conflicts,
            },
            E::StillOpen(path) => OutpostError::StillOpen { path },
            E::File(detail) => OutpostError::File { detail },
            // The core's enum is non-exhaustive: a new case still reaches the app intact.
            other => OutpostError::Internal {
                detail: other.to_string(),
            },
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for OutpostError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> OutpostError {
        OutpostError::Callback { detail: e.reason }
    }
}

/// Bad JSON from the app is bad input, like any other.
pub(crate) fn json_error(what: &str, e: &serde_json::Error) -> OutpostError {
    OutpostError::InvalidData {
        detail: format!("{what} is not valid JSON: {e}"),
    }
}

/// The text of a caught panic, for the error the app sees.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_owned()
    }
}

/// Runs one exported call, turning a panic into [`OutpostError::Internal`]. UniFFI would
/// also catch it, but as an untyped error; this keeps the app's error handling in one type.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, OutpostError>) -> Result<T, OutpostError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let detail = panic_message(payload.as_ref());
            // The detail goes to the app in the error; a foreign callback's panic text
            // may quote data, so the log has only the fact.
            tracing::error!("panic caught at the FFI boundary");
            Err(OutpostError::Internal { detail })
        }
    }
}
