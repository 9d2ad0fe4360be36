#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Runs the real `outpost` binary: the demo's two scenarios at small size with fixed
//! seeds (exit code and report), bad options, and `outpost serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn field_demo_reports_no_lost_answers_and_every_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("run");
    let keep_s = keep.to_str().unwrap();
    let o = outpost(&[
        "demo",
        "--devices",
        "3",
        "--surveys",
        "3",
        "--seed",
        "7",
        "--fail-rate",
        "0.3",
        "--dir",
        keep_s,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().last(), Some("lost answers: 0"), "{out}");
    for want in [
        "seed 7",
        "96 answers saved",
        "attached 1 photos and 1 signatures",
        "offline, nothing sent (requests made: 0)",
        "patients/p-001 (field_merge) on ",
        "merged field by field, counters added",
        "care_plans/cp-001 (manual) on ",
        "resolved_merged",
        "the app's scripted choice: the earlier date",
        "drafts/referral-p-001 (last_write_wins) on ",
        "is later by HLC and wins",
        "[ ok ] every saved answer is on the server exactly once: 96 of 96",
        "[ ok ] every attached file byte for byte on the server and on a fresh device: 6 files (3 JPEG photos, 3 signatures)",
        "[ ok ] every device equals the server",
        "[ ok ] visit counters equal the sum of increments: 9 visits",
        // Three at least; a merge repeats when the server moves on meanwhile.
        "[ ok ] conflicts settled as their strategies say (",
        "[ ok ] nothing left behind",
        "[ ok ] offline, a sync made no request",
        "amina",
        "chioma",
        "coordinator",
        "total",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!stdout.contains("FAIL"), "{out}");
    // Not a terminal: no progress bar output.
    assert!(
        !stdout.contains('\r') && !stdout.contains("\u{1b}["),
        "{out}"
    );
    // --dir keeps every database, and refuses to reuse a folder with a run in it.
    for f in [
        "server.db",
        "server.toml",
        "amina.db",
        "ben.db",
        "chioma.db",
        "verifier.db",
    ] {
        assert!(keep.join(f).exists(), "{f} not kept");
    }
    // The devices signed in with JWTs: the server knows no static users.
    let config = std::fs::read_to_string(keep.join("server.toml")).unwrap();
    assert!(config.contains("\n[jwt]\n") && config.contains("hs256_secret = "));
    assert!(!config.contains("[[users]]"), "{config}");
    let again = outpost(&["demo", "--devices", "2", "--surveys", "1", "--dir", keep_s]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo run"));
}

#[test]
fn assets_demo_the_later_scan_by_hlc_wins_everywhere() {
    let o = outpost(&[
        "demo",
        "--scenario",
        "assets",
        "--devices",
        "2",
        "--surveys",
        "3",
        "--seed",
        "11",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().last(), Some("lost inspections: 0"), "{out}");
    for want in [
        "both scanned A-001",
        "(arrived second)",
        "[ ok ] A-001: the later scan by HLC",
        "[ ok ] every scanned asset holds its latest scan by HLC",
        "[ ok ] every inspection is on the server exactly once: 8 of 8",
        "[ ok ] every device equals the server",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!stdout.contains("FAIL"), "{out}");
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["demo", "--fail-rate", "2"][..],
        &["demo", "--fail-rate", "lots"],
        &["demo", "--devices", "1"],
        &["demo", "--scenario", "moon"],
        &["serve"],
    ] {
        let o = outpost(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!o.stderr.is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 5\n").unwrap();
    let o = outpost(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad config"));
}

#[cfg(unix)]
#[test]
fn serve_runs_the_reference_server_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase = \"s.db\"\ndefault_access = \"team\"\n\
         tombstone_retention_days = 30\n\n[[users]]\nname = \"amina\"\nteam = \"t\"\n\
         token = \"token-amina-0123456789abcdef0123456789\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("outpost-server listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""protocol":1"#), "{answer}");
    assert!(
        dir.path().join("s.db").exists(),
        "the database is relative to the config"
    );
    // SIGTERM to the child this test started, by its id: a clean stop.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
