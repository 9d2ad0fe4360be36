//! The device database's schema and its numbered migrations.
//!
//! Apps upgrade in place on devices that may hold weeks of unsynced work, so the schema
//! evolves only by numbered migrations keyed on `PRAGMA user_version`, all applied in one
//! transaction at open. A fresh database is created at the latest version directly; a
//! test checks that every older database migrates to exactly the same shape.

use rusqlite::{Connection, Transaction};

use super::{Tx, meta, outbox};
use crate::error::{Error, Result};

/// The schema version this build writes.
pub const VERSION: i64 = 5;

/// Files kept beside the database (see db/attachments.rs): one row per file, with its
/// upload and download progress.
macro_rules! attachment_tables {
    () => {
        "
CREATE TABLE attachments (
    sha256          TEXT PRIMARY KEY,
    size            INTEGER NOT NULL,
    content_type    TEXT NOT NULL,
    local           INTEGER NOT NULL DEFAULT 0,
    upload          TEXT,
    uploaded        INTEGER NOT NULL DEFAULT 0,
    wanted          INTEGER NOT NULL DEFAULT 0,
    downloaded      INTEGER NOT NULL DEFAULT 0,
    chunk           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    used_at         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
) WITHOUT ROWID;
-- Files a user who signed out had not sent: their rows, as `sealed_records` keeps
-- records (`db::seals`); the bytes stay in the folder until she signs in again.
CREATE TABLE sealed_attachments (
    user_id         TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    size            INTEGER NOT NULL,
    content_type    TEXT NOT NULL,
    local           INTEGER NOT NULL,
    upload          TEXT,
    uploaded        INTEGER NOT NULL,
    wanted          INTEGER NOT NULL,
    downloaded      INTEGER NOT NULL,
    chunk           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    used_at         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, sha256)
) WITHOUT ROWID;
"
    };
}

/// The tables that keep what users who signed out left unsynced, each row under its
/// user's id. Columns are those of the live table, in order, after `user_id` (a test
/// holds them to it). No query reads them: the rows move back when the same user signs
/// in again.
macro_rules! seal_tables {
    () => {
        "
CREATE TABLE seals (
    user_id    TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    sealed_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sealed_records (
    user_id    TEXT NOT NULL,
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT,
    deleted    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    hlc        TEXT NOT NULL,
    sync_state TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    base       TEXT,
    base_hlc   TEXT,
    pulled_gen INTEGER NOT NULL,
    remote     TEXT,
    PRIMARY KEY (user_id, collection, id)
);
CREATE TABLE sealed_outbox (
    user_id         TEXT NOT NULL,
    id              INTEGER NOT NULL,
    op_id           TEXT NOT NULL,
    collection      TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    base_version    INTEGER,
    data            TEXT,
    hlc             TEXT NOT NULL,
    force           INTEGER NOT NULL,
    state           TEXT NOT NULL,
    sent            INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error_code TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE TABLE sealed_conflicts (
    user_id        TEXT NOT NULL,
    id             INTEGER NOT NULL,
    collection     TEXT NOT NULL,
    record_id      TEXT NOT NULL,
    strategy       TEXT NOT NULL,
    base           TEXT,
    local          TEXT,
    remote         TEXT,
    remote_version INTEGER,
    outcome        TEXT NOT NULL,
    resolved       INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (user_id, id)
);
"
    };
}

/// The latest schema, for a new database.
pub(crate) const CREATE: &str = concat!(
    "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per record: the current local data, plus the last state the server
-- confirmed (`base`, `version`), which three-way merges and discards fall back to.
CREATE TABLE records (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT,
    deleted    INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL DEFAULT 0,
    hlc        TEXT NOT NULL,
    sync_state TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    base       TEXT,
    base_hlc   TEXT,
    pulled_gen INTEGER NOT NULL DEFAULT 0,
    remote     TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- The durable queue of local edits. `sent` is set once an entry has been handed to the
-- network: from then on its op_id may be known to the server, so it is never coalesced.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id           TEXT NOT NULL UNIQUE,
    collection      TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    base_version    INTEGER,
    data            TEXT,
    hlc             TEXT NOT NULL,
    force           INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL,
    sent            INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error_code TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    bytes           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_record ON outbox (collection, record_id, id);
CREATE INDEX outbox_state ON outbox (state, id);

CREATE TABLE cursors (
    collection TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE conflicts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    strategy   TEXT NOT NULL,
    base       TEXT,
    local      TEXT,
    remote     TEXT,
    remote_version INTEGER,
    outcome    TEXT NOT NULL,
    resolved   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX conflicts_open ON conflicts (resolved, id);
",
    attachment_tables!(),
    seal_tables!()
);

/// Schema version 1, as first shipped: kept verbatim so migrations can be tested.
#[cfg(test)]
pub(crate) const CREATE_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE records (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT,
    deleted    INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL DEFAULT 0,
    hlc        TEXT NOT NULL,
    sync_state TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    base       TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id           TEXT NOT NULL UNIQUE,
    collection      TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    base_version    INTEGER,
    data            TEXT,
    hlc             TEXT NOT NULL,
    force           INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL,
    sent            INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error_code TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    bytes           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_record ON outbox (collection, record_id, id);
CREATE INDEX outbox_state ON outbox (state, id);
CREATE TABLE cursors (
    collection TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL
) WITHOUT ROWID;
";

/// One upgrade: schema SQL, or rows that go through their table's owner (which keeps
/// the clock rule when they hold stamps).
enum Step {
    Sql(&'static str),
    Rows(fn(&mut Tx<'_>) -> Result<()>),
}

/// Upgrades from version `n` to `n + 1`, indexed by `n - 1`.
const MIGRATIONS: &[Step] = &[
    // 1 -> 2: the conflict log, the HLC of the synced base for last-write-wins, the
    // pull generation that a full re-pull after `cursor_expired` marks records with, and
    // the newest server state pulled while the record had local edits (`remote`).
    Step::Sql(
        "
    ALTER TABLE records ADD COLUMN base_hlc TEXT;
    ALTER TABLE records ADD COLUMN pulled_gen INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE records ADD COLUMN remote TEXT;
    CREATE TABLE conflicts (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL,
        record_id  TEXT NOT NULL,
        strategy   TEXT NOT NULL,
        base       TEXT,
        local      TEXT,
        remote     TEXT,
        remote_version INTEGER,
        outcome    TEXT NOT NULL,
        resolved   INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX conflicts_open ON conflicts (resolved, id);
    ",
    ),
    // 2 -> 3: applied entries are deleted as their answers arrive; drop those that
    // earlier versions kept as `synced`.
    Step::Rows(outbox::drop_synced),
    // 3 -> 4: what users who signed out left unsynced, sealed under their user id.
    Step::Sql(seal_tables!()),
    // 4 -> 5: attachments, their upload queue and downloads.
    Step::Sql(attachment_tables!()),
];

const _: () = assert!(MIGRATIONS.len() as i64 == VERSION - 1);

/// Brings the database to [`VERSION`] in one transaction, or refuses a newer one.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    if found == VERSION {
        return Ok(());
    }
    if found == 0 {
        create_latest(&tx)?;
        tx.pragma_update(None, "user_version", VERSION)?;
        tx.commit()?;
        Ok(())
    } else {
        upgrade(tx, found)
    }
}

fn create_latest(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(CREATE)?;
    Ok(())
}

/// Runs the steps from `from` on, with the clock the stored stamps put it at, so a step
/// that drops stamped rows saves it. Steps stamp nothing, so the time is 0.
fn upgrade(tx: Transaction<'_>, from: i64) -> Result<()> {
    let (replica, _) = meta::identity(&tx)?;
    let mut clock = super::recover_clock(&tx, &replica)?;
    let mut tx = Tx::new(tx, &mut clock, 0);
    for version in from..VERSION {
        let step = usize::try_from(version - 1)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| {
                Error::Database(format!("no migration from schema version {version}"))
            })?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql)?,
            Step::Rows(change) => change(&mut tx)?,
        }
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table's columns, indexes and index columns, in a comparable form.
    fn shape(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let mut tables: Vec<(String, String)> = conn
            .prepare(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.sort();
        for (kind, name) in tables {
            out.push(format!("{kind} {name}"));
            let pragma = if kind == "table" {
                "table_xinfo"
            } else {
                "index_xinfo"
            };
            let mut stmt = conn
                .prepare(&format!("PRAGMA {pragma}(\"{name}\")"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for row in rows {
                out.push(format!("  {}", row.unwrap().join("|")));
            }
        }
        out
    }

    #[test]
    fn migrated_databases_match_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut fresh = Connection::open(dir.path().join("fresh.db")).unwrap();
        migrate(&mut fresh).unwrap();
        let want = shape(&fresh);
        assert!(want.iter().any(|l| l.contains("conflicts")));

        let mut old = Connection::open(dir.path().join("v1.db")).unwrap();
        old.execute_batch(CREATE_V1).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute(
            "INSERT INTO records (collection, id, data, hlc, sync_state, updated_at)
             VALUES ('patients', 'p1', '{\"a\":1}', '0000000000001-00000-r', 'pending', 1)",
            [],
        )
        .unwrap();
        for (op, state) in [("o1", "synced"), ("o2", "pending")] {
            old.execute(
                "INSERT INTO outbox (op_id, collection, record_id, kind, hlc, state, created_at)
                 VALUES (?1, 'patients', 'p1', 'put', '0000000000001-00000-r', ?2, 1)",
                [op, state],
            )
            .unwrap();
        }
        migrate(&mut old).unwrap();
        assert_eq!(shape(&old), want);
        let left: Vec<String> = old
            .prepare("SELECT op_id FROM outbox")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, ["o2"], "applied entries go, queued ones stay");
        let v: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        let data: String = old
            .query_row("SELECT data FROM records WHERE id = 'p1'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(data, "{\"a\":1}");
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("new.db")).unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        assert_eq!(
            migrate(&mut conn),
            Err(Error::SchemaTooNew {
                found: VERSION + 1,
                supported: VERSION
            })
        );
    }

    #[test]
    fn migrate_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("a.db")).unwrap();
        migrate(&mut conn).unwrap();
        let before = shape(&conn);
        migrate(&mut conn).unwrap();
        assert_eq!(shape(&conn), before);
    }
}
