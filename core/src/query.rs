//! Local queries: what a screen asks of one collection, and the SQL it becomes.
//!
//! The UI reads only the local database, so this is the path every list screen takes.
//! Building the SQL is kept apart from running it (`db::records`), so the translation
//! of a [`Query`] (JSON types respected, field names that cannot inject SQL) is one
//! pure function.

use serde_json::Value;

use crate::error::{Error, Result};

/// Sort order of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// A top-level field, or `None` for the record id.
    pub field: Option<String>,
    pub descending: bool,
}

/// Equality filters on top-level fields, an order, and a page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub filters: Vec<(String, Value)>,
    pub order: Option<Order>,
    pub limit: Option<u32>,
    pub offset: u32,
}

impl Query {
    pub fn new() -> Query {
        Query::default()
    }
    pub fn filter(mut self, field: &str, value: impl Into<Value>) -> Query {
        self.filters.push((field.to_owned(), value.into()));
        self
    }
    pub fn order_by(mut self, field: &str, descending: bool) -> Query {
        self.order = Some(Order {
            field: Some(field.to_owned()),
            descending,
        });
        self
    }
    pub fn limit(mut self, limit: u32) -> Query {
        self.limit = Some(limit);
        self
    }
    pub fn offset(mut self, offset: u32) -> Query {
        self.offset = offset;
        self
    }
}

/// A query's SQL over the `records` table: the WHERE clause, and the ORDER BY and
/// LIMIT tail. `?1` is the collection; `args` bind from `?2` on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuerySql {
    pub where_sql: String,
    pub tail: String,
    pub args: Vec<rusqlite::types::Value>,
}

/// `$."field"`: a JSON path naming one top-level field, whatever its characters.
fn json_path(field: &str) -> Result<String> {
    if field.is_empty() || field.contains('"') || field.chars().any(char::is_control) {
        return Err(Error::InvalidData(format!(
            "unusable field name {field:?} in a query"
        )));
    }
    Ok(format!("$.\"{field}\""))
}

/// The WHERE clause of live records matching every equality filter. Each filter checks
/// the JSON type too, so `true` never matches `1` and `"1"` never `1`.
pub(crate) fn filter_sql(filters: &[(String, Value)]) -> Result<QuerySql> {
    let mut sql = String::from("collection = ?1 AND deleted = 0");
    let mut args = Vec::new();
    for (field, value) in filters {
        args.push(Value::String(json_path(field)?));
        let p = args.len() + 1;
        let clause = match value {
            Value::Null => format!(" AND json_type(data, ?{p}) = 'null'"),
            Value::Bool(true) => format!(" AND json_type(data, ?{p}) = 'true'"),
            Value::Bool(false) => format!(" AND json_type(data, ?{p}) = 'false'"),
            Value::Number(_) => {
                args.push(value.clone());
                format!(
                    " AND json_type(data, ?{p}) IN ('integer', 'real') AND json_extract(data, ?{p}) = ?{}",
                    p + 1
                )
            }
            Value::String(_) => {
                args.push(value.clone());
                format!(
                    " AND json_type(data, ?{p}) = 'text' AND json_extract(data, ?{p}) = ?{}",
                    p + 1
                )
            }
            Value::Array(_) | Value::Object(_) => {
                args.push(Value::String(value.to_string()));
                format!(" AND json_extract(data, ?{p}) = json(?{})", p + 1)
            }
        };
        sql.push_str(&clause);
    }
    Ok(QuerySql {
        where_sql: sql,
        tail: String::new(),
        args: args.iter().map(sql_value).collect(),
    })
}

/// The whole query: filters, then order (the id breaks ties) and page.
pub(crate) fn query_sql(query: &Query) -> Result<QuerySql> {
    let mut q = filter_sql(&query.filters)?;
    let order = match &query.order {
        None => "id".to_owned(),
        Some(Order { field, descending }) => {
            let dir = if *descending { "DESC" } else { "ASC" };
            match field {
                None => format!("id {dir}"),
                Some(f) => {
                    q.args.push(rusqlite::types::Value::Text(json_path(f)?));
                    format!("json_extract(data, ?{}) {dir}, id {dir}", q.args.len() + 1)
                }
            }
        }
    };
    let limit = query.limit.map_or(-1, i64::from);
    q.tail = format!(" ORDER BY {order} LIMIT {limit} OFFSET {}", query.offset);
    Ok(q)
}

fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match v {
        Value::String(s) => Sql::Text(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        other => Sql::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_names_cannot_escape_their_json_path() {
        for bad in ["", "a\"b", "x\n"] {
            assert!(matches!(
                filter_sql(&[(bad.into(), json!(1))]),
                Err(Error::InvalidData(_))
            ));
        }
        let q = query_sql(&Query::new().filter("a b'c", "v").order_by("n", true)).unwrap();
        assert!(!q.where_sql.contains("a b'c"), "{}", q.where_sql);
        assert!(q.tail.contains("DESC, id DESC"), "{}", q.tail);
        assert_eq!(
            q.args.len(),
            3,
            "the paths and the value are bound, not inlined"
        );
    }
}
