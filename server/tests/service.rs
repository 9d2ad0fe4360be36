//! Black-box tests of service accounts against the real binary: writes routed to a
//! team and owner, the change feed of every team (`GET /v1/admin/changes`), who may
//! use either, and `outpost-server export`. Each runs on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use outpost_testkit::*;
use serde_json::{Value, json};

/// The service account's token.
const SERVICE: &str = "token-backend-service-0123456789abcdef0123";

/// The test config plus a service account with no team of its own, and a team that
/// has no static user (as with JWTs), so a service account may write into it.
fn service_config() -> String {
    format!(
        "{LONG_PUSH_BUDGET}teams = [\"east\"]\n\n[[users]]\nname = \"backend\"\nrole = \"service\"\ntoken = \"{SERVICE}\"\n"
    )
}

fn start(b: &Backend) -> TestServer {
    TestServer::start_with(b, &service_config())
}

/// An op routed to `team` (and `owner`).
fn routed(mut op: Value, team: &str, owner: Option<&str>) -> Value {
    op["team"] = json!(team);
    if let Some(o) = owner {
        op["owner"] = json!(o);
    }
    op
}

async fn admin_raw(s: &TestServer, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut req = s.client().get(s.url(&format!("/v1/admin/changes{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

/// Reads the feed from `since` (`None`: the beginning) to its end, `extra` added to each
/// query; the changes and the last cursor.
async fn feed_from(s: &TestServer, since: Option<&str>, extra: &str) -> (Vec<Value>, String) {
    s.pages_from("/v1/admin/changes", SERVICE, since, extra)
        .await
}

/// Audit rows of the service account.
fn service_rows(s: &TestServer) -> i64 {
    let user_column = match s.backend() {
        Backend::Sqlite => "user",
        _ => "user_name",
    };
    s.db().count("audit", user_column, "backend")
}

/// `collection/record_id` of a change.
fn id_of(c: &Value) -> String {
    let text = |k: &str| c[k].as_str().unwrap().to_owned();
    text("collection") + "/" + &text("record_id")
}

fn ids(changes: &[Value]) -> Vec<String> {
    changes.iter().map(id_of).collect()
}

async fn a_backend_write_reaches_the_devices_of_its_team_and_owner_on_their_next_pull(b: Backend) {
    let s = start(&b);
    // (collection, id, data, team, owner)
    let writes = [
        (
            "patients",
            "p-1",
            json!({"name": "Imported"}),
            "north",
            None,
        ),
        (
            "drafts",
            "d-1",
            json!({"note": "for amina"}),
            "north",
            Some("amina"),
        ),
        ("forms", "f-1", json!({"form": "intake"}), "south", None),
        (
            "patients",
            "p-1",
            json!({"name": "Southern"}),
            "south",
            None,
        ),
        ("patients", "e-1", json!({"name": "East"}), "east", None),
    ];
    let ops: Vec<Value> = writes
        .into_iter()
        .map(|(c, id, data, team, owner)| routed(put(c, id, None, data), team, owner))
        .collect();
    let body = json!({"client_id": "backend-import", "ops": ops});
    let (st, first) = s.push_raw(SERVICE, &body).await;
    assert_eq!(st, 200, "{first}");
    let results = first["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["status"] == "applied"), "{first}");
    // A resend is answered the same and has no second effect.
    assert_eq!(s.push_raw(SERVICE, &body).await, (200, first.clone()));

    let seen = |token: &'static str| {
        let s = &s;
        async move {
            let (changes, _) = s.pull_all(token, "").await;
            let mut by_id = BTreeMap::new();
            for c in changes {
                // Pull pages are v1 exactly: no routing members.
                assert!(c.get("team").is_none() && c.get("owner").is_none(), "{c}");
                by_id.insert(id_of(&c), c["data"].clone());
            }
            by_id
        }
    };
    let amina = seen(AMINA).await;
    assert_eq!(
        amina.keys().collect::<Vec<_>>(),
        ["drafts/d-1", "forms/f-1", "patients/p-1"]
    );
    assert_eq!(amina["patients/p-1"]["name"], "Imported");
    let ben = seen(BEN).await;
    assert_eq!(
        ben.keys().collect::<Vec<_>>(),
        ["forms/f-1", "patients/p-1"]
    );
    let chioma = seen(CHIOMA).await;
    assert_eq!(
        chioma.keys().collect::<Vec<_>>(),
        ["forms/f-1", "patients/p-1"]
    );
    assert_eq!(chioma["patients/p-1"]["name"], "Southern");

    // The device edits the very record the backend wrote, on its version...
    let edit = put("patients", "p-1", Some(1), json!({"name": "Edited by Ben"}));
    let r = s.push(BEN, vec![edit]).await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    assert_eq!(r[0]["version"], 2);
    // ...and the backend's next write on it, on that version, reaches Amina's next pull.
    let r = s
        .push(
            SERVICE,
            vec![routed(
                patch("patients", "p-1", Some(2), json!({"ward": "3"})),
                "north",
                None,
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    let amina = seen(AMINA).await;
    assert_eq!(
        amina["patients/p-1"],
        json!({"name": "Edited by Ben", "ward": "3"})
    );
    // A stale base conflicts for a backend as for a device, with the record of its target.
    let r = s
        .push(
            SERVICE,
            vec![routed(
                put("patients", "p-1", Some(1), json!({})),
                "north",
                None,
            )],
        )
        .await;
    assert_eq!(r[0]["status"], "conflict");
    assert_eq!(r[0]["current"]["version"], 3);
    assert_eq!(r[0]["current"]["data"]["ward"], "3");

    // Audited like any write, with the service account as the user (six applied ops;
    // a conflict writes no row).
    assert_eq!(service_rows(&s), 6);
    let db = s.db();
    assert_eq!(db.count("audit", "scope", "u:amina"), 1);
    assert_eq!(db.count("audit", "scope", "t:east"), 1);
    assert_eq!(
        db.count(
            "audit",
            "detail",
            &json!({"as": {"team": "north", "owner": "amina"}}).to_string()
        ),
        1
    );
}

async fn a_device_write_appears_in_the_admin_feed_exactly_once(b: Backend) {
    let s = start(&b);
    let mut want = BTreeMap::new();
    for i in 0..10 {
        for (token, team, owner) in [(AMINA, "north", "amina"), (CHIOMA, "south", "chioma")] {
            // The same ids in two teams are two records, told apart by their team.
            s.push(
                token,
                vec![put("patients", &format!("p-{i}"), None, json!({"i": i}))],
            )
            .await;
            want.insert(format!("patients/p-{i}/{team}/{owner}"), 0);
        }
    }
    for i in 0..5 {
        s.push(
            BEN,
            vec![put("drafts", &format!("d-{i}"), None, json!({"i": i}))],
        )
        .await;
        want.insert(format!("drafts/d-{i}/north/ben"), 0);
    }
    let key = |c: &Value| {
        format!(
            "{}/{}/{}/{}",
            c["collection"].as_str().unwrap(),
            c["record_id"].as_str().unwrap(),
            c["team"].as_str().unwrap(),
            c["owner"].as_str().unwrap()
        )
    };
    let (changes, cursor) = feed_from(&s, None, "&limit=7").await;
    assert_eq!(changes.len(), 25);
    let mut seqs = Vec::new();
    for c in &changes {
        *want
            .get_mut(&key(c))
            .unwrap_or_else(|| panic!("unexpected {c}")) += 1;
        seqs.push(c["seq"].as_i64().unwrap());
        assert!(
            c["data"].is_object() && c["version"] == 1 && c["deleted"] == false,
            "{c}"
        );
    }
    assert!(want.values().all(|&n| n == 1), "{want:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // New writes come once past the cursor, however often it is read from.
    s.push(AMINA, vec![delete("patients", "p-0", Some(1))])
        .await;
    s.push(
        CHIOMA,
        vec![patch("patients", "p-1", Some(1), json!({"x": 1}))],
    )
    .await;
    let (more, next) = feed_from(&s, Some(&cursor), "&limit=1").await;
    assert_eq!(more.len(), 2, "{more:?}");
    assert_eq!(
        (
            key(&more[0]),
            more[0]["deleted"].clone(),
            more[0]["data"].clone()
        ),
        (
            "patients/p-0/north/amina".to_owned(),
            json!(true),
            Value::Null
        )
    );
    assert_eq!(key(&more[1]), "patients/p-1/south/chioma");
    assert_eq!(
        feed_from(&s, Some(&cursor), "").await,
        (more.clone(), next.clone())
    );
    // At the end, an empty page gives back its cursor.
    assert_eq!(
        feed_from(&s, Some(&next), "").await,
        (Vec::new(), next.clone())
    );

    // The pull's byte budget: a page of one change past a tiny budget, has_more.
    let (st, page) = admin_raw(&s, Some(SERVICE), "?max_bytes=1").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(
        (page["changes"].as_array().unwrap().len(), &page["has_more"]),
        (1, &json!(true))
    );
    assert!(page.get("remaining").is_none(), "{page}");
    // own, format and remaining are ignored, whatever their values.
    let (_, plain) = admin_raw(&s, Some(SERVICE), "").await;
    for q in [
        "?own=garbage",
        "?remaining=1",
        "?remaining=0&own=1-2&format=columns",
        "?own=1&own=2&format=x&format=y",
    ] {
        let (st, body) = admin_raw(&s, Some(SERVICE), q).await;
        assert_eq!((st, &body), (200, &plain), "{q}");
    }
    // A collection filter, as on pulls.
    let (drafts, _) = feed_from(&s, None, "&collections=drafts").await;
    assert_eq!(
        ids(&drafts),
        (0..5).map(|i| format!("drafts/d-{i}")).collect::<Vec<_>>()
    );

    // Cursors: garbled 400; a device's pull cursor is not the feed's, nor the other way.
    for q in ["?since=nonsense", "?since=c2.00", "?limit=0", "?limit=x"] {
        let (st, body) = admin_raw(&s, Some(SERVICE), q).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{q}"
        );
    }
    let (_, pull_cursor) = s.pull_all(AMINA, "").await;
    let (st, body) = admin_raw(&s, Some(SERVICE), &format!("?since={pull_cursor}")).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (410, Some("cursor_expired"))
    );
    let (st, _) = s.pull_raw(AMINA, &format!("?since={next}")).await;
    assert_eq!(st, 410);
}

async fn other_tokens_get_403_on_admin_routes_and_on_routed_ops(b: Backend) {
    let s = start(&b);
    s.push(AMINA, vec![put("patients", "p-1", None, json!({}))])
        .await;
    let (st, body) = admin_raw(&s, None, "").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (st, _) = admin_raw(&s, Some("not-a-token-of-anyone-0123456789abcdef"), "").await;
    assert_eq!(st, 401);
    for token in [AMINA, BEN, CHIOMA] {
        for q in ["", "?since=garbage", "?limit=0"] {
            let (st, body) = admin_raw(&s, Some(token), q).await;
            assert_eq!(
                (st, body["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{q}"
            );
        }
    }

    // Any other path under /v1/admin/, with any method: 401, 403 for a device's token,
    // and 404 only for a service account's.
    for path in [
        "/v1/admin/other",
        "/v1/admin/changes/x",
        "/v1/admin/users/1",
    ] {
        for (token, want) in [(None, 401), (Some(AMINA), 403), (Some(SERVICE), 404)] {
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                let mut req = s.client().request(method.clone(), s.url(path));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let (st, body) = answer(req.send().await.unwrap()).await;
                assert_eq!(st, want, "{method} {path} {token:?}: {body}");
                assert_error_shape(&body);
            }
        }
    }

    // A device may not route an op: the whole push is refused and nothing is kept.
    let op = put("patients", "p-2", None, json!({"n": 1}));
    for extra in [
        json!({"team": "south"}),
        json!({"owner": "chioma"}),
        json!({"team": 5}),
    ] {
        let mut bad = op.clone();
        for (k, v) in extra.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let body =
            json!({"client_id": "dev", "ops": [put("patients", "p-3", None, json!({})), bad]});
        let (st, answer) = s.push_raw(CHIOMA, &body).await;
        assert_eq!(
            (st, answer["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{extra}"
        );
    }
    assert_eq!(s.pull_all(CHIOMA, "").await.0.len(), 0);
    // The op_id was not spent: sent plainly, it applies in the device's own scope.
    let r = s.push(CHIOMA, vec![op]).await;
    assert_eq!(r[0]["status"], "applied");
    let (feed, _) = feed_from(&s, None, "").await;
    assert_eq!(feed.len(), 2);
    assert_eq!(feed[1]["team"], "south");
    assert_eq!(s.db().count("audit", "event", "denied"), 0);
}

async fn bad_service_pushes_get_400_and_change_nothing(b: Backend) {
    let s = start(&b);
    let good = routed(put("patients", "p-1", None, json!({})), "north", None);
    let cases = [
        (put("patients", "p-2", None, json!({})), "missing team"),
        (
            routed(put("patients", "p-2", None, json!({})), "west", None),
            "unknown team",
        ),
        (
            routed(put("drafts", "d-1", None, json!({})), "north", None),
            "missing owner",
        ),
        (
            {
                let mut o = put("patients", "p-2", None, json!({}));
                o["owner"] = json!("amina");
                o
            },
            "owner needs a team",
        ),
        (
            {
                let mut o = put("patients", "p-2", None, json!({}));
                o["team"] = json!("");
                o
            },
            "team must be",
        ),
        (
            routed(put("patients", "p-2", None, json!({})), "north\u{1}", None),
            "team must be",
        ),
    ];
    for (bad, message) in cases {
        let body = json!({"client_id": "backend", "ops": [good.clone(), bad]});
        let (st, answer) = s.push_raw(SERVICE, &body).await;
        assert_eq!(
            (st, answer["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{message}"
        );
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(
            text.starts_with("ops[1]: ") && text.contains(message),
            "{text}"
        );
    }
    // Nothing was applied, stored or audited: the same op_id applies afresh now.
    assert_eq!(feed_from(&s, None, "").await.0.len(), 0);
    assert_eq!(service_rows(&s), 0);
    let r = s.push(SERVICE, vec![good]).await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["version"].as_i64()),
        (Some("applied"), Some(1))
    );
    // An op bad in another way is rejected alone, as for a device, in its target's scope.
    let mut bad_kind = routed(put("patients", "p-3", None, json!({})), "south", None);
    bad_kind["kind"] = json!("upsert");
    let r = s.push(SERVICE, vec![bad_kind]).await;
    assert_eq!(r[0]["error"]["code"], "invalid_request");
    assert_eq!(s.db().count("audit", "scope", "t:south"), 1);
    // Its `denied` row names the team and owner it was sent as, like a write's.
    let db = s.db();
    let as_south = json!({"as": {"team": "south", "owner": "backend"}}).to_string();
    assert_eq!(db.count("audit", "event", "denied"), 1);
    assert_eq!(db.count("audit", "detail", &as_south), 1);
}

/// A device and the backend create the same new records at the same moment: one
/// create of each id is applied as version 1 and the other either conflicts or, having
/// come second, is applied as version 2 on it; never both version 1 (a lost write). The
/// record, its feed change and its audit rows agree with the answers.
async fn a_device_and_a_backend_creating_one_record_at_once_lose_no_write(b: Backend) {
    let s = start(&b);
    const IDS: usize = 150;
    let device = |i: usize| {
        put(
            "patients",
            &format!("race-{i}"),
            None,
            json!({"by": "amina"}),
        )
    };
    let backend = |i: usize| {
        routed(
            put(
                "patients",
                &format!("race-{i}"),
                None,
                json!({"by": "backend"}),
            ),
            "north",
            None,
        )
    };
    let mut answers = Vec::new();
    for i in 0..IDS {
        let (d, bk) = tokio::join!(
            s.push(AMINA, vec![device(i)]),
            s.push(SERVICE, vec![backend(i)])
        );
        answers.push((i, d[0].clone(), bk[0].clone()));
    }
    let (changes, _) = s.pull_all(AMINA, "").await;
    let records: BTreeMap<String, Value> = changes
        .into_iter()
        .map(|c| (c["record_id"].as_str().unwrap().to_owned(), c))
        .collect();
    let db = s.db();
    for (i, d, bk) in answers {
        let id = format!("race-{i}");
        let applied =
            |r: &Value| (r["status"] == "applied").then(|| r["version"].as_i64().unwrap());
        let (dv, bv) = (applied(&d), applied(&bk));
        let winner = match (dv, bv) {
            (Some(1), None) => {
                assert_eq!(bk["status"], "conflict", "{id}: {bk}");
                assert_eq!(bk["current"]["data"]["by"], "amina", "{id}: {bk}");
                "amina"
            }
            (None, Some(1)) => {
                assert_eq!(d["status"], "conflict", "{id}: {d}");
                assert_eq!(d["current"]["data"]["by"], "backend", "{id}: {d}");
                "backend"
            }
            (Some(1), Some(2)) => "backend",
            (Some(2), Some(1)) => "amina",
            _ => panic!("{id}: device {d}, backend {bk}"),
        };
        let rec = &records[&id];
        let version = dv.unwrap_or(0).max(bv.unwrap_or(0));
        assert_eq!(
            (rec["version"].as_i64(), rec["data"]["by"].as_str()),
            (Some(version), Some(winner)),
            "{id}: {rec}"
        );
        // One `write` row per applied create, and no other row.
        assert_eq!(db.count("audit", "record_id", &id), version, "{id}");
    }
}

/// A push of the backend's routed to two teams, each with a record of the same id in
/// conflict: each team's answer carries (or names) its own team's record, also when
/// the push is repeated.
async fn repeated_conflicts_in_two_teams_each_name_their_own_record(b: Backend) {
    let s = start(&b);
    for team in ["north", "south"] {
        let op = routed(put("patients", "p-1", None, json!({"t": team})), team, None);
        let r = s.push(SERVICE, vec![op]).await;
        assert_eq!(r[0]["status"], "applied", "{r:?}");
    }
    let stale = |team: &str| routed(put("patients", "p-1", Some(7), json!({})), team, None);
    let ops = vec![
        stale("north"),
        stale("south"),
        stale("north"),
        stale("south"),
    ];
    let op_ids: Vec<Value> = ops.iter().map(|o| o["op_id"].clone()).collect();
    let body = json!({"client_id": "backend-import", "ops": ops});
    let (st, first) = s.push_raw(SERVICE, &body).await;
    assert_eq!(st, 200, "{first}");
    let check = |answer: &Value| {
        let r = answer["results"].as_array().unwrap();
        assert!(r.iter().all(|a| a["status"] == "conflict"), "{answer}");
        assert_eq!(r[0]["current"]["data"]["t"], "north", "{answer}");
        assert_eq!(r[1]["current"]["data"]["t"], "south", "{answer}");
        assert!(r[1].get("current_ref").is_none(), "{answer}");
        assert_eq!(r[2]["current_ref"], op_ids[0], "{answer}");
        assert_eq!(r[3]["current_ref"], op_ids[1], "{answer}");
    };
    check(&first);
    // The repeat reads each record again in the scope its answer was given in.
    let (st, again) = s.push_raw(SERVICE, &body).await;
    assert_eq!(st, 200, "{again}");
    check(&again);
}

/// A stored conflict answer of the backend's names another team's record; a principal
/// of the same name that is no longer a service account (the config changed) repeating
/// that op_id reads nothing outside its own scope.
async fn a_repeat_by_a_former_service_account_reads_only_its_own_scope(b: Backend) {
    let mut s = start(&b);
    let write = routed(
        put("patients", "p-1", None, json!({"secret": "north"})),
        "north",
        None,
    );
    assert_eq!(s.push(SERVICE, vec![write]).await[0]["status"], "applied");
    let stale = routed(put("patients", "p-1", Some(7), json!({})), "north", None);
    let r = s.push(SERVICE, vec![stale.clone()]).await;
    assert_eq!(r[0]["current"]["data"]["secret"], "north", "{r:?}");

    let config = std::fs::read_to_string(s.config_path()).unwrap();
    let demoted = config.replace("role = \"service\"", "role = \"user\"\nteam = \"south\"");
    assert_ne!(config, demoted);
    std::fs::write(s.config_path(), demoted).unwrap();
    s.restart();
    let mut plain = stale;
    plain.as_object_mut().unwrap().remove("team");
    let r = s.push(SERVICE, vec![plain]).await;
    assert_eq!(r[0]["status"], "conflict", "{r:?}");
    assert!(r[0]["current"].is_null(), "north's record leaked: {r:?}");
}

/// Runs `outpost-server export` on the server's config; exit code, stdout, stderr.
fn export(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(server_binary().unwrap())
        .arg("export")
        .arg("--config")
        .arg(s.config_path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The cursor in export's last stderr line.
fn resume_cursor(stderr: &str) -> String {
    let last = stderr.lines().last().unwrap_or_default();
    last.split("resume with --since ")
        .nth(1)
        .unwrap_or_else(|| panic!("no resume line in {stderr:?}"))
        .trim()
        .to_owned()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn export_writes_the_feed_as_ndjson_and_resumes_where_it_ended(b: Backend) {
    let s = start(&b);
    for i in 0..40 {
        let team = ["north", "south", "east"][i % 3];
        s.push(
            SERVICE,
            vec![routed(
                put(
                    "patients",
                    &format!("p-{i}"),
                    None,
                    json!({"i": i, "t": "a\"b\n"}),
                ),
                team,
                None,
            )],
        )
        .await;
    }
    s.push(AMINA, vec![delete("patients", "p-0", Some(1))])
        .await;
    let (feed, feed_cursor) = feed_from(&s, None, "").await;
    assert_eq!(feed.len(), 40);

    let (code, out, err) = export(
        &s,
        &["--since", "0", "--format", "ndjson", "--page-size", "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines(&out), feed);
    assert!(
        err.lines().last().unwrap().contains(": 40 changes;"),
        "{err}"
    );
    let cursor = resume_cursor(&err);
    // The same position as the feed's own last cursor, so either resumes the other.
    assert_eq!(cursor, feed_cursor);

    s.push(CHIOMA, vec![put("patients", "c-1", None, json!({"x": 1}))])
        .await;
    s.push(
        SERVICE,
        vec![routed(put("forms", "f-1", None, json!({})), "east", None)],
    )
    .await;
    let file = s.dir().join("export.ndjson");
    let (code, out, err) = export(&s, &["--since", &cursor, "--out", file.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let written = lines(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(written, feed_from(&s, Some(&cursor), "").await.0);
    assert_eq!(ids(&written), ["patients/c-1", "forms/f-1"]);
    let next = resume_cursor(&err);
    let (code, out, err) = export(&s, &["--since", &next]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains(": 0 changes;"), "{err}");
    // The largest page the feed serves is also export's.
    let (code, out, err) = export(&s, &["--since", &cursor, "--page-size", "5000"]);
    assert_eq!((code, lines(&out).len()), (0, 2), "{err}");

    // Each run is audited with what it wrote.
    let db = s.db();
    let detail =
        |n: u64, from_start: bool| json!({"changes": n, "from_start": from_start}).to_string();
    assert_eq!(db.count("audit", "event", "export"), 4);
    assert_eq!(db.count("audit", "detail", &detail(40, true)), 1);
    assert_eq!(db.count("audit", "detail", &detail(2, false)), 2);
    assert_eq!(db.count("audit", "detail", &detail(0, false)), 1);

    // Bad input: exit 2 and nothing written; a device's cursor is not the feed's. A run
    // that reached the database is audited, with why it failed.
    let (_, pull_cursor) = s.pull_all(AMINA, "").await;
    for (args, code_want, audited) in [
        (vec!["--since", "garbage"], 2, true),
        (vec!["--since", "0", "--format", "csv"], 2, false),
        (vec!["--since", "0", "--page-size", "0"], 2, false),
        (vec!["--since", "0", "--page-size", "5001"], 2, false),
        (vec!["--since", pull_cursor.as_str()], 1, true),
    ] {
        let before = db.count("audit", "event", "export");
        let (code, out, err) = export(&s, &args);
        assert_eq!((code, out.as_str()), (code_want, ""), "{args:?}: {err}");
        if args.contains(&"5001") {
            assert!(err.contains("--page-size must be 1 to 5000"), "{err}");
        }
        let why = err.lines().last().unwrap().strip_prefix("outpost-server: ");
        let failed = json!({"changes": 0, "from_start": false, "failed": why}).to_string();
        assert_eq!(
            (
                db.count("audit", "event", "export") - before,
                db.count("audit", "detail", &failed)
            ),
            (i64::from(audited), i64::from(audited)),
            "{args:?}: {err}"
        );
    }

    // A run whose audit row cannot be written fails, though its lines were written.
    refuse_export_audit_rows(&s);
    let (code, out, err) = export(&s, &["--since", &cursor]);
    assert_eq!((code, lines(&out).len()), (1, 2), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("the export's audit row was not written"),
        "{err}"
    );
}

/// Makes the database refuse new `export` audit rows (and only those).
fn refuse_export_audit_rows(s: &TestServer) {
    match s.backend() {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(s.db().sqlite_path().unwrap()).unwrap();
            conn.execute_batch(
                "CREATE TRIGGER no_export_rows BEFORE INSERT ON audit \
                 WHEN NEW.event = 'export' BEGIN SELECT RAISE(ABORT, 'no export rows'); END;",
            )
            .unwrap();
        }
        Backend::Postgres(_) => pg_exec(
            &s.db().database(),
            "CREATE FUNCTION no_export_rows() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF NEW.event = 'export' THEN RAISE EXCEPTION 'no export rows'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER no_export_rows BEFORE INSERT ON audit \
             FOR EACH ROW EXECUTE FUNCTION no_export_rows();",
        ),
    }
}

/// Peak resident memory of an export, in KiB, read from `/proc` while it runs (the pipe
/// its output goes to is read slowly, so it is alive while it works); and its lines.
fn export_peak_kib(s: &TestServer, since: &str) -> (u64, usize) {
    let mut child = Command::new(server_binary().unwrap())
        .args(["export", "--since", since, "--page-size", "5", "--config"])
        .arg(s.config_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let hwm = || {
        std::fs::read_to_string(&status).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    };
    let mut out = BufReader::with_capacity(1 << 16, child.stdout.take().unwrap());
    let (mut peak, mut n, mut line) = (0, 0, String::new());
    while out.read_line(&mut line).unwrap() > 0 {
        n += 1;
        line.clear();
        if n % 5 == 0
            && let Some(h) = hwm()
        {
            peak = peak.max(h);
        }
    }
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    (peak, n)
}

/// 400 records of 100 KB (40 MB of JSON) export in pages of 5: the peak memory is about
/// that of exporting the last 40 of them, not grown by the 36 MB between. (Linux: it
/// reads `/proc`.)
async fn export_memory_stays_bounded_over_many_records(b: Backend) {
    let s = start(&b);
    let big = "x".repeat(100_000);
    let mut mid = None;
    for chunk in 0..10 {
        let ops = (0..40)
            .map(|i| {
                let team = ["north", "south"][i % 2];
                routed(
                    put(
                        "patients",
                        &format!("p-{chunk}-{i}"),
                        None,
                        json!({"big": big}),
                    ),
                    team,
                    None,
                )
            })
            .collect();
        s.push_resending(SERVICE, ops).await;
        if chunk == 8 {
            mid = Some(
                feed_from(&s, None, "&limit=5000&max_bytes=1000000000")
                    .await
                    .1,
            );
        }
    }
    let (tail_peak, tail_n) = export_peak_kib(&s, &mid.unwrap());
    let (all_peak, all_n) = export_peak_kib(&s, "0");
    assert_eq!((tail_n, all_n), (40, 400));
    assert!(tail_peak > 0 && all_peak > 0);
    eprintln!("export peak: 400 records {all_peak} KiB, the last 40 {tail_peak} KiB");
    assert!(
        all_peak < tail_peak + 12 * 1024,
        "exporting 400 records peaked at {all_peak} KiB, 40 at {tail_peak} KiB"
    );
}

outpost_testkit::backend_tests!("service": a_device_and_a_backend_creating_one_record_at_once_lose_no_write, repeated_conflicts_in_two_teams_each_name_their_own_record, a_repeat_by_a_former_service_account_reads_only_its_own_scope, export_memory_stays_bounded_over_many_records, a_backend_write_reaches_the_devices_of_its_team_and_owner_on_their_next_pull, a_device_write_appears_in_the_admin_feed_exactly_once, other_tokens_get_403_on_admin_routes_and_on_routed_ops, bad_service_pushes_get_400_and_change_nothing, export_writes_the_feed_as_ndjson_and_resumes_where_it_ended);
