//! The field operations a device makes: increment a counter, set a register, add to
//! or remove from a set. Each returns the field's new state, for an ordinary patch.

use serde_json::Value;

use super::json::check_replica;
use super::*;
use crate::clock::Hlc;
use crate::protocol::json_kind;

/// Adds `by` (negative to decrement) to the counter held by a field, for `replica`.
/// An absent field becomes a new pncounter: always a pncounter, so two offline
/// replicas creating the same field agree on its type. Counts saturate.
pub fn increment(current: Option<&Value>, replica: &str, by: i64) -> Result<Value, CrdtError> {
    check_replica(replica)?;
    let state = match current {
        None => Crdt::PnCounter(PnCounter::default()),
        Some(v) => parse_for("counter", v)?,
    };
    let add = |m: &mut BTreeMap<String, u64>, d: u64| {
        let e = m.entry(replica.to_owned()).or_insert(0);
        *e = e.saturating_add(d);
    };
    let out = match state {
        Crdt::GCounter(mut g) => {
            if by < 0 {
                return Err(CrdtError::NegativeIncrement);
            }
            add(&mut g.p, by.unsigned_abs());
            Crdt::GCounter(g)
        }
        Crdt::PnCounter(mut c) => {
            match by.cmp(&0) {
                Ordering::Greater => add(&mut c.p, by.unsigned_abs()),
                Ordering::Less => add(&mut c.n, by.unsigned_abs()),
                Ordering::Equal => {}
            }
            Crdt::PnCounter(c)
        }
        other => return Err(wrong_type("counter", &other)),
    };
    Ok(out.to_json())
}

/// Sets a last-write-wins register to `v` stamped `t`. The current value stays if its
/// stamp is larger: the same rule as a merge, so a late local write never undoes a
/// newer one already pulled.
pub fn lww_set(current: Option<&Value>, v: Value, t: &Hlc) -> Result<Value, CrdtError> {
    let new = LwwRegister { v, t: t.clone() };
    let out = match current {
        None => new,
        Some(cur) => match parse_for("lww", cur)? {
            Crdt::Lww(r) => r.merge(&new),
            other => return Err(wrong_type("lww", &other)),
        },
    };
    Ok(Crdt::Lww(out).to_json())
}

/// Adds `elem` with a fresh tag `"<replica>:<n>"`, `n` one more than any number this
/// replica has used in the set, so tags never repeat even after removes.
pub fn orset_add(current: Option<&Value>, elem: &str, replica: &str) -> Result<Value, CrdtError> {
    check_replica(replica)?;
    let mut set = orset_for(current)?;
    let n = set
        .max_tag(replica)
        .checked_add(1)
        .ok_or_else(|| CrdtError::Overflow(short(replica)))?;
    set.adds
        .entry(elem.to_owned())
        .or_default()
        .insert(format!("{replica}:{n}"));
    Ok(Crdt::OrSet(set).to_json())
}

/// Removes `elem` by moving every add tag observed here into the removes. Adds made
/// concurrently elsewhere carry tags not seen here, so they survive the merge (add
/// wins). An absent field becomes an empty set.
pub fn orset_remove(current: Option<&Value>, elem: &str) -> Result<Value, CrdtError> {
    let mut set = orset_for(current)?;
    if let Some(tags) = set.adds.remove(elem)
        && !tags.is_empty()
    {
        set.removes.entry(elem.to_owned()).or_default().extend(tags);
    }
    Ok(Crdt::OrSet(set).to_json())
}

fn orset_for(current: Option<&Value>) -> Result<OrSet, CrdtError> {
    match current {
        None => Ok(OrSet::default()),
        Some(v) => match parse_for("orset", v)? {
            Crdt::OrSet(s) => Ok(s),
            other => Err(wrong_type("orset", &other)),
        },
    }
}

/// Parses the current value of a field a device operation targets; plain JSON there is
/// a `WrongType`, not something to overwrite.
fn parse_for(expected: &'static str, v: &Value) -> Result<Crdt, CrdtError> {
    if Crdt::is_crdt(v) {
        Crdt::from_json(v)
    } else {
        Err(CrdtError::WrongType {
            expected,
            found: json_kind(v),
        })
    }
}

fn wrong_type(expected: &'static str, found: &Crdt) -> CrdtError {
    CrdtError::WrongType {
        expected,
        found: found.kind(),
    }
}
