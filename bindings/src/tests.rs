//! Unit tests of the FFI surface, called as foreign code would call it (owned strings,
//! boxed listeners). Most run without a server (sync goes to a closed loopback port);
//! the conflict listener's runs against the real server binary.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::*;

struct Token;
#[async_trait::async_trait]
impl TokenProvider for Token {
    async fn token(&self, _refresh: bool) -> Result<Option<String>, OutpostError> {
        Ok(Some("t".into()))
    }
}

fn config(dir: &tempfile::TempDir) -> OutpostConfig {
    OutpostConfig {
        path: dir.path().join("t.db").display().to_string(),
        // Port 9 (discard) on loopback: nothing listens, connections fail fast.
        server_url: "http://127.0.0.1:9/".into(),
        collections: vec![
            CollectionSpec {
                name: "answers".into(),
                strategy: ConflictStrategy::LastWriteWins,
                indexes: vec![],
                search: vec![],
                eager_attachments: false,
            },
            CollectionSpec {
                name: "reviews".into(),
                strategy: ConflictStrategy::Manual,
                indexes: vec![],
                search: vec![],
                eager_attachments: false,
            },
            CollectionSpec {
                name: "patients".into(),
                strategy: ConflictStrategy::FieldMerge,
                indexes: vec![vec![s("village"), s("name")], vec![s("age")]],
                search: vec![s("name")],
                eager_attachments: false,
            },
        ],
        durability: Durability::Normal,
        encryption_key: None,
        auto_sync: false,
        backoff_initial_ms: Some(50),
        backoff_max_ms: Some(100),
        network_debounce_ms: Some(10),
        user_id: None,
        attachment_cache_bytes: None,
        attachment_grace_ms: None,
    }
}

fn open() -> (tempfile::TempDir, Arc<Outpost>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Outpost::open(config(&dir), Box::new(Token)).unwrap();
    (dir, db)
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[test]
fn put_get_query_count_round_trip_json() {
    let (_d, db) = open();
    let r = db
        .put(
            s("answers"),
            Some(s("a1")),
            s(r#"{"q":"fever","a":true,"n":2}"#),
        )
        .unwrap();
    assert_eq!(r.sync_state, SyncState::Pending);
    assert_eq!(r.version, 0);
    db.put(s("answers"), None, s(r#"{"q":"cough","a":false,"n":1}"#))
        .unwrap();
    let got = db.get(s("answers"), s("a1")).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&got.data_json).unwrap();
    assert_eq!(v["q"], "fever");
    let q = Query {
        filters: vec![Filter {
            field: s("a"),
            value_json: s("true"),
        }],
        ..Query::default()
    };
    let rows = db.query(s("answers"), q).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, "a1");
    let by_n = Query {
        order_by: Some(s("n")),
        ..Query::default()
    };
    let rows = db.query(s("answers"), by_n).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].id, "a1");
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 2);
    db.patch(s("answers"), s("a1"), s(r#"{"a":null}"#)).unwrap();
    db.delete(s("answers"), s("a1")).unwrap();
    assert!(db.get(s("answers"), s("a1")).unwrap().is_none());
    // a1 was created and deleted before the server saw it: nothing to send for it.
    assert_eq!(db.status().unwrap().pending, 1);
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let (_d, db) = open();
    let e = db
        .put(s("answers"), Some(s("x")), s("{not json"))
        .unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    let e = db.put(s("answers"), Some(s("x")), s("[1,2]")).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    let e = db.put(s("Bad"), None, s("{}")).unwrap_err();
    assert_eq!(e, OutpostError::InvalidCollection { name: s("Bad") });
    let e = db.put(s("nope"), None, s("{}")).unwrap_err();
    assert_eq!(e, OutpostError::UnknownCollection { name: s("nope") });
    let e = db.put(s("answers"), Some(s("")), s("{}")).unwrap_err();
    assert_eq!(e, OutpostError::InvalidRecordId);
    let e = db.patch(s("answers"), s("missing"), s("{}")).unwrap_err();
    assert!(matches!(e, OutpostError::NotFound { .. }), "{e:?}");
    let bad_filter = Query {
        filters: vec![Filter {
            field: s("a"),
            value_json: s("tru"),
        }],
        ..Query::default()
    };
    let e = db.query(s("answers"), bad_filter).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    let e = db
        .resolve(
            1,
            Resolution::Merged {
                data_json: s("nope"),
            },
        )
        .unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 0);
    assert_eq!(db.status().unwrap().pending, 0);
}

#[test]
fn bad_config_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.server_url = s("http://example.org/");
    let e = Outpost::open(c, Box::new(Token)).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidConfig { .. }), "{e:?}");
    let mut c = config(&dir);
    c.collections.push(c.collections[0].clone());
    let e = Outpost::open(c, Box::new(Token)).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidConfig { .. }), "{e:?}");
    for bad_index in [vec![], vec![s("a\"b")]] {
        let mut c = config(&dir);
        c.collections[2].indexes.push(bad_index);
        let e = Outpost::open(c, Box::new(Token)).unwrap_err();
        assert!(matches!(e, OutpostError::InvalidConfig { .. }), "{e:?}");
    }
    let mut c = config(&dir);
    c.encryption_key = Some(vec![7; 32]);
    let opened = Outpost::open(c, Box::new(Token));
    if cfg!(feature = "encryption") {
        // A fresh file with a 32-byte key: an encrypted store.
        assert!(opened.is_ok(), "{opened:?}");
    } else {
        assert_eq!(opened.unwrap_err(), OutpostError::EncryptionUnavailable);
    }
}

#[test]
fn batch_is_atomic_and_parses_all_json_first() {
    let (_d, db) = open();
    let ops = vec![
        WriteOp::Put {
            collection: s("answers"),
            id: Some(s("c")),
            data_json: s(r#"{"n":1}"#),
        },
        WriteOp::Increment {
            collection: s("answers"),
            id: s("c"),
            field: s("visits"),
            by: 3,
        },
        WriteOp::SetAdd {
            collection: s("answers"),
            id: s("c"),
            field: s("tags"),
            element: s("urgent"),
        },
        WriteOp::SetRegister {
            collection: s("answers"),
            id: s("c"),
            field: s("owner"),
            value_json: s(r#""amina""#),
        },
        WriteOp::Delete {
            collection: s("answers"),
            id: s("c"),
        },
    ];
    let out = db.batch(ops).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out[0].is_some() && out[4].is_none());
    // An op failing inside the transaction rolls back the ones before it.
    let failing = vec![
        WriteOp::Put {
            collection: s("answers"),
            id: Some(s("d")),
            data_json: s("{}"),
        },
        WriteOp::Patch {
            collection: s("answers"),
            id: s("missing"),
            fields_json: s("{}"),
        },
    ];
    assert!(matches!(
        db.batch(failing).unwrap_err(),
        OutpostError::NotFound { .. }
    ));
    assert!(db.get(s("answers"), s("d")).unwrap().is_none());
    // Bad JSON anywhere fails before anything is written.
    let bad_json = vec![
        WriteOp::Put {
            collection: s("answers"),
            id: Some(s("e")),
            data_json: s("{}"),
        },
        WriteOp::SetRegister {
            collection: s("answers"),
            id: s("e"),
            field: s("f"),
            value_json: s("{"),
        },
    ];
    assert!(matches!(
        db.batch(bad_json).unwrap_err(),
        OutpostError::InvalidData { .. }
    ));
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 0);
}

#[test]
fn crdt_operations() {
    let (_d, db) = open();
    db.put(s("answers"), Some(s("r")), s("{}")).unwrap();
    db.increment(s("answers"), s("r"), s("visits"), 2).unwrap();
    db.increment(s("answers"), s("r"), s("visits"), -1).unwrap();
    db.set_add(s("answers"), s("r"), s("tags"), s("a")).unwrap();
    db.set_add(s("answers"), s("r"), s("tags"), s("b")).unwrap();
    db.set_remove(s("answers"), s("r"), s("tags"), s("a"))
        .unwrap();
    let r = db
        .set_register(s("answers"), s("r"), s("owner"), s(r#"{"name":"ben"}"#))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.data_json).unwrap();
    assert_eq!(v["visits"]["$crdt"], "pncounter");
    assert_eq!(v["tags"]["$crdt"], "orset");
    assert_eq!(v["owner"]["v"]["name"], "ben");
    // A CRDT op on a plain field is a typed error.
    db.patch(s("answers"), s("r"), s(r#"{"plain":1}"#)).unwrap();
    let e = db
        .increment(s("answers"), s("r"), s("plain"), 1)
        .unwrap_err();
    assert!(matches!(e, OutpostError::Crdt { .. }), "{e:?}");
}

// ---- local queries ----

/// Ten patients in two villages: p00..p09, ages 0..9, every third one `due`.
fn patients(db: &Outpost) {
    let names = [
        "Amina", "Ben", "Chioma", "Amir", "Dara", "Émile", "Femi", "Amadou", "Gift", "Hana",
    ];
    for (i, name) in names.iter().enumerate() {
        let village = if i % 2 == 0 { "v042" } else { "v043" };
        let status = if i % 3 == 0 { "\"due\"" } else { "null" };
        let data = format!(
            r#"{{"name":"{name}","village":"{village}","age":{i},"status":{status},"child":{}}}"#,
            i < 5
        );
        db.put(s("patients"), Some(format!("p{i:02}")), data)
            .unwrap();
    }
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn by_json(filter_json: &str) -> Query {
    Query {
        filter_json: Some(s(filter_json)),
        ..Query::default()
    }
}

#[test]
fn filter_json_and_sort_keys_select_and_order_records() {
    let (_d, db) = open();
    patients(&db);
    let q = Query {
        filter_json: Some(s(
            r#"{"and":[{"eq":["village","v042"]},{"gte":["age",2]},{"in":["status",["due",null]]}]}"#,
        )),
        order: vec![OrderBy {
            field: Some(s("age")),
            descending: true,
        }],
        ..Query::default()
    };
    assert_eq!(
        ids(&db.query(s("patients"), q).unwrap()),
        ["p08", "p06", "p04", "p02"]
    );
    let q = by_json(
        r#"{"or":[{"prefix_ci":["name","am"]},{"is_null":"status"},{"exists":"nowhere"}]}"#,
    );
    let rows = db.query(s("patients"), q).unwrap();
    assert_eq!(
        ids(&rows),
        ["p00", "p01", "p02", "p03", "p04", "p05", "p07", "p08"]
    );
    // The legacy equalities are and-ed with the JSON filter, and the legacy sort key
    // comes before `order`.
    let q = Query {
        filters: vec![Filter {
            field: s("child"),
            value_json: s("true"),
        }],
        filter_json: Some(s(r#"{"ne":["name","Ben"]}"#)),
        order_by: Some(s("village")),
        descending: true,
        order: vec![OrderBy {
            field: Some(s("name")),
            descending: false,
        }],
        limit: Some(3),
        ..Query::default()
    };
    assert_eq!(
        ids(&db.query(s("patients"), q).unwrap()),
        ["p03", "p00", "p02"]
    );
    let by_id_desc = Query {
        order: vec![OrderBy {
            field: None,
            descending: true,
        }],
        limit: Some(2),
        ..Query::default()
    };
    assert_eq!(
        ids(&db.query(s("patients"), by_id_desc).unwrap()),
        ["p09", "p08"]
    );
}

#[test]
fn query_page_walks_every_record_once_while_records_are_written() {
    let (_d, db) = open();
    patients(&db);
    let mut q = Query {
        order: vec![OrderBy {
            field: Some(s("village")),
            descending: false,
        }],
        limit: Some(3),
        ..Query::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = db.query_page(s("patients"), q.clone()).unwrap();
        pages += 1;
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        if pages == 1 {
            // A record sorting before the cursor moves every offset, not the keyset.
            db.put(s("patients"), Some(s("a-new")), s(r#"{"village":"v000"}"#))
                .unwrap();
        }
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    let mut expected: Vec<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    expected.sort_by_key(|id| (id.as_bytes()[2] % 2, id.clone()));
    assert_eq!(seen, expected);
    let all = db.query_page(s("patients"), Query::default()).unwrap();
    assert_eq!((all.records.len(), all.next), (11, None));
}

#[test]
fn count_where_and_search() {
    let (_d, db) = open();
    patients(&db);
    let n = db
        .count_where(s("patients"), s(r#"{"in":["village",["v042","v043"]]}"#))
        .unwrap();
    assert_eq!(n, 10);
    let n = db
        .count_where(
            s("patients"),
            s(r#"{"and":[{"lt":["age",5]},{"eq":["status","due"]}]}"#),
        )
        .unwrap();
    assert_eq!(n, 2);
    // Whole words with a trailing `*` as a prefix, case and diacritics folded.
    let rows = db
        .query(s("patients"), by_json(r#"{"search":"ami*"}"#))
        .unwrap();
    assert_eq!(ids(&rows), ["p00", "p03"]);
    let rows = db
        .query(s("patients"), by_json(r#"{"search":"emile"}"#))
        .unwrap();
    assert_eq!(ids(&rows), ["p05"]);
    let n = db
        .count_where(s("patients"), s(r#"{"search":"amadou"}"#))
        .unwrap();
    assert_eq!(n, 1);
}

/// Sends what each call of a listener is given; fails the first call when asked to.
struct Recorder<T> {
    tx: Mutex<mpsc::Sender<T>>,
    calls: AtomicU32,
    fail_first: bool,
}

impl<T> Recorder<T> {
    fn new(fail_first: bool) -> (Box<Recorder<T>>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel();
        let listener = Recorder {
            tx: Mutex::new(tx),
            calls: AtomicU32::new(0),
            fail_first,
        };
        (Box::new(listener), rx)
    }

    fn record(&self, value: T) -> Result<(), OutpostError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.lock().unwrap().send(value);
        if self.fail_first && n == 0 {
            return Err(OutpostError::Callback {
                detail: s("listener threw"),
            });
        }
        Ok(())
    }
}

impl ChangeListener for Recorder<ChangeEvent> {
    fn on_change(&self, event: ChangeEvent) -> Result<(), OutpostError> {
        self.record(event)
    }
}

/// A query's result as its ids.
impl QueryListener for Recorder<Vec<String>> {
    fn on_result(&self, records: Vec<Record>) -> Result<(), OutpostError> {
        self.record(records.into_iter().map(|r| r.id).collect())
    }
}

/// A record as its data.
impl RecordListener for Recorder<Option<String>> {
    fn on_record(&self, record: Option<Record>) -> Result<(), OutpostError> {
        self.record(record.map(|r| r.data_json))
    }
}

fn next<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

fn quiet<T: std::fmt::Debug>(rx: &mpsc::Receiver<T>) {
    let got = rx.recv_timeout(Duration::from_millis(300));
    assert!(got.is_err(), "nothing more was due, got {got:?}");
}

#[test]
fn observe_delivers_the_result_then_only_changes_and_close_stops_it() {
    let (_d, db) = open();
    patients(&db);
    let (listener, rx) = Recorder::new(false);
    let q = Query {
        filter_json: Some(s(r#"{"eq":["status","due"]}"#)),
        limit: Some(10),
        ..Query::default()
    };
    let handle = db.observe(s("patients"), q, listener).unwrap();
    assert_eq!(next(&rx), ["p00", "p03", "p06", "p09"]);
    db.patch(s("patients"), s("p01"), s(r#"{"status":"due"}"#))
        .unwrap();
    assert_eq!(next(&rx), ["p00", "p01", "p03", "p06", "p09"]);
    // Commits that leave the result as it was deliver nothing.
    db.patch(s("patients"), s("p02"), s(r#"{"age":20}"#))
        .unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    quiet(&rx);
    handle.close();
    assert!(handle.is_closed());
    db.delete(s("patients"), s("p00")).unwrap();
    quiet(&rx);
}

#[test]
fn a_throwing_query_listener_is_called_again_on_the_next_change() {
    let (_d, db) = open();
    let (listener, rx) = Recorder::new(true);
    let _handle = db
        .observe(s("answers"), Query::default(), listener)
        .unwrap();
    assert_eq!(next(&rx), Vec::<String>::new());
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    assert_eq!(next(&rx), ["a"]);
}

#[test]
fn observe_one_follows_one_record_through_create_edit_and_delete() {
    let (_d, db) = open();
    let (listener, rx) = Recorder::new(false);
    let handle = db.observe_one(s("patients"), s("p1"), listener).unwrap();
    assert_eq!(next(&rx), None);
    db.put(s("patients"), Some(s("p1")), s(r#"{"name":"Amina"}"#))
        .unwrap();
    assert_eq!(next(&rx).as_deref(), Some(r#"{"name":"Amina"}"#));
    db.put(s("patients"), Some(s("p2")), s("{}")).unwrap();
    quiet(&rx);
    db.patch(s("patients"), s("p1"), s(r#"{"age":30}"#))
        .unwrap();
    assert_eq!(next(&rx).as_deref(), Some(r#"{"age":30,"name":"Amina"}"#));
    db.delete(s("patients"), s("p1")).unwrap();
    assert_eq!(next(&rx), None);
    handle.close();
    let (listener, _rx) = Recorder::<Option<String>>::new(false);
    let e = db.observe_one(s("patients"), s(""), listener).unwrap_err();
    assert_eq!(e, OutpostError::InvalidRecordId);
}

#[test]
fn bad_query_input_is_invalid_data_and_changes_nothing() {
    let (_d, db) = open();
    patients(&db);
    let page = db
        .query_page(
            s("patients"),
            Query {
                limit: Some(2),
                ..Query::default()
            },
        )
        .unwrap();
    let cursor = page.next.unwrap();
    let other_order = Query {
        order_by: Some(s("age")),
        after: Some(cursor.clone()),
        ..Query::default()
    };
    let bad_queries = [
        by_json(r#"{"like":["name","Am%"]}"#),   // unknown operator
        by_json(r#"{"eq":["na\"me","Amina"]}"#), // a field name no path can name
        by_json(r#"{"eq":["","Amina"]}"#),       // an empty field name
        by_json(r#"{"gt":["child",true]}"#),     // a range on a boolean
        by_json(r#"{"eq":["name"]}"#),           // a missing operand
        by_json(r#"{"and":{"eq":["a",1]}}"#),    // `and` of something not a list
        by_json("{\"eq\": [\"name\", "),         // not JSON at all
        Query {
            after: Some(s("not a cursor")),
            ..Query::default()
        },
        Query {
            after: Some(format!("{}00", &cursor[..cursor.len() - 2])),
            ..Query::default()
        },
        other_order,
        Query {
            order: vec![OrderBy {
                field: Some(s("bad\u{1}field")),
                descending: false,
            }],
            ..Query::default()
        },
    ];
    for q in bad_queries {
        let (listener, rx) = Recorder::new(false);
        for e in [
            db.query(s("patients"), q.clone()).map(|_| ()).unwrap_err(),
            db.query_page(s("patients"), q.clone())
                .map(|_| ())
                .unwrap_err(),
            db.observe(s("patients"), q.clone(), listener)
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(
                matches!(e, OutpostError::InvalidData { .. }),
                "{q:?}: {e:?}"
            );
        }
        assert!(rx.recv_timeout(Duration::from_millis(20)).is_err(), "{q:?}");
        if let Some(filter) = q.filter_json {
            let e = db.count_where(s("patients"), filter).unwrap_err();
            assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
        }
    }
    // Search needs declared search fields.
    let e = db
        .count_where(s("answers"), s(r#"{"search":"amina"}"#))
        .unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    let e = db
        .count_where(s("Patients"), s(r#"{"exists":"a"}"#))
        .unwrap_err();
    assert!(matches!(e, OutpostError::InvalidCollection { .. }), "{e:?}");
    assert_eq!(db.count(s("patients"), vec![]).unwrap(), 10);
    assert_eq!(db.status().unwrap().pending, 10);
}

#[test]
fn a_failing_listener_keeps_receiving_and_close_stops_it() {
    let (_d, db) = open();
    let (listener, rx) = Recorder::<ChangeEvent>::new(true);
    let handle = db.subscribe(listener).unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e.origin, ChangeOrigin::Local);
    assert_eq!(e.collections, vec![s("answers")]);
    db.put(s("answers"), Some(s("b")), s("{}")).unwrap();
    let e = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e.records[0].id, "b");
    handle.close();
    handle.close();
    assert!(handle.is_closed());
    db.put(s("answers"), Some(s("c")), s("{}")).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn calls_after_close_fail_with_closed() {
    let (_d, db) = open();
    let (listener, _rx) = Recorder::<ChangeEvent>::new(false);
    let handle = db.subscribe(listener).unwrap();
    db.close().unwrap();
    db.close().unwrap();
    assert!(db.is_closed());
    assert_eq!(
        db.put(s("answers"), None, s("{}")).unwrap_err(),
        OutpostError::Closed
    );
    assert_eq!(
        db.get(s("answers"), s("a")).unwrap_err(),
        OutpostError::Closed
    );
    assert_eq!(db.status().unwrap_err(), OutpostError::Closed);
    assert_eq!(db.cancel_sync().unwrap_err(), OutpostError::Closed);
    let rt = crate::runtime::runtime().unwrap();
    assert_eq!(
        rt.block_on(db.sync_now(Some(1000))).unwrap_err(),
        OutpostError::Closed
    );
    handle.close();
}

struct StatusRecorder(Mutex<mpsc::Sender<SyncStatus>>);
impl StatusListener for StatusRecorder {
    fn on_status(&self, status: SyncStatus) -> Result<(), OutpostError> {
        let _ = self.0.lock().unwrap().send(status);
        Ok(())
    }
}

#[test]
fn sync_offline_and_unreachable_report_instead_of_failing() {
    let (_d, db) = open();
    let (tx, rx) = mpsc::channel();
    let _h = db
        .subscribe_status(Box::new(StatusRecorder(Mutex::new(tx))))
        .unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    let rt = crate::runtime::runtime().unwrap();
    // Nothing listens on the port: a transient failure, the write stays queued.
    let r = rt.block_on(db.sync_now(Some(5_000))).unwrap();
    assert_eq!(r.outcome, SyncOutcome::BackingOff, "{r:?}");
    assert_eq!(db.status().unwrap().pending, 1);
    assert!(db.conflicts().unwrap().is_empty());
    assert_eq!(db.retry_failed().unwrap(), 0);
    db.set_network_available(false).unwrap();
    assert!(!db.is_network_available().unwrap());
    let r = rt.block_on(db.sync_now(Some(5_000))).unwrap();
    assert_eq!(r.outcome, SyncOutcome::Offline);
    assert!(r.should_retry);
    assert_eq!(db.status().unwrap().activity, SyncActivity::Offline);
    // Up is trusted only after the debounce and a health probe, which fails here.
    db.set_network_available(true).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!db.is_network_available().unwrap());
}

struct SlowToken;
#[async_trait::async_trait]
impl TokenProvider for SlowToken {
    async fn token(&self, _refresh: bool) -> Result<Option<String>, OutpostError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err(OutpostError::Callback {
            detail: s("no token"),
        })
    }
}

#[test]
fn deadline_and_cancel_stop_a_sync_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Outpost::open(config(&dir), Box::new(SlowToken)).unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    let rt = crate::runtime::runtime().unwrap();
    let r = rt.block_on(db.sync_now(Some(50))).unwrap();
    assert_eq!(r.outcome, SyncOutcome::DeadlineExceeded);
    let db2 = Arc::clone(&db);
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        db2.cancel_sync().unwrap();
    });
    let r = rt.block_on(db.sync_now(None)).unwrap();
    canceller.join().unwrap();
    assert_eq!(r.outcome, SyncOutcome::Cancelled);
    assert_eq!(db.status().unwrap().pending, 1);
    // A provider that throws cannot get a token now: the sync backs off, no crash.
    let r = rt.block_on(db.sync_now(Some(5_000))).unwrap();
    assert_eq!(r.outcome, SyncOutcome::BackingOff, "{r:?}");
    assert!(r.should_retry);
    assert_eq!(db.status().unwrap().activity, SyncActivity::BackingOff);
}

struct SignedOut;
#[async_trait::async_trait]
impl TokenProvider for SignedOut {
    async fn token(&self, _refresh: bool) -> Result<Option<String>, OutpostError> {
        Ok(None)
    }
}

#[test]
fn a_provider_with_no_one_signed_in_stops_the_sync_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = Outpost::open(config(&dir), Box::new(SignedOut)).unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    let rt = crate::runtime::runtime().unwrap();
    let r = rt.block_on(db.sync_now(Some(5_000))).unwrap();
    assert_eq!(r.outcome, SyncOutcome::SignedOut, "{r:?}");
    assert!(!r.should_retry);
    let status = db.status().unwrap();
    assert_eq!(
        (status.activity, status.pending),
        (SyncActivity::SignedOut, 1)
    );
    assert_eq!(status.next_retry_at_ms, None, "no retry on a timer");
}

#[test]
fn sign_out_refuses_or_seals_and_ends_subscriptions_and_the_next_user_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let as_user = |user: &str| OutpostConfig {
        user_id: Some(s(user)),
        ..config(&dir)
    };
    let db = Outpost::open(as_user("amina"), Box::new(Token)).unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    let (listener, rx) = Recorder::<Vec<String>>::new(false);
    let handle = db
        .observe(s("answers"), Query::default(), listener)
        .unwrap();
    next(&rx);
    let rt = crate::runtime::runtime().unwrap();
    // The server is unreachable: syncing first cannot empty the queue.
    let refused = rt.block_on(db.sign_out(SignOutPolicy::SyncFirst { deadline_ms: 2_000 }));
    assert_eq!(
        refused.unwrap_err(),
        OutpostError::UnsyncedEdits {
            pending: 1,
            failed: 0,
            conflicts: 0
        }
    );
    assert!(!db.is_closed() && !handle.is_closed());
    assert!(db.get(s("answers"), s("a")).unwrap().is_some());
    rt.block_on(db.sign_out(SignOutPolicy::KeepUnsynced))
        .unwrap();
    assert!(db.is_closed() && handle.is_closed());
    rt.block_on(handle.closed());
    assert_eq!(
        db.get(s("answers"), s("a")).unwrap_err(),
        OutpostError::Closed
    );
    assert_eq!(
        rt.block_on(db.sign_out(SignOutPolicy::KeepUnsynced))
            .unwrap_err(),
        OutpostError::Closed
    );
    quiet(&rx);

    let path = config(&dir).path;
    let ben = Outpost::open(as_user("ben"), Box::new(Token)).unwrap();
    assert_eq!(ben.get(s("answers"), s("a")).unwrap(), None);
    assert_eq!(
        delete_database(path.clone()).unwrap_err(),
        OutpostError::StillOpen { path: path.clone() }
    );
    ben.close().unwrap();
    assert_eq!(
        Outpost::open(as_user("amina"), Box::new(Token)).unwrap_err(),
        OutpostError::WrongUser {
            holder: Some(s("ben"))
        }
    );
    delete_database(path.clone()).unwrap();
    assert!(!std::path::Path::new(&path).exists());
    // Her sealed edit went with the file.
    let amina = Outpost::open(as_user("amina"), Box::new(Token)).unwrap();
    assert_eq!(amina.get(s("answers"), s("a")).unwrap(), None);
}

/// The real server binary on a loopback port (amina and ben share a team).
fn server() -> outpost_testkit::TestServer {
    outpost_testkit::TestServer::start(&outpost_testkit::Backend::Sqlite)
}

struct Named(&'static str);
#[async_trait::async_trait]
impl TokenProvider for Named {
    async fn token(&self, _refresh: bool) -> Result<Option<String>, OutpostError> {
        Ok(Some(self.0.to_owned()))
    }
}

fn device(
    server: &outpost_testkit::TestServer,
    dir: &tempfile::TempDir,
    token: &'static str,
) -> Arc<Outpost> {
    let config = OutpostConfig {
        server_url: server.base_url(),
        ..config(dir)
    };
    Outpost::open(config, Box::new(Named(token))).unwrap()
}

struct Conflicts(Mutex<mpsc::Sender<Conflict>>);
impl ConflictListener for Conflicts {
    fn on_conflict(&self, c: Conflict) -> Result<(), OutpostError> {
        let _ = self.0.lock().unwrap().send(c);
        Ok(())
    }
}

/// Both devices edit `id` of the manual collection; `b` syncs last and conflicts.
fn make_conflict(a: &Outpost, b: &Outpost, id: &str) {
    let rt = crate::runtime::runtime().unwrap();
    let sync = |db: &Outpost| rt.block_on(db.sync_now(Some(10_000))).unwrap();
    a.put(s("reviews"), Some(s(id)), s(r#"{"score":1}"#))
        .unwrap();
    assert_eq!(sync(a).outcome, SyncOutcome::Completed);
    assert_eq!(sync(b).outcome, SyncOutcome::Completed);
    a.patch(s("reviews"), s(id), s(r#"{"score":2}"#)).unwrap();
    b.patch(s("reviews"), s(id), s(r#"{"score":3}"#)).unwrap();
    assert_eq!(sync(a).outcome, SyncOutcome::Completed);
    let r = sync(b);
    assert_eq!(
        (r.outcome, r.conflicts),
        (SyncOutcome::Completed, 1),
        "{r:?}"
    );
}

#[test]
fn a_conflict_listener_hears_conflicts_while_set_and_none_once_cleared() {
    let server = server();
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        device(&server, &da, outpost_testkit::AMINA),
        device(&server, &db_, outpost_testkit::BEN),
    );
    let (tx, rx) = mpsc::channel();
    b.set_conflict_listener(Some(Box::new(Conflicts(Mutex::new(tx)))))
        .unwrap();
    make_conflict(&a, &b, "r1");
    let heard = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (heard.record_id.as_str(), heard.strategy),
        ("r1", ConflictStrategy::Manual)
    );
    b.set_conflict_listener(None).unwrap();
    make_conflict(&a, &b, "r2");
    assert_eq!(
        b.conflicts().unwrap().len(),
        2,
        "both conflicts wait for the app"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a cleared listener is not called"
    );
    let e = b.resolve(42, Resolution::KeepLocal).unwrap_err();
    assert!(matches!(e, OutpostError::NotFound { .. }), "{e:?}");
    b.resolve(heard.id, Resolution::KeepLocal).unwrap();
    assert_eq!(b.conflicts().unwrap().len(), 1);
}

#[test]
fn attachments_cross_as_paths_and_references_and_reach_another_device() {
    let server = server();
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        device(&server, &da, outpost_testkit::AMINA),
        device(&server, &db_, outpost_testkit::BEN),
    );
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = da.path().join("photo.jpg");
    std::fs::write(&src, &photo).unwrap();
    let r = a
        .attach_file(
            src.display().to_string(),
            s("image/jpeg"),
            Some(s("photo.jpg")),
        )
        .unwrap();
    assert_eq!(r.size, 300_000);
    let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
    assert_eq!(v["$attachment"], r.sha256.as_str());
    a.put(
        s("answers"),
        Some(s("a1")),
        format!(r#"{{"photo":{}}}"#, r.json),
    )
    .unwrap();
    assert_eq!(a.status().unwrap().attachment_uploads, 1);
    let rt = crate::runtime::runtime().unwrap();
    let report = rt.block_on(a.sync_now(Some(30_000))).unwrap();
    assert_eq!(
        (report.outcome, report.files_uploaded),
        (SyncOutcome::Completed, 1),
        "{report:?}"
    );
    assert_eq!(a.status().unwrap().attachment_uploads, 0);

    rt.block_on(b.sync_now(Some(30_000))).unwrap();
    assert!(matches!(
        b.attachment(r.sha256.clone()).unwrap(),
        Attachment::Pending { .. }
    ));
    assert_eq!(b.status().unwrap().attachment_downloads, 1);
    let report = rt.block_on(b.sync_now(Some(30_000))).unwrap();
    assert_eq!(report.files_downloaded, 1, "{report:?}");
    match b.attachment(r.sha256.clone()).unwrap() {
        Attachment::Ready { path, size } => {
            assert_eq!(size, 300_000);
            assert!(std::fs::read(path).unwrap() == photo);
        }
        other => panic!("{other:?}"),
    }
    // Bad input is a typed error.
    let e = a.attach_bytes(vec![1], s("no-slash"), None).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
    let e = a
        .attach_file(s("/nonexistent/x"), s("a/b"), None)
        .unwrap_err();
    assert!(matches!(e, OutpostError::File { .. }), "{e:?}");
    let e = a.attachment(s("xyz")).unwrap_err();
    assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
}

#[test]
fn a_sync_report_crosses_with_every_count() {
    let r = outpost_core::SyncReport {
        outcome: outpost_core::SyncOutcome::BackingOff,
        pushed: 1,
        applied: 2,
        conflicts: 3,
        rejected: 4,
        pulled: 5,
        repulls: 6,
        requests: 7,
        bytes_sent: 10,
        bytes_received: 11,
        progress: outpost_core::SyncProgress {
            download: outpost_core::Progress {
                changes_done: 12,
                changes_total: 13,
                bytes_done: 14,
                bytes_total: 15,
            },
            upload: outpost_core::Progress::default(),
            collections: vec![outpost_core::CollectionProgress {
                collection: s("answers"),
                download: outpost_core::Progress::default(),
                upload: outpost_core::Progress {
                    changes_done: 16,
                    ..outpost_core::Progress::default()
                },
            }],
        },
        files_uploaded: 17,
        files_downloaded: 18,
        file_bytes_sent: 19,
        file_bytes_received: 20,
        duration: Duration::from_millis(8),
        errors: vec![s("nine")],
    };
    let got = SyncReport::from(r);
    assert_eq!(
        got,
        SyncReport {
            outcome: SyncOutcome::BackingOff,
            pushed: 1,
            applied: 2,
            conflicts: 3,
            rejected: 4,
            pulled: 5,
            repulls: 6,
            requests: 7,
            bytes_sent: 10,
            bytes_received: 11,
            progress: SyncProgress {
                download: Progress {
                    changes_done: 12,
                    changes_total: 13,
                    bytes_done: 14,
                    bytes_total: 15,
                },
                upload: Progress::default(),
                collections: vec![CollectionProgress {
                    collection: s("answers"),
                    download: Progress::default(),
                    upload: Progress {
                        changes_done: 16,
                        ..Progress::default()
                    },
                }],
            },
            files_uploaded: 17,
            files_downloaded: 18,
            file_bytes_sent: 19,
            file_bytes_received: 20,
            duration_ms: 8,
            errors: vec![s("nine")],
            should_retry: true,
        }
    );
}

#[test]
fn panics_become_internal_errors_and_core_errors_map_one_to_one() {
    let e = crate::error::guard::<()>(|| panic!("boom"));
    assert_eq!(e.unwrap_err(), OutpostError::Internal { detail: s("boom") });
    use outpost_core::Error as E;
    let cases = [
        (
            E::InvalidCollection(s("X")),
            OutpostError::InvalidCollection { name: s("X") },
        ),
        (
            E::UnknownCollection(s("x")),
            OutpostError::UnknownCollection { name: s("x") },
        ),
        (E::InvalidRecordId, OutpostError::InvalidRecordId),
        (
            E::InvalidData(s("d")),
            OutpostError::InvalidData { detail: s("d") },
        ),
        (
            E::InvalidConfig(s("c")),
            OutpostError::InvalidConfig { detail: s("c") },
        ),
        (
            E::NotFound {
                collection: s("c"),
                id: s("i"),
            },
            OutpostError::NotFound {
                collection: s("c"),
                id: s("i"),
            },
        ),
        (E::Crdt(s("k")), OutpostError::Crdt { detail: s("k") }),
        (
            E::SchemaTooNew {
                found: 9,
                supported: 3,
            },
            OutpostError::SchemaTooNew {
                found: 9,
                supported: 3,
            },
        ),
        (E::WrongKey, OutpostError::WrongKey),
        (
            E::EncryptionUnavailable,
            OutpostError::EncryptionUnavailable,
        ),
        (E::Closed, OutpostError::Closed),
        (E::Interrupted, OutpostError::Interrupted),
        (
            E::Database(s("disk")),
            OutpostError::Database { detail: s("disk") },
        ),
        (
            E::WrongUser {
                holder: Some(s("amina")),
            },
            OutpostError::WrongUser {
                holder: Some(s("amina")),
            },
        ),
        (
            E::WrongUser { holder: None },
            OutpostError::WrongUser { holder: None },
        ),
        (
            E::UnsyncedEdits {
                pending: 1,
                failed: 2,
                conflicts: 3,
            },
            OutpostError::UnsyncedEdits {
                pending: 1,
                failed: 2,
                conflicts: 3,
            },
        ),
        (
            E::StillOpen(s("/d.db")),
            OutpostError::StillOpen { path: s("/d.db") },
        ),
        (E::File(s("full")), OutpostError::File { detail: s("full") }),
    ];
    for (core, ffi) in cases {
        assert_eq!(OutpostError::from(core.clone()), ffi, "{core:?}");
    }
    let e = OutpostError::from(uniffi::UnexpectedUniFFICallbackError::new(
        "RuntimeException",
    ));
    assert!(matches!(e, OutpostError::Callback { .. }));
}

/// Holds every change callback until the test lets it go.
struct Stuck {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl ChangeListener for Stuck {
    fn on_change(&self, _event: ChangeEvent) -> Result<(), OutpostError> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(())
    }
}

#[test]
fn close_in_background_refuses_calls_at_once_and_closes_behind_a_running_listener() {
    let (dir, db) = open();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let listener = Stuck {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    };
    let _handle = db.subscribe(Box::new(listener)).unwrap();
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    entered.recv_timeout(Duration::from_secs(5)).unwrap();

    // `close` would wait for the stuck listener; this returns with it still stuck.
    let done = db.close_in_background().unwrap();
    assert!(db.is_closed());
    assert_eq!(
        db.put(s("answers"), None, s("{}")).unwrap_err(),
        OutpostError::Closed
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!done.is_closed(), "closed while a listener still runs");

    release.send(()).unwrap();
    let rt = crate::runtime::runtime().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), done.closed())
            .await
            .unwrap()
    });
    delete_database(config(&dir).path).unwrap();
    assert_eq!(db.close_in_background().unwrap_err(), OutpostError::Closed);
}

// The log sink. It is one per process, so these tests take turns; records of other
// tests running meanwhile arrive too, and none of them may carry the secrets either.

static LOG_TURN: Mutex<()> = Mutex::new(());

fn log_turn() -> std::sync::MutexGuard<'static, ()> {
    LOG_TURN.lock().unwrap_or_else(|p| p.into_inner())
}

type Lines = Arc<Mutex<Vec<(LogLevel, String, String)>>>;

/// Keeps every record; throws on each one when `throws`.
struct Collect {
    lines: Lines,
    throws: bool,
}
impl OutpostLogger for Collect {
    fn log(&self, level: LogLevel, target: String, message: String) -> Result<(), OutpostError> {
        self.lines.lock().unwrap().push((level, target, message));
        if self.throws {
            return Err(OutpostError::Callback {
                detail: s("logger down"),
            });
        }
        Ok(())
    }
}

fn collect(level: LogLevel, throws: bool) -> Lines {
    let lines = Lines::default();
    let logger = Collect {
        lines: Arc::clone(&lines),
        throws,
    };
    set_logger(Box::new(logger), level).unwrap();
    lines
}

/// Waits until a record logged now has been delivered: the queue is in order.
fn flush(lines: &Lines) {
    let mark = format!("mark {}", uuid_ish());
    let until = std::time::Instant::now() + Duration::from_secs(10);
    // Again now and then: a full queue drops it.
    for i in 0.. {
        if i % 20 == 0 {
            tracing::error!("{mark}");
        }
        if lines.lock().unwrap().iter().any(|l| l.2 == mark) {
            return;
        }
        assert!(std::time::Instant::now() < until, "{mark} never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn uuid_ish() -> u64 {
    static N: AtomicU32 = AtomicU32::new(0);
    u64::from(N.fetch_add(1, Ordering::Relaxed))
}

/// A broken server on loopback that quotes every request back: its token and body in
/// the message of a 500 error, then in a 200 answer of the wrong shape.
fn echoing_server() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let echo = serde_json::to_string(&format!("{head}{}", String::from_utf8_lossy(&body)))
                .unwrap();
            let (status, answer) = if n % 2 == 0 {
                (
                    "500 Internal Server Error",
                    format!(r#"{{"error":{{"code":"internal","message":{echo}}}}}"#),
                )
            } else {
                ("200 OK", format!(r#"{{"results":{echo}}}"#))
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    url
}

struct Secret(&'static str);
#[async_trait::async_trait]
impl TokenProvider for Secret {
    async fn token(&self, _refresh: bool) -> Result<Option<String>, OutpostError> {
        Ok(Some(self.0.to_owned()))
    }
}

#[test]
fn log_records_at_trace_carry_no_record_data_token_or_credentials() {
    const DATA: &str = "diagnosis-LEAKCHECK-data-5e1";
    const TOKEN: &str = "tok-LEAKCHECK-bearer-9c2";
    const PASSWORD: &str = "pw-LEAKCHECK-url-4d7";
    let _turn = log_turn();
    let lines = collect(LogLevel::Trace, false);
    let rt = crate::runtime::runtime().unwrap();
    let sync = |db: &Outpost| rt.block_on(db.sync_now(Some(10_000))).unwrap();
    let secret = |n: u32| format!(r#"{{"note":"{DATA}","score":{n},"tags":["{DATA}"]}}"#);

    // Nothing listens, and the URL carries credentials.
    let dir = tempfile::tempdir().unwrap();
    let c = OutpostConfig {
        server_url: format!("http://user:{PASSWORD}@127.0.0.1:9/"),
        ..config(&dir)
    };
    let db = Outpost::open(c, Box::new(Secret(TOKEN))).unwrap();
    db.put(s("answers"), Some(s("a")), secret(1)).unwrap();
    assert_eq!(sync(&db).outcome, SyncOutcome::BackingOff);
    db.close().unwrap();

    // A server that quotes the request, token and record included, back.
    let dir = tempfile::tempdir().unwrap();
    let c = OutpostConfig {
        server_url: echoing_server(),
        ..config(&dir)
    };
    let db = Outpost::open(c, Box::new(Secret(TOKEN))).unwrap();
    db.put(s("answers"), Some(s("a")), secret(1)).unwrap();
    db.put(s("answers"), Some(s("b")), secret(2)).unwrap();
    for _ in 0..2 {
        assert_ne!(sync(&db).outcome, SyncOutcome::Completed);
    }
    db.close().unwrap();

    // The real server refuses the token.
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let c = OutpostConfig {
        server_url: server.base_url(),
        ..config(&dir)
    };
    let db = Outpost::open(c, Box::new(Secret(TOKEN))).unwrap();
    db.put(s("answers"), Some(s("a")), secret(1)).unwrap();
    assert_eq!(sync(&db).outcome, SyncOutcome::AuthFailed);
    db.close().unwrap();

    // A conflict over the secret, and a patch that moves it.
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        device(&server, &da, outpost_testkit::AMINA),
        device(&server, &db_, outpost_testkit::BEN),
    );
    a.put(s("reviews"), Some(s("r")), secret(1)).unwrap();
    assert_eq!(sync(&a).outcome, SyncOutcome::Completed);
    assert_eq!(sync(&b).outcome, SyncOutcome::Completed);
    a.patch(s("reviews"), s("r"), secret(2)).unwrap();
    b.patch(s("reviews"), s("r"), secret(3)).unwrap();
    assert_eq!(sync(&a).outcome, SyncOutcome::Completed);
    assert_eq!(sync(&b).conflicts, 1);

    flush(&lines);
    clear_logger();
    let lines = lines.lock().unwrap();
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| l.1.starts_with("outpost_"))
        .collect();
    assert_eq!(ours.len(), lines.len(), "only Outpost's own records pass");
    for needle in [DATA, TOKEN, PASSWORD, "LEAKCHECK"] {
        for (level, target, message) in lines.iter() {
            assert!(
                !message.contains(needle) && !target.contains(needle),
                "{level:?} {target}: {message}"
            );
        }
    }
    // The failures did leave a trace.
    let said = |what: &str| lines.iter().any(|l| l.2.contains(what));
    assert!(said("outcome=AuthFailed"), "{lines:#?}");
    assert!(said("outcome=BackingOff"), "{lines:#?}");
    assert!(said("connect"), "the link failure is named: {lines:#?}");
    assert!(said("HTTP 500 internal"), "{lines:#?}");
    assert!(said("undecodable answer"), "{lines:#?}");
}

#[test]
fn log_level_filters_and_a_replaced_or_cleared_logger_hears_no_more() {
    let _turn = log_turn();
    let first = collect(LogLevel::Warn, false);
    tracing::info!("info-1");
    tracing::warn!("warn-1");
    flush(&first);
    let texts =
        |l: &Lines| -> Vec<String> { l.lock().unwrap().iter().map(|l| l.2.clone()).collect() };
    assert!(texts(&first).contains(&s("warn-1")));
    assert!(!texts(&first).contains(&s("info-1")));
    let levels: Vec<_> = first.lock().unwrap().iter().map(|l| l.0).collect();
    assert!(levels.iter().all(|&l| l <= LogLevel::Warn), "{levels:?}");

    let second = collect(LogLevel::Debug, false);
    tracing::debug!(n = 7, "debug-2");
    flush(&second);
    assert!(
        texts(&second).contains(&s("debug-2 n=7")),
        "{:?}",
        texts(&second)
    );
    assert!(!texts(&first).iter().any(|t| t.starts_with("debug-2")));

    clear_logger();
    tracing::error!("after-clear");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!texts(&second).contains(&s("after-clear")));
    // Other crates' records never pass, whatever the level.
    let third = collect(LogLevel::Trace, false);
    tracing::error!(target: "hyper_util::client", "not ours");
    flush(&third);
    assert!(!texts(&third).contains(&s("not ours")));
    clear_logger();
}

#[test]
fn log_a_throwing_logger_keeps_receiving() {
    let _turn = log_turn();
    let lines = collect(LogLevel::Info, true);
    for i in 0..3 {
        tracing::warn!("thrown-{i}");
    }
    flush(&lines);
    let texts: Vec<String> = lines.lock().unwrap().iter().map(|l| l.2.clone()).collect();
    for i in 0..3 {
        assert!(texts.contains(&format!("thrown-{i}")), "{texts:?}");
    }
    clear_logger();
}

/// Blocks on every record until let go.
struct StuckLogger {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    lines: Lines,
}
impl OutpostLogger for StuckLogger {
    fn log(&self, level: LogLevel, target: String, message: String) -> Result<(), OutpostError> {
        let (open, wake) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = wake.wait(open).unwrap();
        }
        self.lines.lock().unwrap().push((level, target, message));
        Ok(())
    }
}

#[test]
fn log_a_stuck_logger_never_blocks_the_core_and_hears_how_many_were_dropped() {
    let _turn = log_turn();
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let lines = Lines::default();
    let stuck = StuckLogger {
        gate: Arc::clone(&gate),
        lines: Arc::clone(&lines),
    };
    set_logger(Box::new(stuck), LogLevel::Trace).unwrap();
    // Real work too: writes log nothing at trace that could wait on the logger.
    let (_d, db) = open();
    let started = std::time::Instant::now();
    for i in 0..5_000 {
        tracing::warn!(i, "flood");
    }
    db.put(s("answers"), Some(s("a")), s("{}")).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "logging waited on the logger: {:?}",
        started.elapsed()
    );
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    tracing::warn!("after the flood");
    flush(&lines);
    clear_logger();
    let lines = lines.lock().unwrap();
    let dropped = lines
        .iter()
        .find(|l| l.2.contains("log records dropped"))
        .unwrap_or_else(|| panic!("no drop count in {} records", lines.len()));
    assert_eq!(
        (dropped.0, dropped.1.as_str()),
        (LogLevel::Warn, "outpost_ffi::logging")
    );
    let n: u64 = dropped.2.split(' ').next().unwrap().parse().unwrap();
    let floods = lines.iter().filter(|l| l.2.starts_with("flood")).count() as u64;
    assert!(
        n > 0 && floods + n >= 5_000,
        "{n} dropped, {floods} delivered"
    );
}

mod transaction;
