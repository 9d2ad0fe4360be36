//! Figure 12: what a push and a pull page cost as the server's table grows, so a
//! deployment that has collected millions of records answers as fast as a new one.
//!
//! One server per backend; its `records` table is grown in steps straight in its
//! database (copies of one record pushed through the API, with fresh ids and seqs
//! past the counter, then `ANALYZE` on PostgreSQL), and at each step the same requests
//! are timed: a push of 20 new records, the pull of those 20 from the cursor before
//! them (a device's everyday sync, in a small team of a big table), and a first page
//! of 500 from the beginning (in the team that holds the table's rows). The baseline
//! of each is the same request at the smallest step, in the same run: flat means a
//! ratio near 1.

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_testkit::{AMINA, Backend, CHIOMA, LOAD_COLLECTION, TestServer, answer_data, put};
use serde_json::json;

use crate::util::{Latency, Result, fail};

/// The timings at one table size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrowthPoint {
    pub records: usize,
    pub seed_s: f64,
    pub push: Latency,
    pub pull_recent: Latency,
    pub first_page: Latency,
}

/// The backend's name for the table.
pub fn name(b: &Backend) -> &'static str {
    match b {
        Backend::Sqlite => "SQLite",
        Backend::Postgres(_) => "PostgreSQL",
    }
}

/// Grows one server's table through `sizes` (ascending), timing `samples` of each
/// request at each.
pub fn run(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    backend: &Backend,
    sizes: &[usize],
    samples: usize,
    log: &dyn Fn(&str),
) -> Result<Vec<GrowthPoint>> {
    let s = TestServer::builder(backend)
        .binary(bin)
        .env("RUST_LOG", "warn")
        .try_start()?;
    let template = put(LOAD_COLLECTION, "template", None, answer_data(0, 0, 0));
    let r = rt.block_on(s.push(AMINA, vec![template]));
    if r.first().map(|r| &r["status"]) != Some(&json!("applied")) {
        return Err(fail(format!("template push: {r:?}")));
    }
    // Chioma's cursor: her team holds only what she pushes below.
    let (_, mut cursor) =
        rt.block_on(s.pull_all(CHIOMA, &format!("&collections={LOAD_COLLECTION}")));
    let mut have = 1usize;
    let mut points = Vec::new();
    for (step, &n) in sizes.iter().enumerate() {
        let t = Instant::now();
        if n > have {
            log(&format!(
                "12: {}: growing the table to {n} records",
                name(backend)
            ));
            grow(rt, &s, n - have, step)?;
            have = n;
        }
        let seed_s = t.elapsed().as_secs_f64();
        let (mut push, mut recent, mut first) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..samples {
            let ops: Vec<serde_json::Value> = (0..20)
                .map(|i| {
                    put(
                        LOAD_COLLECTION,
                        &format!("c-{step}-{k}-{i}"),
                        None,
                        answer_data(1, k, i),
                    )
                })
                .collect();
            let t = Instant::now();
            let (st, body) =
                rt.block_on(s.push_raw(CHIOMA, &json!({"client_id": "growth", "ops": ops})));
            push.push(t.elapsed());
            if st != 200 {
                return Err(fail(format!("push: {st} {body}")));
            }
            let t = Instant::now();
            // Named, as the engine always names the collection it pulls.
            let (st, page) = rt.block_on(s.pull_raw(
                CHIOMA,
                &format!("?since={cursor}&collections={LOAD_COLLECTION}"),
            ));
            recent.push(t.elapsed());
            let got = page["changes"].as_array().map_or(0, Vec::len);
            if st != 200 || got != 20 {
                return Err(fail(format!("pull after a push: {st}, {got} changes")));
            }
            cursor = page["cursor"].as_str().unwrap_or_default().to_owned();
            let t = Instant::now();
            let (st, page) = rt
                .block_on(s.pull_raw(AMINA, &format!("?limit=500&collections={LOAD_COLLECTION}")));
            first.push(t.elapsed());
            let got = page["changes"].as_array().map_or(0, Vec::len);
            if st != 200 || got != 500.min(have) {
                return Err(fail(format!("first page: {st}, {got} changes")));
            }
        }
        points.push(GrowthPoint {
            records: n,
            seed_s,
            push: Latency::of(&push),
            pull_recent: Latency::of(&recent),
            first_page: Latency::of(&first),
        });
    }
    Ok(points)
}

/// Adds `n` copies of the template record, ids `g<step>-<i>`, seqs past the counter.
fn grow(rt: &tokio::runtime::Runtime, s: &TestServer, n: usize, step: usize) -> Result<()> {
    let expr = |col: &str| match col {
        "record_id" => format!("'g{step}-' || i"),
        "seq" => "(SELECT value FROM meta WHERE key = 'last_seq') + i".to_owned(),
        c => format!("t.{c}"),
    };
    match s.db() {
        outpost_testkit::TestDb::Sqlite(path) => {
            let mut conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            let cols: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info('records')")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(&format!(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
                 INSERT INTO records ({}) SELECT {} FROM records t, c
                 WHERE t.collection = '{LOAD_COLLECTION}' AND t.record_id = 'template';
                 UPDATE meta SET value = value + {n} WHERE key = 'last_seq';",
                cols.join(", "),
                cols.iter().map(|c| expr(c)).collect::<Vec<_>>().join(", ")
            ))?;
            tx.commit()?;
        }
        outpost_testkit::TestDb::Postgres { url, .. } => {
            let url = url.clone();
            rt.block_on(async move {
                let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                let task = tokio::spawn(conn);
                let cols: Vec<String> = c
                    .query(
                        "SELECT column_name::text FROM information_schema.columns
                         WHERE table_name = 'records' AND table_schema = current_schema()
                         ORDER BY ordinal_position",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let tx = c.transaction().await?;
                tx.batch_execute(&format!(
                    "SELECT value FROM meta WHERE key = 'last_seq' FOR UPDATE;
                     INSERT INTO records ({}) SELECT {} FROM records t, generate_series(1, {n}) i
                     WHERE t.collection = '{LOAD_COLLECTION}' AND t.record_id = 'template';
                     UPDATE meta SET value = value + {n} WHERE key = 'last_seq';",
                    cols.join(", "),
                    cols.iter().map(|c| expr(c)).collect::<Vec<_>>().join(", ")
                ))
                .await?;
                tx.commit().await?;
                c.batch_execute("ANALYZE records").await?;
                drop(c);
                let _ = task.await;
                Ok::<_, crate::util::BoxError>(())
            })?;
        }
    }
    Ok(())
}
