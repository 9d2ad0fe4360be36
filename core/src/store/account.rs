//! Accounts on a shared device: whose data the store holds, what signing out leaves
//! behind, and removing a database.
//!
//! A tablet passes from nurse to nurse. A store is opened for one user id and the file
//! remembers it, so a store opened for another user refuses (`Error::WrongUser`) rather
//! than show her records. Signing out ends with one transaction on the writer that
//! either removes the user's data or seals what she has not synced under her id
//! (`db::seals`), and closes the store in the same hold of the writer, so no write can
//! slip in between and land in nobody's data.
//!
//! Removed data leaves the file, not only its tables: the search index is compacted so
//! deleted terms leave its segments, the file is rewritten (VACUUM) once the writer is
//! let go, and the WAL is folded back and emptied. Sealed data stays in the file,
//! unreadable through any API but not encrypted apart from the rest: with the
//! `encryption` feature the whole file is encrypted under the app's key, not under a
//! key per user.

use std::path::Path;
use std::time::Duration;

use super::Store;
use crate::attachments::lock_files;
use crate::attachments::store::Folder;
use crate::db::{
    Tx, attachments, conflicts, cursors, files, indexes, meta, outbox, records, seals,
};
use crate::error::{Error, Result};

/// What signing out does with the edits the user has not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut {
    /// Sync first, for at most `deadline`; if any edit is still not on the server (not
    /// sent, rejected, or in a manual conflict), fail with `Error::UnsyncedEdits` and
    /// change nothing, so the app can ask the user. Otherwise remove the user's data.
    /// [`Store::sign_out`] cannot sync: there it only checks.
    SyncFirst { deadline: Duration },
    /// Seal the user's unsynced edits (their records, queued and rejected edits, and
    /// the conflict log) in the file under their user id, and remove everything else.
    /// They come back, and are sent, when a store is opened for the same user again;
    /// no other user can read them. Needs a store opened with a user id.
    KeepUnsynced,
}

/// Edits that are not on the server. Attached files count as edits: a photo not yet
/// uploaded is `pending`, one the server refused for good is `failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Queued or in flight, files still to upload included.
    pub pending: u64,
    /// Rejected by the server, kept for the user's decision, files included.
    pub failed: u64,
    /// Manual conflicts waiting for the app.
    pub conflicts: u64,
}

impl Unsynced {
    pub fn total(&self) -> u64 {
        self.pending + self.failed + self.conflicts
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    fn of(conn: &rusqlite::Connection) -> Result<Unsynced> {
        let counts = outbox::counts(conn)?;
        let files = attachments::counts(conn)?;
        Ok(Unsynced {
            pending: counts.pending + counts.syncing + files.uploads,
            failed: counts.failed + files.failed_uploads,
            conflicts: conflicts::open_count(conn)?,
        })
    }
}

impl Store {
    /// The user the store was opened for (`StoreConfig::user_id`).
    pub fn user_id(&self) -> Option<&str> {
        self.shared.db.user()
    }

    /// The edits that are not on the server: what a sign-out would have to keep.
    pub fn unsynced(&self) -> Result<Unsynced> {
        self.read(Unsynced::of)
    }

    /// Signs the user out of this device without syncing, then closes the store:
    /// listeners end, and every later call fails with `Error::Closed`. With
    /// [`SignOut::SyncFirst`] it only checks that nothing is unsynced; use
    /// `SyncEngine::sign_out` to sync first. On an error nothing changed and the store
    /// stays open.
    pub fn sign_out(&self, policy: SignOut) -> Result<()> {
        let user = self.user_id().map(str::to_owned);
        let replica = self.replica_id().to_owned();
        // No file may be added or collected between reading what seals keep and
        // removing the rest.
        let _files = lock_files();
        let mut sealed_files = Vec::new();
        self.shared.db.close_after(self.now_ms(), |tx| {
            match policy {
                SignOut::SyncFirst { .. } => {
                    let left = Unsynced::of(tx)?;
                    if !left.is_empty() {
                        return Err(Error::UnsyncedEdits {
                            pending: left.pending,
                            failed: left.failed,
                            conflicts: left.conflicts,
                        });
                    }
                }
                SignOut::KeepUnsynced => {
                    let user = user.as_deref().ok_or_else(|| {
                        Error::InvalidConfig(
                            "keeping unsynced edits at sign-out needs a store opened with a \
                             user_id"
                                .into(),
                        )
                    })?;
                    if seals::anything_to_keep(tx)? {
                        seals::seal(tx, user, &replica)?;
                    }
                }
            }
            sealed_files = seals::sealed_files(tx)?;
            remove_user_data(tx)
        })?;
        self.shared.feed.close_all();
        // The rows are gone; a file left behind is only bytes no one can name, but
        // they are a patient's photo: remove them now rather than at a later collection.
        if let Err(e) = self.folder().remove_all_but(&sealed_files) {
            tracing::error!(error = %e, "could not remove the files of a user who signed out");
        }
        Ok(())
    }
}

/// Empties the live tables and forgets the user. Deleted content is zeroed as it goes
/// (the VACUUM at close rewrites the rest; this covers a VACUUM that fails).
fn remove_user_data(tx: &mut Tx<'_>) -> Result<()> {
    tx.execute_batch("PRAGMA secure_delete = ON")?;
    records::delete_all(tx)?;
    outbox::delete_all(tx)?;
    conflicts::delete_all(tx)?;
    attachments::delete_all(tx)?;
    cursors::remove_all(tx)?;
    meta::forget_user(tx)?;
    indexes::compact_search(tx)
}

/// Removes the database at `path` with the files SQLite keeps beside it (`-wal`,
/// `-shm`, `-journal`) and its folder of attached files, sealed data included. Missing
/// files are fine. A database open in this process is refused with
/// `Error::StillOpen`; close it (or sign out) first.
pub fn delete_database(path: impl AsRef<Path>) -> Result<()> {
    files::delete(path.as_ref())?;
    Folder::of(path.as_ref()).remove_everything()
}
