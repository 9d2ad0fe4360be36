//! The foreign traits apps implement, and their adapters to the core's traits.
//!
//! Callbacks return `Result` so that a Kotlin/Swift/Python listener that throws reaches
//! Rust as an error value: the core logs it and delivers the next event, and nothing
//! panics or poisons a lock. The core also runs listeners on their own threads, under
//! `catch_unwind`, so a slow listener never blocks a write.
//!
//! The token provider is asynchronous (`suspend` in Kotlin, `async` in Swift and
//! Python): fetching a token is a network call to the identity provider, which the app
//! makes with its own client and coroutines.

use std::sync::Arc;

use outpost_core as core;

use crate::error::OutpostError;
use crate::types::{ChangeEvent, Conflict, Record, SyncStatus};

/// Hears about every commit that changed records, local or pulled.
#[uniffi::export(callback_interface)]
pub trait ChangeListener: Send + Sync {
    fn on_change(&self, event: ChangeEvent) -> Result<(), OutpostError>;
}

/// Hears about every sync status change (coalesced to the latest when it lags).
#[uniffi::export(callback_interface)]
pub trait StatusListener: Send + Sync {
    fn on_status(&self, status: SyncStatus) -> Result<(), OutpostError>;
}

/// Hears about conflicts that need the app (strategy `manual`).
#[uniffi::export(callback_interface)]
pub trait ConflictListener: Send + Sync {
    fn on_conflict(&self, conflict: Conflict) -> Result<(), OutpostError>;
}

/// Hears an observed query's result: at once, then each time a commit changes it.
#[uniffi::export(callback_interface)]
pub trait QueryListener: Send + Sync {
    fn on_result(&self, records: Vec<Record>) -> Result<(), OutpostError>;
}

/// Hears an observed record: at once, then each time a commit changes it (None: it is
/// absent or deleted).
#[uniffi::export(callback_interface)]
pub trait RecordListener: Send + Sync {
    fn on_record(&self, record: Option<Record>) -> Result<(), OutpostError>;
}

/// Supplies the bearer token; `refresh` is true after the server answered 401.
///
/// Return the token; return None when no one is signed in (the engine stops syncing
/// with the `SignedOut` outcome and status, and asks again at the next sync); throw when
/// the token cannot be had now (identity provider unreachable, no network): the sync
/// backs off and retries. A call that takes over a minute counts as a throw.
#[uniffi::export(callback_interface)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    async fn token(&self, refresh: bool) -> Result<Option<String>, OutpostError>;
}

fn text(e: OutpostError) -> String {
    e.to_string()
}

pub(crate) struct Change(pub Box<dyn ChangeListener>);

impl core::ChangeListener for Change {
    fn on_change(&self, event: &core::ChangeEvent) -> Result<(), String> {
        self.0.on_change(event.into()).map_err(text)
    }
}

pub(crate) struct Status(pub Box<dyn StatusListener>);

impl core::StatusListener for Status {
    fn on_status(&self, status: &core::SyncStatus) -> Result<(), String> {
        self.0.on_status(status.into()).map_err(text)
    }
}

pub(crate) struct Conflicts(pub Box<dyn ConflictListener>);

impl core::ConflictListener for Conflicts {
    fn on_conflict(&self, conflict: &core::Conflict) -> Result<(), String> {
        self.0.on_conflict(conflict.into()).map_err(text)
    }
}

pub(crate) struct Results(pub Box<dyn QueryListener>);

impl core::QueryListener for Results {
    fn on_result(&self, records: &[core::Record]) -> Result<(), String> {
        let records = records.iter().cloned().map(Record::from).collect();
        self.0.on_result(records).map_err(text)
    }
}

pub(crate) struct OneRecord(pub Box<dyn RecordListener>);

impl core::RecordListener for OneRecord {
    fn on_record(&self, record: Option<&core::Record>) -> Result<(), String> {
        self.0
            .on_record(record.cloned().map(Record::from))
            .map_err(text)
    }
}

pub(crate) struct Tokens(pub Box<dyn TokenProvider>);

impl core::TokenProvider for Tokens {
    fn fetch(self: Arc<Self>, refresh: bool) -> core::TokenFuture {
        Box::pin(async move {
            match self.0.token(refresh).await {
                Ok(Some(token)) => Ok(token),
                Ok(None) => Err(core::TokenError::SignedOut),
                Err(e) => Err(core::TokenError::Unavailable(text(e))),
            }
        })
    }
}
