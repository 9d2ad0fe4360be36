//! Keyset cursors: where a page ended, as an opaque string the app hands back.
//!
//! A cursor holds the sort key values of a page's last record (its id last) and which
//! order they belong to, so the next page starts right after that record wherever
//! writes have moved the others. Apps never read it; a cursor that does not decode, or
//! belongs to another order, is invalid input.

use rusqlite::types::Value as Sql;
use serde_json::{Value, json};

use crate::error::{Error, Result};

pub(super) struct Cursor;

fn invalid() -> Error {
    Error::InvalidData("the `after` cursor is not one this query made".into())
}

/// FNV-1a: a short, stable name for an order.
fn fingerprint(order_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in order_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn to_json(v: &Sql) -> Value {
    match v {
        Sql::Null | Sql::Blob(_) => Value::Null,
        Sql::Integer(i) => json!({ "i": i }),
        Sql::Real(f) => json!({ "r": f }),
        Sql::Text(s) => Value::String(s.clone()),
    }
}

fn from_json(v: &Value) -> Option<Sql> {
    Some(match v {
        Value::Null => Sql::Null,
        Value::String(s) => Sql::Text(s.clone()),
        Value::Object(o) if o.len() == 1 => match (o.get("i"), o.get("r")) {
            (Some(i), None) => Sql::Integer(i.as_i64()?),
            (None, Some(r)) => Sql::Real(r.as_f64()?),
            _ => return None,
        },
        _ => return None,
    })
}

impl Cursor {
    pub(super) fn encode(order_id: &str, values: Vec<Sql>) -> String {
        let body = json!({
            "o": fingerprint(order_id),
            "k": values.iter().map(to_json).collect::<Vec<_>>(),
        });
        let mut out = String::new();
        for b in body.to_string().bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The sort key values in `text`, which must belong to `order_id` and have `n`.
    pub(super) fn decode(text: &str, order_id: &str, n: usize) -> Result<Vec<Sql>> {
        if !text.len().is_multiple_of(2) || text.len() > 64 * 1024 {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if body.get("o").and_then(Value::as_str) != Some(fingerprint(order_id).as_str()) {
            return Err(Error::InvalidData(
                "the `after` cursor belongs to a query with another order".into(),
            ));
        }
        let values = body
            .get("k")
            .and_then(Value::as_array)
            .filter(|k| k.len() == n)
            .ok_or_else(invalid)?;
        values
            .iter()
            .map(|v| from_json(v).ok_or_else(invalid))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let values = vec![
            Sql::Null,
            Sql::Integer(-3),
            Sql::Real(2.5),
            Sql::Text("é\"".into()),
        ];
        let c = Cursor::encode("o", values.clone());
        assert_eq!(Cursor::decode(&c, "o", 4).unwrap(), values);
        for bad in [&c[1..], "zz", "", &c[..c.len() - 2]] {
            assert!(
                matches!(Cursor::decode(bad, "o", 4), Err(Error::InvalidData(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Cursor::decode(&c, "o", 3),
            Err(Error::InvalidData(_))
        ));
        assert!(matches!(
            Cursor::decode(&c, "other", 4),
            Err(Error::InvalidData(m)) if m.contains("another order")
        ));
    }
}
