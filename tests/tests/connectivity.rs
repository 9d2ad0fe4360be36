#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connectivity, with the network switched by hand the way the platform bridge does:
//! no request while offline, a debounced sync on reconnect, and the status stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_core::{
    StaticToken, StatusListener, SyncActivity, SyncConfig, SyncOutcome, SyncStatus,
};
use outpost_testkit::{AMINA, Backend, Fault, TestServer};
use outpost_tests::{Device, sync_config};
use serde_json::json;

fn auto_config() -> SyncConfig {
    SyncConfig {
        auto_sync: true,
        network_debounce: Duration::from_millis(400),
        write_debounce: Duration::from_millis(100),
        ..sync_config()
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_complete_with_no_network() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    a.engine.set_network_available(false);
    a.store
        .put("patients", Some("p"), json!({"name": "A"}))
        .unwrap();
    a.store.patch("patients", "p", json!({"age": 3})).unwrap();
    a.store.increment("patients", "p", "visits", 1).unwrap();
    assert_eq!(
        a.store.get("patients", "p").unwrap().unwrap().data["age"],
        json!(3)
    );
    assert_eq!(a.engine.sync_now(None).await.outcome, SyncOutcome::Offline);
    assert_eq!(a.link.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_accumulates_while_offline() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    a.engine.set_network_available(false);
    for i in 0..10u64 {
        a.store
            .put("answers", Some(&format!("q{i}")), json!({"i": i}))
            .unwrap();
        assert_eq!(a.store.outbox_counts().unwrap().pending, i + 1);
    }
    assert_eq!(a.engine.status().pending, 10);
    assert_eq!(a.engine.status().activity, SyncActivity::Offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_runs_on_restore_after_the_debounce() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open_with(
        dir.path(),
        "a",
        &server,
        Arc::new(StaticToken(AMINA.into())),
        auto_config(),
    );
    a.engine.set_network_available(false);
    for i in 0..3 {
        a.store
            .put("answers", Some(&format!("q{i}")), json!({"i": i}))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.link.requests(), 0);
    a.engine.set_network_available(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.link.requests(),
        0,
        "nothing before the debounce has passed"
    );
    assert!(
        wait_for(
            || a.store.outbox_counts().unwrap().pending == 0,
            Duration::from_secs(10)
        )
        .await,
        "auto sync did not run after reconnect"
    );
    assert!(
        a.link.stats().health.calls >= 1,
        "the server was probed first"
    );
    a.engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_network_and_offline_writes_make_no_request() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open_with(
        dir.path(),
        "a",
        &server,
        Arc::new(StaticToken(AMINA.into())),
        auto_config(),
    );
    a.engine.set_network_available(false);
    for i in 0..5 {
        a.store
            .put("answers", Some(&format!("q{i}")), json!({"i": i}))
            .unwrap();
        // Up for less than the debounce, then down again.
        a.engine.set_network_available(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.engine.set_network_available(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.link.requests(), 0);
    assert_eq!(a.store.outbox_counts().unwrap().pending, 5);
    a.engine.shutdown();
}

struct Recorder(Mutex<Vec<SyncStatus>>);
impl StatusListener for Recorder {
    fn on_status(&self, s: &SyncStatus) -> Result<(), String> {
        self.0.lock().unwrap().push(s.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_shows_each_state() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let a = Device::open(dir.path(), "a", &server, AMINA);
    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    let _sub = a.engine.subscribe_status(rec.clone());
    let seen = |s: SyncActivity| rec.0.lock().unwrap().iter().any(|x| x.activity == s);

    a.engine.set_network_available(false);
    assert!(wait_for(|| seen(SyncActivity::Offline), Duration::from_secs(2)).await);
    a.store.put("answers", Some("x"), json!({})).unwrap();
    assert!(
        wait_for(
            || rec.0.lock().unwrap().last().is_some_and(|s| s.pending == 1),
            Duration::from_secs(2)
        )
        .await
    );

    a.engine.set_network_available(true);
    assert!(
        !a.engine.is_network_available(),
        "not trusted before the debounce"
    );
    assert!(wait_for(|| a.engine.is_network_available(), Duration::from_secs(5)).await);
    a.link
        .fail_next_push(Fault::Delay(Duration::from_millis(300)));
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::Completed);
    assert!(seen(SyncActivity::Syncing));
    assert!(
        wait_for(
            || rec
                .0
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.activity == SyncActivity::Idle
                    && s.pending == 0
                    && s.last_synced_at_ms.is_some()),
            Duration::from_secs(2)
        )
        .await
    );

    a.store.put("answers", Some("y"), json!({})).unwrap();
    a.link.fail_next_push(Fault::ServerError);
    a.engine.sync_now(None).await;
    assert!(
        wait_for(
            || rec
                .0
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.activity == SyncActivity::BackingOff
                    && s.next_retry_at_ms.is_some()
                    && s.last_error.is_some()),
            Duration::from_secs(2)
        )
        .await
    );

    a.link.fail_next_push(Fault::Unauthorized);
    a.link.fail_next_push(Fault::Unauthorized);
    tokio::time::sleep(Duration::from_millis(600)).await; // past the backoff
    let r = a.engine.sync_now(None).await;
    assert_eq!(r.outcome, SyncOutcome::AuthFailed);
    assert!(wait_for(|| seen(SyncActivity::AuthError), Duration::from_secs(2)).await);
}
