//! The transactions of a sync's steps, driven directly: pulled pages with their
//! cursor, the full re-pull, conflict settlement and manual resolution.

use serde_json::json;

use crate::clock::Hlc;
use crate::conflict::Resolution;
use crate::outbox::{BatchLimits, OutboxEntry, PushOutcome};
use crate::protocol::Change;
use crate::{ConflictStrategy, Store, StoreConfig, SyncState};

fn store(dir: &tempfile::TempDir) -> Store {
    let config = StoreConfig::default()
        .with_collection("c", ConflictStrategy::ServerWins)
        .with_collection("m", ConflictStrategy::Manual);
    Store::open(dir.path().join("s.db"), config).unwrap()
}

fn change(id: &str, version: i64, data: Option<serde_json::Value>) -> Change {
    Change {
        collection: "c".into(),
        record_id: id.into(),
        version,
        seq: version,
        deleted: data.is_none(),
        data: data.map(|d| d.as_object().unwrap().clone()),
        hlc: format!("{:013}-00000-srv", 1_000 + version),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

#[test]
fn pages_apply_with_their_cursor_and_spare_local_edits() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    s.put("c", Some("mine"), json!({"v": "local"})).unwrap();
    let page = [
        change("a", 1, Some(json!({"v": 1}))),
        change("b", 2, Some(json!({"v": 2}))),
        change("mine", 5, Some(json!({"v": "remote"}))),
    ];
    assert_eq!(s.apply_pull_page("c", &page, "cur-1", None).unwrap(), 2);
    assert_eq!(s.cursor("c").unwrap().as_deref(), Some("cur-1"));
    let a = s.get("c", "a").unwrap().unwrap();
    assert_eq!((a.version, a.sync_state), (1, SyncState::Synced));
    assert_eq!(
        s.get("c", "mine").unwrap().unwrap().data["v"],
        json!("local")
    );
    // A tombstone deletes; an older version than the one held is ignored.
    let page = [
        change("a", 3, None),
        change("b", 1, Some(json!({"v": "old"}))),
    ];
    s.apply_pull_page("c", &page, "cur-2", None).unwrap();
    assert_eq!(s.get("c", "a").unwrap(), None);
    assert_eq!(s.get("c", "b").unwrap().unwrap().data["v"], json!(2));
    // Remote stamps move the clock forward.
    let last: Hlc = s.last_hlc().unwrap().parse().unwrap();
    assert!((last.millis, last.counter) >= (1_003, 0));
}

#[test]
fn a_full_repull_drops_what_the_server_no_longer_has_but_keeps_local_edits() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let page = [
        change("keep", 1, Some(json!({}))),
        change("gone", 1, Some(json!({}))),
    ];
    s.apply_pull_page("c", &page, "cur-1", None).unwrap();
    s.put("c", Some("edited"), json!({"local": true})).unwrap();
    let g = s.begin_resync("c").unwrap();
    assert_eq!(s.cursor("c").unwrap(), None);
    assert_eq!(s.resync_generation("c").unwrap(), Some(g));
    s.apply_pull_page("c", &[change("keep", 1, Some(json!({})))], "cur-9", Some(g))
        .unwrap();
    assert!(s.get("c", "keep").unwrap().is_some());
    assert_eq!(s.get("c", "gone").unwrap(), None);
    assert!(
        s.get("c", "edited").unwrap().is_some(),
        "pending local edits survive"
    );
    assert_eq!(s.outbox_counts().unwrap().pending, 1);
    assert_eq!(s.resync_generation("c").unwrap(), None);
}

pub(super) fn sent_entry(s: &Store) -> OutboxEntry {
    let e = s
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap()
        .remove(0);
    s.outbox_mark_in_flight(&[e.id]).unwrap();
    e
}

#[test]
fn server_wins_logs_the_local_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    s.apply_pull_page("c", &[change("r", 1, Some(json!({"v": 0})))], "x", None)
        .unwrap();
    s.patch("c", "r", json!({"v": "mine"})).unwrap();
    let e = sent_entry(&s);
    let current = change("r", 2, Some(json!({"v": "theirs"})));
    let settled = s.settle_conflict(&e, Some(&current)).unwrap();
    assert!(!settled.manual);
    let r = s.get("c", "r").unwrap().unwrap();
    assert_eq!(
        (r.data["v"].clone(), r.version, r.sync_state),
        (json!("theirs"), 2, SyncState::Synced)
    );
    let log = s.conflict_log().unwrap();
    assert_eq!(log[0].local.as_ref().unwrap()["v"], json!("mine"));
    assert_eq!(log[0].base.as_ref().unwrap()["v"], json!(0));
    assert!(log[0].resolved);
    assert_eq!(
        s.outbox_counts().unwrap().pending + s.outbox_counts().unwrap().syncing,
        0
    );
}

#[test]
fn manual_conflicts_block_the_record_until_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut m = change("r", 1, Some(json!({"v": 0})));
    m.collection = "m".into();
    s.apply_pull_page("m", &[m.clone()], "x", None).unwrap();
    s.patch("m", "r", json!({"v": "mine"})).unwrap();
    let e = sent_entry(&s);
    let mut current = change("r", 2, Some(json!({"v": "theirs"})));
    current.collection = "m".into();
    assert!(s.settle_conflict(&e, Some(&current)).unwrap().manual);
    assert_eq!(
        s.get("m", "r").unwrap().unwrap().sync_state,
        SyncState::Conflicted
    );
    s.patch("m", "r", json!({"w": 1})).unwrap();
    assert!(
        s.outbox_next_batch(BatchLimits::default(), i64::MAX)
            .unwrap()
            .is_empty()
    );
    let open = s.conflicts().unwrap();
    assert_eq!(open.len(), 1);
    s.resolve(open[0].id, Resolution::KeepLocal).unwrap();
    let batch = s
        .outbox_next_batch(BatchLimits::default(), i64::MAX)
        .unwrap();
    assert_eq!(batch.len(), 1);
    // Made on top of the version the app was shown: if the server moved on since,
    // the resolution conflicts again instead of overwriting an unseen edit.
    assert!(!batch[0].force);
    assert_eq!(batch[0].base_version, Some(2));
    assert_eq!(
        batch[0].data.as_ref().unwrap()["w"],
        json!(1),
        "later edits are kept"
    );
    assert_ne!(
        batch[0].op_id, e.op_id,
        "a resend after a conflict is a new op"
    );
    s.outbox_mark_in_flight(&[batch[0].id]).unwrap();
    s.outbox_apply_results(&[(batch[0].id, PushOutcome::Applied { version: 3 })])
        .unwrap();
    let r = s.get("m", "r").unwrap().unwrap();
    assert_eq!((r.version, r.sync_state), (3, SyncState::Synced));
    assert!(s.conflicts().unwrap().is_empty());
    assert_eq!(s.conflict_log().unwrap()[0].outcome, "resolved_local");
}

/// Regression (found by the simulation): a remote stamp seen only on a tombstone
/// must still hold the clock up after a restart.
#[test]
fn observed_stamps_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    // An hour ahead of this device's clock: plausible, so it is taken in.
    let ahead = s.now_ms() as u64 + 3_600_000;
    let mut tomb = change("gone", 7, None);
    tomb.hlc = Hlc::new(ahead, 42, "far").to_string();
    s.apply_pull_page("c", &[tomb], "x", None).unwrap();
    drop(s);
    let s = store(&dir);
    let stamp: Hlc = s
        .put("c", Some("new"), json!({}))
        .unwrap()
        .hlc
        .parse()
        .unwrap();
    assert!((stamp.millis, stamp.counter) > (ahead, 42), "{stamp}");
}
