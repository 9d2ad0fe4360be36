//! Garbage collection and the cache limit.
//!
//! A file goes when nothing that can still need it refers to it: no record (its
//! current data, its last synced base, a pulled state kept beside local edits), no
//! queued edit and no conflict-log entry. The references are read and the rows
//! deleted in one write transaction, so a record saved meanwhile either committed
//! before (and is seen) or waits for it. A file attached but not yet put in a record
//! is protected by a grace period from its last use: `attach` and saving the record
//! are two calls. Bytes are unlinked only after the rows are gone; a kill between
//! leaves a file with no row, which the next collection removes.

use std::collections::HashSet;
use std::time::Duration;

use super::TMP_AGE;
use crate::db::attachments::{self as rows, FileRow, UploadState};
use crate::error::Result;
use crate::feed::ChangeOrigin;
use crate::protocol::refs_in;
use crate::store::Store;

/// A file with no row is left alone this long: it may be a copy whose row is being
/// written by another process's `attach`.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// What a collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Files no record or queued edit refers to any more.
    pub removed: u64,
    /// Downloaded files removed to keep within the cache limit (downloaded again
    /// when asked for).
    pub evicted: u64,
    pub bytes_freed: u64,
}

/// The files referred to by any of these JSON texts.
fn referenced(texts: &[String]) -> HashSet<String> {
    let mut out = HashSet::new();
    for t in texts {
        if let Ok(obj) = serde_json::from_str(t) {
            out.extend(refs_in(&obj).into_iter().map(|r| r.sha256));
        }
    }
    out
}

/// Files unreferenced and unused for the grace period.
fn unreferenced(all: &[FileRow], refs: &HashSet<String>, now: i64, grace_ms: i64) -> Vec<FileRow> {
    all.iter()
        .filter(|r| !refs.contains(&r.sha256) && now - r.used_at.max(r.created_at) >= grace_ms)
        .cloned()
        .collect()
}

/// Local files the server holds, to evict until `local` bytes fit in `limit`:
/// unreferenced ones first, then the least recently used.
fn to_evict(all: &[FileRow], refs: &HashSet<String>, limit: u64) -> Vec<FileRow> {
    let mut local: u64 = all.iter().filter(|r| r.local).map(|r| r.size).sum();
    let mut candidates: Vec<&FileRow> = all
        .iter()
        .filter(|r| r.local && matches!(r.upload, None | Some(UploadState::Done)))
        .collect();
    candidates.sort_by_key(|r| (refs.contains(&r.sha256), r.used_at));
    let mut out = Vec::new();
    for r in candidates {
        if local <= limit {
            break;
        }
        local = local.saturating_sub(r.size);
        out.push(r.clone());
    }
    out
}

impl Store {
    /// Removes files that no record and no queued edit refers to (once unused for
    /// `StoreConfig::attachment_grace`), and evicts downloaded files past
    /// `StoreConfig::attachment_cache_bytes`. The sync engine runs it after each sync.
    pub fn collect_attachments(&self) -> Result<Collected> {
        let (grace, limit) = self.attachment_settings();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let now = self.now_ms();
        let folder = self.folder();
        let mut out = Collected::default();
        // Most syncs of most stores: no file at all, and nothing to read.
        if !folder.exists() && self.read(rows::none)? {
            return Ok(out);
        }
        let _files = super::lock_files();
        let (gone, evict) = self.write(ChangeOrigin::Local, |w| {
            let refs = referenced(&rows::texts_with_refs(w.tx())?);
            let all = rows::all(w.tx())?;
            let gone = unreferenced(&all, &refs, now, grace_ms);
            for r in &gone {
                rows::remove(w.tx(), &r.sha256)?;
            }
            let kept: Vec<FileRow> = all
                .into_iter()
                .filter(|r| !gone.iter().any(|g| g.sha256 == r.sha256))
                .collect();
            let evict = limit.map_or_else(Vec::new, |l| to_evict(&kept, &refs, l));
            for r in &evict {
                rows::evicted(w.tx(), &r.sha256)?;
            }
            Ok((gone, evict))
        })?;
        for r in &gone {
            folder.remove(&r.sha256)?;
            out.removed += 1;
            out.bytes_freed += if r.local { r.size } else { 0 };
        }
        for r in &evict {
            folder.remove(&r.sha256)?;
            out.evicted += 1;
            out.bytes_freed += r.size;
        }
        // Files a kill left without a row (between the unlink and the commit above,
        // or between a copy and its row). Those a user who signed out left unsent are
        // hers, not orphans.
        let (known, downloading): (HashSet<String>, HashSet<String>) = self.read(|c| {
            let live = rows::all(c)?;
            let downloading = live
                .iter()
                .filter(|r| r.wanted && !r.local)
                .map(|r| r.sha256.clone())
                .collect();
            let sealed = crate::db::seals::sealed_files(c)?;
            let known = live.into_iter().map(|r| r.sha256).chain(sealed).collect();
            Ok((known, downloading))
        })?;
        for (name, age) in folder.listing() {
            if !known.contains(&name) && age >= grace.max(ORPHAN_AGE) {
                folder.remove(&name)?;
            }
        }
        // Downloads no one waits for any more (a sign-out or a collection while one
        // was under way): bytes of someone's file with no row to name them.
        for (name, age) in folder.partials() {
            if !downloading.contains(&name) && age >= ORPHAN_AGE {
                folder.remove_partial(&name);
            }
        }
        folder.clean_tmp(TMP_AGE);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sha: &str, size: u64, local: bool, upload: Option<UploadState>, used: i64) -> FileRow {
        FileRow {
            sha256: sha.into(),
            size,
            content_type: "a/b".into(),
            local,
            upload,
            uploaded: 0,
            wanted: false,
            downloaded: 0,
            chunk: 0,
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            used_at: used,
            created_at: used,
        }
    }

    #[test]
    fn only_unreferenced_files_past_the_grace_go() {
        let refs: HashSet<String> = ["a".to_owned()].into();
        let all = [
            row("a", 1, true, Some(UploadState::Pending), 0),
            row("b", 1, true, Some(UploadState::Pending), 0),
            row("c", 1, true, None, 90),
        ];
        let gone: Vec<String> = unreferenced(&all, &refs, 100, 50)
            .into_iter()
            .map(|r| r.sha256)
            .collect();
        assert_eq!(gone, ["b"]);
    }

    #[test]
    fn eviction_spares_unsent_files_and_prefers_unreferenced_then_old() {
        let refs: HashSet<String> = ["old".to_owned(), "new".to_owned()].into();
        let all = [
            row("unsent", 100, true, Some(UploadState::Pending), 0),
            row("old", 100, true, Some(UploadState::Done), 1),
            row("new", 100, true, None, 5),
            row("loose", 100, true, None, 9),
            row("away", 100, false, None, 0),
        ];
        let names = |v: Vec<FileRow>| v.into_iter().map(|r| r.sha256).collect::<Vec<_>>();
        assert_eq!(names(to_evict(&all, &refs, 400)), Vec::<String>::new());
        assert_eq!(names(to_evict(&all, &refs, 250)), ["loose", "old"]);
        assert_eq!(names(to_evict(&all, &refs, 0)), ["loose", "old", "new"]);
    }

    #[test]
    fn references_are_read_from_any_text() {
        let sha = "a".repeat(64);
        let texts = vec![
            format!(r#"{{"p":{{"$attachment":"{sha}","size":1,"type":"a/b"}}}}"#),
            "not json".to_owned(),
        ];
        assert!(referenced(&texts).contains(&sha));
    }
}
