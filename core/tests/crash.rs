#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Kills a writing process with SIGKILL at random moments and checks that every write
//! whose call had returned survived, with its outbox entry, in an intact database.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_core::{ConflictStrategy, EntryState, Store, StoreConfig};
use rand::Rng;
use serde_json::json;

const CHILD_ENV: &str = "OUTPOST_CRASH_CHILD_DB";

fn config() -> StoreConfig {
    StoreConfig::default().with_collection("answers", ConflictStrategy::LastWriteWins)
}

/// The child: writes answers forever, reporting each one after its call returned.
#[test]
#[ignore = "run as a child process by kill_during_writes_loses_nothing"]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u32 = std::env::var("OUTPOST_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(&path, config()).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let id = format!("r{round}-{i}");
        if i % 3 == 0 {
            store
                .batch(|tx| {
                    tx.put("answers", Some(&id), json!({"round": round, "i": i}))?;
                    tx.patch("answers", &id, json!({"checked": true}))
                })
                .unwrap();
        } else {
            store
                .put(
                    "answers",
                    Some(&id),
                    json!({"round": round, "i": i, "pad": "x".repeat(200)}),
                )
                .unwrap();
        }
        writeln!(out, "ok {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_during_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .env("OUTPOST_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ok ") {
                    let _ = tx.send(id.to_owned());
                }
            }
        });
        // Wait for the first write, then kill at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child never wrote");
        acknowledged.push(first);
        let kill_at = Instant::now() + Duration::from_millis(rng.random_range(5..120));
        while Instant::now() < kill_at {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(1)) {
                acknowledged.push(id);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acknowledged.extend(rx.try_iter());

        let store = Store::open(&db, config()).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
        let entries = store.outbox_entries().unwrap();
        let queued: std::collections::HashSet<_> = entries
            .iter()
            .filter(|e| e.state == EntryState::Pending)
            .map(|e| e.record_id.clone())
            .collect();
        for id in &acknowledged {
            let rec = store.get("answers", id).unwrap();
            assert!(rec.is_some(), "round {round}: acknowledged write {id} lost");
            assert!(
                queued.contains(id),
                "round {round}: {id} has no outbox entry"
            );
        }
        assert_eq!(
            entries.len(),
            queued.len(),
            "one entry per record, all pending"
        );
        store.close();
    }
    assert!(acknowledged.len() > 20);
}
