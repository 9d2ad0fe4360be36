//! A transport layer that injects the faults of a field network: failed requests,
//! responses lost after the server committed, server errors, rate limits and outages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::protocol::{HealthResponse, PullResponse, PushRequest, PushResponse};
use outpost_core::transport::{BoxFuture, PullParams};
use outpost_core::{Transport, TransportError};

/// One injected fault, applied to the next request it fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The request never reaches the server.
    DropRequest,
    /// The server handles the request, then the answer is lost.
    DropResponse,
    /// The server answers 500 without handling it.
    ServerError,
    /// The server answers 429 with `Retry-After`.
    RateLimited(Duration),
    /// The server answers 401 without handling it.
    Unauthorized,
    /// The request hangs for this long before going through.
    Delay(Duration),
    /// The server handles the request; the answer arrives this much later.
    DelayAfter(Duration),
}

/// Wraps a real transport; faults queue up per request kind.
#[derive(Debug)]
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    push_faults: Mutex<VecDeque<Fault>>,
    pull_faults: Mutex<VecDeque<Fault>>,
    /// Every request fails as if the radio were off.
    pub down: AtomicBool,
    pub pushes: AtomicU64,
    pub pulls: AtomicU64,
    pub healths: AtomicU64,
}

impl FaultyTransport {
    pub fn new(inner: Arc<dyn Transport>) -> FaultyTransport {
        FaultyTransport {
            inner,
            push_faults: Mutex::new(VecDeque::new()),
            pull_faults: Mutex::new(VecDeque::new()),
            down: AtomicBool::new(false),
            pushes: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            healths: AtomicU64::new(0),
        }
    }

    pub fn fail_next_push(&self, f: Fault) {
        self.push_faults.lock().expect("faults").push_back(f);
    }

    pub fn fail_next_pull(&self, f: Fault) {
        self.pull_faults.lock().expect("faults").push_back(f);
    }

    /// Requests of any kind so far.
    pub fn requests(&self) -> u64 {
        self.pushes.load(Ordering::SeqCst)
            + self.pulls.load(Ordering::SeqCst)
            + self.healths.load(Ordering::SeqCst)
    }

    fn next(queue: &Mutex<VecDeque<Fault>>) -> Option<Fault> {
        queue.lock().expect("faults").pop_front()
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

async fn faulted<T>(
    fault: Option<Fault>,
    call: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match fault {
        None => call.await,
        Some(Fault::DropRequest) => {
            Err(TransportError::Network("injected: request dropped".into()))
        }
        Some(Fault::DropResponse) => {
            let _ = call.await;
            Err(TransportError::Network("injected: response dropped".into()))
        }
        Some(Fault::ServerError) => Err(TransportError::Http {
            status: 500,
            code: "internal".into(),
            message: "injected".into(),
        }),
        Some(Fault::RateLimited(d)) => Err(TransportError::RateLimited {
            retry_after: Some(d),
        }),
        Some(Fault::Unauthorized) => Err(TransportError::Unauthorized("injected".into())),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            call.await
        }
        Some(Fault::DelayAfter(d)) => {
            let answer = call.await;
            tokio::time::sleep(d).await;
            answer
        }
    }
}

impl Transport for FaultyTransport {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        Box::pin(async move {
            self.healths.fetch_add(1, Ordering::SeqCst);
            if self.is_down() {
                return Err(TransportError::Network("injected: offline".into()));
            }
            self.inner.health().await
        })
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        Box::pin(async move {
            self.pushes.fetch_add(1, Ordering::SeqCst);
            if self.is_down() {
                return Err(TransportError::Network("injected: offline".into()));
            }
            faulted(
                Self::next(&self.push_faults),
                self.inner.push(token, request),
            )
            .await
        })
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(async move {
            self.pulls.fetch_add(1, Ordering::SeqCst);
            if self.is_down() {
                return Err(TransportError::Network("injected: offline".into()));
            }
            faulted(
                Self::next(&self.pull_faults),
                self.inner.pull(token, params),
            )
            .await
        })
    }
}
