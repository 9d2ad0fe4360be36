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

use serde_json::{Map, Value};

use crate::clock::Hlc;
use crate::protocol::{JsonObject, OpKind};

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

    /// The wire name of the type.
    pub fn kind(&self) -> &'static str {
        match self {
            Crdt::GCounter(_) => "gcounter",
            Crdt::PnCounter(_) => "pncounter",
            Crdt::Lww(_) => "lww",
            Crdt::OrSet(_) => "orset",
        }
    }

    /// Reads a CRDT value. Strict: anything but the exact documented shape is
    /// `Malformed`, since a half-understood CRDT would merge wrongly.
    pub fn from_json(v: &Value) -> Result<Crdt, CrdtError> {
        let obj = v
            .as_object()
            .ok_or_else(|| malformed("a CRDT value must be a JSON object"))?;
        let kind = match obj.get(CRDT_KEY) {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(malformed("\"$crdt\" must be a string")),
            None => return Err(malformed("missing \"$crdt\"")),
        };
        let allowed: &[&str] = match kind {
            "gcounter" => &["p"],
            "pncounter" => &["p", "n"],
            "lww" => &["v", "t"],
            "orset" => &["adds", "removes"],
            other => return Err(malformed(format!("unknown CRDT type {:?}", short(other)))),
        };
        for key in obj.keys() {
            if key != CRDT_KEY && !allowed.contains(&key.as_str()) {
                return Err(malformed(format!(
                    "unexpected member {:?} in a {kind}",
                    short(key)
                )));
            }
        }
        let member = |name: &str| {
            obj.get(name)
                .ok_or_else(|| malformed(format!("a {kind} needs member {name:?}")))
        };
        Ok(match kind {
            "gcounter" => Crdt::GCounter(GCounter {
                p: parse_counts(member("p")?, "p")?,
            }),
            "pncounter" => Crdt::PnCounter(PnCounter {
                p: parse_counts(member("p")?, "p")?,
                n: parse_counts(member("n")?, "n")?,
            }),
            "lww" => {
                let t = member("t")?
                    .as_str()
                    .ok_or_else(|| malformed("lww \"t\" must be an HLC stamp string"))?;
                let t = t
                    .parse::<Hlc>()
                    .map_err(|e| malformed(format!("lww \"t\": {e}")))?;
                Crdt::Lww(LwwRegister {
                    v: member("v")?.clone(),
                    t,
                })
            }
            _ => Crdt::OrSet(OrSet {
                adds: parse_tag_map(member("adds")?, "adds")?,
                removes: parse_tag_map(member("removes")?, "removes")?,
            }),
        })
    }

    /// The canonical JSON form: sorted maps, sorted unique tags, no empty tag lists,
    /// both maps of a pncounter and of an orset always present.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert(CRDT_KEY.to_owned(), Value::from(self.kind()));
        match self {
            Crdt::GCounter(g) => {
                o.insert("p".to_owned(), counts_json(&g.p));
            }
            Crdt::PnCounter(c) => {
                o.insert("p".to_owned(), counts_json(&c.p));
                o.insert("n".to_owned(), counts_json(&c.n));
            }
            Crdt::Lww(r) => {
                o.insert("v".to_owned(), r.v.clone());
                o.insert("t".to_owned(), Value::from(r.t.to_string()));
            }
            Crdt::OrSet(s) => {
                o.insert("adds".to_owned(), tags_json(&s.adds));
                o.insert("removes".to_owned(), tags_json(&s.removes));
            }
        }
        Value::Object(o)
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
    let keys: BTreeSet<&String> = existing.keys().chain(result.keys()).collect();
    keys.into_iter().all(|k| {
        let before = existing.get(k.as_str());
        if result.get(k.as_str()) == before {
            return true;
        }
        incoming.get(k.as_str()).is_some_and(Crdt::is_crdt) && before.is_none_or(Crdt::is_crdt)
    })
}

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

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn valid_replica(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_REPLICA_BYTES && !r.chars().any(char::is_control)
}

fn check_replica(r: &str) -> Result<(), CrdtError> {
    if valid_replica(r) {
        Ok(())
    } else {
        Err(CrdtError::InvalidReplica(short(r)))
    }
}

/// Splits a tag `"<replica>:<n>"`. The number is canonical decimal (no sign, no leading
/// zeros), so that one tag has one spelling; the replica may itself contain `:`.
fn parse_tag(tag: &str) -> Result<(&str, u64), CrdtError> {
    let err = || {
        malformed(format!(
            "invalid tag {:?}: expected \"<replica>:<n>\"",
            short(tag)
        ))
    };
    let (replica, n) = tag.rsplit_once(':').ok_or_else(err)?;
    let canonical =
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    if !canonical || !valid_replica(replica) {
        return Err(err());
    }
    Ok((replica, n.parse().map_err(|_| err())?))
}

fn parse_counts(v: &Value, name: &str) -> Result<BTreeMap<String, u64>, CrdtError> {
    let obj = v
        .as_object()
        .ok_or_else(|| malformed(format!("{name:?} must be an object of replica counts")))?;
    let mut out = BTreeMap::new();
    for (replica, n) in obj {
        if !valid_replica(replica) {
            return Err(malformed(format!(
                "invalid replica id {:?} in {name:?}",
                short(replica)
            )));
        }
        let n = n.as_u64().ok_or_else(|| {
            malformed(format!(
                "count of {:?} in {name:?} must be a non-negative integer",
                short(replica)
            ))
        })?;
        out.insert(replica.clone(), n);
    }
    Ok(out)
}

fn parse_tag_map(v: &Value, name: &str) -> Result<BTreeMap<String, BTreeSet<String>>, CrdtError> {
    let obj = v
        .as_object()
        .ok_or_else(|| malformed(format!("{name:?} must be an object of tag arrays")))?;
    let mut out = BTreeMap::new();
    for (elem, tags) in obj {
        let tags = tags.as_array().ok_or_else(|| {
            malformed(format!(
                "tags of {:?} in {name:?} must be an array",
                short(elem)
            ))
        })?;
        let mut set = BTreeSet::new();
        for tag in tags {
            let tag = tag
                .as_str()
                .ok_or_else(|| malformed(format!("tags in {name:?} must be strings")))?;
            parse_tag(tag)?;
            set.insert(tag.to_owned());
        }
        // An element with no tags says nothing; dropping it keeps one canonical form.
        if !set.is_empty() {
            out.insert(elem.clone(), set);
        }
    }
    Ok(out)
}

fn counts_json(m: &BTreeMap<String, u64>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, &n)| (k.clone(), Value::from(n)))
            .collect(),
    )
}

fn tags_json(m: &BTreeMap<String, BTreeSet<String>>) -> Value {
    Value::Object(
        m.iter()
            .filter(|(_, tags)| !tags.is_empty())
            .map(|(e, tags)| {
                let tags = tags.iter().map(|t| Value::from(t.as_str())).collect();
                (e.clone(), Value::Array(tags))
            })
            .collect(),
    )
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

/// JSON with object keys sorted at every level, whatever map order serde_json was built
/// with: the tie-break of the LWW merge must be the same on every replica.
fn canonical_string(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut entries: Vec<(&String, &Value)> = o.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                write_canonical(x, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn t(ms: u64, c: u32, r: &str) -> Hlc {
        Hlc::new(ms, c, r)
    }

    #[test]
    fn wire_shapes_round_trip() {
        for v in [
            json!({"$crdt":"gcounter","p":{"a":1,"b":2}}),
            json!({"$crdt":"pncounter","p":{"a":5},"n":{"b":7}}),
            json!({"$crdt":"lww","v":{"x":[1,"y"]},"t":"1700000000000-00001-dev-a"}),
            json!({"$crdt":"orset","adds":{"x":["a:1","b:2"]},"removes":{"x":["a:1"]}}),
            json!({"$crdt":"orset","adds":{},"removes":{}}),
        ] {
            let c = Crdt::from_json(&v).unwrap();
            assert_eq!(c.to_json(), v);
            assert!(Crdt::is_crdt(&v));
        }
    }

    #[test]
    fn canonical_form_sorts_and_dedupes_tags() {
        let c = Crdt::from_json(&json!({
            "$crdt":"orset","adds":{"x":["b:2","a:1","b:2"],"y":[]},"removes":{}
        }))
        .unwrap();
        assert_eq!(
            c.to_json(),
            json!({"$crdt":"orset","adds":{"x":["a:1","b:2"]},"removes":{}})
        );
    }

    #[test]
    fn values() {
        let v = |j: Value| Crdt::from_json(&j).unwrap().value();
        assert_eq!(v(json!({"$crdt":"gcounter","p":{"a":1,"b":2}})), json!(3));
        assert_eq!(v(json!({"$crdt":"gcounter","p":{}})), json!(0));
        assert_eq!(
            v(json!({"$crdt":"pncounter","p":{"a":1},"n":{"b":4}})),
            json!(-3)
        );
        assert_eq!(
            v(json!({"$crdt":"pncounter","p":{"a":u64::MAX,"b":u64::MAX},"n":{}})),
            json!(u64::MAX)
        );
        assert_eq!(
            v(json!({"$crdt":"pncounter","p":{},"n":{"a":u64::MAX}})),
            json!(i64::MIN)
        );
        assert_eq!(
            v(json!({"$crdt":"gcounter","p":{"a":u64::MAX,"b":1}})),
            json!(u64::MAX)
        );
        assert_eq!(
            v(json!({"$crdt":"lww","v":"hi","t":"1700000000000-00001-a"})),
            json!("hi")
        );
        assert_eq!(
            v(json!({"$crdt":"orset",
                "adds":{"z":["a:1"],"x":["a:2","b:1"],"gone":["a:3"]},
                "removes":{"x":["a:2"],"gone":["a:3"],"never":["c:1"]}})),
            json!(["x", "z"])
        );
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let bad = [
            json!(null),
            json!(1),
            json!({}),
            json!({"$crdt":1}),
            json!({"$crdt":"vclock"}),
            json!({"$crdt":"gcounter"}),
            json!({"$crdt":"gcounter","p":[]}),
            json!({"$crdt":"gcounter","p":{"a":-1}}),
            json!({"$crdt":"gcounter","p":{"a":1.5}}),
            json!({"$crdt":"gcounter","p":{"a":1.0}}),
            json!({"$crdt":"gcounter","p":{"a":"1"}}),
            json!({"$crdt":"gcounter","p":{"":1}}),
            json!({"$crdt":"gcounter","p":{"a":1},"extra":0}),
            json!({"$crdt":"gcounter","p":{"a":1},"n":{}}),
            json!({"$crdt":"pncounter","p":{"a":1}}),
            json!({"$crdt":"pncounter","n":{}}),
            json!({"$crdt":"lww","v":1}),
            json!({"$crdt":"lww","t":"1700000000000-00001-a"}),
            json!({"$crdt":"lww","v":1,"t":5}),
            json!({"$crdt":"lww","v":1,"t":"yesterday"}),
            json!({"$crdt":"orset","adds":{}}),
            json!({"$crdt":"orset","adds":{"x":"a:1"},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":[1]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":["a"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":["a:"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":[":1"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":["a:01"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":["a:-1"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{"x":["a:99999999999999999999999"]},"removes":{}}),
            json!({"$crdt":"orset","adds":{},"removes":[]}),
        ];
        for v in bad {
            assert!(
                matches!(Crdt::from_json(&v), Err(CrdtError::Malformed(_))),
                "{v}"
            );
        }
        // A replica id may itself contain ':'; the number is after the last one.
        assert!(
            Crdt::from_json(&json!({"$crdt":"orset","adds":{"x":["a:b:3"]},"removes":{}})).is_ok()
        );
    }

    #[test]
    fn merge_rules() {
        let g = json!({"$crdt":"gcounter","p":{"a":3,"b":1}});
        let g2 = json!({"$crdt":"gcounter","p":{"a":1,"c":4}});
        assert_eq!(
            merge_json(&g, &g2).unwrap(),
            json!({"$crdt":"gcounter","p":{"a":3,"b":1,"c":4}})
        );
        let pn = json!({"$crdt":"pncounter","p":{"a":5},"n":{"a":2}});
        assert_eq!(
            merge_json(&g, &pn).unwrap(),
            json!({"$crdt":"pncounter","p":{"a":5,"b":1},"n":{"a":2}})
        );
        assert_eq!(merge_json(&pn, &g).unwrap(), merge_json(&g, &pn).unwrap());

        let old = json!({"$crdt":"lww","v":"old","t":"1700000000000-00001-b"});
        let new = json!({"$crdt":"lww","v":"new","t":"1700000000000-00002-a"});
        assert_eq!(merge_json(&old, &new).unwrap(), new);
        assert_eq!(merge_json(&new, &old).unwrap(), new);
        let tie = json!({"$crdt":"lww","v":"zzz","t":"1700000000000-00002-a"});
        assert_eq!(merge_json(&new, &tie).unwrap(), tie);
        assert_eq!(merge_json(&tie, &new).unwrap(), tie);

        let s = json!({"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}});
        assert_eq!(
            merge_json(&s, &g),
            Err(CrdtError::TypeMismatch {
                left: "orset",
                right: "gcounter"
            })
        );
        assert!(matches!(
            merge_json(&old, &pn),
            Err(CrdtError::TypeMismatch { .. })
        ));
        assert!(matches!(
            merge_json(&json!({"$crdt":"x"}), &pn),
            Err(CrdtError::Malformed(_))
        ));
    }

    #[test]
    fn device_increment() {
        let c = increment(None, "a", 2).unwrap();
        assert_eq!(c, json!({"$crdt":"pncounter","p":{"a":2},"n":{}}));
        let c = increment(Some(&c), "b", -5).unwrap();
        assert_eq!(c, json!({"$crdt":"pncounter","p":{"a":2},"n":{"b":5}}));
        assert_eq!(Crdt::from_json(&c).unwrap().value(), json!(-3));
        let c = increment(Some(&c), "b", i64::MIN).unwrap();
        let c = increment(Some(&c), "b", i64::MIN).unwrap();
        let c = increment(Some(&c), "b", i64::MIN).unwrap();
        assert_eq!(c["n"]["b"], json!(u64::MAX));

        let g = json!({"$crdt":"gcounter","p":{"a":1}});
        assert_eq!(
            increment(Some(&g), "a", 2).unwrap(),
            json!({"$crdt":"gcounter","p":{"a":3}})
        );
        assert_eq!(
            increment(Some(&g), "a", -1),
            Err(CrdtError::NegativeIncrement)
        );
        assert_eq!(
            increment(Some(&json!(5)), "a", 1),
            Err(CrdtError::WrongType {
                expected: "counter",
                found: "a number"
            })
        );
        let s = json!({"$crdt":"orset","adds":{},"removes":{}});
        assert!(matches!(
            increment(Some(&s), "a", 1),
            Err(CrdtError::WrongType { .. })
        ));
        assert!(matches!(
            increment(None, "", 1),
            Err(CrdtError::InvalidReplica(_))
        ));
        assert!(matches!(
            increment(Some(&json!({"$crdt":"gcounter"})), "a", 1),
            Err(CrdtError::Malformed(_))
        ));
    }

    #[test]
    fn device_lww_set() {
        let a = lww_set(None, json!("one"), &t(10, 0, "a")).unwrap();
        assert_eq!(
            a,
            json!({"$crdt":"lww","v":"one","t":"0000000000010-00000-a"})
        );
        let b = lww_set(Some(&a), json!("two"), &t(20, 0, "a")).unwrap();
        assert_eq!(Crdt::from_json(&b).unwrap().value(), json!("two"));
        // A write with an older stamp does not undo a newer one.
        let c = lww_set(Some(&b), json!("late"), &t(15, 0, "b")).unwrap();
        assert_eq!(c, b);
        assert!(matches!(
            lww_set(Some(&json!("x")), json!(1), &t(1, 0, "a")),
            Err(CrdtError::WrongType { .. })
        ));
    }

    #[test]
    fn device_orset() {
        let s = orset_add(None, "x", "a").unwrap();
        assert_eq!(
            s,
            json!({"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}})
        );
        let s = orset_add(Some(&s), "y", "a").unwrap();
        let s = orset_remove(Some(&s), "x").unwrap();
        assert_eq!(
            s,
            json!({"$crdt":"orset","adds":{"y":["a:2"]},"removes":{"x":["a:1"]}})
        );
        // Tag numbers keep growing past removed tags.
        let s = orset_add(Some(&s), "x", "a").unwrap();
        assert_eq!(s["adds"]["x"], json!(["a:3"]));
        let v = Crdt::from_json(&s).unwrap().value();
        assert_eq!(v, json!(["x", "y"]));
        assert_eq!(
            orset_remove(None, "x").unwrap(),
            json!({"$crdt":"orset","adds":{},"removes":{}})
        );
        let full = json!({"$crdt":"orset","adds":{"x":[format!("a:{}", u64::MAX)]},"removes":{}});
        assert!(matches!(
            orset_add(Some(&full), "y", "a"),
            Err(CrdtError::Overflow(_))
        ));
        assert!(orset_add(Some(&full), "y", "b").is_ok());
        assert!(matches!(
            orset_add(Some(&json!([])), "x", "a"),
            Err(CrdtError::WrongType { .. })
        ));
    }

    #[test]
    fn put_carries_omitted_crdt_fields() {
        let existing = obj(json!({
            "name": "A",
            "doses": {"$crdt":"pncounter","p":{"a":2},"n":{}},
            "tags": {"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}},
            "note": "old"
        }));
        let incoming = obj(json!({
            "name": "B",
            "doses": {"$crdt":"pncounter","p":{"b":3},"n":{}}
        }));
        let out = apply_write(Some(&existing), &incoming, OpKind::Put).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "name": "B",
                "doses": {"$crdt":"pncounter","p":{"a":2,"b":3},"n":{}},
                "tags": {"$crdt":"orset","adds":{"x":["a:1"]},"removes":{}}
            })
        );
    }

    #[test]
    fn patch_null_stores_null_and_merges() {
        let existing = obj(json!({
            "name": "A",
            "note": "n",
            "doses": {"$crdt":"gcounter","p":{"a":2}}
        }));
        let incoming = obj(json!({
            "note": null,
            "doses": {"$crdt":"gcounter","p":{"b":1}},
            "new": {"$crdt":"gcounter","p":{"b":1}}
        }));
        let out = apply_write(Some(&existing), &incoming, OpKind::Patch).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({
                "name": "A",
                "note": null,
                "doses": {"$crdt":"gcounter","p":{"a":2,"b":1}},
                "new": {"$crdt":"gcounter","p":{"b":1}}
            })
        );
        let out = apply_write(None, &incoming, OpKind::Patch).unwrap();
        assert_eq!(out, incoming);
        assert!(
            apply_write(Some(&existing), &JsonObject::new(), OpKind::Delete)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn merge_record_edge_cases() {
        let existing = obj(json!({
            "c": {"$crdt":"gcounter","p":{"a":2}},
            "plain": 1
        }));
        // A plain value replacing a CRDT field under put is taken as written.
        let mut inc = obj(json!({"c": 7}));
        merge_record(&existing, &mut inc, OpKind::Put).unwrap();
        assert_eq!(Value::Object(inc), json!({"c": 7}));
        // A CRDT replacing a plain field is not merged with it.
        let mut inc = obj(json!({"plain": {"$crdt":"gcounter","p":{"b":1}}}));
        merge_record(&existing, &mut inc, OpKind::Patch).unwrap();
        assert_eq!(
            Value::Object(inc),
            json!({"plain": {"$crdt":"gcounter","p":{"b":1}}})
        );
        // Errors leave the incoming record unchanged.
        let orig = obj(json!({"c": {"$crdt":"orset","adds":{},"removes":{}}, "d": 1}));
        let mut inc = orig.clone();
        assert!(matches!(
            merge_record(&existing, &mut inc, OpKind::Put),
            Err(CrdtError::TypeMismatch { .. })
        ));
        assert_eq!(inc, orig);
        let mut inc = obj(json!({"x": {"$crdt":"gcounter","p":{"a":-1}}}));
        assert!(matches!(
            merge_record(&existing, &mut inc, OpKind::Patch),
            Err(CrdtError::Malformed(m)) if m.contains("\"x\"")
        ));
        // Delete touches nothing.
        let mut inc = JsonObject::new();
        merge_record(&existing, &mut inc, OpKind::Delete).unwrap();
        assert!(inc.is_empty());
    }

    #[test]
    fn crdt_only_detection() {
        let existing = obj(json!({
            "name": "A",
            "doses": {"$crdt":"gcounter","p":{"a":2}},
            "tags": {"$crdt":"orset","adds":{},"removes":{}}
        }));
        let only = |inc: Value, kind| changes_only_crdt_fields(&existing, &obj(inc), kind);
        // Patch of a CRDT field, existing or new.
        assert!(only(
            json!({"doses": {"$crdt":"gcounter","p":{"b":1}}}),
            OpKind::Patch
        ));
        assert!(only(
            json!({"fresh": {"$crdt":"gcounter","p":{"b":1}}}),
            OpKind::Patch
        ));
        // Setting a plain field to its current value changes nothing.
        assert!(only(json!({"name": "A"}), OpKind::Patch));
        assert!(!only(json!({"name": "B"}), OpKind::Patch));
        assert!(!only(json!({"name": null}), OpKind::Patch));
        assert!(!only(
            json!({"name": {"$crdt":"gcounter","p":{"b":1}}}),
            OpKind::Patch
        ));
        assert!(!only(json!({"doses": 3}), OpKind::Patch));
        // Put: plain fields must be equal and present on both sides; omitted CRDT
        // fields are carried over, so omitting them is fine.
        assert!(only(
            json!({"name": "A", "doses": {"$crdt":"gcounter","p":{"b":1}}}),
            OpKind::Put
        ));
        assert!(only(json!({"name": "A"}), OpKind::Put));
        assert!(!only(
            json!({"doses": {"$crdt":"gcounter","p":{"b":1}}}),
            OpKind::Put
        ));
        assert!(!only(json!({"name": "A", "x": 1}), OpKind::Put));
        // Unmergeable or malformed CRDTs and deletes are never CRDT-only.
        assert!(!only(
            json!({"name": "A", "doses": {"$crdt":"orset","adds":{},"removes":{}}}),
            OpKind::Put
        ));
        assert!(!only(json!({"doses": {"$crdt":"nope"}}), OpKind::Patch));
        assert!(!only(json!({}), OpKind::Delete));
    }

    // ---- property tests ----

    const REPLICAS: [&str; 3] = ["a", "b", "c"];

    fn replica() -> impl Strategy<Value = String> {
        prop::sample::select(&REPLICAS[..]).prop_map(str::to_owned)
    }

    fn counts() -> impl Strategy<Value = BTreeMap<String, u64>> {
        prop::collection::btree_map(replica(), 0u64..50, 0..4)
    }

    fn tags() -> impl Strategy<Value = BTreeMap<String, BTreeSet<String>>> {
        let tag = (replica(), 1u64..5).prop_map(|(r, n)| format!("{r}:{n}"));
        let elem = prop::sample::select(&["x", "y", "z"][..]).prop_map(str::to_owned);
        prop::collection::btree_map(elem, prop::collection::btree_set(tag, 1..4), 0..4)
    }

    fn lww() -> impl Strategy<Value = Crdt> {
        let v = prop_oneof![
            (0i64..3).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
            Just(json!({"k": [1, null]})),
            Just(Value::Null),
        ];
        (v, 0u64..3, 0u32..2, replica())
            .prop_map(|(v, ms, c, r)| Crdt::Lww(LwwRegister { v, t: t(ms, c, &r) }))
    }

    fn counter() -> impl Strategy<Value = Crdt> {
        prop_oneof![
            counts().prop_map(|p| Crdt::GCounter(GCounter { p })),
            (counts(), counts()).prop_map(|(p, n)| Crdt::PnCounter(PnCounter { p, n })),
        ]
    }

    fn orset() -> impl Strategy<Value = Crdt> {
        (tags(), tags()).prop_map(|(adds, removes)| Crdt::OrSet(OrSet { adds, removes }))
    }

    /// Three states of one merge family.
    fn triple() -> impl Strategy<Value = (Crdt, Crdt, Crdt)> {
        prop_oneof![
            (counter(), counter(), counter()),
            (lww(), lww(), lww()),
            (orset(), orset(), orset()),
        ]
    }

    fn m(a: &Crdt, b: &Crdt) -> Crdt {
        a.merge(b).unwrap()
    }

    /// Arbitrary JSON that often looks like a CRDT, for the no-panic check.
    fn wild_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(
                &[
                    "gcounter",
                    "pncounter",
                    "lww",
                    "orset",
                    "a:1",
                    "a:0",
                    "1700000000000-00001-a",
                    "",
                    "x"
                ][..]
            )
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            let key = prop::sample::select(
                &["$crdt", "p", "n", "v", "t", "adds", "removes", "a", "x"][..],
            );
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..5).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    #[derive(Debug, Clone)]
    enum Step {
        Inc(usize, i64),
        Sync(usize, usize),
    }

    fn steps(min_by: i64) -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0usize..3, min_by..100).prop_map(|(r, by)| Step::Inc(r, by)),
                (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Sync(a, b)),
            ],
            0..60,
        )
    }

    /// Runs increments and pairwise syncs on three replicas, then merges everything.
    fn run_counters(start: Option<Value>, steps: &[Step]) -> (Value, i64) {
        let mut states: [Option<Value>; 3] = [start.clone(), start.clone(), start];
        let mut total = 0i64;
        for s in steps {
            match *s {
                Step::Inc(r, by) => {
                    states[r] = Some(increment(states[r].as_ref(), REPLICAS[r], by).unwrap());
                    total += by;
                }
                Step::Sync(a, b) => {
                    states[a] = match (&states[a], &states[b]) {
                        (Some(x), Some(y)) => Some(merge_json(x, y).unwrap()),
                        (x, y) => x.clone().or_else(|| y.clone()),
                    };
                }
            }
        }
        let all = states
            .into_iter()
            .flatten()
            .reduce(|x, y| merge_json(&x, &y).unwrap());
        let value = all.map_or(json!(0), |v| Crdt::from_json(&v).unwrap().value());
        (value, total)
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent((a, b, c) in triple()) {
            prop_assert_eq!(m(&a, &b).to_json(), m(&b, &a).to_json());
            prop_assert_eq!(m(&m(&a, &b), &c).to_json(), m(&a, &m(&b, &c)).to_json());
            prop_assert_eq!(m(&a, &a).to_json(), a.to_json());
            // Merging is also a join: merging the result with either side changes nothing.
            let ab = m(&a, &b);
            prop_assert_eq!(m(&ab, &a).to_json(), ab.to_json());
        }

        #[test]
        fn canonical_json_round_trips((a, b, c) in triple()) {
            for x in [a, b, c] {
                let j = x.to_json();
                let back = Crdt::from_json(&j).unwrap();
                prop_assert_eq!(back.to_json(), j);
            }
        }

        #[test]
        fn pncounter_value_is_total_of_increments(s in steps(-100)) {
            let (value, total) = run_counters(None, &s);
            prop_assert_eq!(value, json!(total));
        }

        #[test]
        fn gcounter_value_is_total_of_increments(s in steps(0)) {
            let start = json!({"$crdt":"gcounter","p":{}});
            let (value, total) = run_counters(Some(start), &s);
            prop_assert_eq!(value, json!(total));
        }

        #[test]
        fn concurrent_add_wins_over_remove(base in orset(), elem in "[x-z]", r in replica()) {
            let base = base.to_json();
            let added = orset_add(Some(&base), &elem, &r).unwrap();
            let removed = orset_remove(Some(&base), &elem).unwrap();
            let merged = Crdt::from_json(&merge_json(&added, &removed).unwrap()).unwrap();
            let Crdt::OrSet(s) = &merged else { panic!("not an orset") };
            prop_assert!(s.contains(&elem));
            // A remove that has seen the add does remove it.
            let later = orset_remove(Some(&added), &elem).unwrap();
            let merged = merge_json(&added, &later).unwrap();
            let Crdt::OrSet(s) = Crdt::from_json(&merged).unwrap() else { panic!("not an orset") };
            prop_assert!(!s.contains(&elem));
        }

        #[test]
        fn orset_on_one_replica_behaves_like_a_set(
            ops in prop::collection::vec((any::<bool>(), "[x-z]", replica()), 0..40)
        ) {
            let mut state: Option<Value> = None;
            let mut model = BTreeSet::new();
            for (add, elem, r) in ops {
                state = Some(if add {
                    model.insert(elem.clone());
                    orset_add(state.as_ref(), &elem, &r).unwrap()
                } else {
                    model.remove(&elem);
                    orset_remove(state.as_ref(), &elem).unwrap()
                });
            }
            let value = state.map_or(json!([]), |s| Crdt::from_json(&s).unwrap().value());
            prop_assert_eq!(value, json!(model.into_iter().collect::<Vec<_>>()));
        }

        #[test]
        fn parsing_never_panics_and_valid_parses_round_trip(v in wild_json(), w in wild_json()) {
            if let Ok(c) = Crdt::from_json(&v) {
                let j = c.to_json();
                prop_assert_eq!(Crdt::from_json(&j).unwrap(), c.clone());
                let _ = c.value();
            }
            let _ = merge_json(&v, &w);
            let _ = increment(Some(&v), "a", -1);
            let _ = orset_add(Some(&v), "x", "a");
            let _ = orset_remove(Some(&v), "x");
            let _ = lww_set(Some(&v), json!(1), &t(1, 0, "a"));
            if let (Value::Object(a), Value::Object(b)) = (&v, &w) {
                for kind in [OpKind::Put, OpKind::Patch, OpKind::Delete] {
                    let _ = apply_write(Some(a), b, kind);
                    let _ = changes_only_crdt_fields(a, b, kind);
                }
            }
        }

        #[test]
        fn crdt_only_writes_keep_plain_fields(
            name in "[ab]",
            inc_name in "[ab]",
            doses in counts(),
            inc_doses in counts(),
            put in any::<bool>(),
        ) {
            let existing = obj(json!({
                "name": name,
                "doses": Crdt::GCounter(GCounter { p: doses }).to_json(),
            }));
            let kind = if put { OpKind::Put } else { OpKind::Patch };
            let mut incoming = obj(json!({
                "doses": Crdt::GCounter(GCounter { p: inc_doses }).to_json(),
            }));
            if put || name != inc_name {
                incoming.insert("name".into(), json!(inc_name));
            }
            let only = changes_only_crdt_fields(&existing, &incoming, kind);
            prop_assert_eq!(only, name == inc_name);
            let out = apply_write(Some(&existing), &incoming, kind).unwrap();
            prop_assert_eq!(&out["name"], &json!(inc_name));
        }
    }
}
