//! Applying a push: the one per-op loop every backend runs.
//!
//! Which answer an op gets, and what is written for it, must not depend on the
//! database, so the order of steps (stored answer first, then access and conflict rule,
//! then record, audit row and answer) lives here once. A backend supplies only the
//! storage steps, as a [`PushSteps`] inside the transaction it opened, and keeps to
//! itself how it makes them safe under concurrency (locks, seq allocation, retries).

use outpost_core::protocol::{OpResult, rfc3339_millis};

use crate::logic::{self, Decision, PushItem, StoredRecord, ValidOp};
use crate::storage::{PushContext, StorageError, db_err};

/// A record as an applied op leaves it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRow<'a> {
    pub collection: &'a str,
    pub record_id: &'a str,
    /// The JSON object as text; `None` for a tombstone.
    pub data: Option<&'a str>,
    pub deleted: bool,
    pub version: i64,
    pub seq: i64,
    pub hlc: &'a str,
    pub owner: &'a str,
    pub team: &'a str,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One row of the append-only audit trail: who applied which op, when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditRow<'a> {
    /// RFC 3339 UTC.
    pub at: &'a str,
    pub user: &'a str,
    pub client_id: &'a str,
    pub op_id: &'a str,
    pub collection: &'a str,
    pub record_id: &'a str,
    pub kind: &'a str,
    pub old_version: Option<i64>,
    pub new_version: i64,
    /// The token's device session, when it names one.
    pub device: Option<&'a str>,
}

/// The stored answer to an op, which a repeat of its `(user, op_id)` gets again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerRow<'a> {
    pub user: &'a str,
    pub op_id: &'a str,
    /// The [`OpResult`] as JSON text.
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
    async fn load_record(
        &mut self,
        collection: &str,
        record_id: &str,
    ) -> Result<Option<StoredRecord>, Self::Error>;

    /// The next seq of the change sequence.
    async fn next_seq(&mut self) -> Result<i64, Self::Error>;

    /// Inserts the record, or updates its content (owner, team and creation time stay).
    async fn write_record(&mut self, row: RecordRow<'_>) -> Result<(), Self::Error>;

    async fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), Self::Error>;

    async fn store_answer(&mut self, row: AnswerRow<'_>) -> Result<(), Self::Error>;
}

/// Answers every item in order, with the rules of [`logic::decide`], at `now_ms`. The
/// caller commits when this returns `Ok`, and only then.
pub(crate) async fn apply<S: PushSteps>(
    steps: &mut S,
    ctx: &PushContext,
    items: &[PushItem],
    now_ms: i64,
) -> Result<Vec<OpResult>, S::Error> {
    let user = ctx.user.name.as_str();
    let at = rfc3339_millis(now_ms);
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let op_id = item.op_id();
        // An op_id that cannot be a key (empty, too long) is answered but never stored.
        let storable = logic::op_id_ok(op_id);
        if storable && let Some(answer) = steps.stored_answer(user, op_id).await? {
            results.push(serde_json::from_str::<OpResult>(&answer).map_err(db_err)?);
            continue;
        }
        let result = match item {
            PushItem::Invalid { op_id, error } => OpResult::Rejected {
                op_id: op_id.clone(),
                error: error.clone(),
            },
            PushItem::Valid(op) => apply_op(steps, ctx, op, &at, now_ms).await?,
        };
        if storable {
            let answer = serde_json::to_string(&result).map_err(db_err)?;
            steps
                .store_answer(AnswerRow {
                    user,
                    op_id,
                    answer: &answer,
                    at_ms: now_ms,
                })
                .await?;
        }
        results.push(result);
    }
    Ok(results)
}

/// One valid op that has no stored answer: decide, and write what was decided.
async fn apply_op<S: PushSteps>(
    steps: &mut S,
    ctx: &PushContext,
    op: &ValidOp,
    at: &str,
    now_ms: i64,
) -> Result<OpResult, S::Error> {
    let op_id = op.op_id.clone();
    let existing = steps.load_record(&op.collection, &op.record_id).await?;
    let access = ctx.access.of(&op.collection);
    let state = match logic::decide(op, existing.as_ref(), &ctx.user, access, now_ms) {
        Decision::Conflict(current) => return Ok(OpResult::Conflict { op_id, current }),
        Decision::Reject(error) => return Ok(OpResult::Rejected { op_id, error }),
        Decision::Apply(state) => state,
    };
    let seq = steps.next_seq().await?;
    let data = match &state.data {
        Some(d) => Some(serde_json::to_string(d).map_err(db_err)?),
        None => None,
    };
    steps
        .write_record(RecordRow {
            collection: &op.collection,
            record_id: &op.record_id,
            data: data.as_deref(),
            deleted: state.deleted,
            version: state.version,
            seq,
            hlc: &op.hlc,
            owner: &state.owner,
            team: &state.team,
            created_at_ms: state.created_at_ms,
            updated_at_ms: now_ms,
        })
        .await?;
    steps
        .append_audit(AuditRow {
            at,
            user: &ctx.user.name,
            client_id: &ctx.client_id,
            op_id: &op_id,
            collection: &op.collection,
            record_id: &op.record_id,
            kind: op.kind.as_str(),
            old_version: state.old_version,
            new_version: state.version,
            device: ctx.device.as_deref(),
        })
        .await?;
    Ok(OpResult::Applied {
        op_id,
        version: state.version,
        seq,
    })
}
