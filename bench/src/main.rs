//! `outpost-bench`: the figures of Outpost's performance, each measured side by
//! side with its baseline in the same run.
//!
//! Absolute times drift on shared machines, so every figure is reported as a ratio to a
//! baseline that runs in the same process, alternating with it: raw rusqlite for local
//! writes, pull apply and local queries, a minimal HTTP endpoint for push, a
//! one-request-per-op loop for wire cost, plain Rust calls for the FFI, the same sync
//! without an observer, one raw HTTP upload for an attachment's, SQL straight into
//! PostgreSQL for many devices at once. Everything measured
//! goes through the public API and the real `outpost-server` binary on loopback.
//!
//! ```sh
//! cargo run --release -p outpost-bench -- --size full   # the documented figures
//! cargo run -p outpost-bench -- --size tiny             # CI: keeps the command working
//! ```
//!
//! Writes `target/bench/results.json` (or `--out PATH`) and a Markdown table to stdout
//! and next to the JSON. There are no thresholds: a target not met is reported, not failed.

mod ffi;
mod files;
mod growth;
mod load;
mod local;
mod net;
mod query;
mod server;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use outpost_core::Durability;
use serde_json::{Value, json};

use crate::util::{Result, fail};

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Size {
    name: &'static str,
    put_full: usize,
    put_normal: usize,
    batch_rounds: usize,
    push_ops: usize,
    push_rounds: usize,
    pull_changes: usize,
    pull_rounds: usize,
    initial_records: usize,
    wire_ops: usize,
    callbacks: usize,
    ffi_calls: u64,
    /// Figure 9: records of the district, timed calls per query, first syncs per side.
    query_records: usize,
    query_iters: usize,
    query_sync_rounds: usize,
    /// Figure 10: bytes of the file, and rounds of each side.
    file_bytes: usize,
    file_rounds: usize,
    /// Figure 11: simulated devices of each run, and about how many ops each run does.
    load_devices: &'static [usize],
    load_ops: usize,
    /// Figure 12: the table sizes grown through (the first is the baseline), and timed
    /// requests of each kind at each.
    growth_records: &'static [usize],
    growth_samples: usize,
}

const TINY: Size = Size {
    name: "tiny",
    put_full: 200,
    put_normal: 500,
    batch_rounds: 2,
    push_ops: 1000,
    push_rounds: 2,
    pull_changes: 1000,
    pull_rounds: 2,
    initial_records: 5000,
    wire_ops: 1000,
    callbacks: 200,
    ffi_calls: 1000,
    query_records: 2000,
    query_iters: 20,
    query_sync_rounds: 1,
    file_bytes: 2 * 1024 * 1024,
    file_rounds: 1,
    load_devices: &[10],
    load_ops: 200,
    growth_records: &[500, 2_000],
    growth_samples: 5,
};

const FULL: Size = Size {
    name: "full",
    put_full: 10_000,
    put_normal: 100_000,
    batch_rounds: 20,
    push_ops: 100_000,
    // Two rounds, each side first once: one pair swung 0.43-0.68x on this machine.
    push_rounds: 2,
    pull_changes: 100_000,
    pull_rounds: 1,
    initial_records: 1_000_000,
    wire_ops: 1000,
    callbacks: 10_000,
    ffi_calls: 50_000,
    query_records: 100_000,
    query_iters: 400,
    query_sync_rounds: 3,
    file_bytes: 24 * 1024 * 1024,
    file_rounds: 10,
    load_devices: &[100, 1000, 5000],
    load_ops: 40_000,
    growth_records: &[10_000, 100_000, 1_000_000],
    growth_samples: 30,
};

#[derive(Debug)]
struct Args {
    size: Size,
    out: PathBuf,
    server_bin: Option<PathBuf>,
    only: Option<Vec<u32>>,
    python: bool,
    kotlin: Option<bool>,
    /// Figure 11's device counts, instead of the size's.
    devices: Option<Vec<usize>>,
    /// Figure 12's table sizes, instead of the size's (10M: `--growth 10000,10000000`).
    growth: Option<Vec<usize>>,
}

const USAGE: &str = "usage: outpost-bench [--size tiny|full] [--out PATH] [--only 1,2,..] \
[--server-bin PATH] [--no-python] [--kotlin|--no-kotlin] [--devices 100,1000] [--growth 10000,1000000]";

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut args = Args {
        size: TINY,
        out: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("target/bench/results.json"),
        server_bin: None,
        only: None,
        python: true,
        kotlin: None,
        devices: None,
        growth: None,
    };
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| fail(format!("{a} needs a value\n{USAGE}")))
        };
        match a.as_str() {
            "--size" => {
                args.size = match value()?.as_str() {
                    "tiny" => TINY,
                    "full" => FULL,
                    other => return Err(fail(format!("unknown size {other:?}\n{USAGE}"))),
                }
            }
            "--out" => args.out = PathBuf::from(value()?),
            "--server-bin" => args.server_bin = Some(PathBuf::from(value()?)),
            "--only" => {
                let list = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<u32>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| fail(format!("--only: {e}\n{USAGE}")))?;
                args.only = Some(list);
            }
            "--devices" => args.devices = Some(numbers("--devices", &value()?)?),
            "--growth" => args.growth = Some(numbers("--growth", &value()?)?),
            "--no-python" => args.python = false,
            "--kotlin" => args.kotlin = Some(true),
            "--no-kotlin" => args.kotlin = Some(false),
            "-h" | "--help" => return Err(fail(USAGE)),
            other => return Err(fail(format!("unknown argument {other:?}\n{USAGE}"))),
        }
    }
    Ok(args)
}

/// A comma-separated list of counts.
fn numbers(flag: &str, list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{flag}: {e}\n{USAGE}")))
}

/// One line of the table.
#[derive(Debug, serde::Serialize)]
struct Row {
    figure: String,
    measured: String,
    baseline: String,
    /// measured ÷ baseline, in the unit the target names.
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn row(
    figure: &str,
    measured: String,
    baseline: String,
    ratio: Option<f64>,
    target: &str,
    met: Option<bool>,
) -> Row {
    Row {
        figure: figure.to_owned(),
        measured,
        baseline,
        ratio,
        target: target.to_owned(),
        met,
    }
}

fn unmeasured(figure: &str, why: String, target: &str) -> Row {
    row(
        figure,
        format!("not measured: {why}"),
        "—".into(),
        None,
        target,
        None,
    )
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

struct Run {
    args: Args,
    dir: tempfile::TempDir,
    rows: Vec<Row>,
    details: serde_json::Map<String, Value>,
}

impl Run {
    fn wants(&self, fig: u32) -> bool {
        self.args.only.as_ref().is_none_or(|o| o.contains(&fig))
    }

    fn log(&self, msg: &str) {
        eprintln!("[outpost-bench {}] {msg}", self.args.size.name);
    }

    fn fig1(&mut self) -> Result<()> {
        for (mode, durability, n) in [
            ("full", Durability::Full, self.args.size.put_full),
            ("normal", Durability::Normal, self.args.size.put_normal),
        ] {
            self.log(&format!("1: {n} puts, durability {mode}"));
            let (s, r) = local::put_latency(self.dir.path(), durability, n)?;
            let q = ratio(s.ops_per_s(), r.ops_per_s());
            self.rows.push(row(
                &format!("1 put throughput ({mode})"),
                format!("{:.0} ops/s", s.ops_per_s()),
                format!("{:.0} ops/s", r.ops_per_s()),
                q,
                "≥ 0.9×",
                q.map(|q| q >= 0.9),
            ));
            self.rows.push(row(
                &format!("1 put latency p50 / p99 ({mode})"),
                format!("{:.0} / {:.0} µs", s.p50_us, s.p99_us),
                format!("{:.0} / {:.0} µs", r.p50_us, r.p99_us),
                ratio(s.p50_us, r.p50_us),
                "—",
                None,
            ));
            self.details
                .insert(format!("1_put_{mode}"), json!({"store": s, "raw": r}));
        }
        Ok(())
    }

    fn fig2(&mut self) -> Result<()> {
        self.log("2: batches of 1,000 puts");
        let (s, r) = local::batch(self.dir.path(), self.args.size.batch_rounds)?;
        let (st, rt) = (s.p50_us / 1000.0, r.p50_us / 1000.0);
        let q = ratio(rt, st);
        self.rows.push(row(
            "2 batch of 1,000 puts (p50, throughput ratio)",
            format!("{st:.1} ms"),
            format!("{rt:.1} ms"),
            q,
            "≥ 0.8×",
            q.map(|q| q >= 0.8),
        ));
        self.details
            .insert("2_batch".into(), json!({"store": s, "raw": r}));
        Ok(())
    }

    fn fig3(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
        let size = self.args.size;
        let (mut real, mut base) = (Vec::new(), Vec::new());
        for round in 0..size.push_rounds {
            self.log(&format!(
                "3: push {} ops, round {}",
                size.push_ops,
                round + 1
            ));
            let tag = format!("r{round}");
            // Alternate which side goes first, so drift hits both.
            if round % 2 == 0 {
                base.push(net::push_baseline(
                    rt,
                    self.dir.path(),
                    &tag,
                    size.push_ops,
                )?);
                real.push(net::push_real(
                    rt,
                    self.dir.path(),
                    url,
                    &tag,
                    size.push_ops,
                )?);
            } else {
                real.push(net::push_real(
                    rt,
                    self.dir.path(),
                    url,
                    &tag,
                    size.push_ops,
                )?);
                base.push(net::push_baseline(
                    rt,
                    self.dir.path(),
                    &tag,
                    size.push_ops,
                )?);
            }
        }
        let ops = (size.push_ops * size.push_rounds) as f64;
        let real_s: f64 = real.iter().map(|r| r.push_s).sum();
        let base_s: f64 = base.iter().map(|r| r.push_s).sum();
        let (a, b) = (ops / real_s.max(1e-9), ops / base_s.max(1e-9));
        let q = ratio(a, b);
        self.rows.push(row(
            &format!("3 push {} pending ops (throughput)", size.push_ops),
            format!("{a:.0} ops/s ({real_s:.2} s)"),
            format!("{b:.0} ops/s ({base_s:.2} s)"),
            q,
            "≥ 0.5×",
            q.map(|q| q >= 0.5),
        ));
        self.details
            .insert("3_push".into(), json!({"real": real, "baseline": base}));
        Ok(())
    }

    /// Figure 4. The engine overlaps fetching the next page with applying the current
    /// one, so apply time cannot be separated through the public API: the whole first
    /// sync is compared with the baseline's fetch of the same pages (sequential, through
    /// the same `HttpTransport`) plus its raw batched upsert.
    fn fig4(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
        let size = self.args.size;
        let (mut real, mut base) = (Vec::new(), Vec::new());
        for round in 0..size.pull_rounds {
            self.log(&format!(
                "4: pull {} changes, round {}",
                size.pull_changes,
                round + 1
            ));
            let tag = format!("r{round}");
            let baseline = |dir: &std::path::Path| -> Result<(u64, f64, f64)> {
                let t = std::time::Instant::now();
                let pages = net::fetch_pages(rt, url, "pulled")?;
                let fetch = t.elapsed().as_secs_f64();
                let (n, apply) = net::pull_baseline(dir, &pages, &tag)?;
                Ok((n, fetch, apply.as_secs_f64()))
            };
            if round % 2 == 0 {
                base.push(baseline(self.dir.path())?);
                real.push(net::pull_real(rt, self.dir.path(), url, "pulled", &tag)?);
            } else {
                real.push(net::pull_real(rt, self.dir.path(), url, "pulled", &tag)?);
                base.push(baseline(self.dir.path())?);
            }
        }
        let n: u64 = real.iter().map(|r| r.changes).sum();
        let whole_s: f64 = real.iter().map(|r| r.whole_sync_s).sum();
        let bn: u64 = base.iter().map(|b| b.0).sum();
        let fetch_s: f64 = base.iter().map(|b| b.1).sum();
        let upsert_s: f64 = base.iter().map(|b| b.2).sum();
        if n != bn {
            return Err(fail(format!(
                "pull: the device applied {n} changes, the baseline {bn}"
            )));
        }
        let (a, b) = (
            n as f64 / whole_s.max(1e-9),
            bn as f64 / (fetch_s + upsert_s).max(1e-9),
        );
        let q = ratio(a, b);
        self.rows.push(row(
            &format!(
                "4 pull of {} changes, whole first sync (throughput)",
                size.pull_changes
            ),
            format!("{a:.0} changes/s ({whole_s:.2} s)"),
            format!("{b:.0} changes/s ({fetch_s:.2} s fetch + {upsert_s:.2} s upsert)"),
            q,
            "≥ 0.8×",
            q.map(|q| q >= 0.8),
        ));
        // Wire bytes per synced record, against the records' own JSON gzipped.
        let wire: u64 = real.iter().map(|r| r.wire_bytes).sum();
        let data: u64 = real.iter().map(|r| r.records_gzip_bytes).sum();
        let per = |b: u64| b as f64 / n.max(1) as f64;
        let q = ratio(wire as f64, data as f64);
        self.rows.push(row(
            &format!(
                "4 first sync of {} changes: wire bytes per record",
                size.pull_changes
            ),
            format!("{:.1} B ({wire} B both ways)", per(wire)),
            format!("{:.1} B (the records' JSON, gzip)", per(data)),
            q,
            "≤ 1.2×",
            q.map(|q| q <= 1.2),
        ));
        let base_json: Vec<Value> = base
            .iter()
            .map(|(n, f, u)| json!({"changes": n, "fetch_s": f, "upsert_s": u}))
            .collect();
        self.details.insert(
            "4_pull".into(),
            json!({"real": real, "baseline": base_json}),
        );
        Ok(())
    }

    fn fig5(&mut self, url: &str) -> Result<()> {
        let n = self.args.size.initial_records;
        self.log(&format!(
            "5: initial sync of {n} records in a child process"
        ));
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(exe)
            .arg("__initial-sync")
            .arg(url)
            .arg(self.dir.path().join("f5.db"))
            .arg("initial")
            .output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "initial sync child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default())?;
        let secs = v["secs"].as_f64().unwrap_or(f64::NAN);
        let mib = v["vm_hwm_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0;
        let pulled = v["pulled"].as_u64().unwrap_or(0);
        if pulled != n as u64 {
            return Err(fail(format!("initial sync pulled {pulled} of {n} records")));
        }
        // The time target is for 1M records; scale it linearly for smaller sizes.
        let time_target = 30.0 * n as f64 / 1e6;
        self.rows.push(row(
            &format!("5 initial sync of {n} records: time"),
            format!("{secs:.2} s"),
            "—".into(),
            None,
            &format!("≤ {time_target:.3} s (30 s per 1M)"),
            Some(secs <= time_target),
        ));
        self.rows.push(row(
            &format!("5 initial sync of {n} records: peak RSS"),
            format!("{mib:.1} MiB"),
            "—".into(),
            None,
            "≤ 100 MB",
            Some(mib * 1.048_576 <= 100.0),
        ));
        self.details.insert("5_initial_sync".into(), v);
        Ok(())
    }

    fn fig6(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
        let n = self.args.size.wire_ops;
        self.log(&format!("6: wire cost of pushing {n} ops"));
        let w = net::wire(rt, self.dir.path(), url, n)?;
        let qr = ratio(w.batched_requests as f64, w.naive_requests as f64);
        self.rows.push(row(
            &format!("6 HTTP requests to push {n} ops"),
            w.batched_requests.to_string(),
            format!("{} (one per op)", w.naive_requests),
            qr,
            "≤ 0.01×",
            qr.map(|q| q <= 0.01),
        ));
        let qb = ratio(w.batched_bytes as f64, w.json_bytes as f64);
        self.rows.push(row(
            &format!("6 request bytes to push {n} ops"),
            format!("{} B", w.batched_bytes),
            format!(
                "{} B as one JSON body (naive loop: {} B)",
                w.json_bytes, w.naive_bytes
            ),
            qb,
            "≤ 0.5× JSON size",
            qb.map(|q| q <= 0.5),
        ));
        self.details
            .insert("6_wire".into(), serde_json::to_value(&w)?);
        Ok(())
    }

    /// Figure 10: an attachment's upload through the engine and the real server, as a
    /// ratio to a raw HTTP upload of the same bytes; the two sides alternate.
    /// Figure 11: simulated devices against the server on SQLite, on PostgreSQL and as
    /// two processes over one PostgreSQL, each beside the SQL baseline of the same
    /// devices, measured just before them. PostgreSQL runs need `OUTPOST_TEST_POSTGRES_URL`.
    fn fig11(&mut self, rt: &tokio::runtime::Runtime, bin: &std::path::Path) -> Result<()> {
        let pg = outpost_testkit::Backend::postgres_or_skip("outpost-bench figure 11");
        let devices = self
            .args
            .devices
            .clone()
            .unwrap_or_else(|| self.args.size.load_devices.to_vec());
        let mut detail = Vec::new();
        for n in devices {
            let plan = load::plan(n, self.args.size.load_ops);
            let base = match &pg {
                Some(outpost_testkit::Backend::Postgres(admin)) => {
                    self.log(&format!("11: {n} devices, baseline (SQL into PostgreSQL)"));
                    Some(load::baseline(rt, admin, plan)?)
                }
                _ => None,
            };
            let mut runs = vec![(outpost_testkit::Backend::Sqlite, 1)];
            if let Some(b) = &pg {
                runs.push((b.clone(), 1));
                runs.push((b.clone(), 2));
            }
            for (backend, processes) in runs {
                self.log(&format!(
                    "11: {n} devices x {} rounds, {backend:?}, {processes} process(es)",
                    plan.rounds
                ));
                let run = load::real(rt, bin, &backend, processes, plan)?;
                let name = format!("11 load, {n} devices, {}", run.what);
                let rss: Vec<String> = run.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
                let q = base
                    .as_ref()
                    .and_then(|b| ratio(run.ops_per_s, b.ops_per_s));
                let none = || "not measured: no PostgreSQL".to_owned();
                self.rows.push(row(
                    &format!("{name}: throughput"),
                    format!(
                        "{:.0} ops/s, {:.0} req/s ({} ops, {:.1} s)",
                        run.ops_per_s, run.requests_per_s, run.ops, run.wall_s
                    ),
                    base.as_ref().map_or_else(none, |b| {
                        format!("{:.0} ops/s, {:.0} req/s", b.ops_per_s, b.requests_per_s)
                    }),
                    q,
                    "reported",
                    None,
                ));
                self.rows.push(row(
                    &format!("{name}: push p50 / p99, server RSS"),
                    format!(
                        "{} / {} ms (pull {} / {} ms), RSS {} MiB",
                        load::ms(run.push.p50_us),
                        load::ms(run.push.p99_us),
                        load::ms(run.pull.p50_us),
                        load::ms(run.pull.p99_us),
                        rss.join(" + ")
                    ),
                    base.as_ref().map_or_else(none, |b| {
                        format!(
                            "{} / {} ms (pull {} / {} ms)",
                            load::ms(b.push.p50_us),
                            load::ms(b.push.p99_us),
                            load::ms(b.pull.p50_us),
                            load::ms(b.pull.p99_us)
                        )
                    }),
                    base.as_ref()
                        .and_then(|b| ratio(run.push.p50_us, b.push.p50_us)),
                    "reported",
                    None,
                ));
                detail.push(json!({"devices": n, "plan_rounds": plan.rounds, "run": run}));
            }
            if let Some(b) = base {
                detail.push(json!({"devices": n, "plan_rounds": plan.rounds, "baseline": b}));
            }
        }
        self.details.insert("11_load".into(), Value::Array(detail));
        Ok(())
    }

    /// Figure 12: push and pull-page latency as the server's table grows, on SQLite
    /// and (with `OUTPOST_TEST_POSTGRES_URL`) PostgreSQL, each against the smallest
    /// table of the same run.
    fn fig12(&mut self, rt: &tokio::runtime::Runtime, bin: &std::path::Path) -> Result<()> {
        let sizes = self
            .args
            .growth
            .clone()
            .unwrap_or_else(|| self.args.size.growth_records.to_vec());
        let mut backends = vec![outpost_testkit::Backend::Sqlite];
        backends.extend(outpost_testkit::Backend::postgres_or_skip(
            "outpost-bench figure 12",
        ));
        let mut detail = serde_json::Map::new();
        for b in backends {
            let log = |m: &str| self.log(m);
            let points = growth::run(rt, bin, &b, &sizes, self.args.size.growth_samples, &log)?;
            let Some(base) = points.first().cloned() else {
                continue;
            };
            for p in &points {
                for (what, m, r) in [
                    ("push of 20", p.push, base.push),
                    (
                        "pull of the 20 from the cursor before them",
                        p.pull_recent,
                        base.pull_recent,
                    ),
                    ("first page of 500", p.first_page, base.first_page),
                ] {
                    let q = ratio(m.p50_us, r.p50_us);
                    self.rows.push(row(
                        &format!(
                            "12 {}, {} records: {what} (p50 / p99)",
                            growth::name(&b),
                            p.records
                        ),
                        format!("{} / {} ms", load::ms(m.p50_us), load::ms(m.p99_us)),
                        format!(
                            "{} / {} ms at {} records",
                            load::ms(r.p50_us),
                            load::ms(r.p99_us),
                            base.records
                        ),
                        q,
                        "flat: ≤ 1.5×",
                        q.map(|q| q <= 1.5),
                    ));
                }
            }
            detail.insert(growth::name(&b).to_owned(), serde_json::to_value(points)?);
        }
        self.details
            .insert("12_growth".into(), Value::Object(detail));
        Ok(())
    }

    fn fig10(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
        let (n, rounds) = (self.args.size.file_bytes, self.args.size.file_rounds);
        let (mut real, mut base) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            self.log(&format!("10: upload {n} bytes, round {}", round + 1));
            let dir = self.dir.path();
            if round % 2 == 0 {
                base.push(files::upload_baseline(rt, dir, round, n)?);
                real.push(files::upload_real(rt, dir, url, round, n)?);
            } else {
                real.push(files::upload_real(rt, dir, url, round, n)?);
                base.push(files::upload_baseline(rt, dir, round, n)?);
            }
        }
        let mb = (n * rounds) as f64 / (1024.0 * 1024.0);
        let (real_s, base_s): (f64, f64) = (real.iter().sum(), base.iter().sum());
        let (a, b) = (mb / real_s.max(1e-9), mb / base_s.max(1e-9));
        let q = ratio(a, b);
        self.rows.push(row(
            &format!(
                "10 attachment upload, {} MiB (throughput)",
                n / (1024 * 1024)
            ),
            format!("{a:.0} MiB/s ({real_s:.2} s)"),
            format!("{b:.0} MiB/s ({base_s:.2} s), one raw POST"),
            q,
            "≥ 0.8×",
            q.map(|q| q >= 0.8),
        ));
        self.details.insert(
            "10_attachment_upload".into(),
            json!({"bytes": n, "real_s": real, "baseline_s": base}),
        );
        Ok(())
    }

    fn fig7(&mut self) -> Result<()> {
        let n = self.args.size.callbacks;
        self.log(&format!("7: {n} commit → callback"));
        let (after, from_call) = local::callback_latency(self.dir.path(), n)?;
        self.rows.push(row(
            "7 commit → change callback p99",
            format!("{:.0} µs (p50 {:.0} µs)", after.p99_us, after.p50_us),
            "—".into(),
            None,
            "≤ 1 ms",
            Some(after.p99_us <= 1000.0),
        ));
        self.details.insert(
            "7_callback".into(),
            json!({"after_put_returned": after, "from_put_call": from_call}),
        );
        Ok(())
    }

    fn fig8(&mut self) -> Result<()> {
        let n = self.args.size.ffi_calls;
        self.log(&format!("8: FFI, {n} puts and gets per language"));
        let rust = ffi::rust(self.dir.path(), n)?;
        let mut langs = vec![];
        if self.args.python {
            langs.push("Python");
        } else {
            self.rows.push(unmeasured(
                "8 FFI get/put from Python",
                "--no-python".into(),
                "reported",
            ));
        }
        let kotlin = self.args.kotlin.unwrap_or(self.args.size.name == "full");
        if kotlin {
            langs.push("Kotlin");
        } else {
            self.rows.push(unmeasured(
                "8 FFI get/put from Kotlin",
                "off at this size (--kotlin to enable)".into(),
                "reported",
            ));
        }
        let mut detail = serde_json::Map::new();
        detail.insert("rust".into(), serde_json::to_value(rust)?);
        for lang in langs {
            self.log(&format!("8: {lang}"));
            let got = match lang {
                "Python" => ffi::python(self.dir.path(), n),
                _ => ffi::kotlin(self.dir.path(), n),
            };
            match got {
                Ok(t) => {
                    for (call, f, r) in [
                        ("put", t.put_p50_us, rust.put_p50_us),
                        ("get", t.get_p50_us, rust.get_p50_us),
                    ] {
                        self.rows.push(row(
                            &format!("8 FFI {call} from {lang} (p50 per call)"),
                            format!("{f:.1} µs (+{:.1} µs)", f - r),
                            format!("{r:.1} µs in Rust"),
                            ratio(f, r),
                            "reported",
                            None,
                        ));
                    }
                    detail.insert(lang.to_lowercase(), serde_json::to_value(t)?);
                }
                Err(e) => {
                    self.log(&format!("8: {lang} not measured: {e}"));
                    let why: String = e.to_string().lines().next().unwrap_or_default().to_owned();
                    self.rows.push(unmeasured(
                        &format!("8 FFI get/put from {lang}"),
                        why,
                        "reported",
                    ));
                }
            }
        }
        self.details.insert("8_ffi".into(), Value::Object(detail));
        Ok(())
    }

    /// Figure 9: 9d's first syncs, alternately observed and not, then 9a–9c on the file
    /// of the first unobserved one.
    fn fig9(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
        let size = self.args.size;
        let n = size.query_records;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let kept = self.dir.path().join("f9-district.db");
        for round in 0..size.query_sync_rounds {
            for pass in 0..2 {
                let observed = (pass == 0) == (round % 2 == 0);
                self.log(&format!(
                    "9d: first sync of {n} records, round {}, {}",
                    round + 1,
                    if observed { "observed" } else { "unobserved" }
                ));
                let keep = !observed && without.is_empty();
                let db = if keep {
                    kept.clone()
                } else {
                    self.dir.path().join("f9-sync.db")
                };
                let r = query::first_sync(rt, url, &db, observed)?;
                if r.changes != n as u64 {
                    return Err(fail(format!("9d: pulled {} of {n} records", r.changes)));
                }
                if !keep {
                    for ext in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
                    }
                }
                if observed { &mut with } else { &mut without }.push(r);
            }
        }
        self.log("9a-9c: queries, store and raw alternating");
        let q = query::queries(&kept, size.query_iters)?;
        let records = q.records;
        for (name, (s, r), target, limit) in [
            (
                "9a indexed filter + order + limit 50 (p50)",
                q.filter_order_limit,
                "≤ 2×",
                2.0,
            ),
            ("9b indexed count (p50)", q.count, "≤ 2×", 2.0),
        ] {
            let ratio = ratio(s.p50_us, r.p50_us);
            self.rows.push(row(
                &format!("{name}, {records} records"),
                format!("{:.0} µs", s.p50_us),
                format!("{:.0} µs raw", r.p50_us),
                ratio,
                target,
                ratio.map(|q| q <= limit),
            ));
        }
        let (s, r) = q.search;
        let search_ratio = ratio(s.p50_us, r.p50_us);
        self.rows.push(row(
            &format!("9c FTS prefix search `amin*`, limit 50 (p50), {records} records"),
            format!("{:.2} ms", s.p50_us / 1000.0),
            format!("{:.2} ms raw FTS5", r.p50_us / 1000.0),
            search_ratio,
            "≤ 5 ms and ≤ 3×",
            search_ratio.map(|q| q <= 3.0 && s.p50_us <= 5000.0),
        ));
        // Re-runs: at most one per 50 ms of the window, and one at its start.
        let paced = |r: &query::SyncRun| r.reruns as f64 <= (r.window_s / 0.05).floor() + 1.0;
        let busiest = with
            .iter()
            .max_by(|a, b| {
                let rate = |r: &query::SyncRun| r.reruns as f64 / r.window_s.max(1e-9);
                rate(a).total_cmp(&rate(b))
            })
            .ok_or_else(|| fail("9d: no observed sync"))?;
        let per_50ms = busiest.reruns as f64 / (busiest.window_s / 0.05).max(1e-9);
        self.rows.push(row(
            &format!("9d observer of a 50-row query during a first sync of {n} records: re-runs"),
            format!(
                "{} re-runs in {:.2} s, shortest gap between deliveries {} (busiest of {})",
                busiest.reruns,
                busiest.window_s,
                busiest
                    .min_gap_ms
                    .map_or_else(|| "—".to_owned(), |g| format!("{g:.0} ms")),
                with.len()
            ),
            "—".into(),
            Some(per_50ms),
            "≤ 1 per 50 ms",
            Some(with.iter().all(paced)),
        ));
        let secs = |runs: &[query::SyncRun]| runs.iter().map(|r| r.sync_s).sum::<f64>();
        let (with_s, without_s) = (secs(&with), secs(&without));
        let total = (n * with.len()) as f64;
        let (a, b) = (total / with_s.max(1e-9), total / without_s.max(1e-9));
        let q_sync = ratio(a, b);
        self.rows.push(row(
            &format!("9d first sync of {n} records with that observer (throughput)"),
            format!("{a:.0} changes/s ({with_s:.2} s)"),
            format!("{b:.0} changes/s without ({without_s:.2} s)"),
            q_sync,
            "≥ 0.9×",
            q_sync.map(|q| q >= 0.9),
        ));
        self.details.insert(
            "9_queries".into(),
            json!({"queries": q, "sync_observed": with, "sync_unobserved": without}),
        );
        Ok(())
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) => format!("{r:.4}×"),
        None => "—".into(),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| figure | measured | baseline | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.figure,
            r.measured,
            r.baseline,
            fmt_ratio(r.ratio),
            r.target,
            met
        ));
    }
    s
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({
        "cpus": cpus,
        "cpu_model": cpu,
        "os": std::env::consts::OS,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn run(args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let mut run = Run {
        dir: tempfile::Builder::new().prefix("outpost-bench").tempdir()?,
        args,
        rows: Vec::new(),
        details: serde_json::Map::new(),
    };
    if run.wants(1) {
        run.fig1()?;
    }
    if run.wants(2) {
        run.fig2()?;
    }
    if run.wants(7) {
        run.fig7()?;
    }
    if [3, 4, 5, 6, 9, 10, 11, 12].iter().any(|f| run.wants(*f)) {
        let bin = server::server_binary(run.args.server_bin.as_deref())?;
        let rt = net::runtime()?;
        if run.wants(3) || run.wants(6) {
            let push_server = server::start(&bin)?;
            if run.wants(3) {
                run.fig3(&rt, &push_server.base_url())?;
            }
            if run.wants(6) {
                run.fig6(&rt, &push_server.base_url())?;
            }
        }
        if run.wants(4) || run.wants(5) {
            let seeded = server::start(&bin)?;
            if run.wants(4) {
                run.log(&format!(
                    "seeding {} records for figure 4",
                    run.args.size.pull_changes
                ));
                net::seed(
                    &rt,
                    &seeded.base_url(),
                    "pulled",
                    run.args.size.pull_changes,
                    util::payload,
                )?;
                run.fig4(&rt, &seeded.base_url())?;
            }
            if run.wants(5) {
                run.log(&format!(
                    "seeding {} records for figure 5",
                    run.args.size.initial_records
                ));
                net::seed(
                    &rt,
                    &seeded.base_url(),
                    "initial",
                    run.args.size.initial_records,
                    util::payload,
                )?;
                run.fig5(&seeded.base_url())?;
            }
        }
        if run.wants(10) {
            let files_server = server::start(&bin)?;
            run.fig10(&rt, &files_server.base_url())?;
        }
        if run.wants(11) {
            run.fig11(&rt, &bin)?;
        }
        if run.wants(12) {
            run.fig12(&rt, &bin)?;
        }
        if run.wants(9) {
            let district = server::start(&bin)?;
            let n = run.args.size.query_records;
            run.log(&format!("seeding {n} people for figure 9"));
            net::seed(
                &rt,
                &district.base_url(),
                query::COLLECTION,
                n,
                query::person,
            )?;
            run.fig9(&rt, &district.base_url())?;
        }
    }
    if run.wants(8) {
        run.fig8()?;
    }
    // Figures in their number order ("9a" is figure 9), each in the order it was added.
    run.rows.sort_by_key(|r| {
        let digits: String = r.figure.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().unwrap_or(0)
    });
    let md = table(&run.rows);
    let result = json!({
        "size": run.args.size.name,
        "machine": machine(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "rows": run.rows,
        "details": run.details,
    });
    if let Some(parent) = run.args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&run.args.out, serde_json::to_string_pretty(&result)?)?;
    std::fs::write(run.args.out.with_extension("md"), &md)?;
    println!("{md}");
    println!(
        "machine: {} · size {} · {:.0} s · results in {}",
        result["machine"],
        run.args.size.name,
        started.elapsed().as_secs_f64(),
        run.args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    let outcome = if argv.peek().map(String::as_str) == Some("__initial-sync") {
        let rest: Vec<String> = argv.skip(1).collect();
        match rest.as_slice() {
            [url, db, collection] => {
                net::initial_sync_child(url, std::path::Path::new(db), collection)
            }
            _ => Err(fail("__initial-sync URL DB COLLECTION")),
        }
    } else {
        parse_args(argv).and_then(run)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
