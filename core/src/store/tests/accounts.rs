//! Accounts on one database file: a store for another user refuses, sign-out removes
//! or seals, sealed data comes back only to its user, deletion, and listeners ending.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::sync_steps::sent_entry;
use crate::outbox::{EntryState, OutboxEntry, PushOutcome};
use crate::protocol::{Change, ErrorBody};
use crate::{
    ChangeEvent, CollectionConfig, ConflictStrategy, Error, Filter, Query, Record, SignOut, Store,
    StoreConfig, SyncState, Unsynced,
};

fn config() -> StoreConfig {
    StoreConfig::default()
        .with(CollectionConfig::new("c", ConflictStrategy::ServerWins).with_search(&["name"]))
        .with_collection("m", ConflictStrategy::Manual)
}

fn open_as(path: &Path, user: Option<&str>) -> crate::Result<Store> {
    let config = StoreConfig {
        user_id: user.map(str::to_owned),
        ..config()
    };
    Store::open(path, config)
}

fn change(collection: &str, id: &str, version: i64, name: &str) -> Change {
    Change {
        collection: collection.into(),
        record_id: id.into(),
        version,
        seq: version,
        deleted: false,
        data: json!({ "name": name }).as_object().cloned(),
        hlc: format!("{:013}-00000-srv", 1_000 + version),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

/// Row counts of a table, read past the store with a plain connection.
fn rows(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// Amina's device after some work: synced records, an edit waiting, an edit of a synced
/// record, one the server rejected, one in flight, and a manual conflict.
fn aminas_day(path: &Path) -> Store {
    let s = open_as(path, Some("amina")).unwrap();
    let page = [
        change("c", "s1", 1, "synced one"),
        change("c", "s2", 2, "synced two"),
    ];
    s.apply_pull_page("c", &page, "cur", None).unwrap();
    s.apply_pull_page("m", &[change("m", "r", 3, "base")], "cur-m", None)
        .unwrap();
    // A manual conflict on m/r.
    s.patch("m", "r", json!({"name": "mine"})).unwrap();
    let e = sent_entry(&s);
    let theirs = change("m", "r", 4, "theirs");
    assert!(s.settle_conflict(&e, Some(&theirs)).unwrap().manual);
    // A rejected edit.
    s.put("c", Some("bad"), json!({"name": "rejected"}))
        .unwrap();
    let e = sent_entry(&s);
    let error = ErrorBody {
        code: "forbidden".into(),
        message: "no".into(),
    };
    s.outbox_apply_results(&[(e.id, PushOutcome::Failed { error })])
        .unwrap();
    // One in flight when she signs out.
    s.put("c", Some("flying"), json!({"name": "in flight"}))
        .unwrap();
    sent_entry(&s);
    // Waiting: a new record and an edit of a synced one.
    s.put("c", Some("p1"), json!({"name": "waiting amina"}))
        .unwrap();
    s.patch("c", "s2", json!({"name": "edited two"})).unwrap();
    s
}

#[test]
fn a_store_opened_for_another_user_refuses_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = aminas_day(&path);
    let op_ids = |s: &Store| -> Vec<String> {
        s.outbox_entries()
            .unwrap()
            .into_iter()
            .map(|e| e.op_id)
            .collect()
    };
    let before = (op_ids(&s), s.conflict_log().unwrap());
    s.close();
    let amina = Some("amina".to_owned());
    for other in [Some("ben"), None] {
        assert_eq!(
            open_as(&path, other).unwrap_err(),
            Error::WrongUser {
                holder: amina.clone()
            },
            "{other:?}"
        );
    }
    let s = open_as(&path, Some("amina")).unwrap();
    assert_eq!(s.user_id(), Some("amina"));
    assert_eq!((op_ids(&s), s.conflict_log().unwrap()), before);
    assert_eq!(s.query("c", &Query::new()).unwrap().len(), 5);
}

#[test]
fn keeping_unsynced_edits_seals_them_for_their_user_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = aminas_day(&path);
    let her_replica = s.replica_id().to_owned();
    let client = s.client_id().to_owned();
    let entries = s.outbox_entries().unwrap();
    let log = s.conflict_log().unwrap();
    assert_eq!(
        s.unsynced().unwrap(),
        Unsynced {
            pending: 3,
            failed: 1,
            conflicts: 1
        }
    );
    s.sign_out(SignOut::KeepUnsynced).unwrap();
    assert!(s.is_closed());
    assert_eq!(s.get("c", "p1"), Err(Error::Closed));

    // Nothing of hers is live; what she had not synced is sealed under her id, and
    // her synced record is gone from the file altogether.
    for table in ["records", "outbox", "conflicts", "cursors"] {
        assert_eq!(
            rows(&path, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert_eq!(
        rows(
            &path,
            "SELECT count(*) FROM meta WHERE key IN ('owner', 'replica_id', 'last_synced_at')"
        ),
        0
    );
    let sealed: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT id FROM sealed_records WHERE user_id = 'amina' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sealed, ["bad", "flying", "p1", "r", "s2"]);

    // Ben gets an empty store: nothing of hers through any call.
    let b = open_as(&path, Some("ben")).unwrap();
    assert_ne!(b.replica_id(), her_replica, "a new user, a new replica id");
    assert_eq!(b.client_id(), client, "the install keeps its id");
    for (c, id) in [
        ("c", "s1"),
        ("c", "s2"),
        ("c", "p1"),
        ("c", "bad"),
        ("m", "r"),
    ] {
        assert_eq!(b.get(c, id).unwrap(), None, "{c}/{id}");
    }
    assert!(b.query("c", &Query::new()).unwrap().is_empty());
    let search = Query::new().matching(Filter::search("amina"));
    assert!(b.query("c", &search).unwrap().is_empty());
    assert_eq!(b.count_where("c", &Filter::search("synced")).unwrap(), 0);
    assert!(b.outbox_entries().unwrap().is_empty());
    assert!(b.conflict_log().unwrap().is_empty());
    assert!(b.unsynced().unwrap().is_empty());
    b.put("c", Some("p1"), json!({"name": "waiting ben"}))
        .unwrap();
    // Ben leaves with his own edit kept: two seals side by side.
    b.sign_out(SignOut::KeepUnsynced).unwrap();

    // Amina is back: her unsynced edits, with their op_ids, states and stamps.
    let s = open_as(&path, Some("amina")).unwrap();
    assert_eq!(s.replica_id(), her_replica);
    let back = s.outbox_entries().unwrap();
    let in_flight = |e: &OutboxEntry| e.record_id == "flying";
    assert_eq!(back.len(), entries.len());
    for (was, now) in entries.iter().zip(&back) {
        if in_flight(was) {
            assert_eq!(was.state, EntryState::Syncing);
            assert_eq!(now.state, EntryState::Pending, "resent with the same op_id");
            assert_eq!((&now.op_id, now.id), (&was.op_id, was.id));
        } else {
            assert_eq!(now, was);
        }
    }
    assert_eq!(s.conflict_log().unwrap(), log);
    assert_eq!(s.conflicts().unwrap().len(), 1);
    assert_eq!(s.get("c", "s1").unwrap(), None, "synced data was removed");
    let p1 = s.get("c", "p1").unwrap().unwrap();
    assert_eq!(p1.data["name"], json!("waiting amina"));
    let s2 = s.get("c", "s2").unwrap().unwrap();
    assert_eq!((s2.version, s2.sync_state), (2, SyncState::Pending));
    assert_eq!(
        s.get("m", "r").unwrap().unwrap().sync_state,
        SyncState::Conflicted
    );
    assert_eq!(ids(&s.query("c", &search).unwrap()), ["p1"]);
    assert_eq!(
        rows(
            &path,
            "SELECT count(*) FROM sealed_records WHERE user_id = 'amina'"
        ),
        0
    );
    // New edits queue behind hers and stamp later.
    let last = s.last_hlc().unwrap();
    let n = s.put("c", Some("p2"), json!({"name": "later"})).unwrap();
    assert!(n.hlc > last);
    assert!(s.outbox_entries().unwrap().last().unwrap().id > back.last().unwrap().id);
    s.close();

    // Ben's edit is still his alone.
    assert_eq!(
        open_as(&path, Some("ben")).unwrap_err(),
        Error::WrongUser {
            holder: Some("amina".into())
        }
    );
}

#[test]
fn sync_first_refuses_while_edits_remain_and_removes_everything_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = open_as(&path, Some("amina")).unwrap();
    s.apply_pull_page("c", &[change("c", "s1", 1, "x")], "cur", None)
        .unwrap();
    s.put("c", Some("p1"), json!({"name": "y"})).unwrap();
    let sync_first = SignOut::SyncFirst {
        deadline: Duration::from_secs(1),
    };
    assert_eq!(
        s.sign_out(sync_first),
        Err(Error::UnsyncedEdits {
            pending: 1,
            failed: 0,
            conflicts: 0
        })
    );
    assert!(!s.is_closed(), "a refused sign-out changes nothing");
    assert_eq!(s.query("c", &Query::new()).unwrap().len(), 2);
    let e = sent_entry(&s);
    s.outbox_apply_results(&[(e.id, PushOutcome::Applied { version: 1 })])
        .unwrap();
    s.sign_out(sync_first).unwrap();
    assert!(s.is_closed());
    for table in ["records", "outbox", "sealed_records", "seals"] {
        assert_eq!(
            rows(&path, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    // Her next sign-in starts empty, ready for a full pull.
    let s = open_as(&path, Some("amina")).unwrap();
    assert!(s.query("c", &Query::new()).unwrap().is_empty());
    assert_eq!(s.cursor("c").unwrap(), None);
}

#[test]
fn keeping_unsynced_edits_needs_a_user_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = open_as(&path, None).unwrap();
    s.put("c", Some("a"), json!({})).unwrap();
    assert!(matches!(
        s.sign_out(SignOut::KeepUnsynced),
        Err(Error::InvalidConfig(_))
    ));
    assert!(s.get("c", "a").unwrap().is_some());
}

#[test]
fn data_from_before_user_ids_goes_to_the_first_user_but_never_mixes_with_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = open_as(&path, None).unwrap();
    s.put("c", Some("old"), json!({})).unwrap();
    s.close();
    let s = open_as(&path, Some("amina")).unwrap();
    assert!(s.get("c", "old").unwrap().is_some(), "claimed");
    s.sign_out(SignOut::KeepUnsynced).unwrap();
    // Data written without a user id while she has a seal: hers cannot come back
    // into it.
    let anon = open_as(&path, None).unwrap();
    anon.put("c", Some("anon"), json!({})).unwrap();
    anon.close();
    assert_eq!(
        open_as(&path, Some("amina")).unwrap_err(),
        Error::WrongUser { holder: None }
    );
    let anon = open_as(&path, None).unwrap();
    assert_eq!(ids(&anon.query("c", &Query::new()).unwrap()), ["anon"]);
}

#[test]
fn deleting_a_database_refuses_an_open_one_and_removes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let files = |p: &Path| -> Vec<PathBuf> {
        ["", "-wal", "-shm"]
            .iter()
            .map(|s| PathBuf::from(format!("{}{s}", p.display())))
            .filter(|f| f.exists())
            .collect()
    };
    let s = aminas_day(&path);
    assert_eq!(files(&path).len(), 3, "the file, its WAL and the WAL index");
    let other_spelling = dir.path().join(".").join("d.db");
    for p in [&path, &other_spelling] {
        assert!(matches!(
            crate::delete_database(p),
            Err(Error::StillOpen(_))
        ));
    }
    assert_eq!(files(&path).len(), 3);
    let clone = s.clone();
    s.close();
    drop(clone);
    crate::delete_database(&path).unwrap();
    assert!(files(&path).is_empty());
    crate::delete_database(&path).unwrap();
    // A dropped store (no close) lets go of its file too.
    let s = open_as(&path, Some("ben")).unwrap();
    assert!(
        s.query("c", &Query::new()).unwrap().is_empty(),
        "a new file"
    );
    drop(s);
    crate::delete_database(&path).unwrap();
}

/// Counts a listener's calls and catches any that starts once `done` is set, or that
/// is still running when it is checked.
#[derive(Default)]
struct Watch {
    calls: AtomicUsize,
    running: AtomicUsize,
    late: AtomicUsize,
    done: AtomicBool,
}

impl Watch {
    fn call(&self) {
        if self.done.load(Ordering::SeqCst) {
            self.late.fetch_add(1, Ordering::SeqCst);
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Slow, so that closing finds a callback under way.
        std::thread::sleep(Duration::from_millis(15));
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn listeners_end_at_sign_out_and_close_and_none_is_called_after() {
    for sign_out in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let s = open_as(&path, Some("amina")).unwrap();
        let watch = Arc::new(Watch::default());
        let w = Arc::clone(&watch);
        let query = s
            .observe("c", &Query::new(), Arc::new(move |_: &[Record]| w.call()))
            .unwrap();
        let w = Arc::clone(&watch);
        let one = s
            .observe_one("c", "w0", Arc::new(move |_: Option<&Record>| w.call()))
            .unwrap();
        let w = Arc::clone(&watch);
        let feed = s
            .subscribe(Arc::new(move |_: &ChangeEvent| w.call()))
            .unwrap();
        // A writer keeps going until the store refuses it.
        let saved = Arc::new(Mutex::new(Vec::new()));
        let writer = std::thread::spawn({
            let (s, saved) = (s.clone(), Arc::clone(&saved));
            move || {
                for i in 0.. {
                    let id = format!("w{i}");
                    match s.put("c", Some(&id), json!({"i": i})) {
                        Ok(_) => saved.lock().unwrap().push(id),
                        Err(e) => return e,
                    }
                }
                unreachable!()
            }
        });
        while watch.calls.load(Ordering::SeqCst) < 10 {
            std::thread::sleep(Duration::from_millis(5));
        }
        if sign_out {
            s.sign_out(SignOut::KeepUnsynced).unwrap();
        } else {
            s.close();
        }
        watch.done.store(true, Ordering::SeqCst);
        assert_eq!(
            watch.running.load(Ordering::SeqCst),
            0,
            "a callback outlived close"
        );
        assert_eq!(writer.join().unwrap(), Error::Closed);
        for sub in [&query, &one, &feed] {
            assert!(sub.is_closed());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                query.closed().await;
                one.closed().await;
                feed.closed().await;
            })
            .await
            .expect("subscriptions report their end");
        });
        // Nothing new can start either.
        assert_eq!(
            s.subscribe(Arc::new(|_: &ChangeEvent| {})).unwrap_err(),
            Error::Closed
        );
        assert_eq!(
            s.observe("c", &Query::new(), Arc::new(|_: &[Record]| {}))
                .unwrap_err(),
            Error::Closed
        );
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            watch.late.load(Ordering::SeqCst),
            0,
            "a callback after close"
        );
        // Every write that returned is kept (sealed, or in the closed file), and
        // nothing written after the end landed.
        let saved = saved.lock().unwrap().clone();
        let s = open_as(&path, Some("amina")).unwrap();
        let kept = s.query("c", &Query::new().limit(100_000)).unwrap();
        let mut want = saved.clone();
        want.sort();
        let mut got: Vec<String> = kept.into_iter().map(|r| r.id).collect();
        got.sort();
        assert_eq!(got, want);
        s.close();
    }
}

/// Whether `needle` appears in the database file or the files beside it.
fn on_disk(path: &Path, needle: &str) -> bool {
    ["", "-wal", "-shm"].iter().any(|suffix| {
        std::fs::read(format!("{}{suffix}", path.display()))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

#[test]
fn removed_data_leaves_no_trace_in_the_file_and_sealed_data_stays_only_in_its_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = open_as(&path, Some("amina")).unwrap();
    // Enough synced records to fill pages of the table, its index and the search index.
    let page: Vec<Change> = (0..300)
        .map(|i| {
            change(
                "c",
                &format!("s{i:03}"),
                i + 1,
                &format!("Zanzibarite{i:03} Kole"),
            )
        })
        .collect();
    s.apply_pull_page("c", &page, "cur", None).unwrap();
    s.put("c", Some("mine"), json!({"name": "Quetzalwort unsent"}))
        .unwrap();
    s.close();
    assert!(on_disk(&path, "Zanzibarite150"));
    let s = open_as(&path, Some("amina")).unwrap();
    s.sign_out(SignOut::KeepUnsynced).unwrap();
    for removed in ["Zanzibarite", "zanzibarite", "s150"] {
        assert!(!on_disk(&path, removed), "{removed} is still in the file");
    }
    // Without the `encryption` feature, sealed data is kept apart but not encrypted.
    assert!(on_disk(&path, "Quetzalwort unsent"));
}
