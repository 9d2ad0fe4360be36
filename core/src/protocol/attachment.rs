//! Attachments on the wire: the reference a record field holds, the upload status,
//! and the rules for both, shared by the device and the server.
//!
//! A file never travels inside a record; a field names it by content,
//! `{"$attachment": "<sha256>", "size": n, "type": "image/jpeg", "name": "…"}`. Both
//! sides find the files a record refers to with [`refs_in`], so the device's garbage
//! collector and the server's access index agree on what "referenced" means.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::JsonObject;

/// The member that marks an object as an attachment reference.
pub const ATTACHMENT_KEY: &str = "$attachment";
/// Longest content type a reference may carry.
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Longest file name a reference may carry.
pub const MAX_ATTACHMENT_NAME_CHARS: usize = 255;
/// The default of the server's `max_attachment_mib`.
pub const DEFAULT_MAX_ATTACHMENT_MIB: u64 = 32;

/// `GET /v1/attachments/<sha256>/status`, and the answer to each upload request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentStatus {
    pub sha256: String,
    pub size: u64,
    /// Bytes the server holds, from the start; the next upload starts here.
    pub received: u64,
    /// All bytes are in and their SHA-256 matched.
    pub complete: bool,
}

/// The body of `409 offset_mismatch`: the error, and where the upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMismatch {
    pub error: super::ErrorBody,
    pub received: u64,
}

/// A file a record refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentRef {
    /// 64 lowercase hex digits.
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
}

impl AttachmentRef {
    /// The reference as a record field holds it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(ATTACHMENT_KEY.into(), Value::String(self.sha256.clone()));
        m.insert("size".into(), Value::from(self.size));
        m.insert("type".into(), Value::String(self.content_type.clone()));
        if let Some(n) = &self.name {
            m.insert("name".into(), Value::String(n.clone()));
        }
        Value::Object(m)
    }

    /// A well-formed reference, or `None` for anything else (including an object with
    /// a `$attachment` member that breaks the rules, which is then plain data).
    pub fn from_json(v: &Value) -> Option<AttachmentRef> {
        let o = v.as_object()?;
        let sha256 = o.get(ATTACHMENT_KEY)?.as_str()?;
        if !is_sha256(sha256) {
            return None;
        }
        let size = o.get("size")?.as_u64()?;
        let content_type = o.get("type")?.as_str()?;
        if !valid_content_type(content_type) {
            return None;
        }
        let name = match o.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if valid_name(n) => Some(n.clone()),
            Some(_) => return None,
        };
        if o.keys()
            .any(|k| !matches!(k.as_str(), ATTACHMENT_KEY | "size" | "type" | "name"))
        {
            return None;
        }
        Some(AttachmentRef {
            sha256: sha256.to_owned(),
            size,
            content_type: content_type.to_owned(),
            name,
        })
    }
}

/// 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `type/subtype`, printable ASCII without spaces or controls, at most 255 characters.
pub fn valid_content_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_CONTENT_TYPE_CHARS
        && t.split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && t.bytes().all(|b| b.is_ascii_graphic())
}

/// 1-255 characters, no control characters and no path separators.
pub fn valid_name(n: &str) -> bool {
    let count = n.chars().count();
    (1..=MAX_ATTACHMENT_NAME_CHARS).contains(&count)
        && !n.chars().any(|c| c.is_control() || c == '/' || c == '\\')
}

/// Every well-formed reference anywhere in a record (fields, arrays, nested objects),
/// each file once, in the order first found.
pub fn refs_in(data: &JsonObject) -> Vec<AttachmentRef> {
    fn walk(v: &Value, out: &mut Vec<AttachmentRef>) {
        match v {
            Value::Object(o) => {
                if o.contains_key(ATTACHMENT_KEY) {
                    if let Some(r) = AttachmentRef::from_json(v)
                        && !out.iter().any(|x| x.sha256 == r.sha256)
                    {
                        out.push(r);
                    }
                    return;
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    data.values().for_each(|v| walk(v, &mut out));
    out
}

/// Whether a record's JSON text may hold a reference: the cheap test before parsing.
pub fn may_hold_refs(json: &str) -> bool {
    json.contains(ATTACHMENT_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_reference_round_trips_and_bad_ones_are_plain_data() {
        let r = AttachmentRef {
            sha256: SHA.into(),
            size: 4,
            content_type: "image/jpeg".into(),
            name: Some("wound.jpg".into()),
        };
        assert_eq!(AttachmentRef::from_json(&r.to_json()), Some(r.clone()));
        let bad = [
            json!({"$attachment": SHA.to_uppercase(), "size": 4, "type": "a/b"}),
            json!({"$attachment": SHA, "size": -1, "type": "a/b"}),
            json!({"$attachment": SHA, "size": 4, "type": "nope"}),
            json!({"$attachment": SHA, "size": 4, "type": "a/b", "name": "../x"}),
            json!({"$attachment": SHA, "size": 4, "type": "a/b", "extra": 1}),
            json!({"$attachment": 5, "size": 4, "type": "a/b"}),
        ];
        for b in bad {
            assert_eq!(AttachmentRef::from_json(&b), None, "{b}");
        }
    }

    #[test]
    fn references_are_found_anywhere_once() {
        let r = json!({"$attachment": SHA, "size": 4, "type": "image/png"});
        let data = json!({
            "photo": r,
            "more": [{"sig": r}, {"x": {"$attachment": "nope"}}],
            "note": "$attachment in text is nothing",
        });
        let found = refs_in(data.as_object().unwrap());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].sha256, SHA);
        assert!(refs_in(json!({"a": 1}).as_object().unwrap()).is_empty());
        assert!(may_hold_refs(&data.to_string()));
    }
}
