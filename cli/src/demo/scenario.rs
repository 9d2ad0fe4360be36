//! What both stories do in the same way, phase by phase: one run's devices (a lead
//! device that registers the data, and the field devices), the flaky reconnect, the
//! fresh device that verifies, the checks every run makes, and the end of the report.
//!
//! A story keeps its own state beside a [`Scenario`] and tells its phases (online
//! start, offline, reconnect, verify) with these steps, so each phase reads as what it
//! does and the two stories cannot drift apart in what they check.

use std::time::Instant;

use outpost_core::{ConflictStrategy, SyncReport};

use super::verify::ServerDb;
use super::{
    Checks, DemoResult, Device, Harness, Settle, compare_devices, go_online, leftovers, print_kept,
    replay_flags, sync_until_quiet,
};
use crate::DemoArgs;
use crate::progress::Progress;

/// One run: the in-process server and every device on it.
#[derive(Debug)]
pub struct Scenario {
    pub args: DemoArgs,
    pub seed: u64,
    pub started: Instant,
    pub harness: Harness,
    /// The coordinator or dispatcher: registers the data while online.
    pub lead: Device,
    /// The nurses' or engineers' phones.
    pub field: Vec<Device>,
    pub progress: Progress,
}

impl Scenario {
    /// Starts the server with one user per device and opens the devices: the lead
    /// first, then the field devices, each link seeded by its index.
    pub async fn start(
        args: &DemoArgs,
        seed: u64,
        lead: &str,
        field: &[String],
        collections: Vec<(&'static str, ConflictStrategy)>,
    ) -> DemoResult<Scenario> {
        let started = Instant::now();
        let mut users = field.to_vec();
        users.push(lead.to_owned());
        let harness = Harness::start(args, seed, &users, collections)?;
        let lead = harness.device(lead, lead, 0)?;
        let field = field
            .iter()
            .enumerate()
            .map(|(i, name)| harness.device(name, name, i as u64 + 1))
            .collect::<DemoResult<Vec<_>>>()?;
        Ok(Scenario {
            args: args.clone(),
            seed,
            started,
            harness,
            lead,
            field,
            progress: Progress::new(),
        })
    }

    /// The field devices, then the lead.
    pub fn all(&self) -> Vec<&Device> {
        self.field.iter().chain([&self.lead]).collect()
    }

    /// The header's lines after the first: where the server runs, and how to replay.
    pub fn print_server(&self, scenario_flag: &str) {
        println!(
            "   reference server in this process on {} (SQLite: {})",
            self.harness.url.trim_end_matches('/'),
            self.harness.server_db.display()
        );
        println!(
            "   replay this run with: outpost demo{scenario_flag} --seed {}{}",
            self.seed,
            replay_flags(&self.args)
        );
    }

    /// The lead's first sync: everything it registered reaches the server, or the run
    /// stops, since every later phase builds on it.
    pub async fn lead_uploads(&self, what: &str) -> DemoResult<()> {
        let hidden = indicatif::ProgressBar::hidden();
        if !sync_until_quiet(&[&self.lead], &hidden, |_| Ok(0))
            .await?
            .quiet
        {
            return Err(format!("the {} could not upload {what}", self.lead.name).into());
        }
        Ok(())
    }

    /// One sync of each field device, in order: how they pull what the lead registered.
    pub async fn field_syncs_once(&self) -> Vec<SyncReport> {
        let mut reports = Vec::with_capacity(self.field.len());
        for d in &self.field {
            reports.push(d.sync_once().await);
        }
        reports
    }

    /// The reconnect: the links of `devices` turn flaky, the network comes back, and
    /// the devices sync in this order until quiet; then the links are steady again.
    pub async fn sync_over_flaky_links(
        &self,
        devices: &[&Device],
        on_conflicts: impl FnMut(&Device) -> DemoResult<usize>,
    ) -> DemoResult<Settle> {
        for d in devices {
            d.link.set_random_faults(true);
        }
        go_online(devices).await?;
        let to_send: u64 = devices.iter().map(|d| d.engine.status().pending).sum();
        let bar = self.progress.bar(to_send, "syncing", "edits");
        let settle = sync_until_quiet(devices, &bar, on_conflicts).await?;
        self.progress.done(&[&bar]);
        for d in devices {
            d.link.set_random_faults(false);
        }
        Ok(settle)
    }

    /// A fresh device, signed in as the lead, pulls everything; and the server's own
    /// database, read after it.
    pub async fn verifier(&self) -> DemoResult<(Device, Settle, ServerDb)> {
        let lead = self.lead.name.as_str();
        let verifier = self.harness.device("verifier", lead, 999)?;
        let hidden = indicatif::ProgressBar::hidden();
        let settle = sync_until_quiet(&[&verifier], &hidden, |_| Ok(0)).await?;
        let server = ServerDb::read(&self.harness.server_db)?;
        Ok((verifier, settle, server))
    }

    /// Problems of "every device equals the server": the verifier against the server's
    /// database, then every device against the verifier.
    pub fn devices_match(
        &self,
        verifier: &Device,
        settle: &Settle,
        server: &ServerDb,
        collections: &[&str],
    ) -> DemoResult<Vec<String>> {
        let mut problems = Vec::new();
        if !settle.quiet {
            problems.push("the verifier could not pull everything".to_owned());
        }
        for c in collections {
            if verifier.snapshot(c)? != server.live(c) {
                problems.push(format!(
                    "the verifier's {c} differ from the server's database"
                ));
            }
        }
        problems.extend(compare_devices(&self.all(), verifier, collections)?);
        Ok(problems)
    }

    /// Problems of "nothing left behind", the reconnect's quiet included.
    pub fn left_behind(&self, collections: &[&str], reconnect: &Settle) -> DemoResult<Vec<String>> {
        let mut problems = leftovers(&self.all(), collections)?;
        if !reconnect.quiet {
            problems.push(format!(
                "sync was not quiet after {} rounds",
                reconnect.rounds
            ));
        }
        Ok(problems)
    }

    /// The end of the report: the checks, where the databases are, the time and the
    /// count of lost `what`; then every device closes and the server stops. True when
    /// every check passed and nothing was lost.
    pub async fn finish(self, verifier: Device, checks: &Checks, what: &str, lost: u64) -> bool {
        println!("\n   checks:");
        checks.print();
        print_kept(&self.harness, &self.all());
        println!(
            "\nfinished in {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
        println!("lost {what}: {lost}");
        for d in self.all().into_iter().chain([&verifier]) {
            d.engine.shutdown();
            d.store.close();
        }
        self.harness.stop();
        checks.all_passed() && lost == 0
    }
}
