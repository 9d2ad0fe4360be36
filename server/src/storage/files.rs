//! What the database keeps about attachment files: each user's uploads, the files
//! stored once complete, and the index of which records refer to which file.
//!
//! The bytes themselves live in a [`crate::attachments::BlobStore`]; the rows here say
//! how far an upload has come (`received` only ever moves forward, and only over bytes
//! the store has made durable), whether a user may learn that a file exists, and how
//! much of their quota a user has used. Both backends keep them with the same rules.

/// One user's upload of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Names the upload's parts in the blob store; a new upload of the same file after
    /// a purge or a failed check gets a new one, so stale parts are never read.
    pub upload_id: String,
    pub size: u64,
    pub received: u64,
    /// Every byte is in and the SHA-256 matched: the file is stored.
    pub complete: bool,
}

/// What a user may know about a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileAccess {
    /// The user's own upload of it.
    pub upload: Option<Upload>,
    /// The size of the stored file, when some upload of it completed.
    pub stored: Option<u64>,
    /// The size a record the user may read gives it, when there is such a record.
    pub referenced: Option<u64>,
}

impl FileAccess {
    /// May the user learn that the file exists?
    pub fn visible(&self) -> bool {
        self.upload.is_some() || self.referenced.is_some()
    }

    /// May the user read its bytes (it is stored, and visible to them)?
    pub fn readable(&self) -> Option<u64> {
        self.stored.filter(|_| self.visible())
    }
}

/// The outcome of asking to start (or go on with) an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The user's upload, new or as it stood.
    Open(Upload),
    /// Starting it would take the user past their quota.
    OverQuota { used: u64, quota: u64 },
    /// The user's upload of this file was started with another size.
    SizeDiffers { size: u64 },
}

/// An upload left unfinished, to be dropped with its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleUpload {
    pub user: String,
    pub sha256: String,
    pub upload_id: String,
}
