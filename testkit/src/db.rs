//! The database a test server runs on: a SQLite file in the test's folder, or a fresh
//! PostgreSQL database of its own, created for the test and dropped after it.
//!
//! PostgreSQL comes from `OUTPOST_TEST_POSTGRES_URL` (a role that may create
//! databases; `scripts/postgres.sh` starts one and prints its URL). Without it a
//! PostgreSQL test prints `SKIPPED postgres: <test> (OUTPOST_TEST_POSTGRES_URL not set)`
//! and passes. The line is written straight to the process's stderr, not through
//! `eprintln!`, which the test harness captures and hides for passing tests, so the
//! skip is visible in a plain `cargo test` run. A random database name per test lets
//! tests run in parallel.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The variable naming the PostgreSQL server for the PostgreSQL variants.
pub const PG_ENV: &str = "OUTPOST_TEST_POSTGRES_URL";

/// Declares `sqlite::<name>` and `postgres::<name>` tests for each
/// `async fn <name>(Backend)` of the file; the file's name goes into skip lines.
/// The calling crate needs `tokio` (for `#[tokio::test]`).
#[macro_export]
macro_rules! backend_tests {
    ($file:literal: $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let test = concat!($file, "::", stringify!($name));
                    if let Some(b) = $crate::Backend::postgres_or_skip(test) {
                        super::$name(b).await
                    }
                }
            )*
        }
    };
}

/// The database a test server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// The admin URL from [`PG_ENV`]; each test makes its own database there.
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend if [`PG_ENV`] is set; otherwise says on stderr that
    /// `test` is skipped, and returns `None`.
    pub fn postgres_or_skip(test: &str) -> Option<Backend> {
        match std::env::var(PG_ENV) {
            Ok(url) if !url.trim().is_empty() => Some(Backend::Postgres(url.trim().to_owned())),
            _ => {
                let line = format!("SKIPPED postgres: {test} ({PG_ENV} not set)\n");
                let _ = std::io::stderr().write_all(line.as_bytes());
                None
            }
        }
    }
}

/// A test's database: a SQLite file in the test's temp dir, or a fresh PostgreSQL
/// database dropped with this value.
#[derive(Debug)]
pub enum TestDb {
    Sqlite(PathBuf),
    Postgres {
        admin: String,
        name: String,
        url: String,
        /// False for a second server's handle on another test's database.
        owned: bool,
    },
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    /// `dir/server.db`, or a new PostgreSQL database.
    pub fn new(backend: &Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::Sqlite(dir.join("server.db")),
            Backend::Postgres(admin) => {
                let name = format!(
                    "outpost_test_{}_{}_{}",
                    std::process::id(),
                    DB_COUNTER.fetch_add(1, Ordering::Relaxed),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                pg_exec(
                    admin,
                    &format!("CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"),
                );
                let url = with_dbname(admin, &name);
                TestDb::Postgres {
                    admin: admin.clone(),
                    name,
                    url,
                    owned: true,
                }
            }
        }
    }

    /// The config's `database` value.
    pub fn database(&self) -> String {
        match self {
            TestDb::Sqlite(p) => p.display().to_string(),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }

    /// The SQLite file, to read straight from; `None` on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            TestDb::Sqlite(p) => Some(p),
            TestDb::Postgres { .. } => None,
        }
    }

    /// Another handle on the same database that does not drop it.
    pub fn share(&self) -> TestDb {
        match self {
            TestDb::Sqlite(p) => TestDb::Sqlite(p.clone()),
            TestDb::Postgres {
                admin, name, url, ..
            } => TestDb::Postgres {
                admin: admin.clone(),
                name: name.clone(),
                url: url.clone(),
                owned: false,
            },
        }
    }

    /// `SELECT count(*) FROM <table> WHERE <column> = <value>`.
    pub fn count(&self, table: &str, column: &str, value: &str) -> i64 {
        match self {
            TestDb::Sqlite(p) => {
                let conn = rusqlite::Connection::open(p).expect("open the server's SQLite file");
                conn.busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                let sql = format!("SELECT count(*) FROM {table} WHERE {column} = ?1");
                conn.query_row(&sql, [value], |r| r.get(0))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            TestDb::Postgres { url, .. } => pg_count(
                url,
                &format!("SELECT count(*) FROM {table} WHERE {column} = $1"),
                value,
            ),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres {
            admin,
            name,
            owned: true,
            ..
        } = self
        else {
            return;
        };
        // FORCE ends the sessions a killed server leaves for a moment, but a role that
        // may create databases and is no superuser cannot end another role's (a server
        // run as a restricted role) nor an autovacuum worker's: those are waited for,
        // and the drop tried again should autovacuum start on the database meanwhile.
        let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                      AND (usename IS DISTINCT FROM current_user \
                           OR backend_type <> 'client backend')";
        let deadline = Instant::now() + Duration::from_secs(10);
        let dropped = loop {
            while Instant::now() < deadline
                && pg_try_count(admin, others, name).is_ok_and(|n| n > 0)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let r = pg_try_exec(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
            if r.is_ok() || Instant::now() >= deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        cleanup_failed(dropped);
    }
}

/// A failed clean-up: a test failure, unless the test is failing already (a second
/// panic while unwinding would abort the whole test binary and hide the first).
pub fn cleanup_failed(result: Result<(), String>) {
    match result {
        Ok(()) => {}
        Err(e) if std::thread::panicking() => {
            let _ = std::io::stderr().write_all(format!("clean-up failed: {e}\n").as_bytes());
        }
        Err(e) => panic!("clean-up failed: {e}"),
    }
}

/// `url` with its database name replaced.
pub fn with_dbname(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("OUTPOST_TEST_POSTGRES_URL is not a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Runs `f` on a runtime of its own on another thread, so it works from sync code,
/// from async tests and from `Drop` alike; fails if the server cannot be reached.
fn pg_blocking<T: Send + 'static>(
    url: &str,
    f: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'c>>
    + Send
    + 'static,
) -> Result<T, String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for PostgreSQL: {e}"))?;
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            let task = tokio::spawn(conn);
            let out = f(&client).await;
            drop(client);
            let _ = task.await;
            Ok(out)
        })
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs SQL statements on the PostgreSQL database at `url`.
pub fn pg_exec(url: &str, sql: &str) {
    pg_try_exec(url, sql).unwrap_or_else(|e| panic!("{e}"));
}

/// [`pg_exec`], with the failure as an error (for clean-up code, which must not panic
/// while a test is failing).
pub fn pg_try_exec(url: &str, sql: &str) -> Result<(), String> {
    let sql = sql.to_owned();
    pg_blocking(url, move |c| {
        Box::pin(async move {
            c.batch_execute(&sql)
                .await
                .map_err(|e| format!("{sql}: {e:?}"))
        })
    })?
}

/// The one `bigint` that `sql` (with one text parameter) selects.
pub fn pg_count(url: &str, sql: &str, param: &str) -> i64 {
    pg_try_count(url, sql, param).unwrap_or_else(|e| panic!("{e}"))
}

fn pg_try_count(url: &str, sql: &str, param: &str) -> Result<i64, String> {
    let (sql, param) = (sql.to_owned(), param.to_owned());
    pg_blocking(url, move |c| {
        Box::pin(async move {
            c.query_one(&sql, &[&param])
                .await
                .map_err(|e| format!("{sql}: {e:?}"))?
                .try_get(0)
                .map_err(|e| format!("{sql}: {e:?}"))
        })
    })?
}
