//! The one error type of the crate's public API.
//!
//! Callers (the app, the bindings, the sync engine's users) need a small, stable set of
//! cases they can act on. Internal failures (SQLite, JSON, CRDT parsing) are mapped into
//! it here, in one place, so no module leaks its dependencies' error types.

use crate::crdt::CrdtError;
use crate::protocol::ValidationError;

/// Everything that can go wrong in a call to Outpost.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The collection name breaks `[a-z][a-z0-9_]{0,63}`.
    #[error("invalid collection name {0:?}")]
    InvalidCollection(String),
    /// The collection is valid but not declared in the store's config.
    #[error("unknown collection {0:?}: declare it in the store config")]
    UnknownCollection(String),
    /// The record id is empty, too long or holds control characters.
    #[error("invalid record id: 1-128 characters, no control characters")]
    InvalidRecordId,
    /// The data is not a JSON object, is too large or too deep, or a field is unusable.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// The config itself is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// No live record with that id.
    #[error("record {collection}/{id} not found")]
    NotFound { collection: String, id: String },
    /// A CRDT operation on a field holding something else, or a malformed CRDT value.
    #[error("CRDT error: {0}")]
    Crdt(String),
    /// The database was written by a newer version of Outpost.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The encryption key does not open this database (or it is not a database).
    #[error("the database cannot be opened with this key (wrong key or not an Outpost database)")]
    WrongKey,
    /// Encryption was requested from a build without the `encryption` feature.
    #[error("this build has no encryption support (cargo feature `encryption`)")]
    EncryptionUnavailable,
    /// The store was closed; open it again to use it.
    #[error("the store is closed")]
    Closed,
    /// A long query was interrupted by `interrupt()` or `close()`.
    #[error("the operation was interrupted")]
    Interrupted,
    /// SQLite or file-system failure.
    #[error("database error: {0}")]
    Database(String),
    /// The database holds the data of another user than the one it was opened for
    /// (`None`: data written without a user id). Nothing was read or changed: sign that
    /// user out (open for them, `sign_out`) or delete the database.
    #[error("{}", wrong_user(.holder.as_deref()))]
    WrongUser { holder: Option<String> },
    /// Sign-out was to sync first, and these edits are still not on the server (attached
    /// files not yet uploaded count as edits). Nothing was removed: the app asks the
    /// user (sync later, keep them sealed, or discard).
    #[error(
        "{} edits are not on the server ({pending} waiting, {failed} rejected, \
         {conflicts} in conflict); nothing was removed",
        pending + failed + conflicts
    )]
    UnsyncedEdits {
        pending: u64,
        failed: u64,
        conflicts: u64,
    },
    /// The database is open in this process; close it first.
    #[error("the database {0} is open; close it first")]
    StillOpen(String),
    /// An attachment file could not be read or written (a missing source file, a
    /// full disk, a file whose bytes no longer match its hash).
    #[error("file error: {0}")]
    File(String),
}

fn wrong_user(holder: Option<&str>) -> String {
    match holder {
        Some(h) => format!("the database holds the data of user {h:?}: sign them out first"),
        None => "the database holds data written without a user id: sign it out first".into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stored value this build does not know: a corrupt row, never read as a default.
    pub(crate) fn corrupt(table: &str, column: &str, value: &str) -> Error {
        Error::Database(format!(
            "corrupt row in {table}: unknown {column} {value:?}"
        ))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted) => Error::Interrupted,
            Some(ErrorCode::NotADatabase) => Error::WrongKey,
            _ => Error::Database(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::InvalidData(e.to_string())
    }
}

impl From<CrdtError> for Error {
    fn from(e: CrdtError) -> Error {
        Error::Crdt(e.to_string())
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Error {
        match e {
            ValidationError::CollectionName(n) => Error::InvalidCollection(n),
            ValidationError::RecordId => Error::InvalidRecordId,
            other => Error::InvalidData(other.to_string()),
        }
    }
}
