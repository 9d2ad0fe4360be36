#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An observed query during a real first sync: a fresh device pulls thousands of records
//! from the real server in pages while a screen observes a 50-row query. Its re-runs
//! must stay paced and its last result must be the query's result.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_core::{Filter, Query, Record, SyncOutcome};
use outpost_testkit::{AMINA, BEN, Backend, TestServer};
use outpost_tests::Device;
use serde_json::json;

const RECORDS: usize = 6_000;
const VILLAGES: usize = 20;

/// When the listener was called, and with what.
type Delivery = (Instant, Vec<Record>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_during_a_first_sync_reruns_paced_and_ends_on_the_result() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let source = Device::open(dir.path(), "source", &server, AMINA);
    for chunk in 0..RECORDS / 1000 {
        source
            .store
            .batch(|tx| {
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    let data = json!({
                        "village": format!("v{:02}", i % VILLAGES),
                        "name": format!("name {:05}", (i * 7919) % RECORDS),
                    });
                    tx.put("patients", Some(&format!("p{i:05}")), data)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let pushed = source.sync_until_quiet().await;
    assert_eq!(pushed.outcome, SyncOutcome::Completed);

    let fresh = Device::open(dir.path(), "fresh", &server, BEN);
    let query = Query::new()
        .matching(Filter::eq("village", "v07"))
        .order_by("name", false)
        .limit(50);
    let delivered: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let log = Arc::clone(&delivered);
    let sub = fresh
        .store
        .observe(
            "patients",
            &query,
            Arc::new(move |rows: &[Record]| {
                log.lock().unwrap().push((Instant::now(), rows.to_vec()));
            }),
        )
        .unwrap();
    let started = Instant::now();
    let report = fresh.sync_until_quiet().await;
    assert_eq!(report.outcome, SyncOutcome::Completed);
    assert_eq!(report.pulled, RECORDS as u64, "{report:?}");
    // Settle: the last page's re-run may still be waiting out its interval.
    let mut settled = sub.stats();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sub.stats();
        if now == settled {
            break;
        }
        settled = now;
    }
    let elapsed = started.elapsed();

    let want = fresh.store.query("patients", &query).unwrap();
    assert_eq!(want.len(), 50);
    assert!(
        want.iter().all(|r| r.data["village"] == json!("v07")),
        "the query itself"
    );
    let delivered = delivered.lock().unwrap();
    let (_, last) = delivered.last().unwrap();
    assert_eq!(last, &want, "the last delivery is the result");
    assert!(
        delivered[0].1.len() < 50,
        "the first run saw an empty device"
    );

    let stats = sub.stats();
    let paced = elapsed.as_millis() / 50 + 1;
    assert!(
        u128::from(stats.runs) <= paced,
        "{stats:?} in {elapsed:?}: more than one re-run per 50 ms"
    );
    assert!(stats.runs >= 2 && stats.deliveries as usize == delivered.len());
    // Runs start at least 50 ms apart; a delivery comes at its run's end, so two can
    // be a little closer when the first run was the slower.
    for pair in delivered.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(25), "deliveries {gap:?} apart");
    }
    drop(sub);
    fresh.engine.shutdown();
    source.engine.shutdown();
}
