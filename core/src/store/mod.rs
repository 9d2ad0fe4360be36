//! The store: the app's handle on the device database.
//!
//! The store is the UI's source of truth. Every write runs in one SQLite transaction on
//! the single writer connection, together with its outbox entry, so a write that returned
//! is durable and will be uploaded; queries run on separate read connections and never
//! wait for writes (WAL). Listeners hear about commits through the change feed, after
//! the commit and outside every lock.
//!
//! Each method here is a few lines: check the input, open a transaction (or take a
//! reader), call the table owners in `db` or a pure plan, commit. The transactions the
//! sync engine runs live beside the ones the app runs: `queue` (the outbox), `incoming`
//! (pulled pages) and `settle` (conflicts). `account` holds whose data the store is,
//! and signing out.

mod account;
mod incoming;
mod observe;
mod queue;
mod settle;
mod write;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::Value;

pub use account::{SignOut, Unsynced, delete_database};
pub use observe::{QueryListener, RecordListener};
pub use write::WriteTx;

use crate::clock::{SystemClock, WallClock};
use crate::config::{Collections, ConflictStrategy, StoreConfig};
use crate::db::{self, Db, meta};
use crate::error::{Error, Result};
use crate::feed::{ChangeEvent, ChangeListener, ChangeOrigin, Feed, Subscription};
use crate::protocol::validate_record_id;
use crate::query::{Filter, Page, Query, sql};
use crate::record::Record;

pub(crate) struct Shared {
    db: Db,
    collections: Collections,
    feed: Feed,
    wall: Arc<dyn WallClock>,
    /// `attachment_grace` and `attachment_cache_bytes` of the config.
    files: (std::time::Duration, Option<u64>),
}

/// An open device database. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.db.path())
            .finish_non_exhaustive()
    }
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
        let db = Db::open(path.as_ref(), &config, &collections)?;
        let shared = Shared {
            db,
            collections,
            feed: Feed::default(),
            wall,
            files: (config.attachment_grace, config.attachment_cache_bytes),
        };
        Ok(Store {
            shared: Arc::new(shared),
        })
    }

    /// Gives a new database at `path` these replica and client ids instead of the
    /// random ones it minted, before its first edit: a seeded simulation needs ties
    /// between equal stamps decided the same way on every run. Not for apps.
    #[doc(hidden)]
    pub fn seed_identity(
        path: impl AsRef<Path>,
        config: StoreConfig,
        replica_id: &str,
        client_id: &str,
    ) -> Result<()> {
        let store = Store::open(path, config)?;
        let seeded = store.shared.db.seed_identity(replica_id, client_id);
        store.close();
        seeded
    }

    /// Wall-clock time as the store sees it (injectable for tests).
    pub(crate) fn now_ms(&self) -> i64 {
        self.shared.wall.now_ms() as i64
    }

    pub fn path(&self) -> &Path {
        self.shared.db.path()
    }

    /// This device's replica id: the last part of its HLC stamps and its CRDT key.
    pub fn replica_id(&self) -> &str {
        self.shared.db.replica_id()
    }

    /// This install's id, sent as `client_id` with every push.
    pub fn client_id(&self) -> &str {
        self.shared.db.client_id()
    }

    /// The conflict strategy declared for `collection`.
    pub fn strategy(&self, collection: &str) -> Result<ConflictStrategy> {
        self.shared.collections.strategy(collection)
    }

    /// How long unreferenced files are kept, and the cache limit of downloads.
    pub(crate) fn attachment_settings(&self) -> (std::time::Duration, Option<u64>) {
        self.shared.files
    }

    /// Collections whose files download with every sync.
    pub(crate) fn eager_collections(&self) -> Vec<String> {
        self.shared.collections.eager()
    }

    /// Collections declared in the config, in name order.
    pub fn collections(&self) -> Vec<String> {
        self.shared.collections.names()
    }

    /// Stops any running query with [`Error::Interrupted`].
    pub fn interrupt(&self) {
        self.shared.db.interrupt();
    }

    /// Closes the store: running queries are interrupted, listeners stop, and every later
    /// call fails with [`Error::Closed`]. Committed writes are already durable. Once it
    /// returns no listener callback runs or starts, and every subscription reports
    /// itself closed ([`Subscription::closed`]).
    pub fn close(&self) {
        if self.shared.db.close() {
            self.shared.feed.close_all();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.db.is_closed()
    }

    /// Calls `listener` after each commit that changed records.
    pub fn subscribe(&self, listener: Arc<dyn ChangeListener>) -> Result<Subscription> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(self.shared.feed.subscribe_listener(listener))
    }

    /// The highest HLC stamp this device has issued or seen.
    pub fn last_hlc(&self) -> Result<String> {
        Ok(self.shared.db.last_hlc()?.to_string())
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

    /// One write transaction; its change event is published after the commit, outside
    /// the writer lock, so listeners can never stall writes.
    pub(crate) fn write<T>(
        &self,
        origin: ChangeOrigin,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<T> {
        let committed = self.commit_write(origin, f);
        let (out, event) = self.shared.db.closed_if_interrupted(committed)?;
        if !event.is_empty() {
            self.shared.feed.publish(event);
        }
        Ok(out)
    }

    /// The transaction of [`Store::write`], under the writer lock.
    fn commit_write<T>(
        &self,
        origin: ChangeOrigin,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>,
    ) -> Result<(T, ChangeEvent)> {
        let mut writer = self.shared.db.writer()?;
        let tx = writer.begin(self.now_ms())?;
        let mut w = WriteTx::new(tx, &self.shared.collections, self.replica_id(), origin);
        let out = f(&mut w)?;
        let (tx, event) = w.finish();
        tx.commit()?;
        Ok((out, event))
    }

    // ---- reads ----

    /// Runs `f` on a read connection (never the writer), so reads do not wait on writes.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.shared.db.read(f)
    }

    /// The live record, or `None` if it does not exist or is deleted.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.shared.collections.check(collection)?;
        validate_record_id(id)?;
        self.read(|conn| db::records::get(conn, collection, id))
    }

    /// Live records matching the query, in its order, paged.
    pub fn query(&self, collection: &str, query: &Query) -> Result<Vec<Record>> {
        let declared = self.shared.collections.get(collection)?;
        let sql = sql::select(collection, !declared.search.is_empty(), query)?;
        self.read(|conn| db::records::select(conn, &sql))
    }

    /// One page of the query, and the cursor that continues after it (`None` when no
    /// record follows). Pass the cursor as [`Query::after`] for the next page: unlike
    /// an offset, it never skips or repeats a record while records are written.
    pub fn query_page(&self, collection: &str, query: &Query) -> Result<Page> {
        let declared = self.shared.collections.get(collection)?;
        // One more than asked tells whether another page follows.
        let probe = Query {
            limit: query.limit.map(|l| l.saturating_add(1)),
            ..query.clone()
        };
        let sql = sql::select(collection, !declared.search.is_empty(), &probe)?;
        let mut rows = self.read(|conn| db::records::select_keyed(conn, &sql))?;
        let more = query.limit.is_some_and(|l| rows.len() > l as usize);
        rows.truncate(query.limit.map_or(usize::MAX, |l| l as usize));
        let next = match rows.last() {
            Some((_, keys)) if more => Some(sql::cursor_after(&sql, keys.clone())),
            _ => None,
        };
        Ok(Page {
            records: rows.into_iter().map(|(r, _)| r).collect(),
            next,
        })
    }

    /// How many live records have every one of these field values.
    pub fn count(&self, collection: &str, filters: &[(String, Value)]) -> Result<u64> {
        self.count_where(collection, &Filter::all_equal(filters))
    }

    /// How many live records match `filter`.
    pub fn count_where(&self, collection: &str, filter: &Filter) -> Result<u64> {
        let declared = self.shared.collections.get(collection)?;
        let sql = sql::count(collection, !declared.search.is_empty(), Some(filter))?;
        self.read(|conn| db::records::count(conn, &sql))
    }

    // ---- the engine's persisted facts ----

    pub(crate) fn meta_i64(&self, key: meta::Key<'_>) -> Result<Option<i64>> {
        self.read(|conn| meta::get_i64(conn, &key))
    }

    /// Saves several facts in one transaction.
    pub(crate) fn set_meta(&self, facts: &[(meta::Key<'_>, &str)]) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            for (key, value) in facts {
                meta::set(w.tx(), key, value)?;
            }
            Ok(())
        })
    }
}
