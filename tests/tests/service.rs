#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A backend beside the devices: the organisation's system signs in as a service
//! account, pushes server-authored records into a team and an owner's drafts, and
//! reads every device's writes from the feed of every team. Real device engines
//! against the real server, on SQLite and (with `OUTPOST_TEST_POSTGRES_URL`)
//! PostgreSQL.

use std::collections::BTreeMap;

use outpost_testkit::{AMINA, Backend, CHIOMA, TestServer, hlc, op_id};
use outpost_tests::Device;
use serde_json::{Value, json};

const SERVICE: &str = "token-backend-service-0123456789abcdef0123";

fn server(b: &Backend) -> TestServer {
    TestServer::start_with(
        b,
        &format!("[[users]]\nname = \"backend\"\nrole = \"service\"\ntoken = \"{SERVICE}\"\n"),
    )
}

/// The backend's push of one op; its answer.
async fn backend_put(
    s: &TestServer,
    collection: &str,
    id: &str,
    base: Option<i64>,
    data: Value,
    route: Value,
) -> Value {
    let mut op = json!({"op_id": op_id(), "collection": collection, "record_id": id,
        "kind": "put", "base_version": base, "data": data, "hlc": hlc()});
    for (k, v) in route.as_object().unwrap() {
        op[k] = v.clone();
    }
    let (st, body) = s
        .push_raw(SERVICE, &json!({"client_id": "backend", "ops": [op]}))
        .await;
    assert_eq!(st, 200, "{body}");
    body["results"][0].clone()
}

/// The feed of every team from `since` to its end, in pages of two: changes and the
/// last cursor.
async fn feed(s: &TestServer, since: Option<&str>) -> (Vec<Value>, String) {
    s.pages_from("/v1/admin/changes", SERVICE, since, "&limit=2")
        .await
}

fn by_record(changes: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for c in changes {
        let key = format!(
            "{}/{}@{}",
            c["collection"].as_str().unwrap(),
            c["record_id"].as_str().unwrap(),
            c["team"].as_str().unwrap()
        );
        *n.entry(key).or_default() += 1;
    }
    n
}

async fn a_backend_and_devices_exchange_records(b: Backend) {
    let s = server(&b);
    let dir = tempfile::tempdir().unwrap();
    let amina = Device::open(dir.path(), "amina", &s, AMINA);
    let chioma = Device::open(dir.path(), "chioma", &s, CHIOMA);
    amina.sync_until_quiet().await;
    chioma.sync_until_quiet().await;
    let (_, start) = feed(&s, None).await;

    // The backend's write reaches the devices of its team and owner on their next sync.
    let r = backend_put(
        &s,
        "patients",
        "visit-1",
        None,
        json!({"name": "Assigned visit", "ward": "2"}),
        json!({"team": "north"}),
    )
    .await;
    assert_eq!(r["status"], "applied", "{r}");
    let r = backend_put(
        &s,
        "drafts",
        "note-1",
        None,
        json!({"note": "for Amina only"}),
        json!({"team": "north", "owner": "amina"}),
    )
    .await;
    assert_eq!(r["status"], "applied", "{r}");
    amina.sync_until_quiet().await;
    chioma.sync_until_quiet().await;
    let visit = amina.store.get("patients", "visit-1").unwrap().unwrap();
    assert_eq!(visit.data["name"], "Assigned visit");
    assert_eq!(
        amina.store.get("drafts", "note-1").unwrap().unwrap().data["note"],
        "for Amina only"
    );
    assert!(chioma.store.get("patients", "visit-1").unwrap().is_none());
    assert!(chioma.store.get("drafts", "note-1").unwrap().is_none());

    // Devices' writes, and an edit of the backend's record, reach the feed once each.
    amina
        .store
        .put("patients", Some("p-1"), json!({"name": "Amina's patient"}))
        .unwrap();
    amina
        .store
        .put(
            "patients",
            Some("visit-1"),
            json!({"name": "Assigned visit", "ward": "5"}),
        )
        .unwrap();
    chioma
        .store
        .put("patients", Some("p-1"), json!({"name": "Chioma's patient"}))
        .unwrap();
    amina.sync_until_quiet().await;
    chioma.sync_until_quiet().await;
    // Syncing again sends nothing twice.
    amina.sync_until_quiet().await;
    let (changes, after) = feed(&s, Some(&start)).await;
    // Like a pull, the feed carries each record's latest state: the backend's write and
    // Amina's edit of it since the last read come as one change, version 2.
    let counts = by_record(&changes);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("drafts/note-1@north".to_owned(), 1),
            ("patients/p-1@north".to_owned(), 1),
            ("patients/p-1@south".to_owned(), 1),
            ("patients/visit-1@north".to_owned(), 1),
        ]),
        "{changes:?}"
    );
    let edit = changes
        .iter()
        .find(|c| c["record_id"] == "visit-1")
        .unwrap();
    assert_eq!(edit["owner"], "backend");
    assert_eq!(
        (edit["version"].as_i64(), &edit["data"]["ward"]),
        (Some(2), &json!("5"))
    );
    assert_eq!(feed(&s, Some(&after)).await.0.len(), 0);

    // The backend answers on the version it read; the device merges it in.
    let r = backend_put(
        &s,
        "patients",
        "visit-1",
        Some(2),
        json!({"name": "Assigned visit", "ward": "5", "done": true}),
        json!({"team": "north"}),
    )
    .await;
    assert_eq!(r["status"], "applied", "{r}");
    amina.sync_until_quiet().await;
    let visit = amina.store.get("patients", "visit-1").unwrap().unwrap();
    assert_eq!(visit.data["done"], true);
    assert_eq!(feed(&s, Some(&after)).await.0.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_backend_and_devices_exchange_records() {
    a_backend_and_devices_exchange_records(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_backend_and_devices_exchange_records() {
    if let Some(b) = Backend::postgres_or_skip("service::a_backend_and_devices_exchange_records") {
        a_backend_and_devices_exchange_records(b).await;
    }
}
