//! The PostgreSQL side of a push: the locks that make it safe across processes, the
//! storage steps the shared loop (`crate::push`) calls, and the retries.
//!
//! Every guarantee a push gives with several server processes (one effect per op_id,
//! one writer per record, commits in seq order) rests on what this file does, so it is
//! kept in one place, apart from reads and the schema.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use outpost_core::protocol::OpResult;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
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

/// [`SELECT_RECORD_FOR_UPDATE`]'s columns for the records of the ops (`$1` to `$3`,
/// with their op_ids in `$5`) that have no stored answer of the user `$6` (an op
/// answered before is answered again from its answer, and needs no record), each
/// record once; the scope after them; the data only of records up to `$4` bytes, and
/// whether it was left out.
const SELECT_RECORDS_FOR_UPDATE: &str = "SELECT r.collection, r.record_id, \
     CASE WHEN octet_length(r.data) <= $4 THEN r.data END, r.deleted, \
     r.version, r.seq, r.hlc, r.owner, r.team, r.created_at, r.updated_at, r.writer, r.echo, \
     r.scope, COALESCE(octet_length(r.data) > $4, false) FROM records r \
     WHERE (r.collection, r.scope, r.record_id) IN ( \
       SELECT k.collection, k.scope, k.record_id \
       FROM unnest($1::text[], $2::text[], $3::text[], $5::text[]) \
            AS k(collection, scope, record_id, op_id) \
       WHERE NOT EXISTS (SELECT 1 FROM ops o WHERE o.user_name = $6 AND o.op_id = k.op_id)) \
     FOR UPDATE OF r";

/// Where [`SELECT_RECORDS_FOR_UPDATE`] puts the scope, and whether it left the data out.
const SCOPE_COLUMN: usize = 13;
const LEFT_OUT_COLUMN: usize = 14;

/// Records larger than this are not read ahead of the ops that name them, so that a
/// push naming many large records loads them one at a time, within its work budget,
/// as the shared loop asks for them (at most 1,000 ops a push: 16 MiB read ahead).
const READ_AHEAD_MAX_BYTES: i32 = 16 * 1024;

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
    let st_answers = client
        .prepare_cached(
            "SELECT op_id, answer FROM ops WHERE user_name = $1 AND op_id = ANY($2::text[])",
        )
        .await?;
    let st_records = client.prepare_cached(SELECT_RECORDS_FOR_UPDATE).await?;
    let st_audit = client.prepare_cached(audit::APPEND).await?;
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
    let mut op_ids: Vec<Cow<'_, str>> = Vec::with_capacity(items.len());
    // Each valid op's record and op_id (escaped; empty when it cannot be stored).
    let mut reads: Vec<(RecordKey, Cow<'_, str>)> = Vec::with_capacity(items.len());
    for item in items {
        if logic::op_id_ok(item.op_id()) {
            keys.push(lock_key("op", &[user, item.op_id()]));
            op_ids.push(pg_text(item.op_id()));
        }
        if let PushItem::Valid(op) = item {
            // The scope the op writes in (its target's, for a service account), so a
            // device and a service account writing the same record take the same lock.
            let access = ctx.access.of(&op.collection);
            let scope = logic::op_scope(access, &ctx.user, op.target.as_ref());
            keys.push(lock_key("record", &[&op.collection, &scope, &op.record_id]));
            let key = RecordKey {
                collection: op.collection.clone(),
                scope,
                record_id: op.record_id.clone(),
            };
            let op_id = if logic::op_id_ok(&op.op_id) {
                pg_text(&op.op_id)
            } else {
                Cow::Borrowed("")
            };
            reads.push((key, op_id));
        }
    }
    keys.sort_unstable();
    keys.dedup();

    let mut steps = PgPush {
        tx: &tx,
        st_answer,
        st_record,
        st_answers,
        st_records,
        st_stage,
        st_seq,
        st_seqs,
        st_store,
        st_audit,
        seqs: None,
        audit: Vec::new(),
        answers: None,
        known_answers: HashMap::new(),
        known_records: HashMap::new(),
    };
    steps
        .lock_and_read(&st_lock, &keys, user, &op_ids, &reads)
        .await?;
    let results = push::apply(&mut steps, ctx, items, now_ms).await?;
    steps.finish().await?;
    tx.commit().await?;
    Ok(results)
}

/// The storage steps of a push, inside its transaction, with its statements prepared.
/// op_id and client_id are stored escaped ([`pg_text`]).
///
/// The steps after the seqs are taken only gather what they write; [`PgPush::finish`]
/// sends it in one pipeline, so the part of a push that holds the seq counter (and
/// with it every other push of the deployment) costs three round trips: the counter,
/// that pipeline and the commit.
struct PgPush<'a> {
    tx: &'a Transaction<'a>,
    st_answer: Statement,
    st_record: Statement,
    st_answers: Statement,
    st_records: Statement,
    st_stage: Statement,
    st_seq: Statement,
    st_seqs: Statement,
    st_store: Statement,
    st_audit: Statement,
    /// The staged records' keys and seqs.
    seqs: Option<SeqRows>,
    audit: Vec<AuditEntry>,
    /// op_ids (escaped) and answers, with the user and time they are stored under.
    answers: Option<AnswerRows>,
    /// What [`PgPush::lock_and_read`] read: the stored answer of each op_id (escaped) the
    /// push names, if any, and each record it names, if it exists.
    known_answers: HashMap<String, Option<String>>,
    known_records: HashMap<RecordKey, Option<StoredRecord>>,
}

/// The keys of the records a push staged, and the seq each gets, as the columns of
/// one `UPDATE`.
struct SeqRows {
    collections: Vec<String>,
    scopes: Vec<String>,
    ids: Vec<String>,
    seqs: Vec<i64>,
}

struct AnswerRows {
    user: String,
    at_ms: i64,
    op_ids: Vec<String>,
    answers: Vec<String>,
}

impl PgPush<'_> {
    /// Takes the advisory locks (`keys`), then reads the stored answers and records
    /// the push names: three statements sent at once, instead of a round trip for the
    /// locks and one per op and per record as the shared loop asks for them.
    /// PostgreSQL runs them in order, so the reads start once every lock is held (and,
    /// READ COMMITTED, see every push that held one before); no other push changes
    /// what they read before this one commits.
    async fn lock_and_read(
        &mut self,
        st_lock: &Statement,
        keys: &[i64],
        user: &str,
        op_ids: &[Cow<'_, str>],
        reads: &[(RecordKey, Cow<'_, str>)],
    ) -> Result<(), Abort> {
        let tx = self.tx;
        let ids: Vec<&str> = op_ids.iter().map(AsRef::as_ref).collect();
        let answers = async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(&self.st_answers, &[&user, &ids]).await
        };
        let collections: Vec<&str> = reads.iter().map(|(k, _)| k.collection.as_str()).collect();
        let scopes: Vec<&str> = reads.iter().map(|(k, _)| k.scope.as_str()).collect();
        let record_ids: Vec<&str> = reads.iter().map(|(k, _)| k.record_id.as_str()).collect();
        let read_ops: Vec<&str> = reads.iter().map(|(_, id)| id.as_ref()).collect();
        let rows = async {
            if reads.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                &self.st_records,
                &[
                    &collections,
                    &scopes,
                    &record_ids,
                    &READ_AHEAD_MAX_BYTES,
                    &read_ops,
                    &user,
                ],
            )
            .await
        };
        let lock = async {
            if keys.is_empty() {
                return Ok(0);
            }
            tx.execute(st_lock, &[&keys]).await
        };
        let (locked, answers, rows) = futures_util::future::join3(lock, answers, rows).await;
        locked?;
        let (answers, rows) = (answers?, rows?);
        self.known_answers = ids.iter().map(|id| ((*id).to_owned(), None)).collect();
        for row in answers {
            let op_id: String = row.try_get(0)?;
            self.known_answers.insert(op_id, Some(row.try_get(1)?));
        }
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let collection: String = row.try_get(0)?;
            let record_id: String = row.try_get(1)?;
            let scope: String = row.try_get(SCOPE_COLUMN)?;
            let record = if row.try_get(LEFT_OUT_COLUMN)? {
                None
            } else {
                Some(read_record(&row)?)
            };
            found.insert(
                RecordKey {
                    collection,
                    scope,
                    record_id,
                },
                record,
            );
        }
        // A record was looked for when one of its ops has no stored answer; not found
        // then, it does not exist. The others are read if the loop asks for them.
        for (k, op_id) in reads {
            let answered = !op_id.is_empty()
                && matches!(self.known_answers.get(op_id.as_ref()), Some(Some(_)));
            if answered || self.known_records.contains_key(k) {
                continue;
            }
            // `get`, not `remove`: a large record's entry must still say "left out" to
            // its record's next op, not "not found".
            match found.get(k) {
                // Too large to read ahead: read when asked for.
                Some(None) => {}
                Some(Some(record)) => {
                    self.known_records.insert(k.clone(), Some(record.clone()));
                }
                None => {
                    self.known_records.insert(k.clone(), None);
                }
            }
        }
        Ok(())
    }

    /// Gives the staged records their seqs, appends the audit rows and stores the
    /// answers: three statements sent at once, answered in order. The first error is
    /// the cause; the statements after it only fail because the transaction had.
    async fn finish(&mut self) -> Result<(), Abort> {
        let tx = self.tx;
        let seqs = async {
            let Some(s) = &self.seqs else { return Ok(()) };
            tx.execute(&self.st_seqs, &[&s.collections, &s.scopes, &s.ids, &s.seqs])
                .await
                .map(drop)
        };
        let batch = audit::Batch::new(std::mem::take(&mut self.audit));
        let audit = batch.append(tx, &self.st_audit);
        let answers = async {
            let Some(a) = &self.answers else {
                return Ok(None);
            };
            tx.execute(&self.st_store, &[&a.user, &a.op_ids, &a.answers, &a.at_ms])
                .await
                .map(|stored| Some((stored, a.op_ids.len())))
        };
        let (seqs, audit, answers) = futures_util::future::join3(seqs, audit, answers).await;
        seqs?;
        audit?;
        if let Some((stored, sent)) = answers?
            && stored != sent as u64
        {
            // Cannot happen while the advisory locks of push_once are held; should it
            // anyway (someone wrote to the table by hand), the stored answer wins: roll
            // back and run again, and the new attempt returns it.
            return Err(Abort::Retry("op_id answered concurrently".into()));
        }
        Ok(())
    }
}

impl PushSteps for PgPush<'_> {
    type Error = Abort;

    async fn stored_answer(&mut self, user: &str, op_id: &str) -> Result<Option<String>, Abort> {
        let key = pg_text(op_id);
        if let Some(known) = self.known_answers.remove(key.as_ref()) {
            return Ok(known);
        }
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
        if let Some(known) = self.known_records.remove(key) {
            return Ok(known);
        }
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
        // Sent at once and answered in order (a pipeline): one round trip, not one per
        // record. The first error is the cause; those after it only say the
        // transaction had failed.
        let writers: Vec<Cow<'_, str>> = rows.iter().map(|r| pg_text(r.writer)).collect();
        let writers: Vec<&str> = writers.iter().map(AsRef::as_ref).collect();
        let sends = rows.iter().zip(&writers).map(|(row, writer)| {
            let params: [&(dyn ToSql + Sync); 13] = [
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
                writer,
                &row.echo,
            ];
            self.tx.execute_raw(&self.st_stage, params)
        });
        for sent in futures_util::future::join_all(sends).await {
            sent?;
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
        // serialized across all servers is only this UPDATE, one pipeline that gives
        // the records their seqs, chains the audit rows (under the audit head) and
        // stores the answers ([`PgPush::finish`]), and the commit. Reads, merges and writes of record data run in
        // parallel. The alternative, a sequence plus holding cursors back below the
        // oldest open transaction (pg_snapshot_xmin), would avoid even that, but makes
        // pulls lag behind any long transaction and exposes xid plumbing to every pull.
        let last: i64 = self
            .tx
            .query_one(&self.st_seq, &[&count])
            .await?
            .try_get(0)?;
        let first = last - count + 1;
        self.seqs = Some(SeqRows {
            collections: rows.iter().map(|r| r.key.collection.clone()).collect(),
            scopes: rows.iter().map(|r| r.key.scope.clone()).collect(),
            ids: rows.iter().map(|r| r.key.record_id.clone()).collect(),
            seqs: rows.iter().map(|r| first + r.nth - 1).collect(),
        });
        Ok(first)
    }

    async fn append_audit(&mut self, entries: Vec<AuditEntry>) -> Result<(), Abort> {
        self.audit.extend(entries);
        Ok(())
    }

    async fn store_answers(&mut self, rows: &[AnswerRow<'_>]) -> Result<(), Abort> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        self.answers = Some(AnswerRows {
            user: first.user.to_owned(),
            at_ms: first.at_ms,
            op_ids: rows.iter().map(|r| pg_text(r.op_id).into_owned()).collect(),
            answers: rows.iter().map(|r| r.answer.to_owned()).collect(),
        });
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
