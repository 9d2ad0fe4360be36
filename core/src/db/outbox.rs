//! The `outbox` table: the durable queue of local edits (see `crate::outbox` for the
//! states an entry moves through and why).
//!
//! This is the only module with SQL that writes `outbox` (besides `seals`, which moves a
//! signed-out user's entries out and back whole). `sent` is set once an entry
//! has been handed to the network, and from then on nothing here changes what the
//! entry carries: its op_id may already be applied on the server.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Tx, json_col, unreadable};
use crate::error::{Error, Result};
use crate::outbox::{BatchLimits, EntryState, OutboxCounts, OutboxEntry, Tail};
use crate::protocol::{ErrorBody, OpKind};

const ENTRY_COLUMNS: &str =
    "id, op_id, collection, record_id, kind, base_version, data, hlc, force,
     state, attempts, next_attempt_at, last_error_code, last_error, created_at, bytes";

fn kind_col(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<OpKind> {
    let s: String = r.get(col)?;
    OpKind::parse(&s).ok_or_else(|| unreadable(col, Error::corrupt("outbox", "kind", &s)))
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let state: String = r.get(9)?;
    let state = EntryState::parse(&state).map_err(|e| unreadable(9, e))?;
    let code: Option<String> = r.get(12)?;
    let message: Option<String> = r.get(13)?;
    Ok(OutboxEntry {
        id: r.get(0)?,
        op_id: r.get(1)?,
        collection: r.get(2)?,
        record_id: r.get(3)?,
        kind: kind_col(r, 4)?,
        base_version: r.get(5)?,
        data: json_col(r, 6)?,
        hlc: r.get(7)?,
        force: r.get(8)?,
        state,
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

// ---- reads ----

/// A record's newest entry. The CASTs matter: with bare parameters in this ordered
/// query, SQLite re-prepares the statement for every new binding, which was the
/// largest single cost of a local write.
pub(crate) const TAIL_SQL: &str = "SELECT id, kind, base_version, data, state, sent FROM outbox
     WHERE collection = CAST(?1 AS TEXT) AND record_id = CAST(?2 AS TEXT)
     ORDER BY id DESC LIMIT 1";

/// The record's newest entry, if it is still open to coalescing (pending, never sent).
pub(crate) fn open_tail(conn: &Connection, collection: &str, id: &str) -> Result<Option<Tail>> {
    let row = conn
        .prepare_cached(TAIL_SQL)?
        .query_row(params![collection, id], |r| {
            let state: String = r.get(4)?;
            let state = EntryState::parse(&state).map_err(|e| unreadable(4, e))?;
            let sent: bool = r.get(5)?;
            if state != EntryState::Pending || sent {
                return Ok(None);
            }
            Ok(Some(Tail {
                id: r.get(0)?,
                kind: kind_col(r, 1)?,
                base_version: r.get(2)?,
                data: json_col(r, 3)?,
            }))
        })
        .optional()?;
    Ok(row.flatten())
}

/// How many entries of the record come before entry `before` (all of them if `None`).
pub(crate) fn count_for(
    conn: &Connection,
    collection: &str,
    id: &str,
    before: Option<i64>,
) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM outbox WHERE collection = ?1 AND record_id = ?2 AND id < ?3",
        )?
        .query_row(params![collection, id, before.unwrap_or(i64::MAX)], |r| {
            r.get(0)
        })?)
}

/// Every entry still queued, in flight or failed, oldest first.
pub(crate) fn entries(conn: &Connection) -> Result<Vec<OutboxEntry>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM outbox ORDER BY id"))?;
    let rows = stmt.query_map([], entry_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn counts(conn: &Connection) -> Result<OutboxCounts> {
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")?;
    let mut counts = OutboxCounts::default();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (state, n) = row?;
        let n = n.max(0) as u64;
        match EntryState::parse(&state)? {
            EntryState::Pending => counts.pending = n,
            EntryState::Syncing => counts.syncing = n,
            EntryState::Failed => counts.failed = n,
        }
    }
    Ok(counts)
}

/// The entries that may go out now, oldest first: for each record only its first
/// unfinished entry, only if that entry is pending and due, and never for a record
/// waiting on a manual conflict. Stops at the count or byte limit (always taking at
/// least one entry).
pub(crate) fn next_batch(
    conn: &Connection,
    limits: BatchLimits,
    now_ms: i64,
) -> Result<Vec<OutboxEntry>> {
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

/// Per collection: count and bytes of the entries due; and the last entry id counted.
pub(crate) type Due = (Vec<(String, u64, u64)>, i64);

/// Per collection, the entries a sync now would still send (in flight, or pending and
/// out of backoff), among those queued after `after_id`, with the highest id counted.
/// From 0 it reads the whole queue; from the last id counted it reads only the edits
/// made since, by id range, which is what a long push adds to its totals.
pub(crate) fn due_since(conn: &Connection, now_ms: i64, after_id: i64) -> Result<Due> {
    let mut stmt = conn.prepare_cached(
        "SELECT collection, count(*), coalesce(sum(bytes), 0), max(id) FROM outbox
             WHERE id > ?2 AND (state = 'syncing' OR (state = 'pending' AND next_attempt_at <= ?1))
             GROUP BY collection",
    )?;
    let mut last = after_id;
    let rows = stmt.query_map(params![now_ms, after_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?.max(0) as u64,
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (collection, n, bytes, max_id) = row?;
        last = last.max(max_id);
        out.push((collection, n, bytes));
    }
    Ok((out, last))
}

/// Earliest time a pending entry may be sent (for the status and the scheduler).
pub(crate) fn next_attempt_at(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'")?
        .query_row([], |r| r.get(0))?)
}

/// The record of a failed entry, if `entry_id` is one.
pub(crate) fn failed_record(conn: &Connection, entry_id: i64) -> Result<Option<(String, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT collection, record_id FROM outbox WHERE id = ?1 AND state = 'failed'",
        )?
        .query_row([entry_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The highest stamp held by any entry, for the clock at open.
pub(crate) fn max_hlc(conn: &Connection) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT max(hlc) FROM outbox", [], |r| r.get(0))?)
}

// ---- writes ----

/// A new entry, as a local edit or a settled conflict queues it.
#[derive(Debug)]
pub(crate) struct NewRow<'a> {
    pub collection: &'a str,
    pub record_id: &'a str,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    pub data_json: Option<&'a str>,
    pub hlc: &'a str,
    pub force: bool,
}

/// Approximate wire size of an op: the envelope (op_id, names, hlc, punctuation) is
/// about 150 bytes.
fn op_bytes(collection: &str, id: &str, json: Option<&str>) -> i64 {
    (150 + collection.len() + id.len() + json.map_or(0, str::len)) as i64
}

pub(crate) fn insert(tx: &Tx<'_>, e: &NewRow<'_>) -> Result<()> {
    let data = e.data_json.filter(|_| e.kind != OpKind::Delete);
    tx.prepare_cached(
        "INSERT INTO outbox (op_id, collection, record_id, kind, base_version, data, hlc, force,
                             state, created_at, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10)",
    )?
    .execute(params![
        uuid::Uuid::now_v7().to_string(),
        e.collection,
        e.record_id,
        e.kind.as_str(),
        e.base_version,
        data,
        e.hlc,
        e.force,
        tx.now(),
        op_bytes(e.collection, e.record_id, data)
    ])?;
    Ok(())
}

/// Folds a new edit into the record's open tail entry (see [`open_tail`]).
pub(crate) fn coalesce(
    tx: &Tx<'_>,
    tail_id: i64,
    (collection, id): (&str, &str),
    kind: OpKind,
    data_json: Option<&str>,
    hlc: &str,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET kind = ?2, data = ?3, hlc = ?4, bytes = ?5, created_at = ?6 WHERE id = ?1",
    )?
    .execute(params![
        tail_id,
        kind.as_str(),
        data_json,
        hlc,
        op_bytes(collection, id, data_json),
        tx.now()
    ])?;
    Ok(())
}

pub(crate) fn delete(tx: &mut Tx<'_>, entry_id: i64) -> Result<()> {
    tx.delete_stamped("DELETE FROM outbox WHERE id = ?1", [entry_id])?;
    Ok(())
}

/// Every entry goes: the signed-out user's queue leaves the device (or its seal).
pub(crate) fn delete_all(tx: &mut Tx<'_>) -> Result<()> {
    tx.delete_stamped("DELETE FROM outbox", [])?;
    Ok(())
}

/// Schema 2 kept applied entries as `synced`; the migration to 3 drops them, saving
/// the clock, since they may hold the highest stamp this device issued.
pub(crate) fn drop_synced(tx: &mut Tx<'_>) -> Result<()> {
    tx.delete_stamped("DELETE FROM outbox WHERE state = 'synced'", [])?;
    Ok(())
}

/// Drops everything queued for a record (its conflict was settled another way).
pub(crate) fn delete_for_record(tx: &mut Tx<'_>, collection: &str, id: &str) -> Result<()> {
    tx.delete_stamped(
        "DELETE FROM outbox WHERE collection = ?1 AND record_id = ?2",
        params![collection, id],
    )?;
    Ok(())
}

/// An applied entry. Its data stays JSON text: only a record with later edits queued
/// needs it, and a push settles hundreds of entries per batch.
#[derive(Debug)]
pub(crate) struct Applied {
    pub collection: String,
    pub record_id: String,
    pub kind: OpKind,
    pub data: Option<String>,
}

/// The server holds this edit now: the entry has done its work and goes (its op_id
/// lives on in the server's answers, which is what makes resends safe).
pub(crate) fn take_applied(tx: &mut Tx<'_>, entry_id: i64) -> Result<Option<Applied>> {
    tx.take_stamped(
        "DELETE FROM outbox WHERE id = ?1 RETURNING collection, record_id, kind, data",
        [entry_id],
        |r| {
            Ok(Applied {
                collection: r.get(0)?,
                record_id: r.get(1)?,
                kind: kind_col(r, 2)?,
                data: r.get(3)?,
            })
        },
    )
}

/// Later edits of a record were made on top of an op the server applied at `version`.
pub(crate) fn rebase_later(
    tx: &Tx<'_>,
    collection: &str,
    id: &str,
    after: i64,
    version: i64,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET base_version = ?3 WHERE collection = ?1 AND record_id = ?2 AND id > ?4",
    )?
    .execute(params![collection, id, version, after])?;
    Ok(())
}

/// Marks entries as handed to the network. From here on they are never coalesced.
pub(crate) fn mark_in_flight(tx: &Tx<'_>, ids: &[i64]) -> Result<()> {
    // One statement for the whole batch: it runs before every push request.
    let ids = serde_json::to_string(ids)?;
    tx.prepare_cached(
        "UPDATE outbox SET state = 'syncing', sent = 1, attempts = attempts + 1
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'",
    )?
    .execute([ids])?;
    Ok(())
}

/// A transient failure: pending again, not before `next_attempt_at_ms`.
pub(crate) fn set_retry(
    tx: &Tx<'_>,
    entry_id: i64,
    error: &ErrorBody,
    next_attempt_at_ms: i64,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET state = 'pending', next_attempt_at = ?2, last_error_code = ?3,
         last_error = ?4 WHERE id = ?1",
    )?
    .execute(params![
        entry_id,
        next_attempt_at_ms,
        error.code,
        error.message
    ])?;
    Ok(())
}

/// A permanent rejection: the entry is kept as failed. Returns its record.
pub(crate) fn set_failed(
    tx: &Tx<'_>,
    entry_id: i64,
    error: &ErrorBody,
) -> Result<Option<(String, String)>> {
    Ok(tx
        .prepare_cached(
            "UPDATE outbox SET state = 'failed', last_error_code = ?2, last_error = ?3
             WHERE id = ?1 RETURNING collection, record_id",
        )?
        .query_row(params![entry_id, error.code, error.message], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// Not sent after all: back to pending with no penalty.
pub(crate) fn release(tx: &Tx<'_>, entry_id: i64) -> Result<()> {
    tx.prepare_cached("UPDATE outbox SET state = 'pending' WHERE id = ?1 AND state = 'syncing'")?
        .execute([entry_id])?;
    Ok(())
}

/// The server deferred an in-flight entry: pending again, and the send that
/// `mark_in_flight` counted is taken back, so a deferral never lengthens a backoff.
pub(crate) fn defer(tx: &Tx<'_>, entry_id: i64, not_before_ms: Option<i64>) -> Result<()> {
    tx.prepare_cached(
        "UPDATE outbox SET state = 'pending', attempts = max(attempts - 1, 0),
         next_attempt_at = coalesce(?2, next_attempt_at)
         WHERE id = ?1 AND state = 'syncing'",
    )?
    .execute(params![entry_id, not_before_ms])?;
    Ok(())
}

/// Every in-flight entry goes back to pending (at open, after a crash; on cancel).
/// They stay `sent`, so they keep their op_id and the server answers a repeat with its
/// first answer.
pub(crate) fn release_all(conn: &Connection) -> Result<usize> {
    Ok(conn
        .prepare_cached("UPDATE outbox SET state = 'pending' WHERE state = 'syncing'")?
        .execute([])?)
}

/// Every queued entry is due now, its backoff waived: the user is signing out and
/// asked for everything to go. Returns how many.
pub(crate) fn due_now(tx: &Tx<'_>) -> Result<usize> {
    Ok(tx
        .prepare_cached(
            "UPDATE outbox SET next_attempt_at = 0 WHERE state = 'pending' AND next_attempt_at > 0",
        )?
        .execute([])?)
}

/// Every failed entry is queued again, due now. Returns how many.
pub(crate) fn retry_failed(tx: &Tx<'_>) -> Result<usize> {
    Ok(tx
        .prepare_cached(
            "UPDATE outbox SET state = 'pending', next_attempt_at = 0 WHERE state = 'failed'",
        )?
        .execute([])?)
}
