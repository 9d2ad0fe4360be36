//! The NFC asset-recovery scenario of the background article: field engineers scan
//! tags on equipment in a basement with no signal. Each scan saves an inspection and
//! updates the asset's status. Two engineers scan the same asset; when they are back
//! in range, both sync, and the later scan by hybrid logical clock wins on both phones
//! and on the server, whichever of the two reached the server first.
//!
//! The article has the server decide by its own timestamp; Outpost orders by HLC
//! stamps made on the devices when the engineers scanned, so the order of arrival (who
//! got back to WiFi first) does not decide, and a device clock can never move another
//! replica's stamps backwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_core::ConflictStrategy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::verify::ServerDb;
use super::{
    Checks, DemoResult, Device, Harness, compare_devices, device_table, engine_summary, go_offline,
    go_online, leftovers, print_kept, short_hlc, sync_until_quiet,
};
use crate::DemoArgs;
use crate::progress::Progress;

const ENGINEERS: &[&str] = &[
    "ines", "jonas", "kofi", "lena", "marco", "nia", "oskar", "priya", "quentin", "rosa", "samir",
    "tamar", "ugo", "vera", "wen", "yusuf",
];
const EQUIPMENT: &[(&str, &str)] = &[
    ("Sump pump P-7", "boiler room"),
    ("Fire door FD-2", "stairwell B"),
    ("Generator G-1", "plant room"),
    ("Water heater WH-3", "boiler room"),
    ("Fan coil FC-12", "corridor B1"),
    ("Sprinkler valve SV-4", "riser room"),
    ("UPS U-2", "server room"),
    ("Air handler AHU-1", "plant room"),
];
const STATUSES: &[&str] = &["ok", "needs service", "corroded", "tag damaged", "noisy"];
const COLLECTIONS: &[&str] = &["assets", "inspections"];
const CONTESTED: &str = "A-001";

fn engineer_name(i: usize) -> String {
    ENGINEERS
        .get(i)
        .map_or_else(|| format!("engineer-{}", i + 1), |n| (*n).to_owned())
}

/// One scan as the engineer saved it: the asset's record on the phone afterwards.
#[derive(Debug, Clone)]
struct Scan {
    device: usize,
    asset: String,
    hlc: String,
    asset_data: Value,
}

/// A scan: the inspection record and the asset's new status, in one transaction.
fn scan(
    d: &Device,
    index: usize,
    asset: &str,
    status: &str,
    note: &str,
    inspections: &mut BTreeMap<String, Value>,
) -> DemoResult<Scan> {
    let (inspection, record) = d.store.batch(|tx| {
        let inspection = tx.put(
            "inspections",
            None,
            json!({"asset": asset, "by": d.name, "status": status, "note": note}),
        )?;
        let record = tx.patch(
            "assets",
            asset,
            json!({"status": status, "last_scan_by": d.name, "last_inspection": inspection.id}),
        )?;
        Ok((inspection, record))
    })?;
    inspections.insert(inspection.id.clone(), Value::Object(inspection.data));
    Ok(Scan {
        device: index,
        asset: asset.to_owned(),
        hlc: record.hlc,
        asset_data: Value::Object(record.data),
    })
}

/// An asset's state in a problem line: its status and who scanned it last.
fn brief(v: Option<&Value>) -> String {
    match v {
        None => "nothing".to_owned(),
        Some(v) => format!(
            "status {} by {}",
            v.get("status")
                .map_or_else(|| "?".to_owned(), Value::to_string),
            v.get("last_scan_by").and_then(Value::as_str).unwrap_or("?")
        ),
    }
}

pub async fn run(args: &DemoArgs, seed: u64) -> DemoResult<bool> {
    let n = args.devices as usize;
    let scans_each = args.surveys.unwrap_or(5);
    let mut users: Vec<String> = (0..n).map(engineer_name).collect();
    users.push("dispatcher".to_owned());
    let collections = vec![
        ("assets", ConflictStrategy::LastWriteWins),
        ("inspections", ConflictStrategy::LastWriteWins),
    ];
    let started = Instant::now();
    let harness = Harness::start(args, seed, &users, collections).await?;
    println!(
        "Outpost demo: NFC asset recovery, {n} engineers x {scans_each} scans, seed {seed}, \
         fail rate {:.2}",
        args.fail_rate
    );
    println!(
        "   reference server in this process on {} (SQLite: {})",
        harness.url.trim_end_matches('/'),
        harness.server_db.display()
    );
    println!(
        "   replay this run with: outpost demo --scenario assets --seed {seed}{}",
        super::replay_flags(args)
    );

    let dispatcher = harness.device("dispatcher", "dispatcher", 0)?;
    let mut engineers = Vec::with_capacity(n);
    for i in 0..n {
        let name = engineer_name(i);
        engineers.push(harness.device(&name, &name, i as u64 + 1)?);
    }
    let mut all: Vec<&Device> = engineers.iter().collect();
    all.push(&dispatcher);

    // ---- 1. online start ----
    println!("\n1. online start");
    let mut rng = StdRng::seed_from_u64(seed);
    let asset_count = (n * 3).max(6);
    let mut assets = Vec::with_capacity(asset_count);
    dispatcher.store.batch(|tx| {
        for i in 0..asset_count {
            let id = format!("A-{:03}", i + 1);
            let (name, location) = EQUIPMENT[i % EQUIPMENT.len()];
            let tag: Vec<String> = (0..4)
                .map(|_| format!("{:02X}", rng.random_range(0..=255u8)))
                .collect();
            tx.put(
                "assets",
                Some(&id),
                json!({"name": name, "location": location, "tag": tag.join(":"),
                       "status": "unknown"}),
            )?;
            assets.push(id);
        }
        Ok(())
    })?;
    let hidden = indicatif::ProgressBar::hidden();
    if !sync_until_quiet(&[&dispatcher], &hidden, |_| Ok(0))
        .await?
        .quiet
    {
        return Err("the dispatcher could not upload the asset register".into());
    }
    for d in &engineers {
        d.sync_once().await;
    }
    println!("   dispatcher registered {asset_count} assets; every engineer's phone pulled them");

    // ---- 2. offline ----
    println!("\n2. in the basement: no signal on any phone");
    go_offline(&all);
    let mut inspections = BTreeMap::new();
    let mut scans: Vec<Scan> = Vec::new();
    // Which of the two scans the contested asset first is the seed's choice.
    let (first, second) = if rng.random_bool(0.5) { (0, 1) } else { (1, 0) };
    let contested_name = EQUIPMENT[0].0;
    scans.push(scan(
        &engineers[first],
        first,
        CONTESTED,
        "leaking",
        "water under the pump",
        &mut inspections,
    )?);
    std::thread::sleep(Duration::from_millis(3));
    scans.push(scan(
        &engineers[second],
        second,
        CONTESTED,
        "ok",
        "seal replaced, dry now",
        &mut inspections,
    )?);
    let (early, late) = (scans[0].clone(), scans[1].clone());
    println!(
        "   {} and {} both scanned {CONTESTED} ({contested_name}):",
        engineers[first].name, engineers[second].name
    );
    println!(
        "     {:<8} at {}: \"leaking\"",
        engineers[first].name,
        short_hlc(&early.hlc)
    );
    println!(
        "     {:<8} at {}: \"ok\" (seal replaced)",
        engineers[second].name,
        short_hlc(&late.hlc)
    );
    // The other scans: each engineer works their own part of the register, as a
    // dispatcher assigns it, so only the two above ever contest one asset. (With a
    // third scanner of one asset, the core's resend of a winning edit carries a fresh
    // stamp, and a later offline scan that syncs after it loses; see cli/README.md.)
    let progress = Progress::new();
    let bar = progress.bar(u64::from(scans_each) * n as u64, "scanning", "scans");
    for (i, d) in engineers.iter().enumerate() {
        let mine: Vec<&String> = assets
            .iter()
            .skip(1)
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, a)| a)
            .collect();
        for _ in 0..scans_each {
            let asset = mine[rng.random_range(0..mine.len())];
            let status = STATUSES[rng.random_range(0..STATUSES.len())];
            scans.push(scan(d, i, asset, status, "", &mut inspections)?);
            bar.inc(1);
        }
    }
    progress.done(&[&bar]);
    println!(
        "   each engineer scanned {scans_each} more assets: {} inspections saved in all",
        inspections.len()
    );

    // ---- 3. reconnect ----
    println!(
        "\n3. back in WiFi range over a flaky link: {:.0}% of requests fail, some after the \
         server committed",
        args.fail_rate * 100.0
    );
    // The later scanner syncs first, so the earlier scan arrives last and must still
    // lose: arrival order is not what decides.
    let mut order: Vec<&Device> = vec![&engineers[second], &engineers[first]];
    order.extend(
        engineers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first && *i != second)
            .map(|(_, d)| d),
    );
    order.push(&dispatcher);
    for d in &order {
        d.link.set_random_faults(true);
    }
    go_online(&order).await?;
    let to_send: u64 = order.iter().map(|d| d.engine.status().pending).sum();
    let bar = progress.bar(to_send, "syncing", "edits");
    let settle = sync_until_quiet(&order, &bar, |_| Ok(0)).await?;
    progress.done(&[&bar]);
    for d in &order {
        d.link.set_random_faults(false);
    }
    println!(
        "   {} after {} rounds in {:.1} s ({} synced first)",
        if settle.quiet { "quiet" } else { "NOT quiet" },
        settle.rounds,
        settle.elapsed.as_secs_f64(),
        engineers[second].name
    );
    println!(
        "   engines report over the whole run: {}",
        engine_summary(&all)
    );

    // ---- 4. verify ----
    println!("\n4. verify");
    let verifier = harness.device("verifier", "dispatcher", 999)?;
    let vsettle = sync_until_quiet(&[&verifier], &hidden, |_| Ok(0)).await?;
    let server = ServerDb::read(&harness.server_db)?;
    let mut checks = Checks::default();

    let contested_logs: Vec<(String, outpost_core::Conflict)> = all
        .iter()
        .map(|d| {
            d.store.conflict_log().map(|log| {
                log.into_iter()
                    .filter(|c| c.record_id == CONTESTED)
                    .map(|c| (d.name.clone(), c))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let on_server = server.get("assets", CONTESTED);
    let arrived_second = contested_logs.first().map(|(d, _)| d.clone());
    println!(
        "   {CONTESTED} on the server: status {} by {}, stamped {}",
        on_server
            .and_then(|r| r.data.as_ref())
            .and_then(|d| d.get("status"))
            .map_or_else(|| "?".to_owned(), Value::to_string),
        on_server
            .and_then(|r| r.data.as_ref())
            .and_then(|d| d.get("last_scan_by"))
            .and_then(Value::as_str)
            .unwrap_or("?"),
        on_server.map_or_else(|| "?".to_owned(), |r| short_hlc(&r.hlc))
    );
    for (device, c) in &contested_logs {
        let status = |o: &Option<outpost_core::protocol::JsonObject>| {
            o.as_ref()
                .and_then(|o| o.get("status"))
                .map_or_else(|| "deleted".to_owned(), Value::to_string)
        };
        println!(
            "   conflict on {device} (arrived second): its scan {} vs the server's {}: {} \
             (last_write_wins by HLC); the losing version is kept in its conflict log",
            status(&c.local),
            status(&c.remote),
            match c.outcome.as_str() {
                "remote" => "the server's version is later and stands",
                "local" => "this scan is later and was resent",
                other => other,
            }
        );
    }

    // Inspections: every scan saved, exactly once.
    let mut lost = 0u64;
    let mut problems = Vec::new();
    let server_inspections = server.live("inspections");
    for (id, data) in &inspections {
        if server_inspections.get(id).map(|(d, _)| d) != Some(data) {
            lost += 1;
            problems.push(format!("inspection {id} is not on the server as saved"));
        }
    }
    if server_inspections.len() != inspections.len() {
        problems.push(format!(
            "the server holds {} inspections, the engineers saved {}",
            server_inspections.len(),
            inspections.len()
        ));
    }
    problems.extend(server.exactly_once_problems());
    checks.add(
        format!(
            "every inspection is on the server exactly once: {} of {} (audit: {} applied ops, \
             {} op_ids applied twice)",
            inspections.len() as u64 - lost,
            inspections.len(),
            server.audit_rows,
            server.ops_applied_twice
        ),
        problems,
    );

    // The contested asset: the later scan by HLC, everywhere.
    let mut problems = Vec::new();
    let want = &late.asset_data;
    if on_server.and_then(|r| r.data.as_ref()) != Some(want) {
        problems.push(format!(
            "the server has {}",
            brief(on_server.and_then(|r| r.data.as_ref()))
        ));
    }
    for d in &all {
        let here = d
            .store
            .get("assets", CONTESTED)?
            .map(|r| Value::Object(r.data));
        if here.as_ref() != Some(want) {
            problems.push(format!("{} shows {}", d.name, brief(here.as_ref())));
        }
    }
    let loser_kept = contested_logs.iter().any(|(_, c)| {
        let l = c.local.clone().map(Value::Object);
        let r = c.remote.clone().map(Value::Object);
        l.as_ref() == Some(&early.asset_data) || r.as_ref() == Some(&early.asset_data)
    });
    if !loser_kept {
        problems.push(format!(
            "{}'s earlier scan is in no conflict log",
            engineers[first].name
        ));
    }
    checks.add(
        format!(
            "{CONTESTED}: the later scan by HLC ({}'s) wins on both phones, every device and the \
             server{}",
            engineers[second].name,
            arrived_second.map_or_else(String::new, |d| format!(" ({d}'s sync arrived second)"))
        ),
        problems,
    );

    // Every asset holds its latest scan by HLC.
    let mut latest: BTreeMap<&str, &Scan> = BTreeMap::new();
    for s in &scans {
        let newer = latest.get(s.asset.as_str()).is_none_or(|l| s.hlc > l.hlc);
        if newer {
            latest.insert(&s.asset, s);
        }
    }
    let mut problems = Vec::new();
    for (asset, s) in &latest {
        let got = server.get("assets", asset).and_then(|r| r.data.as_ref());
        if got != Some(&s.asset_data) {
            problems.push(format!(
                "{asset}: the latest scan was {}'s, the server has {}",
                engineer_name(s.device),
                brief(got)
            ));
        }
    }
    checks.add(
        format!(
            "every scanned asset holds its latest scan by HLC ({} assets)",
            latest.len()
        ),
        problems,
    );

    let mut problems = Vec::new();
    if !vsettle.quiet {
        problems.push("the verifier could not pull everything".to_owned());
    }
    for c in COLLECTIONS {
        if verifier.snapshot(c)? != server.live(c) {
            problems.push(format!(
                "the verifier's {c} differ from the server's database"
            ));
        }
    }
    problems.extend(compare_devices(&all, &verifier, COLLECTIONS)?);
    checks.add(
        format!(
            "every device equals the server ({} devices, compared with a fresh device)",
            all.len()
        ),
        problems,
    );
    let mut p = leftovers(&all, COLLECTIONS)?;
    if !settle.quiet {
        p.push(format!("sync was not quiet after {} rounds", settle.rounds));
    }
    checks.add(
        "nothing left behind: outboxes empty, no open conflicts, all synced",
        p,
    );

    println!();
    let typed: BTreeMap<String, u64> = all
        .iter()
        .map(|d| {
            let n = inspections
                .values()
                .filter(|v| v.get("by").and_then(Value::as_str) == Some(d.name.as_str()))
                .count() as u64;
            (d.name.clone(), n)
        })
        .collect();
    print!(
        "{}",
        device_table(
            &all,
            &|d: &Device| typed.get(&d.name).copied().unwrap_or(0),
            "scans"
        )?
    );
    println!("\n   checks:");
    checks.print();
    print_kept(&harness, &all);
    println!("\nfinished in {:.1} s", started.elapsed().as_secs_f64());
    println!("lost inspections: {lost}");

    for d in all.iter().chain([&&verifier]) {
        d.engine.shutdown();
        d.store.close();
    }
    harness.stop().await;
    Ok(checks.all_passed() && lost == 0)
}
