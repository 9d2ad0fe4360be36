//! The real `outpost-server` binary on a loopback port, started through the test kit.
//!
//! Figures 3–6 must measure the server users run, not an in-process shortcut, so the
//! binary of the same profile as this benchmark is built (a no-op when up to date) and
//! started the way the tests start it.

use std::path::{Path, PathBuf};

use outpost_testkit::{Backend, TestServer, built_server_binary, cargo_build};

use crate::util::Result;

/// The token the benchmark signs in with: a user of the kit's server config.
pub const TOKEN: &str = outpost_testkit::AMINA;

/// The server binary: `--server-bin`, or built next to this one.
pub fn server_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    cargo_build(&["-p", "outpost-server", "--bin", "outpost-server"])?;
    Ok(built_server_binary()?)
}

/// A server on SQLite; killed on drop. It logs warnings only, so logging costs the
/// measured requests nothing.
pub fn start(bin: &Path) -> Result<TestServer> {
    Ok(TestServer::builder(&Backend::Sqlite)
        .binary(bin)
        .env("RUST_LOG", "warn")
        .try_start()?)
}
