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
use std::time::Duration;

use outpost_core::ConflictStrategy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::scenario::Scenario;
use super::verify::ServerDb;
use super::{
    Checks, DemoResult, Device, Settle, device_table, engine_summary, go_offline, short_hlc,
};
use crate::DemoArgs;

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
    let mut a = Assets::start(args, seed).await?;
    a.online_start().await?;
    a.offline()?;
    a.reconnect().await?;
    a.verify().await
}

/// One run of the story: its devices, and what each phase leaves for the next.
#[derive(Debug)]
struct Assets {
    s: Scenario,
    scans_each: u32,
    /// The seed's generator for the register, the scan order and the other scans.
    rng: StdRng,
    assets: Vec<String>,
    /// Inspection id → the data saved.
    inspections: BTreeMap<String, Value>,
    /// Every scan in the order made: the contested asset's two first.
    scans: Vec<Scan>,
    /// The engineers who scan the contested asset first and second.
    first: usize,
    second: usize,
    settle: Settle,
}

impl Assets {
    async fn start(args: &DemoArgs, seed: u64) -> DemoResult<Assets> {
        let n = args.devices as usize;
        let scans_each = args.surveys.unwrap_or(5);
        let engineers: Vec<String> = (0..n).map(engineer_name).collect();
        let collections = vec![
            ("assets", ConflictStrategy::LastWriteWins),
            ("inspections", ConflictStrategy::LastWriteWins),
        ];
        let s = Scenario::start(args, seed, "dispatcher", &engineers, collections).await?;
        println!(
            "Outpost demo: NFC asset recovery, {n} engineers x {scans_each} scans, seed {seed}, \
             fail rate {:.2}",
            args.fail_rate
        );
        s.print_server(" --scenario assets");
        Ok(Assets {
            s,
            scans_each,
            rng: StdRng::seed_from_u64(seed),
            assets: Vec::new(),
            inspections: BTreeMap::new(),
            scans: Vec::new(),
            first: 0,
            second: 1,
            settle: Settle::default(),
        })
    }

    /// 1. The dispatcher registers the assets; every engineer's phone pulls them.
    async fn online_start(&mut self) -> DemoResult<()> {
        println!("\n1. online start");
        let dispatcher = &self.s.lead;
        let asset_count = (self.s.field.len() * 3).max(6);
        let rng = &mut self.rng;
        let assets = &mut self.assets;
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
        self.s.lead_uploads("the asset register").await?;
        self.s.field_syncs_once().await;
        println!(
            "   dispatcher registered {asset_count} assets; every engineer's phone pulled them"
        );
        Ok(())
    }

    /// 2. No signal: two engineers scan the same asset, and each scans their own part
    ///    of the register.
    fn offline(&mut self) -> DemoResult<()> {
        println!("\n2. in the basement: no signal on any phone");
        go_offline(&self.s.all());
        self.contested_scans()?;
        self.other_scans()
    }

    fn contested_scans(&mut self) -> DemoResult<()> {
        let engineers = &self.s.field;
        // Which of the two scans the contested asset first is the seed's choice.
        let (first, second) = if self.rng.random_bool(0.5) {
            (0, 1)
        } else {
            (1, 0)
        };
        let contested_name = EQUIPMENT[0].0;
        let early = scan(
            &engineers[first],
            first,
            CONTESTED,
            "leaking",
            "water under the pump",
            &mut self.inspections,
        )?;
        std::thread::sleep(Duration::from_millis(3));
        let late = scan(
            &engineers[second],
            second,
            CONTESTED,
            "ok",
            "seal replaced, dry now",
            &mut self.inspections,
        )?;
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
        self.scans.extend([early, late]);
        (self.first, self.second) = (first, second);
        Ok(())
    }

    /// Each engineer works their own part of the register, as a dispatcher assigns
    /// it, so only the two contested scans ever meet on one asset. (With a third
    /// scanner of one asset, the core's resend of a winning edit carries a fresh stamp,
    /// and a later offline scan that syncs after it loses; see cli/README.md.)
    fn other_scans(&mut self) -> DemoResult<()> {
        let (engineers, scans_each) = (&self.s.field, self.scans_each);
        let n = engineers.len();
        let bar = self
            .s
            .progress
            .bar(u64::from(scans_each) * n as u64, "scanning", "scans");
        for (i, d) in engineers.iter().enumerate() {
            let mine: Vec<&String> = self
                .assets
                .iter()
                .skip(1)
                .enumerate()
                .filter(|(j, _)| j % n == i)
                .map(|(_, a)| a)
                .collect();
            for _ in 0..scans_each {
                let asset = mine[self.rng.random_range(0..mine.len())];
                let status = STATUSES[self.rng.random_range(0..STATUSES.len())];
                self.scans
                    .push(scan(d, i, asset, status, "", &mut self.inspections)?);
                bar.inc(1);
            }
        }
        self.s.progress.done(&[&bar]);
        println!(
            "   each engineer scanned {scans_each} more assets: {} inspections saved in all",
            self.inspections.len()
        );
        Ok(())
    }

    /// 3. Back in range over a flaky link, the later scanner first.
    async fn reconnect(&mut self) -> DemoResult<()> {
        println!(
            "\n3. back in WiFi range over a flaky link: {:.0}% of requests fail, some after the \
             server committed",
            self.s.args.fail_rate * 100.0
        );
        let (first, second) = (self.first, self.second);
        let engineers = &self.s.field;
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
        order.push(&self.s.lead);
        let settle = self.s.sync_over_flaky_links(&order, |_| Ok(0)).await?;
        println!(
            "   {} after {} rounds in {:.1} s ({} synced first)",
            if settle.quiet { "quiet" } else { "NOT quiet" },
            settle.rounds,
            settle.elapsed.as_secs_f64(),
            engineers[second].name
        );
        println!(
            "   engines report over the whole run: {}",
            engine_summary(&self.s.all())
        );
        self.settle = settle;
        Ok(())
    }

    /// 4. Checks against the server's own database and a fresh device, and the report.
    async fn verify(self) -> DemoResult<bool> {
        println!("\n4. verify");
        let (verifier, vsettle, server) = self.s.verifier().await?;
        let mut checks = Checks::default();
        let contested_logs = self.contested_logs()?;
        print_contested(&server, &contested_logs);
        let lost = self.check_inspections(&server, &mut checks);
        self.check_contested(&server, &contested_logs, &mut checks)?;
        self.check_latest(&server, &mut checks);
        checks.add(
            format!(
                "every device equals the server ({} devices, compared with a fresh device)",
                self.s.all().len()
            ),
            self.s
                .devices_match(&verifier, &vsettle, &server, COLLECTIONS)?,
        );
        checks.add(
            "nothing left behind: outboxes empty, no open conflicts, all synced",
            self.s.left_behind(COLLECTIONS, &self.settle)?,
        );

        println!();
        let all = self.s.all();
        let typed: BTreeMap<String, u64> = all
            .iter()
            .map(|d| {
                let n = self
                    .inspections
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
        Ok(self.s.finish(verifier, &checks, "inspections", lost).await)
    }

    /// Each device's logged conflicts on the contested asset, in the devices' order.
    fn contested_logs(&self) -> DemoResult<Vec<(String, outpost_core::Conflict)>> {
        Ok(self
            .s
            .all()
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
            .collect())
    }

    /// Inspections: every scan saved, exactly once. Returns the count lost.
    fn check_inspections(&self, server: &ServerDb, checks: &mut Checks) -> u64 {
        let mut lost = 0u64;
        let mut problems = Vec::new();
        let server_inspections = server.live("inspections");
        for (id, data) in &self.inspections {
            if server_inspections.get(id).map(|(d, _)| d) != Some(data) {
                lost += 1;
                problems.push(format!("inspection {id} is not on the server as saved"));
            }
        }
        if server_inspections.len() != self.inspections.len() {
            problems.push(format!(
                "the server holds {} inspections, the engineers saved {}",
                server_inspections.len(),
                self.inspections.len()
            ));
        }
        problems.extend(server.exactly_once_problems());
        checks.add(
            format!(
                "every inspection is on the server exactly once: {} of {} (audit: {} applied ops, \
                 {} op_ids applied twice)",
                self.inspections.len() as u64 - lost,
                self.inspections.len(),
                server.audit_rows,
                server.ops_applied_twice
            ),
            problems,
        );
        lost
    }

    /// The contested asset: the later scan by HLC, everywhere, and the earlier one in a
    /// conflict log.
    fn check_contested(
        &self,
        server: &ServerDb,
        contested_logs: &[(String, outpost_core::Conflict)],
        checks: &mut Checks,
    ) -> DemoResult<()> {
        let (early, late) = (&self.scans[0], &self.scans[1]);
        let engineers = &self.s.field;
        let on_server = server.get("assets", CONTESTED);
        let mut problems = Vec::new();
        let want = &late.asset_data;
        if on_server.and_then(|r| r.data.as_ref()) != Some(want) {
            problems.push(format!(
                "the server has {}",
                brief(on_server.and_then(|r| r.data.as_ref()))
            ));
        }
        for d in self.s.all() {
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
                engineers[self.first].name
            ));
        }
        let arrived_second = contested_logs.first().map(|(d, _)| d.clone());
        checks.add(
            format!(
                "{CONTESTED}: the later scan by HLC ({}'s) wins on both phones, every device and the \
                 server{}",
                engineers[self.second].name,
                arrived_second.map_or_else(String::new, |d| format!(" ({d}'s sync arrived second)"))
            ),
            problems,
        );
        Ok(())
    }

    /// Every asset holds its latest scan by HLC.
    fn check_latest(&self, server: &ServerDb, checks: &mut Checks) {
        let mut latest: BTreeMap<&str, &Scan> = BTreeMap::new();
        for s in &self.scans {
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
    }
}

/// The contested asset on the server, and each conflict it caused on a device.
fn print_contested(server: &ServerDb, contested_logs: &[(String, outpost_core::Conflict)]) {
    let on_server = server.get("assets", CONTESTED);
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
    for (device, c) in contested_logs {
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
}
