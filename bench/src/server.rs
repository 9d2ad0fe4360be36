//! The real `outpost-server` binary on a loopback port, and other workspace artefacts
//! the benchmark needs (the FFI library, `uniffi-bindgen`).
//!
//! Figures 3–6 must measure the server users run, not an in-process shortcut, so the
//! binary of the same profile as this benchmark is built (a no-op when up to date) and
//! started the way the end-to-end tests start it: a temporary config with
//! `listen = "127.0.0.1:0"`, the address read from its one stdout line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{Result, fail};

pub const TOKEN: &str = "bench-token-0123456789";

/// `target/<profile>`, the directory this binary runs from.
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("cannot locate the target directory"))
}

fn release() -> bool {
    !cfg!(debug_assertions)
}

/// Runs `cargo build` for one package of the workspace in this binary's profile.
pub fn cargo_build(args: &[&str]) -> Result<()> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    if release() {
        cmd.arg("--release");
    }
    cmd.args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let status = cmd.status()?;
    if !status.success() {
        return Err(fail(format!("cargo build {args:?} failed")));
    }
    Ok(())
}

/// The server binary: `--server-bin`, or built next to this one.
pub fn server_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    cargo_build(&["-p", "outpost-server", "--bin", "outpost-server"])?;
    Ok(target_dir()?.join(format!("outpost-server{}", std::env::consts::EXE_SUFFIX)))
}

/// A running server; killed on drop.
#[derive(Debug)]
pub struct RealServer {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    url: String,
}

impl RealServer {
    pub fn start(bin: &Path) -> Result<RealServer> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("server.toml");
        let db = dir.path().join("server.db");
        let toml = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = {:?}\ndefault_access = \"team\"\n\
             tombstone_retention_days = 30\n\n[[users]]\nname = \"bench\"\nteam = \"bench\"\n\
             token = \"{TOKEN}\"\n",
            db.display().to_string()
        );
        std::fs::write(&config, toml)?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", bin.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no server stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(addr) = line.strip_prefix("outpost-server listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail("outpost-server did not start within 30 s"));
            }
        };
        Ok(RealServer {
            child: Some(child),
            _dir: dir,
            url: format!("http://{addr}/"),
        })
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
