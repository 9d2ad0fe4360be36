//! Deterministic simulation: seeded schedules of edits, syncs and faults across several
//! devices and the server's real request handling, checked against Outpost's promises.
//!
//! A happy path proves little about a sync protocol; counterexamples hide in rare
//! interleavings of crashes, lost answers and retries. Each schedule is decided by its
//! seed: the test kit's server runs in [`Mode::Direct`] (its router called in
//! process: no sockets, no network timing), wall time is a fake clock advanced by the schedule,
//! and the faults the kit's layer injects on top are drawn from the same seeded
//! generator, so a failing seed replays. Two things still follow timing, not the seed:
//! two devices syncing at once reach the server in the order their SQLite threads
//! finish, and the engine's backoff jitter is unseeded; so a few schedules in a
//! hundred take another turn from run to run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::clock::{FakeClock, WallClock};
use outpost_core::{
    ConflictStrategy, Durability, Resolution, StaticToken, Store, StoreConfig, SyncConfig,
    SyncEngine, SyncOutcome,
};
use outpost_testkit::{
    AMINA, Backend, Fault, FaultyTransport, Hook, Mode, RequestKind, TestServer,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// What one schedule found. All zero means every promise held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimResult {
    pub lost: u64,
    pub duplicate_effects: u64,
    pub diverged: u64,
    pub stalled: u64,
    pub crdt_mismatch: u64,
    pub hlc_regressions: u64,
    /// What the schedule exercised (not failures).
    pub stats: SimStats,
}

/// Counts of what a schedule did, to show the faults really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub faults: u64,
    pub crashes: u64,
    pub server_restarts: u64,
    pub conflicts: u64,
    /// Records whose last write its device holds exactly, which that device's pulls
    /// leave out, and records whose last write the server merged into something else,
    /// which must come back to it: both kinds must occur for the check to mean much.
    pub own_exact: u64,
    pub own_merged: u64,
    /// Files attached and referenced from a record.
    pub files: u64,
}

impl SimResult {
    pub fn ok(&self) -> bool {
        SimResult {
            stats: SimStats::default(),
            ..*self
        } == SimResult::default()
    }

    pub fn add(&mut self, o: &SimResult) {
        self.lost += o.lost;
        self.duplicate_effects += o.duplicate_effects;
        self.diverged += o.diverged;
        self.stalled += o.stalled;
        self.crdt_mismatch += o.crdt_mismatch;
        self.hlc_regressions += o.hlc_regressions;
        self.stats.writes += o.stats.writes;
        self.stats.faults += o.stats.faults;
        self.stats.crashes += o.stats.crashes;
        self.stats.server_restarts += o.stats.server_restarts;
        self.stats.conflicts += o.stats.conflicts;
        self.stats.own_exact += o.stats.own_exact;
        self.stats.own_merged += o.stats.own_merged;
        self.stats.files += o.stats.files;
    }
}

const NOTE_IDS: [&str; 4] = ["n1", "n2", "n3", "n4"];
const TALLY_IDS: [&str; 2] = ["t1", "t2"];

fn strategies() -> [(&'static str, ConflictStrategy); 7] {
    [
        ("notes", ConflictStrategy::LastWriteWins),
        ("patients", ConflictStrategy::FieldMerge),
        ("plans", ConflictStrategy::Manual),
        ("central", ConflictStrategy::ServerWins),
        ("field", ConflictStrategy::ClientWins),
        ("tallies", ConflictStrategy::LastWriteWins),
        ("photos", ConflictStrategy::LastWriteWins),
    ]
}

/// Where a device that died mid-request is left: `Some(image)` to restore a crash
/// image taken mid-push, `None` inside to reopen the file as it is (mid-pull).
type CrashSlot = Arc<Mutex<Option<Option<PathBuf>>>>;

fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal"] {
        let src = PathBuf::from(format!("{}{suffix}", from.display()));
        let dst = PathBuf::from(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            let _ = std::fs::copy(&src, &dst);
        }
    }
    let _ = std::fs::remove_file(format!("{}-shm", to.display()));
}

/// A crash right after the server committed a request: mid-push nothing else writes
/// the device file, so a copy now is exactly what a power cut would leave (entries
/// still `syncing`). Mid-pull a page may be committing, so that crash reopens the file
/// once the sync ends.
fn crash_fault(device_db: &Path, slot: &CrashSlot) -> Fault {
    let (device_db, slot) = (device_db.to_owned(), Arc::clone(slot));
    Fault::DropResponseThen(Hook::new(move |kind| {
        let image = (kind == RequestKind::Push).then(|| {
            let image = PathBuf::from(format!("{}.crash", device_db.display()));
            copy_db(&device_db, &image);
            image
        });
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(image);
    }))
}

/// Arms `fault` for the next request of any kind, replacing one armed before.
fn arm(link: &FaultyTransport, fault: Option<Fault>) {
    link.clear_faults();
    if let Some(f) = fault {
        link.fail_next_request(f);
    }
}

struct SimDevice {
    path: PathBuf,
    store: Store,
    engine: SyncEngine,
    link: Arc<FaultyTransport>,
    crash: CrashSlot,
    /// The fault that makes this device die mid-request.
    crash_fault: Fault,
}

fn device_config() -> StoreConfig {
    let mut c = StoreConfig {
        durability: Durability::Normal,
        ..StoreConfig::default()
    };
    for (name, s) in strategies() {
        c = c.with_collection(name, s);
    }
    c
}

fn sync_config() -> SyncConfig {
    SyncConfig {
        batch: outpost_core::BatchLimits {
            max_ops: 3,
            max_bytes: 1 << 20,
        },
        pull_limit: 4,
        backoff_initial: std::time::Duration::from_millis(500),
        backoff_max: std::time::Duration::from_secs(8),
        // Two requests of one device in flight reach the server's writer in an order
        // set by thread timing; one at a time, a seed replays exactly.
        push_requests_in_flight: 1,
        ..SyncConfig::default()
    }
}

/// Gives a new device database replica and client ids drawn from the seed. Random ids
/// would decide ties between equal stamps differently on every run, and a seed must
/// replay exactly.
fn seed_identity(path: &Path, replica: u64, client: u128) {
    let client = uuid::Uuid::from_u128(client).to_string();
    #[allow(clippy::expect_used)]
    Store::seed_identity(path, device_config(), &format!("{replica:016x}"), &client)
        .expect("device identity");
}

impl SimDevice {
    fn open(path: &Path, server: &TestServer, clock: &Arc<FakeClock>) -> SimDevice {
        #[allow(clippy::expect_used)]
        let store = Store::open_with_clock(path, device_config(), clock.clone()).expect("device");
        let link = Arc::new(FaultyTransport::new(server.transport()));
        let crash = CrashSlot::default();
        let crash_fault = crash_fault(path, &crash);
        let engine = SyncEngine::new(
            store.clone(),
            link.clone(),
            Arc::new(StaticToken(AMINA.into())),
            sync_config(),
            tokio::runtime::Handle::current(),
        );
        SimDevice {
            path: path.to_owned(),
            store,
            engine,
            link,
            crash,
            crash_fault,
        }
    }

    /// Drops everything in memory and reopens from `image` (or the file as it is).
    fn crash_and_reopen(
        self,
        server: &TestServer,
        clock: &Arc<FakeClock>,
        image: Option<PathBuf>,
    ) -> SimDevice {
        let SimDevice {
            path,
            store,
            engine,
            ..
        } = self;
        engine.shutdown();
        drop(engine);
        drop(store); // no close(): a crash
        if let Some(image) = image {
            copy_db(&image, &path);
        }
        SimDevice::open(&path, server, clock)
    }
}

/// An acknowledged write, to check it was not lost.
#[derive(Debug, Clone)]
struct Ack {
    device: usize,
    collection: &'static str,
    id: String,
    hlc: String,
    /// Per device, the newest conflict-log id when the write returned: a conflict logged
    /// after the write has a larger id (wall time may have been set back meanwhile).
    marks: Vec<i64>,
    /// A delete of a record the server never had from this device: coalescing drops the
    /// create and the delete together, by design.
    delete: Option<bool>,
    /// The fields the write set: the whole record for a put, one field for a patch,
    /// `None` for a delete.
    fields: Option<Value>,
}

/// Runs one schedule. `steps` random actions, then the network heals.
pub async fn run_schedule(seed: u64, dir: &Path) -> SimResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = FakeClock::new(1_800_000_000_000);
    let mut server = TestServer::builder(&Backend::Sqlite)
        .mode(Mode::Direct)
        .dir(dir)
        .start();
    let n = rng.random_range(2..=5usize);
    let steps = rng.random_range(20..60usize);
    // Identities come from their own stream, so the schedule drawn from `rng` stays
    // what it was before they were seeded.
    let mut ids = StdRng::seed_from_u64(seed ^ 0x1d5e_ed1d);
    let mut devices: Vec<Option<SimDevice>> = (0..n)
        .map(|i| {
            let path = dir.join(format!("d{i}.db"));
            seed_identity(&path, ids.random(), ids.random());
            Some(SimDevice::open(&path, &server, &clock))
        })
        .collect();
    let mut acks: Vec<Ack> = Vec::new();
    // Files come from their own stream too, so schedules keep the steps they had.
    let mut files_rng = StdRng::seed_from_u64(seed ^ 0xf11e_5eed);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut increments: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut set_adds: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut result = SimResult::default();

    // Counter records exist on every device before the schedule starts.
    if let Some(d0) = devices[0].as_ref() {
        for t in TALLY_IDS {
            let _ = d0.store.put("tallies", Some(t), json!({"label": t}));
        }
        let _ = d0.engine.sync_now(None).await;
    }
    for d in devices.iter().flatten() {
        let _ = d.engine.sync_now(None).await;
    }

    for _ in 0..steps {
        let i = rng.random_range(0..n);
        let Some(d) = devices[i].take() else { continue };
        let roll = rng.random_range(0..100);
        if std::env::var_os("OUTPOST_SIM_TRACE").is_some() {
            let st = d.store.outbox_entries().unwrap_or_default();
            let st: Vec<_> = st
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}:{:?}:{}",
                        e.record_id,
                        e.kind.as_str(),
                        e.state,
                        e.base_version.unwrap_or(-1)
                    )
                })
                .collect();
            eprintln!("step d{i} roll {roll} outbox {st:?}");
        }
        let d = match roll {
            0..=44 => {
                if files_rng.random_bool(0.25) {
                    attach_step(&mut files_rng, &d, &mut files);
                }
                let before = acks.len();
                write_step(&mut rng, &d, i, &mut acks, &mut increments, &mut set_adds);
                if let Some(ack) = acks.get_mut(before) {
                    ack.marks = (0..n)
                        .map(|j| {
                            let store = if j == i {
                                Some(&d.store)
                            } else {
                                devices[j].as_ref().map(|x| &x.store)
                            };
                            store
                                .and_then(|s| s.conflict_log().ok())
                                .and_then(|l| l.last().map(|c| c.id))
                                .unwrap_or(0)
                        })
                        .collect();
                }
                d
            }
            45..=74 => {
                let fault = match rng.random_range(0..12) {
                    0 => Some(Fault::DropRequest),
                    1 => Some(Fault::DropResponse),
                    2 => Some(Fault::Duplicate),
                    3 => Some(Fault::ServerError),
                    4 => Some(Fault::RateLimited(Duration::from_secs(3))),
                    // An expired token.
                    5 => Some(Fault::Unauthorized),
                    6 => Some(d.crash_fault.clone()),
                    _ => None,
                };
                result.stats.faults += u64::from(fault.is_some());
                arm(&d.link, fault);
                // Sometimes two devices sync at once, interleaving their requests.
                let other = (rng.random_bool(0.3) && n > 1).then(|| (i + 1) % n);
                match other.and_then(|j| devices[j].as_ref()) {
                    Some(o) => {
                        let _ = tokio::join!(d.engine.sync_now(None), o.engine.sync_now(None));
                    }
                    None => {
                        let _ = d.engine.sync_now(None).await;
                    }
                }
                // Either device may have died mid-request (a fault armed earlier can
                // fire during another device's step): restore what it left.
                if let Some(o) = other.and_then(|j| devices[j].take()) {
                    let j = (i + 1) % n;
                    devices[j] = Some(reopen_if_crashed(o, &server, &clock, &mut result));
                }
                reopen_if_crashed(d, &server, &clock, &mut result)
            }
            75..=79 => {
                d.link.set_offline(!d.link.is_offline());
                d
            }
            80..=83 => {
                result.stats.crashes += 1;
                d.crash_and_reopen(&server, &clock, None)
            }
            84..=86 => {
                result.stats.server_restarts += 1;
                server.restart();
                d
            }
            87..=89 => {
                // A device clock set back by hand: stamps must still only go forward.
                let now = clock.now_ms();
                clock.set(now.saturating_sub(rng.random_range(1..30_000)));
                d
            }
            _ => {
                clock.advance(rng.random_range(100..10_000));
                d
            }
        };
        devices[i] = Some(d);
    }

    // Heal: no more faults, every link up; sync until quiet.
    for d in devices.iter().flatten() {
        arm(&d.link, None);
        d.link.set_offline(false);
    }
    let mut quiet = false;
    for _round in 0..30 {
        clock.advance(10_000); // past every backoff
        let mut busy = false;
        for d in devices.iter().flatten() {
            for c in d.store.conflicts().unwrap_or_default() {
                let _ = d.engine.resolve(c.id, Resolution::KeepLocal);
            }
            let r = d.engine.sync_now(None).await;
            let counts = d.store.outbox_counts().unwrap_or_default();
            let uploads = d.store.attachment_counts().map_or(1, |c| c.uploads);
            if r.outcome != SyncOutcome::Completed
                || r.pushed > 0
                || r.pulled > 0
                || counts.pending > 0
                || uploads > 0
            {
                busy = true;
            }
        }
        if !busy {
            quiet = true;
            break;
        }
    }
    if !quiet {
        result.stalled += 1;
    }

    let devices: Vec<SimDevice> = devices.into_iter().flatten().collect();
    result.stats.writes = acks.len() as u64 + increments.len() as u64;
    result.stats.conflicts = devices
        .iter()
        .map(|d| d.store.conflict_log().unwrap_or_default().len() as u64)
        .sum();
    result.stats.files = files.len() as u64;
    check_files(dir, &files, &mut result);
    #[allow(clippy::expect_used)]
    let server_db = server.db().sqlite_path().expect("a SQLite server");
    check_outcome(
        server_db,
        &devices,
        &acks,
        &increments,
        &set_adds,
        &mut result,
    );
    for d in &devices {
        d.engine.shutdown();
    }
    result
}

fn reopen_if_crashed(
    d: SimDevice,
    server: &TestServer,
    clock: &Arc<FakeClock>,
    result: &mut SimResult,
) -> SimDevice {
    let crashed = d.crash.lock().unwrap_or_else(|p| p.into_inner()).take();
    match crashed {
        Some(image) => {
            result.stats.crashes += 1;
            d.crash_and_reopen(server, clock, image)
        }
        None => d,
    }
}

/// Attaches a file of a few kilobytes and refers to it from a record of its own; once
/// both calls returned it is acknowledged.
fn attach_step(rng: &mut StdRng, d: &SimDevice, files: &mut BTreeMap<String, Vec<u8>>) {
    let bytes: Vec<u8> = (0..rng.random_range(1..40_000))
        .map(|_| rng.random())
        .collect();
    let Ok(r) = d.store.attach_bytes(&bytes, "image/jpeg", None) else {
        return;
    };
    let id = format!("ph-{}", &r.sha256[..12]);
    if d.store
        .put("photos", Some(&id), json!({"photo": r.to_json()}))
        .is_ok()
    {
        files.insert(r.sha256, bytes);
    }
}

/// Every acknowledged file is in the server's store byte for byte, once: the store
/// holds exactly the acknowledged files and no upload is left half done.
fn check_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>, result: &mut SimResult) {
    let store = dir.join("attachments");
    for (sha, want) in files {
        let got = std::fs::read(store.join("files").join(&sha[..2]).join(sha));
        if !got.is_ok_and(|g| g == *want) {
            result.lost += 1;
        }
    }
    let stored: Vec<String> = std::fs::read_dir(store.join("files"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter_map(|f| f.file_name().into_string().ok())
        .collect();
    let distinct: BTreeSet<&String> = stored.iter().collect();
    result.duplicate_effects += (stored.len() - distinct.len()) as u64;
    result.duplicate_effects += distinct.iter().filter(|s| !files.contains_key(**s)).count() as u64;
    let leftovers = std::fs::read_dir(store.join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    result.stalled += leftovers as u64;
}

fn write_step(
    rng: &mut StdRng,
    d: &SimDevice,
    device: usize,
    acks: &mut Vec<Ack>,
    increments: &mut BTreeMap<&'static str, i64>,
    set_adds: &mut BTreeMap<&'static str, BTreeSet<String>>,
) {
    let collections = ["notes", "patients", "plans", "central", "field"];
    let collection = collections[rng.random_range(0..collections.len())];
    let id = NOTE_IDS[rng.random_range(0..NOTE_IDS.len())].to_owned();
    let value = rng.random_range(0..1000);
    let mut delete = None;
    let res = match rng.random_range(0..10) {
        0..=3 => d
            .store
            .put(collection, Some(&id), json!({"a": value, "b": value % 7}))
            .map(|r| (r.hlc, Some(json!({"a": value, "b": value % 7})))),
        4..=6 => {
            let field = if rng.random_bool(0.5) { "a" } else { "b" };
            d.store
                .patch(collection, &id, json!({ field: value }))
                .map(|r| (r.hlc, Some(json!({ field: value }))))
        }
        7 => {
            let unsynced = d
                .store
                .get(collection, &id)
                .ok()
                .flatten()
                .is_some_and(|r| r.version == 0);
            delete = Some(unsynced);
            d.store
                .delete(collection, &id)
                .and_then(|()| d.store.last_hlc())
                .map(|h| (h, None))
        }
        _ => {
            let t = TALLY_IDS[rng.random_range(0..TALLY_IDS.len())];
            if rng.random_bool(0.5) {
                let by = rng.random_range(-3..=5);
                let r = d.store.increment("tallies", t, "count", by);
                if r.is_ok() {
                    *increments.entry(t).or_default() += by;
                }
                return;
            }
            let elem = format!("e{}", rng.random_range(0..6));
            if d.store.set_add("tallies", t, "tags", &elem).is_ok() {
                set_adds.entry(t).or_default().insert(elem);
            }
            return;
        }
    };
    if let Ok((hlc, fields)) = res {
        acks.push(Ack {
            device,
            collection,
            id,
            hlc,
            marks: Vec::new(),
            delete,
            fields,
        });
    }
}

type ServerRows = HashMap<(String, String), (Option<Value>, String)>;

/// Records whose last write its device holds exactly, and those it does not.
fn own_writes(db: &Path) -> (u64, u64) {
    let count = |sql: &str| {
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
            .map_or(0, |n| n.max(0) as u64)
    };
    (
        count("SELECT count(*) FROM records WHERE writer IS NOT NULL AND echo = 1"),
        count("SELECT count(*) FROM records WHERE writer IS NOT NULL AND echo = 0"),
    )
}

fn server_rows(db: &Path) -> (ServerRows, u64) {
    let mut rows = HashMap::new();
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return (rows, u64::MAX);
    };
    if let Ok(mut stmt) =
        conn.prepare("SELECT collection, record_id, data, deleted, hlc FROM records")
    {
        let it = stmt.query_map([], |r| {
            let data: Option<String> = r.get(2)?;
            let deleted: bool = r.get(3)?;
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                (
                    data.filter(|_| !deleted)
                        .and_then(|s| serde_json::from_str(&s).ok()),
                    r.get::<_, String>(4)?,
                ),
            ))
        });
        if let Ok(it) = it {
            rows.extend(it.flatten());
        }
    }
    let dups: u64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT op_id FROM audit GROUP BY user, op_id HAVING count(*) > 1)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_or(u64::MAX, |n| n.max(0) as u64);
    (rows, dups)
}

/// The audit trail and stored answers of one record, for a failure report.
fn server_history(db: &Path, collection: &str, id: &str) -> Vec<String> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(
        "SELECT a.client_id, a.op_id, a.kind, a.old_version, a.new_version, o.answer
         FROM audit a LEFT JOIN ops o ON o.op_id = a.op_id
         WHERE a.collection = ?1 AND a.record_id = ?2 ORDER BY a.id",
    ) else {
        return Vec::new();
    };
    stmt.query_map([collection, id], |r| {
        Ok(format!(
            "{} {} {} {:?}->{} {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?.unwrap_or_default(),
        ))
    })
    .map(|it| it.flatten().collect())
    .unwrap_or_default()
}

fn check_outcome(
    server_db: &Path,
    devices: &[SimDevice],
    acks: &[Ack],
    increments: &BTreeMap<&'static str, i64>,
    set_adds: &BTreeMap<&'static str, BTreeSet<String>>,
    result: &mut SimResult,
) {
    let (rows, dups) = server_rows(server_db);
    result.duplicate_effects += dups;
    (result.stats.own_exact, result.stats.own_merged) = own_writes(server_db);

    // 1. Nothing acknowledged is lost: the server's state of the record comes from an
    //    edit at least as new, or the write's version was kept in a conflict log.
    let logs: Vec<Vec<outpost_core::Conflict>> = devices
        .iter()
        .map(|d| d.store.conflict_log().unwrap_or_default())
        .collect();
    for ack in acks {
        if ack.delete == Some(true) {
            continue;
        }
        // A later local delete of the same record answers for this write.
        let retracted = acks.iter().any(|a| {
            a.delete.is_some()
                && a.device == ack.device
                && a.collection == ack.collection
                && a.id == ack.id
                && a.hlc > ack.hlc
        });
        if retracted {
            continue;
        }
        let key = (ack.collection.to_owned(), ack.id.clone());
        let server = rows.get(&key);
        let superseded = server.is_some_and(|(_, hlc)| *hlc >= ack.hlc);
        // Every field the write set stands on the server as written. A merge can leave the
        // record's stamp older than this write (a later no-op patch from another device
        // restamps it), while the write's values are there.
        let stands = match (server.and_then(|(d, _)| d.as_ref()), &ack.fields) {
            (Some(Value::Object(have)), Some(Value::Object(set))) => {
                set.iter().all(|(k, v)| have.get(k) == Some(v))
            }
            _ => false,
        };
        let logged = logs.iter().enumerate().any(|(j, log)| {
            let mark = ack.marks.get(j).copied().unwrap_or(0);
            log.iter()
                .any(|c| c.collection == ack.collection && c.record_id == ack.id && c.id > mark)
        });
        let failed = devices.get(ack.device).is_some_and(|d| {
            d.store
                .failed_entries()
                .unwrap_or_default()
                .iter()
                .any(|e| e.record_id == ack.id)
        });
        if !(superseded || stands || logged || failed) {
            result.lost += 1;
            if std::env::var_os("OUTPOST_SIM_VERBOSE").is_some() {
                eprintln!("  lost: {ack:?}; server: {:?}", rows.get(&key));
                for (i, log) in logs.iter().enumerate() {
                    for c in log
                        .iter()
                        .filter(|c| c.record_id == ack.id && c.collection == ack.collection)
                    {
                        eprintln!(
                            "    d{i} log: {} at {} local={:?} remote={:?}",
                            c.outcome, c.created_at_ms, c.local, c.remote
                        );
                    }
                }
                for a in acks
                    .iter()
                    .filter(|a| a.id == ack.id && a.collection == ack.collection)
                {
                    eprintln!("    ack {a:?}");
                }
                for line in server_history(server_db, ack.collection, &ack.id) {
                    eprintln!("    server: {line}");
                }
            }
        }
    }

    // 6. Stamps a device issues only go forward, across restarts and clock changes.
    let mut last: HashMap<usize, &str> = HashMap::new();
    for ack in acks {
        let prev = last.insert(ack.device, &ack.hlc);
        if let Some(prev) = prev.filter(|p| **p >= *ack.hlc) {
            result.hlc_regressions += 1;
            if std::env::var_os("OUTPOST_SIM_VERBOSE").is_some() {
                eprintln!("  d{}: stamp {} issued after {prev}", ack.device, ack.hlc);
            }
        }
    }

    // 3. Convergence: every device holds exactly the server's live records.
    let server_live: BTreeMap<(String, String), Value> = rows
        .iter()
        .filter_map(|(k, (d, _))| d.clone().map(|d| (k.clone(), d)))
        .collect();
    for d in devices {
        let mut local = BTreeMap::new();
        for (c, _) in strategies() {
            for r in d
                .store
                .query(c, &outpost_core::Query::new())
                .unwrap_or_default()
            {
                local.insert((c.to_owned(), r.id), Value::Object(r.data));
            }
        }
        if local != server_live {
            result.diverged += 1;
            if std::env::var_os("OUTPOST_SIM_VERBOSE").is_some() {
                for (k, v) in &server_live {
                    if local.get(k) != Some(v) {
                        eprintln!(
                            "  {}: {k:?} server={v} device={:?}",
                            d.path.display(),
                            local.get(k)
                        );
                    }
                }
                for (k, v) in &local {
                    if !server_live.contains_key(k) {
                        eprintln!("  {}: {k:?} only on device: {v}", d.path.display());
                    }
                }
            }
        }
    }

    // 4. CRDT values equal the sum / union of every operation.
    for t in TALLY_IDS {
        let Some(data) = server_live.get(&("tallies".to_owned(), t.to_owned())) else {
            result.crdt_mismatch += 1;
            continue;
        };
        let count = data
            .get("count")
            .and_then(|v| outpost_core::crdt::Crdt::from_json(v).ok())
            .map(|c| c.value());
        let want = increments.get(t).copied().unwrap_or(0);
        if (want != 0 || count.is_some()) && count != Some(json!(want)) {
            result.crdt_mismatch += 1;
        }
        let tags: BTreeSet<String> = data
            .get("tags")
            .and_then(|v| outpost_core::crdt::Crdt::from_json(v).ok())
            .and_then(|c| serde_json::from_value::<Vec<String>>(c.value()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if tags != set_adds.get(t).cloned().unwrap_or_default() {
            result.crdt_mismatch += 1;
        }
    }
}
