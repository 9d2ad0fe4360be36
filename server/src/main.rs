//! The `outpost-server` binary: reads the config, serves until SIGTERM or Ctrl-C; or
//! runs one maintenance command against the config's database.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Outpost reference sync server (wire protocol v1).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Without a command: serve.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Brings the database schema up to date and exits.
    Migrate,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Checks the hash chain: exit code 0 when it holds, 1 when rows were changed,
    /// removed or inserted.
    Verify,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    outpost_server::logging::init("info");
    let program = "outpost-server";
    let Some(config) = args.config else {
        eprintln!("{program}: --config <FILE> is required");
        return ExitCode::from(2);
    };
    match args.command {
        None => outpost_server::run_main(program, &config).await,
        Some(Command::Audit {
            action: AuditAction::Verify,
        }) => outpost_server::verify_audit_main(program, &config).await,
        Some(Command::Migrate) => outpost_server::migrate_main(program, &config).await,
    }
}
