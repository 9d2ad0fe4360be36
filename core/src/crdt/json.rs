//! The JSON forms of CRDT values: strict reading, one canonical writing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::*;
use crate::clock::Hlc;

impl Crdt {
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
}

pub(super) fn valid_replica(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_REPLICA_BYTES && !r.chars().any(char::is_control)
}

pub(super) fn check_replica(r: &str) -> Result<(), CrdtError> {
    if valid_replica(r) {
        Ok(())
    } else {
        Err(CrdtError::InvalidReplica(short(r)))
    }
}

/// Splits a tag `"<replica>:<n>"`. The number is canonical decimal (no sign, no leading
/// zeros), so that one tag has one spelling; the replica may itself contain `:`.
pub(super) fn parse_tag(tag: &str) -> Result<(&str, u64), CrdtError> {
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

pub(super) fn parse_counts(v: &Value, name: &str) -> Result<BTreeMap<String, u64>, CrdtError> {
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

pub(super) fn parse_tag_map(
    v: &Value,
    name: &str,
) -> Result<BTreeMap<String, BTreeSet<String>>, CrdtError> {
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

pub(super) fn counts_json(m: &BTreeMap<String, u64>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, &n)| (k.clone(), Value::from(n)))
            .collect(),
    )
}

pub(super) fn tags_json(m: &BTreeMap<String, BTreeSet<String>>) -> Value {
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
/// JSON with object keys sorted at every level, whatever map order serde_json was built
/// with: the tie-break of the LWW merge must be the same on every replica.
pub(super) fn canonical_string(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

pub(super) fn write_canonical(v: &Value, out: &mut String) {
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
