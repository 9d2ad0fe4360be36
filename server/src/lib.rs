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
//! curl -H 'Authorization: Bearer change-me-amina-secret-token-0123456789' \
//!      'http://127.0.0.1:8787/v1/pull?limit=10'
//! ```
//!
//! On start it prints one line to stdout, `outpost-server listening on http://<addr>`
//! (with `listen = "127.0.0.1:0"` this tells you the port), and logs to stderr
//! (`RUST_LOG=debug` for more; other crates' logs stay capped at `info`, see
//! [`logging`]). SIGTERM or Ctrl-C stops it after in-flight requests finish; SIGHUP
//! reloads the config. `outpost-server audit verify` checks the audit trail's hash
//! chain, `outpost-server migrate` only migrates, and `outpost-server export` writes
//! the change feed of every team as NDJSON. The configuration keys are
//! described in `server/README.md`; the protocol in `server/openapi.json`.
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

mod admission;
pub mod attachments;
pub mod audit;
pub mod budget;
pub mod config;
pub mod connections;
pub mod cursor;
pub mod error;
pub mod export;
pub mod http;
mod intake;
pub mod json;
pub mod jwt;
pub mod logging;
pub mod logic;
pub mod metrics;
mod pull;
mod push;
pub mod storage;
pub mod throttle;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Config, ConfigError, ConnLimits, Database, PostgresUrl};
use connections::SharedLimits;
pub use http::{AppState, Policy, build_app};
pub use logic::{Access, AccessRules, User};
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
    let rules = config.access_rules();
    match &config.database {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStorage::open(path, &rules)?)),
        Database::Postgres(url) => Ok(Arc::new(PostgresStorage::lazy(url, &rules)?)),
    }
}

/// Opens the storage a config names, connecting and migrating before it returns.
pub async fn connect_storage(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    let rules = config.access_rules();
    match &config.database {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStorage::open(path, &rules)?)),
        Database::Postgres(url) => Ok(Arc::new(PostgresStorage::connect(url, &rules).await?)),
    }
}

/// Connections the kernel completes and queues for us while the accept loop is busy
/// (capped by `net.core.somaxconn`): a burst of devices coming back online, or a flood
/// being shed, must not make new clients wait a TCP retransmission.
const ACCEPT_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A server with its socket bound and its database open, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    config: Config,
    /// Reread on SIGHUP, when set.
    config_path: Option<PathBuf>,
}

impl Server {
    /// Opens the database (running migrations) and binds the listen address.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let storage = connect_storage(&config).await?;
        let listener = listen(config.listen).map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let state = AppState::new(&config, storage);
        // A database that cannot keep the cursor key fails here, not on a pull.
        state.cursor_key().await?;
        // The provider's keys before the first request, so a token is not kept waiting
        // for them; a provider that cannot be reached is logged and retried later.
        if let Some(keys) = state.remote_keys() {
            keys.refresh().await;
        }
        Ok(Server {
            listener,
            state,
            config,
            config_path: None,
        })
    }

    /// A server on a listener bound already, its database opened without waiting
    /// (see [`open_storage`]): for a caller that cannot await, such as the test kit.
    pub fn on_listener(
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> Result<Server, ServeError> {
        let storage = open_storage(&config)?;
        let state = AppState::new(&config, storage);
        Ok(Server {
            listener,
            state,
            config,
            config_path: None,
        })
    }

    /// Rereads the config from `path` on SIGHUP: users and tokens, collection access,
    /// rate and authentication limits, timeouts and the connection cap change for the
    /// requests and connections that follow, and no connection is dropped. A config
    /// that does not load is logged and the one in force kept. `listen`, `database`,
    /// the cursor key and the purge settings change only at the next start.
    pub fn reload_on_sighup(mut self, path: &Path) -> Server {
        self.config_path = Some(path.to_owned());
        self
    }

    /// The bound address (the real port when the config says port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish. The
    /// purge (tombstones, expired op answers) runs at start and every
    /// `purge_interval_secs`, and stops with the server, also when this future is
    /// dropped unfinished; so does the refresh of `jwt.jwks_url` keys, every few
    /// minutes. The audit queue's writer runs alongside, and writes what is left in it
    /// once the app is gone (before this returns, when it returns).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let storage = Arc::clone(self.state.storage());
        let tombstones = self.config.tombstone_retention;
        let answers = self.config.ops_retention;
        let interval = self.config.purge_interval;
        let files = Arc::clone(self.state.files());
        let incomplete = self.config.attachments.incomplete_after;
        let purger = AbortOnDrop(tokio::spawn(async move {
            let ago = |d: std::time::Duration| {
                logic::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
            };
            loop {
                let req = storage::PurgeRequest {
                    tombstones_before_ms: ago(tombstones),
                    answers_before_ms: ago(answers),
                    now_ms: logic::now_ms(),
                };
                match storage.purge(req).await {
                    Ok(r) if r.purged > 0 || r.answers_purged > 0 => tracing::info!(
                        purged = r.purged,
                        purged_through_seq = r.purged_through_seq,
                        answers_purged = r.answers_purged,
                        "purged"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "purge failed"),
                }
                match attachments::purge_stale(storage.as_ref(), files.as_ref(), ago(incomplete))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(uploads = n, "purged unfinished uploads"),
                    Err(e) => tracing::error!(error = %e, "purge of unfinished uploads failed"),
                }
                tokio::time::sleep(interval).await;
            }
        }));
        let writer = self
            .state
            .audit_log()
            .writer(Arc::clone(self.state.storage()))
            .map(tokio::spawn);
        let limits = Arc::new(SharedLimits::new(self.config.limits.clone()));
        let reloader = self.config_path.clone().map(|path| {
            AbortOnDrop(tokio::spawn(reload_loop(
                path,
                self.config.clone(),
                self.state.clone(),
                Arc::clone(&limits),
            )))
        });
        // The keys of the verifier in force, whichever a reload has put there.
        let keys_state = self.state.clone();
        let refresher = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(jwt::jwks::REFRESH_INTERVAL).await;
                if let Some(keys) = keys_state.remote_keys() {
                    keys.refresh().await;
                }
            }
        }));
        let metrics = Arc::clone(self.state.metrics());
        let app = build_app(self.state);
        // Handlers get the peer's address as ConnectInfo (the throttle and the audit).
        let result = connections::serve(self.listener, app, limits, metrics, shutdown).await;
        drop(purger);
        drop(reloader);
        drop(refresher);
        // The app, and with it the queue's last sender, is gone: the writer drains
        // what is left and ends.
        if let Some(w) = writer
            && tokio::time::timeout(std::time::Duration::from_secs(10), w)
                .await
                .is_err()
        {
            tracing::error!("audit rows still queued at shutdown were not written");
        }
        result.map_err(ServeError::Io)
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reloads the config at each SIGHUP (see [`Server::reload_on_sighup`]).
async fn reload_loop(path: PathBuf, first: Config, state: AppState, limits: Arc<SharedLimits>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; config reload is off");
            return;
        };
        while hup.recv().await.is_some() {
            match Config::load(&path) {
                Ok(new) => {
                    if new.listen != first.listen
                        || new.database != first.database
                        || new.cursor_secret != first.cursor_secret
                    {
                        tracing::warn!(
                            "listen, database and cursor key changes take effect at the next start"
                        );
                    }
                    let old = state.policy();
                    let policy = Policy::reloaded(&new, &old);
                    // A new key cache (another jwks_url) is filled before the policy is
                    // in force, so its first tokens are not kept waiting; a failed fetch
                    // is retried later.
                    let keys = |p: &Policy| p.jwt.as_ref().map(|v| Arc::clone(v.keys()));
                    if let Some(k) = keys(&policy)
                        && k.is_remote()
                        && !keys(&old).is_some_and(|o| Arc::ptr_eq(&o, &k))
                    {
                        k.refresh().await;
                    }
                    state.set_policy(policy);
                    limits.set(new.limits.clone());
                    state.metrics().config_reload(true);
                    tracing::info!(users = new.users.len(), "config reloaded");
                }
                Err(e) => {
                    state.metrics().config_reload(false);
                    tracing::error!(error = %e, "config reload failed; the config in force is kept");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, first, state, limits);
    }
}

/// What a server program does: load the config, bind, print the one stdout line
/// (`outpost-server listening on http://<addr>`, which scripts read to learn the port),
/// and serve until SIGTERM or Ctrl-C. Shared by `outpost-server` and `outpost serve`.
/// Exit code 2 for a bad config, 1 for any other failure.
pub async fn run_main(program: &str, config_path: &std::path::Path) -> std::process::ExitCode {
    use std::io::Write;
    use std::process::ExitCode;
    let config = match load_config(program, config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = match Server::bind(config).await {
        Ok(s) => s.reload_on_sighup(config_path),
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

/// The config, or the exit code 2 after saying why it is bad.
pub(crate) fn load_config(
    program: &str,
    config_path: &std::path::Path,
) -> Result<Config, std::process::ExitCode> {
    Config::load(config_path).map_err(|e| {
        eprintln!("{program}: bad config {}: {e}", config_path.display());
        std::process::ExitCode::from(2)
    })
}

/// `outpost-server audit verify`: walks the audit trail's hash chain and prints one
/// line, `audit ok: ...`, or a line per problem found (`audit TAMPERED: ...`). Exit code
/// 0 when the chain holds, 1 when it does not or the database cannot be read, 2 for a
/// bad config.
pub async fn verify_audit_main(
    program: &str,
    config_path: &std::path::Path,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match load_config(program, config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let verdict = match connect_storage(&config).await {
        Ok(storage) => storage.verify_audit().await,
        Err(e) => Err(e),
    };
    match verdict {
        Ok(v) => {
            println!("{v}");
            if v.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{program}: cannot read the audit trail: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `outpost-server migrate`: brings the database schema up to date and exits, for a
/// deployment whose servers run as a role that may not create tables.
pub async fn migrate_main(program: &str, config_path: &std::path::Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match load_config(program, config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match connect_storage(&config).await {
        Ok(_) => {
            println!("database schema is up to date");
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
