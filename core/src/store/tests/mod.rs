//! The outbox transactions the sync engine runs, driven directly: coalescing, sealing
//! once sent, recovery after a crash, failed entries, backoff and batch limits.

use serde_json::{Value, json};

use crate::outbox::{BatchLimits, EntryState, PushOutcome};
use crate::protocol::{ErrorBody, OpKind};
use crate::{ConflictStrategy, Error, Store, StoreConfig, SyncState};

mod accounts;
mod model;
mod plans;
mod regressions;
mod search;
mod sync_steps;

fn config() -> StoreConfig {
    StoreConfig::default()
        .with_collection("patients", ConflictStrategy::FieldMerge)
        .with_collection("answers", ConflictStrategy::LastWriteWins)
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("device.db"), config()).unwrap()
}

#[test]
fn coalescing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // put + patch -> put with the whole record
    store.put("patients", Some("a"), json!({"x": 1})).unwrap();
    store.patch("patients", "a", json!({"y": 2})).unwrap();
    let e = store.outbox_entries().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].kind, Value::Object(e[0].data.clone().unwrap())),
        (OpKind::Put, json!({"x":1,"y":2}))
    );

    // Once sent, an entry is sealed: the next edit is a new entry behind it.
    let batch = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    store.outbox_mark_in_flight(&[batch[0].id]).unwrap();
    store.patch("patients", "a", json!({"z": 3})).unwrap();
    store.patch("patients", "a", json!({"w": 4})).unwrap();
    let e = store.outbox_entries().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].kind, OpKind::Patch);
    assert_eq!(
        Value::Object(e[1].data.clone().unwrap()),
        json!({"z": 3, "w": 4})
    );
    // The second entry waits behind the in-flight one.
    assert!(
        store
            .outbox_next_batch(BatchLimits::default(), i64::MAX)
            .unwrap()
            .is_empty()
    );
    // After the create is applied, the patch is based on its version.
    store
        .outbox_apply_results(&[(e[0].id, PushOutcome::Applied { version: 1 })])
        .unwrap();
    let next = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].base_version, Some(1));
    // patch + delete -> delete on the same base.
    store.delete("patients", "a").unwrap();
    let e = store.outbox_entries().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].kind, e[0].base_version, e[0].data.clone()),
        (OpKind::Delete, Some(1), None)
    );
    // delete + put -> put (recreate) on the same base.
    store
        .put("patients", Some("a"), json!({"again": true}))
        .unwrap();
    let e = store.outbox_entries().unwrap();
    assert_eq!(
        (e.len(), e[0].kind, e[0].base_version),
        (1, OpKind::Put, Some(1))
    );
    // A create in flight plus a delete: the delete must still be sent.
    store.put("patients", Some("b"), json!({})).unwrap();
    let b = store
        .outbox_entries()
        .unwrap()
        .into_iter()
        .find(|e| e.record_id == "b")
        .unwrap();
    store.outbox_mark_in_flight(&[b.id]).unwrap();
    store.delete("patients", "b").unwrap();
    let kinds: Vec<_> = store
        .outbox_entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.record_id == "b")
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [OpKind::Put, OpKind::Delete]);
}

#[test]
fn syncing_entries_return_to_pending_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("patients", Some("a"), json!({"x": 1})).unwrap();
    let batch = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    store.outbox_mark_in_flight(&[batch[0].id]).unwrap();
    assert_eq!(
        store.outbox_entries().unwrap()[0].state,
        EntryState::Syncing
    );
    drop(store); // a crash: no close, no answer
    let store = open(&dir);
    let e = store.outbox_entries().unwrap();
    assert_eq!(e[0].state, EntryState::Pending);
    assert_eq!(e[0].op_id, batch[0].op_id, "resent with the same op_id");
    assert_eq!(e[0].attempts, 1);
    // Still sealed: a new edit does not change what the op_id carries.
    store.patch("patients", "a", json!({"y": 2})).unwrap();
    let e = store.outbox_entries().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(Value::Object(e[0].data.clone().unwrap()), json!({"x": 1}));
}

#[test]
fn failed_entry_blocks_only_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("patients", Some("a"), json!({"x": 1})).unwrap();
    store.put("patients", Some("b"), json!({"x": 1})).unwrap();
    let batch = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    store.outbox_mark_in_flight(&ids).unwrap();
    let rejected = ErrorBody {
        code: "forbidden".into(),
        message: "no".into(),
    };
    store
        .outbox_apply_results(&[
            (
                ids[0],
                PushOutcome::Failed {
                    error: rejected.clone(),
                },
            ),
            (ids[1], PushOutcome::Applied { version: 1 }),
        ])
        .unwrap();
    let a = store.get("patients", "a").unwrap().unwrap();
    assert_eq!(a.sync_state, SyncState::Failed);
    assert_eq!(a.data["x"], json!(1), "the data stays local");
    assert_eq!(
        store.get("patients", "b").unwrap().unwrap().sync_state,
        SyncState::Synced
    );
    store.patch("patients", "a", json!({"y": 1})).unwrap();
    store.patch("patients", "b", json!({"y": 1})).unwrap();
    let next = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    assert_eq!(
        next.iter()
            .map(|e| e.record_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(
        store.failed_entries().unwrap()[0].last_error,
        Some(rejected)
    );
    assert_eq!(store.outbox_counts().unwrap().failed, 1);
    assert_eq!(store.retry_failed().unwrap(), 1);
    let next = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    assert_eq!(
        next.iter()
            .map(|e| e.record_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn discarding_a_failed_edit_reverts_to_the_synced_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("patients", Some("a"), json!({"x": 1})).unwrap();
    let e = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    store.outbox_mark_in_flight(&[e[0].id]).unwrap();
    store
        .outbox_apply_results(&[(e[0].id, PushOutcome::Applied { version: 1 })])
        .unwrap();
    store.patch("patients", "a", json!({"x": 2})).unwrap();
    let e = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    store.outbox_mark_in_flight(&[e[0].id]).unwrap();
    let err = ErrorBody {
        code: "invalid_request".into(),
        message: "bad".into(),
    };
    store
        .outbox_apply_results(&[(e[0].id, PushOutcome::Failed { error: err })])
        .unwrap();
    assert_eq!(
        store.get("patients", "a").unwrap().unwrap().data["x"],
        json!(2)
    );
    store.discard_failed(e[0].id).unwrap();
    let a = store.get("patients", "a").unwrap().unwrap();
    assert_eq!(
        (a.data["x"].clone(), a.sync_state),
        (json!(1), SyncState::Synced)
    );
    assert!(matches!(
        store.discard_failed(e[0].id),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn retry_outcome_persists_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put("patients", Some("a"), json!({})).unwrap();
    let e = store.outbox_next_batch(BatchLimits::default(), 0).unwrap();
    store.outbox_mark_in_flight(&[e[0].id]).unwrap();
    let error = ErrorBody {
        code: "internal".into(),
        message: "500".into(),
    };
    store
        .outbox_apply_results(&[(
            e[0].id,
            PushOutcome::Retry {
                error,
                next_attempt_at_ms: 5_000,
            },
        )])
        .unwrap();
    drop(store);
    let store = open(&dir);
    assert!(
        store
            .outbox_next_batch(BatchLimits::default(), 4_999)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .outbox_next_batch(BatchLimits::default(), 5_000)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn batches_respect_count_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .batch(|tx| {
            for i in 0..10 {
                tx.put(
                    "answers",
                    Some(&format!("a{i}")),
                    json!({"text": "x".repeat(1000)}),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let by_count = store
        .outbox_next_batch(
            BatchLimits {
                max_ops: 4,
                max_bytes: 1 << 20,
            },
            0,
        )
        .unwrap();
    assert_eq!(by_count.len(), 4);
    let by_bytes = store
        .outbox_next_batch(
            BatchLimits {
                max_ops: 100,
                max_bytes: 3000,
            },
            0,
        )
        .unwrap();
    assert_eq!(by_bytes.len(), 2);
    let one = store
        .outbox_next_batch(
            BatchLimits {
                max_ops: 100,
                max_bytes: 1,
            },
            0,
        )
        .unwrap();
    assert_eq!(one.len(), 1, "always at least one entry");
}

/// The tail lookup runs on every write; a re-prepare per binding once took about 40%
/// of a batch's time.
#[test]
fn the_tail_lookup_is_not_reprepared_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default().with_collection("c", ConflictStrategy::ServerWins);
    let store = Store::open(dir.path().join("s.db"), config).unwrap();
    let status = |store: &Store| {
        store
            .write(crate::feed::ChangeOrigin::Local, |w| {
                let stmt = w.tx().prepare_cached(crate::db::outbox::TAIL_SQL)?;
                Ok((
                    stmt.get_status(rusqlite::StatementStatus::Run),
                    stmt.get_status(rusqlite::StatementStatus::RePrepare),
                ))
            })
            .unwrap()
    };
    store.put("c", Some("warm"), json!({"v": 0})).unwrap();
    let (runs_before, reprepares_before) = status(&store);
    store
        .batch(|tx| {
            for i in 0..200 {
                tx.put("c", Some(&format!("r{i}")), json!({"v": i}))?;
            }
            Ok(())
        })
        .unwrap();
    let (runs, reprepares) = status(&store);
    assert!(runs >= runs_before + 200, "the lookup ran {runs} times");
    assert!(
        reprepares - reprepares_before < 5,
        "re-prepared {} times in 200 writes",
        reprepares - reprepares_before
    );
}

#[test]
fn the_servers_answer_reaches_observers_as_a_remote_change() {
    use crate::feed::{ChangeEvent, ChangeOrigin};
    use crate::record::Record;
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (states_tx, states) = mpsc::channel();
    let _row = store
        .observe_one(
            "answers",
            "a",
            Arc::new(move |r: Option<&Record>| {
                let _ = states_tx.send(r.map(|r| r.sync_state));
            }),
        )
        .unwrap();
    let (origins_tx, origins) = mpsc::channel();
    let _feed = store
        .subscribe(Arc::new(move |e: &ChangeEvent| {
            let _ = origins_tx.send(e.origin);
        }))
        .unwrap();
    let next = || states.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(next(), None);

    store.put("answers", Some("a"), json!({"q": 1})).unwrap();
    assert_eq!(next(), Some(SyncState::Pending));
    let sent = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    store.outbox_mark_in_flight(&[sent[0].id]).unwrap();
    store
        .outbox_apply_results(&[(sent[0].id, PushOutcome::Applied { version: 1 })])
        .unwrap();
    // A list row's "sending" mark clears without waiting for another edit.
    assert_eq!(next(), Some(SyncState::Synced));

    store.patch("answers", "a", json!({"q": 2})).unwrap();
    assert_eq!(next(), Some(SyncState::Pending));
    let sent = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    let error = ErrorBody {
        code: "forbidden".into(),
        message: "no".into(),
    };
    store
        .outbox_apply_results(&[(sent[0].id, PushOutcome::Failed { error })])
        .unwrap();
    assert_eq!(next(), Some(SyncState::Failed));

    // The answers are the server's: they do not count as local edits to send.
    let seen: Vec<ChangeOrigin> =
        std::iter::from_fn(|| origins.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(seen.contains(&ChangeOrigin::Remote), "{seen:?}");
}
