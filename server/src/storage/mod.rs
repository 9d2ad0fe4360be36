//! Storage behind a trait, so the server can run on SQLite or PostgreSQL.
//!
//! The trait is cut at whole protocol operations (apply a push, read a pull page,
//! purge tombstones) rather than at SQL statements, because the hard guarantees live
//! in how a backend runs them: seq order equal to commit order, and one effect per
//! op_id under concurrency. Each backend picks its own scheme for that (SQLite: one
//! serialized writer; PostgreSQL can lock or serialize differently) and explains it
//! where seq is allocated. The rules themselves are shared, in [`crate::logic`], and so
//! are the push and pull flows, which call a backend's storage steps (`push.rs`,
//! `pull.rs`).

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use outpost_core::protocol::{Change, OpResult};

use crate::logic::{Access, User};
use crate::logic::{Cursor, PushItem};

/// A boxed future, so the trait can be used as `Arc<dyn Storage>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A storage failure: the request gets 500 `internal`, and nothing of it is applied.
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(pub String);

/// A failure of a driver or of (de)serializing what it stores, as a [`StorageError`].
pub(crate) fn db_err(e: impl fmt::Display) -> StorageError {
    StorageError(e.to_string())
}

/// Who pushes, and the access rule of each collection.
#[derive(Clone)]
pub struct PushContext {
    pub user: User,
    pub client_id: String,
    pub access: AccessRules,
    /// The device session the token names (a JWT's `sid`), which the audit records
    /// beside the `client_id` the request claims.
    pub device: Option<String>,
}

impl fmt::Debug for PushContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushContext")
            .field("user", &self.user.name)
            .finish_non_exhaustive()
    }
}

/// The access rule of every collection: named ones, and the default.
#[derive(Debug, Clone)]
pub struct AccessRules {
    pub named: Vec<(String, Access)>,
    pub default: Access,
}

impl AccessRules {
    pub fn of(&self, collection: &str) -> Access {
        self.named
            .iter()
            .find(|(c, _)| c == collection)
            .map_or(self.default, |(_, a)| *a)
    }
}

/// One pull page request.
#[derive(Debug, Clone)]
pub struct PullQuery {
    pub user: User,
    pub access: AccessRules,
    /// The client's cursor; `None` from the beginning (which never expires).
    pub since: Option<Cursor>,
    pub limit: u32,
    /// `None`: every collection.
    pub collections: Option<Vec<String>>,
}

/// A pull page.
#[derive(Debug, Clone)]
pub enum PullPage {
    Page {
        changes: Vec<Change>,
        /// Where the next pull continues from.
        cursor: Cursor,
        has_more: bool,
    },
    /// The cursor is older than purged tombstones.
    Expired,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub purged: u64,
    pub purged_through_seq: i64,
}

/// A place to keep records, op answers, the audit trail and the change sequence.
///
/// Guarantees every backend must give:
/// - `push` answers items in order and is atomic per call: every effect, stored answer
///   and audit row commits together, or none does.
/// - A repeated `(user, op_id)`, in the same call, a concurrent call, another server
///   process or after a restart, gets the stored first answer and has no effect.
/// - seq values are strictly increasing, never reused (not even after a purge), and a
///   pull that has seen seq S can never later miss a change with seq < S.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Applies a push with the rules of [`crate::logic::decide`], at `now_ms`.
    fn push<'a>(
        &'a self,
        ctx: &'a PushContext,
        items: Vec<PushItem>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<OpResult>, StorageError>>;

    /// One page of the changes the user may read, in increasing seq.
    fn pull<'a>(&'a self, query: &'a PullQuery) -> BoxFuture<'a, Result<PullPage, StorageError>>;

    /// Deletes tombstones last changed before `older_than_ms`, and raises the purge
    /// mark so cursors below it expire.
    fn purge_tombstones(
        &self,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<PurgeReport, StorageError>>;
}
