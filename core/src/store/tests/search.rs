//! Full-text search kept in step with every write path: local edits, a rolled-back
//! batch, pulled pages and tombstones, a full re-pull, and the declaration changing.

use serde_json::{Value, json};

use crate::protocol::Change;
use crate::{CollectionConfig, ConflictStrategy, Error, Filter, Query, Store, StoreConfig};

fn searchable() -> StoreConfig {
    StoreConfig::default().with(
        CollectionConfig::new("patients", ConflictStrategy::ServerWins)
            .with_search(&["name", "tags"]),
    )
}

fn found(store: &Store, text: &str) -> Vec<String> {
    store
        .query("patients", &Query::new().matching(Filter::search(text)))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn pulled(id: &str, version: i64, data: Option<Value>) -> Change {
    Change {
        collection: "patients".into(),
        record_id: id.into(),
        version,
        seq: version,
        deleted: data.is_none(),
        data: data.map(|d| d.as_object().cloned().unwrap()),
        hlc: format!("{:013}-00000-srv", 1_000 + version),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

#[test]
fn search_stays_in_step_with_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path, searchable()).unwrap();
    // Local writes: put, patch, delete, and a batch that rolls back.
    store
        .put("patients", Some("p1"), json!({"name": "Amina"}))
        .unwrap();
    store
        .patch("patients", "p1", json!({"name": "Aminata"}))
        .unwrap();
    assert_eq!(found(&store, "aminata"), ["p1"]);
    assert!(found(&store, "amina").is_empty());
    let failed: Result<(), Error> = store.batch(|tx| {
        tx.put("patients", Some("p9"), json!({"name": "Ghost"}))?;
        Err(Error::InvalidData("stop".into()))
    });
    assert!(failed.is_err());
    assert!(
        found(&store, "ghost").is_empty(),
        "rolled back with the write"
    );
    store.delete("patients", "p1").unwrap();
    assert!(found(&store, "aminata").is_empty());
    drop(store);
    // Pulled pages, a tombstone, and a full re-pull that drops what the server lost.
    let store = Store::open(&path, searchable()).unwrap();
    let page = [
        pulled("s1", 1, Some(json!({"name": "Chioma"}))),
        pulled("s2", 2, Some(json!({"name": "Ben"}))),
    ];
    store
        .apply_pull_page("patients", &page, "c1", None)
        .unwrap();
    assert_eq!(found(&store, "chioma"), ["s1"]);
    store
        .apply_pull_page("patients", &[pulled("s2", 3, None)], "c2", None)
        .unwrap();
    assert!(found(&store, "ben").is_empty());
    let g = store.begin_resync("patients").unwrap();
    let page = [pulled("s3", 4, Some(json!({"name": "Dede"})))];
    store
        .apply_pull_page("patients", &page, "c3", Some(g))
        .unwrap();
    assert!(found(&store, "chioma").is_empty(), "dropped by the re-pull");
    assert_eq!(found(&store, "dede"), ["s3"]);
    drop(store);
    // Undeclared: gone; declared again: rebuilt from the records.
    let plain = StoreConfig::default().with_collection("patients", ConflictStrategy::ServerWins);
    let store = Store::open(&path, plain).unwrap();
    assert!(matches!(
        store.query("patients", &Query::new().matching(Filter::search("dede"))),
        Err(Error::InvalidData(_))
    ));
    drop(store);
    let store = Store::open(&path, searchable()).unwrap();
    assert_eq!(found(&store, "dede"), ["s3"]);
}
