//! The strategies' rules, example by example and as properties.

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
                ConflictStrategy::LastWriteWins | ConflictStrategy::FieldMerge => Winner::Merged,
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
