//! The PostgreSQL schema: numbered migrations, and how every server process applies
//! them once.
//!
//! Servers of one deployment may start at the same moment against one database, so
//! applying the migrations is itself a race; it runs in one transaction under an
//! advisory lock, and a server that finds a schema newer than it knows refuses to start.

use deadpool_postgres::GenericClient;

use super::pg_err;
use crate::storage::StorageError;

/// Advisory lock key of the migrations. Fixed and arbitrary ("outpost" in ASCII);
/// record and op_id keys are hashes, so a clash with it is as unlikely as any other.
const MIGRATION_LOCK: i64 = 0x006f_7574_706f_7374;

/// Numbered migrations: entry `i` brings the schema to version `i + 1`. Never edit an
/// applied one; append a new one.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE records (
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    data       TEXT,              -- JSON object as text (kept byte for byte); NULL for a tombstone
    deleted    BOOLEAN NOT NULL,
    version    BIGINT NOT NULL,
    seq        BIGINT NOT NULL UNIQUE, -- seq of the record's latest change; pulls walk this index
    hlc        TEXT NOT NULL,
    owner      TEXT NOT NULL,
    team       TEXT NOT NULL,
    created_at BIGINT NOT NULL,   -- unix ms
    updated_at BIGINT NOT NULL,   -- unix ms
    PRIMARY KEY (collection, record_id)
);
CREATE INDEX records_tombstones ON records (updated_at) WHERE deleted;

-- Idempotency: every answer, keyed per user so nobody can replay another's op_id.
-- op_id is escaped (see pg_text in postgres.rs).
CREATE TABLE ops (
    user_name TEXT NOT NULL,
    op_id     TEXT NOT NULL,
    answer    TEXT NOT NULL,      -- the OpResult as JSON
    at        BIGINT NOT NULL,
    PRIMARY KEY (user_name, op_id)
);

CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TEXT NOT NULL,    -- RFC 3339 UTC
    user_name   TEXT NOT NULL,
    client_id   TEXT NOT NULL,    -- escaped like op_id
    op_id       TEXT NOT NULL,
    collection  TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    old_version BIGINT,
    new_version BIGINT NOT NULL
);
CREATE INDEX audit_op ON audit (op_id);
CREATE FUNCTION outpost_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only';
END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION outpost_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION outpost_audit_append_only();

-- last_seq is a counter committed with each change rather than max(seq), so purging the
-- newest tombstone can never make a seq be handed out twice. Its row lock is also what
-- orders commits (see push_once).
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('purged_through_seq', 0);

-- Takes transaction-level advisory locks in the order given, in one round trip.
CREATE FUNCTION outpost_lock_keys(keys BIGINT[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE k BIGINT;
BEGIN
    FOREACH k IN ARRAY keys LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END $$;
"#,
    // 2: a pull page is a range of one collection in seq order; without this index each
    // page read and sorted the whole collection, making a first sync quadratic.
    r#"
CREATE INDEX records_collection_seq ON records (collection, seq);
"#,
    // 3: the device session a JWT names (its `sid`), beside the client_id the request
    // claims; NULL for static tokens and tokens without one. Escaped like op_id.
    r#"
ALTER TABLE audit ADD COLUMN device TEXT;
"#,
];

/// Applies the migrations the database lacks; fails on a schema newer than this server
/// or a database that is not UTF8.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StorageError> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .map_err(|e| pg_err(&e))?
        .get(0);
    if encoding != "UTF8" {
        return Err(StorageError(format!(
            "the database's encoding is {encoding}; outpost-server needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8')"
        )));
    }
    let tx = client.transaction().await.map_err(|e| pg_err(&e))?;
    // Held to commit: a second server starting at the same moment waits here, then
    // finds the migrations applied. Taken before the version table exists, because
    // creating it is itself a race.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_err(&e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS outpost_schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| pg_err(&e))?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM outpost_schema_version",
            &[],
        )
        .await
        .map_err(|e| pg_err(&e))?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        return Err(StorageError(format!(
            "database schema version {current} is newer than this server ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql)
            .await
            .map_err(|e| StorageError(format!("migration {version}: {}", pg_err(&e).0)))?;
        tx.execute(
            "INSERT INTO outpost_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| pg_err(&e))?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(|e| pg_err(&e))
}
