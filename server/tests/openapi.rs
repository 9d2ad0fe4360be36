//! Keeps `server/openapi.json` true: real answers of the running binary, for every
//! route and every error status it produces, are checked against the document.
//!
//! The validator is a small, strict subset of JSON Schema as OpenAPI 3.0 uses it:
//! `$ref`, `type`, `nullable`, `enum`, `properties`, `required`,
//! `additionalProperties: false`, `items`, `oneOf` (exactly one), `allOf`, `minimum`,
//! `minLength`, `maxLength`, `maxItems`. `pattern` and `format` are not checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use outpost_testkit::*;
use serde_json::{Value, json};

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let path = r.strip_prefix("#/").expect("local ref");
        schema = path.split('/').fold(spec, |v, k| &v[k]);
        assert!(!schema.is_null(), "dangling $ref {r}");
    }
    schema
}

fn validate(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if v.is_null() && schema.get("nullable") == Some(&json!(true)) {
        return Ok(());
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(spec, s, v, at)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let ok = one
            .iter()
            .filter(|s| validate(spec, s, v, at).is_ok())
            .count();
        if ok != 1 {
            return Err(format!("{at}: matches {ok} of oneOf, not 1: {v}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} not in enum {e:?}"));
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            other => return Err(format!("{at}: unknown type {other}")),
        };
        if !ok {
            return Err(format!("{at}: {v} is not {t}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} < {min}"));
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return Err(format!("{at}: length {n} out of bounds"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !o.contains_key(r.as_str().unwrap()) {
                return Err(format!("{at}: missing {r}"));
            }
        }
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(spec, s, val, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    return Err(format!("{at}: unexpected member {k}"));
                }
                None => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| a.len() as u64 > m)
        {
            return Err(format!("{at}: too many items"));
        }
        if let Some(items) = schema.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(spec, items, x, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// Checks one real answer against the document's response for its route and status.
fn check(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "{method} {path} not documented");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path}: status {status} not documented"));
    let resp = resolve(spec, resp);
    let schema = &resp["content"]["application/json"]["schema"];
    validate(spec, schema, body, "$").unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"));
}

#[test]
fn the_document_is_self_consistent() {
    let spec = spec();
    assert_eq!(
        spec["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    // Every $ref resolves.
    fn walk(spec: &Value, v: &Value) {
        match v {
            Value::Object(o) => {
                if o.contains_key("$ref") {
                    resolve(spec, v);
                }
                o.values().for_each(|x| walk(spec, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(spec, x)),
            _ => {}
        }
    }
    walk(&spec, &spec);
    // The validator is not vacuous.
    let change = &spec["components"]["schemas"]["Change"];
    assert!(validate(&spec, change, &json!({"collection": "a"}), "$").is_err());
    let result = &spec["components"]["schemas"]["OpResult"];
    assert!(
        validate(
            &spec,
            result,
            &json!({"op_id": "x", "status": "applied", "version": 1}),
            "$"
        )
        .is_err()
    );
}

async fn real_answers_match_the_document(backend: Backend) {
    let spec = spec();
    let s = TestServer::start_with(
        &backend,
        &format!("{LONG_PUSH_BUDGET}rate_limit_per_minute = 40\npurge_interval_secs = 0.2"),
    );
    let r = s.client().get(s.url("/health")).send().await.unwrap();
    let (st, body) = answer(r).await;
    check(&spec, "get", "/health", st, &body);

    // Push: applied, conflict (with a current record and with null), rejected.
    let ops = vec![
        put(
            "patients",
            "p-1",
            None,
            json!({"n": {"$crdt": "gcounter", "p": {"a": 1}}}),
        ),
        put("patients", "p-1", None, json!({"name": "x"})),
        put("patients", "nope", Some(3), json!({})),
        put("Bad", "x", None, json!({})),
        delete("patients", "p-1", Some(1)),
    ];
    let (st, body) = s
        .push_raw(AMINA, &json!({"client_id": "c", "ops": ops}))
        .await;
    let statuses: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec!["applied", "conflict", "conflict", "rejected", "applied"]
    );
    check(&spec, "post", "/v1/push", st, &body);
    s.push(CHIOMA, vec![put("drafts", "d", None, json!({}))])
        .await;
    let r = s
        .push(AMINA, vec![put("drafts", "d", Some(1), json!({}))])
        .await;
    check(&spec, "post", "/v1/push", 200, &json!({"results": r}));

    // A record state carried once (current_ref), and ops past the budget (deferred).
    let r = s
        .push(
            AMINA,
            vec![
                put("patients", "p-1", None, json!({"a": 1})),
                put("patients", "p-1", None, json!({"a": 2})),
            ],
        )
        .await;
    assert_eq!(r[1]["current_ref"], r[0]["op_id"]);
    check(&spec, "post", "/v1/push", 200, &json!({"results": r}));
    let tight = TestServer::start_with(&backend, "push_budget_ms = 0");
    let r = tight
        .push(
            AMINA,
            vec![
                put("patients", "a", None, json!({})),
                put("patients", "b", None, json!({})),
            ],
        )
        .await;
    assert_eq!(
        (&r[0]["status"], &r[1]["status"]),
        (&json!("applied"), &json!("deferred"))
    );
    check(&spec, "post", "/v1/push", 200, &json!({"results": r}));

    // Pull: a live record and a tombstone.
    s.push(
        AMINA,
        vec![put("patients", "p-2", None, json!({"a": [1, {"b": null}]}))],
    )
    .await;
    let (st, body) = s.pull_raw(AMINA, "?limit=1").await;
    check(&spec, "get", "/v1/pull", st, &body);
    let (st, body) = s.pull_raw(AMINA, "").await;
    assert!(!body["changes"].as_array().unwrap().is_empty());
    check(&spec, "get", "/v1/pull", st, &body);
    // The dense form, with a tombstone among its changes; and the additions to v1.
    let (st, body) = s.pull_raw(AMINA, "?format=columns").await;
    assert_eq!(body["format"], "columns", "{st} {body}");
    assert!(
        body["shape"].as_array().unwrap().contains(&Value::Null),
        "{body}"
    );
    check(&spec, "get", "/v1/pull", st, &body);
    let (st, body) = s.pull_raw(AMINA, "?format=columns&max_bytes=1").await;
    assert_eq!(
        (&body["has_more"], body["ids"].as_array().unwrap().len()),
        (&json!(true), 1)
    );
    check(&spec, "get", "/v1/pull", st, &body);
    let (st, body) = s.pull_raw(AMINA, "?max_bytes=1&own=70,80-90").await;
    assert_eq!(body["has_more"], json!(true), "{body}");
    assert!(body["remaining"].as_u64().unwrap() >= 1, "{body}");
    check(&spec, "get", "/v1/pull", st, &body);
    // p-1's tombstone (seq 2) is this client's own: listed, it is left out.
    let (st, body) = s.pull_raw(AMINA, "?own=1-3").await;
    let ids: Vec<_> = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["record_id"])
        .collect();
    assert_eq!(ids, [&json!("p-2")], "{body}");
    check(&spec, "get", "/v1/pull", st, &body);

    // Every error the routes produce.
    let mut seen = std::collections::BTreeSet::new();
    let mut record = |method: &str, path: &str, st: u16, body: &Value| {
        check(&spec, method, path, st, body);
        seen.insert(st);
    };
    let (st, b) = s.pull_raw(AMINA, "?limit=0").await;
    record("get", "/v1/pull", st, &b);
    let (st, b) = s.pull_raw("bad", "").await;
    record("get", "/v1/pull", st, &b);
    let (st, b) = s.push_raw("bad", &json!({})).await;
    record("post", "/v1/push", st, &b);
    let (st, b) = s.push_raw(AMINA, &json!({"client_id": 5, "ops": []})).await;
    record("post", "/v1/push", st, &b);
    let big = format!(r#"{{"x":"{}"}}"#, "x".repeat(9 * 1024 * 1024));
    let r = s
        .client()
        .post(s.url("/v1/push"))
        .bearer_auth(AMINA)
        .body(big)
        .send()
        .await
        .unwrap();
    let (st, b) = answer(r).await;
    record("post", "/v1/push", st, &b);
    let r = s
        .client()
        .put(s.url("/v1/push"))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let (st, b) = answer(r).await;
    record("post", "/v1/push", st, &b);
    let r = s.client().post(s.url("/health")).send().await.unwrap();
    let (st, b) = answer(r).await;
    record("get", "/health", st, &b);
    let r = s
        .client()
        .get(s.url("/v1/nothing"))
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let (st, b) = answer(r).await;
    record("get", "/v1/pull", st, &b); // the shared Error response

    // 410: a cursor from before a purge (retention 0 on this server).
    let s2 = TestServer::start_with(
        &backend,
        &format!("{LONG_PUSH_BUDGET}tombstone_retention_days = 0\npurge_interval_secs = 0.2"),
    );
    s2.push(AMINA, vec![put("patients", "x", None, json!({}))])
        .await;
    let (_, c) = s2.pull_all(AMINA, "").await;
    s2.push(
        AMINA,
        vec![
            put("patients", "y", None, json!({})),
            delete("patients", "x", Some(1)),
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = s2.pull_raw(AMINA, &format!("?since={c}")).await;
        if st == 410 {
            record("get", "/v1/pull", st, &b);
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 429 last, as it uses up amina's budget.
    let st = loop {
        let (st, b) = s.pull_raw(AMINA, "").await;
        if st == 429 {
            record("get", "/v1/pull", st, &b);
            break st;
        }
    };
    assert_eq!(st, 429);
    let want: std::collections::BTreeSet<u16> = [400, 401, 404, 405, 410, 413, 429].into();
    assert_eq!(seen, want);
}

async fn admin_get(s: &TestServer, token: Option<&str>, q: &str) -> (u16, Value) {
    let mut req = s.client().get(s.url(&format!("/v1/admin/changes{q}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

/// The service account's additions: routed pushes, and the feed of every team with the
/// errors it answers.
async fn service_answers_match_the_document(backend: Backend) {
    let spec = spec();
    let service = "token-backend-service-0123456789abcdef0123";
    let s = TestServer::start_with(
        &backend,
        &format!("[[users]]\nname = \"backend\"\nrole = \"service\"\ntoken = \"{service}\"\n"),
    );
    let mut op = put("drafts", "d-1", None, json!({"n": 1}));
    op["team"] = json!("north");
    op["owner"] = json!("amina");
    let (st, b) = s
        .push_raw(service, &json!({"client_id": "c", "ops": [op.clone()]}))
        .await;
    assert_eq!(st, 200, "{b}");
    check(&spec, "post", "/v1/push", st, &b);
    let (st, b) = s
        .push_raw(AMINA, &json!({"client_id": "c", "ops": [op]}))
        .await;
    assert_eq!(st, 403);
    check(&spec, "post", "/v1/push", st, &b);
    let (st, page) = admin_get(&s, Some(service), "?limit=1").await;
    assert_eq!(
        (st, page["changes"][0]["owner"].as_str()),
        (200, Some("amina"))
    );
    check(&spec, "get", "/v1/admin/changes", st, &page);
    let (_, pull_cursor) = s.pull_all(AMINA, "").await;
    let stale = format!("?since={pull_cursor}");
    for (token, q, want) in [
        (Some(service), "?since=x", 400),
        (None, "", 401),
        (Some(AMINA), "", 403),
        (Some(service), stale.as_str(), 410),
    ] {
        let (st, b) = admin_get(&s, token, q).await;
        assert_eq!(st, want, "{b}");
        check(&spec, "get", "/v1/admin/changes", st, &b);
    }
}

async fn attachment_answers_match_the_document(backend: Backend) {
    let spec = spec();
    let s = TestServer::start_with(&backend, "max_attachment_mib = 0.001");
    let file = b"a signature".to_vec();
    let sha: String = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&file))
    };
    let post = |token: &'static str, sha: String, size: usize, offset: usize, body: Vec<u8>| {
        let req = s
            .client()
            .post(s.url(&format!(
                "/v1/attachments/{sha}?size={size}&offset={offset}"
            )))
            .bearer_auth(token)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let get = |path: String| {
        let req = s.client().get(s.url(&path)).bearer_auth(AMINA);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let up = "/v1/attachments/{sha256}";
    let status = "/v1/attachments/{sha256}/status";
    let mut seen = std::collections::BTreeSet::new();
    let mut record = |method: &str, path: &str, st: u16, body: &Value| {
        check(&spec, method, path, st, body);
        seen.insert(st);
    };
    let (st, b) = get(format!("/v1/attachments/{sha}/status")).await;
    record("get", status, st, &b);
    let (st, b) = post(AMINA, sha.clone(), file.len(), 0, file[..4].to_vec()).await;
    record("post", up, st, &b);
    let (st, b) = post(AMINA, sha.clone(), file.len(), 9, file[9..].to_vec()).await;
    record("post", up, st, &b);
    let (st, b) = post(AMINA, sha.clone(), file.len(), 4, file[4..].to_vec()).await;
    assert_eq!(b["complete"], true);
    record("post", up, st, &b);
    let (st, b) = get(format!("/v1/attachments/{sha}/status")).await;
    record("get", status, st, &b);
    let (st, b) = post(AMINA, "a".repeat(64), 5000, 0, Vec::new()).await;
    record("post", up, st, &b);
    let (st, b) = post(AMINA, "nope".into(), 1, 0, Vec::new()).await;
    record("post", up, st, &b);
    let (st, b) = post("wrong", sha.clone(), 1, 0, Vec::new()).await;
    record("post", up, st, &b);
    let r = s
        .client()
        .get(s.url(&format!("/v1/attachments/{sha}")))
        .header("range", "bytes=100-")
        .bearer_auth(AMINA)
        .send()
        .await
        .unwrap();
    let (st, b) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    record("get", up, st, &b);
    let want: std::collections::BTreeSet<u16> = [200, 400, 401, 404, 409, 413, 416].into();
    assert_eq!(seen, want);
}

outpost_testkit::backend_tests!("openapi": real_answers_match_the_document, attachment_answers_match_the_document, service_answers_match_the_document);
