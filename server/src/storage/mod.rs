//! Storage behind a trait, so the server can run on SQLite or PostgreSQL.
//!
//! The trait is cut at whole protocol operations (apply a push, read a pull page,
//! purge tombstones) rather than at SQL statements, because the hard guarantees live
//! in how a backend runs them: seq order equal to commit order, and one effect per
//! op_id under concurrency. Each backend picks its own scheme for that (SQLite: one
//! serialized writer; PostgreSQL can lock or serialize differently) and explains it
//! where seq is allocated. The rules themselves are shared, in [`crate::logic`], and so
//! are the push and pull flows, which call a backend's storage steps (`push.rs`,
//! `pull.rs`). Records are keyed by (collection, scope, id) ([`crate::logic::scope_of`]);
//! both backends keep the audit's hash chain ([`crate::audit`]).

pub mod files;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use outpost_core::protocol::OpResult;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::audit::{AuditEntry, Verdict};
use crate::budget::PushLimits;
use crate::logic::{Access, AccessRules, Cursor, PushItem, User};
use files::{Begin, FileAccess, StaleUpload, Upload};

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

/// Who pushes, from where, the access rule of each collection, and the push's budget.
#[derive(Clone)]
pub struct PushContext {
    pub user: User,
    pub client_id: String,
    pub access: AccessRules,
    /// The peer's IP address, for the audit; empty when unknown.
    pub client_addr: String,
    pub limits: PushLimits,
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

/// [`crate::logic::scope_of`] as an SQL expression over a row's `owner` and `team`,
/// the same on both backends; for records written before ids were scoped.
pub(crate) fn scope_sql(access: Access) -> &'static str {
    match access {
        Access::Private => "'u:' || owner",
        Access::Team => "'t:' || team",
        // logic::SHARED_SCOPE
        Access::Shared => "'*'",
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
    /// Bytes of change JSON a page may hold, past its first change.
    pub max_bytes: usize,
    /// Seqs (inclusive ranges) of the puller's own applied ops: such a change is left
    /// out when its device holds exactly what is stored (see `logic::echo_exact`).
    pub own: Vec<(i64, i64)>,
    /// Count what remains past the page (`remaining`), for a client that reads it.
    pub count_remaining: bool,
    /// Every team's and owner's records, whatever `user` may read, each change saying
    /// its team and owner: the change feed of service accounts and of `export`.
    pub all_teams: bool,
}

/// A change as a pull page carries it: the `Change` of the protocol, with its data
/// kept as the JSON text it is stored as, so a page is never parsed into a tree and
/// serialized back.
#[derive(Debug, Clone, Serialize)]
pub struct PageChange {
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub seq: i64,
    pub deleted: bool,
    /// `None` when deleted.
    pub data: Option<Box<RawValue>>,
    pub hlc: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The record's team and owner, in the feed of every team only (`all_teams`), so
    /// a backend can route the change; pull pages never carry them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// How many changes the puller may read past a page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    pub changes: u64,
    /// The count stopped after looking at `pull::REMAINING_CAP` rows: at least
    /// `changes` remain.
    pub capped: bool,
}

/// A pull page.
#[derive(Debug, Clone)]
pub enum PullPage {
    Page {
        changes: Vec<PageChange>,
        /// Where the next pull continues from.
        cursor: Cursor,
        has_more: bool,
        /// Changes readable past this page.
        remaining: Remaining,
    },
    /// The cursor is older than purged tombstones.
    Expired,
}

/// What a purge removes: tombstones and stored answers older than these times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeRequest {
    pub tombstones_before_ms: i64,
    pub answers_before_ms: i64,
    /// For the audit rows of the erasures.
    pub now_ms: i64,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Tombstones deleted (each with the versions its forced overwrites kept).
    pub purged: u64,
    pub purged_through_seq: i64,
    /// Stored answers deleted.
    pub answers_purged: u64,
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

    /// Deletes tombstones last changed before `tombstones_before_ms` (with the versions
    /// the audit kept of them, recording each erasure) and raises the purge mark so
    /// cursors below it expire; deletes stored answers older than
    /// `answers_before_ms`. Deleted data leaves no trace in the database's files.
    fn purge(&self, req: PurgeRequest) -> BoxFuture<'_, Result<PurgeReport, StorageError>>;

    /// Appends rows to the audit trail in a transaction of their own.
    fn append_audit(&self, entries: Vec<AuditEntry>) -> BoxFuture<'_, Result<(), StorageError>>;

    /// The secret kept under `name`, keeping `candidate` first if there is none: every
    /// server process over one database gets the same one, even when several start at
    /// once, and keeps getting it after restarts.
    fn shared_secret<'a>(
        &'a self,
        name: &'a str,
        candidate: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, StorageError>>;

    /// Walks the audit trail and checks its hash chain ([`crate::audit::Verifier`]),
    /// reading rows, head and kept versions from one snapshot, so that servers may go on
    /// appending meanwhile.
    fn verify_audit(&self) -> BoxFuture<'_, Result<Verdict, StorageError>>;

    /// What `user` may know of the file `sha256`: their upload, whether it is stored,
    /// and whether a record they may read under `access` refers to it.
    fn file_access(
        &self,
        user: User,
        access: AccessRules,
        sha256: String,
    ) -> BoxFuture<'_, Result<FileAccess, StorageError>>;

    /// The user's upload of the file, started with `upload_id` when there is none and
    /// the quota (bytes over all their uploads) allows it.
    fn begin_upload(
        &self,
        user: String,
        sha256: String,
        size: u64,
        quota: Option<u64>,
        upload_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Begin, StorageError>>;

    /// Moves the upload's `received` to `to`, when the bytes from `from` to `to` were
    /// made durable and it stands between them; returns the upload as it is then
    /// (`None` when it is gone).
    fn advance_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
        from: u64,
        to: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Upload>, StorageError>>;

    /// Marks the upload complete and the file stored (once, however many users
    /// upload it).
    fn complete_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
        size: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Forgets an upload (its parts are the caller's to remove).
    fn drop_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Up to `limit` unfinished uploads last advanced before `before_ms`.
    fn stale_uploads(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StaleUpload>, StorageError>>;
}
