//! One sync from start to outcome: every kind of work that is due, raced against
//! cancel and the deadline, then the engine's state and its persisted facts updated
//! from how it ended.
//!
//! The state mutex is what `status()` takes, so it is only ever held for memory
//! updates: what must be saved (last synced, the retry time) is written after it is
//! released, and a failure to save is reported, not ignored.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Inner;
use super::pace::Retries;
use super::progress::Tracker;
use super::report::{Stop, SyncOutcome, SyncReport, Tally, tally};
use crate::db::{lock, meta};

/// The kinds of work a sync does, in order. The radio is the costliest thing a phone
/// wakes for, so one wake-up does every kind that is due rather than one each: ops go
/// first (what a user typed never waits behind a download), then changes. Attachments,
/// once they exist, are one more kind here: their uploads after ops, as a record never
/// waits on its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Upload the outbox.
    Ops,
    /// Pull every collection to the end.
    Changes,
    /// Upload queued attachments, then download wanted ones.
    Files,
}

impl Work {
    const ALL: [Work; 3] = [Work::Ops, Work::Changes, Work::Files];
}

/// What one sync keeps while it runs, shared by its kinds of work.
#[derive(Debug)]
pub(super) struct Pass {
    pub report: Tally,
    /// Whether a request that failed on the link is tried again in this sync.
    pub retries: Mutex<Retries>,
    /// The transport's byte counts when the sync began.
    wire_at_start: (u64, u64),
}

impl Inner {
    /// The transport's bytes sent and received so far (zero if it does not count).
    pub(super) fn wire_bytes(&self) -> (u64, u64) {
        self.transport.wire_stats().map_or((0, 0), |w| {
            (w.bytes_sent.load(Relaxed), w.bytes_received.load(Relaxed))
        })
    }

    /// The report of a sync as it stands: counts, bytes moved and progress.
    pub(super) fn report_so_far(&self, pass: &Pass) -> SyncReport {
        let mut r = tally(&pass.report).clone();
        let (sent, received) = self.wire_bytes();
        r.bytes_sent = sent.saturating_sub(pass.wire_at_start.0);
        r.bytes_received = received.saturating_sub(pass.wire_at_start.1);
        r.progress = lock(&self.progress).snapshot();
        r
    }

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
        lock(&self.token_error).take();
        *lock(&self.progress) = Tracker::default();
        let pass = Arc::new(Pass {
            report: Mutex::new(SyncReport::new()),
            retries: Mutex::new(Retries::default()),
            wire_at_start: self.wire_bytes(),
        });
        *lock(&self.live) = Some(Arc::clone(&pass));
        self.publish_status();
        let deadline_reached = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        let finished = tokio::select! {
            r = self.work(&pass) => Some(r),
            _ = cancel.notified() => None,
            _ = deadline_reached => None,
        };
        lock(&self.live).take();
        let mut r = self.report_so_far(&pass);
        if !matches!(finished, Some(Ok(()))) {
            // A stop between a batch being marked and its answer being applied leaves
            // it in flight: back to pending, keeping its op_ids.
            if let Err(e) = self.store.release_in_flight() {
                r.errors.push(e.to_string());
            }
        }
        let save = match finished {
            Some(Ok(())) => self.completed(&mut r),
            Some(Err(stop)) => {
                let stop = self.explain(stop);
                self.stopped(stop, &mut r)
            }
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
        log_end(&r);
        r
    }

    async fn work(&self, pass: &Pass) -> Result<(), Stop> {
        self.authorize().await?;
        for kind in Work::ALL {
            match kind {
                Work::Ops => self.push_all(pass).await?,
                Work::Changes => self.pull_all(pass).await?,
                // Files after records, so a photo never holds a record back.
                Work::Files => self.sync_files(&pass.report).await?,
            }
        }
        Ok(())
    }

    /// Everything was pushed and pulled: the engine is healthy again.
    fn completed(&self, r: &mut SyncReport) -> Vec<(meta::Key<'static>, String)> {
        r.outcome = SyncOutcome::Completed;
        let now = self.now_ms();
        let mut st = lock(&self.state);
        st.running = false;
        st.last_synced_at_ms = Some(now);
        st.auth_failed = false;
        st.signed_out = false;
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
        st.signed_out = matches!(stop, Stop::SignedOut);
        let (outcome, message) = match stop {
            Stop::Auth(m) => {
                st.auth_failed = true;
                (SyncOutcome::AuthFailed, m)
            }
            Stop::SignedOut => (SyncOutcome::SignedOut, "no one is signed in".to_owned()),
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

/// One line per sync, so a failure in the field leaves a trace. Counts and the outcome
/// only: the report's error texts may quote a server's answer.
fn log_end(r: &SyncReport) {
    macro_rules! end {
        ($level:ident) => {
            tracing::$level!(
                outcome = ?r.outcome,
                pushed = r.pushed,
                pulled = r.pulled,
                conflicts = r.conflicts,
                rejected = r.rejected,
                ms = r.duration.as_millis() as u64,
                "sync ended"
            )
        };
    }
    match r.outcome {
        SyncOutcome::Completed => end!(debug),
        SyncOutcome::AuthFailed | SyncOutcome::Failed => end!(warn),
        _ => end!(info),
    }
}
