//! `outpost-server export`: every change since a position, as NDJSON, for a data
//! warehouse.
//!
//! A warehouse load wants the whole change feed of every team, not one device's view,
//! and must not need a running server or a token: the command reads the config's
//! database directly. It pages through the same flow as `GET /v1/admin/changes`
//! (`pull::read_page` with every team's records), so each line is exactly a change
//! of that feed, and holds one page at a time: memory stays the same whether the
//! database holds a thousand changes or a hundred million. The position it ends at is
//! a feed cursor, which `--since` and the admin route both take.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::audit::{AuditEntry, AuditFields};
use crate::cursor::Scope;
use crate::logic::{self, Role, User};
use crate::storage::{PullPage, PullQuery, Storage};
use crate::{Config, cursor};

/// The formats `--format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One change (the admin feed's object) per line.
    Ndjson,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    /// A feed cursor, or `0` for the beginning.
    pub since: String,
    pub format: Format,
    /// `None`: stdout.
    pub out: Option<PathBuf>,
    /// Changes per page read from the database.
    pub page_size: u32,
}

/// Changes per page unless `--page-size` says otherwise.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// The audit's event of an export run.
const EXPORT_EVENT: &str = "export";

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// Bad `--since`: exit 2, nothing written.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs `export` and prints, on stderr, the line scripts read the position to resume
/// from: `outpost-server export: <n> changes; resume with --since <cursor>`. Exit code
/// 0 when every change was written, 1 for a failure (database, output, a `--since`
/// older than purged tombstones), 2 for a bad config or argument.
pub async fn export_main(program: &str, config_path: &Path, args: ExportArgs) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: bad config {}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    match run(&config, &args).await {
        Ok((n, cursor)) => {
            eprintln!("{program}: {n} changes; resume with --since {cursor}");
            ExitCode::SUCCESS
        }
        Err(ExportError::Usage(m)) => {
            eprintln!("{program}: {m}");
            ExitCode::from(2)
        }
        Err(ExportError::Failed(m)) => {
            eprintln!("{program}: {m}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: &Config, args: &ExportArgs) -> Result<(u64, String), ExportError> {
    let Format::Ndjson = args.format;
    if args.page_size == 0 {
        return Err(ExportError::Usage("--page-size must be positive".into()));
    }
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ExportError::Failed(format!("{what}: {e}"));
    let storage = crate::connect_storage(config)
        .await
        .map_err(|e| failed("database", &e))?;
    let key = crate::http::cursor_key_of(config.cursor_secret.as_ref(), storage.as_ref())
        .await
        .map_err(|e| failed("cursor key", &e))?;
    let scope = Scope::all_teams(None);
    let since = match args.since.as_str() {
        "0" => None,
        text => match cursor::open(&key, text, &scope) {
            cursor::Opened::Valid(c) => Some(c),
            cursor::Opened::Stale(why) => {
                return Err(ExportError::Failed(format!("--since: {why}")));
            }
            cursor::Opened::Garbled => {
                return Err(ExportError::Usage(
                    "--since must be 0 or a cursor of the change feed (/v1/admin/changes or export)"
                        .into(),
                ));
            }
        },
    };
    let mut out: Box<dyn Write> = match &args.out {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| failed(&path.display().to_string(), &e))?,
        )),
    };
    let mut query = PullQuery {
        user: exporter(),
        access: config.access_rules(),
        since,
        limit: args.page_size,
        collections: None,
        max_bytes: config.max_pull_page_bytes,
        own: Vec::new(),
        count_remaining: false,
        all_teams: true,
    };
    let mut written = 0u64;
    let cursor = loop {
        let page = storage
            .pull(&query)
            .await
            .map_err(|e| failed("database", &e))?;
        let PullPage::Page {
            changes,
            cursor,
            has_more,
            ..
        } = page
        else {
            return Err(ExportError::Failed(
                "--since: tombstones newer than this position were purged; export again from 0"
                    .into(),
            ));
        };
        for c in &changes {
            serde_json::to_writer(&mut out, c).map_err(|e| failed("output", &e))?;
            out.write_all(b"\n").map_err(|e| failed("output", &e))?;
        }
        written += changes.len() as u64;
        query.since = Some(cursor);
        if !has_more {
            break cursor;
        }
    };
    out.flush().map_err(|e| failed("output", &e))?;
    drop(out);
    if let Some(path) = &args.out {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| failed(&path.display().to_string(), &e))?;
    }
    let text = cursor::seal(&key, cursor, &scope).map_err(|e| failed("cursor", &e))?;
    audit(storage.as_ref(), written, args.since == "0").await;
    Ok((written, text))
}

/// Who reads the feed for an export: no token, no team.
fn exporter() -> User {
    User {
        name: "export".into(),
        team: String::new(),
        token_sha256: [0; 32],
        role: Role::Service,
    }
}

/// One audit row per export: who can read the database can read every record anyway,
/// but the trail says when the whole feed left it.
async fn audit(storage: &dyn Storage, changes: u64, from_start: bool) {
    let fields = AuditFields {
        at: outpost_core::protocol::rfc3339_millis(logic::now_ms()),
        event: EXPORT_EVENT.into(),
        kind: "export".into(),
        detail: serde_json::json!({"changes": changes, "from_start": from_start}).to_string(),
        ..AuditFields::default()
    };
    if let Err(e) = storage
        .append_audit(vec![AuditEntry {
            fields,
            prior: None,
        }])
        .await
    {
        tracing::warn!(error = %e, "the export's audit row was not written");
    }
}
