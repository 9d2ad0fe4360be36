//! Observing a query or a record: a screen's list stays current without re-running
//! its query after every commit.
//!
//! Each observer sits on the change feed, delivered by its pool of threads, so it never
//! runs on a writing thread or under a lock. A commit re-runs the query only when it
//! could change the result: it touched a record in the result, or a record the filter
//! now selects that, when the page is full, sorts before its last record (a query with
//! an offset re-runs on any change of its collection, since a record before the window
//! moves it). The result is delivered only when it differs; `Subscription::stats`
//! counts both.
//! Re-runs are at least [`MIN_INTERVAL`] apart; commits meanwhile (the pages of a first
//! sync) coalesce into the next re-run, so the latency stays bounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Store;
use crate::db::{lock, records};
use crate::error::Result;
use crate::feed::{ChangeEvent, ChangeOrigin, ObserverCounts, Subscription};
use crate::protocol::validate_record_id;
use crate::query::Query;
use crate::query::sql::{self, QuerySql};
use crate::record::Record;

/// The shortest time between two re-runs of one observed query.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Told the result of an observed query: first at once, then whenever it changes.
pub trait QueryListener: Send + Sync {
    fn on_result(&self, records: &[Record]) -> Result<(), String>;
}

impl<F> QueryListener for F
where
    F: Fn(&[Record]) + Send + Sync,
{
    fn on_result(&self, records: &[Record]) -> Result<(), String> {
        self(records);
        Ok(())
    }
}

/// Told an observed record: first at once, then whenever it changes (`None`: absent
/// or deleted).
pub trait RecordListener: Send + Sync {
    fn on_record(&self, record: Option<&Record>) -> Result<(), String>;
}

impl<F> RecordListener for F
where
    F: Fn(Option<&Record>) + Send + Sync,
{
    fn on_record(&self, record: Option<&Record>) -> Result<(), String> {
        self(record);
        Ok(())
    }
}

/// What an observer last delivered, and when it last ran.
struct Seen<T> {
    last: Option<T>,
    ran_at: Option<Instant>,
}

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Seen {
            last: None,
            ran_at: None,
        }
    }
}

impl<T> Seen<T> {
    /// Keeps re-runs [`MIN_INTERVAL`] apart.
    fn pace(&mut self) {
        if let Some(at) = self.ran_at {
            let wait = MIN_INTERVAL.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        self.ran_at = Some(Instant::now());
    }
}

/// What an observed query last delivered.
struct Shown {
    records: Vec<Record>,
    ids: HashSet<String>,
    /// For a full page (limit reached, no offset): the query narrowed to the records
    /// that sort no later than its last, the only ones whose change can alter it.
    probe: Option<QuerySql>,
}

impl Shown {
    /// What tells whether a commit that touched no record of the result matters: the
    /// records it touched that the query (or, for a full page, the page) selects.
    fn probe<'a>(&'a self, select: &'a QuerySql) -> &'a QuerySql {
        self.probe.as_ref().unwrap_or(select)
    }
}

/// The ids a commit changed in `collection`.
fn changed<'e>(event: &'e ChangeEvent, collection: &str) -> Vec<&'e str> {
    event
        .records
        .iter()
        .filter(|r| r.collection == collection)
        .map(|r| r.id.as_str())
        .collect()
}

fn first_run() -> Option<ChangeEvent> {
    Some(ChangeEvent::new(ChangeOrigin::Local))
}

impl Store {
    /// Calls `listener` with the query's result now, and again whenever a commit
    /// changes it. Invalid input is reported here, not on the delivery thread.
    pub fn observe(
        &self,
        collection: &str,
        query: &Query,
        listener: Arc<dyn QueryListener>,
    ) -> Result<Subscription> {
        if self.is_closed() {
            return Err(crate::Error::Closed);
        }
        let declared = self.shared.collections.get(collection)?;
        let select = sql::select(collection, !declared.search.is_empty(), query)?;
        let collection = collection.to_owned();
        let any_change = query.offset > 0;
        // The page is full when it holds this many records; 0: no such bound.
        let full = if query.offset == 0 {
            query.limit.map_or(0, |n| n as usize)
        } else {
            0
        };
        let weak = Arc::downgrade(&self.shared);
        let counts = Arc::new(ObserverCounts::default());
        let counter = Arc::clone(&counts);
        let seen: Mutex<Seen<Shown>> = Mutex::default();
        let deliver = move |event: &ChangeEvent| -> Result<(), String> {
            let Some(shared) = weak.upgrade() else {
                return Ok(());
            };
            let store = Store { shared };
            counter.event();
            let mut seen = lock(&seen);
            if let Some(shown) = &seen.last {
                let touched = changed(event, &collection);
                let relevant = !touched.is_empty()
                    && (any_change
                        || touched.iter().any(|id| shown.ids.contains(*id))
                        || store
                            .read(|c| records::selects_any(c, shown.probe(&select), &touched))
                            .map_err(|e| e.to_string())?);
                if !relevant {
                    return Ok(());
                }
            }
            seen.pace();
            counter.run();
            let rows = store
                .read(|c| records::select_keyed(c, &select))
                .map_err(|e| e.to_string())?;
            let probe = match rows.last() {
                Some((_, keys)) if rows.len() == full => Some(sql::up_to(&select, keys)),
                _ => None,
            };
            let records: Vec<Record> = rows.into_iter().map(|(r, _)| r).collect();
            if seen.last.as_ref().is_some_and(|s| s.records == records) {
                return Ok(());
            }
            counter.delivery();
            listener.on_result(&records)?;
            seen.last = Some(Shown {
                ids: records.iter().map(|r| r.id.clone()).collect(),
                records,
                probe,
            });
            Ok(())
        };
        Ok(self
            .shared
            .feed
            .subscribe_with(Box::new(deliver), first_run())
            .counting(counts))
    }

    /// Calls `listener` with the record now, and again whenever a commit changes it.
    pub fn observe_one(
        &self,
        collection: &str,
        id: &str,
        listener: Arc<dyn RecordListener>,
    ) -> Result<Subscription> {
        if self.is_closed() {
            return Err(crate::Error::Closed);
        }
        self.shared.collections.check(collection)?;
        validate_record_id(id)?;
        let (collection, id) = (collection.to_owned(), id.to_owned());
        let weak = Arc::downgrade(&self.shared);
        let seen: Mutex<Seen<Option<Record>>> = Mutex::default();
        let deliver = move |event: &ChangeEvent| -> Result<(), String> {
            let Some(shared) = weak.upgrade() else {
                return Ok(());
            };
            let store = Store { shared };
            let mut seen = lock(&seen);
            if seen.last.is_some() && !changed(event, &collection).contains(&id.as_str()) {
                return Ok(());
            }
            let record = store.get(&collection, &id).map_err(|e| e.to_string())?;
            if seen.last.as_ref() == Some(&record) {
                return Ok(());
            }
            listener.on_record(record.as_ref())?;
            seen.last = Some(record);
            Ok(())
        };
        Ok(self
            .shared
            .feed
            .subscribe_with(Box::new(deliver), first_run()))
    }
}
