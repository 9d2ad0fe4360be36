//! Server configuration: the TOML file of DESIGN.md, read strictly.
//!
//! A typo in a config file must not become a silently open collection or a user with
//! no team, so every key is checked by hand and every error names the key it is about
//! (`users[1].team: missing`). Unknown keys are errors for the same reason. Plain
//! tokens are hashed at load, so only SHA-256 digests live in memory.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use outpost_core::protocol::validate_collection;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::budget::PushLimits;
use crate::logic::{Access, AccessRules, User};

/// Where records are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (one server process).
    Sqlite(PathBuf),
    /// A PostgreSQL database (any number of server processes).
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL whose password never reaches a log through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// Checks the URL's syntax (no connection is made).
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        Ok(PostgresUrl(url.to_owned()))
    }

    /// The URL as written, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match tokio_postgres::Config::from_str(&self.0) {
            Ok(c) => write!(
                f,
                "PostgresUrl(user={:?} dbname={:?} hosts={:?} ports={:?})",
                c.get_user(),
                c.get_dbname(),
                c.get_hosts(),
                c.get_ports()
            ),
            Err(_) => f.write_str("PostgresUrl(<unparsable>)"),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: Database,
    pub default_access: Access,
    pub collections: BTreeMap<String, Access>,
    pub users: Vec<User>,
    /// Tombstones older than this are purged (may be zero).
    pub tombstone_retention: Duration,
    /// How often the purge runs.
    pub purge_interval: Duration,
    /// Requests per minute per user; `None` is unlimited.
    pub rate_limit_per_minute: Option<u32>,
    /// Bytes of change JSON in one pull page, past its first change.
    pub max_pull_page_bytes: usize,
    /// The secret pull cursors are sealed with (`cursor_key` or `cursor_key_file`);
    /// `None`: the one kept in the database, made by the first server to need it.
    pub cursor_secret: Option<Secret>,
    /// Stored op answers older than this are purged (may be zero).
    pub ops_retention: Duration,
    /// The work budget of one push.
    pub push_limits: PushLimits,
    /// Pushes one user may have in progress at once, per server process.
    pub max_concurrent_pushes_per_user: usize,
    /// Whether every pull page served is an audit row.
    pub audit_pulls: bool,
}

/// How long stored op answers are kept by default, in days: longer than any device
/// waits to resend an op whose answer it lost (see the README).
pub const DEFAULT_OPS_DAYS: f64 = 180.0;

/// Pushes one user may have in progress at once by default, per process.
pub const DEFAULT_CONCURRENT_PUSHES: usize = 8;

/// Fewest bytes of a configured cursor secret: what 256 bits take as hex is 64, as
/// base64 44; 32 rules out a password-like word.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secret bytes from the config, never shown by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// The default of `max_pull_page_mib`: a page a phone receives in well under a
/// minute on a slow link, and a bounded amount of memory per pull.
pub const DEFAULT_PULL_PAGE_MIB: f64 = 4.0;

/// A config that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(key: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

impl Config {
    /// Reads and checks a config file. A relative `database` path is taken relative to
    /// the config file's directory, so the server finds the same file whatever
    /// directory a service manager starts it in.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses config text; relative database paths are joined to `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {e}")))?;
        let known = [
            "listen",
            "database",
            "default_access",
            "tombstone_retention_days",
            "purge_interval_secs",
            "rate_limit_per_minute",
            "users",
            "collections",
            "max_pull_page_mib",
            "cursor_key",
            "cursor_key_file",
            "ops_retention_days",
            "push_budget_ms",
            "max_concurrent_pushes_per_user",
            "audit_pulls",
        ];
        check_keys(&table, &known, "")?;

        let listen_s = req_str(&table, "listen", "listen")?;
        let listen = listen_s
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("listen", format!("not a host:port address: {listen_s:?}")))?;

        let db = req_str(&table, "database", "database")?;
        let database = if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            // The URL's own error text never echoes a password.
            Database::Postgres(PostgresUrl::parse(db).map_err(|e| err("database", e))?)
        } else {
            if db.is_empty() {
                return Err(err("database", "empty"));
            }
            let db_path = PathBuf::from(db);
            Database::Sqlite(if db_path.is_absolute() {
                db_path
            } else {
                base_dir.join(db_path)
            })
        };

        let default_access = match table.get("default_access") {
            None => Access::Private,
            Some(v) => parse_access(v, "default_access")?,
        };

        let retention_days = opt_number(&table, "tombstone_retention_days")?.unwrap_or(30.0);
        let tombstone_retention = Duration::try_from_secs_f64(retention_days * 86_400.0)
            .map_err(|_| err("tombstone_retention_days", "out of range"))?;
        let purge_secs = opt_number(&table, "purge_interval_secs")?.unwrap_or(3600.0);
        if purge_secs <= 0.0 {
            return Err(err("purge_interval_secs", "must be positive"));
        }
        let purge_interval = Duration::try_from_secs_f64(purge_secs)
            .map_err(|_| err("purge_interval_secs", "out of range"))?;

        let rate_limit_per_minute = match table.get("rate_limit_per_minute") {
            None => None,
            Some(Value::Integer(n)) if *n > 0 && *n <= i64::from(u32::MAX) => {
                Some(u32::try_from(*n).unwrap_or(u32::MAX))
            }
            Some(_) => {
                return Err(err("rate_limit_per_minute", "must be a positive integer"));
            }
        };

        let page_mib = opt_number(&table, "max_pull_page_mib")?.unwrap_or(DEFAULT_PULL_PAGE_MIB);
        if page_mib <= 0.0 || page_mib > 1024.0 {
            return Err(err(
                "max_pull_page_mib",
                "must be more than 0 and at most 1024",
            ));
        }
        let max_pull_page_bytes = (page_mib * 1024.0 * 1024.0) as usize;

        let cursor_secret = parse_cursor_secret(&table, base_dir)?;

        let users = parse_users(table.get("users"))?;
        let collections = parse_collections(table.get("collections"))?;

        let ops_days = opt_number(&table, "ops_retention_days")?.unwrap_or(DEFAULT_OPS_DAYS);
        let ops_retention = Duration::try_from_secs_f64(ops_days * 86_400.0)
            .map_err(|_| err("ops_retention_days", "out of range"))?;
        let budget_ms = opt_number(&table, "push_budget_ms")?
            .unwrap_or(PushLimits::DEFAULT.time.as_secs_f64() * 1000.0);
        let push_limits = PushLimits {
            time: Duration::try_from_secs_f64(budget_ms / 1000.0)
                .map_err(|_| err("push_budget_ms", "out of range"))?,
            ..PushLimits::DEFAULT
        };
        let max_concurrent_pushes_per_user = match table.get("max_concurrent_pushes_per_user") {
            None => DEFAULT_CONCURRENT_PUSHES,
            Some(Value::Integer(n)) if *n > 0 => usize::try_from(*n).unwrap_or(usize::MAX),
            Some(_) => {
                return Err(err(
                    "max_concurrent_pushes_per_user",
                    "must be a positive integer",
                ));
            }
        };
        let audit_pulls = match table.get("audit_pulls") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(_) => return Err(err("audit_pulls", "must be true or false")),
        };

        Ok(Config {
            listen,
            database,
            default_access,
            collections,
            users,
            tombstone_retention,
            purge_interval,
            rate_limit_per_minute,
            max_pull_page_bytes,
            cursor_secret,
            ops_retention,
            push_limits,
            max_concurrent_pushes_per_user,
            audit_pulls,
        })
    }

    /// The access rules as requests and storage use them.
    pub fn access_rules(&self) -> AccessRules {
        AccessRules {
            named: self
                .collections
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            default: self.default_access,
        }
    }

    /// The access rule of a collection.
    pub fn access(&self, collection: &str) -> Access {
        self.collections
            .get(collection)
            .copied()
            .unwrap_or(self.default_access)
    }
}

fn check_keys(table: &Table, known: &[&str], prefix: &str) -> Result<(), ConfigError> {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(err(&format!("{prefix}{key}"), "unknown key"));
        }
    }
    Ok(())
}

fn req_str<'a>(table: &'a Table, key: &str, path: &str) -> Result<&'a str, ConfigError> {
    match table.get(key) {
        None => Err(err(path, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(path, "must be a string")),
    }
}

fn opt_number(table: &Table, key: &str) -> Result<Option<f64>, ConfigError> {
    let n = match table.get(key) {
        None => return Ok(None),
        Some(Value::Integer(n)) => *n as f64,
        Some(Value::Float(f)) => *f,
        Some(_) => return Err(err(key, "must be a number")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(err(key, "must be a non-negative number"));
    }
    Ok(Some(n))
}

/// `cursor_key` (the secret itself) or `cursor_key_file` (a file holding it, relative
/// to the config's directory; whitespace around it is ignored), or neither.
fn parse_cursor_secret(table: &Table, base_dir: &Path) -> Result<Option<Secret>, ConfigError> {
    let (key, bytes) = match (table.get("cursor_key"), table.get("cursor_key_file")) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(err(
                "cursor_key",
                "give either cursor_key or cursor_key_file, not both",
            ));
        }
        (Some(_), None) => (
            "cursor_key",
            req_str(table, "cursor_key", "cursor_key")?
                .as_bytes()
                .to_vec(),
        ),
        (None, Some(_)) => {
            let path = base_dir.join(req_str(table, "cursor_key_file", "cursor_key_file")?);
            let text = std::fs::read(&path).map_err(|e| {
                err(
                    "cursor_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ("cursor_key_file", text.trim_ascii().to_vec())
        }
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(err(
            key,
            format!(
                "at least {MIN_SECRET_BYTES} bytes of secret (e.g. the output of `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(Some(Secret(bytes)))
}

fn parse_access(v: &Value, path: &str) -> Result<Access, ConfigError> {
    v.as_str()
        .and_then(Access::parse)
        .ok_or_else(|| err(path, "must be \"private\", \"team\" or \"shared\""))
}

fn parse_users(v: Option<&Value>) -> Result<Vec<User>, ConfigError> {
    let Some(v) = v else {
        return Err(err("users", "missing: name at least one [[users]] entry"));
    };
    let Some(list) = v.as_array() else {
        return Err(err("users", "must be an array of tables ([[users]])"));
    };
    if list.is_empty() {
        return Err(err("users", "empty: name at least one user"));
    }
    let mut users = Vec::new();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, entry) in list.iter().enumerate() {
        let p = format!("users[{i}]");
        let Some(t) = entry.as_table() else {
            return Err(err(&p, "must be a table"));
        };
        check_keys(
            t,
            &["name", "team", "token", "token_sha256"],
            &format!("{p}."),
        )?;
        let name = req_str(t, "name", &format!("{p}.name"))?;
        if name.is_empty() {
            return Err(err(&format!("{p}.name"), "empty"));
        }
        if !names.insert(name.to_owned()) {
            return Err(err(
                &format!("{p}.name"),
                format!("duplicate user {name:?}"),
            ));
        }
        let team = req_str(t, "team", &format!("{p}.team"))?;
        if team.is_empty() {
            return Err(err(&format!("{p}.team"), "empty"));
        }
        let digest = match (t.get("token"), t.get("token_sha256")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &format!("{p}.token"),
                    "give either token or token_sha256, not both",
                ));
            }
            (None, None) => return Err(err(&format!("{p}.token"), "missing")),
            (Some(_), None) => {
                let tok = req_str(t, "token", &format!("{p}.token"))?;
                if tok.is_empty() {
                    return Err(err(&format!("{p}.token"), "empty"));
                }
                let mut d = [0u8; 32];
                d.copy_from_slice(&Sha256::digest(tok.as_bytes()));
                d
            }
            (None, Some(_)) => {
                let key = format!("{p}.token_sha256");
                let hexs = req_str(t, "token_sha256", &key)?;
                let bytes = hex::decode(hexs)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| err(&key, "must be 64 hex digits"))?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes);
                d
            }
        };
        if !digests.insert(digest) {
            return Err(err(&format!("{p}.token"), "the same token as another user"));
        }
        users.push(User {
            name: name.to_owned(),
            team: team.to_owned(),
            token_sha256: digest,
        });
    }
    Ok(users)
}

fn parse_collections(v: Option<&Value>) -> Result<BTreeMap<String, Access>, ConfigError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else {
        return Ok(out);
    };
    let Some(t) = v.as_table() else {
        return Err(err("collections", "must be a table"));
    };
    for (name, c) in t {
        let p = format!("collections.{name}");
        validate_collection(name).map_err(|e| err(&p, e))?;
        let Some(ct) = c.as_table() else {
            return Err(err(&p, "must be a table"));
        };
        check_keys(ct, &["access"], &format!("{p}."))?;
        let access = match ct.get("access") {
            None => return Err(err(&format!("{p}.access"), "missing")),
            Some(a) => parse_access(a, &format!("{p}.access"))?,
        };
        out.insert(name.clone(), access);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
database = "x.db"
default_access = "team"
tombstone_retention_days = 30

[[users]]
name = "amina"
team = "north"
token = "secret"

[[users]]
name = "ben"
team = "north"
token_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

[collections.drafts]
access = "private"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/tmp"))
    }

    #[test]
    fn parses_the_design_example() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.access("drafts"), Access::Private);
        assert_eq!(c.access("patients"), Access::Team);
        assert_eq!(c.database, Database::Sqlite(PathBuf::from("/tmp/x.db")));
        assert_eq!(c.tombstone_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.max_pull_page_bytes, 4 * 1024 * 1024);
        let half = parse(&BASE.replace("= 30", "= 30\nmax_pull_page_mib = 0.5")).unwrap();
        assert_eq!(half.max_pull_page_bytes, 512 * 1024);
        assert_eq!(c.ops_retention, Duration::from_secs(180 * 86_400));
        assert_eq!(c.push_limits, PushLimits::DEFAULT);
        assert_eq!(c.max_concurrent_pushes_per_user, 8);
        assert!(!c.audit_pulls);
    }

    #[test]
    fn hardening_keys() {
        let c = parse(&BASE.replace(
            "tombstone_retention_days = 30",
            "tombstone_retention_days = 30\nops_retention_days = 0.5\npush_budget_ms = 0\n\
             max_concurrent_pushes_per_user = 2\naudit_pulls = true",
        ))
        .unwrap();
        assert_eq!(c.ops_retention, Duration::from_secs(43_200));
        assert_eq!(c.push_limits.time, Duration::ZERO);
        assert_eq!(c.max_concurrent_pushes_per_user, 2);
        assert!(c.audit_pulls);
        for (line, key) in [
            ("ops_retention_days = -1", "ops_retention_days"),
            ("push_budget_ms = \"x\"", "push_budget_ms"),
            (
                "max_concurrent_pushes_per_user = 0",
                "max_concurrent_pushes_per_user",
            ),
            ("audit_pulls = 1", "audit_pulls"),
        ] {
            let text = BASE.replace(
                "tombstone_retention_days = 30",
                &format!("tombstone_retention_days = 30\n{line}"),
            );
            let e = parse(&text).unwrap_err().0;
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn a_postgres_url_selects_postgres() {
        for url in ["postgres://u:pw@h:5433/db", "postgresql://u@h/db"] {
            let c = parse(&BASE.replace("x.db", url)).unwrap();
            match c.database {
                Database::Postgres(u) => assert_eq!(u.expose(), url),
                Database::Sqlite(p) => panic!("{p:?}"),
            }
        }
    }

    #[test]
    fn the_url_is_checked_and_its_password_never_printed() {
        let u = PostgresUrl::parse("postgres://amina:s3cret@db.example:5432/outpost").unwrap();
        let shown = format!("{u:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("outpost"), "{shown}");
        assert!(PostgresUrl::parse("postgres://h/db?nonsense_option=1").is_err());
    }

    #[test]
    fn the_cursor_secret_is_given_or_read_from_a_file() {
        assert_eq!(parse(BASE).unwrap().cursor_secret, None);
        let hex64 = "ab".repeat(32);
        let c = parse(&BASE.replace("= 30", &format!("= 30\ncursor_key = \"{hex64}\""))).unwrap();
        assert_eq!(c.cursor_secret.as_ref().unwrap().expose(), hex64.as_bytes());
        assert!(!format!("{c:?}").contains(&hex64));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cursor.key"), format!("  {hex64}\n")).unwrap();
        let text = BASE.replace("= 30", "= 30\ncursor_key_file = \"cursor.key\"");
        let c = Config::parse(&text, dir.path()).unwrap();
        assert_eq!(c.cursor_secret.unwrap().expose(), hex64.as_bytes());

        let cases = [
            ("cursor_key = \"short\"", "cursor_key: at least 32"),
            (
                "cursor_key_file = \"missing.key\"",
                "cursor_key_file: cannot read",
            ),
            (
                "cursor_key = \"0123456789abcdef0123456789abcdef\"\ncursor_key_file = \"x\"",
                "cursor_key: give either",
            ),
        ];
        for (extra, want) in cases {
            let e = Config::parse(&BASE.replace("= 30", &format!("= 30\n{extra}")), dir.path())
                .unwrap_err()
                .0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                BASE.replace("team = \"north\"\ntoken_sha256", "token_sha256"),
                "users[1].team: missing",
            ),
            (BASE.replace("listen", "lisen"), "lisen: unknown key"),
            (
                BASE.replace("\"private\"", "\"open\""),
                "collections.drafts.access",
            ),
            (BASE.replace("2cf2", "zz"), "users[1].token_sha256"),
            (
                BASE.replace("token = \"secret\"", "token = \"secret\"\ncolor = 1"),
                "users[0].color: unknown key",
            ),
            (BASE.replace("= 30", "= -1"), "tombstone_retention_days"),
            (
                BASE.replace("= 30", "= 30\nmax_pull_page_mib = 0"),
                "max_pull_page_mib",
            ),
            (
                BASE.replace("x.db", "postgres://u@h/db?no_such_option=1"),
                "database:",
            ),
            (
                BASE.replace("[collections.drafts]", "[collections.Drafts]"),
                "collections.Drafts",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().0;
            assert!(e.starts_with(want), "{e} !~ {want}");
        }
    }
}
