//! `Outpost::transaction`: reads and writes by foreign code in one SQLite transaction.
//!
//! `Outpost::batch` takes writes decided up front; a read-modify-write (read a counter,
//! decide, write) needs the app's code to run inside the transaction. The core's
//! [`core::WriteTx`] borrows the locked writer connection, so it cannot become a foreign
//! object without `unsafe`. Instead the thread that holds it serves requests: the app's
//! body runs on a scoped thread, each call on its [`Transaction`] travels to the serving
//! thread as a job over a channel and its answer comes back over a channel of its own.
//! When the body returns, the handle is cut off (later calls fail with
//! `TransactionEnded`) and its result decides: success commits every write at once, with
//! one change event; an error or a panic rolls every write back.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use outpost_core as core;

use crate::error::{OutpostError, guard, panic_message};
use crate::types::{Filter, Query, Record, parse_filter, parse_filters, parse_object, parse_value};

/// The app's code to run inside a transaction. Read and write only through `tx`: it sees
/// this transaction's own writes, and it is the only way in while the transaction holds
/// the writer. Return normally to commit; throw to roll everything back (the error comes
/// back out of `Outpost::transaction`).
#[uniffi::export(callback_interface)]
pub trait TransactionBody: Send + Sync {
    fn run(&self, tx: Arc<Transaction>) -> Result<(), OutpostError>;
}

/// What the serving thread runs for one call on a [`Transaction`]; it sends the answer.
type Job = Box<dyn FnOnce(&mut Server<'_, '_>) + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing guarded here is left half-updated by a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A transaction in progress, handed to a [`TransactionBody`]. Its methods are those of
/// `Outpost` with the same names, inputs and errors, but they read what this transaction
/// has written so far and their writes commit (or roll back) together. Once the body
/// returns, every call fails with `TransactionEnded` and changes nothing.
#[derive(Debug, uniffi::Object)]
pub struct Transaction {
    /// None once the body has returned.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Transaction {
    /// Runs `f` on the serving thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut core::WriteTx<'_>) -> Result<T, OutpostError> + Send + 'static,
    ) -> Result<T, OutpostError> {
        guard(|| {
            let (reply, answer) = mpsc::channel();
            let job: Job = Box::new(move |server| {
                let _ = reply.send(server.serve(f));
            });
            // Sent under the lock, so no job can follow the end of the body.
            let sent = lock(&self.jobs)
                .as_ref()
                .is_some_and(|jobs| jobs.send(job).is_ok());
            if !sent {
                return Err(OutpostError::TransactionEnded);
            }
            // No answer: the serving side stopped before running the job.
            answer.recv().unwrap_or(Err(OutpostError::TransactionEnded))
        })
    }

    /// Cuts the handle off: the serving loop ends once the jobs already sent are done.
    fn end(&self) {
        lock(&self.jobs).take();
    }
}

#[uniffi::export]
impl Transaction {
    /// The live record as this transaction sees it, or None.
    pub fn get(&self, collection: String, id: String) -> Result<Option<Record>, OutpostError> {
        self.call(move |tx| Ok(tx.get(&collection, &id)?.map(Record::from)))
    }

    pub fn query(&self, collection: String, query: Query) -> Result<Vec<Record>, OutpostError> {
        self.call(move |tx| {
            let q = core::Query::try_from(&query)?;
            let rows = tx.query(&collection, &q)?;
            Ok(rows.into_iter().map(Record::from).collect())
        })
    }

    pub fn count(&self, collection: String, filters: Vec<Filter>) -> Result<u64, OutpostError> {
        self.call(move |tx| Ok(tx.count(&collection, &parse_filters(&filters)?)?))
    }

    /// How many live records match a filter in the core's JSON form.
    pub fn count_where(
        &self,
        collection: String,
        filter_json: String,
    ) -> Result<u64, OutpostError> {
        self.call(move |tx| Ok(tx.count_where(&collection, &parse_filter(&filter_json)?)?))
    }

    /// Creates or replaces a whole record; `id` None generates a UUIDv7.
    pub fn put(
        &self,
        collection: String,
        id: Option<String>,
        data_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(move |tx| {
            let data = parse_object("data", &data_json)?;
            Ok(tx.put(&collection, id.as_deref(), data)?.into())
        })
    }

    /// Sets top-level fields of an existing record (`null` stores null).
    pub fn patch(
        &self,
        collection: String,
        id: String,
        fields_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(move |tx| {
            let fields = parse_object("fields", &fields_json)?;
            Ok(tx.patch(&collection, &id, fields)?.into())
        })
    }

    pub fn delete(&self, collection: String, id: String) -> Result<(), OutpostError> {
        self.call(move |tx| Ok(tx.delete(&collection, &id)?))
    }

    /// Adds `by` (negative to subtract) to a counter field.
    pub fn increment(
        &self,
        collection: String,
        id: String,
        field: String,
        by: i64,
    ) -> Result<Record, OutpostError> {
        self.call(move |tx| Ok(tx.increment(&collection, &id, &field, by)?.into()))
    }

    /// Sets a last-write-wins register field to any JSON value.
    pub fn set_register(
        &self,
        collection: String,
        id: String,
        field: String,
        value_json: String,
    ) -> Result<Record, OutpostError> {
        self.call(move |tx| {
            let value = parse_value("value", &value_json)?;
            Ok(tx.set_register(&collection, &id, &field, value)?.into())
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
        self.call(move |tx| Ok(tx.set_add(&collection, &id, &field, &element)?.into()))
    }

    /// Removes an element from an OR-set field.
    pub fn set_remove(
        &self,
        collection: String,
        id: String,
        field: String,
        element: String,
    ) -> Result<Record, OutpostError> {
        self.call(move |tx| Ok(tx.set_remove(&collection, &id, &field, &element)?.into()))
    }
}

/// The thread running a store's transaction body, if one runs. Calls on the store from
/// that thread would wait for the writer the transaction holds, so they are refused.
#[derive(Debug, Default)]
pub(crate) struct BodyThread(Mutex<Option<ThreadId>>);

impl BodyThread {
    pub(crate) fn is_current(&self) -> bool {
        *lock(&self.0) == Some(thread::current().id())
    }

    fn enter(&self) -> Inside<'_> {
        *lock(&self.0) = Some(thread::current().id());
        Inside(self)
    }
}

/// Marks the body's thread until dropped.
struct Inside<'a>(&'a BodyThread);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        lock(&self.0.0).take();
    }
}

/// Cuts the handle off when dropped, however the body ended.
struct Ends<'a>(&'a Transaction);

impl Drop for Ends<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The serving side: the transaction and whether it can still commit.
struct Server<'a, 'w> {
    tx: &'a mut core::WriteTx<'w>,
    store: &'a core::Store,
    /// An error that may have left a write half done: every later call gets it, and the
    /// transaction rolls back even if the body swallowed it.
    failed: Option<OutpostError>,
}

impl Server<'_, '_> {
    fn serve<T>(
        &mut self,
        f: impl FnOnce(&mut core::WriteTx<'_>) -> Result<T, OutpostError>,
    ) -> Result<T, OutpostError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let out = if self.store.is_closed() {
            Err(OutpostError::Closed)
        } else {
            guard(|| f(self.tx))
        };
        if let Err(e) = &out
            && !leaves_writes_whole(e)
        {
            self.failed = Some(e.clone());
        }
        out
    }
}

/// Errors the core reports before a write touches the database (bad input, a missing
/// record, a CRDT mismatch): the body may catch them and go on. Any other error may
/// come from the middle of a write, so the transaction can no longer commit.
fn leaves_writes_whole(e: &OutpostError) -> bool {
    matches!(
        e,
        OutpostError::InvalidCollection { .. }
            | OutpostError::UnknownCollection { .. }
            | OutpostError::InvalidRecordId
            | OutpostError::InvalidData { .. }
            | OutpostError::NotFound { .. }
            | OutpostError::Crdt { .. }
    )
}

/// Runs `body` inside one write transaction of `store`: see the module comment.
pub(crate) fn run(
    store: &core::Store,
    inside: &BodyThread,
    body: &dyn TransactionBody,
) -> Result<(), OutpostError> {
    let mut outcome = Ok(());
    let committed = store.batch(|tx| {
        outcome = serve(store, inside, body, tx);
        match outcome {
            Ok(()) => Ok(()),
            // Only rolls back: `outcome` is what the caller gets.
            Err(_) => Err(core::Error::Interrupted),
        }
    });
    outcome?;
    Ok(committed?)
}

/// Runs the body on its own thread and serves its calls until it returns.
fn serve(
    store: &core::Store,
    inside: &BodyThread,
    body: &dyn TransactionBody,
    tx: &mut core::WriteTx<'_>,
) -> Result<(), OutpostError> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let handle = Arc::new(Transaction {
        jobs: Mutex::new(Some(jobs)),
    });
    thread::scope(|s| {
        let ran = thread::Builder::new()
            .name("outpost-transaction".into())
            .spawn_scoped(s, || {
                let _inside = inside.enter();
                let _ends = Ends(&handle);
                guard(|| body.run(handle.clone()))
            })
            .map_err(|e| OutpostError::Internal {
                detail: format!("cannot start the transaction's thread: {e}"),
            })?;
        let mut server = Server {
            tx,
            store,
            failed: None,
        };
        // Ends when the handle is cut off and the jobs sent before that are answered.
        for job in queue {
            job(&mut server);
        }
        let body_result = ran.join().unwrap_or_else(|p| {
            Err(OutpostError::Internal {
                detail: panic_message(p.as_ref()),
            })
        });
        body_result?;
        server.failed.map_or(Ok(()), Err)
    })
}
