//! The bearer token: cached between requests, fetched from the app off the async
//! threads, and refreshed once when the server answers 401.

use std::future::Future;
use std::sync::Arc;

use super::Inner;
use super::report::Stop;
use crate::db::lock;
use crate::transport::TransportError;

impl Inner {
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

    /// Makes one request with the token, and once more with a fresh token if the server
    /// refused the first. A second 401 is the answer.
    pub(super) async fn authorized<T, F, Fut>(&self, request: F) -> Result<T, TransportError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let token = self
            .token(false)
            .await
            .map_err(|_| TransportError::Unauthorized("no token".into()))?;
        match request(token).await {
            Err(TransportError::Unauthorized(_)) => {
                let token = self
                    .token(true)
                    .await
                    .map_err(|_| TransportError::Unauthorized("token refresh failed".into()))?;
                request(token).await
            }
            other => other,
        }
    }
}
