//! The outbox: the durable queue of local edits waiting for the server.
//!
//! Every local write adds (or folds into) an entry in the same transaction as the
//! record itself, so nothing the user saved can be missed by sync. Each entry carries
//! an `op_id` minted at write time, which makes every upload idempotent.
//!
//! An entry's life:
//! - **pending**: queued. While it has never been sent, a later edit of the same record
//!   folds into it ([`plan_enqueue`]): a patch into a patch merges the fields, anything
//!   else becomes a put of the whole record, and deleting a record the server never had
//!   removes both the entry and the record.
//! - **syncing**: in a push request. `sent` is set and stays set: from here on its
//!   op_id may be applied on the server, so the entry is never changed, only resent as
//!   it is. A crash or a cancel returns it to pending, same op_id.
//! - Then, by the server's answer: *applied*, and the entry is deleted while the
//!   record's base moves to what the server holds; a *transient* failure (network,
//!   5xx, 429) makes it pending again after a backoff that survives restarts; a
//!   *permanent* rejection (400, 403) makes it **failed**, its data kept and visible,
//!   until the app retries or discards it; a *conflict* is settled by the collection's
//!   strategy (`sync::settle`), which replaces the record's entries by one new op or
//!   leaves the record conflicted for the app.
//!
//! Per record, entries go out strictly in order and one at a time; a failed entry holds
//! back only the later entries of its own record, never anyone else's. The table and
//! its SQL are `db::outbox`; this module holds the states and the pure rules.

use crate::error::{Error, Result};
use crate::protocol::{ErrorBody, JsonObject, Op, OpKind};

/// Where an entry is in its life. An applied entry is deleted in the transaction that
/// records its answer, so there is no state for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Waiting to be sent (or re-sent).
    Pending,
    /// Handed to the network; its answer is not in yet.
    Syncing,
    /// The server rejected it; kept until the app retries or discards it.
    Failed,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Syncing => "syncing",
            EntryState::Failed => "failed",
        }
    }

    /// A state this build does not know is a corrupt row, not a pending one: read as
    /// pending it would be resent.
    pub(crate) fn parse(s: &str) -> Result<EntryState> {
        match s {
            "pending" => Ok(EntryState::Pending),
            "syncing" => Ok(EntryState::Syncing),
            "failed" => Ok(EntryState::Failed),
            other => Err(Error::corrupt("outbox", "state", other)),
        }
    }
}

/// One queued edit.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Local queue position; increasing in write order.
    pub id: i64,
    pub op_id: String,
    pub collection: String,
    pub record_id: String,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    pub data: Option<JsonObject>,
    pub hlc: String,
    pub force: bool,
    pub state: EntryState,
    pub attempts: u32,
    /// Not sent before this time (ms since the epoch); backoff survives restarts.
    pub next_attempt_at_ms: i64,
    pub last_error: Option<ErrorBody>,
    pub created_at_ms: i64,
    /// Approximate wire size of the op.
    pub bytes: usize,
}

impl OutboxEntry {
    /// The wire form of this entry.
    pub fn to_op(&self) -> Op {
        Op {
            op_id: self.op_id.clone(),
            collection: self.collection.clone(),
            record_id: self.record_id.clone(),
            kind: self.kind,
            base_version: self.base_version,
            data: self.data.clone(),
            hlc: self.hlc.clone(),
            force: self.force,
        }
    }
}

/// How big a push may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_ops: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // Well inside the server's 1000 ops and 8 MiB, so one batch is one request.
        BatchLimits {
            max_ops: 500,
            max_bytes: 2 * 1024 * 1024,
        }
    }
}

/// What became of a sent entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// The server applied it at `version`.
    Applied { version: i64 },
    /// A transient failure: send again after `next_attempt_at_ms`.
    Retry {
        error: ErrorBody,
        next_attempt_at_ms: i64,
    },
    /// A permanent rejection: the entry is failed, its data stays local.
    Failed { error: ErrorBody },
    /// Not sent after all (cancelled): back to pending with no penalty.
    Released,
    /// The server did not process it (its work budget for the request ran out): back
    /// to pending, the attempt uncounted, due again at once or, when given, at
    /// `not_before_ms`.
    Deferred { not_before_ms: Option<i64> },
}

/// Counts of entries by state, for the status API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub syncing: u64,
    pub failed: u64,
}

/// A record's newest entry while it is open to folding: pending and never sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tail {
    pub id: i64,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    pub data: Option<JsonObject>,
}

/// A local edit to queue: what the op carries (the whole record for a put, the fields
/// for a patch), and the whole record after it, for folding a patch into a put.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edit<'a> {
    pub kind: OpKind,
    pub op_data: Option<&'a JsonObject>,
    pub full_data: Option<&'a JsonObject>,
}

/// What queueing an edit does to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Enqueue {
    /// A new entry.
    Insert,
    /// The open tail becomes `kind` carrying `data`.
    Fold {
        tail_id: i64,
        kind: OpKind,
        data: Option<JsonObject>,
    },
    /// A create that never left the device was deleted: the tail goes, and so does the
    /// record, leaving no trace.
    Vanish { tail_id: i64 },
}

/// Decides how an edit joins the record's queue. `earlier_entries` says whether the
/// record has entries before the tail (sent or failed ones); it is asked only when a
/// delete could make the record vanish.
pub(crate) fn plan_enqueue(
    tail: Option<Tail>,
    edit: Edit<'_>,
    earlier_entries: impl FnOnce() -> Result<bool>,
) -> Result<Enqueue> {
    let Some(tail) = tail else {
        return Ok(Enqueue::Insert);
    };
    let (kind, data) = match (tail.kind, edit.kind) {
        (_, OpKind::Delete) => {
            let never_on_server = tail.base_version.is_none() && tail.kind != OpKind::Delete;
            if never_on_server && !earlier_entries()? {
                return Ok(Enqueue::Vanish { tail_id: tail.id });
            }
            (OpKind::Delete, None)
        }
        (OpKind::Patch, OpKind::Patch) => {
            let mut fields = tail.data.unwrap_or_default();
            if let Some(new) = edit.op_data {
                fields.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            (OpKind::Patch, Some(fields))
        }
        // put+patch, delete+put, patch+put: the whole record as it now stands.
        _ => (OpKind::Put, edit.full_data.cloned()),
    };
    Ok(Enqueue::Fold {
        tail_id: tail.id,
        kind,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> JsonObject {
        v.as_object().cloned().unwrap()
    }

    fn tail(kind: OpKind, base: Option<i64>, data: Option<serde_json::Value>) -> Tail {
        Tail {
            id: 7,
            kind,
            base_version: base,
            data: data.map(obj),
        }
    }

    fn never() -> Result<bool> {
        panic!("not asked for this edit")
    }

    #[test]
    fn with_no_open_tail_an_edit_is_a_new_entry() {
        let edit = Edit {
            kind: OpKind::Patch,
            op_data: None,
            full_data: None,
        };
        assert_eq!(plan_enqueue(None, edit, never).unwrap(), Enqueue::Insert);
    }

    #[test]
    fn patches_merge_and_anything_else_becomes_the_whole_record() {
        let fields = obj(json!({"b": 2}));
        let whole = obj(json!({"a": 1, "b": 2}));
        let edit = Edit {
            kind: OpKind::Patch,
            op_data: Some(&fields),
            full_data: Some(&whole),
        };
        let t = tail(OpKind::Patch, Some(3), Some(json!({"a": 1, "b": 0})));
        assert_eq!(
            plan_enqueue(Some(t), edit, never).unwrap(),
            Enqueue::Fold {
                tail_id: 7,
                kind: OpKind::Patch,
                data: Some(whole.clone())
            }
        );
        let t = tail(OpKind::Put, None, Some(json!({"a": 1})));
        assert_eq!(
            plan_enqueue(Some(t), edit, never).unwrap(),
            Enqueue::Fold {
                tail_id: 7,
                kind: OpKind::Put,
                data: Some(whole)
            }
        );
    }

    #[test]
    fn deleting_a_record_the_server_never_had_leaves_nothing() {
        let del = Edit {
            kind: OpKind::Delete,
            op_data: None,
            full_data: None,
        };
        let created = || tail(OpKind::Put, None, Some(json!({})));
        assert_eq!(
            plan_enqueue(Some(created()), del, || Ok(false)).unwrap(),
            Enqueue::Vanish { tail_id: 7 }
        );
        // An earlier entry may be on the server already: the delete must go out.
        let fold_delete = Enqueue::Fold {
            tail_id: 7,
            kind: OpKind::Delete,
            data: None,
        };
        assert_eq!(
            plan_enqueue(Some(created()), del, || Ok(true)).unwrap(),
            fold_delete
        );
        // A record with a server version is deleted there too.
        let synced = tail(OpKind::Patch, Some(2), Some(json!({})));
        assert_eq!(plan_enqueue(Some(synced), del, never).unwrap(), fold_delete);
    }

    #[test]
    fn unknown_states_are_errors() {
        assert_eq!(EntryState::parse("syncing"), Ok(EntryState::Syncing));
        assert!(matches!(
            EntryState::parse("synced"),
            Err(Error::Database(_))
        ));
    }
}
