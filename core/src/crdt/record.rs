//! Whole records with CRDT fields: merging a write into the stored record, and telling
//! a write that only touches CRDT fields (which never conflicts).

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;
use crate::protocol::{JsonObject, OpKind};

/// Parses both values as CRDTs, merges them, and returns the canonical JSON.
pub fn merge_json(a: &Value, b: &Value) -> Result<Value, CrdtError> {
    Ok(Crdt::from_json(a)?.merge(&Crdt::from_json(b)?)?.to_json())
}

/// Merges the CRDT fields of an incoming write with the stored record, in place, so the
/// stored result is `incoming` with every field that is a CRDT on both sides replaced by
/// the merge. Every CRDT field of `incoming` is validated and written in canonical form.
/// For `OpKind::Put`, CRDT fields of `existing` that `incoming` omits are carried over
/// (omitting a CRDT field must not erase other replicas' contributions). For `Patch` only
/// fields present in `incoming` are touched. `Delete` carries no data and is left alone.
///
/// A field that is a CRDT on one side only is not merged: the incoming value stands.
/// Two CRDTs of types that do not merge give `TypeMismatch`, and an invalid CRDT on
/// either side gives `Malformed`; `incoming` is unchanged on error.
pub fn merge_record(
    existing: &JsonObject,
    incoming: &mut JsonObject,
    kind: OpKind,
) -> Result<(), CrdtError> {
    if kind == OpKind::Delete {
        return Ok(());
    }
    // Compute every merged field first, so an error leaves `incoming` untouched.
    let mut merged = Vec::new();
    for (key, inc) in incoming.iter() {
        if !Crdt::is_crdt(inc) {
            continue;
        }
        let inc = Crdt::from_json(inc).map_err(|e| in_field(key, e))?;
        let out = match existing.get(key) {
            Some(ex) if Crdt::is_crdt(ex) => {
                let ex = Crdt::from_json(ex).map_err(|e| in_field(key, e))?;
                ex.merge(&inc).map_err(|e| in_field(key, e))?
            }
            _ => inc,
        };
        merged.push((key.clone(), out.to_json()));
    }
    let mut carried = Vec::new();
    if kind == OpKind::Put {
        for (key, ex) in existing {
            if Crdt::is_crdt(ex) && !incoming.contains_key(key) {
                carried.push((key.clone(), ex.clone()));
            }
        }
    }
    incoming.extend(merged);
    incoming.extend(carried);
    Ok(())
}

/// Names the field in an error, so a rejected op says which field was wrong.
fn in_field(key: &str, e: CrdtError) -> CrdtError {
    match e {
        CrdtError::Malformed(m) => malformed(format!("field {:?}: {m}", short(key))),
        other => other,
    }
}

/// Builds the record a write produces: `Put` gives `incoming` (with the CRDT merge of
/// [`merge_record`]); `Patch` gives `existing` with `incoming`'s top-level fields set (a
/// `null` stores `null`, it does not remove the field), CRDT fields merged. `Delete`
/// gives an empty object: callers store a tombstone, not data.
pub fn apply_write(
    existing: Option<&JsonObject>,
    incoming: &JsonObject,
    kind: OpKind,
) -> Result<JsonObject, CrdtError> {
    let empty = JsonObject::new();
    let existing = existing.unwrap_or(&empty);
    match kind {
        OpKind::Delete => Ok(JsonObject::new()),
        OpKind::Put => {
            let mut out = incoming.clone();
            merge_record(existing, &mut out, kind)?;
            Ok(out)
        }
        OpKind::Patch => {
            let mut fields = incoming.clone();
            merge_record(existing, &mut fields, kind)?;
            let mut out = existing.clone();
            out.extend(fields);
            Ok(out)
        }
    }
}

/// True when the write changes only CRDT fields of `existing`: every top-level field
/// whose resulting value differs from `existing` is a CRDT on the incoming side (and is
/// missing or a CRDT in `existing`). For `Put`, non-CRDT fields must therefore be equal
/// and present on both sides. Such a write cannot lose anyone's edit, so it never
/// conflicts. `Delete` is never CRDT-only, and neither is a write whose CRDT fields do
/// not merge.
pub fn changes_only_crdt_fields(
    existing: &JsonObject,
    incoming: &JsonObject,
    kind: OpKind,
) -> bool {
    if kind == OpKind::Delete {
        return false;
    }
    let Ok(result) = apply_write(Some(existing), incoming, kind) else {
        return false;
    };
    result_changes_only_crdt_fields(existing, incoming, &result)
}

/// [`changes_only_crdt_fields`] for a caller that already holds `result`, the
/// [`apply_write`] of `incoming` (not a delete) onto `existing`: a merge of a large CRDT
/// then runs once, not twice.
pub fn result_changes_only_crdt_fields(
    existing: &JsonObject,
    incoming: &JsonObject,
    result: &JsonObject,
) -> bool {
    let keys: BTreeSet<&String> = existing.keys().chain(result.keys()).collect();
    keys.into_iter().all(|k| {
        let before = existing.get(k.as_str());
        if result.get(k.as_str()) == before {
            return true;
        }
        incoming.get(k.as_str()).is_some_and(Crdt::is_crdt) && before.is_none_or(Crdt::is_crdt)
    })
}
