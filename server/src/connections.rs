//! The listener: accepting connections within a cap, and timing each one out when it
//! is slow or silent.
//!
//! Every open connection holds a file descriptor and buffers, so a client that never
//! finishes its headers (slowloris), trickles a body, or never reads its answer must
//! not keep them. Each connection runs under a watchdog that knows which phase it is
//! in, from the bytes it moves and the requests it serves:
//!
//! - **head**: from the connection's start, or the first byte of a later request, the
//!   headers must be complete within `header_read`;
//! - **body**: from the end of the headers, the body must be complete within
//!   `body_read`;
//! - **busy**: the handler works; no read limit;
//! - **idle**: between an answer and the next request, at most `idle`;
//! - in any phase, a write that makes no progress for `write` (a client that stopped
//!   reading) ends the connection, and with it the answer it pinned.
//!
//! A timed-out connection is closed without an answer: clients treat that as a network
//! failure and retry later, which is right for a slow link.
//!
//! At most `max_connections` are open. When the cap is reached, or the process runs out
//! of file descriptors, the connections that are idle or still sending headers are
//! closed, oldest first, to make room; only when every connection is busy does
//! accepting wait. So a flood of slow connections cannot lock out `/health` or a
//! device's push.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ConnLimits;
use crate::metrics::Metrics;

/// Where a connection is in its request cycle; each phase has its own read limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request's headers, since this instant.
    Head(Instant),
    /// Headers read at this instant; the body is still coming.
    Body(Instant),
    /// The handler runs or the answer is being written.
    Busy,
    /// Answered at this instant; waiting for another request.
    Idle(Instant),
}

impl Phase {
    /// Whether closing the connection now loses no work: nothing is being served.
    fn evictable(self) -> Option<Instant> {
        match self {
            Phase::Head(t) | Phase::Idle(t) => Some(t),
            Phase::Body(_) | Phase::Busy => None,
        }
    }
}

#[derive(Debug)]
struct WatchState {
    phase: Phase,
    /// Since when a write has been waiting for the client to read.
    write_stalled: Option<Instant>,
}

/// What a connection's I/O, its requests and its watchdog share.
#[derive(Debug)]
struct ConnWatch {
    state: Mutex<WatchState>,
    /// Wakes the watchdog when its deadline may have moved earlier.
    changed: Notify,
    /// Wakes the watchdog to close the connection at once.
    evict: Notify,
}

impl ConnWatch {
    fn new(now: Instant) -> ConnWatch {
        ConnWatch {
            state: Mutex::new(WatchState {
                phase: Phase::Head(now),
                write_stalled: None,
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut WatchState) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn set_phase(&self, phase: Phase) {
        self.with(|s| s.phase = phase);
        self.changed.notify_one();
    }

    fn bytes_read(&self) {
        let started = self.with(|s| {
            if let Phase::Idle(_) = s.phase {
                s.phase = Phase::Head(Instant::now());
                true
            } else {
                false
            }
        });
        if started {
            self.changed.notify_one();
        }
    }

    fn write_progress(&self, stalled: bool) {
        let newly = self.with(|s| match (stalled, s.write_stalled) {
            (true, None) => {
                s.write_stalled = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                s.write_stalled = None;
                false
            }
            _ => false,
        });
        if newly {
            self.changed.notify_one();
        }
    }

    fn evictable_since(&self) -> Option<Instant> {
        self.with(|s| s.phase.evictable())
    }

    /// When the connection must be closed if nothing changes, and why.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, &'static str)> {
        self.with(|s| {
            let read = match s.phase {
                Phase::Head(t) => Some((t + limits.header_read, "header read")),
                Phase::Body(t) => Some((t + limits.body_read, "body read")),
                Phase::Idle(t) => Some((t + limits.idle, "idle")),
                Phase::Busy => None,
            };
            let write = s.write_stalled.map(|t| (t + limits.write, "write"));
            match (read, write) {
                (Some(r), Some(w)) => Some(if w.0 < r.0 { w } else { r }),
                (r, w) => r.or(w),
            }
        })
    }
}

/// The TCP stream, telling the watchdog about reads and stalled writes.
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.watch.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl WatchedIo {
    fn track<T>(&self, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.watch.write_progress(p.is_pending());
        p
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(p)
    }
}

/// A request body that moves its connection from `Body` to `Busy` when it ends.
struct RequestBody {
    inner: Incoming,
    watch: Arc<ConnWatch>,
    done: bool,
}

impl RequestBody {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.watch.set_phase(Phase::Busy);
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(p, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finish();
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer body that moves its connection to `Idle` once it is written (or dropped).
struct ResponseBody {
    inner: Body,
    watch: Arc<ConnWatch>,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.watch.set_phase(Phase::Idle(Instant::now()));
    }
}

/// The open connections, for eviction and counting.
#[derive(Debug, Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnWatch>>>,
    /// Signalled whenever a connection closes.
    closed: Notify,
}

impl Registry {
    fn add(&self, watch: Arc<ConnWatch>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, watch);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.closed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnWatch>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells up to `n` connections that serve nothing, oldest first, to close; returns
    /// how many were told.
    fn evict_oldest(&self, n: usize) -> usize {
        let mut candidates: Vec<(Instant, Arc<ConnWatch>)> = self
            .lock()
            .values()
            .filter_map(|w| w.evictable_since().map(|t| (t, Arc::clone(w))))
            .collect();
        candidates.sort_by_key(|(t, _)| *t);
        let told = candidates.len().min(n);
        for (_, w) in candidates.into_iter().take(told) {
            w.evict.notify_one();
        }
        told
    }
}

/// Limits that a config reload may change while connections are open.
#[derive(Debug)]
pub struct SharedLimits(RwLock<Arc<ConnLimits>>);

impl SharedLimits {
    pub fn new(limits: ConnLimits) -> SharedLimits {
        SharedLimits(RwLock::new(Arc::new(limits)))
    }

    pub fn get(&self) -> Arc<ConnLimits> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set(&self, limits: ConnLimits) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limits);
    }
}

/// Whether an accept error means the process or system is out of file descriptors.
fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE and ENFILE on Linux and the BSDs; the message names them on any system.
    matches!(e.raw_os_error(), Some(23 | 24)) || e.to_string().contains("Too many open files")
}

/// Serves `app` on `listener` until `shutdown` completes, then lets every connection
/// finish its request in flight and closes it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Arc<SharedLimits>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let registry = Arc::new(Registry::default());
    // The cap itself is read at each accept, so a reload can raise or lower it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let cap = limits.get().max_connections;
        if registry.lock().len() >= cap {
            if registry.evict_oldest(1) == 0 {
                tracing::debug!(cap, "connection cap reached; every connection is busy");
            }
            // Wait for a slot, re-checking now and then in case the cap was raised.
            tokio::select! {
                () = registry.closed.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut shutdown => break,
            }
            continue;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) if out_of_descriptors(&e) => {
                // Make room by closing connections that serve nothing, then retry; the
                // client stays queued in the kernel meanwhile.
                let told = registry.evict_oldest(16);
                tracing::warn!(error = %e, evicted = told, "out of file descriptors");
                if told > 0 {
                    tokio::select! {
                        () = registry.closed.notified() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                continue;
            }
            Err(e) => {
                // A connection reset before it was accepted, and the like: not ours.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let watch = Arc::new(ConnWatch::new(Instant::now()));
        let id = registry.add(Arc::clone(&watch));
        let task = Connection {
            app: app.clone(),
            watch,
            peer,
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&metrics),
            stop: stop_rx.clone(),
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            task.run(tcp).await;
            registry.remove(id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Connections close as soon as their request in flight is answered.
    while !registry.lock().is_empty() {
        tokio::select! {
            () = registry.closed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

struct Connection {
    app: Router,
    watch: Arc<ConnWatch>,
    peer: SocketAddr,
    limits: Arc<SharedLimits>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let _open = self.metrics.connection_opened();
        let io = TokioIo::new(WatchedIo {
            inner: tcp,
            watch: Arc::clone(&self.watch),
        });
        let (app, watch, peer) = (self.app.clone(), Arc::clone(&self.watch), self.peer);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let watch = Arc::clone(&watch);
            let app = app.clone();
            async move {
                let (mut parts, inner) = req.into_parts();
                let now = Instant::now();
                watch.set_phase(if inner.is_end_stream() {
                    Phase::Busy
                } else {
                    Phase::Body(now)
                });
                // Handlers (the audit, the throttle) read the client's address here.
                parts.extensions.insert(ConnectInfo(peer));
                let body = RequestBody {
                    inner,
                    watch: Arc::clone(&watch),
                    done: false,
                };
                let req = axum::extract::Request::from_parts(parts, Body::new(body));
                let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                Ok::<_, std::convert::Infallible>(resp.map(|inner| ResponseBody { inner, watch }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The watchdog does the timing; hyper's own header timer would also cut idle
        // connections at the header limit.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut stopping = *self.stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let limits = self.limits.get();
            let deadline = self.watch.deadline(&limits);
            let sleep_until =
                deadline.map_or_else(|| Instant::now() + Duration::from_secs(3600), |(t, _)| t);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(sleep_until) => {
                    if let Some((t, why)) = self.watch.deadline(&limits)
                        && t <= Instant::now()
                    {
                        tracing::debug!(timeout = why, "connection timed out");
                        self.metrics.connection_timed_out(why);
                        return;
                    }
                }
                () = self.watch.changed.notified() => {}
                () = self.watch.evict.notified() => {
                    tracing::debug!("connection closed to make room");
                    self.metrics.connection_evicted();
                    return;
                }
                r = self.stop.changed(), if !stopping => {
                    stopping = true;
                    if r.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            write: Duration::from_secs(5),
            max_connections: 8,
        }
    }

    #[tokio::test]
    async fn each_phase_has_its_own_deadline() {
        let t0 = Instant::now();
        let w = ConnWatch::new(t0);
        let l = limits();
        assert_eq!(w.deadline(&l), Some((t0 + l.header_read, "header read")));
        w.set_phase(Phase::Body(t0));
        assert_eq!(w.deadline(&l), Some((t0 + l.body_read, "body read")));
        w.set_phase(Phase::Busy);
        assert_eq!(w.deadline(&l), None);
        w.write_progress(true);
        let (t, why) = w.deadline(&l).unwrap();
        assert_eq!(why, "write");
        assert!(t >= t0 + l.write);
        w.write_progress(false);
        assert_eq!(w.deadline(&l), None);
        w.set_phase(Phase::Idle(t0));
        assert_eq!(w.deadline(&l), Some((t0 + l.idle, "idle")));
        // The first byte of the next request starts the header clock.
        w.bytes_read();
        assert_eq!(w.deadline(&l).unwrap().1, "header read");
    }

    #[tokio::test]
    async fn eviction_takes_the_oldest_connections_that_serve_nothing() {
        let r = Registry::default();
        let t0 = Instant::now();
        let busy = Arc::new(ConnWatch::new(t0));
        busy.set_phase(Phase::Busy);
        let old = Arc::new(ConnWatch::new(t0));
        let young = Arc::new(ConnWatch::new(t0 + Duration::from_secs(1)));
        for w in [&busy, &old, &young] {
            r.add(Arc::clone(w));
        }
        assert_eq!(r.evict_oldest(1), 1);
        let told = |w: &ConnWatch| {
            let n = w.evict.notified();
            let mut n = std::pin::pin!(n);
            n.as_mut().enable()
        };
        assert!(told(&old));
        assert!(!told(&young));
        assert_eq!(r.evict_oldest(5), 2, "the busy one is never evicted");
        assert!(!told(&busy));
    }

    #[test]
    fn fd_exhaustion_is_recognised() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(104)));
    }
}
