//! Applying a push: the one per-op loop every backend runs.
//!
//! Which answer an op gets, and what is written for it, must not depend on the
//! database, so the order of steps lives here once: an answer given earlier in the
//! push or stored for the op_id first, then the access and conflict rule, then the
//! record, audit rows and answers. A backend supplies only the storage steps, as a
//! [`PushSteps`] inside the transaction it opened, and keeps to itself how it makes them
//! safe under concurrency (locks, seq allocation, retries).
//!
//! The work is done in two phases, so that a backend can keep its global critical
//! section short: first every op is decided against the records as this push leaves
//! them (each record read once, its later ops applied in memory) and each changed record
//! is written once, without its seq; then the push's seqs are allocated in one step and
//! given out in op order, and the audit rows and answers follow. A [`Budget`] bounds
//! the first phase (see `budget.rs`); ops past it are answered `deferred`.

use std::collections::HashMap;

use outpost_core::protocol::{
    AttachmentRef, Change, ErrorBody, OpResult, json_size, may_hold_refs, refs_in, rfc3339_millis,
};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AuditFields, event};
use crate::budget::Budget;
use crate::logic::{
    self, Decision, MAX_ID_CHARS, PushItem, RecordKey, Role, StoredRecord, ValidOp,
};
use crate::storage::{PushContext, StorageError, db_err};

/// A record as a push leaves it: written once, however many of its ops applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRow<'a> {
    pub key: &'a RecordKey,
    /// The JSON object as text; `None` for a tombstone.
    pub data: Option<&'a str>,
    pub deleted: bool,
    pub version: i64,
    /// Which of the push's applied ops changed it last, from 1: the record's seq is the
    /// `nth` of the seqs the push is given.
    pub nth: i64,
    pub hlc: &'a str,
    pub owner: &'a str,
    pub team: &'a str,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The `client_id` of this push.
    pub writer: &'a str,
    /// See [`logic::echo_exact`].
    pub echo: bool,
}

/// A changed record and the files its new data refers to.
#[derive(Debug, Clone)]
pub(crate) struct RecordFiles<'a> {
    pub key: &'a RecordKey,
    pub files: Vec<AttachmentRef>,
}

/// The stored answer to an op, which a repeat of its `(user, op_id)` gets again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerRow<'a> {
    pub user: &'a str,
    pub op_id: &'a str,
    /// A [`StoredAnswer`] as JSON text.
    pub answer: &'a str,
    pub at_ms: i64,
}

/// The storage steps of one push, all inside one transaction of the backend.
///
/// Futures, because PostgreSQL's steps are queries; a blocking backend's steps are
/// plain calls whose futures are ready at once. No `Send` bound: whether the push is
/// `Send` is up to each backend's own steps.
pub(crate) trait PushSteps {
    /// What a step can fail with; a backend may tell "run the push again" apart.
    type Error: From<StorageError>;

    /// The answer stored for `(user, op_id)`, as the JSON text it was stored as.
    async fn stored_answer(
        &mut self,
        user: &str,
        op_id: &str,
    ) -> Result<Option<String>, Self::Error>;

    /// The record's stored state, locked against other writers where the backend needs
    /// that until commit.
    async fn load_record(&mut self, key: &RecordKey) -> Result<Option<StoredRecord>, Self::Error>;

    /// Writes the changed records' content (inserting new ones; owner, team and
    /// creation time of existing ones stay), before their seqs are known.
    async fn stage_records(&mut self, rows: &[RecordRow<'_>]) -> Result<(), Self::Error>;

    /// Replaces the attachment references indexed for each of these records by the
    /// ones its new data holds (none for a tombstone), so access to a file follows the
    /// records that name it.
    async fn index_files(&mut self, records: &[RecordFiles<'_>]) -> Result<(), Self::Error>;

    /// Allocates `count` consecutive seqs for the push's applied ops and gives each
    /// staged record the seq of its `nth`; returns the first. From here to commit the
    /// backend keeps commits in seq order.
    async fn assign_seqs(&mut self, count: i64, rows: &[RecordRow<'_>])
    -> Result<i64, Self::Error>;

    /// Appends rows to the audit trail, extending its hash chain.
    async fn append_audit(&mut self, entries: Vec<AuditEntry>) -> Result<(), Self::Error>;

    async fn store_answers(&mut self, rows: &[AnswerRow<'_>]) -> Result<(), Self::Error>;
}

/// A record named by a stored conflict answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordName {
    collection: String,
    record_id: String,
    /// The scope a service account's op named (`team`, `owner`); absent for a user's
    /// own op, whose scope is theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// An answer as `ops` keeps it. A conflict keeps the name of its record, not the
/// record: a repeat reads the record's current state again, so stored answers never
/// hold (or keep after an erasure) a record's data. Rows written before this form kept
/// the record under `current`; only its name is read from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum StoredAnswer {
    Applied {
        op_id: String,
        version: i64,
        seq: i64,
    },
    Conflict {
        op_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<RecordName>,
        #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
        record: Option<RecordName>,
    },
    Rejected {
        op_id: String,
        error: ErrorBody,
    },
}

/// Answers every item in order, with the rules of [`logic::decide`], at `now_ms`,
/// within the budget of `ctx.limits`. The caller commits when this returns `Ok`, and
/// only then.
pub(crate) async fn apply<S: PushSteps>(
    steps: &mut S,
    ctx: &PushContext,
    items: &[PushItem],
    now_ms: i64,
) -> Result<Vec<OpResult>, S::Error> {
    let mut run = Run::new(ctx, items.len(), now_ms);
    for item in items {
        run.item(steps, item).await?;
    }
    run.finish(steps).await
}

/// One push in progress.
struct Run<'c> {
    ctx: &'c PushContext,
    at: String,
    now_ms: i64,
    budget: Budget,
    results: Vec<OpResult>,
    /// Once an op is deferred, every later one is too, so a record's ops never apply
    /// out of order.
    cut: bool,
    /// op_id → index of its answer in this push.
    given: HashMap<String, usize>,
    /// Answers to store: index, and for a conflict the record it names.
    to_store: Vec<(usize, Option<RecordName>)>,
    /// Records as this push has them so far: read once, then changed in memory.
    records: HashMap<RecordKey, Option<StoredRecord>>,
    /// Changed records in the order first changed, with the `nth` of their last op.
    changed: Vec<RecordKey>,
    last_nth: HashMap<RecordKey, i64>,
    applied: i64,
    /// (record, version) → the op_id whose answer carries that state. The record's
    /// whole key: a service account's push may name the same id in two scopes.
    carried: HashMap<(RecordKey, i64), String>,
    audit: Vec<AuditEntry>,
    /// Records that referred to files when loaded: their index entries go if they
    /// change.
    had_files: std::collections::HashSet<RecordKey>,
}

/// What an answer adds to the body besides a record's data.
const ANSWER_OVERHEAD: usize = 160;

impl<'c> Run<'c> {
    fn new(ctx: &'c PushContext, n: usize, now_ms: i64) -> Run<'c> {
        Run {
            ctx,
            at: rfc3339_millis(now_ms),
            now_ms,
            budget: Budget::new(ctx.limits),
            results: Vec::with_capacity(n),
            cut: false,
            given: HashMap::new(),
            to_store: Vec::new(),
            records: HashMap::new(),
            changed: Vec::new(),
            last_nth: HashMap::new(),
            applied: 0,
            carried: HashMap::new(),
            audit: Vec::new(),
            had_files: std::collections::HashSet::new(),
        }
    }

    fn user(&self) -> &'c str {
        &self.ctx.user.name
    }

    /// Who an op acts as: the pushing user, or for a service account's op the user a
    /// device of its target team and owner would be (`logic::Target`). Answers,
    /// idempotency and the audit's `user` stay the pusher's.
    fn acting(&self, target: Option<&logic::Target>) -> std::borrow::Cow<'c, logic::User> {
        match target {
            Some(t) => std::borrow::Cow::Owned(t.acting_user(&self.ctx.user)),
            None => std::borrow::Cow::Borrowed(&self.ctx.user),
        }
    }

    async fn item<S: PushSteps>(&mut self, steps: &mut S, item: &PushItem) -> Result<(), S::Error> {
        let op_id = item.op_id();
        if self.cut || !self.budget.may_start() {
            self.defer(op_id);
            return Ok(());
        }
        // An op_id that cannot be a key (empty, too long) is answered but never stored.
        let storable = logic::op_id_ok(op_id);
        if storable && let Some(&i) = self.given.get(op_id) {
            let again = self.results[i].clone();
            if self.budget.answer(answer_size(&again)) {
                self.results.push(again);
            } else {
                self.defer(op_id);
            }
            return Ok(());
        }
        if storable && let Some(text) = steps.stored_answer(self.user(), op_id).await? {
            let stored: StoredAnswer = serde_json::from_str(&text).map_err(db_err)?;
            return self.replay(steps, stored).await;
        }
        match item {
            PushItem::Invalid {
                op_id,
                error,
                collection,
                record_id,
                target,
            } => {
                let mut fields = self.fields(event::DENIED, op_id);
                fields.code = error.code.clone();
                fields.detail = self.as_detail(target.as_ref());
                if !collection.is_empty() {
                    let access = self.ctx.access.of(collection);
                    fields.scope = logic::op_scope(access, &self.ctx.user, target.as_ref());
                    fields.collection = collection.clone();
                    fields.record_id = record_id.clone();
                }
                self.audit.push(AuditEntry {
                    fields,
                    prior: None,
                });
                let result = OpResult::Rejected {
                    op_id: op_id.clone(),
                    error: error.clone(),
                };
                self.answer(result, storable, None);
            }
            PushItem::Valid(op) => self.op(steps, op).await?,
        }
        Ok(())
    }

    /// The stored answer of a repeated op_id. A conflict is answered with the record's
    /// state now, read in the scope its answer names when a service account repeats it,
    /// else in the user's own scope: a principal of the same name that is no longer a
    /// service account (another role claim, a config change) reads nothing outside its
    /// own scope.
    async fn replay<S: PushSteps>(
        &mut self,
        steps: &mut S,
        stored: StoredAnswer,
    ) -> Result<(), S::Error> {
        let result = match stored {
            StoredAnswer::Applied {
                op_id,
                version,
                seq,
            } => OpResult::Applied {
                op_id,
                version,
                seq,
            },
            StoredAnswer::Rejected { op_id, error } => OpResult::Rejected { op_id, error },
            StoredAnswer::Conflict {
                op_id,
                current,
                record,
            } => {
                let Some(name) = record.or(current) else {
                    let r = OpResult::conflict(op_id, None);
                    self.answer(r, false, None);
                    return Ok(());
                };
                let access = self.ctx.access.of(&name.collection);
                let scope = match name.scope {
                    Some(s) if self.ctx.user.role == Role::Service => s,
                    _ => logic::scope_of(access, &self.ctx.user),
                };
                let key = RecordKey {
                    scope,
                    collection: name.collection,
                    record_id: name.record_id,
                };
                self.load(steps, &key).await?;
                match self.conflict(&op_id, &key) {
                    Some(r) => self.answer(r, false, None),
                    None => self.defer(&op_id),
                }
                return Ok(());
            }
        };
        self.answer(result, false, None);
        Ok(())
    }

    /// A valid op with no answer yet: decide, and keep what was decided.
    async fn op<S: PushSteps>(&mut self, steps: &mut S, op: &ValidOp) -> Result<(), S::Error> {
        let access = self.ctx.access.of(&op.collection);
        let key = RecordKey {
            collection: op.collection.clone(),
            scope: logic::op_scope(access, &self.ctx.user, op.target.as_ref()),
            record_id: op.record_id.clone(),
        };
        if !self.budget.admit(&key) {
            self.defer(&op.op_id);
            return Ok(());
        }
        self.load(steps, &key).await?;
        let existing = self.records.get(&key).and_then(Option::as_ref);
        let user = self.acting(op.target.as_ref());
        let decision = logic::decide(op, existing, &user, access, self.now_ms);
        let name = || RecordName {
            collection: op.collection.clone(),
            record_id: op.record_id.clone(),
            scope: op.target.as_ref().map(|_| key.scope.clone()),
        };
        match decision {
            Decision::Conflict => match self.conflict(&op.op_id, &key) {
                Some(r) => self.answer(r, true, Some(name())),
                None => self.defer(&op.op_id),
            },
            Decision::Reject(error) => {
                let mut fields = self.op_fields(event::DENIED, op, &key);
                fields.code = error.code.clone();
                self.audit.push(AuditEntry {
                    fields,
                    prior: None,
                });
                let r = OpResult::Rejected {
                    op_id: op.op_id.clone(),
                    error,
                };
                self.answer(r, true, None);
            }
            Decision::Apply(state) => {
                self.applied += 1;
                let nth = self.applied;
                // A forced overwrite keeps the version it replaced, for the audit.
                let prior = match existing {
                    Some(ex) if state.forced && !ex.deleted => ex
                        .data
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(db_err)?,
                    _ => None,
                };
                self.budget.charge_work(state.bytes);
                let mut fields = self.op_fields(event::WRITE, op, &key);
                fields.old_version = state.old_version;
                fields.new_version = Some(state.version);
                self.audit.push(AuditEntry { fields, prior });
                let version = state.version;
                let echo =
                    logic::echo_exact(op, existing, &self.ctx.client_id, state.data.as_ref());
                let record = StoredRecord {
                    collection: op.collection.clone(),
                    record_id: op.record_id.clone(),
                    data: state.data,
                    deleted: state.deleted,
                    version,
                    // Not known until the seqs are allocated: -nth until then.
                    seq: -nth,
                    hlc: op.hlc.clone(),
                    owner: state.owner,
                    team: state.team,
                    created_at_ms: state.created_at_ms,
                    updated_at_ms: self.now_ms,
                    writer: Some(self.ctx.client_id.clone()),
                    echo,
                };
                if self.last_nth.insert(key.clone(), nth).is_none() {
                    self.changed.push(key.clone());
                }
                self.records.insert(key, Some(record));
                let r = OpResult::Applied {
                    op_id: op.op_id.clone(),
                    version,
                    seq: -nth,
                };
                self.answer(r, true, None);
            }
        }
        Ok(())
    }

    /// The changed records whose file references may have changed: those that hold
    /// some now or held some before.
    fn files_of<'r>(&self, rows: &[RecordRow<'r>]) -> Vec<RecordFiles<'r>> {
        rows.iter()
            .filter_map(|row| {
                let now = match row.data.filter(|t| may_hold_refs(t)) {
                    Some(_) => self
                        .records
                        .get(row.key)
                        .and_then(Option::as_ref)
                        .and_then(|r| r.data.as_ref())
                        .map(refs_in)
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                (!now.is_empty() || self.had_files.contains(row.key)).then_some(RecordFiles {
                    key: row.key,
                    files: now,
                })
            })
            .collect()
    }

    /// Reads a record into the push's view, once.
    async fn load<S: PushSteps>(&mut self, steps: &mut S, key: &RecordKey) -> Result<(), S::Error> {
        if !self.records.contains_key(key) {
            let rec = steps.load_record(key).await?;
            if let Some(d) = rec.as_ref().and_then(|r| r.data.as_ref()) {
                self.budget.charge_work(json_size(d));
                if !refs_in(d).is_empty() {
                    self.had_files.insert(key.clone());
                }
            }
            self.records.insert(key.clone(), rec);
        }
        Ok(())
    }

    /// A conflict answer with the record's state as this push has it: in full the
    /// first time the answer carries that state, by reference after. `None` when it does
    /// not fit in the answer budget (the caller defers the op).
    fn conflict(&mut self, op_id: &str, key: &RecordKey) -> Option<OpResult> {
        let rec = self.records.get(key).and_then(Option::as_ref);
        let state = rec.map(|r| (key.clone(), r.version));
        if let Some(first) = state.as_ref().and_then(|s| self.carried.get(s)) {
            let r = OpResult::Conflict {
                op_id: op_id.to_owned(),
                current: None,
                current_ref: Some(first.clone()),
            };
            return self.budget.answer(answer_size(&r)).then_some(r);
        }
        let size =
            ANSWER_OVERHEAD + op_id.len() + rec.and_then(|r| r.data.as_ref()).map_or(0, json_size);
        if !self.budget.answer(size) {
            return None;
        }
        if let Some(s) = state {
            self.carried.insert(s, op_id.to_owned());
        }
        Some(OpResult::conflict(
            op_id.to_owned(),
            rec.map(StoredRecord::to_change),
        ))
    }

    /// Keeps an answer that the budget has already taken, or takes it now.
    fn answer(&mut self, result: OpResult, store: bool, record: Option<RecordName>) {
        if !matches!(result, OpResult::Conflict { .. }) {
            // Conflicts were charged when built; the rest are small.
            self.budget.answer(answer_size(&result));
        }
        let i = self.results.len();
        let op_id = result.op_id();
        if logic::op_id_ok(op_id) {
            self.given.entry(op_id.to_owned()).or_insert(i);
            if store {
                self.to_store.push((i, record));
            }
        }
        self.results.push(result);
    }

    fn defer(&mut self, op_id: &str) {
        self.cut = true;
        self.results.push(OpResult::Deferred {
            op_id: op_id.to_owned(),
        });
    }

    fn fields(&self, event: &str, op_id: &str) -> AuditFields {
        AuditFields {
            at: self.at.clone(),
            event: event.to_owned(),
            user: self.ctx.user.name.clone(),
            client_id: self.ctx.client_id.clone(),
            client_addr: self.ctx.client_addr.clone(),
            device: self.ctx.device.clone(),
            // An op_id too long to be a key is still named, shortened.
            op_id: op_id.chars().take(MAX_ID_CHARS).collect(),
            ..AuditFields::default()
        }
    }

    /// The `detail` of an op's audit row: for a service account's op, the team and
    /// owner it acted as; empty for a device's.
    fn as_detail(&self, target: Option<&logic::Target>) -> String {
        target.map_or_else(String::new, |t| t.audit_detail(&self.ctx.user))
    }

    /// The row of an op: `user` is who pushed it; a service account's op also names
    /// the team and owner it wrote as, in `detail`.
    fn op_fields(&self, event: &str, op: &ValidOp, key: &RecordKey) -> AuditFields {
        AuditFields {
            collection: key.collection.clone(),
            scope: key.scope.clone(),
            record_id: key.record_id.clone(),
            kind: op.kind.as_str().to_owned(),
            detail: self.as_detail(op.target.as_ref()),
            ..self.fields(event, &op.op_id)
        }
    }

    /// The second phase: records, seqs, audit rows, answers.
    async fn finish<S: PushSteps>(mut self, steps: &mut S) -> Result<Vec<OpResult>, S::Error> {
        let mut texts = Vec::with_capacity(self.changed.len());
        for key in &self.changed {
            let rec = self.records.get(key).and_then(Option::as_ref);
            let text = match rec.and_then(|r| r.data.as_ref()) {
                Some(d) => Some(serde_json::to_string(d).map_err(db_err)?),
                None => None,
            };
            texts.push(text);
        }
        let rows: Vec<RecordRow<'_>> = self
            .changed
            .iter()
            .zip(&texts)
            .filter_map(|(key, text)| {
                let rec = self.records.get(key)?.as_ref()?;
                Some(RecordRow {
                    key,
                    data: text.as_deref(),
                    deleted: rec.deleted,
                    version: rec.version,
                    nth: self.last_nth.get(key).copied().unwrap_or(0),
                    hlc: &rec.hlc,
                    owner: &rec.owner,
                    team: &rec.team,
                    created_at_ms: rec.created_at_ms,
                    updated_at_ms: rec.updated_at_ms,
                    writer: &self.ctx.client_id,
                    echo: rec.echo,
                })
            })
            .collect();
        if !rows.is_empty() {
            steps.stage_records(&rows).await?;
        }
        let files = self.files_of(&rows);
        if !files.is_empty() {
            steps.index_files(&files).await?;
        }
        if self.applied > 0 {
            let first = steps.assign_seqs(self.applied, &rows).await?;
            for r in &mut self.results {
                give_seq(r, first);
            }
        }
        drop(rows);
        if !self.audit.is_empty() {
            steps.append_audit(std::mem::take(&mut self.audit)).await?;
        }
        let mut texts = Vec::with_capacity(self.to_store.len());
        for (i, record) in &self.to_store {
            let stored = match &self.results[*i] {
                OpResult::Applied {
                    op_id,
                    version,
                    seq,
                } => StoredAnswer::Applied {
                    op_id: op_id.clone(),
                    version: *version,
                    seq: *seq,
                },
                OpResult::Rejected { op_id, error } => StoredAnswer::Rejected {
                    op_id: op_id.clone(),
                    error: error.clone(),
                },
                OpResult::Conflict { op_id, .. } => StoredAnswer::Conflict {
                    op_id: op_id.clone(),
                    current: None,
                    record: record.clone(),
                },
                OpResult::Deferred { .. } => continue,
            };
            let text = serde_json::to_string(&stored).map_err(db_err)?;
            texts.push((self.results[*i].op_id().to_owned(), text));
        }
        let user = self.user();
        let answers: Vec<AnswerRow<'_>> = texts
            .iter()
            .map(|(op_id, answer)| AnswerRow {
                user,
                op_id,
                answer,
                at_ms: self.now_ms,
            })
            .collect();
        if !answers.is_empty() {
            steps.store_answers(&answers).await?;
        }
        Ok(self.results)
    }
}

/// Replaces a pending seq (`-nth`) by the `nth` of the seqs from `first` on.
fn give_seq(r: &mut OpResult, first: i64) {
    let seq = match r {
        OpResult::Applied { seq, .. } => seq,
        OpResult::Conflict {
            current: Some(Change { seq, .. }),
            ..
        } => seq,
        _ => return,
    };
    if *seq < 0 {
        *seq = first - 1 - *seq;
    }
}

/// About how many bytes an answer adds to the body.
fn answer_size(r: &OpResult) -> usize {
    ANSWER_OVERHEAD
        + r.op_id().len()
        + match r {
            OpResult::Conflict {
                current: Some(c), ..
            } => c.data.as_ref().map_or(0, json_size),
            OpResult::Rejected { error, .. } => error.message.len(),
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_answers_keep_no_record_and_read_the_old_form() {
        let stored = StoredAnswer::Conflict {
            op_id: "o".into(),
            current: None,
            record: Some(RecordName {
                collection: "patients".into(),
                record_id: "p-1".into(),
                scope: None,
            }),
        };
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            json!({"status": "conflict", "op_id": "o", "collection": "patients", "record_id": "p-1"})
        );
        assert_eq!(serde_json::from_str::<StoredAnswer>(&text).unwrap(), stored);
        // The form before: the whole record under `current`, or null.
        let old = json!({"op_id": "o", "status": "conflict", "current": {
            "collection": "patients", "record_id": "p-1", "version": 3, "seq": 9,
            "deleted": false, "data": {"big": "x"}, "hlc": "0000000000001-00000-a",
            "updated_at": "1970-01-01T00:00:00.001Z"}});
        match serde_json::from_value::<StoredAnswer>(old).unwrap() {
            StoredAnswer::Conflict {
                current: Some(n), ..
            } => assert_eq!(
                (n.collection.as_str(), n.record_id.as_str()),
                ("patients", "p-1")
            ),
            other => panic!("{other:?}"),
        }
        let old_null = json!({"op_id": "o", "status": "conflict", "current": null});
        assert!(matches!(
            serde_json::from_value::<StoredAnswer>(old_null).unwrap(),
            StoredAnswer::Conflict {
                current: None,
                record: None,
                ..
            }
        ));
        for r in [
            json!({"op_id": "a", "status": "applied", "version": 2, "seq": 7}),
            json!({"op_id": "r", "status": "rejected", "error": {"code": "invalid_request", "message": "m"}}),
        ] {
            let s: StoredAnswer = serde_json::from_value(r.clone()).unwrap();
            assert_eq!(serde_json::to_value(&s).unwrap(), r);
        }
    }

    #[test]
    fn pending_seqs_become_real_ones() {
        let mut a = OpResult::Applied {
            op_id: "a".into(),
            version: 1,
            seq: -3,
        };
        give_seq(&mut a, 100);
        assert!(matches!(a, OpResult::Applied { seq: 102, .. }));
        let mut kept = OpResult::Applied {
            op_id: "a".into(),
            version: 1,
            seq: 7,
        };
        give_seq(&mut kept, 100);
        assert!(matches!(kept, OpResult::Applied { seq: 7, .. }));
    }
}
