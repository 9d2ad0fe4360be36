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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use outpost_core::protocol::MAX_PULL_LIMIT;

use crate::audit::{AuditEntry, AuditFields};
use crate::cursor::Scope;
use crate::logic::{self, Role, User};
use crate::storage::{PullPage, PullQuery, Storage};
use crate::{Config, cursor};

/// The formats `--format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Changes per page read from the database, 1 to [`MAX_PULL_LIMIT`] (the most a
    /// page of `/v1/admin/changes` holds): a page is what the command holds in memory.
    pub page_size: u32,
}

/// Changes per page unless `--page-size` says otherwise.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// The audit's event of an export run.
const EXPORT_EVENT: &str = "export";

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// Bad argument: exit 2, nothing written.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl ExportError {
    fn code(&self) -> ExitCode {
        match self {
            ExportError::Usage(_) => ExitCode::from(2),
            ExportError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs `export` and prints, on stderr, the line scripts read the position to resume
/// from: `outpost-server export: <n> changes; resume with --since <cursor>`. Exit code
/// 0 when every change was written and the run audited, 1 for a failure (database,
/// output, the audit row, a `--since` older than purged tombstones), 2 for a bad
/// config or argument.
pub async fn export_main(program: &str, config_path: &Path, args: ExportArgs) -> ExitCode {
    let config = match crate::load_config(program, config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fail = |e: ExportError| {
        eprintln!("{program}: {e}");
        e.code()
    };
    if let Err(e) = check(&args) {
        return fail(e);
    }
    let storage = match crate::connect_storage(&config).await {
        Ok(s) => s,
        Err(e) => return fail(ExportError::Failed(format!("database: {e}"))),
    };
    // Every run that reached the database is audited, a failed one too.
    let mut written = 0u64;
    let outcome = run(&config, storage.as_ref(), &args, &mut written).await;
    let failure = outcome.as_ref().err().map(ToString::to_string);
    let from_start = args.since == "0";
    if let Err(e) = audit(storage.as_ref(), written, from_start, failure.as_deref()).await {
        if let Err(first) = &outcome {
            eprintln!("{program}: {first}");
        }
        return fail(ExportError::Failed(format!(
            "the export's audit row was not written: {e}"
        )));
    }
    match outcome {
        Ok(cursor) => {
            eprintln!("{program}: {written} changes; resume with --since {cursor}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The arguments' own rules, before the database is opened.
fn check(args: &ExportArgs) -> Result<(), ExportError> {
    let Format::Ndjson = args.format;
    if args.page_size == 0 || args.page_size > MAX_PULL_LIMIT {
        return Err(ExportError::Usage(format!(
            "--page-size must be 1 to {MAX_PULL_LIMIT} (the largest page of /v1/admin/changes)"
        )));
    }
    Ok(())
}

/// Writes the changes since `args.since`, counting them in `written`; the feed cursor
/// to resume from.
async fn run(
    config: &Config,
    storage: &dyn Storage,
    args: &ExportArgs,
    written: &mut u64,
) -> Result<String, ExportError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ExportError::Failed(format!("{what}: {e}"));
    let key = crate::http::cursor_key_of(config.cursor_secret.as_ref(), storage)
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
    let mut out = Output::open(args.out.as_deref())?;
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
            out.line(c).map_err(|e| failed("output", &e))?;
        }
        *written += changes.len() as u64;
        query.since = Some(cursor);
        if !has_more {
            break cursor;
        }
    };
    out.finish()?;
    cursor::seal(&key, cursor, &scope).map_err(|e| failed("cursor", &e))
}

/// Where the lines go: stdout, or a file that is fsynced once written.
enum Output {
    Stdout(BufWriter<std::io::StdoutLock<'static>>),
    File(BufWriter<File>, PathBuf),
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Output, ExportError> {
        Ok(match path {
            None => Output::Stdout(BufWriter::new(std::io::stdout().lock())),
            Some(p) => Output::File(
                BufWriter::new(
                    File::create(p)
                        .map_err(|e| ExportError::Failed(format!("{}: {e}", p.display())))?,
                ),
                p.to_owned(),
            ),
        })
    }

    fn line(&mut self, change: &impl serde::Serialize) -> std::io::Result<()> {
        let w: &mut dyn Write = match self {
            Output::Stdout(w) => w,
            Output::File(w, _) => w,
        };
        serde_json::to_writer(&mut *w, change)?;
        w.write_all(b"\n")
    }

    /// Flushes, and for a file waits until its bytes are on disk.
    fn finish(self) -> Result<(), ExportError> {
        match self {
            Output::Stdout(mut w) => w
                .flush()
                .map_err(|e| ExportError::Failed(format!("output: {e}"))),
            Output::File(w, path) => w
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| ExportError::Failed(format!("{}: {e}", path.display()))),
        }
    }
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

/// One audit row per export that reached the database: who can read the database can
/// read every record anyway, but the trail says when the feed left it, and how much
/// of it. A failed run says why in `detail.failed` (the lines written before the
/// failure are counted).
async fn audit(
    storage: &dyn Storage,
    changes: u64,
    from_start: bool,
    failed: Option<&str>,
) -> Result<(), crate::storage::StorageError> {
    let mut detail = serde_json::json!({"changes": changes, "from_start": from_start});
    if let Some(why) = failed {
        detail["failed"] = why.into();
    }
    let fields = AuditFields {
        at: outpost_core::protocol::rfc3339_millis(logic::now_ms()),
        event: EXPORT_EVENT.into(),
        kind: "export".into(),
        detail: detail.to_string(),
        ..AuditFields::default()
    };
    storage
        .append_audit(vec![AuditEntry {
            fields,
            prior: None,
        }])
        .await
}
