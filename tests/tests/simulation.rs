#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Runs many seeded schedules of the deterministic simulation and prints one summary
//! line. `OUTPOST_SIM_SCHEDULES=N` sets the count (default 300); `OUTPOST_SIM_SEED=S`
//! replays one schedule.

use std::time::Instant;

use outpost_tests::sim::{SimResult, run_schedule};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Seeds that once failed, beyond the default range; each names what it found.
const REGRESSIONS: &[(u64, &str)] = &[
    // Another device's patch that changed nothing restamped the record with an older
    // stamp: the write's fields stood on the server, but its stamp did not.
    (
        1496,
        "an equal edit from two devices leaves the older stamp",
    ),
    (
        1813,
        "a no-op patch applied after a newer edit restamps the record",
    ),
];

#[test]
fn regression_seeds_keep_every_promise() {
    let rt = runtime();
    for &(seed, what) in REGRESSIONS {
        let dir = tempfile::tempdir().unwrap();
        let r = rt.block_on(run_schedule(seed, dir.path()));
        assert!(r.ok(), "seed {seed} ({what}): {r:?}");
    }
}

#[test]
fn seeded_schedules_keep_every_promise() {
    let (first, count) = match std::env::var("OUTPOST_SIM_SEED") {
        Ok(s) => (s.parse::<u64>().expect("OUTPOST_SIM_SEED"), 1),
        Err(_) => {
            let n = std::env::var("OUTPOST_SIM_SCHEDULES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            (0, n)
        }
    };
    let started = Instant::now();
    let mut total = SimResult::default();
    let mut failures = Vec::new();
    let rt = runtime();
    for seed in first..first + count {
        let dir = tempfile::tempdir().unwrap();
        let r = rt.block_on(run_schedule(seed, dir.path()));
        if !r.ok() {
            eprintln!(
                "schedule {seed} failed: {r:?}\n  replay: OUTPOST_SIM_SEED={seed} cargo test -p outpost-tests --test simulation -- --nocapture"
            );
            failures.push(seed);
        }
        total.add(&r);
    }
    println!(
        "schedules: {count}, lost: {}, duplicate effects: {}, diverged: {}, stalled: {} \
         (crdt mismatches: {}, hlc regressions: {}) in {:.1} s\n\
         exercised: {} writes, {} injected faults, {} device crashes, {} server restarts, {} conflicts, \
         {} records last written as their device holds them (left out of its pulls), {} merged by the server, {} files",
        total.lost,
        total.duplicate_effects,
        total.diverged,
        total.stalled,
        total.crdt_mismatch,
        total.hlc_regressions,
        started.elapsed().as_secs_f64(),
        total.stats.writes,
        total.stats.faults,
        total.stats.crashes,
        total.stats.server_restarts,
        total.stats.conflicts,
        total.stats.own_exact,
        total.stats.own_merged,
        total.stats.files,
    );
    assert!(
        count < 50 || (total.stats.own_exact > 0 && total.stats.own_merged > 0),
        "the schedules never had a device's own change both left out and merged"
    );
    assert!(total.stats.files > 0, "the schedules attached files");
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
