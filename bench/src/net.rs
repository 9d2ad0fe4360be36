//! Figures 3, 4 and 6: push and pull through the real sync engine and the real server,
//! against minimal hand-written equivalents.
//!
//! `SyncEngine::sync_now` always pushes and then pulls. To report push and pull apart,
//! the engine is given the test kit's `FaultyTransport` with no faults: the public
//! `HttpTransport` wrapped in a layer that only records when each request starts, how
//! long it takes and its bytes, through the public `Transport` trait. No engine code is
//! bypassed.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_core::protocol::{Op, OpKind, PullResponse, PushRequest};
use outpost_core::transport::PullParams;
use outpost_core::{
    ConflictStrategy, HttpTimeouts, HttpTransport, StaticToken, Store, StoreConfig, SyncConfig,
    SyncEngine, SyncOutcome, SyncReport, Transport,
};
use outpost_testkit::FaultyTransport;
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

use crate::server::TOKEN;
use crate::util::{Result, fail, now_ms, payload, raw_connection, raw_put};

/// The engine's transport, timed: `HttpTransport` to `url` behind the kit's layer.
fn timed_link(url: &str) -> Result<Arc<FaultyTransport>> {
    Ok(Arc::new(FaultyTransport::http(url)?))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn device(path: &Path, collection: &str) -> Result<Store> {
    let config =
        StoreConfig::default().with_collection(collection, ConflictStrategy::LastWriteWins);
    Ok(Store::open(path, config)?)
}

pub(crate) fn engine(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    transport: Arc<dyn Transport>,
) -> SyncEngine {
    SyncEngine::new(
        store.clone(),
        transport,
        Arc::new(StaticToken(TOKEN.to_owned())),
        SyncConfig::default(),
        rt.handle().clone(),
    )
}

pub(crate) fn check(report: &SyncReport, what: &str) -> Result<()> {
    if report.outcome != SyncOutcome::Completed {
        return Err(fail(format!(
            "{what}: sync ended {:?}: {:?}",
            report.outcome, report.errors
        )));
    }
    Ok(())
}

/// Writes `n` records into a store through the public API, 1,000 per batch (untimed).
fn fill(store: &Store, collection: &str, prefix: &str, n: usize) -> Result<()> {
    let mut i = 0;
    while i < n {
        let m = 1000.min(n - i);
        store.batch(|tx| {
            for k in i..i + m {
                tx.put(
                    collection,
                    Some(&format!("{prefix}-{k:08}")),
                    payload(k as u64),
                )?;
            }
            Ok(())
        })?;
        i += m;
    }
    Ok(())
}

/// Result of figure 3.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushRun {
    pub ops: usize,
    pub push_s: f64,
    pub requests: u64,
    pub whole_sync_s: f64,
}

/// Figure 3, real side: `n` pending ops pushed by `sync_now` to the real server.
/// The push phase ends when the engine starts its first pull.
pub fn push_real(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    url: &str,
    tag: &str,
    n: usize,
) -> Result<PushRun> {
    let store = device(&dir.join(format!("f3-{tag}.db")), "pushed")?;
    fill(&store, "pushed", &format!("push-{tag}"), n)?;
    let timed = timed_link(url)?;
    let engine = engine(rt, &store, timed.clone());
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    let whole = t0.elapsed();
    check(&report, "push")?;
    let log = timed.stats();
    let push = log.first_pull_at.map_or(whole, |t| t.duration_since(t0));
    let counts = store.outbox_counts()?;
    if report.applied < n as u64 || counts.pending + counts.syncing > 0 {
        return Err(fail(format!(
            "push: {} of {n} applied, {} still pending",
            report.applied,
            counts.pending + counts.syncing
        )));
    }
    engine.shutdown();
    store.close();
    Ok(PushRun {
        ops: n,
        push_s: push.as_secs_f64(),
        requests: log.push.calls,
        whole_sync_s: whole.as_secs_f64(),
    })
}

// ---- figure 3 baseline: a minimal push endpoint ----

#[derive(serde::Deserialize, serde::Serialize)]
struct MiniOp {
    op_id: String,
    record_id: String,
    data: Value,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct MiniPush {
    ops: Vec<MiniOp>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct MiniAck {
    versions: Vec<i64>,
}

fn mini_apply(conn: &Mutex<Connection>, push: MiniPush) -> std::result::Result<MiniAck, String> {
    let mut conn = conn.lock().map_err(|e| e.to_string())?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let mut versions = Vec::with_capacity(push.ops.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO records (id, data, version, op_id) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data,
                   version = records.version + 1, op_id = excluded.op_id
                 RETURNING version",
            )
            .map_err(|e| e.to_string())?;
        for op in &push.ops {
            let v: i64 = stmt
                .query_row(params![op.record_id, op.data.to_string(), op.op_id], |r| {
                    r.get(0)
                })
                .map_err(|e| e.to_string())?;
            versions.push(v);
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(MiniAck { versions })
}

/// The baseline server: one route, JSON in, one SQLite transaction per batch (WAL,
/// `synchronous=FULL` like the real server), versions out. No auth, no validation.
async fn mini_server(db: &Path) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let conn = Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE records (id TEXT PRIMARY KEY, data TEXT NOT NULL,
           version INTEGER NOT NULL, op_id TEXT NOT NULL) WITHOUT ROWID;",
    )?;
    let conn = Arc::new(Mutex::new(conn));
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |axum::Json(push): axum::Json<MiniPush>| {
            let conn = Arc::clone(&conn);
            async move {
                let out = tokio::task::spawn_blocking(move || mini_apply(&conn, push)).await;
                match out {
                    Ok(Ok(ack)) => Ok(axum::Json(ack)),
                    Ok(Err(e)) => Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, e)),
                    Err(e) => Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/push"), handle))
}

/// Figure 3 baseline: the same `n` rows in a raw outbox, sent 500 per request (the
/// engine's batch size) to the minimal endpoint, each acknowledged batch marked synced
/// in one transaction.
pub fn push_baseline(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    tag: &str,
    n: usize,
) -> Result<PushRun> {
    let mut client = raw_connection(&dir.join(format!("f3-raw-{tag}.db")), "FULL")?;
    let mut i = 0;
    while i < n {
        let m = 1000.min(n - i);
        let tx = client.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for k in i..i + m {
            raw_put(&tx, &format!("push-{k:08}"), &payload(k as u64), now_ms())?;
        }
        tx.commit()?;
        i += m;
    }
    let (url, server) = rt.block_on(mini_server(&dir.join(format!("f3-mini-{tag}.db"))))?;
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let mut requests = 0u64;
    loop {
        let rows: Vec<(i64, String, String, String)> = {
            let mut stmt = client.prepare_cached(
                "SELECT id, op_id, record_id, data FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 500",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if rows.is_empty() {
            break;
        }
        let ops = rows
            .iter()
            .map(|(_, op_id, record_id, data)| {
                Ok(MiniOp {
                    op_id: op_id.clone(),
                    record_id: record_id.clone(),
                    data: serde_json::from_str(data)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let body = serde_json::to_vec(&MiniPush { ops })?;
        let ack: MiniAck = rt.block_on(async {
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
                .error_for_status()?;
            resp.json::<MiniAck>().await
        })?;
        requests += 1;
        if ack.versions.len() != rows.len() {
            return Err(fail("baseline endpoint answered the wrong number of acks"));
        }
        let tx = client.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for ((id, _, record_id, _), v) in rows.iter().zip(&ack.versions) {
            tx.prepare_cached("UPDATE outbox SET state = 'synced' WHERE id = ?1")?
                .execute([id])?;
            tx.prepare_cached(
                "UPDATE records SET version = ?1, sync_state = 'synced' WHERE collection = 'answers' AND id = ?2",
            )?
            .execute(params![v, record_id])?;
        }
        tx.commit()?;
    }
    let el = t0.elapsed();
    server.abort();
    Ok(PushRun {
        ops: n,
        push_s: el.as_secs_f64(),
        requests,
        whole_sync_s: el.as_secs_f64(),
    })
}

// ---- seeding the real server ----

/// Puts `n` records (`data(k)` for the k-th) into `collection` on the real server
/// through protocol v1 itself (1,000 ops per push, the server's maximum), as other
/// devices would have.
pub fn seed(
    rt: &tokio::runtime::Runtime,
    url: &str,
    collection: &str,
    n: usize,
    data: fn(u64) -> Value,
) -> Result<()> {
    let transport = HttpTransport::new(url, HttpTimeouts::default())?;
    let client_id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let mut i = 0;
    while i < n {
        let m = 1000.min(n - i);
        let ops = (i..i + m)
            .map(|k| {
                let data = match data(k as u64) {
                    Value::Object(o) => Some(o),
                    _ => None,
                };
                Op {
                    op_id: uuid::Uuid::new_v4().to_string(),
                    collection: collection.to_owned(),
                    record_id: format!("{collection}-{k:08}"),
                    kind: OpKind::Put,
                    base_version: None,
                    data,
                    hlc: format!("{now:013}-{:05}-00000000seed0000", k % 100_000),
                    force: false,
                }
            })
            .collect();
        let request = PushRequest {
            client_id: client_id.clone(),
            ops,
        };
        let answer = rt.block_on(transport.push(TOKEN, &request))?;
        if answer.results.len() != m {
            return Err(fail("seeding: wrong number of results"));
        }
        i += m;
    }
    Ok(())
}

// ---- figure 4 ----

/// Result of figure 4, real side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullRun {
    pub changes: u64,
    pub whole_sync_s: f64,
    /// Time spent inside pull requests. The engine applies page k while it fetches
    /// page k+1, so this overlaps apply time and cannot be subtracted from the whole.
    pub network_overlapped_s: f64,
    pub requests: u64,
    /// Bytes the first sync moved both ways, bodies and heads, as the engine counts them.
    pub wire_bytes: u64,
    /// The synced records' own JSON, one per line, gzipped at the default level: what
    /// the data alone would cost on the wire.
    pub records_gzip_bytes: u64,
}

/// Figure 4, real side: a fresh device pulls the `n` seeded changes of `collection`;
/// the whole first sync is timed (network and apply overlap inside the engine).
pub fn pull_real(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    url: &str,
    collection: &str,
    tag: &str,
) -> Result<PullRun> {
    let path = dir.join(format!("f4-{tag}.db"));
    let store = device(&path, collection)?;
    let timed = timed_link(url)?;
    let engine = engine(rt, &store, timed.clone());
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    let whole = t0.elapsed();
    check(&report, "pull")?;
    let log = timed.stats();
    let network = log.pull.time + log.push.time;
    engine.shutdown();
    store.close();
    Ok(PullRun {
        changes: report.pulled,
        whole_sync_s: whole.as_secs_f64(),
        network_overlapped_s: network.as_secs_f64(),
        requests: log.pull.calls,
        wire_bytes: report.bytes_sent + report.bytes_received,
        records_gzip_bytes: records_gzip_bytes(&path, collection)?,
    })
}

/// The gzip (default level) of the JSON of every record of `collection` in the store at
/// `path`, one record a line.
fn records_gzip_bytes(path: &Path, collection: &str) -> Result<u64> {
    let conn = Connection::open(path)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut rows =
        conn.prepare("SELECT data FROM records WHERE collection = ?1 AND NOT deleted")?;
    let mut rows = rows.query(params![collection])?;
    while let Some(row) = rows.next()? {
        let data: String = row.get(0)?;
        gz.write_all(data.as_bytes())?;
        gz.write_all(b"\n")?;
    }
    Ok(gz.finish()?.len() as u64)
}

/// Fetches every page of `collection` the way the engine does (untimed), for the
/// baseline to apply.
pub fn fetch_pages(
    rt: &tokio::runtime::Runtime,
    url: &str,
    collection: &str,
) -> Result<Vec<PullResponse>> {
    let transport = HttpTransport::new(url, HttpTimeouts::default())?;
    let mut pages = Vec::new();
    let mut since = None;
    loop {
        let params = PullParams {
            since: since.clone(),
            limit: SyncConfig::default().pull_limit,
            collections: vec![collection.to_owned()],
            ..PullParams::default()
        };
        let page = rt.block_on(transport.pull(TOKEN, &params))?;
        since = Some(page.cursor.clone());
        let more = page.has_more && !page.changes.is_empty();
        pages.push(page);
        if !more {
            break;
        }
    }
    Ok(pages)
}

/// Figure 4 baseline: the same pages upserted raw, one transaction per page with its
/// cursor, data and synced base written like the store keeps them.
pub fn pull_baseline(dir: &Path, pages: &[PullResponse], tag: &str) -> Result<(u64, Duration)> {
    let mut conn = raw_connection(&dir.join(format!("f4-raw-{tag}.db")), "FULL")?;
    let t0 = Instant::now();
    let mut n = 0u64;
    for page in pages {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for c in &page.changes {
            let data = c.data.as_ref().map(serde_json::to_string).transpose()?;
            tx.prepare_cached(
                "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state,
                   updated_at, base, base_hlc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'synced', ?7, ?3, ?6)
                 ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
                   deleted = excluded.deleted, version = excluded.version, hlc = excluded.hlc,
                   sync_state = 'synced', updated_at = excluded.updated_at,
                   base = excluded.base, base_hlc = excluded.base_hlc",
            )?
            .execute(params![
                c.collection,
                c.record_id,
                data,
                c.deleted,
                c.version,
                c.hlc,
                now_ms()
            ])?;
            n += 1;
        }
        if let Some(c) = page.changes.first() {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO cursors (collection, cursor) VALUES (?1, ?2)",
            )?
            .execute(params![c.collection, page.cursor])?;
        }
        tx.commit()?;
    }
    Ok((n, t0.elapsed()))
}

// ---- figure 6 ----

/// Result of figure 6.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WireRun {
    pub ops: usize,
    pub batched_requests: u64,
    pub batched_bytes: u64,
    pub batched_s: f64,
    /// The same ops as one uncompressed JSON push body.
    pub json_bytes: u64,
    pub naive_requests: u64,
    pub naive_bytes: u64,
    pub naive_s: f64,
}

/// Figure 6: requests and request-body bytes to push `n` ops, by the engine and by a
/// naive loop posting one op per request (plain JSON) to the same server.
pub fn wire(rt: &tokio::runtime::Runtime, dir: &Path, url: &str, n: usize) -> Result<WireRun> {
    // The naive loop sends another device's ops, so both create new records.
    let naive_store = device(&dir.join("f6-naive.db"), "wire")?;
    fill(&naive_store, "wire", "naive", n)?;
    let entries = naive_store.outbox_entries()?;
    let http = reqwest::Client::new();
    let push_url = format!("{url}v1/push");
    let t0 = Instant::now();
    let (mut naive_requests, mut naive_bytes) = (0u64, 0u64);
    for e in &entries {
        let body = serde_json::to_vec(&PushRequest {
            client_id: naive_store.client_id().to_owned(),
            ops: vec![e.to_op()],
        })?;
        naive_bytes += body.len() as u64;
        naive_requests += 1;
        rt.block_on(async {
            http.post(&push_url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await
        })?;
    }
    let naive_s = t0.elapsed().as_secs_f64();
    naive_store.close();

    let store = device(&dir.join("f6.db"), "wire")?;
    fill(&store, "wire", "batched", n)?;
    let ops: Vec<Op> = store.outbox_entries()?.iter().map(|e| e.to_op()).collect();
    let json_bytes = serde_json::to_vec(&PushRequest {
        client_id: store.client_id().to_owned(),
        ops,
    })?
    .len() as u64;
    let timed = timed_link(url)?;
    let engine = engine(rt, &store, timed.clone());
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    check(&report, "wire")?;
    let log = timed.stats();
    let batched_s = log
        .first_pull_at
        .map_or(t0.elapsed(), |t| t.duration_since(t0))
        .as_secs_f64();
    engine.shutdown();
    store.close();
    Ok(WireRun {
        ops: n,
        batched_requests: log.push.calls,
        batched_bytes: log.push.bytes_sent,
        batched_s,
        json_bytes,
        naive_requests,
        naive_bytes,
        naive_s,
    })
}

/// Figure 5, in a child process so its peak RSS is the device's alone: a fresh device
/// syncs `collection` from the server. Prints one JSON line.
pub fn initial_sync_child(url: &str, db: &Path, collection: &str) -> Result<()> {
    let rt = runtime()?;
    let store = device(db, collection)?;
    let transport = Arc::new(HttpTransport::new(url, HttpTimeouts::default())?);
    let engine = engine(&rt, &store, transport);
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    let secs = t0.elapsed().as_secs_f64();
    check(&report, "initial sync")?;
    let count = store.count(collection, &[])?;
    engine.shutdown();
    store.close();
    let out = serde_json::json!({
        "secs": secs,
        "pulled": report.pulled,
        "records": count,
        "vm_hwm_kib": crate::util::vm_hwm_kib(),
    });
    println!("{out}");
    Ok(())
}
