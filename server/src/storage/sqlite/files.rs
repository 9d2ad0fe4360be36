//! The SQLite rows of attachment files (see [`crate::storage::files`]): each call one
//! transaction on the writer, or one read.

use outpost_core::protocol::{AttachmentRef, refs_in};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::logic::{AccessRules, User};
use crate::push::RecordFiles;
use crate::storage::files::{Begin, FileAccess, StaleUpload, Upload};
use crate::storage::{StorageError, db_err};

/// The migration that adds the tables, by its number in `MIGRATIONS`.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE attachment_uploads (
    user       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    upload_id  TEXT NOT NULL,
    size       INTEGER NOT NULL,
    received   INTEGER NOT NULL,
    complete   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user, sha256)
) WITHOUT ROWID;
CREATE INDEX attachment_uploads_stale ON attachment_uploads (updated_at) WHERE complete = 0;
-- A file is stored once, whoever uploaded it.
CREATE TABLE attachment_blobs (
    sha256     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
-- Which live records refer to which file, kept with every record write.
CREATE TABLE attachment_refs (
    collection TEXT NOT NULL,
    scope      TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (collection, scope, record_id, sha256)
) WITHOUT ROWID;
CREATE INDEX attachment_refs_file ON attachment_refs (sha256);
"#;

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_upload(r: &rusqlite::Row<'_>) -> rusqlite::Result<Upload> {
    Ok(Upload {
        upload_id: r.get(0)?,
        size: r.get::<_, i64>(1)?.max(0) as u64,
        received: r.get::<_, i64>(2)?.max(0) as u64,
        complete: r.get(3)?,
    })
}

fn upload(conn: &Connection, user: &str, sha256: &str) -> Result<Option<Upload>, StorageError> {
    conn.prepare_cached(
        "SELECT upload_id, size, received, complete FROM attachment_uploads \
         WHERE user = ?1 AND sha256 = ?2",
    )
    .map_err(db_err)?
    .query_row(params![user, sha256], read_upload)
    .optional()
    .map_err(db_err)
}

/// Replaces the index entries of each record by the files it refers to now.
pub(super) fn index(tx: &Connection, records: &[RecordFiles<'_>]) -> Result<(), StorageError> {
    let mut clear = tx
        .prepare_cached(
            "DELETE FROM attachment_refs WHERE collection = ?1 AND scope = ?2 AND record_id = ?3",
        )
        .map_err(db_err)?;
    let mut add = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO attachment_refs (collection, scope, record_id, sha256, size) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db_err)?;
    for r in records {
        let k = r.key;
        clear
            .execute(params![k.collection, k.scope, k.record_id])
            .map_err(db_err)?;
        for f in &r.files {
            add.execute(params![
                k.collection,
                k.scope,
                k.record_id,
                f.sha256,
                as_i64(f.size)
            ])
            .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Indexes the records written before the index existed.
pub(super) fn backfill(tx: &Connection) -> Result<(), StorageError> {
    let rows: Vec<(String, String, String, String)> = tx
        .prepare(
            "SELECT collection, scope, record_id, data FROM records \
             WHERE deleted = 0 AND instr(data, '\"$attachment\"') > 0",
        )
        .map_err(db_err)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for (collection, scope, record_id, data) in rows {
        let Ok(obj) = serde_json::from_str(&data) else {
            continue;
        };
        let key = crate::logic::RecordKey {
            collection,
            scope,
            record_id,
        };
        let files: Vec<AttachmentRef> = refs_in(&obj);
        index(tx, &[RecordFiles { key: &key, files }])?;
    }
    Ok(())
}

pub(super) fn access(
    conn: &Connection,
    user: &User,
    rules: &AccessRules,
    sha256: &str,
) -> Result<FileAccess, StorageError> {
    let stored = conn
        .prepare_cached("SELECT size FROM attachment_blobs WHERE sha256 = ?1")
        .map_err(db_err)?
        .query_row([sha256], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .map(|n| n.max(0) as u64);
    let mut args = vec![SqlValue::Text(sha256.to_owned())];
    let filter = super::access_filter(rules, user, &mut args);
    let referenced = conn
        .prepare_cached(&format!(
            "SELECT size FROM attachment_refs WHERE sha256 = ? AND {filter} LIMIT 1"
        ))
        .map_err(db_err)?
        .query_row(params_from_iter(args), |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db_err)?
        .map(|n| n.max(0) as u64);
    Ok(FileAccess {
        upload: upload(conn, &user.name, sha256)?,
        stored,
        referenced,
    })
}

pub(super) fn begin(
    conn: &mut Connection,
    user: &str,
    sha256: &str,
    size: u64,
    quota: Option<u64>,
    upload_id: &str,
    now_ms: i64,
) -> Result<Begin, StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    if let Some(u) = upload(&tx, user, sha256)? {
        return Ok(if u.size == size {
            Begin::Open(u)
        } else {
            Begin::SizeDiffers { size: u.size }
        });
    }
    if let Some(quota) = quota {
        let used: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM attachment_uploads WHERE user = ?1",
                [user],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Ok(Begin::OverQuota { used, quota });
        }
    }
    tx.execute(
        "INSERT INTO attachment_uploads (user, sha256, upload_id, size, received, complete, \
         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?5)",
        params![user, sha256, upload_id, as_i64(size), now_ms],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Begin::Open(Upload {
        upload_id: upload_id.to_owned(),
        size,
        received: 0,
        complete: false,
    }))
}

pub(super) fn advance(
    conn: &mut Connection,
    user: &str,
    sha256: &str,
    upload_id: &str,
    from: u64,
    to: u64,
    now_ms: i64,
) -> Result<Option<Upload>, StorageError> {
    conn.prepare_cached(
        "UPDATE attachment_uploads SET received = ?5, updated_at = ?6 \
         WHERE user = ?1 AND sha256 = ?2 AND upload_id = ?3 AND complete = 0 \
           AND received >= ?4 AND received < ?5",
    )
    .map_err(db_err)?
    .execute(params![
        user,
        sha256,
        upload_id,
        as_i64(from),
        as_i64(to),
        now_ms
    ])
    .map_err(db_err)?;
    upload(conn, user, sha256)
}

pub(super) fn complete(
    conn: &mut Connection,
    user: &str,
    sha256: &str,
    upload_id: &str,
    size: u64,
    now_ms: i64,
) -> Result<(), StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute(
        "UPDATE attachment_uploads SET complete = 1, received = size, updated_at = ?4 \
         WHERE user = ?1 AND sha256 = ?2 AND upload_id = ?3",
        params![user, sha256, upload_id, now_ms],
    )
    .map_err(db_err)?;
    tx.execute(
        "INSERT OR IGNORE INTO attachment_blobs (sha256, size, created_at) VALUES (?1, ?2, ?3)",
        params![sha256, as_i64(size), now_ms],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

pub(super) fn drop_upload(
    conn: &mut Connection,
    user: &str,
    sha256: &str,
    upload_id: &str,
) -> Result<(), StorageError> {
    conn.execute(
        "DELETE FROM attachment_uploads WHERE user = ?1 AND sha256 = ?2 AND upload_id = ?3 \
         AND complete = 0",
        params![user, sha256, upload_id],
    )
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn stale(
    conn: &Connection,
    before_ms: i64,
    limit: i64,
) -> Result<Vec<StaleUpload>, StorageError> {
    conn.prepare_cached(
        "SELECT user, sha256, upload_id FROM attachment_uploads \
         WHERE complete = 0 AND updated_at < ?1 ORDER BY updated_at LIMIT ?2",
    )
    .map_err(db_err)?
    .query_map(params![before_ms, limit], |r| {
        Ok(StaleUpload {
            user: r.get(0)?,
            sha256: r.get(1)?,
            upload_id: r.get(2)?,
        })
    })
    .map_err(db_err)?
    .collect::<Result<_, _>>()
    .map_err(db_err)
}
