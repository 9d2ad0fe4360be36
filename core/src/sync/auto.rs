//! Auto mode: the engine syncs by itself after a local write, a reconnect, or the end
//! of a backoff, so an app that never calls `sync_now` still uploads what users type.

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, SyncEngine};
use crate::db::lock;

/// Waits for a local write, a reconnect or the end of a backoff, lets things settle for
/// the write debounce, then syncs. Stopped by `stop_auto_sync`.
pub(super) async fn auto_loop(inner: Arc<Inner>) {
    loop {
        match inner.retry_delay() {
            Some(d) => {
                tokio::select! {
                    _ = inner.auto_wake.notified() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => inner.auto_wake.notified().await,
        }
        tokio::time::sleep(inner.config.write_debounce).await;
        if !inner.online() {
            continue;
        }
        SyncEngine {
            inner: Arc::clone(&inner),
        }
        .sync_now(None)
        .await;
    }
}

impl Inner {
    /// How long until something is due again (a backed-off entry or a failed pull).
    pub(super) fn retry_delay(&self) -> Option<Duration> {
        let now = self.now_ms();
        let entry = self
            .store
            .next_attempt_at()
            .ok()
            .flatten()
            .filter(|t| *t > now);
        let engine = lock(&self.state).retry_at_ms.filter(|t| *t > now);
        let at = match (entry, engine) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(Duration::from_millis((at - now).max(0) as u64))
    }
}
