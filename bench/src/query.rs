//! Figure 9: local queries at district scale, against raw rusqlite on the same file.
//!
//! A fresh device pulls a district (a person a record: one of 100 villages, a common
//! first name and surname, about 300 bytes) from the real server, alternately with and
//! without a screen observing a 50-row query, which gives 9d. The synced file is then
//! reopened with a search field declared, and each query of 9a–9c runs through the
//! public `Store` API and, alternating with it, as the SQL an app would write by hand
//! on a read-only connection to the same file: the same rows, the same index (the
//! store's own, built on the same `json_extract` expressions) and the same planner
//! statistics, so the ratio is the cost of the API, not of a different plan.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_core::{
    CollectionConfig, ConflictStrategy, Filter, HttpTimeouts, HttpTransport, Query, Record, Store,
    StoreConfig,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::net;
use crate::util::{Latency, Result, fail};

pub const COLLECTION: &str = "people";

const FIRST: [&str; 40] = [
    "Amina", "Aminata", "Abdul", "Ama", "Bako", "Binta", "Chidi", "Chioma", "Daudi", "Dede", "Esi",
    "Emeka", "Fatou", "Femi", "Grace", "Gift", "Hassan", "Halima", "Ibrahim", "Ifeoma", "Joy",
    "Juma", "Kwame", "Kemi", "Lindiwe", "Lamin", "Musa", "Mariam", "Nia", "Ngozi", "Obi", "Oumou",
    "Precious", "Rahel", "Sipho", "Salma", "Tunde", "Thandi", "Yusuf", "Zainab",
];

const LAST: [&str; 40] = [
    "Okafor", "Mensah", "Diallo", "Banda", "Abubakar", "Kamara", "Nwosu", "Traore", "Osei",
    "Phiri", "Mwangi", "Adeyemi", "Ndlovu", "Keita", "Otieno", "Sesay", "Bello", "Asante", "Moyo",
    "Toure", "Ochieng", "Eze", "Boateng", "Dlamini", "Sow", "Kariuki", "Okeke", "Koroma", "Zulu",
    "Sankara", "Achieng", "Ibe", "Appiah", "Nkosi", "Ba", "Wanjiru", "Obi", "Conteh", "Khumalo",
    "Cisse",
];

/// The k-th person of the district: village by `k`, name and the rest mixed from it.
pub fn person(k: u64) -> Value {
    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    json!({
        "name": format!("{} {}", FIRST[(h % 40) as usize], LAST[(h / 40 % 40) as usize]),
        "village": format!("v{:03}", k % 100),
        "born": format!("{}-{:02}-{:02}", 1950 + h % 60, 1 + h % 12, 1 + h % 28),
        "sex": if h.is_multiple_of(2) { "f" } else { "m" },
        "household": format!("h-{:06}", k / 5),
        "phone": format!("+2348{:09}", h % 1_000_000_000),
        "next_visit": format!("2026-{:02}-{:02}", 1 + h % 12, 1 + h % 28),
        "clinic": "Kole district health centre",
        "status": if h.is_multiple_of(3) { "due" } else { "seen" },
        "notes": "Antenatal follow-up; bring the vaccination card and the clinic's referral.",
        "visits": h % 9,
    })
}

fn config(search: bool) -> StoreConfig {
    let people = CollectionConfig::new(COLLECTION, ConflictStrategy::LastWriteWins)
        .with_index(&["village", "name"]);
    let people = if search {
        people.with_search(&["name"])
    } else {
        people
    };
    StoreConfig::default().with(people)
}

/// The screen of 9a and 9d: a village's people by name, 50 at a time.
fn village_page(village: &str) -> Query {
    Query::new()
        .matching(Filter::eq("village", village))
        .order_by("name", false)
        .limit(50)
}

// ---- 9d ----

/// When the observer delivered, and what.
type Delivery = (Instant, Vec<Record>);

/// One first sync of the district.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncRun {
    pub observed: bool,
    pub changes: u64,
    pub sync_s: f64,
    /// From the sync's start to the observer's last delivery or the sync's end,
    /// whichever is later.
    pub window_s: f64,
    /// The observer's query runs after its first, and its deliveries in all.
    pub reruns: u64,
    pub deliveries: u64,
    /// The shortest time between two deliveries.
    pub min_gap_ms: Option<f64>,
}

/// A fresh device's first sync of `COLLECTION`, with or without an observer of a
/// village's first page, into `db`.
pub fn first_sync(
    rt: &tokio::runtime::Runtime,
    url: &str,
    db: &Path,
    observed: bool,
) -> Result<SyncRun> {
    let store = Store::open(db, config(false))?;
    let transport = Arc::new(HttpTransport::new(url, HttpTimeouts::default())?);
    let engine = net::engine(rt, &store, transport);
    let query = village_page("v042");
    let delivered: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sub = if observed {
        let log = Arc::clone(&delivered);
        let listener = move |rows: &[Record]| {
            if let Ok(mut log) = log.lock() {
                log.push((Instant::now(), rows.to_vec()));
            }
        };
        let sub = store.observe(COLLECTION, &query, Arc::new(listener))?;
        // The screen is open before the sync starts.
        let give_up = Instant::now() + Duration::from_secs(10);
        while sub.stats().deliveries == 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(sub)
    } else {
        None
    };
    let t0 = Instant::now();
    let report = rt.block_on(engine.sync_now(None));
    let sync = t0.elapsed();
    net::check(&report, "first sync")?;
    let mut run = SyncRun {
        observed,
        changes: report.pulled,
        sync_s: sync.as_secs_f64(),
        window_s: sync.as_secs_f64(),
        reruns: 0,
        deliveries: 0,
        min_gap_ms: None,
    };
    if let Some(sub) = sub {
        // The last pages' re-run may still be waiting out its interval.
        let mut stats = sub.stats();
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = sub.stats();
            if now == stats || Instant::now() > give_up {
                break;
            }
            stats = now;
        }
        drop(sub);
        let log = delivered
            .lock()
            .map_err(|_| fail("observer log poisoned"))?;
        let Some((last_at, last)) = log.last() else {
            return Err(fail("9d: the observer delivered nothing"));
        };
        if *last != store.query(COLLECTION, &query)? {
            return Err(fail("9d: the observer's last delivery is not the result"));
        }
        run.window_s = run.window_s.max((*last_at - t0).as_secs_f64());
        run.reruns = stats.runs.saturating_sub(1);
        run.deliveries = stats.deliveries;
        run.min_gap_ms = log
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3)
            .reduce(f64::min);
    }
    engine.shutdown();
    store.close();
    Ok(run)
}

// ---- 9a–9c ----

/// The (store, raw) latencies of 9a, 9b and 9c, and what they returned.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Queries {
    pub records: u64,
    pub filter_order_limit: (Latency, Latency),
    pub count: (Latency, Latency),
    pub search: (Latency, Latency),
    pub village_count: u64,
    pub search_hits: usize,
    /// The baseline's query plans (9a, 9b, 9c).
    pub raw_plans: [String; 3],
}

const SEARCH: &str = "amin*";

/// The hand-written queries, on the store's file.
struct Raw {
    conn: Connection,
}

impl Raw {
    fn open(db: &Path) -> Result<Raw> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(db, flags)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(Raw { conn })
    }

    fn rows(&self, sql: &str, arg: &str) -> Result<Vec<(String, Value)>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([arg], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row?;
            out.push((id, serde_json::from_str(&data)?));
        }
        Ok(out)
    }

    /// 9a: a village's first 50 by name, on the index `(village, name, id)`.
    fn village_page(&self, village: &str) -> Result<Vec<(String, Value)>> {
        self.rows(RAW_PAGE, village)
    }

    /// 9b: how many live in a village.
    fn village_count(&self, village: &str) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(RAW_COUNT)?;
        Ok(stmt.query_row([village], |r| r.get::<_, i64>(0))?.max(0) as u64)
    }

    /// 9c: the first 50 whose name has a word starting with the prefix, by FTS5.
    fn search(&self, fts_query: &str) -> Result<Vec<(String, Value)>> {
        self.rows(RAW_SEARCH, fts_query)
    }

    /// SQLite's plan for `sql`, one line per step: the record that the baseline uses
    /// the index.
    fn plan(&self, sql: &str) -> Result<String> {
        let mut stmt = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps = stmt.query_map(["v042"], |r| r.get::<_, String>(3))?;
        Ok(steps.collect::<rusqlite::Result<Vec<_>>>()?.join("; "))
    }
}

const RAW_PAGE: &str = "SELECT id, data FROM records
    WHERE collection = 'people' AND deleted = 0 AND json_extract(data, '$.\"village\"') = ?1
    ORDER BY json_extract(data, '$.\"name\"'), id LIMIT 50";

const RAW_COUNT: &str = "SELECT count(*) FROM records
    WHERE collection = 'people' AND deleted = 0 AND json_extract(data, '$.\"village\"') = ?1";

const RAW_SEARCH: &str = "SELECT id, data FROM records
    WHERE collection = 'people' AND deleted = 0
      AND id IN (SELECT id FROM \"fts[people]\" WHERE \"fts[people]\" MATCH ?1)
    ORDER BY id LIMIT 50";

fn ids_of(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn raw_ids(rows: &[(String, Value)]) -> Vec<&str> {
    rows.iter().map(|(id, _)| id.as_str()).collect()
}

/// Times `iters` calls of each side, alternating which goes first; the first two
/// rounds warm caches and statements and are not counted.
fn alternate<A, B>(
    iters: usize,
    mut store: impl FnMut(usize) -> Result<A>,
    mut raw: impl FnMut(usize) -> Result<B>,
) -> Result<(Latency, Latency)> {
    let (mut s, mut r) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for i in 0..iters + 2 {
        for pass in 0..2 {
            let on_store = (pass == 0) == (i % 2 == 0);
            let t = Instant::now();
            // The answer is dropped inside the timing, as a screen's would be.
            if on_store {
                drop(store(i)?);
            } else {
                drop(raw(i)?);
            }
            let el = t.elapsed();
            if i >= 2 {
                if on_store { &mut s } else { &mut r }.push(el);
            }
        }
    }
    Ok((Latency::of(&s), Latency::of(&r)))
}

/// The village of the i-th iteration: a different one each time, the same for both.
fn village(i: usize) -> String {
    format!("v{:03}", (42 + i * 37) % 100)
}

/// 9a–9c on the synced file `db`, reopened with `name` declared as a search field.
pub fn queries(db: &Path, iters: usize) -> Result<Queries> {
    let store = Store::open(db, config(true))?;
    let raw = Raw::open(db)?;
    let records = store.count(COLLECTION, &[])?;
    // The same answers first: same rows in the same order, same count.
    for i in 0..3 {
        let v = village(i);
        let page = store.query(COLLECTION, &village_page(&v))?;
        if ids_of(&page) != raw_ids(&raw.village_page(&v)?) || page.is_empty() {
            return Err(fail(format!("9a: the store and raw SQL disagree on {v}")));
        }
        let n = store.count_where(COLLECTION, &Filter::eq("village", v.as_str()))?;
        if n != raw.village_count(&v)? {
            return Err(fail(format!("9b: the store and raw SQL disagree on {v}")));
        }
    }
    let search = Query::new().matching(Filter::search(SEARCH)).limit(50);
    let fts = "\"amin\"*";
    let hits = store.query(COLLECTION, &search)?;
    if ids_of(&hits) != raw_ids(&raw.search(fts)?) || hits.is_empty() {
        return Err(fail("9c: the store and raw FTS5 disagree"));
    }
    let filter_order_limit = alternate(
        iters,
        |i| Ok(store.query(COLLECTION, &village_page(&village(i)))?),
        |i| raw.village_page(&village(i)),
    )?;
    let count = alternate(
        iters,
        |i| Ok(store.count_where(COLLECTION, &Filter::eq("village", village(i)))?),
        |i| raw.village_count(&village(i)),
    )?;
    let searched = alternate(
        iters,
        |_| Ok(store.query(COLLECTION, &search)?),
        |_| raw.search(fts),
    )?;
    let village_count = raw.village_count("v042")?;
    let raw_plans = [
        raw.plan(RAW_PAGE)?,
        raw.plan(RAW_COUNT)?,
        raw.plan(RAW_SEARCH)?,
    ];
    drop(raw);
    store.close();
    Ok(Queries {
        records,
        filter_order_limit,
        count,
        search: searched,
        village_count,
        search_hits: hits.len(),
        raw_plans,
    })
}
