//! The real server binary, started on a loopback port with a temporary config.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A user in the test server's config.
#[derive(Debug, Clone)]
pub struct User {
    pub name: &'static str,
    pub team: &'static str,
    pub token: &'static str,
}

pub const AMINA: User = User {
    name: "amina",
    team: "north",
    token: "token-amina-0123456789",
};
pub const BEN: User = User {
    name: "ben",
    team: "north",
    token: "token-ben-0123456789",
};
pub const CHIOMA: User = User {
    name: "chioma",
    team: "south",
    token: "token-chioma-0123456789",
};

/// A running `outpost-server`; killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: String,
    config: PathBuf,
}

/// The server binary: built by `cargo test --workspace`; built on demand otherwise.
pub fn server_binary() -> PathBuf {
    if let Some(p) = option_env!("OUTPOST_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/outpost-server
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("outpost-server{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "outpost-server", "--bin", "outpost-server"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building outpost-server failed");
    }
    bin
}

impl TestServer {
    /// Starts a server with three users (two in team `north`, one in `south`).
    pub fn start() -> TestServer {
        TestServer::start_with("")
    }

    /// Starts a server with extra TOML appended to the base config.
    pub fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("server.toml");
        let db = dir.path().join("server.db");
        let base = [
            "listen = \"127.0.0.1:0\"".to_owned(),
            format!("database = {:?}", db.display().to_string()),
            "default_access = \"team\"".to_owned(),
            "tombstone_retention_days = 30".to_owned(),
        ];
        // Keys given in `extra` replace the defaults.
        let mut toml: String = base
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
        for u in [AMINA, BEN, CHIOMA] {
            toml.push_str(&format!(
                "\n[[users]]\nname = \"{}\"\nteam = \"{}\"\ntoken = \"{}\"\n",
                u.name, u.team, u.token
            ));
        }
        toml.push_str("\n[collections.drafts]\naccess = \"private\"\n");
        std::fs::write(&config, toml).expect("write config");
        let mut server = TestServer {
            child: None,
            dir,
            addr: String::new(),
            config,
        };
        server.spawn("127.0.0.1:0");
        server
    }

    fn spawn(&mut self, listen: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
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
        std::fs::write(&self.config, text).expect("write config");
        let mut child = Command::new(server_binary())
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start outpost-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("outpost-server listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not start");
        self.addr = addr;
        self.child = Some(child);
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process (SIGKILL) and starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger for a moment after the kill.
            let free = std::net::TcpListener::bind(&listen).is_ok();
            if free || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(&listen);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
