//! The `meta` table: the device's identity, the saved clock and the engine's small
//! persisted facts, under typed keys.
//!
//! One key enum rather than strings at call sites, so a misspelt key cannot read or
//! write a value nobody else looks at.

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::Hlc;
use crate::error::{Error, Result};

/// A key of the `meta` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    /// This install's id, sent with every push.
    ClientId,
    /// This device's replica id, in HLC stamps and CRDT keys.
    ReplicaId,
    /// The clock, saved when rows holding its stamps go.
    Clock,
    /// When the last sync completed (ms), so "last synced" survives restarts.
    LastSyncedAt,
    /// No automatic retry before this time (ms); 0 for none.
    RetryAt,
    /// The generation of an unfinished full re-pull of a collection.
    Resync(&'a str),
    /// The search fields a collection's search table was built for.
    Search(&'a str),
    /// The user whose data the live tables hold; absent while they hold no user's.
    Owner,
    /// The largest upload request the way to the server takes (bytes), once a proxy
    /// before it refused a larger one; absent while none has.
    UploadLimit,
}

impl Key<'_> {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Key::ClientId => "client_id".into(),
            Key::ReplicaId => "replica_id".into(),
            Key::Clock => "hlc".into(),
            Key::LastSyncedAt => "last_synced_at".into(),
            Key::RetryAt => "retry_at".into(),
            Key::Resync(collection) => format!("resync:{collection}").into(),
            Key::Search(collection) => format!("search:{collection}").into(),
            Key::Owner => "owner".into(),
            Key::UploadLimit => "upload_limit".into(),
        }
    }
}

pub(crate) fn get(conn: &Connection, key: &Key<'_>) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key.name()], |r| r.get(0))
        .optional()?)
}

/// A value stored as a number. One that does not parse is a corrupt row, never read
/// as absent: a re-pull's generation or a retry time must not silently reset.
pub(crate) fn get_i64(conn: &Connection, key: &Key<'_>) -> Result<Option<i64>> {
    get(conn, key)?
        .map(|v| {
            v.parse()
                .map_err(|_| Error::corrupt("meta", &key.name(), &v))
        })
        .transpose()
}

pub(crate) fn set(conn: &Connection, key: &Key<'_>, value: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key.name(), value])?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, key: &Key<'_>) -> Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
        .execute([key.name()])?;
    Ok(())
}

/// Forgets the signed-out user's facts: the owner, the replica id their stamps and
/// CRDT entries carry (the next user gets a fresh one, so two users' edits never share
/// a CRDT entry), and the engine's facts about their syncs. The install's client id,
/// the clock and the collections' search fields stay: they belong to the device.
pub(crate) fn forget_user(conn: &Connection) -> Result<()> {
    for key in [Key::Owner, Key::ReplicaId, Key::LastSyncedAt, Key::RetryAt] {
        remove(conn, &key)?;
    }
    conn.prepare_cached("DELETE FROM meta WHERE key LIKE 'resync:%'")?
        .execute([])?;
    Ok(())
}

/// Only [`super::Tx`] saves the clock, at commit.
pub(super) fn save_clock(conn: &Connection, last: &Hlc) -> Result<()> {
    set(conn, &Key::Clock, &last.to_string())
}

pub(super) fn saved_clock(conn: &Connection) -> Result<Option<String>> {
    get(conn, &Key::Clock)
}

/// The replica and client ids, minted once per database.
pub(super) fn identity(conn: &Connection) -> Result<(String, String)> {
    let client_id = get_or_mint(conn, &Key::ClientId, || uuid::Uuid::new_v4().to_string())?;
    // 64 random bits: short in every HLC stamp and CRDT key, unique in practice.
    let replica_id = get_or_mint(conn, &Key::ReplicaId, || {
        uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
    })?;
    Ok((replica_id, client_id))
}

fn get_or_mint(conn: &Connection, key: &Key<'_>, mint: impl FnOnce() -> String) -> Result<String> {
    if let Some(v) = get(conn, key)? {
        return Ok(v);
    }
    let v = mint();
    set(conn, key, &v)?;
    Ok(v)
}
