#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Local queries against a brute-force model: every operator, orders over several
//! fields, offsets and keyset pages, on real SQLite files with and without the
//! declared indexes; full-text search kept in step with every write path; observers
//! that fire exactly when a result changes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use outpost_core::protocol::JsonObject;
use outpost_core::{
    CollectionConfig, ConflictStrategy, Error, Filter, Order, Query, Record, Store, StoreConfig,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const FIELDS: [&str; 3] = ["a", "b", "c d"];

fn config(indexed: bool) -> StoreConfig {
    let mut c = CollectionConfig::new("items", ConflictStrategy::LastWriteWins);
    if indexed {
        c = c
            .with_index(&["a"])
            .with_index(&["b", "a"])
            .with_index(&["c d"]);
    }
    StoreConfig::default().with(c)
}

// ---- the model ----

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        (-3i64..4).prop_map(|n| json!(n as f64 + 0.5)),
        Just(json!(1.0)),
        prop::sample::select(vec![
            "", "a", "ab", "abc", "B", "b", "é", "É", "[x", "{", "1", "true"
        ])
        .prop_map(Value::from),
        Just(json!([1])),
        Just(json!(["a"])),
    ]
}

/// What a range compares with: numbers and strings (anything else is refused).
fn ordered() -> impl Strategy<Value = Value> {
    value().prop_filter("numbers and strings", |v| v.is_number() || v.is_string())
}

fn record() -> impl Strategy<Value = JsonObject> {
    prop::collection::vec(prop::option::of(value()), 3).prop_map(|vs| {
        let mut o = JsonObject::new();
        for (f, v) in FIELDS.iter().zip(vs) {
            if let Some(v) = v {
                o.insert((*f).to_owned(), v);
            }
        }
        o
    })
}

fn field() -> impl Strategy<Value = String> {
    prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned)
}

fn leaf() -> impl Strategy<Value = Filter> {
    let prefix = prop::sample::select(vec!["", "a", "ab", "B", "é", "[", "{", "1"]);
    prop_oneof![
        (field(), value()).prop_map(|(f, v)| Filter::Eq(f, v)),
        (field(), value()).prop_map(|(f, v)| Filter::Ne(f, v)),
        (field(), ordered()).prop_map(|(f, v)| Filter::Lt(f, v)),
        (field(), ordered()).prop_map(|(f, v)| Filter::Lte(f, v)),
        (field(), ordered()).prop_map(|(f, v)| Filter::Gt(f, v)),
        (field(), ordered()).prop_map(|(f, v)| Filter::Gte(f, v)),
        (field(), prop::collection::vec(value(), 0..4)).prop_map(|(f, vs)| Filter::In(f, vs)),
        (field(), prefix.clone()).prop_map(|(f, p)| Filter::prefix(&f, p)),
        (field(), prefix).prop_map(|(f, p)| Filter::prefix_ci(&f, p)),
        field().prop_map(Filter::IsNull),
        field().prop_map(Filter::Exists),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
            prop::collection::vec(inner, 0..3).prop_map(Filter::Or),
        ]
    })
}

fn order() -> impl Strategy<Value = Vec<Order>> {
    prop::collection::vec(
        (prop::option::of(field()), any::<bool>())
            .prop_map(|(field, descending)| Order { field, descending }),
        0..3,
    )
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|_| v.is_number())
}

fn equal(x: &Value, v: &Value) -> bool {
    match (number(x), number(v)) {
        (Some(a), Some(b)) => a == b,
        _ => x == v,
    }
}

fn range(x: &Value, v: &Value, want: &[Ordering]) -> bool {
    let ord = match (x, v) {
        (Value::Number(_), Value::Number(_)) => number(x).partial_cmp(&number(v)),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    };
    ord.is_some_and(|o| want.contains(&o))
}

/// What each filter means, written as plainly as possible.
fn matches(f: &Filter, r: &JsonObject) -> bool {
    let get = |field: &String| r.get(field);
    match f {
        Filter::Eq(field, v) => get(field).is_some_and(|x| equal(x, v)),
        Filter::Ne(field, v) => !get(field).is_some_and(|x| equal(x, v)),
        Filter::Lt(field, v) => get(field).is_some_and(|x| range(x, v, &[Ordering::Less])),
        Filter::Lte(field, v) => {
            get(field).is_some_and(|x| range(x, v, &[Ordering::Less, Ordering::Equal]))
        }
        Filter::Gt(field, v) => get(field).is_some_and(|x| range(x, v, &[Ordering::Greater])),
        Filter::Gte(field, v) => {
            get(field).is_some_and(|x| range(x, v, &[Ordering::Greater, Ordering::Equal]))
        }
        Filter::In(field, vs) => get(field).is_some_and(|x| vs.iter().any(|v| equal(x, v))),
        Filter::Prefix {
            field,
            prefix,
            case_insensitive,
        } => match get(field) {
            Some(Value::String(s)) if *case_insensitive => {
                s.to_lowercase().starts_with(&prefix.to_lowercase())
            }
            Some(Value::String(s)) => s.starts_with(prefix.as_str()),
            _ => false,
        },
        Filter::IsNull(field) => get(field).is_none_or(Value::is_null),
        Filter::Exists(field) => get(field).is_some(),
        Filter::Search(_) => unreachable!("not generated"),
        Filter::And(fs) => fs.iter().all(|f| matches(f, r)),
        Filter::Or(fs) => fs.iter().any(|f| matches(f, r)),
    }
}

/// A field as SQLite sorts it: nothing, then numbers (booleans as 0 and 1), then text
/// (arrays and objects as their JSON).
fn sort_key(v: Option<&Value>) -> (u8, f64, String) {
    match v {
        None | Some(Value::Null) => (0, 0.0, String::new()),
        Some(Value::Bool(b)) => (1, f64::from(u8::from(*b)), String::new()),
        Some(Value::Number(n)) => (1, n.as_f64().unwrap(), String::new()),
        Some(Value::String(s)) => (2, 0.0, s.clone()),
        Some(other) => (2, 0.0, other.to_string()),
    }
}

fn model(records: &BTreeMap<String, JsonObject>, q: &Query) -> Vec<String> {
    let mut hits: Vec<(&String, &JsonObject)> = records
        .iter()
        .filter(|(_, r)| q.filter.as_ref().is_none_or(|f| matches(f, r)))
        .collect();
    let tie_descending = q.order.last().is_some_and(|o| o.descending);
    hits.sort_by(|(ia, a), (ib, b)| {
        for o in &q.order {
            let ord = match &o.field {
                None => ia.cmp(ib),
                Some(f) => {
                    let (ka, kb) = (sort_key(a.get(f)), sort_key(b.get(f)));
                    ka.0.cmp(&kb.0)
                        .then(ka.1.partial_cmp(&kb.1).unwrap())
                        .then(ka.2.cmp(&kb.2))
                }
            };
            let ord = if o.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        if tie_descending {
            ib.cmp(ia)
        } else {
            ia.cmp(ib)
        }
    });
    hits.into_iter()
        .map(|(id, _)| id.clone())
        .skip(q.offset as usize)
        .take(q.limit.map_or(usize::MAX, |l| l as usize))
        .collect()
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

fn fill(store: &Store, records: &[JsonObject]) -> BTreeMap<String, JsonObject> {
    store
        .batch(|tx| {
            let mut out = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                let id = format!("r{i:02}");
                tx.put("items", Some(&id), Value::Object(r.clone()))?;
                out.insert(id, r.clone());
            }
            Ok(out)
        })
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_filter_and_order_selects_what_the_model_selects(
        records in prop::collection::vec(record(), 0..25),
        filter in prop::option::of(filter()),
        order in order(),
        limit in prop::option::of(0u32..8),
        offset in 0u32..4,
        indexed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("q.db"), config(indexed)).unwrap();
        let model_records = fill(&store, &records);
        let q = Query { filter, order, limit, offset, after: None };
        prop_assert_eq!(ids(&store.query("items", &q).unwrap()), model(&model_records, &q));
        let everything = Query { limit: None, offset: 0, ..q.clone() };
        let count = match &q.filter {
            Some(f) => store.count_where("items", f).unwrap(),
            None => store.count("items", &[]).unwrap(),
        };
        prop_assert_eq!(count as usize, model(&model_records, &everything).len());
        // The JSON form the bindings send means the same.
        if let Some(f) = &q.filter {
            prop_assert_eq!(&Filter::from_json(&f.to_json()).unwrap(), f);
        }
    }

    #[test]
    fn keyset_pages_never_skip_or_repeat_while_records_are_written(
        records in prop::collection::vec(record(), 0..25),
        churn in prop::collection::vec(record(), 0..10),
        filter in prop::option::of(leaf()),
        order in order(),
        page in 1u32..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("q.db"), config(true)).unwrap();
        let stable = fill(&store, &records);
        let q = Query { filter, order, limit: Some(page), ..Query::default() };
        let want = model(&stable, &Query { limit: None, ..q.clone() });
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut writes = churn.iter().enumerate();
        loop {
            let p = store.query_page("items", &Query { after: cursor.clone(), ..q.clone() }).unwrap();
            seen.extend(ids(&p.records));
            // Other records come and go between pages.
            if let Some((i, r)) = writes.next() {
                let id = format!("z{i:02}");
                store.put("items", Some(&id), Value::Object(r.clone())).unwrap();
                if i % 2 == 1 {
                    store.delete("items", &format!("z{:02}", i - 1)).unwrap();
                }
            }
            match p.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        prop_assert_eq!(unique.len(), seen.len(), "a record came twice: {:?}", seen);
        let stable_seen: Vec<String> = seen.into_iter().filter(|id| id.starts_with('r')).collect();
        prop_assert_eq!(stable_seen, want);
    }
}

#[test]
fn bad_queries_are_invalid_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("q.db"), config(true)).unwrap();
    store.put("items", Some("x"), json!({"a": 1})).unwrap();
    let bad = [
        Query::new().matching(Filter::lt("a", true)),
        Query::new().matching(Filter::gte("a", json!([1]))),
        Query::new().matching(Filter::eq("a\"b", 1)),
        Query::new().order_by("", false),
        Query::new().after("not a cursor"),
        Query::new().matching(Filter::search("x")),
    ];
    for q in bad {
        assert!(
            matches!(store.query("items", &q), Err(Error::InvalidData(_))),
            "{q:?}"
        );
    }
    // A cursor from a query with another order.
    let p = store
        .query_page("items", &Query::new().order_by("a", false).limit(0))
        .unwrap();
    assert!(p.next.is_none());
    store.put("items", Some("y"), json!({"a": 2})).unwrap();
    let p = store
        .query_page("items", &Query::new().order_by("a", false).limit(1))
        .unwrap();
    let other = Query::new().order_by("a", true).after(p.next.unwrap());
    assert!(
        matches!(store.query("items", &other), Err(Error::InvalidData(m)) if m.contains("another order"))
    );
}

// ---- indexes ----

fn index_names(path: &std::path::Path) -> Vec<String> {
    let raw = rusqlite::Connection::open(path).unwrap();
    let mut names: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names.sort();
    names
}

#[test]
fn declared_indexes_follow_the_declaration_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let store = Store::open(&path, config(false)).unwrap();
    store
        .put("items", Some("x"), json!({"a": 1, "b": "k"}))
        .unwrap();
    let before = (
        store.outbox_entries().unwrap(),
        store.query("items", &Query::new()).unwrap(),
    );
    drop(store);
    assert!(index_names(&path).is_empty());
    let store = Store::open(&path, config(true)).unwrap();
    assert_eq!(index_names(&path).len(), 3);
    assert_eq!(
        (
            store.outbox_entries().unwrap(),
            store.query("items", &Query::new()).unwrap()
        ),
        before,
        "records and the outbox are not touched"
    );
    drop(store);
    let one = StoreConfig::default()
        .with(CollectionConfig::new("items", ConflictStrategy::LastWriteWins).with_index(&["b"]));
    let store = Store::open(&path, one).unwrap();
    assert_eq!(index_names(&path), ["ix_items[\"b\"]"]);
    assert_eq!(
        store
            .query("items", &Query::new().filter("b", "k"))
            .unwrap()
            .len(),
        1
    );
    drop(store);
    let bad = StoreConfig::default()
        .with(CollectionConfig::new("items", ConflictStrategy::LastWriteWins).with_index(&[]));
    assert!(matches!(
        Store::open(&path, bad),
        Err(Error::InvalidConfig(_))
    ));
}

// ---- search ----

fn searchable() -> StoreConfig {
    StoreConfig::default().with(
        CollectionConfig::new("patients", ConflictStrategy::ServerWins)
            .with_search(&["name", "tags"]),
    )
}

fn found(store: &Store, text: &str) -> Vec<String> {
    ids(&store
        .query("patients", &Query::new().matching(Filter::search(text)))
        .unwrap())
}

#[test]
fn search_folds_case_and_diacritics_and_takes_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), searchable()).unwrap();
    store
        .put("patients", Some("p1"), json!({"name": "Amina Yusuf"}))
        .unwrap();
    store
        .put(
            "patients",
            Some("p2"),
            json!({"name": "Émile", "tags": ["fever", 3]}),
        )
        .unwrap();
    store
        .put("patients", Some("p3"), json!({"name": 42}))
        .unwrap();
    assert_eq!(found(&store, "amin*"), ["p1"]);
    assert_eq!(found(&store, "AMINA"), ["p1"]);
    assert!(
        found(&store, "amin").is_empty(),
        "whole words unless a prefix"
    );
    assert_eq!(found(&store, "emile"), ["p2"]);
    assert_eq!(
        found(&store, "fever"),
        ["p2"],
        "arrays of text are searched"
    );
    assert_eq!(
        found(&store, "yusuf amina"),
        ["p1"],
        "every word must match"
    );
    assert_eq!(found(&store, "\"unbalanced OR (").len(), 0);
    assert_eq!(found(&store, "  ").len(), 3, "no words: no constraint");
    let with_filter = Query::new().matching(Filter::search("a*").and(Filter::prefix("name", "Am")));
    assert_eq!(ids(&store.query("patients", &with_filter).unwrap()), ["p1"]);
}

// ---- observe ----

fn recorder() -> (
    Arc<dyn outpost_core::QueryListener>,
    mpsc::Receiver<Vec<String>>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let listener = move |rs: &[Record]| {
        let _ = tx.lock().unwrap().send(ids(rs));
    };
    (Arc::new(listener), rx)
}

fn quiet(rx: &mpsc::Receiver<Vec<String>>) -> bool {
    rx.recv_timeout(Duration::from_millis(300)).is_err()
}

#[test]
fn an_observer_fires_once_per_change_of_its_result_and_never_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(true).with_collection("other", ConflictStrategy::LastWriteWins);
    let store = Store::open(dir.path().join("o.db"), config).unwrap();
    for i in 0..5 {
        store
            .put("items", Some(&format!("k{i}")), json!({"a": i, "b": "in"}))
            .unwrap();
    }
    let q = Query::new().filter("b", "in").order_by("a", false).limit(3);
    let (listener, rx) = recorder();
    let _sub = store.observe("items", &q, listener).unwrap();
    let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(first, ["k0", "k1", "k2"]);
    // Irrelevant: another collection, a record the filter does not select, and a
    // matching record that sorts after the page.
    store.put("other", Some("k0"), json!({"a": -1})).unwrap();
    store
        .put("items", Some("x"), json!({"a": -1, "b": "out"}))
        .unwrap();
    store.patch("items", "k4", json!({"a": 40})).unwrap();
    assert!(quiet(&rx));
    // Relevant: a record enters the page, one in it changes, one leaves it.
    store
        .put("items", Some("new"), json!({"a": -5, "b": "in"}))
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ["new", "k0", "k1"]
    );
    assert!(quiet(&rx));
    store.patch("items", "k1", json!({"note": "seen"})).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ["new", "k0", "k1"]
    );
    assert!(quiet(&rx));
    store.patch("items", "k0", json!({"b": "out"})).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ["new", "k1", "k2"]
    );
    assert!(quiet(&rx));
}

#[test]
fn a_burst_of_commits_is_coalesced_into_paced_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("o.db"), config(true)).unwrap();
    let (listener, rx) = recorder();
    let q = Query::new().order_by("a", true).limit(5);
    let _sub = store.observe("items", &q, listener).unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().is_empty());
    let started = std::time::Instant::now();
    for i in 0..200 {
        store
            .put("items", Some(&format!("b{i:03}")), json!({"a": i}))
            .unwrap();
    }
    let elapsed = started.elapsed();
    let mut last = Vec::new();
    let mut runs = 0;
    while let Ok(r) = rx.recv_timeout(Duration::from_millis(500)) {
        runs += 1;
        last = r;
    }
    assert_eq!(
        last,
        ["b199", "b198", "b197", "b196", "b195"],
        "the last result is current"
    );
    let bound = elapsed.as_millis() / 50 + 2;
    assert!(runs as u128 <= bound, "{runs} deliveries in {elapsed:?}");
}

#[test]
fn observe_one_follows_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("o.db"), config(false)).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let listener = move |r: Option<&Record>| {
        let _ = tx.lock().unwrap().send(r.map(|r| r.data.clone()));
    };
    let _sub = store.observe_one("items", "p", Arc::new(listener)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), None);
    store.put("items", Some("q"), json!({"a": 1})).unwrap();
    store.put("items", Some("p"), json!({"a": 2})).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(got["a"], json!(2));
    store.delete("items", "p").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), None);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert!(matches!(
        store.observe_one("items", "", Arc::new(|_: Option<&Record>| {})),
        Err(Error::InvalidRecordId)
    ));
}

#[test]
fn queries_inside_a_write_see_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("w.db"), config(true)).unwrap();
    let n = store
        .batch(|tx| {
            tx.put("items", Some("a"), json!({"a": 1}))?;
            tx.put("items", Some("b"), json!({"a": 2}))?;
            let q = Query::new().matching(Filter::gt("a", 1));
            assert_eq!(ids(&tx.query("items", &q)?), ["b"]);
            tx.count_where("items", &Filter::exists("a"))
        })
        .unwrap();
    assert_eq!(n, 2);
}
