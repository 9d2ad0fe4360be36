#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real processes killed with SIGKILL: the promises of the deterministic simulation
//! (nothing lost, nothing applied twice, convergence) checked against real process
//! death, real files and the real server binary, where no simulated crash point can
//! be missed.
//!
//! - `device_killed_at_random_moments_loses_nothing`: a device process (this test
//!   binary re-executed as a child) writes and syncs in a loop and is SIGKILLed at
//!   random moments, `OUTPOST_KILLS` times (default 50). After each kill its database
//!   passes `integrity_check` and holds every acknowledged write; the server's audit
//!   never shows an op applied twice. At the end a clean sync makes the device, a fresh
//!   device and the acknowledged writes agree, counters included.
//! - `server_killed_mid_push_applies_each_op_once`: the server is SIGKILLed and
//!   restarted while a device pushes 2,000 records in many batches; the retries apply
//!   each op exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::{
    BatchLimits, HttpTimeouts, HttpTransport, Query, StaticToken, Store, SyncConfig, SyncEngine,
    SyncOutcome, SyncState,
};
use outpost_testkit::{AMINA, Backend, TestServer};
use outpost_tests::{Device, store_config, sync_config};
use rand::Rng;
use serde_json::{Value, json};

const CHILD_DB: &str = "OUTPOST_KILL_CHILD_DB";
const CHILD_URL: &str = "OUTPOST_KILL_CHILD_URL";
const CHILD_ROUND: &str = "OUTPOST_KILL_CHILD_ROUND";
const COLLECTION: &str = "answers";
const TALLY: &str = "tally";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The value of a counter field: a plain number, or a PN/G-counter object.
fn counter_value(v: Option<&Value>) -> i64 {
    let sum = |m: Option<&Value>| -> i64 {
        m.and_then(Value::as_object)
            .map(|o| o.values().filter_map(Value::as_i64).sum())
            .unwrap_or(0)
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::Object(o)) => sum(o.get("p")) - sum(o.get("n")),
        _ => 0,
    }
}

/// Opens the server's database read-only, beside the running server.
fn server_db(server: &TestServer) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(
        server.dir().join("server.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// op_ids the audit shows applied more than once (per user).
fn duplicate_effects(server: &TestServer) -> Vec<String> {
    let c = server_db(server);
    let mut stmt = c
        .prepare("SELECT op_id FROM audit GROUP BY user, op_id HAVING count(*) > 1")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn audit_count(server: &TestServer) -> i64 {
    server_db(server)
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap_or(0)
}

/// `PRAGMA integrity_check`, and whether the kill left outbox entries in flight (a
/// push was under way), read before the store's open returns them to pending.
fn integrity(path: &Path) -> (String, bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let syncing: i64 = conn
        .query_row(
            "SELECT count(*) FROM outbox WHERE state = 'syncing'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    (check, syncing > 0)
}

fn snapshot(store: &Store) -> BTreeMap<String, Value> {
    store
        .query(COLLECTION, &Query::new())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, Value::Object(r.data)))
        .collect()
}

/// The child device: writes puts, patches and increments and syncs, forever. Before
/// each write it prints `begin <write>`, after the call returned `ok <write>`.
#[test]
#[ignore = "run as a child process by device_killed_at_random_moments_loses_nothing"]
fn kill_child_device() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let url = std::env::var(CHILD_URL).unwrap();
    let round: u32 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let rt = runtime();
    rt.block_on(async move {
        let store = Store::open(&path, store_config()).unwrap();
        let http = HttpTransport::new(&url, HttpTimeouts::default()).unwrap();
        let engine = SyncEngine::new(
            store.clone(),
            Arc::new(http),
            Arc::new(StaticToken(AMINA.to_owned())),
            SyncConfig {
                batch: BatchLimits {
                    max_ops: 7,
                    ..BatchLimits::default()
                },
                ..sync_config()
            },
            tokio::runtime::Handle::current(),
        );
        let mut out = std::io::stdout().lock();
        // The test harness's "test ... " has no newline of its own.
        writeln!(out).unwrap();
        let mut say = |tag: &str, w: &Value| {
            writeln!(out, "{tag} {w}").unwrap();
            out.flush().unwrap();
        };
        if store.get(COLLECTION, TALLY).unwrap().is_none() {
            store.put(COLLECTION, Some(TALLY), json!({})).unwrap();
        }
        let mut rng = rand::rng();
        let mut mine: Vec<String> = Vec::new();
        for i in 0u64.. {
            let w = match rng.random_range(0..10) {
                0..4 => {
                    let id = format!("k{round}-{i}");
                    let data = json!({"round": round, "i": i, "pad": "x".repeat(rng.random_range(0..300))});
                    json!({"op": "put", "id": id, "data": data})
                }
                4..7 if !mine.is_empty() => {
                    let id = mine[rng.random_range(0..mine.len())].clone();
                    json!({"op": "patch", "id": id, "field": format!("f{round}_{i}"), "value": i})
                }
                _ => json!({"op": "inc", "by": rng.random_range(1..=5)}),
            };
            say("begin", &w);
            let id = w["id"].as_str().unwrap_or(TALLY).to_owned();
            match w["op"].as_str().unwrap() {
                "put" => {
                    store.put(COLLECTION, Some(&id), w["data"].clone()).unwrap();
                    mine.push(id);
                }
                "patch" => {
                    let mut f = serde_json::Map::new();
                    f.insert(w["field"].as_str().unwrap().to_owned(), w["value"].clone());
                    store.patch(COLLECTION, &id, Value::Object(f)).unwrap();
                }
                _ => {
                    store
                        .increment(COLLECTION, TALLY, "hits", w["by"].as_i64().unwrap())
                        .unwrap();
                }
            }
            say("ok", &w);
            if rng.random_range(0..4) == 0 {
                let r = engine.sync_now(Some(Duration::from_secs(10))).await;
                say("synced", &json!(format!("{:?}", r.outcome)));
            }
        }
    });
}

#[test]
fn device_killed_at_random_moments_loses_nothing() {
    let kills: u32 = std::env::var("OUTPOST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let started = Instant::now();
    let server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // Acknowledged writes, in order; increments in flight at each kill (at most one).
    let mut acked: Vec<Value> = Vec::new();
    let mut in_flight_incs: Vec<i64> = Vec::new();
    let mut syncs = 0u32;
    let mut killed_mid_push = 0u32;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill_child_device",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &db)
            .env(CHILD_URL, server.base_url())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        // Wait for the first acknowledged write, then kill at a random moment.
        let give_up = Instant::now() + Duration::from_secs(30);
        while !lines.iter().any(|l: &String| l.starts_with("ok ")) {
            assert!(Instant::now() < give_up, "round {round}: child never wrote");
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(10)) {
                lines.push(l);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let mut open: Option<Value> = None;
        for l in &lines {
            if let Some(w) = l.strip_prefix("begin ") {
                open = Some(serde_json::from_str(w).unwrap());
            } else if let Some(w) = l.strip_prefix("ok ") {
                let w: Value = serde_json::from_str(w).unwrap();
                assert_eq!(open.take().as_ref(), Some(&w), "round {round}");
                acked.push(w);
            } else if l.starts_with("synced ") {
                syncs += 1;
            }
        }
        if let Some(w) = open.filter(|w| w["op"] == "inc") {
            in_flight_incs.push(w["by"].as_i64().unwrap());
        }

        // The database is intact and holds every acknowledged write.
        let (check, mid_push) = integrity(&db);
        assert_eq!(check, "ok", "round {round}");
        killed_mid_push += u32::from(mid_push);
        let store = Store::open(&db, store_config()).unwrap();
        check_writes(&store, &acked, &in_flight_incs, &format!("round {round}"));
        store.close();
        let dups = duplicate_effects(&server);
        assert!(dups.is_empty(), "round {round}: applied twice: {dups:?}");
    }

    // A clean sync from the same database until quiet, then a fresh device.
    let rt = runtime();
    rt.block_on(async {
        let device = Device::open(dir.path(), "device", &server, AMINA);
        let r = device.sync_until_quiet().await;
        assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
        let counts = device.store.outbox_counts().unwrap();
        assert_eq!((counts.pending, counts.syncing, counts.failed), (0, 0, 0));
        let fresh = Device::open(dir.path(), "fresh", &server, AMINA);
        let r = fresh.sync_until_quiet().await;
        assert_eq!(r.outcome, SyncOutcome::Completed, "{r:?}");
        // Every acknowledged write is on the server.
        check_writes(&fresh.store, &acked, &in_flight_incs, "server");
        // The device converges with the server.
        device.sync_until_quiet().await;
        assert_eq!(snapshot(&device.store), snapshot(&fresh.store));
        for r in device.store.query(COLLECTION, &Query::new()).unwrap() {
            assert_eq!(r.sync_state, SyncState::Synced, "{}", r.id);
        }
        device.engine.shutdown();
        fresh.engine.shutdown();
    });
    let dups = duplicate_effects(&server);
    assert!(dups.is_empty(), "applied twice: {dups:?}");
    let audited = audit_count(&server);
    println!(
        "device kills: {kills}, acknowledged writes: {}, syncs reported: {syncs}, killed mid-push: {killed_mid_push}, audited ops: {audited}, \
         lost: 0, duplicate effects: 0 in {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(acked.len() as u32 >= kills);
}

/// Every acknowledged put and patch is in `store`; the tally equals the acknowledged
/// increments plus some of those in flight at a kill (each at most once).
fn check_writes(store: &Store, acked: &[Value], in_flight_incs: &[i64], what: &str) {
    let records: HashMap<String, Value> = snapshot(store).into_iter().collect();
    let mut acked_sum = 0;
    for w in acked {
        match w["op"].as_str().unwrap() {
            "put" => {
                let id = w["id"].as_str().unwrap();
                let rec = records
                    .get(id)
                    .unwrap_or_else(|| panic!("{what}: acknowledged put {id} lost"));
                for (k, v) in w["data"].as_object().unwrap() {
                    assert_eq!(rec.get(k), Some(v), "{what}: {id}.{k}");
                }
            }
            "patch" => {
                let id = w["id"].as_str().unwrap();
                let field = w["field"].as_str().unwrap();
                let rec = records
                    .get(id)
                    .unwrap_or_else(|| panic!("{what}: patched record {id} lost"));
                assert_eq!(
                    rec.get(field),
                    Some(&w["value"]),
                    "{what}: acknowledged patch {id}.{field} lost"
                );
            }
            _ => acked_sum += w["by"].as_i64().unwrap(),
        }
    }
    let tally = counter_value(records.get(TALLY).and_then(|t| t.get("hits")));
    // The sums reachable by taking each in-flight increment at most once.
    let mut reachable: HashSet<i64> = HashSet::from([acked_sum]);
    for by in in_flight_incs {
        let more: Vec<i64> = reachable.iter().map(|s| s + by).collect();
        reachable.extend(more);
    }
    assert!(
        reachable.contains(&tally),
        "{what}: tally {tally}, acknowledged increments sum to {acked_sum}, in flight at kills: {in_flight_incs:?}"
    );
}

#[test]
fn server_killed_mid_push_applies_each_op_once() {
    const N: usize = 2000;
    let started = Instant::now();
    let mut server = TestServer::start(&Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let device = {
        let _guard = rt.enter();
        Device::open_with(
            dir.path(),
            "pusher",
            &server,
            Arc::new(StaticToken(AMINA.to_owned())),
            SyncConfig {
                batch: BatchLimits {
                    max_ops: 40,
                    ..BatchLimits::default()
                },
                ..sync_config()
            },
        )
    };
    device
        .store
        .batch(|tx| {
            for i in 0..N {
                tx.put(
                    COLLECTION,
                    Some(&format!("bulk-{i:04}")),
                    json!({"i": i, "note": "small"}),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let store = device.store.clone();
    let engine = device.engine.clone();
    let syncing = rt.spawn(async move {
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut outcomes = Vec::new();
        loop {
            let r = engine.sync_now(Some(Duration::from_secs(30))).await;
            outcomes.push(r.outcome);
            let pending = store.outbox_counts().unwrap().pending;
            if (r.outcome == SyncOutcome::Completed && pending == 0) || Instant::now() > give_up {
                return outcomes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Kill the server as soon as the audit passes each mark: mid-push, often right
    // after a batch committed and before its answer was sent.
    let mut killed_at = Vec::new();
    for mark in [150, 700, 1300, 1900] {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let n = audit_count(&server);
            if n >= mark || syncing.is_finished() || Instant::now() > give_up {
                if n >= mark && n < N as i64 {
                    server.restart();
                    killed_at.push(n);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let outcomes = rt.block_on(syncing).unwrap();
    assert_eq!(
        outcomes.last(),
        Some(&SyncOutcome::Completed),
        "{outcomes:?}"
    );
    assert!(!killed_at.is_empty(), "the push ended before any kill");

    let dups = duplicate_effects(&server);
    assert!(dups.is_empty(), "applied twice: {dups:?}");
    let c = server_db(&server);
    let (audited, distinct): (i64, i64) = c
        .query_row(
            "SELECT count(*), count(DISTINCT op_id) FROM audit WHERE collection = ?1",
            [COLLECTION],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((audited, distinct), (N as i64, N as i64));
    let (records, v1): (i64, i64) = c
        .query_row(
            "SELECT count(*), sum(version = 1) FROM records WHERE collection = ?1 AND deleted = 0",
            [COLLECTION],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (records, v1),
        (N as i64, N as i64),
        "every record once, at version 1"
    );
    let local = device.store.query(COLLECTION, &Query::new()).unwrap();
    assert_eq!(local.len(), N);
    for r in &local {
        assert_eq!(
            (r.sync_state, r.version),
            (SyncState::Synced, 1),
            "{}",
            r.id
        );
    }
    device.engine.shutdown();
    println!(
        "server kills mid-push: {} at audit counts {killed_at:?}, pushes: {}, syncs: {}, ops: {N}, \
         applied twice: 0 in {:.1} s",
        killed_at.len(),
        device.link.stats().push.calls,
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
}
