//! PostgreSQL only: several server processes over one database, as behind a load
//! balancer. What a single process could get from its own locks must hold across
//! processes too: no puller skips a change while writers on every process commit
//! concurrently, the same op_id sent to two processes at once has one effect and one
//! answer, and servers starting together migrate the schema once.
//!
//! A thousand simulated devices pushing and pulling through both processes at once,
//! some of their pushes sent twice (once to each process), leave every op they were
//! told was applied exactly once in the audit, and nothing else.
//!
//! Skipped, with a line on stderr naming each test, when `OUTPOST_TEST_POSTGRES_URL`
//! is not set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use outpost_testkit::*;
use serde_json::{Value, json};

fn backend(test: &str) -> Option<Backend> {
    Backend::postgres_or_skip(&format!("scale_out::{test}"))
}

async fn push_to(s: &TestServer, client_id: &str, ops: Vec<Value>) -> Vec<Value> {
    let (st, body) = s
        .push_raw(AMINA, &json!({"client_id": client_id, "ops": ops}))
        .await;
    assert_eq!(st, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_three_processes_never_let_a_puller_skip_a_change() {
    let Some(b) = backend("writers_on_three_processes_never_let_a_puller_skip_a_change") else {
        return;
    };
    let first = TestServer::start(&b);
    let servers = std::sync::Arc::new(vec![first.another(), first.another()]);
    let writers = 9;
    let pushes = 12;
    let mut tasks = Vec::new();
    for w in 0..writers {
        // Three writers per process.
        let (c, url) = match w % 3 {
            0 => (first.client().clone(), first.url("/v1/push")),
            n => (
                servers[n - 1].client().clone(),
                servers[n - 1].url("/v1/push"),
            ),
        };
        tasks.push(tokio::spawn(async move {
            let mut written = BTreeSet::new();
            for p in 0..pushes {
                let mut ops = Vec::new();
                for i in 0..4 {
                    let id = format!("w{w}-{p}-{i}");
                    ops.push(put("patients", &id, None, json!({"w": w, "p": p})));
                    written.insert(id);
                }
                // Every writer also rewrites a few shared records, so rows keep moving
                // to new seqs while the puller walks past them.
                let hot = format!("hot-{}", p % 3);
                let mut op = put("patients", &hot, None, json!({"by": w, "p": p}));
                op["force"] = json!(true);
                ops.push(op);
                written.insert(hot);
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

    // The puller loops on the first process with small pages while the writers run.
    let mut seen: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut last_seq = 0;
    let mut pulls = 0;
    let mut pull_once = async |cursor: &mut Option<String>, last_seq: &mut i64| {
        let q = match cursor.as_ref() {
            Some(c) => format!("?since={c}&limit=7"),
            None => "?limit=7".to_owned(),
        };
        let (st, body) = first.pull_raw(AMINA, &q).await;
        assert_eq!(st, 200, "{body}");
        for ch in body["changes"].as_array().unwrap() {
            let seq = ch["seq"].as_i64().unwrap();
            assert!(seq > *last_seq, "seq went back: {seq} after {last_seq}");
            *last_seq = seq;
            seen.insert(
                ch["record_id"].as_str().unwrap().to_owned(),
                (seq, ch["version"].as_i64().unwrap()),
            );
        }
        *cursor = Some(body["cursor"].as_str().unwrap().to_owned());
        body["has_more"].as_bool().unwrap()
    };
    while tasks.iter().any(|t| !t.is_finished()) {
        pull_once(&mut cursor, &mut last_seq).await;
        pulls += 1;
    }
    let mut written = BTreeSet::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    while pull_once(&mut cursor, &mut last_seq).await {}
    assert!(pulls > 1, "the puller never overlapped the writers");

    let ids: BTreeSet<String> = seen.keys().cloned().collect();
    let missed: Vec<_> = written.difference(&ids).collect();
    assert!(
        missed.is_empty(),
        "the puller skipped {} records: {missed:?}",
        missed.len()
    );
    assert_eq!(ids, written);
    // Not only every record: every record's latest state. A skipped update would leave
    // an older (seq, version) here than a fresh pull from another process shows.
    let (fresh, _) = servers[1].pull_all(AMINA, "").await;
    let latest: BTreeMap<String, (i64, i64)> = fresh
        .iter()
        .map(|c| {
            (
                c["record_id"].as_str().unwrap().to_owned(),
                (c["seq"].as_i64().unwrap(), c["version"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(seen, latest);
    assert_eq!(latest["hot-0"].1, (writers * pushes / 3) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_op_id_on_two_processes_has_one_effect() {
    let Some(b) = backend("the_same_op_id_on_two_processes_has_one_effect") else {
        return;
    };
    let one = TestServer::start(&b);
    let two = one.another();
    let created = push_to(
        &one,
        "c",
        vec![put("patients", "shared", None, json!({"n": 0}))],
    )
    .await;
    assert_eq!(created[0]["version"], 1);
    for round in 0..25 {
        // A create, an edit of a shared record on a stale-free base, and a CRDT
        // increment: each sent to both processes at the same moment.
        let mut inc = patch(
            "patients",
            "shared",
            None,
            json!({"c": {"$crdt": "gcounter", "p": {"r": round + 1}}}),
        );
        inc["base_version"] = json!(null);
        let ops = vec![
            put(
                "patients",
                &format!("new-{round}"),
                None,
                json!({"r": round}),
            ),
            inc,
        ];
        let (a, b) = tokio::join!(
            push_to(&one, "c", ops.clone()),
            push_to(&two, "c", ops.clone())
        );
        assert_eq!(
            a, b,
            "round {round}: the two processes answered differently"
        );
        for (op, r) in ops.iter().zip(&a) {
            let id = op["op_id"].as_str().unwrap();
            assert_eq!(
                one.audit_rows(id),
                i64::from(r["status"] == "applied"),
                "{r}"
            );
            assert_eq!(one.count("ops", "op_id", id), 1);
        }
        assert_eq!(a[0]["status"], "applied", "{a:?}");
        assert_eq!(a[0]["version"], 1);
        // A third sending, after the fact, is answered the same too.
        assert_eq!(push_to(&two, "c", ops).await, a);
    }
    let (changes, _) = one.pull_all(AMINA, "").await;
    let shared = changes.iter().find(|c| c["record_id"] == "shared").unwrap();
    // One new version per round: neither process applied the increment twice.
    assert_eq!(shared["version"], 26);
    assert_eq!(changes.len(), 26);
}

#[test]
fn servers_starting_together_migrate_once() {
    let Some(b) = backend("servers_starting_together_migrate_once") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(&b, dir.path());
    let config = dir.path().join("server.toml");
    std::fs::write(&config, base_config(&db.database(), "")).unwrap();
    let servers: Vec<TestServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (share, config) = (db.share(), config.clone());
                let b = b.clone();
                scope.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    let own = dir.path().join("server.toml");
                    std::fs::copy(&config, &own).unwrap();
                    TestServer::start_config(&b, dir, own, share)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(servers.len(), 3);
    assert_eq!(db.count("outpost_schema_version", "version::text", "1"), 1);
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_devices_on_two_processes_apply_every_op_exactly_once() {
    let Some(b) = backend("a_thousand_devices_on_two_processes_apply_every_op_exactly_once") else {
        return;
    };
    let devices = 1000;
    let one = TestServer::start_with(&b, &load_config(devices));
    let two = one.another();
    let urls = [one.url(""), two.url("")];
    // Two rounds of 4 ops: the second edits, and on a third of the devices conflicts;
    // a quarter of the pushes go to both processes, the second time as a resend.
    let plan = LoadPlan {
        devices,
        rounds: 2,
        ops_per_push: 4,
        conflict_every: 3,
        repeat_every: 4,
    };
    let report = run_load(&urls, plan, true).await.unwrap();
    assert_eq!(
        report.ops,
        (devices * plan.rounds * plan.ops_per_push) as u64
    );
    assert!(report.conflicts > 0 && report.repeats > 0, "{report:?}");
    assert_eq!(report.rejected, 0);
    assert_eq!(report.applied + report.conflicts, report.ops);

    let (client, conn) = tokio_postgres::connect(&one.db().database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT user_name, op_id, count(*) FROM audit \
             WHERE event = 'write' AND user_name LIKE 'device-%' GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let audited: BTreeMap<(String, String), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let doubled: Vec<_> = audited.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "ops audited more than once: {doubled:?}"
    );
    let applied: BTreeSet<(String, String)> = report
        .sent
        .iter()
        .filter(|s| s.status == "applied")
        .map(|s| (s.user.clone(), s.op_id.clone()))
        .collect();
    assert_eq!(
        applied.len() as u64,
        report.applied,
        "an op_id was answered twice"
    );
    let audited: BTreeSet<(String, String)> = audited.into_keys().collect();
    let lost: Vec<_> = applied.difference(&audited).take(5).collect();
    assert!(
        lost.is_empty(),
        "applied ops missing from the audit: {lost:?}"
    );
    let unanswered: Vec<_> = audited.difference(&applied).take(5).collect();
    assert!(
        unanswered.is_empty(),
        "audited ops no device was told were applied: {unanswered:?}"
    );
    // And every device's records are what it was told: one per create, edits on top.
    let records: i64 = client
        .query_one(
            "SELECT count(*) FROM records WHERE collection = $1",
            &[&LOAD_COLLECTION],
        )
        .await
        .unwrap()
        .get(0);
    let creates = report.applied as i64 - (devices * plan.edits() * (plan.rounds - 1)) as i64;
    assert_eq!(records, creates);
}
