//! The SQLite backend: one file, for a clinic-sized deployment, tests and the demo.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. There is one
//! writer connection (SQLite allows one writer at a time anyway; a first-come,
//! first-served queue in front of it orders writers without busy-retry storms) and a
//! small pool of reader connections, which WAL lets read committed snapshots while a
//! write is under way. `synchronous=FULL`: an answered push has been fsynced.
//!
//! A user's pushes enter the writer's queue one at a time, so a push waits behind at
//! most one push of each other user, each held to its budget (`budget.rs`): one team
//! sending many pushes at once cannot keep another team's push waiting longer.

mod files;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use outpost_core::protocol::{JsonObject, OpResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::{
    BoxFuture, PageChange, PullPage, PullQuery, PurgeReport, PurgeRequest, PushContext, Remaining,
    Storage, StorageError, db_err, scope_sql,
};
use crate::audit::{self, AuditEntry, AuditFields, AuditReads, StoredAuditRow, Verdict};
use crate::logic::{self, Access, AccessRules, PushItem, RecordKey, StoredRecord, User};
use crate::pull::{self, Marks, PageCut, PullSteps, change_bytes, page_change, routing_bytes};
use crate::push::{self, AnswerRow, PushSteps, RecordFiles, RecordRow};
use crate::storage::files::{Begin, FileAccess, StaleUpload, Upload};

/// Reader connections kept open between pulls.
const READERS: usize = 4;

/// Numbered migrations; `PRAGMA user_version` is the number applied.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE records (
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT,              -- JSON object; NULL for a tombstone
    deleted    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    seq        INTEGER NOT NULL UNIQUE, -- seq of the record's latest change
    hlc        TEXT NOT NULL,
    owner      TEXT NOT NULL,
    team       TEXT NOT NULL,
    created_at INTEGER NOT NULL,  -- unix ms
    updated_at INTEGER NOT NULL,  -- unix ms
    PRIMARY KEY (collection, record_id)
);
CREATE INDEX records_tombstones ON records (updated_at) WHERE deleted = 1;
-- Idempotency: every answer, keyed per user so nobody can replay another's op_id.
CREATE TABLE ops (
    user   TEXT NOT NULL,
    op_id  TEXT NOT NULL,
    answer TEXT NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (user, op_id)
) WITHOUT ROWID;
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,    -- RFC 3339 UTC
    user        TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    op_id       TEXT NOT NULL,
    collection  TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    old_version INTEGER,
    new_version INTEGER NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('purged_through_seq', 0);
"#,
    // 2: a pull page is a range of one collection in seq order; without this index each
    // page read and sorted the whole collection, making a first sync quadratic.
    r#"
CREATE INDEX records_collection_seq ON records (collection, seq);
"#,
    // 3: secrets the server makes for itself (the pull cursor key).
    r#"
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"#,
    // 4: ids scoped per owner, team or everyone (see logic::scope_of), so the key gains
    // the scope; rows written before get theirs from the access rules at the first
    // start ('?' until then). The audit gains denied writes, failed logins, pulls and
    // erasures, the client's address and a hash chain (with its head kept apart, and
    // forced overwrites' replaced versions in audit_prior); stored answers lose the
    // records of conflicts (see push.rs) and get an index to expire by.
    r#"
CREATE TABLE records_v4 (
    collection TEXT NOT NULL,
    scope      TEXT NOT NULL,     -- u:<owner>, t:<team> or * (shared); '?' until assigned
    record_id  TEXT NOT NULL,
    data       TEXT,
    deleted    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    hlc        TEXT NOT NULL,
    owner      TEXT NOT NULL,
    team       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (collection, scope, record_id)
);
INSERT INTO records_v4 (collection, scope, record_id, data, deleted, version, seq, hlc, owner,
                        team, created_at, updated_at)
    SELECT collection, '?', record_id, data, deleted, version, seq, hlc, owner, team,
           created_at, updated_at FROM records;
DROP TABLE records;
ALTER TABLE records_v4 RENAME TO records;
CREATE INDEX records_tombstones ON records (updated_at) WHERE deleted = 1;
CREATE INDEX records_collection_seq ON records (collection, seq);
CREATE INDEX records_unscoped ON records (collection) WHERE scope = '?';

CREATE TABLE audit_v4 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    event        TEXT NOT NULL,   -- write, denied, auth_failed, pull, erase, dropped
    user         TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    client_addr  TEXT NOT NULL,
    op_id        TEXT NOT NULL,
    collection   TEXT NOT NULL,
    scope        TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    old_version  INTEGER,
    new_version  INTEGER,
    code         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prior_sha256 TEXT,            -- SHA-256 of the version a forced overwrite replaced
    prev_hash    TEXT,            -- NULL for rows from before the chain
    hash         TEXT
);
INSERT INTO audit_v4 (id, at, event, user, client_id, client_addr, op_id, collection, scope,
                      record_id, kind, old_version, new_version, code, detail)
    SELECT id, at, 'write', user, client_id, '', op_id, collection, '', record_id, kind,
           old_version, new_version, '', '' FROM audit;
DROP TABLE audit;
ALTER TABLE audit_v4 RENAME TO audit;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, hash) VALUES (1, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit_prior (
    hash       TEXT PRIMARY KEY,  -- the hash of the audit row that kept it
    collection TEXT NOT NULL,
    scope      TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX audit_prior_record ON audit_prior (collection, scope, record_id);

CREATE INDEX ops_at ON ops (at);
UPDATE ops SET answer = json_object(
        'status', 'conflict', 'op_id', json_extract(answer, '$.op_id'),
        'collection', json_extract(answer, '$.current.collection'),
        'record_id', json_extract(answer, '$.current.record_id'))
    WHERE json_extract(answer, '$.status') = 'conflict'
      AND json_type(answer, '$.current') = 'object';
"#,
    // 5: the device session a JWT names (its `sid`), beside the client_id the request
    // claims; NULL for static tokens and tokens without one. Covered by the row's hash.
    r#"
ALTER TABLE audit ADD COLUMN device TEXT;
"#,
    // 6: who wrote each record last, and whether that device holds exactly what is
    // stored (logic::echo_exact), so a pull may leave out the device's own changes.
    r#"
ALTER TABLE records ADD COLUMN writer TEXT;
ALTER TABLE records ADD COLUMN echo INTEGER NOT NULL DEFAULT 0;
"#,
    // 7: attachments: uploads per user, files stored once, and the index of the
    // records that refer to each file (filled from existing records at the start).
    files::MIGRATION,
    // 8: the index a pull pages by also holds what decides whether its user may read
    // a row, so counting the changes left after a page (pull.rs) reads no row.
    r#"
CREATE INDEX records_collection_seq_readable ON records (collection, seq, scope, echo);
DROP INDEX records_collection_seq;
"#,
    // 9: a pull of named collections reads each one's readable scope as one range
    // (`scoped_filter`); in (collection, seq) order it read every team's rows since the
    // cursor to find the user's, a cost that grew with the number of teams.
    r#"
CREATE INDEX IF NOT EXISTS records_scope_seq ON records (collection, scope, seq);
"#,
];

/// The migration that adds the attachment index, which existing records fill.
const FILES_MIGRATION: i64 = 7;

/// Records, answers and audit in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Turns at the writer, first come first served.
    queue: tokio::sync::Mutex<()>,
    /// Per user with a push waiting or running: that user's turn to queue.
    users: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// A purge deleted data but could not truncate the WAL yet (a reader was in it).
    checkpoint_owed: AtomicBool,
}

fn open_conn(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
    // secure_delete: deleted records are overwritten in the file, not left in free
    // pages (erasure; the WAL is truncated after a purge for the same reason).
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA secure_delete=ON;",
    )
    .map_err(db_err)?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) and migrates the database; records from before
    /// scoped ids get their scope from `rules`.
    pub fn open(path: &Path, rules: &AccessRules) -> Result<SqliteStorage, StorageError> {
        let mut conn = open_conn(path)?;
        migrate(&mut conn, rules)?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                queue: tokio::sync::Mutex::new(()),
                users: Mutex::new(HashMap::new()),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                checkpoint_owed: AtomicBool::new(false),
            }),
        })
    }

    fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StorageError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let _turn = inner.queue.lock().await;
            let held = Arc::clone(&inner);
            tokio::task::spawn_blocking(move || {
                let mut conn = held
                    .writer
                    .lock()
                    .map_err(|_| StorageError("writer lock poisoned".into()))?;
                f(&mut conn)
            })
            .await
            .map_err(db_err)?
        })
    }

    /// [`SqliteStorage::with_writer`], queueing behind `user`'s own earlier pushes
    /// first.
    fn with_writer_for<T: Send + 'static>(
        &self,
        user: &str,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StorageError>> {
        let inner = Arc::clone(&self.inner);
        let user = user.to_owned();
        let write = self.with_writer(f);
        Box::pin(async move {
            let turn = {
                let mut users = inner.users.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(users.entry(user.clone()).or_default())
            };
            let out = {
                let _mine = turn.lock().await;
                write.await
            };
            let mut users = inner.users.lock().unwrap_or_else(|p| p.into_inner());
            // Only the map and this push hold it: no other push of the user waits.
            if Arc::strong_count(&turn) == 2 {
                users.remove(&user);
            }
            out
        })
    }

    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StorageError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let pooled = inner.readers.lock().ok().and_then(|mut p| p.pop());
                let mut conn = match pooled {
                    Some(c) => c,
                    None => open_conn(&inner.path)?,
                };
                let out = f(&mut conn);
                if let Ok(mut p) = inner.readers.lock()
                    && p.len() < READERS
                {
                    p.push(conn);
                }
                out
            })
            .await
            .map_err(db_err)?
        })
    }
}

fn migrate(conn: &mut Connection, rules: &AccessRules) -> Result<(), StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StorageError(format!(
            "database schema version {current} is newer than this server ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(db_err)?;
    }
    assign_scopes(&tx, rules)?;
    if current < FILES_MIGRATION {
        files::backfill(&tx)?;
    }
    tx.commit().map_err(db_err)
}

/// Gives records written before scoped ids the scope of their collection's access
/// rule. Their old key was (collection, id), so no two can meet on the new one.
fn assign_scopes(tx: &Connection, rules: &AccessRules) -> Result<(), StorageError> {
    for (name, access) in &rules.named {
        tx.execute(
            &format!(
                "UPDATE records SET scope = {} WHERE scope = '?' AND collection = ?1",
                scope_sql(*access)
            ),
            [name],
        )
        .map_err(db_err)?;
    }
    tx.execute(
        &format!(
            "UPDATE records SET scope = {} WHERE scope = '?'",
            scope_sql(rules.default)
        ),
        [],
    )
    .map_err(db_err)?;
    Ok(())
}

const RECORD_COLS: &str = "collection, record_id, data, deleted, version, seq, hlc, owner, team, \
     created_at, updated_at, writer, echo";

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredRecord, Option<String>)> {
    let data: Option<String> = r.get(2)?;
    Ok((
        StoredRecord {
            collection: r.get(0)?,
            record_id: r.get(1)?,
            data: None,
            deleted: r.get(3)?,
            version: r.get(4)?,
            seq: r.get(5)?,
            hlc: r.get(6)?,
            owner: r.get(7)?,
            team: r.get(8)?,
            created_at_ms: r.get(9)?,
            updated_at_ms: r.get(10)?,
            writer: r.get(11)?,
            echo: r.get(12)?,
        },
        data,
    ))
}

fn with_data(
    (mut rec, data): (StoredRecord, Option<String>),
) -> Result<StoredRecord, StorageError> {
    if let Some(text) = data {
        let obj: JsonObject = serde_json::from_str(&text).map_err(db_err)?;
        rec.data = Some(obj);
    }
    Ok(rec)
}

fn meta(conn: &Connection, key: &str) -> Result<i64, StorageError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .map_err(db_err)
}

/// Drives a future of this backend's steps to its end on the calling blocking thread.
/// The steps make plain rusqlite calls, so the future never waits; `block_on` is
/// allowed here because this runs on tokio's blocking pool, not on an async worker.
fn run_ready<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

fn push_blocking(
    conn: &mut Connection,
    ctx: &PushContext,
    items: &[PushItem],
    now_ms: i64,
) -> Result<Vec<OpResult>, StorageError> {
    // Why no puller can miss a change: BEGIN IMMEDIATE takes SQLite's write lock
    // before anything is read, and only one write transaction can hold it, in this
    // process or any other. seq is allocated as last_seq + 1 while holding that lock
    // and last_seq is committed with the change, so write transactions commit one
    // after another in seq order: when a transaction with seq S commits, every
    // seq < S is already committed. A reader's snapshot therefore always holds a
    // prefix of the sequence, and a puller that has seen S can never later find a
    // change below S appearing. last_seq lives in `meta` rather than being max(seq) so
    // that purging the newest tombstone can never make a seq be handed out twice. The
    // push's budget (budget.rs) bounds how long it holds the lock.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let start_seq = meta(&tx, "last_seq")?;
    let mut steps = SqlitePush {
        tx: &tx,
        last_seq: start_seq,
    };
    let results = run_ready(push::apply(&mut steps, ctx, items, now_ms))?;
    if steps.last_seq != start_seq {
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_seq'")
            .map_err(db_err)?
            .execute([steps.last_seq])
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(results)
}

/// The storage steps of a push, inside its `BEGIN IMMEDIATE` transaction.
struct SqlitePush<'a> {
    tx: &'a Connection,
    /// Allocated in memory; written to `meta` once, before commit.
    last_seq: i64,
}

impl PushSteps for SqlitePush<'_> {
    type Error = StorageError;

    async fn stored_answer(
        &mut self,
        user: &str,
        op_id: &str,
    ) -> Result<Option<String>, StorageError> {
        self.tx
            .prepare_cached("SELECT answer FROM ops WHERE user = ?1 AND op_id = ?2")
            .map_err(db_err)?
            .query_row(params![user, op_id], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    async fn load_record(&mut self, key: &RecordKey) -> Result<Option<StoredRecord>, StorageError> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {RECORD_COLS} FROM records \
                 WHERE collection = ?1 AND scope = ?2 AND record_id = ?3"
            ))
            .map_err(db_err)?
            .query_row(
                params![key.collection, key.scope, key.record_id],
                read_record,
            )
            .optional()
            .map_err(db_err)?
            .map(with_data)
            .transpose()
    }

    async fn stage_records(&mut self, _rows: &[RecordRow<'_>]) -> Result<(), StorageError> {
        // The one writer holds the lock for the whole push: the records are written
        // with their seqs in `assign_seqs`, each once.
        Ok(())
    }

    async fn index_files(&mut self, records: &[RecordFiles<'_>]) -> Result<(), StorageError> {
        files::index(self.tx, records)
    }

    async fn assign_seqs(
        &mut self,
        count: i64,
        rows: &[RecordRow<'_>],
    ) -> Result<i64, StorageError> {
        let first = self.last_seq + 1;
        self.last_seq += count;
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO records (collection, scope, record_id, data, deleted, version, \
                 seq, hlc, owner, team, created_at, updated_at, writer, echo) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (collection, scope, record_id) DO UPDATE SET data = excluded.data, \
                 deleted = excluded.deleted, version = excluded.version, seq = excluded.seq, \
                 hlc = excluded.hlc, updated_at = excluded.updated_at, \
                 writer = excluded.writer, echo = excluded.echo",
            )
            .map_err(db_err)?;
        for row in rows {
            stmt.execute(params![
                row.key.collection,
                row.key.scope,
                row.key.record_id,
                row.data,
                row.deleted,
                row.version,
                first + row.nth - 1,
                row.hlc,
                row.owner,
                row.team,
                row.created_at_ms,
                row.updated_at_ms,
                row.writer,
                row.echo
            ])
            .map_err(db_err)?;
        }
        Ok(first)
    }

    async fn append_audit(&mut self, entries: Vec<AuditEntry>) -> Result<(), StorageError> {
        append_audit_tx(self.tx, entries)
    }

    async fn store_answers(&mut self, rows: &[AnswerRow<'_>]) -> Result<(), StorageError> {
        let mut stmt = self
            .tx
            .prepare_cached("INSERT INTO ops (user, op_id, answer, at) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db_err)?;
        for row in rows {
            stmt.execute(params![row.user, row.op_id, row.answer, row.at_ms])
                .map_err(db_err)?;
        }
        Ok(())
    }
}

/// Extends the audit chain by `entries`, inside the caller's write transaction (whose
/// lock makes it the only writer of the chain's head).
fn append_audit_tx(tx: &Connection, entries: Vec<AuditEntry>) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    let head: String = tx
        .query_row("SELECT hash FROM audit_head WHERE id = 1", [], |r| r.get(0))
        .map_err(db_err)?;
    let rows = audit::seal(&head, entries);
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO audit (at, event, user, client_id, client_addr, op_id, collection, \
             scope, record_id, kind, old_version, new_version, code, detail, device, \
             prior_sha256, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                     ?18)",
        )
        .map_err(db_err)?;
    let mut keep = tx
        .prepare_cached(
            "INSERT INTO audit_prior (hash, collection, scope, record_id, data) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db_err)?;
    for r in &rows {
        let f = &r.fields;
        insert
            .execute(params![
                f.at,
                f.event,
                f.user,
                f.client_id,
                f.client_addr,
                f.op_id,
                f.collection,
                f.scope,
                f.record_id,
                f.kind,
                f.old_version,
                f.new_version,
                f.code,
                f.detail,
                f.device,
                r.prior_sha256,
                r.prev_hash,
                r.hash
            ])
            .map_err(db_err)?;
        if let Some(prior) = &r.prior {
            keep.execute(params![r.hash, f.collection, f.scope, f.record_id, prior])
                .map_err(db_err)?;
        }
    }
    if let Some(last) = rows.last() {
        tx.prepare_cached("UPDATE audit_head SET hash = ?1 WHERE id = 1")
            .map_err(db_err)?
            .execute([&last.hash])
            .map_err(db_err)?;
    }
    Ok(())
}

/// `(a OR b ...)` of the access rule of each collection, with its parameters: a user
/// reads the records of their own scope under each collection's rule.
fn access_filter(rules: &AccessRules, user: &User, args: &mut Vec<SqlValue>) -> String {
    let cond = |a: Access, args: &mut Vec<SqlValue>| {
        args.push(SqlValue::Text(logic::scope_of(a, user)));
        "scope = ?".to_owned()
    };
    let mut parts = Vec::new();
    for (name, a) in &rules.named {
        args.push(SqlValue::Text(name.clone()));
        let c = cond(*a, args);
        parts.push(format!("(collection = ? AND {c})"));
    }
    let mut default = String::from("(");
    if !rules.named.is_empty() {
        default.push_str("collection NOT IN (");
        default.push_str(&vec!["?"; rules.named.len()].join(", "));
        default.push_str(") AND ");
        args.extend(rules.named.iter().map(|(n, _)| SqlValue::Text(n.clone())));
    }
    default.push_str(&cond(rules.default, args));
    default.push(')');
    parts.push(default);
    format!("({})", parts.join(" OR "))
}

/// ` AND collection IN (...)` for a pull of some collections; nothing for all.
fn collections_filter(q: &PullQuery, args: &mut Vec<SqlValue>) -> String {
    let Some(cols) = &q.collections else {
        return String::new();
    };
    args.extend(cols.iter().map(|c| SqlValue::Text(c.clone())));
    format!(" AND collection IN ({})", vec!["?"; cols.len()].join(", "))
}

/// For a user's pull of one collection (what the engine asks for), the rows it may
/// read: the one scope the collection's rule lets the user read. That is a range of the
/// `(collection, scope, seq)` index, so a page reads the user's rows rather than every
/// team's rows since the cursor. Of several collections SQLite would read every
/// readable row past the cursor and sort them, worse for a large first sync than the
/// `(collection, seq)` order; those keep it.
fn scoped_filter(q: &PullQuery, args: &mut Vec<SqlValue>) -> Option<String> {
    let [c] = q.collections.as_deref()? else {
        return None;
    };
    if q.all_teams {
        return None;
    }
    args.push(SqlValue::Text(c.clone()));
    args.push(SqlValue::Text(logic::scope_of(q.access.of(c), &q.user)));
    Some("collection = ? AND scope = ?".to_owned())
}

/// The rows of a pull's collections that go in its pages: those its user may read,
/// less its own changes that its device holds exactly ([`PullQuery::own`]).
fn readable_filter(q: &PullQuery, args: &mut Vec<SqlValue>) -> String {
    let sql = if q.all_teams {
        "1 = 1".to_owned()
    } else {
        access_filter(&q.access, &q.user, args)
    };
    sql + &own_filter(q, args)
}

/// ` AND NOT (...)`: less the puller's own changes that its device holds exactly.
fn own_filter(q: &PullQuery, args: &mut Vec<SqlValue>) -> String {
    let mut sql = String::new();
    if !q.own.is_empty() {
        let ranges = vec!["seq BETWEEN ? AND ?"; q.own.len()].join(" OR ");
        sql.push_str(&format!(" AND NOT (echo = 1 AND ({ranges}))"));
        for (lo, hi) in &q.own {
            args.push(SqlValue::Integer(*lo));
            args.push(SqlValue::Integer(*hi));
        }
    }
    sql
}

fn pull_blocking(conn: &mut Connection, q: &PullQuery) -> Result<PullPage, StorageError> {
    // One read transaction: the purge mark and the page come from the same snapshot.
    let tx = conn.transaction().map_err(db_err)?;
    let page = run_ready(pull::read_page(&mut SqlitePull { tx: &tx }, q))?;
    tx.commit().map_err(db_err)?;
    Ok(page)
}

/// The reads of a pull page, inside one read transaction.
struct SqlitePull<'a> {
    tx: &'a Connection,
}

impl PullSteps for SqlitePull<'_> {
    async fn marks(&mut self) -> Result<Marks, StorageError> {
        Ok(Marks {
            purged_through_seq: meta(self.tx, "purged_through_seq")?,
            last_seq: meta(self.tx, "last_seq")?,
        })
    }

    async fn count_after(
        &mut self,
        q: &PullQuery,
        after: i64,
        cap: i64,
    ) -> Result<Remaining, StorageError> {
        // Parameters bind in the order they appear in the text: the outer test first.
        let mut args = Vec::new();
        let readable = readable_filter(q, &mut args);
        args.push(SqlValue::Integer(after));
        let collections = collections_filter(q, &mut args);
        args.push(SqlValue::Integer(cap));
        let sql = format!(
            "SELECT count(*), coalesce(sum(CASE WHEN {readable} THEN 1 ELSE 0 END), 0) \
             FROM (SELECT collection, scope, seq, echo FROM records \
                   WHERE seq > ?{collections} ORDER BY seq LIMIT ?)"
        );
        let (looked, readable): (i64, i64) = self
            .tx
            .prepare_cached(&sql)
            .map_err(db_err)?
            .query_row(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        Ok(Remaining {
            changes: u64::try_from(readable).unwrap_or(0),
            capped: looked >= cap,
        })
    }

    async fn records_after(
        &mut self,
        q: &PullQuery,
        since: i64,
        cut: &mut PageCut,
    ) -> Result<Vec<PageChange>, StorageError> {
        let mut args = vec![SqlValue::Integer(since)];
        let mut sql = format!("SELECT {RECORD_COLS} FROM records WHERE seq > ?");
        if let Some(scoped) = scoped_filter(q, &mut args) {
            sql.push_str(" AND ");
            sql.push_str(&scoped);
            sql.push_str(&own_filter(q, &mut args));
        } else {
            sql.push_str(&collections_filter(q, &mut args));
            sql.push_str(" AND ");
            sql.push_str(&readable_filter(q, &mut args));
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        args.push(SqlValue::Integer(cut.rows_to_read()));
        let mut stmt = self.tx.prepare_cached(&sql).map_err(db_err)?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(db_err)?;
        let mut page = Vec::new();
        while let Some(r) = rows.next().map_err(db_err)? {
            // Sized from the row as SQLite holds it; only an admitted row is copied.
            let len = |i: usize| -> Result<Option<usize>, StorageError> {
                Ok(r.get_ref(i)
                    .map_err(db_err)?
                    .as_bytes_or_null()
                    .map_err(db_err)?
                    .map(<[u8]>::len))
            };
            let bytes = change_bytes(
                len(0)?.unwrap_or(0),
                len(1)?.unwrap_or(0),
                len(6)?.unwrap_or(0),
                len(2)?,
            ) + routing_bytes(q, len(8)?.unwrap_or(0), len(7)?.unwrap_or(0));
            if !cut.admit(bytes) {
                break;
            }
            let mut change = page_change(
                r.get(0).map_err(db_err)?,
                r.get(1).map_err(db_err)?,
                r.get(4).map_err(db_err)?,
                r.get(5).map_err(db_err)?,
                r.get(3).map_err(db_err)?,
                r.get(2).map_err(db_err)?,
                r.get(6).map_err(db_err)?,
                r.get(10).map_err(db_err)?,
            )?;
            if q.all_teams {
                change.team = Some(r.get(8).map_err(db_err)?);
                change.owner = Some(r.get(7).map_err(db_err)?);
            }
            page.push(change);
        }
        Ok(page)
    }
}

fn purge_blocking(conn: &mut Connection, req: PurgeRequest) -> Result<PurgeReport, StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let gone: Vec<(String, String, String, i64)> = tx
        .prepare_cached(
            "SELECT collection, scope, record_id, seq FROM records \
             WHERE deleted = 1 AND updated_at < ?1",
        )
        .map_err(db_err)?
        .query_map([req.tombstones_before_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let mut erasures = Vec::with_capacity(gone.len());
    let mut top = None;
    for (collection, scope, record_id, seq) in gone {
        tx.prepare_cached(
            "DELETE FROM records WHERE collection = ?1 AND scope = ?2 AND record_id = ?3",
        )
        .map_err(db_err)?
        .execute(params![collection, scope, record_id])
        .map_err(db_err)?;
        tx.prepare_cached(
            "DELETE FROM audit_prior WHERE collection = ?1 AND scope = ?2 AND record_id = ?3",
        )
        .map_err(db_err)?
        .execute(params![collection, scope, record_id])
        .map_err(db_err)?;
        top = top.max(Some(seq));
        erasures.push(audit::erasure(req.now_ms, collection, scope, record_id));
    }
    let purged = erasures.len() as u64;
    append_audit_tx(&tx, erasures)?;
    let mut mark = meta(&tx, "purged_through_seq")?;
    if let Some(top) = top
        && top > mark
    {
        mark = top;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'purged_through_seq'",
            [mark],
        )
        .map_err(db_err)?;
    }
    let answers_purged = tx
        .execute("DELETE FROM ops WHERE at < ?1", [req.answers_before_ms])
        .map_err(db_err)? as u64;
    tx.commit().map_err(db_err)?;
    Ok(PurgeReport {
        purged,
        purged_through_seq: mark,
        answers_purged,
    })
}

fn shared_secret_blocking(
    conn: &mut Connection,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute(
        "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
        params![name, candidate],
    )
    .map_err(db_err)?;
    let value: Vec<u8> = tx
        .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(value)
}

/// Copies every committed page back into the database file and empties the WAL, so
/// what a purge deleted (overwritten in place, `secure_delete`) is not left in older
/// page images in the WAL. Fails while a reader still uses the WAL; then it is owed.
fn truncate_wal(conn: &Connection) -> Result<bool, StorageError> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(db_err)?;
    Ok(busy == 0)
}

fn audit_page_blocking(
    conn: &Connection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<StoredAuditRow>, StorageError> {
    conn.prepare_cached(
        "SELECT id, at, event, user, client_id, client_addr, op_id, collection, scope, \
         record_id, kind, old_version, new_version, code, detail, device, prior_sha256, \
         prev_hash, hash FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
    )
    .map_err(db_err)?
    .query_map([after_id, limit], |r| {
        Ok(StoredAuditRow {
            id: r.get(0)?,
            fields: AuditFields {
                at: r.get(1)?,
                event: r.get(2)?,
                user: r.get(3)?,
                client_id: r.get(4)?,
                client_addr: r.get(5)?,
                op_id: r.get(6)?,
                collection: r.get(7)?,
                scope: r.get(8)?,
                record_id: r.get(9)?,
                kind: r.get(10)?,
                old_version: r.get(11)?,
                new_version: r.get(12)?,
                code: r.get(13)?,
                detail: r.get(14)?,
                device: r.get(15)?,
            },
            prior_sha256: r.get(16)?,
            prev_hash: r.get(17)?,
            hash: r.get(18)?,
        })
    })
    .map_err(db_err)?
    .collect::<Result<_, _>>()
    .map_err(db_err)
}

fn audit_priors_blocking(
    conn: &Connection,
    hashes: &[String],
) -> Result<Vec<(String, String)>, StorageError> {
    let mut stmt = conn
        .prepare_cached("SELECT data FROM audit_prior WHERE hash = ?1")
        .map_err(db_err)?;
    let mut out = Vec::new();
    for h in hashes {
        if let Some(data) = stmt
            .query_row([h], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db_err)?
        {
            out.push((h.clone(), data));
        }
    }
    Ok(out)
}

/// The reads of `audit verify`, inside one read transaction.
struct SqliteAudit<'a> {
    tx: &'a Connection,
}

impl AuditReads for SqliteAudit<'_> {
    async fn page(
        &mut self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredAuditRow>, StorageError> {
        audit_page_blocking(self.tx, after_id, limit)
    }

    async fn head(&mut self) -> Result<String, StorageError> {
        self.tx
            .query_row("SELECT hash FROM audit_head WHERE id = 1", [], |r| r.get(0))
            .map_err(db_err)
    }

    async fn priors(
        &mut self,
        row_hashes: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        audit_priors_blocking(self.tx, row_hashes)
    }
}

impl Storage for SqliteStorage {
    fn push<'a>(
        &'a self,
        ctx: &'a PushContext,
        items: Vec<PushItem>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<OpResult>, StorageError>> {
        let ctx = ctx.clone();
        let user = ctx.user.name.clone();
        self.with_writer_for(&user, move |conn| push_blocking(conn, &ctx, &items, now_ms))
    }

    fn pull<'a>(&'a self, query: &'a PullQuery) -> BoxFuture<'a, Result<PullPage, StorageError>> {
        let q = query.clone();
        self.with_reader(move |conn| pull_blocking(conn, &q))
    }

    fn purge(&self, req: PurgeRequest) -> BoxFuture<'_, Result<PurgeReport, StorageError>> {
        let inner = Arc::clone(&self.inner);
        self.with_writer(move |conn| {
            let report = purge_blocking(conn, req)?;
            let deleted = report.purged > 0 || report.answers_purged > 0;
            if deleted || inner.checkpoint_owed.load(Ordering::Relaxed) {
                let done = truncate_wal(conn)?;
                inner.checkpoint_owed.store(!done, Ordering::Relaxed);
            }
            Ok(report)
        })
    }

    fn append_audit(&self, entries: Vec<AuditEntry>) -> BoxFuture<'_, Result<(), StorageError>> {
        self.with_writer(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            append_audit_tx(&tx, entries)?;
            tx.commit().map_err(db_err)
        })
    }

    fn verify_audit(&self) -> BoxFuture<'_, Result<Verdict, StorageError>> {
        self.with_reader(|conn| {
            // A deferred transaction: its snapshot is taken at the first read and held
            // to the end, whatever the writer commits meanwhile.
            let tx = conn.transaction().map_err(db_err)?;
            let verdict = run_ready(audit::verify(&mut SqliteAudit { tx: &tx }))?;
            tx.commit().map_err(db_err)?;
            Ok(verdict)
        })
    }

    fn shared_secret<'a>(
        &'a self,
        name: &'a str,
        candidate: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, StorageError>> {
        let name = name.to_owned();
        self.with_writer(move |conn| shared_secret_blocking(conn, &name, &candidate))
    }

    fn file_access(
        &self,
        user: User,
        access: AccessRules,
        sha256: String,
    ) -> BoxFuture<'_, Result<FileAccess, StorageError>> {
        self.with_reader(move |conn| files::access(conn, &user, &access, &sha256))
    }

    fn begin_upload(
        &self,
        user: String,
        sha256: String,
        size: u64,
        quota: Option<u64>,
        upload_id: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Begin, StorageError>> {
        self.with_writer(move |conn| {
            files::begin(conn, &user, &sha256, size, quota, &upload_id, now_ms)
        })
    }

    fn advance_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
        from: u64,
        to: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<Option<Upload>, StorageError>> {
        self.with_writer(move |conn| {
            files::advance(conn, &user, &sha256, &upload_id, from, to, now_ms)
        })
    }

    fn complete_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
        size: u64,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.with_writer(move |conn| {
            files::complete(conn, &user, &sha256, &upload_id, size, now_ms)
        })
    }

    fn drop_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.with_writer(move |conn| files::drop_upload(conn, &user, &sha256, &upload_id))
    }

    fn stale_uploads(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StaleUpload>, StorageError>> {
        self.with_reader(move |conn| files::stale(conn, before_ms, limit))
    }
}
