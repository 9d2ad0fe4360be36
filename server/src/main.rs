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
    /// Writes every change since a position, one JSON object per line, page by page;
    /// then prints on stderr the position to resume from.
    Export {
        /// `0` for the beginning, or the cursor a previous export (or
        /// `/v1/admin/changes`) ended at.
        #[arg(long, value_name = "CURSOR_OR_0")]
        since: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: outpost_server::export::Format,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Changes read from the database per page, at most 5000 (memory is bounded
        /// by one page).
        #[arg(long, value_name = "N", default_value_t = outpost_server::export::DEFAULT_PAGE_SIZE)]
        page_size: u32,
    },
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
        Some(Command::Export {
            since,
            format,
            out,
            page_size,
        }) => {
            let args = outpost_server::export::ExportArgs {
                since,
                format,
                out,
                page_size,
            };
            outpost_server::export::export_main(program, &config, args).await
        }
    }
}
