//! The sync engine: one entry point that pushes the outbox and pulls changes, safe to
//! call from a background job and safe to interrupt anywhere.
//!
//! Every step that changes the device is one store transaction (mark in flight, apply
//! results, settle a conflict, apply a page with its cursor), and every upload carries
//! its op_id, so a cancel, a deadline or a killed process at any point leaves the device
//! consistent: in-flight entries return to pending and are resent with the same op_id,
//! which the server answers once. The network is only ever touched from `run`.

mod apply;
mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, watch};

pub use apply::{Conflict, Resolution};
pub use status::{SyncActivity, SyncStatus};

use crate::error::Error;
use crate::feed::{ChangeEvent, ChangeOrigin, Fanout, Subscription};
use crate::outbox::{BatchLimits, OutboxEntry, PushOutcome};
use crate::protocol::{
    Change, ErrorBody, ErrorCode, OpResult, PullResponse, PushRequest, PushResponse,
};
use crate::store::Store;
use crate::transport::{PullParams, Transport, TransportError};

/// Knobs of the engine. The defaults suit a phone on a field network.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Ops per push request, by count and bytes.
    pub batch: BatchLimits,
    /// Changes per pull page.
    pub pull_limit: u32,
    /// First retry delay after a transient failure; doubles per attempt.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long the network must stay up before the engine trusts it.
    pub network_debounce: Duration,
    /// Quiet time after a local write before auto mode syncs.
    pub write_debounce: Duration,
    /// Sync by itself after reconnecting, after local writes, and when a backoff ends.
    pub auto_sync: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch: BatchLimits::default(),
            pull_limit: 1000,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            network_debounce: Duration::from_secs(2),
            write_debounce: Duration::from_secs(1),
            auto_sync: false,
        }
    }
}

/// Supplies the bearer token. Called with `refresh = true` after a 401.
pub trait TokenProvider: Send + Sync {
    fn token(&self, refresh: bool) -> Result<String, String>;
}

/// A fixed token, for servers with long-lived device tokens and for tests.
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenProvider for StaticToken {
    fn token(&self, _refresh: bool) -> Result<String, String> {
        Ok(self.0.clone())
    }
}

/// Told about conflicts that need the app (strategy `manual`).
pub trait ConflictListener: Send + Sync {
    fn on_conflict(&self, conflict: &Conflict) -> Result<(), String>;
}

/// Told about every status change.
pub trait StatusListener: Send + Sync {
    fn on_status(&self, status: &SyncStatus) -> Result<(), String>;
}

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
    pub duration: Duration,
    pub errors: Vec<String>,
}

impl SyncReport {
    fn new() -> SyncReport {
        SyncReport {
            outcome: SyncOutcome::Completed,
            pushed: 0,
            applied: 0,
            conflicts: 0,
            rejected: 0,
            pulled: 0,
            repulls: 0,
            requests: 0,
            duration: Duration::ZERO,
            errors: Vec::new(),
        }
    }

    /// The background job should be rescheduled (WorkManager `retry`).
    pub fn should_retry(&self) -> bool {
        !matches!(
            self.outcome,
            SyncOutcome::Completed | SyncOutcome::AuthFailed
        )
    }
}

/// Why the work stopped early.
#[derive(Debug)]
enum Stop {
    Auth(String),
    Transient(String),
    Fatal(String),
}

/// Entries the server answered with a conflict, with the record's server state.
type Conflicts<'b> = Vec<(&'b OutboxEntry, Option<Change>)>;

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fatal(e.to_string())
    }
}

#[derive(Debug, Default)]
struct EngineState {
    running: bool,
    auth_failed: bool,
    last_error: Option<String>,
    last_synced_at_ms: Option<i64>,
    /// After a failed pull or a network error: no automatic retry before this.
    retry_at_ms: Option<i64>,
    consecutive_failures: u32,
}

struct Inner {
    store: Store,
    transport: Arc<dyn Transport>,
    tokens: Arc<dyn TokenProvider>,
    config: SyncConfig,
    runtime: tokio::runtime::Handle,
    token: Mutex<Option<String>>,
    online: AtomicBool,
    network_generation: AtomicU64,
    running: Mutex<Option<watch::Receiver<Option<SyncReport>>>>,
    cancel: Mutex<Option<Arc<Notify>>>,
    state: Mutex<EngineState>,
    statuses: Fanout<SyncStatus>,
    conflict_listener: Mutex<Option<Arc<dyn ConflictListener>>>,
    auto_wake: Notify,
    auto_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    feed: Mutex<Option<Subscription>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sync engine of one store. Cheap to clone.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine").finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// Creates the engine. Background work (debounce, auto sync) runs on `runtime`.
    pub fn new(
        store: Store,
        transport: Arc<dyn Transport>,
        tokens: Arc<dyn TokenProvider>,
        config: SyncConfig,
        runtime: tokio::runtime::Handle,
    ) -> SyncEngine {
        let last_synced_at_ms = store
            .meta("last_synced_at")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok());
        let retry_at_ms = store
            .meta("retry_at")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok());
        let inner = Arc::new(Inner {
            store,
            transport,
            tokens,
            config,
            runtime,
            token: Mutex::new(None),
            online: AtomicBool::new(true),
            network_generation: AtomicU64::new(0),
            running: Mutex::new(None),
            cancel: Mutex::new(None),
            state: Mutex::new(EngineState {
                last_synced_at_ms,
                retry_at_ms,
                ..EngineState::default()
            }),
            statuses: Fanout::default(),
            conflict_listener: Mutex::new(None),
            auto_wake: Notify::new(),
            auto_task: Mutex::new(None),
            feed: Mutex::new(None),
        });
        // Local writes change the counts the UI shows, and wake auto mode.
        let weak = Arc::downgrade(&inner);
        let sub = inner.store.subscribe(Arc::new(move |e: &ChangeEvent| {
            if let Some(inner) = weak.upgrade() {
                if e.origin != ChangeOrigin::Remote {
                    inner.auto_wake.notify_one();
                }
                inner.publish_status();
            }
        }));
        *lock(&inner.feed) = sub.ok();
        let engine = SyncEngine { inner };
        if engine.inner.config.auto_sync {
            engine.start_auto_sync();
        }
        engine
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Pushes the outbox, then pulls. A call while a sync runs joins it. `deadline`
    /// bounds the whole run (a background task gets about 30 s); when it passes, the
    /// sync stops as cleanly as with `cancel`.
    pub async fn sync_now(&self, deadline: Option<Duration>) -> SyncReport {
        let mut rx = {
            let mut running = lock(&self.inner.running);
            match running.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *running = Some(rx.clone());
                    let cancel = Arc::new(Notify::new());
                    *lock(&self.inner.cancel) = Some(Arc::clone(&cancel));
                    let inner = Arc::clone(&self.inner);
                    // Spawned, so the sync finishes cleanly even if this caller goes away.
                    self.inner.runtime.spawn(async move {
                        let report = inner.run(deadline, cancel).await;
                        *lock(&inner.running) = None;
                        *lock(&inner.cancel) = None;
                        inner.publish_status();
                        let _ = tx.send(Some(report));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(SyncReport::new),
            Err(_) => {
                let mut r = SyncReport::new();
                r.outcome = SyncOutcome::Failed;
                r.errors.push("the sync task ended without a report".into());
                r
            }
        }
    }

    /// Stops a running sync: the in-flight request is abandoned and its entries return
    /// to pending, to be resent with the same op_ids. Safe at any time.
    pub fn cancel(&self) {
        if let Some(n) = lock(&self.inner.cancel).as_ref() {
            n.notify_one();
        }
    }

    /// The platform's view of the network. Down takes effect at once: the running sync
    /// is cancelled and no request is made until the network is back. Up is trusted only
    /// once it has stayed up for the debounce and `GET /health` answers; until then the
    /// engine stays offline (probing again with backoff while the platform says up).
    pub fn set_network_available(&self, available: bool) {
        let generation = self.inner.network_generation.fetch_add(1, Ordering::SeqCst) + 1;
        if !available {
            let was = self.inner.online.swap(false, Ordering::SeqCst);
            self.inner.publish_status();
            if was {
                self.cancel();
            }
            return;
        }
        if self.inner.online.load(Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let debounce = self.inner.config.network_debounce;
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(debounce).await;
            let mut attempt = 0u32;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.network_generation.load(Ordering::SeqCst) != generation {
                    return; // flapped: a newer report decides
                }
                if inner.transport.health().await.is_ok() {
                    if inner.network_generation.load(Ordering::SeqCst) == generation {
                        inner.online.store(true, Ordering::SeqCst);
                        inner.publish_status();
                        inner.auto_wake.notify_one();
                    }
                    return;
                }
                attempt = attempt.saturating_add(1);
                let delay = inner.backoff(attempt);
                drop(inner);
                tokio::time::sleep(delay).await;
            }
        });
    }

    pub fn is_network_available(&self) -> bool {
        self.inner.online.load(Ordering::SeqCst)
    }

    /// The current status, for a "Syncing…" or "Last synced 2 min ago" line.
    pub fn status(&self) -> SyncStatus {
        self.inner.status()
    }

    /// Calls `listener` on every status change (coalesced to the latest if it lags).
    pub fn subscribe_status(&self, listener: Arc<dyn StatusListener>) -> Subscription {
        let sub = self
            .inner
            .statuses
            .subscribe(Box::new(move |s: &SyncStatus| listener.on_status(s)));
        self.inner.publish_status();
        sub
    }

    /// Sets the listener for manual conflicts.
    pub fn set_conflict_listener(&self, listener: Option<Arc<dyn ConflictListener>>) {
        *lock(&self.inner.conflict_listener) = listener;
    }

    /// Open manual conflicts.
    pub fn conflicts(&self) -> crate::Result<Vec<Conflict>> {
        self.inner.store.conflicts()
    }

    /// Settles a manual conflict; the result goes out with the next sync.
    pub fn resolve(&self, conflict_id: i64, resolution: Resolution) -> crate::Result<()> {
        self.inner.store.resolve(conflict_id, resolution)
    }

    /// Puts rejected entries back in the queue.
    pub fn retry_failed(&self) -> crate::Result<usize> {
        let n = self.inner.store.retry_failed()?;
        self.inner.auto_wake.notify_one();
        Ok(n)
    }

    /// Starts auto mode: sync after reconnects, after local writes (debounced) and when
    /// a backoff ends.
    pub fn start_auto_sync(&self) {
        let mut task = lock(&self.inner.auto_task);
        if task.is_some() {
            return;
        }
        *task = Some(self.inner.runtime.spawn(auto_loop(Arc::clone(&self.inner))));
        self.inner.auto_wake.notify_one();
    }

    pub fn stop_auto_sync(&self) {
        if let Some(t) = lock(&self.inner.auto_task).take() {
            t.abort();
        }
    }

    /// Stops background work and any running sync. The store stays open. Call it when
    /// the engine is no longer needed: auto mode's task keeps the engine alive.
    pub fn shutdown(&self) {
        self.stop_auto_sync();
        self.cancel();
        lock(&self.inner.feed).take();
        self.inner.statuses.close_all();
    }
}

/// Auto mode: waits for a local write, a reconnect or the end of a backoff, lets
/// things settle for the write debounce, then syncs. Stopped by `stop_auto_sync`.
async fn auto_loop(inner: Arc<Inner>) {
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
    fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    /// How long until something is due again (a backed-off entry or a failed pull).
    fn retry_delay(&self) -> Option<Duration> {
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

    fn status(&self) -> SyncStatus {
        let counts = self.store.outbox_counts().unwrap_or_default();
        let conflicts = self.store.open_conflict_count().unwrap_or(0);
        let now = self.now_ms();
        let next_retry_at_ms = self.retry_delay().map(|d| now + d.as_millis() as i64);
        let st = lock(&self.state);
        let activity = if !self.online() {
            SyncActivity::Offline
        } else if st.running {
            SyncActivity::Syncing
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
            last_synced_at_ms: st.last_synced_at_ms,
            last_error: st.last_error.clone(),
            next_retry_at_ms,
        }
    }

    fn publish_status(&self) {
        self.statuses.publish(self.status());
    }

    /// Exponential backoff with jitter: half the delay fixed, half random, so a village
    /// of phones that lost the same link does not come back in lockstep.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let base = self.config.backoff_initial.saturating_mul(1u32 << exp);
        let capped = base.min(self.config.backoff_max);
        let half = capped / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter)
    }

    async fn token(&self, refresh: bool) -> Result<String, Stop> {
        let cached = if refresh {
            None
        } else {
            lock(&self.token).clone()
        };
        if let Some(t) = cached {
            return Ok(t);
        }
        let provider = Arc::clone(&self.tokens);
        // The app may fetch a token over the network: keep it off the async threads.
        let fetched = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider.token(refresh)))
                .unwrap_or_else(|_| Err("token provider panicked".into()))
        })
        .await
        .map_err(|e| Stop::Auth(format!("token provider: {e}")))?;
        match fetched {
            Ok(t) => {
                *lock(&self.token) = Some(t.clone());
                Ok(t)
            }
            Err(e) => Err(Stop::Auth(format!("no token: {e}"))),
        }
    }

    async fn push_request(&self, req: &PushRequest) -> Result<PushResponse, TransportError> {
        let token = self
            .token(false)
            .await
            .map_err(|_| TransportError::Unauthorized("no token".into()))?;
        match self.transport.push(&token, req).await {
            Err(TransportError::Unauthorized(_)) => {
                let token = self
                    .token(true)
                    .await
                    .map_err(|_| TransportError::Unauthorized("token refresh failed".into()))?;
                self.transport.push(&token, req).await
            }
            other => other,
        }
    }

    async fn pull_request(&self, params: &PullParams) -> Result<PullResponse, TransportError> {
        let token = self
            .token(false)
            .await
            .map_err(|_| TransportError::Unauthorized("no token".into()))?;
        match self.transport.pull(&token, params).await {
            Err(TransportError::Unauthorized(_)) => {
                let token = self
                    .token(true)
                    .await
                    .map_err(|_| TransportError::Unauthorized("token refresh failed".into()))?;
                self.transport.pull(&token, params).await
            }
            other => other,
        }
    }

    async fn run(self: &Arc<Self>, deadline: Option<Duration>, cancel: Arc<Notify>) -> SyncReport {
        let started = Instant::now();
        let report = Mutex::new(SyncReport::new());
        if !self.online() {
            let mut r = report.into_inner().unwrap_or_else(|p| p.into_inner());
            r.outcome = SyncOutcome::Offline;
            return r;
        }
        lock(&self.state).running = true;
        self.publish_status();
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
        if let Some(Err(_)) = &finished {
            // A stop between a batch being marked and its answer being applied leaves
            // it in flight: back to pending, keeping its op_ids.
            if let Err(e) = self.store.release_in_flight() {
                r.errors.push(e.to_string());
            }
        }
        let mut st = lock(&self.state);
        st.running = false;
        match finished {
            Some(Ok(())) => {
                r.outcome = SyncOutcome::Completed;
                let now = self.now_ms();
                st.last_synced_at_ms = Some(now);
                st.auth_failed = false;
                st.last_error = None;
                st.consecutive_failures = 0;
                st.retry_at_ms = None;
                drop(st);
                let _ = self.store.set_meta("last_synced_at", &now.to_string());
                let _ = self.store.set_meta("retry_at", "0");
            }
            Some(Err(stop)) => {
                let (outcome, message) = match stop {
                    Stop::Auth(m) => {
                        st.auth_failed = true;
                        (SyncOutcome::AuthFailed, m)
                    }
                    Stop::Transient(m) => {
                        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                        let delay = self.backoff(st.consecutive_failures);
                        let at = self.now_ms() + delay.as_millis() as i64;
                        st.retry_at_ms = Some(at);
                        let _ = self.store.set_meta("retry_at", &at.to_string());
                        (SyncOutcome::BackingOff, m)
                    }
                    Stop::Fatal(m) => (SyncOutcome::Failed, m),
                };
                st.last_error = Some(message.clone());
                r.outcome = outcome;
                r.errors.push(message);
                drop(st);
            }
            None => {
                drop(st);
                // Abandoned mid-request: whatever was in flight goes back to pending.
                if let Err(e) = self.store.release_in_flight() {
                    r.errors.push(e.to_string());
                }
                r.outcome = if started.elapsed() >= deadline.unwrap_or(Duration::MAX) {
                    SyncOutcome::DeadlineExceeded
                } else {
                    SyncOutcome::Cancelled
                };
            }
        }
        r.duration = started.elapsed();
        r
    }

    async fn work(&self, report: &Mutex<SyncReport>) -> Result<(), Stop> {
        self.push_all(report).await?;
        self.pull_all(report).await
    }

    /// Pushes the outbox in batches, one request in flight at a time. The database work
    /// around each request (applying the previous answer, choosing and marking the next
    /// batch) runs while it is on the wire, so the link is never idle waiting on disk.
    /// Two batches never hold entries of the same record: a record's next entry becomes
    /// eligible only once the answer for its previous one has been applied.
    async fn push_all(&self, report: &Mutex<SyncReport>) -> Result<(), Stop> {
        let mut limits = self.config.batch;
        // A sync cancelled while a batch was being taken can leave it marked in flight
        // after its release ran; nothing is in flight between syncs.
        self.store.release_in_flight()?;
        let mut current = self.start_batch(limits).await?;
        let mut answered: Option<(Vec<OutboxEntry>, PushResponse)> = None;
        loop {
            let Some((batch, req)) = current.take() else {
                // The last answer: applying it can free a record's next entry or queue
                // a settled conflict's result, which go out in this same sync.
                let Some((b, resp)) = answered.take() else {
                    return Ok(());
                };
                self.apply_push_response(&b, resp, report)?;
                current = self.start_batch(limits).await?;
                if current.is_none() {
                    return Ok(());
                }
                continue;
            };
            {
                let mut r = lock_report(report);
                r.pushed += batch.len() as u64;
                r.requests += 1;
            }
            let (sent, prepared) = tokio::join!(self.push_request(&req), async {
                // The previous answer and the next batch share one transaction.
                let (outcomes, conflicts) = match &answered {
                    Some((b, resp)) => self.read_answer(b, resp, report),
                    None => Default::default(),
                };
                let next = self.take_batch(outcomes, limits).await?;
                self.settle_conflicts(conflicts, report)?;
                Ok::<_, Stop>(next)
            });
            answered = None;
            // On an early return both batches are still marked in flight; sync_now
            // returns whatever is left in flight to pending.
            let next = prepared?;
            match sent {
                Ok(resp) => {
                    answered = Some((batch, resp));
                    current = next;
                }
                Err(TransportError::Unauthorized(m)) => {
                    self.release_unsent(next)?;
                    self.release(&batch)?;
                    return Err(Stop::Auth(m));
                }
                Err(e) if e.is_transient() => {
                    self.release_unsent(next)?;
                    let retry_after = match &e {
                        TransportError::RateLimited { retry_after } => *retry_after,
                        _ => None,
                    };
                    let error = ErrorBody {
                        code: error_code(&e),
                        message: e.to_string(),
                    };
                    let now = self.now_ms();
                    let outcomes: Vec<_> = batch
                        .iter()
                        .map(|entry| {
                            let delay = self
                                .backoff(entry.attempts + 1)
                                .max(retry_after.unwrap_or_default());
                            (
                                entry.id,
                                PushOutcome::Retry {
                                    error: error.clone(),
                                    next_attempt_at_ms: now + delay.as_millis() as i64,
                                },
                            )
                        })
                        .collect();
                    self.store.outbox_apply_results(&outcomes)?;
                    return Err(Stop::Transient(e.to_string()));
                }
                Err(e) if batch.len() > 1 => {
                    // The whole request was refused (400, 413): find the culprit by
                    // sending one op at a time, so other records still sync.
                    tracing::warn!(error = %e, "push refused as a whole; isolating ops");
                    self.release_unsent(next)?;
                    self.release(&batch)?;
                    limits.max_ops = 1;
                    current = self.start_batch(limits).await?;
                }
                Err(e) => {
                    let error = ErrorBody {
                        code: error_code(&e),
                        message: e.to_string(),
                    };
                    self.store
                        .outbox_apply_results(&[(batch[0].id, PushOutcome::Failed { error })])?;
                    lock_report(report).rejected += 1;
                    current = next;
                }
            }
        }
    }

    /// The next batch that may go out, marked in flight, with its request.
    async fn start_batch(
        &self,
        limits: BatchLimits,
    ) -> Result<Option<(Vec<OutboxEntry>, PushRequest)>, Stop> {
        self.take_batch(Vec::new(), limits).await
    }

    /// Records `outcomes`, then takes and marks the next batch, in one transaction.
    /// On a blocking thread, as pull pages are applied: the disk work then overlaps the
    /// request on the wire and its encoding, rather than taking turns with them.
    async fn take_batch(
        &self,
        outcomes: Vec<(i64, PushOutcome)>,
        limits: BatchLimits,
    ) -> Result<Option<(Vec<OutboxEntry>, PushRequest)>, Stop> {
        let store = self.store.clone();
        let now = self.now_ms();
        let taken = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let batch = store.outbox_settle_and_take(&outcomes, limits, now)?;
            if batch.is_empty() {
                return Ok(None);
            }
            let req = PushRequest {
                client_id: store.client_id().to_owned(),
                ops: batch.iter().map(OutboxEntry::to_op).collect(),
            };
            Ok(Some((batch, req)))
        });
        Ok(taken.await.map_err(|e| Stop::Fatal(e.to_string()))??)
    }

    /// A batch that was chosen but never sent goes back, untouched.
    fn release_unsent(&self, next: Option<(Vec<OutboxEntry>, PushRequest)>) -> Result<(), Stop> {
        match next {
            Some((batch, _)) => self.release(&batch),
            None => Ok(()),
        }
    }

    fn release(&self, batch: &[OutboxEntry]) -> Result<(), Stop> {
        let released: Vec<_> = batch
            .iter()
            .map(|e| (e.id, PushOutcome::Released))
            .collect();
        Ok(self.store.outbox_apply_results(&released)?)
    }

    fn apply_push_response(
        &self,
        batch: &[OutboxEntry],
        resp: PushResponse,
        report: &Mutex<SyncReport>,
    ) -> Result<(), Stop> {
        let (outcomes, conflicts) = self.read_answer(batch, &resp, report);
        self.store.outbox_apply_results(&outcomes)?;
        self.settle_conflicts(conflicts, report)
    }

    /// What the server said about each entry of a batch: outcomes to record, and the
    /// conflicts to settle by strategy.
    fn read_answer<'b>(
        &self,
        batch: &'b [OutboxEntry],
        resp: &PushResponse,
        report: &Mutex<SyncReport>,
    ) -> (Vec<(i64, PushOutcome)>, Conflicts<'b>) {
        let by_op: HashMap<&str, &OpResult> = resp.results.iter().map(|r| (r.op_id(), r)).collect();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut conflicts = Vec::new();
        let now = self.now_ms();
        for entry in batch {
            match by_op.get(entry.op_id.as_str()) {
                Some(OpResult::Applied { version, .. }) => {
                    outcomes.push((entry.id, PushOutcome::Applied { version: *version }));
                    lock_report(report).applied += 1;
                }
                Some(OpResult::Rejected { error, .. }) => {
                    let transient = matches!(
                        ErrorCode::parse(&error.code),
                        Some(ErrorCode::Internal | ErrorCode::RateLimited)
                    );
                    if transient {
                        let delay = self.backoff(entry.attempts + 1);
                        outcomes.push((
                            entry.id,
                            PushOutcome::Retry {
                                error: error.clone(),
                                next_attempt_at_ms: now + delay.as_millis() as i64,
                            },
                        ));
                    } else {
                        outcomes.push((
                            entry.id,
                            PushOutcome::Failed {
                                error: error.clone(),
                            },
                        ));
                        lock_report(report).rejected += 1;
                    }
                }
                Some(OpResult::Conflict { current, .. }) => {
                    conflicts.push((entry, current.clone()))
                }
                None => {
                    // The server skipped it: send it again, same op_id.
                    outcomes.push((entry.id, PushOutcome::Released));
                }
            }
        }
        (outcomes, conflicts)
    }

    fn settle_conflicts(
        &self,
        conflicts: Conflicts<'_>,
        report: &Mutex<SyncReport>,
    ) -> Result<(), Stop> {
        for (entry, current) in conflicts {
            let settled = self.store.settle_conflict(entry, current.as_ref())?;
            lock_report(report).conflicts += 1;
            if settled.manual {
                self.notify_conflict(settled.conflict);
            }
        }
        Ok(())
    }

    fn notify_conflict(&self, conflict: Conflict) {
        let Some(listener) = lock(&self.conflict_listener).clone() else {
            return;
        };
        // Off the sync path and outside every lock; a failing listener is only logged.
        self.runtime.spawn_blocking(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_conflict(&conflict)
            })) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "conflict listener failed"),
                Err(_) => tracing::warn!("conflict listener panicked"),
            }
        });
    }

    async fn pull_all(&self, report: &Mutex<SyncReport>) -> Result<(), Stop> {
        for collection in self.store.collections() {
            self.pull_collection(&collection, report).await?;
        }
        Ok(())
    }

    /// Pages through one collection. While a page is written to the database, the next
    /// one is already on its way (pipelining), since both take similar time.
    async fn pull_collection(
        &self,
        collection: &str,
        report: &Mutex<SyncReport>,
    ) -> Result<(), Stop> {
        let mut restarted = false;
        'restart: loop {
            let resync = self.store.resync_generation(collection)?;
            let params = |since: Option<String>| PullParams {
                since,
                limit: self.config.pull_limit,
                collections: vec![collection.to_owned()],
            };
            let mut page = match self
                .fetch_page(params(self.store.cursor(collection)?), report)
                .await
            {
                Err(TransportError::CursorExpired) if !restarted => {
                    restarted = true;
                    self.store.begin_resync(collection)?;
                    lock_report(report).repulls += 1;
                    continue 'restart;
                }
                other => other.map_err(stop_for)?,
            };
            loop {
                let finish = (!page.has_more).then_some(resync).flatten();
                let store = self.store.clone();
                let name = collection.to_owned();
                let changes = std::mem::take(&mut page.changes);
                let cursor = page.cursor.clone();
                let count = changes.len() as u64;
                let apply = tokio::task::spawn_blocking(move || {
                    store.apply_pull_page(&name, &changes, &cursor, finish)
                });
                if !page.has_more {
                    apply.await.map_err(|e| Stop::Fatal(e.to_string()))??;
                    lock_report(report).pulled += count;
                    return Ok(());
                }
                let next = self.fetch_page(params(Some(page.cursor.clone())), report);
                let (applied, fetched) = tokio::join!(apply, next);
                applied.map_err(|e| Stop::Fatal(e.to_string()))??;
                lock_report(report).pulled += count;
                page = match fetched {
                    Err(TransportError::CursorExpired) if !restarted => {
                        restarted = true;
                        self.store.begin_resync(collection)?;
                        lock_report(report).repulls += 1;
                        continue 'restart;
                    }
                    other => other.map_err(stop_for)?,
                };
            }
        }
    }

    async fn fetch_page(
        &self,
        params: PullParams,
        report: &Mutex<SyncReport>,
    ) -> Result<PullResponse, TransportError> {
        lock_report(report).requests += 1;
        self.pull_request(&params).await
    }
}

fn lock_report(r: &Mutex<SyncReport>) -> MutexGuard<'_, SyncReport> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

fn stop_for(e: TransportError) -> Stop {
    match e {
        TransportError::Unauthorized(m) => Stop::Auth(m),
        e if e.is_transient() => Stop::Transient(e.to_string()),
        e => Stop::Fatal(e.to_string()),
    }
}

fn error_code(e: &TransportError) -> String {
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
        TransportError::Network(_) | TransportError::Timeout | TransportError::Protocol(_) => {
            "network".into()
        }
    }
}
