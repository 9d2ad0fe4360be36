//! The change feed: tells the UI which records changed after each commit.
//!
//! The UI reads only local data, so it must hear about every commit, local or pulled.
//! Each subscriber gets one pending slot: the writer only merges its change into that
//! slot and hands the subscriber to a pool thread ([`pool`]), so a slow or failing
//! listener can never block a write, and events coalesce rather than queue without bound
//! or get dropped. A subscriber is delivered to by one thread at a time, in order.
//! Listeners are never called on the writing thread or under a database lock.
//!
//! A subscription ends when it is cancelled or when the store (or engine) closes. Once
//! that call returns no callback starts: the pending event is dropped, and the call
//! waits for a callback under way (unless it is that callback's own thread), for up to
//! [`CLOSE_WAIT`]; a listener hung longer is logged and left to finish. Its
//! end is observable ([`Subscription::closed`]), so a Kotlin Flow or Swift stream over
//! it can complete.

mod pool;

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError, Weak};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use pool::{Job, Pool};

/// How long ending a subscription waits for a callback under way. A listener that
/// hangs longer is logged and left running; no later callback starts.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOrigin {
    /// A write made on this device.
    Local,
    /// A change pulled from the server (or a conflict resolution), or the server's
    /// answer to a sent edit, which changes the record's sync state.
    Remote,
    /// Both: the event coalesces local and remote commits the listener had not yet seen.
    Mixed,
}

impl ChangeOrigin {
    fn merge(self, other: ChangeOrigin) -> ChangeOrigin {
        if self == other {
            self
        } else {
            ChangeOrigin::Mixed
        }
    }
}

/// One changed record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordRef {
    pub collection: String,
    pub id: String,
}

/// What one or more commits changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub origin: ChangeOrigin,
    pub collections: BTreeSet<String>,
    pub records: BTreeSet<RecordRef>,
    /// How many commits this event covers (more than one when coalesced).
    pub commits: u64,
}

impl ChangeEvent {
    pub(crate) fn new(origin: ChangeOrigin) -> ChangeEvent {
        ChangeEvent {
            origin,
            collections: BTreeSet::new(),
            records: BTreeSet::new(),
            commits: 1,
        }
    }

    pub(crate) fn add(&mut self, collection: &str, id: &str) {
        if !self.collections.contains(collection) {
            self.collections.insert(collection.to_owned());
        }
        self.records.insert(RecordRef {
            collection: collection.to_owned(),
            id: id.to_owned(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn absorb(&mut self, other: ChangeEvent) {
        self.origin = self.origin.merge(other.origin);
        self.collections.extend(other.collections);
        self.records.extend(other.records);
        self.commits += other.commits;
    }
}

/// Receives change events. Returning an error is logged; later events still arrive.
pub trait ChangeListener: Send + Sync {
    fn on_change(&self, event: &ChangeEvent) -> Result<(), String>;
}

impl<F> ChangeListener for F
where
    F: Fn(&ChangeEvent) + Send + Sync,
{
    fn on_change(&self, event: &ChangeEvent) -> Result<(), String> {
        self(event);
        Ok(())
    }
}

/// Events that can be merged into one when a listener falls behind.
pub(crate) trait Coalesce: Clone + Send + 'static {
    fn absorb(&mut self, later: Self);
}

impl Coalesce for ChangeEvent {
    fn absorb(&mut self, later: Self) {
        ChangeEvent::absorb(self, later);
    }
}

struct Slot<E> {
    pending: Option<E>,
    closed: bool,
    /// Handed to the pool and not yet picked up, or delivering: either way a pool
    /// thread will see `pending`, so it is not handed over again.
    scheduled: bool,
    /// The thread running a callback now, which must not wait for itself.
    running_on: Option<ThreadId>,
}

struct Subscriber<E> {
    slot: Mutex<Slot<E>>,
    /// The listener; taken out when the subscription ends, so that it (a foreign
    /// callback, with what it holds) is released even while the subscription object
    /// lives on. Locked only by the one thread delivering.
    deliver: Mutex<Option<Deliver<E>>>,
    pool: Arc<Pool>,
    /// Tells a closing call that the running callback returned.
    idle: Condvar,
    ended: watch::Sender<bool>,
}

impl<E> Subscriber<E> {
    fn new(
        deliver: Deliver<E>,
        initial: Option<E>,
        closed: bool,
        pool: Arc<Pool>,
    ) -> Subscriber<E> {
        Subscriber {
            slot: Mutex::new(Slot {
                pending: initial.filter(|_| !closed),
                closed,
                scheduled: false,
                running_on: None,
            }),
            deliver: Mutex::new((!closed).then_some(deliver)),
            pool,
            idle: Condvar::new(),
            ended: watch::Sender::new(closed),
        }
    }

    /// Drops the listener unless a callback holds it (that thread drops it after).
    fn release_listener(&self) {
        let listener = match self.deliver.try_lock() {
            Ok(mut d) => d.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        };
        drop(listener);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<E>> {
        // A poisoned slot only means a panic elsewhere; the data is still consistent.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

trait Closable: Send + Sync {
    /// Ends delivery; returns once no callback runs (see the module doc).
    fn close(&self);
    fn is_closed(&self) -> bool;
    fn ended(&self) -> watch::Receiver<bool>;
}

impl<E: Send> Closable for Subscriber<E> {
    fn close(&self) {
        let mut slot = self.lock();
        slot.closed = true;
        slot.pending = None;
        let own = slot.running_on == Some(thread::current().id());
        if !own {
            let deadline = Instant::now() + CLOSE_WAIT;
            while slot.running_on.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!("a listener is still running {CLOSE_WAIT:?} after its end");
                    break;
                }
                slot = self
                    .idle
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        drop(slot);
        if !own {
            self.release_listener();
        }
        // Told last, so a stream completing on it has every value already delivered.
        self.ended.send_replace(true);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn ended(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }
}

/// A listener callback as the fan-out stores it.
pub(crate) type Deliver<E> = Box<dyn Fn(&E) -> Result<(), String> + Send>;

/// The publisher side: one pending slot per subscriber, delivered by a shared pool.
pub(crate) struct Fanout<E> {
    subscribers: Mutex<Subscribers<E>>,
    pool: Arc<Pool>,
}

struct Subscribers<E> {
    live: Vec<Weak<Subscriber<E>>>,
    /// Closed for good: a later subscription starts ended.
    closed: bool,
}

impl<E> Default for Fanout<E> {
    fn default() -> Self {
        Fanout::with_pool(pool::shared())
    }
}

impl<E> Fanout<E> {
    fn with_pool(pool: Arc<Pool>) -> Fanout<E> {
        Fanout {
            subscribers: Mutex::new(Subscribers {
                live: Vec::new(),
                closed: false,
            }),
            pool,
        }
    }
}

impl<E> std::fmt::Debug for Fanout<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").finish_non_exhaustive()
    }
}

/// The store's change feed.
pub(crate) type Feed = Fanout<ChangeEvent>;

impl Feed {
    pub(crate) fn subscribe_listener(&self, listener: Arc<dyn ChangeListener>) -> Subscription {
        self.subscribe(Box::new(move |e: &ChangeEvent| listener.on_change(e)))
    }
}

impl<E: Coalesce + Sync> Fanout<E> {
    pub(crate) fn subscribe(&self, deliver_fn: Deliver<E>) -> Subscription {
        self.subscribe_with(deliver_fn, None)
    }

    /// [`Fanout::subscribe`], with `initial` waiting to be delivered first.
    pub(crate) fn subscribe_with(
        &self,
        deliver_fn: Deliver<E>,
        initial: Option<E>,
    ) -> Subscription {
        // Registered before its first delivery: a commit made once that is under way
        // (an observer's initial result) must reach this subscriber.
        let sub = {
            let mut subs = self.lock();
            let pool = Arc::clone(&self.pool);
            let sub = Arc::new(Subscriber::new(deliver_fn, initial, subs.closed, pool));
            if subs.closed {
                return Subscription { sub, counts: None };
            }
            subs.live.retain(|w| w.strong_count() > 0);
            subs.live.push(Arc::downgrade(&sub));
            sub
        };
        sub.schedule(sub.lock());
        Subscription { sub, counts: None }
    }

    /// Hands an event to every subscriber. Cheap: no listener runs here.
    pub(crate) fn publish(&self, event: E) {
        let subs: Vec<Arc<Subscriber<E>>> =
            self.lock().live.iter().filter_map(Weak::upgrade).collect();
        for sub in subs {
            let mut slot = sub.lock();
            if slot.closed {
                continue;
            }
            match &mut slot.pending {
                Some(p) => p.absorb(event.clone()),
                None => slot.pending = Some(event.clone()),
            }
            sub.schedule(slot);
        }
    }

    /// Ends every subscription, now and to come; returns once no callback runs.
    pub(crate) fn close_all(&self) {
        let subs: Vec<Arc<Subscriber<E>>> = {
            let mut subs = self.lock();
            subs.closed = true;
            subs.live.drain(..).filter_map(|w| w.upgrade()).collect()
        };
        for sub in subs {
            sub.close();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers<E>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<E: Coalesce + Sync> Subscriber<E> {
    /// Hands the subscriber to the pool when it has an event and no thread has it.
    fn schedule(self: &Arc<Self>, mut slot: std::sync::MutexGuard<'_, Slot<E>>) {
        if slot.closed || slot.scheduled || slot.pending.is_none() {
            return;
        }
        slot.scheduled = true;
        drop(slot);
        self.pool.submit(Arc::clone(self) as Arc<dyn Job>);
    }
}

impl<E: Coalesce + Sync> Job for Subscriber<E> {
    /// Delivers what is pending, and what arrives meanwhile, then gives the thread back.
    fn run(self: Arc<Self>) {
        let me = thread::current().id();
        loop {
            let event = {
                let mut slot = self.lock();
                match slot.pending.take().filter(|_| !slot.closed) {
                    Some(e) => {
                        slot.running_on = Some(me);
                        e
                    }
                    None => {
                        slot.scheduled = false;
                        return;
                    }
                }
            };
            {
                let deliver = self.deliver.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(listener) = deliver.as_ref() {
                    // A panicking listener must not take the pool thread (or later
                    // events) down.
                    match std::panic::catch_unwind(AssertUnwindSafe(|| listener(&event))) {
                        Ok(Ok(())) => {}
                        // Its error is the app's own text, which may quote data: the
                        // app has it; the log does not.
                        Ok(Err(_)) => tracing::warn!("a listener returned an error"),
                        Err(_) => tracing::warn!("listener panicked"),
                    }
                }
            }
            let closed = {
                let mut slot = self.lock();
                slot.running_on = None;
                slot.closed
            };
            self.idle.notify_all();
            if closed {
                // Ended meanwhile (perhaps by this very callback), when the closing call
                // may not have been able to release the listener: release it here,
                // outside every lock.
                let listener = self
                    .deliver
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                drop(listener);
            }
        }
    }
}

/// What an observer ([`crate::Store::observe`]) has done so far: how precise it is,
/// which its deliveries alone do not show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserverStats {
    /// Change events it was handed (coalesced commits count once), its first run
    /// included.
    pub events: u64,
    /// Times it ran its query, its first run included. An event that cannot change
    /// the result is not one.
    pub runs: u64,
    /// Times it called the listener: a run whose result is the last one is not one.
    pub deliveries: u64,
}

/// An observer's counts, shared between its delivery thread and its subscription.
#[derive(Debug, Default)]
pub(crate) struct ObserverCounts {
    events: AtomicU64,
    runs: AtomicU64,
    deliveries: AtomicU64,
}

impl ObserverCounts {
    pub(crate) fn event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn run(&self) {
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn delivery(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }
    fn stats(&self) -> ObserverStats {
        ObserverStats {
            events: self.events.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
        }
    }
}

/// A live subscription. Dropping it (or calling `cancel`) stops delivery.
#[must_use = "dropping the subscription unsubscribes"]
pub struct Subscription {
    sub: Arc<dyn Closable>,
    counts: Option<Arc<ObserverCounts>>,
}

impl Subscription {
    /// Stops delivery; once it returns, no callback runs or starts (called from the
    /// listener itself, the callback under way is its caller).
    pub fn cancel(&self) {
        self.sub.close();
    }

    /// Whether delivery has ended: cancelled, or the store or engine closed.
    pub fn is_closed(&self) -> bool {
        self.sub.is_closed()
    }

    /// Resolves once delivery has ended, however it ended: what lets a stream over the
    /// subscription complete when the store closes.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.end().ended()
    }

    /// The end of this subscription, to wait for apart from it (it outlives it).
    pub fn end(&self) -> SubscriptionEnd {
        SubscriptionEnd(self.sub.ended())
    }

    /// An observer's counts so far; all zero for a plain change subscription.
    pub fn stats(&self) -> ObserverStats {
        self.counts
            .as_ref()
            .map_or_else(ObserverStats::default, |c| c.stats())
    }

    pub(crate) fn counting(mut self, counts: Arc<ObserverCounts>) -> Subscription {
        self.counts = Some(counts);
        self
    }
}

/// The end of a [`Subscription`]: cancelled, or its store or engine closed.
#[derive(Debug, Clone)]
pub struct SubscriptionEnd(watch::Receiver<bool>);

impl SubscriptionEnd {
    pub fn has_ended(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the subscription has ended.
    pub async fn ended(mut self) {
        // An error means the sender is gone, which only happens after the end.
        let _ = self.0.wait_for(|e| *e).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn event(origin: ChangeOrigin, ids: &[&str]) -> ChangeEvent {
        let mut e = ChangeEvent::new(origin);
        for id in ids {
            e.add("c", id);
        }
        e
    }

    /// Waits up to 10 s for `done`.
    fn eventually(done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while !done() {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn idle_subscriptions_hold_no_thread() {
        // A screen of observed rows: many subscriptions, each delivered now and then.
        let pool = Pool::new(Duration::from_millis(200));
        let feed: Feed = Fanout::with_pool(Arc::clone(&pool));
        let (tx, rx) = mpsc::channel();
        let subs: Vec<Subscription> = (0..200)
            .map(|i| {
                let tx = Mutex::new(tx.clone());
                let deliver = move |e: &ChangeEvent| {
                    let _ = tx.lock().unwrap().send((i, e.commits));
                    Ok(())
                };
                feed.subscribe_with(Box::new(deliver), Some(event(ChangeOrigin::Local, &["a"])))
            })
            .collect();
        for _ in 0..200 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Quick callbacks need no thread each (200 under a thread per subscription).
        assert!(pool.threads() <= 10, "{} threads", pool.threads());
        assert!(
            eventually(|| pool.threads() == 0),
            "{} threads stay",
            pool.threads()
        );

        // Still subscribed: the next commit reaches each one, once.
        feed.publish(event(ChangeOrigin::Remote, &["b"]));
        let mut got: Vec<usize> = (0..200)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().0)
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(subs);
    }

    #[test]
    fn hung_listeners_do_not_hold_up_the_others() {
        let pool = Pool::new(Duration::from_secs(10));
        let feed: Feed = Fanout::with_pool(Arc::clone(&pool));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let (entered_tx, entered) = mpsc::channel();
        // More hung listeners than the pool starts threads for at once.
        let hung: Vec<Subscription> = (0..4)
            .map(|_| {
                let (gate, entered_tx) = (Arc::clone(&gate), Mutex::new(entered_tx.clone()));
                let deliver = move |_: &ChangeEvent| {
                    let _ = entered_tx.lock().unwrap().send(());
                    let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
                    Ok(())
                };
                feed.subscribe(Box::new(deliver))
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let _live = feed.subscribe(Box::new(move |e: &ChangeEvent| {
            let _ = tx.lock().unwrap().send(e.commits);
            Ok(())
        }));
        feed.publish(event(ChangeOrigin::Local, &["a"]));
        // Within a few standby periods, not after the hung ones.
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(entered.recv_timeout(Duration::from_secs(5)).is_ok());
        for _ in 0..4 {
            let _ = gate_tx.send(());
        }
        drop(hung);
    }

    #[test]
    fn slow_listener_gets_coalesced_events_and_loses_none() {
        let feed = Feed::default();
        let (tx, rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let listener = move |e: &ChangeEvent| {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(5));
            tx.send(e.clone()).unwrap();
        };
        let _sub = feed.subscribe_listener(Arc::new(listener));
        feed.publish(event(ChangeOrigin::Local, &["a"]));
        std::thread::sleep(Duration::from_millis(50)); // the listener is now stuck on "a"
        for id in ["b", "c", "d"] {
            feed.publish(event(ChangeOrigin::Remote, &[id]));
        }
        gate_tx.send(()).unwrap();
        gate_tx.send(()).unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.records.len(), 1);
        assert_eq!(second.commits, 3);
        assert_eq!(second.origin, ChangeOrigin::Remote);
        let ids: Vec<_> = second.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
    }

    #[test]
    fn failing_and_panicking_listeners_keep_receiving() {
        struct Flaky(mpsc::Sender<u64>, std::sync::atomic::AtomicU32);
        impl ChangeListener for Flaky {
            fn on_change(&self, e: &ChangeEvent) -> Result<(), String> {
                let n = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                self.0.send(e.commits).unwrap();
                match n {
                    1 => Err("boom".into()),
                    2 => panic!("listener bug"),
                    _ => Ok(()),
                }
            }
        }
        let feed = Feed::default();
        let (tx, rx) = mpsc::channel();
        let _sub = feed.subscribe_listener(Arc::new(Flaky(tx, 0.into())));
        for i in 0..3 {
            feed.publish(event(ChangeOrigin::Local, &[&i.to_string()]));
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    }

    #[test]
    fn closing_waits_for_the_running_callback_drops_what_is_pending_and_stays_closed() {
        let feed = Feed::default();
        let (tx, rx) = mpsc::channel();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = Arc::clone(&running);
        let sub = feed.subscribe_listener(Arc::new(move |e: &ChangeEvent| {
            r.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            r.store(false, Ordering::SeqCst);
            tx.send(e.commits).unwrap();
        }));
        let end = sub.end();
        feed.publish(event(ChangeOrigin::Local, &["a"]));
        while !running.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Pending behind the running callback when the feed closes: never delivered.
        feed.publish(event(ChangeOrigin::Local, &["b"]));
        assert!(!end.has_ended());
        feed.close_all();
        assert!(
            !running.load(Ordering::SeqCst),
            "close returned under a callback"
        );
        assert!(sub.is_closed() && end.has_ended());
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(1));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // A subscription after the close starts ended and hears nothing.
        let late = feed.subscribe_with(Box::new(|_: &ChangeEvent| Ok(())), None);
        assert!(late.is_closed() && late.end().has_ended());
        feed.publish(event(ChangeOrigin::Local, &["c"]));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_listener_may_cancel_its_own_subscription() {
        let feed = Feed::default();
        let (tx, rx) = mpsc::channel();
        let slot: Arc<Mutex<Option<Subscription>>> = Arc::default();
        let own = Arc::clone(&slot);
        let sub = feed.subscribe_listener(Arc::new(move |_: &ChangeEvent| {
            // Cancelling from the delivery thread itself does not wait for itself.
            if let Some(s) = own.lock().unwrap().take() {
                s.cancel();
            }
            tx.send(()).unwrap();
        }));
        let end = sub.end();
        *slot.lock().unwrap() = Some(sub);
        feed.publish(event(ChangeOrigin::Local, &["a"]));
        assert!(rx.recv_timeout(Duration::from_secs(1)).is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), end.ended()).await })
            .expect("its end is told");
    }

    #[test]
    fn dropping_the_subscription_stops_delivery() {
        let feed = Feed::default();
        let (tx, rx) = mpsc::channel();
        let sub =
            feed.subscribe_listener(Arc::new(move |e: &ChangeEvent| tx.send(e.commits).unwrap()));
        feed.publish(event(ChangeOrigin::Local, &["a"]));
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drop(sub);
        feed.publish(event(ChangeOrigin::Local, &["b"]));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
