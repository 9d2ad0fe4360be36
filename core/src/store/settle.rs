//! Conflicts in the database: settling the conflict the server answered for a sent
//! entry, the app's resolution of a manual one, and the conflict log.
//!
//! Each is load, plan, apply, in one transaction: the record's row is loaded, the pure
//! plan of `conflict::settle` decides, and this module writes the outcome, its log row
//! and its re-queued op together, so an interrupted sync leaves all of it or none.

use super::{Store, WriteTx};
use crate::conflict::{
    self, Action, Conflict, LocalSide, Resolution, Settlement, plan_resolution, plan_settlement,
};
use crate::db::conflicts::{self as log, NewConflict};
use crate::db::outbox::{self as outbox_table, NewRow};
use crate::db::records;
use crate::error::{Error, Result};
use crate::feed::ChangeOrigin;
use crate::outbox::OutboxEntry;
use crate::protocol::{Change, OpKind};

/// What settling a conflict did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settled {
    pub conflict: Conflict,
    pub manual: bool,
}

impl Store {
    /// Settles the conflict the server reported for a sent entry (`current`: the
    /// record's server state in the answer), by the collection's strategy. The losing
    /// version always goes to the conflict log.
    pub(crate) fn settle_conflict(
        &self,
        entry: &OutboxEntry,
        current: Option<&Change>,
    ) -> Result<Settled> {
        let strategy = self.strategy(&entry.collection)?;
        let (collection, id) = (entry.collection.as_str(), entry.record_id.as_str());
        self.write(ChangeOrigin::Remote, |w| {
            let row = records::load_for_settle(w.tx(), collection, id)?;
            let local = row.as_ref().map(|r| LocalSide {
                data: r.live.as_ref(),
                hlc: &r.hlc,
                base: r.base.as_ref(),
            });
            let stash = row.as_ref().and_then(|r| r.stash.as_ref());
            let plan = plan_settlement(strategy, local, &entry.hlc, current, stash);
            if let Some(c) = &plan.remote {
                w.tx_mut().observe(&c.hlc);
            }
            let conflict = log::insert(
                w.tx(),
                &NewConflict {
                    collection,
                    record_id: id,
                    strategy,
                    base: plan.base.as_ref(),
                    local: plan.local.as_ref(),
                    remote: plan.remote_data(),
                    remote_version: plan.remote_version(),
                    outcome: plan.outcome,
                },
            )?;
            let manual = plan.action == Action::Manual;
            apply(w, collection, id, plan, Some(entry.id))?;
            Ok(Settled { conflict, manual })
        })
    }

    /// Conflicts waiting for the app's decision, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        self.read(log::open)
    }

    /// The whole conflict log, oldest first: every losing version, settled or not.
    pub fn conflict_log(&self) -> Result<Vec<Conflict>> {
        self.read(log::all)
    }

    pub(crate) fn open_conflict_count(&self) -> Result<u64> {
        self.read(log::open_count)
    }

    /// Settles a manual conflict with the app's decision. The result is queued as a new
    /// op on top of the server version the app was shown, so the next sync sends it; if
    /// the server has moved since, that op conflicts and the app decides again, seeing
    /// the newer edit, rather than overwriting it unseen.
    pub fn resolve(&self, conflict_id: i64, resolution: Resolution) -> Result<()> {
        conflict::validate_resolution(&resolution)?;
        self.write(ChangeOrigin::Local, |w| {
            let c = log::get_open(w.tx(), conflict_id)?.ok_or_else(|| Error::NotFound {
                collection: "conflicts".into(),
                id: conflict_id.to_string(),
            })?;
            let row = records::load_for_settle(w.tx(), &c.collection, &c.record_id)?;
            let local = row.as_ref().and_then(|r| r.live.as_ref());
            let plan = plan_resolution(&c, local, resolution)?;
            log::mark_resolved(w.tx(), conflict_id, plan.outcome)?;
            apply(w, &c.collection, &c.record_id, plan, None)
        })
    }
}

/// Writes a settlement's outcome to the record and its queue. `sent` is the entry the
/// server answered with the conflict, if any.
fn apply(
    w: &mut WriteTx<'_>,
    collection: &str,
    id: &str,
    plan: Settlement,
    sent: Option<i64>,
) -> Result<()> {
    let Settlement { remote, action, .. } = plan;
    match action {
        Action::TakeRemote => {
            outbox_table::delete_for_record(w.tx_mut(), collection, id)?;
            records::adopt(w.tx_mut(), collection, id, remote.as_ref())?;
        }
        Action::Requeue {
            result,
            force,
            stamp,
        } => {
            outbox_table::delete_for_record(w.tx_mut(), collection, id)?;
            let hlc = match stamp {
                Some(s) => s,
                None => w.tx_mut().tick().to_string(),
            };
            let data = result.as_ref().map(serde_json::to_string).transpose()?;
            records::rebase_pending(
                w.tx(),
                collection,
                id,
                data.as_deref(),
                &hlc,
                remote.as_ref(),
            )?;
            let row = NewRow {
                collection,
                record_id: id,
                kind: if result.is_some() {
                    OpKind::Put
                } else {
                    OpKind::Delete
                },
                base_version: remote.as_ref().map(|c| c.version),
                data_json: data.as_deref(),
                hlc: &hlc,
                force,
            };
            outbox_table::insert(w.tx(), &row)?;
        }
        Action::Manual => {
            // The sent entry's content lives on in the record and the log; later edits
            // wait behind the conflict until the app resolves it.
            if let Some(entry_id) = sent {
                outbox_table::delete(w.tx_mut(), entry_id)?;
            }
            records::mark_conflicted(w.tx(), collection, id)?;
        }
    }
    w.changed(collection, id);
    Ok(())
}
