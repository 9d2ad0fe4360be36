//! The `cursors` table: where each collection's pull continues.
//!
//! A cursor moves only in the transaction that applies the page it came with, so a
//! page is never applied without its cursor moving, nor the cursor moved past a page
//! that was not applied.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// The pull cursor of a collection (`None`: from the beginning).
pub(crate) fn get(conn: &Connection, collection: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM cursors WHERE collection = ?1")?
        .query_row([collection], |r| r.get(0))
        .optional()?)
}

pub(crate) fn set(conn: &Connection, collection: &str, cursor: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (collection, cursor) VALUES (?1, ?2)
         ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor",
    )?
    .execute(params![collection, cursor])?;
    Ok(())
}

/// Every cursor goes with the signed-out user: the next user pulls from the beginning.
pub(crate) fn remove_all(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM cursors", [])?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, collection: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM cursors WHERE collection = ?1")?
        .execute([collection])?;
    Ok(())
}
