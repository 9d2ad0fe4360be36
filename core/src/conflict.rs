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
//! This module does no I/O and keeps no state, so every rule is unit-tested here; the
//! engine does the storing, logging and sending.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::clock::Hlc;
use crate::config::ConflictStrategy;
use crate::crdt::{Crdt, CrdtError};
use crate::protocol::JsonObject;

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
mod tests {
    use super::*;
    use crate::crdt::{increment, orset_add};
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(o) => o,
            other => panic!("not an object: {other}"),
        }
    }

    fn t(ms: u64, replica: &str) -> Hlc {
        Hlc::new(ms, 0, replica)
    }

    fn side<'a>(data: Option<&'a JsonObject>, hlc: &'a Hlc) -> Side<'a> {
        Side { data, hlc }
    }

    fn outcome(decision: Decision, winner: Winner) -> Outcome {
        Outcome { decision, winner }
    }

    fn push(v: Value) -> Decision {
        Decision::Push(Some(obj(v)))
    }

    /// A pncounter with `p` increments by each replica.
    fn counter(p: &[(&str, i64)]) -> Value {
        let mut v = None;
        for (r, n) in p {
            v = Some(increment(v.as_ref(), r, *n).unwrap());
        }
        v.unwrap()
    }

    const ALL: [ConflictStrategy; 5] = [
        ConflictStrategy::ServerWins,
        ConflictStrategy::ClientWins,
        ConflictStrategy::LastWriteWins,
        ConflictStrategy::FieldMerge,
        ConflictStrategy::Manual,
    ];

    /// Base, an older local edit and a newer remote edit of the same record.
    struct Case {
        base: JsonObject,
        local: JsonObject,
        remote: JsonObject,
        old: Hlc,
        new: Hlc,
    }

    fn case() -> Case {
        Case {
            base: obj(json!({"name": "Amina", "village": "Kole", "age": 30})),
            local: obj(json!({"name": "Amina", "village": "Lira", "age": 30})),
            remote: obj(json!({"name": "Amina K.", "village": "Kole", "age": 30})),
            old: t(1_000, "dev-a"),
            new: t(2_000, "dev-b"),
        }
    }

    // ---- server_wins ----

    #[test]
    fn server_wins_takes_the_remote_state() {
        let c = case();
        let s = ConflictStrategy::ServerWins;
        let (l, r) = (Some(&c.local), Some(&c.remote));
        let take = outcome(Decision::TakeRemote, Winner::Remote);
        // Edit vs edit, whichever stamp is newer.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(r, &c.old)).unwrap(),
            take
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(r, &c.new)).unwrap(),
            take
        );
        // Local delete vs remote edit.
        assert_eq!(
            decide(s, Some(&c.base), side(None, &c.new), side(r, &c.old)).unwrap(),
            take
        );
        // Remote delete vs local edit.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(None, &c.old)).unwrap(),
            take
        );
        // Both deleted.
        assert_eq!(
            decide(s, None, side(None, &c.new), side(None, &c.old)).unwrap(),
            take
        );
    }

    #[test]
    fn server_wins_still_merges_crdt_fields() {
        let (old, new) = (t(1, "a"), t(2, "b"));
        let local = obj(json!({"name": "x", "doses": counter(&[("a", 2)])}));
        let remote = obj(json!({"name": "y", "doses": counter(&[("b", 3)])}));
        let got = decide(
            ConflictStrategy::ServerWins,
            None,
            side(Some(&local), &new),
            side(Some(&remote), &old),
        )
        .unwrap();
        let want = json!({"name": "y", "doses": counter(&[("a", 2), ("b", 3)])});
        assert_eq!(got, outcome(push(want), Winner::Remote));

        // Nothing to add when the server already has every local increment.
        let local = obj(json!({"name": "x", "doses": counter(&[("b", 1)])}));
        let got = decide(
            ConflictStrategy::ServerWins,
            None,
            side(Some(&local), &new),
            side(Some(&remote), &old),
        )
        .unwrap();
        assert_eq!(got, outcome(Decision::TakeRemote, Winner::Remote));
    }

    // ---- client_wins ----

    #[test]
    fn client_wins_resends_the_local_state() {
        let c = case();
        let s = ConflictStrategy::ClientWins;
        let (l, r) = (Some(&c.local), Some(&c.remote));
        let local_push = outcome(Decision::Push(Some(c.local.clone())), Winner::Local);
        // Edit vs edit, whichever stamp is newer.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(r, &c.new)).unwrap(),
            local_push
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(r, &c.old)).unwrap(),
            local_push
        );
        // Local delete vs remote edit: the delete is resent.
        assert_eq!(
            decide(s, Some(&c.base), side(None, &c.old), side(r, &c.new)).unwrap(),
            outcome(Decision::Push(None), Winner::Local)
        );
        // Remote delete vs local edit: the record comes back.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(None, &c.new)).unwrap(),
            local_push
        );
        // Both deleted, or the same data: nothing to send.
        let nothing = outcome(Decision::TakeRemote, Winner::Local);
        assert_eq!(
            decide(s, None, side(None, &c.old), side(None, &c.new)).unwrap(),
            nothing
        );
        assert_eq!(
            decide(s, None, side(r, &c.old), side(r, &c.new)).unwrap(),
            nothing
        );
    }

    #[test]
    fn client_wins_merges_crdt_fields() {
        let (old, new) = (t(1, "a"), t(2, "b"));
        let local = obj(json!({"name": "x", "doses": counter(&[("a", 2)])}));
        let remote = obj(json!({"name": "y", "doses": counter(&[("b", 3), ("b", -1)])}));
        let got = decide(
            ConflictStrategy::ClientWins,
            None,
            side(Some(&local), &old),
            side(Some(&remote), &new),
        )
        .unwrap();
        let want = json!({"name": "x", "doses": counter(&[("a", 2), ("b", 3), ("b", -1)])});
        assert_eq!(got, outcome(push(want), Winner::Local));
    }

    // ---- last_write_wins ----

    #[test]
    fn last_write_wins_by_stamp() {
        let c = case();
        let s = ConflictStrategy::LastWriteWins;
        let (l, r) = (Some(&c.local), Some(&c.remote));
        // Edit vs edit: the newer whole record wins, not a field mix.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(r, &c.old)).unwrap(),
            outcome(Decision::Push(Some(c.local.clone())), Winner::Local)
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(r, &c.new)).unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
        // Local delete vs remote edit.
        assert_eq!(
            decide(s, Some(&c.base), side(None, &c.new), side(r, &c.old)).unwrap(),
            outcome(Decision::Push(None), Winner::Local)
        );
        assert_eq!(
            decide(s, Some(&c.base), side(None, &c.old), side(r, &c.new)).unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
        // Remote delete vs local edit.
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(None, &c.old)).unwrap(),
            outcome(Decision::Push(Some(c.local.clone())), Winner::Local)
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(None, &c.new)).unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
        // Both deleted.
        assert_eq!(
            decide(s, None, side(None, &c.new), side(None, &c.old)).unwrap(),
            outcome(Decision::TakeRemote, Winner::Local)
        );
    }

    #[test]
    fn last_write_wins_takes_the_winners_missing_fields() {
        let (old, new) = (t(1, "a"), t(2, "b"));
        let local = obj(json!({"name": "x", "note": "hi"}));
        let remote = obj(json!({"name": "y", "phone": "123"}));
        let got = decide(
            ConflictStrategy::LastWriteWins,
            None,
            side(Some(&local), &new),
            side(Some(&remote), &old),
        )
        .unwrap();
        assert_eq!(
            got,
            outcome(push(json!({"name": "x", "note": "hi"})), Winner::Local)
        );
    }

    #[test]
    fn last_write_wins_orders_by_counter_then_replica() {
        let s = ConflictStrategy::LastWriteWins;
        let local = obj(json!({"v": "local"}));
        let remote = obj(json!({"v": "remote"}));
        let run = |lh: &Hlc, rh: &Hlc| {
            decide(s, None, side(Some(&local), lh), side(Some(&remote), rh))
                .unwrap()
                .winner
        };
        // Same millisecond: the counter decides.
        assert_eq!(
            run(&Hlc::new(5, 2, "a"), &Hlc::new(5, 1, "z")),
            Winner::Local
        );
        assert_eq!(
            run(&Hlc::new(5, 1, "z"), &Hlc::new(5, 2, "a")),
            Winner::Remote
        );
        // Same millisecond and counter: the replica id breaks the tie, the same way on
        // every device.
        assert_eq!(
            run(&Hlc::new(5, 1, "b"), &Hlc::new(5, 1, "a")),
            Winner::Local
        );
        assert_eq!(
            run(&Hlc::new(5, 1, "a"), &Hlc::new(5, 1, "b")),
            Winner::Remote
        );
        // Millis outrank the counter.
        assert_eq!(
            run(&Hlc::new(6, 0, "a"), &Hlc::new(5, 99, "b")),
            Winner::Local
        );
        // An identical stamp keeps the server's version: nothing is sent.
        let same = Hlc::new(5, 1, "a");
        assert_eq!(
            decide(
                s,
                None,
                side(Some(&local), &same),
                side(Some(&remote), &same)
            )
            .unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
    }

    #[test]
    fn last_write_wins_merges_crdt_fields_of_the_loser() {
        let (old, new) = (t(1, "a"), t(2, "b"));
        let local = obj(json!({"name": "x", "doses": counter(&[("a", 4)])}));
        let remote = obj(json!({"name": "y", "doses": counter(&[("b", 1)])}));
        let got = decide(
            ConflictStrategy::LastWriteWins,
            None,
            side(Some(&local), &old),
            side(Some(&remote), &new),
        )
        .unwrap();
        let want = json!({"name": "y", "doses": counter(&[("a", 4), ("b", 1)])});
        assert_eq!(got, outcome(push(want), Winner::Merged));

        // The merged counter equals the local one: the remote still won by stamp.
        let local = obj(json!({"name": "y", "doses": counter(&[("a", 4), ("b", 1)])}));
        let got = decide(
            ConflictStrategy::LastWriteWins,
            None,
            side(Some(&local), &old),
            side(Some(&remote), &new),
        )
        .unwrap();
        assert_eq!(
            got,
            outcome(Decision::Push(Some(local.clone())), Winner::Remote)
        );
    }

    // ---- field_merge ----

    #[test]
    fn field_merge_keeps_disjoint_changes() {
        let c = case();
        let got = decide(
            ConflictStrategy::FieldMerge,
            Some(&c.base),
            side(Some(&c.local), &c.old),
            side(Some(&c.remote), &c.new),
        )
        .unwrap();
        let want = json!({"name": "Amina K.", "village": "Lira", "age": 30});
        assert_eq!(got, outcome(push(want), Winner::Merged));
    }

    #[test]
    fn field_merge_same_field_goes_to_the_larger_stamp() {
        let base = obj(json!({"a": 1, "b": 1}));
        let local = obj(json!({"a": 2, "b": 1}));
        let remote = obj(json!({"a": 3, "b": 1}));
        let (old, new) = (t(1, "a"), t(2, "b"));
        let s = ConflictStrategy::FieldMerge;
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &new),
                side(Some(&remote), &old)
            )
            .unwrap(),
            outcome(push(json!({"a": 2, "b": 1})), Winner::Local)
        );
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &old),
                side(Some(&remote), &new)
            )
            .unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
        // Changed on both sides to the same value: no conflict at all.
        let both = obj(json!({"a": 9, "b": 1}));
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&both), &new),
                side(Some(&both), &old)
            )
            .unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
    }

    #[test]
    fn field_merge_keeps_a_removal() {
        let base = obj(json!({"name": "x", "note": "n", "phone": "1"}));
        let (old, new) = (t(1, "a"), t(2, "b"));
        let s = ConflictStrategy::FieldMerge;
        // Local removed `note`, remote changed `phone`.
        let local = obj(json!({"name": "x", "phone": "1"}));
        let remote = obj(json!({"name": "x", "note": "n", "phone": "2"}));
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &old),
                side(Some(&remote), &new)
            )
            .unwrap(),
            outcome(push(json!({"name": "x", "phone": "2"})), Winner::Merged)
        );
        // Remote removed `note`, local changed `name`.
        let local = obj(json!({"name": "y", "note": "n", "phone": "1"}));
        let remote = obj(json!({"name": "x", "phone": "1"}));
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &old),
                side(Some(&remote), &new)
            )
            .unwrap(),
            outcome(push(json!({"name": "y", "phone": "1"})), Winner::Merged)
        );
        // Removed on one side, changed on the other: the larger stamp decides.
        let local = obj(json!({"name": "x", "phone": "1"}));
        let remote = obj(json!({"name": "x", "note": "m", "phone": "1"}));
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &new),
                side(Some(&remote), &old)
            )
            .unwrap(),
            outcome(push(json!({"name": "x", "phone": "1"})), Winner::Local)
        );
        assert_eq!(
            decide(
                s,
                Some(&base),
                side(Some(&local), &old),
                side(Some(&remote), &new)
            )
            .unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
    }

    #[test]
    fn field_merge_without_base_is_a_merge_of_two_creations() {
        let (old, new) = (t(1, "a"), t(2, "b"));
        let local = obj(json!({"id": "p-1", "name": "Amina", "village": "Kole"}));
        let remote = obj(json!({"id": "p-1", "name": "Amina K.", "age": 30}));
        let got = decide(
            ConflictStrategy::FieldMerge,
            None,
            side(Some(&local), &old),
            side(Some(&remote), &new),
        )
        .unwrap();
        // Every field is new on some side; `name` was set on both, the newer wins.
        let want = json!({"id": "p-1", "name": "Amina K.", "village": "Kole", "age": 30});
        assert_eq!(got, outcome(push(want), Winner::Merged));
    }

    #[test]
    fn field_merge_with_a_delete_is_last_write_wins() {
        let c = case();
        let s = ConflictStrategy::FieldMerge;
        let (l, r) = (Some(&c.local), Some(&c.remote));
        for (ls, rs) in [(&c.old, &c.new), (&c.new, &c.old)] {
            for (ld, rd) in [(None, r), (l, None), (None, None)] {
                assert_eq!(
                    decide(s, Some(&c.base), side(ld, ls), side(rd, rs)).unwrap(),
                    decide(
                        ConflictStrategy::LastWriteWins,
                        Some(&c.base),
                        side(ld, ls),
                        side(rd, rs)
                    )
                    .unwrap()
                );
            }
        }
        assert_eq!(
            decide(s, Some(&c.base), side(None, &c.new), side(r, &c.old)).unwrap(),
            outcome(Decision::Push(None), Winner::Local)
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.new), side(None, &c.old)).unwrap(),
            outcome(Decision::Push(Some(c.local.clone())), Winner::Local)
        );
        assert_eq!(
            decide(s, Some(&c.base), side(l, &c.old), side(None, &c.new)).unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
    }

    #[test]
    fn field_merge_changes_on_one_side_only() {
        let c = case();
        let s = ConflictStrategy::FieldMerge;
        // Only the local side changed: push it.
        assert_eq!(
            decide(
                s,
                Some(&c.base),
                side(Some(&c.local), &c.old),
                side(Some(&c.base), &c.new)
            )
            .unwrap(),
            outcome(Decision::Push(Some(c.local.clone())), Winner::Local)
        );
        // Only the remote side changed: take it.
        assert_eq!(
            decide(
                s,
                Some(&c.base),
                side(Some(&c.base), &c.new),
                side(Some(&c.remote), &c.old)
            )
            .unwrap(),
            outcome(Decision::TakeRemote, Winner::Remote)
        );
    }

    // ---- manual ----

    #[test]
    fn manual_leaves_it_to_the_app() {
        let c = case();
        let manual = outcome(Decision::Manual, Winner::Remote);
        let (l, r) = (Some(&c.local), Some(&c.remote));
        for (ld, rd) in [(l, r), (None, r), (l, None), (None, None)] {
            assert_eq!(
                decide(
                    ConflictStrategy::Manual,
                    Some(&c.base),
                    side(ld, &c.new),
                    side(rd, &c.old)
                )
                .unwrap(),
                manual
            );
        }
    }

    // ---- CRDT fields under every strategy ----

    #[test]
    fn counters_sum_both_sides_under_every_strategy() {
        let base_doses = counter(&[("a", 1), ("b", 1)]);
        let base = obj(json!({"name": "x", "doses": base_doses}));
        // Each side added its own increments (and the local side a decrement) since base.
        let local = obj(json!({"name": "x", "doses": counter(&[("a", 3), ("b", 1), ("a", -1)])}));
        let remote = obj(json!({"name": "x", "doses": counter(&[("a", 1), ("b", 5)])}));
        let want = counter(&[("a", 3), ("b", 5), ("a", -1)]);
        assert_eq!(Crdt::from_json(&want).unwrap().value(), json!(7));
        for strategy in ALL {
            for (lh, rh) in [(t(1, "a"), t(2, "b")), (t(2, "a"), t(1, "b"))] {
                let got = decide(
                    strategy,
                    Some(&base),
                    side(Some(&local), &lh),
                    side(Some(&remote), &rh),
                )
                .unwrap();
                match got.decision {
                    Decision::Push(Some(data)) => {
                        assert_eq!(data["doses"], want, "{strategy:?}");
                        assert_eq!(data["name"], json!("x"), "{strategy:?}");
                    }
                    Decision::Manual => assert_eq!(strategy, ConflictStrategy::Manual),
                    other => panic!("{strategy:?}: expected a merged push, got {other:?}"),
                }
                let winner = match strategy {
                    ConflictStrategy::ServerWins | ConflictStrategy::Manual => Winner::Remote,
                    ConflictStrategy::ClientWins => Winner::Local,
                    ConflictStrategy::LastWriteWins | ConflictStrategy::FieldMerge => {
                        Winner::Merged
                    }
                };
                assert_eq!(got.winner, winner, "{strategy:?}");
            }
        }
    }

    #[test]
    fn orsets_merge_under_every_strategy() {
        let s = |elems: &[(&str, &str)]| {
            let mut v: Option<Value> = None;
            for (e, r) in elems {
                v = Some(orset_add(v.as_ref(), e, r).unwrap());
            }
            v.unwrap()
        };
        let local = obj(json!({"tags": s(&[("fever", "a")])}));
        let remote = obj(json!({"tags": s(&[("cough", "b")])}));
        for strategy in ALL.into_iter().filter(|s| *s != ConflictStrategy::Manual) {
            let got = decide(
                strategy,
                None,
                side(Some(&local), &t(1, "a")),
                side(Some(&remote), &t(2, "b")),
            )
            .unwrap();
            let Decision::Push(Some(data)) = got.decision else {
                panic!("{strategy:?}: {got:?}");
            };
            assert_eq!(
                Crdt::from_json(&data["tags"]).unwrap().value(),
                json!(["cough", "fever"])
            );
        }
    }

    #[test]
    fn a_crdt_type_clash_is_an_error() {
        let local = obj(json!({"x": counter(&[("a", 1)])}));
        let remote = obj(json!({"x": orset_add(None, "e", "b").unwrap()}));
        for strategy in ALL.into_iter().filter(|s| *s != ConflictStrategy::Manual) {
            let got = decide(
                strategy,
                None,
                side(Some(&local), &t(1, "a")),
                side(Some(&remote), &t(2, "b")),
            );
            assert!(
                matches!(got, Err(CrdtError::TypeMismatch { .. })),
                "{strategy:?}: {got:?}"
            );
        }
        // A CRDT on one side only is plain data: the usual rule picks it.
        let remote = obj(json!({"x": 5}));
        let got = decide(
            ConflictStrategy::LastWriteWins,
            None,
            side(Some(&local), &t(1, "a")),
            side(Some(&remote), &t(2, "b")),
        )
        .unwrap();
        assert_eq!(got, outcome(Decision::TakeRemote, Winner::Remote));
    }

    #[test]
    fn an_unchanged_crdt_field_does_not_force_a_push() {
        let doses = counter(&[("a", 2)]);
        let data = obj(json!({"doses": doses}));
        for strategy in [
            ConflictStrategy::ServerWins,
            ConflictStrategy::ClientWins,
            ConflictStrategy::LastWriteWins,
            ConflictStrategy::FieldMerge,
        ] {
            let got = decide(
                strategy,
                None,
                side(Some(&data), &t(2, "a")),
                side(Some(&data), &t(1, "b")),
            )
            .unwrap();
            assert_eq!(got.decision, Decision::TakeRemote, "{strategy:?}");
        }
    }

    // ---- three_way_merge properties ----

    fn value() -> impl Strategy<Value = Value> {
        let replica = prop_oneof![Just("a"), Just("b"), Just("c")];
        let count = (replica.clone(), -3i64..4).prop_map(|(r, n)| (r.to_owned(), n));
        prop_oneof![
            Just(Value::Null),
            (0i64..3).prop_map(Value::from),
            prop_oneof![Just("x"), Just("y")].prop_map(Value::from),
            proptest::collection::vec(count, 1..4).prop_map(|incs| {
                let mut v: Option<Value> = None;
                for (r, n) in incs {
                    v = Some(increment(v.as_ref(), &r, n).unwrap());
                }
                v.unwrap()
            }),
            (replica, prop_oneof![Just("e"), Just("f")])
                .prop_map(|(r, e)| orset_add(None, e, r).unwrap()),
        ]
    }

    fn record() -> impl Strategy<Value = JsonObject> {
        let key = prop_oneof![Just("k1"), Just("k2"), Just("k3"), Just("k4")];
        proptest::collection::btree_map(key, value(), 0..4)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A record derived from `base`: each field kept, changed or removed, maybe one added.
    fn edit_of(base: JsonObject) -> impl Strategy<Value = JsonObject> {
        let n = base.len();
        (
            proptest::collection::vec((0u8..3, value()), n),
            proptest::option::of((prop_oneof![Just("k1"), Just("k5")], value())),
        )
            .prop_map(move |(edits, added)| {
                let mut out = JsonObject::new();
                for ((k, v), (what, new)) in base.iter().zip(edits) {
                    match what {
                        0 => {
                            out.insert(k.clone(), v.clone());
                        }
                        1 => {
                            out.insert(k.clone(), new);
                        }
                        _ => {}
                    }
                }
                if let Some((k, v)) = added {
                    out.insert(k.to_owned(), v);
                }
                out
            })
    }

    fn triple() -> impl Strategy<Value = (Option<JsonObject>, JsonObject, JsonObject)> {
        (proptest::option::of(record()), record()).prop_flat_map(|(base, other)| {
            let b = base.clone().unwrap_or_default();
            let related = (edit_of(b.clone()), edit_of(b));
            let unrelated = (record(), Just(other));
            (Just(base), prop_oneof![related, unrelated]).prop_map(|(b, (l, r))| (b, l, r))
        })
    }

    proptest! {
        #[test]
        fn three_way_merge_is_symmetric((base, local, remote) in triple(), tie in any::<bool>()) {
            let a = three_way_merge(base.as_ref(), &local, &remote, tie);
            let b = three_way_merge(base.as_ref(), &remote, &local, !tie);
            match (a, b) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "one side failed: {:?} vs {:?}", a, b),
            }
        }

        #[test]
        fn unchanged_local_gives_remote((base, _local, remote) in triple(), tie in any::<bool>()) {
            let b = base.clone().unwrap_or_default();
            prop_assert_eq!(three_way_merge(base.as_ref(), &b, &remote, tie).unwrap(), remote.clone());
            // And the mirror image.
            prop_assert_eq!(three_way_merge(base.as_ref(), &remote, &b, tie).unwrap(), remote);
        }

        #[test]
        fn merging_with_itself_changes_nothing((base, local, _r) in triple(), tie in any::<bool>()) {
            prop_assert_eq!(three_way_merge(base.as_ref(), &local, &local, tie).unwrap(), local);
        }
    }
}
