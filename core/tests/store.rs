#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of the store's record API, validation, outbox and change feed,
//! on real SQLite files.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::protocol::OpKind;
use outpost_core::{
    ChangeEvent, ChangeOrigin, ConflictStrategy, Error, Query, Store, StoreConfig, SyncState,
};
use serde_json::{Value, json};

fn config() -> StoreConfig {
    StoreConfig::default()
        .with_collection("patients", ConflictStrategy::FieldMerge)
        .with_collection("answers", ConflictStrategy::LastWriteWins)
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("device.db"), config()).unwrap()
}

#[test]
fn put_get_patch_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let r = store
        .put("patients", Some("p-1"), json!({"name": "Amina", "age": 34}))
        .unwrap();
    assert_eq!(r.version, 0);
    assert_eq!(r.sync_state, SyncState::Pending);
    let got = store.get("patients", "p-1").unwrap().unwrap();
    assert_eq!(got.data, r.data);
    let r = store
        .patch("patients", "p-1", json!({"age": 35, "village": null}))
        .unwrap();
    assert_eq!(
        Value::Object(r.data.clone()),
        json!({"name": "Amina", "age": 35, "village": null})
    );
    assert!(r.hlc > got.hlc);
    store.delete("patients", "p-1").unwrap();
    assert_eq!(store.get("patients", "p-1").unwrap(), None);
    // Created and deleted before any sync: nothing is left to upload.
    assert!(store.outbox_entries().unwrap().is_empty());
    assert_eq!(
        store.patch("patients", "p-1", json!({"a": 1})),
        Err(Error::NotFound {
            collection: "patients".into(),
            id: "p-1".into()
        })
    );
}

#[test]
fn generated_ids_are_uuid_v7() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = store.put("answers", None, json!({"q": 1})).unwrap();
    let b = store.put("answers", None, json!({"q": 2})).unwrap();
    let ua = uuid::Uuid::parse_str(&a.id).unwrap();
    assert_eq!(ua.get_version_num(), 7);
    assert!(a.id < b.id, "v7 ids sort by creation");
}

#[test]
fn every_validation_error_is_typed_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .put("patients", Some("p-1"), json!({"name": "A"}))
        .unwrap();
    let before = store.outbox_entries().unwrap();
    type Case = (Result<outpost_core::Record, Error>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (store.put("Patients", Some("x"), json!({})), |e| {
            matches!(e, Error::InvalidCollection(_))
        }),
        (store.put("visits", Some("x"), json!({})), |e| {
            matches!(e, Error::UnknownCollection(_))
        }),
        (store.put("patients", Some(""), json!({})), |e| {
            *e == Error::InvalidRecordId
        }),
        (
            store.put("patients", Some(&"x".repeat(129)), json!({})),
            |e| *e == Error::InvalidRecordId,
        ),
        (store.put("patients", Some("a\u{0}b"), json!({})), |e| {
            *e == Error::InvalidRecordId
        }),
        (store.put("patients", Some("x"), json!([1, 2])), |e| {
            matches!(e, Error::InvalidData(_))
        }),
        (store.put("patients", Some("x"), json!("text")), |e| {
            matches!(e, Error::InvalidData(_))
        }),
        (
            store.put(
                "patients",
                Some("x"),
                json!({"big": "y".repeat(1024 * 1024)}),
            ),
            |e| matches!(e, Error::InvalidData(_)),
        ),
        (
            store.put(
                "patients",
                Some("x"),
                json!({"c": {"$crdt": "gcounter", "p": 5}}),
            ),
            |e| matches!(e, Error::Crdt(_)),
        ),
        (store.patch("patients", "p-1", json!(3)), |e| {
            matches!(e, Error::InvalidData(_))
        }),
        (store.patch("patients", "nope", json!({"a": 1})), |e| {
            matches!(e, Error::NotFound { .. })
        }),
        (store.increment("patients", "p-1", "name", 1), |e| {
            matches!(e, Error::Crdt(_))
        }),
    ];
    for (i, (res, check)) in cases.into_iter().enumerate() {
        let err = res.expect_err(&format!("case {i} should fail"));
        assert!(check(&err), "case {i}: unexpected {err:?}");
    }
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!({ "d": deep });
    }
    assert!(matches!(
        store.put("patients", Some("x"), deep),
        Err(Error::InvalidData(_))
    ));
    assert!(matches!(
        store.delete("patients", "nope"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.query("patients", &Query::new().filter("a\"b", 1)),
        Err(Error::InvalidData(_))
    ));
    assert_eq!(store.outbox_entries().unwrap(), before);
    assert_eq!(store.count("patients", &[]).unwrap(), 1);
}

#[test]
fn query_filters_order_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .batch(|tx| {
            for i in 0..20 {
                tx.put(
                    "answers",
                    Some(&format!("a{i:02}")),
                    json!({"survey": if i % 2 == 0 { "s1" } else { "s2" }, "score": i, "done": i < 5,
                           "tag": if i == 3 { json!(3) } else { json!("3") }}),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let q = Query::new()
        .filter("survey", "s1")
        .order_by("score", true)
        .limit(3)
        .offset(1);
    let ids: Vec<_> = store
        .query("answers", &q)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a16", "a14", "a12"]);
    assert_eq!(
        store
            .count("answers", &[("done".into(), json!(true))])
            .unwrap(),
        5
    );
    assert_eq!(
        store.count("answers", &[("tag".into(), json!(3))]).unwrap(),
        1
    );
    assert_eq!(
        store
            .count("answers", &[("tag".into(), json!("3"))])
            .unwrap(),
        19
    );
    assert_eq!(
        store
            .count("answers", &[("score".into(), json!(1))])
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .count("answers", &[("missing".into(), Value::Null)])
            .unwrap(),
        0
    );
    store.delete("answers", "a00").unwrap();
    assert_eq!(store.count("answers", &[]).unwrap(), 19);
    let all = store.query("answers", &Query::new()).unwrap();
    assert_eq!(all.first().unwrap().id, "a01");
}

#[test]
fn a_batch_commits_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let res: Result<(), Error> = store.batch(|tx| {
        for i in 0..40 {
            tx.put("answers", Some(&format!("q{i}")), json!({"answer": i}))?;
        }
        tx.put("answers", Some(""), json!({}))?; // the 41st fails
        Ok(())
    });
    assert_eq!(res, Err(Error::InvalidRecordId));
    assert_eq!(store.count("answers", &[]).unwrap(), 0);
    assert!(store.outbox_entries().unwrap().is_empty());
    store
        .batch(|tx| {
            for i in 0..40 {
                tx.put("answers", Some(&format!("q{i}")), json!({"answer": i}))?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(store.count("answers", &[]).unwrap(), 40);
    assert_eq!(store.outbox_entries().unwrap().len(), 40);
}

#[test]
fn crdt_operations_go_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .put("patients", Some("p"), json!({"name": "A"}))
        .unwrap();
    store.increment("patients", "p", "visits", 2).unwrap();
    store.increment("patients", "p", "visits", 3).unwrap();
    store
        .set_register("patients", "p", "status", json!("seen"))
        .unwrap();
    store.set_add("patients", "p", "tags", "diabetic").unwrap();
    store.set_add("patients", "p", "tags", "smoker").unwrap();
    let r = store.set_remove("patients", "p", "tags", "smoker").unwrap();
    let visits = outpost_core::crdt::Crdt::from_json(&r.data["visits"]).unwrap();
    assert_eq!(visits.value(), json!(5));
    let tags = outpost_core::crdt::Crdt::from_json(&r.data["tags"]).unwrap();
    assert_eq!(tags.value(), json!(["diabetic"]));
    // All coalesced into the never-sent create.
    let entries = store.outbox_entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, OpKind::Put);
    assert_eq!(
        entries[0].data.as_ref().unwrap()["visits"],
        r.data["visits"]
    );
}

#[test]
fn change_feed_reports_each_commit_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (tx, rx) = mpsc::channel::<ChangeEvent>();
    let tx = Mutex::new(tx);
    let _sub = store
        .subscribe(Arc::new(move |e: &ChangeEvent| {
            tx.lock().unwrap().send(e.clone()).unwrap();
        }))
        .unwrap();
    store.put("patients", Some("a"), json!({})).unwrap();
    let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e.origin, ChangeOrigin::Local);
    assert_eq!(e.collections.iter().collect::<Vec<_>>(), ["patients"]);
    store
        .batch(|tx| {
            tx.put("answers", Some("q1"), json!({}))?;
            tx.put("answers", Some("q2"), json!({}))
        })
        .unwrap();
    let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e.records.len(), 2);
    assert_eq!(e.commits, 1);
    // A failed write commits nothing and announces nothing.
    let _ = store.put("answers", Some(""), json!({}));
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn a_slow_listener_never_blocks_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let seen2 = Arc::clone(&seen);
    let _sub = store
        .subscribe(Arc::new(move |e: &ChangeEvent| {
            std::thread::sleep(Duration::from_millis(200));
            seen2
                .lock()
                .unwrap()
                .extend(e.records.iter().map(|r| r.id.clone()));
        }))
        .unwrap();
    let start = std::time::Instant::now();
    for i in 0..50 {
        store
            .put("answers", Some(&format!("q{i}")), json!({"i": i}))
            .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "writes waited on the listener"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        50,
        "every change reached the listener"
    );
}

#[test]
fn close_stops_everything_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("patients", Some("a"), json!({})).unwrap();
    store.close();
    assert_eq!(store.get("patients", "a"), Err(Error::Closed));
    assert_eq!(
        store.put("patients", Some("b"), json!({})).map(|_| ()),
        Err(Error::Closed)
    );
    let store = open(&dir);
    assert!(store.get("patients", "a").unwrap().is_some());
}

#[test]
fn hlc_never_goes_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = outpost_core::clock::FakeClock::new(10_000);
    let store = Store::open_with_clock(dir.path().join("d.db"), config(), clock.clone()).unwrap();
    let a = store.put("patients", Some("a"), json!({})).unwrap();
    drop(store);
    clock.set(5_000); // the device clock was set back
    let store = Store::open_with_clock(dir.path().join("d.db"), config(), clock).unwrap();
    let b = store.put("patients", Some("b"), json!({})).unwrap();
    assert!(b.hlc > a.hlc);
}

#[test]
fn durability_normal_opens_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        durability: outpost_core::Durability::Normal,
        ..config()
    };
    let store = Store::open(dir.path().join("n.db"), cfg).unwrap();
    store.put("patients", Some("a"), json!({})).unwrap();
    assert_eq!(store.count("patients", &[]).unwrap(), 1);
}
