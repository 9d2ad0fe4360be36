//! Regression tests for defects found in review, each of which failed before its fix.

use std::sync::Arc;

use serde_json::json;

use crate::clock::{FakeClock, Hlc};
use crate::outbox::{BatchLimits, PushOutcome};
use crate::protocol::Change;
use crate::{ConflictStrategy, Error, Store, StoreConfig};

fn config() -> StoreConfig {
    StoreConfig::default()
        .with_collection("c", ConflictStrategy::ServerWins)
        .with_collection("d", ConflictStrategy::ServerWins)
}

/// Writes to the database file behind the store's back, as a corrupted or
/// hand-edited file would look.
fn tamper(store: &Store, sql: &str) {
    tamper_file(store.path(), sql);
}

fn tamper_file(path: &std::path::Path, sql: &str) {
    let raw = rusqlite::Connection::open(path).unwrap();
    assert!(raw.execute(sql, []).unwrap() > 0, "{sql}");
}

fn is_corrupt<T: std::fmt::Debug>(r: crate::Result<T>) -> bool {
    matches!(&r, Err(Error::Database(m)) if m.contains("corrupt row"))
}

fn push_and_apply(store: &Store, version: i64) {
    let batch = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
    store.outbox_mark_in_flight(&ids).unwrap();
    let applied: Vec<_> = ids
        .iter()
        .map(|id| (*id, PushOutcome::Applied { version }))
        .collect();
    store.outbox_apply_results(&applied).unwrap();
}

fn next_stamp(path: &std::path::Path, wall: &Arc<FakeClock>) -> Hlc {
    let store = Store::open_with_clock(path, config(), Arc::clone(wall) as _).unwrap();
    let put = store.put("c", Some("next"), json!({})).unwrap();
    put.hlc.parse().unwrap()
}

#[test]
fn a_full_repull_that_drops_records_keeps_the_clock_ahead_of_their_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let wall = FakeClock::new(10_000_000);
    let store = Store::open_with_clock(&path, config(), wall.clone()).unwrap();
    let dropped: Hlc = store
        .put("c", Some("r"), json!({}))
        .unwrap()
        .hlc
        .parse()
        .unwrap();
    push_and_apply(&store, 1);
    drop(store);
    // The apply saved the clock; without that, only the record's row holds the
    // stamp, so nothing but the re-pull's own delete can keep the clock ahead of it.
    tamper_file(&path, "DELETE FROM meta WHERE key = 'hlc'");
    let store = Store::open_with_clock(&path, config(), wall.clone()).unwrap();
    // The server purged it: the re-pull does not bring it back, so it goes.
    let g = store.begin_resync("c").unwrap();
    store.apply_pull_page("c", &[], "cur", Some(g)).unwrap();
    assert_eq!(store.get("c", "r").unwrap(), None);
    drop(store);
    // The device clock is set back; the HLC must still not go back.
    wall.set(5_000_000);
    let next = next_stamp(&path, &wall);
    assert!(next > dropped, "{next} after {dropped}");
}

#[test]
fn the_migration_that_drops_synced_entries_keeps_the_clock_ahead_of_their_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let wall = FakeClock::new(5_000_000);
    drop(Store::open_with_clock(&path, config(), wall.clone()).unwrap());
    // Schema 2 is schema 3 (the latest without the sealed tables) that kept applied
    // entries as `synced`. Here one holds the
    // highest stamp the device issued (its wall clock was ahead then), and no other
    // row nor a saved clock does.
    let dropped: Hlc = "0000010000000-00000-r".parse().unwrap();
    tamper_file(
        &path,
        &format!(
            "INSERT INTO outbox (op_id, collection, record_id, kind, hlc, state, created_at)
             VALUES ('o1', 'c', 'gone', 'put', '{dropped}', 'synced', 1)"
        ),
    );
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "DROP TABLE seals; DROP TABLE sealed_records; DROP TABLE sealed_outbox;
         DROP TABLE sealed_conflicts;",
    )
    .unwrap();
    // Nor did it have the tables of later versions.
    raw.execute_batch("DROP TABLE attachments; DROP TABLE sealed_attachments")
        .unwrap();
    raw.pragma_update(None, "user_version", 2).unwrap();
    drop(raw);
    let next = next_stamp(&path, &wall);
    assert!(next > dropped, "{next} after {dropped}");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let left: i64 = raw
        .query_row(
            "SELECT count(*) FROM outbox WHERE state = 'synced'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the migration dropped the applied entry");
}

#[test]
fn an_unknown_op_kind_is_an_error_not_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    store.put("c", Some("r"), json!({"v": 1})).unwrap();
    tamper(&store, "UPDATE outbox SET kind = 'upsert'");
    assert!(is_corrupt(
        store.outbox_next_batch(BatchLimits::default(), i64::MAX)
    ));
    assert!(is_corrupt(store.outbox_entries()));
    // Nothing was marked in flight by the refused read.
    tamper(&store, "UPDATE outbox SET kind = 'put'");
    assert_eq!(store.outbox_counts().unwrap().pending, 1);
}

#[test]
fn unknown_entry_and_record_states_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    store.put("c", Some("r"), json!({"v": 1})).unwrap();
    tamper(&store, "UPDATE outbox SET state = 'synced'");
    assert!(is_corrupt(store.outbox_counts()));
    assert!(is_corrupt(store.outbox_entries()));
    tamper(&store, "UPDATE records SET sync_state = 'dirty'");
    assert!(is_corrupt(store.get("c", "r")));
    assert!(is_corrupt(store.query("c", &crate::Query::new())));
    // An edit of a corrupt record is refused rather than built on a guess.
    assert!(is_corrupt(store.patch("c", "r", json!({"v": 2}))));
}

#[test]
fn an_unknown_strategy_in_the_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    store.put("c", Some("r"), json!({"v": "mine"})).unwrap();
    let e = store
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap()
        .remove(0);
    store.outbox_mark_in_flight(&[e.id]).unwrap();
    store.settle_conflict(&e, None).unwrap();
    assert_eq!(store.conflict_log().unwrap().len(), 1);
    tamper(&store, "UPDATE conflicts SET strategy = 'coin_flip'");
    assert!(is_corrupt(store.conflict_log()));
}

#[test]
fn a_page_holding_another_collection_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    let change = |collection: &str, id: &str| Change {
        collection: collection.into(),
        record_id: id.into(),
        version: 1,
        seq: 1,
        deleted: false,
        data: Some(json!({"v": 1}).as_object().cloned().unwrap()),
        hlc: "0000000001000-00000-srv".into(),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    };
    let page = [change("c", "a"), change("d", "b")];
    assert!(matches!(
        store.apply_pull_page("c", &page, "cur-1", None),
        Err(Error::InvalidData(_))
    ));
    assert_eq!(store.cursor("c").unwrap(), None, "the cursor did not move");
    assert_eq!(store.get("c", "a").unwrap(), None, "nothing was applied");
    assert_eq!(store.get("d", "b").unwrap(), None);
}

#[test]
fn an_unparsable_number_in_meta_is_an_error_not_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    let g = store.begin_resync("c").unwrap();
    tamper(
        &store,
        "UPDATE meta SET value = 'two' WHERE key = 'resync:c'",
    );
    assert!(is_corrupt(store.resync_generation("c")));
    // The re-pull does not end on a guessed generation.
    assert!(is_corrupt(store.apply_pull_page("c", &[], "cur", Some(g))));
    assert_eq!(store.cursor("c").unwrap(), None);
}

#[test]
fn the_status_over_an_unreadable_outbox_is_an_error_not_zero_pending() {
    use crate::{HttpTimeouts, HttpTransport, StaticToken, SyncConfig, SyncEngine};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), config()).unwrap();
    store.put("c", Some("r"), json!({"v": 1})).unwrap();
    let link = HttpTransport::new("http://127.0.0.1:9/", HttpTimeouts::default()).unwrap();
    let engine = SyncEngine::new(
        store.clone(),
        Arc::new(link),
        Arc::new(StaticToken("t".into())),
        SyncConfig::default(),
        rt.handle().clone(),
    );
    let status = engine.status();
    assert_eq!((status.pending, status.last_error), (1, None));
    tamper(&store, "UPDATE outbox SET state = 'synced'");
    let status = engine.status();
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("cannot read the outbox") && error.contains("corrupt row"),
        "{error:?}"
    );
    engine.shutdown();
}

#[test]
fn a_seeded_identity_is_what_the_next_open_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    Store::seed_identity(&path, config(), "00000000000000ab", "client-1").unwrap();
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.replica_id(), "00000000000000ab");
    assert_eq!(store.client_id(), "client-1");
    let put = store.put("c", Some("r"), json!({})).unwrap();
    assert!(put.hlc.ends_with("-00000000000000ab"), "{}", put.hlc);
    drop(store);
    // Stamps of the old id would no longer be this device's.
    let again = Store::seed_identity(&path, config(), "00000000000000cd", "client-2");
    assert!(matches!(again, Err(Error::InvalidConfig(_))), "{again:?}");
    let bad = Store::seed_identity(dir.path().join("t.db"), config(), "", "client-3");
    assert!(matches!(bad, Err(Error::InvalidConfig(_))), "{bad:?}");
}
