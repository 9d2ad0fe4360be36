//! How an app configures a store: its collections, their conflict strategies, and
//! the durability and encryption trade-offs.
//!
//! Collections are declared up front so that a typo in a collection name is an error
//! at the call site, not a silently separate data set that never syncs as intended.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::validate_collection;

/// What happens when the server reports that a record changed under a local edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConflictStrategy {
    /// Take the server's record; the local version goes to the conflict log.
    ServerWins,
    /// Resend the local record with `force`, as a new op.
    ClientWins,
    /// The edit with the larger HLC stamp wins, field by field.
    #[default]
    LastWriteWins,
    /// Three-way merge against the last synced base; fields changed on both sides fall
    /// back to last-write-wins.
    FieldMerge,
    /// Mark the record conflicted and let the app decide through `resolve`.
    Manual,
}

impl ConflictStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictStrategy::ServerWins => "server_wins",
            ConflictStrategy::ClientWins => "client_wins",
            ConflictStrategy::LastWriteWins => "last_write_wins",
            ConflictStrategy::FieldMerge => "field_merge",
            ConflictStrategy::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<ConflictStrategy> {
        [
            ConflictStrategy::ServerWins,
            ConflictStrategy::ClientWins,
            ConflictStrategy::LastWriteWins,
            ConflictStrategy::FieldMerge,
            ConflictStrategy::Manual,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// When a write that returned is safe.
///
/// `Full` (the default) runs SQLite with `synchronous=FULL`: every commit is fsynced to
/// the WAL before the call returns, so a returned write survives the phone losing power
/// (on iOS and macOS with `fullfsync`, since a plain fsync there stops at the drive's cache).
/// `Normal` skips that fsync (`synchronous=NORMAL`): a returned write survives the app
/// being killed, but the last commits before a power loss or OS crash may be lost. It
/// is several times faster for bursts of single writes; prefer batching instead where a
/// screen saves many answers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Full,
    Normal,
}

/// A declared collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionConfig {
    pub name: String,
    pub strategy: ConflictStrategy,
    /// Indexes, each over one or more top-level fields in order. Created and dropped
    /// at open as the declaration changes; records and the outbox are not touched.
    pub indexes: Vec<Vec<String>>,
    /// Top-level fields searched by `Filter::Search` (full text, diacritics folded).
    /// Text fields, and arrays of text, are indexed; other values are not.
    pub search: Vec<String>,
    /// Download the files this collection's records refer to with every sync, rather
    /// than when the app asks for one.
    pub eager_attachments: bool,
}

impl CollectionConfig {
    pub fn new(name: impl Into<String>, strategy: ConflictStrategy) -> CollectionConfig {
        CollectionConfig {
            name: name.into(),
            strategy,
            indexes: Vec::new(),
            search: Vec::new(),
            eager_attachments: false,
        }
    }

    /// Downloads the files its records refer to with every sync.
    pub fn with_eager_attachments(mut self) -> CollectionConfig {
        self.eager_attachments = true;
        self
    }

    /// Adds an index over `fields`, in order.
    pub fn with_index(mut self, fields: &[&str]) -> CollectionConfig {
        self.indexes
            .push(fields.iter().map(|f| (*f).to_owned()).collect());
        self
    }

    /// Makes `fields` searchable.
    pub fn with_search(mut self, fields: &[&str]) -> CollectionConfig {
        self.search.extend(fields.iter().map(|f| (*f).to_owned()));
        self
    }
}

/// Everything `Store::open` needs besides the path.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub collections: Vec<CollectionConfig>,
    pub durability: Durability,
    /// A 32-byte key from the Keystore / Keychain. Needs the `encryption` feature.
    pub encryption_key: Option<Vec<u8>>,
    /// How long a write waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// Read connections kept open for queries, so reads never wait on writes.
    pub read_connections: usize,
    /// The signed-in user whose data the store holds (the token's user, e.g. its
    /// `sub`). Kept in the file at first open; a later open for another user fails
    /// with `Error::WrongUser` instead of showing one user's records to another. `None`
    /// opens only a database that holds no user's data.
    pub user_id: Option<String>,
    /// Bytes of downloaded attachments kept; past it the least recently used ones that
    /// the server holds are removed (and downloaded again when asked for). `None`: no
    /// limit. Files waiting to be uploaded are never removed.
    pub attachment_cache_bytes: Option<u64>,
    /// How long a file no record refers to is kept before it is collected: the time an
    /// app may take between `attach` and saving the record that refers to the file.
    pub attachment_grace: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            collections: Vec::new(),
            durability: Durability::Full,
            encryption_key: None,
            busy_timeout: Duration::from_secs(5),
            read_connections: 2,
            user_id: None,
            attachment_cache_bytes: None,
            attachment_grace: Duration::from_secs(24 * 3600),
        }
    }
}

impl StoreConfig {
    pub fn with_collection(mut self, name: &str, strategy: ConflictStrategy) -> Self {
        self.collections.push(CollectionConfig::new(name, strategy));
        self
    }

    /// Opens the store for this user (see [`StoreConfig::user_id`]).
    pub fn for_user(mut self, user_id: &str) -> Self {
        self.user_id = Some(user_id.to_owned());
        self
    }

    /// Declares a collection with its indexes and search fields.
    pub fn with(mut self, collection: CollectionConfig) -> Self {
        self.collections.push(collection);
        self
    }

    /// Checks names and settings; returns the collections by name.
    pub(crate) fn validated(&self) -> Result<Collections> {
        let mut out = BTreeMap::new();
        for c in &self.collections {
            validate_collection(&c.name)?;
            let declared = Declared::of(c)?;
            if out.insert(c.name.clone(), declared).is_some() {
                return Err(Error::InvalidConfig(format!(
                    "collection {:?} declared twice",
                    c.name
                )));
            }
        }
        if let Some(key) = self.encryption_key.as_ref().filter(|k| k.len() != 32) {
            return Err(Error::InvalidConfig(format!(
                "encryption_key must be 32 bytes, got {}",
                key.len()
            )));
        }
        if let Some(user) = &self.user_id {
            check_user_id(user)?;
        }
        Ok(Collections(out))
    }
}

/// The longest user id kept: identity providers' subjects are far shorter (a UUID, an
/// `auth0|…` id), and the id is compared on every open.
pub const MAX_USER_ID_LEN: usize = 256;

/// A user id is 1 to [`MAX_USER_ID_LEN`] characters, none of them control characters.
fn check_user_id(user: &str) -> Result<()> {
    let n = user.chars().count();
    if n == 0 || n > MAX_USER_ID_LEN || user.chars().any(char::is_control) {
        return Err(Error::InvalidConfig(format!(
            "user_id must be 1-{MAX_USER_ID_LEN} characters, no control characters"
        )));
    }
    Ok(())
}

/// What a collection declares, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    pub strategy: ConflictStrategy,
    pub indexes: Vec<Vec<String>>,
    pub search: Vec<String>,
    pub eager_attachments: bool,
}

impl Declared {
    fn of(c: &CollectionConfig) -> Result<Declared> {
        let bad = |what: String| Error::InvalidConfig(format!("collection {:?}: {what}", c.name));
        for fields in &c.indexes {
            if fields.is_empty() {
                return Err(bad("an index needs at least one field".into()));
            }
        }
        for f in c.indexes.iter().flatten().chain(&c.search) {
            crate::query::check_field(f).map_err(|e| bad(e.to_string()))?;
        }
        let mut indexes: Vec<Vec<String>> = Vec::new();
        for fields in &c.indexes {
            if !indexes.contains(fields) {
                indexes.push(fields.clone());
            }
        }
        let mut search: Vec<String> = Vec::new();
        for f in &c.search {
            if !search.contains(f) {
                search.push(f.clone());
            }
        }
        Ok(Declared {
            strategy: c.strategy,
            indexes,
            search,
            eager_attachments: c.eager_attachments,
        })
    }
}

/// The declared collections, checked: every call's collection name is looked up here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Collections(BTreeMap<String, Declared>);

impl Collections {
    /// What a declared collection declares; an invalid or undeclared name is an error.
    pub(crate) fn get(&self, collection: &str) -> Result<&Declared> {
        validate_collection(collection)?;
        self.0
            .get(collection)
            .ok_or_else(|| Error::UnknownCollection(collection.to_owned()))
    }

    /// The strategy of a declared collection; an invalid or undeclared name is an error.
    pub(crate) fn strategy(&self, collection: &str) -> Result<ConflictStrategy> {
        self.get(collection).map(|d| d.strategy)
    }

    /// Every collection with what it declares, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Declared)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn check(&self, collection: &str) -> Result<()> {
        self.strategy(collection).map(|_| ())
    }

    /// Collections whose files are downloaded with every sync.
    pub(crate) fn eager(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, d)| d.eager_attachments)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The names, in order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = StoreConfig::default().with_collection("patients", ConflictStrategy::Manual);
        assert!(ok.validated().is_ok());
        let bad = StoreConfig::default().with_collection("Patients", ConflictStrategy::Manual);
        assert_eq!(
            bad.validated(),
            Err(Error::InvalidCollection("Patients".into()))
        );
        let twice = ok
            .clone()
            .with_collection("patients", ConflictStrategy::ServerWins);
        assert!(matches!(twice.validated(), Err(Error::InvalidConfig(_))));
        let key = StoreConfig {
            encryption_key: Some(vec![1; 5]),
            ..ok.clone()
        };
        assert!(matches!(key.validated(), Err(Error::InvalidConfig(_))));
        assert!(ok.clone().for_user("auth0|5f1c").validated().is_ok());
        for user in ["", "a\nb", &"u".repeat(MAX_USER_ID_LEN + 1)] {
            let bad = ok.clone().for_user(user).validated();
            assert!(matches!(bad, Err(Error::InvalidConfig(_))), "{user:?}");
        }
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [
            "server_wins",
            "client_wins",
            "last_write_wins",
            "field_merge",
            "manual",
        ] {
            assert_eq!(ConflictStrategy::parse(s).map(|c| c.as_str()), Some(s));
        }
        assert_eq!(ConflictStrategy::parse("nope"), None);
    }
}
