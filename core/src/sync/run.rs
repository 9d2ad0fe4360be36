//! One sync from start to outcome: the work raced against cancel and the deadline,
//! then the engine's state and its persisted facts updated from how it ended.
//!
//! The state mutex is what `status()` takes, so it is only ever held for memory
//! updates: what must be saved (last synced, the retry time) is written after it is
//! released, and a failure to save is reported, not ignored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Inner;
use super::report::{Stop, SyncOutcome, SyncReport, Tally};
use crate::db::{lock, meta};

impl Inner {
    pub(super) async fn run(
        self: &Arc<Self>,
        deadline: Option<Duration>,
        cancel: Arc<Notify>,
    ) -> SyncReport {
        let started = Instant::now();
        if !self.online() {
            return SyncReport::ended(SyncOutcome::Offline);
        }
        lock(&self.state).running = true;
        self.publish_status();
        let report: Tally = Mutex::new(SyncReport::new());
        let deadline_reached = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        let finished = tokio::select! {
            r = self.work(&report) => Some(r),
            _ = cancel.notified() => None,
            _ = deadline_reached => None,
        };
        let mut r = report.into_inner().unwrap_or_else(|p| p.into_inner());
        if !matches!(finished, Some(Ok(()))) {
            // A stop between a batch being marked and its answer being applied leaves
            // it in flight: back to pending, keeping its op_ids.
            if let Err(e) = self.store.release_in_flight() {
                r.errors.push(e.to_string());
            }
        }
        let save = match finished {
            Some(Ok(())) => self.completed(&mut r),
            Some(Err(stop)) => self.stopped(stop, &mut r),
            None => {
                lock(&self.state).running = false;
                r.outcome = if started.elapsed() >= deadline.unwrap_or(Duration::MAX) {
                    SyncOutcome::DeadlineExceeded
                } else {
                    SyncOutcome::Cancelled
                };
                Vec::new()
            }
        };
        if !save.is_empty() {
            let facts: Vec<_> = save.iter().map(|(k, v)| (k.clone(), v.as_str())).collect();
            if let Err(e) = self.store.set_meta(&facts) {
                tracing::warn!(error = %e, "could not save the sync's outcome");
                r.errors
                    .push(format!("could not save the sync's outcome: {e}"));
            }
        }
        r.duration = started.elapsed();
        r
    }

    async fn work(&self, report: &Tally) -> Result<(), Stop> {
        self.push_all(report).await?;
        self.pull_all(report).await?;
        // Files after records, so a photo never holds a record back.
        self.sync_files(report).await
    }

    /// Everything was pushed and pulled: the engine is healthy again.
    fn completed(&self, r: &mut SyncReport) -> Vec<(meta::Key<'static>, String)> {
        r.outcome = SyncOutcome::Completed;
        let now = self.now_ms();
        let mut st = lock(&self.state);
        st.running = false;
        st.last_synced_at_ms = Some(now);
        st.auth_failed = false;
        st.last_error = None;
        st.consecutive_failures = 0;
        st.retry_at_ms = None;
        vec![
            (meta::Key::LastSyncedAt, now.to_string()),
            (meta::Key::RetryAt, "0".to_owned()),
        ]
    }

    /// The work stopped early: why, and when auto mode may try again.
    fn stopped(&self, stop: Stop, r: &mut SyncReport) -> Vec<(meta::Key<'static>, String)> {
        let now = self.now_ms();
        let mut save = Vec::new();
        let mut st = lock(&self.state);
        st.running = false;
        let (outcome, message) = match stop {
            Stop::Auth(m) => {
                st.auth_failed = true;
                (SyncOutcome::AuthFailed, m)
            }
            Stop::Transient(m) => {
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                let at = now + self.backoff(st.consecutive_failures).as_millis() as i64;
                st.retry_at_ms = Some(at);
                save.push((meta::Key::RetryAt, at.to_string()));
                (SyncOutcome::BackingOff, m)
            }
            Stop::Fatal(m) => (SyncOutcome::Failed, m),
        };
        st.last_error = Some(message.clone());
        r.outcome = outcome;
        r.errors.push(message);
        save
    }
}
