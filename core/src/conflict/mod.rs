//! Conflict decisions: settling a local edit that lost a race with the server's version.
//!
//! When the server answers an op with `conflict`, it sends the record's current state.
//! The sync engine then asks [`decide`] what to do, by the collection's strategy (see
//! "Data model" in `DESIGN.md`): adopt the server's state, send a result with `force`
//! as a new op, or leave the choice to the app.
//!
//! Whatever the strategy, CRDT fields (a CRDT value on both sides) never conflict: they
//! are merged by the CRDT's own rule, so no replica's increments are lost even when the
//! rest of its edit loses.
//!
//! This module does no I/O and keeps no state, so every rule is unit-tested here:
//! [`decide`] per strategy, and in `settle` the whole plan of a settlement (which
//! stamp, base and `force` the result goes out with, and what the log keeps). The
//! engine loads the record, asks for the plan, and applies it.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::clock::Hlc;
use crate::config::ConflictStrategy;
use crate::crdt::{Crdt, CrdtError};
use crate::protocol::JsonObject;

mod settle;

pub(crate) use settle::{
    Action, LocalSide, Settlement, plan_resolution, plan_settlement, validate_resolution,
};

/// A conflict as kept in the log: every losing version is recorded, under every strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub id: i64,
    pub collection: String,
    pub record_id: String,
    pub strategy: ConflictStrategy,
    /// The last version both sides agreed on (`None` if the record was new).
    pub base: Option<JsonObject>,
    /// The device's version (`None` if deleted locally).
    pub local: Option<JsonObject>,
    /// The server's version (`None` if deleted or missing there).
    pub remote: Option<JsonObject>,
    pub remote_version: i64,
    /// `local`, `remote` or `merged` when settled by the strategy; `manual` while open;
    /// `resolved_local`, `resolved_remote` or `resolved_merged` after `resolve`.
    pub outcome: String,
    pub resolved: bool,
    pub created_at_ms: i64,
}

/// The app's answer to a manual conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Keep the device's version (with any edits made since).
    KeepLocal,
    /// Take the server's version.
    KeepRemote,
    /// Use this record instead (an edited merge).
    Merged(JsonObject),
}

/// One side of a conflict: its data (`None` = deleted or absent) and the HLC stamp of
/// its last edit.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub data: Option<&'a JsonObject>,
    pub hlc: &'a Hlc,
}

/// What the engine does with the conflicted record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Adopt the server's state as it is; nothing to send.
    TakeRemote,
    /// Send this result with `force` as a new op (`None` = delete).
    Push(Option<JsonObject>),
    /// Leave it to the app (strategy `manual`).
    Manual,
}

/// Which version won, for the conflict log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Remote,
    Merged,
}

/// The decision and, for the conflict log, which version won.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    pub winner: Winner,
}

/// Settles a conflict between the local edit and the server's current state.
///
/// `base` is the last synced version of the record (`None` when it was never synced),
/// used by `field_merge`. Fails only when two CRDT fields cannot be merged (a malformed
/// value or two types that do not merge); the engine then falls back to the app.
pub fn decide(
    strategy: ConflictStrategy,
    base: Option<&JsonObject>,
    local: Side<'_>,
    remote: Side<'_>,
) -> Result<Outcome, CrdtError> {
    match strategy {
        ConflictStrategy::ServerWins => server_wins(local, remote),
        ConflictStrategy::ClientWins => client_wins(local, remote),
        ConflictStrategy::LastWriteWins => last_write_wins(local, remote),
        ConflictStrategy::FieldMerge => field_merge(base, local, remote),
        ConflictStrategy::Manual => Ok(Outcome {
            decision: Decision::Manual,
            winner: Winner::Remote,
        }),
    }
}

/// Three-way merge of live records (exposed for tests and the engine's manual-resolution
/// helpers).
///
/// `base` is the common ancestor; `None` is the empty object (both sides created the
/// same id independently). Per field, over the keys of all three (a missing field is a
/// value too): a field changed on one side only takes that side's value, removal
/// included; a field changed on both sides to the same value takes it; a field changed
/// on both sides differently is CRDT-merged if it is a CRDT on both sides, and otherwise
/// takes the local value if `local_wins_ties`, else the remote one.
///
/// Swapping `local` and `remote` together with flipping `local_wins_ties` gives the
/// same result.
pub fn three_way_merge(
    base: Option<&JsonObject>,
    local: &JsonObject,
    remote: &JsonObject,
    local_wins_ties: bool,
) -> Result<JsonObject, CrdtError> {
    let empty = JsonObject::new();
    let base = base.unwrap_or(&empty);
    let keys: BTreeSet<&String> = base
        .keys()
        .chain(local.keys())
        .chain(remote.keys())
        .collect();
    let mut out = JsonObject::new();
    for key in keys {
        let (b, l, r) = (base.get(key), local.get(key), remote.get(key));
        let value = if l == r || r == b {
            l.cloned()
        } else if l == b {
            r.cloned()
        } else {
            match (l, r) {
                (Some(lv), Some(rv)) if Crdt::is_crdt(lv) && Crdt::is_crdt(rv) => {
                    Some(merge_crdt(lv, rv)?)
                }
                _ if local_wins_ties => l.cloned(),
                _ => r.cloned(),
            }
        };
        if let Some(v) = value {
            out.insert(key.clone(), v);
        }
    }
    Ok(out)
}

/// The server's state stands; only CRDT fields present on both sides merge in.
fn server_wins(local: Side<'_>, remote: Side<'_>) -> Result<Outcome, CrdtError> {
    let decision = match (local.data, remote.data) {
        (Some(l), Some(r)) => {
            let merged = merge_crdt_fields(r, l)?;
            if merged == *r {
                Decision::TakeRemote
            } else {
                Decision::Push(Some(merged))
            }
        }
        _ => Decision::TakeRemote,
    };
    Ok(Outcome {
        decision,
        winner: Winner::Remote,
    })
}

/// The local state stands (a delete included); CRDT fields present on both sides merge.
fn client_wins(local: Side<'_>, remote: Side<'_>) -> Result<Outcome, CrdtError> {
    let result = match (local.data, remote.data) {
        (Some(l), Some(r)) => Some(merge_crdt_fields(l, r)?),
        (l, _) => l.cloned(),
    };
    Ok(Outcome {
        decision: push_unless_remote(result, remote.data),
        winner: Winner::Local,
    })
}

/// The side with the larger stamp wins, field by field: its values (and its missing
/// fields) stand, CRDT fields present on both sides merge. A winning delete deletes.
fn last_write_wins(local: Side<'_>, remote: Side<'_>) -> Result<Outcome, CrdtError> {
    let local_wins = local.hlc > remote.hlc;
    let (winner, loser) = if local_wins {
        (local, remote)
    } else {
        (remote, local)
    };
    let result = match (winner.data, loser.data) {
        (Some(w), Some(l)) => Some(merge_crdt_fields(w, l)?),
        (w, _) => w.cloned(),
    };
    let merged =
        result.is_some() && result.as_ref() != local.data && result.as_ref() != remote.data;
    let winner = match (merged, local_wins) {
        (true, _) => Winner::Merged,
        (false, true) => Winner::Local,
        (false, false) => Winner::Remote,
    };
    Ok(Outcome {
        decision: push_unless_remote(result, remote.data),
        winner,
    })
}

/// Three-way merge against the base; a delete on either side makes it last-write-wins.
fn field_merge(
    base: Option<&JsonObject>,
    local: Side<'_>,
    remote: Side<'_>,
) -> Result<Outcome, CrdtError> {
    let (Some(l), Some(r)) = (local.data, remote.data) else {
        return last_write_wins(local, remote);
    };
    let result = three_way_merge(base, l, r, local.hlc > remote.hlc)?;
    let outcome = if result == *r {
        Outcome {
            decision: Decision::TakeRemote,
            winner: Winner::Remote,
        }
    } else {
        let winner = if result == *l {
            Winner::Local
        } else {
            Winner::Merged
        };
        Outcome {
            decision: Decision::Push(Some(result)),
            winner,
        }
    };
    Ok(outcome)
}

/// Nothing to send when the result is exactly the server's state (both deleted counts).
fn push_unless_remote(result: Option<JsonObject>, remote: Option<&JsonObject>) -> Decision {
    if result.as_ref() == remote {
        Decision::TakeRemote
    } else {
        Decision::Push(result)
    }
}

/// `keep` with every field that is a CRDT on both sides merged with `other`'s value.
/// Fields of `other` that `keep` lacks are not added.
fn merge_crdt_fields(keep: &JsonObject, other: &JsonObject) -> Result<JsonObject, CrdtError> {
    let mut out = keep.clone();
    for (key, value) in out.iter_mut() {
        if let Some(o) = other.get(key)
            && Crdt::is_crdt(value)
            && Crdt::is_crdt(o)
        {
            *value = merge_crdt(value, o)?;
        }
    }
    Ok(out)
}

/// Merges two CRDT values. When the merge adds nothing to one side, that side's JSON is
/// returned as it is, so an unchanged field never makes a record look changed; otherwise
/// the canonical form of the merge. Commutative.
fn merge_crdt(a: &Value, b: &Value) -> Result<Value, CrdtError> {
    if a == b {
        return Ok(a.clone());
    }
    let (ca, cb) = (Crdt::from_json(a)?, Crdt::from_json(b)?);
    let merged = ca.merge(&cb)?;
    Ok(match (merged == ca, merged == cb) {
        (true, false) => a.clone(),
        (false, true) => b.clone(),
        _ => merged.to_json(),
    })
}

#[cfg(test)]
mod tests;
