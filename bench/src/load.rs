//! Figure 11: the server under many devices at once, on SQLite, on PostgreSQL, and as
//! two processes over one PostgreSQL, against a minimal client that writes the same
//! rows straight into PostgreSQL.
//!
//! The devices are the test kit's simulated ones ([`outpost_testkit::run_load`]): real
//! HTTP, protocol v1, a user and team each, push 20 answers then pull, a conflict now
//! and then. The baseline runs the same devices' scripts with no server between them
//! and the database: one transaction per push of 20, the same record, answer and audit
//! rows, the same pull query shape, through a pool of as many connections as one
//! server process has. So the ratio is what the server costs on top of the rows it
//! must write: HTTP, JSON, auth, its locks and ordered commits, the audit chain.

use std::path::Path;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use outpost_testkit::{
    Backend, DeviceScript, LOAD_COLLECTION, LoadPlan, LoadReport, TestDb, TestServer, load_config,
    load_team, load_user, run_load,
};
use serde_json::json;

use crate::util::{Latency, Result, fail};

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadRun {
    pub what: String,
    pub devices: usize,
    pub ops: u64,
    pub conflicts: u64,
    pub deferred: u64,
    pub retries: u64,
    pub requests: u64,
    pub wall_s: f64,
    pub ops_per_s: f64,
    pub requests_per_s: f64,
    pub push: Latency,
    pub pull: Latency,
    /// Peak RSS of each server process, MiB.
    pub rss_mib: Vec<f64>,
}

impl LoadRun {
    fn of(what: &str, r: &LoadReport, rss_mib: Vec<f64>) -> LoadRun {
        let wall = r.wall.as_secs_f64().max(1e-9);
        LoadRun {
            what: what.to_owned(),
            devices: r.devices,
            ops: r.ops,
            conflicts: r.conflicts,
            deferred: r.deferred,
            retries: r.retries,
            requests: r.requests,
            wall_s: wall,
            ops_per_s: r.ops as f64 / wall,
            requests_per_s: r.requests as f64 / wall,
            push: Latency::of(&r.push_latency),
            pull: Latency::of(&r.pull_latency),
            rss_mib,
        }
    }
}

/// The plan for `devices` devices doing about `ops` ops in all (two rounds at least).
pub fn plan(devices: usize, ops: usize) -> LoadPlan {
    LoadPlan {
        devices,
        rounds: (ops / (devices * 20).max(1)).max(2),
        ops_per_push: 20,
        conflict_every: 10,
        repeat_every: 0,
    }
}

/// The real server: `processes` of them over one database of `backend`, devices
/// spread over them.
pub fn real(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    backend: &Backend,
    processes: usize,
    plan: LoadPlan,
) -> Result<LoadRun> {
    let first = TestServer::builder(backend)
        .binary(bin)
        .env("RUST_LOG", "warn")
        .extra(&load_config(plan.devices))
        .try_start()?;
    let mut servers = vec![first];
    while servers.len() < processes {
        let next = servers[0].another();
        servers.push(next);
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url("")).collect();
    let report = rt.block_on(run_load(&urls, plan, false)).map_err(fail)?;
    let rss = servers
        .iter()
        .map(|s| s.peak_rss().map_or(f64::NAN, |b| b as f64 / 1048576.0))
        .collect();
    let what = match backend {
        Backend::Sqlite => "SQLite".to_owned(),
        Backend::Postgres(_) => format!("PostgreSQL, {processes} process(es)"),
    };
    Ok(LoadRun::of(&what, &report, rss))
}

/// Connections in the baseline's pool: what one server process has.
const POOL: usize = 16;

const SCHEMA: &str = "
CREATE TABLE records (collection TEXT NOT NULL, scope TEXT NOT NULL, record_id TEXT NOT NULL,
    data TEXT, deleted BOOLEAN NOT NULL, version BIGINT NOT NULL, seq BIGINT NOT NULL UNIQUE,
    hlc TEXT NOT NULL, owner TEXT NOT NULL, team TEXT NOT NULL, created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL, PRIMARY KEY (collection, scope, record_id));
CREATE INDEX records_pull ON records (collection, team, seq);
CREATE SEQUENCE seqs;
CREATE TABLE ops (user_name TEXT NOT NULL, op_id TEXT NOT NULL, answer TEXT NOT NULL,
    at BIGINT NOT NULL, PRIMARY KEY (user_name, op_id));
CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, user_name TEXT NOT NULL,
    client_id TEXT NOT NULL, op_id TEXT NOT NULL, collection TEXT NOT NULL,
    record_id TEXT NOT NULL, kind TEXT NOT NULL, old_version BIGINT, new_version BIGINT);
CREATE INDEX audit_op ON audit (op_id);
";

/// The baseline: the same devices' pushes and pulls as SQL on a fresh database of the
/// PostgreSQL server at `admin`.
pub fn baseline(rt: &tokio::runtime::Runtime, admin: &str, plan: LoadPlan) -> Result<LoadRun> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::new(&Backend::Postgres(admin.to_owned()), dir.path());
    let report = rt.block_on(async {
        let config: tokio_postgres::Config = db.database().parse()?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL)
            .runtime(Runtime::Tokio1)
            .build()?;
        pool.get().await?.batch_execute(SCHEMA).await?;
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(plan.devices + 1));
        let tasks: Vec<_> = (0..plan.devices)
            .map(|i| {
                let (pool, start) = (pool.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    raw_device(&pool, i, plan).await
                })
            })
            .collect();
        start.wait().await;
        let t0 = Instant::now();
        let mut all = LoadReport {
            devices: plan.devices,
            ..LoadReport::default()
        };
        for t in tasks {
            all.absorb(t.await??);
        }
        all.wall = t0.elapsed();
        Ok::<_, crate::util::BoxError>(all)
    })?;
    Ok(LoadRun::of(
        "baseline: SQL straight into PostgreSQL",
        &report,
        vec![],
    ))
}

/// One device of the baseline: each push one transaction, each pull one query.
async fn raw_device(pool: &Pool, i: usize, plan: LoadPlan) -> Result<LoadReport> {
    let (user, team) = (load_user(i), load_team(i));
    let mut script = DeviceScript::new(i, plan);
    let mut r = LoadReport::default();
    let mut cursor = 0i64;
    for round in 0..plan.rounds {
        let t = Instant::now();
        let mut c = pool.get().await?;
        let tx = c.transaction().await?;
        let now = crate::util::now_ms();
        for op in script.push(round) {
            let data = op.data.to_string();
            let hlc = format!("{now:013}-00000-{i:016x}");
            // A create inserts unless the record exists; an edit updates on its base.
            let (sql, last): (_, &(dyn tokio_postgres::types::ToSql + Sync)) = match &op.base {
                None => (
                    "INSERT INTO records (collection, scope, record_id, data, deleted,
                       version, seq, hlc, owner, team, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, false, 1, nextval('seqs'), $5, $7, $2, $6, $6)
                     ON CONFLICT DO NOTHING RETURNING version, seq",
                    &user,
                ),
                Some(base) => (
                    "UPDATE records SET data = $4, version = version + 1,
                       seq = nextval('seqs'), hlc = $5, updated_at = $6
                     WHERE collection = $1 AND scope = $2 AND record_id = $3
                       AND version = $7 RETURNING version, seq",
                    base,
                ),
            };
            let s = tx.prepare_cached(sql).await?;
            let row = tx
                .query_opt(
                    &s,
                    &[
                        &LOAD_COLLECTION,
                        &team,
                        &op.record_id,
                        &data,
                        &hlc,
                        &now,
                        last,
                    ],
                )
                .await?;
            let answer = match row {
                Some(row) => {
                    let (version, seq): (i64, i64) = (row.get(0), row.get(1));
                    script.applied(&op.record_id, version);
                    let s = tx
                        .prepare_cached(
                            "INSERT INTO audit (at, user_name, client_id, op_id, collection,
                               record_id, kind, old_version, new_version)
                             VALUES ($1, $2, $2, $3, $4, $5, 'put', $6, $7)",
                        )
                        .await?;
                    tx.execute(
                        &s,
                        &[
                            &now.to_string(),
                            &user,
                            &op.op_id,
                            &LOAD_COLLECTION,
                            &op.record_id,
                            &op.base,
                            &version,
                        ],
                    )
                    .await?;
                    json!({"op_id": op.op_id, "status": "applied", "version": version, "seq": seq})
                }
                None => {
                    r.conflicts += 1;
                    let s = tx
                        .prepare_cached(
                            "SELECT version, seq, data FROM records
                             WHERE collection = $1 AND scope = $2 AND record_id = $3",
                        )
                        .await?;
                    let cur = tx
                        .query_opt(&s, &[&LOAD_COLLECTION, &team, &op.record_id])
                        .await?;
                    let current = cur.map(|c| {
                        json!({"version": c.get::<_, i64>(0), "seq": c.get::<_, i64>(1),
                               "data": c.get::<_, Option<String>>(2)})
                    });
                    json!({"op_id": op.op_id, "status": "conflict", "current": current})
                }
            };
            let s = tx
                .prepare_cached(
                    "INSERT INTO ops (user_name, op_id, answer, at) VALUES ($1, $2, $3, $4)",
                )
                .await?;
            tx.execute(&s, &[&user, &op.op_id, &answer.to_string(), &now])
                .await?;
            r.ops += 1;
        }
        tx.commit().await?;
        drop(c);
        r.push_latency.push(t.elapsed());
        r.requests += 1;
        loop {
            let t = Instant::now();
            let c = pool.get().await?;
            let s = c
                .prepare_cached(
                    "SELECT record_id, version, seq, deleted, data, hlc, updated_at FROM records
                     WHERE collection = $1 AND team = $2 AND seq > $3 ORDER BY seq LIMIT 500",
                )
                .await?;
            let rows = c.query(&s, &[&LOAD_COLLECTION, &team, &cursor]).await?;
            drop(c);
            r.pull_latency.push(t.elapsed());
            r.requests += 1;
            if let Some(last) = rows.last() {
                cursor = last.get(2);
            }
            if rows.len() < 500 {
                break;
            }
        }
    }
    Ok(r)
}

/// `d` in milliseconds, for the table.
pub fn ms(us: f64) -> String {
    let d = Duration::from_secs_f64(us / 1e6);
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}
