//! The `conflicts` table: the conflict log. Every losing version is kept here, under
//! every strategy, and open manual conflicts wait here for the app.
//!
//! This is the only module with SQL that reads or writes `conflicts`, besides `seals`,
//! which moves whole rows of a signed-out user in and out.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Tx, json_col, unreadable};
use crate::config::ConflictStrategy;
use crate::conflict::Conflict;
use crate::error::{Error, Result};
use crate::protocol::JsonObject;

const CONFLICT_COLUMNS: &str = "id, collection, record_id, strategy, base, local, remote, \
     remote_version, outcome, resolved, created_at";

fn conflict_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conflict> {
    let strategy: String = r.get(3)?;
    let strategy = ConflictStrategy::parse(&strategy)
        .ok_or_else(|| unreadable(3, Error::corrupt("conflicts", "strategy", &strategy)))?;
    Ok(Conflict {
        id: r.get(0)?,
        collection: r.get(1)?,
        record_id: r.get(2)?,
        strategy,
        base: json_col(r, 4)?,
        local: json_col(r, 5)?,
        remote: json_col(r, 6)?,
        remote_version: r.get(7)?,
        outcome: r.get(8)?,
        resolved: r.get(9)?,
        created_at_ms: r.get(10)?,
    })
}

fn list(conn: &Connection, only_open: bool) -> Result<Vec<Conflict>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE resolved = 0 OR ?1 = 0 ORDER BY id"
    ))?;
    let rows = stmt.query_map([only_open], conflict_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Conflicts waiting for the app's decision, oldest first.
pub(crate) fn open(conn: &Connection) -> Result<Vec<Conflict>> {
    list(conn, true)
}

/// The whole log, oldest first.
pub(crate) fn all(conn: &Connection) -> Result<Vec<Conflict>> {
    list(conn, false)
}

pub(crate) fn open_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM conflicts WHERE resolved = 0")?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// An open conflict by id.
pub(crate) fn get_open(conn: &Connection, id: i64) -> Result<Option<Conflict>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = ?1 AND resolved = 0"
        ))?
        .query_row([id], conflict_from_row)
        .optional()?)
}

fn to_json(o: Option<&JsonObject>) -> Result<Option<String>> {
    Ok(o.map(serde_json::to_string).transpose()?)
}

/// A conflict as it is logged. `outcome` is `manual` for one left open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewConflict<'a> {
    pub collection: &'a str,
    pub record_id: &'a str,
    pub strategy: ConflictStrategy,
    pub base: Option<&'a JsonObject>,
    pub local: Option<&'a JsonObject>,
    pub remote: Option<&'a JsonObject>,
    pub remote_version: i64,
    pub outcome: &'a str,
}

pub(crate) fn insert(tx: &Tx<'_>, c: &NewConflict<'_>) -> Result<Conflict> {
    let resolved = c.outcome != "manual";
    tx.prepare_cached(
        "INSERT INTO conflicts (collection, record_id, strategy, base, local, remote,
           remote_version, outcome, resolved, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        c.collection,
        c.record_id,
        c.strategy.as_str(),
        to_json(c.base)?,
        to_json(c.local)?,
        to_json(c.remote)?,
        c.remote_version,
        c.outcome,
        resolved,
        tx.now()
    ])?;
    Ok(Conflict {
        id: tx.last_insert_rowid(),
        collection: c.collection.to_owned(),
        record_id: c.record_id.to_owned(),
        strategy: c.strategy,
        base: c.base.cloned(),
        local: c.local.cloned(),
        remote: c.remote.cloned(),
        remote_version: c.remote_version,
        outcome: c.outcome.to_owned(),
        resolved,
        created_at_ms: tx.now(),
    })
}

/// The whole log goes with the signed-out user's data (or into their seal).
pub(crate) fn delete_all(tx: &Tx<'_>) -> Result<()> {
    tx.execute("DELETE FROM conflicts", [])?;
    Ok(())
}

pub(crate) fn mark_resolved(tx: &Tx<'_>, id: i64, outcome: &str) -> Result<()> {
    tx.prepare_cached("UPDATE conflicts SET resolved = 1, outcome = ?2 WHERE id = ?1")?
        .execute(params![id, outcome])?;
    Ok(())
}
