//! The `attachments` table: every file this device holds or wants, and where its
//! upload and download stand.
//!
//! One row per file (by SHA-256). The bytes live in the store's folder
//! (`crate::attachments::Folder`); a row says whether the whole, checked file is there
//! (`local`), how much of it the server is known to hold (`uploaded`) and how much of a
//! download has arrived (`downloaded`), so both queues resume after a kill from what
//! was made durable. `chunk` is the next request's size, adapted to the link.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};

/// Where a file's upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadState {
    /// Waiting to go, or going.
    Pending,
    /// The server holds all of it.
    Done,
    /// The server refused it for good (too large, over quota, or the local copy is
    /// corrupt); kept locally, shown by the status.
    Failed,
}

impl UploadState {
    fn parse(s: &str) -> Result<UploadState> {
        match s {
            "pending" => Ok(UploadState::Pending),
            "done" => Ok(UploadState::Done),
            "failed" => Ok(UploadState::Failed),
            other => Err(Error::corrupt("attachments", "upload", other)),
        }
    }
}

/// One row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRow {
    pub sha256: String,
    /// 0 while unknown (a download asked for before the server said).
    pub size: u64,
    pub content_type: String,
    pub local: bool,
    /// `None`: nothing to send (a downloaded file).
    pub upload: Option<UploadState>,
    pub uploaded: u64,
    pub wanted: bool,
    pub downloaded: u64,
    pub chunk: u64,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub used_at: i64,
    pub created_at: i64,
}

const COLS: &str = "sha256, size, content_type, local, upload, uploaded, wanted, downloaded, \
                    chunk, attempts, next_attempt_at, last_error, used_at, created_at";

fn u(n: i64) -> u64 {
    n.max(0) as u64
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read(r: &Row<'_>) -> rusqlite::Result<(FileRow, Option<String>)> {
    Ok((
        FileRow {
            sha256: r.get(0)?,
            size: u(r.get(1)?),
            content_type: r.get(2)?,
            local: r.get(3)?,
            upload: None,
            uploaded: u(r.get(5)?),
            wanted: r.get(6)?,
            downloaded: u(r.get(7)?),
            chunk: u(r.get(8)?),
            attempts: u32::try_from(r.get::<_, i64>(9)?.max(0)).unwrap_or(u32::MAX),
            next_attempt_at: r.get(10)?,
            last_error: r.get(11)?,
            used_at: r.get(12)?,
            created_at: r.get(13)?,
        },
        r.get(4)?,
    ))
}

fn finish((mut row, upload): (FileRow, Option<String>)) -> Result<FileRow> {
    row.upload = upload.as_deref().map(UploadState::parse).transpose()?;
    Ok(row)
}

fn select(conn: &Connection, where_: &str, args: impl rusqlite::Params) -> Result<Vec<FileRow>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLS} FROM attachments {where_}"))?;
    let rows = stmt.query_map(args, read)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(finish(r?)?);
    }
    Ok(out)
}

pub(crate) fn get(conn: &Connection, sha256: &str) -> Result<Option<FileRow>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM attachments WHERE sha256 = ?1"))?
        .query_row([sha256], read)
        .optional()?
        .map(finish)
        .transpose()
}

/// A file now whole in the folder, saved here: it is uploaded unless the server holds
/// it already.
pub(crate) fn saved_locally(
    conn: &Connection,
    sha256: &str,
    size: u64,
    content_type: &str,
    chunk: u64,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO attachments (sha256, size, content_type, local, upload, chunk, used_at, \
                                  created_at)
         VALUES (?1, ?2, ?3, 1, 'pending', ?4, ?5, ?5)
         ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, local = 1, wanted = 0,
             downloaded = 0, used_at = excluded.used_at,
             upload = CASE WHEN upload = 'done' THEN 'done' ELSE 'pending' END,
             attempts = CASE WHEN upload = 'done' THEN attempts ELSE 0 END,
             next_attempt_at = CASE WHEN upload = 'done' THEN next_attempt_at ELSE 0 END,
             last_error = CASE WHEN upload = 'done' THEN last_error ELSE NULL END",
    )?
    .execute(params![sha256, i(size), content_type, i(chunk), now])?;
    Ok(())
}

/// The app (or an eager collection) wants the file here: queued for download unless
/// it is here already. `size` and `content_type` fill a row that does not know them.
pub(crate) fn want(
    conn: &Connection,
    sha256: &str,
    size: u64,
    content_type: &str,
    chunk: u64,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO attachments (sha256, size, content_type, wanted, chunk, used_at, created_at)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5)
         ON CONFLICT (sha256) DO UPDATE SET used_at = excluded.used_at,
             wanted = CASE WHEN local = 1 THEN 0 ELSE 1 END,
             size = CASE WHEN size = 0 THEN excluded.size ELSE size END,
             content_type = CASE WHEN size = 0 THEN excluded.content_type ELSE content_type END",
    )?
    .execute(params![sha256, i(size), content_type, i(chunk), now])?;
    Ok(())
}

pub(crate) fn touch(conn: &Connection, sha256: &str, now: i64) -> Result<()> {
    conn.prepare_cached("UPDATE attachments SET used_at = ?2 WHERE sha256 = ?1")?
        .execute(params![sha256, now])?;
    Ok(())
}

/// Uploads due at `now`, oldest first.
pub(crate) fn due_uploads(conn: &Connection, now: i64, limit: u32) -> Result<Vec<FileRow>> {
    select(
        conn,
        "WHERE upload = 'pending' AND local = 1 AND next_attempt_at <= ?1
         ORDER BY created_at, sha256 LIMIT ?2",
        params![now, limit],
    )
}

/// Downloads due at `now`, the most recently asked for first.
pub(crate) fn due_downloads(conn: &Connection, now: i64, limit: u32) -> Result<Vec<FileRow>> {
    select(
        conn,
        "WHERE wanted = 1 AND local = 0 AND next_attempt_at <= ?1
         ORDER BY used_at DESC, sha256 LIMIT ?2",
        params![now, limit],
    )
}

/// True when no file is known at all.
pub(crate) fn none(conn: &Connection) -> Result<bool> {
    Ok(!conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM attachments)")?
        .query_row([], |r| r.get::<_, bool>(0))?)
}

pub(crate) fn all(conn: &Connection) -> Result<Vec<FileRow>> {
    select(conn, "ORDER BY sha256", [])
}

/// Progress of a transfer: the server's count of the upload, or the bytes of a
/// download, with the chunk size to go on with; a try that moved forward clears the
/// backoff.
pub(crate) fn progressed(
    conn: &Connection,
    sha256: &str,
    uploaded: Option<u64>,
    downloaded: Option<u64>,
    chunk: u64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET uploaded = COALESCE(?2, uploaded),
             downloaded = COALESCE(?3, downloaded), chunk = ?4, attempts = 0,
             next_attempt_at = 0, last_error = NULL
         WHERE sha256 = ?1",
    )?
    .execute(params![
        sha256,
        uploaded.map(i),
        downloaded.map(i),
        i(chunk)
    ])?;
    Ok(())
}

/// A try failed for a reason that may pass: try again at `next_at`.
pub(crate) fn retry_at(
    conn: &Connection,
    sha256: &str,
    attempts: u32,
    next_at: i64,
    chunk: u64,
    error: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET attempts = ?2, next_attempt_at = ?3, chunk = ?4, last_error = ?5
         WHERE sha256 = ?1",
    )?
    .execute(params![sha256, attempts, next_at, i(chunk), error])?;
    Ok(())
}

pub(crate) fn upload_done(conn: &Connection, sha256: &str, size: u64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET upload = 'done', uploaded = ?2, attempts = 0,
             next_attempt_at = 0, last_error = NULL
         WHERE sha256 = ?1",
    )?
    .execute(params![sha256, i(size)])?;
    Ok(())
}

pub(crate) fn upload_failed(conn: &Connection, sha256: &str, error: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET upload = 'failed', last_error = ?2 WHERE sha256 = ?1",
    )?
    .execute(params![sha256, error])?;
    Ok(())
}

/// The server told the size of a file asked for before it was known.
pub(crate) fn sized(conn: &Connection, sha256: &str, size: u64) -> Result<()> {
    conn.prepare_cached("UPDATE attachments SET size = ?2 WHERE sha256 = ?1")?
        .execute(params![sha256, i(size)])?;
    Ok(())
}

/// A download is whole and checked: the file is here.
pub(crate) fn downloaded(conn: &Connection, sha256: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET local = 1, wanted = 0, downloaded = 0, attempts = 0,
             next_attempt_at = 0, last_error = NULL
         WHERE sha256 = ?1",
    )?
    .execute([sha256])?;
    Ok(())
}

/// The file left the folder (evicted): it can be downloaded again.
pub(crate) fn evicted(conn: &Connection, sha256: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attachments SET local = 0, wanted = 0, downloaded = 0 WHERE sha256 = ?1",
    )?
    .execute([sha256])?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, sha256: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM attachments WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(())
}

/// Forgets every file (a sign-out; the caller removes the bytes).
pub(crate) fn delete_all(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM attachments", [])?;
    Ok(())
}

/// Files and bytes still to go each way, and uploads refused for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub uploads: u64,
    pub upload_bytes: u64,
    pub downloads: u64,
    pub download_bytes: u64,
    pub failed_uploads: u64,
}

pub(crate) fn counts(conn: &Connection) -> Result<Counts> {
    Ok(conn
        .prepare_cached(
            "SELECT
               COALESCE(SUM(upload = 'pending'), 0),
               COALESCE(SUM(CASE WHEN upload = 'pending' THEN MAX(size - uploaded, 0) END), 0),
               COALESCE(SUM(wanted = 1 AND local = 0), 0),
               COALESCE(SUM(CASE WHEN wanted = 1 AND local = 0
                                 THEN MAX(size - downloaded, 0) END), 0),
               COALESCE(SUM(upload = 'failed'), 0)
             FROM attachments",
        )?
        .query_row([], |r| {
            Ok(Counts {
                uploads: u(r.get(0)?),
                upload_bytes: u(r.get(1)?),
                downloads: u(r.get(2)?),
                download_bytes: u(r.get(3)?),
                failed_uploads: u(r.get(4)?),
            })
        })?)
}

/// Every stored JSON text that may refer to a file: records (current, synced base,
/// pulled state), queued edits and the conflict log.
pub(crate) fn texts_with_refs(conn: &Connection) -> Result<Vec<String>> {
    const KEY: &str = "'\"$attachment\"'";
    let sql = format!(
        "SELECT data FROM records WHERE instr(data, {KEY}) > 0
         UNION ALL SELECT base FROM records WHERE instr(base, {KEY}) > 0
         UNION ALL SELECT remote FROM records WHERE instr(remote, {KEY}) > 0
         UNION ALL SELECT data FROM outbox WHERE instr(data, {KEY}) > 0
         UNION ALL SELECT local FROM conflicts WHERE instr(local, {KEY}) > 0
         UNION ALL SELECT remote FROM conflicts WHERE instr(remote, {KEY}) > 0
         UNION ALL SELECT base FROM conflicts WHERE instr(base, {KEY}) > 0"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Live record texts of `collections` that may refer to files (for eager downloads).
pub(crate) fn record_texts_in(conn: &Connection, collection: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM records WHERE collection = ?1 AND deleted = 0
           AND instr(data, '\"$attachment\"') > 0",
    )?;
    let rows = stmt.query_map([collection], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
