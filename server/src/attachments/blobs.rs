//! Where the bytes of files live: behind [`BlobStore`], a directory by default
//! ([`DirStore`]) and an S3-compatible bucket for several server processes
//! ([`super::s3::S3Store`]).
//!
//! An upload arrives in parts, each made durable before the database says the
//! upload has received it; `finish` checks the SHA-256 of the parts in order (as the
//! caller hashed them on the way in, or by reading them back) and only then makes
//! them the file, under its hash. So a file under a hash always
//! holds exactly the bytes of that hash, however an upload was cut, repeated or
//! corrupted on the way.

use std::fmt;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::storage::BoxFuture;

/// A failure of the store: the request gets 500 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("blob store: {0}")]
pub struct BlobError(pub String);

pub(crate) fn blob_err(e: impl fmt::Display) -> BlobError {
    BlobError(e.to_string())
}

/// How `finish` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The bytes match: the file is stored.
    Stored,
    /// They do not: the parts are gone, the upload starts again from zero.
    Mismatch,
}

/// The bytes of uploads and files.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Bytes an upload request gathers before it writes them as one part: what a cut
    /// connection may cost the client to send again at most.
    fn part_bytes(&self) -> usize;

    /// Stores `pieces`, one after the other, as the part of upload `upload` that
    /// starts at `offset`, replacing what the upload held from there on; durable once
    /// `sync_parts` returns. The pieces are the body as it arrived, uncopied.
    fn write_part<'a>(
        &'a self,
        upload: &'a str,
        offset: u64,
        pieces: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), BlobError>>;

    /// Makes every part written so far durable.
    fn sync_parts<'a>(&'a self, upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;

    /// Checks the upload's first `size` bytes against `sha256` and on a match makes
    /// them the file `sha256` (a file already stored under it is kept). `hashed` is
    /// their SHA-256 when the caller computed it as it wrote them; without it they
    /// are read back and hashed. The parts are removed either way.
    fn finish<'a>(
        &'a self,
        upload: &'a str,
        size: u64,
        sha256: &'a str,
        hashed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Finished, BlobError>>;

    /// Removes an upload's parts.
    fn discard<'a>(&'a self, upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;

    /// The bytes `start..end` of a stored file, as a response body.
    fn read<'a>(
        &'a self,
        sha256: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Body, BlobError>>;
}

/// Files in a directory: `files/<ab>/<sha256>` and `uploads/<upload id>`, each upload
/// one file written at its offsets. For one server process, or several on one machine.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    fn upload_path(&self, upload: &str) -> PathBuf {
        self.root.join("uploads").join(upload)
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("files")
            .join(sha256.get(..2).unwrap_or("00"))
            .join(sha256)
    }
}

/// Upload ids and hashes name files: only plain names, never a path.
fn plain(name: &str) -> Result<&str, BlobError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(name)
    } else {
        Err(BlobError(format!("unusable blob name {name:?}")))
    }
}

/// Makes a rename or creation in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(blob_err)?
        .map_err(blob_err)
}

/// The SHA-256 of a file's first `size` bytes, or `None` when it is shorter.
async fn hash_prefix(path: &Path, size: u64) -> Result<Option<String>, BlobError> {
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(blob_err(e)),
    };
    let mut h = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await.map_err(blob_err)?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(hex::encode(h.finalize())))
}

impl BlobStore for DirStore {
    fn part_bytes(&self) -> usize {
        1024 * 1024
    }

    fn write_part<'a>(
        &'a self,
        upload: &'a str,
        offset: u64,
        pieces: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let path = self.upload_path(plain(upload)?);
            let dir = self.root.join("uploads");
            // One blocking call for the whole part, written from the pieces in place.
            let write = move || -> std::io::Result<()> {
                use std::os::unix::fs::FileExt;
                let open = |create| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(create)
                        .truncate(false)
                        .open(&path)
                };
                let (f, created) = match open(false) {
                    Ok(f) => (f, false),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&dir)?;
                        (open(true)?, true)
                    }
                    Err(e) => return Err(e),
                };
                let mut at = offset;
                for piece in &pieces {
                    f.write_all_at(piece, at)?;
                    at += piece.len() as u64;
                }
                if created {
                    // The new file's name must survive a crash before any of it counts.
                    f.sync_data()?;
                    std::fs::File::open(&dir)?.sync_all()?;
                }
                Ok(())
            };
            tokio::task::spawn_blocking(write)
                .await
                .map_err(blob_err)?
                .map_err(blob_err)
        })
    }

    fn sync_parts<'a>(&'a self, upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let f = match tokio::fs::OpenOptions::new()
                .write(true)
                .open(self.upload_path(plain(upload)?))
                .await
            {
                Ok(f) => f,
                // Purged meanwhile: nothing to keep, and the database says it is gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(blob_err(e)),
            };
            f.sync_data().await.map_err(blob_err)
        })
    }

    fn finish<'a>(
        &'a self,
        upload: &'a str,
        size: u64,
        sha256: &'a str,
        hashed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Finished, BlobError>> {
        Box::pin(async move {
            let part = self.upload_path(plain(upload)?);
            let file = self.file_path(plain(sha256)?);
            if tokio::fs::try_exists(&file).await.map_err(blob_err)? {
                // Stored already (by another user, or by a finish that raced this one):
                // a stored file was checked when it was stored.
                let _ = tokio::fs::remove_file(&part).await;
                return Ok(Finished::Stored);
            }
            let hash = match hashed {
                Some(h) => Some(h.to_owned()),
                None => hash_prefix(&part, size).await?,
            };
            if hash.as_deref() != Some(sha256) {
                let _ = tokio::fs::remove_file(&part).await;
                return Ok(Finished::Mismatch);
            }
            // Bytes past `size` (from a request that sent too many) are not the file's.
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .await
                .map_err(blob_err)?;
            f.set_len(size).await.map_err(blob_err)?;
            f.sync_all().await.map_err(blob_err)?;
            let dir = file.parent().map(Path::to_owned).unwrap_or_default();
            tokio::fs::create_dir_all(&dir).await.map_err(blob_err)?;
            tokio::fs::rename(&part, &file).await.map_err(blob_err)?;
            sync_dir(&dir).await?;
            Ok(Finished::Stored)
        })
    }

    fn discard<'a>(&'a self, upload: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.upload_path(plain(upload)?)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(blob_err(e)),
            }
        })
    }

    fn read<'a>(
        &'a self,
        sha256: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<Body, BlobError>> {
        Box::pin(async move {
            let mut f = tokio::fs::File::open(self.file_path(plain(sha256)?))
                .await
                .map_err(blob_err)?;
            f.seek(SeekFrom::Start(start)).await.map_err(blob_err)?;
            let stream = tokio_util::io::ReaderStream::with_capacity(
                f.take(end.saturating_sub(start)),
                64 * 1024,
            );
            Ok(Body::from_stream(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[tokio::test]
    async fn parts_become_the_file_only_when_the_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let data = b"hello attachments".to_vec();
        store
            .write_part("u1", 0, vec![Bytes::from_static(b"hello ")])
            .await
            .unwrap();
        // A repeated part with a tail past what counts is cut at `size`.
        store
            .write_part(
                "u1",
                6,
                vec![
                    Bytes::from_static(b"attachments"),
                    Bytes::from_static(b" and more"),
                ],
            )
            .await
            .unwrap();
        let h = sha(&data);
        assert_eq!(
            store
                .finish("u1", data.len() as u64, &h, None)
                .await
                .unwrap(),
            Finished::Stored
        );
        let body = store.read(&h, 6, 17).await.unwrap();
        let got = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"attachments");

        store
            .write_part("u2", 0, vec![Bytes::from_static(b"hellO attachments")])
            .await
            .unwrap();
        let other = sha(b"hellO attachmentz");
        assert_eq!(
            store.finish("u2", 17, &other, None).await.unwrap(),
            Finished::Mismatch
        );
        assert!(!dir.path().join("uploads/u2").exists());
        assert!(store.write_part("../x", 0, Vec::new()).await.is_err());
    }
}
