//! The audit trail on PostgreSQL: appending to its hash chain from any number of
//! server processes, and reading it back for `audit verify`.
//!
//! A chain has one head, so appends must follow one another: each takes the head's row
//! lock (`audit_head ... FOR UPDATE`), chains its rows after the hash it finds, inserts
//! them in order (so their ids follow the chain) and moves the head, all in the caller's
//! transaction and in one statement (`outpost_append_audit`, which hashes in SQL what
//! `audit::row_hash` hashes). A push takes the head last, after the seq counter (see `push.rs`), so
//! the lock is held only for its final statements. The rows are hashed as stored: op_id,
//! client_id and device escaped ([`pg_text`]).

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Statement;

use super::{Pg, pg_text};
use crate::audit::{self, AuditEntry, AuditFields, AuditReads, ContentRow, StoredAuditRow};
use crate::storage::StorageError;

/// Appends `entries` to the chain inside `tx`, in one round trip; the head stays
/// locked until it commits.
pub(super) async fn append(
    tx: &Transaction<'_>,
    entries: Vec<AuditEntry>,
) -> Result<(), tokio_postgres::Error> {
    let st = tx.prepare_cached(APPEND).await?;
    Batch::new(entries).append(tx, &st).await
}

/// Extends the chain (`outpost_append_audit`, schema migration 9). A push prepares it
/// with its other statements, before it holds any lock.
pub(super) const APPEND: &str = "SELECT outpost_append_audit($1::text[], $2::text[], \
     $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
     $10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], \
     $16::text[], $17::text[], $18::text[])";

/// Rows to append, escaped as stored and with their content texts, ready to be sent
/// (a push sends them in one pipeline with its last statements).
pub(super) struct Batch(Vec<ContentRow>);

impl Batch {
    pub(super) fn new(entries: Vec<AuditEntry>) -> Batch {
        let escaped = entries
            .into_iter()
            .map(|mut e| {
                e.fields.op_id = pg_text(&e.fields.op_id).into_owned();
                e.fields.client_id = pg_text(&e.fields.client_id).into_owned();
                e.fields.device = e.fields.device.as_deref().map(|d| pg_text(d).into_owned());
                e
            })
            .collect();
        Batch(audit::contents(escaped))
    }

    /// Chains the rows after the head with `st`, prepared from [`APPEND`].
    pub(super) async fn append(
        &self,
        tx: &Transaction<'_>,
        st: &Statement,
    ) -> Result<(), tokio_postgres::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let rows = &self.0;
        let col = |f: fn(&AuditFields) -> &String| -> Vec<&str> {
            rows.iter().map(|r| f(&r.fields).as_str()).collect()
        };
        let old: Vec<Option<i64>> = rows.iter().map(|r| r.fields.old_version).collect();
        let new: Vec<Option<i64>> = rows.iter().map(|r| r.fields.new_version).collect();
        let device: Vec<Option<&str>> = rows.iter().map(|r| r.fields.device.as_deref()).collect();
        let prior_sha: Vec<Option<&str>> = rows.iter().map(|r| r.prior_sha256.as_deref()).collect();
        let content: Vec<&str> = rows.iter().map(|r| r.content.as_str()).collect();
        let prior: Vec<Option<&str>> = rows.iter().map(|r| r.prior.as_deref()).collect();
        tx.query_one(
            st,
            &[
                &col(|f| &f.at),
                &col(|f| &f.event),
                &col(|f| &f.user),
                &col(|f| &f.client_id),
                &col(|f| &f.client_addr),
                &col(|f| &f.op_id),
                &col(|f| &f.collection),
                &col(|f| &f.scope),
                &col(|f| &f.record_id),
                &col(|f| &f.kind),
                &old,
                &new,
                &col(|f| &f.code),
                &col(|f| &f.detail),
                &device,
                &prior_sha,
                &content,
                &prior,
            ],
        )
        .await?;
        Ok(())
    }
}

/// The reads of `audit verify`, inside one REPEATABLE READ transaction.
pub(super) struct Snapshot<'a>(pub &'a Transaction<'a>);

impl AuditReads for Snapshot<'_> {
    async fn page(
        &mut self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredAuditRow>, StorageError> {
        page(self.0, after_id, limit).await
    }

    async fn head(&mut self) -> Result<String, StorageError> {
        self.0
            .query_one("SELECT hash FROM audit_head WHERE id = 1", &[])
            .await
            .pg()?
            .try_get(0)
            .pg()
    }

    async fn priors(
        &mut self,
        row_hashes: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let rows = self
            .0
            .query(
                "SELECT hash, data FROM audit_prior WHERE hash = ANY($1)",
                &[&row_hashes],
            )
            .await
            .pg()?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).pg()?, r.try_get(1).pg()?)))
            .collect()
    }
}

/// Up to `limit` rows after `after_id`, in id order.
async fn page(
    client: &impl GenericClient,
    after_id: i64,
    limit: i64,
) -> Result<Vec<StoredAuditRow>, StorageError> {
    let rows = client
        .query(
            "SELECT id, at, event, user_name, client_id, client_addr, op_id, collection, scope, \
             record_id, kind, old_version, new_version, code, detail, device, prior_sha256, \
             prev_hash, hash FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after_id, &limit],
        )
        .await
        .pg()?;
    rows.iter()
        .map(|r| {
            Ok(StoredAuditRow {
                id: r.try_get(0).pg()?,
                fields: AuditFields {
                    at: r.try_get(1).pg()?,
                    event: r.try_get(2).pg()?,
                    user: r.try_get(3).pg()?,
                    client_id: r.try_get(4).pg()?,
                    client_addr: r.try_get(5).pg()?,
                    op_id: r.try_get(6).pg()?,
                    collection: r.try_get(7).pg()?,
                    scope: r.try_get(8).pg()?,
                    record_id: r.try_get(9).pg()?,
                    kind: r.try_get(10).pg()?,
                    old_version: r.try_get(11).pg()?,
                    new_version: r.try_get(12).pg()?,
                    code: r.try_get(13).pg()?,
                    detail: r.try_get(14).pg()?,
                    device: r.try_get(15).pg()?,
                },
                prior_sha256: r.try_get(16).pg()?,
                prev_hash: r.try_get(17).pg()?,
                hash: r.try_get(18).pg()?,
            })
        })
        .collect()
}
