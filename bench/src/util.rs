//! Shared pieces: the error type, latency statistics, the record payload every figure
//! writes, and the raw-SQLite baseline's connection.
//!
//! The baselines must do the same physical work as the code they are compared with, so
//! the payload (about 300 bytes of JSON) and the pragmas live here, in one place, and
//! the tables are the device's own schema, rather than being re-invented by each figure.

use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Value, json};

/// Errors of the benchmark binary: anything, boxed, with a message for the user.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// An error from a message.
pub fn fail(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

/// A record of about 300 bytes of JSON, different for each `i`.
pub fn payload(i: u64) -> Value {
    json!({
        "patient": format!("p-{i:08}"),
        "village": "Kole",
        "question": format!("q-{:03}", i % 200),
        "answer": "The patient reports fever for three days, no cough, drinking well.",
        "score": i % 97,
        "checked": i.is_multiple_of(2),
        "notes": "Follow-up visit planned next week; referred to the district clinic.",
        "visit": i,
    })
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub total_s: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        let total: f64 = v.iter().sum();
        let pick = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
            v.get(idx.min(v.len() - 1)).copied().unwrap_or(0.0)
        };
        Latency {
            n: v.len(),
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            mean_us: if v.is_empty() {
                0.0
            } else {
                total / v.len() as f64
            },
            total_s: total / 1e6,
        }
    }

    /// Operations per second over the summed sample time.
    pub fn ops_per_s(&self) -> f64 {
        if self.total_s > 0.0 {
            self.n as f64 / self.total_s
        } else {
            0.0
        }
    }
}

/// A raw connection with the store's pragmas: WAL, the given `synchronous`, temp
/// tables in memory. A new file gets the device's own schema (`outpost_core::SCHEMA_SQL`:
/// the same tables and indexes, so the raw baseline pays for the same B-tree work);
/// a file that has it already is used as it is.
pub fn raw_connection(path: &std::path::Path, synchronous: &str) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(format!("WAL not enabled: {mode}")));
    }
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if tables == 0 {
        conn.execute_batch(outpost_core::SCHEMA_SQL)?;
    }
    Ok(conn)
}

/// The baseline's write: one record row and one outbox row, the same sizes as the
/// store writes (data serialised once per row, a UUID op id, an HLC-shaped stamp).
pub fn raw_put(tx: &rusqlite::Transaction<'_>, id: &str, data: &Value, now: i64) -> Result<()> {
    let json = serde_json::to_string(data)?;
    let hlc = format!("{now:013}-00000-0123456789abcdef");
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, deleted, version, hlc, sync_state, updated_at)
         VALUES ('answers', ?1, ?2, 0, 0, ?3, 'pending', ?4)
         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data,
           hlc = excluded.hlc, updated_at = excluded.updated_at",
    )?
    .execute(rusqlite::params![id, json, hlc, now])?;
    tx.prepare_cached(
        "INSERT INTO outbox (op_id, collection, record_id, kind, data, hlc, state, created_at, bytes)
         VALUES (?1, 'answers', ?2, 'put', ?3, ?4, 'pending', ?5, ?6)",
    )?
    .execute(rusqlite::params![
        uuid::Uuid::new_v4().to_string(),
        id,
        json,
        hlc,
        now,
        json.len() as i64
    ])?;
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Peak resident set size of this process (`VmHWM`), in KiB; 0 where unknown.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
