#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sync over an EDGE-class link, end to end: the real server binary, devices with their
//! own database files, and the test kit's [`SlowLink`] proxy between them with the
//! bandwidth, round trip and dropped connections of a rural mobile network. These take
//! tens of seconds each, by design: the link is slow; they run side by side.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_core::transport::{PullParams, decode_body};
use outpost_core::{StaticToken, StatusListener, SyncConfig, SyncOutcome, SyncReport, SyncStatus};
use outpost_testkit::{AMINA, BEN, Backend, LinkShape, SlowLink, TestServer, patient, patient_id};
use outpost_tests::Device;
use serde_json::json;

/// Patients of a nurse's district in a first sync.
const RECORDS: u64 = 3000;
const KB: u64 = 1024;

/// Bytes on the wire, both ways, of the first sync of [`RECORDS`] patients through the
/// 8 KB/s link of [`a_first_sync_at_8_kbs_takes_half_the_bytes`], as the engine before
/// the dense pages, zstd and byte-sized pages made it (commit 622cdc9, this test's first
/// version run against it): 195,109 bytes down and 1,870 up, in 8 requests over one
/// connection, in 29.75 s. The test measures the same again side by side
/// ([`v1_first_sync_bytes`]) and checks that the two agree.
const RECORDED_BASELINE_WIRE_BYTES: u64 = 195_109 + 1_870;

/// Bytes both ways of a first sync as that engine made it, measured through `link` (a
/// link's rate changes its time, not its bytes): a protocol v1 client pulling each of
/// the device's collections in pages of the engine's 1,000-change limit, accepting gzip
/// only, with nothing to push.
async fn v1_first_sync_bytes(link: &SlowLink) -> u64 {
    let client = reqwest::Client::builder()
        .no_gzip()
        .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap();
    let before = link.counts();
    for (collection, _) in outpost_tests::collections() {
        let mut since = None;
        loop {
            let params = PullParams {
                since: since.clone(),
                limit: SyncConfig::default().pull_limit,
                collections: vec![collection.to_owned()],
                ..PullParams::default()
            };
            let r = client
                .get(format!("{}v1/pull?{}", link.url(), params.query()))
                .bearer_auth(AMINA)
                .header("accept-encoding", "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let encoding = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_ne!(encoding.as_deref(), Some("zstd"), "asked for gzip only");
            let body = decode_body(encoding.as_deref(), &r.bytes().await.unwrap()).unwrap();
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(page.get("format").is_none(), "a v1 page");
            since = Some(page["cursor"].as_str().unwrap().to_owned());
            if !page["has_more"].as_bool().unwrap() {
                break;
            }
        }
    }
    let after = link.counts();
    after.down - before.down + after.up - before.up
}

/// Writes `n` patients on a device of Ben's (Amina's team) and syncs them straight to
/// the server.
async fn seed(server: &TestServer, dir: &std::path::Path, n: u64) {
    let clinic = Device::open(dir, "clinic", server, BEN);
    let mut i = 0;
    while i < n {
        let m = (n - i).min(500);
        clinic
            .store
            .batch(|tx| {
                for k in i..i + m {
                    tx.put("patients", Some(&patient_id(k)), patient(k))?;
                }
                Ok(())
            })
            .unwrap();
        i += m;
    }
    let r = clinic.sync_until_quiet().await;
    assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
    clinic.engine.shutdown();
}

/// A device of Amina's whose every request crosses `link`.
fn device_on(dir: &std::path::Path, name: &str, link: &SlowLink) -> Device {
    Device::open_via(
        dir,
        name,
        &link.url(),
        Arc::new(StaticToken(AMINA.into())),
        SyncConfig::default(),
    )
}

async fn link_to(server: &TestServer, shape: LinkShape) -> SlowLink {
    SlowLink::start(server.addr().parse().unwrap(), shape)
        .await
        .unwrap()
}

/// A server holding a district of `records` patients, a link to it of `shape`, and a
/// folder for devices.
async fn district(records: u64, shape: LinkShape) -> (TestServer, tempfile::TempDir, SlowLink) {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    seed(&server, dir.path(), records).await;
    let link = link_to(&server, shape).await;
    (server, dir, link)
}

/// Every status the engine published.
#[derive(Default)]
struct Statuses(Mutex<Vec<SyncStatus>>);

impl StatusListener for Statuses {
    fn on_status(&self, status: &SyncStatus) -> Result<(), String> {
        self.0.lock().unwrap().push(status.clone());
        Ok(())
    }
}

/// Download progress only ever moves forward, and ends with all of `total` done.
fn assert_progress_reaches(statuses: &Statuses, report: &SyncReport, total: u64) {
    let seen = statuses.0.lock().unwrap().clone();
    let done: Vec<u64> = seen
        .iter()
        .map(|s| s.progress.download.changes_done)
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "not monotonic: {done:?}"
    );
    let during: Vec<_> = seen
        .iter()
        .filter(|s| (1..total).contains(&s.progress.download.changes_done))
        .collect();
    assert!(!during.is_empty(), "no progress shown part way: {done:?}");
    assert!(
        during.iter().all(|s| !s.has_synced),
        "a first sync shows as one"
    );
    let last = seen.last().unwrap();
    assert!(last.has_synced);
    for p in [&last.progress.download, &report.progress.download] {
        assert_eq!((p.changes_done, p.changes_total), (total, total), "{p:?}");
        assert!(p.bytes_done > 0 && p.bytes_done == p.bytes_total, "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_at_8_kbs_takes_half_the_bytes() {
    let rtt = Duration::from_millis(600);
    let (down, up) = (8 * KB, 4 * KB);
    let (server, dir, link) = district(RECORDS, LinkShape::edge(down, up, rtt)).await;
    // The baseline, side by side: the same district as the engine before pulled it.
    let baseline = v1_first_sync_bytes(&link_to(&server, LinkShape::default()).await).await;
    // The v1 pull has grown since the recorded run (214.7K to 216.9K bytes on 9be66d8,
    // 9 to 10% more), which would make the half measured against it easier to reach.
    // So the band only checks that the side-by-side run still pulls what the engine of
    // 622cdc9 pulled, and the half is taken of the smaller of the two.
    let recorded = RECORDED_BASELINE_WIRE_BYTES as f64;
    assert!(
        (0.9 * recorded..=1.2 * recorded).contains(&(baseline as f64)),
        "the v1 pull moved {baseline} bytes; the engine of 622cdc9 moved {recorded}"
    );
    let half_of = (baseline as f64).min(recorded);
    let a = device_on(dir.path(), "a", &link);
    let statuses = Arc::new(Statuses::default());
    let _sub = a.engine.subscribe_status(statuses.clone());
    let started = Instant::now();
    let r = a.engine.sync_now(None).await;
    let took = started.elapsed();
    assert_eq!(
        (r.outcome, r.pulled),
        (SyncOutcome::Completed, RECORDS),
        "{r:?}"
    );
    let c = link.counts();
    let wire = c.down + c.up;
    // The time the bytes need at the link's rates, and a round trip per request and
    // per connection opened.
    let needed = c.down as f64 / down as f64
        + c.up as f64 / up as f64
        + rtt.as_secs_f64() * (r.requests + c.connections) as f64;
    println!(
        "first sync of {RECORDS}: {} B down, {} B up ({:.3} of the {baseline} B of a v1 \
         client), {} requests, {} connections, {:.2} s ({:.3} of the {needed:.2} s the \
         bytes and round trips need)",
        c.down,
        c.up,
        wire as f64 / baseline as f64,
        r.requests,
        c.connections,
        took.as_secs_f64(),
        took.as_secs_f64() / needed
    );
    assert!(
        wire as f64 <= 0.55 * half_of,
        "{wire} bytes on the wire; a v1 client: {baseline} (recorded: {recorded})"
    );
    assert!(
        took.as_secs_f64() <= 1.2 * needed,
        "{took:?} for what needs {needed:.2} s"
    );
    // The report counts what the link carried, bodies and heads (the heads as far as
    // the client knows them).
    assert!(
        r.bytes_received <= c.down && r.bytes_received * 10 >= c.down * 9,
        "{r:?}"
    );
    assert!(r.bytes_sent <= c.up, "{r:?}");
    assert_progress_reaches(&statuses, &r, RECORDS);
    assert_eq!(a.store.count("patients", &[]).unwrap(), RECORDS);
}

/// Answers a nurse typed offline, one per patient visit.
fn answer_offline(a: &Device, n: u64) -> Vec<String> {
    a.store
        .batch(|tx| {
            for i in 0..n {
                tx.put(
                    "answers",
                    Some(&format!("visit-{i:03}")),
                    json!({"patient": patient_id(i), "q": "fever", "a": i % 3 == 0, "temp": 36.5}),
                )?;
            }
            Ok(())
        })
        .unwrap();
    a.store
        .outbox_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.op_id)
        .collect()
}

/// Syncs with `deadline` until a sync completes with nothing left to send; every call
/// must return by its deadline and a small bound. The reports, in order.
async fn sync_until_done(a: &Device, deadline: Duration, most: usize) -> Vec<SyncReport> {
    let mut reports = Vec::new();
    for _ in 0..most {
        let started = Instant::now();
        let r = a.engine.sync_now(Some(deadline)).await;
        let took = started.elapsed();
        println!("sync_now({deadline:?}): {:?} in {took:.1?}", r.outcome);
        assert!(took <= deadline + Duration::from_secs(5), "{took:?}: {r:?}");
        let done =
            r.outcome == SyncOutcome::Completed && a.store.outbox_counts().unwrap().pending == 0;
        reports.push(r);
        if done {
            return reports;
        }
        // A background job's next run; the engine's own backoff is seconds at most here.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("not done after {most} syncs: {reports:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_cuts_every_connection_after_6_kb_still_syncs_everything_once() {
    let shape = LinkShape {
        rtt: Duration::from_millis(100),
        cut_after_down: Some(6 * KB),
        ..LinkShape::default()
    };
    let (server, dir, link) = district(RECORDS, shape).await;
    let a = device_on(dir.path(), "a", &link);
    let op_ids = answer_offline(&a, 200);
    assert_eq!(op_ids.len(), 200);
    let reports = sync_until_done(&a, Duration::from_secs(60), 10).await;
    let c = link.counts();
    println!(
        "cut link: {} syncs, {} requests, {} connections cut of {}, {} B down",
        reports.len(),
        reports.iter().map(|r| r.requests).sum::<u64>(),
        c.cuts,
        c.connections,
        c.down
    );
    assert!(c.cuts > 0, "the link cut connections: {c:?}");
    assert_eq!(a.store.count("patients", &[]).unwrap(), RECORDS);
    // Every answer is on the server, written once: one audit row and version 1 each.
    for op_id in &op_ids {
        assert_eq!(server.audit_rows(op_id), 1, "{op_id}");
    }
    let (changes, _) = server.pull_all(AMINA, "&collections=answers").await;
    assert_eq!(changes.len(), 200);
    assert!(changes.iter().all(|c| c["version"] == json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cut_and_slow_link_sync_now_returns_by_its_60_s_deadline() {
    // About 90 s of downloading at 1 KB/s: more than the deadline allows.
    let shape = LinkShape {
        down_bytes_per_s: Some(KB),
        up_bytes_per_s: Some(KB),
        rtt: Duration::from_millis(600),
        cut_after_down: Some(6 * KB),
        ..LinkShape::default()
    };
    let (_server, dir, link) = district(RECORDS, shape).await;
    let a = device_on(dir.path(), "a", &link);
    answer_offline(&a, 20);
    let deadline = Duration::from_secs(60);
    let started = Instant::now();
    let r = a.engine.sync_now(Some(deadline)).await;
    let took = started.elapsed();
    println!(
        "sync_now(60 s) on a cut 1 KB/s link: {:?} in {took:.1?}, {} of {} changes down",
        r.outcome, r.progress.download.changes_done, r.progress.download.changes_total
    );
    assert!(took <= Duration::from_secs(65), "{took:?}");
    assert_eq!(r.outcome, SyncOutcome::DeadlineExceeded, "{r:?}");
    // It says how far it got: its answers are up, part of the patients are down.
    assert_eq!(r.applied, 20, "{r:?}");
    let down = r.progress.download;
    assert!(
        down.changes_done > 0 && down.changes_done < down.changes_total,
        "{down:?}"
    );
    assert_eq!(down.changes_done, r.pulled);
    // A page being written when the deadline came is committed whole, page and cursor
    // together, after the report was made.
    let stored = a.store.count("patients", &[]).unwrap();
    assert!(
        stored >= r.pulled && stored <= r.pulled + 1000,
        "{stored} stored"
    );
    assert!(r.bytes_received > 0 && r.bytes_sent > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_cut_link_keeps_a_short_deadline() {
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    seed(&server, dir.path(), 1000).await;
    let stall = LinkShape {
        stall_after_down: Some(2 * KB),
        ..LinkShape::default()
    };
    let cut = LinkShape {
        down_bytes_per_s: Some(2 * KB),
        rtt: Duration::from_millis(300),
        cut_after_down: Some(6 * KB),
        ..LinkShape::default()
    };
    for (name, shape) in [("stalled", stall), ("cut", cut)] {
        let link = link_to(&server, shape).await;
        let a = device_on(dir.path(), name, &link);
        let deadline = Duration::from_secs(4);
        let started = Instant::now();
        let r = a.engine.sync_now(Some(deadline)).await;
        let took = started.elapsed();
        assert!(
            took <= deadline + outpost_core::sync::DEADLINE_GRACE,
            "{name}: {took:?}"
        );
        assert_eq!(r.outcome, SyncOutcome::DeadlineExceeded, "{name}: {r:?}");
        a.engine.shutdown();
    }
}
