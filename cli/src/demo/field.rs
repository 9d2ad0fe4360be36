//! The field-survey scenario of the issue: nurses in villages with no signal.
//!
//! 1. Online start: a coordinator's tablet registers the patient list, a care plan
//!    and a draft referral; every nurse's phone pulls them.
//! 2. Offline: each nurse fills surveys, saving answers one at a time as a form does
//!    (and correcting a few), and counts each visit on the patient (a CRDT counter);
//!    every fifth survey has a wound photo (a JPEG) and a consent signature attached.
//!    Two nurses edit the same patient (field_merge) and the same care-plan field
//!    (manual); one nurse deletes a draft another has edited (last_write_wins).
//! 3. Reconnect over a flaky link until every device is quiet; the manual conflict is
//!    settled by a scripted choice, as a nurse would in the app.
//! 4. Verify against the server's own database and a fresh device (every attached file
//!    byte for byte in the server's store and downloaded by the fresh device), and
//!    report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_core::protocol::JsonObject;
use outpost_core::protocol::OpKind;
use outpost_core::{ConflictStrategy, Resolution};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::photos;
use super::scenario::Scenario;
use super::verify::{ServerDb, counter_value};
use super::{
    Checks, DemoResult, Device, Settle, device_table, engine_summary, go_offline, short_hlc,
};
use crate::DemoArgs;

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
    /// Files attached: SHA-256 → bytes.
    files: BTreeMap<String, Vec<u8>>,
    photos: u64,
    signatures: u64,
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
        // Every fifth survey, from the first, has a wound photo and a signed consent.
        if s % 5 == 0 {
            let file_seed = seed ^ ((index as u64) << 32) ^ u64::from(s);
            let photo = photos::wound_photo(file_seed)?;
            let sig = photos::signature(file_seed);
            let name = format!("wound-{survey}.jpg");
            for (question, bytes, kind, name) in [
                ("wound_photo", photo, "image/jpeg", Some(name.as_str())),
                ("consent_signature", sig, "image/svg+xml", None),
            ] {
                let r = nurse.store.attach_bytes(&bytes, kind, name)?;
                let rec = nurse.store.put(
                    "answers",
                    None,
                    json!({"survey": survey, "patient": patient, "nurse": nurse.name,
                           "question": question, "answer": r.to_json()}),
                )?;
                typed
                    .answers
                    .insert(rec.id.clone(), Value::Object(rec.data));
                typed.files.insert(r.sha256, bytes);
            }
            typed.photos += 1;
            typed.signatures += 1;
        }
        nurse.store.increment("patients", &patient, "visits", 1)?;
        *typed.visits.entry(patient).or_default() += 1;
    }
    Ok(typed)
}

/// The scripted conflicting edits, for the report and the checks.
#[derive(Debug, Default)]
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
    let mut f = Field::start(args, seed).await?;
    f.online_start().await?;
    f.offline().await?;
    f.conflicting_edits()?;
    f.reconnect().await?;
    f.verify().await
}

/// One run of the story: its devices, and what each phase leaves for the next.
#[derive(Debug)]
struct Field {
    s: Scenario,
    surveys: u32,
    /// The seed's generator for the coordinator's data and the scripted edits.
    rng: StdRng,
    patients: Vec<String>,
    /// What each nurse typed while offline, in the nurses' order.
    typed: Vec<Typed>,
    /// Whether every sync attempt while offline said so, and the requests they made.
    offline_ok: bool,
    offline_requests: u64,
    script: Script,
    resolved: Vec<Resolved>,
    unexpected: Vec<String>,
    settle: Settle,
}

impl Field {
    async fn start(args: &DemoArgs, seed: u64) -> DemoResult<Field> {
        let n = args.devices as usize;
        let surveys = args.surveys.unwrap_or(10);
        let nurses: Vec<String> = (0..n).map(nurse_name).collect();
        let collections = vec![
            ("answers", ConflictStrategy::LastWriteWins),
            ("care_plans", ConflictStrategy::Manual),
            ("drafts", ConflictStrategy::LastWriteWins),
            ("patients", ConflictStrategy::FieldMerge),
        ];
        let s = Scenario::start(args, seed, "coordinator", &nurses, collections).await?;
        println!(
            "Outpost demo: field survey, {n} nurses x {surveys} surveys of {QUESTIONS} questions, \
             seed {seed}, fail rate {:.2}",
            args.fail_rate
        );
        s.print_server("");
        Ok(Field {
            s,
            surveys,
            rng: StdRng::seed_from_u64(seed),
            patients: Vec::new(),
            typed: Vec::new(),
            offline_ok: false,
            offline_requests: 0,
            script: Script::default(),
            resolved: Vec::new(),
            unexpected: Vec::new(),
            settle: Settle::default(),
        })
    }

    /// 1. The coordinator registers the patient list, a care plan and a draft
    ///    referral; every nurse's phone pulls them.
    async fn online_start(&mut self) -> DemoResult<()> {
        println!("\n1. online start");
        let coordinator = &self.s.lead;
        let patient_count = (self.s.field.len() * 4).max(8);
        let rng = &mut self.rng;
        let patients = &mut self.patients;
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
        self.s.lead_uploads("the patient list").await?;
        println!(
            "   coordinator registered {patient_count} patients, care plan {CARE_PLAN} and draft {DRAFT}"
        );
        let reports = self.s.field_syncs_once().await;
        let pulled: Vec<String> = self
            .s
            .field
            .iter()
            .zip(&reports)
            .map(|(d, r)| format!("{} {}", d.name, r.pulled))
            .collect();
        println!(
            "   each phone pulled the list: {} records",
            pulled.join(", ")
        );
        Ok(())
    }

    /// 2. The network is reported down; a sync attempt sends nothing, and each nurse
    ///    fills surveys, saving answers one at a time as a form does.
    async fn offline(&mut self) -> DemoResult<()> {
        println!("\n2. offline: the network is reported down on every device");
        let all = self.s.all();
        go_offline(&all);
        let before: u64 = all.iter().map(|d| d.link.requests()).sum();
        let mut offline_ok = true;
        for d in &all {
            offline_ok &= d.sync_once().await.outcome == outpost_core::SyncOutcome::Offline;
        }
        let after: u64 = all.iter().map(|d| d.link.requests()).sum();
        let (nurses, surveys, seed) = (&self.s.field, self.surveys, self.s.seed);
        let progress = &self.s.progress;
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
                    let patients = &self.patients;
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
                "   {:<10} saved {} answers one at a time ({} corrected), counted {} visits, \
                 attached {} photos and {} signatures",
                d.name,
                t.answers.len(),
                t.corrections,
                t.visits.values().sum::<i64>(),
                t.photos,
                t.signatures
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
        self.typed = typed;
        self.offline_ok = offline_ok;
        self.offline_requests = after - before;
        Ok(())
    }

    /// 2, still offline: two nurses edit the same patient (field_merge) and the same
    /// care-plan field (manual); one nurse deletes a draft another has edited
    /// (last_write_wins).
    fn conflicting_edits(&mut self) -> DemoResult<()> {
        self.edit_patient_and_plan()?;
        self.edit_and_delete_draft()
    }

    /// The first two nurses: one the patient's phone, the other its village; both the
    /// care plan's next visit.
    fn edit_patient_and_plan(&mut self) -> DemoResult<()> {
        let rng = &mut self.rng;
        let (a, b) = (&self.s.field[0], &self.s.field[1]);
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
        self.script.pair = [a.name.clone(), b.name.clone()];
        (self.script.phone, self.script.village) = (phone, village);
        self.script.dates = dates;
        Ok(())
    }

    /// The first nurse deletes the draft referral that another one edits.
    fn edit_and_delete_draft(&mut self) -> DemoResult<()> {
        let nurses = &self.s.field;
        let a = &nurses[0];
        let editor = if nurses.len() >= 3 { 2 } else { 1 };
        // Which comes first is the seed's choice; the later of the two by HLC must win.
        let edit_first = self.rng.random_bool(0.5);
        let ed = &nurses[editor];
        let edit_draft = || {
            ed.store.patch(
                "drafts",
                DRAFT,
                json!({"reason": "BP not controlled on two drugs", "urgency": "high"}),
            )
        };
        let mut edit = None;
        if edit_first {
            edit = Some(edit_draft()?);
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
            edit = Some(edit_draft()?);
        }
        let edit = edit.ok_or("the draft edit did not happen")?;
        let (first, second) = if edit_first {
            (format!("{} edited", ed.name), format!("{} deleted", a.name))
        } else {
            (format!("{} deleted", a.name), format!("{} edited", ed.name))
        };
        println!("   draft {DRAFT}: {first} it, then {second} it");
        self.script.editor = editor;
        self.script.edit_hlc = edit.hlc;
        self.script.delete_hlc = delete_hlc;
        self.script.edit_data = Value::Object(edit.data);
        Ok(())
    }

    /// 3. Every device syncs over a flaky link until quiet; the manual conflict is
    ///    settled by a scripted choice, as a nurse would in the app.
    async fn reconnect(&mut self) -> DemoResult<()> {
        println!(
            "\n3. reconnect over a flaky link: {:.0}% of requests fail, some after the server committed",
            self.s.args.fail_rate * 100.0
        );
        let Field {
            s,
            resolved,
            unexpected,
            ..
        } = self;
        let all = s.all();
        let settle = s
            .sync_over_flaky_links(&all, |d| resolve_scripted(d, resolved, unexpected))
            .await?;
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
            engine_summary(&all)
        );
        for r in resolved.iter() {
            println!(
                "   {} hit a manual conflict on {CARE_PLAN}: next_visit {} here, {} on the server; \
                 the app's scripted choice: the earlier date, {}, with both notes",
                r.device, r.local, r.remote, r.kept
            );
        }
        self.settle = settle;
        Ok(())
    }

    /// 4. Checks against the server's own database and a fresh device, and the report.
    async fn verify(self) -> DemoResult<bool> {
        println!("\n4. verify");
        let (verifier, vsettle, server) = self.s.verifier().await?;
        let mut checks = Checks::default();
        checks.add(
            "offline, a sync made no request and everything was saved locally",
            if self.offline_ok && self.offline_requests == 0 {
                Vec::new()
            } else {
                vec![format!(
                    "{} requests went out while the network was reported down",
                    self.offline_requests
                )]
            },
        );
        let lost = self.check_answers(&server, &mut checks);
        let records: usize = COLLECTIONS.iter().map(|c| server.live(c).len()).sum();
        checks.add(
            format!(
                "every device equals the server: {} devices x {records} records, compared with a \
                 fresh device that pulled everything",
                self.s.all().len()
            ),
            self.s
                .devices_match(&verifier, &vsettle, &server, COLLECTIONS)?,
        );
        self.check_visits(&server, &mut checks)?;
        self.check_files(&verifier, &mut checks).await?;
        let conflict_lines = self.check_conflicts(&server, &mut checks)?;
        checks.add(
            "nothing left behind: outboxes empty, no failed entries, no open conflicts, all synced",
            self.s.left_behind(COLLECTIONS, &self.settle)?,
        );
        self.print_conflicts_and_table(&conflict_lines)?;
        Ok(self.s.finish(verifier, &checks, "answers", lost).await)
    }

    /// Conflicts settled as their strategies say. Returns a line per logged conflict.
    fn check_conflicts(&self, server: &ServerDb, checks: &mut Checks) -> DemoResult<Vec<String>> {
        let all = self.s.all();
        let conflict_lines = describe_conflicts(&all, &self.script)?;
        let problems =
            conflict_problems(server, &all, &self.script, &self.resolved, &self.unexpected)?;
        checks.add(
            format!(
                "conflicts settled as their strategies say ({} logged)",
                conflict_lines.len()
            ),
            problems,
        );
        Ok(conflict_lines)
    }

    /// The report before its checks: every logged conflict, and the per-device table.
    fn print_conflicts_and_table(&self, conflict_lines: &[String]) -> DemoResult<()> {
        println!("   conflicts (from each device's conflict log):");
        for l in conflict_lines {
            println!("   - {l}");
        }
        println!();
        let typed_by: BTreeMap<&str, u64> = self
            .s
            .field
            .iter()
            .zip(&self.typed)
            .map(|(d, t)| (d.name.as_str(), t.answers.len() as u64))
            .collect();
        print!(
            "{}",
            device_table(
                &self.s.all(),
                &|d: &Device| typed_by.get(d.name.as_str()).copied().unwrap_or(0),
                "answers"
            )?
        );
        println!(
            "   (req lost: never reached the server; resp lost: the server committed, then its \
             response was lost; retries: ops sent again, with the same op_id)"
        );
        Ok(())
    }

    /// Every saved answer, exactly once, with the data last saved. Returns the count of
    /// answers lost.
    fn check_answers(&self, server: &ServerDb, checks: &mut Checks) -> u64 {
        let mut lost = 0u64;
        let mut problems = Vec::new();
        let server_answers = server.live("answers");
        let mut saved = 0usize;
        for (d, t) in self.s.field.iter().zip(&self.typed) {
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
        lost
    }

    /// Every attached file, byte for byte, in the server's store and on a fresh
    /// device that downloads it.
    async fn check_files(&self, verifier: &Device, checks: &mut Checks) -> DemoResult<()> {
        let files: BTreeMap<&String, &Vec<u8>> =
            self.typed.iter().flat_map(|t| t.files.iter()).collect();
        let store = self.s.harness.dir.join("attachments").join("files");
        let mut problems = Vec::new();
        let mut bytes = 0usize;
        for (sha, want) in &files {
            bytes += want.len();
            let path = store.join(&sha[..2]).join(sha.as_str());
            match std::fs::read(&path) {
                Ok(got) if got == **want => {}
                Ok(_) => problems.push(format!("{sha}: the server holds other bytes")),
                Err(e) => problems.push(format!("{sha}: not in the server's store ({e})")),
            }
        }
        for sha in files.keys() {
            verifier.store.attachment(sha)?;
        }
        let give_up = Instant::now() + Duration::from_secs(120);
        while verifier.store.attachment_counts()?.downloads > 0 && Instant::now() < give_up {
            verifier.sync_once().await;
        }
        for (sha, want) in &files {
            match verifier.store.attachment(sha)? {
                outpost_core::AttachmentState::Ready { path, .. } => {
                    if std::fs::read(path)? != **want {
                        problems.push(format!("{sha}: the fresh device holds other bytes"));
                    }
                }
                outpost_core::AttachmentState::Pending { received, size } => problems.push(
                    format!("{sha}: the fresh device has {received} of {size} bytes"),
                ),
            }
        }
        let photos: u64 = self.typed.iter().map(|t| t.photos).sum();
        checks.add(
            format!(
                "every attached file byte for byte on the server and on a fresh device: \
                 {} files ({photos} JPEG photos, {photos} signatures), {:.1} MB",
                files.len(),
                bytes as f64 / 1e6
            ),
            problems,
        );
        Ok(())
    }

    /// Visit counters: the sum of every nurse's increments, on the server and on every
    /// device.
    fn check_visits(&self, server: &ServerDb, checks: &mut Checks) -> DemoResult<()> {
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for t in &self.typed {
            for (p, v) in &t.visits {
                *expected.entry(p.clone()).or_default() += v;
            }
        }
        let mut problems = Vec::new();
        for p in &self.patients {
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
            for d in self.s.all() {
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
                 ({SHARED_PATIENT}: {shared_visits}, counted on {} phones)",
                expected.values().sum::<i64>(),
                self.patients.len(),
                self.s.field.len()
            ),
            problems,
        );
        Ok(())
    }
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
