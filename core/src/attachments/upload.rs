//! The upload queue: each pending file goes to the server in requests sized to the
//! link, resuming where the server stands.
//!
//! A file's upload always starts by asking the server how much it holds (after a
//! crash, a kill or a dropped connection the device cannot know), then sends from
//! there. The server keeps whatever part of a request arrived before a cut, so a link
//! that drops every few kilobytes still moves the file forward; a try counts as
//! failed only when a fresh status shows no progress, and after a few of those the
//! file backs off as ops do. The server's hash check failing means the bytes were
//! damaged on the way (the file is sent again) or the local copy is (the upload
//! fails for good and the status shows it).

use std::collections::HashSet;
use std::time::Duration;

use super::store::Folder;
use super::{Chunker, STALLS_BEFORE_BACKOFF};
use crate::db::attachments::{self as rows, FileRow};
use crate::db::meta;
use crate::error::Error;
use crate::feed::ChangeOrigin;
use crate::protocol::AttachmentStatus;
use crate::store::Store;
use crate::transport::{BoxFuture, FileSlice, Transport, TransportError, Uploaded};

/// What the file phase needs from the engine running it.
pub(crate) trait Session: Sync {
    fn store(&self) -> &Store;
    fn transport(&self) -> &dyn Transport;
    /// The delay before try number `attempts` (from 1), as for ops.
    fn backoff(&self, attempts: u32) -> Duration;
    /// Counts what moved: a finished file each way, and bytes.
    fn moved(&self, moved: Moved);
    /// Makes one request with the token, and once more with a fresh token after a 401.
    fn authorized<'a, T: Send + 'a>(
        &'a self,
        request: &'a Request<'a, T>,
    ) -> BoxFuture<'a, Result<T, TransportError>>;
}

/// One request of the file phase, given the token.
pub(crate) type Request<'a, T> =
    dyn Fn(String) -> BoxFuture<'a, Result<T, TransportError>> + Send + Sync + 'a;

/// What one request of the file phase moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    pub uploaded_files: u64,
    pub downloaded_files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Why the file phase stopped early.
#[derive(Debug)]
pub(crate) enum FilesStop {
    /// The server refused the token, even a fresh one.
    Auth(String),
    /// The device's database failed.
    Fatal(String),
}

impl From<Error> for FilesStop {
    fn from(e: Error) -> FilesStop {
        FilesStop::Fatal(e.to_string())
    }
}

pub(crate) type Phase = Result<(), FilesStop>;

/// Uploads every file that is due, one at a time, oldest first.
pub(crate) async fn upload_due<S: Session>(s: &S) -> Phase {
    let store = s.store();
    let folder = store.folder();
    // Files whose bytes the server refused once in this run: a second refusal backs
    // off instead of sending the file again at once.
    let mut refused = HashSet::new();
    // A proxy before the server refused larger requests once: it will again.
    let max = match store.meta_i64(meta::Key::UploadLimit)? {
        Some(limit) => u64::try_from(limit).unwrap_or(Chunker::MAX),
        None => Chunker::MAX_UPLOAD,
    };
    loop {
        let now = store.now_ms();
        let Some(row) = store
            .read(|c| rows::due_uploads(c, now, 1))?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        Upload::new(s, &folder, row, max).run(&mut refused).await?;
    }
}

/// One file's upload in progress.
struct Upload<'a, S> {
    s: &'a S,
    folder: &'a Folder,
    row: FileRow,
    chunk: Chunker,
    /// Bytes the server is known to hold.
    known: u64,
    stalls: u32,
}

impl<'a, S: Session> Upload<'a, S> {
    fn new(s: &'a S, folder: &'a Folder, row: FileRow, max: u64) -> Upload<'a, S> {
        Upload {
            s,
            folder,
            chunk: Chunker::resume(row.chunk, max),
            known: row.uploaded,
            row,
            stalls: 0,
        }
    }

    fn write(&self, f: impl FnOnce(&rusqlite::Connection) -> crate::Result<()>) -> Phase {
        self.s
            .store()
            .write(ChangeOrigin::Local, |w| f(w.tx()))
            .map_err(FilesStop::from)
    }

    async fn status(&self) -> Result<Option<AttachmentStatus>, TransportError> {
        let sha = self.row.sha256.as_str();
        let t = self.s.transport();
        let request = move |token: String| -> BoxFuture<'_, _> {
            Box::pin(async move { t.attachment_status(&token, sha).await })
        };
        self.s.authorized(&request).await
    }

    async fn send(&self, slice: &FileSlice) -> Result<Uploaded, TransportError> {
        let (sha, size, offset) = (self.row.sha256.as_str(), self.row.size, slice.offset());
        let t = self.s.transport();
        let request = move |token: String| -> BoxFuture<'_, _> {
            let slice = slice.clone();
            Box::pin(async move { t.upload_attachment(&token, sha, size, offset, slice).await })
        };
        self.s.authorized(&request).await
    }

    async fn run(mut self, refused: &mut HashSet<String>) -> Phase {
        let sha = self.row.sha256.clone();
        let mut offset: Option<u64> = None;
        loop {
            let at = match offset {
                Some(o) => o,
                None => match self.status().await {
                    Ok(Some(st)) if st.complete => return self.done(),
                    Ok(Some(st)) => {
                        if st.received > self.known {
                            // A cut request still moved the file forward.
                            self.stalls = 0;
                        }
                        self.known = st.received;
                        st.received
                    }
                    Ok(None) => 0,
                    Err(e) => {
                        if let Some(stop) = self.failed(e)? {
                            return stop;
                        }
                        continue;
                    }
                },
            };
            let len = self.chunk.size().min(self.row.size.saturating_sub(at));
            let slice = match self.folder.slice(&sha, at, len) {
                Ok(s) => s,
                Err(e) => {
                    // A local file error: no server text in it.
                    let why = e.to_string();
                    return self.refused_for_good(&why, &why);
                }
            };
            let started = std::time::Instant::now();
            match self.send(&slice).await {
                Ok(Uploaded::Status(st)) => {
                    self.s.moved(Moved {
                        bytes_sent: slice.len(),
                        ..Moved::default()
                    });
                    if st.complete {
                        return self.done();
                    }
                    self.chunk.went_through(started.elapsed());
                    self.stalls = 0;
                    self.known = st.received;
                    offset = Some(st.received);
                    let (known, chunk) = (self.known, self.chunk.size());
                    self.write(|c| rows::progressed(c, &sha, Some(known), None, chunk))?;
                }
                Ok(Uploaded::OffsetMismatch { received }) => {
                    self.known = received;
                    offset = Some(received);
                }
                Err(TransportError::Http { status: 413, .. }) if slice.len() > Chunker::MAX => {
                    // A proxy before the server takes no body this large (the server's
                    // own 413 is for the whole file, and comes again below). Kept, so
                    // no later file sends one again.
                    self.chunk.limit(Chunker::MAX);
                    let limit = Chunker::MAX.to_string();
                    self.s
                        .store()
                        .set_meta(&[(meta::Key::UploadLimit, limit.as_str())])?;
                    offset = None;
                }
                Err(TransportError::Http { status: 400, .. })
                    if at + slice.len() == self.row.size =>
                {
                    return self.hash_refused(refused);
                }
                Err(e) => {
                    offset = None;
                    if let Some(stop) = self.failed(e)? {
                        return stop;
                    }
                }
            }
        }
    }

    /// A request failed: unauthorized stops the phase, a permanent refusal fails the
    /// upload, a transient failure shrinks the chunk and, after a few tries without
    /// progress, backs off. `Some` ends this file's turn.
    fn failed(&mut self, e: TransportError) -> Result<Option<Phase>, FilesStop> {
        match e {
            TransportError::Unauthorized(m) => Ok(Some(Err(FilesStop::Auth(m)))),
            e if e.is_transient() => {
                self.chunk.failed();
                self.stalls += 1;
                if self.stalls < STALLS_BEFORE_BACKOFF {
                    return Ok(None);
                }
                Ok(Some(self.back_off(&e.to_string())))
            }
            e => Ok(Some(self.refused_for_good(&e.to_string(), &e.for_log()))),
        }
    }

    fn back_off(&self, error: &str) -> Phase {
        let attempts = self.row.attempts.saturating_add(1);
        let next = self.s.store().now_ms() + self.s.backoff(attempts).as_millis() as i64;
        let (sha, chunk) = (self.row.sha256.as_str(), self.chunk.size());
        self.write(|c| rows::retry_at(c, sha, attempts, next, chunk, error))
    }

    /// `error` is kept for the app's status; `logged`, without the server's words, for
    /// the log.
    fn refused_for_good(&self, error: &str, logged: &str) -> Phase {
        tracing::warn!(sha256 = %self.row.sha256, error = logged, "upload refused for good");
        self.write(|c| rows::upload_failed(c, &self.row.sha256, error))
    }

    /// The server found the bytes did not match the hash. If the local copy still
    /// matches, they were damaged on the way: send the file again (at once the first
    /// time in a run, after a backoff the next).
    fn hash_refused(&self, refused: &mut HashSet<String>) -> Phase {
        let sha = self.row.sha256.as_str();
        match self.folder.hash_of(sha) {
            Ok(Some(h)) if h == sha => {
                tracing::warn!(sha256 = sha, "the server refused the bytes; sending again");
                let chunk = self.chunk.size();
                self.write(|c| rows::progressed(c, sha, Some(0), None, chunk))?;
                if !refused.insert(sha.to_owned()) {
                    return self.back_off("the server found the bytes damaged");
                }
                Ok(())
            }
            _ => {
                let why = "the local copy no longer matches its hash";
                self.refused_for_good(why, why)
            }
        }
    }

    fn done(&self) -> Phase {
        let (sha, size) = (self.row.sha256.as_str(), self.row.size);
        self.write(|c| rows::upload_done(c, sha, size))?;
        self.s.moved(Moved {
            uploaded_files: 1,
            ..Moved::default()
        });
        Ok(())
    }
}
