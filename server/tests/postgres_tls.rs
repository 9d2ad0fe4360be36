//! The server's link to PostgreSQL: TLS verified against a CA (`sslmode=verify-full`),
//! SCRAM over it, clear failures for a wrong CA or a server without TLS, and no
//! password ever sent in clear text.
//!
//! The verify-full tests need `OUTPOST_TEST_POSTGRES_TLS_URL` (from
//! `scripts/postgres.sh --tls-url`) and `OUTPOST_TEST_POSTGRES_URL`; without them they
//! print a SKIPPED line. A server that refuses TLS or asks for a clear-text password
//! cannot be made of the test cluster (it has TLS on, and SCRAM), so those two are a
//! few lines of the PostgreSQL wire protocol on a loopback socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_testkit::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-server");
const TLS_ENV: &str = "OUTPOST_TEST_POSTGRES_TLS_URL";

/// The TLS URL and the admin URL, or a SKIPPED line.
fn tls_urls(test: &str) -> Option<(String, String)> {
    let admin = Backend::postgres_or_skip(test)?;
    let Backend::Postgres(admin) = admin else {
        return None;
    };
    match std::env::var(TLS_ENV) {
        Ok(u) if !u.trim().is_empty() => Some((u.trim().to_owned(), admin)),
        _ => {
            let line = format!("SKIPPED postgres: {test} ({TLS_ENV} not set)\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

/// Runs the server on `database` and returns its exit status and stderr, for a
/// server that must fail at start.
fn start_fails(dir: &Path, database: &str) -> (Option<i32>, String) {
    let config = dir.join("server.toml");
    std::fs::write(&config, base_config(database, "")).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not fail"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.stdout.is_empty(), "it started listening");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn runs_over_verify_full_tls_with_scram() {
    let Some((tls_url, admin)) = tls_urls("postgres_tls::runs_over_verify_full_tls_with_scram")
    else {
        return;
    };
    assert!(tls_url.contains("sslmode=verify-full"), "{tls_url}");
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(&Backend::Postgres(admin.clone()), dir.path());
    let TestDb::Postgres { name, .. } = &db else {
        unreachable!()
    };
    let name = name.clone();
    let role = url::Url::parse(&tls_url).unwrap().username().to_owned();
    pg_exec(&admin, &format!("ALTER DATABASE {name} OWNER TO {role}"));
    let config = dir.path().join("server.toml");
    std::fs::write(&config, base_config(&with_dbname(&tls_url, &name), "")).unwrap();
    let s = TestServer::start_config(&Backend::Postgres(admin.clone()), dir, config, db);
    let r = s
        .push(AMINA, vec![put("patients", "tls-1", None, json!({"n": 1}))])
        .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    let (changes, _) = s.pull_all(BEN, "").await;
    assert_eq!(changes.len(), 1);
    // Every connection of the server's role to its database is encrypted.
    let sessions = |ssl: bool| {
        pg_count(
            &admin,
            &format!(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = $1 AND a.usename = '{role}' AND s.ssl = {ssl}"
            ),
            &name,
        )
    };
    assert!(sessions(true) >= 1);
    assert_eq!(sessions(false), 0);
    assert!(
        !s.stderr().contains(
            &url::Url::parse(&tls_url)
                .unwrap()
                .password()
                .unwrap()
                .to_owned()
        )
    );
}

/// `url` with its `sslrootcert` replaced.
fn with_root_cert(url: &str, path: &str) -> url::Url {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "sslrootcert" {
                path.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u
}

#[test]
fn a_wrong_ca_fails_at_start_with_a_clear_error() {
    let Some((tls_url, _)) = tls_urls("postgres_tls::a_wrong_ca_fails_at_start_with_a_clear_error")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.crt");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1"])
        .args(["-subj", "/CN=not the cluster's CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(status.status.success());
    let u = with_root_cert(&tls_url, &ca.display().to_string());
    let (code, stderr) = start_fails(dir.path(), u.as_str());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    // A CA file that is missing says so.
    let missing = with_root_cert(&tls_url, "/nonexistent/ca.crt");
    let (_, stderr) = start_fails(dir.path(), missing.as_str());
    assert!(
        stderr.contains("sslrootcert /nonexistent/ca.crt"),
        "{stderr}"
    );
}

/// What a fake PostgreSQL on loopback received before the server gave up.
struct Received {
    ssl_request: bool,
    bytes: Vec<u8>,
}

/// A fake PostgreSQL: refuses TLS (`N`), then answers the startup message with
/// AuthenticationCleartextPassword and records what the client sends next.
fn fake_postgres() -> (u16, std::thread::JoinHandle<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 8];
        c.read_exact(&mut head).unwrap();
        let ssl_request = head == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        if ssl_request {
            c.write_all(b"N").unwrap();
            c.read_exact(&mut head).unwrap();
        }
        // The rest of the startup message.
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut rest = vec![0u8; len - 8];
        c.read_exact(&mut rest).unwrap();
        c.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).unwrap();
        let mut bytes = Vec::new();
        let _ = c.read_to_end(&mut bytes);
        Received { ssl_request, bytes }
    });
    (port, handle)
}

#[test]
fn a_cleartext_password_request_on_a_plain_link_is_refused() {
    for mode in ["", "&sslmode=disable", "&sslmode=prefer"] {
        let (port, fake) = fake_postgres();
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "postgres://outpost:pass-never-sent-7f3a@127.0.0.1:{port}/db?connect_timeout=5{mode}"
        );
        let (code, stderr) = start_fails(dir.path(), &url);
        let got = fake.join().unwrap();
        assert_eq!(got.ssl_request, mode != "&sslmode=disable", "{mode}");
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("clear text"), "{mode}: {stderr}");
        let sent = String::from_utf8_lossy(&got.bytes);
        assert!(
            !sent.contains("pass-never-sent"),
            "{mode}: the password was sent"
        );
        assert!(!stderr.contains("pass-never-sent"), "{stderr}");
    }
}

#[test]
fn require_fails_clearly_against_a_server_without_tls() {
    let (port, fake) = fake_postgres();
    let dir = tempfile::tempdir().unwrap();
    let url =
        format!("postgres://outpost:pw-0123@127.0.0.1:{port}/db?sslmode=require&connect_timeout=5");
    let (code, stderr) = start_fails(dir.path(), &url);
    let got = fake.join();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("server does not support TLS"), "{stderr}");
    // It never got past asking for TLS.
    if let Ok(got) = got {
        assert!(got.ssl_request);
    }
}
