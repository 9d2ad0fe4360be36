//! Shared helpers for the black-box tests: the real binary on a loopback port with a
//! temporary config and database, and a small HTTP client for the protocol.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const AMINA: &str = "token-amina-0123456789";
pub const BEN: &str = "token-ben-0123456789";
pub const CHIOMA: &str = "token-chioma-0123456789";

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost-server");

/// The config every test starts from: amina and ben in team north, chioma in south;
/// `drafts` private, `forms` shared, everything else team.
pub fn base_config(db: &Path, extra: &str) -> String {
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
        db = db.display().to_string()
    )
}

/// A running `outpost-server`; killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub config: PathBuf,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with("")
    }

    /// Starts with extra top-level TOML keys.
    pub fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("server.db");
        let config = dir.path().join("server.toml");
        std::fs::write(&config, base_config(&db, extra)).unwrap();
        TestServer::start_config(dir, config)
    }

    /// Starts with a config file already written in `dir`.
    pub fn start_config(dir: tempfile::TempDir, config: PathBuf) -> TestServer {
        let mut s = TestServer {
            child: None,
            dir,
            addr: String::new(),
            config,
            client: new_client(),
        };
        s.spawn();
        s
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

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("server.db")
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
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(
            "SELECT count(*) FROM audit WHERE op_id = ?1",
            [op_id],
            |r| r.get(0),
        )
        .unwrap()
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
