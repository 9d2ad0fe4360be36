//! The bearer token: cached between requests, fetched from the app's provider beside
//! the sync, and refreshed once when the server answers 401.
//!
//! A provider with no token says why. No one signed in stops the sync as `SignedOut`
//! (no request is made, and auto mode does not retry on a timer); a provider that
//! cannot be reached is a transient failure, retried with backoff. A request that could
//! not be made for want of a token fails as unauthorized on the request paths, and
//! [`Inner::explain`] restores the provider's reason when the sync's outcome is decided.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use super::config::{TOKEN_TIMEOUT, TokenError};
use super::report::Stop;
use crate::db::lock;
use crate::transport::TransportError;

/// A spawned fetch that is abandoned (and the app's call with it) when the sync stops
/// waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    async fn token(&self, refresh: bool) -> Result<String, TokenError> {
        let cached = if refresh {
            None
        } else {
            lock(&self.token).clone()
        };
        if let Some(t) = cached {
            return Ok(t);
        }
        // Spawned, so a panicking provider is a JoinError here, not an unwind through
        // the sync; and bounded, so one that never answers is only unavailable.
        let mut task = AbortOnDrop(self.runtime.spawn(Arc::clone(&self.tokens).fetch(refresh)));
        let fetched = match tokio::time::timeout(TOKEN_TIMEOUT, &mut task.0).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if e.is_panic() => Err(TokenError::Unavailable(
                "the token provider panicked".into(),
            )),
            Ok(Err(e)) => Err(TokenError::Unavailable(e.to_string())),
            Err(_) => Err(TokenError::Unavailable(format!(
                "the token provider did not answer within {TOKEN_TIMEOUT:?}"
            ))),
        };
        match fetched {
            Ok(t) => {
                *lock(&self.token) = Some(t.clone());
                self.token_fetches.fetch_add(1, Ordering::SeqCst);
                Ok(t)
            }
            Err(e) => {
                *lock(&self.token) = None;
                *lock(&self.token_error) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Has a token before the sync touches the queue: a provider with none stops it
    /// with no entry marked in flight (or blamed for an attempt).
    pub(super) async fn authorize(&self) -> Result<(), Stop> {
        match self.token(false).await {
            Ok(_) => Ok(()),
            Err(TokenError::SignedOut) => Err(Stop::SignedOut),
            Err(e @ TokenError::Unavailable(_)) => Err(Stop::Transient(e.to_string())),
        }
    }

    /// Makes one request with the token, and once more with a fresh token if the server
    /// refused the first. A second 401 is the answer.
    pub(super) async fn authorized<T, F, Fut>(&self, request: F) -> Result<T, TransportError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let token = self.token(false).await.map_err(no_token)?;
        let fetched = self.token_fetches.load(Ordering::SeqCst);
        match request(token).await {
            Err(TransportError::Unauthorized(_)) => {
                let token = self.refreshed(fetched).await.map_err(no_token)?;
                request(token).await
            }
            other => other,
        }
    }

    /// A fresh token after one fetched by `fetched` fetches got 401. Requests in flight
    /// together all get 401 when a token expires: one asks the provider, and the others
    /// take its answer (a provider that rotates refresh tokens fails a second refresh
    /// made in parallel).
    async fn refreshed(&self, fetched: u64) -> Result<String, TokenError> {
        let _one = self.refreshing.lock().await;
        let cached = lock(&self.token).clone();
        match cached {
            Some(t) if self.token_fetches.load(Ordering::SeqCst) != fetched => Ok(t),
            _ => self.token(true).await,
        }
    }

    /// Why the sync stopped, with the provider's reason when it was the missing token
    /// rather than the server that stopped it.
    pub(super) fn explain(&self, stop: Stop) -> Stop {
        match (stop, lock(&self.token_error).take()) {
            (Stop::Auth(_), Some(TokenError::SignedOut)) => Stop::SignedOut,
            (Stop::Auth(_), Some(e @ TokenError::Unavailable(_))) => Stop::Transient(e.to_string()),
            (stop, _) => stop,
        }
    }
}

fn no_token(e: TokenError) -> TransportError {
    TransportError::Unauthorized(e.to_string())
}
