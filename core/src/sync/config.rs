//! How an app tunes and feeds the engine: its knobs, and the callbacks it supplies
//! (the token, manual conflicts, status changes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::conflict::Conflict;
use crate::outbox::BatchLimits;
use crate::sync::SyncStatus;

/// Knobs of the engine. The defaults suit a phone on a field network.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Ops per push request, by count and bytes.
    pub batch: BatchLimits,
    /// Most changes per pull page.
    pub pull_limit: u32,
    /// Byte budget of the first pull page, as the server measures a page's JSON (a
    /// page compresses to about a tenth of it). Pages then grow after each one that
    /// arrives and shrink after one the link cuts off, within 4 KiB to 4 MiB.
    pub pull_page_bytes: usize,
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
    /// Push requests in flight at once, once the link has answered one: with two, the
    /// server applies one batch while the next is on its way. One (or zero) keeps a
    /// device's requests strictly one after another.
    pub push_requests_in_flight: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch: BatchLimits::default(),
            pull_limit: 1000,
            pull_page_bytes: 64 * 1024,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            network_debounce: Duration::from_secs(2),
            write_debounce: Duration::from_secs(1),
            auto_sync: false,
            push_requests_in_flight: 2,
        }
    }
}

/// Why a token provider has no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No one is signed in: the engine stops (`SyncOutcome::SignedOut`, status
    /// `SyncActivity::SignedOut`) and asks again only at the next sync, never on a
    /// timer. Nothing queued is lost.
    #[error("no one is signed in")]
    SignedOut,
    /// The provider cannot get a token now (the identity provider is unreachable, the
    /// refresh timed out): a transient failure, retried later with backoff.
    #[error("no token for now: {0}")]
    Unavailable(String),
}

/// What [`TokenProvider::fetch`] returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// Supplies the bearer token; `refresh` is true after the server answered 401.
///
/// Implement [`TokenProvider::token`] (it may block: the engine calls it on a blocking
/// thread, and reads an error as [`TokenError::Unavailable`]), or
/// [`TokenProvider::fetch`] to answer asynchronously or to say
/// [`TokenError::SignedOut`]. The engine gives a fetch [`TOKEN_TIMEOUT`].
pub trait TokenProvider: Send + Sync + 'static {
    fn token(&self, _refresh: bool) -> Result<String, String> {
        Err("this token provider implements neither token nor fetch".into())
    }

    /// The token, or why there is none. The engine calls only this.
    fn fetch(self: Arc<Self>, refresh: bool) -> TokenFuture {
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || self.token(refresh)).await {
                Ok(answer) => answer.map_err(TokenError::Unavailable),
                Err(e) if e.is_panic() => Err(TokenError::Unavailable(
                    "the token provider panicked".into(),
                )),
                Err(e) => Err(TokenError::Unavailable(e.to_string())),
            }
        })
    }
}

/// How long the engine waits for a token before taking the provider as unavailable.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

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
