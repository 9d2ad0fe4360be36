//! Finding the `outpost-server` binary to run, and building it when it is missing.
//!
//! Tests, the benchmark and the bindings suites run the binary users deploy, not the
//! library, so it must be the one of the same build: the binary next to the running
//! executable in `target/<profile>/`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable naming a server binary to use instead of the built one.
pub const SERVER_BIN_ENV: &str = "OUTPOST_SERVER_BIN";

/// The server binary: `OUTPOST_SERVER_BIN` (at run time, or when this crate was built),
/// else `outpost-server` in the target directory of the running executable, built with
/// cargo in that profile when it is not there yet.
pub fn server_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(SERVER_BIN_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = option_env!("OUTPOST_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = built_server_binary()?;
    if !bin.exists() {
        cargo_build(&["-p", "outpost-server", "--bin", "outpost-server"])?;
    }
    Ok(bin)
}

/// Where cargo puts `outpost-server` for the running executable's profile.
pub fn built_server_binary() -> io::Result<PathBuf> {
    Ok(profile_dir()?.join(format!("outpost-server{}", std::env::consts::EXE_SUFFIX)))
}

/// `target/<profile>`: the running executable's directory, or its parent for a test
/// executable in `target/<profile>/deps`.
pub fn profile_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir.as_deref().and_then(Path::file_name) == Some("deps".as_ref()) {
        dir = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    }
    dir.ok_or_else(|| io::Error::other("cannot locate the target directory"))
}

/// Runs `cargo build <args>` in the workspace, in the running executable's profile, so
/// what it builds lands next to that executable.
pub fn cargo_build(args: &[&str]) -> io::Result<()> {
    let dir = profile_dir()?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.arg("build").arg("--quiet");
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("cargo build {args:?} failed")))
    }
}
