//! The outbox as the store offers it: what the app may inspect and decide (counts,
//! rejected edits, retry, discard), and the transactions the sync engine runs around
//! each push request (take a batch, record its answers).
//!
//! See `crate::outbox` for the states an entry moves through.

use super::{Store, WriteTx};
use crate::db::{Tx, outbox as outbox_table, records};
use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::outbox::{BatchLimits, EntryState, OutboxCounts, OutboxEntry, PushOutcome};
use crate::protocol::{JsonObject, OpKind};
use crate::record::SyncState;

impl Store {
    /// Every entry still queued, in flight or failed, oldest first (applied ones are gone).
    pub fn outbox_entries(&self) -> Result<Vec<OutboxEntry>> {
        self.read(outbox_table::entries)
    }

    /// Entries the server rejected, oldest first.
    pub fn failed_entries(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self
            .outbox_entries()?
            .into_iter()
            .filter(|e| e.state == EntryState::Failed)
            .collect())
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.read(outbox_table::counts)
    }

    /// Puts every failed entry back in the queue, due now. Returns how many.
    pub fn retry_failed(&self) -> Result<usize> {
        self.write(ChangeOrigin::Local, |w| {
            let n = outbox_table::retry_failed(w.tx())?;
            records::retry_failed(w.tx())?;
            Ok(n)
        })
    }

    /// Drops a failed entry: the user's explicit decision to give up that edit. The
    /// record returns to its last synced state once nothing else is queued for it.
    pub fn discard_failed(&self, entry_id: i64) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            let (collection, record_id) = outbox_table::failed_record(w.tx(), entry_id)?
                .ok_or_else(|| Error::NotFound {
                    collection: "outbox".into(),
                    id: entry_id.to_string(),
                })?;
            outbox_table::delete(w.tx_mut(), entry_id)?;
            if outbox_table::count_for(w.tx(), &collection, &record_id, None)? == 0 {
                records::revert_to_base(w.tx_mut(), &collection, &record_id)?;
            }
            w.changed(&collection, &record_id);
            Ok(())
        })
    }

    // ---- the engine's side ----

    /// Waives every queued entry's backoff, for a sync the user asked for by signing out.
    pub(crate) fn outbox_due_now(&self) -> Result<usize> {
        self.write(ChangeOrigin::Local, |w| outbox_table::due_now(w.tx()))
    }

    /// The entries that may go out now (see `db::outbox::next_batch`).
    #[cfg(test)]
    pub(crate) fn outbox_next_batch(
        &self,
        limits: BatchLimits,
        now_ms: i64,
    ) -> Result<Vec<OutboxEntry>> {
        self.read(|conn| outbox_table::next_batch(conn, limits, now_ms))
    }

    /// In one transaction: records the answers for a batch that came back, then takes
    /// the next batch and marks it in flight. One commit, so one sync to disk, between
    /// two requests.
    pub(crate) fn outbox_settle_and_take(
        &self,
        results: &[(i64, PushOutcome)],
        limits: BatchLimits,
        now_ms: i64,
    ) -> Result<Vec<OutboxEntry>> {
        self.write(ChangeOrigin::Remote, |w| {
            record_outcomes(w, results)?;
            let batch = outbox_table::next_batch(w.tx(), limits, now_ms)?;
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
            outbox_table::mark_in_flight(w.tx(), &ids)?;
            Ok(batch)
        })
    }

    /// Marks entries as handed to the network. From here on they are never coalesced.
    #[cfg(test)]
    pub(crate) fn outbox_mark_in_flight(&self, ids: &[i64]) -> Result<()> {
        self.write(ChangeOrigin::Local, |w| {
            outbox_table::mark_in_flight(w.tx(), ids)
        })
    }

    /// Records what the server (or the network) said about sent entries.
    pub(crate) fn outbox_apply_results(&self, results: &[(i64, PushOutcome)]) -> Result<()> {
        self.write(ChangeOrigin::Remote, |w| record_outcomes(w, results))
    }

    /// Returns every in-flight entry to pending, keeping its op_id (used on cancel).
    pub(crate) fn release_in_flight(&self) -> Result<usize> {
        self.write(ChangeOrigin::Local, |w| outbox_table::release_all(w.tx()))
    }

    /// Per collection, the entries a sync now would still send, count and bytes, among
    /// those queued after `after_id`; with the highest id counted.
    pub(crate) fn outbox_due_since(&self, now_ms: i64, after_id: i64) -> Result<outbox_table::Due> {
        self.read(|conn| outbox_table::due_since(conn, now_ms, after_id))
    }

    /// Earliest time a pending entry may be sent (for the status and the scheduler).
    pub(crate) fn next_attempt_at(&self) -> Result<Option<i64>> {
        self.read(outbox_table::next_attempt_at)
    }
}

/// Records the outcomes, and tells listeners of each record whose sync state (and so
/// what a list row shows: "sending", "failed") they changed. Such an event is
/// [`ChangeOrigin::Remote`]: it is the server's answer, not a local edit to send.
fn record_outcomes(w: &mut WriteTx<'_>, results: &[(i64, PushOutcome)]) -> Result<()> {
    for (id, outcome) in results {
        if let Some((collection, record_id)) = record_outcome(w.tx_mut(), *id, outcome)? {
            w.changed(&collection, &record_id);
        }
    }
    Ok(())
}

/// Records one outcome; returns the record it changed as a reader sees it, if any.
fn record_outcome(
    tx: &mut Tx<'_>,
    id: i64,
    outcome: &PushOutcome,
) -> Result<Option<(String, String)>> {
    match outcome {
        PushOutcome::Applied { version } => settle_applied(tx, id, *version),
        PushOutcome::Retry {
            error,
            next_attempt_at_ms,
        } => outbox_table::set_retry(tx, id, error, *next_attempt_at_ms).map(|()| None),
        PushOutcome::Failed { error } => match outbox_table::set_failed(tx, id, error)? {
            Some((collection, record_id)) => {
                records::set_state(tx, &collection, &record_id, SyncState::Failed)?;
                Ok(Some((collection, record_id)))
            }
            None => Ok(None),
        },
        PushOutcome::Released => outbox_table::release(tx, id).map(|()| None),
        PushOutcome::Deferred { not_before_ms } => {
            outbox_table::defer(tx, id, *not_before_ms).map(|()| None)
        }
    }
}

/// The server holds this edit now: the entry goes, and the record's base becomes what
/// the server holds (or, with later edits still queued, what the op carried). Returns
/// the record when it is now synced: its state, version and perhaps data changed.
fn settle_applied(tx: &mut Tx<'_>, id: i64, version: i64) -> Result<Option<(String, String)>> {
    let Some(applied) = outbox_table::take_applied(tx, id)? else {
        return Ok(None);
    };
    let (collection, record_id) = (&applied.collection, &applied.record_id);
    if outbox_table::count_for(tx, collection, record_id, None)? == 0 {
        records::settle_synced(tx, collection, record_id, version)?;
        return Ok(Some((applied.collection, applied.record_id)));
    }
    // Later edits of this record were made on top of this one.
    outbox_table::rebase_later(tx, collection, record_id, id, version)?;
    let base = match applied.kind {
        OpKind::Put => applied.data,
        OpKind::Patch => {
            let old = records::base(tx, collection, record_id)?;
            let fields: JsonObject = match &applied.data {
                Some(text) => serde_json::from_str(text)?,
                None => JsonObject::new(),
            };
            let merged = crate::crdt::apply_write(old.as_ref(), &fields, OpKind::Patch)?;
            Some(serde_json::to_string(&merged)?)
        }
        OpKind::Delete => None,
    };
    records::move_base(tx, collection, record_id, version, base.as_deref())?;
    Ok(None)
}
