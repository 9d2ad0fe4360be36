//! A nurse's survey saved offline: the store, its outbox and its change feed.
//!
//! Run with `cargo run -p outpost-core --example field_survey`.

use std::sync::Arc;

use outpost_core::{ChangeEvent, ConflictStrategy, Query, Store, StoreConfig};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig::default()
        .with_collection("patients", ConflictStrategy::FieldMerge)
        .with_collection("answers", ConflictStrategy::LastWriteWins);
    let store = Store::open(dir.path().join("device.db"), config)?;
    let _sub = store.subscribe(Arc::new(|e: &ChangeEvent| {
        println!(
            "  change feed: {} record(s) in {:?} ({:?})",
            e.records.len(),
            e.collections,
            e.origin
        );
    }))?;

    println!("Registering a patient, with no network…");
    store.put(
        "patients",
        Some("p-17"),
        json!({"name": "Amina", "village": "Kole", "age": 34}),
    )?;
    store.increment("patients", "p-17", "visits", 1)?;

    println!("Saving a 40-question survey atomically…");
    store.batch(|tx| {
        for q in 0..40 {
            tx.put(
                "answers",
                None,
                json!({"patient": "p-17", "question": q, "answer": q % 3 == 0}),
            )?;
        }
        Ok(())
    })?;
    std::thread::sleep(std::time::Duration::from_millis(50));

    let yes = store.count("answers", &[("answer".into(), json!(true))])?;
    let first = store.query(
        "answers",
        &Query::new().order_by("question", false).limit(3),
    )?;
    println!(
        "{yes} 'yes' answers; first questions: {:?}",
        first
            .iter()
            .map(|r| &r.data["question"])
            .collect::<Vec<_>>()
    );
    let counts = store.outbox_counts()?;
    println!(
        "outbox: {} pending upload(s), {} failed",
        counts.pending, counts.failed
    );
    store.close();
    Ok(())
}
