//! Local edits: the one path every write the app makes takes.
//!
//! Validate, compute the new record (CRDT fields merged), store it, and queue (or fold)
//! its outbox entry, all in the caller's transaction, so a write and its upload can
//! never be separated by a crash.

use serde_json::Value;

use crate::clock::Hlc;
use crate::config::Collections;
use crate::crdt;
use crate::db::{Tx, outbox as outbox_table, records};
use crate::error::{Error, Result};
use crate::feed::{ChangeEvent, ChangeOrigin};
use crate::outbox::{Edit, Enqueue, plan_enqueue};
use crate::protocol::{JsonObject, OpKind, json_kind, validate_record, validate_record_id};
use crate::query::{Filter, Query, sql};
use crate::record::{Record, SyncState};

/// A write transaction. Everything done through it commits atomically.
pub struct WriteTx<'a> {
    tx: Tx<'a>,
    collections: &'a Collections,
    replica_id: &'a str,
    event: ChangeEvent,
}

impl std::fmt::Debug for WriteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

fn to_object(data: Value) -> Result<JsonObject> {
    match data {
        Value::Object(o) => Ok(o),
        other => Err(Error::InvalidData(format!(
            "a record must be a JSON object, not {}",
            json_kind(&other)
        ))),
    }
}

fn not_found(collection: &str, id: &str) -> Error {
    Error::NotFound {
        collection: collection.into(),
        id: id.into(),
    }
}

impl<'a> WriteTx<'a> {
    pub(crate) fn new(
        tx: Tx<'a>,
        collections: &'a Collections,
        replica_id: &'a str,
        origin: ChangeOrigin,
    ) -> WriteTx<'a> {
        WriteTx {
            tx,
            collections,
            replica_id,
            event: ChangeEvent::new(origin),
        }
    }

    pub(crate) fn finish(self) -> (Tx<'a>, ChangeEvent) {
        (self.tx, self.event)
    }

    pub(crate) fn tx(&self) -> &Tx<'a> {
        &self.tx
    }

    pub(crate) fn tx_mut(&mut self) -> &mut Tx<'a> {
        &mut self.tx
    }

    /// Tells listeners this record changed, once the transaction commits.
    pub(crate) fn changed(&mut self, collection: &str, id: &str) {
        self.event.add(collection, id);
    }
}

impl WriteTx<'_> {
    pub fn put(&mut self, collection: &str, id: Option<&str>, data: Value) -> Result<Record> {
        let generated;
        let id = match id {
            Some(id) => id,
            None => {
                generated = uuid::Uuid::now_v7().to_string();
                &generated
            }
        };
        let data = to_object(data)?;
        self.write_op(collection, id, OpKind::Put, Some(data))?
            .ok_or_else(|| Error::Database("put produced no record".into()))
    }

    pub fn patch(&mut self, collection: &str, id: &str, fields: Value) -> Result<Record> {
        let fields = to_object(fields)?;
        self.write_op(collection, id, OpKind::Patch, Some(fields))?
            .ok_or_else(|| Error::Database("patch produced no record".into()))
    }

    pub fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        self.write_op(collection, id, OpKind::Delete, None)
            .map(|_| ())
    }

    pub fn increment(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        by: i64,
    ) -> Result<Record> {
        let replica = self.replica_id;
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::increment(cur, replica, by)
        })
    }

    pub fn set_register(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        value: Value,
    ) -> Result<Record> {
        self.crdt_op(collection, id, field, |cur, hlc| {
            crdt::lww_set(cur, value, hlc)
        })
    }

    pub fn set_add(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        elem: &str,
    ) -> Result<Record> {
        let replica = self.replica_id;
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::orset_add(cur, elem, replica)
        })
    }

    pub fn set_remove(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        elem: &str,
    ) -> Result<Record> {
        self.crdt_op(collection, id, field, |cur, _| {
            crdt::orset_remove(cur, elem)
        })
    }

    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.collections.check(collection)?;
        validate_record_id(id)?;
        records::get(&self.tx, collection, id)
    }

    /// A query inside this transaction: it sees the writes made so far in it.
    pub fn query(&self, collection: &str, query: &Query) -> Result<Vec<Record>> {
        let declared = self.collections.get(collection)?;
        let sql = sql::select(collection, !declared.search.is_empty(), query)?;
        records::select(&self.tx, &sql)
    }

    /// How many live records have every one of these field values, inside this
    /// transaction ([`crate::Store::count`] for the committed state).
    pub fn count(&self, collection: &str, filters: &[(String, Value)]) -> Result<u64> {
        self.count_where(collection, &Filter::all_equal(filters))
    }

    /// How many live records match `filter`, inside this transaction.
    pub fn count_where(&self, collection: &str, filter: &Filter) -> Result<u64> {
        let declared = self.collections.get(collection)?;
        let sql = sql::count(collection, !declared.search.is_empty(), Some(filter))?;
        records::count(&self.tx, &sql)
    }

    /// A CRDT operation is an ordinary patch of one field with the field's new state.
    fn crdt_op(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        op: impl FnOnce(Option<&Value>, &Hlc) -> Result<Value, crdt::CrdtError>,
    ) -> Result<Record> {
        self.collections.check(collection)?;
        validate_record_id(id)?;
        let existing = records::load_for_edit(&self.tx, collection, id)?;
        let Some(data) = existing.as_ref().and_then(|e| e.live.as_ref()) else {
            return Err(not_found(collection, id));
        };
        let stamp = self.tx.tick();
        let value = op(data.get(field), &stamp)?;
        let mut fields = JsonObject::new();
        fields.insert(field.to_owned(), value);
        self.write_op(collection, id, OpKind::Patch, Some(fields))?
            .ok_or_else(|| Error::Database("patch produced no record".into()))
    }

    /// Validate, compute the new record, store it, and queue (or fold) its entry.
    fn write_op(
        &mut self,
        collection: &str,
        id: &str,
        kind: OpKind,
        input: Option<JsonObject>,
    ) -> Result<Option<Record>> {
        self.collections.check(collection)?;
        validate_record_id(id)?;
        if let Some(input) = &input {
            validate_record(input)?;
        }
        let existing = records::load_for_edit(&self.tx, collection, id)?;
        let live = existing.as_ref().and_then(|e| e.live.as_ref());
        let new_data = match (kind, &input) {
            (OpKind::Put, Some(input)) => Some(crdt::apply_write(live, input, OpKind::Put)?),
            (OpKind::Patch, Some(input)) => match live {
                Some(live) => Some(crdt::apply_write(Some(live), input, OpKind::Patch)?),
                None => return Err(not_found(collection, id)),
            },
            (OpKind::Delete, _) if live.is_none() => return Err(not_found(collection, id)),
            _ => None,
        };
        // A put that merged nothing stores exactly its input: validated once already,
        // and serialised once for both the record and its outbox entry.
        let stored_as_sent = kind == OpKind::Put && new_data.is_some() && new_data == input;
        if let Some(d) = new_data.as_ref().filter(|_| !stored_as_sent) {
            validate_record(d)?;
        }
        let version = existing.as_ref().map_or(0, |e| e.version);
        let state = match existing.as_ref().map(|e| e.sync_state) {
            Some(s @ (SyncState::Failed | SyncState::Conflicted)) => s,
            _ => SyncState::Pending,
        };
        let hlc = self.tx.tick().to_string();
        let data_json = new_data.as_ref().map(serde_json::to_string).transpose()?;
        records::write_local(&self.tx, collection, id, data_json.as_deref(), &hlc, state)?;
        let edit = Edit {
            kind,
            op_data: input.as_ref(),
            full_data: new_data.as_ref(),
        };
        self.enqueue(
            collection,
            id,
            edit,
            version,
            data_json.as_deref().filter(|_| stored_as_sent),
            &hlc,
        )?;
        self.event.add(collection, id);
        Ok(new_data.map(|data| Record {
            collection: collection.to_owned(),
            id: id.to_owned(),
            data,
            version,
            hlc,
            sync_state: state,
            updated_at_ms: self.tx.now(),
        }))
    }

    /// Queues the edit, folding it into the record's unsent tail entry when there is
    /// one. `op_json` is the op's data already serialised, when the caller has it.
    fn enqueue(
        &mut self,
        collection: &str,
        id: &str,
        edit: Edit<'_>,
        version: i64,
        op_json: Option<&str>,
        hlc: &str,
    ) -> Result<()> {
        let tail = outbox_table::open_tail(&self.tx, collection, id)?;
        let tail_id = tail.as_ref().map(|t| t.id);
        let plan = plan_enqueue(tail, edit, || {
            Ok(outbox_table::count_for(&self.tx, collection, id, tail_id)? > 0)
        })?;
        match plan {
            Enqueue::Insert => {
                let owned;
                let data_json = match (edit.kind, op_json) {
                    (OpKind::Delete, _) => None,
                    (_, Some(j)) => Some(j),
                    _ => {
                        owned = edit.op_data.map(serde_json::to_string).transpose()?;
                        owned.as_deref()
                    }
                };
                let row = outbox_table::NewRow {
                    collection,
                    record_id: id,
                    kind: edit.kind,
                    base_version: (version > 0).then_some(version),
                    data_json,
                    hlc,
                    force: false,
                };
                outbox_table::insert(&self.tx, &row)
            }
            Enqueue::Fold {
                tail_id,
                kind,
                data,
            } => {
                let json = data.as_ref().map(serde_json::to_string).transpose()?;
                outbox_table::coalesce(
                    &self.tx,
                    tail_id,
                    (collection, id),
                    kind,
                    json.as_deref(),
                    hlc,
                )
            }
            Enqueue::Vanish { tail_id } => {
                outbox_table::delete(&mut self.tx, tail_id)?;
                records::delete(&mut self.tx, collection, id)
            }
        }
    }
}
