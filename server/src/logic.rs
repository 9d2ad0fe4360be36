//! Protocol rules that do not depend on the database.
//!
//! Every storage backend must give the same answer to the same push, so the rules of
//! DESIGN.md live here once, as plain functions: reading a push body into ops, who a
//! user is and what they may access, the conflict rule with its CRDT merge, and what a
//! cursor stands for (its text is in `cursor.rs`). The config only says which rule
//! applies where, and the push and pull flows (`push.rs`, `pull.rs`) only apply these.

use outpost_core::clock::Hlc;
use outpost_core::crdt::{self, Crdt};
use outpost_core::protocol::{
    Change, ErrorBody, ErrorCode, JsonObject, MAX_CRDT_ENTRIES, MAX_OPS_PER_PUSH, MAX_RECORD_BYTES,
    OpKind, json_size, rfc3339_millis, validate_collection, validate_record, validate_record_id,
};
use serde_json::Value;

/// Longest accepted `op_id` and `client_id`; UUIDs are 36.
pub const MAX_ID_CHARS: usize = 128;

/// A push body that passed the whole-push checks.
#[derive(Debug, Clone)]
pub struct PushBatch {
    pub client_id: String,
    pub items: Vec<PushItem>,
    /// Some op has a `team` or `owner` member, which only service accounts may send.
    pub routed: bool,
    /// The first `team` or `owner` member that is not a usable name, as a message.
    pub bad_target: Option<String>,
}

/// One op of a push: either well-formed, or already known to be rejected.
#[derive(Debug, Clone)]
pub enum PushItem {
    Valid(ValidOp),
    /// Answered `rejected` with `invalid_request` (stored like any answer).
    Invalid {
        op_id: String,
        error: ErrorBody,
        /// The op's collection and record id when those are valid, for the audit;
        /// empty otherwise.
        collection: String,
        record_id: String,
        /// Where a service account sent it.
        target: Option<Target>,
    },
}

impl PushItem {
    pub fn op_id(&self) -> &str {
        match self {
            PushItem::Valid(op) => &op.op_id,
            PushItem::Invalid { op_id, .. } => op_id,
        }
    }

    /// Where a service account sent the op (`team`, `owner`).
    pub fn target(&self) -> Option<&Target> {
        match self {
            PushItem::Valid(op) => op.target.as_ref(),
            PushItem::Invalid { target, .. } => target.as_ref(),
        }
    }

    /// The op's collection, when it is a valid name.
    pub fn collection(&self) -> Option<&str> {
        match self {
            PushItem::Valid(op) => Some(&op.collection),
            PushItem::Invalid { collection, .. } => {
                Some(collection.as_str()).filter(|c| !c.is_empty())
            }
        }
    }
}

/// An op whose every field is valid.
#[derive(Debug, Clone)]
pub struct ValidOp {
    pub op_id: String,
    pub collection: String,
    pub record_id: String,
    pub kind: OpKind,
    pub base_version: Option<i64>,
    /// `None` exactly for deletes.
    pub data: Option<JsonObject>,
    pub hlc: String,
    pub force: bool,
    /// Where a service account sent it; `None` for a device's op.
    pub target: Option<Target>,
}

/// Why a whole push is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPush(pub String);

/// Reads a parsed push body. Whole-push problems are `Err`; a bad single op becomes a
/// [`PushItem::Invalid`] so its neighbours still apply.
pub fn read_push(body: Value) -> Result<PushBatch, BadPush> {
    let Value::Object(mut top) = body else {
        return Err(BadPush("the body must be a JSON object".into()));
    };
    for key in top.keys() {
        if key != "client_id" && key != "ops" {
            return Err(BadPush(format!("unknown member {:?}", short(key))));
        }
    }
    let client_id = match top.remove("client_id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_CHARS => s,
        Some(Value::String(_)) => {
            return Err(BadPush(format!(
                "client_id must be 1-{MAX_ID_CHARS} characters"
            )));
        }
        Some(_) => return Err(BadPush("client_id must be a string".into())),
        None => return Err(BadPush("missing client_id".into())),
    };
    let ops = match top.remove("ops") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(BadPush("ops must be an array".into())),
        None => return Err(BadPush("missing ops".into())),
    };
    if ops.len() > MAX_OPS_PER_PUSH {
        return Err(BadPush(format!(
            "{} ops in one push; the limit is {MAX_OPS_PER_PUSH}",
            ops.len()
        )));
    }
    let mut items = Vec::with_capacity(ops.len());
    let mut routed = false;
    let mut bad_target = None;
    for (i, op) in ops.into_iter().enumerate() {
        let Value::Object(mut op) = op else {
            return Err(BadPush(format!("ops[{i}] is not an object")));
        };
        routed |= op.contains_key("team") || op.contains_key("owner");
        let target = match read_target(&mut op) {
            Ok(t) => t,
            Err(message) => {
                bad_target.get_or_insert_with(|| format!("ops[{i}]: {message}"));
                None
            }
        };
        let op_id = match op.get("op_id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(BadPush(format!("ops[{i}] has no string op_id"))),
        };
        let named = |key: &str, valid: fn(&str) -> bool| {
            op.get(key)
                .and_then(Value::as_str)
                .filter(|s| valid(s))
                .unwrap_or_default()
                .to_owned()
        };
        let collection = named("collection", |c| validate_collection(c).is_ok());
        let record_id = named("record_id", |r| validate_record_id(r).is_ok());
        items.push(match read_op(op) {
            Ok(v) => PushItem::Valid(ValidOp { target, ..v }),
            Err(message) => PushItem::Invalid {
                op_id,
                error: ErrorBody::new(ErrorCode::InvalidRequest, message),
                collection,
                record_id,
                target,
            },
        });
    }
    Ok(PushBatch {
        client_id,
        items,
        routed,
        bad_target,
    })
}

/// Takes an op's `team` and `owner` members (a service account's routing) out of it.
fn read_target(op: &mut JsonObject) -> Result<Option<Target>, String> {
    let mut name = |key: &str| match op.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) if valid_name(&s) => Ok(Some(s)),
        Some(_) => Err(format!(
            "{key} must be a string of 1-256 characters, none a control character"
        )),
    };
    let team = name("team")?;
    let owner = name("owner")?;
    match (team, owner) {
        (Some(team), owner) => Ok(Some(Target { team, owner })),
        (None, Some(_)) => Err("owner needs a team".into()),
        (None, None) => Ok(None),
    }
}

/// True when an op_id can be stored as an idempotency key.
pub fn op_id_ok(op_id: &str) -> bool {
    !op_id.is_empty() && op_id.chars().count() <= MAX_ID_CHARS
}

fn read_op(mut op: JsonObject) -> Result<ValidOp, String> {
    const KNOWN: [&str; 8] = [
        "op_id",
        "collection",
        "record_id",
        "kind",
        "base_version",
        "data",
        "hlc",
        "force",
    ];
    if let Some(k) = op.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown op member {:?}", short(k)));
    }
    let mut string = |name: &str| match op.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{name} must be a string")),
        None => Err(format!("missing {name}")),
    };
    let op_id = string("op_id")?;
    if !op_id_ok(&op_id) {
        return Err(format!("op_id must be 1-{MAX_ID_CHARS} characters"));
    }
    let collection = string("collection")?;
    validate_collection(&collection).map_err(|e| e.to_string())?;
    let record_id = string("record_id")?;
    validate_record_id(&record_id).map_err(|e| e.to_string())?;
    let kind_s = string("kind")?;
    let kind = OpKind::parse(&kind_s)
        .ok_or_else(|| "kind must be \"put\", \"patch\" or \"delete\"".to_owned())?;
    let hlc = string("hlc")?;
    hlc.parse::<Hlc>().map_err(|e| e.to_string())?;
    let base_version = match op.remove("base_version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Some(v),
            _ => return Err("base_version must be a non-negative integer or null".into()),
        },
        Some(_) => return Err("base_version must be a non-negative integer or null".into()),
    };
    let force = match op.remove("force") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err("force must be a boolean".into()),
    };
    let data = match (kind, op.remove("data")) {
        (OpKind::Delete, None | Some(Value::Null)) => None,
        (OpKind::Delete, Some(_)) => return Err("a delete carries no data".into()),
        (_, Some(Value::Object(d))) => {
            validate_record(&d).map_err(|e| e.to_string())?;
            for (key, v) in &d {
                if Crdt::is_crdt(v) {
                    let n = Crdt::entry_count(v);
                    if n > MAX_CRDT_ENTRIES {
                        return Err(too_many_entries(key, n));
                    }
                    Crdt::from_json(v).map_err(|e| format!("field {:?}: {e}", short(key)))?;
                }
            }
            Some(d)
        }
        (_, _) => return Err(format!("a {} needs an object data", kind.as_str())),
    };
    Ok(ValidOp {
        op_id,
        collection,
        record_id,
        kind,
        base_version,
        data,
        hlc,
        force,
        target: None,
    })
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn too_many_entries(field: &str, n: usize) -> String {
    format!(
        "field {:?}: a CRDT field may hold at most {MAX_CRDT_ENTRIES} entries (counter replicas or OR-set tags); this write would make it {n}",
        short(field)
    )
}

/// A record as a backend stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub collection: String,
    pub record_id: String,
    /// `None` for a tombstone.
    pub data: Option<JsonObject>,
    pub deleted: bool,
    pub version: i64,
    pub seq: i64,
    pub hlc: String,
    pub owner: String,
    pub team: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The `client_id` of the push that wrote the record last; `None` for records
    /// written before the server kept it.
    pub writer: Option<String>,
    /// That client's device holds exactly this state since its `applied` answer
    /// ([`echo_exact`]), so its pulls may leave the change out.
    pub echo: bool,
}

impl StoredRecord {
    /// The record's state on the wire.
    pub fn to_change(&self) -> Change {
        self.clone().into_change()
    }

    /// [`StoredRecord::to_change`] without copying the data, for pull pages.
    pub fn into_change(self) -> Change {
        Change {
            collection: self.collection,
            record_id: self.record_id,
            version: self.version,
            seq: self.seq,
            deleted: self.deleted,
            data: if self.deleted { None } else { self.data },
            hlc: self.hlc,
            updated_at: rfc3339_millis(self.updated_at_ms),
        }
    }
}

/// Who may read and write the records of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the record's creator.
    Private,
    /// Users of the creator's team.
    Team,
    /// Every user.
    Shared,
}

impl Access {
    /// The rule a config names: `private`, `team` or `shared`.
    pub(crate) fn parse(s: &str) -> Option<Access> {
        match s {
            "private" => Some(Access::Private),
            "team" => Some(Access::Team),
            "shared" => Some(Access::Shared),
            _ => None,
        }
    }
}

/// The access rule of every collection: named ones, and the default.
#[derive(Debug, Clone)]
pub struct AccessRules {
    pub named: Vec<(String, Access)>,
    pub default: Access,
}

impl AccessRules {
    pub fn of(&self, collection: &str) -> Access {
        self.named
            .iter()
            .find(|(c, _)| c == collection)
            .map_or(self.default, |(_, a)| *a)
    }
}

/// The namespace a record id lives in, under a collection's access rule: the owner's
/// for `private`, the team's for `team`, one for everyone for `shared`.
///
/// Records are keyed by (collection, scope, record id), so the same id written by two
/// teams is two records: one team can neither see that another has used an id nor be
/// kept from using it. The prefixes keep user and team names apart.
pub fn scope_of(access: Access, user: &User) -> String {
    match access {
        Access::Private => format!("u:{}", user.name),
        Access::Team => format!("t:{}", user.team),
        Access::Shared => SHARED_SCOPE.to_owned(),
    }
}

/// The scope an op's record lives in: [`scope_of`] the user a device of the op's
/// target would be ([`Target::acting_user`]), or of the pushing user for an op with no
/// target. The one place an op's scope is computed, so that the record a push reads,
/// the row it writes, its audit and a backend's lock on the record all name the same.
pub fn op_scope(access: Access, user: &User, target: Option<&Target>) -> String {
    match target {
        None => scope_of(access, user),
        Some(t) => match access {
            Access::Private => format!("u:{}", t.owner.as_deref().unwrap_or(&user.name)),
            Access::Team => format!("t:{}", t.team),
            Access::Shared => SHARED_SCOPE.to_owned(),
        },
    }
}

/// The scope of every record of a `shared` collection.
pub const SHARED_SCOPE: &str = "*";

/// Where a record is stored: its collection, scope ([`scope_of`]) and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub collection: String,
    pub scope: String,
    pub record_id: String,
}

/// One user of the server.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub team: String,
    /// SHA-256 of the bearer token.
    pub token_sha256: [u8; 32],
    pub role: Role,
}

/// What a user may do beyond their own scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// A person's device: reads and writes in its own scope only.
    #[default]
    User,
    /// An organisation's system (an import, a backend): writes into any team's or
    /// owner's scope, naming it per op, and reads the change feed of every team
    /// (`/v1/admin/`).
    Service,
}

impl Role {
    /// The role a config or a token names: `user` or `service`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// Where a service account's op lands: the team, and for `private` collections the
/// owner, a device of which would have written it. The record is then exactly where
/// that team's (or owner's) devices read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub team: String,
    /// `None`: the service account itself owns the record (not allowed in `private`
    /// collections, where the owner is the only reader).
    pub owner: Option<String>,
}

impl Target {
    /// The user a device of this team and owner would be, for scoping and deciding the
    /// op; `service` when no owner is named.
    pub fn acting_user(&self, service: &User) -> User {
        User {
            name: self.owner.clone().unwrap_or_else(|| service.name.clone()),
            team: self.team.clone(),
            token_sha256: [0; 32],
            role: Role::User,
        }
    }

    /// The audit `detail` of an op sent here by `service`: the team and owner it acted
    /// as, `{"as": {"team": "…", "owner": "…"}}`.
    pub fn audit_detail(&self, service: &User) -> String {
        let owner = self.owner.as_deref().unwrap_or(&service.name);
        serde_json::json!({"as": {"team": self.team, "owner": owner}}).to_string()
    }
}

/// Whether a user or team name is usable: 1 to 256 characters, none a control
/// character (the rule for names taken from JWT claims).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 256 && !s.chars().any(char::is_control)
}

// Hand-written so a digest never reaches a log through `{:?}`.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("team", &self.team)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// May `user` read and write a record with this owner and team?
pub fn may_access(access: Access, user: &User, owner: &str, team: &str) -> bool {
    match access {
        Access::Private => owner == user.name,
        Access::Team => team == user.team,
        Access::Shared => true,
    }
}

/// What a backend must do with one valid op.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write the record with a new seq (allocated by the backend) and this content.
    Apply(NewState),
    /// Answer `conflict` with the record's current state (`None` when there is no
    /// record); no effect. The caller builds that state, since an answer carries a
    /// record once however many ops conflict with it.
    Conflict,
    /// Answer `rejected`; no effect.
    Reject(ErrorBody),
}

/// The record after an applied op, except for its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct NewState {
    pub data: Option<JsonObject>,
    /// `data`'s size as JSON ([`json_size`]; 0 for a tombstone), measured once here.
    pub bytes: usize,
    pub deleted: bool,
    pub old_version: Option<i64>,
    pub version: i64,
    pub owner: String,
    pub team: String,
    pub created_at_ms: i64,
    /// Applied only because of `force`: without it the op would have conflicted. The
    /// version it replaced is kept in the audit.
    pub forced: bool,
}

/// The conflict and access rules of DESIGN.md ("POST /v1/push", "Access") for one op
/// against the record's stored state.
pub fn decide(
    op: &ValidOp,
    existing: Option<&StoredRecord>,
    user: &User,
    access: Access,
    now_ms: i64,
) -> Decision {
    if let Some(ex) = existing
        && !may_access(access, user, &ex.owner, &ex.team)
    {
        // Records are looked up in the user's own scope, so this only happens to data
        // written under another access rule. Says nothing about the record's content.
        return Decision::Reject(ErrorBody::new(
            ErrorCode::Forbidden,
            "this record is outside your access",
        ));
    }
    let live = existing.filter(|e| !e.deleted);
    // A tombstone has no fields to merge into: the write resurrects it afresh.
    let base = live.and_then(|e| e.data.as_ref());
    let stale = match (op.base_version, existing) {
        (None, None) => false,
        (None, Some(_)) => true,
        // A base on a missing record.
        (Some(_), None) => true,
        (Some(b), Some(ex)) => ex.version != b,
    };
    // The write's result, computed at most once (a large CRDT merges once): here when
    // telling a CRDT-only write, which never conflicts, otherwise below.
    let mut written = None;
    if stale && !op.force {
        let crdt_only = match (base, &op.data) {
            (Some(ex), Some(inc)) => {
                let w = crdt::apply_write(Some(ex), inc, op.kind);
                let only = w
                    .as_ref()
                    .is_ok_and(|r| crdt::result_changes_only_crdt_fields(ex, inc, r));
                written = Some(w);
                only
            }
            _ => false,
        };
        if !crdt_only {
            return Decision::Conflict;
        }
    }
    let written = written.or_else(|| {
        op.data
            .as_ref()
            .map(|inc| crdt::apply_write(base, inc, op.kind))
    });
    let (data, bytes, deleted) = match written {
        None => (None, 0, true),
        Some(Ok(d)) => {
            let size = json_size(&d);
            if size > MAX_RECORD_BYTES {
                return Decision::Reject(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "the record would be {size} bytes of JSON; the limit is {MAX_RECORD_BYTES}"
                    ),
                ));
            }
            if let Some(message) = op
                .data
                .as_ref()
                .and_then(|inc| crdt_over_cap(inc, base, &d))
            {
                return Decision::Reject(ErrorBody::new(ErrorCode::InvalidRequest, message));
            }
            (Some(d), size, false)
        }
        Some(Err(e)) => {
            return Decision::Reject(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()));
        }
    };
    Decision::Apply(NewState {
        data,
        bytes,
        deleted,
        old_version: existing.map(|e| e.version),
        version: existing.map_or(1, |e| e.version + 1),
        owner: existing.map_or_else(|| user.name.clone(), |e| e.owner.clone()),
        team: existing.map_or_else(|| user.team.clone(), |e| e.team.clone()),
        created_at_ms: existing.map_or(now_ms, |e| e.created_at_ms),
        forced: stale && op.force,
    })
}

/// A CRDT field the write would grow past [`MAX_CRDT_ENTRIES`], as a message. A field
/// already over it (stored before the limit) may still be written if it does not grow.
fn crdt_over_cap(
    incoming: &JsonObject,
    before: Option<&JsonObject>,
    after: &JsonObject,
) -> Option<String> {
    incoming
        .iter()
        .filter(|(_, v)| Crdt::is_crdt(v))
        .find_map(|(key, _)| {
            let n = after.get(key).map_or(0, Crdt::entry_count);
            let was = before.and_then(|b| b.get(key)).map_or(0, Crdt::entry_count);
            (n > MAX_CRDT_ENTRIES && n > was).then(|| too_many_entries(key, n))
        })
}

/// Whether the device that pushed `op` holds, once it has the `applied` answer, exactly
/// the record the server stored (`stored`, `None` for a tombstone) over `existing`: then
/// its pulls may leave that change out (the pull's `own` list), since it would only
/// bring the device what it has.
///
/// A device computes its copy the way the server does (the same CRDT merge of the same
/// op) from its copy of the version the op names. So the two agree when:
/// - the op names the version it was applied to: a CRDT-only write made on an older
///   version, or a forced one, merges into a state the device has not seen;
/// - the device's copy of that version is the server's. It is when it came from a pull
///   or a conflict answer, or from the device's own write that was itself exact; after
///   a write of its own that was not, the device is behind until it pulls, which the
///   server cannot know, so its later writes of the record are not exact either, until
///   another client writes it. Records from before writers were kept count as pulled;
/// - a put was stored as sent: a device stores a settled conflict's result as it is,
///   with no merge, so any merge on the server (carried CRDT fields, canonical form)
///   could differ from it.
///
/// A delete leaves a tombstone on both sides, whatever it was made on.
pub fn echo_exact(
    op: &ValidOp,
    existing: Option<&StoredRecord>,
    client_id: &str,
    stored: Option<&JsonObject>,
) -> bool {
    if op.kind == OpKind::Delete {
        return true;
    }
    let on_applied_version = match (op.base_version, existing) {
        (None, None) => true,
        (Some(b), Some(ex)) => ex.version == b,
        _ => false,
    };
    let copy_is_servers =
        existing.is_none_or(|ex| ex.echo || ex.writer.as_deref() != Some(client_id));
    let as_sent = op.kind != OpKind::Put || stored == op.data.as_ref();
    on_applied_version && copy_is_servers && as_sent
}

/// Where a puller stands: it has seen every change it may read up to `seq`, in a
/// snapshot where tombstones up to `purge_mark` had already been purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub seq: i64,
    pub purge_mark: i64,
}

impl Cursor {
    /// Did a purge after this cursor was issued remove tombstones the puller has not
    /// seen? Comparing with the mark at issue (not only with `seq`) matters: a device
    /// that starts from the beginning after a purge never knew the purged records, so
    /// its cursors must not expire because of that purge.
    pub fn expired_by(&self, purged_through_seq: i64) -> bool {
        purged_through_seq > self.purge_mark && self.seq < purged_through_seq
    }
}

/// Current unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, team: &str) -> User {
        User {
            name: name.into(),
            team: team.into(),
            token_sha256: [0; 32],
            role: Role::User,
        }
    }

    fn op(kind: OpKind, base: Option<i64>, data: Option<Value>) -> ValidOp {
        ValidOp {
            op_id: "o".into(),
            collection: "c".into(),
            record_id: "r".into(),
            kind,
            base_version: base,
            data: data.and_then(|d| d.as_object().cloned()),
            hlc: "0000000000001-00000-a".into(),
            force: false,
            target: None,
        }
    }

    fn rec(version: i64, deleted: bool, data: Value) -> StoredRecord {
        StoredRecord {
            collection: "c".into(),
            record_id: "r".into(),
            data: (!deleted).then(|| data.as_object().cloned().unwrap()),
            deleted,
            version,
            seq: 7,
            hlc: "0000000000001-00000-a".into(),
            owner: "amina".into(),
            team: "north".into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            writer: None,
            echo: false,
        }
    }

    #[test]
    fn an_ops_scope_is_its_targets_or_its_pushers() {
        let mut service = user("backend", "");
        service.role = Role::Service;
        let amina = user("amina", "north");
        let to = |team: &str, owner: Option<&str>| Target {
            team: team.into(),
            owner: owner.map(Into::into),
        };
        for access in [Access::Private, Access::Team, Access::Shared] {
            assert_eq!(op_scope(access, &amina, None), scope_of(access, &amina));
            for t in [to("south", None), to("south", Some("chioma"))] {
                assert_eq!(
                    op_scope(access, &service, Some(&t)),
                    scope_of(access, &t.acting_user(&service))
                );
            }
        }
        assert_eq!(
            op_scope(Access::Team, &service, Some(&to("south", None))),
            "t:south"
        );
        assert_eq!(
            op_scope(
                Access::Private,
                &service,
                Some(&to("south", Some("chioma")))
            ),
            "u:chioma"
        );
        assert_eq!(
            to("south", None).audit_detail(&service),
            json!({"as": {"team": "south", "owner": "backend"}}).to_string()
        );
    }

    #[test]
    fn cursors_expire_only_by_a_later_purge_past_them() {
        let at = |seq, purge_mark| Cursor { seq, purge_mark };
        assert!(at(1, 0).expired_by(3));
        assert!(!at(3, 0).expired_by(3));
        assert!(!at(1, 3).expired_by(3), "issued after the purge");
        assert!(at(1, 3).expired_by(4));
    }

    #[test]
    fn a_write_is_exact_when_made_on_the_version_it_was_applied_to() {
        let ex = rec(
            3,
            false,
            json!({"name": "x", "n": {"$crdt": "gcounter", "p": {"a": 1}}}),
        );
        let mine = |echo| StoredRecord {
            writer: Some("dev-1".into()),
            echo,
            ..ex.clone()
        };
        let data = |v: Value| v.as_object().cloned().unwrap();
        let put = op(OpKind::Put, Some(3), Some(json!({"name": "y"})));
        let sent = data(json!({"name": "y"}));
        // On the version it names, from a copy the device got by pull: exact.
        assert!(echo_exact(&put, Some(&ex), "dev-1", Some(&sent)));
        // A put stored other than sent (a CRDT field carried over) is not.
        let merged = data(json!({"name": "y", "n": {"$crdt": "gcounter", "p": {"a": 1}}}));
        assert!(!echo_exact(&put, Some(&ex), "dev-1", Some(&merged)));
        // A CRDT-only patch made on an older version merges into state the device lacks.
        let old = op(
            OpKind::Patch,
            Some(2),
            Some(json!({"n": {"$crdt": "gcounter", "p": {"b": 1}}})),
        );
        assert!(!echo_exact(&old, Some(&ex), "dev-1", None));
        let patch = op(OpKind::Patch, Some(3), Some(json!({"name": "z"})));
        assert!(echo_exact(&patch, Some(&ex), "dev-1", None));
        // After this device's own inexact write it is behind: not exact, for it alone.
        assert!(!echo_exact(&patch, Some(&mine(false)), "dev-1", None));
        assert!(echo_exact(&patch, Some(&mine(false)), "dev-2", None));
        assert!(echo_exact(&patch, Some(&mine(true)), "dev-1", None));
        // New records, on nothing; a delete always.
        let new = op(OpKind::Put, None, Some(json!({"name": "y"})));
        assert!(echo_exact(&new, None, "dev-1", Some(&sent)));
        assert!(!echo_exact(&new, Some(&ex), "dev-1", Some(&sent)));
        let del = op(OpKind::Delete, Some(1), None);
        assert!(echo_exact(&del, Some(&mine(false)), "dev-1", None));
    }

    #[test]
    fn conflict_rules() {
        let a = user("amina", "north");
        let ex = rec(
            3,
            false,
            json!({"name": "x", "n": {"$crdt": "gcounter", "p": {"a": 1}}}),
        );
        let put = op(OpKind::Put, Some(3), Some(json!({"name": "y"})));
        assert!(
            matches!(decide(&put, Some(&ex), &a, Access::Team, 9), Decision::Apply(s) if s.version == 4)
        );
        let stale = op(OpKind::Put, Some(2), Some(json!({"name": "y"})));
        assert!(decide(&stale, Some(&ex), &a, Access::Team, 9) == Decision::Conflict);
        let mut forced = stale.clone();
        forced.force = true;
        assert!(matches!(
            decide(&forced, Some(&ex), &a, Access::Team, 9),
            Decision::Apply(_)
        ));
        let crdt = op(
            OpKind::Patch,
            Some(1),
            Some(json!({"n": {"$crdt": "gcounter", "p": {"b": 2}}})),
        );
        assert!(matches!(
            decide(&crdt, Some(&ex), &a, Access::Team, 9),
            Decision::Apply(_)
        ));
        let new_on_existing = op(OpKind::Put, None, Some(json!({"name": "z"})));
        assert!(matches!(
            decide(&new_on_existing, Some(&ex), &a, Access::Team, 9),
            Decision::Conflict
        ));
        let tomb = rec(4, true, json!({}));
        assert!(decide(&new_on_existing, Some(&tomb), &a, Access::Team, 9) == Decision::Conflict);
        assert!(matches!(
            decide(&put, None, &a, Access::Team, 9),
            Decision::Conflict
        ));
        let c = user("chioma", "south");
        assert!(
            matches!(decide(&put, Some(&ex), &c, Access::Team, 9), Decision::Reject(e) if e.code == "forbidden")
        );
        assert!(
            matches!(decide(&put, Some(&ex), &c, Access::Shared, 9), Decision::Apply(s) if s.owner == "amina")
        );
    }
}
