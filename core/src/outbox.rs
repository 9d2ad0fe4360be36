//! The outbox: the durable queue of local edits waiting for the server.
//!
//! Every local write adds (or coalesces into) an entry in the same transaction as the
//! record itself, so nothing the user saved can be missed by sync. Entries carry an
//! `op_id` minted at write time, which makes every upload idempotent. Per record, entries
//! go out strictly in order and one at a time; a failed entry holds back only the later
//! entries of its own record, never anyone else's.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::protocol::{Change, ErrorBody, JsonObject, Op, OpKind};
use crate::store::{Store, SyncState};

/// Where an entry is in its life. An applied entry is deleted in the transaction that
/// records its answer, so there is no state for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Waiting to be sent (or re-sent).
    Pending,
    /// Handed to the network; its answer is not in yet.
    Syncing,
    /// The server rejected it; kept until the app retries or discards it.
    Failed,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Syncing => "syncing",
            EntryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> EntryState {
        match s {
            "syncing" => EntryState::Syncing,
            "failed" => EntryState::Failed,
            _ => EntryState::Pending,
        }
    }
}

/// One queued edit.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Local queue position; increasing in write order.
    pub id: i64,
    pub op_id: String,
    pub collection: String,
    pub record_id: String,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    pub data: Option<JsonObject>,
    pub hlc: String,
    pub force: bool,
    pub state: EntryState,
    pub attempts: u32,
    /// Not sent before this time (ms since the epoch); backoff survives restarts.
    pub next_attempt_at_ms: i64,
    pub last_error: Option<ErrorBody>,
    pub created_at_ms: i64,
    /// Approximate wire size of the op.
    pub bytes: usize,
}

impl OutboxEntry {
    /// The wire form of this entry.
    pub fn to_op(&self) -> Op {
        Op {
            op_id: self.op_id.clone(),
            collection: self.collection.clone(),
            record_id: self.record_id.clone(),
            kind: self.kind,
            base_version: self.base_version,
            data: self.data.clone(),
            hlc: self.hlc.clone(),
            force: self.force,
        }
    }
}

/// How big a push may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_ops: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // Well inside the server's 1000 ops and 8 MiB, so one batch is one request.
        BatchLimits {
            max_ops: 500,
            max_bytes: 2 * 1024 * 1024,
        }
    }
}

/// What became of a sent entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// The server applied it at `version`.
    Applied { version: i64 },
    /// A transient failure: send again after `next_attempt_at_ms`.
    Retry {
        error: ErrorBody,
        next_attempt_at_ms: i64,
    },
    /// A permanent rejection: the entry is failed, its data stays local.
    Failed { error: ErrorBody },
    /// Not sent after all (cancelled): back to pending with no penalty.
    Released,
}

pub(crate) struct NewEntry<'a> {
    pub collection: &'a str,
    pub record_id: &'a str,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    /// What the op carries: the whole record for put, the fields for patch.
    pub op_data: Option<&'a JsonObject>,
    /// `op_data` already serialised, when the caller has it.
    pub op_json: Option<&'a str>,
    /// The whole record after the write, for coalescing a patch into a put.
    pub full_data: Option<&'a JsonObject>,
    pub hlc: &'a str,
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// A new entry, or folded into the record's unsent tail entry.
    Queued,
    /// A create that never left the device was deleted: no entry remains.
    Vanished,
}

struct Tail {
    id: i64,
    kind: OpKind,
    base_version: Option<i64>,
    data: Option<JsonObject>,
}

/// Adds an edit to the outbox, coalescing it into the record's last entry when that
/// entry has never been sent. A sent entry's op_id may already be applied on the
/// server, so changing what it carries could lose the edit: it is never touched.
/// A record's newest outbox entry. The CASTs matter: with bare parameters in this
/// ordered query, SQLite re-prepares the statement for every new binding, which was the
/// largest single cost of a local write.
pub(crate) const TAIL_SQL: &str = "SELECT id, kind, base_version, data, state, sent FROM outbox
     WHERE collection = CAST(?1 AS TEXT) AND record_id = CAST(?2 AS TEXT)
     ORDER BY id DESC LIMIT 1";

pub(crate) fn enqueue(tx: &Transaction<'_>, e: &NewEntry<'_>, now: i64) -> Result<Enqueued> {
    let tail = tx
        .prepare_cached(TAIL_SQL)?
        .query_row(params![e.collection, e.record_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })
        .optional()?;
    let tail = match tail {
        Some((id, kind, base_version, data, state, sent))
            if state == EntryState::Pending.as_str() && !sent =>
        {
            let data = data
                .map(|s| serde_json::from_str::<JsonObject>(&s))
                .transpose()?;
            OpKind::parse(&kind).map(|kind| Tail {
                id,
                kind,
                base_version,
                data,
            })
        }
        _ => None,
    };
    let Some(tail) = tail else {
        insert(tx, e, now)?;
        return Ok(Enqueued::Queued);
    };
    let (kind, data) = match (tail.kind, e.kind) {
        (_, OpKind::Delete) => {
            let unsynced_before: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM outbox WHERE collection = ?1 AND record_id = ?2
                     AND id < ?3",
                )?
                .query_row(params![e.collection, e.record_id, tail.id], |r| r.get(0))?;
            if tail.base_version.is_none() && tail.kind != OpKind::Delete && unsynced_before == 0 {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute([tail.id])?;
                return Ok(Enqueued::Vanished);
            }
            (OpKind::Delete, None)
        }
        (OpKind::Patch, OpKind::Patch) => {
            let mut fields = tail.data.unwrap_or_default();
            if let Some(new) = e.op_data {
                fields.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            (OpKind::Patch, Some(fields))
        }
        // put+patch, delete+put, patch+put: the whole record as it now stands.
        _ => (OpKind::Put, e.full_data.cloned()),
    };
    let json = data.as_ref().map(serde_json::to_string).transpose()?;
    let bytes = op_bytes(e, json.as_deref());
    tx.prepare_cached(
        "UPDATE outbox SET kind = ?2, data = ?3, hlc = ?4, bytes = ?5, created_at = ?6 WHERE id = ?1",
    )?
    .execute(params![tail.id, kind.as_str(), json, e.hlc, bytes as i64, now])?;
    Ok(Enqueued::Queued)
}

fn op_bytes(e: &NewEntry<'_>, json: Option<&str>) -> usize {
    // The envelope (op_id, names, hlc, punctuation) is about 150 bytes.
    150 + e.collection.len() + e.record_id.len() + json.map_or(0, str::len)
}

fn insert(tx: &Transaction<'_>, e: &NewEntry<'_>, now: i64) -> Result<()> {
    let json = match (e.kind, e.op_json) {
        (OpKind::Delete, _) => None,
        (_, Some(j)) => Some(j.to_owned()),
        _ => e.op_data.map(serde_json::to_string).transpose()?,
    };
    let bytes = op_bytes(e, json.as_deref());
    let op_id = uuid::Uuid::now_v7().to_string();
    tx.prepare_cached(
        "INSERT INTO outbox (op_id, collection, record_id, kind, base_version, data, hlc, force,
                             state, created_at, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10)",
    )?
    .execute(params![
        op_id,
        e.collection,
        e.record_id,
        e.kind.as_str(),
        e.base_version,
        json,
        e.hlc,
        e.force,
        now,
        bytes as i64
    ])?;
    Ok(())
}

/// At open: entries a crash left in flight go back to pending. They stay `sent`, so
/// they keep their op_id and the server answers a repeat with its first answer.
pub(crate) fn recover_in_flight(conn: &Connection) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE outbox SET state = 'pending' WHERE state = 'syncing'",
        [],
    )?)
}

const ENTRY_COLUMNS: &str =
    "id, op_id, collection, record_id, kind, base_version, data, hlc, force,
     state, attempts, next_attempt_at, last_error_code, last_error, created_at, bytes";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let data: Option<String> = r.get(6)?;
    let data = data
        .map(|s| serde_json::from_str::<JsonObject>(&s))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?;
    let kind: String = r.get(4)?;
    let code: Option<String> = r.get(12)?;
    let message: Option<String> = r.get(13)?;
    Ok(OutboxEntry {
        id: r.get(0)?,
        op_id: r.get(1)?,
        collection: r.get(2)?,
        record_id: r.get(3)?,
        kind: OpKind::parse(&kind).unwrap_or(OpKind::Put),
        base_version: r.get(5)?,
        data,
        hlc: r.get(7)?,
        force: r.get(8)?,
        state: EntryState::parse(&r.get::<_, String>(9)?),
        attempts: r.get::<_, i64>(10)?.clamp(0, i64::from(u32::MAX)) as u32,
        next_attempt_at_ms: r.get(11)?,
        last_error: code.map(|code| ErrorBody {
            code,
            message: message.unwrap_or_default(),
        }),
        created_at_ms: r.get(14)?,
        bytes: r.get::<_, i64>(15)?.max(0) as usize,
    })
}

/// Counts of entries by state, for the status API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub syncing: u64,
    pub failed: u64,
}

impl Store {
    /// The entries that may go out now, oldest first: for each record only its first
    /// unfinished entry, only if that entry is pending and due, and never for a record
    /// waiting on a manual conflict. Stops at the count
    /// or byte limit (always taking at least one entry).
    pub fn outbox_next_batch(&self, limits: BatchLimits, now_ms: i64) -> Result<Vec<OutboxEntry>> {
        self.read(|conn| next_batch(conn, limits, now_ms))
    }

    /// In one transaction: records the answers for a batch that came back, then takes
    /// the next batch (as [`Store::outbox_next_batch`] would choose it) and marks it in
    /// flight. One commit, so one sync to disk, between two requests.
    pub fn outbox_settle_and_take(
        &self,
        results: &[(i64, PushOutcome)],
        limits: BatchLimits,
        now_ms: i64,
    ) -> Result<Vec<OutboxEntry>> {
        self.write(ChangeOrigin::Local, |w| {
            for (id, outcome) in results {
                apply_one(&w.tx, *id, outcome)?;
            }
            let batch = next_batch(&w.tx, limits, now_ms)?;
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
            mark_in_flight(&w.tx, &ids)?;
            Ok(batch)
        })
    }

    /// Marks entries as handed to the network. From here on they are never coalesced.
    pub fn outbox_mark_in_flight(&self, ids: &[i64]) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| mark_in_flight(&w.tx, ids))
    }

    /// Records what the server (or the network) said about sent entries.
    pub fn outbox_apply_results(&self, results: &[(i64, PushOutcome)]) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            for (id, outcome) in results {
                apply_one(&w.tx, *id, outcome)?;
            }
            Ok(())
        })
    }

    /// Every entry still queued, in flight or failed, oldest first (applied ones are gone).
    pub fn outbox_entries(&self) -> Result<Vec<OutboxEntry>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM outbox ORDER BY id"))?;
            let rows = stmt.query_map([], entry_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Entries the server rejected, oldest first.
    pub fn failed_entries(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self
            .outbox_entries()?
            .into_iter()
            .filter(|e| e.state == EntryState::Failed)
            .collect())
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")?;
            let mut counts = OutboxCounts::default();
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                let n = n.max(0) as u64;
                match EntryState::parse(&state) {
                    EntryState::Pending => counts.pending = n,
                    EntryState::Syncing => counts.syncing = n,
                    EntryState::Failed => counts.failed = n,
                }
            }
            Ok(counts)
        })
    }

    /// Puts every failed entry back in the queue, due now. Returns how many.
    pub fn retry_failed(&self) -> Result<usize> {
        self.write(ChangeOrigin::Local, |w| {
            let n = w.tx.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = 0 WHERE state = 'failed'",
                [],
            )?;
            w.tx.execute(
                "UPDATE records SET sync_state = 'pending' WHERE sync_state = 'failed'",
                [],
            )?;
            Ok(n)
        })
    }

    /// Drops a failed entry: the user's explicit decision to give up that edit. The
    /// record returns to its last synced state once nothing else is queued for it.
    pub fn discard_failed(&self, entry_id: i64) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            let row =
                w.tx.query_row(
                    "SELECT collection, record_id FROM outbox WHERE id = ?1 AND state = 'failed'",
                    [entry_id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((collection, record_id)) = row else {
                return Err(Error::NotFound {
                    collection: "outbox".into(),
                    id: entry_id.to_string(),
                });
            };
            w.tx.execute("DELETE FROM outbox WHERE id = ?1", [entry_id])?;
            revert_if_idle(&w.tx, &collection, &record_id)?;
            w.save_clock = true;
            w.event.add(&collection, &record_id);
            Ok(())
        })
    }

    /// Returns every in-flight entry to pending, keeping its op_id (used on cancel).
    pub fn release_in_flight(&self) -> Result<usize> {
        self.write(ChangeOrigin::Local, |w| recover_in_flight(&w.tx))
    }
}

fn unfinished_for(tx: &Transaction<'_>, collection: &str, record_id: &str) -> Result<i64> {
    Ok(tx
        .prepare_cached("SELECT count(*) FROM outbox WHERE collection = ?1 AND record_id = ?2")?
        .query_row(params![collection, record_id], |r| r.get(0))?)
}

fn apply_one(tx: &Transaction<'_>, id: i64, outcome: &PushOutcome) -> Result<()> {
    match outcome {
        PushOutcome::Applied { version } => settle_applied(tx, id, *version)?,
        PushOutcome::Retry {
            error,
            next_attempt_at_ms,
        } => {
            tx.prepare_cached(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?2, last_error_code = ?3,
                 last_error = ?4 WHERE id = ?1",
            )?
            .execute(params![id, next_attempt_at_ms, error.code, error.message])?;
        }
        PushOutcome::Failed { error } => {
            let record = tx
                .prepare_cached(
                    "UPDATE outbox SET state = 'failed', last_error_code = ?2, last_error = ?3
                     WHERE id = ?1 RETURNING collection, record_id",
                )?
                .query_row(params![id, error.code, error.message], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            if let Some((collection, record_id)) = record {
                tx.prepare_cached(
                    "UPDATE records SET sync_state = 'failed' WHERE collection = ?1 AND id = ?2",
                )?
                .execute(params![collection, record_id])?;
            }
        }
        PushOutcome::Released => {
            tx.prepare_cached(
                "UPDATE outbox SET state = 'pending' WHERE id = ?1 AND state = 'syncing'",
            )?
            .execute([id])?;
        }
    }
    Ok(())
}

/// The server holds this edit now: the entry has done its work and goes (its op_id lives
/// on in the server's answers, which is what makes resends safe), and the record's base
/// becomes what the server holds.
fn settle_applied(tx: &Transaction<'_>, id: i64, version: i64) -> Result<()> {
    let row = tx
        .prepare_cached(
            "DELETE FROM outbox WHERE id = ?1 RETURNING collection, record_id, kind, data",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((collection, record_id, kind, data)) = row else {
        return Ok(());
    };
    if unfinished_for(tx, &collection, &record_id)? > 0 {
        // Later edits of this record were made on top of this one.
        tx.prepare_cached(
            "UPDATE outbox SET base_version = ?3 WHERE collection = ?1 AND record_id = ?2
             AND id > ?4",
        )?
        .execute(params![collection, record_id, version, id])?;
        return move_base(tx, &collection, &record_id, &kind, data.as_deref(), version);
    }
    let (remote, deleted) = tx
        .prepare_cached("SELECT remote, deleted FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, record_id], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, bool>(1)?))
        })
        .optional()?
        .unwrap_or((None, false));
    // A newer server state pulled while this edit was in flight: the server has moved
    // on past our op (or merged CRDT fields into it), so that state is the truth now.
    if let Some(c) = parse_stash(remote).filter(|c| c.version >= version) {
        return adopt_change(tx, &collection, &record_id, &c);
    }
    // Nothing else queued: local data is exactly the server's.
    if deleted {
        tx.prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
            .execute(params![collection, record_id])?;
    } else {
        tx.prepare_cached(
            "UPDATE records SET version = ?3, base = data, base_hlc = hlc, sync_state = ?4,
             remote = NULL WHERE collection = ?1 AND id = ?2",
        )?
        .execute(params![
            collection,
            record_id,
            version,
            SyncState::Synced.as_str()
        ])?;
    }
    Ok(())
}

/// Later edits are still queued: the base moves to what the applied op carried.
fn move_base(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    kind: &str,
    data: Option<&str>,
    version: i64,
) -> Result<()> {
    let base: Option<String> = match OpKind::parse(kind) {
        Some(OpKind::Put) => data.map(str::to_owned),
        Some(OpKind::Patch) => {
            let old: Option<String> = tx
                .prepare_cached("SELECT base FROM records WHERE collection = ?1 AND id = ?2")?
                .query_row(params![collection, record_id], |r| r.get(0))
                .optional()?
                .flatten();
            let old = old
                .map(|s| serde_json::from_str::<JsonObject>(&s))
                .transpose()?;
            let fields = data
                .map(serde_json::from_str::<JsonObject>)
                .transpose()?
                .unwrap_or_default();
            let merged = crate::crdt::apply_write(old.as_ref(), &fields, OpKind::Patch)?;
            Some(serde_json::to_string(&merged)?)
        }
        _ => None,
    };
    tx.prepare_cached(
        "UPDATE records SET version = ?3, base = ?4 WHERE collection = ?1 AND id = ?2",
    )?
    .execute(params![collection, record_id, version, base])?;
    Ok(())
}

fn mark_in_flight(conn: &Connection, ids: &[i64]) -> Result<()> {
    // One statement for the whole batch: it runs before every push request.
    let ids = serde_json::to_string(ids)?;
    conn.prepare_cached(
        "UPDATE outbox SET state = 'syncing', sent = 1, attempts = attempts + 1
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'",
    )?
    .execute([ids])?;
    Ok(())
}

/// The entries that may go out now; see [`Store::outbox_next_batch`].
fn next_batch(conn: &Connection, limits: BatchLimits, now_ms: i64) -> Result<Vec<OutboxEntry>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM outbox o
             WHERE o.state = 'pending' AND o.next_attempt_at <= ?1
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.collection = o.collection AND p.record_id = o.record_id
                                 AND p.id < o.id)
               AND NOT EXISTS (SELECT 1 FROM records r
                               WHERE r.collection = o.collection AND r.id = o.record_id
                                 AND r.sync_state = 'conflicted')
             ORDER BY o.id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![now_ms, limits.max_ops.max(1) as i64],
        entry_from_row,
    )?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let entry = row?;
        bytes += entry.bytes;
        if !out.is_empty() && bytes > limits.max_bytes {
            break;
        }
        out.push(entry);
    }
    Ok(out)
}

/// With nothing left queued for a record, it goes back to its last synced base (or away,
/// if the server never had it).
fn revert_if_idle(tx: &Transaction<'_>, collection: &str, record_id: &str) -> Result<()> {
    if unfinished_for(tx, collection, record_id)? > 0 {
        return Ok(());
    }
    let row: Option<(i64, Option<String>)> = tx
        .query_row(
            "SELECT version, base FROM records WHERE collection = ?1 AND id = ?2",
            params![collection, record_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        Some((version, Some(base))) if version > 0 => {
            tx.execute(
                "UPDATE records SET data = ?3, deleted = 0, hlc = coalesce(base_hlc, hlc),
                 sync_state = 'synced' WHERE collection = ?1 AND id = ?2",
                params![collection, record_id, base],
            )?;
        }
        Some(_) => {
            tx.execute(
                "DELETE FROM records WHERE collection = ?1 AND id = ?2",
                params![collection, record_id],
            )?;
        }
        None => {}
    }
    Ok(())
}

/// The server state stashed by a pull while the record had local edits, if any.
pub(crate) fn deferred_remote(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
) -> Result<Option<Change>> {
    let json: Option<String> = tx
        .prepare_cached("SELECT remote FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, record_id], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(parse_stash(json))
}

/// A stash is our own serialisation of a `Change`, so one that does not parse is
/// treated as absent rather than wedging the record.
fn parse_stash(json: Option<String>) -> Option<Change> {
    json.and_then(|j| serde_json::from_str::<Change>(&j).ok())
}

/// Makes the record exactly the server's state `c` (and clears any stash).
pub(crate) fn adopt_change(
    tx: &Transaction<'_>,
    collection: &str,
    record_id: &str,
    c: &Change,
) -> Result<()> {
    match c.data.as_ref().filter(|_| !c.deleted) {
        Some(data) => {
            let data = serde_json::to_string(data)?;
            tx.prepare_cached(
                "UPDATE records SET data = ?3, deleted = 0, version = ?4, hlc = ?5,
                 sync_state = 'synced', base = ?3, base_hlc = ?5, remote = NULL
                 WHERE collection = ?1 AND id = ?2",
            )?
            .execute(params![collection, record_id, data, c.version, c.hlc])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
                .execute(params![collection, record_id])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConflictStrategy, StoreConfig};
    use crate::store::Store;
    use rusqlite::StatementStatus;
    use serde_json::json;

    /// The tail lookup runs on every write; a re-prepare per binding once took about 40%
    /// of a batch's time.
    #[test]
    fn the_tail_lookup_is_not_reprepared_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::default().with_collection("c", ConflictStrategy::ServerWins);
        let store = Store::open(dir.path().join("s.db"), config).unwrap();
        let status = |store: &Store| {
            store
                .write(crate::feed::ChangeOrigin::Local, |w| {
                    let stmt = w.tx.prepare_cached(TAIL_SQL)?;
                    Ok((
                        stmt.get_status(StatementStatus::Run),
                        stmt.get_status(StatementStatus::RePrepare),
                    ))
                })
                .unwrap()
        };
        store.put("c", Some("warm"), json!({"v": 0})).unwrap();
        let (runs_before, reprepares_before) = status(&store);
        store
            .batch(|tx| {
                for i in 0..200 {
                    tx.put("c", Some(&format!("r{i}")), json!({"v": i}))?;
                }
                Ok(())
            })
            .unwrap();
        let (runs, reprepares) = status(&store);
        assert!(runs >= runs_before + 200, "the lookup ran {runs} times");
        assert!(
            reprepares - reprepares_before < 5,
            "re-prepared {} times in 200 writes",
            reprepares - reprepares_before
        );
    }
}
