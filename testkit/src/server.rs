//! The real `outpost-server` binary on a loopback port, with a temporary config and
//! database: what every black-box test, end-to-end test and the benchmark talk to.
//!
//! One config serves them all: three users in two teams, one private and one shared
//! collection, everything else team-readable. Extra TOML adds keys or tables, and a key
//! it names replaces the default one.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::binary::server_binary;
use crate::db::{Backend, TestDb};

/// A user in the test server's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub name: &'static str,
    pub team: &'static str,
    pub token: &'static str,
}

/// Amina's token; she is in team `north`.
pub const AMINA: &str = "token-amina-0123456789abcdef0123456789";
/// Ben's token; he is in team `north` with Amina.
pub const BEN: &str = "token-ben-0123456789abcdef0123456789";
/// Chioma's token; she is alone in team `south`.
pub const CHIOMA: &str = "token-chioma-0123456789abcdef0123456789";

/// The users of [`base_config`], in its order.
pub const USERS: [User; 3] = [
    User {
        name: "amina",
        team: "north",
        token: AMINA,
    },
    User {
        name: "ben",
        team: "north",
        token: BEN,
    },
    User {
        name: "chioma",
        team: "south",
        token: CHIOMA,
    },
];

/// The first line the server prints on stdout once it listens.
const LISTENING: &str = "outpost-server listening on http://";

/// The config every test starts from: [`USERS`]; `drafts` private, `forms` shared,
/// everything else team. `db` is the `database` value: a SQLite path or a PostgreSQL
/// URL. `extra` goes after the top-level keys (its own keys first, then any tables);
/// a top-level key it sets replaces the default.
pub fn base_config(db: &str, extra: &str) -> String {
    let defaults = [
        "listen = \"127.0.0.1:0\"".to_owned(),
        format!("database = {db:?}"),
        "default_access = \"team\"".to_owned(),
        "tombstone_retention_days = 30".to_owned(),
    ];
    let mut toml: String = defaults
        .iter()
        .filter(|l| {
            l.split(" =")
                .next()
                .is_none_or(|k| !extra.contains(&format!("{k} =")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    toml.push_str(extra);
    toml.push('\n');
    for u in USERS {
        toml.push_str(&format!(
            "\n[[users]]\nname = \"{}\"\nteam = \"{}\"\ntoken = \"{}\"\n",
            u.name, u.team, u.token
        ));
    }
    toml.push_str("\n[collections.drafts]\naccess = \"private\"\n");
    toml.push_str("\n[collections.forms]\naccess = \"shared\"\n");
    toml
}

/// How to start a [`TestServer`]; from [`TestServer::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    backend: Backend,
    extra: String,
    binary: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl ServerBuilder {
    /// TOML for [`base_config`]'s `extra`.
    pub fn extra(mut self, toml: &str) -> ServerBuilder {
        self.extra = toml.to_owned();
        self
    }

    /// Runs this binary instead of [`server_binary`]'s.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> ServerBuilder {
        self.binary = Some(path.into());
        self
    }

    /// Sets an environment variable of the server process (`RUST_LOG`, say).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes the config into a new temporary folder and starts the server; panics on
    /// failure, as a test would.
    pub fn start(self) -> TestServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start outpost-server: {e}"))
    }

    /// [`ServerBuilder::start`], with the failure to start as an error.
    pub fn try_start(self) -> io::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let db = TestDb::new(&self.backend, dir.path());
        let config = dir.path().join("server.toml");
        std::fs::write(&config, base_config(&db.database(), &self.extra))?;
        self.try_start_config(dir, config, db)
    }

    fn try_start_config(
        self,
        dir: tempfile::TempDir,
        config: PathBuf,
        db: TestDb,
    ) -> io::Result<TestServer> {
        let binary = match self.binary {
            Some(b) => b,
            None => server_binary()?,
        };
        let mut s = TestServer {
            child: None,
            dir,
            addr: String::new(),
            config,
            client: new_client(),
            backend: self.backend,
            db,
            binary,
            env: self.env,
        };
        s.spawn()?;
        Ok(s)
    }
}

/// A running `outpost-server`; killed on drop (and then its database dropped). Its
/// stderr is kept in `server.stderr` in its folder.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: String,
    config: PathBuf,
    client: reqwest::Client,
    backend: Backend,
    db: TestDb,
    binary: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl TestServer {
    /// Options beyond the backend: extra config, the binary, environment.
    pub fn builder(backend: &Backend) -> ServerBuilder {
        ServerBuilder {
            backend: backend.clone(),
            extra: String::new(),
            binary: None,
            env: Vec::new(),
        }
    }

    /// Starts with [`base_config`] on `backend`.
    pub fn start(backend: &Backend) -> TestServer {
        TestServer::builder(backend).start()
    }

    /// Starts with extra TOML (see [`base_config`]).
    pub fn start_with(backend: &Backend, extra: &str) -> TestServer {
        TestServer::builder(backend).extra(extra).start()
    }

    /// Starts with a config file already written in `dir`, naming `db`.
    pub fn start_config(
        backend: &Backend,
        dir: tempfile::TempDir,
        config: PathBuf,
        db: TestDb,
    ) -> TestServer {
        TestServer::builder(backend)
            .try_start_config(dir, config, db)
            .unwrap_or_else(|e| panic!("cannot start outpost-server: {e}"))
    }

    /// Another server process on the same database and config, on a port of its
    /// own: what a second instance behind a load balancer is.
    pub fn another(&self) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("server.toml");
        let text = std::fs::read_to_string(&self.config).expect("read the config");
        std::fs::write(&config, with_listen(&text, "127.0.0.1:0")).expect("write the config");
        ServerBuilder {
            backend: self.backend.clone(),
            extra: String::new(),
            binary: Some(self.binary.clone()),
            env: self.env.clone(),
        }
        .try_start_config(dir, config, self.db.share())
        .unwrap_or_else(|e| panic!("cannot start another outpost-server: {e}"))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.stderr"))?;
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.binary.display())))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(io::Error::other("no stdout"));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading after the first line, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30));
        let addr = match &first {
            Ok(line) => line.strip_prefix(LISTENING).map(|a| a.trim().to_owned()),
            Err(_) => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(match first {
                Ok(line) => format!("unexpected first line {line:?}"),
                Err(_) => format!("did not start within 30 s; stderr: {}", self.stderr()),
            }));
        };
        self.addr = addr;
        self.child = Some(child);
        Ok(())
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:<port>/`: the base URL a transport takes.
    pub fn base_url(&self) -> String {
        self.url("/")
    }

    /// Its temporary folder: the config, the SQLite database, `server.stderr`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// An HTTP client for the protocol helpers; a fresh one after each restart.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// What the server has written to stderr so far (logs, panics).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.stderr")).unwrap_or_default()
    }

    /// Rows of `table` whose `column` is `value`, read straight from the database.
    pub fn count(&self, table: &str, column: &str, value: &str) -> i64 {
        self.db.count(table, column, value)
    }

    /// Number of audit rows for an op.
    pub fn audit_rows(&self, op_id: &str) -> i64 {
        self.count("audit", "op_id", op_id)
    }

    /// SIGKILL, then start again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.clone();
        let text = std::fs::read_to_string(&self.config).expect("read the config");
        std::fs::write(&self.config, with_listen(&text, &listen)).expect("write the config");
        // The port may linger for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(&listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Pooled connections went to the killed process.
        self.client = new_client();
        self.spawn()
            .unwrap_or_else(|e| panic!("cannot restart outpost-server: {e}"));
    }

    /// Whether the process is still alive (it may have crashed on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no chance to flush anything more.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`"HUP"`, `"TERM"`) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the server is running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("the server is running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        c.wait().expect("wait for the server")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config text with its `listen` line set to `addr`.
fn with_listen(config: &str, addr: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("listen =") {
                format!("listen = \"{addr}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_replace_the_defaults() {
        let plain = base_config("x.db", "");
        assert!(plain.contains("tombstone_retention_days = 30\n"));
        let t = base_config(
            "x.db",
            "tombstone_retention_days = 0\npurge_interval_secs = 0.2",
        );
        assert!(!t.contains("tombstone_retention_days = 30"));
        assert_eq!(t.matches("tombstone_retention_days").count(), 1);
        assert!(t.find("purge_interval_secs").unwrap() < t.find("[[users]]").unwrap());
    }

    #[test]
    fn listen_is_rewritten_in_place() {
        let t = with_listen(&base_config("x.db", ""), "127.0.0.1:4000");
        assert!(t.starts_with("listen = \"127.0.0.1:4000\"\ndatabase"));
    }
}
