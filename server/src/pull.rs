//! Reading a pull page: the one flow every backend runs.
//!
//! When a cursor has expired, how many rows a page reads, where the next cursor stands
//! and whether more follow are rules of the protocol ("GET /v1/pull" in DESIGN.md), so
//! they are decided here once. A backend supplies only the reads, as a [`PullSteps`]
//! over one snapshot.
//!
//! A page ends at `limit` changes or at a byte budget, whichever comes first
//! ([`PageCut`]): 100 records of 1 MiB at `limit=5000` would otherwise be one answer
//! of 100 MiB, held in memory to be sent and too big for a phone on a slow link to
//! receive before its timeout. The first change is always taken, so every page makes
//! progress, and a cut page says `has_more` with its cursor right after its last change.
//!
//! A page that has more also says how many changes remain after it ([`Remaining`]), so
//! a device can show a first sync's progress. Counting every readable row past the
//! cursor would cost a scan of the rest of the collection on every page (on a million
//! rows, about 200 ms per page in SQLite); the count instead looks at no more than
//! [`REMAINING_CAP`] rows past the page, in the index order the page itself is read
//! in. That index also holds each row's scope and echo flag, so the count reads no
//! row: with a lookup per row it cost about 10 ms a page on a fast link, more than
//! reading the page. Below the cap the count is exact; at the cap it is a
//! floor, and says so.

use serde_json::value::RawValue;

use crate::logic::Cursor;
use crate::storage::{PageChange, PullPage, PullQuery, Remaining, StorageError, db_err};

/// The marks of the change sequence in the snapshot a page is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marks {
    /// Tombstones up to this seq have been purged.
    pub purged_through_seq: i64,
    /// The highest seq allocated (and, as commits are in seq order, committed).
    pub last_seq: i64,
}

/// Most rows past a page that are looked at to count what remains.
pub(crate) const REMAINING_CAP: i64 = 10_000;

/// The reads of one pull page, all from one snapshot of the backend.
pub(crate) trait PullSteps {
    async fn marks(&mut self) -> Result<Marks, StorageError>;

    /// Of the first `cap` rows with seq above `after` in the query's collections (in
    /// seq order), how many the query's user may read and the query does not leave out
    /// (its `own` changes); and whether there were `cap` such rows to look at.
    async fn count_after(
        &mut self,
        q: &PullQuery,
        after: i64,
        cap: i64,
    ) -> Result<Remaining, StorageError>;

    /// Offers the records with seq above `since` that the query's user may read, in
    /// increasing seq and with their [`change_bytes`], to `cut`; returns those it
    /// admits. Stops at the first it refuses, and need not offer more than
    /// [`PageCut::rows_to_read`].
    async fn records_after(
        &mut self,
        q: &PullQuery,
        since: i64,
        cut: &mut PageCut,
    ) -> Result<Vec<PageChange>, StorageError>;
}

/// Where a page ends: at `limit` changes, or before the change that would take it past
/// `max_bytes` of change JSON, but never before its first change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageCut {
    limit: usize,
    max_bytes: usize,
    taken: usize,
    bytes: usize,
    cut: bool,
}

impl PageCut {
    pub fn new(limit: u32, max_bytes: usize) -> PageCut {
        PageCut {
            limit: (limit as usize).max(1),
            max_bytes,
            taken: 0,
            bytes: 0,
            cut: false,
        }
    }

    /// Rows worth reading: one past the limit tells whether more follow.
    pub fn rows_to_read(&self) -> i64 {
        i64::try_from(self.limit)
            .unwrap_or(i64::MAX)
            .saturating_add(1)
    }

    /// Takes the next change, of `bytes`, into the page, or refuses it: then the page
    /// has more after it, and every later change is refused too.
    pub fn admit(&mut self, bytes: usize) -> bool {
        let over = self.taken > 0 && self.bytes.saturating_add(bytes) > self.max_bytes;
        if self.cut || self.taken == self.limit || over {
            self.cut = true;
            return false;
        }
        self.taken += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        true
    }

    /// Whether a change was refused, so more follow this page.
    pub fn was_cut(&self) -> bool {
        self.cut
    }
}

/// Members and punctuation of a change besides its strings and data, with the longest
/// numbers: `{"collection":"","record_id":"","version":,"seq":,"deleted":false,
/// "data":,"hlc":"","updated_at":""}`, two 19-digit numbers, the 24-character time
/// and the comma between changes.
const CHANGE_FRAME_BYTES: usize = 162;

/// The size of a change in a page's JSON, at most: a record id may hold `"` or `\`,
/// which take two bytes each; the collection and stamp take one per character; a
/// deleted record's data is `null`.
pub(crate) fn change_bytes(
    collection: usize,
    record_id: usize,
    hlc: usize,
    data: Option<usize>,
) -> usize {
    CHANGE_FRAME_BYTES + collection + 2 * record_id + hlc + data.unwrap_or(4)
}

/// A stored record's fields as a page change. The data is the text the server itself
/// stored; it is checked to be JSON (a damaged row fails the page instead of sending
/// clients a broken answer) but not parsed into a tree.
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_change(
    collection: String,
    record_id: String,
    version: i64,
    seq: i64,
    deleted: bool,
    data: Option<String>,
    hlc: String,
    updated_at_ms: i64,
) -> Result<PageChange, StorageError> {
    let data = match data {
        Some(text) if !deleted => Some(RawValue::from_string(text).map_err(db_err)?),
        _ => None,
    };
    Ok(PageChange {
        collection,
        record_id,
        version,
        seq,
        deleted,
        data,
        hlc,
        updated_at: outpost_core::protocol::rfc3339_millis(updated_at_ms),
        team: None,
        owner: None,
    })
}

/// `,"team":"","owner":""` around a change's team and owner in the feed of every team.
const ROUTING_FRAME_BYTES: usize = 21;

/// What a change's team and owner add to it in the feed of every team, at most (either
/// may hold `"` or `\`); nothing in a pull page.
pub(crate) fn routing_bytes(q: &PullQuery, team: usize, owner: usize) -> usize {
    if q.all_teams {
        ROUTING_FRAME_BYTES + 2 * (team + owner)
    } else {
        0
    }
}

/// One page for `q`.
pub(crate) async fn read_page<S: PullSteps>(
    steps: &mut S,
    q: &PullQuery,
) -> Result<PullPage, StorageError> {
    let marks = steps.marks().await?;
    if q.since
        .is_some_and(|c| c.expired_by(marks.purged_through_seq))
    {
        return Ok(PullPage::Expired);
    }
    let since = q.since.map_or(0, |c| c.seq);
    let mut cut = PageCut::new(q.limit, q.max_bytes);
    let changes = steps.records_after(q, since, &mut cut).await?;
    let has_more = cut.was_cut();
    // On the last page the puller has seen every change it may read up to the head of
    // this snapshot (commits are in seq order, which each backend explains where it
    // allocates seq), so the cursor jumps there and the next pull does not rescan rows
    // it may not read.
    let seq = if has_more {
        changes.last().map_or(since, |c| c.seq)
    } else {
        marks.last_seq.max(since)
    };
    let remaining = if has_more && q.count_remaining {
        steps.count_after(q, seq, REMAINING_CAP).await?
    } else {
        Remaining::default()
    };
    Ok(PullPage::Page {
        changes,
        cursor: Cursor {
            seq,
            purge_mark: marks.purged_through_seq,
        },
        has_more,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_at_the_limit_or_the_budget_never_before_the_first() {
        // By count: the fourth of a limit of three is refused.
        let mut c = PageCut::new(3, 1000);
        assert!((0..3).all(|_| c.admit(10)));
        assert!(!c.was_cut());
        assert!(!c.admit(10));
        assert!(c.was_cut());
        assert_eq!(c.rows_to_read(), 4);

        // By bytes: up to the budget exactly, then refused, and refused from then on.
        let mut c = PageCut::new(100, 1000);
        assert!(c.admit(600));
        assert!(c.admit(400));
        assert!(!c.admit(1));
        assert!(!c.admit(0));
        assert!(c.was_cut());

        // A first change over the budget is taken alone.
        let mut c = PageCut::new(100, 1000);
        assert!(c.admit(5000));
        assert!(!c.admit(1));

        // Nothing offered, nothing cut.
        assert!(!PageCut::new(5, 5).was_cut());
    }

    #[test]
    fn a_change_is_never_bigger_than_its_estimate() {
        let worst = page_change(
            "patients".into(),
            "a\"b\\c".into(),
            i64::MAX,
            i64::MAX,
            false,
            Some(r#"{"name":"x"}"#.into()),
            "1700000000000-00000-dev1".into(),
            253_402_300_799_999,
        )
        .unwrap();
        let json = serde_json::to_string(&worst).unwrap();
        let estimate = change_bytes(8, 5, 24, Some(12));
        // The estimate includes the comma between changes.
        let in_page = json.len() + 1;
        assert!(in_page <= estimate, "{in_page} > {estimate}: {json}");
        assert!(estimate - json.len() < 16, "{estimate} vs {json}");

        let tomb = page_change("p".into(), "r".into(), 1, 1, true, None, "h".into(), 0).unwrap();
        let json = serde_json::to_string(&tomb).unwrap();
        assert!(json.contains(r#""data":null"#), "{json}");
        assert!(json.len() < change_bytes(1, 1, 1, None));
        assert!(
            page_change(
                "p".into(),
                "r".into(),
                1,
                1,
                false,
                Some("{".into()),
                "h".into(),
                0
            )
            .is_err()
        );
    }
}
