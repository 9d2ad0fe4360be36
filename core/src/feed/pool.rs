//! The threads that run listener callbacks, shared by every subscription of the process.
//!
//! A thread per subscription made each observed query on a screen cost an OS thread, and
//! its stack, for as long as it lived, idle or not: a list of observed rows on a cheap
//! phone is dozens of them. Here a subscription holds a thread only while it delivers.
//! A couple of threads serve bursts of quick callbacks; when every thread has been busy
//! for [`STUCK`] with work waiting, one more starts, so a slow or hung listener still
//! never holds up the others for long. Threads beyond need exit after [`IDLE_EXIT`].

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

/// Threads started as soon as work arrives and none is idle.
const CORE: usize = 2;
/// How long waiting work may find every thread busy before another thread starts.
pub(crate) const STUCK: Duration = Duration::from_millis(50);
/// How long a thread with nothing to do stays.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(10);
/// A bound for a process whose listeners all hang.
const MAX_THREADS: usize = 64;

/// Work a pool thread runs: one subscription's pending deliveries.
pub(crate) trait Job: Send + Sync {
    fn run(self: Arc<Self>);
}

pub(crate) struct Pool {
    state: Mutex<State>,
    work: Condvar,
    idle_exit: Duration,
}

struct State {
    ready: VecDeque<Arc<dyn Job>>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads started and not yet exited, a standby included.
    threads: usize,
    /// A thread is waiting out [`STUCK`] to see whether it is needed.
    standby: bool,
}

/// The pool of the process.
pub(crate) fn shared() -> Arc<Pool> {
    static SHARED: OnceLock<Arc<Pool>> = OnceLock::new();
    Arc::clone(SHARED.get_or_init(|| Pool::new(IDLE_EXIT)))
}

impl Pool {
    pub(crate) fn new(idle_exit: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                idle: 0,
                threads: 0,
                standby: false,
            }),
            work: Condvar::new(),
            idle_exit,
        })
    }

    /// Threads alive now (working, idle or on standby).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.lock().threads
    }

    pub(crate) fn submit(self: &Arc<Self>, job: Arc<dyn Job>) {
        let mut state = self.lock();
        state.ready.push_back(job);
        if state.ready.len() <= state.idle {
            drop(state);
            self.work.notify_one();
        } else if state.threads < CORE {
            state.threads += 1;
            drop(state);
            self.start(false);
        } else {
            self.standby_if_needed(state);
        }
    }

    /// Starts a standby thread unless one is already waiting or the bound is reached.
    fn standby_if_needed(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        if state.standby || state.threads >= MAX_THREADS || state.ready.is_empty() {
            return;
        }
        state.standby = true;
        state.threads += 1;
        drop(state);
        self.start(true);
    }

    fn start(self: &Arc<Self>, standby: bool) {
        let pool = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("outpost-listener".into())
            .spawn(move || pool.serve(standby));
        if let Err(e) = spawned {
            // The work stays queued for the threads there are (or the next start).
            tracing::error!(error = %e, "could not start a listener thread");
            let mut state = self.lock();
            state.threads -= 1;
            if standby {
                state.standby = false;
            }
        }
    }

    fn serve(self: Arc<Self>, standby: bool) {
        if standby {
            thread::sleep(STUCK);
            let mut state = self.lock();
            state.standby = false;
            if state.ready.len() <= state.idle {
                // The busy threads caught up: not needed.
                state.threads -= 1;
                return;
            }
            // Needed; if more waits than this thread takes, the next standby watches it.
            if state.ready.len() > state.idle + 1 {
                self.standby_if_needed(state);
            }
        }
        let mut state = self.lock();
        loop {
            if let Some(job) = state.ready.pop_front() {
                drop(state);
                job.run();
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (next, wait) = self
                .work
                .wait_timeout(state, self.idle_exit)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            state.idle -= 1;
            if wait.timed_out() && state.ready.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned one only means a panic in this file's
        // few lines of bookkeeping, which leave the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
