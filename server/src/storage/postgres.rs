//! The PostgreSQL backend: for deployments past one machine, with several stateless
//! server processes over one database (and its replicas for failover).
//!
//! It keeps the guarantees of [`Storage`] with no help from the process it runs in:
//! another `outpost-server` may be pushing into the same database at the same moment,
//! so everything that SQLite got from its single writer is done here with
//! PostgreSQL's own locks, which every process sees.
//!
//! - **Connections.** A `deadpool-postgres` pool of `tokio-postgres` connections;
//!   every statement is a fixed text with `$n` parameters, prepared once per
//!   connection (`prepare_cached`). Even the pull's access filter is one fixed
//!   statement: the per-collection rules travel as array parameters.
//! - **Schema.** Numbered migrations in [`MIGRATIONS`], recorded in
//!   `outpost_schema_version`. They run at start in one transaction under an advisory
//!   lock, so two servers starting together apply each migration once.
//! - **Order of locks in a push** (why no push can deadlock another): first the
//!   advisory locks of every op_id and every record the push touches, all at once in
//!   ascending key order; then, at its first applied op, the row of the seq counter,
//!   held to commit. Every push takes them in that order, so no cycle can form. The
//!   purge takes only rows no push holds (`SKIP LOCKED`) and never waits for a push.
//! - **Text columns** cannot hold a NUL character in PostgreSQL, but a client may send
//!   one in an `op_id` or `client_id`; those two are stored escaped ([`pg_text`]) so the
//!   request gets the same answer as on SQLite instead of a 500.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction,
};
use outpost_core::protocol::{JsonObject, OpResult};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls, Row, Statement};

use super::{
    BoxFuture, PullPage, PullQuery, PurgeReport, PushContext, Storage, StorageError, db_err,
};
use crate::config::PostgresUrl;
use crate::logic::{self, Access, PushItem, StoredRecord};
use crate::pull::{self, Marks, PullSteps};
use crate::push::{self, AnswerRow, AuditRow, PushSteps, RecordRow};

/// Connections per server process. Each push holds one for its transaction; pulls are
/// short. Several processes share the database's `max_connections` (default 100).
const POOL_SIZE: usize = 16;

/// How long a request waits for a free connection before it fails with 500 (the
/// client retries 5xx), rather than queueing without bound under overload.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How many times a push is run again after PostgreSQL aborted it for a deadlock or a
/// serialization failure. The lock order makes both impossible between pushes; this
/// is a guard against what the server does not control (an operator's own locks).
const PUSH_ATTEMPTS: usize = 5;

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
];

/// Records, answers and audit in a PostgreSQL database shared by any number of server
/// processes.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: Pool,
    /// Set once the migrations have run in this process.
    migrated: Arc<OnceCell<()>>,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// A tokio-postgres error with the server's own message, which its `Display` hides.
fn pg_err(e: &tokio_postgres::Error) -> StorageError {
    match e.as_db_error() {
        Some(d) => StorageError(format!("postgres {}: {}", d.code().code(), d.message())),
        None => StorageError(format!("postgres: {e}")),
    }
}

/// `?` on a tokio-postgres result, keeping the server's message.
trait Pg<T> {
    fn pg(self) -> Result<T, StorageError>;
}

impl<T> Pg<T> for Result<T, tokio_postgres::Error> {
    fn pg(self) -> Result<T, StorageError> {
        self.map_err(|e| pg_err(&e))
    }
}

/// Why one attempt of a push did not commit.
enum Abort {
    /// PostgreSQL aborted it for a reason that a new attempt clears.
    Retry(String),
    Fail(StorageError),
}

impl From<tokio_postgres::Error> for Abort {
    fn from(e: tokio_postgres::Error) -> Abort {
        match e.code() {
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => Abort::Retry(e.to_string()),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => Abort::Retry(e.to_string()),
            _ => Abort::Fail(pg_err(&e)),
        }
    }
}

impl From<StorageError> for Abort {
    fn from(e: StorageError) -> Abort {
        Abort::Fail(e)
    }
}

impl From<deadpool_postgres::PoolError> for Abort {
    fn from(e: deadpool_postgres::PoolError) -> Abort {
        Abort::Fail(db_err(e))
    }
}

/// A text PostgreSQL can store: `\` becomes `\\` and NUL becomes `\0`. Injective, so
/// two different op_ids never share a stored key; borrowed in the usual case.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '\0']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The advisory lock key of a name: 64 bits of SHA-256, with a tag per kind of name
/// and length prefixes so that no two different names can be spelled the same.
fn lock_key(kind: &str, a: &str, b: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(b"outpost-lock-v1\0");
    for part in [kind, a, b] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    i64::from_be_bytes(k)
}

impl PostgresStorage {
    /// Connects and runs the migrations: a wrong URL, an unreachable database or a
    /// schema newer than this server fails here, at start.
    pub async fn connect(url: &PostgresUrl) -> Result<PostgresStorage, StorageError> {
        let s = PostgresStorage::lazy(url)?;
        s.ready().await?;
        Ok(s)
    }

    /// Builds the pool without connecting; the first operation connects and runs the
    /// migrations. For callers that cannot wait at construction (a synchronous
    /// [`crate::open_storage`]).
    pub fn lazy(url: &PostgresUrl) -> Result<PostgresStorage, StorageError> {
        let mut config = tokio_postgres::Config::from_str(url.expose()).map_err(db_err)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("outpost-server");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection that died shows up as an error on its next query; the
                // client retries 5xx. Checking each one on checkout costs a round trip.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(db_err)?;
        Ok(PostgresStorage {
            pool,
            migrated: Arc::new(OnceCell::new()),
        })
    }

    async fn ready(&self) -> Result<(), StorageError> {
        self.migrated
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await.map_err(db_err)?;
                migrate(&mut client).await
            })
            .await
            .map(|_| ())
    }

    async fn push_impl(
        &self,
        ctx: &PushContext,
        items: Vec<PushItem>,
        now_ms: i64,
    ) -> Result<Vec<OpResult>, StorageError> {
        self.ready().await?;
        let mut last = String::new();
        for attempt in 0..PUSH_ATTEMPTS {
            let mut client = self.pool.get().await.map_err(db_err)?;
            match push_once(&mut client, ctx, &items, now_ms).await {
                Ok(results) => return Ok(results),
                Err(Abort::Fail(e)) => return Err(e),
                Err(Abort::Retry(why)) => {
                    tracing::warn!(attempt, reason = %why, "push aborted by the database; retrying");
                    last = why;
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
            }
        }
        Err(StorageError(format!(
            "push aborted {PUSH_ATTEMPTS} times: {last}"
        )))
    }

    async fn pull_impl(&self, q: &PullQuery) -> Result<PullPage, StorageError> {
        self.ready().await?;
        let mut client = self.pool.get().await.map_err(db_err)?;
        pull(&mut client, q).await
    }

    async fn purge_impl(&self, older_than_ms: i64) -> Result<PurgeReport, StorageError> {
        self.ready().await?;
        let mut client = self.pool.get().await.map_err(db_err)?;
        purge(&mut client, older_than_ms)
            .await
            .map_err(|e| pg_err(&e))
    }
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StorageError> {
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

const SELECT_RECORD_FOR_UPDATE: &str = "SELECT collection, record_id, data, deleted, version, seq, hlc, owner, team, \
     created_at, updated_at FROM records WHERE collection = $1 AND record_id = $2 FOR UPDATE";

fn read_record(r: &Row) -> Result<StoredRecord, StorageError> {
    let data: Option<String> = r.try_get(2).map_err(|e| pg_err(&e))?;
    let data = match data {
        Some(text) => Some(serde_json::from_str::<JsonObject>(&text).map_err(db_err)?),
        None => None,
    };
    let get_s = |i: usize| r.try_get::<_, String>(i).map_err(|e| pg_err(&e));
    let get_i = |i: usize| r.try_get::<_, i64>(i).map_err(|e| pg_err(&e));
    Ok(StoredRecord {
        collection: get_s(0)?,
        record_id: get_s(1)?,
        data,
        deleted: r.try_get(3).map_err(|e| pg_err(&e))?,
        version: get_i(4)?,
        seq: get_i(5)?,
        hlc: get_s(6)?,
        owner: get_s(7)?,
        team: get_s(8)?,
        created_at_ms: get_i(9)?,
        updated_at_ms: get_i(10)?,
    })
}

/// One attempt at a push, in one READ COMMITTED transaction.
async fn push_once(
    client: &mut deadpool_postgres::Client,
    ctx: &PushContext,
    items: &[PushItem],
    now_ms: i64,
) -> Result<Vec<OpResult>, Abort> {
    // Statements first, outside the transaction: cached per connection, so after the
    // first push on a connection these cost nothing.
    let st_lock = client
        .prepare_cached("SELECT outpost_lock_keys($1)")
        .await?;
    let st_answer = client
        .prepare_cached("SELECT answer FROM ops WHERE user_name = $1 AND op_id = $2")
        .await?;
    let st_record = client.prepare_cached(SELECT_RECORD_FOR_UPDATE).await?;
    let st_seq = client
        .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'last_seq' RETURNING value")
        .await?;
    let st_upsert = client
        .prepare_cached(
            "INSERT INTO records (collection, record_id, data, deleted, version, seq, hlc, owner, \
             team, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (collection, record_id) DO UPDATE SET data = excluded.data, \
             deleted = excluded.deleted, version = excluded.version, seq = excluded.seq, \
             hlc = excluded.hlc, updated_at = excluded.updated_at",
        )
        .await?;
    let st_audit = client
        .prepare_cached(
            "INSERT INTO audit (at, user_name, client_id, op_id, collection, record_id, kind, \
             old_version, new_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let st_store = client
        .prepare_cached(
            "INSERT INTO ops (user_name, op_id, answer, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_name, op_id) DO NOTHING",
        )
        .await?;

    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?;

    // Idempotency across processes, and one writer per record: before reading
    // anything, take an advisory lock per op_id and per record this push touches. A
    // second process pushing the same op_id waits here until the first commits, and
    // then (READ COMMITTED: each statement reads the latest commits) finds the stored
    // answer and returns it, with no second effect. Two pushes that write the same
    // record run one after the other, so the version check and the write see the
    // same state. Keys are sorted so that two pushes always lock in the same order.
    let user = ctx.user.name.as_str();
    let mut keys: Vec<i64> = Vec::with_capacity(items.len() * 2);
    for item in items {
        if logic::op_id_ok(item.op_id()) {
            keys.push(lock_key("op", user, item.op_id()));
        }
        if let PushItem::Valid(op) = item {
            keys.push(lock_key("record", &op.collection, &op.record_id));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    if !keys.is_empty() {
        tx.execute(&st_lock, &[&keys]).await?;
    }

    let mut steps = PgPush {
        tx: &tx,
        st_answer,
        st_record,
        st_seq,
        st_upsert,
        st_audit,
        st_store,
    };
    let results = push::apply(&mut steps, ctx, items, now_ms).await?;
    tx.commit().await?;
    Ok(results)
}

/// The storage steps of a push, inside its transaction, with its statements prepared.
/// op_id and client_id are stored escaped ([`pg_text`]).
struct PgPush<'a> {
    tx: &'a Transaction<'a>,
    st_answer: Statement,
    st_record: Statement,
    st_seq: Statement,
    st_upsert: Statement,
    st_audit: Statement,
    st_store: Statement,
}

impl PushSteps for PgPush<'_> {
    type Error = Abort;

    async fn stored_answer(&mut self, user: &str, op_id: &str) -> Result<Option<String>, Abort> {
        let key = pg_text(op_id);
        match self
            .tx
            .query_opt(&self.st_answer, &[&user, &key.as_ref()])
            .await?
        {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn load_record(
        &mut self,
        collection: &str,
        record_id: &str,
    ) -> Result<Option<StoredRecord>, Abort> {
        // FOR UPDATE: other pushes are already kept out by the advisory lock; this keeps
        // the purge (which skips locked rows) off a tombstone that this push is about to
        // decide on.
        match self
            .tx
            .query_opt(&self.st_record, &[&collection, &record_id])
            .await?
        {
            Some(row) => Ok(Some(read_record(&row)?)),
            None => Ok(None),
        }
    }

    async fn next_seq(&mut self) -> Result<i64, Abort> {
        // Why no puller can miss a change: seq comes from one counter row, and taking
        // it row-locks that row until this transaction commits. So between allocating a
        // seq and committing, a transaction is the only one in the database (whatever
        // process runs it) that can allocate: the next one waits in this UPDATE, and
        // reads the counter only after this one has committed. PostgreSQL makes a
        // commit visible before it releases the commit's locks, so commits become
        // visible in seq order: a snapshot that holds seq S holds every seq < S. A pull
        // reads its page and the counter in one snapshot, so a cursor at S never has a
        // change below S still to come. A standby replays commits in the same order, so
        // the same holds for pulls served by a replica.
        //
        // The cost is that allocating-to-commit is serialized across all servers.
        // Everything before (auth, parsing, op_id look-ups, the version check) runs in
        // parallel, and the held span is a few statements long. The alternative, a
        // sequence plus holding cursors back below the oldest open transaction
        // (pg_snapshot_xmin), avoids that but makes pulls lag behind any long
        // transaction and exposes xid plumbing to every pull; this deployment's writes
        // are small, so ordered commits are the simpler guarantee.
        Ok(self.tx.query_one(&self.st_seq, &[]).await?.try_get(0)?)
    }

    async fn write_record(&mut self, row: RecordRow<'_>) -> Result<(), Abort> {
        self.tx
            .execute(
                &self.st_upsert,
                &[
                    &row.collection,
                    &row.record_id,
                    &row.data,
                    &row.deleted,
                    &row.version,
                    &row.seq,
                    &row.hlc,
                    &row.owner,
                    &row.team,
                    &row.created_at_ms,
                    &row.updated_at_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), Abort> {
        self.tx
            .execute(
                &self.st_audit,
                &[
                    &row.at,
                    &row.user,
                    &pg_text(row.client_id).as_ref(),
                    &pg_text(row.op_id).as_ref(),
                    &row.collection,
                    &row.record_id,
                    &row.kind,
                    &row.old_version,
                    &row.new_version,
                ],
            )
            .await?;
        Ok(())
    }

    async fn store_answer(&mut self, row: AnswerRow<'_>) -> Result<(), Abort> {
        let stored = self
            .tx
            .execute(
                &self.st_store,
                &[
                    &row.user,
                    &pg_text(row.op_id).as_ref(),
                    &row.answer,
                    &row.at_ms,
                ],
            )
            .await?;
        if stored == 0 {
            // Cannot happen while the advisory lock of push_once is held; should it
            // anyway (someone wrote to the table by hand), the stored answer wins: roll
            // back and run again, and the new attempt returns it.
            return Err(Abort::Retry("op_id answered concurrently".into()));
        }
        Ok(())
    }
}

/// One page of changes, from one REPEATABLE READ snapshot: the purge mark, the head of
/// the sequence and the page agree with each other.
async fn pull(
    client: &mut deadpool_postgres::Client,
    q: &PullQuery,
) -> Result<PullPage, StorageError> {
    // Fixed text, whatever the config: the access rule of each row is looked up in
    // the (named, rule) arrays, falling back to the default rule.
    let st_page = client
        .prepare_cached(
            "SELECT collection, record_id, data, deleted, version, seq, hlc, owner, team, \
             created_at, updated_at FROM records r \
             WHERE seq > $1 \
               AND ($2::text[] IS NULL OR collection = ANY($2::text[])) \
               AND CASE COALESCE((SELECT n.rule FROM unnest($3::text[], $4::text[]) AS n(name, rule) \
                                  WHERE n.name = r.collection LIMIT 1), $5::text) \
                     WHEN 'private' THEN owner = $6 \
                     WHEN 'team' THEN team = $7 \
                     WHEN 'shared' THEN true \
                     ELSE false END \
             ORDER BY seq LIMIT $8",
        )
        .await.pg()?;
    let st_meta = client
        .prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'purged_through_seq'), \
                    (SELECT value FROM meta WHERE key = 'last_seq')",
        )
        .await
        .pg()?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg()?;
    let mut steps = PgPull {
        tx: &tx,
        st_page,
        st_meta,
    };
    let page = pull::read_page(&mut steps, q).await?;
    tx.commit().await.pg()?;
    Ok(page)
}

/// The reads of a pull page, inside its REPEATABLE READ transaction.
struct PgPull<'a> {
    tx: &'a Transaction<'a>,
    st_page: Statement,
    st_meta: Statement,
}

impl PullSteps for PgPull<'_> {
    async fn marks(&mut self) -> Result<Marks, StorageError> {
        let row = self.tx.query_one(&self.st_meta, &[]).await.pg()?;
        Ok(Marks {
            purged_through_seq: row.try_get(0).pg()?,
            last_seq: row.try_get(1).pg()?,
        })
    }

    async fn records_after(
        &mut self,
        q: &PullQuery,
        since: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let names: Vec<&str> = q.access.named.iter().map(|(n, _)| n.as_str()).collect();
        let rules: Vec<&str> = q.access.named.iter().map(|(_, a)| rule(*a)).collect();
        let rows = self
            .tx
            .query(
                &self.st_page,
                &[
                    &since,
                    &q.collections,
                    &names,
                    &rules,
                    &rule(q.access.default),
                    &q.user.name,
                    &q.user.team,
                    &limit,
                ],
            )
            .await
            .pg()?;
        rows.iter().map(read_record).collect()
    }
}

fn rule(a: Access) -> &'static str {
    match a {
        Access::Private => "private",
        Access::Team => "team",
        Access::Shared => "shared",
    }
}

async fn purge(
    client: &mut deadpool_postgres::Client,
    older_than_ms: i64,
) -> Result<PurgeReport, tokio_postgres::Error> {
    let st_delete = client
        .prepare_cached(
            "DELETE FROM records WHERE (collection, record_id) IN ( \
                 SELECT collection, record_id FROM records \
                 WHERE deleted AND updated_at < $1 FOR UPDATE SKIP LOCKED) \
             RETURNING seq",
        )
        .await?;
    let st_mark = client
        .prepare_cached(
            "UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'purged_through_seq' \
             RETURNING value",
        )
        .await?;
    let tx = client.transaction().await?;
    // SKIP LOCKED: a tombstone that a push is deciding on right now is left for the
    // next purge, so the purge never waits on a push (and cannot deadlock with one).
    let rows = tx.query(&st_delete, &[&older_than_ms]).await?;
    let mut top = 0i64;
    for r in &rows {
        top = top.max(r.try_get::<_, i64>(0)?);
    }
    let mark: i64 = tx.query_one(&st_mark, &[&top]).await?.try_get(0)?;
    tx.commit().await?;
    Ok(PurgeReport {
        purged: rows.len() as u64,
        purged_through_seq: mark,
    })
}

impl Storage for PostgresStorage {
    fn push<'a>(
        &'a self,
        ctx: &'a PushContext,
        items: Vec<PushItem>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<OpResult>, StorageError>> {
        Box::pin(self.push_impl(ctx, items, now_ms))
    }

    fn pull<'a>(&'a self, query: &'a PullQuery) -> BoxFuture<'a, Result<PullPage, StorageError>> {
        Box::pin(self.pull_impl(query))
    }

    fn purge_tombstones(
        &self,
        older_than_ms: i64,
    ) -> BoxFuture<'_, Result<PurgeReport, StorageError>> {
        Box::pin(self.purge_impl(older_than_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_text_is_injective_and_nul_free() {
        let inputs = ["plain", "a\0b", "a\\0b", "a\\\\0b", "\\", "\0", "", "\\\0"];
        let out: Vec<String> = inputs.iter().map(|s| pg_text(s).into_owned()).collect();
        for (i, a) in out.iter().enumerate() {
            assert!(!a.contains('\0'));
            for b in &out[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(matches!(pg_text("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn lock_keys_separate_kinds_and_boundaries() {
        assert_ne!(lock_key("op", "ab", "c"), lock_key("op", "a", "bc"));
        assert_ne!(lock_key("op", "a", "b"), lock_key("record", "a", "b"));
        assert_eq!(lock_key("op", "a", "b"), lock_key("op", "a", "b"));
    }
}
