//! Test support for end-to-end tests: devices with their own database files, each
//! behind the test kit's fault-injecting transport to the kit's real server, and the
//! deterministic simulation.
//!
//! Everything here drives the public APIs only, so the tests exercise exactly what an
//! app and a deployment do.

pub mod proxy;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use outpost_core::{ConflictStrategy, StaticToken, Store, StoreConfig, SyncConfig, SyncEngine};
use outpost_testkit::{FaultyTransport, TestServer};

/// One simulated phone: its own database file, engine and (faultable) link.
#[derive(Debug)]
pub struct Device {
    pub store: Store,
    pub engine: SyncEngine,
    pub link: Arc<FaultyTransport>,
    pub path: std::path::PathBuf,
}

/// Collections used across the end-to-end tests, one per strategy.
pub fn collections() -> Vec<(&'static str, ConflictStrategy)> {
    vec![
        ("patients", ConflictStrategy::FieldMerge),
        ("answers", ConflictStrategy::LastWriteWins),
        ("server_side", ConflictStrategy::ServerWins),
        ("client_side", ConflictStrategy::ClientWins),
        ("reviews", ConflictStrategy::Manual),
        ("drafts", ConflictStrategy::LastWriteWins),
    ]
}

pub fn store_config() -> StoreConfig {
    let mut c = StoreConfig::default();
    for (name, strategy) in collections() {
        c = c.with_collection(name, strategy);
    }
    c
}

/// Fast retries so backoff tests finish quickly.
pub fn sync_config() -> SyncConfig {
    SyncConfig {
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        network_debounce: Duration::from_millis(200),
        write_debounce: Duration::from_millis(100),
        pull_limit: 500,
        ..SyncConfig::default()
    }
}

impl Device {
    /// A device whose database lives at `dir/<name>.db`, signed in with `token`.
    pub fn open(dir: &std::path::Path, name: &str, server: &TestServer, token: &str) -> Device {
        Device::open_with(
            dir,
            name,
            server,
            Arc::new(StaticToken(token.to_owned())),
            sync_config(),
        )
    }

    pub fn open_with(
        dir: &std::path::Path,
        name: &str,
        server: &TestServer,
        tokens: Arc<dyn outpost_core::TokenProvider>,
        config: SyncConfig,
    ) -> Device {
        Device::open_as(dir, name, None, server, tokens, config).expect("open device store")
    }

    /// A device that reaches `server` at `url` (a proxy in front of it, say).
    pub fn open_via(
        dir: &std::path::Path,
        name: &str,
        url: &str,
        tokens: Arc<dyn outpost_core::TokenProvider>,
        config: SyncConfig,
    ) -> Device {
        Device::open_at(dir, name, None, url, tokens, config).expect("open device store")
    }

    /// A device whose store is opened for `user` (see `StoreConfig::user_id`); the
    /// store's error, such as `WrongUser`, is returned.
    pub fn open_as(
        dir: &std::path::Path,
        name: &str,
        user: Option<&str>,
        server: &TestServer,
        tokens: Arc<dyn outpost_core::TokenProvider>,
        config: SyncConfig,
    ) -> outpost_core::Result<Device> {
        Device::open_at(dir, name, user, &server.base_url(), tokens, config)
    }

    fn open_at(
        dir: &std::path::Path,
        name: &str,
        user: Option<&str>,
        url: &str,
        tokens: Arc<dyn outpost_core::TokenProvider>,
        config: SyncConfig,
    ) -> outpost_core::Result<Device> {
        let path = dir.join(format!("{name}.db"));
        let store_config = StoreConfig {
            user_id: user.map(str::to_owned),
            ..store_config()
        };
        let store = Store::open(&path, store_config)?;
        let link = Arc::new(FaultyTransport::http(url).expect("transport"));
        let engine = SyncEngine::new(
            store.clone(),
            link.clone(),
            tokens,
            config,
            tokio::runtime::Handle::current(),
        );
        Ok(Device {
            store,
            engine,
            link,
            path,
        })
    }

    /// Syncs until a sync completes with nothing left to send (bounded).
    pub async fn sync_until_quiet(&self) -> outpost_core::SyncReport {
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.engine.sync_now(Some(Duration::from_secs(30))).await;
            let pending = self.store.outbox_counts().expect("counts").pending;
            let done = r.outcome == outpost_core::SyncOutcome::Completed && pending == 0;
            if done || std::time::Instant::now() > give_up {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
