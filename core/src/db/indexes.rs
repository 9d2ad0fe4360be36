//! The indexes and search tables the collections declare, kept as declared.
//!
//! An app adds an index when a screen gets slow and drops one it no longer needs, in a
//! release that finds devices full of data. So at every open the declared indexes are
//! compared with the ones in the file: missing ones are built, undeclared ones dropped,
//! and records and the outbox are never touched. Each index is a partial expression
//! index over one collection's live records, on exactly the expressions queries use
//! (`query::sql::extract`). Search fields get an FTS5 table per collection
//! (`fts[patients]`, a name no collection's tables can collide with), filled from the
//! records when declared and kept in step by triggers on `records`, so every write path
//! (local edits, pulled pages, conflict settlements, a full re-pull) updates it in the
//! same transaction. This module owns those tables, their triggers and `fts_keys`.

use rusqlite::Connection;

use crate::config::Collections;
use crate::db::meta;
use crate::error::Result;
use crate::protocol::validate_collection;
use crate::query::sql::{extract, path, search_table, search_table_name};

/// Name prefix of the declared indexes; the schema's own indexes do not use it.
const PREFIX: &str = "ix_";

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The name says what the index covers, so a changed declaration is a new name.
fn index_name(collection: &str, fields: &[String]) -> String {
    let fields = serde_json::to_string(fields).unwrap_or_default();
    format!("{PREFIX}{collection}{fields}")
}

/// Brings the file's declared indexes and search tables to `collections`.
pub(crate) fn apply(conn: &Connection, collections: &Collections) -> Result<()> {
    apply_indexes(conn, collections)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS fts_keys (
             key        INTEGER PRIMARY KEY,
             collection TEXT NOT NULL,
             id         TEXT NOT NULL,
             UNIQUE (collection, id)
         )",
    )?;
    rename_legacy(conn)?;
    let existing = search_tables(conn)?;
    for (collection, declared) in collections.iter() {
        let want = (!declared.search.is_empty())
            .then(|| serde_json::to_string(&declared.search))
            .transpose()?;
        let have = meta::get(conn, &meta::Key::Search(collection))?;
        let present = existing.iter().any(|c| c == collection);
        if want == have && present == want.is_some() {
            continue;
        }
        drop_search(conn, collection)?;
        if let Some(fields) = &want {
            create_search(conn, collection, &declared.search)?;
            meta::set(conn, &meta::Key::Search(collection), fields)?;
        }
    }
    // Search tables of collections that are no longer declared at all.
    for collection in existing {
        if collections.get(&collection).is_err() {
            drop_search(conn, &collection)?;
        }
    }
    Ok(())
}

fn apply_indexes(conn: &Connection, collections: &Collections) -> Result<()> {
    let mut wanted = Vec::new();
    for (collection, declared) in collections.iter() {
        for fields in &declared.indexes {
            let exprs: Vec<String> = fields.iter().map(|f| extract(f)).collect();
            // The id last: queries sort by it after the fields, so the index gives the
            // whole order and no temporary B-tree is needed.
            wanted.push((
                index_name(collection, fields),
                format!(
                    "ON records ({}, id, deleted) WHERE collection = '{collection}' AND deleted = 0",
                    exprs.join(", ")
                ),
                fields.len(),
            ));
        }
    }
    let existing: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'
             AND substr(name, 1, 3) = ?1",
        )?
        .query_map([PREFIX], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in &existing {
        if !wanted.iter().any(|(n, ..)| n == name) {
            conn.execute_batch(&format!("DROP INDEX {}", quote(name)))?;
        }
    }
    for (name, on, _) in &wanted {
        if !existing.contains(name) {
            conn.execute_batch(&format!("CREATE INDEX {} {on}", quote(name)))?;
        }
    }
    planner_hints(conn, &wanted)
}

/// Fixed statistics for the planner. Without any, SQLite takes `collection = ?` on the
/// primary key for as selective as an indexed field and scans the whole collection;
/// gathered ones would go stale as a first sync fills the file. So the hints say what
/// holds for every app: a collection holds most records, and a declared field narrows
/// them well.
fn planner_hints(conn: &Connection, indexes: &[(String, String, usize)]) -> Result<()> {
    // Creates sqlite_stat1 when missing, without reading any table.
    conn.execute_batch("ANALYZE sqlite_schema")?;
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'records'", [])?;
    let mut hint =
        conn.prepare("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('records', ?1, ?2)")?;
    hint.execute(["records", "1000000 1000000 1"])?;
    for (name, _, fields) in indexes {
        let per_field = vec!["10"; *fields].join(" ");
        hint.execute([name.as_str(), &format!("1000000 {per_field} 1 1")])?;
    }
    drop(hint);
    // Loads them into this connection; readers load them when they open.
    conn.execute_batch("ANALYZE sqlite_schema")?;
    Ok(())
}

/// The virtual tables in the file.
fn virtual_tables(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND sql LIKE 'CREATE VIRTUAL TABLE%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Collections that have a search table in the file.
fn search_tables(conn: &Connection) -> Result<Vec<String>> {
    Ok(virtual_tables(conn)?
        .into_iter()
        .filter_map(|n| Some(n.strip_prefix("fts[")?.strip_suffix(']')?.to_owned()))
        .collect())
}

/// The search triggers of a collection, by what they follow.
const TRIGGERS: [&str; 3] = ["ins", "del", "upd"];

fn trigger(collection: &str, suffix: &str) -> String {
    quote(&format!("{}_{suffix}", search_table_name(collection)))
}

/// Search tables of earlier versions were named `fts_<collection>`, which the schema's
/// `fts_keys` and the shadow tables of another collection's (`fts_a_data` for `a`)
/// could collide with. Each is renamed, FTS5 renaming its shadow tables and keeping
/// what it indexed, and gets its triggers under the new names; one that cannot be
/// read back is dropped, to be rebuilt from the records.
fn rename_legacy(conn: &Connection) -> Result<()> {
    for name in virtual_tables(conn)? {
        let Some(collection) = name.strip_prefix("fts_") else {
            continue;
        };
        for suffix in TRIGGERS {
            let old = quote(&format!("{name}_{suffix}"));
            conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {old}"))?;
        }
        let fields: Option<Vec<String>> = meta::get(conn, &meta::Key::Search(collection))?
            .and_then(|f| serde_json::from_str(&f).ok());
        match fields {
            Some(fields) if validate_collection(collection).is_ok() => {
                conn.execute_batch(&format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote(&name),
                    search_table(collection)
                ))?;
                create_triggers(conn, collection, &fields)?;
            }
            _ => {
                conn.execute_batch(&format!("DROP TABLE {}", quote(&name)))?;
                conn.execute("DELETE FROM fts_keys WHERE collection = ?1", [collection])?;
                meta::remove(conn, &meta::Key::Search(collection))?;
            }
        }
    }
    Ok(())
}

/// Merges each search table's segments into one, so the terms of deleted records are
/// gone from the index's pages rather than only marked deleted.
pub(crate) fn compact_search(conn: &Connection) -> Result<()> {
    for collection in search_tables(conn)? {
        let table = search_table(&collection);
        conn.execute_batch(&format!(
            "INSERT INTO {table} ({table}) VALUES ('optimize')"
        ))?;
    }
    Ok(())
}

fn drop_search(conn: &Connection, collection: &str) -> Result<()> {
    for suffix in TRIGGERS {
        conn.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS {}",
            trigger(collection, suffix)
        ))?;
    }
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {}",
        search_table(collection)
    ))?;
    conn.execute("DELETE FROM fts_keys WHERE collection = ?1", [collection])?;
    meta::remove(conn, &meta::Key::Search(collection))?;
    Ok(())
}

/// The text a search field contributes for the row `row` (`new`, `r`): a string, or
/// the strings of an array.
fn field_text(row: &str, field: &str) -> String {
    let p = path(field);
    format!(
        "CASE json_type({row}.data, {p}) WHEN 'text' THEN json_extract({row}.data, {p}) \
         WHEN 'array' THEN (SELECT group_concat(value, ' ') FROM json_each({row}.data, {p}) \
         WHERE type = 'text') END"
    )
}

/// A search table's columns, by position: FTS5 has its own rules for column names,
/// field names have ours.
fn columns(fields: &[String]) -> Vec<String> {
    (0..fields.len()).map(|i| format!("c{i}")).collect()
}

fn create_search(conn: &Connection, collection: &str, fields: &[String]) -> Result<()> {
    let table = search_table(collection);
    let columns = columns(fields);
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {table} USING fts5(id UNINDEXED, {}, \
         tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')",
        columns.join(", ")
    ))?;
    create_triggers(conn, collection, fields)?;
    // Fill it from the records already on the device.
    conn.execute(
        "INSERT OR IGNORE INTO fts_keys (collection, id)
         SELECT collection, id FROM records WHERE collection = ?1 AND deleted = 0",
        [collection],
    )?;
    let texts: Vec<String> = fields.iter().map(|f| field_text("r", f)).collect();
    conn.execute_batch(&format!(
        "INSERT INTO {table} (rowid, id, {}) SELECT k.key, r.id, {} FROM records r
         JOIN fts_keys k ON k.collection = r.collection AND k.id = r.id
         WHERE r.collection = '{collection}' AND r.deleted = 0",
        columns.join(", "),
        texts.join(", ")
    ))?;
    Ok(())
}

/// The triggers that keep a collection's search table in step with `records`.
fn create_triggers(conn: &Connection, collection: &str, fields: &[String]) -> Result<()> {
    let table = search_table(collection);
    let columns = columns(fields);
    let insert = |row: &str, condition: &str| {
        let texts: Vec<String> = fields.iter().map(|f| field_text(row, f)).collect();
        format!(
            "INSERT INTO {table} (rowid, id, {}) SELECT k.key, {row}.id, {} FROM fts_keys k \
             WHERE k.collection = '{collection}' AND k.id = {row}.id{condition};",
            columns.join(", "),
            texts.join(", ")
        )
    };
    // Not INSERT OR IGNORE: inside a trigger, the outer statement's conflict policy
    // (an upsert's) would override it.
    let key = |row: &str, condition: &str| {
        format!(
            "INSERT INTO fts_keys (collection, id) SELECT '{collection}', {row}.id \
             WHERE NOT EXISTS (SELECT 1 FROM fts_keys WHERE collection = '{collection}' \
             AND id = {row}.id){condition};"
        )
    };
    let unindex = |row: &str| {
        format!(
            "DELETE FROM {table} WHERE rowid = \
             (SELECT key FROM fts_keys WHERE collection = '{collection}' AND id = {row}.id);"
        )
    };
    conn.execute_batch(&format!(
        "CREATE TRIGGER {} AFTER INSERT ON records
         WHEN new.collection = '{collection}' AND new.deleted = 0 BEGIN
           {}
           {}
         END;
         CREATE TRIGGER {} AFTER DELETE ON records
         WHEN old.collection = '{collection}' BEGIN
           {}
           DELETE FROM fts_keys WHERE collection = '{collection}' AND id = old.id;
         END;
         CREATE TRIGGER {} AFTER UPDATE OF data, deleted ON records
         WHEN new.collection = '{collection}' BEGIN
           {}
           {}
           {}
         END;",
        trigger(collection, "ins"),
        key("new", ""),
        insert("new", ""),
        trigger(collection, "del"),
        unindex("old"),
        trigger(collection, "upd"),
        unindex("old"),
        key("new", " AND new.deleted = 0"),
        insert("new", " AND new.deleted = 0"),
    ))?;
    Ok(())
}
