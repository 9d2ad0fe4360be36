//! The audit trail: what was written, what was refused and who knocked, in one
//! hash-chained table that shows any later rewrite.
//!
//! A health ministry's review asks who changed a patient's record, who tried and was
//! refused, and whether the trail itself can be trusted. So besides every applied write,
//! the trail records denied writes, failed authentications and (when configured) pulls,
//! each with the client's network address, and a forced overwrite keeps the version it
//! replaced. Every row carries the SHA-256 of its content and of the row before it, and
//! the newest hash is kept apart (`audit_head`): changing, removing or inserting a row
//! anywhere breaks the chain, which `outpost-server audit verify` walks. A replaced
//! version is stored in `audit_prior`, outside the chain but bound to it by its hash, so
//! erasing a record's data (when its tombstone is purged) leaves the chain intact; the
//! erasure is itself a row.
//!
//! Rows written inside a push commit with it. Rows about requests that write nothing
//! (failed logins, pulls) go through [`AuditLog`], a bounded queue that one task writes
//! in batches, so a flood of bad tokens costs the database one transaction per batch,
//! not one per request; repeated failures from one address in a batch become one row
//! with a count. The hashing and the verification are plain functions here; each backend
//! stores rows with `append` steps that take the chain's head under a lock, so that
//! several server processes over one PostgreSQL extend one chain.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_core::protocol::rfc3339_millis;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::storage::{Storage, StorageError};

/// The `prev_hash` of the first chained row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Row kinds (`event`).
pub mod event {
    /// An applied op (the only kind before the chain began).
    pub const WRITE: &str = "write";
    /// An op answered `rejected`.
    pub const DENIED: &str = "denied";
    /// A request with a missing, malformed or unknown token; `detail` holds a count.
    pub const AUTH_FAILED: &str = "auth_failed";
    /// A pull page served (with `audit_pulls = true`).
    pub const PULL: &str = "pull";
    /// A purged tombstone: the record's data, and the versions its forced overwrites
    /// kept, are gone.
    pub const ERASE: &str = "erase";
    /// Rows the queue had no room for; `detail` holds how many.
    pub const DROPPED: &str = "dropped";
}

/// The content of an audit row, as stored, which its hash covers. Text that a backend
/// stores escaped (PostgreSQL's `op_id`, `client_id`, `device`) is hashed escaped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditFields {
    /// RFC 3339 UTC.
    pub at: String,
    pub event: String,
    pub user: String,
    pub client_id: String,
    /// The peer's IP address; empty when unknown.
    pub client_addr: String,
    pub op_id: String,
    pub collection: String,
    pub scope: String,
    pub record_id: String,
    pub kind: String,
    pub old_version: Option<i64>,
    pub new_version: Option<i64>,
    /// The error code of a denial, the reason of a failed authentication.
    pub code: String,
    /// Small JSON: counts, collections asked for.
    pub detail: String,
    /// The device session the token names (a JWT's `sid`); `None` for static tokens.
    pub device: Option<String>,
}

/// A row to append: its content, and a replaced version to keep apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub fields: AuditFields,
    /// The JSON text of the version a forced overwrite replaced.
    pub prior: Option<String>,
}

/// A row ready to insert, its hashes computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub fields: AuditFields,
    pub prior: Option<String>,
    pub prior_sha256: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// A row as read back for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuditRow {
    pub id: i64,
    pub fields: AuditFields,
    pub prior_sha256: Option<String>,
    /// Both `None` for rows from before the chain began.
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a row's hash covers before its content: a tag and the previous row's hash,
/// each ended by a newline. Also spelled in PostgreSQL's `outpost_append_audit`.
const HASH_PREFIX: &[u8] = b"outpost-audit-v1\n";

/// The hash of a row: its content (one canonical JSON array, [`row_content`]) after the
/// previous hash.
pub fn row_hash(prev: &str, fields: &AuditFields, prior_sha256: Option<&str>) -> String {
    // Written straight into the hasher: one is sealed per op, inside the push's lock.
    let mut h = HashWriter(Sha256::new());
    h.0.update(HASH_PREFIX);
    h.0.update(prev.as_bytes());
    h.0.update(b"\n");
    write_content(&mut h, fields, prior_sha256);
    hex::encode(h.0.finalize())
}

/// The text a row's hash covers after the previous hash: for a backend that chains
/// rows in the database (PostgreSQL, where the head is read and moved in one
/// statement), which hashes `HASH_PREFIX`, the previous hash, a newline and this.
pub fn row_content(fields: &AuditFields, prior_sha256: Option<&str>) -> String {
    let mut out = Vec::with_capacity(256);
    write_content(&mut out, fields, prior_sha256);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn write_content(w: impl std::io::Write, fields: &AuditFields, prior_sha256: Option<&str>) {
    // A fixed order and serde_json's one escaping make the text canonical.
    let content = (
        &fields.at,
        &fields.event,
        &fields.user,
        &fields.client_id,
        &fields.client_addr,
        &fields.op_id,
        &fields.collection,
        &fields.scope,
        &fields.record_id,
        &fields.kind,
        fields.old_version,
        fields.new_version,
        &fields.code,
        &fields.detail,
        &fields.device,
        prior_sha256,
    );
    serde_json::to_writer(w, &content).expect("a tuple of strings and numbers serializes");
}

/// Feeds what serde_json writes to the hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A row to append with the text its hash covers, for a backend whose database chains
/// the rows itself (see [`row_content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRow {
    pub fields: AuditFields,
    pub prior: Option<String>,
    pub prior_sha256: Option<String>,
    pub content: String,
}

/// `entries` with their content texts, in order, for a database to chain.
pub fn contents(entries: Vec<AuditEntry>) -> Vec<ContentRow> {
    entries
        .into_iter()
        .map(|e| {
            let prior_sha256 = e.prior.as_deref().map(|p| sha256_hex(p.as_bytes()));
            ContentRow {
                content: row_content(&e.fields, prior_sha256.as_deref()),
                fields: e.fields,
                prior: e.prior,
                prior_sha256,
            }
        })
        .collect()
}

/// Chains `entries` after the row whose hash is `head`; the last row's hash is the
/// new head.
pub fn seal(head: &str, entries: Vec<AuditEntry>) -> Vec<SealedRow> {
    let mut prev = head.to_owned();
    entries
        .into_iter()
        .map(|e| {
            let prior_sha256 = e.prior.as_deref().map(|p| sha256_hex(p.as_bytes()));
            let hash = row_hash(&prev, &e.fields, prior_sha256.as_deref());
            SealedRow {
                fields: e.fields,
                prior: e.prior,
                prior_sha256,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// The row of a purged tombstone: the record's data, and any version the audit kept of
/// it, are gone.
pub fn erasure(now_ms: i64, collection: String, scope: String, record_id: String) -> AuditEntry {
    AuditEntry {
        fields: AuditFields {
            at: rfc3339_millis(now_ms),
            event: event::ERASE.into(),
            collection,
            scope,
            record_id,
            ..AuditFields::default()
        },
        prior: None,
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rows: u64,
    /// Rows written before the chain began (by servers before it existed).
    pub unchained: u64,
    pub head: String,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            write!(
                f,
                "audit ok: {} rows, {} chained ({} from before the chain began), head {}",
                self.rows,
                self.rows - self.unchained,
                self.unchained,
                self.head
            )
        } else {
            for p in &self.problems {
                writeln!(f, "audit TAMPERED: {p}")?;
            }
            write!(
                f,
                "audit verification FAILED: {} problem(s) in {} rows",
                self.problems.len(),
                self.rows
            )
        }
    }
}

/// A record, as audit rows name it: collection, scope, id.
type RecordOf = (String, String, String);

/// A row that kept a replaced version.
#[derive(Debug)]
struct Kept {
    row_hash: String,
    id: i64,
    record: RecordOf,
    sha256: String,
}

/// Walks the rows in id order and checks the chain, then the kept versions.
#[derive(Debug)]
pub struct Verifier {
    running: String,
    rows: u64,
    unchained: u64,
    chained: u64,
    problems: Vec<String>,
    /// Rows that kept a replaced version.
    priors: Vec<Kept>,
    /// Per record, the id of its latest erasure.
    erased: HashMap<RecordOf, i64>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            running: GENESIS.to_owned(),
            rows: 0,
            unchained: 0,
            chained: 0,
            problems: Vec::new(),
            priors: Vec::new(),
            erased: HashMap::new(),
        }
    }

    /// The next row, in id order.
    pub fn row(&mut self, r: &StoredAuditRow) {
        self.rows += 1;
        let Some(hash) = &r.hash else {
            if self.chained > 0 {
                self.problems.push(format!(
                    "row {}: has no hash but comes after chained rows (its hash was removed)",
                    r.id
                ));
            } else {
                self.unchained += 1;
            }
            return;
        };
        self.chained += 1;
        let prev = r.prev_hash.as_deref().unwrap_or("");
        if prev != self.running {
            self.problems.push(format!(
                "row {}: does not follow the row before it (a row before it was removed, inserted or changed)",
                r.id
            ));
        }
        if row_hash(prev, &r.fields, r.prior_sha256.as_deref()) != *hash {
            self.problems.push(format!(
                "row {}: its content does not match its hash (the row was changed)",
                r.id
            ));
        }
        self.running = hash.clone();
        let f = &r.fields;
        let key = (f.collection.clone(), f.scope.clone(), f.record_id.clone());
        if f.event == event::ERASE {
            self.erased.insert(key, r.id);
        } else if let Some(sha) = &r.prior_sha256 {
            self.priors.push(Kept {
                row_hash: hash.clone(),
                id: r.id,
                record: key,
                sha256: sha.clone(),
            });
        }
    }

    /// The hashes of the rows whose kept versions are to be checked.
    pub fn prior_hashes(&self) -> Vec<String> {
        self.priors.iter().map(|p| p.row_hash.clone()).collect()
    }

    /// Checks the walk against the stored head, and each kept version (found by row
    /// hash) against the hash its row holds; a missing one must have been erased after.
    pub fn finish(mut self, head: &str, priors: &HashMap<String, String>) -> Verdict {
        if self.running != head {
            self.problems.push(format!(
                "the chain ends at {} but its head is {head} (rows at the end were removed, or the head was changed)",
                self.running
            ));
        }
        for Kept {
            row_hash,
            id,
            record,
            sha256,
        } in &self.priors
        {
            match priors.get(row_hash) {
                Some(data) if sha256_hex(data.as_bytes()) == *sha256 => {}
                Some(_) => self.problems.push(format!(
                    "row {id}: the version its forced overwrite kept was changed"
                )),
                None if self.erased.get(record).is_some_and(|e| e > id) => {}
                None => self.problems.push(format!(
                    "row {id}: the version its forced overwrite kept is missing, and no erasure is recorded"
                )),
            }
        }
        Verdict {
            rows: self.rows,
            unchained: self.unchained,
            head: head.to_owned(),
            problems: self.problems,
        }
    }
}

/// The reads `audit verify` makes. A backend gives them from one snapshot (one read
/// transaction), so the rows, the head and the kept versions agree with each other
/// while servers keep appending: rows and the head they move commit together, so a
/// snapshot holds either both or neither.
pub(crate) trait AuditReads {
    /// Up to `limit` rows with an id above `after_id`, in id order.
    async fn page(
        &mut self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredAuditRow>, StorageError>;

    /// The hash of the newest chained row, kept apart from the rows.
    async fn head(&mut self) -> Result<String, StorageError>;

    /// The kept versions of forced overwrites, by the hash of their audit row.
    async fn priors(
        &mut self,
        row_hashes: &[String],
    ) -> Result<Vec<(String, String)>, StorageError>;
}

/// Reads the whole trail from one snapshot and verifies it, a page at a time.
pub(crate) async fn verify<R: AuditReads>(reads: &mut R) -> Result<Verdict, StorageError> {
    const PAGE: i64 = 2000;
    let mut v = Verifier::new();
    let mut after = 0;
    loop {
        let page = reads.page(after, PAGE).await?;
        for r in &page {
            v.row(r);
        }
        match page.last() {
            Some(r) if page.len() as i64 == PAGE => after = r.id,
            _ => break,
        }
    }
    let head = reads.head().await?;
    let mut priors = HashMap::new();
    for chunk in v.prior_hashes().chunks(500) {
        priors.extend(reads.priors(chunk).await?);
    }
    Ok(v.finish(&head, &priors))
}

/// How many rows may wait for the writer; past it, rows are counted and dropped.
const QUEUE: usize = 10_000;
/// Longest a queued row waits for its batch.
const FLUSH_WINDOW: Duration = Duration::from_millis(200);
/// Most rows in one batch.
const BATCH: usize = 1000;

/// The queue of rows about requests that write nothing themselves.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEntry>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<AuditEntry>>>,
    dropped: Arc<AtomicU64>,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::new()
    }
}

impl AuditLog {
    pub fn new() -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        AuditLog {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues a row without waiting; a full queue counts it as dropped (and the count
    /// becomes a row itself).
    pub fn record(&self, entry: AuditEntry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The writer's end: runs until every sender is gone and the queue is empty.
    /// `None` once taken.
    pub fn writer(&self, storage: Arc<dyn Storage>) -> Option<impl Future<Output = ()> + use<>> {
        let rx = self.rx.lock().ok()?.take()?;
        Some(write_loop(rx, Arc::clone(&self.dropped), storage))
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<AuditEntry>,
    dropped: Arc<AtomicU64>,
    storage: Arc<dyn Storage>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_WINDOW;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(AuditEntry {
                fields: AuditFields {
                    at: batch[0].fields.at.clone(),
                    event: event::DROPPED.into(),
                    detail: format!("{{\"count\":{lost}}}"),
                    ..AuditFields::default()
                },
                prior: None,
            });
        }
        let batch = coalesce(batch);
        let n = batch.len();
        let mut attempt = 0;
        loop {
            match storage.append_audit(batch.clone()).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, rows = n, "audit write failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = n, "audit rows lost");
                    break;
                }
            }
        }
    }
}

/// Failed authentications from one address for one reason, in one batch, become one
/// row with their count (at the first one's time): a flood of bad tokens is one row
/// per second and address, not one per request.
pub fn coalesce(batch: Vec<AuditEntry>) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = Vec::with_capacity(batch.len());
    let mut counts: BTreeMap<usize, u64> = BTreeMap::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for e in batch {
        if e.fields.event == event::AUTH_FAILED {
            let key = (e.fields.client_addr.clone(), e.fields.code.clone());
            if let Some(&i) = index.get(&key) {
                *counts.entry(i).or_insert(1) += 1;
                continue;
            }
            index.insert(key, out.len());
            counts.insert(out.len(), 1);
        }
        out.push(e);
    }
    for (i, n) in counts {
        out[i].fields.detail = format!("{{\"count\":{n}}}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: &str, record: &str) -> AuditEntry {
        AuditEntry {
            fields: AuditFields {
                at: "2024-01-01T00:00:00.000Z".into(),
                event: event.into(),
                user: "amina".into(),
                collection: "patients".into(),
                scope: "t:north".into(),
                record_id: record.into(),
                device: Some("tablet-7".into()),
                ..AuditFields::default()
            },
            prior: None,
        }
    }

    fn stored(sealed: &[SealedRow], first_id: i64) -> Vec<StoredAuditRow> {
        sealed
            .iter()
            .enumerate()
            .map(|(i, r)| StoredAuditRow {
                id: first_id + i as i64,
                fields: r.fields.clone(),
                prior_sha256: r.prior_sha256.clone(),
                prev_hash: Some(r.prev_hash.clone()),
                hash: Some(r.hash.clone()),
            })
            .collect()
    }

    fn verify_rows(
        rows: &[StoredAuditRow],
        head: &str,
        priors: &HashMap<String, String>,
    ) -> Verdict {
        let mut v = Verifier::new();
        for r in rows {
            v.row(r);
        }
        v.finish(head, priors)
    }

    fn trail() -> (Vec<StoredAuditRow>, String, HashMap<String, String>) {
        let mut forced = entry(event::WRITE, "p-2");
        forced.prior = Some(r#"{"name":"before"}"#.into());
        let sealed = seal(
            GENESIS,
            vec![
                entry(event::WRITE, "p-1"),
                forced,
                entry(event::DENIED, "p-3"),
            ],
        );
        let head = sealed.last().unwrap().hash.clone();
        let priors = sealed
            .iter()
            .filter_map(|r| Some((r.hash.clone(), r.prior.clone()?)))
            .collect();
        (stored(&sealed, 1), head, priors)
    }

    /// Chains written by earlier servers must still verify: the hashed text of a row is
    /// fixed, escapes and nulls included.
    #[test]
    fn a_rows_hash_is_what_earlier_servers_wrote() {
        let fields = AuditFields {
            at: "2026-12-06T09:00:00.000Z".into(),
            event: "write".into(),
            user: "amina".into(),
            client_id: "c-1".into(),
            client_addr: "10.0.0.7".into(),
            op_id: "op-\"1\"\n\u{e9}".into(),
            collection: "patients".into(),
            scope: "t:north".into(),
            record_id: "p-1".into(),
            kind: "update".into(),
            old_version: Some(3),
            new_version: None,
            code: String::new(),
            detail: "{\"n\":2}".into(),
            device: Some("tablet-7".into()),
        };
        assert_eq!(
            row_hash(GENESIS, &fields, Some("ab")),
            "926d8b88fa63a3996c2b3f7ddd77f9ec73a5ddbea8d7ce5d2385a70e2fcc676f"
        );
        let bare = AuditFields {
            device: None,
            ..fields
        };
        assert_eq!(
            row_hash(GENESIS, &bare, None),
            "688b7669bb032182905d695b40eed7a6a1d9a59c3e69d8c941d5f6f79208e3f4"
        );
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (rows, head, priors) = trail();
        let v = verify_rows(&rows, &head, &priors);
        assert!(v.ok(), "{v}");
        assert_eq!((v.rows, v.unchained), (3, 0));
        assert!(v.to_string().starts_with("audit ok: 3 rows"));
        // Rows from before the chain, then the chain, are fine.
        let mut old = rows[0].clone();
        old.id = 0;
        old.hash = None;
        old.prev_hash = None;
        let with_old: Vec<_> = std::iter::once(old).chain(rows).collect();
        let v = verify_rows(&with_old, &head, &priors);
        assert!(v.ok(), "{v}");
        assert_eq!(v.unchained, 1);
    }

    #[test]
    fn changes_removals_and_truncation_are_found() {
        let (rows, head, priors) = trail();
        let mut changed = rows.clone();
        changed[0].fields.user = "mallory".into();
        let v = verify_rows(&changed, &head, &priors);
        assert!(
            v.problems.iter().any(|p| p.contains("row 1: its content")),
            "{v}"
        );
        // The token's device session is content too: changed or cleared.
        for device in [Some("tablet-9".to_owned()), None] {
            let mut moved = rows.clone();
            moved[1].fields.device = device;
            let v = verify_rows(&moved, &head, &priors);
            assert!(
                v.problems.iter().any(|p| p.contains("row 2: its content")),
                "{v}"
            );
        }

        // Changed and rehashed: the next row no longer follows.
        let mut rehashed = changed.clone();
        rehashed[0].hash = Some(row_hash(GENESIS, &rehashed[0].fields, None));
        let v = verify_rows(&rehashed, &head, &priors);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("row 2: does not follow")),
            "{v}"
        );

        let mut removed = rows.clone();
        removed.remove(1);
        let v = verify_rows(&removed, &head, &priors);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("row 3: does not follow")),
            "{v}"
        );

        let truncated = &rows[..2];
        let v = verify_rows(truncated, &head, &priors);
        assert!(v.problems.iter().any(|p| p.contains("head")), "{v}");
        assert!(v.to_string().contains("audit TAMPERED"));

        let mut unhashed = rows.clone();
        unhashed[2].hash = None;
        let v = verify_rows(&unhashed, &head, &priors);
        assert!(!v.ok());
    }

    #[test]
    fn kept_versions_must_match_or_be_erased() {
        let (rows, head, priors) = trail();
        let mut edited = priors.clone();
        for v in edited.values_mut() {
            v.push(' ');
        }
        let v = verify_rows(&rows, &head, &edited);
        assert!(v.problems.iter().any(|p| p.contains("was changed")), "{v}");
        let v = verify_rows(&rows, &head, &HashMap::new());
        assert!(v.problems.iter().any(|p| p.contains("is missing")), "{v}");
        // Erased later: fine.
        let last = rows.last().unwrap().hash.clone().unwrap();
        let erase = seal(&last, vec![entry(event::ERASE, "p-2")]);
        let head2 = erase[0].hash.clone();
        let all: Vec<_> = rows.into_iter().chain(stored(&erase, 4)).collect();
        let v = verify_rows(&all, &head2, &HashMap::new());
        assert!(v.ok(), "{v}");
    }

    #[test]
    fn auth_failures_coalesce_per_address_and_reason() {
        let fail = |addr: &str, code: &str| AuditEntry {
            fields: AuditFields {
                event: event::AUTH_FAILED.into(),
                client_addr: addr.into(),
                code: code.into(),
                ..AuditFields::default()
            },
            prior: None,
        };
        let out = coalesce(vec![
            fail("10.0.0.1", "unknown_token"),
            entry(event::PULL, ""),
            fail("10.0.0.1", "unknown_token"),
            fail("10.0.0.2", "unknown_token"),
            fail("10.0.0.1", "unknown_token"),
            fail("10.0.0.1", "missing"),
        ]);
        let got: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.fields.event.as_str(),
                    e.fields.client_addr.as_str(),
                    e.fields.detail.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("auth_failed", "10.0.0.1", r#"{"count":3}"#),
                ("pull", "", ""),
                ("auth_failed", "10.0.0.2", r#"{"count":1}"#),
                ("auth_failed", "10.0.0.1", r#"{"count":1}"#),
            ]
        );
    }
}
