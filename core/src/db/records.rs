//! The `records` table: each record's current local data, the last state the server
//! confirmed (`base`, `version`, `base_hlc`) and the newest server state pulled while
//! local edits were pending (`remote`, the stash).
//!
//! This is the only module with SQL that writes `records` (besides `seals`, which moves
//! a signed-out user's rows out and back whole). Each function is one
//! transition of a record's row, named for what it means (a local edit, an adopted
//! server state, a pulled change), so the rules about which row may change when (a
//! pull never touches a record with local edits; a base moves only with an applied op)
//! are kept here, not at every caller.

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{Tx, json_col, unreadable};
use crate::error::Result;
use crate::protocol::{Change, JsonObject};
use crate::query::sql::{self, QuerySql};
use crate::record::{Record, SyncState};
use rusqlite::types::Value as SqlValue;

const RECORD_COLUMNS: &str = "collection, id, data, version, hlc, sync_state, updated_at";
const RECORD_COLUMN_COUNT: usize = 7;

fn state_col(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<SyncState> {
    let s: String = r.get(col)?;
    SyncState::parse(&s).map_err(|e| unreadable(col, e))
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        collection: r.get(0)?,
        id: r.get(1)?,
        data: json_col(r, 2)?.unwrap_or_default(),
        version: r.get(3)?,
        hlc: r.get(4)?,
        sync_state: state_col(r, 5)?,
        updated_at_ms: r.get(6)?,
    })
}

// ---- reads ----

/// The live record, or `None` if it does not exist or is deleted.
pub(crate) fn get(conn: &Connection, collection: &str, id: &str) -> Result<Option<Record>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id = ?2 AND deleted = 0"
    ))?;
    Ok(stmt
        .query_row(params![collection, id], record_from_row)
        .optional()?)
}

fn page_args(q: &QuerySql) -> impl Iterator<Item = SqlValue> + '_ {
    q.args
        .iter()
        .cloned()
        .chain(q.page.iter().map(|n| SqlValue::Integer(*n)))
}

/// Live records selected by a query's SQL, in its order.
pub(crate) fn select(conn: &Connection, q: &QuerySql) -> Result<Vec<Record>> {
    let sql = format!("SELECT {RECORD_COLUMNS} {}{}", q.from_where, q.tail);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(page_args(q)), record_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// [`select`], with each record's sort key values (for a keyset cursor).
pub(crate) fn select_keyed(
    conn: &Connection,
    q: &QuerySql,
) -> Result<Vec<(Record, Vec<SqlValue>)>> {
    let keys: String = q.keys.iter().map(|(k, _)| format!(", {k}")).collect();
    let sql = format!("SELECT {RECORD_COLUMNS}{keys} {}{}", q.from_where, q.tail);
    let mut stmt = conn.prepare_cached(&sql)?;
    let n = q.keys.len();
    let rows = stmt.query_map(params_from_iter(page_args(q)), |r| {
        let record = record_from_row(r)?;
        let values = (0..n)
            .map(|i| r.get::<_, SqlValue>(RECORD_COLUMN_COUNT + i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((record, values))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn count(conn: &Connection, q: &QuerySql) -> Result<u64> {
    let sql = format!("SELECT count(*) {}", q.from_where);
    let mut stmt = conn.prepare_cached(&sql)?;
    let n: i64 = stmt.query_row(params_from_iter(&q.args), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Whether the query selects any of `ids` (an observer's test of relevance). It stops
/// at the first: a first sync's page touches hundreds of records, and one is enough.
pub(crate) fn selects_any(conn: &Connection, q: &QuerySql, ids: &[&str]) -> Result<bool> {
    let mut args = vec![SqlValue::Text(serde_json::to_string(ids)?)];
    args.extend(q.args.iter().cloned());
    let mut stmt = conn.prepare_cached(&format!("{} LIMIT 1", sql::probe(q)))?;
    Ok(stmt.exists(params_from_iter(&args))?)
}

/// A row's data if it is live: `None` for a tombstone.
fn live_col(
    r: &rusqlite::Row<'_>,
    data: usize,
    deleted: usize,
) -> rusqlite::Result<Option<JsonObject>> {
    let deleted: bool = r.get(deleted)?;
    Ok(json_col(r, data)?.filter(|_| !deleted))
}

/// What a local edit needs of the stored row, tombstones included.
#[derive(Debug, Clone)]
pub(crate) struct EditRow {
    /// The live data; `None` for a tombstone.
    pub live: Option<JsonObject>,
    pub version: i64,
    pub sync_state: SyncState,
}

pub(crate) fn load_for_edit(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<EditRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT data, deleted, version, sync_state FROM records WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![collection, id], |r| {
            Ok(EditRow {
                live: live_col(r, 0, 1)?,
                version: r.get(2)?,
                sync_state: state_col(r, 3)?,
            })
        })
        .optional()?)
}

/// What settling a conflict needs: the local side, the synced base, and the stash.
#[derive(Debug, Clone)]
pub(crate) struct SettleRow {
    /// The live data; `None` for a tombstone.
    pub live: Option<JsonObject>,
    pub hlc: String,
    pub base: Option<JsonObject>,
    pub stash: Option<Change>,
}

pub(crate) fn load_for_settle(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<SettleRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT data, deleted, hlc, base, remote FROM records WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![collection, id], |r| {
            Ok(SettleRow {
                live: live_col(r, 0, 1)?,
                hlc: r.get(2)?,
                base: json_col(r, 3)?,
                stash: parse_stash(r.get(4)?),
            })
        })
        .optional()?)
}

/// A stash is our own serialisation of a `Change`, so one that does not parse is
/// treated as absent rather than wedging the record.
fn parse_stash(json: Option<String>) -> Option<Change> {
    json.and_then(|j| serde_json::from_str::<Change>(&j).ok())
}

/// The highest stamp held by any record, for the clock at open.
pub(crate) fn max_hlc(conn: &Connection) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT max(hlc) FROM records", [], |r| r.get(0))?)
}

/// The highest pull generation a full re-pull marked records of `collection` with.
pub(crate) fn max_pulled_gen(conn: &Connection, collection: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(pulled_gen), 0) FROM records WHERE collection = ?1")?
        .query_row([collection], |r| r.get(0))?)
}

/// Synced records of `collection` that a full re-pull of generation `gen_` did not
/// bring back.
pub(crate) fn not_pulled_since(
    conn: &Connection,
    collection: &str,
    gen_: i64,
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM records WHERE collection = ?1 AND pulled_gen < ?2 AND sync_state = 'synced'",
    )?;
    let ids = stmt
        .query_map(params![collection, gen_], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

// ---- writes ----

/// A local edit: the new data (`None` for a delete) and its stamp. The synced base and
/// version stay; the record is pending unless it is failed or conflicted.
pub(crate) fn write_local(
    tx: &Tx<'_>,
    collection: &str,
    id: &str,
    data_json: Option<&str>,
    hlc: &str,
    state: SyncState,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state, updated_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)
         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
           deleted = excluded.deleted, hlc = excluded.hlc,
           sync_state = excluded.sync_state, updated_at = excluded.updated_at",
    )?
    .execute(params![
        collection,
        id,
        data_json,
        data_json.is_none(),
        hlc,
        state.as_str(),
        tx.now()
    ])?;
    Ok(())
}

/// The record goes entirely (a create that never left the device, a tombstone the
/// server has, a record the server no longer returns).
pub(crate) fn delete(tx: &mut Tx<'_>, collection: &str, id: &str) -> Result<()> {
    tx.delete_stamped(
        "DELETE FROM records WHERE collection = ?1 AND id = ?2",
        params![collection, id],
    )?;
    Ok(())
}

/// Every record goes: the signed-out user's data leaves the device (or its seal).
pub(crate) fn delete_all(tx: &mut Tx<'_>) -> Result<()> {
    tx.delete_stamped("DELETE FROM records", [])?;
    Ok(())
}

/// The record becomes exactly the server's state `change` (gone if it is a tombstone
/// or absent), and any stash is cleared.
pub(crate) fn adopt(
    tx: &mut Tx<'_>,
    collection: &str,
    id: &str,
    change: Option<&Change>,
) -> Result<()> {
    let Some(c) = change.filter(|c| !c.deleted) else {
        return delete(tx, collection, id);
    };
    let data = serde_json::to_string(&c.data.clone().unwrap_or_default())?;
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state,
           updated_at, base, base_hlc)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, 'synced', ?6, ?3, ?5)
         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
           deleted = 0, version = excluded.version, hlc = excluded.hlc,
           sync_state = 'synced', updated_at = excluded.updated_at,
           base = excluded.base, base_hlc = excluded.base_hlc, remote = NULL",
    )?
    .execute(params![collection, id, data, c.version, c.hlc, tx.now()])?;
    Ok(())
}

/// A pulled change, applied only to a record with no local edits and no newer
/// version. Returns false when the record was left alone.
pub(crate) fn apply_pulled(tx: &mut Tx<'_>, change: &Change, pulled_gen: i64) -> Result<bool> {
    let (collection, id) = (&change.collection, &change.record_id);
    let n = match change.data.as_ref().filter(|_| !change.deleted) {
        Some(data) => tx
            .prepare_cached(
                "INSERT INTO records (collection, id, data, deleted, version, hlc,
                   sync_state, updated_at, base, base_hlc, pulled_gen)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, 'synced', ?6, ?3, ?5, ?7)
                 ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
                   deleted = 0, version = excluded.version, hlc = excluded.hlc,
                   updated_at = excluded.updated_at, base = excluded.base,
                   base_hlc = excluded.base_hlc, pulled_gen = excluded.pulled_gen
                 WHERE records.sync_state = 'synced'
                   AND records.version <= excluded.version",
            )?
            .execute(params![
                collection,
                id,
                serde_json::to_string(data)?,
                change.version,
                change.hlc,
                tx.now(),
                pulled_gen
            ])?,
        None => tx.delete_stamped(
            "DELETE FROM records WHERE collection = ?1 AND id = ?2
             AND sync_state = 'synced' AND version <= ?3",
            params![collection, id, change.version],
        )?,
    };
    Ok(n > 0)
}

/// Keeps the newest server state of a record with local edits aside, to settle
/// against when the edit's answer comes back.
pub(crate) fn stash(tx: &Tx<'_>, change: &Change) -> Result<()> {
    tx.prepare_cached(
        "UPDATE records SET remote = ?3 WHERE collection = ?1 AND id = ?2
         AND sync_state != 'synced'
         AND (remote IS NULL OR json_extract(remote, '$.version') < ?4)",
    )?
    .execute(params![
        change.collection,
        change.record_id,
        serde_json::to_string(change)?,
        change.version
    ])?;
    Ok(())
}

/// The server applied the record's last queued edit at `version`: local data is
/// exactly the server's now (a tombstone it has goes). But if a pull stashed a newer
/// server state while the edit was in flight, the server has moved on past the op (or
/// merged CRDT fields into it), and that state is the truth.
pub(crate) fn settle_synced(
    tx: &mut Tx<'_>,
    collection: &str,
    id: &str,
    version: i64,
) -> Result<()> {
    // The common case in one statement: no server state stashed, not deleted.
    let plain = tx
        .prepare_cached(
            "UPDATE records SET version = ?3, base = data, base_hlc = hlc, sync_state = 'synced'
             WHERE collection = ?1 AND id = ?2 AND remote IS NULL AND NOT deleted",
        )?
        .execute(params![collection, id, version])?;
    if plain == 1 {
        return Ok(());
    }
    let row: Option<(Option<String>, bool)> = tx
        .prepare_cached("SELECT remote, deleted FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (stash, deleted) = row.unwrap_or((None, false));
    if let Some(c) = parse_stash(stash).filter(|c| c.version >= version) {
        return adopt(tx, collection, id, Some(&c));
    }
    if deleted {
        return delete(tx, collection, id);
    }
    tx.prepare_cached(
        "UPDATE records SET version = ?3, base = data, base_hlc = hlc, sync_state = 'synced',
         remote = NULL WHERE collection = ?1 AND id = ?2",
    )?
    .execute(params![collection, id, version])?;
    Ok(())
}

/// The stored synced base, for moving it by an applied patch.
pub(crate) fn base(conn: &Connection, collection: &str, id: &str) -> Result<Option<JsonObject>> {
    Ok(conn
        .prepare_cached("SELECT base FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| json_col(r, 0))
        .optional()?
        .flatten())
}

/// An op applied while later edits stay queued: the base moves to what it carried.
pub(crate) fn move_base(
    tx: &Tx<'_>,
    collection: &str,
    id: &str,
    version: i64,
    base_json: Option<&str>,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE records SET version = ?3, base = ?4 WHERE collection = ?1 AND id = ?2",
    )?
    .execute(params![collection, id, version, base_json])?;
    Ok(())
}

/// Nothing is queued for the record any more: it returns to its last synced base, or
/// goes if the server never had it.
pub(crate) fn revert_to_base(tx: &mut Tx<'_>, collection: &str, id: &str) -> Result<()> {
    let row: Option<(i64, Option<String>)> = tx
        .prepare_cached("SELECT version, base FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((version, Some(base))) if version > 0 => {
            tx.prepare_cached(
                "UPDATE records SET data = ?3, deleted = 0, hlc = coalesce(base_hlc, hlc),
                 sync_state = 'synced' WHERE collection = ?1 AND id = ?2",
            )?
            .execute(params![collection, id, base])?;
            Ok(())
        }
        Some(_) => delete(tx, collection, id),
        None => Ok(()),
    }
}

/// A settled conflict's result, queued on top of the server state `remote`: that
/// state becomes the base, and the record is pending again.
pub(crate) fn rebase_pending(
    tx: &Tx<'_>,
    collection: &str,
    id: &str,
    data_json: Option<&str>,
    hlc: &str,
    remote: Option<&Change>,
) -> Result<()> {
    let remote_live = remote.filter(|c| !c.deleted).and_then(|c| c.data.as_ref());
    let base = remote_live.map(serde_json::to_string).transpose()?;
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state,
           updated_at, base, base_hlc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9)
         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
           deleted = excluded.deleted, version = excluded.version, hlc = excluded.hlc,
           sync_state = 'pending', updated_at = excluded.updated_at,
           base = excluded.base, base_hlc = excluded.base_hlc, remote = NULL",
    )?
    .execute(params![
        collection,
        id,
        data_json,
        data_json.is_none(),
        remote.map_or(0, |c| c.version),
        hlc,
        tx.now(),
        base,
        remote.map(|c| c.hlc.as_str()),
    ])?;
    Ok(())
}

pub(crate) fn set_state(tx: &Tx<'_>, collection: &str, id: &str, state: SyncState) -> Result<()> {
    tx.prepare_cached("UPDATE records SET sync_state = ?3 WHERE collection = ?1 AND id = ?2")?
        .execute(params![collection, id, state.as_str()])?;
    Ok(())
}

/// A manual conflict waits for the app; the stash it was settled against is spent.
pub(crate) fn mark_conflicted(tx: &Tx<'_>, collection: &str, id: &str) -> Result<()> {
    tx.prepare_cached(
        "UPDATE records SET sync_state = 'conflicted', remote = NULL
         WHERE collection = ?1 AND id = ?2",
    )?
    .execute(params![collection, id])?;
    Ok(())
}

/// Every failed record is pending again (the app retries its rejected edits).
pub(crate) fn retry_failed(tx: &Tx<'_>) -> Result<usize> {
    Ok(tx
        .prepare_cached("UPDATE records SET sync_state = 'pending' WHERE sync_state = 'failed'")?
        .execute([])?)
}
