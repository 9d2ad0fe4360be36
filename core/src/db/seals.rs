//! Sealed data: what a user who signed out keeping unsynced edits left on the device,
//! kept under their user id until the same user signs in again.
//!
//! A shared tablet passes from nurse to nurse. Her edits that did not reach the server
//! must not be lost, and must not be shown to the next nurse. At sign-out they move, in
//! the transaction that empties the live tables, into the `sealed_*` twins of those
//! tables, which no query reads; they move back when a store is opened for the same
//! user id, in the transaction that makes her the owner again.
//!
//! This module owns the sealed tables, and is the one writer of the live tables besides
//! their owners: it moves whole rows in and out and never edits one. Dropping the live
//! rows afterwards is their owners' job (stamped rows through `Tx::delete_stamped`).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Tx, meta};
use crate::error::{Error, Result};

/// The tables a seal holds rows of, each with its twin `sealed_<table>`.
const TABLES: [&str; 4] = ["records", "outbox", "conflicts", "attachments"];

/// Which rows of each table a seal takes: the records that are not plainly synced (an
/// edit queued, rejected or in conflict), every queued or rejected edit, and the whole
/// conflict log, whose losing versions are edits the server did not take; and the
/// files whose upload is not done (the rest are on the server, or were downloaded).
fn kept(table: &str) -> &'static str {
    match table {
        "records" => {
            "sync_state <> 'synced'
             OR EXISTS (SELECT 1 FROM outbox o
                        WHERE o.collection = records.collection AND o.record_id = records.id)
             OR EXISTS (SELECT 1 FROM conflicts c WHERE c.resolved = 0
                        AND c.collection = records.collection AND c.record_id = records.id)"
        }
        "attachments" => UNSENT_FILE,
        _ => "1",
    }
}

/// The files a seal keeps: those not (yet) on the server.
const UNSENT_FILE: &str = "upload IN ('pending', 'failed')";

/// The live table's columns, as a list for INSERT … SELECT: the copies name them,
/// so the twins need the same columns but not the same order.
fn columns(conn: &Connection, table: &str) -> Result<String> {
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if names.is_empty() {
        return Err(Error::Database(format!("no table {table}")));
    }
    Ok(names.join(", "))
}

/// The replica id of `user`'s seal, if they left one.
pub(crate) fn replica(conn: &Connection, user: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT replica_id FROM seals WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?)
}

/// Whether the live tables hold anything a seal would keep or a sign-out would remove.
pub(crate) fn live_is_empty(conn: &Connection) -> Result<bool> {
    for table in TABLES {
        let any: bool =
            conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get(0)
            })?;
        if any {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the live tables hold edits or conflicts a seal would keep.
pub(crate) fn anything_to_keep(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM outbox) OR EXISTS (SELECT 1 FROM conflicts)
             OR EXISTS (SELECT 1 FROM attachments WHERE {UNSENT_FILE})"
        ),
        [],
        |r| r.get(0),
    )?)
}

/// The files any seal holds, whoever left it: their bytes must stay in the folder.
pub(crate) fn sealed_files(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT DISTINCT sha256 FROM sealed_attachments")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Copies what `user` keeps into the sealed tables, with the replica id their stamps
/// carry. Entries that were in flight are sealed as pending: they go out again, with
/// the same op_id, once the user is back.
pub(crate) fn seal(tx: &Tx<'_>, user: &str, replica_id: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO seals (user_id, replica_id, sealed_at) VALUES (?1, ?2, ?3)",
        params![user, replica_id, tx.now()],
    )
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            Error::Database(format!("user {user:?} already has sealed data"))
        }
        _ => e.into(),
    })?;
    for table in TABLES {
        let cols = columns(tx, table)?;
        tx.execute(
            &format!(
                "INSERT INTO sealed_{table} (user_id, {cols}) SELECT ?1, {cols} FROM {table}
                 WHERE {}",
                kept(table)
            ),
            [user],
        )?;
    }
    tx.execute(
        "UPDATE sealed_outbox SET state = 'pending' WHERE user_id = ?1 AND state = 'syncing'",
        [user],
    )?;
    Ok(())
}

/// Moves `user`'s sealed rows back into the live tables, which must be empty, and
/// restores their replica id. Returns false when they left no seal.
pub(crate) fn unseal(tx: &rusqlite::Transaction<'_>, user: &str) -> Result<bool> {
    let Some(replica_id) = replica(tx, user)? else {
        return Ok(false);
    };
    for table in TABLES {
        let cols = columns(tx, table)?;
        tx.execute(
            &format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM sealed_{table} WHERE user_id = ?1"
            ),
            [user],
        )?;
        tx.execute(
            &format!("DELETE FROM sealed_{table} WHERE user_id = ?1"),
            [user],
        )?;
    }
    tx.execute("DELETE FROM seals WHERE user_id = ?1", [user])?;
    meta::set(tx, &meta::Key::ReplicaId, &replica_id)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tables_have_the_columns_of_the_live_ones() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        for table in TABLES {
            let live = columns(&conn, table).unwrap();
            let sealed = columns(&conn, &format!("sealed_{table}")).unwrap();
            assert_eq!(sealed, format!("user_id, {live}"), "{table}");
        }
    }
}
