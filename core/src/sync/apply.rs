//! The database side of sync: applying pulled pages, settling conflicts, the conflict
//! log and pull cursors.
//!
//! Each operation here is one transaction, so an interrupted sync (a cancel, a deadline,
//! a killed app) leaves either the whole step or none of it: a page and its cursor move
//! together, and a conflict's outcome, its log row and its re-queued op move together.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::clock::Hlc;
use crate::config::ConflictStrategy;
use crate::conflict::{self, Decision, Side, Winner};
use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::outbox::OutboxEntry;
use crate::protocol::{Change, JsonObject, OpKind, validate_record};
use crate::store::{Store, WriteTx};

/// A conflict as kept in the log: every losing version is recorded, under every strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub id: i64,
    pub collection: String,
    pub record_id: String,
    pub strategy: ConflictStrategy,
    /// The last version both sides agreed on (`None` if the record was new).
    pub base: Option<JsonObject>,
    /// The device's version (`None` if deleted locally).
    pub local: Option<JsonObject>,
    /// The server's version (`None` if deleted or missing there).
    pub remote: Option<JsonObject>,
    pub remote_version: i64,
    /// `local`, `remote` or `merged` when settled by the strategy; `manual` while open;
    /// `resolved_local`, `resolved_remote` or `resolved_merged` after `resolve`.
    pub outcome: String,
    pub resolved: bool,
    pub created_at_ms: i64,
}

/// The app's answer to a manual conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Keep the device's version (with any edits made since).
    KeepLocal,
    /// Take the server's version.
    KeepRemote,
    /// Use this record instead (an edited merge).
    Merged(JsonObject),
}

/// What settling a conflict did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settled {
    pub conflict: Conflict,
    pub manual: bool,
}

const CONFLICT_COLUMNS: &str = "id, collection, record_id, strategy, base, local, remote, \
     remote_version, outcome, resolved, created_at";

fn parse_obj(s: Option<String>) -> rusqlite::Result<Option<JsonObject>> {
    s.map(|s| serde_json::from_str::<JsonObject>(&s))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn conflict_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conflict> {
    Ok(Conflict {
        id: r.get(0)?,
        collection: r.get(1)?,
        record_id: r.get(2)?,
        strategy: ConflictStrategy::parse(&r.get::<_, String>(3)?).unwrap_or_default(),
        base: parse_obj(r.get(4)?)?,
        local: parse_obj(r.get(5)?)?,
        remote: parse_obj(r.get(6)?)?,
        remote_version: r.get(7)?,
        outcome: r.get(8)?,
        resolved: r.get(9)?,
        created_at_ms: r.get(10)?,
    })
}

fn to_json(o: Option<&JsonObject>) -> Result<Option<String>> {
    Ok(o.map(serde_json::to_string).transpose()?)
}

/// The local row, as conflict settlement needs it.
struct LocalRow {
    data: Option<JsonObject>,
    deleted: bool,
    hlc: String,
    base: Option<JsonObject>,
}

fn load_local(tx: &Transaction<'_>, collection: &str, id: &str) -> Result<Option<LocalRow>> {
    let row = tx
        .prepare_cached(
            "SELECT data, deleted, hlc, base FROM records WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![collection, id], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((data, deleted, hlc, base)) = row else {
        return Ok(None);
    };
    Ok(Some(LocalRow {
        data: parse_obj(data)?,
        deleted,
        hlc,
        base: parse_obj(base)?,
    }))
}

/// The lowest possible stamp, for a remote state with no usable HLC.
fn min_hlc() -> Hlc {
    Hlc::new(0, 0, "")
}

impl WriteTx<'_> {
    /// The record now holds exactly the server's state.
    fn adopt_remote(&mut self, collection: &str, id: &str, change: Option<&Change>) -> Result<()> {
        match change.filter(|c| !c.deleted) {
            Some(c) => {
                let data = serde_json::to_string(&c.data.clone().unwrap_or_default())?;
                self.tx
                    .prepare_cached(
                        "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state,
                           updated_at, base, base_hlc)
                         VALUES (?1, ?2, ?3, 0, ?4, ?5, 'synced', ?6, ?3, ?5)
                         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
                           deleted = 0, version = excluded.version, hlc = excluded.hlc,
                           sync_state = 'synced', updated_at = excluded.updated_at,
                           base = excluded.base, base_hlc = excluded.base_hlc, remote = NULL",
                    )?
                    .execute(params![collection, id, data, c.version, c.hlc, self.now])?;
            }
            None => {
                self.tx
                    .prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
                    .execute(params![collection, id])?;
            }
        }
        self.event.add(collection, id);
        Ok(())
    }

    fn drop_unfinished(&mut self, collection: &str, id: &str) -> Result<()> {
        self.save_clock = true;
        self.tx
            .prepare_cached("DELETE FROM outbox WHERE collection = ?1 AND record_id = ?2")?
            .execute(params![collection, id])?;
        Ok(())
    }

    /// Replaces everything queued for a record with one op carrying `result`, made on top
    /// of the server's `remote` state. `force` only where the local side must win outright
    /// (client_wins); a merge or an app's resolution goes unforced, so that if the server
    /// moved again meanwhile it conflicts again instead of overwriting an edit nobody saw.
    /// `stamp` keeps the winning edit's HLC; `None` makes this a new edit.
    fn requeue(
        &mut self,
        collection: &str,
        id: &str,
        result: Option<&JsonObject>,
        remote: Option<&Change>,
        force: bool,
        stamp: Option<String>,
    ) -> Result<()> {
        self.drop_unfinished(collection, id)?;
        let hlc = match stamp {
            Some(s) => s,
            None => self.clock.tick(self.now.max(0) as u64).to_string(),
        };
        let remote_version = remote.map_or(0, |c| c.version);
        let remote_live = remote.filter(|c| !c.deleted).and_then(|c| c.data.as_ref());
        let data = to_json(result)?;
        self.tx
            .prepare_cached(
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
                data,
                result.is_none(),
                remote_version,
                hlc,
                self.now,
                to_json(remote_live)?,
                remote.map(|c| c.hlc.as_str()),
            ])?;
        let kind = if result.is_some() {
            OpKind::Put
        } else {
            OpKind::Delete
        };
        let bytes = 150 + collection.len() + id.len() + data.as_ref().map_or(0, String::len);
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (op_id, collection, record_id, kind, base_version, data, hlc,
                   force, state, created_at, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?10, 'pending', ?8, ?9)",
            )?
            .execute(params![
                uuid::Uuid::now_v7().to_string(),
                collection,
                id,
                kind.as_str(),
                remote.map(|c| c.version),
                data,
                hlc,
                self.now,
                bytes as i64,
                force
            ])?;
        self.event.add(collection, id);
        Ok(())
    }

    fn log_conflict(
        &self,
        collection: &str,
        id: &str,
        strategy: ConflictStrategy,
        (base, local, remote): (Option<&JsonObject>, Option<&JsonObject>, Option<&Change>),
        outcome: &str,
    ) -> Result<Conflict> {
        let remote_data = remote.filter(|c| !c.deleted).and_then(|c| c.data.as_ref());
        let remote_version = remote.map_or(0, |c| c.version);
        let resolved = outcome != "manual";
        self.tx
            .prepare_cached(
                "INSERT INTO conflicts (collection, record_id, strategy, base, local, remote,
                   remote_version, outcome, resolved, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                collection,
                id,
                strategy.as_str(),
                to_json(base)?,
                to_json(local)?,
                to_json(remote_data)?,
                remote_version,
                outcome,
                resolved,
                self.now
            ])?;
        Ok(Conflict {
            id: self.tx.last_insert_rowid(),
            collection: collection.to_owned(),
            record_id: id.to_owned(),
            strategy,
            base: base.cloned(),
            local: local.cloned(),
            remote: remote_data.cloned(),
            remote_version,
            outcome: outcome.to_owned(),
            resolved,
            created_at_ms: self.now,
        })
    }

    fn observe(&mut self, hlc: &str) {
        if let Ok(h) = hlc.parse::<Hlc>() {
            self.save_clock |= self.clock.observe(&h, self.now.max(0) as u64);
        }
    }
}

impl Store {
    /// The pull cursor of a collection (`None`: from the beginning).
    pub(crate) fn cursor(&self, collection: &str) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT cursor FROM cursors WHERE collection = ?1")?
                .query_row([collection], |r| r.get(0))
                .optional()?)
        })
    }

    /// The generation of an unfinished full re-pull of `collection`, if one is running.
    pub(crate) fn resync_generation(&self, collection: &str) -> Result<Option<i64>> {
        self.read(|conn| {
            let v: Option<String> = conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([format!("resync:{collection}")], |r| r.get(0))
                .optional()?;
            Ok(v.and_then(|v| v.parse().ok()))
        })
    }

    /// Starts a full re-pull after `cursor_expired`: the cursor goes, and records the
    /// re-pull does not bring back are dropped at its end (unless they hold local edits).
    pub(crate) fn begin_resync(&self, collection: &str) -> Result<i64> {
        self.write(ChangeOrigin::Remote, |w| {
            let current: i64 = w.tx.query_row(
                "SELECT coalesce(max(pulled_gen), 0) FROM records WHERE collection = ?1",
                [collection],
                |r| r.get(0),
            )?;
            let gen_ = current + 1;
            w.tx.execute("DELETE FROM cursors WHERE collection = ?1", [collection])?;
            w.tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![format!("resync:{collection}"), gen_.to_string()],
            )?;
            Ok(gen_)
        })
    }

    /// Applies one pulled page and its cursor in one transaction. Records with local
    /// edits are left alone: their conflict is settled when the edit is pushed.
    pub(crate) fn apply_pull_page(
        &self,
        collection: &str,
        changes: &[Change],
        cursor: &str,
        finish_resync: Option<i64>,
    ) -> Result<usize> {
        self.write(ChangeOrigin::Remote, |w| {
            let gen_ =
                w.tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                    .query_row([format!("resync:{collection}")], |r| r.get::<_, String>(0))
                    .optional()?
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
            let mut applied = 0;
            for c in changes {
                if c.collection != collection {
                    continue;
                }
                w.observe(&c.hlc);
                let live = c.data.as_ref().filter(|_| !c.deleted);
                if live.is_some_and(|d| validate_record(d).is_err()) {
                    tracing::warn!(collection, "skipping an oversized record from the server");
                    continue;
                }
                // One statement per change. Rows with local edits (not `synced`) are left
                // alone, and so is a row already holding a newer version.
                let n = match live {
                    Some(data) => {
                        w.tx.prepare_cached(
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
                            c.record_id,
                            serde_json::to_string(data)?,
                            c.version,
                            c.hlc,
                            w.now,
                            gen_
                        ])?
                    }
                    None => w
                        .tx
                        .prepare_cached(
                            "DELETE FROM records WHERE collection = ?1 AND id = ?2
                             AND sync_state = 'synced' AND version <= ?3",
                        )?
                        .execute(params![collection, c.record_id, c.version])?,
                };
                if n > 0 {
                    w.event.add(collection, &c.record_id);
                    applied += 1;
                } else {
                    // The record has local edits: keep the newest server state aside, to
                    // settle against when the edit's answer comes back.
                    w.tx.prepare_cached(
                        "UPDATE records SET remote = ?3 WHERE collection = ?1 AND id = ?2
                         AND sync_state != 'synced'
                         AND (remote IS NULL OR json_extract(remote, '$.version') < ?4)",
                    )?
                    .execute(params![
                        collection,
                        c.record_id,
                        serde_json::to_string(c)?,
                        c.version
                    ])?;
                }
            }
            w.tx.prepare_cached(
                "INSERT INTO cursors (collection, cursor) VALUES (?1, ?2)
                 ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor",
            )?
            .execute(params![collection, cursor])?;
            if let Some(g) = finish_resync {
                // The re-pull is complete: synced records it did not bring back are gone
                // from the server (purged or no longer readable).
                let mut stmt = w.tx.prepare(
                    "SELECT id FROM records WHERE collection = ?1 AND pulled_gen < ?2
                     AND sync_state = 'synced'",
                )?;
                let gone: Vec<String> = stmt
                    .query_map(params![collection, g], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                drop(stmt);
                for id in gone {
                    w.adopt_remote(collection, &id, None)?;
                }
                w.tx.execute(
                    "DELETE FROM meta WHERE key = ?1",
                    [format!("resync:{collection}")],
                )?;
            }
            Ok(applied)
        })
    }

    /// Settles the conflict the server reported for a sent entry, by the collection's
    /// strategy. The losing version always goes to the conflict log.
    pub(crate) fn settle_conflict(
        &self,
        entry: &OutboxEntry,
        current: Option<&Change>,
    ) -> Result<Settled> {
        let strategy = self.strategy(&entry.collection)?;
        let (collection, id) = (entry.collection.as_str(), entry.record_id.as_str());
        self.write(ChangeOrigin::Remote, |w| {
            // A replayed answer can carry an old `current`; a pull may have seen newer.
            // Settling may drop rows that held this device's stamps.
            w.save_clock = true;
            let stash = crate::outbox::deferred_remote(&w.tx, collection, id)?;
            let newer = stash.filter(|s| current.is_none_or(|c| s.version > c.version));
            let current = newer.as_ref().or(current);
            if let Some(c) = current {
                w.observe(&c.hlc);
            }
            let local = load_local(&w.tx, collection, id)?;
            let local_data = local
                .as_ref()
                .filter(|l| !l.deleted)
                .and_then(|l| l.data.clone());
            let base = local.as_ref().and_then(|l| l.base.clone());
            let local_hlc = local
                .as_ref()
                .and_then(|l| l.hlc.parse::<Hlc>().ok())
                .unwrap_or_else(|| entry.hlc.parse().unwrap_or_else(|_| min_hlc()));
            let remote_live = current.filter(|c| !c.deleted).and_then(|c| c.data.clone());
            let remote_hlc = current
                .and_then(|c| c.hlc.parse::<Hlc>().ok())
                .unwrap_or_else(min_hlc);
            let decided = conflict::decide(
                strategy,
                base.as_ref(),
                Side {
                    data: local_data.as_ref(),
                    hlc: &local_hlc,
                },
                Side {
                    data: remote_live.as_ref(),
                    hlc: &remote_hlc,
                },
            );
            // A CRDT type clash cannot be merged automatically: let the app decide.
            let (decision, winner) = match decided {
                Ok(o) => (o.decision, o.winner),
                Err(e) => {
                    tracing::warn!(error = %e, "conflict needs the app: CRDT fields clash");
                    (Decision::Manual, Winner::Remote)
                }
            };
            let outcome = match (&decision, winner) {
                (Decision::Manual, _) => "manual",
                (_, Winner::Local) => "local",
                (_, Winner::Remote) => "remote",
                (_, Winner::Merged) => "merged",
            };
            let sides = (base.as_ref(), local_data.as_ref(), current);
            let conflict = w.log_conflict(collection, id, strategy, sides, outcome)?;
            match &decision {
                Decision::TakeRemote => {
                    w.drop_unfinished(collection, id)?;
                    w.adopt_remote(collection, id, current)?;
                }
                Decision::Push(result) => {
                    let stamp = match winner {
                        Winner::Local => local_hlc.clone(),
                        Winner::Remote => remote_hlc.clone(),
                        Winner::Merged => local_hlc.clone().max(remote_hlc.clone()),
                    };
                    // A stamp with no replica (a remote state without a usable HLC) is no
                    // stamp to keep: the result becomes a new edit.
                    let stamp = (!stamp.replica.is_empty()).then(|| stamp.to_string());
                    let force = strategy == ConflictStrategy::ClientWins;
                    w.requeue(collection, id, result.as_ref(), current, force, stamp)?;
                }
                Decision::Manual => {
                    // The sent entry's content lives on in the record and the log; later
                    // edits wait behind the conflict until the app resolves it.
                    w.tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                        .execute([entry.id])?;
                    w.tx.prepare_cached(
                        "UPDATE records SET sync_state = 'conflicted', remote = NULL
                         WHERE collection = ?1 AND id = ?2",
                    )?
                    .execute(params![collection, id])?;
                    w.event.add(collection, id);
                }
            }
            Ok(Settled {
                conflict,
                manual: decision == Decision::Manual,
            })
        })
    }

    /// Conflicts waiting for the app's decision, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        self.conflicts_where("resolved = 0")
    }

    /// The whole conflict log, oldest first: every losing version, settled or not.
    pub fn conflict_log(&self) -> Result<Vec<Conflict>> {
        self.conflicts_where("1 = 1")
    }

    fn conflicts_where(&self, clause: &str) -> Result<Vec<Conflict>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE {clause} ORDER BY id"
            ))?;
            let rows = stmt.query_map([], conflict_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub(crate) fn open_conflict_count(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM conflicts WHERE resolved = 0")?
                .query_row([], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
    }

    /// Settles a manual conflict with the app's decision. The result is queued as a new
    /// op on top of the server version the app was shown, so the next sync sends it; if
    /// the server has moved since, that op conflicts and the app decides again, seeing
    /// the newer edit, rather than overwriting it unseen.
    pub fn resolve(&self, conflict_id: i64, resolution: Resolution) -> Result<()> {
        if let Resolution::Merged(data) = &resolution {
            validate_record(data)?;
            for v in data.values() {
                if crate::crdt::Crdt::is_crdt(v) {
                    crate::crdt::Crdt::from_json(v)?;
                }
            }
        }
        self.write(ChangeOrigin::Local, |w| {
            let c =
                w.tx.query_row(
                    &format!(
                        "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = ?1 AND resolved = 0"
                    ),
                    [conflict_id],
                    conflict_from_row,
                )
                .optional()?
                .ok_or_else(|| Error::NotFound {
                    collection: "conflicts".into(),
                    id: conflict_id.to_string(),
                })?;
            let local = load_local(&w.tx, &c.collection, &c.record_id)?;
            let local_data = local
                .as_ref()
                .filter(|l| !l.deleted)
                .and_then(|l| l.data.clone());
            let remote = Change {
                collection: c.collection.clone(),
                record_id: c.record_id.clone(),
                version: c.remote_version,
                seq: 0,
                deleted: c.remote.is_none(),
                data: c.remote.clone(),
                hlc: String::new(),
                updated_at: String::new(),
            };
            // A record the server never had is created, not based on a version.
            let remote_ref = (c.remote_version > 0).then_some(&remote);
            let outcome = match resolution {
                Resolution::KeepLocal => {
                    let (col, rid) = (&c.collection, &c.record_id);
                    w.requeue(col, rid, local_data.as_ref(), remote_ref, false, None)?;
                    "resolved_local"
                }
                Resolution::KeepRemote => {
                    w.drop_unfinished(&c.collection, &c.record_id)?;
                    match remote_ref {
                        Some(r) => w.adopt_remote(&c.collection, &c.record_id, Some(r))?,
                        None => w.adopt_remote(&c.collection, &c.record_id, None)?,
                    }
                    "resolved_remote"
                }
                Resolution::Merged(data) => {
                    let live = local_data.as_ref();
                    let merged = crate::crdt::apply_write(live, &data, OpKind::Put)?;
                    let (col, rid) = (&c.collection, &c.record_id);
                    w.requeue(col, rid, Some(&merged), remote_ref, false, None)?;
                    "resolved_merged"
                }
            };
            w.tx.execute(
                "UPDATE conflicts SET resolved = 1, outcome = ?2 WHERE id = ?1",
                params![conflict_id, outcome],
            )?;
            Ok(())
        })
    }

    /// When the last sync completed, persisted so "last synced" survives restarts.
    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            w.tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
            Ok(())
        })
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
    }

    /// Earliest time a pending entry may be sent (for the status and the scheduler).
    pub(crate) fn next_attempt_at(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::outbox::{BatchLimits, PushOutcome};
    use crate::store::SyncState;
    use serde_json::json;

    fn store(dir: &tempfile::TempDir) -> Store {
        let config = StoreConfig::default()
            .with_collection("c", ConflictStrategy::ServerWins)
            .with_collection("m", ConflictStrategy::Manual);
        Store::open(dir.path().join("s.db"), config).unwrap()
    }

    fn change(id: &str, version: i64, data: Option<serde_json::Value>) -> Change {
        Change {
            collection: "c".into(),
            record_id: id.into(),
            version,
            seq: version,
            deleted: data.is_none(),
            data: data.map(|d| d.as_object().unwrap().clone()),
            hlc: format!("{:013}-00000-srv", 1_000 + version),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn pages_apply_with_their_cursor_and_spare_local_edits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        s.put("c", Some("mine"), json!({"v": "local"})).unwrap();
        let page = [
            change("a", 1, Some(json!({"v": 1}))),
            change("b", 2, Some(json!({"v": 2}))),
            change("mine", 5, Some(json!({"v": "remote"}))),
        ];
        assert_eq!(s.apply_pull_page("c", &page, "cur-1", None).unwrap(), 2);
        assert_eq!(s.cursor("c").unwrap().as_deref(), Some("cur-1"));
        let a = s.get("c", "a").unwrap().unwrap();
        assert_eq!((a.version, a.sync_state), (1, SyncState::Synced));
        assert_eq!(
            s.get("c", "mine").unwrap().unwrap().data["v"],
            json!("local")
        );
        // A tombstone deletes; an older version than the one held is ignored.
        let page = [
            change("a", 3, None),
            change("b", 1, Some(json!({"v": "old"}))),
        ];
        s.apply_pull_page("c", &page, "cur-2", None).unwrap();
        assert_eq!(s.get("c", "a").unwrap(), None);
        assert_eq!(s.get("c", "b").unwrap().unwrap().data["v"], json!(2));
        // Remote stamps move the clock forward.
        let last: Hlc = s.last_hlc().unwrap().parse().unwrap();
        assert!((last.millis, last.counter) >= (1_003, 0));
    }

    #[test]
    fn a_full_repull_drops_what_the_server_no_longer_has_but_keeps_local_edits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let page = [
            change("keep", 1, Some(json!({}))),
            change("gone", 1, Some(json!({}))),
        ];
        s.apply_pull_page("c", &page, "cur-1", None).unwrap();
        s.put("c", Some("edited"), json!({"local": true})).unwrap();
        let g = s.begin_resync("c").unwrap();
        assert_eq!(s.cursor("c").unwrap(), None);
        assert_eq!(s.resync_generation("c").unwrap(), Some(g));
        s.apply_pull_page("c", &[change("keep", 1, Some(json!({})))], "cur-9", Some(g))
            .unwrap();
        assert!(s.get("c", "keep").unwrap().is_some());
        assert_eq!(s.get("c", "gone").unwrap(), None);
        assert!(
            s.get("c", "edited").unwrap().is_some(),
            "pending local edits survive"
        );
        assert_eq!(s.outbox_counts().unwrap().pending, 1);
        assert_eq!(s.resync_generation("c").unwrap(), None);
    }

    fn sent_entry(s: &Store) -> OutboxEntry {
        let e = s
            .outbox_next_batch(BatchLimits::default(), i64::MAX)
            .unwrap()
            .remove(0);
        s.outbox_mark_in_flight(&[e.id]).unwrap();
        e
    }

    #[test]
    fn server_wins_logs_the_local_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        s.apply_pull_page("c", &[change("r", 1, Some(json!({"v": 0})))], "x", None)
            .unwrap();
        s.patch("c", "r", json!({"v": "mine"})).unwrap();
        let e = sent_entry(&s);
        let current = change("r", 2, Some(json!({"v": "theirs"})));
        let settled = s.settle_conflict(&e, Some(&current)).unwrap();
        assert!(!settled.manual);
        let r = s.get("c", "r").unwrap().unwrap();
        assert_eq!(
            (r.data["v"].clone(), r.version, r.sync_state),
            (json!("theirs"), 2, SyncState::Synced)
        );
        let log = s.conflict_log().unwrap();
        assert_eq!(log[0].local.as_ref().unwrap()["v"], json!("mine"));
        assert_eq!(log[0].base.as_ref().unwrap()["v"], json!(0));
        assert!(log[0].resolved);
        assert_eq!(
            s.outbox_counts().unwrap().pending + s.outbox_counts().unwrap().syncing,
            0
        );
    }

    #[test]
    fn manual_conflicts_block_the_record_until_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let mut m = change("r", 1, Some(json!({"v": 0})));
        m.collection = "m".into();
        s.apply_pull_page("m", &[m.clone()], "x", None).unwrap();
        s.patch("m", "r", json!({"v": "mine"})).unwrap();
        let e = sent_entry(&s);
        let mut current = change("r", 2, Some(json!({"v": "theirs"})));
        current.collection = "m".into();
        assert!(s.settle_conflict(&e, Some(&current)).unwrap().manual);
        assert_eq!(
            s.get("m", "r").unwrap().unwrap().sync_state,
            SyncState::Conflicted
        );
        s.patch("m", "r", json!({"w": 1})).unwrap();
        assert!(
            s.outbox_next_batch(BatchLimits::default(), i64::MAX)
                .unwrap()
                .is_empty()
        );
        let open = s.conflicts().unwrap();
        assert_eq!(open.len(), 1);
        s.resolve(open[0].id, Resolution::KeepLocal).unwrap();
        let batch = s
            .outbox_next_batch(BatchLimits::default(), i64::MAX)
            .unwrap();
        assert_eq!(batch.len(), 1);
        // Made on top of the version the app was shown: if the server moved on since,
        // the resolution conflicts again instead of overwriting an unseen edit.
        assert!(!batch[0].force);
        assert_eq!(batch[0].base_version, Some(2));
        assert_eq!(
            batch[0].data.as_ref().unwrap()["w"],
            json!(1),
            "later edits are kept"
        );
        assert_ne!(
            batch[0].op_id, e.op_id,
            "a resend after a conflict is a new op"
        );
        s.outbox_mark_in_flight(&[batch[0].id]).unwrap();
        s.outbox_apply_results(&[(batch[0].id, PushOutcome::Applied { version: 3 })])
            .unwrap();
        let r = s.get("m", "r").unwrap().unwrap();
        assert_eq!((r.version, r.sync_state), (3, SyncState::Synced));
        assert!(s.conflicts().unwrap().is_empty());
        assert_eq!(s.conflict_log().unwrap()[0].outcome, "resolved_local");
    }

    /// Regression (found by the simulation): a remote stamp seen only on a tombstone
    /// must still hold the clock up after a restart.
    #[test]
    fn observed_stamps_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        // An hour ahead of this device's clock: plausible, so it is taken in.
        let ahead = s.now_ms() as u64 + 3_600_000;
        let mut tomb = change("gone", 7, None);
        tomb.hlc = Hlc::new(ahead, 42, "far").to_string();
        s.apply_pull_page("c", &[tomb], "x", None).unwrap();
        drop(s);
        let s = store(&dir);
        let stamp: Hlc = s
            .put("c", Some("new"), json!({}))
            .unwrap()
            .hlc
            .parse()
            .unwrap();
        assert!((stamp.millis, stamp.counter) > (ahead, 42), "{stamp}");
    }
}
