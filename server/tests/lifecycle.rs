//! Black-box tests of the process: the example config, bad configs, a kill and
//! restart with no loss, and graceful shutdown with a request in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use outpost_testkit::*;
use serde_json::{Value, json};

/// The binary cargo built for these tests, for runs that are not a `TestServer`.
const BIN: &str = env!("CARGO_BIN_EXE_outpost-server");

async fn the_example_config_starts_as_is(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/server.example.toml"))
            .unwrap();
    assert!(example.contains("listen = \"127.0.0.1:8787\""));
    // Only the port changes, so parallel tests do not collide; the relative database
    // path lands next to the copied config. On PostgreSQL the database line names the
    // test's own database instead, and everything else is kept as it is.
    let config = dir.path().join("server.toml");
    let mut text = example.replace("127.0.0.1:8787", "127.0.0.1:0");
    let db = match &b {
        Backend::Sqlite => TestDb::Sqlite(dir.path().join("outpost-server.db")),
        Backend::Postgres(_) => {
            let db = TestDb::new(&b, dir.path());
            text = text.replace(
                "database = \"outpost-server.db\"",
                &format!("database = {:?}", db.database()),
            );
            assert!(text.contains("postgres://"));
            db
        }
    };
    std::fs::write(&config, text).unwrap();
    let s = TestServer::start_config(&b, dir, config, db);
    let r = s.client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(answer(r).await.0, 200);
    for token in [
        "change-me-amina-secret-token-0123456789",
        "change-me-ben-secret-token-0123456789",
    ] {
        assert_eq!(s.pull_raw(token, "").await.0, 200, "{token}");
    }
    if b == Backend::Sqlite {
        assert!(s.dir().join("outpost-server.db").exists());
    }
}

#[test]
fn a_bad_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let base = base_config(&db.display().to_string(), "");
    let cases = [
        (
            base.replacen(
                "team = \"north\"\ntoken = \"token-ben",
                "token = \"token-ben",
                1,
            ),
            "users[1].team: missing",
        ),
        (
            base.replace("default_access", "default_acess"),
            "default_acess: unknown key",
        ),
        (
            base.replace("access = \"private\"", "access = \"secret\""),
            "collections.drafts.access",
        ),
        (
            base.replace("listen = \"127.0.0.1:0\"", "listen = 5"),
            "listen: must be a string",
        ),
        ("listen = ".to_owned(), "invalid TOML"),
    ];
    for (text, want) in cases {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{stderr} !~ {want}");
        assert!(out.stdout.is_empty());
    }
    // PostgreSQL: a malformed URL is a config error; a database that cannot be
    // reached stops the server at start, not at its first request.
    for (database, want) in [
        ("postgres://u@127.0.0.1/db?no_such_option=1", "database:"),
        ("postgres://u@127.0.0.1:1/db?connect_timeout=2", "database"),
    ] {
        let config = dir.path().join("pg.toml");
        std::fs::write(&config, base_config(database, "")).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{database}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{stderr} !~ {want}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

async fn a_restart_loses_nothing_and_keeps_idempotency(b: Backend) {
    let mut s = TestServer::start_with(&b, LONG_PUSH_BUDGET);
    let ops: Vec<Value> = (0..50)
        .map(|i| put("patients", &format!("p{i}"), None, json!({"i": i})))
        .collect();
    let first = s.push(AMINA, ops.clone()).await;
    let del = delete("patients", "p0", Some(1));
    let del_answer = s.push(AMINA, vec![del.clone()]).await;
    let (before, cursor) = s.pull_all(AMINA, "").await;

    s.restart(); // SIGKILL: no chance to flush anything more

    let (after, _) = s.pull_all(AMINA, "").await;
    assert_eq!(after, before);
    assert_eq!(
        s.push(AMINA, ops[..10].to_vec()).await,
        first[..10].to_vec()
    );
    assert_eq!(s.push(AMINA, vec![del]).await, del_answer);
    assert_eq!(s.audit_rows(ops[3]["op_id"].as_str().unwrap()), 1);
    // The old cursor still works and seq keeps increasing.
    let r = s
        .push(AMINA, vec![put("patients", "new", None, json!({}))])
        .await;
    let max_before = before
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(r[0]["seq"].as_i64().unwrap() > max_before);
    let (st, body) = s.pull_raw(AMINA, &format!("?since={cursor}")).await;
    assert_eq!(st, 200);
    assert_eq!(body["changes"].as_array().unwrap().len(), 1);
    assert_eq!(body["changes"][0]["record_id"], "new");
}

async fn sigterm_lets_an_in_flight_push_finish(b: Backend) {
    let mut s = TestServer::start(&b);
    let body =
        json!({"client_id": "c", "ops": [put("patients", "inflight", None, json!({"a": 1}))]})
            .to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let addr = s.addr().to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "POST /v1/push HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {AMINA}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The request is half sent when the signal arrives.
    let pid_exit = std::thread::spawn(move || {
        let status = s.terminate();
        (s, status)
    });
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(tail.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"applied\""), "{answer}");
    let (s, status) = pid_exit.join().unwrap();
    assert!(status.success(), "{status:?}");
    // The record is in the database.
    assert_eq!(s.count("records", "record_id", "inflight"), 1);
}

outpost_testkit::backend_tests!("lifecycle": the_example_config_starts_as_is, a_restart_loses_nothing_and_keeps_idempotency, sigterm_lets_an_in_flight_push_finish);
