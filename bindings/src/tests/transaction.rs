//! `Outpost::transaction` as foreign code drives it: a boxed body given an
//! `Arc<Transaction>`, on a real database file.

use super::*;

/// A body from a closure, as a Kotlin lambda would be wrapped.
struct Body<F>(F);

impl<F> TransactionBody for Body<F>
where
    F: Fn(Arc<Transaction>) -> Result<(), OutpostError> + Send + Sync,
{
    fn run(&self, tx: Arc<Transaction>) -> Result<(), OutpostError> {
        (self.0)(tx)
    }
}

fn body(
    f: impl Fn(Arc<Transaction>) -> Result<(), OutpostError> + Send + Sync + 'static,
) -> Box<dyn TransactionBody> {
    Box::new(Body(f))
}

fn data(r: &Record) -> serde_json::Value {
    serde_json::from_str(&r.data_json).unwrap()
}

fn visits(db: &Outpost, id: &str) -> Option<i64> {
    db.get(s("answers"), s(id))
        .unwrap()
        .map(|r| data(&r)["visits"].as_i64().unwrap())
}

#[test]
fn a_transaction_commits_a_read_modify_write_with_one_event() {
    let (_d, db) = open();
    db.put(s("answers"), Some(s("a")), s(r#"{"visits":1}"#))
        .unwrap();
    let (listener, events) = Recorder::<ChangeEvent>::new(false);
    let _sub = db.subscribe(listener).unwrap();
    db.transaction(body(|tx| {
        let a = tx.get(s("answers"), s("a"))?.expect("a exists");
        let n = data(&a)["visits"].as_i64().unwrap();
        tx.put(
            s("answers"),
            Some(s("a")),
            format!(r#"{{"visits":{}}}"#, n + 1),
        )?;
        tx.put(s("answers"), Some(s("b")), s(r#"{"visits":0}"#))?;
        Ok(())
    }))
    .unwrap();
    assert_eq!(visits(&db, "a"), Some(2));
    assert_eq!(visits(&db, "b"), Some(0));
    let event = next(&events);
    assert_eq!(event.origin, ChangeOrigin::Local);
    let mut ids: Vec<_> = event.records.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    quiet(&events);
}

#[test]
fn a_transaction_body_error_rolls_back_every_write_and_comes_back_unchanged() {
    let (_d, db) = open();
    db.put(s("answers"), Some(s("a")), s(r#"{"visits":1}"#))
        .unwrap();
    let (listener, events) = Recorder::<ChangeEvent>::new(false);
    let _sub = db.subscribe(listener).unwrap();
    let thrown = OutpostError::Callback {
        detail: s("IllegalStateException: not today"),
    };
    let e = db
        .transaction(body(move |tx| {
            tx.put(s("answers"), Some(s("a")), s(r#"{"visits":5}"#))?;
            tx.put(s("answers"), Some(s("b")), s(r#"{"visits":5}"#))?;
            tx.increment(s("answers"), s("a"), s("hits"), 1)?;
            Err(thrown.clone())
        }))
        .unwrap_err();
    assert_eq!(
        e,
        OutpostError::Callback {
            detail: s("IllegalStateException: not today")
        }
    );
    assert_eq!(visits(&db, "a"), Some(1));
    assert_eq!(db.get(s("answers"), s("b")).unwrap(), None);
    quiet(&events);
    // The writer was released: the store writes as before.
    db.put(s("answers"), Some(s("c")), s("{}")).unwrap();
    assert_eq!(next(&events).records[0].id, "c");
}

#[test]
fn a_panicking_transaction_body_rolls_back_and_is_an_internal_error() {
    let (_d, db) = open();
    let e = db
        .transaction(body(|tx| {
            tx.put(s("answers"), Some(s("a")), s("{}"))?;
            panic!("body blew up");
        }))
        .unwrap_err();
    assert_eq!(
        e,
        OutpostError::Internal {
            detail: s("body blew up")
        }
    );
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 0);
    db.transaction(body(|tx| {
        tx.put(s("answers"), Some(s("a")), s("{}")).map(|_| ())
    }))
    .unwrap();
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 1);
}

#[test]
fn a_transaction_reads_its_own_writes_and_others_see_them_only_after_commit() {
    let (_d, db) = open();
    patients(&db);
    let outside = db.clone();
    db.transaction(body(move |tx| {
        tx.put(s("answers"), Some(s("x")), s(r#"{"n":1,"tag":"t"}"#))?;
        tx.patch(s("answers"), s("x"), s(r#"{"n":2}"#))?;
        let x = tx.get(s("answers"), s("x"))?.unwrap();
        assert_eq!(data(&x)["n"], 2);
        tx.put(s("answers"), Some(s("y")), s(r#"{"n":3,"tag":"t"}"#))?;
        let by_tag = Query {
            filters: vec![Filter {
                field: s("tag"),
                value_json: s(r#""t""#),
            }],
            ..Query::default()
        };
        assert_eq!(ids(&tx.query(s("answers"), by_tag)?), ["x", "y"]);
        let n2 = vec![Filter {
            field: s("n"),
            value_json: s("2"),
        }];
        assert_eq!(tx.count(s("answers"), n2)?, 1);
        assert_eq!(tx.count_where(s("answers"), s(r#"{"gt":["n",1]}"#))?, 2);
        tx.delete(s("patients"), s("p00"))?;
        assert_eq!(tx.get(s("patients"), s("p00"))?, None);
        assert_eq!(tx.count(s("patients"), vec![])?, 9);
        // Another thread is not blocked from reading, and sees only what is committed.
        let other = outside.clone();
        let seen = std::thread::spawn(move || {
            (
                other.get(s("answers"), s("x")).unwrap(),
                other.count(s("patients"), vec![]).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(seen, (None, 10));
        Ok(())
    }))
    .unwrap();
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 2);
    assert_eq!(db.count(s("patients"), vec![]).unwrap(), 9);
}

#[test]
fn a_transaction_runs_crdt_ops_and_survives_input_errors_it_catches() {
    let (_d, db) = open();
    db.transaction(body(|tx| {
        // A patch of a missing record changes nothing, so the body may carry on.
        let e = tx.patch(s("answers"), s("r"), s("{}")).unwrap_err();
        assert!(matches!(e, OutpostError::NotFound { .. }), "{e:?}");
        let e = tx.put(s("answers"), Some(s("r")), s("{nope")).unwrap_err();
        assert!(matches!(e, OutpostError::InvalidData { .. }), "{e:?}");
        let e = tx.put(s("nope"), None, s("{}")).unwrap_err();
        assert_eq!(e, OutpostError::UnknownCollection { name: s("nope") });
        tx.put(s("answers"), Some(s("r")), s(r#"{"plain":1}"#))?;
        let e = tx
            .increment(s("answers"), s("r"), s("plain"), 1)
            .unwrap_err();
        assert!(matches!(e, OutpostError::Crdt { .. }), "{e:?}");
        tx.increment(s("answers"), s("r"), s("visits"), 2)?;
        tx.set_add(s("answers"), s("r"), s("tags"), s("a"))?;
        tx.set_add(s("answers"), s("r"), s("tags"), s("b"))?;
        tx.set_remove(s("answers"), s("r"), s("tags"), s("a"))?;
        tx.set_register(s("answers"), s("r"), s("owner"), s(r#""ben""#))?;
        Ok(())
    }))
    .unwrap();
    let r = data(&db.get(s("answers"), s("r")).unwrap().unwrap());
    assert_eq!(r["plain"], 1);
    assert_eq!(r["visits"]["$crdt"], "pncounter");
    assert_eq!(r["tags"]["$crdt"], "orset");
    assert_eq!(r["owner"]["v"], "ben");
}

#[test]
fn a_transaction_handle_used_after_its_body_returns_is_ended_and_changes_nothing() {
    let (_d, db) = open();
    let kept: Arc<Mutex<Option<Arc<Transaction>>>> = Arc::default();
    let keep = kept.clone();
    db.transaction(body(move |tx| {
        tx.put(s("answers"), Some(s("a")), s(r#"{"visits":1}"#))?;
        *keep.lock().unwrap() = Some(tx);
        Ok(())
    }))
    .unwrap();
    let tx = kept.lock().unwrap().take().unwrap();
    let (listener, events) = Recorder::<ChangeEvent>::new(false);
    let _sub = db.subscribe(listener).unwrap();
    assert_eq!(
        tx.put(s("answers"), Some(s("b")), s("{}")).unwrap_err(),
        OutpostError::TransactionEnded
    );
    assert_eq!(
        tx.increment(s("answers"), s("a"), s("visits"), 1)
            .unwrap_err(),
        OutpostError::TransactionEnded
    );
    assert_eq!(
        tx.get(s("answers"), s("a")).unwrap_err(),
        OutpostError::TransactionEnded
    );
    assert_eq!(db.count(s("answers"), vec![]).unwrap(), 1);
    quiet(&events);
    // Also from a failed body: its handle is just as dead.
    let keep = kept.clone();
    let _ = db.transaction(body(move |tx| {
        *keep.lock().unwrap() = Some(tx);
        Err(OutpostError::Callback { detail: s("no") })
    }));
    let tx = kept.lock().unwrap().take().unwrap();
    assert_eq!(
        tx.delete(s("answers"), s("a")).unwrap_err(),
        OutpostError::TransactionEnded
    );
    assert_eq!(visits(&db, "a"), Some(1));
}

#[test]
fn store_calls_from_a_transaction_body_fail_instead_of_waiting_forever() {
    let (_d, db) = open();
    let inner = db.clone();
    db.transaction(body(move |tx| {
        tx.put(s("answers"), Some(s("a")), s("{}"))?;
        assert_eq!(
            inner.put(s("answers"), Some(s("b")), s("{}")).unwrap_err(),
            OutpostError::InTransaction
        );
        assert_eq!(
            inner.get(s("answers"), s("a")).unwrap_err(),
            OutpostError::InTransaction
        );
        let nested = inner.transaction(body(|_| Ok(()))).unwrap_err();
        assert_eq!(nested, OutpostError::InTransaction);
        assert_eq!(inner.close().unwrap_err(), OutpostError::InTransaction);
        assert!(!inner.is_closed());
        Ok(())
    }))
    .unwrap();
    // The refused calls changed nothing; the body's own write committed.
    assert!(db.get(s("answers"), s("a")).unwrap().is_some());
    assert!(db.get(s("answers"), s("b")).unwrap().is_none());
    // Outside a body the same calls work again.
    db.put(s("answers"), Some(s("b")), s("{}")).unwrap();
}

#[test]
fn a_store_closed_during_a_transaction_rolls_it_back() {
    let (dir, db) = open();
    let closer = db.clone();
    let closing: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let running = closing.clone();
    let e = db
        .transaction(body(move |tx| {
            tx.put(s("answers"), Some(s("a")), s("{}"))?;
            // `close` waits for this transaction; meanwhile the body's calls fail.
            let c = closer.clone();
            *running.lock().unwrap() = Some(std::thread::spawn(move || c.close().unwrap()));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match tx.get(s("answers"), s("a")) {
                    Err(OutpostError::Closed) => break,
                    _ if std::time::Instant::now() > deadline => panic!("close never showed"),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Swallowed, but the transaction still cannot commit.
            Ok(())
        }))
        .unwrap_err();
    assert_eq!(e, OutpostError::Closed);
    closing.lock().unwrap().take().unwrap().join().unwrap();
    assert!(db.is_closed());
    let reopened = Outpost::open(config(&dir), Box::new(Token)).unwrap();
    assert_eq!(reopened.get(s("answers"), s("a")).unwrap(), None);
}
