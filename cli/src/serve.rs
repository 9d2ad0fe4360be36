//! `outpost serve`: the reference server, so the one `outpost` program can also be the
//! server an app or a second terminal talks to. It runs exactly what the
//! `outpost-server` binary runs, first stdout line included, with both ways of signing
//! in: static `[[users]]` tokens and JWTs from an identity provider (`[jwt]`).

use std::path::Path;
use std::process::ExitCode;

pub async fn run(config_path: &Path) -> ExitCode {
    // The server's own filter: other crates' logs capped, whatever RUST_LOG says.
    outpost_server::logging::init("info");
    outpost_server::run_main("outpost serve", config_path).await
}
