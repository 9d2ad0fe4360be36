//! Strict JSON reading for request bodies.
//!
//! The Limits section of DESIGN.md rejects input that ordinary parsers accept or choke
//! on: serde_json keeps the last of two duplicate keys (so two devices could read one
//! body differently), and a deeply nested body would recurse through the parser's
//! stack. Depth is therefore measured by a flat byte scan before parsing, and objects
//! are built by a visitor that refuses a repeated key.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid UTF-8")]
    Utf8,
    #[error("JSON nested deeper than {0}")]
    TooDeep(usize),
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

/// Parses a body: UTF-8, at most `max_depth` deep, no duplicate keys.
pub fn parse_strict(bytes: &[u8], depth_limit: usize) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::Utf8)?;
    if max_depth(bytes) > depth_limit {
        return Err(JsonError::TooDeep(depth_limit));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let v = StrictValue::deserialize(&mut de).map_err(|e| JsonError::Malformed(e.to_string()))?;
    de.end().map_err(|e| JsonError::Malformed(e.to_string()))?;
    Ok(v.0)
}

/// A `Value` whose objects never had a duplicate key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(40).collect();
                return Err(de::Error::custom(format!("duplicate key {shown:?}")));
            }
            let StrictValue(v) = map.next_value()?;
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
}
