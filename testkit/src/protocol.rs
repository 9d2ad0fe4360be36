//! A small HTTP client for protocol v1, for tests that speak the wire format
//! themselves: raw pushes and pulls, op builders, and the checks every answer must pass
//! (JSON, and the error shape on errors).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::server::TestServer;

impl TestServer {
    /// `POST /v1/push` with `body` as it is: status and JSON answer.
    pub async fn push_raw(&self, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client()
            .post(self.url("/v1/push"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("push request");
        answer(r).await
    }

    /// Pushes ops; asserts 200 and returns the results.
    pub async fn push(&self, token: &str, ops: Vec<Value>) -> Vec<Value> {
        let (status, body) = self
            .push_raw(token, &json!({"client_id": "test-client", "ops": ops}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["results"].as_array().expect("results").clone()
    }

    /// Pushes ops as a client does: those answered `deferred` (the push's work budget
    /// ran out, as it may on a busy machine) are sent again, same op_ids, until none
    /// is. The final result of every op, in their order.
    pub async fn push_resending(&self, token: &str, ops: Vec<Value>) -> Vec<Value> {
        let mut results: Vec<Option<Value>> = vec![None; ops.len()];
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        while !pending.is_empty() {
            let batch = pending.iter().map(|&i| ops[i].clone()).collect();
            let answered = self.push(token, batch).await;
            assert_eq!(answered.len(), pending.len(), "one result per op");
            let mut again = Vec::new();
            for (i, r) in pending.into_iter().zip(answered) {
                if r["status"] == "deferred" {
                    again.push(i);
                } else {
                    results[i] = Some(r);
                }
            }
            pending = again;
        }
        results.into_iter().flatten().collect()
    }

    /// `GET /v1/pull<query>`: status and JSON answer.
    pub async fn pull_raw(&self, token: &str, query: &str) -> (u16, Value) {
        self.get_raw(token, &format!("/v1/pull{query}")).await
    }

    /// `GET <path and query>` with `token`: status and JSON answer.
    pub async fn get_raw(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET request");
        answer(r).await
    }

    /// Pulls everything readable from the beginning, following `has_more`; `extra` is
    /// appended to each query (`&limit=2`). Returns the changes and the last cursor.
    pub async fn pull_all(&self, token: &str, extra: &str) -> (Vec<Value>, String) {
        self.pages_from("/v1/pull", token, None, extra).await
    }

    /// Follows `has_more` through the pages of a route shaped like the pull (`/v1/pull`,
    /// `/v1/admin/changes`) from the cursor `since` (`None`: the beginning); `extra` is
    /// appended to each query. Returns the changes and the last cursor.
    pub async fn pages_from(
        &self,
        path: &str,
        token: &str,
        since: Option<&str>,
        extra: &str,
    ) -> (Vec<Value>, String) {
        let mut out = Vec::new();
        let mut cursor = since.map(str::to_owned);
        loop {
            let q = match &cursor {
                Some(c) => format!("{path}?since={c}{extra}"),
                None => format!("{path}?x=1{extra}"),
            };
            let (status, body) = self.get_raw(token, &q).await;
            assert_eq!(status, 200, "{body}");
            out.extend(body["changes"].as_array().expect("changes").iter().cloned());
            let c = body["cursor"].as_str().expect("cursor").to_owned();
            if !body["has_more"].as_bool().expect("has_more") {
                return (out, c);
            }
            cursor = Some(c);
        }
    }
}

/// Status and JSON body; asserts that every answer is JSON, and that an error has the
/// protocol's error shape.
pub async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("content-type text").to_owned())
        .unwrap_or_default();
    let text = r.text().await.expect("answer body");
    assert!(
        ct.starts_with("application/json"),
        "status {status}: content-type {ct:?}, body {text:?}"
    );
    let v: Value = serde_json::from_str(&text).expect("answer JSON");
    if status >= 400 {
        assert_error_shape(&v);
    }
    (status, v)
}

/// `{"error":{"code","message"}}` and nothing else.
pub fn assert_error_shape(v: &Value) {
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 1, "{v}");
    let e = o["error"].as_object().expect("error object");
    assert_eq!(e.len(), 2, "{v}");
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh op id.
pub fn op_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid HLC stamp, increasing within the process.
pub fn hlc() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:013}-{:05}-dev1", 1_700_000_000_000u64 + n, 0)
}

/// A `put` op.
pub fn put(collection: &str, id: &str, base: Option<i64>, data: Value) -> Value {
    put_with_id(&op_id(), collection, id, base, data)
}

/// A `put` op under a given op id: what a device sends again after a lost answer.
pub fn put_with_id(
    op_id: &str,
    collection: &str,
    id: &str,
    base: Option<i64>,
    data: Value,
) -> Value {
    json!({"op_id": op_id, "collection": collection, "record_id": id, "kind": "put",
           "base_version": base, "data": data, "hlc": hlc()})
}

/// A `patch` op.
pub fn patch(collection: &str, id: &str, base: Option<i64>, data: Value) -> Value {
    json!({"op_id": op_id(), "collection": collection, "record_id": id, "kind": "patch",
           "base_version": base, "data": data, "hlc": hlc()})
}

/// A `delete` op.
pub fn delete(collection: &str, id: &str, base: Option<i64>) -> Value {
    json!({"op_id": op_id(), "collection": collection, "record_id": id, "kind": "delete",
           "base_version": base, "hlc": hlc()})
}

/// A grow-only counter field (`$crdt: gcounter`) with `replicas` replicas `r00000`,
/// `r00001`, ..., each at `value`: a field with that many entries.
pub fn gcounter(replicas: usize, value: u64) -> Value {
    let p: serde_json::Map<String, Value> = (0..replicas)
        .map(|i| (format!("r{i:05}"), json!(value)))
        .collect();
    json!({"$crdt": "gcounter", "p": p})
}

/// An OR-set field (`$crdt: orset`) holding `tags` elements `e0`, `e1`, ..., one tag each.
pub fn orset(tags: usize) -> Value {
    let adds: serde_json::Map<String, Value> = (0..tags)
        .map(|i| (format!("e{i}"), json!([format!("a:{}", i + 1)])))
        .collect();
    json!({"$crdt": "orset", "adds": adds, "removes": {}})
}
