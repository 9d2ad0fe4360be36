//! `outpost serve`: the reference server, so the one `outpost` program can also be the
//! server an app or a second terminal talks to. It calls the server library exactly as
//! the `outpost-server` binary does, and prints the same first line, which scripts
//! read to learn the port.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use outpost_server::{Config, Server};

pub async fn run(config_path: &Path) -> ExitCode {
    crate::init_logging("info");
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outpost serve: bad config {}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outpost serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "outpost-server listening on http://{}",
        server.local_addr()
    );
    let _ = out.flush();
    match server.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
