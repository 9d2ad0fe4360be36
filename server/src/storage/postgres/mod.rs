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
//!   ascending key order, and the rows of its records as it reads them; then, once
//!   every op is decided and its records written, the row of the seq counter; then the
//!   audit chain's head; both held to commit. Every push takes them in that order, so
//!   no cycle can form. The purge takes only record rows no push holds (`SKIP
//!   LOCKED`), then the purge mark and the audit head, and never waits for a record.
//! - **Text columns** cannot hold a NUL character in PostgreSQL, but a client may send
//!   one in an `op_id` or `client_id`; those two (the latter also as a record's
//!   `writer`) are stored escaped ([`pg_text`], read back by [`pg_untext`]) so the
//!   request gets the same answer as on SQLite instead of a 500.
//!
//! The migrations are in `schema.rs`, the locks, storage steps and retries of a push in
//! `push.rs` (with the reasoning for ordered commits); reads and the purge are here.

mod audit;
mod files;
mod push;
mod schema;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction,
};
use outpost_core::protocol::{JsonObject, OpResult};
use tokio::sync::OnceCell;
use tokio_postgres::{IsolationLevel, Row, Statement};

pub use push::{pg_text, pg_untext};
pub use schema::{APP_ROLE_GRANTS, MIGRATIONS};

use super::{
    BoxFuture, PageChange, PullPage, PullQuery, PurgeReport, PurgeRequest, PushContext, Remaining,
    Storage, StorageError, db_err,
};
use crate::audit::{AuditEntry, Verdict};
use crate::config::PostgresUrl;
use crate::logic::{self, Access, AccessRules, PushItem, StoredRecord, User};
use crate::pull::{self, Marks, PageCut, PullSteps, change_bytes, page_change, routing_bytes};
use crate::storage::files::{Begin, FileAccess, StaleUpload, Upload};
use push::lock_key;

/// Connections per server process. Each push holds one for its transaction; pulls are
/// short. Several processes share the database's `max_connections` (default 100).
const POOL_SIZE: usize = 16;

/// How long a request waits for a free connection before it fails with 500 (the
/// client retries 5xx), rather than queueing without bound under overload.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Records, answers and audit in a PostgreSQL database shared by any number of server
/// processes.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: Pool,
    /// Set once the migrations have run in this process.
    migrated: Arc<OnceCell<()>>,
    /// For the scopes of records from before scoped ids.
    rules: AccessRules,
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

/// A failure to get a connection, with its causes: the pool's and tokio-postgres's
/// messages hide the reason (`error performing TLS handshake` without what failed).
pub(crate) fn pool_err(e: &deadpool_postgres::PoolError) -> StorageError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.ends_with(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    StorageError(msg)
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

impl PostgresStorage {
    /// Connects and runs the migrations: a wrong URL, an unreachable database or a
    /// schema newer than this server fails here, at start.
    pub async fn connect(
        url: &PostgresUrl,
        rules: &AccessRules,
    ) -> Result<PostgresStorage, StorageError> {
        let s = PostgresStorage::lazy(url, rules)?;
        s.ready().await?;
        Ok(s)
    }

    /// Builds the pool without connecting; the first operation connects and runs the
    /// migrations. For callers that cannot wait at construction (a synchronous
    /// [`crate::open_storage`]).
    pub fn lazy(url: &PostgresUrl, rules: &AccessRules) -> Result<PostgresStorage, StorageError> {
        let (mut config, link) = tls::parse_url(url.expose()).map_err(StorageError)?;
        let tls = tls::RustlsConnect(tls::client_config(&link).map_err(StorageError)?);
        // A password over a link that may be unencrypted is watched, so a server that
        // asks for it in clear text does not get it.
        let guarded = !link.mode.always_tls() && config.get_password().is_some();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("outpost-server");
        }
        let manager_config = ManagerConfig {
            // A connection that died shows up as an error on its next query; the
            // client retries 5xx. Checking each one on checkout costs a round trip.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if guarded {
            Manager::from_connect(config, tls::GuardedConnect(tls), manager_config)
        } else {
            Manager::from_config(config, tls, manager_config)
        };
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
            rules: rules.clone(),
        })
    }

    async fn ready(&self) -> Result<(), StorageError> {
        self.migrated
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await.map_err(|e| pool_err(&e))?;
                schema::migrate(&mut client, &self.rules).await
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
        push::push(&self.pool, ctx, &items, now_ms).await
    }

    async fn pull_impl(&self, q: &PullQuery) -> Result<PullPage, StorageError> {
        self.ready().await?;
        let mut client = self.pool.get().await.map_err(|e| pool_err(&e))?;
        pull(&mut client, q).await
    }

    async fn shared_secret_impl(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        let client = self.client().await?;
        // Two statements, not one: a statement that finds the name taken by a
        // transaction still running waits for it, but reads from a snapshot taken
        // before it committed; the second statement sees the row.
        client
            .execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate],
            )
            .await
            .pg()?;
        client
            .query_one("SELECT value FROM secrets WHERE name = $1", &[&name])
            .await
            .pg()?
            .try_get(0)
            .pg()
    }

    async fn purge_impl(&self, req: PurgeRequest) -> Result<PurgeReport, StorageError> {
        self.ready().await?;
        let mut client = self.pool.get().await.map_err(|e| pool_err(&e))?;
        purge(&mut client, req).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StorageError> {
        self.ready().await?;
        self.pool.get().await.map_err(|e| pool_err(&e))
    }
}

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
        // Stored escaped, like the client_id it is.
        writer: r
            .try_get::<_, Option<String>>(11)
            .map_err(|e| pg_err(&e))?
            .map(|w| pg_untext(&w).into_owned()),
        echo: r.try_get(12).map_err(|e| pg_err(&e))?,
    })
}

/// The rows of a pull's collections past a seq, in the reads of a pull page. Fixed
/// text, whatever the config and the request: `$1` the seq, `$2` the collections (NULL:
/// all).
const IN_RANGE: &str = "seq > $1 AND ($2::text[] IS NULL OR collection = ANY($2::text[]))";

/// Of those, the rows that go in the pages: those the user may read (the access rule of
/// each row looked up in the (named, rule) arrays `$3`, `$4`, falling back to the default
/// `$5`; `$6` and `$7` the user's own and team scopes), less the puller's own changes
/// its device holds exactly (the inclusive seq ranges `$9`, `$10`).
const READABLE: &str = "CASE COALESCE((SELECT n.rule FROM unnest($3::text[], $4::text[]) AS n(name, rule) \
                          WHERE n.name = r.collection LIMIT 1), $5::text) \
             WHEN 'private' THEN r.scope = $6 \
             WHEN 'team' THEN r.scope = $7 \
             WHEN 'shared' THEN r.scope = '*' \
             ELSE false END \
     AND NOT (r.echo AND EXISTS (SELECT 1 FROM unnest($9::bigint[], $10::bigint[]) AS o(lo, hi) \
                                  WHERE r.seq BETWEEN o.lo AND o.hi))";

/// [`READABLE`] for the feed of every team: every row. The rule's parameters are still
/// named (always true), so that both texts take the same parameters.
const READABLE_ALL: &str = "num_nulls($3::text[], $4::text[], $5::text, $6::text, $7::text) >= 0 \
     AND NOT (r.echo AND EXISTS (SELECT 1 FROM unnest($9::bigint[], $10::bigint[]) AS o(lo, hi) \
                                  WHERE r.seq BETWEEN o.lo AND o.hi))";

/// Whether the row `r` (its `collection` and `scope`) is readable by a user, with the
/// rules as in [`READABLE_AFTER`] at `$2` to `$6` (names, rules, default, own scope,
/// team scope).
const READABLE_RULE: &str = "CASE COALESCE((SELECT n.rule FROM unnest($2::text[], $3::text[])                                    AS n(name, rule) WHERE n.name = r.collection LIMIT 1), $4::text)      WHEN 'private' THEN r.scope = $5      WHEN 'team' THEN r.scope = $6      WHEN 'shared' THEN r.scope = '*'      ELSE false END";

/// The rows after `$1` of each of the pull's collections (`$2`, named) that its user
/// may read, less its own changes as in [`READABLE`]; `{cols}` and `{bound}` filled in.
/// Each collection has one readable scope (by its rule), so each is one range of the
/// `(collection, scope, seq)` index: a page reads the user's rows, not every team's
/// rows since the cursor, as the `(collection, seq)` order does where many teams write.
const SCOPED_RANGES: &str = "FROM (SELECT k.c, CASE COALESCE((SELECT n.rule \
                 FROM unnest($3::text[], $4::text[]) AS n(name, rule) WHERE n.name = k.c LIMIT 1), \
                 $5::text) \
             WHEN 'private' THEN $6::text WHEN 'team' THEN $7::text WHEN 'shared' THEN '*' END AS s \
           FROM unnest($2::text[]) AS k(c)) AS k \
     CROSS JOIN LATERAL (SELECT {cols} FROM records r \
           WHERE r.collection = k.c AND r.scope = k.s AND r.seq > $1 {bound} \
             AND NOT (r.echo AND EXISTS (SELECT 1 FROM unnest($9::bigint[], $10::bigint[]) \
                                         AS o(lo, hi) WHERE r.seq BETWEEN o.lo AND o.hi)) \
           ORDER BY r.seq {limit}) AS x";

/// One page of changes, from one REPEATABLE READ snapshot: the purge mark, the head of
/// the sequence and the page agree with each other.
async fn pull(
    client: &mut deadpool_postgres::Client,
    q: &PullQuery,
) -> Result<PullPage, StorageError> {
    // First the sizes alone (the length of a stored text is read from its header, not
    // by loading it), to find where the page ends; then the rows up to there. Reading
    // rows and stopping at the budget would instead load every row a driver batch holds.
    let readable = if q.all_teams { READABLE_ALL } else { READABLE };
    const SIZES: &str = "seq, octet_length(collection), octet_length(record_id), \
         octet_length(hlc), octet_length(data), octet_length(team), octet_length(owner)";
    const PAGE: &str = "collection, record_id, data, deleted, version, seq, hlc, updated_at, \
         team, owner";
    let (sizes, page) = if q.all_teams || q.collections.is_none() {
        (
            format!(
                "SELECT {SIZES} FROM records r WHERE {IN_RANGE} AND {readable} \
                 ORDER BY seq LIMIT $8"
            ),
            format!(
                "SELECT {PAGE} FROM records r WHERE {IN_RANGE} AND {readable} AND seq <= $8 \
                 ORDER BY seq"
            ),
        )
    } else {
        let sizes = SCOPED_RANGES
            .replace("{cols}", SIZES)
            .replace("{bound}", "")
            .replace("{limit}", "LIMIT $8");
        let page = SCOPED_RANGES
            .replace("{cols}", PAGE)
            .replace("{bound}", "AND r.seq <= $8")
            .replace("{limit}", "");
        (
            format!("SELECT x.* {sizes} ORDER BY x.seq LIMIT $8"),
            format!("SELECT x.* {page} ORDER BY x.seq"),
        )
    };
    let st_sizes = client.prepare_cached(&sizes).await.pg()?;
    let st_page = client.prepare_cached(&page).await.pg()?;
    // At most $8 rows past the page are looked at (see pull.rs).
    let st_count = client
        .prepare_cached(&format!(
            "SELECT count(*), count(*) FILTER (WHERE {readable}) FROM \
             (SELECT collection, scope, seq, echo FROM records WHERE {IN_RANGE} \
              ORDER BY seq LIMIT $8) r"
        ))
        .await
        .pg()?;
    let st_meta = client
        .prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'purged_through_seq'), \
                    (SELECT value FROM meta WHERE key = 'last_seq')",
        )
        .await
        .pg()?;
    let tx = snapshot(client).await?;
    let mut steps = PgPull {
        tx: &tx,
        st_sizes,
        st_page,
        st_count,
        st_meta,
    };
    let page = pull::read_page(&mut steps, q).await?;
    tx.commit().await.pg()?;
    Ok(page)
}

/// A read-only REPEATABLE READ transaction: every statement in it reads the same
/// snapshot.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<Transaction<'_>, StorageError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg()
}

/// The reads of a pull page, inside its REPEATABLE READ transaction.
struct PgPull<'a> {
    tx: &'a Transaction<'a>,
    st_sizes: Statement,
    st_page: Statement,
    st_count: Statement,
    st_meta: Statement,
}

/// The parameters of a page's reads but `$8`, which each read gives its own meaning.
struct PullArgs<'q> {
    collections: &'q Option<Vec<String>>,
    names: Vec<&'q str>,
    rules: Vec<&'static str>,
    default: &'static str,
    own: String,
    team: String,
    lows: Vec<i64>,
    highs: Vec<i64>,
}

impl<'q> PullArgs<'q> {
    fn of(q: &'q PullQuery) -> PullArgs<'q> {
        PullArgs {
            collections: &q.collections,
            names: q.access.named.iter().map(|(n, _)| n.as_str()).collect(),
            rules: q.access.named.iter().map(|(_, a)| rule(*a)).collect(),
            default: rule(q.access.default),
            // A user reads the records of their own scope under each collection's rule.
            own: logic::scope_of(Access::Private, &q.user),
            team: logic::scope_of(Access::Team, &q.user),
            lows: q.own.iter().map(|r| r.0).collect(),
            highs: q.own.iter().map(|r| r.1).collect(),
        }
    }

    /// `$1` to `$10`, with `seq` as `$1` and `eighth` as `$8`.
    fn params<'a>(
        &'a self,
        seq: &'a i64,
        eighth: &'a i64,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            seq,
            self.collections,
            &self.names,
            &self.rules,
            &self.default,
            &self.own,
            &self.team,
            eighth,
            &self.lows,
            &self.highs,
        ]
    }
}

impl PullSteps for PgPull<'_> {
    async fn marks(&mut self) -> Result<Marks, StorageError> {
        let row = self.tx.query_one(&self.st_meta, &[]).await.pg()?;
        Ok(Marks {
            purged_through_seq: row.try_get(0).pg()?,
            last_seq: row.try_get(1).pg()?,
        })
    }

    async fn count_after(
        &mut self,
        q: &PullQuery,
        after: i64,
        cap: i64,
    ) -> Result<Remaining, StorageError> {
        let args = PullArgs::of(q);
        let row = self
            .tx
            .query_one(&self.st_count, &args.params(&after, &cap))
            .await
            .pg()?;
        let looked: i64 = row.try_get(0).pg()?;
        let readable: i64 = row.try_get(1).pg()?;
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
        let args = PullArgs::of(q);
        let rows_to_read = cut.rows_to_read();
        let sizes = self
            .tx
            .query(&self.st_sizes, &args.params(&since, &rows_to_read))
            .await
            .pg()?;
        let mut through = None;
        for r in &sizes {
            let len = |i: usize| -> Result<Option<usize>, StorageError> {
                let n: Option<i32> = r.try_get(i).pg()?;
                Ok(n.map(|n| usize::try_from(n).unwrap_or(0)))
            };
            let bytes = change_bytes(
                len(1)?.unwrap_or(0),
                len(2)?.unwrap_or(0),
                len(3)?.unwrap_or(0),
                len(4)?,
            ) + routing_bytes(q, len(5)?.unwrap_or(0), len(6)?.unwrap_or(0));
            if !cut.admit(bytes) {
                break;
            }
            through = Some(r.try_get::<_, i64>(0).pg()?);
        }
        let Some(through) = through else {
            return Ok(Vec::new());
        };
        let rows = self
            .tx
            .query(&self.st_page, &args.params(&since, &through))
            .await
            .pg()?;
        // Each row's buffer goes as soon as it is copied out, so the page is held once.
        rows.into_iter()
            .map(|r| {
                let get_s = |i: usize| r.try_get::<_, String>(i).pg();
                let get_i = |i: usize| r.try_get::<_, i64>(i).pg();
                let mut change = page_change(
                    get_s(0)?,
                    get_s(1)?,
                    get_i(4)?,
                    get_i(5)?,
                    r.try_get(3).pg()?,
                    r.try_get(2).pg()?,
                    get_s(6)?,
                    get_i(7)?,
                )?;
                if q.all_teams {
                    change.team = Some(get_s(8)?);
                    change.owner = Some(get_s(9)?);
                }
                Ok(change)
            })
            .collect()
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
    req: PurgeRequest,
) -> Result<PurgeReport, StorageError> {
    let st_delete = client
        .prepare_cached(
            "DELETE FROM records WHERE (collection, scope, record_id) IN ( \
                 SELECT collection, scope, record_id FROM records \
                 WHERE deleted AND updated_at < $1 FOR UPDATE SKIP LOCKED) \
             RETURNING collection, scope, record_id, seq",
        )
        .await
        .pg()?;
    let st_priors = client
        .prepare_cached(
            "DELETE FROM audit_prior p USING unnest($1::text[], $2::text[], $3::text[]) \
                 AS g(collection, scope, record_id) \
             WHERE p.collection = g.collection AND p.scope = g.scope \
               AND p.record_id = g.record_id",
        )
        .await
        .pg()?;
    let st_mark = client
        .prepare_cached(
            "UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'purged_through_seq' \
             RETURNING value",
        )
        .await
        .pg()?;
    let st_answers = client
        .prepare_cached("DELETE FROM ops WHERE at < $1")
        .await
        .pg()?;
    let tx = client.transaction().await.pg()?;
    // SKIP LOCKED: a tombstone that a push is deciding on right now is left for the
    // next purge, so the purge never waits on a push (and cannot deadlock with one).
    let rows = tx
        .query(&st_delete, &[&req.tombstones_before_ms])
        .await
        .pg()?;
    let mut top = 0i64;
    let (mut cols, mut scopes, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        cols.push(r.try_get::<_, String>(0).pg()?);
        scopes.push(r.try_get::<_, String>(1).pg()?);
        ids.push(r.try_get::<_, String>(2).pg()?);
        top = top.max(r.try_get::<_, i64>(3).pg()?);
    }
    if !rows.is_empty() {
        tx.execute(&st_priors, &[&cols, &scopes, &ids]).await.pg()?;
        let erasures = cols
            .into_iter()
            .zip(scopes)
            .zip(ids)
            .map(|((c, s), i)| crate::audit::erasure(req.now_ms, c, s, i))
            .collect();
        audit::append(&tx, erasures).await.pg()?;
    }
    let mark: i64 = tx
        .query_one(&st_mark, &[&top])
        .await
        .pg()?
        .try_get(0)
        .pg()?;
    let answers_purged = tx
        .execute(&st_answers, &[&req.answers_before_ms])
        .await
        .pg()?;
    tx.commit().await.pg()?;
    Ok(PurgeReport {
        purged: rows.len() as u64,
        purged_through_seq: mark,
        answers_purged,
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

    fn purge(&self, req: PurgeRequest) -> BoxFuture<'_, Result<PurgeReport, StorageError>> {
        Box::pin(self.purge_impl(req))
    }

    fn append_audit(&self, entries: Vec<AuditEntry>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.pg()?;
            audit::append(&tx, entries).await.pg()?;
            tx.commit().await.pg()
        })
    }

    fn verify_audit(&self) -> BoxFuture<'_, Result<Verdict, StorageError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let verdict = crate::audit::verify(&mut audit::Snapshot(&tx)).await?;
            tx.commit().await.pg()?;
            Ok(verdict)
        })
    }

    fn shared_secret<'a>(
        &'a self,
        name: &'a str,
        candidate: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, StorageError>> {
        Box::pin(self.shared_secret_impl(name, candidate))
    }

    fn file_access(
        &self,
        user: User,
        access: AccessRules,
        sha256: String,
    ) -> BoxFuture<'_, Result<FileAccess, StorageError>> {
        Box::pin(async move { files::access(&self.client().await?, &user, &access, &sha256).await })
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
        Box::pin(async move {
            let mut c = self.client().await?;
            files::begin(&mut c, &user, &sha256, size, quota, &upload_id, now_ms).await
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
        Box::pin(async move {
            let c = self.client().await?;
            files::advance(&c, &user, &sha256, &upload_id, from, to, now_ms).await
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
        Box::pin(async move {
            let mut c = self.client().await?;
            files::complete(&mut c, &user, &sha256, &upload_id, size, now_ms).await
        })
    }

    fn drop_upload(
        &self,
        user: String,
        sha256: String,
        upload_id: String,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            files::drop_upload(&self.client().await?, &user, &sha256, &upload_id).await
        })
    }

    fn stale_uploads(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<StaleUpload>, StorageError>> {
        Box::pin(async move { files::stale(&self.client().await?, before_ms, limit).await })
    }
}
