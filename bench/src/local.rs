//! Figures 1, 2 and 7: local writes and the change feed, against raw rusqlite.
//!
//! A `put` is a record row plus an outbox row in one transaction, so its physical limit
//! is exactly that: two INSERTs in one transaction with the same pragmas and row size.
//! The store and the baseline run in alternating chunks, in the same process, so a noisy
//! neighbour slows both rather than one.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_core::{ChangeEvent, ConflictStrategy, Durability, Store, StoreConfig};
use rusqlite::TransactionBehavior;

use crate::util::{Latency, Result, fail, now_ms, payload, raw_connection, raw_put};

fn store(path: &Path, durability: Durability) -> Result<Store> {
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    }
    .with_collection("answers", ConflictStrategy::LastWriteWins);
    Ok(Store::open(path, config)?)
}

fn pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// Figure 1: `n` single puts through the store and `n` raw two-INSERT transactions,
/// alternating in chunks of 50. Returns (store, raw) latencies.
pub fn put_latency(dir: &Path, durability: Durability, n: usize) -> Result<(Latency, Latency)> {
    let name = pragma(durability).to_lowercase();
    let store = store(&dir.join(format!("f1-{name}.db")), durability)?;
    let mut raw = raw_connection(&dir.join(format!("f1-raw-{name}.db")), pragma(durability))?;
    let warmup = 20;
    let mut s = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    let chunk = 50;
    let mut i = 0;
    while i < n + warmup {
        let m = chunk.min(n + warmup - i);
        let store_first = (i / chunk) % 2 == 0;
        for pass in 0..2 {
            let on_store = (pass == 0) == store_first;
            for k in i..i + m {
                let data = payload(k as u64);
                let id = format!("r-{k:08}");
                let t = Instant::now();
                if on_store {
                    store.put("answers", Some(&id), data)?;
                } else {
                    let tx = raw.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    raw_put(&tx, &id, &data, now_ms())?;
                    tx.commit()?;
                }
                let el = t.elapsed();
                if k >= warmup {
                    if on_store { &mut s } else { &mut r }.push(el);
                }
            }
        }
        i += m;
    }
    store.close();
    Ok((Latency::of(&s), Latency::of(&r)))
}

/// Figure 2: `rounds` batches of 1,000 puts via `Store::batch`, and as many raw
/// transactions of 1,000 record + outbox INSERTs, alternating. Default durability.
pub fn batch(dir: &Path, rounds: usize) -> Result<(Latency, Latency)> {
    let store = store(&dir.join("f2.db"), Durability::Full)?;
    let mut raw = raw_connection(&dir.join("f2-raw.db"), "FULL")?;
    let mut s = Vec::with_capacity(rounds);
    let mut r = Vec::with_capacity(rounds);
    for round in 0..rounds + 1 {
        let base = (round * 1000) as u64;
        let values: Vec<_> = (0..1000).map(|k| payload(base + k)).collect();
        let ids: Vec<String> = (0..1000).map(|k| format!("b-{:08}", base + k)).collect();
        for pass in 0..2 {
            let on_store = (pass == 0) == (round % 2 == 0);
            let data = values.clone();
            let t = Instant::now();
            if on_store {
                store.batch(|tx| {
                    for (id, v) in ids.iter().zip(data) {
                        tx.put("answers", Some(id), v)?;
                    }
                    Ok(())
                })?;
            } else {
                let now = now_ms();
                let tx = raw.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for (id, v) in ids.iter().zip(&data) {
                    raw_put(&tx, id, v, now)?;
                }
                tx.commit()?;
            }
            let el = t.elapsed();
            // Round 0 warms caches and prepares statements for both.
            if round > 0 {
                if on_store { &mut s } else { &mut r }.push(el);
            }
        }
    }
    store.close();
    Ok((Latency::of(&s), Latency::of(&r)))
}

/// Figure 7: commit → change callback. Each put waits for its callback before the next,
/// so no event is coalesced. Returns (after the put returned, from the put call).
pub fn callback_latency(dir: &Path, n: usize) -> Result<(Latency, Latency)> {
    let store = store(&dir.join("f7.db"), Durability::Full)?;
    let (tx, rx) = mpsc::channel::<Instant>();
    let _sub = store.subscribe(std::sync::Arc::new(move |_e: &ChangeEvent| {
        let _ = tx.send(Instant::now());
    }))?;
    let warmup = 20;
    let mut after_return = Vec::with_capacity(n);
    let mut from_call = Vec::with_capacity(n);
    for k in 0..n + warmup {
        let id = format!("c-{k:08}");
        let data = payload(k as u64);
        let t0 = Instant::now();
        store.put("answers", Some(&id), data)?;
        let t1 = Instant::now();
        let cb = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| fail("no change callback within 10 s"))?;
        if k >= warmup {
            after_return.push(cb.saturating_duration_since(t1));
            from_call.push(cb.saturating_duration_since(t0));
        }
    }
    store.close();
    Ok((Latency::of(&after_return), Latency::of(&from_call)))
}
