//! Strict JSON reading for request bodies.
//!
//! The Limits section of DESIGN.md rejects input that ordinary parsers accept or choke
//! on: serde_json keeps the last of two duplicate keys (so two devices could read one
//! body differently), and a deeply nested body would recurse through the parser's
//! stack. Depth is therefore measured by a flat byte scan before parsing, and objects
//! are built by a visitor that refuses a repeated key.
//!
//! The visitor also counts what it builds. A parsed tree takes far more memory than
//! its text (`[],` is 3 bytes of text and 32 of `Value`), so 8 MiB of small values
//! would become hundreds of MiB; parsing stops at [`MAX_JSON_VALUES`] instead.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Most JSON values one body may hold, object keys counted as values. Any valid single
/// op fits: a record is at most 1 MiB of JSON, and every value or key but the outermost
/// takes at least two bytes of it (itself and a separator), so a record holds at most
/// 2^19 of them; the op around it adds a few dozen. A client whose batch is refused for
/// this can always send its ops one at a time.
pub const MAX_JSON_VALUES: usize = 600_000;

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid UTF-8")]
    Utf8,
    #[error("JSON nested deeper than {0}")]
    TooDeep(usize),
    #[error("the body holds more than {0} JSON values; send fewer ops per request")]
    TooMany(usize),
    #[error("malformed JSON: {0}")]
    Malformed(String),
}

/// Deepest `[`/`{` nesting in a JSON text, ignoring brackets inside strings. Runs in
/// constant stack on any input; on malformed input the result is still an upper bound
/// that the parser will then reject.
pub fn max_depth(bytes: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a body: UTF-8, at most `depth_limit` deep, at most [`MAX_JSON_VALUES`]
/// values, no duplicate keys.
pub fn parse_strict(bytes: &[u8], depth_limit: usize) -> Result<Value, JsonError> {
    parse_bounded(bytes, depth_limit, MAX_JSON_VALUES)
}

/// [`parse_strict`] with a limit of `max_values` values (object keys included),
/// enforced while parsing: a body over it is refused having built at most that many.
pub fn parse_bounded(
    bytes: &[u8],
    depth_limit: usize,
    max_values: usize,
) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::Utf8)?;
    if max_depth(bytes) > depth_limit {
        return Err(JsonError::TooDeep(depth_limit));
    }
    let budget = Budget {
        left: Cell::new(max_values),
        exhausted: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = StrictSeed(&budget)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    parsed.map_err(|e| {
        if budget.exhausted.get() {
            JsonError::TooMany(max_values)
        } else {
            JsonError::Malformed(e.to_string())
        }
    })
}

/// Values a parse may still build.
struct Budget {
    left: Cell<usize>,
    /// Set when a value past the limit was met, so the error can say so.
    exhausted: Cell<bool>,
}

impl Budget {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(n) => {
                self.left.set(n);
                Ok(())
            }
            None => {
                self.exhausted.set(true);
                Err(E::custom("too many JSON values"))
            }
        }
    }
}

/// Builds a `Value` whose objects never had a duplicate key, spending the budget.
#[derive(Clone, Copy)]
struct StrictSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.spend()?;
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.0.spend()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.spend()?;
        // Sized for one element until a second comes: a first push would reserve four
        // slots, so `[[[0]]]` would take four times its values.
        let Some(first) = seq.next_element_seed(self)? else {
            return Ok(Value::Array(Vec::new()));
        };
        let mut out = Vec::with_capacity(1);
        out.push(first);
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.spend()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.0.spend()?;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(40).collect();
                return Err(de::Error::custom(format!("duplicate key {shown:?}")));
            }
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_strings() {
        assert_eq!(max_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        assert_eq!(max_depth(br#""\"[""#), 0);
        assert_eq!(max_depth(&[b'['; 100_000]), 100_000);
    }

    #[test]
    fn strict_parsing() {
        assert!(parse_strict(br#"{"a":1,"b":{"a":2}}"#, 64).is_ok());
        assert!(matches!(
            parse_strict(br#"{"a":1,"b":{"c":1,"c":2}}"#, 64),
            Err(JsonError::Malformed(m)) if m.contains("duplicate key")
        ));
        assert_eq!(parse_strict(b"\xff", 64), Err(JsonError::Utf8));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse_strict(deep.as_bytes(), 64),
            Err(JsonError::TooDeep(64))
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_strict(ok.as_bytes(), 64).is_ok());
        assert!(parse_strict(b"{} x", 64).is_err());
        assert!(parse_strict(b"{\"a\":1e999}", 64).is_err());
    }

    #[test]
    fn values_are_counted_while_parsing() {
        // Root, two keys, two values, and the array's one element.
        let text = br#"{"a":1,"b":[null]}"#;
        assert!(parse_bounded(text, 64, 6).is_ok());
        assert_eq!(parse_bounded(text, 64, 5), Err(JsonError::TooMany(5)));
        // A body of tiny values is refused, not built.
        let bomb = format!("[{}[]]", "[],".repeat(100_000));
        assert_eq!(
            parse_bounded(bomb.as_bytes(), 64, 1000),
            Err(JsonError::TooMany(1000))
        );
        // Syntax errors stay syntax errors.
        assert!(matches!(
            parse_bounded(b"[1,", 64, 1000),
            Err(JsonError::Malformed(_))
        ));
    }

    #[test]
    fn the_densest_valid_record_fits_the_value_limit() {
        use outpost_core::protocol::MAX_RECORD_BYTES;
        // `{"a":[0,0,...]}` at the record limit, wrapped in a one-op push.
        let zeros = (MAX_RECORD_BYTES - 8) / 2;
        let record = format!(r#"{{"a":[{}0]}}"#, "0,".repeat(zeros - 1));
        assert!(record.len() <= MAX_RECORD_BYTES);
        let body = format!(
            r#"{{"client_id":"c","ops":[{{"op_id":"o","collection":"c","record_id":"r","kind":"put","base_version":null,"data":{record},"hlc":"0000000000001-00000-a","force":false}}]}}"#
        );
        assert!(parse_strict(body.as_bytes(), 64).is_ok());
    }
}
