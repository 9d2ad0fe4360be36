//! The one exported object: an open device database with its sync engine.
//!
//! Apps hold one `Outpost` per database for the app's lifetime. Every method checks that
//! the store is open, runs under [`guard`] (no panic crosses the boundary) and forwards
//! to the core; conversions live in `types`, so this file reads as the API's table of
//! contents.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core as core;

use crate::error::{OutpostError, guard, panic_message};
use crate::listeners::{
    Change, ChangeListener, ConflictListener, Conflicts, OneRecord, QueryListener, RecordListener,
    Results, Status, StatusListener, TokenProvider, Tokens,
};
use crate::runtime::runtime;
use crate::transaction::{BodyThread, TransactionBody};
use crate::types::{
    Attachment, AttachmentRef, Conflict, FailedEdit, Filter, OutpostConfig, Page, Query, Record,
    Resolution, SignOutPolicy, SyncReport, SyncStatus, WriteOp, parse_filter, parse_filters,
    parse_object, parse_value,
};

/// An open Outpost database and its sync engine.
#[derive(Debug, uniffi::Object)]
pub struct Outpost {
    store: core::Store,
    engine: core::SyncEngine,
    closed: AtomicBool,
    /// The thread of the running transaction body, whose calls here are refused.
    body: BodyThread,
}

/// A live listener registration. It ends when the app closes it or when the store
/// closes (`close`, `sign_out`); once either call returns, its listener is not called
/// again. `closed()` resolves at the end, so a Flow or stream over it can complete.
#[derive(Debug, uniffi::Object)]
pub struct SubscriptionHandle {
    sub: Mutex<Option<core::Subscription>>,
    end: core::SubscriptionEnd,
}

impl SubscriptionHandle {
    fn new(sub: core::Subscription) -> Arc<SubscriptionHandle> {
        Arc::new(SubscriptionHandle {
            end: sub.end(),
            sub: Mutex::new(Some(sub)),
        })
    }
}

#[uniffi::export]
impl SubscriptionHandle {
    /// Stops delivery: once it returns, the listener is not called again (unless this is
    /// called from the listener itself, whose call is under way). Closing twice is
    /// harmless.
    pub fn close(&self) {
        // A poisoned lock only means a panic elsewhere; dropping the subscription is safe.
        // Taken out first, so the lock is not held while a running callback finishes.
        let sub = self.sub.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(sub);
    }

    /// True once delivery has ended: closed here, or the store closed.
    pub fn is_closed(&self) -> bool {
        self.end.has_ended() || self.sub.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl SubscriptionHandle {
    /// Returns once delivery has ended, however it ended.
    pub async fn closed(&self) {
        self.end.clone().ended().await;
    }
}

/// Removes the database at `path` with the files SQLite keeps beside it, sealed data of
/// signed-out users included. Missing files are fine. A database open in this process
/// is refused with `StillOpen`: close it (or sign out) first.
#[uniffi::export]
pub fn delete_database(path: String) -> Result<(), OutpostError> {
    guard(|| Ok(core::delete_database(path)?))
}

impl Outpost {
    fn live(&self) -> Result<(), OutpostError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(OutpostError::Closed)
        } else if self.body.is_current() {
            Err(OutpostError::InTransaction)
        } else {
            Ok(())
        }
    }

    /// [`guard`] plus the closed check: the shape of every synchronous export.
    fn call<T>(&self, f: impl FnOnce() -> Result<T, OutpostError>) -> Result<T, OutpostError> {
        guard(|| {
            self.live()?;
            f()
        })
    }
}

#[uniffi::export]
impl Outpost {
    /// Opens (or creates and migrates) the database at `config.path` and sets up sync
    /// against `config.server_url`. No network request is made here. A database that
    /// holds another user's data than `config.user_id` is refused with `WrongUser`.
    #[uniffi::constructor]
    pub fn open(
        config: OutpostConfig,
        tokens: Box<dyn TokenProvider>,
    ) -> Result<Arc<Outpost>, OutpostError> {
        guard(|| {
            let rt = runtime()?;
            // Checked before the database file is touched: a bad URL is a config error.
            let transport =
                core::HttpTransport::new(&config.server_url, core::HttpTimeouts::default())
                    .map_err(|e| OutpostError::InvalidConfig {
                        detail: e.to_string(),
                    })?;
            let store = core::Store::open(&config.path, config.store_config())?;
            let engine = core::SyncEngine::new(
                store.clone(),
                Arc::new(transport),
                Arc::new(Tokens(tokens)),
                config.sync_config(),
                rt.handle().clone(),
            );
            Ok(Arc::new(Outpost {
                store,
                engine,
                closed: AtomicBool::new(false),
                body: BodyThread::default(),
            }))
        })
    }

    /// Creates or replaces a whole record; `id` None generates a UUIDv7.
    pub fn put(
        &self,
        collection: String,
        id: Option<String>,
        data_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(|| {
            let data = parse_object("data", &data_json)?;
            Ok(self.store.put(&collection, id.as_deref(), data)?.into())
        })
    }

    /// Sets top-level fields of an existing record (`null` stores null).
    pub fn patch(
        &self,
        collection: String,
        id: String,
        fields_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(|| {
            let fields = parse_object("fields", &fields_json)?;
            Ok(self.store.patch(&collection, &id, fields)?.into())
        })
    }

    pub fn delete(&self, collection: String, id: String) -> Result<(), OutpostError> {
        self.call(|| Ok(self.store.delete(&collection, &id)?))
    }

    /// Copies the file at `path` into the store's folder (durably, when this returns)
    /// and queues it for upload; put the returned reference's `json` in a record.
    pub fn attach_file(
        &self,
        path: String,
        content_type: String,
        name: Option<String>,
    ) -> Result<AttachmentRef, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .attach_file(&path, &content_type, name.as_deref())?
                .into())
        })
    }

    /// [`Outpost::attach_file`] for bytes the app holds (a signature drawn on screen).
    pub fn attach_bytes(
        &self,
        bytes: Vec<u8>,
        content_type: String,
        name: Option<String>,
    ) -> Result<AttachmentRef, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .attach_bytes(&bytes, &content_type, name.as_deref())?
                .into())
        })
    }

    /// The file a reference names: its path, or pending while it downloads (asking
    /// queues the download).
    pub fn attachment(&self, sha256: String) -> Result<Attachment, OutpostError> {
        self.call(|| Ok(self.store.attachment(&sha256)?.into()))
    }

    /// Removes files no record refers to and evicts downloads past the cache limit
    /// (each sync does this too); returns how many files went.
    pub fn collect_attachments(&self) -> Result<u64, OutpostError> {
        self.call(|| {
            let c = self.store.collect_attachments()?;
            Ok(c.removed + c.evicted)
        })
    }

    /// The live record, or None.
    pub fn get(&self, collection: String, id: String) -> Result<Option<Record>, OutpostError> {
        self.call(|| Ok(self.store.get(&collection, &id)?.map(Record::from)))
    }

    pub fn query(&self, collection: String, query: Query) -> Result<Vec<Record>, OutpostError> {
        self.call(|| {
            let q = core::Query::try_from(&query)?;
            let rows = self.store.query(&collection, &q)?;
            Ok(rows.into_iter().map(Record::from).collect())
        })
    }

    /// One page of the query and the cursor that continues after it (`next` is None on
    /// the last page). Pass `next` as `Query.after`: unlike an offset, it never skips or
    /// repeats a record while records are written.
    pub fn query_page(&self, collection: String, query: Query) -> Result<Page, OutpostError> {
        self.call(|| {
            let q = core::Query::try_from(&query)?;
            Ok(self.store.query_page(&collection, &q)?.into())
        })
    }

    pub fn count(&self, collection: String, filters: Vec<Filter>) -> Result<u64, OutpostError> {
        self.call(|| Ok(self.store.count(&collection, &parse_filters(&filters)?)?))
    }

    /// How many live records match a filter in the core's JSON form.
    pub fn count_where(
        &self,
        collection: String,
        filter_json: String,
    ) -> Result<u64, OutpostError> {
        self.call(|| {
            let filter = parse_filter(&filter_json)?;
            Ok(self.store.count_where(&collection, &filter)?)
        })
    }

    /// Applies every op in one transaction: all commit, or none do. Returns each op's
    /// record (None for a delete), in order.
    pub fn batch(&self, ops: Vec<WriteOp>) -> Result<Vec<Option<Record>>, OutpostError> {
        self.call(|| {
            // All JSON is parsed before the transaction starts.
            let parsed = ops
                .iter()
                .map(WriteOp::parse)
                .collect::<Result<Vec<_>, _>>()?;
            let out = self.store.batch(|tx| {
                parsed
                    .into_iter()
                    .map(|op| op.apply(tx))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            Ok(out.into_iter().map(|r| r.map(Record::from)).collect())
        })
    }

    /// Runs `body` in one write transaction: its reads through the `Transaction` it is
    /// given see its own writes, and its writes commit together when it returns normally,
    /// with one change event after the commit. When it throws (or panics), every write
    /// rolls back and its error is returned (a panic as `Internal`); an error from the
    /// middle of a write (`Database`, `Closed`, ...) also rolls back, even if the body
    /// caught it. The body runs on a thread of its own while this call waits.
    ///
    /// The transaction holds the store's writer until the body returns: other writes,
    /// the sync's included, wait for it, so keep it short. Inside the body use only its
    /// `Transaction`: this object's methods called from the body's thread fail with
    /// `InTransaction`. A write on another thread that the body waits for (a blocking
    /// hop to another thread or dispatcher) cannot be told apart from an ordinary queued
    /// write: it waits for the body, the body for it, and neither ever returns. Reads on
    /// other threads are not blocked, and see only committed data.
    pub fn transaction(&self, body: Box<dyn TransactionBody>) -> Result<(), OutpostError> {
        self.call(|| crate::transaction::run(&self.store, &self.body, body.as_ref()))
    }

    /// Adds `by` (negative to subtract) to a counter field.
    pub fn increment(
        &self,
        collection: String,
        id: String,
        field: String,
        by: i64,
    ) -> Result<Record, OutpostError> {
        self.call(|| Ok(self.store.increment(&collection, &id, &field, by)?.into()))
    }

    /// Sets a last-write-wins register field to any JSON value.
    pub fn set_register(
        &self,
        collection: String,
        id: String,
        field: String,
        value_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(|| {
            let value = parse_value("value", &value_json)?;
            Ok(self
                .store
                .set_register(&collection, &id, &field, value)?
                .into())
        })
    }

    /// Adds an element to an OR-set field.
    pub fn set_add(
        &self,
        collection: String,
        id: String,
        field: String,
        element: String,
    ) -> Result<Record, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .set_add(&collection, &id, &field, &element)?
                .into())
        })
    }

    /// Removes an element from an OR-set field.
    pub fn set_remove(
        &self,
        collection: String,
        id: String,
        field: String,
        element: String,
    ) -> Result<Record, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .set_remove(&collection, &id, &field, &element)?
                .into())
        })
    }

    /// Calls `listener` after each commit that changed records, on a background thread.
    /// Keep the handle: releasing it (or `close()`) stops delivery.
    pub fn subscribe(
        &self,
        listener: Box<dyn ChangeListener>,
    ) -> Result<Arc<SubscriptionHandle>, OutpostError> {
        self.call(|| {
            let sub = self.store.subscribe(Arc::new(Change(listener)))?;
            Ok(SubscriptionHandle::new(sub))
        })
    }

    /// Calls `listener` with the query's result now, then each time a commit changes it,
    /// on a background thread. Bad input fails here, before anything is delivered. Keep
    /// the handle: releasing it (or `close()`) stops delivery.
    pub fn observe(
        &self,
        collection: String,
        query: Query,
        listener: Box<dyn QueryListener>,
    ) -> Result<Arc<SubscriptionHandle>, OutpostError> {
        self.call(|| {
            let q = core::Query::try_from(&query)?;
            let sub = self
                .store
                .observe(&collection, &q, Arc::new(Results(listener)))?;
            Ok(SubscriptionHandle::new(sub))
        })
    }

    /// Calls `listener` with the record now (None when absent), then each time a commit
    /// changes it. Keep the handle, as for `observe`.
    pub fn observe_one(
        &self,
        collection: String,
        id: String,
        listener: Box<dyn RecordListener>,
    ) -> Result<Arc<SubscriptionHandle>, OutpostError> {
        self.call(|| {
            let sub = self
                .store
                .observe_one(&collection, &id, Arc::new(OneRecord(listener)))?;
            Ok(SubscriptionHandle::new(sub))
        })
    }

    /// The current sync status.
    pub fn status(&self) -> Result<SyncStatus, OutpostError> {
        self.call(|| Ok((&self.engine.status()).into()))
    }

    /// Calls `listener` with the current status, then on every change.
    pub fn subscribe_status(
        &self,
        listener: Box<dyn StatusListener>,
    ) -> Result<Arc<SubscriptionHandle>, OutpostError> {
        self.call(|| {
            let sub = self.engine.subscribe_status(Arc::new(Status(listener)));
            Ok(SubscriptionHandle::new(sub))
        })
    }

    /// Sets (or with None, clears) the listener for manual conflicts.
    pub fn set_conflict_listener(
        &self,
        listener: Option<Box<dyn ConflictListener>>,
    ) -> Result<(), OutpostError> {
        self.call(|| {
            let listener =
                listener.map(|l| Arc::new(Conflicts(l)) as Arc<dyn core::ConflictListener>);
            self.engine.set_conflict_listener(listener);
            Ok(())
        })
    }

    /// Stops a running sync; in-flight edits return to pending and are resent later with
    /// the same op ids. Safe at any time.
    pub fn cancel_sync(&self) -> Result<(), OutpostError> {
        self.call(|| {
            self.engine.cancel();
            Ok(())
        })
    }

    /// The platform's view of the network (ConnectivityManager, NWPathMonitor).
    pub fn set_network_available(&self, available: bool) -> Result<(), OutpostError> {
        self.call(|| {
            self.engine.set_network_available(available);
            Ok(())
        })
    }

    pub fn is_network_available(&self) -> Result<bool, OutpostError> {
        self.call(|| Ok(self.engine.is_network_available()))
    }

    /// Open manual conflicts, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, OutpostError> {
        self.call(|| {
            Ok(self
                .engine
                .conflicts()?
                .iter()
                .map(Conflict::from)
                .collect())
        })
    }

    /// The whole conflict log: every losing version, settled or not.
    pub fn conflict_log(&self) -> Result<Vec<Conflict>, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .conflict_log()?
                .iter()
                .map(Conflict::from)
                .collect())
        })
    }

    /// Settles a manual conflict; the result goes out with the next sync.
    pub fn resolve(&self, conflict_id: i64, resolution: Resolution) -> Result<(), OutpostError> {
        self.call(|| {
            let resolution = core::Resolution::try_from(&resolution)?;
            Ok(self.engine.resolve(conflict_id, resolution)?)
        })
    }

    /// Puts edits the server rejected back in the queue. Returns how many.
    pub fn retry_failed(&self) -> Result<u64, OutpostError> {
        self.call(|| Ok(self.engine.retry_failed()? as u64))
    }

    /// Edits the server rejected for good, oldest first.
    pub fn failed_edits(&self) -> Result<Vec<FailedEdit>, OutpostError> {
        self.call(|| {
            Ok(self
                .store
                .failed_entries()?
                .iter()
                .map(FailedEdit::from)
                .collect())
        })
    }

    /// Gives up one rejected edit: the user's decision. The record goes back to its last
    /// synced state once nothing else is queued for it. An unknown or not-failed entry is
    /// `NotFound` and changes nothing.
    pub fn discard_failed(&self, entry_id: i64) -> Result<(), OutpostError> {
        self.call(|| Ok(self.store.discard_failed(entry_id)?))
    }

    /// This device's replica id (its HLC stamps and CRDT key).
    pub fn replica_id(&self) -> Result<String, OutpostError> {
        self.call(|| Ok(self.store.replica_id().to_owned()))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops sync and listeners and closes the database. Committed writes are already
    /// durable. Once it returns no listener is called again, and every subscription's
    /// `closed()` has resolved. Every later call fails with `Closed`; closing twice is
    /// harmless.
    pub fn close(&self) -> Result<(), OutpostError> {
        guard(|| {
            // It would wait for the body's own transaction to end.
            if self.body.is_current() {
                return Err(OutpostError::InTransaction);
            }
            if !self.closed.swap(true, Ordering::SeqCst) {
                close_now(&self.engine, &self.store);
            }
            Ok(())
        })
    }

    /// `close` for a caller that must not wait (an app's main thread): every later call
    /// fails with `Closed` once this returns, and the rest (stopping sync, waiting out a
    /// running write and listener, folding the WAL back) runs on a background thread.
    /// The returned handle's `closed()` resolves once the database is closed. Fails with
    /// `Closed` when the store has already closed.
    pub fn close_in_background(&self) -> Result<Arc<SubscriptionHandle>, OutpostError> {
        guard(|| {
            let rt = runtime()?;
            // A store subscription ends only once the store has closed: the done signal.
            let done = self.store.subscribe(Arc::new(|_: &core::ChangeEvent| {}))?;
            if !self.closed.swap(true, Ordering::SeqCst) {
                let (store, engine) = (self.store.clone(), self.engine.clone());
                rt.spawn_blocking(move || close_now(&engine, &store));
            }
            Ok(SubscriptionHandle::new(done))
        })
    }
}

/// What closing does, on whichever thread closes: sync stops, then the database.
fn close_now(engine: &core::SyncEngine, store: &core::Store) {
    engine.set_conflict_listener(None);
    engine.shutdown();
    store.close();
}

#[uniffi::export(async_runtime = "tokio")]
impl Outpost {
    /// Pushes the outbox, then pulls. `deadline_ms` bounds the whole run (a background
    /// task gets about 30 s); when it passes the sync stops cleanly. A call while a sync
    /// runs joins it. Dropping the returned future does not stop the sync (other callers
    /// may be waiting on it): call `cancel_sync` for that.
    pub async fn sync_now(&self, deadline_ms: Option<u64>) -> Result<SyncReport, OutpostError> {
        self.live()?;
        let rt = runtime()?;
        let engine = self.engine.clone();
        let deadline = deadline_ms.map(Duration::from_millis);
        // Run on the library's runtime and awaited through the join handle: a panic in the
        // sync comes back as a JoinError, never as an unwind into the foreign executor.
        match rt
            .spawn(async move { engine.sync_now(deadline).await })
            .await
        {
            Ok(report) => Ok(report.into()),
            Err(e) if e.is_panic() => Err(OutpostError::Internal {
                detail: panic_message(e.into_panic().as_ref()),
            }),
            Err(e) => Err(OutpostError::Sync {
                detail: e.to_string(),
            }),
        }
    }

    /// Signs the user out of this device and closes it, as `close` does. `SyncFirst`
    /// syncs (only if anything is unsynced) and fails with `UnsyncedEdits`, changing
    /// nothing, if edits are still not on the server by the deadline. `KeepUnsynced`
    /// needs no network: unsynced edits are sealed under the user's id. Then open the
    /// database for the next user, or `delete_database`.
    pub async fn sign_out(&self, policy: SignOutPolicy) -> Result<(), OutpostError> {
        self.live()?;
        let rt = runtime()?;
        let engine = self.engine.clone();
        let signed_out = rt
            .spawn(async move { engine.sign_out(policy.into()).await })
            .await;
        match signed_out {
            Ok(Ok(())) => {
                self.closed.store(true, Ordering::SeqCst);
                self.engine.set_conflict_listener(None);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) if e.is_panic() => Err(OutpostError::Internal {
                detail: panic_message(e.into_panic().as_ref()),
            }),
            Err(e) => Err(OutpostError::Sync {
                detail: e.to_string(),
            }),
        }
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        // Auto mode's background task keeps the engine alive; an app that forgot close()
        // must not leak a syncing engine.
        self.engine.shutdown();
    }
}
