//! `outpost demo`: one process that runs the real reference server on a loopback port
//! and several devices on real database files, takes them offline, brings them back
//! over a flaky link, and then checks, from the server's own database, that nothing a
//! user typed was lost or applied twice.
//!
//! This module holds what both scenarios share: the server (the test kit's, in
//! [`Mode::Loopback`]: the real server's app in this process), the devices,
//! the "sync until quiet" loop and the report's table; `scenario` holds the steps both
//! stories' phases take. The stories themselves live in `field` (nurses) and `assets`
//! (engineers), each as its phases over the run's state; `verify` reads the server's
//! database; `tokens` signs the devices' JWTs.

mod assets;
mod field;
mod photos;
mod scenario;
mod tokens;
mod verify;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::BatchLimits;
use outpost_core::{
    ConflictStrategy, Durability, Query, Store, StoreConfig, SyncConfig, SyncEngine, SyncOutcome,
};
use outpost_testkit::{Backend, FaultyTransport, Folder, Mode, RandomFaults, TestDb, TestServer};
use rand::Rng;
use serde_json::Value;

use self::tokens::DemoIssuer;
use crate::{DemoArgs, Scenario};

/// The one team of every demo user.
const TEAM: &str = "field-team";

/// Errors that stop the demo before it can report (a check that fails is not one).
pub type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Rounds of "every device syncs once" before the demo gives up on quiet.
const MAX_ROUNDS: u32 = 1000;
/// Wall-clock bound of the reconnect phase.
const MAX_SYNC_TIME: Duration = Duration::from_secs(120);

pub async fn run(args: DemoArgs) -> ExitCode {
    let seed = args
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..1_000_000));
    let outcome = match args.scenario {
        Scenario::Field => field::run(&args, seed).await,
        Scenario::Assets => assets::run(&args, seed).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("outpost demo: {e}");
            ExitCode::from(2)
        }
    }
}

/// One phone or tablet: its own database file, sync engine and link.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub store: Store,
    pub engine: SyncEngine,
    /// The flaky field link: a seeded share of its requests is lost while it is
    /// flaky, some before the server saw them and some after it committed.
    pub link: Arc<FaultyTransport>,
    pub totals: std::sync::Mutex<SyncTotals>,
}

/// What the engine's reports added up to, over every sync of a device.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncTotals {
    pub runs: u64,
    pub pushed: u64,
    pub applied: u64,
    pub pulled: u64,
    pub conflicts: u64,
    pub failed_runs: u64,
}

impl Device {
    fn totals(&self) -> SyncTotals {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sync, added to the device's totals.
    async fn sync_once(&self) -> outpost_core::SyncReport {
        let r = self.engine.sync_now(Some(Duration::from_secs(30))).await;
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        t.runs += 1;
        t.pushed += r.pushed;
        t.applied += r.applied;
        t.pulled += r.pulled;
        t.conflicts += r.conflicts;
        if r.outcome != SyncOutcome::Completed {
            t.failed_runs += 1;
        }
        r
    }

    /// Every live record of `collection`: id → (data, server version).
    pub fn snapshot(&self, collection: &str) -> DemoResult<BTreeMap<String, (Value, i64)>> {
        Ok(self
            .store
            .query(collection, &Query::new())?
            .into_iter()
            .map(|r| (r.id, (Value::Object(r.data), r.version)))
            .collect())
    }
}

/// The server in this process and the folder everything lives in.
#[derive(Debug)]
pub struct Harness {
    pub dir: PathBuf,
    /// Removed on drop unless `--dir` was given.
    _temp: Option<tempfile::TempDir>,
    pub url: String,
    pub server_db: PathBuf,
    users: Vec<String>,
    issuer: DemoIssuer,
    collections: Vec<(&'static str, ConflictStrategy)>,
    seed: u64,
    fail_rate: f64,
    server: TestServer,
}

impl Harness {
    /// Writes a server config that takes JWTs signed for this run (every user in one
    /// team, so everyone reads everything the demo compares), and starts the server on
    /// 127.0.0.1:0. The config stays beside the data, so `outpost serve` can reopen a
    /// kept run.
    pub fn start(
        args: &DemoArgs,
        seed: u64,
        users: &[String],
        collections: Vec<(&'static str, ConflictStrategy)>,
    ) -> DemoResult<Harness> {
        let (dir, temp) = match &args.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                if d.join("server.db").exists() {
                    return Err(format!(
                        "{} already holds a demo run (server.db); give an empty folder",
                        d.display()
                    )
                    .into());
                }
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("outpost-demo-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let server_db = dir.join("server.db");
        // No [[users]]: the devices sign in with JWTs, as with an identity provider.
        let issuer = DemoIssuer::new();
        let mut toml = String::from(
            "# Written by `outpost demo`. Reopen its data with:\n\
             #   outpost serve --config <this file>\n\
             listen = \"127.0.0.1:0\"\ndatabase = \"server.db\"\ndefault_access = \"team\"\n\
             tombstone_retention_days = 30\n",
        );
        toml.push_str(&issuer.config_section());
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, toml)?;
        let server = TestServer::builder(&Backend::Sqlite)
            .mode(Mode::Loopback)
            .try_start_config(
                Folder::Given(dir.clone()),
                config_path,
                TestDb::Sqlite(server_db.clone()),
            )?;
        let url = server.base_url();
        Ok(Harness {
            dir,
            _temp: temp,
            url,
            server_db,
            users: users.to_vec(),
            issuer,
            collections,
            seed,
            fail_rate: args.fail_rate,
            server,
        })
    }

    pub fn kept(&self) -> bool {
        self._temp.is_none()
    }

    /// Opens the device `name` (signed in as `user`) at `<dir>/<name>.db`.
    pub fn device(&self, name: &str, user: &str, index: u64) -> DemoResult<Device> {
        let mut config = StoreConfig {
            durability: Durability::Full,
            ..StoreConfig::default()
        };
        for (c, s) in &self.collections {
            config = config.with_collection(c, *s);
        }
        let store = Store::open(self.dir.join(format!("{name}.db")), config)?;
        if !self.users.iter().any(|u| u == user) {
            return Err(format!("no user {user} in this run").into());
        }
        // Each device draws its faults from its own generator, so they depend on the
        // seed and the device, not on how the devices' requests interleave.
        let link_seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(index);
        let link = FaultyTransport::http(&self.url)?
            .with_random_faults(RandomFaults {
                seed: link_seed,
                rate: self.fail_rate,
                // A little over half of the failures lose the answer after the commit:
                // the case that makes a careless client upload an answer twice.
                after_commit: 0.55,
            })
            .with_op_tracking();
        let link = Arc::new(link);
        let engine = SyncEngine::new(
            store.clone(),
            link.clone(),
            Arc::new(self.issuer.provider(user, TEAM, name)),
            sync_config(),
            tokio::runtime::Handle::current(),
        );
        Ok(Device {
            name: name.to_owned(),
            store,
            engine,
            link,
            totals: std::sync::Mutex::new(SyncTotals::default()),
        })
    }

    /// Stops the server; the demo has nothing in flight by then.
    pub fn stop(self) {
        drop(self.server);
    }
}

/// Engine settings for the demo: small pushes, as on a slow field link (and so the
/// flaky link has many requests to fail), and short backoffs so the run stays fast.
fn sync_config() -> SyncConfig {
    SyncConfig {
        batch: BatchLimits {
            max_ops: 25,
            max_bytes: 256 * 1024,
        },
        pull_limit: 100,
        pull_page_bytes: 64 * 1024,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        network_debounce: Duration::from_millis(20),
        write_debounce: Duration::from_millis(50),
        auto_sync: false,
        ..SyncConfig::default()
    }
}

/// Takes every device offline, as the platform would report a lost signal.
pub fn go_offline(devices: &[&Device]) {
    for d in devices {
        d.engine.set_network_available(false);
    }
}

/// Reports the network back on every device and waits until each engine trusts it
/// (its debounce passed and `/health` answered through the link).
pub async fn go_online(devices: &[&Device]) -> DemoResult<()> {
    for d in devices {
        d.engine.set_network_available(true);
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    for d in devices {
        while !d.engine.is_network_available() {
            if Instant::now() > give_up {
                return Err(format!("{} never saw the server as reachable", d.name).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// The engines' own reports, added up over devices: one line for the report.
pub fn engine_summary(devices: &[&Device]) -> String {
    let mut t = SyncTotals::default();
    for d in devices {
        let x = d.totals();
        t.runs += x.runs;
        t.failed_runs += x.failed_runs;
        t.pushed += x.pushed;
        t.applied += x.applied;
        t.conflicts += x.conflicts;
        t.pulled += x.pulled;
    }
    format!(
        "{} syncs ({} cut short by the link and retried after backoff), {} ops pushed, \
         {} applied, {} conflicts, {} changes pulled",
        t.runs, t.failed_runs, t.pushed, t.applied, t.conflicts, t.pulled
    )
}

/// How the reconnect went.
#[derive(Debug, Default)]
pub struct Settle {
    pub rounds: u32,
    pub quiet: bool,
    pub elapsed: Duration,
}

/// Syncs the devices until all are settled, round after round (bounded). A device is
/// settled after a sync that completed (pushed everything due and pulled to the end)
/// with its outbox empty and no open conflict; whenever a device pushes anything, the
/// others are unsettled again, since the server may have changed under them. After
/// each sync, `on_conflicts` settles the device's open manual conflicts as its app
/// would.
///
/// Before each round the loop waits until every backed-off entry is due again: the
/// engine's backoff is jittered, and waiting keeps a seed's run the same every time.
pub async fn sync_until_quiet(
    devices: &[&Device],
    progress: &indicatif::ProgressBar,
    mut on_conflicts: impl FnMut(&Device) -> DemoResult<usize>,
) -> DemoResult<Settle> {
    let started = Instant::now();
    let mut settle = Settle::default();
    let mut settled = vec![false; devices.len()];
    while settle.rounds < MAX_ROUNDS && started.elapsed() < MAX_SYNC_TIME {
        wait_until_due(devices).await?;
        settle.rounds += 1;
        progress.set_message(format!("round {}", settle.rounds));
        for (i, d) in devices.iter().enumerate() {
            if settled[i] {
                continue;
            }
            let r = d.sync_once().await;
            let resolved = on_conflicts(d)?;
            let counts = d.store.outbox_counts()?;
            if r.pushed > 0 || resolved > 0 {
                settled.iter_mut().for_each(|s| *s = false);
            }
            settled[i] = r.outcome == SyncOutcome::Completed
                && resolved == 0
                && counts.pending + counts.syncing + counts.failed == 0
                && d.store.attachment_counts()?.uploads == 0
                && d.engine.conflicts()?.is_empty();
            let left: u64 = devices.iter().map(|d| d.engine.status().pending).sum();
            progress.set_position(progress.length().unwrap_or(0).saturating_sub(left));
        }
        if settled.iter().all(|s| *s) {
            settle.quiet = true;
            break;
        }
    }
    settle.elapsed = started.elapsed();
    Ok(settle)
}

/// Sleeps until the last backed-off outbox entry of any device may be sent again.
async fn wait_until_due(devices: &[&Device]) -> DemoResult<()> {
    let mut due = 0i64;
    for d in devices {
        for e in d.store.outbox_entries()? {
            due = due.max(e.next_attempt_at_ms);
        }
    }
    let now = now_ms();
    if due > now {
        // Bounded: a backoff is at most `backoff_max` in this demo.
        let wait = Duration::from_millis((due - now).min(2_000) as u64 + 1);
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every device's data against the verifier's, collection by collection.
pub fn compare_devices(
    devices: &[&Device],
    verifier: &Device,
    collections: &[&str],
) -> DemoResult<Vec<String>> {
    let mut problems = Vec::new();
    for c in collections {
        let want = verifier.snapshot(c)?;
        for d in devices {
            let got = d.snapshot(c)?;
            if got != want {
                let differing = want
                    .keys()
                    .chain(got.keys())
                    .filter(|k| want.get(*k) != got.get(*k))
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>();
                problems.push(format!(
                    "{} differs from the server in {c}: {} vs {} records (e.g. {})",
                    d.name,
                    got.len(),
                    want.len(),
                    differing.join(", ")
                ));
            }
        }
    }
    Ok(problems)
}

/// Checks that nothing is left behind on a device: no pending or failed entry, no
/// open conflict, every record synced.
pub fn leftovers(devices: &[&Device], collections: &[&str]) -> DemoResult<Vec<String>> {
    let mut problems = Vec::new();
    for d in devices {
        let counts = d.store.outbox_counts()?;
        if counts.pending + counts.syncing + counts.failed > 0 {
            problems.push(format!(
                "{}: {} pending and {} failed outbox entries",
                d.name,
                counts.pending + counts.syncing,
                counts.failed
            ));
        }
        let open = d.engine.conflicts()?.len();
        if open > 0 {
            problems.push(format!("{}: {open} open conflicts", d.name));
        }
        for c in collections {
            let unsynced = d
                .store
                .query(c, &Query::new())?
                .into_iter()
                .filter(|r| r.sync_state != outpost_core::SyncState::Synced)
                .count();
            if unsynced > 0 {
                problems.push(format!("{}: {unsynced} unsynced records in {c}", d.name));
            }
        }
    }
    Ok(problems)
}

/// The per-device table of the report.
pub fn device_table(
    devices: &[&Device],
    typed: &dyn Fn(&Device) -> u64,
    typed_label: &str,
) -> DemoResult<String> {
    let mut rows = vec![vec![
        "device".to_owned(),
        typed_label.to_owned(),
        "requests".to_owned(),
        "sent".to_owned(),
        "received".to_owned(),
        "req lost".to_owned(),
        "resp lost".to_owned(),
        "retries".to_owned(),
        "pulled".to_owned(),
        "conflicts".to_owned(),
    ]];
    let mut total = [0u64; 9];
    for d in devices {
        let s = d.link.stats();
        let conflicts = d.store.conflict_log()?.len() as u64;
        let values = [
            typed(d),
            s.requests(),
            s.bytes_sent(),
            s.bytes_received(),
            s.lost_requests,
            s.lost_answers,
            s.resent_ops,
            d.totals().pulled,
            conflicts,
        ];
        for (t, v) in total.iter_mut().zip(values) {
            *t += v;
        }
        rows.push(row(&d.name, &values));
    }
    rows.push(row("total", &total));
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let mut line = String::from("   ");
        for (i, cell) in r.iter().enumerate() {
            if i == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[i]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if n == 0 || n == rows.len() - 2 {
            let width: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "   {}", "-".repeat(width));
        }
    }
    Ok(out)
}

fn row(name: &str, v: &[u64; 9]) -> Vec<String> {
    vec![
        name.to_owned(),
        v[0].to_string(),
        v[1].to_string(),
        bytes(v[2]),
        bytes(v[3]),
        v[4].to_string(),
        v[5].to_string(),
        v[6].to_string(),
        v[7].to_string(),
        v[8].to_string(),
    ]
}

fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// The pass/fail lines at the end of a report.
#[derive(Debug, Default)]
pub struct Checks {
    lines: Vec<(bool, String, Vec<String>)>,
}

impl Checks {
    pub fn add(&mut self, what: impl Into<String>, problems: Vec<String>) {
        self.lines
            .push((problems.is_empty(), what.into(), problems));
    }

    pub fn all_passed(&self) -> bool {
        self.lines.iter().all(|(ok, _, _)| *ok)
    }

    pub fn print(&self) {
        for (ok, what, problems) in &self.lines {
            println!("   [{}] {what}", if *ok { " ok " } else { "FAIL" });
            for p in problems.iter().take(10) {
                println!("          - {p}");
            }
            if problems.len() > 10 {
                println!("          - … and {} more", problems.len() - 10);
            }
        }
    }
}

/// Where the databases are, when the user asked to keep them.
pub fn print_kept(h: &Harness, devices: &[&Device]) {
    if !h.kept() {
        return;
    }
    println!("\ndatabases kept in {}:", h.dir.display());
    println!(
        "   server.db (server.toml reopens it: outpost serve --config {})",
        display(&h.dir.join("server.toml"))
    );
    for d in devices {
        println!("   {}.db", d.name);
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The options besides the seed that a replay needs.
pub fn replay_flags(args: &DemoArgs) -> String {
    let mut s = String::new();
    if args.devices != 3 {
        s.push_str(&format!(" --devices {}", args.devices));
    }
    if let Some(m) = args.surveys {
        s.push_str(&format!(" --surveys {m}"));
    }
    if (args.fail_rate - 0.2).abs() > f64::EPSILON {
        s.push_str(&format!(" --fail-rate {}", args.fail_rate));
    }
    s
}

/// An HLC stamp for the report: UTC time of day, counter and the replica's first
/// characters. Full stamps are 40 characters of digits; this is what tells them apart.
pub fn short_hlc(h: &str) -> String {
    match h.parse::<outpost_core::clock::Hlc>() {
        Ok(h) => {
            let s = h.millis / 1000 % 86_400;
            format!(
                "{:02}:{:02}:{:02}.{:03}/{} @{}",
                s / 3600,
                s / 60 % 60,
                s % 60,
                h.millis % 1000,
                h.counter,
                h.replica.chars().take(6).collect::<String>()
            )
        }
        Err(_) => h.to_owned(),
    }
}
