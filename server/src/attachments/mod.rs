//! Attachments: the file routes of DESIGN.md ("Attachments") and the purge of uploads
//! that never finished.
//!
//! - `GET /v1/attachments/<sha256>/status`: how far the user's upload has come, or
//!   that the file is stored, for a user who uploaded it or may read a record that
//!   refers to it; `404` for anyone else, whether or not it exists.
//! - `POST /v1/attachments/<sha256>?size=&offset=`: bytes from `offset` on. They are
//!   written as they arrive, a part at a time, and each part counts as received once
//!   durable: a connection cut mid-body keeps what got through, so a phone on a link
//!   that drops every few kilobytes still moves forward. A part is written while the
//!   next arrives, and hashed meanwhile. The last byte triggers the SHA-256 check,
//!   from that running hash when this process saw every byte, else by reading the
//!   stored bytes back; a mismatch drops the upload (`400`).
//! - `GET /v1/attachments/<sha256>`: the bytes, `Range` honoured.
//!
//! What a user may know is decided by the database ([`crate::storage::files`]); the
//! bytes are in a [`BlobStore`].

pub mod blobs;
pub mod range;
pub mod s3;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use outpost_core::protocol::{AttachmentStatus, ErrorBody, ErrorCode, OffsetMismatch, is_sha256};
use sha2::{Digest, Sha256};

pub use blobs::{BlobError, BlobStore, DirStore, Finished};

use crate::config::AttachmentSettings;
use crate::error::ApiError;
use crate::http::{AppState, Policy, authenticated, peer};
use crate::logic::{self, User};
use crate::storage::files::{Begin, FileAccess, Upload};
use crate::storage::{Storage, StorageError};

/// One turn per (user, file) at a time in this process: an upload request holds it
/// while it receives, so a status or a new upload that arrives while the previous
/// request is still writing what came before its connection dropped waits for those
/// bytes to count, instead of having the device send them again.
#[derive(Debug, Default)]
pub struct Turns {
    held: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    hashes: std::sync::Mutex<HashMap<String, Running>>,
}

/// The SHA-256 of an upload's bytes as this process wrote them, so the last request
/// checks the hash without reading the file back. It stands for the bytes `0..at`;
/// a request that starts elsewhere (after a restart, or after another process wrote)
/// leaves the check to reading the stored bytes.
enum Running {
    At(u64, Box<Sha256>),
    /// A request wrote without its turn: another may have written the same bytes
    /// meanwhile, so no running hash of this upload is trusted here.
    Tainted,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Running::At(at, _) => write!(f, "At({at})"),
            Running::Tainted => f.write_str("Tainted"),
        }
    }
}

/// Running hashes kept at most: each is a few hundred bytes; past this the process
/// forgets them and the uploads fall back to reading their bytes back.
const RUNNING_HASHES: usize = 4096;

/// A held turn; the next request of the same upload goes when it is dropped.
#[derive(Debug)]
pub struct Turn {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    turns: Arc<Turns>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard.take();
        let mut held = self.turns.held.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this turn hold it: nobody waits.
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.key);
        }
    }
}

/// How long a request waits for the one before it on the same upload: longer than
/// writing a part, shorter than a client's timeout.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Turns {
    fn hashes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running hash of `upload` over its bytes `0..at`, if this process has it
    /// (or a new one, at 0).
    /// A request without its turn gets none and taints the upload.
    fn take_hash(&self, upload: &str, at: u64, turn_held: bool) -> Option<Sha256> {
        let mut hashes = self.hashes();
        if !turn_held {
            hashes.insert(upload.to_owned(), Running::Tainted);
            return None;
        }
        match hashes.remove(upload) {
            Some(Running::At(o, h)) if o == at => Some(*h),
            Some(Running::Tainted) => {
                hashes.insert(upload.to_owned(), Running::Tainted);
                None
            }
            // From the first byte, a hash needs nothing before.
            _ => (at == 0).then(Sha256::new),
        }
    }

    /// Keeps `upload`'s running hash over its bytes `0..at` for its next request.
    fn keep_hash(&self, upload: &str, at: u64, hash: Sha256) {
        let mut hashes = self.hashes();
        if let Some(Running::Tainted) = hashes.get(upload) {
            return;
        }
        if hashes.len() >= RUNNING_HASHES {
            hashes.retain(|_, r| matches!(r, Running::Tainted));
        }
        hashes.insert(upload.to_owned(), Running::At(at, Box::new(hash)));
    }

    /// The upload is done or dropped: nothing of it stays.
    fn forget_hash(&self, upload: &str) {
        self.hashes().remove(upload);
    }

    /// Waits (a while at most) for the turn of `user`'s upload of `sha256`; after the
    /// wait it goes ahead anyway (the database keeps concurrent writers consistent).
    pub async fn take(self: &Arc<Self>, user: &str, sha256: &str) -> Turn {
        // Length-prefixed, so no two (user, file) pairs share a key.
        let key = format!("{}:{user}:{sha256}", user.len());
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(held.entry(key.clone()).or_default())
        };
        let guard = tokio::time::timeout(TURN_WAIT, Arc::clone(&lock).lock_owned())
            .await
            .ok();
        Turn {
            key,
            lock,
            guard,
            turns: Arc::clone(self),
        }
    }
}

/// The blob store a config names.
pub fn open_store(settings: &AttachmentSettings) -> Result<Arc<dyn BlobStore>, BlobError> {
    Ok(match &settings.s3 {
        Some(s3) => Arc::new(s3::S3Store::new(s3)?),
        None => Arc::new(DirStore::new(&settings.dir)),
    })
}

fn internal(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ApiError + '_ {
    move |e| {
        tracing::error!(error = %e, "{what}");
        ApiError::internal()
    }
}

fn storage_failed(e: StorageError) -> ApiError {
    internal("attachment storage failed")(&e)
}

fn blob_failed(e: BlobError) -> ApiError {
    internal("attachment blob store failed")(&e)
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such attachment")
}

/// The hash in `/v1/attachments/<sha256>[/status]`; `None` for another shape.
fn sha_of(path: &str, status: bool) -> Result<String, ApiError> {
    let rest = path
        .strip_prefix("/v1/attachments/")
        .ok_or_else(not_found)?;
    let sha = if status {
        rest.strip_suffix("/status").ok_or_else(not_found)?
    } else {
        rest
    };
    if is_sha256(sha) {
        Ok(sha.to_owned())
    } else {
        Err(ApiError::bad_request(
            "an attachment is named by its SHA-256: 64 lowercase hex digits",
        ))
    }
}

/// The status answer for what the user may know, or `None` when they may know nothing.
fn status_of(sha256: &str, a: &FileAccess) -> Option<AttachmentStatus> {
    let stored = |size| AttachmentStatus {
        sha256: sha256.to_owned(),
        size,
        received: size,
        complete: true,
    };
    // A reader of a record that refers to a stored file needs no upload of their own.
    if let (Some(size), Some(_)) = (a.stored, a.referenced) {
        return Some(stored(size));
    }
    if let Some(u) = &a.upload {
        return Some(AttachmentStatus {
            sha256: sha256.to_owned(),
            size: u.size,
            received: u.received,
            complete: u.complete,
        });
    }
    a.referenced.map(|size| AttachmentStatus {
        sha256: sha256.to_owned(),
        size,
        received: 0,
        complete: false,
    })
}

async fn caller(
    state: &AppState,
    req: &Parts,
    route: &str,
) -> Result<(User, Arc<Policy>), ApiError> {
    let policy = state.policy();
    let addr = peer(&req.extensions);
    let c = authenticated(state, &policy, &req.headers, &addr, route).await?;
    Ok((c.user, policy))
}

async fn access(
    state: &AppState,
    user: &User,
    policy: &Policy,
    sha: &str,
) -> Result<FileAccess, ApiError> {
    state
        .storage()
        .file_access(user.clone(), policy.access.clone(), sha.to_owned())
        .await
        .map_err(storage_failed)
}

fn answer(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/attachments/<sha256>/status`.
pub async fn status(State(state): State<AppState>, req: Request) -> Response {
    let (req, _) = req.into_parts();
    answer(
        async {
            let (user, policy) = caller(&state, &req, "attachment_status").await?;
            let sha = sha_of(req.uri.path(), true)?;
            let _turn = state.upload_turns().take(&user.name, &sha).await;
            let a = access(&state, &user, &policy, &sha).await?;
            let s = status_of(&sha, &a).ok_or_else(not_found)?;
            Ok(axum::Json(s).into_response())
        }
        .await,
    )
}

/// `GET /v1/attachments/<sha256>`: the bytes.
pub async fn get(State(state): State<AppState>, req: Request) -> Response {
    answer(download(state, req).await)
}

async fn download(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (req, _) = req.into_parts();
    let (user, policy) = caller(&state, &req, "attachment_download").await?;
    let sha = sha_of(req.uri.path(), false)?;
    let a = access(&state, &user, &policy, &sha).await?;
    let size = a.readable().ok_or_else(not_found)?;
    let range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range::parse(range, size) {
        range::Wanted::Whole => (StatusCode::OK, 0, size),
        range::Wanted::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        range::Wanted::Unsatisfiable => {
            let mut r = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                axum::Json(outpost_core::protocol::ErrorResponse {
                    error: ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        format!("the range is outside the file's {size} bytes"),
                    ),
                }),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let body = state
        .files()
        .read(&sha, start, end)
        .await
        .map_err(blob_failed)?;
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(r)
}

/// `size` and `offset` of an upload request.
fn upload_params(query: Option<&str>) -> Result<(u64, u64), ApiError> {
    let (mut size, mut offset) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "size" => &mut size,
            "offset" => &mut offset,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!("{k} given twice")));
        }
        let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| ApiError::bad_request(format!("{k} must be a non-negative integer")))?;
        *slot = Some(n);
    }
    match (size, offset) {
        (Some(s), Some(o)) if o <= s => Ok((s, o)),
        (Some(_), Some(_)) => Err(ApiError::bad_request("offset is past size")),
        _ => Err(ApiError::bad_request("size and offset are required")),
    }
}

fn mismatch(received: u64) -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(OffsetMismatch {
            error: ErrorBody::new(
                ErrorCode::OffsetMismatch,
                format!("the server holds {received} bytes of this upload; send from there"),
            ),
            received,
        }),
    )
        .into_response()
}

fn upload_status(sha: &str, u: &Upload) -> Response {
    axum::Json(AttachmentStatus {
        sha256: sha.to_owned(),
        size: u.size,
        received: u.received,
        complete: u.complete,
    })
    .into_response()
}

/// `POST /v1/attachments/<sha256>?size=&offset=`.
pub async fn upload(State(state): State<AppState>, req: Request) -> Response {
    answer(upload_inner(state, req).await)
}

async fn upload_inner(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (req, body) = req.into_parts();
    let (user, policy) = caller(&state, &req, "attachment_upload").await?;
    let sha = sha_of(req.uri.path(), false)?;
    let (size, offset) = upload_params(req.uri.query())?;
    if size > policy.max_attachment_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "a file may have at most {} bytes (max_attachment_mib)",
                policy.max_attachment_bytes
            ),
        ));
    }
    let turn = state.upload_turns().take(&user.name, &sha).await;
    let a = access(&state, &user, &policy, &sha).await?;
    if let Some(s) = status_of(&sha, &a).filter(|s| s.complete) {
        return Ok(axum::Json(s).into_response());
    }
    let begun = state
        .storage()
        .begin_upload(
            user.name.clone(),
            sha.clone(),
            size,
            policy.attachment_quota_bytes,
            uuid::Uuid::new_v4().simple().to_string(),
            logic::now_ms(),
        )
        .await
        .map_err(storage_failed)?;
    let mut up = match begun {
        Begin::Open(u) => u,
        Begin::OverQuota { used, quota } => {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "over the storage quota: {used} of {quota} bytes used, this file needs {size}"
                ),
            ));
        }
        Begin::SizeDiffers { size: was } => {
            return Err(ApiError::bad_request(format!(
                "this upload was started with size {was}"
            )));
        }
    };
    if up.complete {
        return Ok(upload_status(&sha, &up));
    }
    if offset > up.received {
        return Ok(mismatch(up.received));
    }
    // On a task of its own: when the connection drops mid-body the server drops this
    // handler, but what arrived must still be written and counted.
    let name = user.name.clone();
    let task = tokio::spawn(async move {
        let turn_held = turn.guard.is_some();
        let _turn = turn;
        let (outcome, hashed) =
            receive(&state, &name, &sha, &mut up, offset, body, turn_held).await?;
        if let Received::TooMany = outcome {
            return Err(ApiError::bad_request(format!(
                "more bytes than size ({size}) from offset {offset}"
            )));
        }
        if up.received == up.size && !up.complete {
            return finish(&state, &name, &sha, up, hashed).await;
        }
        if let Received::Cut = outcome {
            return Err(ApiError::bad_request("the request body was cut short"));
        }
        Ok(upload_status(&sha, &up))
    });
    task.await.map_err(|e| internal("upload task failed")(&e))?
}

/// How reading an upload's body ended.
enum Received {
    /// The body ended.
    Done,
    /// The connection broke or timed out mid-body; what arrived is kept.
    Cut,
    /// It held bytes past the file's size (those are not kept).
    TooMany,
    /// Another request moved the upload meanwhile; this one stopped.
    Overtaken,
}

/// Bytes written before they are made durable and counted. The count runs while the
/// next bytes arrive, so a server killed mid-request may have the device send about
/// twice this again, at most (and the part being gathered and the one being written).
const COMMIT_BYTES: u64 = 8 * 1024 * 1024;

/// Writes the body from `offset` on, a part at a time, and counts what was written
/// (made durable first) every few megabytes and when the body ends or breaks. Bytes
/// the upload already holds are skipped. Also gives the SHA-256 of the upload's
/// whole `size` bytes when they are all in and this process hashed every one.
async fn receive(
    state: &AppState,
    user: &str,
    sha: &str,
    up: &mut Upload,
    offset: u64,
    mut body: Body,
    turn_held: bool,
) -> Result<(Received, Option<String>), ApiError> {
    let part = state.files().part_bytes();
    let mut r = Receiving {
        state,
        user,
        sha,
        up,
        pos: offset,
        from: offset,
        part,
        buf: Vec::new(),
        buffered: 0,
        writing: None,
        committing: None,
        hash: None,
        turn_held,
        hash_taken: false,
    };
    let committed = match r.take_body(&mut body).await {
        Ok(Received::Overtaken) => Ok(None),
        Ok(ended) => r.commit().await.map(|moved| moved.then_some(ended)),
        Err(e) => Err(e),
    };
    // No write or count of this request may land after it ends (and its turn passes
    // on).
    let written = r.written().await;
    let counted = r.counted().await;
    let hashed = match (&committed, written, counted) {
        (Ok(Some(_)), Ok(()), Ok(true)) => r.hash_done(),
        _ => None,
    };
    Ok((committed?.unwrap_or(Received::Overtaken), hashed))
}

impl Receiving<'_> {
    /// Reads the body into the store, committing every few megabytes.
    async fn take_body(&mut self, body: &mut Body) -> Result<Received, ApiError> {
        let r = self;
        let mut ended = Received::Done;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    ended = Received::Cut;
                    break;
                }
                Some(Ok(f)) => f,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if r.buf.is_empty() && r.pos == r.from {
                // Skip what the upload already holds (a repeated chunk).
                let held = r.up.received.saturating_sub(r.pos);
                let skip = usize::try_from(held).unwrap_or(usize::MAX).min(data.len());
                r.pos += skip as u64;
                r.from = r.pos;
                data = data.slice(skip..);
            }
            let room = r.up.size.saturating_sub(r.pos + r.buffered as u64);
            if data.len() as u64 > room {
                let fits = usize::try_from(room).unwrap_or(0);
                r.gather(data.slice(..fits));
                ended = Received::TooMany;
                break;
            }
            r.gather(data);
            if r.buffered >= r.part {
                r.write().await?;
                if r.pos - r.from >= COMMIT_BYTES && !r.start_commit().await? {
                    return Ok(Received::Overtaken);
                }
            }
        }
        Ok(ended)
    }
}

/// A count under way: the upload as it stands after it.
type Counting = tokio::task::JoinHandle<Result<Option<Upload>, ApiError>>;

/// An upload request's body on its way into the store.
struct Receiving<'a> {
    state: &'a AppState,
    user: &'a str,
    sha: &'a str,
    up: &'a mut Upload,
    /// Where the buffered bytes start: everything before is written, or being
    /// written by `writing`.
    pos: u64,
    /// Where the written bytes not yet counted start.
    from: u64,
    /// Bytes gathered before they are written as one part.
    part: usize,
    /// The gathered pieces of the body, as they arrived, and their length.
    buf: Vec<Bytes>,
    buffered: usize,
    /// The write of the last part, under way while the next part arrives; it hands
    /// back the running hash.
    writing: Option<tokio::task::JoinHandle<Result<Option<Sha256>, BlobError>>>,
    /// The count of the bytes up to the position it holds, under way while the next
    /// bytes arrive: its fsync and database write would otherwise stall the body.
    committing: Option<(u64, Counting)>,
    /// The running SHA-256 of the bytes `0..pos` when nothing is being written, if
    /// this process has it.
    hash: Option<Sha256>,
    turn_held: bool,
    /// Whether `hash` was looked for (at the first write).
    hash_taken: bool,
}

impl Receiving<'_> {
    fn gather(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.buffered += piece.len();
            self.buf.push(piece);
        }
    }

    /// Starts writing the buffered bytes at `pos` (not yet durable), and hashing
    /// them, once the part before is written: the next part arrives meanwhile.
    async fn write(&mut self) -> Result<(), ApiError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.written().await?;
        if !self.hash_taken {
            self.hash_taken = true;
            self.hash =
                self.state
                    .upload_turns()
                    .take_hash(&self.up.upload_id, self.pos, self.turn_held);
        }
        let pieces = std::mem::take(&mut self.buf);
        let (files, upload, at) = (
            Arc::clone(self.state.files()),
            self.up.upload_id.clone(),
            self.pos,
        );
        self.pos += std::mem::take(&mut self.buffered) as u64;
        let hash = self.hash.take();
        self.writing = Some(tokio::spawn(async move {
            let hashing = hash.map(|mut h| {
                let pieces = pieces.clone();
                tokio::task::spawn_blocking(move || {
                    for p in &pieces {
                        h.update(p);
                    }
                    h
                })
            });
            let written = files.write_part(&upload, at, pieces).await;
            let hash = match hashing {
                Some(h) => h.await.ok(),
                None => None,
            };
            written.map(|()| hash)
        }));
        Ok(())
    }

    /// Waits for the part being written; the running hash is back after it.
    async fn written(&mut self) -> Result<(), ApiError> {
        if let Some(w) = self.writing.take() {
            self.hash = w
                .await
                .map_err(|e| internal("writing a part failed")(&e))?
                .map_err(blob_failed)?;
        }
        Ok(())
    }

    /// Ends the request's use of the running hash: its digest when it covers the
    /// whole file, else it is kept for the request that continues at `pos`.
    fn hash_done(&mut self) -> Option<String> {
        let hash = self.hash.take()?;
        if self.pos == self.up.size {
            return Some(hex::encode(hash.finalize()));
        }
        self.state
            .upload_turns()
            .keep_hash(&self.up.upload_id, self.pos, hash);
        None
    }

    /// Makes what was written durable and advances the upload over it; false when
    /// another request moved the upload away first.
    async fn commit(&mut self) -> Result<bool, ApiError> {
        Ok(self.start_commit().await? && self.counted().await?)
    }

    /// Starts making what was written durable and advancing the upload over it, in
    /// the background, once the count before has landed; false when that count found
    /// the upload moved away by another request.
    async fn start_commit(&mut self) -> Result<bool, ApiError> {
        if !self.counted().await? {
            return Ok(false);
        }
        self.write().await?;
        self.written().await?;
        if self.pos <= self.from || self.pos <= self.up.received {
            self.from = self.pos;
            return Ok(true);
        }
        let state = self.state.clone();
        let (user, sha, upload) = (
            self.user.to_owned(),
            self.sha.to_owned(),
            self.up.upload_id.clone(),
        );
        let (from, to) = (self.from, self.pos);
        self.committing = Some((
            to,
            tokio::spawn(async move {
                state
                    .files()
                    .sync_parts(&upload)
                    .await
                    .map_err(blob_failed)?;
                state
                    .storage()
                    .advance_upload(user, sha, upload, from, to, logic::now_ms())
                    .await
                    .map_err(storage_failed)
            }),
        ));
        self.from = self.pos;
        Ok(true)
    }

    /// Waits for the count under way, if any; false when another request had moved
    /// the upload away first.
    async fn counted(&mut self) -> Result<bool, ApiError> {
        let Some((to, task)) = self.committing.take() else {
            return Ok(true);
        };
        let now = task
            .await
            .map_err(|e| internal("counting a part failed")(&e))??;
        match now {
            Some(u) if u.upload_id == self.up.upload_id => {
                let moved = u.received == to;
                *self.up = u;
                Ok(moved)
            }
            _ => Err(ApiError::bad_request(
                "the upload was dropped meanwhile; start again",
            )),
        }
    }
}

/// Every byte is in: check the hash, store the file or drop the upload.
async fn finish(
    state: &AppState,
    user: &str,
    sha: &str,
    mut up: Upload,
    hashed: Option<String>,
) -> Result<Response, ApiError> {
    state.upload_turns().forget_hash(&up.upload_id);
    match state
        .files()
        .finish(&up.upload_id, up.size, sha, hashed.as_deref())
        .await
        .map_err(blob_failed)?
    {
        Finished::Stored => {
            state
                .storage()
                .complete_upload(
                    user.to_owned(),
                    sha.to_owned(),
                    up.upload_id.clone(),
                    up.size,
                    logic::now_ms(),
                )
                .await
                .map_err(storage_failed)?;
            up.complete = true;
            up.received = up.size;
            Ok(upload_status(sha, &up))
        }
        Finished::Mismatch => {
            state
                .storage()
                .drop_upload(user.to_owned(), sha.to_owned(), up.upload_id)
                .await
                .map_err(storage_failed)?;
            Err(ApiError::bad_request(
                "the bytes do not match the SHA-256; the upload was discarded, send it again",
            ))
        }
    }
}

/// Drops uploads unfinished since `before_ms`, with their parts; returns how many.
pub async fn purge_stale(
    storage: &dyn Storage,
    files: &dyn BlobStore,
    before_ms: i64,
) -> Result<u64, StorageError> {
    let mut n = 0;
    loop {
        let stale = storage.stale_uploads(before_ms, 500).await?;
        let last = stale.len() < 500;
        for s in stale {
            if let Err(e) = files.discard(&s.upload_id).await {
                tracing::warn!(error = %e, "could not remove a stale upload's bytes");
                continue;
            }
            storage.drop_upload(s.user, s.sha256, s.upload_id).await?;
            n += 1;
        }
        if last {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_hash_serves_only_the_request_that_continues_it() {
        let turns = Turns::default();
        let digest = |h: Sha256| hex::encode(h.finalize());
        // From the first byte there is always one; elsewhere only where it stopped.
        let mut h = turns.take_hash("u", 0, true).unwrap();
        assert!(turns.take_hash("u", 5, true).is_none());
        h.update(b"hello");
        turns.keep_hash("u", 5, h);
        assert!(turns.take_hash("u", 4, true).is_none(), "another offset");
        assert!(
            turns.take_hash("u", 5, true).is_none(),
            "dropped by the miss"
        );
        let mut h = turns.take_hash("u", 0, true).unwrap();
        h.update(b"hello");
        turns.keep_hash("u", 5, h);
        let mut h = turns.take_hash("u", 5, true).unwrap();
        h.update(b" world");
        assert_eq!(digest(h), hex::encode(Sha256::digest(b"hello world")));
        // A request without its turn may race another: no hash is trusted after it.
        turns.keep_hash("v", 3, Sha256::new());
        assert!(turns.take_hash("v", 3, false).is_none());
        turns.keep_hash("v", 3, Sha256::new());
        assert!(turns.take_hash("v", 3, true).is_none());
        assert!(turns.take_hash("v", 0, true).is_none());
        turns.forget_hash("v");
        assert!(turns.take_hash("v", 0, true).is_some());
    }

    #[test]
    fn upload_parameters_are_read_strictly() {
        assert_eq!(upload_params(Some("size=10&offset=4")).ok(), Some((10, 4)));
        assert_eq!(
            upload_params(Some("offset=0&size=0&x=1")).ok(),
            Some((0, 0))
        );
        for bad in [
            "size=10",
            "size=10&offset=11",
            "size=-1&offset=0",
            "size=1&size=1&offset=0",
            "size=a&offset=0",
            "",
        ] {
            assert!(upload_params(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_shows_only_what_the_user_may_know() {
        let sha = "a".repeat(64);
        assert_eq!(status_of(&sha, &FileAccess::default()), None);
        let stored_only = FileAccess {
            stored: Some(5),
            ..FileAccess::default()
        };
        assert_eq!(status_of(&sha, &stored_only), None);
        let reader = FileAccess {
            stored: Some(5),
            referenced: Some(5),
            ..FileAccess::default()
        };
        assert!(status_of(&sha, &reader).is_some_and(|s| s.complete && s.received == 5));
        let waiting = FileAccess {
            referenced: Some(7),
            ..FileAccess::default()
        };
        assert!(status_of(&sha, &waiting).is_some_and(|s| !s.complete && s.size == 7));
        let mine = FileAccess {
            upload: Some(Upload {
                upload_id: "u".into(),
                size: 9,
                received: 3,
                complete: false,
            }),
            ..FileAccess::default()
        };
        assert!(status_of(&sha, &mine).is_some_and(|s| s.received == 3 && !s.complete));
        assert_eq!(
            sha_of("/v1/attachments/xyz", false).err().map(|e| e.code),
            Some(ErrorCode::InvalidRequest)
        );
    }
}
