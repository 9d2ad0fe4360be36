//! Wire protocol v1: the request and answer shapes that devices and servers exchange.
//!
//! This module is the single definition of the contract in DESIGN.md. The device's
//! sync engine and the reference server both use it, so the two cannot drift apart,
//! and the validation rules for names, ids and sizes live here once.

mod attachment;

pub use attachment::{
    ATTACHMENT_KEY, AttachmentRef, AttachmentStatus, DEFAULT_MAX_ATTACHMENT_MIB,
    MAX_ATTACHMENT_NAME_CHARS, MAX_CONTENT_TYPE_CHARS, OffsetMismatch, is_sha256, may_hold_refs,
    refs_in, valid_content_type, valid_name,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version answered by `GET /health`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request or answer body, before or after gzip decoding; an attachment
/// upload's body is bounded by its file's size instead.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most ops one push may carry.
pub const MAX_OPS_PER_PUSH: usize = 1000;
/// Deepest JSON nesting a push may contain.
pub const MAX_JSON_DEPTH: usize = 64;
/// Deepest record: a push wraps each record in three levels (body, `ops`, op), so a
/// record within this depth always fits in a push the server accepts.
pub const MAX_RECORD_DEPTH: usize = MAX_JSON_DEPTH - 3;
/// Largest record, as serialized JSON.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest record id, in characters.
pub const MAX_RECORD_ID_CHARS: usize = 128;
/// Longest collection name.
pub const MAX_COLLECTION_CHARS: usize = 64;
/// Pull page size when the client names none.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
/// Largest pull page; larger requests are clamped to it.
pub const MAX_PULL_LIMIT: u32 = 5000;
/// Most entries one CRDT field may hold: distinct replica keys of a counter (`p` and
/// `n` together), distinct tags of an OR-set (adds and removes together). Merging costs
/// time in proportion to it on every write of the field, so a write that would take a
/// field past it is rejected (`invalid_request`).
pub const MAX_CRDT_ENTRIES: usize = 10_000;

/// A JSON object: the shape of every record.
pub type JsonObject = Map<String, Value>;

/// `POST /v1/push` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    pub client_id: String,
    pub ops: Vec<Op>,
}

/// What an op does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `data` is the whole record.
    Put,
    /// `data` holds the changed top-level fields.
    Patch,
    /// No data; leaves a tombstone.
    Delete,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Patch => "patch",
            OpKind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<OpKind> {
        match s {
            "put" => Some(OpKind::Put),
            "patch" => Some(OpKind::Patch),
            "delete" => Some(OpKind::Delete),
            _ => None,
        }
    }
}

/// One change a device uploads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    pub op_id: String,
    pub collection: String,
    pub record_id: String,
    pub kind: OpKind,
    /// The server version the edit was made on; `None` for a new record.
    #[serde(default)]
    pub base_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonObject>,
    pub hlc: String,
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/push` answer: one result per op, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub results: Vec<OpResult>,
}

/// The server's answer to one op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum OpResult {
    Applied {
        op_id: String,
        version: i64,
        seq: i64,
    },
    Conflict {
        op_id: String,
        /// The record's server state; `None` when it does not exist, or when
        /// `current_ref` names where it is.
        current: Option<Change>,
        /// When an earlier result of the same answer already carries this record in
        /// this very state, its `op_id`, and `current` is null: a record is carried once
        /// per answer, however many ops on it conflict. Absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_ref: Option<String>,
    },
    Rejected {
        op_id: String,
        error: ErrorBody,
    },
    /// Not processed, because the server's work budget for this request ran out: no
    /// effect, nothing stored under the op_id. Send the op again, same op_id; it is
    /// not a failure.
    Deferred {
        op_id: String,
    },
}

impl OpResult {
    pub fn op_id(&self) -> &str {
        match self {
            OpResult::Applied { op_id, .. }
            | OpResult::Conflict { op_id, .. }
            | OpResult::Rejected { op_id, .. }
            | OpResult::Deferred { op_id } => op_id,
        }
    }

    /// A conflict answer carrying `current` in full.
    pub fn conflict(op_id: String, current: Option<Change>) -> OpResult {
        OpResult::Conflict {
            op_id,
            current,
            current_ref: None,
        }
    }
}

/// A record's server state, as pulled or as carried by a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub seq: i64,
    pub deleted: bool,
    /// `None` when deleted.
    pub data: Option<JsonObject>,
    pub hlc: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// `GET /v1/pull` answer, in either of its forms: v1's list of changes, or the dense
/// columns of [`crate::pages`] a client gets when it asks for them (and the server
/// knows them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WirePage")]
pub struct PullResponse {
    pub changes: Vec<Change>,
    pub cursor: String,
    pub has_more: bool,
    /// Changes readable past this page, when the server says (older servers do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// `remaining` is a floor: the server stopped counting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remaining_capped: bool,
}

/// A pull answer as it arrives: the members of both forms, each optional, read in one
/// pass with no buffering, then checked and turned into a [`PullResponse`].
#[derive(Debug, Deserialize)]
struct WirePage {
    #[serde(default)]
    changes: Option<Vec<Change>>,
    cursor: String,
    has_more: bool,
    #[serde(default)]
    remaining: Option<u64>,
    #[serde(default)]
    remaining_capped: bool,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    collections: Vec<String>,
    #[serde(default)]
    collection: Option<Vec<u32>>,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    versions: Vec<i64>,
    #[serde(default)]
    hlc: Option<crate::pages::SplitStamps>,
    #[serde(default)]
    hlcs: Option<Vec<String>>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    shapes: Vec<Vec<u32>>,
    #[serde(default)]
    shape: Vec<Option<u32>>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

impl TryFrom<WirePage> for PullResponse {
    type Error = crate::pages::PageError;

    fn try_from(w: WirePage) -> Result<PullResponse, Self::Error> {
        let changes = match (w.format, w.changes) {
            (None, Some(changes)) => changes,
            (None, None) => return Err(crate::pages::PageError("no changes".into())),
            (Some(format), _) => crate::pages::decode(crate::pages::Columns {
                format,
                collections: w.collections,
                collection: w.collection,
                ids: w.ids,
                versions: w.versions,
                hlc: w.hlc,
                hlcs: w.hlcs,
                keys: w.keys,
                shapes: w.shapes,
                shape: w.shape,
                values: w.values,
            })?,
        };
        Ok(PullResponse {
            changes,
            cursor: w.cursor,
            has_more: w.has_more,
            remaining: w.remaining,
            remaining_capped: w.remaining_capped,
        })
    }
}

/// `GET /health` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub protocol: u32,
}

/// The `error` member of every error answer and of a rejected op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// `{"error": {...}}`: the body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// The error codes of protocol v1, with their HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    CursorExpired,
    PayloadTooLarge,
    RateLimited,
    Internal,
    /// `409`: an attachment upload started at another offset than the server holds.
    OffsetMismatch,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::CursorExpired,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::OffsetMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::OffsetMismatch => "offset_mismatch",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::CursorExpired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::OffsetMismatch => 409,
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Why a name, id or record breaks the rules of the Limits section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid collection name {0:?}: must match [a-z][a-z0-9_]{{0,63}}")]
    CollectionName(String),
    #[error("invalid record id: must be 1-128 characters with no control characters")]
    RecordId,
    #[error("record is {size} bytes of JSON; the limit is {limit}")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("JSON nested deeper than {0}")]
    TooDeep(usize),
}

/// Collection names match `[a-z][a-z0-9_]{0,63}`.
pub fn validate_collection(name: &str) -> Result<(), ValidationError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_COLLECTION_CHARS
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::CollectionName(truncate_for_message(name)))
    }
}

/// Record ids are 1–128 characters, none of them a control character.
pub fn validate_record_id(id: &str) -> Result<(), ValidationError> {
    let mut n = 0usize;
    for c in id.chars() {
        n += 1;
        if c.is_control() || n > MAX_RECORD_ID_CHARS {
            return Err(ValidationError::RecordId);
        }
    }
    if n == 0 {
        Err(ValidationError::RecordId)
    } else {
        Ok(())
    }
}

/// A record is at most 1 MiB of JSON and nests no deeper than [`MAX_RECORD_DEPTH`].
/// Returns its serialized size.
pub fn validate_record(data: &JsonObject) -> Result<usize, ValidationError> {
    let depth = 1 + data.values().map(json_depth).max().unwrap_or(0);
    if depth > MAX_RECORD_DEPTH {
        return Err(ValidationError::TooDeep(MAX_RECORD_DEPTH));
    }
    let size = json_size(data);
    if size > MAX_RECORD_BYTES {
        return Err(ValidationError::RecordTooLarge {
            size,
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(size)
}

/// "a boolean", "an array", …: a JSON value's type, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Nesting depth: a scalar is 0, `[]` and `{}` are 1, `[[1]]` is 2.
pub fn json_depth(v: &Value) -> usize {
    // Iterative so that hostile input cannot overflow the stack.
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    max
}

/// Size of the compact JSON serialization, without allocating it.
pub fn json_size(data: &JsonObject) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Writing a Map to a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, data);
    c.0
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Formats a unix time in milliseconds as RFC 3339 UTC, the form of `updated_at`.
pub fn rfc3339_millis(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let f = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            t.format(&f)
                .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
        }
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collection_names() {
        for ok in ["patients", "a", "a_1", &"a".repeat(64)] {
            assert!(validate_collection(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Patients",
            "1a",
            "_a",
            "a-b",
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(validate_collection(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_ids() {
        assert!(validate_record_id("p-17").is_ok());
        assert!(validate_record_id(&"é".repeat(128)).is_ok());
        assert!(validate_record_id(&"x".repeat(129)).is_err());
        assert!(validate_record_id("").is_err());
        assert!(validate_record_id("a\nb").is_err());
        assert!(validate_record_id("a\u{7f}").is_err());
    }

    #[test]
    fn record_limits() {
        let mut big = JsonObject::new();
        big.insert("x".into(), Value::String("y".repeat(MAX_RECORD_BYTES)));
        assert!(matches!(
            validate_record(&big),
            Err(ValidationError::RecordTooLarge { .. })
        ));
        let mut deep = json!(1);
        for _ in 0..70 {
            deep = json!([deep]);
        }
        let mut obj = JsonObject::new();
        obj.insert("d".into(), deep);
        assert_eq!(
            validate_record(&obj),
            Err(ValidationError::TooDeep(MAX_RECORD_DEPTH))
        );
        let mut ok = JsonObject::new();
        ok.insert("name".into(), json!("Amina"));
        assert_eq!(validate_record(&ok), Ok(16));
    }

    #[test]
    fn op_result_wire_shape() {
        let r = OpResult::Applied {
            op_id: "a".into(),
            version: 4,
            seq: 1051,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"op_id":"a","status":"applied","version":4,"seq":1051})
        );
        let r = OpResult::conflict("b".into(), None);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"op_id":"b","status":"conflict","current":null})
        );
        let r = OpResult::Conflict {
            op_id: "b2".into(),
            current: None,
            current_ref: Some("b".into()),
        };
        let v = json!({"op_id":"b2","status":"conflict","current":null,"current_ref":"b"});
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        assert_eq!(serde_json::from_value::<OpResult>(v).unwrap(), r);
        let r = OpResult::Deferred { op_id: "d".into() };
        let v = json!({"op_id":"d","status":"deferred"});
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        assert_eq!(serde_json::from_value::<OpResult>(v).unwrap(), r);
        let r = OpResult::Rejected {
            op_id: "c".into(),
            error: ErrorBody::new(ErrorCode::Forbidden, "no"),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"op_id":"c","status":"rejected","error":{"code":"forbidden","message":"no"}})
        );
    }

    #[test]
    fn op_parses_with_defaults() {
        let op: Op = serde_json::from_value(json!({
            "op_id": "u", "collection": "patients", "record_id": "p-17",
            "kind": "delete", "hlc": "0000000000001-00000-r"
        }))
        .unwrap();
        assert_eq!(op.base_version, None);
        assert!(!op.force);
        assert_eq!(op.kind, OpKind::Delete);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
