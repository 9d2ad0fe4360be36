//! CRDT field values: the fields that merge instead of conflicting.
//!
//! Two nurses counting doses on two offline tablets must both be counted, whatever
//! order their edits reach the server in. A record field whose value is an object with
//! a `"$crdt"` key is therefore never conflicted: device and server merge it by the
//! CRDT's own rule (see "CRDT values" in `DESIGN.md`). Merges are commutative,
//! associative and idempotent, so resends, reordering and repeated pulls all converge.
//!
//! The JSON forms are part of the wire contract. [`Crdt::from_json`] is strict, because
//! a field that looks like a CRDT but cannot be merged would silently lose updates;
//! [`Crdt::to_json`] writes one canonical form, so equal states compare equal as JSON.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

mod json;
mod ops;
mod record;
#[cfg(test)]
mod tests;

pub use ops::{increment, lww_set, orset_add, orset_remove};
pub use record::{
    apply_write, changes_only_crdt_fields, merge_json, merge_record,
    result_changes_only_crdt_fields,
};

use crate::clock::Hlc;

use json::{canonical_string, parse_tag};

/// The key that marks a JSON object as a CRDT value.
pub const CRDT_KEY: &str = "$crdt";
/// Longest replica id, in bytes: the same rule as the replica of an HLC stamp.
pub const MAX_REPLICA_BYTES: usize = 128;

/// Why a CRDT value could not be read, merged or updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// Not a valid CRDT object: unknown type, missing or extra members, bad counts,
    /// tags or stamps.
    #[error("malformed CRDT value: {0}")]
    Malformed(String),
    /// Two CRDTs of types that do not merge (e.g. a counter and an OR-set).
    #[error("cannot merge a {left} with a {right}")]
    TypeMismatch {
        left: &'static str,
        right: &'static str,
    },
    /// A device operation on a field that holds something else.
    #[error("expected a {expected} field, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// A grow-only counter only grows.
    #[error("a gcounter cannot be decremented")]
    NegativeIncrement,
    /// A replica id that cannot appear in a counter key or an OR-set tag.
    #[error("invalid replica id {0:?}: must be 1-128 bytes with no control characters")]
    InvalidReplica(String),
    /// This replica has used every OR-set tag number.
    #[error("OR-set tag numbers exhausted for replica {0:?}")]
    Overflow(String),
}

fn malformed(msg: impl Into<String>) -> CrdtError {
    CrdtError::Malformed(msg.into())
}

/// Keeps untrusted strings short inside error messages.
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A grow-only counter: one non-decreasing count per replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GCounter {
    pub p: BTreeMap<String, u64>,
}

/// A counter that goes both ways: increments and decrements are two grow-only maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PnCounter {
    pub p: BTreeMap<String, u64>,
    pub n: BTreeMap<String, u64>,
}

/// A last-write-wins register, ordered by HLC stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwRegister {
    pub v: Value,
    pub t: Hlc,
}

/// An observed-remove set of strings where a concurrent add wins over a remove.
/// Every add carries a unique tag; a remove only covers the tags it has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrSet {
    pub adds: BTreeMap<String, BTreeSet<String>>,
    pub removes: BTreeMap<String, BTreeSet<String>>,
}

/// One CRDT field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crdt {
    GCounter(GCounter),
    PnCounter(PnCounter),
    Lww(LwwRegister),
    OrSet(OrSet),
}

impl GCounter {
    /// Σp, saturating.
    pub fn value(&self) -> u64 {
        self.p.values().fold(0u64, |a, &b| a.saturating_add(b))
    }

    pub fn merge(&self, other: &GCounter) -> GCounter {
        GCounter {
            p: max_merge(&self.p, &other.p),
        }
    }
}

impl From<GCounter> for PnCounter {
    /// A gcounter is a pncounter that was never decremented.
    fn from(g: GCounter) -> PnCounter {
        PnCounter {
            p: g.p,
            n: BTreeMap::new(),
        }
    }
}

impl PnCounter {
    /// Σp − Σn, computed wide so that no sum of `u64` counts overflows.
    pub fn value_i128(&self) -> i128 {
        let sum = |m: &BTreeMap<String, u64>| {
            m.values()
                .fold(0i128, |a, &b| a.saturating_add(i128::from(b)))
        };
        sum(&self.p).saturating_sub(sum(&self.n))
    }

    pub fn merge(&self, other: &PnCounter) -> PnCounter {
        PnCounter {
            p: max_merge(&self.p, &other.p),
            n: max_merge(&self.n, &other.n),
        }
    }
}

impl LwwRegister {
    /// The larger stamp wins. Stamps are unique per edit, so a tie means two writes
    /// reused a stamp; the larger canonical JSON of `v` wins then, so that the merge
    /// stays commutative and every replica picks the same value.
    pub fn merge(&self, other: &LwwRegister) -> LwwRegister {
        let ord = self
            .t
            .cmp(&other.t)
            .then_with(|| canonical_string(&self.v).cmp(&canonical_string(&other.v)));
        match ord {
            Ordering::Less => other.clone(),
            Ordering::Equal | Ordering::Greater => self.clone(),
        }
    }
}

impl OrSet {
    /// Present while some add tag has not been removed.
    pub fn contains(&self, elem: &str) -> bool {
        let Some(tags) = self.adds.get(elem) else {
            return false;
        };
        match self.removes.get(elem) {
            Some(removed) => tags.iter().any(|t| !removed.contains(t)),
            None => !tags.is_empty(),
        }
    }

    /// The present elements, sorted.
    pub fn elements(&self) -> Vec<&str> {
        self.adds
            .keys()
            .filter(|e| self.contains(e))
            .map(String::as_str)
            .collect()
    }

    pub fn merge(&self, other: &OrSet) -> OrSet {
        OrSet {
            adds: union_merge(&self.adds, &other.adds),
            removes: union_merge(&self.removes, &other.removes),
        }
    }

    /// The largest tag number `replica` has used, in adds or removes.
    fn max_tag(&self, replica: &str) -> u64 {
        self.adds
            .values()
            .chain(self.removes.values())
            .flatten()
            .filter_map(|t| parse_tag(t).ok())
            .filter(|(r, _)| *r == replica)
            .map(|(_, n)| n)
            .max()
            .unwrap_or(0)
    }
}

impl Crdt {
    /// True for an object with a `"$crdt"` key, valid or not: such a field is never
    /// treated as plain data.
    pub fn is_crdt(v: &Value) -> bool {
        v.as_object().is_some_and(|o| o.contains_key(CRDT_KEY))
    }

    /// How many entries a CRDT value holds, read off its JSON without parsing it: the
    /// distinct replica keys of a counter (across `p` and `n`), the distinct tags of an
    /// OR-set (across adds and removes, so removing an element adds nothing), 1 for a
    /// register, 0 for anything that is not a CRDT. What
    /// [`crate::protocol::MAX_CRDT_ENTRIES`] limits.
    pub fn entry_count(v: &Value) -> usize {
        let Some(o) = v.as_object() else {
            return 0;
        };
        let member = |m: &str| o.get(m).and_then(Value::as_object);
        let keys = |ms: &[&str]| {
            let mut seen = std::collections::HashSet::new();
            for m in ms.iter().filter_map(|m| member(m)) {
                seen.extend(m.keys().map(String::as_str));
            }
            seen.len()
        };
        let tags = |ms: &[&str]| {
            let mut seen = std::collections::HashSet::new();
            for m in ms.iter().filter_map(|m| member(m)) {
                for t in m.values().filter_map(Value::as_array) {
                    seen.extend(t.iter().filter_map(Value::as_str));
                }
            }
            seen.len()
        };
        match o.get(CRDT_KEY).and_then(Value::as_str) {
            Some("gcounter") => keys(&["p"]),
            Some("pncounter") => keys(&["p", "n"]),
            Some("orset") => tags(&["adds", "removes"]),
            Some("lww") => 1,
            _ => 0,
        }
    }

    /// The wire name of the type.
    pub fn kind(&self) -> &'static str {
        match self {
            Crdt::GCounter(_) => "gcounter",
            Crdt::PnCounter(_) => "pncounter",
            Crdt::Lww(_) => "lww",
            Crdt::OrSet(_) => "orset",
        }
    }

    /// Merges two states. A gcounter and a pncounter merge into a pncounter; any other
    /// pair of different types is a `TypeMismatch`.
    pub fn merge(&self, other: &Crdt) -> Result<Crdt, CrdtError> {
        Ok(match (self, other) {
            (Crdt::GCounter(a), Crdt::GCounter(b)) => Crdt::GCounter(a.merge(b)),
            (Crdt::PnCounter(a), Crdt::PnCounter(b)) => Crdt::PnCounter(a.merge(b)),
            (Crdt::GCounter(g), Crdt::PnCounter(c)) | (Crdt::PnCounter(c), Crdt::GCounter(g)) => {
                Crdt::PnCounter(PnCounter::from(g.clone()).merge(c))
            }
            (Crdt::Lww(a), Crdt::Lww(b)) => Crdt::Lww(a.merge(b)),
            (Crdt::OrSet(a), Crdt::OrSet(b)) => Crdt::OrSet(a.merge(b)),
            (a, b) => {
                return Err(CrdtError::TypeMismatch {
                    left: a.kind(),
                    right: b.kind(),
                });
            }
        })
    }

    /// What the app sees: a counter's integer total (clamped to the JSON integer
    /// range: `u64` above zero, `i64` below), the register's value, or the sorted array
    /// of an OR-set's present elements.
    pub fn value(&self) -> Value {
        match self {
            Crdt::GCounter(g) => Value::from(g.value()),
            Crdt::PnCounter(c) => {
                let v = c.value_i128();
                if v >= 0 {
                    Value::from(u64::try_from(v).unwrap_or(u64::MAX))
                } else {
                    Value::from(i64::try_from(v).unwrap_or(i64::MIN))
                }
            }
            Crdt::Lww(r) => r.v.clone(),
            Crdt::OrSet(s) => Value::Array(s.elements().into_iter().map(Value::from).collect()),
        }
    }
}

fn max_merge(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, &n) in b {
        let e = out.entry(k.clone()).or_insert(n);
        *e = (*e).max(n);
    }
    out
}

fn union_merge(
    a: &BTreeMap<String, BTreeSet<String>>,
    b: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = a.clone();
    for (k, tags) in b {
        out.entry(k.clone())
            .or_default()
            .extend(tags.iter().cloned());
    }
    out.retain(|_, tags| !tags.is_empty());
    out
}
