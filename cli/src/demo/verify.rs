//! Reads the server's SQLite file directly, read-only, to check the demo's claims
//! against the server's own records, idempotency table and append-only audit log,
//! rather than against what the devices believe.
//!
//! The schema is the reference server's (`server/src/storage/sqlite.rs`): `records`
//! (one row per record, tombstones included), `ops` (the first answer to every op_id,
//! per user) and `audit` (one row per applied op).

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use super::DemoResult;

/// One record as the server stores it.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// `None` for a tombstone.
    pub data: Option<Value>,
    pub version: i64,
    pub hlc: String,
}

/// What the server's database holds.
#[derive(Debug, Default)]
pub struct ServerDb {
    pub records: BTreeMap<(String, String), ServerRecord>,
    /// Applied ops per record, from the audit log.
    pub applied: BTreeMap<(String, String), i64>,
    pub audit_rows: i64,
    /// Op ids answered (applied, conflict or rejected), from the idempotency table.
    pub answered_ops: i64,
    /// (user, op_id) pairs that the audit shows applied more than once.
    pub ops_applied_twice: i64,
}

impl ServerDb {
    pub fn read(path: &Path) -> DemoResult<ServerDb> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut db = ServerDb::default();
        let mut stmt =
            conn.prepare("SELECT collection, record_id, data, deleted, version, hlc FROM records")?;
        let rows = stmt.query_map([], |r| {
            let data: Option<String> = r.get(2)?;
            let deleted: bool = r.get(3)?;
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                data.filter(|_| !deleted),
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        for row in rows {
            let (key, data, version, hlc) = row?;
            let data = data.map(|s| serde_json::from_str(&s)).transpose()?;
            db.records.insert(key, ServerRecord { data, version, hlc });
        }
        let mut stmt =
            conn.prepare("SELECT collection, record_id, count(*) FROM audit GROUP BY 1, 2")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (key, n) = row?;
            db.audit_rows += n;
            db.applied.insert(key, n);
        }
        db.answered_ops = conn.query_row("SELECT count(*) FROM ops", [], |r| r.get(0))?;
        db.ops_applied_twice = conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM audit GROUP BY user, op_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )?;
        Ok(db)
    }

    /// Live records of a collection: id → (data, version).
    pub fn live(&self, collection: &str) -> BTreeMap<String, (Value, i64)> {
        self.records
            .iter()
            .filter(|((c, _), _)| c == collection)
            .filter_map(|((_, id), r)| r.data.clone().map(|d| (id.clone(), (d, r.version))))
            .collect()
    }

    pub fn get(&self, collection: &str, id: &str) -> Option<&ServerRecord> {
        self.records.get(&(collection.to_owned(), id.to_owned()))
    }

    /// No op had a second effect: no op_id appears twice in the audit, and every
    /// record's version is exactly the number of ops applied to it (each applied op
    /// makes one new version, so a duplicate effect would show as a surplus).
    pub fn exactly_once_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.ops_applied_twice > 0 {
            problems.push(format!(
                "{} op_ids applied more than once in the audit",
                self.ops_applied_twice
            ));
        }
        for ((c, id), r) in &self.records {
            let applied = self
                .applied
                .get(&(c.clone(), id.clone()))
                .copied()
                .unwrap_or(0);
            if applied != r.version {
                problems.push(format!(
                    "{c}/{id}: version {} but {applied} applied ops in the audit",
                    r.version
                ));
            }
        }
        problems
    }
}

/// The value of a CRDT counter field (0 when the field is missing).
pub fn counter_value(data: &Value, field: &str) -> Option<i64> {
    match data.get(field) {
        None => Some(0),
        Some(v) => outpost_core::crdt::Crdt::from_json(v)
            .ok()
            .and_then(|c| c.value().as_i64()),
    }
}
