//! The body of an upload request: part of a file, read as the request goes out.
//!
//! On a fast link a request carries tens of megabytes, which a phone should not hold
//! in memory, and reading it all before the first byte leaves would idle the link. A
//! reader on a blocking thread hands the request a few pieces at a time instead.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Bytes read from the file at a time.
const PIECE: usize = 256 * 1024;
/// Pieces read ahead of the request: what it holds in memory, at most, besides the
/// one being sent.
const AHEAD: usize = 4;

/// `len` bytes of a file from `offset`: the body of one upload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSlice {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl FileSlice {
    /// A slice of the file at `path`; it is read only when sent.
    pub fn new(path: impl Into<PathBuf>, offset: u64, len: u64) -> FileSlice {
        FileSlice {
            path: path.into(),
            offset,
            len,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole slice in memory, for transports that send a body at once; an error
    /// when the file is shorter.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut f = self.open()?;
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(16 << 20));
        f.by_ref().take(self.len).read_to_end(&mut out)?;
        if (out.len() as u64) < self.len {
            return Err(short());
        }
        Ok(out)
    }

    fn open(&self) -> io::Result<std::fs::File> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f)
    }

    /// A request body that reads the slice on a blocking thread as it is sent. The
    /// file is opened here, so a missing file fails before any request. Needs a Tokio
    /// runtime.
    pub(crate) fn body(&self) -> io::Result<FileBody> {
        let mut f = self.open()?;
        let (tx, rx) = mpsc::channel(AHEAD);
        let len = self.len;
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(PIECE).min(PIECE);
                // Read into spare capacity: zeroing a buffer first would cost a pass
                // over every byte of the file.
                let mut piece = Vec::with_capacity(n);
                let read = match (&mut f).take(n as u64).read_to_end(&mut piece) {
                    Ok(got) if got == n => Ok(Bytes::from(piece)),
                    Ok(_) => Err(short()),
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                // The request was dropped: stop reading.
                if tx.blocking_send(read.map_err(short_or)).is_err() || failed {
                    return;
                }
                left -= n as u64;
            }
        });
        Ok(FileBody { rx, left: len })
    }
}

fn short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file is shorter than the upload",
    )
}

fn short_or(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        short()
    } else {
        e
    }
}

/// A [`FileSlice`] being sent; its length is known, so it goes with a
/// `Content-Length`.
#[derive(Debug)]
pub(crate) struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(piece))) => {
                self.left = self.left.saturating_sub(piece.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            // The reader stopped before the end without saying why.
            Poll::Ready(None) => Poll::Ready(Some(Err(short()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body;
    use http_body_util::BodyExt;

    use super::*;

    fn file_of(n: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    #[tokio::test]
    async fn a_slice_is_sent_exactly_in_pieces() {
        let (_dir, path, bytes) = file_of(3 * PIECE + 123);
        for (offset, len) in [
            (0, 3 * PIECE + 123),
            (5, PIECE),
            (PIECE + 1, 2 * PIECE),
            (7, 0),
        ] {
            let slice = FileSlice::new(&path, offset as u64, len as u64);
            let body = slice.body().unwrap();
            assert_eq!(body.size_hint().exact(), Some(len as u64));
            let sent = body.collect().await.unwrap().to_bytes();
            assert_eq!(&sent[..], &bytes[offset..offset + len], "{offset} {len}");
            assert_eq!(slice.read_all().unwrap(), &bytes[offset..offset + len]);
        }
    }

    #[tokio::test]
    async fn a_short_or_missing_file_is_an_error_not_a_short_body() {
        let (dir, path, _) = file_of(PIECE + 10);
        let slice = FileSlice::new(&path, 20, PIECE as u64);
        let err = slice.body().unwrap().collect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            slice.read_all().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let missing = FileSlice::new(dir.path().join("gone"), 0, 1);
        assert_eq!(missing.body().unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
