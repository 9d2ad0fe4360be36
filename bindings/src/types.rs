//! The records and enums that cross the FFI, with conversions from the core's types.
//!
//! The core's types hold `serde_json` values and `Duration`s that UniFFI cannot carry,
//! so each gets a plain twin here: JSON as text, times as milliseconds. Keeping them
//! separate also means a core refactor never silently changes the foreign API.

use std::time::Duration;

use outpost_core as core;
use serde_json::Value;

use crate::error::{OutpostError, json_error};

/// Per-collection conflict strategy (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConflictStrategy {
    ServerWins,
    ClientWins,
    LastWriteWins,
    FieldMerge,
    Manual,
}

impl From<ConflictStrategy> for core::ConflictStrategy {
    fn from(s: ConflictStrategy) -> Self {
        match s {
            ConflictStrategy::ServerWins => core::ConflictStrategy::ServerWins,
            ConflictStrategy::ClientWins => core::ConflictStrategy::ClientWins,
            ConflictStrategy::LastWriteWins => core::ConflictStrategy::LastWriteWins,
            ConflictStrategy::FieldMerge => core::ConflictStrategy::FieldMerge,
            ConflictStrategy::Manual => core::ConflictStrategy::Manual,
        }
    }
}

impl From<core::ConflictStrategy> for ConflictStrategy {
    fn from(s: core::ConflictStrategy) -> Self {
        match s {
            core::ConflictStrategy::ServerWins => ConflictStrategy::ServerWins,
            core::ConflictStrategy::ClientWins => ConflictStrategy::ClientWins,
            core::ConflictStrategy::LastWriteWins => ConflictStrategy::LastWriteWins,
            core::ConflictStrategy::FieldMerge => ConflictStrategy::FieldMerge,
            core::ConflictStrategy::Manual => ConflictStrategy::Manual,
        }
    }
}

/// When a returned write is safe: `Full` survives power loss, `Normal` an app kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Durability {
    Full,
    Normal,
}

impl From<Durability> for core::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Full => core::Durability::Full,
            Durability::Normal => core::Durability::Normal,
        }
    }
}

/// A declared collection.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CollectionSpec {
    pub name: String,
    pub strategy: ConflictStrategy,
    /// Indexes, each over one or more top-level fields in order, for the queries a
    /// screen runs often. Built or dropped at open as the list changes.
    #[uniffi(default = [])]
    pub indexes: Vec<Vec<String>>,
    /// Top-level text fields that a `search` filter looks in.
    #[uniffi(default = [])]
    pub search: Vec<String>,
    /// Download the files its records refer to with every sync, not only when asked.
    #[uniffi(default = false)]
    pub eager_attachments: bool,
}

impl From<&CollectionSpec> for core::CollectionConfig {
    fn from(c: &CollectionSpec) -> Self {
        core::CollectionConfig {
            indexes: c.indexes.clone(),
            search: c.search.clone(),
            eager_attachments: c.eager_attachments,
            ..core::CollectionConfig::new(c.name.clone(), c.strategy.into())
        }
    }
}

/// Everything `Outpost.open` needs besides the token provider.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OutpostConfig {
    /// The database file, in the app's private storage.
    pub path: String,
    /// The sync server's root, e.g. `https://sync.example.org/` (plain http: loopback only).
    pub server_url: String,
    pub collections: Vec<CollectionSpec>,
    pub durability: Durability,
    /// A 32-byte key from the Android Keystore / iOS Keychain; needs an encryption build.
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
    /// Sync by itself after local writes, reconnects and backoffs. Off: the app (or
    /// WorkManager / BGTaskScheduler) calls `sync_now`.
    #[uniffi(default = false)]
    pub auto_sync: bool,
    /// First retry delay after a transient failure, doubled per attempt; None: 1 s.
    #[uniffi(default = None)]
    pub backoff_initial_ms: Option<u64>,
    /// Longest retry delay; None: 5 min.
    #[uniffi(default = None)]
    pub backoff_max_ms: Option<u64>,
    /// How long the network must stay up before it is trusted; None: 2 s.
    #[uniffi(default = None)]
    pub network_debounce_ms: Option<u64>,
    /// The signed-in user (the token's subject). The file remembers it: opening it for
    /// another user fails with `WrongUser` instead of showing one user's records to
    /// another. None opens only a database that holds no user's data.
    #[uniffi(default = None)]
    pub user_id: Option<String>,
    /// Bytes of downloaded attachments kept before the least recently used are
    /// removed (they download again when asked for); None: no limit.
    #[uniffi(default = None)]
    pub attachment_cache_bytes: Option<u64>,
    /// How long a file no record refers to is kept after it was attached or read;
    /// None: a day.
    #[uniffi(default = None)]
    pub attachment_grace_ms: Option<u64>,
}

impl OutpostConfig {
    pub(crate) fn store_config(&self) -> core::StoreConfig {
        core::StoreConfig {
            collections: self
                .collections
                .iter()
                .map(core::CollectionConfig::from)
                .collect(),
            durability: self.durability.into(),
            encryption_key: self.encryption_key.clone(),
            user_id: self.user_id.clone(),
            attachment_cache_bytes: self.attachment_cache_bytes,
            attachment_grace: self.attachment_grace_ms.map_or(
                core::StoreConfig::default().attachment_grace,
                Duration::from_millis,
            ),
            ..core::StoreConfig::default()
        }
    }

    pub(crate) fn sync_config(&self) -> core::SyncConfig {
        let mut c = core::SyncConfig {
            auto_sync: self.auto_sync,
            ..core::SyncConfig::default()
        };
        if let Some(ms) = self.backoff_initial_ms {
            c.backoff_initial = Duration::from_millis(ms);
        }
        if let Some(ms) = self.backoff_max_ms {
            c.backoff_max = Duration::from_millis(ms);
        }
        if let Some(ms) = self.network_debounce_ms {
            c.network_debounce = Duration::from_millis(ms);
        }
        c
    }
}

/// Where a record stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncState {
    Synced,
    Pending,
    Conflicted,
    Failed,
}

impl From<core::SyncState> for SyncState {
    fn from(s: core::SyncState) -> Self {
        match s {
            core::SyncState::Synced => SyncState::Synced,
            core::SyncState::Pending => SyncState::Pending,
            core::SyncState::Conflicted => SyncState::Conflicted,
            core::SyncState::Failed => SyncState::Failed,
        }
    }
}

/// A live record. `data_json` is a JSON object as text.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Record {
    pub collection: String,
    pub id: String,
    pub data_json: String,
    /// The server version of the synced base; 0 while never synced.
    pub version: i64,
    /// HLC stamp of the last edit.
    pub hlc: String,
    pub sync_state: SyncState,
    pub updated_at_ms: i64,
}

impl From<core::Record> for Record {
    fn from(r: core::Record) -> Self {
        Record {
            data_json: Value::Object(r.data).to_string(),
            collection: r.collection,
            id: r.id,
            version: r.version,
            hlc: r.hlc,
            sync_state: r.sync_state.into(),
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// An equality filter on a top-level field; `value_json` is any JSON value as text.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Filter {
    pub field: String,
    pub value_json: String,
}

/// One sort key: a top-level field, or None for the record id.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OrderBy {
    #[uniffi(default = None)]
    pub field: Option<String>,
    #[uniffi(default = false)]
    pub descending: bool,
}

impl From<&OrderBy> for core::Order {
    fn from(o: &OrderBy) -> Self {
        core::Order {
            field: o.field.clone(),
            descending: o.descending,
        }
    }
}

/// A filter, an order and a page. The default query returns every record by id.
///
/// The filter is `filters` (equalities) and-ed with `filter_json`, the core's JSON
/// filter form (`{"and": [{"eq": ["village", "v042"]}, {"gte": ["age", 5]}]}`). The
/// order is `order_by` / `descending`, then `order`; ties are broken by id. The fields
/// after `offset` came later and are last, so positional callers keep working.
#[derive(Debug, Clone, PartialEq, Eq, Default, uniffi::Record)]
pub struct Query {
    #[uniffi(default = [])]
    pub filters: Vec<Filter>,
    /// A top-level field to sort by; None sorts by record id.
    #[uniffi(default = None)]
    pub order_by: Option<String>,
    #[uniffi(default = false)]
    pub descending: bool,
    #[uniffi(default = None)]
    pub limit: Option<u32>,
    #[uniffi(default = 0)]
    pub offset: u32,
    /// A filter in the core's JSON form, and-ed with `filters`.
    #[uniffi(default = None)]
    pub filter_json: Option<String>,
    /// Sort keys after `order_by`, most significant first.
    #[uniffi(default = [])]
    pub order: Vec<OrderBy>,
    /// A `Page.next` cursor: continue right after that page's last record.
    #[uniffi(default = None)]
    pub after: Option<String>,
}

pub(crate) fn parse_filters(filters: &[Filter]) -> Result<Vec<(String, Value)>, OutpostError> {
    filters
        .iter()
        .map(|f| {
            let v = serde_json::from_str(&f.value_json)
                .map_err(|e| json_error(&format!("filter value for {:?}", f.field), &e))?;
            Ok((f.field.clone(), v))
        })
        .collect()
}

/// Reads a filter in the core's JSON form; bad JSON or a bad filter is `InvalidData`.
pub(crate) fn parse_filter(filter_json: &str) -> Result<core::Filter, OutpostError> {
    let v: Value = serde_json::from_str(filter_json).map_err(|e| json_error("filter", &e))?;
    Ok(core::Filter::from_json(&v)?)
}

impl TryFrom<&Query> for core::Query {
    type Error = OutpostError;
    fn try_from(q: &Query) -> Result<Self, OutpostError> {
        let mut out = core::Query {
            limit: q.limit,
            offset: q.offset,
            after: q.after.clone(),
            ..core::Query::default()
        };
        for (field, value) in parse_filters(&q.filters)? {
            out = out.matching(core::Filter::Eq(field, value));
        }
        if let Some(text) = &q.filter_json {
            out = out.matching(parse_filter(text)?);
        }
        match (&q.order_by, q.descending) {
            (None, false) => {}
            (field, descending) => out.order.push(core::Order {
                field: field.clone(),
                descending,
            }),
        }
        out.order.extend(q.order.iter().map(core::Order::from));
        Ok(out)
    }
}

/// One page of a query, and the cursor for the next (None: this was the last page).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Page {
    pub records: Vec<Record>,
    /// Pass as `Query.after` for the next page.
    pub next: Option<String>,
}

impl From<core::Page> for Page {
    fn from(p: core::Page) -> Self {
        Page {
            records: p.records.into_iter().map(Record::from).collect(),
            next: p.next,
        }
    }
}

/// Parses a JSON text that must be an object (a record or a patch).
pub(crate) fn parse_object(what: &str, text: &str) -> Result<Value, OutpostError> {
    let v: Value = serde_json::from_str(text).map_err(|e| json_error(what, &e))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(OutpostError::InvalidData {
            detail: format!("{what} must be a JSON object"),
        })
    }
}

/// Parses any JSON value (a register's value).
pub(crate) fn parse_value(what: &str, text: &str) -> Result<Value, OutpostError> {
    serde_json::from_str(text).map_err(|e| json_error(what, &e))
}

/// One write of a batch. The whole batch commits in one transaction, or none of it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum WriteOp {
    /// Create or replace a whole record; no id: a UUIDv7 is generated.
    Put {
        collection: String,
        id: Option<String>,
        data_json: String,
    },
    /// Set top-level fields of an existing record.
    Patch {
        collection: String,
        id: String,
        fields_json: String,
    },
    Delete {
        collection: String,
        id: String,
    },
    /// Add `by` (negative to subtract) to a counter field.
    Increment {
        collection: String,
        id: String,
        field: String,
        by: i64,
    },
    /// Set a last-write-wins register field.
    SetRegister {
        collection: String,
        id: String,
        field: String,
        value_json: String,
    },
    /// Add an element to an OR-set field.
    SetAdd {
        collection: String,
        id: String,
        field: String,
        element: String,
    },
    /// Remove an element from an OR-set field.
    SetRemove {
        collection: String,
        id: String,
        field: String,
        element: String,
    },
}

/// A [`WriteOp`] with its JSON already parsed, so bad JSON fails before the transaction.
pub(crate) enum ParsedOp<'a> {
    Put(&'a str, Option<&'a str>, Value),
    Patch(&'a str, &'a str, Value),
    Delete(&'a str, &'a str),
    Increment(&'a str, &'a str, &'a str, i64),
    SetRegister(&'a str, &'a str, &'a str, Value),
    SetAdd(&'a str, &'a str, &'a str, &'a str),
    SetRemove(&'a str, &'a str, &'a str, &'a str),
}

impl WriteOp {
    pub(crate) fn parse(&self) -> Result<ParsedOp<'_>, OutpostError> {
        Ok(match self {
            WriteOp::Put {
                collection,
                id,
                data_json,
            } => ParsedOp::Put(collection, id.as_deref(), parse_object("data", data_json)?),
            WriteOp::Patch {
                collection,
                id,
                fields_json,
            } => ParsedOp::Patch(collection, id, parse_object("fields", fields_json)?),
            WriteOp::Delete { collection, id } => ParsedOp::Delete(collection, id),
            WriteOp::Increment {
                collection,
                id,
                field,
                by,
            } => ParsedOp::Increment(collection, id, field, *by),
            WriteOp::SetRegister {
                collection,
                id,
                field,
                value_json,
            } => ParsedOp::SetRegister(collection, id, field, parse_value("value", value_json)?),
            WriteOp::SetAdd {
                collection,
                id,
                field,
                element,
            } => ParsedOp::SetAdd(collection, id, field, element),
            WriteOp::SetRemove {
                collection,
                id,
                field,
                element,
            } => ParsedOp::SetRemove(collection, id, field, element),
        })
    }
}

impl ParsedOp<'_> {
    /// Applies the op inside a transaction; `None` for a delete.
    pub(crate) fn apply(
        self,
        tx: &mut core::WriteTx<'_>,
    ) -> Result<Option<core::Record>, core::Error> {
        match self {
            ParsedOp::Put(c, id, data) => tx.put(c, id, data).map(Some),
            ParsedOp::Patch(c, id, fields) => tx.patch(c, id, fields).map(Some),
            ParsedOp::Delete(c, id) => tx.delete(c, id).map(|()| None),
            ParsedOp::Increment(c, id, f, by) => tx.increment(c, id, f, by).map(Some),
            ParsedOp::SetRegister(c, id, f, v) => tx.set_register(c, id, f, v).map(Some),
            ParsedOp::SetAdd(c, id, f, e) => tx.set_add(c, id, f, e).map(Some),
            ParsedOp::SetRemove(c, id, f, e) => tx.set_remove(c, id, f, e).map(Some),
        }
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ChangeOrigin {
    Local,
    Remote,
    /// Coalesced local and remote commits.
    Mixed,
}

impl From<core::ChangeOrigin> for ChangeOrigin {
    fn from(o: core::ChangeOrigin) -> Self {
        match o {
            core::ChangeOrigin::Local => ChangeOrigin::Local,
            core::ChangeOrigin::Remote => ChangeOrigin::Remote,
            core::ChangeOrigin::Mixed => ChangeOrigin::Mixed,
        }
    }
}

/// One changed record.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RecordRef {
    pub collection: String,
    pub id: String,
}

/// What one or more commits changed (events coalesce when a listener lags).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChangeEvent {
    pub origin: ChangeOrigin,
    pub collections: Vec<String>,
    pub records: Vec<RecordRef>,
    pub commits: u64,
}

impl From<&core::ChangeEvent> for ChangeEvent {
    fn from(e: &core::ChangeEvent) -> Self {
        ChangeEvent {
            origin: e.origin.into(),
            collections: e.collections.iter().cloned().collect(),
            records: e
                .records
                .iter()
                .map(|r| RecordRef {
                    collection: r.collection.clone(),
                    id: r.id.clone(),
                })
                .collect(),
            commits: e.commits,
        }
    }
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncActivity {
    Idle,
    Syncing,
    Offline,
    BackingOff,
    AuthError,
    /// The token provider returned no token: no one is signed in.
    SignedOut,
}

impl From<core::SyncActivity> for SyncActivity {
    fn from(a: core::SyncActivity) -> Self {
        match a {
            core::SyncActivity::Idle => SyncActivity::Idle,
            core::SyncActivity::Syncing => SyncActivity::Syncing,
            core::SyncActivity::Offline => SyncActivity::Offline,
            core::SyncActivity::BackingOff => SyncActivity::BackingOff,
            core::SyncActivity::AuthError => SyncActivity::AuthError,
            core::SyncActivity::SignedOut => SyncActivity::SignedOut,
        }
    }
}

/// Done of the total known so far: changes, and bytes (received bytes down, the ops'
/// JSON up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, uniffi::Record)]
pub struct Progress {
    pub changes_done: u64,
    pub changes_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl From<core::Progress> for Progress {
    fn from(p: core::Progress) -> Self {
        Progress {
            changes_done: p.changes_done,
            changes_total: p.changes_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }
    }
}

/// One collection's progress, down and up.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CollectionProgress {
    pub collection: String,
    pub download: Progress,
    pub upload: Progress,
}

/// How far a sync has got: in all, and per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct SyncProgress {
    pub download: Progress,
    pub upload: Progress,
    pub collections: Vec<CollectionProgress>,
}

impl From<&core::SyncProgress> for SyncProgress {
    fn from(p: &core::SyncProgress) -> Self {
        SyncProgress {
            download: p.download.into(),
            upload: p.upload.into(),
            collections: p
                .collections
                .iter()
                .map(|c| CollectionProgress {
                    collection: c.collection.clone(),
                    download: c.download.into(),
                    upload: c.upload.into(),
                })
                .collect(),
        }
    }
}

/// A snapshot of the sync state, for "Syncing…" or "Last synced 2 min ago".
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    pub activity: SyncActivity,
    pub pending: u64,
    pub failed: u64,
    pub conflicts: u64,
    pub last_synced_at_ms: Option<i64>,
    /// A sync has completed at least once: false through the first sync.
    pub has_synced: bool,
    /// How far the running (or last) sync has got.
    pub progress: SyncProgress,
    pub last_error: Option<String>,
    pub next_retry_at_ms: Option<i64>,
    /// Files waiting to upload, and their bytes not yet sent.
    pub attachment_uploads: u64,
    pub attachment_upload_bytes: u64,
    /// Files asked for and not here yet, and their bytes not yet received.
    pub attachment_downloads: u64,
    pub attachment_download_bytes: u64,
    /// Uploads the server refused for good (too large, over quota).
    pub attachment_failed_uploads: u64,
}

impl From<&core::SyncStatus> for SyncStatus {
    fn from(s: &core::SyncStatus) -> Self {
        SyncStatus {
            attachment_uploads: s.attachments.uploads,
            attachment_upload_bytes: s.attachments.upload_bytes,
            attachment_downloads: s.attachments.downloads,
            attachment_download_bytes: s.attachments.download_bytes,
            attachment_failed_uploads: s.attachments.failed_uploads,
            activity: s.activity.into(),
            pending: s.pending,
            failed: s.failed,
            conflicts: s.conflicts,
            last_synced_at_ms: s.last_synced_at_ms,
            has_synced: s.has_synced,
            progress: (&s.progress).into(),
            last_error: s.last_error.clone(),
            next_retry_at_ms: s.next_retry_at_ms,
        }
    }
}

/// How a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncOutcome {
    Completed,
    Offline,
    Cancelled,
    DeadlineExceeded,
    BackingOff,
    AuthFailed,
    /// The token provider returned no token; nothing was sent.
    SignedOut,
    Failed,
}

impl From<core::SyncOutcome> for SyncOutcome {
    fn from(o: core::SyncOutcome) -> Self {
        match o {
            core::SyncOutcome::Completed => SyncOutcome::Completed,
            core::SyncOutcome::Offline => SyncOutcome::Offline,
            core::SyncOutcome::Cancelled => SyncOutcome::Cancelled,
            core::SyncOutcome::DeadlineExceeded => SyncOutcome::DeadlineExceeded,
            core::SyncOutcome::BackingOff => SyncOutcome::BackingOff,
            core::SyncOutcome::AuthFailed => SyncOutcome::AuthFailed,
            core::SyncOutcome::SignedOut => SyncOutcome::SignedOut,
            core::SyncOutcome::Failed => SyncOutcome::Failed,
        }
    }
}

/// What one sync did. `should_retry` is what a background job reports (WorkManager
/// `Result.retry()`, `setTaskCompleted(success: false)`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    pub outcome: SyncOutcome,
    pub pushed: u64,
    pub applied: u64,
    pub conflicts: u64,
    pub rejected: u64,
    pub pulled: u64,
    /// Full re-pulls after the server expired a cursor.
    pub repulls: u64,
    pub requests: u64,
    /// Bytes sent and received on the wire during the sync.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// How far the sync got.
    pub progress: SyncProgress,
    /// Files uploaded and downloaded whole, and attachment bytes each way.
    pub files_uploaded: u64,
    pub files_downloaded: u64,
    pub file_bytes_sent: u64,
    pub file_bytes_received: u64,
    pub duration_ms: u64,
    pub errors: Vec<String>,
    pub should_retry: bool,
}

impl From<core::SyncReport> for SyncReport {
    fn from(r: core::SyncReport) -> Self {
        SyncReport {
            should_retry: r.should_retry(),
            outcome: r.outcome.into(),
            pushed: r.pushed,
            applied: r.applied,
            conflicts: r.conflicts,
            rejected: r.rejected,
            pulled: r.pulled,
            repulls: r.repulls,
            requests: r.requests,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            progress: (&r.progress).into(),
            files_uploaded: r.files_uploaded,
            files_downloaded: r.files_downloaded,
            file_bytes_sent: r.file_bytes_sent,
            file_bytes_received: r.file_bytes_received,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            errors: r.errors,
        }
    }
}

/// A conflict from the log: base, local and server versions as JSON text (None when
/// absent or deleted).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Conflict {
    pub id: i64,
    pub collection: String,
    pub record_id: String,
    pub strategy: ConflictStrategy,
    pub base_json: Option<String>,
    pub local_json: Option<String>,
    pub remote_json: Option<String>,
    pub remote_version: i64,
    /// `manual` while open; see the core's `Conflict::outcome`.
    pub outcome: String,
    pub resolved: bool,
    pub created_at_ms: i64,
}

fn object_text(o: Option<&serde_json::Map<String, Value>>) -> Option<String> {
    o.map(|o| Value::Object(o.clone()).to_string())
}

impl From<&core::Conflict> for Conflict {
    fn from(c: &core::Conflict) -> Self {
        Conflict {
            id: c.id,
            collection: c.collection.clone(),
            record_id: c.record_id.clone(),
            strategy: c.strategy.into(),
            base_json: object_text(c.base.as_ref()),
            local_json: object_text(c.local.as_ref()),
            remote_json: object_text(c.remote.as_ref()),
            remote_version: c.remote_version,
            outcome: c.outcome.clone(),
            resolved: c.resolved,
            created_at_ms: c.created_at_ms,
        }
    }
}

/// An edit the server rejected for good (`forbidden`, `invalid_op`, ...). It stays on
/// the device, with the record showing `Failed`, until the app retries or discards it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FailedEdit {
    /// Pass to `discard_failed`.
    pub entry_id: i64,
    pub collection: String,
    pub record_id: String,
    /// `put`, `patch` or `delete`.
    pub kind: String,
    /// The edit's fields, a JSON object as text; absent for a delete.
    pub data_json: Option<String>,
    /// The server's error code, e.g. `forbidden`.
    pub error_code: String,
    pub error_message: String,
    pub attempts: u32,
    pub created_at_ms: i64,
}

impl From<&core::OutboxEntry> for FailedEdit {
    fn from(e: &core::OutboxEntry) -> Self {
        let (error_code, error_message) = e
            .last_error
            .as_ref()
            .map(|b| (b.code.clone(), b.message.clone()))
            .unwrap_or_default();
        FailedEdit {
            entry_id: e.id,
            collection: e.collection.clone(),
            record_id: e.record_id.clone(),
            kind: e.kind.as_str().to_owned(),
            data_json: object_text(e.data.as_ref()),
            error_code,
            error_message,
            attempts: e.attempts,
            created_at_ms: e.created_at_ms,
        }
    }
}

/// The app's answer to a manual conflict.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Resolution {
    KeepLocal,
    KeepRemote,
    /// Use this record instead (an edited merge), a JSON object as text.
    Merged {
        data_json: String,
    },
}

impl TryFrom<&Resolution> for core::Resolution {
    type Error = OutpostError;
    fn try_from(r: &Resolution) -> Result<Self, OutpostError> {
        Ok(match r {
            Resolution::KeepLocal => core::Resolution::KeepLocal,
            Resolution::KeepRemote => core::Resolution::KeepRemote,
            Resolution::Merged { data_json } => match parse_object("merged data", data_json)? {
                Value::Object(o) => core::Resolution::Merged(o),
                _ => {
                    return Err(OutpostError::InvalidData {
                        detail: "merged data must be a JSON object".into(),
                    });
                }
            },
        })
    }
}

/// What `sign_out` does with the edits the user has not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SignOutPolicy {
    /// Sync first, for at most `deadline_ms`; if edits are still not on the server, fail
    /// with `UnsyncedEdits` and change nothing. Otherwise remove the user's data.
    SyncFirst { deadline_ms: u64 },
    /// Seal the unsynced edits in the file under the user's id (no other user can read
    /// them), remove the rest; they come back when the same user signs in again.
    KeepUnsynced,
}

impl From<SignOutPolicy> for core::SignOut {
    fn from(p: SignOutPolicy) -> Self {
        match p {
            SignOutPolicy::SyncFirst { deadline_ms } => core::SignOut::SyncFirst {
                deadline: Duration::from_millis(deadline_ms),
            },
            SignOutPolicy::KeepUnsynced => core::SignOut::KeepUnsynced,
        }
    }
}

/// A file in the store, to refer to from a record: put `json` (the
/// `{"$attachment": …}` reference) in a field.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentRef {
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
    /// The reference as a record field holds it.
    pub json: String,
}

impl From<core::AttachmentRef> for AttachmentRef {
    fn from(r: core::AttachmentRef) -> Self {
        AttachmentRef {
            json: r.to_json().to_string(),
            sha256: r.sha256,
            size: r.size,
            content_type: r.content_type,
            name: r.name,
        }
    }
}

/// A file as the app sees it: here (a path to open), or still on its way.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Attachment {
    Ready {
        path: String,
        size: u64,
    },
    /// Downloading with the next syncs: `received` of `size` bytes (`size` is 0 until
    /// the server has told it).
    Pending {
        size: u64,
        received: u64,
    },
}

impl From<core::AttachmentState> for Attachment {
    fn from(a: core::AttachmentState) -> Self {
        match a {
            core::AttachmentState::Ready { path, size } => Attachment::Ready {
                path: path.to_string_lossy().into_owned(),
                size,
            },
            core::AttachmentState::Pending { size, received } => {
                Attachment::Pending { size, received }
            }
        }
    }
}
