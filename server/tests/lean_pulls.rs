//! Black-box tests of the pull additions for slow links, against the real binary on
//! both backends: the dense form (`format=columns`) carries what v1 carries, a page
//! byte budget (`max_bytes`), a device's own changes left out (`own`) exactly when it
//! holds what the server stored, `remaining` counted and capped, and zstd answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outpost_core::protocol::PullResponse;
use outpost_core::transport::decode_body;
use outpost_testkit::*;
use serde_json::{Value, json};

/// Pushes `ops` as the device `client`; asserts 200 and returns the results.
async fn push_as(s: &TestServer, token: &str, client: &str, ops: Vec<Value>) -> Vec<Value> {
    let (st, body) = s
        .push_raw(token, &json!({"client_id": client, "ops": ops}))
        .await;
    assert_eq!(st, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

/// The applied seq of a one-op push.
fn applied_seq(results: &[Value]) -> i64 {
    assert_eq!(results[0]["status"], "applied", "{results:?}");
    results[0]["seq"].as_i64().unwrap()
}

/// The ids a pull of `patients` naming `own` brings, from the beginning.
async fn pulled_ids(s: &TestServer, own: &[i64]) -> Vec<String> {
    let own: Vec<String> = own.iter().map(i64::to_string).collect();
    let mut query = "&collections=patients".to_owned();
    if !own.is_empty() {
        query.push_str(&format!("&own={}", own.join(",")));
    }
    let (changes, _) = s.pull_all(AMINA, &query).await;
    changes
        .iter()
        .map(|c| c["record_id"].as_str().unwrap().to_owned())
        .collect()
}

fn counter(replica: &str, n: u64) -> Value {
    json!({"$crdt": "gcounter", "p": {replica: n}})
}

/// Amina's device `dev-1` pushes `op`: its applied seq.
async fn mine(s: &TestServer, op: Value) -> i64 {
    applied_seq(&push_as(s, AMINA, "dev-1", vec![op]).await)
}

/// Ben's device `dev-2` (Amina's team) pushes `op`.
async fn theirs(s: &TestServer, op: Value) {
    applied_seq(&push_as(s, BEN, "dev-2", vec![op]).await);
}

async fn own_changes_are_left_out_only_when_the_device_holds_them(backend: Backend) {
    let s = TestServer::start(&backend);
    let name = |n: &str| json!({ "name": n });
    // A new record, stored as sent: left out for the device that wrote it, for it only.
    let new = mine(
        &s,
        put(
            "patients",
            "p",
            None,
            json!({"name": "A", "n": counter("a", 1)}),
        ),
    )
    .await;
    assert!(pulled_ids(&s, &[new]).await.is_empty());
    assert_eq!(pulled_ids(&s, &[]).await, ["p"]);
    assert_eq!(pulled_ids(&s, &[new + 1]).await, ["p"], "a seq not its own");
    // Another device counts on p (version 2), then this one counts on the version it
    // had (1): the server merges both, which this device has never seen, so the change
    // comes back to it.
    theirs(
        &s,
        patch("patients", "p", Some(1), json!({"n": counter("b", 2)})),
    )
    .await;
    let merged = mine(
        &s,
        patch("patients", "p", Some(1), json!({"n": counter("a", 3)})),
    )
    .await;
    assert_eq!(pulled_ids(&s, &[merged]).await, ["p"]);
    let (changes, _) = s.pull_all(AMINA, "&collections=patients").await;
    assert_eq!(changes[0]["data"]["n"]["p"], json!({"a": 3, "b": 2}));
    // Its next write is made on a copy it may not have pulled yet: it comes back too.
    let after = mine(&s, patch("patients", "p", Some(3), name("B"))).await;
    assert_eq!(pulled_ids(&s, &[after]).await, ["p"]);
    // Once another device wrote it, a write on the version pulled is exact again.
    theirs(&s, patch("patients", "p", Some(4), name("C"))).await;
    let exact = mine(&s, patch("patients", "p", Some(5), name("D"))).await;
    assert!(pulled_ids(&s, &[exact]).await.is_empty());
    // A forced write over a version it did not have, and a put the server stored with a
    // CRDT field carried over: both come back.
    let mut forced = put(
        "patients",
        "p",
        Some(2),
        json!({"name": "E", "n": counter("a", 3)}),
    );
    forced["force"] = json!(true);
    let forced = mine(&s, forced).await;
    assert_eq!(pulled_ids(&s, &[forced]).await, ["p"]);
    theirs(&s, patch("patients", "p", Some(7), name("F"))).await;
    let carried = mine(&s, put("patients", "p", Some(8), name("G"))).await;
    assert_eq!(pulled_ids(&s, &[carried]).await, ["p"]);
    // A delete leaves a tombstone on both sides: left out.
    theirs(&s, patch("patients", "p", Some(9), name("H"))).await;
    let gone = mine(&s, delete("patients", "p", Some(10))).await;
    assert!(pulled_ids(&s, &[gone]).await.is_empty());
    // Ranges name many: a batch of new records, left out as one range.
    let ops: Vec<Value> = (0..5)
        .map(|i| put("patients", &format!("q{i}"), None, json!({"i": i})))
        .collect();
    let r = push_as(&s, AMINA, "dev-1", ops).await;
    let seqs: Vec<i64> = r.iter().map(|x| x["seq"].as_i64().unwrap()).collect();
    let (lo, hi) = (seqs[0], seqs[4]);
    let (changes, _) = s
        .pull_all(
            AMINA,
            &format!("&collections=patients&own={gone},{lo}-{hi}"),
        )
        .await;
    assert!(changes.is_empty(), "{changes:?}");
}

async fn new_parameters_are_checked(backend: Backend) {
    let s = TestServer::start(&backend);
    for q in [
        "?max_bytes=0",
        "?max_bytes=-1",
        "?max_bytes=x",
        "?max_bytes=1&max_bytes=2",
        "?own=0",
        "?own=5-3",
        "?own=a",
        "?own=1-",
        "?own=1,,2",
        "?own=",
        "?format=columns&format=columns",
        "?remaining=1",
        "?remaining=",
        "?remaining=0&remaining=0",
    ] {
        let (st, body) = s.pull_raw(AMINA, q).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{q}: {body}"
        );
    }
    let many: Vec<String> = (1..=65).map(|i| i.to_string()).collect();
    let (st, _) = s.pull_raw(AMINA, &format!("?own={}", many.join(","))).await;
    assert_eq!(st, 400, "65 items");
    let (st, _) = s
        .pull_raw(AMINA, &format!("?own={}", many[..64].join(",")))
        .await;
    assert_eq!(st, 200, "64 items");
    // A form this server does not know gets v1, which says what it is by its members.
    let (st, body) = s.pull_raw(AMINA, "?format=rows").await;
    assert_eq!(st, 200);
    assert!(
        body.get("changes").is_some() && body.get("format").is_none(),
        "{body}"
    );
}

async fn remaining_counts_what_follows_and_stops_at_the_cap(backend: Backend) {
    let s = TestServer::start(&backend);
    let ops: Vec<Value> = (0..25)
        .map(|i| put("patients", &format!("p{i:02}"), None, json!({"i": i})))
        .collect();
    s.push_resending(AMINA, ops).await;
    // A v1 client, sending none of the additions, gets the v1 page exactly: no count.
    let (_, body) = s.pull_raw(AMINA, "?limit=10").await;
    assert_eq!(body["has_more"], json!(true), "{body}");
    assert!(
        body.get("remaining").is_none() && body.get("remaining_capped").is_none(),
        "{body}"
    );
    // Chioma's team reads none of them: they are no part of her count.
    let (_, body) = s.pull_raw(CHIOMA, "?limit=1&max_bytes=100000").await;
    assert_eq!(
        (body["has_more"].clone(), body["remaining"].clone()),
        (json!(false), json!(0))
    );
    let mut seen = Vec::new();
    let mut q = "?limit=10&max_bytes=100000".to_owned();
    loop {
        let (st, body) = s.pull_raw(AMINA, &q).await;
        assert_eq!(st, 200);
        assert!(body.get("remaining_capped").is_none());
        seen.push(body["remaining"].as_u64().unwrap());
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
        q = format!(
            "?limit=10&max_bytes=100000&since={}",
            body["cursor"].as_str().unwrap()
        );
    }
    assert_eq!(seen, [15, 5, 0]);
    // A client that knows what remains from an earlier page asks for no count.
    let (_, body) = s
        .pull_raw(AMINA, "?limit=10&max_bytes=100000&remaining=0")
        .await;
    assert_eq!(body["has_more"], json!(true), "{body}");
    assert!(
        body.get("remaining").is_none() && body.get("remaining_capped").is_none(),
        "{body}"
    );
    // Own changes left out are no part of it either.
    let (_, body) = s.pull_raw(AMINA, "?limit=1&own=1-20").await;
    assert_eq!(body["remaining"], json!(4), "{body}");
    // Past the cap the count is a floor, and says so.
    for chunk in 0..11 {
        let ops: Vec<Value> = (0..1000)
            .map(|i| put("answers", &format!("a{chunk}-{i}"), None, json!({})))
            .collect();
        s.push_resending(AMINA, ops).await;
    }
    let (_, body) = s
        .pull_raw(AMINA, "?limit=1&collections=answers&format=columns")
        .await;
    assert_eq!(
        (body["remaining"].clone(), body["remaining_capped"].clone()),
        (json!(10_000), json!(true))
    );
}

async fn the_dense_form_carries_what_v1_carries(backend: Backend) {
    let s = TestServer::start(&backend);
    s.push_resending(
        AMINA,
        vec![
            put(
                "patients",
                "p1",
                None,
                json!({"name": "Amina", "tags": ["a", {"b": null}], "n": counter("r", 2)}),
            ),
            put("patients", "p2", None, json!({})),
            put(
                "patients",
                "p\"3",
                None,
                json!({"odd key \u{e9}": 1.5, "": null}),
            ),
            put("visits", "v1", None, json!({"patient": "p1"})),
            delete("patients", "p2", Some(1)),
            put("forms", "f1", None, json!({"q": "fever"})),
        ],
    )
    .await;
    let (v1, _) = s.pull_all(AMINA, "&limit=2").await;
    let mut dense = Vec::new();
    let mut q = "?format=columns&limit=2".to_owned();
    loop {
        let r = s
            .client()
            .get(s.url(&format!("/v1/pull{q}")))
            .bearer_auth(AMINA)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: PullResponse = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        dense.extend(page.changes);
        if !page.has_more {
            break;
        }
        q = format!("?format=columns&limit=2&since={}", page.cursor);
    }
    assert_eq!(dense.len(), v1.len());
    assert_eq!(v1.len(), 5);
    for (d, v) in dense.iter().zip(&v1) {
        let mut d = serde_json::to_value(d).unwrap();
        // The dense form sends neither; the rest is the same.
        d["seq"] = v["seq"].clone();
        d["updated_at"] = v["updated_at"].clone();
        assert_eq!(&d, v);
    }
    // A byte budget cuts pages in the dense form as in v1.
    let (st, body) = s.pull_raw(AMINA, "?format=columns&max_bytes=1").await;
    assert_eq!((st, body["ids"].as_array().unwrap().len()), (200, 1));
    assert_eq!(body["has_more"], json!(true));
}

async fn answers_come_in_zstd_when_the_client_takes_it(backend: Backend) {
    let s = TestServer::start(&backend);
    let ops: Vec<Value> = (0..50)
        .map(|i| put("patients", &format!("p{i}"), None, patient(i)))
        .collect();
    s.push_resending(AMINA, ops).await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut bodies = Vec::new();
    for (accept, expect) in [
        ("zstd, gzip", Some("zstd")),
        ("gzip", Some("gzip")),
        ("br", None),
    ] {
        let r = raw
            .get(s.url("/v1/pull?format=columns"))
            .bearer_auth(AMINA)
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(enc.as_deref(), expect, "{accept}");
        let bytes = r.bytes().await.unwrap();
        bodies.push((bytes.len(), decode_body(enc.as_deref(), &bytes).unwrap()));
    }
    assert_eq!(bodies[0].1, bodies[2].1, "the same answer");
    assert_eq!(bodies[1].1, bodies[2].1);
    assert!(
        bodies[0].0 < bodies[1].0,
        "zstd {} < gzip {}",
        bodies[0].0,
        bodies[1].0
    );
}

outpost_testkit::backend_tests!(
    "lean_pulls": own_changes_are_left_out_only_when_the_device_holds_them,
    new_parameters_are_checked,
    remaining_counts_what_follows_and_stops_at_the_cap,
    the_dense_form_carries_what_v1_carries,
    answers_come_in_zstd_when_the_client_takes_it
);
