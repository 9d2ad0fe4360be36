//! The sync engine: one entry point that pushes the outbox and pulls changes, safe to
//! call from a background job and safe to interrupt anywhere.
//!
//! Every step that changes the device is one store transaction (mark in flight, apply
//! results, settle a conflict, apply a page with its cursor), and every upload carries
//! its op_id, so a cancel, a deadline or a killed process at any point leaves the device
//! consistent: in-flight entries return to pending and are resent with the same op_id,
//! which the server answers once.
//!
//! The engine is split by concern: this module holds its lifecycle and public API;
//! `run` one sync from start to outcome; `push` and `pull` the two phases; `pace` the
//! request sizes and retries on a bad link; `own` the device's own changes its pulls
//! leave out; `auth` the token and its one retry; `network` the platform's
//! connectivity; `auto` the background loop; `status`, `progress` and `report` what the
//! UI and the job see.

mod auth;
mod auto;
mod config;
mod files;
mod network;
mod own;
mod pace;
mod progress;
mod pull;
mod push;
mod report;
mod run;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, watch};

pub use config::{
    ConflictListener, StaticToken, StatusListener, SyncConfig, TOKEN_TIMEOUT, TokenError,
    TokenFuture, TokenProvider,
};
pub use progress::{CollectionProgress, Progress, SyncProgress};
pub use report::{SyncOutcome, SyncReport};
pub use status::{SyncActivity, SyncStatus};

pub use crate::conflict::{Conflict, Resolution};
use crate::db::{lock, meta};
use crate::feed::{ChangeEvent, ChangeOrigin, Fanout, Subscription};
use crate::store::{SignOut, Store};
use crate::transport::Transport;

/// How much longer than its deadline a `sync_now` call may take, at most.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct EngineState {
    running: bool,
    auth_failed: bool,
    /// The token provider said no one is signed in.
    signed_out: bool,
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
    /// Held while the provider is asked for a fresh token after a 401.
    refreshing: tokio::sync::Mutex<()>,
    /// Tokens fetched so far: a 401 to a token older than the cached one needs no
    /// refresh of its own.
    token_fetches: AtomicU64,
    /// Why the provider had no token, while the sync it stopped ends.
    token_error: Mutex<Option<config::TokenError>>,
    online: AtomicBool,
    network_generation: AtomicU64,
    running: Mutex<Option<watch::Receiver<Option<SyncReport>>>>,
    cancel: Mutex<Option<Arc<Notify>>>,
    state: Mutex<EngineState>,
    statuses: Fanout<SyncStatus>,
    /// Held while a status is computed and handed over, so two threads publishing at
    /// once (the engine after a page, the store's feed after its writes) cannot hand
    /// over an older snapshot last: progress shown only moves forward.
    publishing: Mutex<()>,
    conflict_listener: Mutex<Option<Arc<dyn ConflictListener>>>,
    auto_wake: Notify,
    auto_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    feed: Mutex<Option<Subscription>>,
    /// Request sizes, kept from one sync to the next: the link is the same.
    sizes: Mutex<pace::Sizes>,
    own: Mutex<own::OwnSeqs>,
    /// The running (or last) sync's progress.
    progress: Mutex<progress::Tracker>,
    /// The running sync's report as it fills, for a caller whose deadline passes first.
    live: Mutex<Option<Arc<run::Pass>>>,
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
        // The engine starts even over a fact it cannot read, since syncing is how the
        // device gets back to health: "last synced" shows as never, and auto mode may
        // try at once rather than wait for a retry time it does not know.
        let fact = |key: meta::Key<'static>| {
            store.meta_i64(key.clone()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, ?key, "cannot read a saved sync fact");
                None
            })
        };
        let state = EngineState {
            last_synced_at_ms: fact(meta::Key::LastSyncedAt),
            retry_at_ms: fact(meta::Key::RetryAt),
            ..EngineState::default()
        };
        let sizes = pace::Sizes::new(&config);
        let inner = Arc::new(Inner {
            store,
            transport,
            tokens,
            config,
            runtime,
            token: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            token_fetches: AtomicU64::new(0),
            token_error: Mutex::new(None),
            online: AtomicBool::new(true),
            network_generation: AtomicU64::new(0),
            running: Mutex::new(None),
            cancel: Mutex::new(None),
            state: Mutex::new(state),
            statuses: Fanout::default(),
            publishing: Mutex::new(()),
            conflict_listener: Mutex::new(None),
            auto_wake: Notify::new(),
            auto_task: Mutex::new(None),
            feed: Mutex::new(None),
            sizes: Mutex::new(sizes),
            own: Mutex::new(own::OwnSeqs::default()),
            progress: Mutex::new(progress::Tracker::default()),
            live: Mutex::new(None),
        });
        // Local writes change the counts the UI shows, and wake auto mode. The writes of
        // a running sync are its own, and it publishes at its own pace: counting the
        // queue after each of them would read a long backlog once per batch.
        let weak = Arc::downgrade(&inner);
        let sub = inner.store.subscribe(Arc::new(move |e: &ChangeEvent| {
            if let Some(inner) = weak.upgrade() {
                if e.origin != ChangeOrigin::Remote {
                    inner.auto_wake.notify_one();
                } else if lock(&inner.state).running {
                    return;
                }
                inner.publish_status();
            }
        }));
        // Fails only on a closed store, where every sync fails too; the status and auto
        // mode then miss local writes, which is worth a warning, not a panic.
        match sub {
            Ok(sub) => *lock(&inner.feed) = Some(sub),
            Err(e) => tracing::warn!(error = %e, "the engine cannot follow local writes"),
        }
        let engine = SyncEngine { inner };
        if engine.inner.config.auto_sync {
            engine.start_auto_sync();
        }
        engine
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Does everything due (pushes the outbox, then pulls every collection). A call
    /// while a sync runs joins it. `deadline` bounds this call (a background task gets
    /// about 30 s): a sync this call started stops as cleanly as with `cancel` when it
    /// passes; a sync it joined goes on for whoever started it. Either way the call
    /// returns by the deadline plus [`DEADLINE_GRACE`] whatever the link does, and the
    /// report says how far the sync got.
    pub async fn sync_now(&self, deadline: Option<Duration>) -> SyncReport {
        let (mut rx, joined) = self.start_or_join(deadline);
        // A sync this call started stops itself at the deadline; the grace only guards
        // against its clean-up (a write behind a busy database) running late.
        let wait = deadline.map(|d| if joined { d } else { d + DEADLINE_GRACE });
        let waited = match wait {
            Some(d) => tokio::time::timeout(d, rx.wait_for(Option::is_some))
                .await
                .map(|r| r.map(|r| r.clone())),
            None => Ok(rx.wait_for(Option::is_some).await.map(|r| r.clone())),
        };
        match waited {
            Ok(Ok(r)) => r.unwrap_or_else(SyncReport::new),
            Ok(Err(_)) => {
                let mut r = SyncReport::ended(SyncOutcome::Failed);
                r.errors.push("the sync task ended without a report".into());
                r
            }
            Err(_) => {
                // How far the running sync has got, as it stands.
                let live = lock(&self.inner.live).clone();
                let mut r = live.map_or_else(
                    || SyncReport::ended(SyncOutcome::DeadlineExceeded),
                    |pass| self.inner.report_so_far(&pass),
                );
                r.outcome = SyncOutcome::DeadlineExceeded;
                r.duration = wait.unwrap_or_default();
                r
            }
        }
    }

    /// The running sync's report channel, or a new sync's; true if it joined one.
    fn start_or_join(
        &self,
        deadline: Option<Duration>,
    ) -> (watch::Receiver<Option<SyncReport>>, bool) {
        let mut running = lock(&self.inner.running);
        if let Some(rx) = running.as_ref() {
            return (rx.clone(), true);
        }
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
        (rx, false)
    }

    /// Stops a running sync: the in-flight request is abandoned and its entries return
    /// to pending, to be resent with the same op_ids. Safe at any time.
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// The platform's view of the network. Down takes effect at once: the running sync
    /// is cancelled and no request is made until the network is back. Up is trusted only
    /// once it has stayed up for the debounce and `GET /health` answers; until then the
    /// engine stays offline (probing again with backoff while the platform says up).
    pub fn set_network_available(&self, available: bool) {
        self.inner.network_changed(available);
    }

    pub fn is_network_available(&self) -> bool {
        self.inner.online()
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
        *task = Some(
            self.inner
                .runtime
                .spawn(auto::auto_loop(Arc::clone(&self.inner))),
        );
        self.inner.auto_wake.notify_one();
    }

    pub fn stop_auto_sync(&self) {
        if let Some(t) = lock(&self.inner.auto_task).take() {
            t.abort();
        }
    }

    /// Signs the user out of this device, then closes the store and stops the engine:
    /// every listener ends, and later calls fail with `Error::Closed`.
    ///
    /// [`SignOut::SyncFirst`] syncs first (only if anything is unsynced, so a clean
    /// device signs out offline) and fails with `Error::UnsyncedEdits` if edits are
    /// still not on the server by the deadline, changing nothing, so the app can ask
    /// the user. [`SignOut::KeepUnsynced`] needs no network: the user's unsynced edits
    /// are sealed under their user id, and sent once they sign in again.
    pub async fn sign_out(&self, policy: SignOut) -> crate::Result<()> {
        if let SignOut::SyncFirst { deadline } = policy
            && !self.inner.store.unsynced()?.is_empty()
        {
            // The user is waiting to leave: what is backing off goes now.
            self.inner.store.outbox_due_now()?;
            self.sync_now(Some(deadline)).await;
        }
        // The check, the removal or seal, and the close are one hold of the writer.
        self.inner.store.sign_out(policy)?;
        self.shutdown();
        *lock(&self.inner.token) = None;
        Ok(())
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

impl Inner {
    fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    fn cancel(&self) {
        if let Some(n) = lock(&self.cancel).as_ref() {
            n.notify_one();
        }
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
}
