//! Reading a pull page: the one flow every backend runs.
//!
//! When a cursor has expired, how many rows a page reads, where the next cursor stands
//! and whether more follow are rules of the protocol ("GET /v1/pull" in DESIGN.md), so
//! they are decided here once. A backend supplies only the reads, as a [`PullSteps`]
//! over one snapshot.

use crate::logic::{Cursor, StoredRecord};
use crate::storage::{PullPage, PullQuery, StorageError};

/// The marks of the change sequence in the snapshot a page is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marks {
    /// Tombstones up to this seq have been purged.
    pub purged_through_seq: i64,
    /// The highest seq allocated (and, as commits are in seq order, committed).
    pub last_seq: i64,
}

/// The reads of one pull page, all from one snapshot of the backend.
pub(crate) trait PullSteps {
    async fn marks(&mut self) -> Result<Marks, StorageError>;

    /// Up to `limit` records with seq above `since` that the query's user may read,
    /// in increasing seq.
    async fn records_after(
        &mut self,
        q: &PullQuery,
        since: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StorageError>;
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
    let limit = q.limit as usize;
    // One more than asked tells whether another page follows.
    let mut records = steps
        .records_after(q, since, i64::from(q.limit) + 1)
        .await?;
    let has_more = records.len() > limit;
    records.truncate(limit);
    // On the last page the puller has seen every change it may read up to the head of
    // this snapshot (commits are in seq order, which each backend explains where it
    // allocates seq), so the cursor jumps there and the next pull does not rescan rows
    // it may not read.
    let seq = if has_more {
        records.last().map_or(since, |r| r.seq)
    } else {
        marks.last_seq.max(since)
    };
    Ok(PullPage::Page {
        changes: records.into_iter().map(StoredRecord::into_change).collect(),
        cursor: Cursor {
            seq,
            purge_mark: marks.purged_through_seq,
        },
        has_more,
    })
}
