//! One way to run the server for every test, the simulation, the demo and the
//! benchmark: [`TestServer`], with a temporary config and database, in one of three
//! [`Mode`]s — the real `outpost-server` binary on a loopback port, the server's app
//! served in this process on a loopback port, or that app called directly with no
//! socket for a deterministic simulation.
//!
//! One config serves them all: three users in two teams, one private and one shared
//! collection, everything else team-readable. Extra TOML adds keys or tables, and a key
//! it names replaces the default one.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::{HttpTimeouts, HttpTransport, Transport};

use crate::binary::server_binary;
use crate::db::{Backend, TestDb};
use crate::in_process::{App, DirectTransport, Loopback};
use crate::pair::{Balancer, pairs_wanted};

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

/// Extra config (see [`base_config`]) for a test that checks the statuses of a push of
/// several ops but is not about the push's time budget: on a machine busy enough to stall
/// a push for a quarter of a second, the default 500 ms would defer its later ops.
pub const LONG_PUSH_BUDGET: &str = "push_budget_ms = 600000\n";

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

/// Where a [`TestServer`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The `outpost-server` binary as a child process on a loopback port: what users
    /// deploy, with real process death ([`TestServer::kill`], SIGTERM) and logs in
    /// `server.stderr`. The server's own tests, the end-to-end tests and the benchmark
    /// use it.
    #[default]
    Process,
    /// The server's app (the same library the binary runs) served by a task on this
    /// process's tokio runtime, on a loopback port: for a program that embeds the
    /// server, as the demo does. Starting needs a runtime.
    Loopback,
    /// The server's app called in this process with no socket, only through
    /// [`TestServer::transport`]: each request is handled to its end inside the call,
    /// with no network timing, so a seeded simulation replays exactly. No tombstone
    /// purge runs, and there is no address.
    Direct,
}

/// The folder a [`TestServer`] keeps its config (and a SQLite database) in.
#[derive(Debug)]
pub enum Folder {
    /// Removed with the server.
    Temp(tempfile::TempDir),
    /// The caller's: left as it is.
    Given(PathBuf),
}

impl Folder {
    pub fn path(&self) -> &Path {
        match self {
            Folder::Temp(t) => t.path(),
            Folder::Given(p) => p,
        }
    }
}

impl From<tempfile::TempDir> for Folder {
    fn from(t: tempfile::TempDir) -> Folder {
        Folder::Temp(t)
    }
}

impl From<PathBuf> for Folder {
    fn from(p: PathBuf) -> Folder {
        Folder::Given(p)
    }
}

/// How to start a [`TestServer`]; from [`TestServer::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    backend: Backend,
    mode: Mode,
    dir: Option<PathBuf>,
    extra: String,
    binary: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// Never one of a pair (see [`crate::PAIR_ENV`]): the second process of one.
    single: bool,
}

impl ServerBuilder {
    /// Runs the server this way ([`Mode::Process`] unless told).
    pub fn mode(mut self, mode: Mode) -> ServerBuilder {
        self.mode = mode;
        self
    }

    /// Keeps the config and a SQLite database in this folder (made if missing, left
    /// afterwards) rather than in a temporary one.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> ServerBuilder {
        self.dir = Some(dir.into());
        self
    }

    /// TOML for [`base_config`]'s `extra`.
    pub fn extra(mut self, toml: &str) -> ServerBuilder {
        self.extra = toml.to_owned();
        self
    }

    /// Runs this binary instead of [`server_binary`]'s ([`Mode::Process`]).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> ServerBuilder {
        self.binary = Some(path.into());
        self
    }

    /// Sets an environment variable of the server process (`RUST_LOG`, say;
    /// [`Mode::Process`]).
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
        let dir = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                Folder::Given(d.clone())
            }
            None => Folder::Temp(tempfile::tempdir()?),
        };
        let db = TestDb::new(&self.backend, dir.path());
        let config = dir.path().join("server.toml");
        std::fs::write(&config, base_config(&db.database(), &self.extra))?;
        self.try_start_config(dir, config, db)
    }

    /// Starts with a config file already written in `dir`, naming `db`.
    pub fn try_start_config(
        self,
        dir: impl Into<Folder>,
        config: PathBuf,
        db: TestDb,
    ) -> io::Result<TestServer> {
        let single = self.single;
        let binary = match (self.mode, self.binary) {
            (Mode::Process, None) => Some(server_binary()?),
            (_, binary) => binary,
        };
        let mut s = TestServer {
            mode: self.mode,
            child: None,
            loopback: None,
            app: App::default(),
            dir: dir.into(),
            addr: String::new(),
            config,
            client: new_client(),
            backend: self.backend,
            db,
            binary,
            env: self.env,
            pair: None,
        };
        s.spawn(None)?;
        if !single
            && s.mode == Mode::Process
            && matches!(s.backend, Backend::Postgres(_))
            && pairs_wanted()
        {
            let twin = s.another_as(true);
            let balancer = Balancer::start(vec![s.addr.clone(), twin.addr.clone()])?;
            s.addr = balancer.addr();
            s.pair = Some((balancer, Box::new(twin)));
        }
        Ok(s)
    }
}

/// A running server; killed on drop (and then its database dropped). In
/// [`Mode::Process`] its stderr is kept in `server.stderr` in its folder.
#[derive(Debug)]
pub struct TestServer {
    mode: Mode,
    child: Option<Child>,
    loopback: Option<Loopback>,
    app: App,
    dir: Folder,
    addr: String,
    config: PathBuf,
    client: reqwest::Client,
    backend: Backend,
    db: TestDb,
    binary: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// With [`crate::PAIR_ENV`]: the proxy `addr` now names, and the second process.
    pair: Option<(Balancer, Box<TestServer>)>,
}

impl TestServer {
    /// Options beyond the backend: the mode, the folder, extra config, the binary,
    /// environment.
    pub fn builder(backend: &Backend) -> ServerBuilder {
        ServerBuilder {
            backend: backend.clone(),
            mode: Mode::Process,
            dir: None,
            extra: String::new(),
            binary: None,
            env: Vec::new(),
            single: false,
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
        dir: impl Into<Folder>,
        config: PathBuf,
        db: TestDb,
    ) -> TestServer {
        TestServer::builder(backend)
            .try_start_config(dir, config, db)
            .unwrap_or_else(|e| panic!("cannot start outpost-server: {e}"))
    }

    /// Another server on the same database and config, in the same mode, on a port
    /// of its own: what a second instance behind a load balancer is.
    pub fn another(&self) -> TestServer {
        self.another_as(false)
    }

    fn another_as(&self, single: bool) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("server.toml");
        let text = std::fs::read_to_string(&self.config).expect("read the config");
        std::fs::write(&config, with_listen(&text, "127.0.0.1:0")).expect("write the config");
        ServerBuilder {
            backend: self.backend.clone(),
            mode: self.mode,
            dir: None,
            extra: String::new(),
            binary: self.binary.clone(),
            env: self.env.clone(),
            single,
        }
        .try_start_config(dir, config, self.db.share())
        .unwrap_or_else(|e| panic!("cannot start another outpost-server: {e}"))
    }

    /// Starts the server in its mode; `port_of` is a previous run whose port a
    /// restarted [`Mode::Loopback`] server keeps.
    fn spawn(&mut self, port_of: Option<Loopback>) -> io::Result<()> {
        match self.mode {
            Mode::Process => self.spawn_process(),
            Mode::Loopback => {
                let run = Loopback::start(&self.config, port_of)?;
                self.addr = run.addr().to_string();
                self.loopback = Some(run);
                Ok(())
            }
            Mode::Direct => self.app.start(&self.config),
        }
    }

    fn spawn_process(&mut self) -> io::Result<()> {
        let Some(binary) = self.binary.clone() else {
            return Err(io::Error::other("no server binary"));
        };
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.stderr"))?;
        let mut child = Command::new(&binary)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
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

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `host:port` it listens on. A [`Mode::Direct`] server has none: this panics.
    pub fn addr(&self) -> &str {
        assert!(
            self.mode != Mode::Direct,
            "a Mode::Direct server has no address: use TestServer::transport"
        );
        &self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `http://127.0.0.1:<port>/`: the base URL a transport takes.
    pub fn base_url(&self) -> String {
        self.url("/")
    }

    /// A sync engine's way to this server: the HTTP transport to its address, or in
    /// [`Mode::Direct`] calls straight into its app. After [`TestServer::restart`] it
    /// reaches the restarted server.
    pub fn transport(&self) -> Arc<dyn Transport> {
        match self.mode {
            Mode::Direct => Arc::new(DirectTransport::new(&self.app)),
            Mode::Process | Mode::Loopback => Arc::new(
                HttpTransport::new(&self.base_url(), HttpTimeouts::default())
                    .expect("an HTTP transport to the test server"),
            ),
        }
    }

    /// Its folder: the config, the SQLite database, `server.stderr`.
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

    /// Server processes behind [`TestServer::url`]: 2 for a pair (see
    /// [`crate::PAIR_ENV`]), else 1.
    pub fn processes(&self) -> u32 {
        if self.pair.is_some() { 2 } else { 1 }
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// An HTTP client for the protocol helpers; a fresh one after each restart.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// What the server process has written to stderr so far (logs, panics); empty in
    /// the in-process modes, which log through this process.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.stderr")).unwrap_or_default()
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server process's peak resident memory so far, in bytes: `VmHWM` of
    /// `/proc/<pid>/status`. `None` where there is no such file (not Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        self.proc_status_bytes("VmHWM:")
    }

    /// The server process's resident memory now, in bytes (`VmRSS`), as
    /// [`TestServer::peak_rss`].
    pub fn rss(&self) -> Option<u64> {
        self.proc_status_bytes("VmRSS:")
    }

    fn proc_status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Rows of `table` whose `column` is `value`, read straight from the database.
    pub fn count(&self, table: &str, column: &str, value: &str) -> i64 {
        self.db.count(table, column, value)
    }

    /// Number of audit rows for an op.
    pub fn audit_rows(&self, op_id: &str) -> i64 {
        self.count("audit", "op_id", op_id)
    }

    /// Stops at once (SIGKILL; in process, the app dropped mid-request), then starts
    /// again on the same port and database.
    pub fn restart(&mut self) {
        assert!(self.pair.is_none(), "a pair of servers is not restarted");
        if self.mode != Mode::Process {
            let port_of = self.loopback.take();
            self.kill();
            self.spawn(port_of)
                .unwrap_or_else(|e| panic!("cannot restart the server: {e}"));
            return;
        }
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
        self.spawn(None)
            .unwrap_or_else(|e| panic!("cannot restart outpost-server: {e}"));
    }

    /// Whether it is still serving (a process may have crashed on its own).
    pub fn is_running(&mut self) -> bool {
        match self.mode {
            Mode::Process => self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
            Mode::Loopback => self.loopback.as_ref().is_some_and(Loopback::is_running),
            Mode::Direct => self.app.is_up(),
        }
    }

    /// SIGKILL: no chance to flush anything more. In process, the serving task is
    /// aborted or the app dropped, with requests in flight.
    pub fn kill(&mut self) {
        if let Some((_, twin)) = self.pair.as_mut() {
            twin.kill();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.loopback.take();
        self.app.stop();
    }

    /// Sends a signal by name (`"HUP"`, `"TERM"`) without waiting for anything
    /// ([`Mode::Process`] only).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the server is running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Sends SIGTERM and returns the exit status ([`Mode::Process`] only).
    pub fn terminate(&mut self) -> ExitStatus {
        assert_eq!(self.mode, Mode::Process, "only a process gets SIGTERM");
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
    use outpost_core::TransportError;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_process_modes_serve_the_app_and_keep_the_data_across_a_restart() {
        use outpost_core::protocol::PushRequest;
        use outpost_core::transport::PullParams;
        let pull = PullParams {
            since: None,
            limit: 10,
            collections: vec!["notes".into()],
            ..PullParams::default()
        };
        for mode in [Mode::Loopback, Mode::Direct] {
            let mut s = TestServer::builder(&Backend::Sqlite).mode(mode).start();
            let link = s.transport();
            assert_eq!(link.health().await.expect("health").protocol, 1, "{mode:?}");
            let op = crate::put("notes", "n1", None, serde_json::json!({"v": 1}));
            let push: PushRequest =
                serde_json::from_value(serde_json::json!({"client_id": "c", "ops": [op]}))
                    .expect("a push");
            let answer = link.push(AMINA, &push).await.expect("push");
            assert_eq!(answer.results.len(), 1, "{mode:?}");
            s.restart();
            assert!(s.is_running(), "{mode:?}");
            // The transport taken before the restart reaches the restarted server.
            let page = link.pull(AMINA, &pull).await.expect("pull");
            assert_eq!(page.changes.len(), 1, "{mode:?}");
            assert_eq!(s.count("records", "record_id", "n1"), 1, "{mode:?}");
            s.kill();
            assert!(!s.is_running(), "{mode:?}");
        }
    }

    #[test]
    fn a_direct_server_that_is_down_fails_like_a_network() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let mut s = TestServer::builder(&Backend::Sqlite)
            .mode(Mode::Direct)
            .start();
        let link = s.transport();
        s.kill();
        let down = rt.block_on(link.health());
        assert!(matches!(down, Err(TransportError::Network(_))), "{down:?}");
    }

    #[test]
    fn listen_is_rewritten_in_place() {
        let t = with_listen(&base_config("x.db", ""), "127.0.0.1:4000");
        assert!(t.starts_with("listen = \"127.0.0.1:4000\"\ndatabase"));
    }
}
