//! Shared helpers for the black-box tests: the real binary on a loopback port with a
//! temporary config and database, and a small HTTP client for the protocol.
//!
//! Every protocol test is one `async fn(Backend)`; [`backend_tests!`] turns it into
//! `sqlite::<name>` and `postgres::<name>` tests. The PostgreSQL ones need
//! `OUTPOST_TEST_POSTGRES_URL` (a role that may create databases; `scripts/postgres.sh`
//! starts one and prints its URL). Without it each one prints
//! `SKIPPED postgres: <file>::<name> (OUTPOST_TEST_POSTGRES_URL not set)` and passes:
//! written straight to the process's stderr, not through `eprintln!`, which the test
//! harness captures and hides for passing tests, so the skip is visible in a plain
//! `cargo test` run. Each PostgreSQL test gets a database of its own, created with a
//! random name and dropped after, so tests run in parallel.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const AMINA: &str = "token-amina-0123456789";
pub const BEN: &str = "token-ben-0123456789";
pub const CHIOMA: &str = "token-chioma-0123456789";

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost-server");

/// The variable naming the PostgreSQL server for the PostgreSQL variants.
pub const PG_ENV: &str = "OUTPOST_TEST_POSTGRES_URL";

/// Declares `sqlite::<name>` and `postgres::<name>` tests for each
/// `async fn <name>(Backend)` of the file; the file's name goes into skip lines.
#[allow(unused_macros)] // scale_out.rs is PostgreSQL-only and declares its tests itself
macro_rules! backend_tests {
    ($file:literal: $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let test = concat!($file, "::", stringify!($name));
                    if let Some(b) = crate::common::Backend::postgres_or_skip(test) {
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
    pub fn new(backend: &Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::Sqlite(dir.join("server.db")),
            Backend::Postgres(admin) => {
                let name = format!(
                    "outpost_test_{}_{}_{}",
                    std::process::id(),
                    DB_COUNTER.fetch_add(1, Ordering::Relaxed),
                    uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
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
                let conn = rusqlite::Connection::open(p).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.query_row(
                    &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
                    [value],
                    |r| r.get(0),
                )
                .unwrap()
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
        if let TestDb::Postgres {
            admin,
            name,
            owned: true,
            ..
        } = self
        {
            // FORCE: a killed server's connections may not be gone yet.
            pg_exec(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// `url` with its database name replaced.
pub fn with_dbname(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("OUTPOST_TEST_POSTGRES_URL is not a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Runs `f` on a runtime of its own on another thread, so it works from sync code,
/// from async tests and from `Drop` alike.
fn pg_blocking<T: Send + 'static>(
    url: &str,
    f: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'c>>
    + Send
    + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
            let task = tokio::spawn(conn);
            let out = f(&client).await;
            drop(client);
            let _ = task.await;
            out
        })
    })
    .join()
    .unwrap()
}

pub fn pg_exec(url: &str, sql: &str) {
    let sql = sql.to_owned();
    pg_blocking(url, move |c| {
        Box::pin(async move {
            c.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        })
    });
}

pub fn pg_count(url: &str, sql: &str, param: &str) -> i64 {
    let (sql, param) = (sql.to_owned(), param.to_owned());
    pg_blocking(url, move |c| {
        Box::pin(async move {
            c.query_one(&sql, &[&param])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get(0)
        })
    })
}

/// The config every test starts from: amina and ben in team north, chioma in south;
/// `drafts` private, `forms` shared, everything else team. `db` is the `database`
/// value: a SQLite path or a PostgreSQL URL.
pub fn base_config(db: &str, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
database = {db:?}
default_access = "team"
tombstone_retention_days = 30
{extra}

[[users]]
name = "amina"
team = "north"
token = "{AMINA}"

[[users]]
name = "ben"
team = "north"
token = "{BEN}"

[[users]]
name = "chioma"
team = "south"
token = "{CHIOMA}"

[collections.drafts]
access = "private"

[collections.forms]
access = "shared"
"#,
    )
}

/// A running `outpost-server`; killed on drop (and then its database dropped).
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub config: PathBuf,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub db: TestDb,
}

impl TestServer {
    pub fn start(backend: &Backend) -> TestServer {
        TestServer::start_with(backend, "")
    }

    /// Starts with extra top-level TOML keys.
    pub fn start_with(backend: &Backend, extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path());
        let config = dir.path().join("server.toml");
        std::fs::write(&config, base_config(&db.database(), extra)).unwrap();
        TestServer::start_config(backend, dir, config, db)
    }

    /// Starts with a config file already written in `dir`, naming `db`.
    pub fn start_config(
        backend: &Backend,
        dir: tempfile::TempDir,
        config: PathBuf,
        db: TestDb,
    ) -> TestServer {
        let mut s = TestServer {
            child: None,
            dir,
            addr: String::new(),
            config,
            client: new_client(),
            backend: backend.clone(),
            db,
        };
        s.spawn();
        s
    }

    /// Another server process on the same database and config, on a port of its
    /// own: what a second instance behind a load balancer is.
    pub fn another(&self) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.toml");
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("listen =") {
                    "listen = \"127.0.0.1:0\"".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config, text).unwrap();
        TestServer::start_config(&self.backend, dir, config, self.db.share())
    }

    fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not start");
        let addr = line
            .strip_prefix("outpost-server listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.addr = addr.trim().to_owned();
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Rows of `table` whose `column` is `value`, read straight from the database.
    pub fn count(&self, table: &str, column: &str, value: &str) -> i64 {
        self.db.count(table, column, value)
    }

    /// SIGKILL, then start again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.clone();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("listen =") {
                    format!("listen = \"{listen}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(&listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Pooled connections went to the killed process.
        self.client = new_client();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }

    pub async fn push_raw(&self, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/v1/push"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// Pushes ops; asserts 200 and returns the results.
    pub async fn push(&self, token: &str, ops: Vec<Value>) -> Vec<Value> {
        let (status, body) = self
            .push_raw(token, &json!({"client_id": "test-client", "ops": ops}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["results"].as_array().unwrap().clone()
    }

    pub async fn pull_raw(&self, token: &str, query: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(&format!("/v1/pull{query}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// Pulls everything readable from `since`, following `has_more`.
    pub async fn pull_all(&self, token: &str, extra: &str) -> (Vec<Value>, String) {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("?since={c}{extra}"),
                None => format!("?x=1{extra}"),
            };
            let (status, body) = self.pull_raw(token, &q).await;
            assert_eq!(status, 200, "{body}");
            out.extend(body["changes"].as_array().unwrap().iter().cloned());
            cursor = Some(body["cursor"].as_str().unwrap().to_owned());
            if !body["has_more"].as_bool().unwrap() {
                return (out, cursor.unwrap());
            }
        }
    }

    /// Number of audit rows for an op.
    pub fn audit_rows(&self, op_id: &str) -> i64 {
        self.count("audit", "op_id", op_id)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Status and JSON body; asserts that every answer is JSON.
pub async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "status {status}: content-type {ct:?}, body {text:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    if status >= 400 {
        assert_error_shape(&v);
    }
    (status, v)
}

/// `{"error":{"code","message"}}` and nothing else.
pub fn assert_error_shape(v: &Value) {
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 1, "{v}");
    let e = o["error"].as_object().unwrap();
    assert_eq!(e.len(), 2, "{v}");
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh op id.
pub fn op_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid HLC stamp, increasing within the process.
pub fn hlc() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:013}-{:05}-dev1", 1_700_000_000_000u64 + n, 0)
}

pub fn put(collection: &str, id: &str, base: Option<i64>, data: Value) -> Value {
    json!({"op_id": op_id(), "collection": collection, "record_id": id, "kind": "put",
           "base_version": base, "data": data, "hlc": hlc()})
}

pub fn patch(collection: &str, id: &str, base: Option<i64>, data: Value) -> Value {
    json!({"op_id": op_id(), "collection": collection, "record_id": id, "kind": "patch",
           "base_version": base, "data": data, "hlc": hlc()})
}

pub fn delete(collection: &str, id: &str, base: Option<i64>) -> Value {
    json!({"op_id": op_id(), "collection": collection, "record_id": id, "kind": "delete",
           "base_version": base, "hlc": hlc()})
}
