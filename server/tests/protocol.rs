//! Black-box tests of protocol v1 against the real binary: auth, versions, conflicts,
//! idempotency, CRDT merges, paging, concurrency, purge, access and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use outpost_testkit::*;
use serde_json::{Value, json};

async fn health_auth_and_routes(b: Backend) {
    let s = TestServer::start(&b);
    let r = s.client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(
        answer(r).await,
        (200, json!({"status": "ok", "protocol": 1}))
    );

    for path in ["/v1/pull", "/v1/push"] {
        let req = if path == "/v1/pull" {
            s.client().get(s.url(path))
        } else {
            s.client().post(s.url(path)).body("{}")
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let (st, body) = answer(r).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    let (st, body) = s.pull_raw("wrong-token", "").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let r = s
        .client()
        .get(s.url("/v1/pull"))
        .header("authorization", format!("Basic {AMINA}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.0, 401);

    let r = s.client().get(s.url("/nope")).send().await.unwrap();
    let (st, body) = answer(r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = s
        .client()
        .get(s.url("/v1/push"))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let (st, body) = answer(r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let r = s.client().delete(s.url("/health")).send().await.unwrap();
    assert_eq!(answer(r).await.0, 405);
}

async fn create_put_patch_delete_versions(b: Backend) {
    let s = TestServer::start(&b);
    let r = s
        .push(
            AMINA,
            vec![put(
                "patients",
                "p-1",
                None,
                json!({"name": "Amina", "age": 30}),
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "applied");
    assert_eq!(r[0]["version"], 1);
    let seq1 = r[0]["seq"].as_i64().unwrap();

    let r = s
        .push(
            AMINA,
            vec![put("patients", "p-1", Some(1), json!({"name": "Amina K"}))],
        )
        .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(2))
    );
    assert!(r[0]["seq"].as_i64().unwrap() > seq1);

    let r = s
        .push(
            AMINA,
            vec![patch(
                "patients",
                "p-1",
                Some(2),
                json!({"village": "Kole", "name": null}),
            )],
        )
        .await;
    assert_eq!(r[0]["version"], 3);
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["data"], json!({"name": null, "village": "Kole"}));
    assert_eq!(changes[0]["version"], 3);
    assert_eq!(changes[0]["deleted"], false);
    assert!(changes[0]["updated_at"].as_str().unwrap().ends_with('Z'));

    let r = s
        .push(AMINA, vec![delete("patients", "p-1", Some(3))])
        .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(4))
    );
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(changes.len(), 1, "each record once, at its latest state");
    assert_eq!(changes[0]["deleted"], true);
    assert_eq!(changes[0]["data"], Value::Null);
    assert_eq!(changes[0]["version"], 4);

    // A new record over a tombstone conflicts; a put on the tombstone's version
    // resurrects it.
    let r = s
        .push(AMINA, vec![put("patients", "p-1", None, json!({"x": 1}))])
        .await;
    assert_eq!(r[0]["status"], "conflict");
    assert_eq!(r[0]["current"]["deleted"], true);
    let r = s
        .push(
            AMINA,
            vec![put("patients", "p-1", Some(4), json!({"x": 1}))],
        )
        .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(5))
    );
    // A patch creates a new record too.
    let r = s
        .push(AMINA, vec![patch("patients", "p-2", None, json!({"y": 2}))])
        .await;
    assert_eq!(r[0]["version"], 1);
}

async fn repeated_op_id_gets_the_first_answer(b: Backend) {
    let s = TestServer::start_with(&b, LONG_PUSH_BUDGET);
    let op = put("patients", "p-1", None, json!({"name": "A"}));
    let first = s.push(AMINA, vec![op.clone()]).await;
    assert_eq!(first[0]["status"], "applied");
    let again = s.push(AMINA, vec![op.clone()]).await;
    assert_eq!(again, first);
    // Also within one push.
    let twice = s.push(AMINA, vec![op.clone(), op.clone()]).await;
    assert_eq!(twice, vec![first[0].clone(), first[0].clone()]);
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(changes[0]["version"], 1);
    assert_eq!(s.audit_rows(op["op_id"].as_str().unwrap()), 1);

    // A conflict is repeated as a conflict, with no effect; stored answers keep no
    // record data, so it carries the record as it is now.
    let stale = put("patients", "p-1", Some(7), json!({"name": "B"}));
    let c1 = s.push(AMINA, vec![stale.clone()]).await;
    assert_eq!(c1[0]["status"], "conflict");
    assert_eq!(c1[0]["current"]["version"], 1);
    s.push(
        AMINA,
        vec![put("patients", "p-1", Some(1), json!({"name": "C"}))],
    )
    .await;
    let c2 = s.push(AMINA, vec![stale.clone()]).await;
    assert_eq!(
        (&c2[0]["status"], &c2[0]["op_id"]),
        (&c1[0]["status"], &c1[0]["op_id"])
    );
    assert_eq!(c2[0]["current"]["version"], 2);
    assert_eq!(c2[0]["current"]["data"], json!({"name": "C"}));
    // So is a rejection, even if the repeat itself is valid.
    let mut bad = put("patients", "p-9", None, json!({}));
    bad["hlc"] = json!("nope");
    let r1 = s.push(AMINA, vec![bad.clone()]).await;
    assert_eq!(r1[0]["status"], "rejected");
    bad["hlc"] = json!(hlc());
    assert_eq!(s.push(AMINA, vec![bad]).await, r1);

    // Answers are per user: ben reusing amina's op_id gets his own answer.
    let mut bens = put("patients", "p-b", None, json!({"v": 1}));
    bens["op_id"] = op["op_id"].clone();
    let r = s.push(BEN, vec![bens]).await;
    assert_eq!(r[0]["status"], "applied");
    assert_ne!(r[0]["seq"], first[0]["seq"]);
}

async fn concurrent_repeats_have_one_effect(b: Backend) {
    let s = TestServer::start(&b);
    let op = put("patients", "p-1", None, json!({"n": 1}));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, op) = (s.client().clone(), s.url("/v1/push"), op.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(AMINA)
                .json(&json!({"client_id": "c", "ops": [op]}))
                .send()
                .await
                .unwrap();
            answer(r).await.1
        }));
    }
    let mut answers = BTreeSet::new();
    for t in tasks {
        answers.insert(t.await.unwrap().to_string());
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(s.audit_rows(op["op_id"].as_str().unwrap()), 1);
}

async fn stale_base_conflicts_and_force_wins(b: Backend) {
    let s = TestServer::start(&b);
    s.push(
        AMINA,
        vec![put("patients", "p-1", None, json!({"name": "A"}))],
    )
    .await;
    s.push(
        AMINA,
        vec![put("patients", "p-1", Some(1), json!({"name": "B"}))],
    )
    .await;
    let r = s
        .push(
            BEN,
            vec![put("patients", "p-1", Some(1), json!({"name": "C"}))],
        )
        .await;
    assert_eq!(r[0]["status"], "conflict");
    let cur = &r[0]["current"];
    assert_eq!(cur["version"], 2);
    assert_eq!(cur["data"], json!({"name": "B"}));
    assert_eq!(cur["collection"], "patients");
    assert_eq!(cur["record_id"], "p-1");
    assert_eq!(cur["deleted"], false);

    let mut forced = put("patients", "p-1", Some(1), json!({"name": "C"}));
    forced["force"] = json!(true);
    let r = s.push(BEN, vec![forced]).await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(3))
    );

    // A new record whose id exists conflicts; a base on a missing record conflicts
    // with current null.
    let r = s
        .push(BEN, vec![put("patients", "p-1", None, json!({}))])
        .await;
    assert_eq!(r[0]["current"]["version"], 3);
    let r = s
        .push(BEN, vec![put("patients", "nope", Some(2), json!({}))])
        .await;
    assert_eq!(
        r[0],
        json!({"op_id": r[0]["op_id"], "status": "conflict", "current": null})
    );
    let r = s.push(BEN, vec![delete("patients", "p-1", Some(2))]).await;
    assert_eq!(r[0]["status"], "conflict");
}

async fn crdt_counters_from_two_replicas_merge_against_a_stale_base(b: Backend) {
    let s = TestServer::start(&b);
    let counter = |p: Value| json!({"$crdt": "pncounter", "p": p, "n": {}});
    s.push(
        AMINA,
        vec![put(
            "patients",
            "p-1",
            None,
            json!({"name": "A", "visits": counter(json!({}))}),
        )],
    )
    .await;
    // Both replicas edited version 1 offline.
    let r = s
        .push(
            AMINA,
            vec![patch(
                "patients",
                "p-1",
                Some(1),
                json!({"visits": counter(json!({"tab-a": 3}))}),
            )],
        )
        .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(2))
    );
    let r = s
        .push(
            BEN,
            vec![patch(
                "patients",
                "p-1",
                Some(1),
                json!({"visits": counter(json!({"tab-b": 2}))}),
            )],
        )
        .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(3))
    );
    // A whole-record put that only changes the counter merges too.
    let r = s
        .push(
            BEN,
            vec![put(
                "patients",
                "p-1",
                Some(1),
                json!({"name": "A", "visits": {"$crdt": "gcounter", "p": {"tab-b": 5}}}),
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "applied");
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(
        changes[0]["data"],
        json!({"name": "A", "visits": {"$crdt": "pncounter", "p": {"tab-a": 3, "tab-b": 5}, "n": {}}})
    );
    assert_eq!(changes[0]["version"], 4);
    // A stale write that also changes a plain field still conflicts.
    let r = s
        .push(
            BEN,
            vec![patch(
                "patients",
                "p-1",
                Some(1),
                json!({"name": "Z", "visits": counter(json!({"tab-b": 9}))}),
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "conflict");
}

async fn paging_1200_records_at_limit_500(b: Backend) {
    let s = TestServer::start(&b);
    for chunk in 0..2 {
        let ops = (0..600)
            .map(|i| {
                put(
                    "patients",
                    &format!("p-{}", chunk * 600 + i),
                    None,
                    json!({"i": i}),
                )
            })
            .collect();
        let r = s.push_resending(AMINA, ops).await;
        assert!(r.iter().all(|x| x["status"] == "applied"));
    }
    let mut seen = BTreeSet::new();
    let mut last_seq = 0;
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let q = match &cursor {
            Some(c) => format!("?since={c}&limit=500"),
            None => "?limit=500".to_owned(),
        };
        let (st, body) = s.pull_raw(AMINA, &q).await;
        assert_eq!(st, 200);
        let changes = body["changes"].as_array().unwrap();
        for c in changes {
            let seq = c["seq"].as_i64().unwrap();
            assert!(seq > last_seq);
            last_seq = seq;
            assert!(seen.insert(c["record_id"].as_str().unwrap().to_owned()));
        }
        pages.push((changes.len(), body["has_more"].as_bool().unwrap()));
        cursor = Some(body["cursor"].as_str().unwrap().to_owned());
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(pages, vec![(500, true), (500, true), (200, false)]);
    assert_eq!(seen.len(), 1200);
    // An empty page keeps the cursor.
    let (_, body) = s
        .pull_raw(AMINA, &format!("?since={}", cursor.clone().unwrap()))
        .await;
    assert_eq!(body["changes"], json!([]));
    assert_eq!(body["cursor"].as_str(), cursor.as_deref());

    // Limits: large is clamped, others are 400.
    let (st, body) = s.pull_raw(AMINA, "?limit=999999999999999999999").await;
    assert_eq!((st, body["changes"].as_array().unwrap().len()), (200, 1200));
    for q in [
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=1.5",
        "?limit=",
        "?since=c1.zz",
        "?since=",
        "?collections=Bad",
        "?collections=a,,b",
        "?limit=1&limit=2",
    ] {
        let (st, body) = s.pull_raw(AMINA, q).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{q}"
        );
    }
    // Collection filter.
    s.push(AMINA, vec![put("visits", "v-1", None, json!({}))])
        .await;
    let (changes, _) = s.pull_all(AMINA, "&collections=visits").await;
    assert_eq!(changes.len(), 1);
    let (changes, _) = s.pull_all(AMINA, "&collections=visits,patients").await;
    assert_eq!(changes.len(), 1201);
}

async fn concurrent_writers_never_let_a_puller_skip_a_change(b: Backend) {
    let s = TestServer::start(&b);
    let writers = 8;
    let pushes = 15;
    let per_push = 5;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (c, url) = (s.client().clone(), s.url("/v1/push"));
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for p in 0..pushes {
                let mut ops = Vec::new();
                for i in 0..per_push {
                    // Writers also update each other's records, so rows move to new seqs.
                    let id = format!("w{w}-{p}-{i}");
                    ops.push(put("patients", &id, None, json!({"w": w})));
                    written.push(id);
                }
                let r = c
                    .post(&url)
                    .bearer_auth(AMINA)
                    .json(&json!({"client_id": format!("w{w}"), "ops": ops}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            written
        }));
    }
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut last_seq = 0;
    let mut pull_once = async |cursor: &mut Option<String>, last_seq: &mut i64| {
        let q = match cursor.as_ref() {
            Some(c) => format!("?since={c}&limit=7"),
            None => "?limit=7".to_owned(),
        };
        let (st, body) = s.pull_raw(AMINA, &q).await;
        assert_eq!(st, 200);
        for ch in body["changes"].as_array().unwrap() {
            let seq = ch["seq"].as_i64().unwrap();
            assert!(seq > *last_seq, "seq went back");
            *last_seq = seq;
            seen.insert(ch["record_id"].as_str().unwrap().to_owned(), seq);
        }
        *cursor = Some(body["cursor"].as_str().unwrap().to_owned());
        body["has_more"].as_bool().unwrap()
    };
    while tasks.iter().any(|t| !t.is_finished()) {
        pull_once(&mut cursor, &mut last_seq).await;
    }
    let mut written = BTreeSet::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    while pull_once(&mut cursor, &mut last_seq).await {}
    let seen: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(seen, written);
    assert_eq!(written.len(), writers * pushes * per_push);
}

async fn purged_tombstones_expire_older_cursors(b: Backend) {
    let s = TestServer::start_with(&b, "purge_interval_secs = 0.2");
    // Retention is 30 days here, so nothing is purged yet.
    let s2 = TestServer::start_with(
        &b,
        "tombstone_retention_days = 0\npurge_interval_secs = 0.2",
    );
    for srv in [&s, &s2] {
        srv.push(AMINA, vec![put("patients", "keep", None, json!({}))])
            .await;
        srv.push(AMINA, vec![put("patients", "gone", None, json!({}))])
            .await;
    }
    let (_, cursor) = s2.pull_all(AMINA, "").await;
    let (_, cursor_s) = s.pull_all(AMINA, "").await;
    for srv in [&s, &s2] {
        srv.push(AMINA, vec![delete("patients", "gone", Some(1))])
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = s2.pull_raw(AMINA, &format!("?since={cursor}")).await;
        if st == 410 {
            assert_eq!(body["error"]["code"], "cursor_expired");
            break;
        }
        assert_eq!(st, 200);
        assert!(Instant::now() < deadline, "tombstone never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From the beginning is always fine, and the tombstone is gone.
    let (changes, fresh) = s2.pull_all(AMINA, "").await;
    let ids: Vec<_> = changes
        .iter()
        .map(|c| c["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["keep"]);
    let (st, _) = s2.pull_raw(AMINA, &format!("?since={fresh}")).await;
    assert_eq!(st, 200);
    // With the 30-day retention the tombstone stays and the cursor is fine.
    let (st, body) = s.pull_raw(AMINA, &format!("?since={cursor_s}")).await;
    assert_eq!(st, 200);
    assert_eq!(body["changes"][0]["deleted"], true);
}

async fn access_isolation_on_pull_and_push(b: Backend) {
    let s = TestServer::start(&b);
    // The body cannot choose an owner: these are just data fields.
    s.push(
        AMINA,
        vec![put(
            "drafts",
            "d-1",
            None,
            json!({"owner": "ben", "team": "south"}),
        )],
    )
    .await;
    s.push(
        AMINA,
        vec![put("patients", "p-1", None, json!({"secret": "x"}))],
    )
    .await;
    s.push(AMINA, vec![put("forms", "f-1", None, json!({"q": 1}))])
        .await;
    s.push(
        CHIOMA,
        vec![put("patients", "p-s", None, json!({"secret": "south"}))],
    )
    .await;

    let ids = |changes: Vec<Value>| -> BTreeSet<String> {
        changes
            .iter()
            .map(|c| c["record_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(s.pull_all(AMINA, "").await.0),
        set(&["d-1", "p-1", "f-1"])
    );
    assert_eq!(ids(s.pull_all(BEN, "").await.0), set(&["p-1", "f-1"]));
    assert_eq!(ids(s.pull_all(CHIOMA, "").await.0), set(&["p-s", "f-1"]));

    // Ids are scoped per owner (private) and team (team): another's record is, to this
    // user, an id never used. An edit of it conflicts exactly as an edit of a missing
    // record does, and says nothing about it.
    for (n, (token, coll, id)) in [
        (BEN, "drafts", "d-1"),
        (CHIOMA, "drafts", "d-1"),
        (CHIOMA, "patients", "p-1"),
        (AMINA, "patients", "p-s"),
    ]
    .into_iter()
    .enumerate()
    {
        let never = format!("never-used-{n}");
        for (theirs, missing) in [
            (
                put(coll, id, Some(1), json!({"x": 1})),
                put(coll, &never, Some(1), json!({"x": 1})),
            ),
            (
                patch(coll, id, Some(1), json!({"x": 1})),
                patch(coll, &never, Some(1), json!({"x": 1})),
            ),
            (delete(coll, id, Some(1)), delete(coll, &never, Some(1))),
        ] {
            let a = s.push(token, vec![theirs.clone()]).await;
            let b = s.push(token, vec![missing.clone()]).await;
            assert_eq!(
                json!({"status": a[0]["status"], "current": a[0]["current"]}),
                json!({"status": "conflict", "current": null})
            );
            assert_eq!(
                (
                    &a[0]["status"],
                    &a[0]["current"],
                    a[0].as_object().unwrap().len()
                ),
                (
                    &b[0]["status"],
                    &b[0]["current"],
                    b[0].as_object().unwrap().len()
                )
            );
        }
        // A new record with that id is the user's own, and leaves the other one alone.
        let r = s
            .push(token, vec![put(coll, id, None, json!({"mine": n}))])
            .await;
        assert_eq!(
            (r[0]["status"].as_str(), r[0]["version"].as_i64()),
            (Some("applied"), Some(1))
        );
    }
    // Team members may write; shared records anyone.
    let r = s
        .push(
            BEN,
            vec![patch("patients", "p-1", Some(1), json!({"y": 1}))],
        )
        .await;
    assert_eq!(r[0]["status"], "applied");
    let r = s
        .push(
            CHIOMA,
            vec![patch("forms", "f-1", Some(1), json!({"y": 1}))],
        )
        .await;
    assert_eq!(r[0]["status"], "applied");
    // Nobody changed anyone else's record: each sees their own under the shared id.
    let (changes, _) = s.pull_all(AMINA, "&collections=drafts").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["version"], 1);
    assert_eq!(changes[0]["data"], json!({"owner": "ben", "team": "south"}));
    let (changes, _) = s.pull_all(BEN, "&collections=drafts").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["data"], json!({"mine": 0}));
    let (changes, _) = s.pull_all(CHIOMA, "&collections=patients").await;
    let by_id: BTreeMap<_, _> = changes
        .iter()
        .map(|c| {
            (
                c["record_id"].as_str().unwrap().to_owned(),
                c["data"].clone(),
            )
        })
        .collect();
    assert_eq!(by_id["p-1"], json!({"mine": 2}));
    assert_eq!(by_id["p-s"], json!({"secret": "south"}));
    let (changes, _) = s.pull_all(BEN, "&collections=patients").await;
    let p1: Vec<_> = changes.iter().filter(|c| c["record_id"] == "p-1").collect();
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0]["data"], json!({"secret": "x", "y": 1}));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

async fn post_bytes(s: &TestServer, body: Vec<u8>, gz: bool) -> (u16, Value) {
    let mut req = s
        .client()
        .post(s.url("/v1/push"))
        .bearer_auth(AMINA)
        .body(body);
    if gz {
        req = req.header("content-encoding", "gzip");
    }
    answer(req.send().await.unwrap()).await
}

async fn bodies_over_8_mib_get_413_raw_or_gzipped(b: Backend) {
    let s = TestServer::start(&b);
    let big = format!(
        r#"{{"client_id":"c","ops":[],"pad":"{}"}}"#,
        "x".repeat(8 * 1024 * 1024)
    );
    let (st, body) = post_bytes(&s, big.clone().into_bytes(), false).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let packed = gzip(big.as_bytes());
    assert!(packed.len() < 100_000);
    let (st, body) = post_bytes(&s, packed, true).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // gzip of a valid push is accepted; broken gzip is a 400.
    let ok = json!({"client_id": "c", "ops": [put("patients", "g", None, json!({"a": 1}))]});
    let (st, body) = post_bytes(&s, gzip(ok.to_string().as_bytes()), true).await;
    assert_eq!(
        (st, body["results"][0]["status"].as_str()),
        (200, Some("applied"))
    );
    let (st, _) = post_bytes(&s, b"not gzip".to_vec(), true).await;
    assert_eq!(st, 400);
}

async fn answers_are_gzipped_when_asked(b: Backend) {
    let s = TestServer::start(&b);
    let ops = (0..50)
        .map(|i| put("patients", &format!("p{i}"), None, json!({"i": i})))
        .collect();
    s.push_resending(AMINA, ops).await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(s.url("/v1/pull"))
        .bearer_auth(AMINA)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let bytes = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 50);
}

async fn whole_push_400s_change_nothing(b: Backend) {
    let s = TestServer::start(&b);
    let good = || put("patients", "must-not-exist", None, json!({"a": 1}));
    let mut deep = json!(1);
    for _ in 0..62 {
        deep = json!([deep]);
    }
    let too_many: Vec<Value> = (0..1001).map(|_| good()).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", br#"{"client_id":"c","ops":[{"op_id":"a",}]}"#.to_vec()),
        ("trailing", br#"{"client_id":"c","ops":[]} {}"#.to_vec()),
        ("top array", b"[]".to_vec()),
        ("ops not array", br#"{"client_id":"c","ops":{}}"#.to_vec()),
        ("client_id number", br#"{"client_id":1,"ops":[]}"#.to_vec()),
        ("missing ops", br#"{"client_id":"c"}"#.to_vec()),
        ("op not object", json!({"client_id": "c", "ops": [good(), 5]}).to_string().into_bytes()),
        ("op_id number", json!({"client_id": "c", "ops": [good(), {"op_id": 5}]}).to_string().into_bytes()),
        ("too many ops", json!({"client_id": "c", "ops": too_many}).to_string().into_bytes()),
        (
            "duplicate keys",
            format!(
                r#"{{"client_id":"c","ops":[{},{{"op_id":"x","collection":"patients","record_id":"r","kind":"put","hlc":"{}","data":{{"a":1,"a":2}}}}]}}"#,
                good(),
                hlc()
            )
            .into_bytes(),
        ),
        (
            "deep nesting",
            json!({"client_id": "c", "ops": [good(), {"op_id": "x", "collection": "patients", "record_id": "r",
                "kind": "put", "hlc": hlc(), "data": {"d": deep}}]})
            .to_string()
            .into_bytes(),
        ),
        (
            "invalid utf-8",
            [&br#"{"client_id":"c","ops":[],"x":""#[..], b"\xff\xfe", b"\"}"].concat(),
        ),
        ("empty", Vec::new()),
    ];
    for (name, body) in cases {
        let (st, v) = post_bytes(&s, body, false).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{name}: {v}"
        );
    }
    // 10000-deep input is refused without parsing it.
    let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(post_bytes(&s, bomb.into_bytes(), false).await.0, 400);
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(changes, Vec::<Value>::new());
    // Exactly 1000 ops and depth 64 are fine.
    let ops: Vec<Value> = (0..1000)
        .map(|i| put("patients", &format!("r{i}"), None, json!({})))
        .collect();
    assert_eq!(s.push(AMINA, ops).await.len(), 1000);
}

async fn a_bad_op_is_rejected_while_its_neighbours_apply(b: Backend) {
    let s = TestServer::start_with(&b, LONG_PUSH_BUDGET);
    let mut bad = Vec::new();
    let mut b = put("Patients", "r", None, json!({}));
    bad.push(b.clone());
    b = put("patients", "", None, json!({}));
    bad.push(b.clone());
    b = put("patients", "a\u{1}b", None, json!({}));
    bad.push(b.clone());
    b = put("patients", "r", None, json!({}));
    b["kind"] = json!("upsert");
    bad.push(b.clone());
    b = put("patients", "r", None, json!({}));
    b["hlc"] = json!("yesterday");
    bad.push(b.clone());
    b = put("patients", "r", None, json!({}));
    b.as_object_mut().unwrap().remove("data");
    bad.push(b.clone());
    b = patch("patients", "r", None, json!({}));
    b["data"] = json!([1]);
    bad.push(b.clone());
    bad.push(put(
        "patients",
        "r",
        None,
        json!({"c": {"$crdt": "gcounter", "p": {"a": -1}}}),
    ));
    bad.push(put(
        "patients",
        "r",
        None,
        json!({"big": "x".repeat(1024 * 1024)}),
    ));
    b = put("patients", "r", None, json!({}));
    b["base_version"] = json!("3");
    bad.push(b.clone());
    b = put("patients", "r", None, json!({}));
    b["force"] = json!(1);
    bad.push(b.clone());
    b = put("patients", "r", None, json!({}));
    b["colour"] = json!("red");
    bad.push(b.clone());
    let mut d = delete("patients", "r", None);
    d["data"] = json!({"a": 1});
    bad.push(d);
    for (i, b) in bad.into_iter().enumerate() {
        let ops = vec![
            put("patients", &format!("left-{i}"), None, json!({})),
            b.clone(),
            put("patients", &format!("right-{i}"), None, json!({})),
        ];
        let r = s.push(AMINA, ops).await;
        assert_eq!(r[0]["status"], "applied", "{b}");
        assert_eq!(r[1]["status"], "rejected", "{b}");
        assert_eq!(r[1]["error"]["code"], "invalid_request");
        assert_eq!(r[1]["op_id"], b["op_id"]);
        assert_eq!(r[2]["status"], "applied");
    }
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert!(changes.iter().all(|c| c["record_id"] != "r"));
}

/// The limit is counted per process (server README, "The processes are stateless"):
/// behind a balancer that alternates requests between a pair, a user gets it once per
/// process.
async fn rate_limit_answers_429_with_retry_after(b: Backend) {
    let s = TestServer::start_with(&b, "rate_limit_per_minute = 3");
    for _ in 0..3 * s.processes() {
        assert_eq!(s.pull_raw(AMINA, "").await.0, 200);
    }
    let r = s
        .client()
        .get(s.url("/v1/pull"))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let (st, body) = answer(r).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    // Other users have their own budget.
    assert_eq!(s.pull_raw(BEN, "").await.0, 200);
}

/// PostgreSQL text cannot hold NUL; ids that contain one must still be ordinary ids.
async fn nul_and_backslashes_in_ids_are_ordinary_ids(b: Backend) {
    let s = TestServer::start(&b);
    let mut a = put("patients", "n-1", None, json!({"t": "x\u{0}y"}));
    a["op_id"] = json!("op\u{0}1");
    let mut b2 = put("patients", "n-2", None, json!({}));
    b2["op_id"] = json!("op\\01"); // the escaped spelling of the first one
    let body = json!({"client_id": "dev\u{0}ice\\", "ops": [a.clone(), b2.clone()]});
    let (st, first) = s.push_raw(AMINA, &body).await;
    assert_eq!(st, 200, "{first}");
    let r = first["results"].as_array().unwrap();
    assert_eq!(
        (r[0]["status"].as_str(), r[1]["status"].as_str()),
        (Some("applied"), Some("applied"))
    );
    assert_eq!(r[0]["op_id"], "op\u{0}1");
    let (st, again) = s.push_raw(AMINA, &body).await;
    assert_eq!((st, &again), (200, &first));
    let (changes, _) = s.pull_all(AMINA, "").await;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["data"]["t"], "x\u{0}y");
}

outpost_testkit::backend_tests!("protocol": health_auth_and_routes, create_put_patch_delete_versions, repeated_op_id_gets_the_first_answer, concurrent_repeats_have_one_effect, stale_base_conflicts_and_force_wins, crdt_counters_from_two_replicas_merge_against_a_stale_base, paging_1200_records_at_limit_500, concurrent_writers_never_let_a_puller_skip_a_change, purged_tombstones_expire_older_cursors, access_isolation_on_pull_and_push, bodies_over_8_mib_get_413_raw_or_gzipped, answers_are_gzipped_when_asked, whole_push_400s_change_nothing, a_bad_op_is_rejected_while_its_neighbours_apply, rate_limit_answers_429_with_retry_after, nul_and_backslashes_in_ids_are_ordinary_ids);
