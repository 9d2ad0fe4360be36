//! Sync status: what the UI shows as "Syncing…", "Offline" or "Last synced 2 min ago".
//!
//! A plain value type, recomputed from the store's counts and the engine's state and
//! pushed to listeners on every change; a listener that lags sees only the latest.

use crate::feed::Coalesce;

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncActivity {
    Idle,
    Syncing,
    /// The platform reports no network; nothing is sent.
    Offline,
    /// A transient failure; the next try is at `next_retry_at_ms`.
    BackingOff,
    /// The server refused the token, even a fresh one; the app must sign in again.
    AuthError,
}

/// A snapshot of the sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    pub activity: SyncActivity,
    /// Local edits waiting to be sent (or in flight).
    pub pending: u64,
    /// Edits the server rejected, kept locally.
    pub failed: u64,
    /// Manual conflicts waiting for the app.
    pub conflicts: u64,
    pub last_synced_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub next_retry_at_ms: Option<i64>,
}

impl Coalesce for SyncStatus {
    fn absorb(&mut self, later: Self) {
        *self = later;
    }
}
