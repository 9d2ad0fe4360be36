//! The flaky field link: a [`Transport`] wrapper that loses a seeded share of requests,
//! some before they reach the server and some after the server committed them, and
//! counts what each device sent.
//!
//! The demo has its own small layer rather than the test harness's, because it must be
//! deterministic from `--seed` and count per device: each device draws from its own
//! seeded generator, and its requests are sequential, so the same seed gives the same
//! faults on the same requests.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use outpost_core::protocol::{HealthResponse, PullResponse, PushRequest, PushResponse};
use outpost_core::transport::{BoxFuture, PullParams, WireStats};
use outpost_core::{HttpTimeouts, HttpTransport, Transport, TransportError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the link did, for the report.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub requests: AtomicU64,
    /// Lost on the way to the server: it never saw them.
    pub dropped_requests: AtomicU64,
    /// Handled and committed by the server, then the answer was lost.
    pub dropped_answers: AtomicU64,
    /// Ops sent again with an op_id this link had already carried.
    pub resent_ops: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    DropRequest,
    DropAnswer,
}

/// A device's link to the server.
#[derive(Debug)]
pub struct FlakyLink {
    inner: HttpTransport,
    wire: Arc<WireStats>,
    rng: Mutex<StdRng>,
    fail_rate: f64,
    /// Faults are injected only while this is set (the reconnect phase).
    flaky: AtomicBool,
    seen_ops: Mutex<HashSet<String>>,
    pub counters: LinkCounters,
}

impl FlakyLink {
    pub fn new(base_url: &str, seed: u64, fail_rate: f64) -> Result<FlakyLink, TransportError> {
        let inner = HttpTransport::new(base_url, HttpTimeouts::default())?;
        Ok(FlakyLink {
            wire: inner.stats(),
            inner,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            fail_rate,
            flaky: AtomicBool::new(false),
            seen_ops: Mutex::new(HashSet::new()),
            counters: LinkCounters::default(),
        })
    }

    pub fn set_flaky(&self, on: bool) {
        self.flaky.store(on, Relaxed);
    }

    /// Bytes on the wire (gzip-compressed where the transport compressed).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.wire.bytes_sent.load(Relaxed),
            self.wire.bytes_received.load(Relaxed),
        )
    }

    fn draw(&self) -> Option<Fault> {
        self.counters.requests.fetch_add(1, Relaxed);
        if !self.flaky.load(Relaxed) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.random_bool(self.fail_rate) {
            // A little over half of the failures lose the answer after the commit: the
            // case that makes a careless client upload an answer twice.
            if rng.random_bool(0.55) {
                Some(Fault::DropAnswer)
            } else {
                Some(Fault::DropRequest)
            }
        } else {
            None
        }
    }

    async fn faulted<T>(
        &self,
        fault: Option<Fault>,
        call: impl Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        match fault {
            None => call.await,
            Some(Fault::DropRequest) => {
                self.counters.dropped_requests.fetch_add(1, Relaxed);
                Err(TransportError::Network("flaky link: request lost".into()))
            }
            Some(Fault::DropAnswer) => {
                let _ = call.await;
                self.counters.dropped_answers.fetch_add(1, Relaxed);
                Err(TransportError::Network(
                    "flaky link: answer lost after the server committed".into(),
                ))
            }
        }
    }
}

impl Transport for FlakyLink {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        Box::pin(async move {
            let fault = self.draw();
            self.faulted(fault, self.inner.health()).await
        })
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        Box::pin(async move {
            {
                let mut seen = self.seen_ops.lock().unwrap_or_else(|p| p.into_inner());
                for op in &request.ops {
                    if !seen.insert(op.op_id.clone()) {
                        self.counters.resent_ops.fetch_add(1, Relaxed);
                    }
                }
            }
            let fault = self.draw();
            self.faulted(fault, self.inner.push(token, request)).await
        })
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(async move {
            let fault = self.draw();
            self.faulted(fault, self.inner.pull(token, params)).await
        })
    }
}
