//! The CRDT laws (commutative, associative, idempotent merges) and the strict wire
//! forms, example by example and as properties.

use super::*;
use crate::protocol::{JsonObject, OpKind};
use proptest::prelude::*;
use serde_json::json;

fn obj(v: Value) -> JsonObject {
    match v {
        Value::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn t(ms: u64, c: u32, r: &str) -> Hlc {
    Hlc::new(ms, c, r)
}

#[test]
fn wire_shapes_round_trip() {
    for v in [
        json!({"$crdt":"gcounter","p":{"a":1,"b":2}}),
        json!({"$crdt":"pncounter","p":{"a":5},"n":{"b":7}}),
        json!({"$crdt":"lww","v":{"x":[1,"y"]},"t":"1700000000000-00001-dev-a"}),
        json!({"$crdt":"orset","adds":{"x":["a:1","b:2"]},"removes":{"x":["a:1"]}}),
        json!({"$crdt":"orset","adds":{},"removes":{}}),
    ] {
        let c = Crdt::from_json(&v).unwrap();
        assert_eq!(c.to_json(), v);
        assert!(Crdt::is_crdt(&v));
    }
}

#[test]
fn entry_counts_read_off_the_json() {
    for (v, n) in [
        (json!({"$crdt":"gcounter","p":{"a":1,"b":2}}), 2),
        (
            json!({"$crdt":"pncounter","p":{"a":5},"n":{"a":1,"b":7}}),
            2,
        ),
        (
            json!({"$crdt":"lww","v":[1,2,3],"t":"1700000000000-00001-a"}),
            1,
        ),
        (
            json!({"$crdt":"orset","adds":{"x":["a:1","b:2"],"y":["a:3"]},"removes":{"x":["a:1","c:9"]}}),
            4,
        ),
        (json!({"plain": {"p": {"a": 1}}}), 0),
        (json!(7), 0),
    ] {
        assert_eq!(Crdt::entry_count(&v), n, "{v}");
    }
}

#[test]
fn canonical_form_sorts_and_dedupes_tags() {
    let c = Crdt::from_json(&json!({
        "$crdt":"orset","adds":{"x":["b:2","a:1","b:2"],"y":[]},"removes":{}
    }))
    .unwrap();
    assert_eq!(
        c.to_json(),
        json!({"$crdt":"orset","adds":{"x":["a:1","b:2"]},"removes":{}})
    );
}

#[test]
fn values() {
    let v = |j: Value| Crdt::from_json(&j).unwrap().value();
    assert_eq!(v(json!({"$crdt":"gcounter","p":{"a":1,"b":2}})), json!(3));
    assert_eq!(v(json!({"$crdt":"gcounter","p":{}})), json!(0));
    assert_eq!(
        v(json!({"$crdt":"pncounter","p":{"a":1},"n":{"b":4}})),
        json!(-3)
    );
    assert_eq!(
        v(json!({"$crdt":"pncounter","p":{"a":u64::MAX,"b":u64::MAX},"n":{}})),
        json!(u64::MAX)
    );
    assert_eq!(
        v(json!({"$crdt":"pncounter","p":{},"n":{"a":u64::MAX}})),
        json!(i64::MIN)
    );
    assert_eq!(
        v(json!({"$crdt":"gcounter","p":{"a":u64::MAX,"b":1}})),
        json!(u64::MAX)
    );
    assert_eq!(
        v(json!({"$crdt":"lww","v":"hi","t":"1700000000000-00001-a"})),
        json!("hi")
    );
    assert_eq!(
        v(json!({"$crdt":"orset",
            "adds":{"z":["a:1"],"x":["a:2","b:1"],"gone":["a:3"]},
            "removes":{"x":["a:2"],"gone":["a:3"],"never":["c:1"]}})),
        json!(["x", "z"])
    );
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let bad = [
        json!(null),
        json!(1),
        json!({}),
        json!({"$crdt":1}),
        json!({"$crdt":"vclock"}),
        json!({"$crdt":"gcounter"}),
        json!({"$crdt":"gcounter","p":[]}),
        json!({"$crdt":"gcounter","p":{"a":-1}}),
        json!({"$crdt":"gcounter","p":{"a":1.5}}),
        json!({"$crdt":"gcounter","p":{"a":1.0}}),
        json!({"$crdt":"gcounter","p":{"a":"1"}}),
        json!({"$crdt":"gcounter","p":{"":1}}),
        json!({"$crdt":"gcounter","p":{"a":1},"extra":0}),
        json!({"$crdt":"gcounter","p":{"a":1},"n":{}}),
        json!({"$crdt":"pncounter","p":{"a":1}}),
        json!({"$crdt":"pncounter","n":{}}),
        json!({"$crdt":"lww","v":1}),
        json!({"$crdt":"lww","t":"1700000000000-00001-a"}),
        json!({"$crdt":"lww","v":1,"t":5}),
        json!({"$crdt":"lww","v":1,"t":"yesterday"}),
        json!({"$crdt":"orset","adds":{}}),
        json!({"$crdt":"orset","adds":{"x":"a:1"},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":[1]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":["a"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":["a:"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":[":1"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":["a:01"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":["a:-1"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{"x":["a:99999999999999999999999"]},"removes":{}}),
        json!({"$crdt":"orset","adds":{},"removes":[]}),
    ];
    for v in bad {
        assert!(
            matches!(Crdt::from_json(&v), Err(CrdtError::Malformed(_))),
            "{v}"
        );
    }
    // A replica id may itself contain ':'; the number is after the last one.
    assert!(Crdt::from_json(&json!({"$crdt":"orset","adds":{"x":["a:b:3"]},"removes":{}})).is_ok());
}

#[test]
fn merge_rules() {
    let g = json!({"$crdt":"gcounter","p":{"a":3,"b":1}});
    let g2 = json!({"$crdt":"gcounter","p":{"a":1,"c":4}});
    assert_eq!(
        merge_json(&g, &g2).unwrap(),
        json!({"$crdt":"gcounter","p":{"a":3,"b":1,"c":4}})
    );
    let pn = json!({"$crdt":"pncounter","p":{"a":5},"n":{"a":2}});
    assert_eq!(
        merge_json(&g, &pn).unwrap(),
        json!({"$crdt":"pncounter","p":{"a":5,"b":1},"n":{"a":2}})
    );
    assert_eq!(merge_json(&pn, &g).unwrap(), merge_json(&g, &pn).unwrap());

    let old = json!({"$crdt":"lww","v":"old","t":"1700000000000-00001-b"});
    let new = json!({"$crdt":"lww","v":"new","t":"1700000000000-00002-a"});
    assert_eq!(merge_json(&old, &new).unwrap(), new);
    assert_eq!(merge_json(&new, &old).unwrap(), new);
    let tie = json!({"$crdt":"lww","v":"zzz","t":"1700000000000-00002-a"});
    assert_eq!(merge_json(&new, &tie).unwrap(), tie);
    assert_eq!(merge_json(&tie, &new).unwrap(), tie);

    let s = json!({"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}});
    assert_eq!(
        merge_json(&s, &g),
        Err(CrdtError::TypeMismatch {
            left: "orset",
            right: "gcounter"
        })
    );
    assert!(matches!(
        merge_json(&old, &pn),
        Err(CrdtError::TypeMismatch { .. })
    ));
    assert!(matches!(
        merge_json(&json!({"$crdt":"x"}), &pn),
        Err(CrdtError::Malformed(_))
    ));
}

#[test]
fn device_increment() {
    let c = increment(None, "a", 2).unwrap();
    assert_eq!(c, json!({"$crdt":"pncounter","p":{"a":2},"n":{}}));
    let c = increment(Some(&c), "b", -5).unwrap();
    assert_eq!(c, json!({"$crdt":"pncounter","p":{"a":2},"n":{"b":5}}));
    assert_eq!(Crdt::from_json(&c).unwrap().value(), json!(-3));
    let c = increment(Some(&c), "b", i64::MIN).unwrap();
    let c = increment(Some(&c), "b", i64::MIN).unwrap();
    let c = increment(Some(&c), "b", i64::MIN).unwrap();
    assert_eq!(c["n"]["b"], json!(u64::MAX));

    let g = json!({"$crdt":"gcounter","p":{"a":1}});
    assert_eq!(
        increment(Some(&g), "a", 2).unwrap(),
        json!({"$crdt":"gcounter","p":{"a":3}})
    );
    assert_eq!(
        increment(Some(&g), "a", -1),
        Err(CrdtError::NegativeIncrement)
    );
    assert_eq!(
        increment(Some(&json!(5)), "a", 1),
        Err(CrdtError::WrongType {
            expected: "counter",
            found: "a number"
        })
    );
    let s = json!({"$crdt":"orset","adds":{},"removes":{}});
    assert!(matches!(
        increment(Some(&s), "a", 1),
        Err(CrdtError::WrongType { .. })
    ));
    assert!(matches!(
        increment(None, "", 1),
        Err(CrdtError::InvalidReplica(_))
    ));
    assert!(matches!(
        increment(Some(&json!({"$crdt":"gcounter"})), "a", 1),
        Err(CrdtError::Malformed(_))
    ));
}

#[test]
fn device_lww_set() {
    let a = lww_set(None, json!("one"), &t(10, 0, "a")).unwrap();
    assert_eq!(
        a,
        json!({"$crdt":"lww","v":"one","t":"0000000000010-00000-a"})
    );
    let b = lww_set(Some(&a), json!("two"), &t(20, 0, "a")).unwrap();
    assert_eq!(Crdt::from_json(&b).unwrap().value(), json!("two"));
    // A write with an older stamp does not undo a newer one.
    let c = lww_set(Some(&b), json!("late"), &t(15, 0, "b")).unwrap();
    assert_eq!(c, b);
    assert!(matches!(
        lww_set(Some(&json!("x")), json!(1), &t(1, 0, "a")),
        Err(CrdtError::WrongType { .. })
    ));
}

#[test]
fn device_orset() {
    let s = orset_add(None, "x", "a").unwrap();
    assert_eq!(
        s,
        json!({"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}})
    );
    let s = orset_add(Some(&s), "y", "a").unwrap();
    let s = orset_remove(Some(&s), "x").unwrap();
    assert_eq!(
        s,
        json!({"$crdt":"orset","adds":{"y":["a:2"]},"removes":{"x":["a:1"]}})
    );
    // Tag numbers keep growing past removed tags.
    let s = orset_add(Some(&s), "x", "a").unwrap();
    assert_eq!(s["adds"]["x"], json!(["a:3"]));
    let v = Crdt::from_json(&s).unwrap().value();
    assert_eq!(v, json!(["x", "y"]));
    assert_eq!(
        orset_remove(None, "x").unwrap(),
        json!({"$crdt":"orset","adds":{},"removes":{}})
    );
    let full = json!({"$crdt":"orset","adds":{"x":[format!("a:{}", u64::MAX)]},"removes":{}});
    assert!(matches!(
        orset_add(Some(&full), "y", "a"),
        Err(CrdtError::Overflow(_))
    ));
    assert!(orset_add(Some(&full), "y", "b").is_ok());
    assert!(matches!(
        orset_add(Some(&json!([])), "x", "a"),
        Err(CrdtError::WrongType { .. })
    ));
}

#[test]
fn put_carries_omitted_crdt_fields() {
    let existing = obj(json!({
        "name": "A",
        "doses": {"$crdt":"pncounter","p":{"a":2},"n":{}},
        "tags": {"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}},
        "note": "old"
    }));
    let incoming = obj(json!({
        "name": "B",
        "doses": {"$crdt":"pncounter","p":{"b":3},"n":{}}
    }));
    let out = apply_write(Some(&existing), &incoming, OpKind::Put).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "name": "B",
            "doses": {"$crdt":"pncounter","p":{"a":2,"b":3},"n":{}},
            "tags": {"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}}
        })
    );
}

#[test]
fn patch_null_stores_null_and_merges() {
    let existing = obj(json!({
        "name": "A",
        "note": "n",
        "doses": {"$crdt":"gcounter","p":{"a":2}}
    }));
    let incoming = obj(json!({
        "note": null,
        "doses": {"$crdt":"gcounter","p":{"b":1}},
        "new": {"$crdt":"gcounter","p":{"b":1}}
    }));
    let out = apply_write(Some(&existing), &incoming, OpKind::Patch).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "name": "A",
            "note": null,
            "doses": {"$crdt":"gcounter","p":{"a":2,"b":1}},
            "new": {"$crdt":"gcounter","p":{"b":1}}
        })
    );
    let out = apply_write(None, &incoming, OpKind::Patch).unwrap();
    assert_eq!(out, incoming);
    assert!(
        apply_write(Some(&existing), &JsonObject::new(), OpKind::Delete)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn merge_record_edge_cases() {
    let existing = obj(json!({
        "c": {"$crdt":"gcounter","p":{"a":2}},
        "plain": 1
    }));
    // A plain value replacing a CRDT field under put is taken as written.
    let mut inc = obj(json!({"c": 7}));
    merge_record(&existing, &mut inc, OpKind::Put).unwrap();
    assert_eq!(Value::Object(inc), json!({"c": 7}));
    // A CRDT replacing a plain field is not merged with it.
    let mut inc = obj(json!({"plain": {"$crdt":"gcounter","p":{"b":1}}}));
    merge_record(&existing, &mut inc, OpKind::Patch).unwrap();
    assert_eq!(
        Value::Object(inc),
        json!({"plain": {"$crdt":"gcounter","p":{"b":1}}})
    );
    // Errors leave the incoming record unchanged.
    let orig = obj(json!({"c": {"$crdt":"orset","adds":{},"removes":{}}, "d": 1}));
    let mut inc = orig.clone();
    assert!(matches!(
        merge_record(&existing, &mut inc, OpKind::Put),
        Err(CrdtError::TypeMismatch { .. })
    ));
    assert_eq!(inc, orig);
    let mut inc = obj(json!({"x": {"$crdt":"gcounter","p":{"a":-1}}}));
    assert!(matches!(
        merge_record(&existing, &mut inc, OpKind::Patch),
        Err(CrdtError::Malformed(m)) if m.contains("\"x\"")
    ));
    // Delete touches nothing.
    let mut inc = JsonObject::new();
    merge_record(&existing, &mut inc, OpKind::Delete).unwrap();
    assert!(inc.is_empty());
}

#[test]
fn crdt_only_detection() {
    let existing = obj(json!({
        "name": "A",
        "doses": {"$crdt":"gcounter","p":{"a":2}},
        "tags": {"$crdt":"orset","adds":{},"removes":{}}
    }));
    let only = |inc: Value, kind| changes_only_crdt_fields(&existing, &obj(inc), kind);
    // Patch of a CRDT field, existing or new.
    assert!(only(
        json!({"doses": {"$crdt":"gcounter","p":{"b":1}}}),
        OpKind::Patch
    ));
    assert!(only(
        json!({"fresh": {"$crdt":"gcounter","p":{"b":1}}}),
        OpKind::Patch
    ));
    // Setting a plain field to its current value changes nothing.
    assert!(only(json!({"name": "A"}), OpKind::Patch));
    assert!(!only(json!({"name": "B"}), OpKind::Patch));
    assert!(!only(json!({"name": null}), OpKind::Patch));
    assert!(!only(
        json!({"name": {"$crdt":"gcounter","p":{"b":1}}}),
        OpKind::Patch
    ));
    assert!(!only(json!({"doses": 3}), OpKind::Patch));
    // Put: plain fields must be equal and present on both sides; omitted CRDT
    // fields are carried over, so omitting them is fine.
    assert!(only(
        json!({"name": "A", "doses": {"$crdt":"gcounter","p":{"b":1}}}),
        OpKind::Put
    ));
    assert!(only(json!({"name": "A"}), OpKind::Put));
    assert!(!only(
        json!({"doses": {"$crdt":"gcounter","p":{"b":1}}}),
        OpKind::Put
    ));
    assert!(!only(json!({"name": "A", "x": 1}), OpKind::Put));
    // Unmergeable or malformed CRDTs and deletes are never CRDT-only.
    assert!(!only(
        json!({"name": "A", "doses": {"$crdt":"orset","adds":{},"removes":{}}}),
        OpKind::Put
    ));
    assert!(!only(json!({"doses": {"$crdt":"nope"}}), OpKind::Patch));
    assert!(!only(json!({}), OpKind::Delete));
}

// ---- property tests ----

const REPLICAS: [&str; 3] = ["a", "b", "c"];

fn replica() -> impl Strategy<Value = String> {
    prop::sample::select(&REPLICAS[..]).prop_map(str::to_owned)
}

fn counts() -> impl Strategy<Value = BTreeMap<String, u64>> {
    prop::collection::btree_map(replica(), 0u64..50, 0..4)
}

fn tags() -> impl Strategy<Value = BTreeMap<String, BTreeSet<String>>> {
    let tag = (replica(), 1u64..5).prop_map(|(r, n)| format!("{r}:{n}"));
    let elem = prop::sample::select(&["x", "y", "z"][..]).prop_map(str::to_owned);
    prop::collection::btree_map(elem, prop::collection::btree_set(tag, 1..4), 0..4)
}

fn lww() -> impl Strategy<Value = Crdt> {
    let v = prop_oneof![
        (0i64..3).prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::from),
        Just(json!({"k": [1, null]})),
        Just(Value::Null),
    ];
    (v, 0u64..3, 0u32..2, replica())
        .prop_map(|(v, ms, c, r)| Crdt::Lww(LwwRegister { v, t: t(ms, c, &r) }))
}

fn counter() -> impl Strategy<Value = Crdt> {
    prop_oneof![
        counts().prop_map(|p| Crdt::GCounter(GCounter { p })),
        (counts(), counts()).prop_map(|(p, n)| Crdt::PnCounter(PnCounter { p, n })),
    ]
}

fn orset() -> impl Strategy<Value = Crdt> {
    (tags(), tags()).prop_map(|(adds, removes)| Crdt::OrSet(OrSet { adds, removes }))
}

/// Three states of one merge family.
fn triple() -> impl Strategy<Value = (Crdt, Crdt, Crdt)> {
    prop_oneof![
        (counter(), counter(), counter()),
        (lww(), lww(), lww()),
        (orset(), orset(), orset()),
    ]
}

fn m(a: &Crdt, b: &Crdt) -> Crdt {
    a.merge(b).unwrap()
}

/// Arbitrary JSON that often looks like a CRDT, for the no-panic check.
fn wild_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(
            &[
                "gcounter",
                "pncounter",
                "lww",
                "orset",
                "a:1",
                "a:0",
                "1700000000000-00001-a",
                "",
                "x"
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        let key =
            prop::sample::select(&["$crdt", "p", "n", "v", "t", "adds", "removes", "a", "x"][..]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

#[derive(Debug, Clone)]
enum Step {
    Inc(usize, i64),
    Sync(usize, usize),
}

fn steps(min_by: i64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..3, min_by..100).prop_map(|(r, by)| Step::Inc(r, by)),
            (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Sync(a, b)),
        ],
        0..60,
    )
}

/// Runs increments and pairwise syncs on three replicas, then merges everything.
fn run_counters(start: Option<Value>, steps: &[Step]) -> (Value, i64) {
    let mut states: [Option<Value>; 3] = [start.clone(), start.clone(), start];
    let mut total = 0i64;
    for s in steps {
        match *s {
            Step::Inc(r, by) => {
                states[r] = Some(increment(states[r].as_ref(), REPLICAS[r], by).unwrap());
                total += by;
            }
            Step::Sync(a, b) => {
                states[a] = match (&states[a], &states[b]) {
                    (Some(x), Some(y)) => Some(merge_json(x, y).unwrap()),
                    (x, y) => x.clone().or_else(|| y.clone()),
                };
            }
        }
    }
    let all = states
        .into_iter()
        .flatten()
        .reduce(|x, y| merge_json(&x, &y).unwrap());
    let value = all.map_or(json!(0), |v| Crdt::from_json(&v).unwrap().value());
    (value, total)
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_idempotent((a, b, c) in triple()) {
        prop_assert_eq!(m(&a, &b).to_json(), m(&b, &a).to_json());
        prop_assert_eq!(m(&m(&a, &b), &c).to_json(), m(&a, &m(&b, &c)).to_json());
        prop_assert_eq!(m(&a, &a).to_json(), a.to_json());
        // Merging is also a join: merging the result with either side changes nothing.
        let ab = m(&a, &b);
        prop_assert_eq!(m(&ab, &a).to_json(), ab.to_json());
    }

    #[test]
    fn canonical_json_round_trips((a, b, c) in triple()) {
        for x in [a, b, c] {
            let j = x.to_json();
            let back = Crdt::from_json(&j).unwrap();
            prop_assert_eq!(back.to_json(), j);
        }
    }

    #[test]
    fn pncounter_value_is_total_of_increments(s in steps(-100)) {
        let (value, total) = run_counters(None, &s);
        prop_assert_eq!(value, json!(total));
    }

    #[test]
    fn gcounter_value_is_total_of_increments(s in steps(0)) {
        let start = json!({"$crdt":"gcounter","p":{}});
        let (value, total) = run_counters(Some(start), &s);
        prop_assert_eq!(value, json!(total));
    }

    #[test]
    fn concurrent_add_wins_over_remove(base in orset(), elem in "[x-z]", r in replica()) {
        let base = base.to_json();
        let added = orset_add(Some(&base), &elem, &r).unwrap();
        let removed = orset_remove(Some(&base), &elem).unwrap();
        let merged = Crdt::from_json(&merge_json(&added, &removed).unwrap()).unwrap();
        let Crdt::OrSet(s) = &merged else { panic!("not an orset") };
        prop_assert!(s.contains(&elem));
        // A remove that has seen the add does remove it.
        let later = orset_remove(Some(&added), &elem).unwrap();
        let merged = merge_json(&added, &later).unwrap();
        let Crdt::OrSet(s) = Crdt::from_json(&merged).unwrap() else { panic!("not an orset") };
        prop_assert!(!s.contains(&elem));
    }

    #[test]
    fn orset_on_one_replica_behaves_like_a_set(
        ops in prop::collection::vec((any::<bool>(), "[x-z]", replica()), 0..40)
    ) {
        let mut state: Option<Value> = None;
        let mut model = BTreeSet::new();
        for (add, elem, r) in ops {
            state = Some(if add {
                model.insert(elem.clone());
                orset_add(state.as_ref(), &elem, &r).unwrap()
            } else {
                model.remove(&elem);
                orset_remove(state.as_ref(), &elem).unwrap()
            });
        }
        let value = state.map_or(json!([]), |s| Crdt::from_json(&s).unwrap().value());
        prop_assert_eq!(value, json!(model.into_iter().collect::<Vec<_>>()));
    }

    #[test]
    fn parsing_never_panics_and_valid_parses_round_trip(v in wild_json(), w in wild_json()) {
        if let Ok(c) = Crdt::from_json(&v) {
            let j = c.to_json();
            prop_assert_eq!(Crdt::from_json(&j).unwrap(), c.clone());
            let _ = c.value();
        }
        let _ = merge_json(&v, &w);
        let _ = increment(Some(&v), "a", -1);
        let _ = orset_add(Some(&v), "x", "a");
        let _ = orset_remove(Some(&v), "x");
        let _ = lww_set(Some(&v), json!(1), &t(1, 0, "a"));
        if let (Value::Object(a), Value::Object(b)) = (&v, &w) {
            for kind in [OpKind::Put, OpKind::Patch, OpKind::Delete] {
                let _ = apply_write(Some(a), b, kind);
                let _ = changes_only_crdt_fields(a, b, kind);
            }
        }
    }

    #[test]
    fn crdt_only_writes_keep_plain_fields(
        name in "[ab]",
        inc_name in "[ab]",
        doses in counts(),
        inc_doses in counts(),
        put in any::<bool>(),
    ) {
        let existing = obj(json!({
            "name": name,
            "doses": Crdt::GCounter(GCounter { p: doses }).to_json(),
        }));
        let kind = if put { OpKind::Put } else { OpKind::Patch };
        let mut incoming = obj(json!({
            "doses": Crdt::GCounter(GCounter { p: inc_doses }).to_json(),
        }));
        if put || name != inc_name {
            incoming.insert("name".into(), json!(inc_name));
        }
        let only = changes_only_crdt_fields(&existing, &incoming, kind);
        prop_assert_eq!(only, name == inc_name);
        let out = apply_write(Some(&existing), &incoming, kind).unwrap();
        prop_assert_eq!(&out["name"], &json!(inc_name));
    }
}
