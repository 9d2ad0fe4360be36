//! Downloads: files the app asked for, and with every sync those that eager
//! collections' records refer to, fetched in ranges sized to the link.
//!
//! Each range is written to the partial file and counted before the next is asked,
//! so a cut or a kill loses at most the range in flight; the whole file is checked
//! against its hash before it takes its name.

use super::store::Folder;
use super::upload::{FilesStop, Moved, Phase, Session};
use super::{Chunker, STALLS_BEFORE_BACKOFF};
use crate::db::attachments::{self as rows, FileRow};
use crate::feed::ChangeOrigin;
use crate::protocol::refs_in;
use crate::store::Store;
use crate::transport::{BoxFuture, TransportError};

/// Queues the files of eager collections, then downloads every file that is due.
pub(crate) async fn download_due<S: Session>(s: &S) -> Phase {
    let store = s.store();
    queue_eager(store)?;
    let folder = store.folder();
    loop {
        let now = store.now_ms();
        let Some(row) = store
            .read(|c| rows::due_downloads(c, now, 1))?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        download_one(s, &folder, row).await?;
    }
}

/// Marks wanted every file an eager collection's live records refer to.
fn queue_eager(store: &Store) -> Result<(), FilesStop> {
    let now = store.now_ms();
    for collection in store.eager_collections() {
        let texts = store.read(|c| rows::record_texts_in(c, &collection))?;
        let mut refs = Vec::new();
        for t in texts {
            if let Ok(obj) = serde_json::from_str(&t) {
                refs.extend(refs_in(&obj));
            }
        }
        if refs.is_empty() {
            continue;
        }
        store.write(ChangeOrigin::Local, |w| {
            for r in &refs {
                let here = rows::get(w.tx(), &r.sha256)?.is_some_and(|row| row.local);
                if !here {
                    rows::want(
                        w.tx(),
                        &r.sha256,
                        r.size,
                        &r.content_type,
                        Chunker::START,
                        now,
                    )?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

async fn download_one<S: Session>(s: &S, folder: &Folder, row: FileRow) -> Phase {
    let store = s.store();
    let t = s.transport();
    let sha = row.sha256.as_str();
    let write = |f: &dyn Fn(&rusqlite::Connection) -> crate::Result<()>| -> Phase {
        store
            .write(ChangeOrigin::Local, |w| f(w.tx()))
            .map_err(FilesStop::from)
    };
    let mut chunk = Chunker::resume(row.chunk, Chunker::MAX);
    let mut stalls = 0;
    let back_off = |chunk: u64, error: &str| -> Phase {
        let attempts = row.attempts.saturating_add(1);
        let next = store.now_ms() + s.backoff(attempts).as_millis() as i64;
        write(&|c| rows::retry_at(c, sha, attempts, next, chunk, error))
    };
    let mut size = row.size;
    let mut at = row.downloaded;
    if size == 0 || at == 0 {
        let request = move |token: String| -> BoxFuture<'_, _> {
            Box::pin(async move { t.attachment_status(&token, sha).await })
        };
        match s.authorized(&request).await {
            Ok(Some(st)) if st.complete => {
                if st.size != row.size {
                    write(&|c| rows::sized(c, sha, st.size))?;
                }
                size = st.size;
            }
            // Not uploaded yet, or not visible to this user (yet): later.
            Ok(_) => return back_off(chunk.size(), "not on the server yet"),
            Err(TransportError::Unauthorized(m)) => return Err(FilesStop::Auth(m)),
            Err(e) => return back_off(chunk.size(), &e.to_string()),
        }
    }
    loop {
        if at >= size {
            return match folder.finish_partial(sha) {
                Ok(true) => {
                    write(&|c| rows::downloaded(c, sha))?;
                    s.moved(Moved {
                        downloaded_files: 1,
                        ..Moved::default()
                    });
                    Ok(())
                }
                Ok(false) => {
                    write(&|c| rows::progressed(c, sha, None, Some(0), chunk.size()))?;
                    back_off(chunk.size(), "the downloaded bytes did not match the hash")
                }
                Err(e) => back_off(chunk.size(), &e.to_string()),
            };
        }
        let to = (at + chunk.size()).min(size);
        let request = move |token: String| -> BoxFuture<'_, _> {
            Box::pin(async move { t.download_attachment(&token, sha, at, to).await })
        };
        let started = std::time::Instant::now();
        let got = s.authorized(&request).await;
        match got {
            Ok(Some(bytes)) if bytes.len() as u64 == to - at => {
                if let Err(e) = folder.write_partial(sha, at, &bytes) {
                    return back_off(chunk.size(), &e.to_string());
                }
                s.moved(Moved {
                    bytes_received: bytes.len() as u64,
                    ..Moved::default()
                });
                at = to;
                chunk.went_through(started.elapsed());
                stalls = 0;
                let c2 = chunk.size();
                write(&|c| rows::progressed(c, sha, None, Some(at), c2))?;
            }
            Ok(None) => return back_off(chunk.size(), "no longer visible on the server"),
            Err(TransportError::Unauthorized(m)) => return Err(FilesStop::Auth(m)),
            Ok(Some(_)) | Err(_) => {
                chunk.failed();
                stalls += 1;
                if stalls >= STALLS_BEFORE_BACKOFF {
                    return back_off(chunk.size(), "the download keeps failing");
                }
            }
        }
    }
}
