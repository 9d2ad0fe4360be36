#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The engine's liveness promises on a link that hangs and a disk that is slow: a
//! background job's deadline holds even when its call joined a running sync, and the
//! UI's `status()` never waits on the sync's disk work.
//!
//! The server here is a loopback socket that takes requests and never answers them
//! (or drops them when the test says), which is what a dead field link looks like.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_core::{
    ConflictStrategy, HttpTimeouts, HttpTransport, StaticToken, Store, StoreConfig, SyncConfig,
    SyncEngine, SyncOutcome,
};

/// A listener that accepts connections and hands each one to the test.
fn dead_link() -> (String, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn engine(rt: &tokio::runtime::Runtime, store: &Store, url: &str) -> SyncEngine {
    let timeouts = HttpTimeouts {
        request: Duration::from_secs(60),
        ..HttpTimeouts::default()
    };
    let transport = Arc::new(HttpTransport::new(url, timeouts).unwrap());
    let tokens = Arc::new(StaticToken("t".into()));
    SyncEngine::new(
        store.clone(),
        transport,
        tokens,
        SyncConfig::default(),
        rt.handle().clone(),
    )
}

fn config() -> StoreConfig {
    StoreConfig::default().with_collection("patients", ConflictStrategy::FieldMerge)
}

#[test]
fn a_call_that_joins_a_running_sync_returns_by_its_own_deadline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("d.db"), config()).unwrap();
    let (url, requests) = dead_link();
    let engine = engine(&rt, &store, &url);
    // An app-started sync with no deadline, stuck on a request that never returns.
    let first = rt.spawn({
        let engine = engine.clone();
        async move { engine.sync_now(None).await }
    });
    let _held = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    // A background job joins it with the 30 s a scheduler allows (here 300 ms).
    let started = Instant::now();
    let joined = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            engine.sync_now(Some(Duration::from_millis(300))),
        )
        .await
    });
    let report = joined.expect("the joined call waited past its deadline");
    assert_eq!(report.outcome, SyncOutcome::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The running sync is not the joined call's to stop: it goes on for its owner.
    assert!(!first.is_finished());
    engine.cancel();
    let report = rt.block_on(first).unwrap();
    assert_eq!(report.outcome, SyncOutcome::Cancelled);
}

#[test]
fn status_never_waits_for_the_sync_to_save_its_outcome() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    // Every write the sync makes waits this long for the disk, then fails.
    let slow_disk = Duration::from_millis(1500);
    let store = Store::open(
        &path,
        StoreConfig {
            busy_timeout: slow_disk,
            ..config()
        },
    )
    .unwrap();
    let (url, requests) = dead_link();
    let engine = engine(&rt, &store, &url);
    let sync = rt.spawn({
        let engine = engine.clone();
        async move { engine.sync_now(None).await }
    });
    let pull = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    // While the pull is on the wire, another writer takes the database's write lock;
    // then the link drops, so the sync ends backing off and saves when to retry.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    drop(pull);
    let mut slowest = Duration::ZERO;
    while !sync.is_finished() {
        let asked = Instant::now();
        let _ = engine.status();
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    other.execute_batch("ROLLBACK").unwrap();
    let report = rt.block_on(sync).unwrap();
    assert_eq!(report.outcome, SyncOutcome::BackingOff, "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("could not save")),
        "a failure to save is reported: {:?}",
        report.errors
    );
    assert!(
        slowest < slow_disk / 3,
        "status() waited {slowest:?} behind the sync's disk work"
    );
}
