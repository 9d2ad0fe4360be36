//! The device's local database: records, and the outbox entry of every write.
//!
//! The store is the UI's source of truth. Every write runs in one SQLite transaction on
//! the single writer connection, together with its outbox entry, so a write that returned
//! is durable and will be uploaded; queries run on separate read connections and never
//! wait for writes (WAL). Listeners hear about commits through the change feed, after
//! the commit and outside every lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, InterruptHandle, OpenFlags, OptionalExtension, Transaction, params};
use serde_json::Value;

use crate::clock::{HybridClock, SystemClock, WallClock};
use crate::config::{ConflictStrategy, Durability, StoreConfig};
use crate::crdt;
use crate::error::{Error, Result};
use crate::feed::{ChangeEvent, ChangeListener, ChangeOrigin, Feed, Subscription};
use crate::outbox::{self, Enqueued};
use crate::protocol::{
    JsonObject, OpKind, validate_collection, validate_record, validate_record_id,
};
use crate::schema;

/// Where a record stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// The server has exactly this data.
    Synced,
    /// Local edits wait in the outbox.
    Pending,
    /// A manual conflict waits for the app's `resolve`.
    Conflicted,
    /// The server rejected an edit; the data is kept locally.
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Conflicted => "conflicted",
            SyncState::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> SyncState {
        match s {
            "synced" => SyncState::Synced,
            "conflicted" => SyncState::Conflicted,
            "failed" => SyncState::Failed,
            _ => SyncState::Pending,
        }
    }
}

/// A live record as the UI sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub collection: String,
    pub id: String,
    pub data: JsonObject,
    /// The server version this record's synced base has; 0 while never synced.
    pub version: i64,
    /// HLC stamp of the last edit.
    pub hlc: String,
    pub sync_state: SyncState,
    /// Milliseconds since the epoch of the last local change.
    pub updated_at_ms: i64,
}

/// Sort order of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// A top-level field, or `None` for the record id.
    pub field: Option<String>,
    pub descending: bool,
}

/// Equality filters on top-level fields, an order, and a page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub filters: Vec<(String, Value)>,
    pub order: Option<Order>,
    pub limit: Option<u32>,
    pub offset: u32,
}

impl Query {
    pub fn new() -> Query {
        Query::default()
    }
    pub fn filter(mut self, field: &str, value: impl Into<Value>) -> Query {
        self.filters.push((field.to_owned(), value.into()));
        self
    }
    pub fn order_by(mut self, field: &str, descending: bool) -> Query {
        self.order = Some(Order {
            field: Some(field.to_owned()),
            descending,
        });
        self
    }
    pub fn limit(mut self, limit: u32) -> Query {
        self.limit = Some(limit);
        self
    }
    pub fn offset(mut self, offset: u32) -> Query {
        self.offset = offset;
        self
    }
}

struct Writer {
    conn: Connection,
    clock: HybridClock,
}

pub(crate) struct Shared {
    path: PathBuf,
    config: StoreConfig,
    collections: BTreeMap<String, ConflictStrategy>,
    writer: Mutex<Option<Writer>>,
    readers: Mutex<Vec<Connection>>,
    // Kept outside the connection locks so `interrupt` and `close` reach a busy query.
    interrupts: Mutex<Vec<InterruptHandle>>,
    closed: AtomicBool,
    feed: Feed,
    pub(crate) wall: Arc<dyn WallClock>,
    replica_id: String,
    client_id: String,
}

/// An open device database. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent (SQLite rolls back an unfinished
    // transaction), so a panic elsewhere must not make the store unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens or creates the database at `path`, migrating it to the current schema and
    /// returning outbox entries a crash left in flight to `pending`.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        Store::open_with_clock(path, config, Arc::new(SystemClock))
    }

    /// [`Store::open`] with an injected wall clock, for tests and simulations.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: StoreConfig,
        wall: Arc<dyn WallClock>,
    ) -> Result<Store> {
        let collections = config.validated()?;
        let path = path.as_ref().to_path_buf();
        let mut conn = open_connection(&path, &config, false)?;
        schema::migrate(&mut conn)?;
        let (replica_id, client_id) = identity(&conn)?;
        let clock = recover_clock(&conn, &replica_id)?;
        outbox::recover_in_flight(&conn)?;
        let interrupts = vec![conn.get_interrupt_handle()];
        let shared = Shared {
            path,
            config,
            collections,
            writer: Mutex::new(Some(Writer { conn, clock })),
            readers: Mutex::new(Vec::new()),
            interrupts: Mutex::new(interrupts),
            closed: AtomicBool::new(false),
            feed: Feed::default(),
            wall,
            replica_id,
            client_id,
        };
        Ok(Store {
            shared: Arc::new(shared),
        })
    }

    /// Wall-clock time as the store sees it (injectable for tests).
    pub(crate) fn now_ms(&self) -> i64 {
        self.shared.wall.now_ms() as i64
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// This device's replica id: the last part of its HLC stamps and its CRDT key.
    pub fn replica_id(&self) -> &str {
        &self.shared.replica_id
    }

    /// This install's id, sent as `client_id` with every push.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The conflict strategy declared for `collection`.
    pub fn strategy(&self, collection: &str) -> Result<ConflictStrategy> {
        self.shared.strategy(collection)
    }

    /// Collections declared in the config, in name order.
    pub fn collections(&self) -> Vec<String> {
        self.shared.collections.keys().cloned().collect()
    }

    /// Stops any running query with [`Error::Interrupted`].
    pub fn interrupt(&self) {
        for h in lock(&self.shared.interrupts).iter() {
            h.interrupt();
        }
    }

    /// Closes the store: running queries are interrupted, listeners stop, and every later
    /// call fails with [`Error::Closed`]. Committed writes are already durable.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.interrupt();
        lock(&self.shared.readers).clear();
        if let Some(w) = lock(&self.shared.writer).take() {
            // Folds the WAL back so the file is complete on its own.
            let _ = w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        }
        self.shared.feed.close_all();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Calls `listener` after each commit that changed records.
    pub fn subscribe(&self, listener: Arc<dyn ChangeListener>) -> Result<Subscription> {
        self.check_open()?;
        Ok(self.shared.feed.subscribe_listener(listener))
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    // ---- writes ----

    /// Runs `f` in one transaction: all its writes commit together, or none do.
    pub fn batch<T>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        self.write(ChangeOrigin::Local, f)
    }

    /// Creates or replaces a whole record. With no id, a UUIDv7 is generated.
    pub fn put(&self, collection: &str, id: Option<&str>, data: Value) -> Result<Record> {
        self.batch(|tx| tx.put(collection, id, data))
    }

    /// Sets top-level fields of an existing record; `null` stores null.
    pub fn patch(&self, collection: &str, id: &str, fields: Value) -> Result<Record> {
        self.batch(|tx| tx.patch(collection, id, fields))
    }

    /// Deletes a record (a tombstone until the server has it).
    pub fn delete(&self, collection: &str, id: &str) -> Result<()> {
        self.batch(|tx| tx.delete(collection, id))
    }

    /// Adds `by` (negative to subtract) to a counter field, creating a PN-counter.
    pub fn increment(&self, collection: &str, id: &str, field: &str, by: i64) -> Result<Record> {
        self.batch(|tx| tx.increment(collection, id, field, by))
    }

    /// Sets a last-write-wins register field.
    pub fn set_register(
        &self,
        collection: &str,
        id: &str,
        field: &str,
        value: Value,
    ) -> Result<Record> {
        self.batch(|tx| tx.set_register(collection, id, field, value))
    }

    /// Adds an element to an OR-set field.
    pub fn set_add(&self, collection: &str, id: &str, field: &str, elem: &str) -> Result<Record> {
        self.batch(|tx| tx.set_add(collection, id, field, elem))
    }

    /// Removes an element (every add of it this device has seen) from an OR-set field.
    pub fn set_remove(
        &self,
        collection: &str,
        id: &str,
        field: &str,
        elem: &str,
    ) -> Result<Record> {
        self.batch(|tx| tx.set_remove(collection, id, field, elem))
    }

    pub(crate) fn write<T>(
        &self,
        origin: ChangeOrigin,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.check_open()?;
        let (out, event) = {
            let mut guard = lock(&self.shared.writer);
            let Writer { conn, clock } = guard.as_mut().ok_or(Error::Closed)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = self.shared.wall.now_ms() as i64;
            let event = ChangeEvent::new(origin);
            let mut wtx = WriteTx {
                tx,
                clock,
                shared: &self.shared,
                event,
                now,
                save_clock: false,
            };
            let out = f(&mut wtx)?;
            if wtx.save_clock {
                // The clock resumes from the stamps stored in rows; when this transaction
                // saw a stamp or deleted rows holding ours, save the clock itself, since
                // it must never go back across a restart.
                wtx.tx
                    .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('hlc', ?1)")?
                    .execute([wtx.clock.last().to_string()])?;
            }
            let WriteTx { tx, event, .. } = wtx;
            tx.commit()?;
            (out, event)
        };
        // After the commit and outside the writer lock: listeners can never stall writes.
        if !event.is_empty() {
            self.shared.feed.publish(event);
        }
        Ok(out)
    }

    // ---- reads ----

    /// Runs `f` on a read connection (never the writer), so reads do not wait on writes.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.check_open()?;
        let pooled = lock(&self.shared.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_connection(&self.shared.path, &self.shared.config, true)?;
                lock(&self.shared.interrupts).push(c.get_interrupt_handle());
                c
            }
        };
        let out = f(&conn);
        if !self.is_closed() {
            let mut pool = lock(&self.shared.readers);
            if pool.len() < self.shared.config.read_connections.max(1) {
                pool.push(conn);
            }
        }
        out
    }

    /// The live record, or `None` if it does not exist or is deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.shared.check_collection(collection)?;
        validate_record_id(id)?;
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id = ?2 AND deleted = 0"
            ))?;
            Ok(stmt.query_row(params![collection, id], record_from_row).optional()?)
        })
    }

    /// Live records matching every filter, in order, paged.
    pub fn query(&self, collection: &str, query: &Query) -> Result<Vec<Record>> {
        self.shared.check_collection(collection)?;
        let (where_sql, mut args) = filter_sql(collection, &query.filters)?;
        let order = match &query.order {
            None => "id".to_owned(),
            Some(Order { field, descending }) => {
                let dir = if *descending { "DESC" } else { "ASC" };
                match field {
                    None => format!("id {dir}"),
                    Some(f) => {
                        args.push(Value::String(json_path(f)?));
                        format!("json_extract(data, ?{}) {dir}, id {dir}", args.len() + 1)
                    }
                }
            }
        };
        let limit = query.limit.map_or(-1, i64::from);
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE {where_sql} ORDER BY {order} LIMIT {limit} OFFSET {}",
            query.offset
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from(collection, &args), record_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// How many live records match every filter.
    pub fn count(&self, collection: &str, filters: &[(String, Value)]) -> Result<u64> {
        self.shared.check_collection(collection)?;
        let (where_sql, args) = filter_sql(collection, filters)?;
        let sql = format!("SELECT count(*) FROM records WHERE {where_sql}");
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let n: i64 = stmt.query_row(params_from(collection, &args), |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
    }
}

const RECORD_COLUMNS: &str = "collection, id, data, version, hlc, sync_state, updated_at";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let data: Option<String> = r.get(2)?;
    let data = match data {
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        None => JsonObject::new(),
    };
    Ok(Record {
        collection: r.get(0)?,
        id: r.get(1)?,
        data,
        version: r.get(3)?,
        hlc: r.get(4)?,
        sync_state: SyncState::parse(&r.get::<_, String>(5)?),
        updated_at_ms: r.get(6)?,
    })
}

/// `$."field"`: a JSON path naming one top-level field, whatever its characters.
fn json_path(field: &str) -> Result<String> {
    if field.is_empty() || field.contains('"') || field.chars().any(char::is_control) {
        return Err(Error::InvalidData(format!(
            "unusable field name {field:?} in a query"
        )));
    }
    Ok(format!("$.\"{field}\""))
}

/// The WHERE clause for equality filters. Arguments start at ?2 (?1 is the collection).
/// Each filter checks the JSON type too, so `true` never matches `1` and `"1"` never `1`.
fn filter_sql(collection: &str, filters: &[(String, Value)]) -> Result<(String, Vec<Value>)> {
    let _ = collection;
    let mut sql = String::from("collection = ?1 AND deleted = 0");
    let mut args = Vec::new();
    for (field, value) in filters {
        let path = json_path(field)?;
        args.push(Value::String(path));
        let p = args.len() + 1;
        let clause = match value {
            Value::Null => format!(" AND json_type(data, ?{p}) = 'null'"),
            Value::Bool(true) => format!(" AND json_type(data, ?{p}) = 'true'"),
            Value::Bool(false) => format!(" AND json_type(data, ?{p}) = 'false'"),
            Value::Number(_) => {
                args.push(value.clone());
                format!(
                    " AND json_type(data, ?{p}) IN ('integer', 'real') AND json_extract(data, ?{p}) = ?{}",
                    p + 1
                )
            }
            Value::String(_) => {
                args.push(value.clone());
                format!(
                    " AND json_type(data, ?{p}) = 'text' AND json_extract(data, ?{p}) = ?{}",
                    p + 1
                )
            }
            Value::Array(_) | Value::Object(_) => {
                args.push(Value::String(value.to_string()));
                format!(" AND json_extract(data, ?{p}) = json(?{})", p + 1)
            }
        };
        sql.push_str(&clause);
    }
    Ok((sql, args))
}

fn params_from(
    collection: &str,
    args: &[Value],
) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    use rusqlite::types::Value as Sql;
    let mut out = vec![Sql::Text(collection.to_owned())];
    for a in args {
        out.push(match a {
            Value::String(s) => Sql::Text(s.clone()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Sql::Integer(i),
                None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            other => Sql::Text(other.to_string()),
        });
    }
    rusqlite::params_from_iter(out)
}

impl Shared {
    pub(crate) fn strategy(&self, collection: &str) -> Result<ConflictStrategy> {
        validate_collection(collection)?;
        self.collections
            .get(collection)
            .copied()
            .ok_or_else(|| Error::UnknownCollection(collection.to_owned()))
    }

    fn check_collection(&self, collection: &str) -> Result<()> {
        self.strategy(collection).map(|_| ())
    }
}

/// A write transaction. Everything done through it commits atomically.
pub struct WriteTx<'a> {
    pub(crate) tx: Transaction<'a>,
    pub(crate) clock: &'a mut HybridClock,
    shared: &'a Shared,
    pub(crate) event: ChangeEvent,
    pub(crate) now: i64,
    /// Set when a remote stamp was observed, or rows holding stamps were deleted.
    pub(crate) save_clock: bool,
}

impl std::fmt::Debug for WriteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

/// A record row as stored, including tombstones.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    pub data: Option<JsonObject>,
    pub deleted: bool,
    pub version: i64,
    pub sync_state: SyncState,
}

impl StoredRecord {
    fn live_data(&self) -> Option<&JsonObject> {
        if self.deleted {
            None
        } else {
            self.data.as_ref()
        }
    }
}

fn to_object(data: Value) -> Result<JsonObject> {
    match data {
        Value::Object(o) => Ok(o),
        other => Err(Error::InvalidData(format!(
            "a record must be a JSON object, not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            }
        ))),
    }
}

impl WriteTx<'_> {
    pub fn put(&mut self, collection: &str, id: Option<&str>, data: Value) -> Result<Record> {
        let generated;
        let id = match id {
            Some(id) => id,
            None => {
                generated = uuid::Uuid::now_v7().to_string();
                &generated
            }
        };
        let data = to_object(data)?;
        self.write_op(collection, id, OpKind::Put, Some(data))?
            .ok_or_else(|| Error::Database("put produced no record".into()))
    }

    pub fn patch(&mut self, collection: &str, id: &str, fields: Value) -> Result<Record> {
        let fields = to_object(fields)?;
        self.write_op(collection, id, OpKind::Patch, Some(fields))?
            .ok_or_else(|| Error::Database("patch produced no record".into()))
    }

    pub fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        self.write_op(collection, id, OpKind::Delete, None)
            .map(|_| ())
    }

    pub fn increment(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        by: i64,
    ) -> Result<Record> {
        let replica = self.shared.replica_id.clone();
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::increment(cur, &replica, by)
        })
    }

    pub fn set_register(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        value: Value,
    ) -> Result<Record> {
        self.crdt_op(collection, id, field, |cur, hlc| {
            crdt::lww_set(cur, value, hlc)
        })
    }

    pub fn set_add(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        elem: &str,
    ) -> Result<Record> {
        let replica = self.shared.replica_id.clone();
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::orset_add(cur, elem, &replica)
        })
    }

    pub fn set_remove(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        elem: &str,
    ) -> Result<Record> {
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::orset_remove(cur, elem)
        })
    }

    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.shared.check_collection(collection)?;
        validate_record_id(id)?;
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE collection = ?1 AND id = ?2 AND deleted = 0"
        ))?;
        Ok(stmt
            .query_row(params![collection, id], record_from_row)
            .optional()?)
    }

    /// A CRDT operation is an ordinary patch of one field with the field's new state.
    fn crdt_op(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        op: impl FnOnce(Option<&Value>, &crate::clock::Hlc) -> Result<Value, crdt::CrdtError>,
    ) -> Result<Record> {
        self.shared.check_collection(collection)?;
        validate_record_id(id)?;
        let existing = self.load(collection, id)?;
        let Some(data) = existing.as_ref().and_then(StoredRecord::live_data) else {
            return Err(Error::NotFound {
                collection: collection.into(),
                id: id.into(),
            });
        };
        let stamp = self.clock.tick(self.now.max(0) as u64);
        let value = op(data.get(field), &stamp)?;
        let mut fields = JsonObject::new();
        fields.insert(field.to_owned(), value);
        self.write_op(collection, id, OpKind::Patch, Some(fields))?
            .ok_or_else(|| Error::Database("patch produced no record".into()))
    }

    pub(crate) fn load(&self, collection: &str, id: &str) -> Result<Option<StoredRecord>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT data, deleted, version, sync_state FROM records WHERE collection = ?1 AND id = ?2",
        )?;
        let row = stmt
            .query_row(params![collection, id], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((data, deleted, version, state)) = row else {
            return Ok(None);
        };
        let data = data
            .map(|s| serde_json::from_str::<JsonObject>(&s))
            .transpose()?;
        Ok(Some(StoredRecord {
            data,
            deleted,
            version,
            sync_state: SyncState::parse(&state),
        }))
    }

    /// The one path every local edit takes: validate, compute the new record, store it,
    /// and queue (or coalesce) its outbox entry, all inside this transaction.
    fn write_op(
        &mut self,
        collection: &str,
        id: &str,
        kind: OpKind,
        input: Option<JsonObject>,
    ) -> Result<Option<Record>> {
        self.shared.check_collection(collection)?;
        validate_record_id(id)?;
        if let Some(input) = &input {
            validate_record(input)?;
        }
        let existing = self.load(collection, id)?;
        let live = existing.as_ref().and_then(StoredRecord::live_data);
        let new_data = match (kind, &input) {
            (OpKind::Put, Some(input)) => Some(crdt::apply_write(live, input, OpKind::Put)?),
            (OpKind::Patch, Some(input)) => match live {
                Some(live) => Some(crdt::apply_write(Some(live), input, OpKind::Patch)?),
                None => {
                    return Err(Error::NotFound {
                        collection: collection.into(),
                        id: id.into(),
                    });
                }
            },
            (OpKind::Delete, _) if live.is_none() => {
                return Err(Error::NotFound {
                    collection: collection.into(),
                    id: id.into(),
                });
            }
            _ => None,
        };
        // A put that merged nothing stores exactly its input: validated once already,
        // and serialised once for both the record and its outbox entry.
        let stored_as_sent = kind == OpKind::Put && new_data.is_some() && new_data == input;
        if let Some(d) = new_data.as_ref().filter(|_| !stored_as_sent) {
            validate_record(d)?;
        }
        let version = existing.as_ref().map_or(0, |e| e.version);
        let state = match existing.as_ref().map(|e| e.sync_state) {
            Some(s @ (SyncState::Failed | SyncState::Conflicted)) => s,
            _ => SyncState::Pending,
        };
        let hlc = self.clock.tick(self.now.max(0) as u64).to_string();
        let data_json = new_data.as_ref().map(serde_json::to_string).transpose()?;
        self.tx
            .prepare_cached(
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
                new_data.is_none(),
                hlc,
                state.as_str(),
                self.now
            ])?;
        let entry = outbox::NewEntry {
            collection,
            record_id: id,
            kind,
            base_version: (version > 0).then_some(version),
            op_data: input.as_ref(),
            full_data: new_data.as_ref(),
            op_json: data_json.as_deref().filter(|_| stored_as_sent),
            hlc: &hlc,
            force: false,
        };
        let outcome = outbox::enqueue(&self.tx, &entry, self.now)?;
        self.event.add(collection, id);
        if outcome == Enqueued::Vanished {
            // A record created and deleted before the server ever saw it leaves no trace.
            self.save_clock = true;
            self.tx
                .prepare_cached("DELETE FROM records WHERE collection = ?1 AND id = ?2")?
                .execute(params![collection, id])?;
        }
        Ok(new_data.map(|data| Record {
            collection: collection.to_owned(),
            id: id.to_owned(),
            data,
            version,
            hlc,
            sync_state: state,
            updated_at_ms: self.now,
        }))
    }
}

fn open_connection(path: &Path, config: &StoreConfig, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    };
    let conn = Connection::open_with_flags(path, flags)?;
    apply_key(&conn, config.encryption_key.as_deref())?;
    // Fails with NOTADB (WrongKey) when the key does not fit, before anything is written.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    conn.busy_timeout(config.busy_timeout)?;
    // Android has no writable temp directory; keep temporary tables in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    let sync = match config.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Database(format!(
                "could not enable WAL (journal_mode={mode})"
            )));
        }
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[cfg(feature = "encryption")]
fn apply_key(conn: &Connection, key: Option<&[u8]>) -> Result<()> {
    if let Some(key) = key {
        use std::fmt::Write;
        let mut hex = String::with_capacity(key.len() * 2);
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        // A raw 256-bit key: no passphrase derivation, so opening stays fast.
        conn.execute_batch(&format!("PRAGMA key = \"x'{hex}'\";"))?;
    }
    Ok(())
}

#[cfg(not(feature = "encryption"))]
fn apply_key(_conn: &Connection, key: Option<&[u8]>) -> Result<()> {
    match key {
        Some(_) => Err(Error::EncryptionUnavailable),
        None => Ok(()),
    }
}

/// The replica and client ids, minted once per database.
fn identity(conn: &Connection) -> Result<(String, String)> {
    let get = |k: &str| -> Result<Option<String>> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    };
    let client_id = match get("client_id")? {
        Some(v) => v,
        None => {
            let v = uuid::Uuid::new_v4().to_string();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('client_id', ?1)",
                [&v],
            )?;
            v
        }
    };
    let replica_id = match get("replica_id")? {
        Some(v) => v,
        None => {
            // 64 random bits: short in every HLC stamp and CRDT key, unique in practice.
            let v = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('replica_id', ?1)",
                [&v],
            )?;
            v
        }
    };
    Ok((replica_id, client_id))
}

/// The clock resumes above every stamp stored, so it never goes back across restarts.
fn recover_clock(conn: &Connection, replica: &str) -> Result<HybridClock> {
    let mut clock = HybridClock::new(replica, 0, 0);
    let stamps: Vec<Option<String>> = conn.query_row(
        "SELECT (SELECT max(hlc) FROM records), (SELECT max(hlc) FROM outbox),
                (SELECT value FROM meta WHERE key = 'hlc')",
        [],
        |r| Ok(vec![r.get(0)?, r.get(1)?, r.get(2)?]),
    )?;
    for s in stamps.into_iter().flatten() {
        if let Ok(h) = s.parse::<crate::clock::Hlc>() {
            // Stored stamps were accepted once; trust them regardless of drift.
            clock.observe(&h, h.millis);
        }
    }
    Ok(clock)
}

impl Store {
    /// The highest HLC stamp this device has issued or seen.
    pub fn last_hlc(&self) -> Result<String> {
        let guard = lock(&self.shared.writer);
        let w = guard.as_ref().ok_or(Error::Closed)?;
        Ok(w.clock.last().to_string())
    }
}
