//! The PostgreSQL side of a push: the locks that make it safe across processes, the
//! storage steps the shared loop (`crate::push`) calls, and the retries.
//!
//! Every guarantee a push gives with several server processes (one effect per op_id,
//! one writer per record, commits in seq order) rests on what this file does, so it is
//! kept in one place, apart from reads and the schema.

use std::borrow::Cow;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use outpost_core::protocol::OpResult;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, Statement};

use super::{audit, pg_err, pool_err, read_record};
use crate::audit::AuditEntry;
use crate::logic::{self, PushItem, RecordKey, StoredRecord};
use crate::push::{self, AnswerRow, PushSteps, RecordFiles, RecordRow};
use crate::storage::{PushContext, StorageError, db_err};

/// How many times a push is run again after PostgreSQL aborted it for a deadlock or a
/// serialization failure. The lock order makes both impossible between pushes; this
/// is a guard against what the server does not control (an operator's own locks).
const PUSH_ATTEMPTS: usize = 5;

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

/// The text [`pg_text`] was given, from what it made: for stored texts read back and
/// compared, like a record's writer.
pub fn pg_untext(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(escaped) => out.push(escaped),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The advisory lock key of a name: 64 bits of SHA-256, with a tag per kind of name
/// and length prefixes so that no two different names can be spelled the same.
pub(super) fn lock_key(kind: &str, parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"outpost-lock-v1\0");
    for part in std::iter::once(&kind).chain(parts) {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    i64::from_be_bytes(k)
}

/// Applies a push, running it again (on a fresh connection) when PostgreSQL aborted an
/// attempt for a reason a new attempt clears.
pub(super) async fn push(
    pool: &Pool,
    ctx: &PushContext,
    items: &[PushItem],
    now_ms: i64,
) -> Result<Vec<OpResult>, StorageError> {
    let mut last = String::new();
    for attempt in 0..PUSH_ATTEMPTS {
        let mut client = pool.get().await.map_err(|e| pool_err(&e))?;
        match push_once(&mut client, ctx, items, now_ms).await {
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

const SELECT_RECORD_FOR_UPDATE: &str = "SELECT collection, record_id, data, deleted, version, seq, hlc, owner, team, \
     created_at, updated_at, writer, echo FROM records \
     WHERE collection = $1 AND scope = $2 AND record_id = $3 FOR UPDATE";

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
    let st_stage = client
        .prepare_cached(
            "INSERT INTO records (collection, scope, record_id, data, deleted, version, seq, \
             hlc, owner, team, created_at, updated_at, writer, echo) \
             VALUES ($1, $2, $3, $4, $5, $6, -nextval('records_staged_seq'), $7, $8, $9, $10, \
                     $11, $12, $13) \
             ON CONFLICT (collection, scope, record_id) DO UPDATE SET data = excluded.data, \
             deleted = excluded.deleted, version = excluded.version, seq = excluded.seq, \
             hlc = excluded.hlc, updated_at = excluded.updated_at, writer = excluded.writer, \
             echo = excluded.echo",
        )
        .await?;
    let st_seq = client
        .prepare_cached("UPDATE meta SET value = value + $1 WHERE key = 'last_seq' RETURNING value")
        .await?;
    let st_seqs = client
        .prepare_cached(
            "UPDATE records r SET seq = g.seq \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
                 AS g(collection, scope, record_id, seq) \
             WHERE r.collection = g.collection AND r.scope = g.scope \
               AND r.record_id = g.record_id",
        )
        .await?;
    let st_store = client
        .prepare_cached(
            "INSERT INTO ops (user_name, op_id, answer, at) \
             SELECT $1, op_id, answer, $4 FROM unnest($2::text[], $3::text[]) AS a(op_id, answer) \
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
            keys.push(lock_key("op", &[user, item.op_id()]));
        }
        if let PushItem::Valid(op) = item {
            // The scope the op writes in (its target's, for a service account), so a
            // device and a service account writing the same record take the same lock.
            let access = ctx.access.of(&op.collection);
            let scope = logic::op_scope(access, &ctx.user, op.target.as_ref());
            keys.push(lock_key("record", &[&op.collection, &scope, &op.record_id]));
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
        st_stage,
        st_seq,
        st_seqs,
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
    st_stage: Statement,
    st_seq: Statement,
    st_seqs: Statement,
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

    async fn load_record(&mut self, key: &RecordKey) -> Result<Option<StoredRecord>, Abort> {
        // FOR UPDATE: other pushes are already kept out by the advisory lock; this keeps
        // the purge (which skips locked rows) off a tombstone that this push is about to
        // decide on.
        match self
            .tx
            .query_opt(
                &self.st_record,
                &[&key.collection, &key.scope, &key.record_id],
            )
            .await?
        {
            Some(row) => Ok(Some(read_record(&row)?)),
            None => Ok(None),
        }
    }

    async fn stage_records(&mut self, rows: &[RecordRow<'_>]) -> Result<(), Abort> {
        // The heavy writes, before the seq counter is taken: a negative stand-in seq
        // (unique, and below every cursor) until `assign_seqs`. Uncommitted, so no pull
        // sees it; and the record's advisory lock keeps other pushes off it.
        for row in rows {
            let writer = pg_text(row.writer);
            let writer: &str = &writer;
            self.tx
                .execute(
                    &self.st_stage,
                    &[
                        &row.key.collection,
                        &row.key.scope,
                        &row.key.record_id,
                        &row.data,
                        &row.deleted,
                        &row.version,
                        &row.hlc,
                        &row.owner,
                        &row.team,
                        &row.created_at_ms,
                        &row.updated_at_ms,
                        &writer,
                        &row.echo,
                    ],
                )
                .await?;
        }
        Ok(())
    }

    async fn index_files(&mut self, records: &[RecordFiles<'_>]) -> Result<(), Abort> {
        Ok(super::files::index(self.tx, records).await?)
    }

    async fn assign_seqs(&mut self, count: i64, rows: &[RecordRow<'_>]) -> Result<i64, Abort> {
        // Why no puller can miss a change: seqs come from one counter row, and taking
        // them row-locks that row until this transaction commits. So between allocating
        // its seqs and committing, a transaction is the only one in the database
        // (whatever process runs it) that can allocate: the next one waits in this
        // UPDATE, and reads the counter only after this one has committed. PostgreSQL
        // makes a commit visible before it releases the commit's locks, so commits
        // become visible in seq order: a snapshot that holds seq S holds every seq < S.
        // A pull reads its page and the counter in one snapshot, so a cursor at S never
        // has a change below S still to come. A standby replays commits in the same
        // order, so the same holds for pulls served by a replica.
        //
        // The lock is taken as late as it can be: every op is already decided and every
        // record written (with a stand-in seq, see `stage_records`), so what is
        // serialized across all servers is only this UPDATE, the one that gives the
        // records their seqs, the audit rows and stored answers (under the audit head,
        // taken next) and the commit. Reads, merges and writes of record data run in
        // parallel. The alternative, a sequence plus holding cursors back below the
        // oldest open transaction (pg_snapshot_xmin), would avoid even that, but makes
        // pulls lag behind any long transaction and exposes xid plumbing to every pull.
        let last: i64 = self
            .tx
            .query_one(&self.st_seq, &[&count])
            .await?
            .try_get(0)?;
        let first = last - count + 1;
        let collections: Vec<&str> = rows.iter().map(|r| r.key.collection.as_str()).collect();
        let scopes: Vec<&str> = rows.iter().map(|r| r.key.scope.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.key.record_id.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| first + r.nth - 1).collect();
        self.tx
            .execute(&self.st_seqs, &[&collections, &scopes, &ids, &seqs])
            .await?;
        Ok(first)
    }

    async fn append_audit(&mut self, entries: Vec<AuditEntry>) -> Result<(), Abort> {
        Ok(audit::append(self.tx, entries).await?)
    }

    async fn store_answers(&mut self, rows: &[AnswerRow<'_>]) -> Result<(), Abort> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let op_ids: Vec<String> = rows.iter().map(|r| pg_text(r.op_id).into_owned()).collect();
        let answers: Vec<&str> = rows.iter().map(|r| r.answer).collect();
        let stored = self
            .tx
            .execute(
                &self.st_store,
                &[&first.user, &op_ids, &answers, &first.at_ms],
            )
            .await?;
        if stored != rows.len() as u64 {
            // Cannot happen while the advisory locks of push_once are held; should it
            // anyway (someone wrote to the table by hand), the stored answer wins: roll
            // back and run again, and the new attempt returns it.
            return Err(Abort::Retry("op_id answered concurrently".into()));
        }
        Ok(())
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
        for (input, stored) in inputs.iter().zip(&out) {
            assert_eq!(pg_untext(stored), *input);
        }
    }

    #[test]
    fn lock_keys_separate_kinds_and_boundaries() {
        assert_ne!(lock_key("op", &["ab", "c"]), lock_key("op", &["a", "bc"]));
        assert_ne!(lock_key("op", &["a", "b"]), lock_key("record", &["a", "b"]));
        assert_eq!(lock_key("op", &["a", "b"]), lock_key("op", &["a", "b"]));
        assert_ne!(
            lock_key("record", &["c", "t:x", "r"]),
            lock_key("record", &["c", "t:xr", ""])
        );
    }
}
