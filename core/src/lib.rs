//! Outpost core: an offline-first sync core for field apps.
//!
//! The local database is the UI's source of truth; every write commits together with
//! its outbox entry, so what a user typed survives app kills and power loss, and is
//! uploaded exactly once when the network allows. See `DESIGN.md` for the principles
//! and wire protocol v1.
//!
//! ```no_run
//! use outpost_core::{ConflictStrategy, Query, Store, StoreConfig};
//! use serde_json::json;
//!
//! let config = StoreConfig::default()
//!     .with_collection("patients", ConflictStrategy::FieldMerge)
//!     .with_collection("answers", ConflictStrategy::LastWriteWins);
//! let store = Store::open("outpost.db", config)?;
//! store.batch(|tx| {
//!     tx.put("patients", Some("p-17"), json!({"name": "Amina", "village": "Kole"}))?;
//!     tx.put("answers", None, json!({"patient": "p-17", "q": "fever", "a": true}))?;
//!     Ok(())
//! })?;
//! let fevers = store.query("answers", &Query::new().filter("q", "fever"))?;
//! # Ok::<(), outpost_core::Error>(())
//! ```

mod attachments;
pub mod clock;
mod config;
pub mod conflict;
pub mod crdt;
mod db;
mod error;
mod feed;
mod outbox;
pub mod pages;
pub mod protocol;
mod query;
mod record;
mod store;
pub mod sync;
pub mod transport;

pub use attachments::{AttachmentCounts, AttachmentState, Collected};
pub use config::{CollectionConfig, ConflictStrategy, Durability, MAX_USER_ID_LEN, StoreConfig};
pub use conflict::{Conflict, Resolution};
pub use error::{Error, Result};
pub use feed::{
    ChangeEvent, ChangeListener, ChangeOrigin, ObserverStats, RecordRef, Subscription,
    SubscriptionEnd,
};
pub use outbox::{BatchLimits, EntryState, OutboxCounts, OutboxEntry, PushOutcome};
pub use protocol::AttachmentRef;
pub use query::{Filter, Order, Page, Query};
pub use record::{Record, SyncState};
pub use store::{
    QueryListener, RecordListener, SignOut, Store, Unsynced, WriteTx, delete_database,
};
pub use sync::{
    CollectionProgress, ConflictListener, Progress, StaticToken, StatusListener, SyncActivity,
    SyncConfig, SyncEngine, SyncOutcome, SyncProgress, SyncReport, SyncStatus, TOKEN_TIMEOUT,
    TokenError, TokenFuture, TokenProvider,
};
pub use transport::{HttpTimeouts, HttpTransport, Transport, TransportError, Uploaded};

/// The device database's latest schema, for benchmarks whose raw-SQLite baselines must
/// do the same B-tree work as the store. Not an API: apps never open the database.
#[doc(hidden)]
pub const SCHEMA_SQL: &str = db::schema::CREATE;
