//! `outpost`: the command a newcomer runs first.
//!
//! `outpost demo` shows the whole promise of Outpost working in one process, with
//! nothing to set up: the real reference server on a loopback port, real device
//! databases, an offline phase, a flaky reconnect, conflicts, and a report that checks
//! that no answer was lost or applied twice. `outpost serve` runs the same reference
//! server as the `outpost-server` binary, so one installed program is enough to try it.

mod demo;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Outpost: an offline-first sync core for field apps.
#[derive(Debug, Parser)]
#[command(name = "outpost", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end demo: devices offline, a flaky reconnect, conflicts, checks.
    Demo(DemoArgs),
    /// Run the reference sync server (the same code as `outpost-server`).
    ///
    /// Users sign in with static tokens listed as [[users]] in the config, with JWTs
    /// from the organisation's identity provider configured as [jwt] (RS256 and ES256
    /// keys from jwks_file or jwks_url, or an HS256 secret), or with both. See
    /// server/README.md and server/server.example.toml.
    Serve {
        /// The TOML configuration file (see server/server.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Which story the demo tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Nurses fill patient surveys in villages with no signal.
    Field,
    /// Engineers scan NFC tags on equipment in a basement.
    Assets,
}

/// Options of `outpost demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Devices (nurses, or engineers with --scenario assets), at least 2.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=32))]
    pub devices: u32,
    /// Surveys per nurse (10 answers each), or scans per engineer.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub surveys: Option<u32>,
    /// Seed of everything random (answers, faults); random when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of requests the flaky link fails during the reconnect, 0 to 0.6.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fail_rate)]
    pub fail_rate: f64,
    /// Keep the server and device databases in this folder instead of a temporary one.
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::Field)]
    pub scenario: Scenario,
}

fn parse_fail_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 0.6"))?;
    // A complete sync takes a push and a pull per collection in a row; far above 0.6
    // a phone would almost never complete one, and the demo would only wait.
    if (0.0..=0.6).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is outside 0 to 0.6"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve::run(&config)),
        Command::Demo(args) => {
            init_logging("error");
            runtime.block_on(demo::run(args))
        }
    }
}

/// Logs go to stderr, so the demo's report on stdout stays clean. `RUST_LOG` overrides.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
