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

/// One `GET /v1/pull<query>` as Amina: the answer's JSON length (decoded, as the
/// client's parser sees it), its status and the parsed answer.
async fn pull_sized(s: &TestServer, query: &str) -> (usize, u16, Value) {
    let r = s
        .client()
        .get(s.url(&format!("/v1/pull{query}")))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (text.len(), status, serde_json::from_str(&text).unwrap())
}

/// Pages from the beginning with `extra` on every query; checks that no change is
/// skipped or repeated and seqs increase; returns each page's (JSON bytes, changes,
/// has_more) and every record id in order.
async fn pages(s: &TestServer, extra: &str) -> (Vec<(usize, usize, bool)>, Vec<String>) {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last_seq = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?since={c}{extra}"),
            None => format!("?x=1{extra}"),
        };
        let (len, st, body) = pull_sized(s, &q).await;
        assert_eq!(st, 200, "{body}");
        let changes = body["changes"].as_array().unwrap();
        for c in changes {
            let seq = c["seq"].as_i64().unwrap();
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            last_seq = seq;
            ids.push(c["record_id"].as_str().unwrap().to_owned());
        }
        let more = body["has_more"].as_bool().unwrap();
        out.push((len, changes.len(), more));
        if !more {
            return (out, ids);
        }
        cursor = Some(body["cursor"].as_str().unwrap().to_owned());
    }
}

/// Finding 6: 100 records of 1 MiB at `limit=5000` were one 104 MB answer (228 MB peak
/// RSS), and a device pulling 1,000 per page with a 30 s timeout could never finish.
/// Now pages stop at 4 MiB of change JSON, with `has_more` and a cursor right after the
/// last change; memory stays bounded with several pullers; a device syncs to the end.
/// 40 such records are enough to show it: four pullers at once would hold 160 MB of
/// uncut answers, plus the rows they were read from.
async fn pull_pages_are_cut_at_the_byte_budget(b: Backend) {
    const RECORDS: usize = 40;
    const PAGES: usize = RECORDS / 4;
    let mut s = TestServer::start(&b);
    let blob = "x".repeat(1_000_000);
    for chunk in 0..RECORDS / 5 {
        let ops = (0..5)
            .map(|i| {
                let n = chunk * 5 + i;
                put(
                    "patients",
                    &format!("p-{n:03}"),
                    None,
                    json!({"blob": blob, "n": n}),
                )
            })
            .collect();
        let r = s.push_resending(AMINA, ops).await;
        assert!(r.iter().all(|x| x["status"] == "applied"), "{r:?}");
    }
    // From here on the peak RSS is the pulls'.
    s.restart();

    let (got, ids) = pages(&s, "&limit=5000").await;
    let want: Vec<String> = (0..RECORDS).map(|n| format!("p-{n:03}")).collect();
    assert_eq!(ids, want, "every record once, in seq order");
    // Four 1 MB changes make a page; a fifth would pass 4 MiB.
    assert_eq!(got.len(), PAGES, "{got:?}");
    for (i, (len, n, more)) in got.iter().enumerate() {
        assert!(*len <= 4 * MIB as usize + 1024, "page {i}: {len} bytes");
        assert_eq!(*n, 4, "page {i}");
        assert_eq!(*more, i < PAGES - 1, "page {i}");
    }

    // Four pullers at once, twice over.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, url) = (s.client().clone(), s.url("/v1/pull"));
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            let mut since = String::new();
            for _ in 0..2 {
                loop {
                    let r = c
                        .get(format!("{url}?limit=5000{since}"))
                        .bearer_auth(AMINA)
                        .send()
                        .await
                        .unwrap();
                    let v: Value = r.json().await.unwrap();
                    n += v["changes"].as_array().unwrap().len();
                    if !v["has_more"].as_bool().unwrap() {
                        since.clear();
                        break;
                    }
                    since = format!("&since={}", v["cursor"].as_str().unwrap());
                }
            }
            n
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 2 * RECORDS);
    }
    let peak = s.peak_rss().expect("VmHWM of the server");
    eprintln!(
        "{b:?}: peak RSS over 9 full pulls of {RECORDS} MB: {} MiB",
        peak / MIB
    );
    assert!(peak < 128 * MIB, "peak RSS {} MiB", peak / MIB);

    // A device with the default 1,000 per page and 30 s timeout syncs it all.
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = device(&s, dir.path());
    let report = engine.sync_now(None).await;
    assert_eq!(
        report.outcome,
        outpost_core::SyncOutcome::Completed,
        "{report:?}"
    );
    assert_eq!(report.pulled, RECORDS as u64);
    assert!(report.requests >= PAGES as u64, "{report:?}");
    assert_eq!(store.count("patients", &[]).unwrap(), RECORDS as u64);
    let r = store
        .get("patients", &format!("p-{:03}", RECORDS - 1))
        .unwrap()
        .unwrap();
    assert_eq!(r.data["blob"].as_str().map(str::len), Some(1_000_000));
}

/// A phone of Amina's with the default sync settings, its database in `dir`.
fn device(
    s: &TestServer,
    dir: &std::path::Path,
) -> (outpost_core::Store, outpost_core::SyncEngine) {
    let store = outpost_core::Store::open(
        dir.join("device.db"),
        outpost_core::StoreConfig::default()
            .with_collection("patients", outpost_core::ConflictStrategy::FieldMerge),
    )
    .unwrap();
    let engine = outpost_core::SyncEngine::new(
        store.clone(),
        std::sync::Arc::new(
            outpost_core::HttpTransport::new(&s.base_url(), Default::default()).unwrap(),
        ),
        std::sync::Arc::new(outpost_core::StaticToken(AMINA.to_owned())),
        outpost_core::SyncConfig::default(),
        tokio::runtime::Handle::current(),
    );
    (store, engine)
}

/// The budget is configurable, a change bigger than it comes alone (so every page makes
/// progress), and `limit` still ends pages by count.
async fn a_change_over_the_budget_comes_alone(b: Backend) {
    let s = TestServer::start_with(&b, "max_pull_page_mib = 0.25");
    for (id, size) in [
        ("a", 100_000),
        ("b", 300_000),
        ("c", 100_000),
        ("d", 10),
        ("e", 10),
    ] {
        s.push(
            AMINA,
            vec![put("patients", id, None, json!({"x": "y".repeat(size)}))],
        )
        .await;
    }
    let (got, ids) = pages(&s, "").await;
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let shape: Vec<_> = got.iter().map(|(_, n, more)| (*n, *more)).collect();
    assert_eq!(shape, [(1, true), (1, true), (3, false)]);
    let (_, ids) = pages(&s, "&limit=2").await;
    assert_eq!(ids.len(), 5);
    let (got, _) = pages(&s, "&limit=1").await;
    assert_eq!(got.len(), 5);
}

/// Finding 13: a 16,000-name `collections` list took 0.85 s per request, on the async
/// threads, de-duplicated in quadratic time. Now past 1,000 names it is a 400 as soon
/// as the 1,001st is met; up to that, names go into a set.
async fn collections_lists_are_capped_and_deduplicated(b: Backend) {
    let s = TestServer::start(&b);
    s.push_resending(
        AMINA,
        vec![
            put("visits", "v", None, json!({})),
            put("patients", "p", None, json!({})),
        ],
    )
    .await;
    // Distinct names, as short as they come, so 16,000 fit in a URI (64 KiB at most).
    let names = |n: usize| {
        let first = b"abcdefghijklmnopqrstuvwxyz";
        let rest = b"abcdefghijklmnopqrstuvwxyz0123456789_";
        let name = |mut i: usize| {
            let mut s = vec![first[i % 26]];
            i /= 26;
            while i > 0 {
                i -= 1;
                s.push(rest[i % 37]);
                i /= 37;
            }
            String::from_utf8(s).unwrap()
        };
        (0..n).map(name).collect::<Vec<_>>().join(",")
    };
    let long = format!("?collections={}", names(16_000));
    assert!(long.len() < 65_000, "{}", long.len());
    let distinct: std::collections::BTreeSet<&str> = long[13..].split(',').collect();
    assert_eq!(distinct.len(), 16_000);
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (st, body) = s.pull_raw(AMINA, &long).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains("1000"));
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    let (st, _) = s
        .pull_raw(AMINA, &format!("?collections={}", names(1001)))
        .await;
    assert_eq!(st, 400);
    // 1,000 names are fine, repeats are one name, and the filter still filters.
    let at_cap = format!("?collections=visits,{}", names(999));
    let (st, body) = s.pull_raw(AMINA, &at_cap).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["changes"].as_array().unwrap().len(), 1);
    let repeats = vec!["visits"; 1000].join(",");
    let (st, body) = s.pull_raw(AMINA, &format!("?collections={repeats}")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["changes"][0]["record_id"], "v");
    let (changes, _) = s
        .pull_all(AMINA, "&collections=visits,patients,visits")
        .await;
    assert_eq!(changes.len(), 2);
}

/// Every answer of a `/v1/` route says `Cache-Control: no-store`: those with records
/// (pull, push with conflicts) above all, and errors too.
async fn answers_with_records_are_not_stored(b: Backend) {
    let s = TestServer::start(&b);
    let c = s.client();
    let push =
        |token: &'static str, body: Value| c.post(s.url("/v1/push")).bearer_auth(token).json(&body);
    let op = put("patients", "p", None, json!({"name": "Amina"}));
    let requests = [
        (
            "push applied",
            push(AMINA, json!({"client_id": "c", "ops": [op]})),
        ),
        (
            "push conflict",
            push(
                AMINA,
                json!({"client_id": "c", "ops": [put("patients", "p", None, json!({}))]}),
            ),
        ),
        ("push 400", push(AMINA, json!({"ops": 1}))),
        ("push 401", push("nobody", json!({}))),
        ("pull", c.get(s.url("/v1/pull")).bearer_auth(AMINA)),
        (
            "pull gzip",
            c.get(s.url("/v1/pull"))
                .bearer_auth(AMINA)
                .header("accept-encoding", "gzip"),
        ),
        (
            "pull 400",
            c.get(s.url("/v1/pull?limit=0")).bearer_auth(AMINA),
        ),
        ("404", c.get(s.url("/v1/nothing")).bearer_auth(AMINA)),
    ];
    for (what, req) in requests {
        let r = req.send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{what}: {}",
            r.status()
        );
        let (st, body) = answer(r).await;
        if what == "push conflict" {
            assert_eq!(body["results"][0]["current"]["data"]["name"], "Amina");
        }
        assert!(st < 500, "{what}");
    }
}

/// `(status, error code)` of a pull as `token` with `query`.
async fn pull_status(s: &TestServer, token: &str, query: &str) -> (u16, Option<String>) {
    let (st, body) = s.pull_raw(token, query).await;
    let code = body["error"]["code"].as_str().map(str::to_owned);
    (st, code)
}

fn expired() -> (u16, Option<String>) {
    (410, Some("cursor_expired".into()))
}

fn garbled() -> (u16, Option<String>) {
    (400, Some("invalid_request".into()))
}

/// The cursor of an unkeyed server before this one: `c1.` + seq, purge mark and an
/// unkeyed checksum, in hex.
fn legacy_cursor(seq: u64, mark: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"outpost-cursor-v1");
    h.update(seq.to_be_bytes());
    h.update(mark.to_be_bytes());
    format!(
        "c1.{seq:016x}{mark:016x}{}",
        hex::encode(&h.finalize()[..4])
    )
}

/// Finding 10: cursors were checksummed but unkeyed, so a client could forge one (and
/// suppress a `cursor_expired`), and every cursor showed the deployment's change count.
/// Now they are sealed with a server key and bound to the user and collection set.
async fn cursors_are_sealed_and_bound_to_user_and_collections(b: Backend) {
    let s = TestServer::start(&b);
    for i in 0..5 {
        s.push(
            AMINA,
            vec![put("patients", &format!("p{i}"), None, json!({}))],
        )
        .await;
    }
    s.push(AMINA, vec![put("visits", "v", None, json!({}))])
        .await;
    s.push(CHIOMA, vec![put("patients", "c", None, json!({}))])
        .await;
    let (seen, amina) = s.pull_all(AMINA, "").await;
    assert_eq!(seen.len(), 6);
    assert_eq!(s.pull_raw(AMINA, &format!("?since={amina}")).await.0, 200);

    // Forged: any digit changed, or made by hand with the right key id: 400.
    for i in [11, 40, amina.len() - 1] {
        let mut b = amina.clone().into_bytes();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(b).unwrap();
        assert_eq!(
            pull_status(&s, AMINA, &format!("?since={changed}")).await,
            garbled()
        );
    }
    let made = format!("{}{}", &amina[..11], "0".repeat(96));
    assert_eq!(
        pull_status(&s, AMINA, &format!("?since={made}")).await,
        garbled()
    );
    for bad in ["c2.zz", "c2.", "zz", "c1.zz"] {
        assert_eq!(
            pull_status(&s, AMINA, &format!("?since={bad}")).await,
            garbled()
        );
    }

    // Another user's cursor, even a teammate's: 410, so that client starts over.
    assert_eq!(
        pull_status(&s, BEN, &format!("?since={amina}")).await,
        expired()
    );
    assert_eq!(
        pull_status(&s, CHIOMA, &format!("?since={amina}")).await,
        expired()
    );
    // Another collection set: 410; the same set however written: fine.
    let q = |c: &str, set: &str| format!("?since={c}&collections={set}");
    assert_eq!(
        pull_status(&s, AMINA, &q(&amina, "patients")).await,
        expired()
    );
    let (_, patients) = s.pull_all(AMINA, "&collections=visits,patients").await;
    assert_eq!(
        s.pull_raw(AMINA, &q(&patients, "patients,visits,patients"))
            .await
            .0,
        200
    );
    assert_eq!(
        pull_status(&s, AMINA, &q(&patients, "visits")).await,
        expired()
    );
    assert_eq!(
        pull_status(&s, AMINA, &format!("?since={patients}")).await,
        expired()
    );

    // Nothing in a cursor tells the sequence: not the seq (the last change is 7), not
    // as the old format wrote it; cursors have one length; two users at the same
    // position share no more digits than chance gives.
    let (_, chioma) = s.pull_all(CHIOMA, "").await;
    let head = 7u64;
    assert_eq!(legacy_cursor(head, 0).len(), 43);
    for c in [&amina, &chioma, &patients] {
        assert_eq!(c.len(), amina.len());
        assert!(!c.contains(&format!("{head:016x}")), "{c}");
    }
    let same = amina
        .bytes()
        .zip(chioma.bytes())
        .skip(11)
        .filter(|(x, y)| x == y)
        .count();
    assert!(same < 24, "{same} of 96 digits equal: {amina} {chioma}");
    let (_, early) = {
        let fresh = TestServer::start(&b);
        fresh
            .push(AMINA, vec![put("patients", "x", None, json!({}))])
            .await;
        fresh.pull_all(AMINA, "").await
    };
    assert_eq!(early.len(), amina.len());

    // An unkeyed cursor of an older server: 410, so devices re-pull instead of
    // stopping; a garbled one is still 400.
    let old = legacy_cursor(head, 0);
    let (st, body) = s.pull_raw(AMINA, &format!("?since={old}")).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (410, Some("cursor_expired")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("older server")
    );
    let broken = format!("{}0", &old[..old.len() - 1]);
    let broken = if broken == old {
        format!("{}1", &old[..old.len() - 1])
    } else {
        broken
    };
    assert_eq!(
        pull_status(&s, AMINA, &format!("?since={broken}")).await,
        garbled()
    );
}

/// The key: generated once and kept in the database, so it survives restarts and every
/// process over the database shares it; or given in the config, so a cursor follows
/// the key, not the database. A cursor under another key gets 410.
async fn the_cursor_key_is_kept_shared_or_configured(b: Backend) {
    let mut s = TestServer::start(&b);
    s.push(AMINA, vec![put("patients", "p", None, json!({}))])
        .await;
    let (_, c) = s.pull_all(AMINA, "").await;
    s.restart();
    assert_eq!(s.pull_raw(AMINA, &format!("?since={c}")).await.0, 200);
    let second = s.another();
    let (st, body) = second.pull_raw(AMINA, &format!("?since={c}")).await;
    assert_eq!(
        (st, body["changes"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (_, c2) = second.pull_all(AMINA, "").await;
    assert_eq!(c2, c, "one key, one deterministic cursor");

    // Configured: two servers on two databases with one key read each other's cursors.
    let secret = format!("cursor_key = \"{}\"", "k".repeat(40));
    let one = TestServer::start_with(&b, &secret);
    let two = TestServer::start_with(&b, &secret);
    one.push(AMINA, vec![put("patients", "p", None, json!({}))])
        .await;
    let (_, from_one) = one.pull_all(AMINA, "").await;
    assert_eq!(
        two.pull_raw(AMINA, &format!("?since={from_one}")).await.0,
        200
    );
    // A server with another key (its own generated one) takes it for stale: 410.
    assert_eq!(
        pull_status(&s, AMINA, &format!("?since={from_one}")).await,
        expired()
    );
    assert_eq!(
        pull_status(&one, AMINA, &format!("?since={c}")).await,
        expired()
    );
}

/// What a device holding a cursor that stopped applying does (a key change here; an
/// older server's unkeyed cursor after the upgrade is answered the same way): it gets
/// 410, pulls once from the beginning and goes on syncing; it does not stop.
async fn a_key_change_makes_devices_pull_again_not_stop(b: Backend) {
    let key = |k: &str| format!("cursor_key = \"{}\"", k.repeat(40));
    let mut s = TestServer::start_with(&b, &key("a"));
    for i in 0..3 {
        s.push(
            AMINA,
            vec![put("patients", &format!("p{i}"), None, json!({}))],
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = device(&s, dir.path());
    let first = engine.sync_now(None).await;
    assert_eq!(
        first.outcome,
        outpost_core::SyncOutcome::Completed,
        "{first:?}"
    );
    assert_eq!((first.pulled, first.repulls), (3, 0));

    let config = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(s.config_path(), config.replace(&key("a"), &key("b"))).unwrap();
    s.restart();
    s.push(AMINA, vec![put("patients", "p3", None, json!({}))])
        .await;
    let after = engine.sync_now(None).await;
    assert_eq!(
        after.outcome,
        outpost_core::SyncOutcome::Completed,
        "{after:?}"
    );
    assert_eq!(after.repulls, 1, "{after:?}");
    assert_eq!(store.count("patients", &[]).unwrap(), 4);
    let again = engine.sync_now(None).await;
    assert_eq!(
        (again.outcome, again.repulls, again.pulled),
        (outpost_core::SyncOutcome::Completed, 0, 0)
    );
}

/// Every page of `query` for `token`, from the beginning: each change's
/// (collection, record_id, seq), in the order the pages gave them.
async fn all_pages(s: &TestServer, token: &str, query: &str) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    let mut since = String::new();
    loop {
        let (st, page) = s.pull_raw(token, &format!("?{query}{since}")).await;
        assert_eq!(st, 200, "{page}");
        for c in page["changes"].as_array().unwrap() {
            out.push((
                c["collection"].as_str().unwrap().to_owned(),
                c["record_id"].as_str().unwrap().to_owned(),
                c["seq"].as_i64().unwrap(),
            ));
        }
        if !page["has_more"].as_bool().unwrap() {
            return out;
        }
        since = format!("&since={}", page["cursor"].as_str().unwrap());
    }
}

/// A pull of named collections reads the one scope each collection's rule lets the
/// user read (an index range per collection): with other teams' and users' writes
/// interleaved in seq order, small pages of one collection and of several give
/// exactly the user's readable changes, each once, in seq order.
async fn pages_of_one_team_among_others(b: Backend) {
    let s = TestServer::start_with(&b, LONG_PUSH_BUDGET);
    for i in 0..12 {
        // drafts: private; forms: shared; patients: team (north: amina and ben).
        s.push(
            AMINA,
            vec![put("drafts", &format!("a-{i}"), None, json!({}))],
        )
        .await;
        s.push(BEN, vec![put("drafts", &format!("b-{i}"), None, json!({}))])
            .await;
        s.push(
            CHIOMA,
            vec![put("patients", &format!("c-{i}"), None, json!({}))],
        )
        .await;
        s.push(
            BEN,
            vec![put("patients", &format!("b-{i}"), None, json!({}))],
        )
        .await;
        s.push(
            CHIOMA,
            vec![put("forms", &format!("f-{i}"), None, json!({}))],
        )
        .await;
        s.push(
            AMINA,
            vec![put("patients", &format!("a-{i}"), None, json!({}))],
        )
        .await;
    }
    let ids = |changes: &[(String, String, i64)], collection: &str| -> Vec<String> {
        changes
            .iter()
            .filter(|c| c.0 == collection)
            .map(|c| c.1.clone())
            .collect()
    };
    let expect = |prefixes: &[&str]| -> Vec<String> {
        (0..12)
            .flat_map(|i| prefixes.iter().map(move |p| format!("{p}-{i}")))
            .collect()
    };
    for limit in [1, 5, 1000] {
        let one = all_pages(&s, AMINA, &format!("collections=patients&limit={limit}")).await;
        assert_eq!(ids(&one, "patients"), expect(&["b", "a"]), "limit {limit}");
        let mine = all_pages(&s, AMINA, &format!("collections=drafts&limit={limit}")).await;
        assert_eq!(ids(&mine, "drafts"), expect(&["a"]), "limit {limit}");
        let south = all_pages(&s, CHIOMA, &format!("collections=patients&limit={limit}")).await;
        assert_eq!(ids(&south, "patients"), expect(&["c"]), "limit {limit}");

        let several = all_pages(
            &s,
            AMINA,
            &format!("collections=drafts,forms,patients&limit={limit}"),
        )
        .await;
        assert!(
            several.windows(2).all(|w| w[0].2 < w[1].2),
            "limit {limit}: not in seq order: {several:?}"
        );
        assert_eq!(several.len(), 12 * 4, "limit {limit}: {several:?}");
        assert_eq!(ids(&several, "drafts"), expect(&["a"]));
        assert_eq!(ids(&several, "forms"), expect(&["f"]));
        assert_eq!(ids(&several, "patients"), expect(&["b", "a"]));
    }
}

outpost_testkit::backend_tests!("hardening_pull": pages_of_one_team_among_others, a_key_change_makes_devices_pull_again_not_stop, concurrent_gzip_bombs_stay_bounded, pull_pages_are_cut_at_the_byte_budget, a_change_over_the_budget_comes_alone, collections_lists_are_capped_and_deduplicated, answers_with_records_are_not_stored, cursors_are_sealed_and_bound_to_user_and_collections, the_cursor_key_is_kept_shared_or_configured);
