//! Black-box tests of the server's operational hardening, against the real binary:
//! slow, silent and idle connections, the connection cap and file-descriptor
//! exhaustion, clients that never read, secrets and record data kept out of logs at
//! `trace`, token rules, throttling of failed authentication (and whose address that
//! is behind a proxy), config reload on SIGHUP, and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outpost_testkit::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-server");
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef0123456789";

fn metrics_key() -> String {
    format!("metrics_token = \"{METRICS_TOKEN}\"\n")
}

fn addr_of(s: &TestServer) -> SocketAddr {
    s.addr().parse().unwrap()
}

/// Status, headers (lowercased names) and body of one answer.
type Answer = (u16, Vec<(String, String)>, String);

/// Sends one HTTP/1.1 request on `stream` and reads one answer (its body by
/// Content-Length): status, headers (lowercased names), body.
fn exchange(stream: &mut TcpStream, request: &str) -> io::Result<Answer> {
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line: {line:?}")))?;
    let mut headers = Vec::new();
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        if k == "content-length" {
            len = v.parse().unwrap();
        }
        headers.push((k, v));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n")
}

/// `/health` on a fresh connection: the time it took, or the error.
fn health_once(addr: SocketAddr) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match exchange(&mut s, &get("/health", None)) {
        Ok((200, _, _)) => Ok(t.elapsed()),
        Ok((st, _, b)) => Err(format!("{st} {b}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the server has closed `s` (EOF or reset), without blocking.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `GET path` with `token`, from the loopback address `local` (its own client
/// address, as far as throttling is concerned).
async fn get_from(s: &TestServer, local: &str, path: &str, token: &str) -> reqwest::Response {
    get_forwarded(s, local, None, path, token).await
}

/// [`get_from`], saying `X-Forwarded-For: <forwarded>` as a reverse proxy would.
async fn get_forwarded(
    s: &TestServer,
    local: &str,
    forwarded: Option<&str>,
    path: &str,
    token: &str,
) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .get(s.url(path))
        .bearer_auth(token);
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.unwrap()
}

/// The `/metrics` text, read from an address of its own, so the reader is never the
/// one throttled.
async fn metrics_text(s: &TestServer) -> String {
    let r = get_from(s, "127.0.0.3", "/metrics", METRICS_TOKEN).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of one sample line of the metrics text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Makes sure this test process may open `n` more descriptors, raising its soft limit
/// to the hard one if needed.
fn ensure_fd_limit(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if soft.is_some_and(|s| s < n) {
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={n}:"),
            ])
            .status();
    }
}

struct Slowloris {
    /// Slowest `/health` answer seen while the connections were open.
    worst_health: Duration,
    health_failures: Vec<String>,
    /// Longest time from opening a slow connection to seeing it closed.
    longest_open: Duration,
    still_open: usize,
}

/// Opens `n` connections that send part of their headers and then nothing, while a
/// probe asks `/health` every 100 ms; waits for the server to close them all.
fn slowloris(s: &TestServer, n: usize, header_timeout: Duration) -> Slowloris {
    ensure_fd_limit(n as u64 + 512);
    let addr = addr_of(s);
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut worst, mut failures) = (Duration::ZERO, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match health_once(addr) {
                    Ok(d) => worst = worst.max(d),
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (worst, failures)
        })
    };
    let mut conns: Vec<(Instant, Option<TcpStream>)> = Vec::new();
    for i in 0..n {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        // A write may fail if the server already closed an evicted connection.
        let _ = c.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes());
        conns.push((Instant::now(), Some(c)));
    }
    let mut longest = Duration::ZERO;
    let mut spans = Vec::new();
    let deadline = Instant::now() + header_timeout + Duration::from_secs(10);
    while Instant::now() < deadline && conns.iter().any(|(_, c)| c.is_some()) {
        for (opened, c) in &mut conns {
            if let Some(stream) = c
                && closed_by_server(stream)
            {
                longest = longest.max(opened.elapsed());
                spans.push(opened.elapsed().as_millis());
                *c = None;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    spans.sort();
    if !spans.is_empty() {
        println!(
            "closed after (ms): min {} p50 {} p90 {} max {}",
            spans[0],
            spans[spans.len() / 2],
            spans[spans.len() * 9 / 10],
            spans[spans.len() - 1]
        );
    }
    // A few more probes after the flood, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (worst_health, health_failures) = probe.join().unwrap();
    Slowloris {
        worst_health,
        health_failures,
        longest_open: longest,
        still_open: conns.iter().filter(|(_, c)| c.is_some()).count(),
    }
}

fn assert_slowloris_handled(r: &Slowloris, header_timeout: Duration) {
    println!(
        "slowloris: worst /health {:?}, longest open {:?}, still open {}",
        r.worst_health, r.longest_open, r.still_open
    );
    assert_eq!(r.still_open, 0, "slow connections left open");
    assert!(r.health_failures.is_empty(), "{:?}", r.health_failures);
    assert!(
        r.worst_health < Duration::from_secs(1),
        "{:?}",
        r.worst_health
    );
    // The watchdog's precision plus this loop's polling, and on a loaded machine a
    // TCP retransmission (1 s) for a handshake the server's kernel queued late.
    assert!(
        r.longest_open <= header_timeout + Duration::from_millis(2500),
        "{:?}",
        r.longest_open
    );
}

#[test]
fn slowloris_connections_are_closed_within_the_header_timeout() {
    let timeout = Duration::from_secs(2);
    let s = TestServer::start_with(&Backend::Sqlite, "header_read_timeout_secs = 2\n");
    let r = slowloris(&s, 1000, timeout);
    assert_slowloris_handled(&r, timeout);
}

#[test]
fn out_of_file_descriptors_health_still_answers() {
    // The server runs with 256 descriptors and the default connection cap (1024), so
    // 1,000 slow connections exhaust its descriptors before its cap.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("outpost-server-256");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 256\nexec '{}' \"$@\"\n",
            server_binary().unwrap().display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    let timeout = Duration::from_secs(2);
    let s = TestServer::builder(&Backend::Sqlite)
        .binary(&wrapper)
        .extra("header_read_timeout_secs = 2\n")
        .start();
    let r = slowloris(&s, 1000, timeout);
    assert!(
        s.stderr().contains("out of file descriptors"),
        "the descriptors never ran out; the test proves nothing"
    );
    assert_slowloris_handled(&r, timeout);
}

#[tokio::test]
async fn a_trickled_body_is_cut_after_the_body_timeout() {
    let s = TestServer::start_with(
        &Backend::Sqlite,
        &format!("body_read_timeout_secs = 2\n{}", metrics_key()),
    );
    let addr = addr_of(&s);
    let cut = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(
            format!(
                "POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AMINA}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .unwrap();
        let start = Instant::now();
        let mut answered = String::new();
        while start.elapsed() < Duration::from_secs(15) {
            if c.write_all(b" ").is_err() || closed_by_server(&mut c) {
                break;
            }
            c.set_nonblocking(false).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let elapsed = start.elapsed();
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = c.read_to_string(&mut answered);
        (elapsed, answered)
    })
    .await
    .unwrap();
    println!("trickled body cut after {:?}", cut.0);
    assert!(
        cut.0 >= Duration::from_millis(1500) && cut.0 < Duration::from_secs(5),
        "{:?}",
        cut.0
    );
    assert!(!cut.1.contains("200 OK"), "{}", cut.1);
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "outpost_connection_timeouts_total{kind=\"body_read\"}"),
        1.0,
        "{m}"
    );
    // Nothing was stored.
    assert_eq!(s.pull_all(AMINA, "").await.0.len(), 0);
}

#[tokio::test]
async fn clients_that_never_read_are_dropped_and_their_answers_freed() {
    let s = TestServer::start_with(
        &Backend::Sqlite,
        // Pages of 8 MiB, more than the socket buffers of a client that reads nothing
        // take (about 4 MiB on loopback), so the answers stall; a page of the default
        // 4 MiB would be taken whole and never time out.
        &format!(
            "write_timeout_secs = 2\nmax_pull_page_mib = 8\n{}",
            metrics_key()
        ),
    );
    // 40 records of 500 KB: a pull of everything is about 20 MB, its first page 8.
    let blob = "x".repeat(500_000);
    for batch in 0..4 {
        let ops = (0..10)
            .map(|i| {
                put(
                    "patients",
                    &format!("big-{batch}-{i}"),
                    None,
                    json!({"blob": blob}),
                )
            })
            .collect();
        s.push_resending(AMINA, ops).await;
    }
    let baseline = s.rss().unwrap();
    let addr = addr_of(&s);
    let readers: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(get("/v1/pull?limit=5000", Some(AMINA)).as_bytes())
                .unwrap();
            c
        })
        .collect();
    let start = Instant::now();
    let mut peak = baseline;
    let mut dropped_after = None;
    while start.elapsed() < Duration::from_secs(60) {
        peak = peak.max(s.rss().unwrap());
        let m = metrics_text(&s).await;
        if sample(&m, "outpost_connection_timeouts_total{kind=\"write\"}") >= 4.0 {
            dropped_after = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped_after = dropped_after.expect("the non-reading clients were never dropped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.rss().unwrap();
    println!(
        "non-reading clients dropped after {dropped_after:?}; RSS baseline {} MB, peak {} MB, after {} MB",
        baseline >> 20,
        peak >> 20,
        after >> 20
    );
    // What they had been sent is a fraction of their answers.
    for mut c in readers {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.len() < 20_000_000, "{}", got.len());
    }
    assert!(after <= baseline + (64 << 20), "{after} vs {baseline}");
    // And the server still serves.
    assert_eq!(s.pull_raw(BEN, "?limit=1").await.0, 200);
}

/// A kept-alive connection is served as long as its next request comes within
/// `idle_timeout_secs`, and closed, without an answer, once it has been silent longer.
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = TestServer::start_with(
        &Backend::Sqlite,
        &format!("idle_timeout_secs = 1\n{}", metrics_key()),
    );
    let addr = addr_of(&s);
    let (read, idle) = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..3 {
            assert_eq!(exchange(&mut c, &get("/health", None)).unwrap().0, 200);
            std::thread::sleep(Duration::from_millis(600));
        }
        assert_eq!(exchange(&mut c, &get("/health", None)).unwrap().0, 200);
        let since = Instant::now();
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest).map(|_| rest.len());
        (read.map_err(|e| e.kind()), since.elapsed())
    })
    .await
    .unwrap();
    println!("an idle connection was closed after {idle:?}");
    assert_eq!(read, Ok(0), "closed with nothing sent");
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "outpost_connection_timeouts_total{kind=\"idle\"}"),
        1.0,
        "{m}"
    );
}

/// At `max_connections` the oldest connections that are idle or still sending their
/// headers are closed to make room, and one whose request is under way is not: 30 slow
/// connections over a cap of 8 lock out neither `/health` nor a push in progress.
#[tokio::test]
async fn the_connection_cap_makes_room_without_closing_requests_under_way() {
    let s = TestServer::start_with(
        &Backend::Sqlite,
        &format!(
            "max_connections = 8\nheader_read_timeout_secs = 60\nidle_timeout_secs = 60\n{}",
            metrics_key()
        ),
    );
    let addr = addr_of(&s);
    let (health, slow_closed, pushed) = tokio::task::spawn_blocking(move || {
        // The oldest connection: a push whose body is still coming.
        let body =
            json!({"client_id": "c", "ops": [put("patients", "p", None, json!({}))]}).to_string();
        let (head, tail) = body.split_at(10);
        let mut busy = TcpStream::connect(addr).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            busy,
            "POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AMINA}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut slow: Vec<TcpStream> = (0..30)
            .map(|i| {
                let mut c = TcpStream::connect(addr).unwrap();
                let _ = write!(c, "GET /health HTTP/1.1\r\nX-Slow-{i}: ");
                c
            })
            .collect();
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            worst = worst.max(health_once(addr).unwrap());
        }
        let closed = slow.iter_mut().map(closed_by_server).filter(|&c| c).count();
        // The push under way was never closed: its body ends, and it is answered.
        busy.write_all(tail.as_bytes()).unwrap();
        let mut reader = BufReader::new(busy);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        (worst, closed, status)
    })
    .await
    .unwrap();
    println!("cap of 8: worst /health {health:?}, {slow_closed} of 30 slow connections closed");
    assert!(health < Duration::from_secs(1), "{health:?}");
    assert!(pushed.starts_with("HTTP/1.1 200"), "{pushed:?}");
    assert!(slow_closed >= 30 - 8, "{slow_closed}");
    let m = metrics_text(&s).await;
    assert!(
        sample(&m, "outpost_connections_evicted_total") >= 22.0,
        "{m}"
    );
    assert!(sample(&m, "outpost_open_connections") <= 8.0, "{m}");
    assert_eq!(s.pull_all(AMINA, "").await.0.len(), 1);
}

/// A proxy in `trusted_proxies` is believed about the client it forwards for, in the
/// throttle and the audit; any other peer's `X-Forwarded-For` is ignored, so a client
/// cannot dodge the throttle or write another address into the audit by sending one.
#[tokio::test]
async fn only_trusted_proxies_name_the_client() {
    let s = TestServer::start_with(
        &Backend::Sqlite,
        "trusted_proxies = [\"127.0.0.1\"]\nauth_failures_per_minute = 3",
    );
    let wrong = "wrong-token-0123456789abcdef0123456789";
    let status = async |local: &str, fwd: &str, token: &str| {
        get_forwarded(&s, local, Some(fwd), "/v1/pull", token)
            .await
            .status()
            .as_u16()
    };
    // Through the proxy: failures count against the address it names.
    for _ in 0..3 {
        assert_eq!(status("127.0.0.1", "203.0.113.7", wrong).await, 401);
    }
    assert_eq!(status("127.0.0.1", "203.0.113.7", AMINA).await, 429);
    assert_eq!(status("127.0.0.1", "203.0.113.8", AMINA).await, 200);
    // Straight from a peer that is not a proxy: the header is not believed.
    for i in 0..3 {
        let fwd = format!("198.51.100.{i}");
        assert_eq!(status("127.0.0.2", &fwd, wrong).await, 401);
    }
    assert_eq!(status("127.0.0.2", "198.51.100.9", AMINA).await, 429);
    assert_eq!(status("127.0.0.1", "203.0.113.8", AMINA).await, 200);
    // The audit names the forwarded client, and the direct peer itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.count("audit", "client_addr", "127.0.0.2") == 0 {
        assert!(Instant::now() < deadline, "no audit row for 127.0.0.2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.count("audit", "client_addr", "203.0.113.7") >= 1);
    for spoofed in ["198.51.100.0", "198.51.100.1", "198.51.100.2"] {
        assert_eq!(s.count("audit", "client_addr", spoofed), 0, "{spoofed}");
    }
}

async fn no_record_data_or_token_in_logs_at_trace(b: Backend) {
    let marker = format!("PATIENT-MARKER-{}", uuid_like());
    let wrong = format!("WRONG-TOKEN-MARKER-{}-0123456789abcdef", uuid_like());
    let s = TestServer::builder(&b)
        .extra(LONG_PUSH_BUDGET)
        .env("RUST_LOG", "trace")
        .start();
    let r = s
        .push(
            AMINA,
            vec![
                put(
                    "patients",
                    "p-1",
                    None,
                    json!({"name": marker, "note": marker}),
                ),
                put("drafts", "d-1", None, json!({"draft": marker})),
            ],
        )
        .await;
    assert!(r.iter().all(|r| r["status"] == "applied"), "{r:?}");
    let (changes, cursor) = s.pull_all(BEN, "").await;
    assert_eq!(changes.len(), 1);
    // A cursor is bound to its user (sealed): Ben pulls on from his own.
    assert_eq!(s.pull_raw(BEN, &format!("?since={cursor}")).await.0, 200);
    assert_eq!(s.pull_raw(&wrong, "").await.0, 401);
    let (st, _) = s
        .push_raw(
            &wrong,
            &json!({"client_id": "x", "ops": [put("patients", "p-2", None, json!({"m": marker}))]}),
        )
        .await;
    assert_eq!(st, 401);
    // A conflict answer carries the record back; it must not be logged either.
    let r = s
        .push(
            AMINA,
            vec![put("patients", "p-1", None, json!({"name": marker}))],
        )
        .await;
    assert_eq!(r[0]["status"], "conflict");
    let log = s.stderr();
    assert!(
        log.contains("push applied"),
        "the server did not log at trace; the test proves nothing:\n{}",
        &log[..log.len().min(2000)]
    );
    for secret in [marker.as_str(), wrong.as_str(), AMINA, BEN, cursor.as_str()] {
        let hits = log.matches(secret).count();
        assert_eq!(hits, 0, "{secret} appears {hits} times in the log");
    }
    println!(
        "{} log lines at trace, none with a secret",
        log.lines().count()
    );
}

fn uuid_like() -> String {
    op_id().replace('-', "")
}

#[test]
fn a_short_static_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let db = dir.path().join("s.db").display().to_string();
    for (text, key) in [
        (
            base_config(&db, "").replace(AMINA, "sh0rt-t0ken"),
            "users[0].token: too short",
        ),
        (
            base_config(&db, "metrics_token = \"sh0rt-t0ken\"\n"),
            "metrics_token: too short",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains("sh0rt"), "the token was echoed: {stderr}");
    }
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address() {
    let s = Arc::new(TestServer::start_with(&Backend::Sqlite, &metrics_key()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..125 {
                let wrong = format!("wrong-token-{w}-{i}-0123456789abcdef0123");
                let r = s
                    .client()
                    .get(s.url("/v1/pull"))
                    .bearer_auth(wrong)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let body: Value = r.json().await.unwrap();
                out.push((
                    status,
                    retry,
                    body["error"]["code"].as_str().map(str::to_owned),
                ));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let took = start.elapsed();
    let n401 = all.iter().filter(|r| r.0 == 401).count();
    let throttled: Vec<_> = all.iter().filter(|r| r.0 == 429).collect();
    println!(
        "2000 wrong tokens in {took:?}: {n401} × 401, {} × 429",
        throttled.len()
    );
    assert_eq!(n401 + throttled.len(), 2000);
    // The default allows 30 failures a minute; racing requests may add a few.
    assert!((30..=30 + 16).contains(&n401), "{n401}");
    for (_, retry, code) in &throttled {
        assert_eq!(code.as_deref(), Some("rate_limited"));
        assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "{retry:?}");
    }
    // The address is blocked whatever the token; another address is not.
    assert_eq!(s.pull_raw(AMINA, "").await.0, 429);
    let r = get_from(&s, "127.0.0.2", "/v1/pull", AMINA).await;
    assert_eq!(r.status(), 200);
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "outpost_auth_failures_total"),
        n401 as f64,
        "{m}"
    );
    assert!(sample(&m, "outpost_auth_throttled_total") >= throttled.len() as f64);
}

async fn sighup_reloads_users_without_dropping_connections(b: Backend) {
    let s = TestServer::start_with(&b, &metrics_key());
    let addr = addr_of(&s);
    let dana = "token-dana-after-reload-0123456789abcdef";
    // A kept-alive connection, open across the reload.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (st, _, _) = exchange(&mut kept, &get("/v1/pull", Some(CHIOMA))).unwrap();
    assert_eq!(st, 200);
    assert_eq!(s.pull_raw(dana, "").await.0, 401);

    // Chioma is revoked, Dana added.
    let before = std::fs::read_to_string(s.config_path()).unwrap();
    let chioma_block =
        format!("[[users]]\nname = \"chioma\"\nteam = \"south\"\ntoken = \"{CHIOMA}\"\n");
    assert!(before.contains(&chioma_block));
    let after = before.replace(
        &chioma_block,
        &format!("[[users]]\nname = \"dana\"\nteam = \"south\"\ntoken = \"{dana}\"\n"),
    );
    std::fs::write(s.config_path(), &after).unwrap();
    s.signal("HUP");
    let start = Instant::now();
    while s.pull_raw(dana, "").await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reload not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same connection, still open, sees the new users.
    let (st, _, _) = exchange(&mut kept, &get("/v1/pull", Some(CHIOMA))).unwrap();
    assert_eq!(st, 401);
    let (st, _, _) = exchange(&mut kept, &get("/v1/pull", Some(dana))).unwrap();
    assert_eq!(st, 200);
    let (st, _, _) = exchange(&mut kept, &get("/v1/pull", Some(AMINA))).unwrap();
    assert_eq!(st, 200);

    // A broken config is refused and the one in force kept.
    std::fs::write(s.config_path(), after.replace(dana, "short")).unwrap();
    s.signal("HUP");
    let start = Instant::now();
    while !s.stderr().contains("config reload failed") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no reload error logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.stderr().contains("short\""));
    let (st, _, _) = exchange(&mut kept, &get("/v1/pull", Some(dana))).unwrap();
    assert_eq!(st, 200);
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "outpost_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "outpost_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    let opened = sample(&m, "outpost_connections_total");
    // The kept connection was never replaced: one more request on it opens nothing.
    let (st, _, _) = exchange(&mut kept, &get("/health", None)).unwrap();
    assert_eq!(st, 200);
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "outpost_connections_total"),
        opened + 1.0,
        "only the metrics reader's"
    );
}

async fn metrics_count_requests_ops_and_connections(b: Backend) {
    // Off unless configured.
    let plain = TestServer::start(&b);
    let r = plain
        .client()
        .get(plain.url("/metrics"))
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!(st, 404);
    assert_error_shape(&v);
    drop(plain);

    let s = TestServer::start_with(&b, &format!("{LONG_PUSH_BUDGET}{}", metrics_key()));
    for token in [
        None,
        Some(AMINA),
        Some("not-the-metrics-token-0123456789abcdef"),
    ] {
        let mut req = s.client().get(s.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (st, v) = answer(req.send().await.unwrap()).await;
        assert_eq!(st, 401, "{token:?}");
        assert_error_shape(&v);
    }
    let marker = format!("METRICS-MARKER-{}", uuid_like());
    let r = s
        .push(
            AMINA,
            vec![
                put("patients", "m-1", None, json!({"v": marker})),
                put("patients", "m-2", None, json!({"v": 2})),
                put("patients", "m-1", None, json!({"v": 3})),
            ],
        )
        .await;
    assert_eq!(r[2]["status"], "conflict");
    let (changes, _) = s.pull_all(BEN, "").await;
    assert_eq!(changes.len(), 2);
    assert_eq!(s.pull_raw(AMINA, "?limit=x").await.0, 400);

    let r = s
        .client()
        .get(s.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let m = r.text().await.unwrap();
    for (series, want) in [
        ("outpost_push_ops_total{result=\"applied\"}", 2.0),
        ("outpost_push_ops_total{result=\"conflict\"}", 1.0),
        ("outpost_pull_changes_total", 2.0),
        (
            "outpost_http_requests_total{route=\"push\",status=\"200\"}",
            1.0,
        ),
        (
            "outpost_http_requests_total{route=\"pull\",status=\"400\"}",
            1.0,
        ),
        (
            "outpost_http_requests_total{route=\"metrics\",status=\"401\"}",
            3.0,
        ),
        ("outpost_auth_failures_total", 3.0),
        (
            "outpost_http_request_duration_seconds_count{route=\"push\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&m, series), want, "{series} in\n{m}");
    }
    assert!(sample(&m, "outpost_open_connections") >= 1.0);
    assert!(
        sample(
            &m,
            "outpost_http_requests_total{route=\"pull\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(!m.contains(&marker) && !m.contains("m-1") && !m.contains(AMINA));
    // Every line is a comment or `name{labels} value`.
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
}

backend_tests!("hardening_ops":
    no_record_data_or_token_in_logs_at_trace,
    sighup_reloads_users_without_dropping_connections,
    metrics_count_requests_ops_and_connections,
);
