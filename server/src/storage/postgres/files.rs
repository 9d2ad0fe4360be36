//! The PostgreSQL rows of attachment files (see [`crate::storage::files`]).
//!
//! Every statement is one round trip that any server process may run at the same
//! moment as another: an upload's `received` moves by a compare-and-set, a quota is
//! checked under the user's advisory lock, and a stored file is inserted once.

use deadpool_postgres::GenericClient;
use outpost_core::protocol::refs_in;
use tokio_postgres::Row;

use super::{Pg, READABLE_RULE, lock_key, rule};
use crate::logic::{self, Access, AccessRules, User};
use crate::push::RecordFiles;
use crate::storage::StorageError;
use crate::storage::files::{Begin, FileAccess, StaleUpload, Upload};

/// The migration that adds the tables.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE attachment_uploads (
    user_name  TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    upload_id  TEXT NOT NULL,
    size       BIGINT NOT NULL,
    received   BIGINT NOT NULL,
    complete   BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_name, sha256)
);
CREATE INDEX attachment_uploads_stale ON attachment_uploads (updated_at) WHERE NOT complete;
-- A file is stored once, whoever uploaded it.
CREATE TABLE attachment_blobs (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Which live records refer to which file, kept with every record write.
CREATE TABLE attachment_refs (
    collection TEXT NOT NULL,
    scope      TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       BIGINT NOT NULL,
    PRIMARY KEY (collection, scope, record_id, sha256)
);
CREATE INDEX attachment_refs_file ON attachment_refs (sha256);
"#;

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_upload(r: &Row) -> Result<Upload, StorageError> {
    Ok(Upload {
        upload_id: r.try_get(0).pg()?,
        size: r.try_get::<_, i64>(1).pg()?.max(0) as u64,
        received: r.try_get::<_, i64>(2).pg()?.max(0) as u64,
        complete: r.try_get(3).pg()?,
    })
}

const SELECT_UPLOAD: &str = "SELECT upload_id, size, received, complete FROM attachment_uploads \
     WHERE user_name = $1 AND sha256 = $2";

async fn upload(
    c: &impl GenericClient,
    user: &str,
    sha256: &str,
) -> Result<Option<Upload>, StorageError> {
    let st = c.prepare_cached(SELECT_UPLOAD).await.pg()?;
    c.query_opt(&st, &[&user, &sha256])
        .await
        .pg()?
        .map(|r| read_upload(&r))
        .transpose()
}

/// Replaces the index entries of each record, in the push's transaction.
pub(super) async fn index(
    tx: &impl GenericClient,
    records: &[RecordFiles<'_>],
) -> Result<(), StorageError> {
    let st_clear = tx
        .prepare_cached(
            "DELETE FROM attachment_refs r USING unnest($1::text[], $2::text[], $3::text[]) \
                 AS g(collection, scope, record_id) \
             WHERE r.collection = g.collection AND r.scope = g.scope \
               AND r.record_id = g.record_id",
        )
        .await
        .pg()?;
    let st_add = tx
        .prepare_cached(
            "INSERT INTO attachment_refs (collection, scope, record_id, sha256, size) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
             ON CONFLICT DO NOTHING",
        )
        .await
        .pg()?;
    let keys = |f: fn(&logic::RecordKey) -> &str| -> Vec<&str> {
        records.iter().map(|r| f(r.key)).collect()
    };
    tx.execute(
        &st_clear,
        &[
            &keys(|k| &k.collection),
            &keys(|k| &k.scope),
            &keys(|k| &k.record_id),
        ],
    )
    .await
    .pg()?;
    let (mut cols, mut scopes, mut ids, mut shas, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in records {
        for f in &r.files {
            cols.push(r.key.collection.as_str());
            scopes.push(r.key.scope.as_str());
            ids.push(r.key.record_id.as_str());
            shas.push(f.sha256.as_str());
            sizes.push(as_i64(f.size));
        }
    }
    if !shas.is_empty() {
        tx.execute(&st_add, &[&cols, &scopes, &ids, &shas, &sizes])
            .await
            .pg()?;
    }
    Ok(())
}

/// Indexes the records written before the index existed.
pub(super) async fn backfill(c: &impl GenericClient) -> Result<(), StorageError> {
    let rows = c
        .query(
            "SELECT collection, scope, record_id, data FROM records \
             WHERE NOT deleted AND strpos(data, '\"$attachment\"') > 0",
            &[],
        )
        .await
        .pg()?;
    for r in rows {
        let data: String = r.try_get(3).pg()?;
        let Ok(obj) = serde_json::from_str(&data) else {
            continue;
        };
        let key = logic::RecordKey {
            collection: r.try_get(0).pg()?,
            scope: r.try_get(1).pg()?,
            record_id: r.try_get(2).pg()?,
        };
        index(
            c,
            &[RecordFiles {
                key: &key,
                files: refs_in(&obj),
            }],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn access(
    c: &impl GenericClient,
    user: &User,
    rules: &AccessRules,
    sha256: &str,
) -> Result<FileAccess, StorageError> {
    let st_blob = c
        .prepare_cached("SELECT size FROM attachment_blobs WHERE sha256 = $1")
        .await
        .pg()?;
    let st_ref = c
        .prepare_cached(&format!(
            "SELECT size FROM attachment_refs r WHERE sha256 = $1 AND {READABLE_RULE} LIMIT 1"
        ))
        .await
        .pg()?;
    let stored = c
        .query_opt(&st_blob, &[&sha256])
        .await
        .pg()?
        .map(|r| r.try_get::<_, i64>(0).pg())
        .transpose()?
        .map(|n| n.max(0) as u64);
    let names: Vec<&str> = rules.named.iter().map(|(n, _)| n.as_str()).collect();
    let kinds: Vec<&str> = rules.named.iter().map(|(_, a)| rule(*a)).collect();
    let own = logic::scope_of(Access::Private, user);
    let team = logic::scope_of(Access::Team, user);
    let referenced = c
        .query_opt(
            &st_ref,
            &[&sha256, &names, &kinds, &rule(rules.default), &own, &team],
        )
        .await
        .pg()?
        .map(|r| r.try_get::<_, i64>(0).pg())
        .transpose()?
        .map(|n| n.max(0) as u64);
    Ok(FileAccess {
        upload: upload(c, &user.name, sha256).await?,
        stored,
        referenced,
    })
}

pub(super) async fn begin(
    client: &mut deadpool_postgres::Client,
    user: &str,
    sha256: &str,
    size: u64,
    quota: Option<u64>,
    upload_id: &str,
    now_ms: i64,
) -> Result<Begin, StorageError> {
    let tx = client.transaction().await.pg()?;
    // One user's uploads start one at a time, in every process, so two cannot both
    // fit in the quota that only one fits in.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("upload-quota", &[user])],
    )
    .await
    .pg()?;
    if let Some(u) = upload(&tx, user, sha256).await? {
        return Ok(if u.size == size {
            Begin::Open(u)
        } else {
            Begin::SizeDiffers { size: u.size }
        });
    }
    if let Some(quota) = quota {
        let used: i64 = tx
            .query_one(
                "SELECT COALESCE(SUM(size), 0)::bigint FROM attachment_uploads \
                 WHERE user_name = $1",
                &[&user],
            )
            .await
            .pg()?
            .try_get(0)
            .pg()?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Ok(Begin::OverQuota { used, quota });
        }
    }
    tx.execute(
        "INSERT INTO attachment_uploads (user_name, sha256, upload_id, size, received, \
         complete, created_at, updated_at) VALUES ($1, $2, $3, $4, 0, false, $5, $5)",
        &[&user, &sha256, &upload_id, &as_i64(size), &now_ms],
    )
    .await
    .pg()?;
    tx.commit().await.pg()?;
    Ok(Begin::Open(Upload {
        upload_id: upload_id.to_owned(),
        size,
        received: 0,
        complete: false,
    }))
}

pub(super) async fn advance(
    c: &impl GenericClient,
    user: &str,
    sha256: &str,
    upload_id: &str,
    from: u64,
    to: u64,
    now_ms: i64,
) -> Result<Option<Upload>, StorageError> {
    c.execute(
        "UPDATE attachment_uploads SET received = $5, updated_at = $6 \
         WHERE user_name = $1 AND sha256 = $2 AND upload_id = $3 AND NOT complete \
           AND received >= $4 AND received < $5",
        &[
            &user,
            &sha256,
            &upload_id,
            &as_i64(from),
            &as_i64(to),
            &now_ms,
        ],
    )
    .await
    .pg()?;
    upload(c, user, sha256).await
}

pub(super) async fn complete(
    client: &mut deadpool_postgres::Client,
    user: &str,
    sha256: &str,
    upload_id: &str,
    size: u64,
    now_ms: i64,
) -> Result<(), StorageError> {
    let tx = client.transaction().await.pg()?;
    tx.execute(
        "UPDATE attachment_uploads SET complete = true, received = size, updated_at = $4 \
         WHERE user_name = $1 AND sha256 = $2 AND upload_id = $3",
        &[&user, &sha256, &upload_id, &now_ms],
    )
    .await
    .pg()?;
    tx.execute(
        "INSERT INTO attachment_blobs (sha256, size, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sha256) DO NOTHING",
        &[&sha256, &as_i64(size), &now_ms],
    )
    .await
    .pg()?;
    tx.commit().await.pg()
}

pub(super) async fn drop_upload(
    c: &impl GenericClient,
    user: &str,
    sha256: &str,
    upload_id: &str,
) -> Result<(), StorageError> {
    c.execute(
        "DELETE FROM attachment_uploads WHERE user_name = $1 AND sha256 = $2 \
         AND upload_id = $3 AND NOT complete",
        &[&user, &sha256, &upload_id],
    )
    .await
    .pg()?;
    Ok(())
}

pub(super) async fn stale(
    c: &impl GenericClient,
    before_ms: i64,
    limit: i64,
) -> Result<Vec<StaleUpload>, StorageError> {
    c.query(
        "SELECT user_name, sha256, upload_id FROM attachment_uploads \
         WHERE NOT complete AND updated_at < $1 ORDER BY updated_at LIMIT $2",
        &[&before_ms, &limit],
    )
    .await
    .pg()?
    .iter()
    .map(|r| {
        Ok(StaleUpload {
            user: r.try_get(0).pg()?,
            sha256: r.try_get(1).pg()?,
            upload_id: r.try_get(2).pg()?,
        })
    })
    .collect()
}
