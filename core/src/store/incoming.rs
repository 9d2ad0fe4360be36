//! Pulled changes: applying a page with its cursor, and the full re-pull after the
//! server expired a cursor.
//!
//! A page and its cursor move in one transaction, so a pull interrupted anywhere either
//! applied a page and moved past it, or did neither. Records with local edits are left
//! alone: the newest server state is stashed and settled when the edit's answer comes
//! back, so the base stays the common ancestor a three-way merge needs.

use super::Store;
use crate::db::{cursors, meta, records};
use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::protocol::{Change, validate_record};

impl Store {
    /// The pull cursor of a collection (`None`: from the beginning).
    pub(crate) fn cursor(&self, collection: &str) -> Result<Option<String>> {
        self.read(|conn| cursors::get(conn, collection))
    }

    /// The generation of an unfinished full re-pull of `collection`, if one is running.
    pub(crate) fn resync_generation(&self, collection: &str) -> Result<Option<i64>> {
        self.read(|conn| meta::get_i64(conn, &meta::Key::Resync(collection)))
    }

    /// Starts a full re-pull after `cursor_expired`: the cursor goes, and records the
    /// re-pull does not bring back are dropped at its end (unless they hold local edits).
    pub(crate) fn begin_resync(&self, collection: &str) -> Result<i64> {
        self.write(ChangeOrigin::Remote, |w| {
            let gen_ = records::max_pulled_gen(w.tx(), collection)? + 1;
            cursors::remove(w.tx(), collection)?;
            meta::set(w.tx(), &meta::Key::Resync(collection), &gen_.to_string())?;
            Ok(gen_)
        })
    }

    /// Applies one pulled page of `collection` and its cursor in one transaction.
    /// `finish_resync` ends a full re-pull with this page. A change of another
    /// collection means the server did not answer what was asked: the page is refused
    /// whole, and nothing moves.
    pub(crate) fn apply_pull_page(
        &self,
        collection: &str,
        changes: &[Change],
        cursor: &str,
        finish_resync: Option<i64>,
    ) -> Result<usize> {
        if let Some(c) = changes.iter().find(|c| c.collection != collection) {
            return Err(Error::InvalidData(format!(
                "a pulled page of {collection:?} holds a change of {:?}; page refused",
                c.collection
            )));
        }
        self.write(ChangeOrigin::Remote, |w| {
            let key = meta::Key::Resync(collection);
            let gen_ = meta::get_i64(w.tx(), &key)?.unwrap_or(0);
            let mut applied = 0;
            for c in changes {
                w.tx_mut().observe(&c.hlc);
                let live = c.data.as_ref().filter(|_| !c.deleted);
                if live.is_some_and(|d| validate_record(d).is_err()) {
                    tracing::warn!(collection, "skipping an oversized record from the server");
                    continue;
                }
                if records::apply_pulled(w.tx_mut(), c, gen_)? {
                    w.changed(collection, &c.record_id);
                    applied += 1;
                } else {
                    records::stash(w.tx(), c)?;
                }
            }
            cursors::set(w.tx(), collection, cursor)?;
            if let Some(g) = finish_resync {
                // The re-pull is complete: synced records it did not bring back are gone
                // from the server (purged or no longer readable).
                for id in records::not_pulled_since(w.tx(), collection, g)? {
                    records::delete(w.tx_mut(), collection, &id)?;
                    w.changed(collection, &id);
                }
                meta::remove(w.tx(), &key)?;
            }
            Ok(applied)
        })
    }
}
