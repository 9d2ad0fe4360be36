//! The field-survey scenario of the issue: nurses in villages with no signal.
//!
//! 1. Online start: a coordinator's tablet registers the patient list, a care plan
//!    and a draft referral; every nurse's phone pulls them.
//! 2. Offline: each nurse fills surveys, saving answers one at a time as a form does
//!    (and correcting a few), and counts each visit on the patient (a CRDT counter).
//!    Two nurses edit the same patient (field_merge) and the same care-plan field
//!    (manual); one nurse deletes a draft another has edited (last_write_wins).
//! 3. Reconnect over a flaky link until every device is quiet; the manual conflict is
//!    settled by a scripted choice, as a nurse would in the app.
//! 4. Verify against the server's own database and a fresh device, and report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_core::protocol::JsonObject;
use outpost_core::protocol::OpKind;
use outpost_core::{ConflictStrategy, Resolution};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::verify::{ServerDb, counter_value};
use super::{
    Checks, DemoResult, Device, Harness, compare_devices, device_table, go_offline, go_online,
    leftovers, print_kept, short_hlc, sync_until_quiet,
};
use crate::DemoArgs;
use crate::progress::Progress;

const NURSES: &[&str] = &[
    "amina", "ben", "chioma", "dawit", "esi", "farid", "grace", "hamza", "ifeoma", "juma", "kwame",
    "lindiwe", "moses", "nadia", "obi", "precious",
];
const VILLAGES: &[&str] = &[
    "Kole", "Mbale", "Gulu", "Arua", "Lira", "Soroti", "Tororo", "Kitgum",
];
const PATIENT_NAMES: &[&str] = &[
    "Achieng", "Babirye", "Okello", "Nakato", "Mugisha", "Auma", "Kato", "Namuli", "Opio", "Atim",
    "Ssali", "Akello", "Wasswa", "Nabirye", "Odongo", "Apio",
];
const QUESTIONS: usize = 10;
const COLLECTIONS: &[&str] = &["answers", "care_plans", "drafts", "patients"];
const SHARED_PATIENT: &str = "p-001";
const CARE_PLAN: &str = "cp-001";
const DRAFT: &str = "referral-p-001";

fn nurse_name(i: usize) -> String {
    NURSES
        .get(i)
        .map_or_else(|| format!("nurse-{}", i + 1), |n| (*n).to_owned())
}

/// One answer to survey question `q`, as the nurse would type or tick it.
fn answer(q: usize, rng: &mut StdRng) -> (&'static str, Value) {
    match q {
        0 => ("fever", json!(rng.random_bool(0.3))),
        1 => ("cough", json!(rng.random_bool(0.4))),
        2 => (
            "temperature_c",
            json!(f64::from(rng.random_range(360..=400u16)) / 10.0),
        ),
        3 => ("bp_systolic", json!(rng.random_range(95..=170))),
        4 => ("weight_kg", json!(rng.random_range(8..=90))),
        5 => (
            "malaria_rdt",
            json!(["negative", "positive", "not done"][rng.random_range(0..3)]),
        ),
        6 => ("sleeps_under_net", json!(rng.random_bool(0.7))),
        7 => (
            "water_source",
            json!(["borehole", "river", "rain tank", "tap"][rng.random_range(0..4)]),
        ),
        8 => ("children_under_5", json!(rng.random_range(0..=5))),
        _ => (
            "notes",
            json!(
                ["", "follow up next week", "referred for lab test", "well"]
                    [rng.random_range(0..4)]
            ),
        ),
    }
}

/// What one nurse typed while offline.
#[derive(Debug, Default)]
struct Typed {
    /// Answer id → the data last saved.
    answers: BTreeMap<String, Value>,
    corrections: u64,
    /// Patient id → visits counted.
    visits: BTreeMap<String, i64>,
}

/// Fills `surveys` surveys on one phone, one answer per write.
fn fill_surveys(
    nurse: &Device,
    index: usize,
    surveys: u32,
    patients: &[String],
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> DemoResult<Typed> {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x5851_f42d));
    let mut typed = Typed::default();
    for s in 0..surveys {
        // Every nurse's first survey is of the shared patient, so its visit counter
        // gets increments from every phone.
        let patient = if s == 0 {
            SHARED_PATIENT.to_owned()
        } else {
            patients[rng.random_range(0..patients.len())].clone()
        };
        let survey = format!("{}-s{:03}", nurse.name, s + 1);
        let mut previous: Option<String> = None;
        for q in 0..QUESTIONS {
            let (question, value) = answer(q, &mut rng);
            let rec = nurse.store.put(
                "answers",
                None,
                json!({"survey": survey, "patient": patient, "nurse": nurse.name,
                       "question": question, "answer": value}),
            )?;
            typed
                .answers
                .insert(rec.id.clone(), Value::Object(rec.data));
            // Now and then the nurse goes back one question and changes the answer.
            if let Some(prev) = previous.as_ref().filter(|_| rng.random_bool(0.08)) {
                let q_prev = q - 1;
                let (_, value) = answer(q_prev, &mut rng);
                let rec = nurse.store.patch(
                    "answers",
                    prev,
                    json!({"answer": value, "corrected": true}),
                )?;
                typed
                    .answers
                    .insert(rec.id.clone(), Value::Object(rec.data));
                typed.corrections += 1;
            }
            previous = Some(rec.id);
            bar.inc(1);
        }
        nurse.store.increment("patients", &patient, "visits", 1)?;
        *typed.visits.entry(patient).or_default() += 1;
    }
    Ok(typed)
}

/// The scripted conflicting edits, for the report and the checks.
#[derive(Debug)]
struct Script {
    /// The two nurses who edit the shared patient and the care plan.
    pair: [String; 2],
    phone: String,
    village: String,
    dates: [String; 2],
    edit_hlc: String,
    delete_hlc: String,
    edit_data: Value,
    editor: usize,
}

/// What the scripted app did with a manual conflict.
#[derive(Debug)]
struct Resolved {
    device: String,
    local: String,
    remote: String,
    kept: String,
}

pub async fn run(args: &DemoArgs, seed: u64) -> DemoResult<bool> {
    let n = args.devices as usize;
    let surveys = args.surveys.unwrap_or(10);
    let mut users: Vec<String> = (0..n).map(nurse_name).collect();
    users.push("coordinator".to_owned());
    let collections = vec![
        ("answers", ConflictStrategy::LastWriteWins),
        ("care_plans", ConflictStrategy::Manual),
        ("drafts", ConflictStrategy::LastWriteWins),
        ("patients", ConflictStrategy::FieldMerge),
    ];
    let started = Instant::now();
    let harness = Harness::start(args, seed, &users, collections).await?;
    println!(
        "Outpost demo: field survey, {n} nurses x {surveys} surveys of {QUESTIONS} questions, \
         seed {seed}, fail rate {:.2}",
        args.fail_rate
    );
    println!(
        "   reference server in this process on {} (SQLite: {})",
        harness.url.trim_end_matches('/'),
        harness.server_db.display()
    );
    println!(
        "   replay this run with: outpost demo --seed {seed}{}",
        super::replay_flags(args)
    );

    let coordinator = harness.device("coordinator", "coordinator", 0)?;
    let mut nurses = Vec::with_capacity(n);
    for i in 0..n {
        let name = nurse_name(i);
        nurses.push(harness.device(&name, &name, i as u64 + 1)?);
    }
    let mut all: Vec<&Device> = nurses.iter().collect();
    all.push(&coordinator);

    // ---- 1. online start ----
    println!("\n1. online start");
    let mut rng = StdRng::seed_from_u64(seed);
    let patient_count = (n * 4).max(8);
    let mut patients = Vec::with_capacity(patient_count);
    coordinator.store.batch(|tx| {
        for i in 0..patient_count {
            let id = format!("p-{:03}", i + 1);
            tx.put(
                "patients",
                Some(&id),
                json!({
                    "name": format!("{} {}", PATIENT_NAMES[i % PATIENT_NAMES.len()], i / PATIENT_NAMES.len() + 1),
                    "village": VILLAGES[rng.random_range(0..VILLAGES.len())],
                    "age": rng.random_range(1..=80),
                    "phone": format!("+256 7{:08}", rng.random_range(0..100_000_000u32)),
                }),
            )?;
            patients.push(id);
        }
        tx.put(
            "care_plans",
            Some(CARE_PLAN),
            json!({"patient": SHARED_PATIENT, "plan": "hypertension follow-up",
                   "next_visit": "2026-03-20", "note": "routine"}),
        )?;
        tx.put(
            "drafts",
            Some(DRAFT),
            json!({"patient": SHARED_PATIENT, "to": "district hospital",
                   "reason": "persistent high blood pressure"}),
        )?;
        Ok(())
    })?;
    let hidden = indicatif::ProgressBar::hidden();
    let settle = sync_until_quiet(&[&coordinator], &hidden, |_| Ok(0)).await?;
    if !settle.quiet {
        return Err("the coordinator could not upload the patient list".into());
    }
    println!(
        "   coordinator registered {patient_count} patients, care plan {CARE_PLAN} and draft {DRAFT}"
    );
    let mut pulled = Vec::new();
    for d in &nurses {
        let r = d.sync_once().await;
        pulled.push(format!("{} {}", d.name, r.pulled));
    }
    println!(
        "   each phone pulled the list: {} records",
        pulled.join(", ")
    );

    // ---- 2. offline ----
    println!("\n2. offline: the network is reported down on every device");
    go_offline(&all);
    let before: u64 = all.iter().map(|d| d.link.requests()).sum();
    let mut offline_ok = true;
    for d in &all {
        offline_ok &= d.sync_once().await.outcome == outpost_core::SyncOutcome::Offline;
    }
    let after: u64 = all.iter().map(|d| d.link.requests()).sum();
    let progress = Progress::new();
    let bars: Vec<_> = nurses
        .iter()
        .map(|d| progress.bar(u64::from(surveys) * QUESTIONS as u64, &d.name, "answers"))
        .collect();
    let fill_started = Instant::now();
    let typed: Vec<DemoResult<Typed>> = std::thread::scope(|s| {
        let handles: Vec<_> = nurses
            .iter()
            .zip(&bars)
            .enumerate()
            .map(|(i, (d, bar))| {
                let patients = &patients;
                s.spawn(move || fill_surveys(d, i, surveys, patients, seed, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a survey thread panicked".into()))
            })
            .collect()
    });
    let typed: Vec<Typed> = typed.into_iter().collect::<DemoResult<_>>()?;
    progress.done(&bars.iter().collect::<Vec<_>>());
    for (d, t) in nurses.iter().zip(&typed) {
        println!(
            "   {:<10} saved {} answers one at a time ({} corrected), counted {} visits",
            d.name,
            t.answers.len(),
            t.corrections,
            t.visits.values().sum::<i64>()
        );
    }
    println!(
        "   {} answers saved in {:.1} s, each durable (fsynced) when save returned",
        typed.iter().map(|t| t.answers.len()).sum::<usize>(),
        fill_started.elapsed().as_secs_f64()
    );
    println!(
        "   a sync attempt on every device while offline: {} (requests made: {})",
        if offline_ok {
            "offline, nothing sent"
        } else {
            "NOT offline"
        },
        after - before
    );

    // The conflicting edits, scripted.
    let (a, b) = (&nurses[0], &nurses[1]);
    let editor = if n >= 3 { 2 } else { 1 };
    let phone = format!("+256 7{:08}", rng.random_range(0..100_000_000u32));
    // A village other than the current one: an edit that changes nothing but the
    // counter is no conflict at all, and the scenario is about two real edits.
    let current = b
        .store
        .get("patients", SHARED_PATIENT)?
        .and_then(|r| r.data.get("village").cloned());
    let others: Vec<&str> = VILLAGES
        .iter()
        .copied()
        .filter(|v| current.as_ref() != Some(&json!(v)))
        .collect();
    let village = others[rng.random_range(0..others.len())].to_owned();
    a.store
        .patch("patients", SHARED_PATIENT, json!({"phone": phone}))?;
    b.store
        .patch("patients", SHARED_PATIENT, json!({"village": village}))?;
    println!(
        "   {} and {} both edited patient {SHARED_PATIENT}: {} the phone, {} the village",
        a.name, b.name, a.name, b.name
    );
    let mut days: Vec<u32> = (1..=28).collect();
    let d1 = days.remove(rng.random_range(0..days.len()));
    let d2 = days.remove(rng.random_range(0..days.len()));
    let dates = [format!("2026-03-{d1:02}"), format!("2026-03-{d2:02}")];
    a.store.patch(
        "care_plans",
        CARE_PLAN,
        json!({"next_visit": dates[0], "note": format!("{}: BP 160/100, review soon", a.name)}),
    )?;
    b.store.patch(
        "care_plans",
        CARE_PLAN,
        json!({"next_visit": dates[1], "note": format!("{}: BP 150/95, recheck", b.name)}),
    )?;
    println!(
        "   both changed next_visit of care plan {CARE_PLAN}: {} to {}, {} to {}",
        a.name, dates[0], b.name, dates[1]
    );
    // Which comes first is the seed's choice; the later of the two by HLC must win.
    let edit_first = rng.random_bool(0.5);
    let ed = &nurses[editor];
    let mut edit = None;
    if edit_first {
        edit = Some(ed.store.patch(
            "drafts",
            DRAFT,
            json!({"reason": "BP not controlled on two drugs", "urgency": "high"}),
        )?);
        std::thread::sleep(Duration::from_millis(3));
    }
    a.store.delete("drafts", DRAFT)?;
    let delete_hlc = a
        .store
        .outbox_entries()?
        .into_iter()
        .find(|e| e.record_id == DRAFT && e.kind == OpKind::Delete)
        .map(|e| e.hlc)
        .unwrap_or_default();
    if !edit_first {
        std::thread::sleep(Duration::from_millis(3));
        edit = Some(ed.store.patch(
            "drafts",
            DRAFT,
            json!({"reason": "BP not controlled on two drugs", "urgency": "high"}),
        )?);
    }
    let edit = edit.ok_or("the draft edit did not happen")?;
    let script = Script {
        pair: [a.name.clone(), b.name.clone()],
        phone,
        village,
        dates,
        edit_hlc: edit.hlc.clone(),
        delete_hlc,
        edit_data: Value::Object(edit.data.clone()),
        editor,
    };
    let (first, second) = if edit_first {
        (format!("{} edited", ed.name), format!("{} deleted", a.name))
    } else {
        (format!("{} deleted", a.name), format!("{} edited", ed.name))
    };
    println!("   draft {DRAFT}: {first} it, then {second} it");

    // ---- 3. reconnect ----
    println!(
        "\n3. reconnect over a flaky link: {:.0}% of requests fail, some after the server committed",
        args.fail_rate * 100.0
    );
    for d in &all {
        d.link.set_random_faults(true);
    }
    go_online(&all).await?;
    let to_send: u64 = all.iter().map(|d| d.engine.status().pending).sum();
    let bar = progress.bar(to_send, "syncing", "edits");
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    let settle = sync_until_quiet(&all, &bar, |d| {
        resolve_scripted(d, &mut resolved, &mut unexpected)
    })
    .await?;
    progress.done(&[&bar]);
    for d in &all {
        d.link.set_random_faults(false);
    }
    let faults: u64 = all
        .iter()
        .map(|d| {
            let s = d.link.stats();
            s.lost_requests + s.lost_answers
        })
        .sum();
    println!(
        "   {} after {} rounds in {:.1} s; the link lost {faults} requests or answers on the way",
        if settle.quiet { "quiet" } else { "NOT quiet" },
        settle.rounds,
        settle.elapsed.as_secs_f64()
    );
    println!(
        "   engines report over the whole run: {}",
        super::engine_summary(&all)
    );
    for r in &resolved {
        println!(
            "   {} hit a manual conflict on {CARE_PLAN}: next_visit {} here, {} on the server; \
             the app's scripted choice: the earlier date, {}, with both notes",
            r.device, r.local, r.remote, r.kept
        );
    }

    // ---- 4. verify ----
    println!("\n4. verify");
    let verifier = harness.device("verifier", "coordinator", 999)?;
    let hidden = indicatif::ProgressBar::hidden();
    let vsettle = sync_until_quiet(&[&verifier], &hidden, |_| Ok(0)).await?;
    let server = ServerDb::read(&harness.server_db)?;
    let mut checks = Checks::default();
    checks.add(
        "offline, a sync made no request and everything was saved locally",
        if offline_ok && after == before {
            Vec::new()
        } else {
            vec![format!(
                "{} requests went out while the network was reported down",
                after - before
            )]
        },
    );

    // Every saved answer, exactly once, with the data last saved.
    let mut lost = 0u64;
    let mut problems = Vec::new();
    let server_answers = server.live("answers");
    let mut saved = 0usize;
    for (d, t) in nurses.iter().zip(&typed) {
        for (id, data) in &t.answers {
            saved += 1;
            match server_answers.get(id) {
                Some((got, _)) if got == data => {}
                Some(_) => {
                    lost += 1;
                    problems.push(format!("{id} by {}: the server holds other data", d.name));
                }
                None => {
                    lost += 1;
                    problems.push(format!("{id} by {}: not on the server", d.name));
                }
            }
        }
    }
    if server_answers.len() != saved {
        problems.push(format!(
            "the server holds {} answers, the nurses saved {saved}",
            server_answers.len()
        ));
    }
    let once = server.exactly_once_problems();
    checks.add(
        format!(
            "every saved answer is on the server exactly once: {} of {saved} \
             (audit: {} applied ops, {} op_ids applied twice, every version = its applied ops)",
            saved as u64 - lost,
            server.audit_rows,
            server.ops_applied_twice
        ),
        problems.into_iter().chain(once).collect(),
    );

    // Every device equals the server.
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
    let records: usize = COLLECTIONS.iter().map(|c| server.live(c).len()).sum();
    checks.add(
        format!(
            "every device equals the server: {} devices x {records} records, compared with a \
             fresh device that pulled everything",
            all.len()
        ),
        problems,
    );

    // Visit counters.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for t in &typed {
        for (p, v) in &t.visits {
            *expected.entry(p.clone()).or_default() += v;
        }
    }
    let mut problems = Vec::new();
    for p in &patients {
        let want = expected.get(p).copied().unwrap_or(0);
        let on_server = server
            .get("patients", p)
            .and_then(|r| r.data.as_ref())
            .and_then(|d| counter_value(d, "visits"));
        if on_server != Some(want) {
            problems.push(format!(
                "{p}: server counts {on_server:?}, nurses counted {want}"
            ));
        }
        for d in &all {
            let here = d
                .store
                .get("patients", p)?
                .and_then(|r| counter_value(&Value::Object(r.data), "visits"));
            if here != Some(want) {
                problems.push(format!(
                    "{p} on {}: {here:?}, nurses counted {want}",
                    d.name
                ));
            }
        }
    }
    let shared_visits = expected.get(SHARED_PATIENT).copied().unwrap_or(0);
    checks.add(
        format!(
            "visit counters equal the sum of increments: {} visits over {} patients \
             ({SHARED_PATIENT}: {shared_visits}, counted on {n} phones)",
            expected.values().sum::<i64>(),
            patients.len()
        ),
        problems,
    );

    // Conflicts and their outcomes.
    let conflict_lines = describe_conflicts(&all, &script)?;
    let problems = conflict_problems(&server, &all, &script, &resolved, &unexpected)?;
    checks.add(
        format!(
            "conflicts settled as their strategies say ({} logged)",
            conflict_lines.len()
        ),
        problems,
    );
    checks.add(
        "nothing left behind: outboxes empty, no failed entries, no open conflicts, all synced",
        {
            let mut p = leftovers(&all, COLLECTIONS)?;
            if !settle.quiet {
                p.push(format!("sync was not quiet after {} rounds", settle.rounds));
            }
            p
        },
    );

    println!("   conflicts (from each device's conflict log):");
    for l in &conflict_lines {
        println!("   - {l}");
    }
    println!();
    let typed_by: BTreeMap<&str, u64> = nurses
        .iter()
        .zip(&typed)
        .map(|(d, t)| (d.name.as_str(), t.answers.len() as u64))
        .collect();
    print!(
        "{}",
        device_table(
            &all,
            &|d: &Device| typed_by.get(d.name.as_str()).copied().unwrap_or(0),
            "answers"
        )?
    );
    println!(
        "   (req lost: never reached the server; resp lost: the server committed, then its \
         response was lost; retries: ops sent again, with the same op_id)"
    );
    println!("\n   checks:");
    checks.print();
    print_kept(&harness, &all);
    println!("\nfinished in {:.1} s", started.elapsed().as_secs_f64());
    println!("lost answers: {lost}");

    for d in all.iter().chain([&&verifier]) {
        d.engine.shutdown();
        d.store.close();
    }
    harness.stop().await;
    Ok(checks.all_passed() && lost == 0)
}

/// The app's scripted answer to a manual conflict: for a care plan, keep the earlier
/// follow-up date (the safer one) and both nurses' notes.
fn resolve_scripted(
    d: &Device,
    resolved: &mut Vec<Resolved>,
    unexpected: &mut Vec<String>,
) -> DemoResult<usize> {
    let open = d.engine.conflicts()?;
    for c in &open {
        let field = |o: &Option<JsonObject>, k: &str| {
            o.as_ref()
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if c.collection != "care_plans" || c.local.is_none() || c.remote.is_none() {
            // Not one the script knows: keep what this nurse typed, and say so.
            unexpected.push(format!("{}/{} on {}", c.collection, c.record_id, d.name));
            d.engine.resolve(c.id, Resolution::KeepLocal)?;
            continue;
        }
        let (local, remote) = (
            field(&c.local, "next_visit"),
            field(&c.remote, "next_visit"),
        );
        let kept = local.clone().min(remote.clone());
        let mut merged = c.remote.clone().unwrap_or_default();
        merged.insert("next_visit".into(), json!(kept));
        merged.insert(
            "note".into(),
            json!(format!(
                "{} | {}",
                field(&c.remote, "note"),
                field(&c.local, "note")
            )),
        );
        d.engine.resolve(c.id, Resolution::Merged(merged))?;
        resolved.push(Resolved {
            device: d.name.clone(),
            local,
            remote,
            kept,
        });
    }
    Ok(open.len())
}

/// Fields whose value differs between two versions of a record.
fn changed(from: Option<&JsonObject>, to: Option<&JsonObject>) -> Vec<String> {
    let empty = JsonObject::new();
    let (from, to) = (from.unwrap_or(&empty), to.unwrap_or(&empty));
    from.keys()
        .chain(to.keys())
        .filter(|k| from.get(*k) != to.get(*k))
        .map(|k| k.to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn describe_conflicts(devices: &[&Device], script: &Script) -> DemoResult<Vec<String>> {
    let mut lines = Vec::new();
    for d in devices {
        for c in d.store.conflict_log()? {
            let what = format!(
                "{}/{} ({}) on {}: {}",
                c.collection,
                c.record_id,
                c.strategy.as_str(),
                d.name,
                c.outcome
            );
            let why = match c.collection.as_str() {
                "drafts" => {
                    let (winner, why) = if script.delete_hlc > script.edit_hlc {
                        ("the delete", "deleted on every device")
                    } else {
                        ("the edit", "kept on every device")
                    };
                    format!(
                        "delete at {} vs edit at {}: {winner} is later by HLC and wins, {why}; \
                         the losing version stays in this conflict log",
                        short_hlc(&script.delete_hlc),
                        short_hlc(&script.edit_hlc)
                    )
                }
                _ => {
                    let here = changed(c.base.as_ref(), c.local.as_ref());
                    let there = changed(c.base.as_ref(), c.remote.as_ref());
                    let how = match c.outcome.as_str() {
                        "merged" => "merged field by field, counters added",
                        "resolved_merged" => "settled by the app's scripted choice",
                        "remote" => "the server's version stood",
                        "local" => "this device's version was resent",
                        _ => "",
                    };
                    format!(
                        "changed here [{}], on the server [{}]: {how}",
                        here.join(", "),
                        there.join(", ")
                    )
                }
            };
            lines.push(format!("{what}: {why}"));
        }
    }
    Ok(lines)
}

fn conflict_problems(
    server: &ServerDb,
    devices: &[&Device],
    script: &Script,
    resolved: &[Resolved],
    unexpected: &[String],
) -> DemoResult<Vec<String>> {
    let mut problems: Vec<String> = unexpected
        .iter()
        .map(|u| format!("unexpected manual conflict {u} (kept the local version)"))
        .collect();
    let patient = server
        .get("patients", SHARED_PATIENT)
        .and_then(|r| r.data.clone())
        .unwrap_or(Value::Null);
    for (nurse, field, want) in [
        (&script.pair[0], "phone", &script.phone),
        (&script.pair[1], "village", &script.village),
    ] {
        let got = patient.get(field).cloned().unwrap_or(Value::Null);
        if got != json!(want) {
            problems.push(format!(
                "{SHARED_PATIENT}: {nurse}'s {field} {want:?} was lost: the server has {got} \
                 (field_merge must keep a field changed by one nurse)"
            ));
        }
    }
    let merged_logged = devices.iter().try_fold(false, |found, d| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            found
                || d.store
                    .conflict_log()?
                    .iter()
                    .any(|c| c.record_id == SHARED_PATIENT && c.outcome == "merged"),
        )
    })?;
    if !merged_logged {
        problems.push(format!(
            "{SHARED_PATIENT}: the two nurses' edits should meet in a field_merge conflict"
        ));
    }
    let plan = server
        .get("care_plans", CARE_PLAN)
        .and_then(|r| r.data.clone())
        .unwrap_or(Value::Null);
    let earliest = script.dates.iter().min().cloned().unwrap_or_default();
    if resolved.len() != 1 {
        problems.push(format!(
            "{CARE_PLAN}: expected one manual conflict, the app settled {}",
            resolved.len()
        ));
    }
    if plan.get("next_visit") != Some(&json!(earliest)) {
        problems.push(format!(
            "{CARE_PLAN}: the scripted choice was {earliest}, the server has {plan}"
        ));
    }
    let draft = server.get("drafts", DRAFT);
    let delete_wins = script.delete_hlc > script.edit_hlc;
    match (delete_wins, draft.and_then(|r| r.data.as_ref())) {
        (true, None) => {}
        (false, Some(d)) if *d == script.edit_data => {}
        (_, got) => problems.push(format!(
            "{DRAFT}: the {} is later by HLC and should win, the server has {got:?}",
            if delete_wins { "delete" } else { "edit" }
        )),
    }
    let logged = devices.iter().try_fold(0usize, |n, d| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            n + d
                .store
                .conflict_log()?
                .iter()
                .filter(|c| c.record_id == DRAFT)
                .count(),
        )
    })?;
    if logged == 0 {
        problems.push(format!(
            "{DRAFT}: the losing version of {} is in no conflict log",
            devices
                .get(script.editor)
                .map_or("the edit", |d| d.name.as_str())
        ));
    }
    Ok(problems)
}
