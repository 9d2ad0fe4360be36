//! Local queries: what a screen asks of one collection, and the SQL it becomes.
//!
//! The UI reads only the local database, so this is the path every list screen takes.
//! A [`Query`] is a [`Filter`] tree (typed comparisons, `in`, prefixes, null checks,
//! full-text search, `and` / `or`), an order over several fields and a page, by offset
//! or by an opaque keyset cursor. Building the SQL (`sql`) is kept apart from running
//! it (`db::records`), so the translation is pure and tested against a model: JSON
//! types are respected (`1` never matches `"1"` or `true`), field names cannot inject
//! SQL, and the expressions are the ones the declared indexes are built on, so the
//! planner uses them.

mod cursor;
mod filter;
pub(crate) mod sql;

pub use filter::Filter;

use crate::error::{Error, Result};

/// One sort key: a top-level field, or `None` for the record id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub field: Option<String>,
    pub descending: bool,
}

/// A filter, an order and a page. Records come in the order's sequence, ties broken by
/// id, so every query has one total order and paging never skips or repeats a record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// `None` matches every live record.
    pub filter: Option<Filter>,
    /// Sort keys, most significant first; empty sorts by id.
    pub order: Vec<Order>,
    pub limit: Option<u32>,
    pub offset: u32,
    /// Continue after the last record of a page ([`Page::next`]): keyset paging, which
    /// stays exact while records are written, unlike an offset.
    pub after: Option<String>,
}

impl Query {
    /// How many sort keys a query may have. More is [`Error::InvalidData`].
    pub const MAX_ORDER_KEYS: usize = 16;

    pub fn new() -> Query {
        Query::default()
    }

    /// Adds an equality filter (and-ed with the others).
    pub fn filter(self, field: &str, value: impl Into<serde_json::Value>) -> Query {
        self.matching(Filter::eq(field, value))
    }

    /// Adds a filter (and-ed with the others).
    pub fn matching(mut self, filter: Filter) -> Query {
        self.filter = Some(match self.filter.take() {
            None => filter,
            Some(f) => f.and(filter),
        });
        self
    }

    /// Adds a sort key after the ones already given.
    pub fn order_by(mut self, field: &str, descending: bool) -> Query {
        self.order.push(Order {
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

    /// Continues after a page's last record.
    pub fn after(mut self, cursor: impl Into<String>) -> Query {
        self.after = Some(cursor.into());
        self
    }
}

/// A page of records, and the cursor that continues after it (`None`: no more).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<crate::Record>,
    pub next: Option<String>,
}

/// A field name a query may use: one top-level field, whatever its characters, except
/// `"` and control characters, which no JSON path can name safely.
pub(crate) fn check_field(field: &str) -> Result<()> {
    if field.is_empty() || field.contains('"') || field.chars().any(char::is_control) {
        return Err(Error::InvalidData(format!(
            "unusable field name {field:?} in a query"
        )));
    }
    Ok(())
}
