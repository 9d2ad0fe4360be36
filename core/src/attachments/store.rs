//! The store's folder of files, beside its database: `<db>.attachments/`.
//!
//! Every file is named by its SHA-256 and is only ever put there whole: bytes are
//! written to a temporary file, fsynced, renamed to their name and the directory
//! fsynced, so a kill at any moment leaves either no file under the name or the whole
//! one. Downloads grow in `partial/<sha256>` and are renamed in the same way once
//! their hash is checked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::transport::FileSlice;

pub(crate) fn file_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::File(format!("{what}: {e}"))
}

/// The folder of one store.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    root: PathBuf,
}

/// What saving a file gave: its hash and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    pub sha256: String,
    pub size: u64,
}

impl Folder {
    /// The folder of the database at `db`.
    pub(crate) fn of(db: &Path) -> Folder {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".attachments");
        Folder {
            root: db.with_file_name(name),
        }
    }

    /// Whether the folder was ever made.
    pub(crate) fn exists(&self) -> bool {
        self.root.is_dir()
    }

    pub(crate) fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256)
    }

    fn partial_of(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(sha256)
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Copies everything `source` gives into the folder, durably, under its hash.
    pub(crate) fn save(&self, mut source: impl Read) -> Result<Saved> {
        fs::create_dir_all(self.tmp()).map_err(|e| file_err("cannot create the folder", e))?;
        let tmp = self.tmp().join(uuid::Uuid::new_v4().simple().to_string());
        let out = (|| -> io::Result<Saved> {
            let mut f = File::create(&tmp)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..n]);
                f.write_all(&buf[..n])?;
                size += n as u64;
            }
            f.sync_all()?;
            Ok(Saved {
                sha256: hex(&h.finalize()),
                size,
            })
        })();
        let saved = match out {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(file_err("cannot copy the file", e));
            }
        };
        self.place(&tmp, &saved.sha256)?;
        Ok(saved)
    }

    /// Renames a complete, fsynced file to its name and makes that durable; a file
    /// already there (the same bytes) is kept.
    fn place(&self, from: &Path, sha256: &str) -> Result<()> {
        let to = self.path_of(sha256);
        if to.exists() {
            let _ = fs::remove_file(from);
            return Ok(());
        }
        fs::rename(from, &to).map_err(|e| file_err("cannot store the file", e))?;
        sync_dir(&self.root)
    }

    /// `len` bytes of a stored file from `offset`, to be read as they are sent; an
    /// error now when the file is not there or holds fewer.
    pub(crate) fn slice(&self, sha256: &str, offset: u64, len: u64) -> Result<FileSlice> {
        let path = self.path_of(sha256);
        let held = fs::metadata(&path)
            .map_err(|e| file_err("cannot open", e))?
            .len();
        if held < offset.saturating_add(len) {
            return Err(file_err(
                "cannot read",
                format!("the file holds {held} bytes, fewer than {}", offset + len),
            ));
        }
        Ok(FileSlice::new(path, offset, len))
    }

    /// The SHA-256 of a stored file, or `None` when it is not there.
    pub(crate) fn hash_of(&self, sha256: &str) -> Result<Option<String>> {
        hash_file(&self.path_of(sha256))
    }

    /// Writes downloaded bytes at `offset` of the partial file, durably.
    pub(crate) fn write_partial(&self, sha256: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let path = self.partial_of(sha256);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| file_err("cannot create the folder", e))?;
        }
        (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            f.set_len(offset)?;
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(bytes)?;
            f.sync_data()
        })()
        .map_err(|e| file_err("cannot write the download", e))
    }

    /// Makes a whole download the file, if its bytes match its name; removes it if
    /// they do not. True when the file is now in place.
    pub(crate) fn finish_partial(&self, sha256: &str) -> Result<bool> {
        let path = self.partial_of(sha256);
        if hash_file(&path)?.as_deref() == Some(sha256) {
            self.place(&path, sha256)?;
            Ok(true)
        } else {
            self.remove_partial(sha256);
            Ok(false)
        }
    }

    pub(crate) fn remove_partial(&self, sha256: &str) {
        let _ = fs::remove_file(self.partial_of(sha256));
    }

    /// Removes a file and any download of it.
    pub(crate) fn remove(&self, sha256: &str) -> Result<()> {
        self.remove_partial(sha256);
        match fs::remove_file(self.path_of(sha256)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(file_err("cannot remove", e)),
        }
    }

    /// Removes every file but those named in `keep`, and every download and copy under
    /// way (a sign-out: what is not kept belongs to no one any more).
    pub(crate) fn remove_all_but(&self, keep: &[String]) -> Result<()> {
        for (name, _) in self.listing() {
            if !keep.contains(&name) {
                self.remove(&name)?;
            }
        }
        for dir in [self.root.join("partial"), self.tmp()] {
            remove_dir(&dir)?;
        }
        Ok(())
    }

    /// Removes the folder and all it holds (the database is being deleted).
    pub(crate) fn remove_everything(&self) -> Result<()> {
        remove_dir(&self.root)
    }

    /// Names in the folder that look like files, with their age.
    pub(crate) fn listing(&self) -> Vec<(String, std::time::Duration)> {
        list(&self.root)
    }

    /// Downloads under way (or left behind), by name, with the age of their last byte.
    pub(crate) fn partials(&self) -> Vec<(String, std::time::Duration)> {
        list(&self.root.join("partial"))
    }

    /// Removes temporary copies older than `age` (a kill interrupted them).
    pub(crate) fn clean_tmp(&self, age: std::time::Duration) {
        let Ok(dir) = fs::read_dir(self.tmp()) else {
            return;
        };
        for e in dir.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= age);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn list(root: &Path) -> Vec<(String, std::time::Duration)> {
    let Ok(dir) = fs::read_dir(root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            crate::protocol::is_sha256(&name).then_some(())?;
            let age = e
                .metadata()
                .ok()?
                .modified()
                .ok()?
                .elapsed()
                .unwrap_or_default();
            Some((name, age))
        })
        .collect()
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(file_err(&format!("cannot remove {}", dir.display()), e)),
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(64), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn hash_file(path: &Path) -> Result<Option<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err("cannot open", e)),
    };
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| file_err("cannot read", e))?;
    Ok(Some(hex(&h.finalize())))
}

/// fsync of a directory, so a rename in it survives power loss.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| file_err("cannot sync the folder", e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_saved_under_their_hash_and_downloads_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = Folder::of(&dir.path().join("s.db"));
        let saved = f.save(&b"hello"[..]).unwrap();
        assert_eq!(
            saved.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(saved.size, 5);
        assert_eq!(fs::read(f.path_of(&saved.sha256)).unwrap(), b"hello");
        assert!(dir.path().join("s.db.attachments").is_dir());
        // Saving the same bytes again keeps one file and leaves no temporary copy.
        assert_eq!(f.save(&b"hello"[..]).unwrap(), saved);
        assert_eq!(fs::read_dir(f.tmp()).unwrap().count(), 0);
        assert_eq!(
            f.slice(&saved.sha256, 1, 3).unwrap().read_all().unwrap(),
            b"ell"
        );
        assert_eq!(
            f.slice(&saved.sha256, 4, 1).unwrap().read_all().unwrap(),
            b"o"
        );
        assert!(f.slice(&saved.sha256, 4, 2).is_err(), "past the end");

        f.remove(&saved.sha256).unwrap();
        f.write_partial(&saved.sha256, 0, b"hel").unwrap();
        // A retried chunk rewrites from its offset; what was past it goes.
        f.write_partial(&saved.sha256, 2, b"llo").unwrap();
        assert!(f.finish_partial(&saved.sha256).unwrap());
        assert_eq!(fs::read(f.path_of(&saved.sha256)).unwrap(), b"hello");
        f.write_partial(&"0".repeat(64), 0, b"junk").unwrap();
        assert!(!f.finish_partial(&"0".repeat(64)).unwrap());
        assert_eq!(f.listing().len(), 1);
    }
}
