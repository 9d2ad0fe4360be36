//! The change feed: tells the UI which records changed after each commit.
//!
//! The UI reads only local data, so it must hear about every commit, local or pulled.
//! Each subscriber gets its own delivery thread and one pending slot: the writer only
//! merges its change into that slot and wakes the thread, so a slow or failing listener
//! can never block a write, and events coalesce rather than queue without bound or get
//! dropped. Listeners are never called on the writing thread or under a database lock.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOrigin {
    /// A write made on this device.
    Local,
    /// A change pulled from the server (or a conflict resolution).
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
}

struct Subscriber<E> {
    slot: Mutex<Slot<E>>,
    wake: Condvar,
}

impl<E> Subscriber<E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<E>> {
        // A poisoned slot only means a panic elsewhere; the data is still consistent.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

trait Closable: Send + Sync {
    fn close(&self);
}

impl<E: Send> Closable for Subscriber<E> {
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// A listener callback as the fan-out stores it.
pub(crate) type Deliver<E> = Box<dyn Fn(&E) -> Result<(), String> + Send>;

/// The publisher side: one delivery thread and one pending slot per subscriber.
pub(crate) struct Fanout<E> {
    subscribers: Mutex<Vec<Weak<Subscriber<E>>>>,
}

impl<E> Default for Fanout<E> {
    fn default() -> Self {
        Fanout {
            subscribers: Mutex::new(Vec::new()),
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

impl<E: Coalesce> Fanout<E> {
    pub(crate) fn subscribe(&self, deliver_fn: Deliver<E>) -> Subscription {
        self.subscribe_with(deliver_fn, None)
    }

    /// [`Fanout::subscribe`], with `initial` waiting to be delivered first.
    pub(crate) fn subscribe_with(
        &self,
        deliver_fn: Deliver<E>,
        initial: Option<E>,
    ) -> Subscription {
        let sub = Arc::new(Subscriber {
            slot: Mutex::new(Slot {
                pending: initial,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        // Registered before its thread starts: a commit made once the first delivery
        // is under way (an observer's initial result) must reach this subscriber.
        {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.push(Arc::downgrade(&sub));
        }
        let worker = Arc::clone(&sub);
        let spawned = thread::Builder::new()
            .name("outpost-listener".into())
            .spawn(move || deliver(&worker, deliver_fn.as_ref()));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a listener thread");
        }
        Subscription { sub, counts: None }
    }

    /// Hands an event to every subscriber. Cheap: no listener runs here.
    pub(crate) fn publish(&self, event: E) {
        let subs: Vec<Arc<Subscriber<E>>> = {
            let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for sub in subs {
            let mut slot = sub.lock();
            if slot.closed {
                continue;
            }
            match &mut slot.pending {
                Some(p) => p.absorb(event.clone()),
                None => slot.pending = Some(event.clone()),
            }
            drop(slot);
            sub.wake.notify_one();
        }
    }

    pub(crate) fn close_all(&self) {
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for sub in subs.iter().filter_map(Weak::upgrade) {
            sub.close();
        }
    }
}

fn deliver<E>(sub: &Subscriber<E>, listener: &(dyn Fn(&E) -> Result<(), String> + Send)) {
    loop {
        let event = {
            let mut slot = sub.lock();
            loop {
                if let Some(e) = slot.pending.take() {
                    break e;
                }
                if slot.closed {
                    return;
                }
                slot = sub.wake.wait(slot).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panicking listener must not take the delivery thread (and later events) down.
        match std::panic::catch_unwind(AssertUnwindSafe(|| listener(&event))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "listener failed"),
            Err(_) => tracing::warn!("listener panicked"),
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
    pub fn cancel(&self) {
        self.sub.close();
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
