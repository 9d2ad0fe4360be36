//! The `outpost-server` binary: reads the config, serves until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Outpost reference sync server (wire protocol v1).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    outpost_server::logging::init("info");
    outpost_server::run_main("outpost-server", &args.config).await
}
