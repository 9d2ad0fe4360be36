//! The SQLite backend: one file, for a clinic-sized deployment, tests and the demo.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. There is one
//! writer connection (SQLite allows one writer at a time anyway; a mutex in front of
//! it queues writers without busy-retry storms) and a small pool of reader
//! connections, which WAL lets read committed snapshots while a write is under way.
//! `synchronous=FULL`: an answered push has been fsynced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::protocol::{JsonObject, OpResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use super::{
    AccessRules, BoxFuture, PullPage, PullQuery, PurgeReport, PushContext, Storage, StorageError,
    db_err,
};
use crate::logic::{Access, PushItem, StoredRecord};
use crate::pull::{self, Marks, PullSteps};
use crate::push::{self, AnswerRow, AuditRow, PushSteps, RecordRow};

/// Reader connections kept open between pulls.
const READERS: usize = 4;

/// Numbered migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
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
    // 3: the device session a JWT names (its `sid`), beside the client_id the request
    // claims; NULL for static tokens and tokens without one.
    r#"
ALTER TABLE audit ADD COLUMN device TEXT;
"#,
];

/// Records, answers and audit in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn open_conn(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .map_err(db_err)?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let mut conn = open_conn(path)?;
        migrate(&mut conn)?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StorageError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = inner
                    .writer
                    .lock()
                    .map_err(|_| StorageError("writer lock poisoned".into()))?;
                f(&mut conn)
            })
            .await
            .map_err(db_err)?
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

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
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
    tx.commit().map_err(db_err)
}

const RECORD_COLS: &str =
    "collection, record_id, data, deleted, version, seq, hlc, owner, team, created_at, updated_at";

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
    // that purging the newest tombstone can never make a seq be handed out twice.
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

    async fn load_record(
        &mut self,
        collection: &str,
        record_id: &str,
    ) -> Result<Option<StoredRecord>, StorageError> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {RECORD_COLS} FROM records WHERE collection = ?1 AND record_id = ?2"
            ))
            .map_err(db_err)?
            .query_row(params![collection, record_id], read_record)
            .optional()
            .map_err(db_err)?
            .map(with_data)
            .transpose()
    }

    async fn next_seq(&mut self) -> Result<i64, StorageError> {
        self.last_seq += 1;
        Ok(self.last_seq)
    }

    async fn write_record(&mut self, row: RecordRow<'_>) -> Result<(), StorageError> {
        self.tx
            .prepare_cached(
                "INSERT INTO records (collection, record_id, data, deleted, version, seq, \
                 hlc, owner, team, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (collection, record_id) DO UPDATE SET data = excluded.data, \
                 deleted = excluded.deleted, version = excluded.version, seq = excluded.seq, \
                 hlc = excluded.hlc, updated_at = excluded.updated_at",
            )
            .map_err(db_err)?
            .execute(params![
                row.collection,
                row.record_id,
                row.data,
                row.deleted,
                row.version,
                row.seq,
                row.hlc,
                row.owner,
                row.team,
                row.created_at_ms,
                row.updated_at_ms
            ])
            .map_err(db_err)?;
        Ok(())
    }

    async fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), StorageError> {
        self.tx
            .prepare_cached(
                "INSERT INTO audit (at, user, client_id, op_id, collection, record_id, \
                 kind, old_version, new_version, device) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(db_err)?
            .execute(params![
                row.at,
                row.user,
                row.client_id,
                row.op_id,
                row.collection,
                row.record_id,
                row.kind,
                row.old_version,
                row.new_version,
                row.device
            ])
            .map_err(db_err)?;
        Ok(())
    }

    async fn store_answer(&mut self, row: AnswerRow<'_>) -> Result<(), StorageError> {
        self.tx
            .prepare_cached("INSERT INTO ops (user, op_id, answer, at) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db_err)?
            .execute(params![row.user, row.op_id, row.answer, row.at_ms])
            .map_err(db_err)?;
        Ok(())
    }
}

/// `(a OR b ...)` of the access rule of each collection, with its parameters.
fn access_filter(rules: &AccessRules, user: &str, team: &str, args: &mut Vec<SqlValue>) -> String {
    let cond = |a: Access, args: &mut Vec<SqlValue>| match a {
        Access::Private => {
            args.push(SqlValue::Text(user.to_owned()));
            "owner = ?".to_owned()
        }
        Access::Team => {
            args.push(SqlValue::Text(team.to_owned()));
            "team = ?".to_owned()
        }
        Access::Shared => "1".to_owned(),
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

    async fn records_after(
        &mut self,
        q: &PullQuery,
        since: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let mut args = vec![SqlValue::Integer(since)];
        let mut sql = format!("SELECT {RECORD_COLS} FROM records WHERE seq > ?");
        if let Some(cols) = &q.collections {
            sql.push_str(" AND collection IN (");
            sql.push_str(&vec!["?"; cols.len()].join(", "));
            sql.push(')');
            args.extend(cols.iter().map(|c| SqlValue::Text(c.clone())));
        }
        sql.push_str(" AND ");
        sql.push_str(&access_filter(
            &q.access,
            &q.user.name,
            &q.user.team,
            &mut args,
        ));
        sql.push_str(" ORDER BY seq LIMIT ?");
        args.push(SqlValue::Integer(limit));
        let mut stmt = self.tx.prepare_cached(&sql).map_err(db_err)?;
        let rows = stmt
            .query_map(params_from_iter(args), read_record)
            .map_err(db_err)?;
        rows.map(|row| with_data(row.map_err(db_err)?)).collect()
    }
}

fn purge_blocking(conn: &mut Connection, older_than_ms: i64) -> Result<PurgeReport, StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let top: Option<i64> = tx
        .query_row(
            "SELECT max(seq) FROM records WHERE deleted = 1 AND updated_at < ?1",
            [older_than_ms],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let purged = tx
        .execute(
            "DELETE FROM records WHERE deleted = 1 AND updated_at < ?1",
            [older_than_ms],
        )
        .map_err(db_err)?;
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
    tx.commit().map_err(db_err)?;
    Ok(PurgeReport {
        purged: purged as u64,
        purged_through_seq: mark,
    })
}

impl Storage for SqliteStorage {
    fn push<'a>(
        &'a self,
        ctx: &'a PushContext,
        items: Vec<PushItem>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<OpResult>, StorageError>> {
        let ctx = ctx.clone();
        self.with_writer(move |conn| push_blocking(conn, &ctx, &items, now_ms))
    }

    fn pull<'a>(&'a self, query: &'a PullQuery) -> BoxFuture<'a, Result<PullPage, StorageError>> {
        let q = query.clone();
        self.with_reader(move |conn| pull_blocking(conn, &q))
    }

    fn purge_tombstones(
        &self,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<PurgeReport, StorageError>> {
        self.with_writer(move |conn| purge_blocking(conn, older_than_ms))
    }
}
