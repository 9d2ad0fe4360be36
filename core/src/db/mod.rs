//! The device database's connections: one writer, a pool of readers, and the handles
//! that interrupt them.
//!
//! SQLite allows one writer at a time, so every write goes through the single writer
//! connection behind a mutex (waiting there, not in busy-retry loops), and WAL lets
//! queries read committed snapshots on their own connections meanwhile. Each table has
//! one owner module below with the only SQL that writes it; [`Tx`] is what they take,
//! and it keeps the one rule that spans tables: the clock resumes from the stamps
//! stored in rows, so a transaction that drops such rows saves the clock itself. The
//! writer connection refuses any other DELETE of those rows, so the rule cannot be
//! skipped by a plain statement.

pub(crate) mod attachments;
pub(crate) mod conflicts;
pub(crate) mod cursors;
pub(crate) mod files;
pub(crate) mod indexes;
pub(crate) mod meta;
pub(crate) mod outbox;
pub(crate) mod records;
pub(crate) mod schema;
pub(crate) mod seals;

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, InterruptHandle, OpenFlags, Params, Transaction};

use crate::clock::{Hlc, HybridClock};
use crate::config::{Collections, Durability, StoreConfig};
use crate::error::{Error, Result};
use crate::protocol::JsonObject;

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent
/// (SQLite rolls back an unfinished transaction), so a panic elsewhere must not make the
/// store unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stored value this build cannot read, as the error rusqlite reports it.
pub(crate) fn unreadable(
    col: usize,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

/// A column holding a JSON object, or NULL.
pub(crate) fn json_col(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<Option<JsonObject>> {
    let s: Option<String> = r.get(col)?;
    s.map(|s| serde_json::from_str::<JsonObject>(&s))
        .transpose()
        .map_err(|e| unreadable(col, e))
}

/// How connections are opened: the parts of the store config SQLite sees.
#[derive(Clone)]
struct OpenSettings {
    durability: Durability,
    encryption_key: Option<Vec<u8>>,
    busy_timeout: std::time::Duration,
    read_connections: usize,
}

struct Writer {
    conn: Connection,
    clock: HybridClock,
}

/// A pooled read connection and the key of its interrupt handle.
struct Reader {
    conn: Connection,
    key: u64,
}

/// The open database: its writer, its readers and their interrupt handles.
pub(crate) struct Db {
    path: PathBuf,
    settings: OpenSettings,
    writer: Mutex<Option<Writer>>,
    readers: Mutex<Vec<Reader>>,
    // Outside the connection locks, so `interrupt` and `close` reach a busy query.
    // Keyed so that a reader dropped past the pool size takes its handle with it.
    interrupts: Mutex<HashMap<u64, InterruptHandle>>,
    next_key: AtomicU64,
    closed: AtomicBool,
    replica_id: String,
    client_id: String,
    user: Option<String>,
    // Registered while open, so the files are not deleted under it.
    file: Mutex<Option<files::OpenFile>>,
}

impl Db {
    /// Opens (or creates) the database, migrates it, and returns entries a crash left
    /// in flight to pending.
    pub(crate) fn open(path: &Path, config: &StoreConfig, collections: &Collections) -> Result<Db> {
        let settings = OpenSettings {
            durability: config.durability,
            encryption_key: config.encryption_key.clone(),
            busy_timeout: config.busy_timeout,
            read_connections: config.read_connections,
        };
        let mut conn = open_connection(path, &settings, false)?;
        conn.authorizer(Some(only_stamped_deletes))?;
        schema::migrate(&mut conn)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        indexes::apply(&tx, collections)?;
        tx.commit()?;
        seat(&mut conn, config.user_id.as_deref())?;
        let (replica_id, client_id) = meta::identity(&conn)?;
        let clock = recover_clock(&conn, &replica_id)?;
        outbox::release_all(&conn)?;
        let interrupts = HashMap::from([(0, conn.get_interrupt_handle())]);
        Ok(Db {
            path: path.to_path_buf(),
            settings,
            writer: Mutex::new(Some(Writer { conn, clock })),
            readers: Mutex::new(Vec::new()),
            interrupts: Mutex::new(interrupts),
            next_key: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            replica_id,
            client_id,
            user: config.user_id.clone(),
            file: Mutex::new(Some(files::OpenFile::register(path))),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The user the database was opened for.
    pub(crate) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// What a caller sees of a statement that `close` interrupted: the store closed
    /// under it, not an interrupt it asked for.
    pub(crate) fn closed_if_interrupted<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::Interrupted) if self.is_closed() => Err(Error::Closed),
            r => r,
        }
    }

    /// Stops any running query with [`Error::Interrupted`].
    pub(crate) fn interrupt(&self) {
        for h in lock(&self.interrupts).values() {
            h.interrupt();
        }
    }

    /// Interrupts running queries, drops every connection and folds the WAL back so
    /// the file is complete on its own. Returns false if it was already closed.
    pub(crate) fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.interrupt();
        lock(&self.readers).clear();
        let writer = lock(&self.writer).take();
        self.release(writer);
        true
    }

    /// Runs `last` as the final transaction and closes, holding the writer throughout,
    /// so no write can land between them, then rewrites the file (VACUUM) so that what
    /// `last` deleted is gone from it, not only from its tables. If `last` fails,
    /// nothing changes and the database stays open.
    pub(crate) fn close_after(
        &self,
        now_ms: i64,
        last: impl FnOnce(&mut Tx<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut guard = self.writer()?;
        let mut tx = guard.begin(now_ms)?;
        last(&mut tx)?;
        tx.commit()?;
        self.closed.store(true, Ordering::SeqCst);
        let writer = guard.0.take();
        drop(guard);
        self.interrupt();
        lock(&self.readers).clear();
        if let Some(Err(e)) = writer.as_ref().map(|w| w.conn.execute_batch("VACUUM")) {
            // The data is gone from every table already; only its old pages remain.
            tracing::error!(error = %e, "could not rewrite the file after removing data");
        }
        self.release(writer);
        Ok(())
    }

    /// Folds the WAL back so the file is complete on its own, drops the writer and
    /// unregisters the file.
    fn release(&self, writer: Option<Writer>) {
        if let Some(Err(e)) =
            writer.map(|w| w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
        {
            tracing::warn!(error = %e, "checkpoint at close failed; the WAL stays beside the file");
        }
        lock(&self.file).take();
    }

    /// The writer, locked: writes queue here rather than in SQLite's busy handler.
    pub(crate) fn writer(&self) -> Result<WriterGuard<'_>> {
        self.check_open()?;
        Ok(WriterGuard(lock(&self.writer)))
    }

    /// Runs `f` on a read connection (never the writer), so reads do not wait on writes.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.check_open()?;
        let pooled = lock(&self.readers).pop();
        let reader = match pooled {
            Some(r) => r,
            None => {
                let conn = open_connection(&self.path, &self.settings, true)?;
                let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                lock(&self.interrupts).insert(key, conn.get_interrupt_handle());
                Reader { conn, key }
            }
        };
        let out = f(&reader.conn);
        let mut pool = lock(&self.readers);
        if !self.is_closed() && pool.len() < self.settings.read_connections.max(1) {
            pool.push(reader);
        } else {
            drop(pool);
            lock(&self.interrupts).remove(&reader.key);
        }
        self.closed_if_interrupted(out)
    }

    /// The highest stamp this device has issued or seen.
    pub(crate) fn last_hlc(&self) -> Result<Hlc> {
        let guard = lock(&self.writer);
        let w = guard.as_ref().ok_or(Error::Closed)?;
        Ok(w.clock.last().clone())
    }

    /// Replaces the ids minted at creation, before any row holds a stamp of the old
    /// replica id. This handle keeps the old ids; the next open has the new ones.
    pub(crate) fn seed_identity(&self, replica_id: &str, client_id: &str) -> Result<()> {
        if format!("0000000000000-00000-{replica_id}")
            .parse::<Hlc>()
            .is_err()
        {
            return Err(Error::InvalidConfig(format!(
                "unusable replica id {replica_id:?}"
            )));
        }
        let mut w = self.writer()?;
        let tx = w.begin(0)?;
        if records::max_hlc(&tx)?.is_some() || outbox::max_hlc(&tx)?.is_some() {
            return Err(Error::InvalidConfig(
                "an identity is seeded only before the first edit".into(),
            ));
        }
        meta::set(&tx, &meta::Key::ReplicaId, replica_id)?;
        meta::set(&tx, &meta::Key::ClientId, client_id)?;
        tx.commit()
    }

    #[cfg(test)]
    pub(crate) fn interrupt_handles(&self) -> usize {
        lock(&self.interrupts).len()
    }
}

/// The locked writer connection, with the clock that stamps its edits.
pub(crate) struct WriterGuard<'a>(MutexGuard<'a, Option<Writer>>);

impl WriterGuard<'_> {
    /// Begins an immediate transaction, `now_ms` being its time. Nothing of it is kept
    /// unless [`Tx::commit`] is called.
    pub(crate) fn begin(&mut self, now_ms: i64) -> Result<Tx<'_>> {
        let Writer { conn, clock } = self.0.as_mut().ok_or(Error::Closed)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(Tx::new(tx, clock, now_ms))
    }
}

/// The tables whose rows hold HLC stamps the clock resumes from.
const STAMPED_TABLES: [&str; 2] = ["records", "outbox"];

thread_local! {
    /// Set while [`Tx::delete_stamped`] or [`Tx::take_stamped`] prepares and runs its
    /// statement. SQLite asks the authorizer on the thread that prepares.
    static STAMPED_DELETE: Cell<bool> = const { Cell::new(false) };
}

/// The writer's authorizer: a DELETE from a stamped table is compiled only inside
/// [`Tx::delete_stamped`], which saves the clock with the commit.
fn only_stamped_deletes(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Delete { table_name }
            if STAMPED_TABLES.contains(&table_name) && !STAMPED_DELETE.with(Cell::get) =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

/// Allows stamped deletes on this thread until dropped.
struct StampedDelete;

impl StampedDelete {
    fn allow() -> StampedDelete {
        STAMPED_DELETE.with(|c| c.set(true));
        StampedDelete
    }
}

impl Drop for StampedDelete {
    fn drop(&mut self) {
        STAMPED_DELETE.with(|c| c.set(false));
    }
}

/// A write transaction on the writer, with the clock it stamps edits with.
///
/// Owner modules take `&Tx` to write their table; deleting rows goes through
/// [`Tx::delete_stamped`], because those rows may hold the highest stamp stored (the
/// writer refuses a DELETE of them compiled anywhere else).
pub(crate) struct Tx<'a> {
    tx: Transaction<'a>,
    clock: &'a mut HybridClock,
    now: i64,
    save_clock: bool,
}

impl<'a> Deref for Tx<'a> {
    type Target = Transaction<'a>;
    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

impl<'a> Tx<'a> {
    /// `now_ms` is the transaction's time; `clock` the clock it stamps with and saves.
    pub(super) fn new(tx: Transaction<'a>, clock: &'a mut HybridClock, now_ms: i64) -> Tx<'a> {
        Tx {
            tx,
            clock,
            now: now_ms,
            save_clock: false,
        }
    }

    /// The wall-clock time of this transaction (ms since the epoch).
    pub(crate) fn now(&self) -> i64 {
        self.now
    }

    /// A new stamp for a local edit.
    pub(crate) fn tick(&mut self) -> Hlc {
        self.clock.tick(self.now.max(0) as u64)
    }

    /// Takes in a stamp seen from the server, so later local stamps sort after it.
    /// It may end up in no row (a tombstone, a stash), so the clock is saved.
    pub(crate) fn observe(&mut self, hlc: &str) {
        if let Ok(h) = hlc.parse::<Hlc>() {
            self.save_clock |= self.clock.observe(&h, self.now.max(0) as u64);
        }
    }

    /// Runs a DELETE of rows that hold HLC stamps. The clock resumes at open from the
    /// highest stamp stored, so once such rows go it must be saved with the commit, or
    /// it could go back across a restart. Every delete of `records` and `outbox` rows
    /// goes through here.
    pub(crate) fn delete_stamped(&mut self, sql: &str, params: impl Params) -> Result<usize> {
        let _allowed = StampedDelete::allow();
        let n = self.tx.prepare_cached(sql)?.execute(params)?;
        self.save_clock |= n > 0;
        Ok(n)
    }

    /// [`Tx::delete_stamped`] for a `DELETE … RETURNING` of one row.
    pub(crate) fn take_stamped<T>(
        &mut self,
        sql: &str,
        params: impl Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        use rusqlite::OptionalExtension;
        let _allowed = StampedDelete::allow();
        let out = self
            .tx
            .prepare_cached(sql)?
            .query_row(params, row)
            .optional()?;
        self.save_clock |= out.is_some();
        Ok(out)
    }

    pub(crate) fn commit(self) -> Result<()> {
        if self.save_clock {
            meta::save_clock(&self.tx, self.clock.last())?;
        }
        self.tx.commit()?;
        Ok(())
    }
}

fn open_connection(path: &Path, settings: &OpenSettings, read_only: bool) -> Result<Connection> {
    let mode = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    let flags = mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    apply_key(&conn, settings.encryption_key.as_deref())?;
    // Fails with NOTADB (WrongKey) when the key does not fit, before anything is written.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    conn.busy_timeout(settings.busy_timeout)?;
    // Android has no writable temp directory; keep temporary tables in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    let sync = match settings.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // On Apple systems fsync only reaches the drive's cache; F_FULLFSYNC flushes it, which
    // is what surviving a power loss needs. SQLite ignores it elsewhere.
    let full = settings.durability == Durability::Full;
    conn.pragma_update(None, "fullfsync", full)?;
    conn.pragma_update(None, "checkpoint_fullfsync", full)?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Database(format!(
                "could not enable WAL (journal_mode={mode})"
            )));
        }
    }
    register_functions(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// SQL functions the query builder uses, on every connection.
fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    // Unicode lowercasing, which SQLite's own lower() does only for ASCII.
    conn.create_scalar_function(
        "outpost_starts_with_ci",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let text = ctx.get::<Option<String>>(0)?;
            let prefix = ctx.get::<Option<String>>(1)?;
            Ok(match (text, prefix) {
                (Some(t), Some(p)) => t.to_lowercase().starts_with(&p.to_lowercase()),
                _ => false,
            })
        },
    )?;
    Ok(())
}

#[cfg(feature = "encryption")]
fn apply_key(conn: &Connection, key: Option<&[u8]>) -> Result<()> {
    if let Some(key) = key {
        use std::fmt::Write;
        let mut hex = String::with_capacity(key.len() * 2);
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        // A raw 256-bit key: no passphrase derivation, so opening stays fast.
        conn.execute_batch(&format!("PRAGMA key = \"x'{hex}'\";"))?;
    }
    Ok(())
}

#[cfg(not(feature = "encryption"))]
fn apply_key(_conn: &Connection, key: Option<&[u8]>) -> Result<()> {
    match key {
        Some(_) => Err(Error::EncryptionUnavailable),
        None => Ok(()),
    }
}

/// Makes sure the live tables are `user`'s, or no one's, before anything reads them. A
/// database that holds another user's data (or, opened with no user, any user's) is
/// refused unchanged. One that holds no user's is claimed: a user who left sealed
/// data at sign-out gets it back, and the first user to open a database written
/// before user ids takes over its data.
fn seat(conn: &mut Connection, user: Option<&str>) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let owner = meta::get(&tx, &meta::Key::Owner)?;
    match (owner, user) {
        (Some(holder), Some(user)) if holder == user => Ok(()),
        (Some(holder), _) => Err(Error::WrongUser {
            holder: Some(holder),
        }),
        (None, None) => Ok(()),
        (None, Some(user)) => {
            if seals::replica(&tx, user)?.is_some() {
                // Her seal and data written without a user id cannot be told apart
                // once merged: that data must be signed out first.
                if !seals::live_is_empty(&tx)? {
                    return Err(Error::WrongUser { holder: None });
                }
                seals::unseal(&tx, user)?;
            }
            meta::set(&tx, &meta::Key::Owner, user)?;
            tx.commit()?;
            Ok(())
        }
    }
}

/// The clock resumes above every stamp stored, so it never goes back across restarts.
pub(super) fn recover_clock(conn: &Connection, replica: &str) -> Result<HybridClock> {
    let mut clock = HybridClock::new(replica, 0, 0);
    let stamps = [
        records::max_hlc(conn)?,
        outbox::max_hlc(conn)?,
        meta::saved_clock(conn)?,
    ];
    for s in stamps.into_iter().flatten() {
        if let Ok(h) = s.parse::<Hlc>() {
            // Stored stamps were accepted once; trust them regardless of drift.
            clock.observe(&h, h.millis);
        }
    }
    Ok(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_past_the_pool_size_leave_no_interrupt_handle_behind() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            read_connections: 1,
            ..StoreConfig::default()
        };
        let db = Db::open(&dir.path().join("s.db"), &config, &Collections::default()).unwrap();
        for _ in 0..20 {
            // Nested reads need a second connection while the pooled one is busy.
            db.read(|_| db.read(|c| Ok(c.is_autocommit()))).unwrap();
        }
        // The writer's handle, the pooled reader's, and nothing for the 20 extra ones.
        assert_eq!(db.interrupt_handles(), 2);
    }

    #[test]
    fn a_query_that_close_cuts_short_reports_the_store_closed() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::default();
        let db = Db::open(&dir.path().join("s.db"), &config, &Collections::default()).unwrap();
        let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                       SELECT count(*) FROM n";
        let (started, running) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let reading = s.spawn(|| {
                db.read(|c| {
                    started.send(()).unwrap();
                    Ok(c.query_row(endless, [], |r| r.get::<_, i64>(0))?)
                })
            });
            running.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(db.close());
            assert_eq!(reading.join().unwrap(), Err(Error::Closed));
        });
        // Not closed, an interrupt is what it is.
        let open = Db::open(&dir.path().join("t.db"), &config, &Collections::default()).unwrap();
        assert_eq!(
            open.closed_if_interrupted::<()>(Err(Error::Interrupted)),
            Err(Error::Interrupted)
        );
    }

    #[test]
    fn full_durability_asks_for_a_full_fsync_on_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, expected) in [(Durability::Full, 1), (Durability::Normal, 0)] {
            let config = StoreConfig {
                durability,
                ..StoreConfig::default()
            };
            let path = dir.path().join(format!("{durability:?}.db"));
            let db = Db::open(&path, &config, &Collections::default()).unwrap();
            let pragmas = |c: &Connection| -> Result<(i64, i64)> {
                Ok((
                    c.query_row("PRAGMA fullfsync", [], |r| r.get(0))?,
                    c.query_row("PRAGMA checkpoint_fullfsync", [], |r| r.get(0))?,
                ))
            };
            assert_eq!(
                db.read(pragmas).unwrap(),
                (expected, expected),
                "reader, {durability:?}"
            );
            let mut w = db.writer().unwrap();
            let tx = w.begin(1).unwrap();
            assert_eq!(
                pragmas(&tx).unwrap(),
                (expected, expected),
                "writer, {durability:?}"
            );
        }
    }

    #[test]
    fn the_writer_refuses_a_delete_of_stamped_rows_that_would_not_save_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::default();
        let db = Db::open(&dir.path().join("s.db"), &config, &Collections::default()).unwrap();
        let mut w = db.writer().unwrap();
        let mut tx = w.begin(1).unwrap();
        for table in STAMPED_TABLES {
            let plain = tx.execute(&format!("DELETE FROM {table}"), []);
            assert!(
                matches!(&plain, Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::AuthorizationForStatementDenied),
                "{table}: {plain:?}"
            );
            let stamped = tx.delete_stamped(&format!("DELETE FROM {table}"), []);
            assert_eq!(stamped, Ok(0), "{table}");
        }
        // Once the stamped delete is over, a plain one is refused again.
        assert!(tx.execute("DELETE FROM outbox WHERE id = 7", []).is_err());
        // Tables without stamps are not guarded.
        tx.execute("DELETE FROM cursors", []).unwrap();
        tx.commit().unwrap();
    }
}
