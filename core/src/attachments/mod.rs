//! Attachments on the device: photos, signatures and audio kept beside the database,
//! referred to from records by content, and moved by queues of their own.
//!
//! - `store`: the folder of files, written so a kill never leaves half a file under a
//!   name.
//! - `queue`: what the app calls: `attach` a file (durable when it returns, queued for
//!   upload) and ask for one (`attachment`: a path, or pending with progress while it
//!   downloads).
//! - `upload` and `download`: the engine's file phase, after records, so a file never
//!   holds a record back. Uploads ask the server where it stands first and resume
//!   there; both adapt their request size to the link ([`Chunker`]) and back off as
//!   ops do.
//! - `gc`: files no record and no queued edit refers to are removed after a grace
//!   period, and downloads past the cache limit are evicted.

mod download;
mod gc;
mod queue;
pub(crate) mod store;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use gc::Collected;

pub(crate) use download::download_due;
pub(crate) use upload::{FilesStop, Moved, Request, Session, upload_due};

/// A file as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentState {
    /// The whole file is here.
    Ready { path: PathBuf, size: u64 },
    /// Not here yet: it downloads with the next syncs (`received` of `size` bytes so
    /// far; `size` is 0 until the server has told it). It may also still be on its way
    /// to the server from the device that attached it.
    Pending { size: u64, received: u64 },
}

/// Files still to move, each way: what the sync status shows beside ops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentCounts {
    /// Files waiting to be uploaded (or uploading), and their bytes not yet sent.
    pub uploads: u64,
    pub upload_bytes: u64,
    /// Files asked for and not here yet, and their bytes not yet received.
    pub downloads: u64,
    pub download_bytes: u64,
    /// Uploads the server refused for good (too large, over quota); the files stay.
    pub failed_uploads: u64,
}

/// The size of the next request of a transfer: doubled after each one that went
/// through, halved after each that failed, so a request fits what the link carries
/// between two drops (and within a request timeout on a slow link). On a fast link
/// that has not dropped it grows at once to what the link carried in
/// [`Chunker::QUICK`]: every request costs the server a durable write and a round
/// trip, so a large file should not creep up to full size through small requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunker {
    size: u64,
    /// A request of this transfer failed: the link drops, so growth stays twofold.
    cut: bool,
    max: u64,
}

impl Chunker {
    pub(crate) const MIN: u64 = 16 * 1024;
    pub(crate) const START: u64 = 256 * 1024;
    /// The largest download request: its answer is held in memory until written.
    pub(crate) const MAX: u64 = 8 * 1024 * 1024;
    /// The largest upload request: read from the file as it is sent, and the server
    /// keeps what arrived before a cut, so a fast link sends a file in one request
    /// instead of paying a round trip and a durable write per few megabytes.
    pub(crate) const MAX_UPLOAD: u64 = 64 * 1024 * 1024;
    /// A request quicker than this grows the next at least fourfold instead of
    /// twofold, to what the link would carry in this time, until the first failure (on
    /// a link that drops, a larger request mostly fails again).
    const QUICK: std::time::Duration = std::time::Duration::from_millis(500);
    /// A request is sized to what the link carries in this time at most, and one that
    /// took longer shrinks the next to it: such a request pays its round trip many
    /// times over, and the device's stall timeout (20 s by default) runs from its
    /// start until the answer's first byte, however the upload is going.
    const LONG: std::time::Duration = std::time::Duration::from_secs(8);

    /// Resumes at a stored size (0: never tried; below the start: cut before), for
    /// requests of at most `max` bytes.
    pub(crate) fn resume(stored: u64, max: u64) -> Chunker {
        Chunker {
            size: if stored == 0 {
                Chunker::START
            } else {
                stored.clamp(Chunker::MIN, max)
            },
            cut: stored != 0 && stored < Chunker::START,
            max,
        }
    }

    pub(crate) fn size(self) -> u64 {
        self.size
    }

    /// A request of this size went through in `took`: quickly on a fast link that
    /// has not dropped, so the size grows faster there.
    pub(crate) fn went_through(&mut self, took: std::time::Duration) {
        let carried_in = |t: std::time::Duration| {
            (self.size as f64 * t.as_secs_f64() / took.as_secs_f64().max(1e-6)) as u64
        };
        let next = if took < Chunker::QUICK && !self.cut {
            (self.size * 4).max(carried_in(Chunker::QUICK))
        } else {
            (self.size * 2).min(carried_in(Chunker::LONG))
        };
        self.size = next.clamp(Chunker::MIN, self.max);
    }

    /// Requests stay within `max` from here on.
    pub(crate) fn limit(&mut self, max: u64) {
        self.max = max.max(Chunker::MIN);
        self.size = self.size.min(self.max);
    }

    pub(crate) fn failed(&mut self) {
        self.size = (self.size / 2).max(Chunker::MIN);
        self.cut = true;
    }
}

/// Held while a file is placed and its row written, and while collection removes
/// rows and their files, so neither sees the other half done. One for the process:
/// both are short and rare.
pub(crate) fn lock_files() -> std::sync::MutexGuard<'static, ()> {
    static FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    crate::db::lock(&FILES)
}

/// Failed tries in a row without progress before a transfer backs off: a cut that
/// still moved the file forward is not a failure of the link.
pub(crate) const STALLS_BEFORE_BACKOFF: u32 = 3;

/// Temporary copies older than this were left by a kill.
pub(crate) const TMP_AGE: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_grows_on_success_and_shrinks_on_failure_within_bounds() {
        let slow = Duration::from_secs(3);
        let mut c = Chunker::resume(0, Chunker::MAX);
        assert_eq!(c.size(), Chunker::START);
        c.went_through(slow);
        assert_eq!(c.size(), 2 * Chunker::START);
        // 512 KiB in 250 ms: the link carries 1 MiB in the quick time, so fourfold.
        c.went_through(Duration::from_millis(250));
        assert_eq!(c.size(), 8 * Chunker::START);
        // 2 MiB in 100 ms: 10 MiB in the quick time, more than the largest request.
        c.went_through(Duration::from_millis(100));
        assert_eq!(c.size(), Chunker::MAX);
        let mut quick = Chunker::resume(0, Chunker::MAX);
        quick.went_through(Duration::from_millis(25));
        assert_eq!(quick.size(), 20 * Chunker::START, "to what 500 ms carry");
        for _ in 0..20 {
            c.failed();
        }
        assert_eq!(c.size(), Chunker::MIN);
        // Once the link dropped, a quick request only doubles the next.
        c.went_through(Duration::from_millis(10));
        assert_eq!(c.size(), 2 * Chunker::MIN);
        for _ in 0..20 {
            c.went_through(slow);
        }
        assert_eq!(c.size(), Chunker::MAX);
        assert_eq!(Chunker::resume(1, Chunker::MAX).size(), Chunker::MIN);
        assert_eq!(Chunker::resume(48 * 1024, Chunker::MAX).size(), 48 * 1024);
        assert_eq!(
            Chunker::resume(Chunker::MAX_UPLOAD, Chunker::MAX).size(),
            Chunker::MAX
        );
        let mut resumed = Chunker::resume(48 * 1024, Chunker::MAX);
        resumed.went_through(Duration::from_millis(10));
        assert_eq!(
            resumed.size(),
            96 * 1024,
            "a size below the start was cut before"
        );
        let mut fresh = Chunker::resume(Chunker::START, Chunker::MAX);
        fresh.went_through(Duration::from_millis(400));
        assert_eq!(fresh.size(), 4 * Chunker::START);
        // An upload on a fast link grows to send a large file in one request.
        let mut up = Chunker::resume(0, Chunker::MAX_UPLOAD);
        up.went_through(Duration::from_millis(1));
        assert_eq!(up.size(), Chunker::MAX_UPLOAD);
        up.limit(Chunker::MAX);
        up.went_through(Duration::from_millis(2));
        assert_eq!(up.size(), Chunker::MAX, "a proxy took no larger body");
        // On a slow link a request grows only to what it carries in eight seconds,
        // and one that took longer shrinks the next to that.
        let mut slow_link = Chunker::resume(4 * 1024 * 1024, Chunker::MAX_UPLOAD);
        slow_link.went_through(Duration::from_secs(6));
        assert_eq!(slow_link.size(), 16 * 1024 * 1024 / 3);
        slow_link.went_through(Duration::from_secs(16));
        assert_eq!(slow_link.size(), 8 * 1024 * 1024 / 3);
        let mut crawl = Chunker::resume(Chunker::MIN, Chunker::MAX);
        crawl.went_through(Duration::from_secs(60));
        assert_eq!(crawl.size(), Chunker::MIN, "never below the smallest");
    }
}
