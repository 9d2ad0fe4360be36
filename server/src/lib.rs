//! `outpost-server`: the reference sync server of Outpost, wire protocol v1 over HTTP.
//!
//! Apps with no backend of their own, the demo and the end-to-end tests all need a
//! server that speaks the protocol of `DESIGN.md` exactly; this is it. It runs on one
//! SQLite file, or on PostgreSQL (`database = "postgres://…"`) with any number of
//! server processes over one database, behind one storage trait.
//!
//! # Running it
//!
//! ```sh
//! cargo run -p outpost-server -- --config server/server.example.toml
//! curl http://127.0.0.1:8787/health      # {"status":"ok","protocol":1}
//! curl -H 'Authorization: Bearer change-me-amina-secret-token' \
//!      'http://127.0.0.1:8787/v1/pull?limit=10'
//! ```
//!
//! On start it prints one line to stdout, `outpost-server listening on http://<addr>`
//! (with `listen = "127.0.0.1:0"` this tells you the port), and logs to stderr
//! (`RUST_LOG=debug` for more). SIGTERM or Ctrl-C stops it after in-flight requests
//! finish. The configuration keys are described in `server/README.md`; the protocol in
//! `server/openapi.json`.
//!
//! # Tests
//!
//! `cargo test -p outpost-server` runs black-box tests against the real binary, each on
//! SQLite and on PostgreSQL. The PostgreSQL ones need `OUTPOST_TEST_POSTGRES_URL` (a
//! role that may create databases; `scripts/postgres.sh` starts one and prints it);
//! without it each prints `SKIPPED postgres: <test> ...` on stderr.
//!
//! # Embedding it
//!
//! ```no_run
//! # async fn run() -> Result<(), outpost_server::ServeError> {
//! let config = outpost_server::Config::load(std::path::Path::new("server.toml"))?;
//! let server = outpost_server::Server::bind(config).await?;
//! println!("on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod http;
pub mod json;
pub mod jwt;
pub mod logic;
mod pull;
mod push;
pub mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Config, ConfigError, Database, PostgresUrl};
pub use http::{AppState, build_app};
pub use logic::{Access, User};
pub use storage::postgres::PostgresStorage;
pub use storage::sqlite::SqliteStorage;
pub use storage::{Storage, StorageError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the storage a config names, without waiting: PostgreSQL connects and
/// migrates on first use, so a database that cannot be reached shows up as failing
/// requests. [`connect_storage`] checks it before returning; servers use that.
pub fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    match &config.database {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStorage::open(path)?)),
        Database::Postgres(url) => Ok(Arc::new(PostgresStorage::lazy(url)?)),
    }
}

/// Opens the storage a config names, connecting and migrating before it returns.
pub async fn connect_storage(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    match &config.database {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStorage::open(path)?)),
        Database::Postgres(url) => Ok(Arc::new(PostgresStorage::connect(url).await?)),
    }
}

/// A server with its socket bound and its database open, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    config: Config,
}

impl Server {
    /// Opens the database (running migrations) and binds the listen address.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let storage = connect_storage(&config).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let state = AppState::new(&config, storage);
        // The provider's keys before the first request, so a token is not kept waiting
        // for them; a provider that cannot be reached is logged and retried later.
        if let Some(keys) = state.remote_keys() {
            keys.refresh().await;
        }
        Ok(Server {
            listener,
            state,
            config,
        })
    }

    /// The bound address (the real port when the config says port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish. The
    /// tombstone purge runs at start and every `purge_interval_secs`; with
    /// `jwt.jwks_url`, the keys are fetched again every few minutes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let storage = Arc::clone(self.state.storage());
        let retention = self.config.tombstone_retention;
        let interval = self.config.purge_interval;
        let purger = tokio::spawn(async move {
            loop {
                let cutoff =
                    logic::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
                match storage.purge_tombstones(cutoff).await {
                    Ok(r) if r.purged > 0 => tracing::info!(
                        purged = r.purged,
                        purged_through_seq = r.purged_through_seq,
                        "tombstones purged"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "tombstone purge failed"),
                }
                tokio::time::sleep(interval).await;
            }
        });
        let refresher = self.state.remote_keys().map(|keys| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(jwt::jwks::REFRESH_INTERVAL).await;
                    keys.refresh().await;
                }
            })
        });
        let app = build_app(self.state);
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        purger.abort();
        if let Some(r) = refresher {
            r.abort();
        }
        result.map_err(ServeError::Io)
    }
}

/// What a server program does: load the config, bind, print the one stdout line
/// (`outpost-server listening on http://<addr>`, which scripts read to learn the port),
/// and serve until SIGTERM or Ctrl-C. Shared by `outpost-server` and `outpost serve`.
/// Exit code 2 for a bad config, 1 for any other failure.
pub async fn run_main(program: &str, config_path: &std::path::Path) -> std::process::ExitCode {
    use std::io::Write;
    use std::process::ExitCode;
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: bad config {}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "outpost-server listening on http://{}",
        server.local_addr()
    );
    let _ = out.flush();
    tracing::info!(addr = %server.local_addr(), "started");
    match server.run(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down; finishing in-flight requests");
}
