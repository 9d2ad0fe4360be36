//! Sync status: what the UI shows as "Syncing…", "Offline" or "Last synced 2 min ago".
//!
//! A plain value type, recomputed from the store's counts and the engine's state and
//! pushed to listeners on every change (while a sync runs, after each page and batch);
//! a listener that lags sees only the latest.

use super::Inner;
use super::progress::SyncProgress;
use crate::attachments::AttachmentCounts;
use crate::db::lock;
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
    /// The token provider says no one is signed in: nothing is sent until it has a
    /// token again (asked at the next sync).
    SignedOut,
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
    /// Attachments still to upload and to download, with their bytes, and uploads the
    /// server refused for good.
    pub attachments: AttachmentCounts,
    pub last_synced_at_ms: Option<i64>,
    /// A sync has completed on this device at least once: false through the first
    /// sync, which the UI may show apart ("Setting up: 1,200 of 3,000 records").
    pub has_synced: bool,
    /// How far the running sync has got (or the last one got), up and down.
    pub progress: SyncProgress,
    pub last_error: Option<String>,
    pub next_retry_at_ms: Option<i64>,
}

impl Coalesce for SyncStatus {
    fn absorb(&mut self, later: Self) {
        *self = later;
    }
}

impl Inner {
    /// Recomputed from the store's counts (on readers, never the writer) and the
    /// engine's state, so asking never waits on a sync's disk work.
    pub(super) fn status(&self) -> SyncStatus {
        // A count that cannot be read means a broken database, not zero: it is logged
        // and shown as the error, so the UI never says "all synced" over it.
        let mut unreadable = None;
        let counts = or_report(self.store.outbox_counts(), "the outbox", &mut unreadable);
        let conflicts = or_report(
            self.store.open_conflict_count(),
            "the conflict log",
            &mut unreadable,
        );
        let attachments = or_report(
            self.store.attachment_counts(),
            "the attachment queue",
            &mut unreadable,
        );
        let now = self.now_ms();
        // No retry is scheduled while a sync runs; and finding the earliest one reads
        // every queued edit, which a long push must not do per batch.
        let running = lock(&self.state).running;
        let next_retry_at_ms = if running {
            None
        } else {
            self.retry_delay().map(|d| now + d.as_millis() as i64)
        };
        let progress = lock(&self.progress).snapshot();
        let st = lock(&self.state);
        let activity = if !self.online() {
            SyncActivity::Offline
        } else if st.running {
            SyncActivity::Syncing
        } else if st.signed_out {
            SyncActivity::SignedOut
        } else if st.auth_failed {
            SyncActivity::AuthError
        } else if next_retry_at_ms.is_some() && st.consecutive_failures > 0 {
            SyncActivity::BackingOff
        } else {
            SyncActivity::Idle
        };
        SyncStatus {
            activity,
            pending: counts.pending + counts.syncing,
            failed: counts.failed,
            conflicts,
            attachments,
            last_synced_at_ms: st.last_synced_at_ms,
            has_synced: st.last_synced_at_ms.is_some(),
            progress,
            last_error: unreadable.or_else(|| st.last_error.clone()),
            next_retry_at_ms,
        }
    }

    pub(super) fn publish_status(&self) {
        // A closed store has no counts to show; its listeners are ending.
        if self.store.is_closed() {
            return;
        }
        let _in_order = lock(&self.publishing);
        self.statuses.publish(self.status());
    }
}

/// The value, or on an error its default, with the error logged and kept in `error`.
fn or_report<T: Default>(r: crate::Result<T>, what: &str, error: &mut Option<String>) -> T {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read {what} for the sync status");
        error.get_or_insert_with(|| format!("cannot read {what}: {e}"));
        T::default()
    })
}
