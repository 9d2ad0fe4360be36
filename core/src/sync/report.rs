//! What one sync did, and why it stopped early.
//!
//! The report is what a background job acts on (WorkManager's `retry`, a BGTask's
//! completion) and what the demo and the tests count; `Stop` is the engine's internal
//! reason for ending the work, mapped to an outcome in one place.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::progress::SyncProgress;
use crate::error::Error;
use crate::protocol::ErrorCode;
use crate::transport::TransportError;

/// How a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncOutcome {
    /// Pushed everything that was due and pulled to the end.
    Completed,
    /// The network is down: no request was made.
    Offline,
    /// `cancel()` stopped it; nothing is lost.
    Cancelled,
    /// The deadline stopped it; nothing is lost.
    DeadlineExceeded,
    /// A transient failure; retried later with backoff.
    BackingOff,
    /// The server refused the token, even a fresh one.
    AuthFailed,
    /// The token provider says no one is signed in; nothing was sent.
    SignedOut,
    /// Something else went wrong (see `errors`).
    Failed,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncReport {
    pub outcome: SyncOutcome,
    /// Ops sent (a resend counts again).
    pub pushed: u64,
    pub applied: u64,
    pub conflicts: u64,
    pub rejected: u64,
    /// Changes applied from pulls.
    pub pulled: u64,
    /// Full re-pulls after `cursor_expired`.
    pub repulls: u64,
    pub requests: u64,
    /// Bytes the transport sent and received during the sync (bodies as on the wire,
    /// compressed; zero for a transport that does not count).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// How far the sync got, up and down.
    pub progress: SyncProgress,
    /// Files whose upload completed, and downloads that completed.
    pub files_uploaded: u64,
    pub files_downloaded: u64,
    /// Attachment bytes sent and received.
    pub file_bytes_sent: u64,
    pub file_bytes_received: u64,
    pub duration: Duration,
    pub errors: Vec<String>,
}

impl SyncReport {
    pub(crate) fn new() -> SyncReport {
        SyncReport::ended(SyncOutcome::Completed)
    }

    pub(crate) fn ended(outcome: SyncOutcome) -> SyncReport {
        SyncReport {
            outcome,
            pushed: 0,
            applied: 0,
            conflicts: 0,
            rejected: 0,
            pulled: 0,
            repulls: 0,
            requests: 0,
            bytes_sent: 0,
            bytes_received: 0,
            progress: SyncProgress::default(),
            files_uploaded: 0,
            files_downloaded: 0,
            file_bytes_sent: 0,
            file_bytes_received: 0,
            duration: Duration::ZERO,
            errors: Vec::new(),
        }
    }

    /// The background job should be rescheduled (WorkManager `retry`).
    pub fn should_retry(&self) -> bool {
        !matches!(
            self.outcome,
            SyncOutcome::Completed | SyncOutcome::AuthFailed | SyncOutcome::SignedOut
        )
    }
}

/// The report of a running sync, added to from the push and pull paths.
pub(crate) type Tally = Mutex<SyncReport>;

pub(crate) fn tally(r: &Tally) -> MutexGuard<'_, SyncReport> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the work stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    Auth(String),
    SignedOut,
    Transient(String),
    Fatal(String),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fatal(e.to_string())
    }
}

impl From<TransportError> for Stop {
    fn from(e: TransportError) -> Stop {
        log_stop(&e);
        match e {
            TransportError::Unauthorized(m) => Stop::Auth(m),
            e if e.is_transient() => Stop::Transient(e.to_string()),
            e => Stop::Fatal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for Stop {
    fn from(e: tokio::task::JoinError) -> Stop {
        Stop::Fatal(e.to_string())
    }
}

/// Why a sync stopped, for the log: the report's text may quote the server's answer.
pub(crate) fn log_stop(e: &TransportError) {
    tracing::info!(error = e.for_log(), "sync stops on a failed request");
}

/// The error code an entry keeps when its request failed as a whole.
pub(crate) fn error_code(e: &TransportError) -> String {
    match e {
        TransportError::Http { code, .. } if !code.is_empty() => code.clone(),
        TransportError::Http { status: 413, .. } => ErrorCode::PayloadTooLarge.as_str().into(),
        TransportError::Http { status, .. } if *status >= 500 => {
            ErrorCode::Internal.as_str().into()
        }
        TransportError::Http { .. } => ErrorCode::InvalidRequest.as_str().into(),
        TransportError::RateLimited { .. } => ErrorCode::RateLimited.as_str().into(),
        TransportError::Unauthorized(_) => ErrorCode::Unauthorized.as_str().into(),
        TransportError::CursorExpired => ErrorCode::CursorExpired.as_str().into(),
        TransportError::Network(_)
        | TransportError::Timeout
        | TransportError::Cut(_)
        | TransportError::Protocol(_) => "network".into(),
    }
}
