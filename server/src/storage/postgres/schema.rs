//! The PostgreSQL schema: numbered migrations, and how every server process applies
//! them once.
//!
//! Servers of one deployment may start at the same moment against one database, so
//! applying the migrations is itself a race; it runs in one transaction under an
//! advisory lock, and a server that finds a schema newer than it knows refuses to start.

use deadpool_postgres::GenericClient;

use super::pg_err;
use crate::logic::AccessRules;
use crate::storage::{StorageError, scope_sql};

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
    // 3: secrets the server makes for itself (the pull cursor key), shared by every
    // process over the database.
    r#"
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
"#,
    // 4: ids scoped per owner, team or everyone (see logic::scope_of), so the key gains
    // the scope; rows written before get theirs from the access rules at the next start
    // ('?' until then). A push writes its records before it takes the seq counter, with
    // negative stand-ins from records_staged_seq (see push.rs). The audit gains denied
    // writes, failed logins, pulls and erasures, the client's address and a hash chain
    // (its head kept apart; forced overwrites' replaced versions in audit_prior); stored
    // answers lose the records of conflicts and get an index to expire by.
    r#"
ALTER TABLE records ADD COLUMN scope TEXT NOT NULL DEFAULT '?';
ALTER TABLE records ALTER COLUMN scope DROP DEFAULT;
ALTER TABLE records DROP CONSTRAINT records_pkey;
ALTER TABLE records ADD PRIMARY KEY (collection, scope, record_id);
CREATE INDEX records_unscoped ON records (collection) WHERE scope = '?';
CREATE SEQUENCE records_staged_seq;

ALTER TABLE audit ALTER COLUMN new_version DROP NOT NULL;
ALTER TABLE audit
    ADD COLUMN event TEXT NOT NULL DEFAULT 'write',
    ADD COLUMN client_addr TEXT NOT NULL DEFAULT '',
    ADD COLUMN scope TEXT NOT NULL DEFAULT '',
    ADD COLUMN code TEXT NOT NULL DEFAULT '',
    ADD COLUMN detail TEXT NOT NULL DEFAULT '',
    ADD COLUMN prior_sha256 TEXT,
    ADD COLUMN prev_hash TEXT,
    ADD COLUMN hash TEXT;
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
);
CREATE INDEX audit_prior_record ON audit_prior (collection, scope, record_id);

CREATE INDEX ops_at ON ops (at);
UPDATE ops SET answer = json_build_object(
        'status', 'conflict', 'op_id', answer::json -> 'op_id',
        'collection', answer::json -> 'current' -> 'collection',
        'record_id', answer::json -> 'current' -> 'record_id')::text
    WHERE answer::json ->> 'status' = 'conflict'
      AND json_typeof(answer::json -> 'current') = 'object';
"#,
    // 5: the device session a JWT names (its `sid`), beside the client_id the request
    // claims; NULL for static tokens and tokens without one. Escaped like op_id, and
    // covered by the row's hash like every other column.
    r#"
ALTER TABLE audit ADD COLUMN device TEXT;
"#,
    // 6: who wrote each record last, and whether that device holds exactly what is
    // stored (logic::echo_exact), so a pull may leave out the device's own changes.
    // Constant defaults: no table rewrite.
    r#"
ALTER TABLE records ADD COLUMN writer TEXT, ADD COLUMN echo BOOLEAN NOT NULL DEFAULT false;
"#,
    // 7: attachments: uploads per user, files stored once, and the index of the
    // records that refer to each file (filled from existing records at the start).
    super::files::MIGRATION,
    // 8: the index a pull pages by also holds what decides whether its user may read
    // a row, so counting the changes left after a page (pull.rs) can be index-only.
    r#"
CREATE INDEX records_collection_seq_readable ON records (collection, seq) INCLUDE (scope, echo);
DROP INDEX records_collection_seq;
"#,
    // 9: the audit chain extended in one statement. A push holds the seq counter and
    // the chain's head from its seqs to its commit, so every round trip there is paid
    // by every process's pushes in turn; reading the head, inserting and moving it from
    // the server took three or four. Each row's hash is audit::row_hash: SHA-256 of
    // "outpost-audit-v1\n", the previous hash, "\n" and the row's content as the
    // server sends it (audit::row_content), so `audit verify` checks what SQL chained.
    r#"
CREATE FUNCTION outpost_append_audit(
    p_at TEXT[], p_event TEXT[], p_user TEXT[], p_client_id TEXT[], p_client_addr TEXT[],
    p_op_id TEXT[], p_collection TEXT[], p_scope TEXT[], p_record_id TEXT[], p_kind TEXT[],
    p_old_version BIGINT[], p_new_version BIGINT[], p_code TEXT[], p_detail TEXT[],
    p_device TEXT[], p_prior_sha256 TEXT[], p_content TEXT[], p_prior TEXT[])
RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    head TEXT;
    prevs TEXT[] := '{}';
    hashes TEXT[] := '{}';
BEGIN
    IF coalesce(cardinality(p_content), 0) = 0 THEN
        RETURN NULL;
    END IF;
    SELECT h.hash INTO STRICT head FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    FOR i IN 1 .. cardinality(p_content) LOOP
        prevs := prevs || head;
        head := encode(sha256(convert_to(
            'outpost-audit-v1' || chr(10) || head || chr(10) || p_content[i], 'UTF8')), 'hex');
        hashes := hashes || head;
    END LOOP;
    INSERT INTO audit (at, event, user_name, client_id, client_addr, op_id, collection,
                       scope, record_id, kind, old_version, new_version, code, detail,
                       device, prior_sha256, prev_hash, hash)
    SELECT u.at, u.event, u.user_name, u.client_id, u.client_addr, u.op_id, u.collection,
           u.scope, u.record_id, u.kind, u.old_version, u.new_version, u.code, u.detail,
           u.device, u.prior_sha256, u.prev_hash, u.hash
    FROM unnest(p_at, p_event, p_user, p_client_id, p_client_addr, p_op_id, p_collection,
                p_scope, p_record_id, p_kind, p_old_version, p_new_version, p_code,
                p_detail, p_device, p_prior_sha256, prevs, hashes) WITH ORDINALITY
         AS u(at, event, user_name, client_id, client_addr, op_id, collection, scope,
              record_id, kind, old_version, new_version, code, detail, device,
              prior_sha256, prev_hash, hash, ord)
    ORDER BY u.ord;
    INSERT INTO audit_prior (hash, collection, scope, record_id, data)
    SELECT k.hash, k.collection, k.scope, k.record_id, k.data
    FROM unnest(hashes, p_collection, p_scope, p_record_id, p_prior)
         AS k(hash, collection, scope, record_id, data)
    WHERE k.data IS NOT NULL;
    UPDATE audit_head SET hash = head WHERE id = 1;
    RETURN head;
END $$;
"#,
    // 10: a pull of named collections reads each one's readable scope as one range
    // (postgres::SCOPED_RANGES); in (collection, seq) order it read every team's rows
    // since the cursor to find the user's, a cost that grew with the number of teams.
    // Built in the migration's transaction, so pushes wait while it builds; on a large
    // table an operator can build it first without blocking writes (server README).
    r#"
CREATE INDEX IF NOT EXISTS records_scope_seq ON records (collection, scope, seq);
"#,
];

/// The migration that adds the attachment index, which existing records fill.
const FILES_MIGRATION: i32 = 7;

/// What a role needs to run `outpost-server` on a schema it does not own, run by the
/// schema's owner after `outpost-server migrate` (`outpost_app` names the role). It
/// may read and write records, answers and the chain's head, and erase kept versions,
/// but only read and append the audit: it cannot change or delete an audit row, nor
/// drop the triggers that guard them (only the owner can).
pub const APP_ROLE_GRANTS: &str = "\
GRANT USAGE ON SCHEMA public TO outpost_app;
GRANT SELECT ON outpost_schema_version TO outpost_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON records, ops, meta, audit_head, audit_prior TO outpost_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON attachment_uploads, attachment_blobs, attachment_refs TO outpost_app;
GRANT SELECT, INSERT ON audit TO outpost_app;
GRANT SELECT, INSERT ON secrets TO outpost_app;
GRANT USAGE ON SEQUENCE audit_id_seq, records_staged_seq TO outpost_app;
";

/// Applies the migrations the database lacks, then gives records from before scoped
/// ids their scope under `rules`; fails on a schema newer than this server or a
/// database that is not UTF8.
///
/// A schema that is already current is only read: a server may run as a role that can
/// read and write the data but not create tables (see the README's GRANTs), once the
/// schema's owner has migrated it.
pub(super) async fn migrate(
    client: &mut deadpool_postgres::Client,
    rules: &AccessRules,
) -> Result<(), StorageError> {
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    let versioned: bool = client
        .query_one(
            "SELECT to_regclass('outpost_schema_version') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg_err(&e))?
        .get(0);
    let current: i32 = if versioned {
        client
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM outpost_schema_version",
                &[],
            )
            .await
            .map_err(|e| pg_err(&e))?
            .get(0)
    } else {
        0
    };
    if current < known {
        apply_migrations(client).await?;
    } else if current > known {
        return Err(StorageError(format!(
            "database schema version {current} is newer than this server ({known})"
        )));
    }
    assign_scopes(client, rules).await?;
    if current < FILES_MIGRATION {
        super::files::backfill(&*client).await?;
    }
    Ok(())
}

/// Gives records written before scoped ids the scope of their collection's access
/// rule. Their old key was (collection, id), so no two can meet on the new one.
async fn assign_scopes(
    client: &deadpool_postgres::Client,
    rules: &AccessRules,
) -> Result<(), StorageError> {
    for (name, access) in &rules.named {
        let sql = format!(
            "UPDATE records SET scope = {} WHERE scope = '?' AND collection = $1",
            scope_sql(*access)
        );
        client
            .execute(&sql, &[name])
            .await
            .map_err(|e| pg_err(&e))?;
    }
    let sql = format!(
        "UPDATE records SET scope = {} WHERE scope = '?'",
        scope_sql(rules.default)
    );
    client.execute(&sql, &[]).await.map_err(|e| pg_err(&e))?;
    Ok(())
}

async fn apply_migrations(client: &mut deadpool_postgres::Client) -> Result<(), StorageError> {
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
