//! How far a sync has got: changes and bytes done, of the total known so far, per
//! collection and in all, up and down.
//!
//! A first sync on a 2G link runs for minutes; "Syncing…" alone looks like a hang. The
//! totals come from what the device knows when it knows it: its own queue for uploads,
//! and for downloads the server's count of what remains after a page (`remaining`,
//! asked for again only once used up: [`Left`]), so a total may grow while a sync
//! runs (new changes, or a count the server capped), but what is done only ever grows.
//! Download bytes are bytes as received (what the radio carried; the total an estimate
//! at the rate so far); upload bytes are the ops' JSON, as queued.

use std::collections::BTreeMap;

/// Done of the total known so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Progress {
    pub changes_done: u64,
    pub changes_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Progress {
    fn add(&mut self, o: &Progress) {
        self.changes_done += o.changes_done;
        self.changes_total += o.changes_total;
        self.bytes_done += o.bytes_done;
        self.bytes_total += o.bytes_total;
    }

    /// Done is everything known: nothing left.
    pub fn is_complete(&self) -> bool {
        self.changes_done >= self.changes_total && self.bytes_done >= self.bytes_total
    }
}

/// One collection's progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectionProgress {
    pub collection: String,
    pub download: Progress,
    pub upload: Progress,
}

/// A sync's progress: totals, and each collection it has moved something for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SyncProgress {
    pub download: Progress,
    pub upload: Progress,
    pub collections: Vec<CollectionProgress>,
}

/// What a pull of one collection knows of the changes left after its last page, so it
/// asks the server to count them only when it does not. A count costs the server a
/// scan of up to 10,000 index entries, more than reading a page of 1,000: asked on
/// every page, it held a fast first sync back by about a third. An exact count lasts
/// until its changes have arrived, a capped one (a floor) until that many have; a
/// server that never counts leaves the estimate at 0, and each page asks again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Left {
    /// Changes the last count says are still to come; 0 before the first.
    known: u64,
}

impl Left {
    /// Whether the next page should carry a count.
    pub fn ask(&self) -> bool {
        self.known == 0
    }

    /// A page of `changes` arrived with the server's count (`None` when not asked for,
    /// or not given): what is left after it, by that count or the last one.
    pub fn after(&mut self, changes: u64, has_more: bool, counted: Option<u64>) -> u64 {
        let left = match (has_more, counted) {
            (false, _) => 0,
            (true, Some(n)) => n,
            (true, None) => self.known.saturating_sub(changes),
        };
        self.known = left;
        left
    }
}

/// The running count behind a [`SyncProgress`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    down: BTreeMap<String, Progress>,
    up: BTreeMap<String, Progress>,
}

impl Tracker {
    /// A pull page of `collection` arrived: `changes` in it, `bytes` received for it,
    /// and the server's count of what remains (`None` when it gives none).
    pub fn page(&mut self, collection: &str, changes: u64, bytes: u64, remaining: Option<u64>) {
        let p = self.down.entry(collection.to_owned()).or_default();
        p.changes_done += changes;
        p.bytes_done += bytes;
        let left = remaining.unwrap_or(0);
        p.changes_total = p.changes_done + left;
        // The bytes still to come, at the bytes per change so far.
        let per_change = p.bytes_done.checked_div(p.changes_done).unwrap_or(0);
        p.bytes_total = p.bytes_done + left * per_change;
    }

    /// Uploads still due for `collection`, beside those done: the total becomes done
    /// plus these.
    pub fn due(&mut self, collection: &str, changes: u64, bytes: u64) {
        let p = self.up.entry(collection.to_owned()).or_default();
        p.changes_total = p.changes_done + changes;
        p.bytes_total = p.bytes_done + bytes;
    }

    /// More uploads due for `collection` (queued while the push runs).
    pub fn more_due(&mut self, collection: &str, changes: u64, bytes: u64) {
        let p = self.up.entry(collection.to_owned()).or_default();
        p.changes_total += changes;
        p.bytes_total += bytes;
    }

    /// The server answered an op of `collection` of `bytes`.
    pub fn answered(&mut self, collection: &str, bytes: u64) {
        let p = self.up.entry(collection.to_owned()).or_default();
        p.changes_done += 1;
        p.bytes_done += bytes;
        p.changes_total = p.changes_total.max(p.changes_done);
        p.bytes_total = p.bytes_total.max(p.bytes_done);
    }

    pub fn snapshot(&self) -> SyncProgress {
        let mut out = SyncProgress::default();
        let names: std::collections::BTreeSet<&String> =
            self.down.keys().chain(self.up.keys()).collect();
        for name in names {
            let download = self.down.get(name).copied().unwrap_or_default();
            let upload = self.up.get(name).copied().unwrap_or_default();
            out.download.add(&download);
            out.upload.add(&upload);
            out.collections.push(CollectionProgress {
                collection: name.clone(),
                download,
                upload,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_asks_for_a_count_only_once_the_last_one_is_used_up() {
        let mut l = Left::default();
        assert!(l.ask());
        // A capped count of 2,500: the next two pages of 1,000 need none.
        assert_eq!(l.after(1000, true, Some(2500)), 2500);
        assert!(!l.ask());
        assert_eq!(l.after(1000, true, None), 1500);
        assert!(!l.ask());
        assert_eq!(l.after(1000, true, None), 500);
        assert!(!l.ask());
        // More pages than the count said (it was a floor, or changes came in): ask.
        assert_eq!(l.after(1000, true, None), 0);
        assert!(l.ask());
        assert_eq!(l.after(1000, true, Some(300)), 300);
        assert_eq!(l.after(300, false, None), 0);
        // A server that gives no count: every page asks, and nothing is left.
        let mut l = Left::default();
        assert_eq!(l.after(10, true, None), 0);
        assert!(l.ask());
    }

    #[test]
    fn downloads_count_up_to_the_server_s_total() {
        let mut t = Tracker::default();
        t.page("patients", 1000, 30_000, Some(2000));
        let p = t.snapshot().download;
        assert_eq!((p.changes_done, p.changes_total), (1000, 3000));
        assert_eq!((p.bytes_done, p.bytes_total), (30_000, 90_000));
        t.page("patients", 1500, 40_000, Some(500));
        t.page("patients", 500, 12_000, None);
        let p = t.snapshot().download;
        assert_eq!((p.changes_done, p.changes_total), (3000, 3000));
        assert!(p.is_complete(), "{p:?}");
    }

    #[test]
    fn edits_queued_during_a_push_add_to_its_total() {
        let mut t = Tracker::default();
        t.due("answers", 2, 200);
        t.answered("answers", 100);
        t.more_due("answers", 1, 50);
        let p = t.snapshot().upload;
        assert_eq!((p.changes_done, p.changes_total), (1, 3));
        assert_eq!((p.bytes_done, p.bytes_total), (100, 250));
    }

    #[test]
    fn uploads_and_collections_add_up() {
        let mut t = Tracker::default();
        t.due("answers", 3, 300);
        t.due("visits", 1, 50);
        t.answered("answers", 100);
        t.due("answers", 2, 200);
        let s = t.snapshot();
        assert_eq!(s.upload.changes_done, 1);
        assert_eq!(s.upload.changes_total, 4);
        assert_eq!(s.upload.bytes_total, 350);
        assert_eq!(s.collections.len(), 2);
        assert_eq!(s.collections[0].collection, "answers");
        assert_eq!(s.collections[0].upload.changes_total, 3);
        // An op answered that was not counted as due (a conflict's new op) raises the total.
        t.answered("visits", 50);
        t.answered("visits", 60);
        let v = &t.snapshot().collections[1].upload;
        assert_eq!(
            (v.changes_done, v.changes_total, v.bytes_total),
            (2, 2, 110)
        );
    }
}
