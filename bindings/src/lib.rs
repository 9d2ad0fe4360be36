//! `outpost-ffi`: the UniFFI surface of the Outpost core, for Kotlin, Swift and Python.
//!
//! Mobile apps cannot link a Rust API directly, so this crate exports one object,
//! [`Outpost`], over the whole device API, plus plain records and enums that UniFFI can
//! carry. It is deliberately thin: every type here converts to or from a core type and
//! every method forwards to the core, so the logic is tested once, in Rust.
//!
//! Rules this crate keeps at the boundary (DESIGN.md principle 7):
//! - JSON crosses as strings and is parsed here; bad JSON is a typed error, never a panic.
//! - Every exported call runs under `catch_unwind`: a Rust panic becomes
//!   [`OutpostError::Internal`] instead of aborting the app.
//! - Calls after [`Outpost::close`] (or `sign_out`) fail with [`OutpostError::Closed`];
//!   once either returns no listener is called again.
//! - Listener callbacks may throw: the error is logged and the next event still arrives.
//! - Logs reach the app's logger ([`set_logger`]) from a thread of their own, never with
//!   record data or a token in them.

mod db;
mod error;
mod listeners;
mod logging;
mod runtime;
mod transaction;
mod types;

pub use db::{Outpost, SubscriptionHandle, delete_database};
pub use error::OutpostError;
pub use listeners::{
    ChangeListener, ConflictListener, QueryListener, RecordListener, StatusListener, TokenProvider,
};
pub use logging::{LogLevel, OutpostLogger, clear_logger, set_logger};
pub use transaction::{Transaction, TransactionBody};
pub use types::*;

uniffi::setup_scaffolding!();

#[cfg(test)]
mod tests;
