#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Invalid input to the device API through Rust: apps pass whatever their users typed
//! and whatever their own bugs produce. Random collection names, record ids (control
//! characters, 129+ characters, odd Unicode), non-object and deep JSON, huge strings
//! and malformed CRDT objects go to `put`, `patch`, `delete`, `get`, `query`,
//! `increment`, `set_add`, `set_remove` and `set_register`. Each call returns a typed
//! `Ok` or `Err`, never panics, and a failed call changes nothing: the records and the
//! outbox are exactly as before.

use outpost_core::{Query, Store};
use outpost_tests::{collections, store_config};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Call {
    Put(String, Option<String>, Value),
    Patch(String, String, Value),
    Delete(String, String),
    Get(String, String),
    Query(
        String,
        Vec<(String, Value)>,
        Option<(String, bool)>,
        Option<u32>,
        u32,
    ),
    Increment(String, String, String, i64),
    SetAdd(String, String, String, String),
    SetRemove(String, String, String, String),
    SetRegister(String, String, String, Value),
}

fn collection() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["answers", "patients", "drafts", "reviews"]).prop_map(str::to_owned),
        1 => "[a-z][a-z0-9_]{0,70}",
        1 => "\\PC{0,8}",
        1 => prop::sample::select(vec!["", "Answers", "answers ", "answers\0", "1abc", "a-b", "ánswers", "😀"]).prop_map(str::to_owned),
    ]
}

fn record_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["seed-1", "seed-2", "seed-3", "missing"]).prop_map(str::to_owned),
        1 => "\\PC{0,6}",
        1 => "[\\x00-\\x1f\\x7f]{1,3}",
        1 => "a[\\x00-\\x1f]b",
        1 => (127usize..132).prop_map(|n| "a".repeat(n)),
        1 => (127usize..132).prop_map(|n| "😀".repeat(n)),
        1 => prop::sample::select(vec!["", " ", "\u{202e}x", "e\u{301}", "\u{feff}", "\u{85}", "\u{2028}"]).prop_map(str::to_owned),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["hits", "tags", "reg", "plain", "name", "new"]).prop_map(str::to_owned),
        1 => "\\PC{0,6}",
        1 => prop::sample::select(vec!["", "$crdt", "\0", "a.b", "😀"]).prop_map(str::to_owned),
    ]
}

fn nested(depth: usize, array: bool) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = if array { json!([v]) } else { json!({ "a": v }) };
    }
    v
}

fn malformed_crdt() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"$crdt": "gcounter", "p": {"r": -1}}),
        json!({"$crdt": "gcounter", "p": {"r": u64::MAX, "s": u64::MAX}}),
        json!({"$crdt": "gcounter", "p": "x"}),
        json!({"$crdt": "pncounter", "p": {"r": 1.5}, "n": {}}),
        json!({"$crdt": "pncounter", "p": {}, "n": {"r": u64::MAX, "s": u64::MAX}}),
        json!({"$crdt": "lww"}),
        json!({"$crdt": "lww", "v": 1, "t": 7}),
        json!({"$crdt": "orset", "adds": {"a": [1]}}),
        json!({"$crdt": "orset", "adds": [], "removes": {}}),
        json!({"$crdt": "unknown"}),
        json!({"$crdt": 5}),
        json!({"$crdt": null}),
    ])
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,10}".prop_map(Value::from),
        "[\\x00-\\x1f]{0,4}".prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        6 => tree,
        2 => malformed_crdt().prop_map(|c| json!({"hits": c})),
        1 => malformed_crdt(),
        1 => (60usize..70, any::<bool>()).prop_map(|(d, a)| json!({"deep": nested(d, a)})),
        1 => Just(json!({"deep": nested(300, true)})),
        1 => Just(json!({"big": "x".repeat((1 << 20) + 16)})),
        1 => Just(json!({"big": "x".repeat((1 << 20) - 64)})),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (collection(), prop::option::of(record_id()), json_value())
            .prop_map(|(c, i, v)| Call::Put(c, i, v)),
        (collection(), record_id(), json_value()).prop_map(|(c, i, v)| Call::Patch(c, i, v)),
        (collection(), record_id()).prop_map(|(c, i)| Call::Delete(c, i)),
        (collection(), record_id()).prop_map(|(c, i)| Call::Get(c, i)),
        (
            collection(),
            prop::collection::vec((field(), json_value()), 0..3),
            prop::option::of((field(), any::<bool>())),
            prop::option::of(any::<u32>()),
            any::<u32>()
        )
            .prop_map(|(c, f, o, l, off)| Call::Query(c, f, o, l, off)),
        (collection(), record_id(), field(), any::<i64>())
            .prop_map(|(c, i, f, by)| Call::Increment(c, i, f, by)),
        (collection(), record_id(), field(), "\\PC{0,6}")
            .prop_map(|(c, i, f, e)| Call::SetAdd(c, i, f, e)),
        (collection(), record_id(), field(), "\\PC{0,6}")
            .prop_map(|(c, i, f, e)| Call::SetRemove(c, i, f, e)),
        (collection(), record_id(), field(), json_value())
            .prop_map(|(c, i, f, v)| Call::SetRegister(c, i, f, v)),
    ]
}

/// Whether the call was a write, and its result with the value dropped.
fn run(store: &Store, c: &Call) -> (bool, Result<(), outpost_core::Error>) {
    match c {
        Call::Put(col, id, v) => (true, store.put(col, id.as_deref(), v.clone()).map(drop)),
        Call::Patch(col, id, v) => (true, store.patch(col, id, v.clone()).map(drop)),
        Call::Delete(col, id) => (true, store.delete(col, id)),
        Call::Get(col, id) => (false, store.get(col, id).map(drop)),
        Call::Query(col, filters, order, limit, offset) => {
            let mut q = Query::new().offset(*offset);
            for (f, v) in filters {
                q = q.filter(f, v.clone());
            }
            if let Some((f, d)) = order {
                q = q.order_by(f, *d);
            }
            if let Some(l) = limit {
                q = q.limit(*l);
            }
            (false, store.query(col, &q).map(drop))
        }
        Call::Increment(col, id, f, by) => (true, store.increment(col, id, f, *by).map(drop)),
        Call::SetAdd(col, id, f, e) => (true, store.set_add(col, id, f, e).map(drop)),
        Call::SetRemove(col, id, f, e) => (true, store.set_remove(col, id, f, e).map(drop)),
        Call::SetRegister(col, id, f, v) => {
            (true, store.set_register(col, id, f, v.clone()).map(drop))
        }
    }
}

/// Everything a failed call must leave alone: all records and the whole outbox.
fn state(store: &Store) -> String {
    let mut s = String::new();
    for (c, _) in collections() {
        s.push_str(&format!("{:?}", store.query(c, &Query::new()).unwrap()));
    }
    s.push_str(&format!("{:?}", store.outbox_entries().unwrap()));
    s
}

#[test]
fn invalid_device_api_input_gives_typed_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("input.db"), store_config()).unwrap();
    for (c, _) in collections() {
        for id in ["seed-1", "seed-2", "seed-3"] {
            store
                .put(c, Some(id), json!({"plain": 5, "name": "n"}))
                .unwrap();
            store.increment(c, id, "hits", 2).unwrap();
            store.set_add(c, id, "tags", "a").unwrap();
            store.set_register(c, id, "reg", json!("r")).unwrap();
        }
    }
    let cases: u32 = std::env::var("OUTPOST_INPUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let (mut oks, mut errs) = (0u32, 0u32);
    let counts = std::cell::RefCell::new((0u32, 0u32));
    runner
        .run(&prop::collection::vec(call(), 1..6), |calls| {
            for c in &calls {
                let write = !matches!(c, Call::Get(..) | Call::Query(..));
                let before = if write { state(&store) } else { String::new() };
                let (_, r) = run(&store, c);
                match r {
                    Ok(()) => counts.borrow_mut().0 += 1,
                    Err(e) => {
                        counts.borrow_mut().1 += 1;
                        prop_assert!(!e.to_string().is_empty());
                        if write {
                            let after = state(&store);
                            prop_assert!(
                                before == after,
                                "{c:?} failed with {e:?} but changed the store"
                            );
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let (o, e) = *counts.borrow();
    oks += o;
    errs += e;
    println!("device API input: {cases} cases, {oks} calls Ok, {errs} typed errors, panics: 0");
    assert!(errs > 0 && oks > 0);
}
