//! What the app calls: attach a file, ask for one, count what is still to move.

use std::path::Path;

use super::store::{Folder, file_err};
use super::{AttachmentCounts, AttachmentState, Chunker};
use crate::db::attachments as rows;
use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::protocol::{AttachmentRef, is_sha256, valid_content_type, valid_name};
use crate::store::Store;

/// The type given to a file asked for before the server said what it is.
const UNKNOWN_TYPE: &str = "application/octet-stream";

impl Store {
    /// The folder this store keeps its files in.
    pub(crate) fn folder(&self) -> Folder {
        Folder::of(self.path())
    }

    /// Copies the file at `path` into the store's folder and queues it for upload. When
    /// this returns the copy is durable; put the returned reference
    /// ([`AttachmentRef::to_json`]) in a record field. Attaching the same bytes twice
    /// gives the same reference and keeps one file.
    pub fn attach_file(
        &self,
        path: impl AsRef<Path>,
        content_type: &str,
        name: Option<&str>,
    ) -> Result<AttachmentRef> {
        check_meta(content_type, name)?;
        let f = std::fs::File::open(path.as_ref())
            .map_err(|e| file_err(&format!("cannot open {}", path.as_ref().display()), e))?;
        self.attach_from(f, content_type, name)
    }

    /// [`Store::attach_file`] for bytes the app holds (a signature drawn on screen).
    pub fn attach_bytes(
        &self,
        bytes: &[u8],
        content_type: &str,
        name: Option<&str>,
    ) -> Result<AttachmentRef> {
        check_meta(content_type, name)?;
        self.attach_from(bytes, content_type, name)
    }

    fn attach_from(
        &self,
        source: impl std::io::Read,
        content_type: &str,
        name: Option<&str>,
    ) -> Result<AttachmentRef> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        // A collection must not unlink these bytes between placing them and their row.
        let _files = super::lock_files();
        let saved = self.folder().save(source)?;
        let now = self.now_ms();
        self.write(ChangeOrigin::Local, |w| {
            rows::saved_locally(
                w.tx(),
                &saved.sha256,
                saved.size,
                content_type,
                Chunker::START,
                now,
            )
        })?;
        Ok(AttachmentRef {
            sha256: saved.sha256,
            size: saved.size,
            content_type: content_type.to_owned(),
            name: name.map(str::to_owned),
        })
    }

    /// The file a reference names: its path when it is here, else pending, with its
    /// download queued (it arrives with the next syncs).
    pub fn attachment(&self, sha256: &str) -> Result<AttachmentState> {
        if !is_sha256(sha256) {
            return Err(Error::InvalidData(
                "an attachment is named by its SHA-256: 64 lowercase hex digits".into(),
            ));
        }
        let now = self.now_ms();
        let folder = self.folder();
        let row = self.read(|c| rows::get(c, sha256))?;
        if let Some(r) = row.as_ref().filter(|r| r.local) {
            let path = folder.path_of(sha256);
            if path.exists() {
                self.write(ChangeOrigin::Local, |w| rows::touch(w.tx(), sha256, now))?;
                return Ok(AttachmentState::Ready { path, size: r.size });
            }
            // Removed behind the store's back: fetch it again.
            self.write(ChangeOrigin::Local, |w| rows::evicted(w.tx(), sha256))?;
        }
        self.write(ChangeOrigin::Local, |w| {
            rows::want(w.tx(), sha256, 0, UNKNOWN_TYPE, Chunker::START, now)
        })?;
        let row = self.read(|c| rows::get(c, sha256))?;
        Ok(AttachmentState::Pending {
            size: row.as_ref().map_or(0, |r| r.size),
            received: row.as_ref().map_or(0, |r| r.downloaded),
        })
    }

    /// Files (and bytes) still to upload and to download.
    pub fn attachment_counts(&self) -> Result<AttachmentCounts> {
        let c = self.read(rows::counts)?;
        Ok(AttachmentCounts {
            uploads: c.uploads,
            upload_bytes: c.upload_bytes,
            downloads: c.downloads,
            download_bytes: c.download_bytes,
            failed_uploads: c.failed_uploads,
        })
    }
}

fn check_meta(content_type: &str, name: Option<&str>) -> Result<()> {
    if !valid_content_type(content_type) {
        return Err(Error::InvalidData(format!(
            "content type {content_type:?}: type/subtype, printable ASCII, at most 255"
        )));
    }
    if let Some(n) = name.filter(|n| !valid_name(n)) {
        return Err(Error::InvalidData(format!(
            "file name {n:?}: 1-255 characters, no control characters or slashes"
        )));
    }
    Ok(())
}
