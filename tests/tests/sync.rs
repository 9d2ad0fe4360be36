#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end sync: devices on real database files against the real server binary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::protocol::{
    Change, HealthResponse, JsonObject, PullResponse, PushRequest, PushResponse,
};
use outpost_core::transport::{BoxFuture, PullParams};
use outpost_core::{
    Conflict, ConflictListener, EntryState, Query, Resolution, StaticToken, Store, SyncEngine,
    SyncOutcome, SyncState, TokenProvider, Transport, TransportError,
};
use outpost_testkit::{AMINA, BEN, Backend, CHIOMA, Fault, TestServer};
use outpost_tests::{Device, store_config, sync_config};
use serde_json::{Value, json};

fn snapshot(store: &Store, collection: &str) -> BTreeMap<String, Value> {
    store
        .query(collection, &Query::new())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, Value::Object(r.data)))
        .collect()
}

fn pause() {
    // Separates HLC stamps of writes on different devices by wall-clock time.
    std::thread::sleep(Duration::from_millis(5));
}

async fn synced_pair(server: &TestServer, dir: &std::path::Path) -> (Device, Device) {
    let a = Device::open(dir, "a", server, AMINA);
    let b = Device::open(dir, "b", server, BEN);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_then_sync_gives_the_union_and_deltas() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    a.engine.set_network_available(false);
    b.engine.set_network_available(false);
    for i in 0..30 {
        a.store
            .put(
                "answers",
                Some(&format!("a{i}")),
                json!({"by": "a", "i": i}),
            )
            .unwrap();
        b.store
            .put(
                "answers",
                Some(&format!("b{i}")),
                json!({"by": "b", "i": i}),
            )
            .unwrap();
    }
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Offline);
    assert_eq!(a.link.requests(), 0);
    a.engine.set_network_available(true);
    b.engine.set_network_available(true);
    let r = a.sync_until_quiet().await;
    assert_eq!((r.outcome, r.applied), (SyncOutcome::Completed, 30));
    b.sync_until_quiet().await;
    let r = a.sync_until_quiet().await;
    assert_eq!(r.pulled, 30, "a pulls exactly b's answers");
    let sa = snapshot(&a.store, "answers");
    assert_eq!(sa.len(), 60);
    assert_eq!(sa, snapshot(&b.store, "answers"));
    for r in a.store.query("answers", &Query::new()).unwrap() {
        assert_eq!((r.sync_state, r.version), (SyncState::Synced, 1));
    }
    // A fresh device sees the same union: that is the server's state.
    let c = Device::open(dir.path(), "c", &server, BEN);
    c.sync_until_quiet().await;
    assert_eq!(snapshot(&c.store, "answers"), sa);

    // Delta: a second sync pulls only what changed since.
    b.store.patch("answers", "b1", json!({"i": 100})).unwrap();
    b.store
        .put("answers", Some("b-new"), json!({"by": "b"}))
        .unwrap();
    b.sync_until_quiet().await;
    let r = a.sync_until_quiet().await;
    assert_eq!(r.pulled, 2);
    assert_eq!(
        a.store.get("answers", "b1").unwrap().unwrap().data["i"],
        json!(100)
    );
    let r = a.sync_until_quiet().await;
    assert_eq!((r.pulled, r.pushed), (0, 0));
}

/// Both devices hold `id` synced; each then edits it offline, `first` syncs first.
async fn conflict_setup(
    a: &Device,
    b: &Device,
    collection: &str,
    id: &str,
    base: Value,
    edit_a: Value,
    edit_b: Value,
) {
    a.store.put(collection, Some(id), base).unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    assert!(b.store.get(collection, id).unwrap().is_some());
    a.store.patch(collection, id, edit_a).unwrap();
    pause();
    b.store.patch(collection, id, edit_b).unwrap();
    // b wrote last (larger HLC) and syncs first; a then runs into the conflict.
    b.sync_until_quiet().await;
    let r = a.sync_until_quiet().await;
    assert!(r.conflicts >= 1, "a saw no conflict: {r:?}");
    b.sync_until_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_settles_a_two_device_conflict() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;

    // field_merge: disjoint fields merge; a field changed on both sides goes to the later edit.
    conflict_setup(
        &a,
        &b,
        "patients",
        "p1",
        json!({"name": "Amina", "age": 30, "village": "Kole", "status": "new"}),
        json!({"age": 31, "status": "seen-by-a"}),
        json!({"village": "Mbale", "status": "seen-by-b"}),
    )
    .await;
    let want = json!({"name": "Amina", "age": 31, "village": "Mbale", "status": "seen-by-b"});
    assert_eq!(
        Value::Object(a.store.get("patients", "p1").unwrap().unwrap().data),
        want
    );
    assert_eq!(
        Value::Object(b.store.get("patients", "p1").unwrap().unwrap().data),
        want
    );
    let log = a.store.conflict_log().unwrap();
    let c = log.iter().find(|c| c.record_id == "p1").unwrap();
    assert_eq!(c.outcome, "merged");
    assert_eq!(
        c.local.as_ref().unwrap()["status"],
        json!("seen-by-a"),
        "the losing value is logged"
    );

    // last_write_wins: b's later edit wins on both devices; a's version is in a's log.
    conflict_setup(
        &a,
        &b,
        "answers",
        "q1",
        json!({"v": 0}),
        json!({"v": "a"}),
        json!({"v": "b"}),
    )
    .await;
    assert_eq!(
        a.store.get("answers", "q1").unwrap().unwrap().data["v"],
        json!("b")
    );
    assert_eq!(
        b.store.get("answers", "q1").unwrap().unwrap().data["v"],
        json!("b")
    );
    let c = a
        .store
        .conflict_log()
        .unwrap()
        .into_iter()
        .find(|c| c.record_id == "q1")
        .unwrap();
    assert_eq!(
        (c.outcome.as_str(), c.local.unwrap()["v"].clone()),
        ("remote", json!("a"))
    );

    // server_wins: a loses although its edit is the one the server sees last.
    conflict_setup(
        &a,
        &b,
        "server_side",
        "s1",
        json!({"v": 0}),
        json!({"v": "a"}),
        json!({"v": "b"}),
    )
    .await;
    assert_eq!(
        a.store.get("server_side", "s1").unwrap().unwrap().data["v"],
        json!("b")
    );
    let c = a
        .store
        .conflict_log()
        .unwrap()
        .into_iter()
        .find(|c| c.record_id == "s1")
        .unwrap();
    assert_eq!(
        (c.outcome.as_str(), c.local.unwrap()["v"].clone()),
        ("remote", json!("a"))
    );

    // client_wins: a's edit is forced through and reaches b.
    conflict_setup(
        &a,
        &b,
        "client_side",
        "k1",
        json!({"v": 0}),
        json!({"v": "a"}),
        json!({"v": "b"}),
    )
    .await;
    assert_eq!(
        a.store.get("client_side", "k1").unwrap().unwrap().data["v"],
        json!("a")
    );
    assert_eq!(
        b.store.get("client_side", "k1").unwrap().unwrap().data["v"],
        json!("a")
    );
    let c = a
        .store
        .conflict_log()
        .unwrap()
        .into_iter()
        .find(|c| c.record_id == "k1")
        .unwrap();
    assert_eq!(
        (c.outcome.as_str(), c.remote.unwrap()["v"].clone()),
        ("local", json!("b"))
    );
}

struct Collect(Mutex<Vec<Conflict>>);
impl ConflictListener for Collect {
    fn on_conflict(&self, c: &Conflict) -> Result<(), String> {
        self.0.lock().unwrap().push(c.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_conflict_calls_the_app_and_resolve_converges() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    let seen = Arc::new(Collect(Mutex::new(Vec::new())));
    a.engine.set_conflict_listener(Some(seen.clone()));
    a.store
        .put(
            "reviews",
            Some("r1"),
            json!({"verdict": "pending", "notes": ""}),
        )
        .unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    a.store
        .patch("reviews", "r1", json!({"verdict": "approve"}))
        .unwrap();
    b.store
        .patch(
            "reviews",
            "r1",
            json!({"verdict": "reject", "notes": "dose"}),
        )
        .unwrap();
    b.sync_until_quiet().await;
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.conflicts, 1);
    let rec = a.store.get("reviews", "r1").unwrap().unwrap();
    assert_eq!(rec.sync_state, SyncState::Conflicted);
    assert_eq!(
        rec.data["verdict"],
        json!("approve"),
        "the local data keeps showing"
    );
    let open = a.engine.conflicts().unwrap();
    assert_eq!(open.len(), 1);
    let c = &open[0];
    assert_eq!(c.base.as_ref().unwrap()["verdict"], json!("pending"));
    assert_eq!(c.local.as_ref().unwrap()["verdict"], json!("approve"));
    assert_eq!(c.remote.as_ref().unwrap()["verdict"], json!("reject"));
    for _ in 0..100 {
        if !seen.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.0.lock().unwrap().len(), 1, "the app was told");
    // Edits made while the conflict is open wait behind it.
    a.store
        .patch("reviews", "r1", json!({"notes": "checked"}))
        .unwrap();
    a.engine.sync_now(None).await;
    assert_eq!(
        a.store.get("reviews", "r1").unwrap().unwrap().sync_state,
        SyncState::Conflicted
    );

    let mut merged = JsonObject::new();
    merged.insert("verdict".into(), json!("reject"));
    merged.insert("notes".into(), json!("dose; checked"));
    a.engine
        .resolve(c.id, Resolution::Merged(merged.clone()))
        .unwrap();
    assert!(a.engine.conflicts().unwrap().is_empty());
    assert!(matches!(
        a.engine.resolve(c.id, Resolution::KeepLocal),
        Err(outpost_core::Error::NotFound { .. })
    ));
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    for d in [&a, &b] {
        let r = d.store.get("reviews", "r1").unwrap().unwrap();
        assert_eq!(
            (Value::Object(r.data), r.sync_state),
            (Value::Object(merged.clone()), SyncState::Synced)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_counter_increments_sum() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    a.store
        .put("patients", Some("p"), json!({"name": "A"}))
        .unwrap();
    a.store.increment("patients", "p", "visits", 1).unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    a.engine.set_network_available(false);
    b.engine.set_network_available(false);
    for _ in 0..5 {
        a.store.increment("patients", "p", "visits", 1).unwrap();
    }
    for _ in 0..7 {
        b.store.increment("patients", "p", "visits", 1).unwrap();
    }
    b.store.increment("patients", "p", "visits", -2).unwrap();
    a.engine.set_network_available(true);
    b.engine.set_network_available(true);
    let ra = a.sync_until_quiet().await;
    let rb = b.sync_until_quiet().await;
    a.sync_until_quiet().await;
    assert_eq!(
        ra.conflicts + rb.conflicts,
        0,
        "CRDT-only edits never conflict"
    );
    for d in [&a, &b] {
        let v = d.store.get("patients", "p").unwrap().unwrap().data["visits"].clone();
        assert_eq!(
            outpost_core::crdt::Crdt::from_json(&v).unwrap().value(),
            json!(11)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_one_device_while_the_other_edits() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    for id in ["d1", "d2", "d3"] {
        a.store.put("answers", Some(id), json!({"v": 0})).unwrap();
    }
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    // d1 and d2: the delete is the later edit and wins; d3: the edit is later and wins.
    b.store.patch("answers", "d1", json!({"v": "b"})).unwrap();
    a.store.patch("answers", "d2", json!({"v": "a"})).unwrap();
    a.store.delete("answers", "d3").unwrap();
    pause();
    a.store.delete("answers", "d1").unwrap();
    b.store.delete("answers", "d2").unwrap();
    b.store.patch("answers", "d3", json!({"v": "b"})).unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    a.sync_until_quiet().await;
    for d in [&a, &b] {
        assert_eq!(d.store.get("answers", "d1").unwrap(), None);
        assert_eq!(d.store.get("answers", "d2").unwrap(), None);
        assert_eq!(
            d.store.get("answers", "d3").unwrap().unwrap().data["v"],
            json!("b")
        );
    }
    let logged: Vec<_> = b
        .store
        .conflict_log()
        .unwrap()
        .into_iter()
        .map(|c| c.record_id)
        .collect();
    assert!(logged.contains(&"d1".to_owned()) && logged.contains(&"d2".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_response_is_resent_and_applied_once() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    a.store.put("answers", Some("x"), json!({"v": 1})).unwrap();
    a.store.increment("answers", "x", "n", 1).unwrap();
    let op_id = a.store.outbox_entries().unwrap()[0].op_id.clone();
    a.link.fail_next_push(Fault::DropResponse);
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::BackingOff);
    let e = &a.store.outbox_entries().unwrap()[0];
    assert_eq!(
        (e.state, e.op_id.as_str(), e.attempts),
        (EntryState::Pending, op_id.as_str(), 1)
    );
    a.sync_until_quiet().await;
    let rec = a.store.get("answers", "x").unwrap().unwrap();
    assert_eq!(
        rec.version, 1,
        "applied once: a second effect would make version 2"
    );
    b.sync_until_quiet().await;
    let v = b.store.get("answers", "x").unwrap().unwrap().data["n"].clone();
    assert_eq!(
        outpost_core::crdt::Crdt::from_json(&v).unwrap().value(),
        json!(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_and_retry_after_is_honoured() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    a.store.put("answers", Some("x"), json!({})).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };

    a.link.fail_next_push(Fault::ServerError);
    let before = now();
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::BackingOff);
    let e = a.store.outbox_entries().unwrap().remove(0);
    let wait = e.next_attempt_at_ms - before;
    // First retry: 200 ms initial backoff, half of it jittered.
    assert!((100..=400).contains(&wait), "first backoff {wait} ms");
    assert_eq!(e.last_error.unwrap().code, "internal");
    assert!(a.engine.status().next_retry_at_ms.is_some());
    // Not due yet: a sync right now sends nothing.
    let pushes = a.link.stats().push.calls;
    a.engine.sync_now(None).await;
    assert_eq!(a.link.stats().push.calls, pushes);

    tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
    a.link.fail_next_push(Fault::ServerError);
    let before = now();
    a.engine.sync_now(None).await;
    let e = a.store.outbox_entries().unwrap().remove(0);
    let wait2 = e.next_attempt_at_ms - before;
    assert!(
        (200..=600).contains(&wait2),
        "second backoff doubles: {wait2} ms"
    );

    tokio::time::sleep(Duration::from_millis(wait2 as u64 + 50)).await;
    a.link
        .fail_next_push(Fault::RateLimited(Duration::from_secs(5)));
    let before = now();
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::BackingOff);
    let e = a.store.outbox_entries().unwrap().remove(0);
    assert!(
        e.next_attempt_at_ms - before >= 4_900,
        "Retry-After: 5 s is honoured"
    );
    assert_eq!(e.last_error.unwrap().code, "rate_limited");
    // The backoff survives a restart of the app.
    drop(a);
    let a = Device::open(dir.path(), "a", &server, AMINA);
    let r = a.engine.sync_now(None).await;
    assert_eq!((r.pushed, r.outcome), (0, SyncOutcome::Completed));
    assert_eq!(a.store.outbox_counts().unwrap().pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_op_fails_alone_and_can_be_retried() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    let c = Device::open(dir.path(), "c", &server, CHIOMA);
    a.store
        .put("answers", Some("north-1"), json!({"team": "north"}))
        .unwrap();
    a.sync_until_quiet().await;
    // chioma (team south) writes a counter past the server's cap of CRDT entries: the
    // server refuses it for good. Her record with team north's id is her own.
    let over: JsonObject = (0..10_001).map(|i| (format!("r{i}"), json!(1))).collect();
    c.store
        .put(
            "answers",
            Some("too-big"),
            json!({"n": {"$crdt": "gcounter", "p": over}}),
        )
        .unwrap();
    c.store
        .put("answers", Some("north-1"), json!({"team": "south"}))
        .unwrap();
    let r = c.engine.sync_now(None).await;
    assert_eq!((r.applied, r.rejected), (1, 1));
    let failed = c.store.failed_entries().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].record_id, "too-big");
    assert_eq!(
        failed[0].last_error.as_ref().unwrap().code,
        "invalid_request"
    );
    let rec = c.store.get("answers", "too-big").unwrap().unwrap();
    assert_eq!(rec.sync_state, SyncState::Failed);
    assert_eq!(rec.data["n"]["p"].as_object().unwrap().len(), 10_001);
    assert_eq!(c.engine.status().failed, 1);
    // A later edit of the same record waits behind the failed one.
    c.store
        .patch("answers", "too-big", json!({"more": 1}))
        .unwrap();
    let r = c.engine.sync_now(None).await;
    assert_eq!(r.pushed, 0);
    assert_eq!(c.engine.retry_failed().unwrap(), 1);
    let r = c.engine.sync_now(None).await;
    assert_eq!(
        (r.pushed, r.rejected),
        (1, 1),
        "retried, and rejected again"
    );
    assert_eq!(c.store.failed_entries().unwrap()[0].attempts, 2);
    // Amina's record is untouched.
    let r = a.sync_until_quiet().await;
    assert_eq!(r.pulled, 0);
    assert_eq!(
        a.store.get("answers", "north-1").unwrap().unwrap().data["team"],
        json!("north")
    );
}

/// A server whose work budget lets a push process only its first op answers the rest
/// `deferred`: the engine sends them again at once, in the same sync, with nothing
/// failed, retried after a backoff or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_ops_go_out_again_at_once_and_are_no_failure() {
    let server = TestServer::start_with(&Backend::Sqlite, "push_budget_ms = 0");
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    for i in 0..6 {
        a.store
            .put("answers", Some(&format!("d{i}")), json!({"i": i}))
            .unwrap();
    }
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    assert_eq!((r.applied, r.rejected, r.conflicts), (6, 0, 0));
    // 6 ops, then the 5 deferred, then 4, ...: one applied per request.
    assert_eq!(a.link.push_sizes(), [6, 5, 4, 3, 2, 1]);
    assert_eq!(r.pushed, 21);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let counts = a.store.outbox_counts().unwrap();
    assert_eq!((counts.pending, counts.syncing, counts.failed), (0, 0, 0));
    for rec in a.store.query("answers", &Query::new()).unwrap() {
        assert_eq!((rec.sync_state, rec.version), (SyncState::Synced, 1));
    }
    let status = a.engine.status();
    assert_eq!((status.failed, status.last_error.as_deref()), (0, None));
    let (changes, _) = server.pull_all(AMINA, "").await;
    assert_eq!(changes.len(), 6);
}

/// Regression: after one push was refused as a whole, every later request of the
/// sync carried a single op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_push_batches_are_full_again() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let mut config = sync_config();
    config.batch.max_ops = 5;
    let tokens = Arc::new(outpost_core::StaticToken(AMINA.into()));
    let a = Device::open_with(dir.path(), "a", &server, tokens, config);
    a.store
        .batch(|tx| {
            for i in 0..10 {
                tx.put("answers", Some(&format!("a{i}")), json!({"i": i}))?;
            }
            Ok(())
        })
        .unwrap();
    a.link.fail_next_push(Fault::Refused);
    let r = a.engine.sync_now(Some(Duration::from_secs(30))).await;
    assert_eq!(
        (r.outcome, r.applied),
        (SyncOutcome::Completed, 10),
        "{r:?}"
    );
    // The refused five are tried one at a time; the rest go as one batch again.
    assert_eq!(a.link.push_sizes(), [5, 1, 1, 1, 1, 1, 5]);
}

struct Rotating {
    calls: Mutex<Vec<bool>>,
    refreshed: &'static str,
}
impl TokenProvider for Rotating {
    fn token(&self, refresh: bool) -> Result<String, String> {
        self.calls.lock().unwrap().push(refresh);
        Ok(if refresh {
            self.refreshed.to_owned()
        } else {
            "expired-token".to_owned()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_asks_for_a_fresh_token_once() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let good = Arc::new(Rotating {
        calls: Mutex::new(Vec::new()),
        refreshed: AMINA,
    });
    let a = Device::open_with(dir.path(), "a", &server, good.clone(), sync_config());
    a.store.put("answers", Some("x"), json!({})).unwrap();
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Completed);
    assert_eq!(*good.calls.lock().unwrap(), [false, true]);

    let bad = Arc::new(Rotating {
        calls: Mutex::new(Vec::new()),
        refreshed: "still-wrong",
    });
    let b = Device::open_with(dir.path(), "b", &server, bad.clone(), sync_config());
    b.store.put("answers", Some("y"), json!({})).unwrap();
    let r = b.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::AuthFailed);
    assert_eq!(*bad.calls.lock().unwrap(), [false, true]);
    assert_eq!(
        b.engine.status().activity,
        outpost_core::SyncActivity::AuthError
    );
    let e = b.store.outbox_entries().unwrap();
    assert_eq!(
        (e.len(), e[0].state),
        (1, EntryState::Pending),
        "the data stays queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_deadline_mid_push_and_mid_pull_lose_nothing() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    for i in 0..5 {
        a.store
            .put("answers", Some(&format!("c{i}")), json!({"i": i}))
            .unwrap();
    }
    // Cancel while the push waits for its answer, after the server committed.
    a.link
        .fail_next_push(Fault::DelayAfter(Duration::from_secs(3)));
    let engine = a.engine.clone();
    let sync = tokio::spawn(async move { engine.sync_now(None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.engine.cancel();
    let r = sync.await.unwrap();
    assert_eq!(r.outcome, SyncOutcome::Cancelled);
    assert!(
        a.store
            .outbox_entries()
            .unwrap()
            .iter()
            .all(|e| e.state == EntryState::Pending)
    );
    // Deadline mid-push, before the server sees the request.
    a.link.fail_next_push(Fault::Delay(Duration::from_secs(3)));
    let r = a.engine.sync_now(Some(Duration::from_millis(300))).await;
    assert_eq!(r.outcome, SyncOutcome::DeadlineExceeded);
    a.sync_until_quiet().await;
    for r in a.store.query("answers", &Query::new()).unwrap() {
        assert_eq!(
            (r.version, r.sync_state),
            (1, SyncState::Synced),
            "{}: one effect",
            r.id
        );
    }
    // Cancel and deadline mid-pull.
    b.link.fail_next_pull(Fault::Delay(Duration::from_secs(3)));
    let engine = b.engine.clone();
    let sync = tokio::spawn(async move { engine.sync_now(None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.engine.cancel();
    assert_eq!(sync.await.unwrap().outcome, SyncOutcome::Cancelled);
    b.link
        .fail_next_pull(Fault::DelayAfter(Duration::from_secs(3)));
    let r = b.engine.sync_now(Some(Duration::from_millis(300))).await;
    assert_eq!(r.outcome, SyncOutcome::DeadlineExceeded);
    b.sync_until_quiet().await;
    assert_eq!(snapshot(&b.store, "answers"), snapshot(&a.store, "answers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_calls_join_one_run() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    a.store.put("answers", Some("x"), json!({})).unwrap();
    a.link
        .fail_next_push(Fault::Delay(Duration::from_millis(300)));
    let (r1, r2) = tokio::join!(a.engine.sync_now(None), a.engine.sync_now(None));
    assert_eq!(r1, r2);
    assert_eq!(a.link.stats().push.calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_expired_repulls_and_keeps_pending_edits() {
    // Tombstones are purged about a second after the delete.
    let server = TestServer::start_with(
        &Backend::Sqlite,
        "tombstone_retention_days = 0.00001\npurge_interval_secs = 0.2",
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    for id in ["keep", "gone", "edited"] {
        a.store.put("answers", Some(id), json!({"v": 0})).unwrap();
    }
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    // b deletes "gone"; the tombstone is purged before a pulls again.
    b.store.delete("answers", "gone").unwrap();
    b.sync_until_quiet().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // a has local edits that cannot go out yet: the push fails and backs off, so they
    // are still pending while the next sync's pull runs into cursor_expired.
    a.store
        .patch("answers", "edited", json!({"v": "local"}))
        .unwrap();
    a.store
        .put("answers", Some("new"), json!({"v": "new"}))
        .unwrap();
    a.link.fail_next_push(Fault::ServerError);
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::BackingOff);
    let r = a.engine.sync_now(None).await;
    assert_eq!((r.outcome, r.pushed), (SyncOutcome::Completed, 0), "{r:?}");
    assert!(r.repulls >= 1, "the pull ran into cursor_expired: {r:?}");
    assert_eq!(
        a.store.get("answers", "gone").unwrap(),
        None,
        "dropped by the re-pull"
    );
    assert_eq!(
        a.store.get("answers", "edited").unwrap().unwrap().data["v"],
        json!("local")
    );
    assert!(a.store.get("answers", "new").unwrap().is_some());
    assert_eq!(
        a.store.outbox_counts().unwrap().pending,
        2,
        "pending edits are kept"
    );
    a.sync_until_quiet().await;
    assert_eq!(
        a.store.get("answers", "keep").unwrap().unwrap().data["v"],
        json!(0)
    );
    b.sync_until_quiet().await;
    for d in [&a, &b] {
        assert_eq!(
            d.store.get("answers", "edited").unwrap().unwrap().data["v"],
            json!("local")
        );
        assert_eq!(
            d.store.get("answers", "new").unwrap().unwrap().data["v"],
            json!("new")
        );
    }
    assert_eq!(snapshot(&a.store, "answers"), snapshot(&b.store, "answers"));
}

/// Regression (found by the simulation): a pull that arrives while the device's own edit
/// is in flight must not be lost when the edit's answer is a replayed `applied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_server_state_pulled_during_an_edit_in_flight_is_kept() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    a.store.put("answers", Some("x"), json!({"v": 0})).unwrap();
    a.store.increment("answers", "x", "n", 1).unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    // a's increment reaches the server, but its answer is lost: it stays pending.
    a.store.increment("answers", "x", "n", 1).unwrap();
    a.link.fail_next_push(Fault::DropResponse);
    assert_eq!(
        a.engine.sync_now(None).await.outcome,
        SyncOutcome::BackingOff
    );
    // b changes x after that.
    b.store.increment("answers", "x", "n", 10).unwrap();
    b.store.patch("answers", "x", json!({"v": "b"})).unwrap();
    b.sync_until_quiet().await;
    // a pulls while its edit waits out the backoff (the pull skips x), then resends and
    // gets the first answer again.
    let r = a.engine.sync_now(None).await;
    assert_eq!((r.outcome, r.pushed), (SyncOutcome::Completed, 0));
    a.sync_until_quiet().await;
    let rec = a.store.get("answers", "x").unwrap().unwrap();
    assert_eq!(rec.data["v"], json!("b"), "the newer server state was kept");
    let n = outpost_core::crdt::Crdt::from_json(&rec.data["n"])
        .unwrap()
        .value();
    assert_eq!(n, json!(12));
    assert_eq!(snapshot(&a.store, "answers"), snapshot(&b.store, "answers"));
}

/// Regression (found by the demo): merged results go out unforced, so two devices
/// merging against the same server state cannot overwrite each other's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_merging_one_record_keep_every_field() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    let c = Device::open(dir.path(), "c", &server, BEN);
    a.store
        .put(
            "patients",
            Some("p"),
            json!({"phone": "1", "village": "Kole"}),
        )
        .unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    c.sync_until_quiet().await;
    a.store
        .patch("patients", "p", json!({"phone": "2"}))
        .unwrap();
    b.store
        .patch("patients", "p", json!({"village": "Mbale"}))
        .unwrap();
    c.store.increment("patients", "p", "visits", 1).unwrap();
    c.sync_until_quiet().await;
    // a merges against c's version, but its merged result does not get out yet...
    a.link.fail_next_push(Fault::Delay(Duration::ZERO));
    a.link.fail_next_push(Fault::DropRequest);
    assert_eq!(a.engine.sync_now(None).await.conflicts, 1);
    // ...while b merges against the same version and gets there first.
    b.sync_until_quiet().await;
    a.sync_until_quiet().await;
    for d in [&a, &b, &c] {
        d.sync_until_quiet().await;
    }
    let want = b.store.get("patients", "p").unwrap().unwrap().data;
    assert_eq!(
        (want["phone"].clone(), want["village"].clone()),
        (json!("2"), json!("Mbale"))
    );
    for d in [&a, &c] {
        assert_eq!(d.store.get("patients", "p").unwrap().unwrap().data, want);
    }
}

/// Regression (found by the demo): a last-write-wins winner resent after a conflict keeps
/// its own stamp, so a later edit from a third device still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_winner_keeps_its_stamp() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    let c = Device::open(dir.path(), "c", &server, BEN);
    a.store
        .put("answers", Some("scan"), json!({"by": "nobody"}))
        .unwrap();
    a.sync_until_quiet().await;
    b.sync_until_quiet().await;
    c.sync_until_quiet().await;
    a.store
        .patch("answers", "scan", json!({"by": "a"}))
        .unwrap();
    pause();
    b.store
        .patch("answers", "scan", json!({"by": "b"}))
        .unwrap();
    pause();
    c.store
        .patch("answers", "scan", json!({"by": "c"}))
        .unwrap(); // the last edit
    a.sync_until_quiet().await;
    b.sync_until_quiet().await; // b beats a and resends its version
    c.sync_until_quiet().await; // c's later edit must still win
    for d in [&a, &b, &c] {
        d.sync_until_quiet().await;
    }
    for d in [&a, &b, &c] {
        assert_eq!(
            d.store.get("answers", "scan").unwrap().unwrap().data["by"],
            json!("c")
        );
    }
}

/// A server that answers a pull of `answers` with one more change, of `patients`:
/// what a broken proxy or a server bug would send.
#[derive(Debug)]
struct ForeignChange(Arc<dyn Transport>);

impl Transport for ForeignChange {
    fn health(&self) -> BoxFuture<'_, Result<HealthResponse, TransportError>> {
        self.0.health()
    }

    fn push<'a>(
        &'a self,
        token: &'a str,
        request: &'a PushRequest,
    ) -> BoxFuture<'a, Result<PushResponse, TransportError>> {
        self.0.push(token, request)
    }

    fn pull<'a>(
        &'a self,
        token: &'a str,
        params: &'a PullParams,
    ) -> BoxFuture<'a, Result<PullResponse, TransportError>> {
        Box::pin(async move {
            let mut page = self.0.pull(token, params).await?;
            if params.collections == ["answers"] {
                page.changes.push(Change {
                    collection: "patients".into(),
                    record_id: "intruder".into(),
                    version: 1,
                    seq: 1,
                    deleted: false,
                    data: json!({"name": "not asked for"}).as_object().cloned(),
                    hlc: "1700000000000-00000-elsewhere".into(),
                    updated_at: "2026-01-01T00:00:00.000Z".into(),
                });
            }
            Ok(page)
        })
    }
}

/// The engine asks for one collection per pull. A page holding a change of another
/// is not what it asked for: applying or skipping that change would both be guesses,
/// so the sync stops as failed (not backing off, as a network fault would) and says
/// the server is at fault; nothing of the page is applied and the cursor stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_page_with_a_change_not_asked_for_stops_the_sync() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    a.store.put("answers", Some("q1"), json!({"v": 1})).unwrap();
    a.store
        .put("patients", Some("p1"), json!({"v": 1}))
        .unwrap();
    a.sync_until_quiet().await;

    let store = Store::open(dir.path().join("b.db"), store_config()).unwrap();
    let engine = |link: Arc<dyn Transport>| {
        SyncEngine::new(
            store.clone(),
            link,
            Arc::new(StaticToken(BEN.into())),
            sync_config(),
            tokio::runtime::Handle::current(),
        )
    };
    let broken = engine(Arc::new(ForeignChange(server.transport())));
    let r = broken.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Failed, "{r:?}");
    let said = r#"the server answered a pull of "answers" with a change of "patients""#;
    assert!(r.errors.iter().any(|e| e.contains(said)), "{:?}", r.errors);
    assert!(broken.status().last_error.is_some_and(|e| e.contains(said)));
    // `answers` is pulled first; the sync stopped there.
    for (collection, id) in [
        ("answers", "q1"),
        ("patients", "intruder"),
        ("patients", "p1"),
    ] {
        assert_eq!(
            store.get(collection, id).unwrap(),
            None,
            "{collection}/{id}"
        );
    }
    broken.shutdown();

    // With a server that answers what was asked, the device pulls from where it stood.
    let fixed = engine(server.transport());
    let r = fixed.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    assert!(store.get("answers", "q1").unwrap().is_some());
    assert!(store.get("patients", "p1").unwrap().is_some());
    assert_eq!(store.get("patients", "intruder").unwrap(), None);
    fixed.shutdown();
}

/// A device does not pull back what it pushed, unless the server stored something else:
/// a counter another device moved meanwhile comes back merged, and both converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_not_pulled_back_but_merges_are() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = synced_pair(&server, dir.path()).await;
    for i in 0..50 {
        a.store
            .put("answers", Some(&format!("q{i}")), json!({"i": i}))
            .unwrap();
    }
    a.store.put("patients", Some("p"), json!({"v": 0})).unwrap();
    a.store.increment("patients", "p", "visits", 1).unwrap();
    let r = a.sync_until_quiet().await;
    // The new record and its count went as one op.
    assert_eq!((r.applied, r.pulled), (51, 0), "nothing comes back: {r:?}");
    b.sync_until_quiet().await;
    // Both count a visit on the same version; b's gets there first.
    b.store.increment("patients", "p", "visits", 1).unwrap();
    b.sync_until_quiet().await;
    a.store.increment("patients", "p", "visits", 1).unwrap();
    let r = a.engine.sync_now(None).await;
    assert_eq!((r.applied, r.pulled), (1, 1), "the merge comes back: {r:?}");
    b.sync_until_quiet().await;
    let visits = |d: &Device| {
        let v = d.store.get("patients", "p").unwrap().unwrap().data["visits"].clone();
        outpost_core::crdt::Crdt::from_json(&v).unwrap().value()
    };
    assert_eq!((visits(&a), visits(&b)), (json!(3), json!(3)));
    assert_eq!(
        snapshot(&a.store, "patients"),
        snapshot(&b.store, "patients")
    );
    assert_eq!(snapshot(&a.store, "answers"), snapshot(&b.store, "answers"));
}

/// A device pushing five ops per request, `flights` requests at a time, with forty
/// records queued.
fn forty_queued(server: &TestServer, dir: &std::path::Path, flights: usize) -> Device {
    let config = outpost_core::SyncConfig {
        batch: outpost_core::BatchLimits {
            max_ops: 5,
            ..outpost_core::BatchLimits::default()
        },
        push_requests_in_flight: flights,
        ..sync_config()
    };
    let a = Device::open_with(
        dir,
        "a",
        server,
        Arc::new(StaticToken(AMINA.into())),
        config,
    );
    for i in 0..40 {
        a.store
            .put("answers", Some(&format!("r{i}")), json!({"round": 0}))
            .unwrap();
    }
    a
}

/// Pushes `flights` requests at a time while another thread keeps editing the same
/// records, each answer arriving 30 ms late so that requests overlap; returns what the
/// link saw once everything is synced, after checking a second device of the same user
/// pulls exactly the first one's records.
async fn push_while_editing(flights: usize) -> outpost_testkit::LinkStats {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = forty_queued(&server, dir.path(), flights);
    for _ in 0..60 {
        a.link
            .fail_next_push(Fault::DelayAfter(Duration::from_millis(30)));
    }
    // Edits of records already in flight queue entries behind them.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let (store, stop) = (a.store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut round = 1;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for i in (0..40).step_by(3) {
                    store
                        .put("answers", Some(&format!("r{i}")), json!({"round": round}))
                        .unwrap();
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(7));
            }
        })
    };
    let r = a.engine.sync_now(Some(Duration::from_secs(30))).await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    editor.join().unwrap();
    a.link.clear_faults();
    let r = a.sync_until_quiet().await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    for rec in a.store.query("answers", &Query::new()).unwrap() {
        assert_eq!(rec.sync_state, SyncState::Synced, "{}", rec.id);
    }
    let c = Device::open(dir.path(), "c", &server, AMINA);
    c.sync_until_quiet().await;
    assert_eq!(snapshot(&c.store, "answers"), snapshot(&a.store, "answers"));
    a.link.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pushes_fly_at_once_and_never_share_a_record() {
    let two = push_while_editing(2).await;
    assert_eq!(two.max_pushes_in_flight, 2, "{two:?}");
    assert_eq!(two.pushes_sharing_a_record, 0, "{two:?}");
    // The same config with one request at a time never overlaps.
    let one = push_while_editing(1).await;
    assert_eq!(one.max_pushes_in_flight, 1, "{one:?}");
    assert_eq!(one.pushes_sharing_a_record, 0, "{one:?}");
}

/// 429 to a push sent beside another, as a server bounding pushes per login answers
/// devices that share one: the sync goes on one request at a time, once the short
/// `Retry-After` has passed. A long one is a rate limit, and stops the sync as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_push_refused_as_one_too_many_goes_on_alone() {
    for (retry_after, completes) in [
        (Duration::from_millis(300), true),
        (Duration::from_secs(30), false),
    ] {
        let server = TestServer::start(&Backend::Sqlite);
        let dir = tempfile::tempdir().unwrap();
        let a = forty_queued(&server, dir.path(), 2);
        // The first push goes alone; the second goes alone once it is answered, and the
        // third right beside it.
        a.link.fail_next_push(Fault::Delay(Duration::ZERO));
        a.link.fail_next_push(Fault::Delay(Duration::ZERO));
        a.link.fail_next_push(Fault::RateLimited(retry_after));
        let r = a.engine.sync_now(Some(Duration::from_secs(30))).await;
        let pending = a.store.outbox_counts().unwrap().pending;
        if completes {
            assert_eq!(
                (r.outcome, r.applied, pending),
                (SyncOutcome::Completed, 40, 0),
                "{r:?}"
            );
        } else {
            assert_ne!(r.outcome, SyncOutcome::Completed, "{r:?}");
            assert!(pending > 0, "the refused batch waits for its retry");
            a.link.clear_faults();
        }
    }
}

/// Counts the provider's refreshes; every token it gives is the same valid one.
#[derive(Debug, Default)]
struct CountedRefreshes(std::sync::atomic::AtomicU32);

impl TokenProvider for CountedRefreshes {
    fn token(&self, refresh: bool) -> Result<String, String> {
        if refresh {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(AMINA.to_owned())
    }
}

/// A token that expires with two pushes in flight gets 401 on both: the provider is
/// asked once (a provider rotating refresh tokens would fail a second refresh made in
/// parallel), and both go through with the fresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pushes_refused_together_refresh_the_token_once() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(CountedRefreshes::default());
    let config = outpost_core::SyncConfig {
        batch: outpost_core::BatchLimits {
            max_ops: 5,
            ..outpost_core::BatchLimits::default()
        },
        ..sync_config()
    };
    let a = Device::open_with(dir.path(), "a", &server, tokens.clone(), config);
    for i in 0..40 {
        a.store
            .put("answers", Some(&format!("r{i}")), json!({"i": i}))
            .unwrap();
    }
    // The first push goes alone; the second once it is answered, and the third beside
    // it: both of those are refused, as with a token that expired between them.
    a.link.fail_next_push(Fault::Delay(Duration::ZERO));
    a.link
        .fail_next_push(Fault::UnauthorizedAfter(Duration::from_millis(100)));
    a.link
        .fail_next_push(Fault::UnauthorizedAfter(Duration::from_millis(100)));
    let r = a.engine.sync_now(Some(Duration::from_secs(30))).await;
    assert_eq!(
        (r.outcome, r.applied),
        (SyncOutcome::Completed, 40),
        "{r:?}"
    );
    assert_eq!(a.link.stats().max_pushes_in_flight, 2);
    assert_eq!(tokens.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}
