//! A query's SQL over the `records` table.
//!
//! Two rules shape it. The collection and the JSON paths are SQL literals, not bound
//! parameters, because the declared indexes are partial expression indexes
//! (`json_extract(data, '$."village"') … WHERE collection = 'patients' AND deleted = 0`)
//! and the planner only uses one whose expression and condition it can read in the
//! query text; values are always bound. And a comparison checks the JSON type only
//! where `json_extract` alone could confuse types (it returns 1 for `true`, and the
//! JSON text of an array), so the common filters need nothing but the index.

use rusqlite::types::Value as Sql;
use serde_json::Value;

use super::cursor::Cursor;
use super::filter::{Filter, MAX_DEPTH};
use super::{Order, Query, check_field};
use crate::error::{Error, Result};

/// A statement's parts; `args` bind to its `?`s in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuerySql {
    /// `FROM records WHERE …`.
    pub from_where: String,
    /// ` ORDER BY … LIMIT ? OFFSET ?`, empty for a count.
    pub tail: String,
    /// The sort keys and whether each descends, selected after the record's columns to
    /// make the next cursor.
    pub keys: Vec<(String, bool)>,
    /// For the `?`s of `from_where`.
    pub args: Vec<Sql>,
    /// For the `?`s of `tail`.
    pub page: [i64; 2],
    /// Which order a cursor of this query belongs to.
    pub order_id: String,
}

/// `'$."field"'`: the JSON path of one top-level field, as an SQL literal.
pub(crate) fn path(field: &str) -> String {
    format!("'$.\"{}\"'", field.replace('\'', "''"))
}

/// The expression a field is filtered, sorted and indexed by.
pub(crate) fn extract(field: &str) -> String {
    format!("json_extract(data, {})", path(field))
}

fn json_type(field: &str) -> String {
    format!("json_type(data, {})", path(field))
}

/// The FTS5 table of a collection's search fields, unquoted: `fts[patients]`.
///
/// The brackets cannot occur in a collection name, and the name ends with one, so it
/// differs from the schema's tables (`fts_keys`), from every other collection's search
/// table and from the shadow tables FTS5 names after each (`fts[patients]_data`).
pub(crate) fn search_table_name(collection: &str) -> String {
    format!("fts[{collection}]")
}

/// [`search_table_name`], quoted for SQL.
pub(crate) fn search_table(collection: &str) -> String {
    format!("\"{}\"", search_table_name(collection))
}

fn number(n: &serde_json::Number) -> Sql {
    match n.as_i64() {
        Some(i) => Sql::Integer(i),
        None => Sql::Real(n.as_f64().unwrap_or(f64::MAX)),
    }
}

/// `json_extract` gives 1 and 0 for `true` and `false`.
fn like_a_boolean(n: &serde_json::Number) -> bool {
    n.as_f64().is_some_and(|f| f == 0.0 || f == 1.0)
}

/// `json_extract` gives the JSON text of an array or an object.
fn like_json_text(s: &str) -> bool {
    s.starts_with('[') || s.starts_with('{')
}

struct Builder<'a> {
    collection: &'a str,
    /// Whether the collection declares search fields.
    searchable: bool,
    args: Vec<Sql>,
    /// Terms so far, against [`Filter::MAX_TERMS`].
    terms: usize,
}

impl<'a> Builder<'a> {
    fn new(collection: &'a str, searchable: bool) -> Builder<'a> {
        Builder {
            collection,
            searchable,
            args: Vec::new(),
            terms: 0,
        }
    }

    fn arg(&mut self, v: Sql) -> &'static str {
        self.args.push(v);
        "?"
    }

    /// Counts `n` more terms. At most 3 values are bound per term, so a filter within
    /// the limit binds well under SQLite's 32,766.
    fn terms(&mut self, n: usize) -> Result<()> {
        self.terms += n;
        if self.terms > Filter::MAX_TERMS {
            return Err(Error::InvalidData(format!(
                "filter: more than {} terms (each comparison, and each value of an \
                 \"in\" list, is one)",
                Filter::MAX_TERMS
            )));
        }
        Ok(())
    }

    fn filter(&mut self, f: &Filter, depth: usize) -> Result<String> {
        if depth > MAX_DEPTH {
            return Err(Error::InvalidData(format!(
                "filter: nested deeper than {MAX_DEPTH}"
            )));
        }
        match f {
            Filter::And(_) | Filter::Or(_) => {}
            Filter::In(_, vs) => self.terms(vs.len().max(1))?,
            _ => self.terms(1)?,
        }
        Ok(match f {
            Filter::Eq(field, v) => self.eq(field, v)?,
            Filter::Ne(field, v) => format!("NOT coalesce({}, 0)", self.eq(field, v)?),
            Filter::Lt(field, v) => self.range(field, "<", v)?,
            Filter::Lte(field, v) => self.range(field, "<=", v)?,
            Filter::Gt(field, v) => self.range(field, ">", v)?,
            Filter::Gte(field, v) => self.range(field, ">=", v)?,
            Filter::In(field, vs) => self.is_in(field, vs)?,
            Filter::Prefix {
                field,
                prefix,
                case_insensitive,
            } => self.prefix(field, prefix, *case_insensitive)?,
            Filter::IsNull(field) => {
                check_field(field)?;
                format!("{} IS NULL", extract(field))
            }
            Filter::Exists(field) => {
                check_field(field)?;
                format!("{} IS NOT NULL", json_type(field))
            }
            Filter::Search(text) => self.search(text)?,
            Filter::And(fs) => self.join(fs, " AND ", "1", depth)?,
            Filter::Or(fs) => self.join(fs, " OR ", "0", depth)?,
        })
    }

    fn join(&mut self, fs: &[Filter], op: &str, empty: &str, depth: usize) -> Result<String> {
        if fs.is_empty() {
            return Ok(empty.to_owned());
        }
        let parts = fs
            .iter()
            .map(|f| self.filter(f, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(balanced(&parts, op))
    }

    fn eq(&mut self, field: &str, v: &Value) -> Result<String> {
        check_field(field)?;
        let (x, t) = (extract(field), json_type(field));
        Ok(match v {
            Value::Null => format!("{t} = 'null'"),
            Value::Bool(true) => format!("{t} = 'true'"),
            Value::Bool(false) => format!("{t} = 'false'"),
            Value::Number(n) if like_a_boolean(n) => {
                let p = self.arg(number(n));
                format!("({x} = {p} AND {t} IN ('integer', 'real'))")
            }
            Value::Number(n) => format!("{x} = {}", self.arg(number(n))),
            Value::String(s) if like_json_text(s) => {
                let p = self.arg(Sql::Text(s.clone()));
                format!("({x} = {p} AND {t} = 'text')")
            }
            Value::String(s) => format!("{x} = {}", self.arg(Sql::Text(s.clone()))),
            Value::Array(_) | Value::Object(_) => {
                let p = self.arg(Sql::Text(v.to_string()));
                format!("({x} = json({p}) AND {t} IN ('array', 'object'))")
            }
        })
    }

    fn range(&mut self, field: &str, op: &str, v: &Value) -> Result<String> {
        check_field(field)?;
        let (x, t) = (extract(field), json_type(field));
        Ok(match v {
            Value::Number(n) => {
                let p = self.arg(number(n));
                format!("({x} {op} {p} AND {t} IN ('integer', 'real'))")
            }
            Value::String(s) => {
                let p = self.arg(Sql::Text(s.clone()));
                format!("({x} {op} {p} AND {t} = 'text')")
            }
            other => {
                return Err(Error::InvalidData(format!(
                    "filter: a range on {field:?} compares numbers or strings, not {}",
                    crate::protocol::json_kind(other)
                )));
            }
        })
    }

    fn is_in(&mut self, field: &str, vs: &[Value]) -> Result<String> {
        check_field(field)?;
        let x = extract(field);
        // Values json_extract tells apart by itself go in one IN list; the rest are
        // typed equalities.
        let mut plain = Vec::new();
        let mut typed = Vec::new();
        for v in vs {
            match v {
                Value::Number(n) if !like_a_boolean(n) => plain.push(number(n)),
                Value::String(s) if !like_json_text(s) => plain.push(Sql::Text(s.clone())),
                other => typed.push(other),
            }
        }
        let mut parts = Vec::new();
        if !plain.is_empty() {
            let marks = vec!["?"; plain.len()].join(", ");
            self.args.extend(plain);
            parts.push(format!("{x} IN ({marks})"));
        }
        for v in typed {
            parts.push(self.eq(field, v)?);
        }
        Ok(if parts.is_empty() {
            "0".to_owned()
        } else {
            balanced(&parts, " OR ")
        })
    }

    fn prefix(&mut self, field: &str, prefix: &str, case_insensitive: bool) -> Result<String> {
        check_field(field)?;
        let (x, t) = (extract(field), json_type(field));
        if case_insensitive {
            let p = self.arg(Sql::Text(prefix.to_owned()));
            return Ok(format!(
                "({t} = 'text' AND outpost_starts_with_ci({x}, {p}))"
            ));
        }
        if prefix.is_empty() {
            return Ok(format!("{t} = 'text'"));
        }
        // A range the index can seek: the strings from `prefix` up to the first string
        // that no longer starts with it.
        let lo = self.arg(Sql::Text(prefix.to_owned()));
        let mut sql = format!("{x} >= {lo}");
        match prefix_end(prefix) {
            Some(end) => {
                let hi = self.arg(Sql::Text(end));
                sql.push_str(&format!(" AND {x} < {hi}"));
            }
            None => {
                let n = self.arg(Sql::Integer(prefix.chars().count() as i64));
                let p = self.arg(Sql::Text(prefix.to_owned()));
                sql.push_str(&format!(" AND substr({x}, 1, {n}) = {p}"));
            }
        }
        if like_json_text(prefix) {
            sql.push_str(&format!(" AND {t} = 'text'"));
        }
        Ok(format!("({sql})"))
    }

    fn search(&mut self, text: &str) -> Result<String> {
        if !self.searchable {
            return Err(Error::InvalidData(format!(
                "filter: collection {:?} declares no search fields",
                self.collection
            )));
        }
        let Some(q) = fts_query(text) else {
            return Ok("1".to_owned());
        };
        let table = search_table(self.collection);
        let p = self.arg(Sql::Text(q));
        Ok(format!(
            "id IN (SELECT id FROM {table} WHERE {table} MATCH {p})"
        ))
    }
}

/// `parts` (at least one) joined by `op` as a balanced tree. SQLite parses
/// `a AND b AND c …` into a tree as deep as the list is long and refuses one deeper
/// than 1,000; grouped in halves, a list of [`Filter::MAX_TERMS`] is 13 deep.
fn balanced(parts: &[String], op: &str) -> String {
    match parts {
        [one] => one.clone(),
        _ => {
            let (left, right) = parts.split_at(parts.len() / 2);
            format!("({}{op}{})", balanced(left, op), balanced(right, op))
        }
    }
}

/// The first string after every string that starts with `prefix` (in code point
/// order, which is SQLite's byte order for UTF-8); `None` if there is none.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=0x10FFFF).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The FTS5 query for what a user typed: each word a quoted string (so no character
/// is FTS5 syntax), a trailing `*` a prefix. `None` when there is no word.
pub(crate) fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split_whitespace()
        .filter_map(|w| {
            let (word, star) = match w.strip_suffix('*') {
                Some(w) => (w.trim_end_matches('*'), "*"),
                None => (w, ""),
            };
            // Words with no letters or digits would be empty phrases, which FTS5
            // refuses; they match nothing anyone typed for, so they are dropped.
            if !word.chars().any(char::is_alphanumeric) {
                return None;
            }
            Some(format!("\"{}\"{star}", word.replace('"', "\"\"")))
        })
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// The sort keys of an order, the record id last, most significant first.
fn sort_keys(order: &[Order]) -> Vec<(String, bool)> {
    let mut keys: Vec<(String, bool)> = order
        .iter()
        .map(|o| {
            let expr = o.field.as_deref().map_or_else(|| "id".to_owned(), extract);
            (expr, o.descending)
        })
        .collect();
    if keys.last().is_none_or(|(e, _)| e != "id") {
        let descending = keys.last().is_some_and(|(_, d)| *d);
        keys.push(("id".to_owned(), descending));
    }
    keys
}

/// Rows after the cursor's row, in the order of `keys`. NULLs sort first ascending and
/// last descending, as SQLite sorts them.
fn after(keys: &[(String, bool)], values: &[Sql], args: &mut Vec<Sql>) -> String {
    let all_ascending = keys.iter().all(|(_, d)| !d);
    if all_ascending && !values.iter().any(|v| matches!(v, Sql::Null)) {
        // One row-value comparison, which the planner can seek with.
        // The bound on the first key is implied; it lets the index seek to the page.
        let exprs: Vec<&str> = keys.iter().map(|(e, _)| e.as_str()).collect();
        args.push(values[0].clone());
        args.extend(values.iter().cloned());
        let marks = vec!["?"; values.len()].join(", ");
        return format!("({} >= ? AND ({}) > ({marks}))", exprs[0], exprs.join(", "));
    }
    let mut alternatives = Vec::new();
    for (k, ((expr, descending), v)) in keys.iter().zip(values).enumerate() {
        let (later, bind) = match (descending, v) {
            (false, Sql::Null) => (format!("{expr} IS NOT NULL"), None),
            (false, v) => (format!("{expr} > ?"), Some(v)),
            // Nothing sorts after NULL descending.
            (true, Sql::Null) => continue,
            (true, v) => (format!("({expr} < ? OR {expr} IS NULL)"), Some(v)),
        };
        // Equal on every more significant key, then later on this one.
        let mut parts: Vec<String> = Vec::new();
        for ((e, _), value) in keys[..k].iter().zip(values) {
            parts.push(format!("{e} IS ?"));
            args.push(value.clone());
        }
        args.extend(bind.cloned());
        parts.push(later);
        alternatives.push(format!("({})", parts.join(" AND ")));
    }
    if alternatives.is_empty() {
        return "0".to_owned();
    }
    format!("({})", alternatives.join(" OR "))
}

fn order_id(collection: &str, keys: &[(String, bool)]) -> String {
    let mut id = collection.to_owned();
    for (e, d) in keys {
        id.push('|');
        id.push_str(e);
        id.push_str(if *d { " desc" } else { " asc" });
    }
    id
}

/// What every query's `from_where` starts with.
const FROM: &str = "FROM records ";

/// The WHERE clause of live records of `collection` matching `filter`.
fn where_clause(b: &mut Builder<'_>, filter: Option<&Filter>) -> Result<String> {
    let mut sql = format!(
        "{FROM}WHERE collection = '{}' AND deleted = 0",
        b.collection
    );
    if let Some(f) = filter {
        sql.push_str(" AND ");
        sql.push_str(&b.filter(f, 0)?);
    }
    Ok(sql)
}

/// A page of `query`, with its sort keys selected for the next cursor.
pub(crate) fn select(collection: &str, searchable: bool, query: &Query) -> Result<QuerySql> {
    if query.order.len() > Query::MAX_ORDER_KEYS {
        return Err(Error::InvalidData(format!(
            "a query sorts by at most {} keys",
            Query::MAX_ORDER_KEYS
        )));
    }
    for o in &query.order {
        if let Some(f) = &o.field {
            check_field(f)?;
        }
    }
    let mut b = Builder::new(collection, searchable);
    let mut from_where = where_clause(&mut b, query.filter.as_ref())?;
    let keys = sort_keys(&query.order);
    let order_id = order_id(collection, &keys);
    if let Some(cursor) = &query.after {
        let values = Cursor::decode(cursor, &order_id, keys.len())?;
        from_where.push_str(" AND ");
        from_where.push_str(&after(&keys, &values, &mut b.args));
    }
    let order: Vec<String> = keys
        .iter()
        .map(|(e, d)| format!("{e} {}", if *d { "DESC" } else { "ASC" }))
        .collect();
    Ok(QuerySql {
        from_where,
        tail: format!(" ORDER BY {} LIMIT ? OFFSET ?", order.join(", ")),
        keys,
        args: b.args,
        page: [query.limit.map_or(-1, i64::from), i64::from(query.offset)],
        order_id,
    })
}

/// How many live records of `collection` match `filter`.
pub(crate) fn count(
    collection: &str,
    searchable: bool,
    filter: Option<&Filter>,
) -> Result<QuerySql> {
    let mut b = Builder::new(collection, searchable);
    let from_where = where_clause(&mut b, filter)?;
    Ok(QuerySql {
        from_where,
        tail: String::new(),
        keys: Vec::new(),
        args: b.args,
        page: [-1, 0],
        order_id: String::new(),
    })
}

/// `q` narrowed to the rows that sort no later than the row with these sort key
/// values: what an observer of a full page probes, since a record sorting after the
/// page's last one cannot enter it. A comparison SQLite cannot decide counts as not
/// later, so such a record is probed rather than missed.
pub(crate) fn up_to(q: &QuerySql, values: &[Sql]) -> QuerySql {
    let mut narrowed = q.clone();
    let later = after(&q.keys, values, &mut narrowed.args);
    narrowed
        .from_where
        .push_str(&format!(" AND NOT coalesce({later}, 0)"));
    narrowed
}

/// An observer's probe: the ids, of those in a JSON array bound first, that `q`
/// selects; `q.args` bind after it. A commit touches few records of a collection that
/// may hold thousands matching the filter, so the probe is driven by the ids, one
/// primary-key lookup each: the CROSS JOIN keeps the planner from starting at the
/// filter's index instead.
pub(crate) fn probe(q: &QuerySql) -> String {
    let conditions = q.from_where.strip_prefix(FROM).unwrap_or(&q.from_where);
    format!(
        "SELECT id FROM (SELECT value AS touched FROM json_each(?)) CROSS JOIN records \
         {conditions} AND id = touched"
    )
}

/// The cursor that continues after a row with these sort key values.
pub(crate) fn cursor_after(sql: &QuerySql, values: Vec<Sql>) -> String {
    Cursor::encode(&sql.order_id, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(search: &[&str]) -> bool {
        !search.is_empty()
    }

    #[test]
    fn field_names_are_literals_that_cannot_escape() {
        let q = Query::new().filter("it's", "v").order_by("n", true);
        let sql = select("c", declared(&[]), &q).unwrap();
        assert!(
            sql.from_where.contains("'$.\"it''s\"'"),
            "{}",
            sql.from_where
        );
        assert!(sql.tail.contains("DESC, id DESC"), "{}", sql.tail);
        assert_eq!(sql.args[0], Sql::Text("v".into()), "values are bound");
        for bad in ["", "a\"b", "x\n"] {
            let q = Query::new().filter(bad, 1);
            assert!(matches!(
                select("c", declared(&[]), &q),
                Err(Error::InvalidData(_))
            ));
        }
    }

    #[test]
    fn plain_strings_and_numbers_need_no_type_check() {
        let sql = count("c", declared(&[]), Some(&Filter::eq("v", "v042"))).unwrap();
        assert!(!sql.from_where.contains("json_type"), "{}", sql.from_where);
        let sql = count("c", declared(&[]), Some(&Filter::eq("v", 1))).unwrap();
        assert!(
            sql.from_where.contains("json_type"),
            "1 is also true: {}",
            sql.from_where
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("am").as_deref(), Some("an"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[test]
    fn typed_words_become_quoted_fts_terms() {
        assert_eq!(fts_query("amin*").as_deref(), Some("\"amin\"*"));
        assert_eq!(
            fts_query("  Kole \"x\" OR  ").as_deref(),
            Some("\"Kole\" \"\"\"x\"\"\" \"OR\"")
        );
        assert_eq!(fts_query(" * -- "), None);
        let sql = count("c", declared(&[]), Some(&Filter::search("a")));
        assert!(matches!(sql, Err(Error::InvalidData(m)) if m.contains("no search fields")));
        let sql = count("c", declared(&["name"]), Some(&json_search())).unwrap();
        assert_eq!(
            sql.from_where,
            "FROM records WHERE collection = 'c' AND deleted = 0 AND 1"
        );
    }

    fn json_search() -> Filter {
        Filter::from_json(&json!({"search": "  "})).unwrap()
    }
}
