//! Filters: which records a query selects, and their JSON form for the bindings.
//!
//! Comparisons respect JSON types: a number never equals a string or a boolean, and a
//! range compares numbers with numbers and strings with strings (by code point), so a
//! filter means on the device what it means in the app's language. The JSON form is
//! what Kotlin, Swift and Python build, one operator per object:
//! `{"and": [{"eq": ["village", "v042"]}, {"gte": ["age", 5]}]}`.

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Which records a query selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The field holds this value (same JSON type; numbers compare numerically, so
    /// `1` equals `1.0`). `Eq(f, null)` matches a field holding null, not a missing one.
    Eq(String, Value),
    /// Not [`Filter::Eq`]: a record without the field matches.
    Ne(String, Value),
    /// The field holds a number below this number, or a string before this string.
    Lt(String, Value),
    Lte(String, Value),
    Gt(String, Value),
    Gte(String, Value),
    /// The field equals one of these values.
    In(String, Vec<Value>),
    /// The field holds a string starting with `prefix`; with `case_insensitive`, after
    /// Unicode lowercasing of both.
    Prefix {
        field: String,
        prefix: String,
        case_insensitive: bool,
    },
    /// The field holds null or is missing.
    IsNull(String),
    /// The field is present, whatever it holds (null included).
    Exists(String),
    /// Full-text search over the collection's declared search fields: words match
    /// whole words, diacritics and case folded; a word ending in `*` is a prefix
    /// (`amin*`). Text with no words matches every record.
    Search(String),
    /// Every filter holds (none: every record).
    And(Vec<Filter>),
    /// Some filter holds (none: no record).
    Or(Vec<Filter>),
}

/// How deep a filter tree may nest: far past what a screen builds, short of what could
/// exhaust a stack.
pub(crate) const MAX_DEPTH: usize = Filter::MAX_DEPTH;

impl Filter {
    /// Every field equal to its value: the filter of `count`'s field list.
    pub(crate) fn all_equal(fields: &[(String, Value)]) -> Filter {
        Filter::And(
            fields
                .iter()
                .map(|(f, v)| Filter::Eq(f.clone(), v.clone()))
                .collect(),
        )
    }

    /// How deep `and` and `or` may nest. Deeper is [`Error::InvalidData`].
    pub const MAX_DEPTH: usize = 32;

    /// How many terms one filter may hold in all: each comparison, prefix, null check
    /// or search is one, and each value of an `in` list is one. More is
    /// [`Error::InvalidData`]. Far past what a screen builds; it keeps a query well
    /// inside SQLite's limits on bound values (32,766) and statement size.
    pub const MAX_TERMS: usize = 5_000;

    pub fn eq(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Eq(field.into(), value.into())
    }
    pub fn ne(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Ne(field.into(), value.into())
    }
    pub fn lt(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Lt(field.into(), value.into())
    }
    pub fn lte(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Lte(field.into(), value.into())
    }
    pub fn gt(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Gt(field.into(), value.into())
    }
    pub fn gte(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Gte(field.into(), value.into())
    }
    pub fn is_in(field: &str, values: impl IntoIterator<Item = impl Into<Value>>) -> Filter {
        Filter::In(field.into(), values.into_iter().map(Into::into).collect())
    }
    pub fn prefix(field: &str, prefix: &str) -> Filter {
        Filter::Prefix {
            field: field.into(),
            prefix: prefix.into(),
            case_insensitive: false,
        }
    }
    pub fn prefix_ci(field: &str, prefix: &str) -> Filter {
        Filter::Prefix {
            field: field.into(),
            prefix: prefix.into(),
            case_insensitive: true,
        }
    }
    pub fn is_null(field: &str) -> Filter {
        Filter::IsNull(field.into())
    }
    pub fn exists(field: &str) -> Filter {
        Filter::Exists(field.into())
    }
    pub fn search(text: &str) -> Filter {
        Filter::Search(text.into())
    }

    /// Both hold (flattening nested `and`s).
    pub fn and(self, other: Filter) -> Filter {
        match (self, other) {
            (Filter::And(mut a), Filter::And(b)) => {
                a.extend(b);
                Filter::And(a)
            }
            (Filter::And(mut a), b) => {
                a.push(b);
                Filter::And(a)
            }
            (a, b) => Filter::And(vec![a, b]),
        }
    }

    /// Either holds (flattening nested `or`s).
    pub fn or(self, other: Filter) -> Filter {
        match (self, other) {
            (Filter::Or(mut a), Filter::Or(b)) => {
                a.extend(b);
                Filter::Or(a)
            }
            (Filter::Or(mut a), b) => {
                a.push(b);
                Filter::Or(a)
            }
            (a, b) => Filter::Or(vec![a, b]),
        }
    }

    /// Reads the JSON form. Anything else is [`Error::InvalidData`] naming what is wrong.
    pub fn from_json(v: &Value) -> Result<Filter> {
        from_json(v, 0)
    }

    /// The JSON form, which [`Filter::from_json`] reads back.
    pub fn to_json(&self) -> Value {
        let cmp = |op: &str, f: &str, v: &Value| json!({ op: [f, v] });
        match self {
            Filter::Eq(f, v) => cmp("eq", f, v),
            Filter::Ne(f, v) => cmp("ne", f, v),
            Filter::Lt(f, v) => cmp("lt", f, v),
            Filter::Lte(f, v) => cmp("lte", f, v),
            Filter::Gt(f, v) => cmp("gt", f, v),
            Filter::Gte(f, v) => cmp("gte", f, v),
            Filter::In(f, vs) => json!({"in": [f, vs]}),
            Filter::Prefix {
                field,
                prefix,
                case_insensitive,
            } => {
                let op = if *case_insensitive {
                    "prefix_ci"
                } else {
                    "prefix"
                };
                json!({ op: [field, prefix] })
            }
            Filter::IsNull(f) => json!({ "is_null": f }),
            Filter::Exists(f) => json!({ "exists": f }),
            Filter::Search(t) => json!({ "search": t }),
            Filter::And(fs) => json!({"and": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
            Filter::Or(fs) => json!({"or": fs.iter().map(Filter::to_json).collect::<Vec<_>>()}),
        }
    }
}

const OPERATORS: &str =
    "eq, ne, lt, lte, gt, gte, in, prefix, prefix_ci, is_null, exists, search, and, or";

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidData(format!("filter: {}", msg.into()))
}

fn from_json(v: &Value, depth: usize) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_DEPTH}")));
    }
    let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        bad("each filter is an object with one operator, e.g. {\"eq\": [\"field\", 1]}")
    })?;
    let Some((op, arg)) = obj.iter().next() else {
        return Err(bad("empty filter"));
    };
    let field_and = |what: &str| -> Result<(String, Value)> {
        match arg.as_array().map(Vec::as_slice) {
            Some([Value::String(f), v]) => Ok((f.clone(), v.clone())),
            _ => Err(bad(format!("{op:?} takes [\"field\", {what}]"))),
        }
    };
    let text = |what: &str| -> Result<String> {
        arg.as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("{op:?} takes {what} as a string")))
    };
    let list = || -> Result<Vec<Filter>> {
        arg.as_array()
            .ok_or_else(|| bad(format!("{op:?} takes a list of filters")))?
            .iter()
            .map(|f| from_json(f, depth + 1))
            .collect()
    };
    let prefix = |case_insensitive| -> Result<Filter> {
        let (field, p) = field_and("a string")?;
        let Value::String(prefix) = p else {
            return Err(bad(format!("{op:?} takes [\"field\", a string]")));
        };
        Ok(Filter::Prefix {
            field,
            prefix,
            case_insensitive,
        })
    };
    Ok(match op.as_str() {
        "eq" => field_and("a value").map(|(f, v)| Filter::Eq(f, v))?,
        "ne" => field_and("a value").map(|(f, v)| Filter::Ne(f, v))?,
        "lt" => field_and("a value").map(|(f, v)| Filter::Lt(f, v))?,
        "lte" => field_and("a value").map(|(f, v)| Filter::Lte(f, v))?,
        "gt" => field_and("a value").map(|(f, v)| Filter::Gt(f, v))?,
        "gte" => field_and("a value").map(|(f, v)| Filter::Gte(f, v))?,
        "in" => match field_and("a list of values")? {
            (f, Value::Array(vs)) => Filter::In(f, vs),
            _ => return Err(bad("\"in\" takes [\"field\", [values]]")),
        },
        "prefix" => prefix(false)?,
        "prefix_ci" => prefix(true)?,
        "is_null" => Filter::IsNull(text("the field")?),
        "exists" => Filter::Exists(text("the field")?),
        "search" => Filter::Search(text("the text")?),
        "and" => Filter::And(list()?),
        "or" => Filter::Or(list()?),
        other => {
            return Err(bad(format!(
                "unknown operator {other:?}; use one of {OPERATORS}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_form_round_trips() {
        let f = Filter::eq("village", "v042")
            .and(Filter::gte("age", 5))
            .and(Filter::is_in(
                "status",
                [json!("due"), json!(null), json!(3)],
            ))
            .and(
                Filter::prefix("name", "Am")
                    .or(Filter::prefix_ci("name", "é"))
                    .or(Filter::is_null("x"))
                    .or(Filter::exists("y")),
            )
            .and(Filter::search("amin*"))
            .and(Filter::ne("n", json!({"a": [1]})));
        assert_eq!(Filter::from_json(&f.to_json()).unwrap(), f);
    }

    #[test]
    fn bad_filters_are_invalid_data_naming_the_problem() {
        for (v, says) in [
            (json!({"like": ["a", "b"]}), "unknown operator \"like\""),
            (json!({"eq": ["a"]}), "\"eq\" takes"),
            (json!({"eq": [1, 2]}), "\"eq\" takes"),
            (json!({"eq": ["a", 1], "ne": ["a", 2]}), "one operator"),
            (json!([]), "one operator"),
            (json!({"in": ["a", 1]}), "\"in\" takes"),
            (json!({"prefix": ["a", 1]}), "\"prefix\" takes"),
            (json!({"and": {"eq": ["a", 1]}}), "a list of filters"),
            (json!({"is_null": 3}), "\"is_null\" takes"),
        ] {
            match Filter::from_json(&v) {
                Err(Error::InvalidData(m)) => assert!(m.contains(says), "{v}: {m}"),
                other => panic!("{v}: {other:?}"),
            }
        }
        let mut deep = json!({"eq": ["a", 1]});
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "and": [deep] });
        }
        assert!(matches!(
            Filter::from_json(&deep),
            Err(Error::InvalidData(_))
        ));
    }
}
