//! The database's files on disk: which are open in this process, and removing them.
//!
//! An app deletes a database when a user leaves a shared device or asks to forget the
//! data on it. Removing a file that is still open would leave the open store writing
//! into an unlinked file, so every open store registers its path here, and deletion
//! refuses a registered one. SQLite keeps parts of a database beside the main file
//! (the WAL, its index, a rollback journal); they go with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::lock;
use crate::error::{Error, Result};

/// The files SQLite may keep beside a database, by suffix of its path.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Paths of the databases open in this process, once per open store.
static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The path a database is known by: canonical when it exists, so two spellings of one
/// file are one entry.
fn key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A database registered as open; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct OpenFile(PathBuf);

impl OpenFile {
    pub(crate) fn register(path: &Path) -> OpenFile {
        let key = key(path);
        lock(&OPEN).push(key.clone());
        OpenFile(key)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let mut open = lock(&OPEN);
        if let Some(i) = open.iter().position(|p| *p == self.0) {
            open.swap_remove(i);
        }
    }
}

/// Removes the database at `path` and the files SQLite keeps beside it. Files that are
/// not there are fine; a database open in this process is refused.
pub(crate) fn delete(path: &Path) -> Result<()> {
    let key = key(path);
    if lock(&OPEN).contains(&key) {
        return Err(Error::StillOpen(path.display().to_string()));
    }
    let beside = |suffix: &str| {
        let mut name = key.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let files = std::iter::once(key.clone()).chain(SIDECARS.into_iter().map(beside));
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Database(format!(
                    "cannot remove {}: {e}",
                    file.display()
                )));
            }
        }
    }
    Ok(())
}
