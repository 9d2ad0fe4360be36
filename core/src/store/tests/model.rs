//! Property: whatever the interleaving of edits, sends, lost answers and restarts,
//! replaying the (coalesced) outbox on a server gives the same state as replaying every
//! write, and every op_id takes effect once.

use std::collections::{BTreeMap, HashSet};

use crate::outbox::{BatchLimits, PushOutcome};
use crate::protocol::{JsonObject, OpKind};
use crate::{ConflictStrategy, Query, Store, StoreConfig};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Step {
    Put(usize, u8),
    Patch(usize, u8, u8),
    Delete(usize),
    /// Send a batch; the server applies it and the device hears back.
    Send,
    /// Send a batch; the server applies it but the answer is lost, then the app restarts.
    SendLost,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, any::<u8>()).prop_map(|(r, v)| Step::Put(r, v)),
        4 => (0..3usize, 0..3u8, any::<u8>()).prop_map(|(r, f, v)| Step::Patch(r, f, v)),
        2 => (0..3usize).prop_map(Step::Delete),
        2 => Just(Step::Send),
        1 => Just(Step::SendLost),
        1 => Just(Step::Restart),
    ]
}

#[derive(Default)]
struct Server {
    records: BTreeMap<String, JsonObject>,
    versions: BTreeMap<String, i64>,
    applied: HashSet<String>,
    effects: usize,
}

impl Server {
    fn apply(&mut self, e: &crate::OutboxEntry) -> i64 {
        if self.applied.insert(e.op_id.clone()) {
            self.effects += 1;
            let data = e.data.clone().unwrap_or_default();
            match e.kind {
                OpKind::Put => {
                    self.records.insert(e.record_id.clone(), data);
                }
                OpKind::Patch => {
                    let rec = self
                        .records
                        .get_mut(&e.record_id)
                        .expect("patch of a missing record");
                    rec.extend(data);
                }
                OpKind::Delete => {
                    self.records.remove(&e.record_id);
                }
            }
            *self.versions.entry(e.record_id.clone()).or_insert(0) += 1;
        }
        self.versions[&e.record_id]
    }
}

fn config() -> StoreConfig {
    StoreConfig::default().with_collection("c", ConflictStrategy::LastWriteWins)
}

fn send(store: &Store, server: &mut Server, answer: bool) {
    let batch = store
        .outbox_next_batch(
            BatchLimits {
                max_ops: 2,
                max_bytes: 1 << 20,
            },
            0,
        )
        .unwrap();
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    store.outbox_mark_in_flight(&ids).unwrap();
    let results: Vec<_> = batch
        .iter()
        .map(|e| {
            (
                e.id,
                PushOutcome::Applied {
                    version: server.apply(e),
                },
            )
        })
        .collect();
    if answer {
        store.outbox_apply_results(&results).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn coalesced_queue_replays_to_the_same_state(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut store = Store::open(&path, config()).unwrap();
        let mut model: BTreeMap<String, JsonObject> = BTreeMap::new();
        let mut server = Server::default();
        let mut writes = 0usize;
        for s in &steps {
            match s {
                Step::Put(r, v) => {
                    let id = format!("r{r}");
                    let data = json!({"v": v});
                    store.put("c", Some(&id), data.clone()).unwrap();
                    model.insert(id, data.as_object().unwrap().clone());
                    writes += 1;
                }
                Step::Patch(r, f, v) => {
                    let id = format!("r{r}");
                    let fields = json!({ format!("f{f}"): v });
                    let res = store.patch("c", &id, fields.clone());
                    match model.get_mut(&id) {
                        Some(rec) => {
                            res.unwrap();
                            rec.extend(fields.as_object().unwrap().clone());
                            writes += 1;
                        }
                        None => prop_assert!(res.is_err()),
                    }
                }
                Step::Delete(r) => {
                    let id = format!("r{r}");
                    let res = store.delete("c", &id);
                    prop_assert_eq!(res.is_ok(), model.remove(&id).is_some());
                    writes += usize::from(res.is_ok());
                }
                Step::Send => send(&store, &mut server, true),
                Step::SendLost => {
                    send(&store, &mut server, false);
                    drop(store);
                    store = Store::open(&path, config()).unwrap();
                }
                Step::Restart => {
                    drop(store);
                    store = Store::open(&path, config()).unwrap();
                }
            }
        }
        // Drain the queue.
        for _ in 0..200 {
            if store.outbox_counts().unwrap().pending == 0 { break; }
            send(&store, &mut server, true);
        }
        prop_assert_eq!(store.outbox_counts().unwrap().pending, 0);
        prop_assert_eq!(&server.records, &model);
        prop_assert!(server.effects <= writes, "coalescing never adds ops");
        let local: BTreeMap<String, JsonObject> = store
            .query("c", &Query::new())
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.data))
            .collect();
        prop_assert_eq!(&local, &model);
        for r in store.query("c", &Query::new()).unwrap() {
            prop_assert_eq!(r.sync_state, crate::SyncState::Synced);
            prop_assert_eq!(Some(&r.version), server.versions.get(&r.id));
        }
    }
}
