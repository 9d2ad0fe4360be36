//! Black-box tests of the bounds on pulls and on parsing, against the real binary:
//! pull pages cut at a byte budget, gzip and many-value bombs, keyed cursors bound to
//! the user and collection set, the `collections` cap, and `Cache-Control: no-store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use outpost_testkit::*;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `POST /v1/push` of a gzipped body: status and JSON answer.
async fn push_gzipped(s: &TestServer, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .client()
        .post(s.url("/v1/push"))
        .bearer_auth(AMINA)
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// A push body just under 8 MiB once inflated: `{"client_id":"c","ops":[` then `unit`
/// repeated, then `last]}`.
fn bomb(unit: &str, last: &str) -> String {
    let head = r#"{"client_id":"c","ops":["#;
    let room = 8 * MIB as usize - 1024 - head.len();
    let mut s = String::with_capacity(8 * MIB as usize);
    s.push_str(head);
    s.push_str(&unit.repeat(room / unit.len()));
    s.push_str(last);
    s.push_str("]}");
    s
}

/// Finding 7: 8 KB of gzip inflated to an 8.3 MB parse, and 8 at once took 1.19 GB.
/// Now parsing stops at 600,000 values and large parses take turns, so 8 bombs at once
/// of the finding's shape and of the costliest shapes keep the server well under
/// 256 MiB, and each gets 413 `payload_too_large`: the body is refused for how much
/// it holds, as one over 8 MiB is, and the client's remedy is the same (send fewer
/// ops per request); nothing in it is malformed, which is what 400 would say.
async fn concurrent_gzip_bombs_stay_bounded(b: Backend) {
    let s = TestServer::start(&b);
    let shapes = [
        // The finding's: an 8 KB body.
        bomb("[],", "[]"),
        // The costliest per value: nested one-element arrays, and objects of keys.
        bomb("[[[[0]]]],", "0"),
        {
            let mut o = String::from(r#"{"client_id":"c","ops":[{"op_id":"o","data":{"#);
            let mut i = 0u64;
            while o.len() < 8 * MIB as usize - 2048 {
                o.push_str(&format!("\"{i:x}\":{{}},"));
                i += 1;
            }
            o.push_str("\"z\":0}}]}");
            o
        },
    ];
    for text in &shapes {
        assert!(text.len() < 8 * MIB as usize);
        let packed = gzip(text.as_bytes());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, url, body) = (s.client().clone(), s.url("/v1/push"), packed.clone());
            tasks.push(tokio::spawn(async move {
                let r = c
                    .post(url)
                    .bearer_auth(AMINA)
                    .header("content-encoding", "gzip")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                answer(r).await
            }));
        }
        for t in tasks {
            let (st, body) = t.await.unwrap();
            assert_eq!(
                (st, body["error"]["code"].as_str()),
                (413, Some("payload_too_large")),
                "{body}"
            );
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("600000 JSON values"),
                "{body}"
            );
        }
        eprintln!("{b:?}: peak RSS {} MiB", s.peak_rss().unwrap() / MIB);
    }
    let peak = s.peak_rss().expect("VmHWM of the server");
    eprintln!(
        "{b:?}: peak RSS after 3 x 8 concurrent bombs: {} MiB",
        peak / MIB
    );
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
    // The finding's bomb is tiny on the wire.
    assert!(gzip(shapes[0].as_bytes()).len() < 16 * 1024);
    // The server is fine, and a gzipped push still applies.
    let ok = json!({"client_id": "c", "ops": [put("patients", "after", None, json!({"a": 1}))]});
    let (st, body) = push_gzipped(&s, gzip(ok.to_string().as_bytes())).await;
    assert_eq!(
        (st, body["results"][0]["status"].as_str()),
        (200, Some("applied"))
    );
}

outpost_testkit::backend_tests!("hardening_pull": concurrent_gzip_bombs_stay_bounded);
